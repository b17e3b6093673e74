//! The cgroup v2 freezer: write `cgroup.freeze`, wait for `frozen 1` in
//! `cgroup.events`.
//!
//! Invariant: both files are opened in [`CgroupV2Freezer::new`], which also
//! checks that the kernel reports a `frozen` key; freezing and thawing then
//! only read and write those open files.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::time::TimeSpec;

use super::control::{
    THAW_TIMEOUT, open_control, pread_small, pwrite_all, settle_freeze, settle_thaw, wait_until,
};
use super::{Freezer, freeze_error};
use crate::error::{Error, IoContext, Result};
use crate::types::FreezerKind;

/// The file a freeze or thaw is requested through.
pub(super) const V2_FREEZE: &str = "cgroup.freeze";
/// The file whose `frozen` key confirms it.
pub(super) const V2_EVENTS: &str = "cgroup.events";

/// Freezer of a cgroup v2 directory (`cgroup.freeze`, `cgroup.events`).
#[derive(Debug)]
pub(crate) struct CgroupV2Freezer {
    dir: PathBuf,
    freeze_path: PathBuf,
    events_path: PathBuf,
    freeze_file: File,
    events_file: File,
    /// On a hybrid host, the `freezer.state` of the same cgroup in the v1
    /// freezer hierarchy, where others (runc) pause it.
    v1_state: Option<PathBuf>,
}

impl CgroupV2Freezer {
    /// Opens the freezer files of the cgroup v2 directory `dir`.
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let freeze_path = dir.join(V2_FREEZE);
        let events_path = dir.join(V2_EVENTS);
        let freeze_file = open_control(&freeze_path, true, true)?;
        let events_file = open_control(&events_path, true, false)?;
        let freezer = CgroupV2Freezer {
            dir,
            freeze_path,
            events_path,
            freeze_file,
            events_file,
            v1_state: None,
        };
        // Fails early on kernels whose cgroup.events has no `frozen` key.
        freezer.events_frozen()?;
        Ok(freezer)
    }

    /// Also watches the v1 freezer cgroup `v1_dir` for pauses made by others
    /// (see [`Freezer::is_paused`]).
    pub(crate) fn with_v1_sibling(mut self, v1_dir: &Path) -> Self {
        self.v1_state = Some(v1_dir.join(super::v1::V1_STATE));
        self
    }

    /// The v1 sibling's directory, if any.
    pub(crate) fn v1_sibling(&self) -> Option<&Path> {
        self.v1_state.as_deref().and_then(Path::parent)
    }

    /// The `frozen` value of `cgroup.events`.
    fn events_frozen(&self) -> Result<bool> {
        let mut buf = [0u8; 256];
        let text = pread_small(&self.events_file, &self.events_path, &mut buf)?;
        parse_events_frozen(text)
            .ok_or_else(|| freeze_error(&self.dir, "cgroup.events has no `frozen` line"))
    }

    /// Waits until `cgroup.events` says `frozen <want>`; false on timeout.
    ///
    /// Each wait is `poll(POLLPRI)` capped at the poll interval: the kernel
    /// sends at most one `cgroup.events` notification per 10 ms per file
    /// (later ones are deferred by a timer) and delivers them from a
    /// workqueue, so a back-to-back freeze could otherwise wait ~10–20 ms
    /// for a state that is already there.
    fn wait_frozen(&self, want: bool, timeout: Duration) -> Result<bool> {
        wait_until(
            timeout,
            // Reading also re-arms the kernfs notification for the next poll.
            || Ok(self.events_frozen()? == want),
            |wait| {
                let mut fds = [PollFd::new(self.events_file.as_fd(), PollFlags::POLLPRI)];
                match ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None) {
                    Ok(_) | Err(Errno::EINTR) => Ok(()),
                    Err(e) => Err(Error::errno("poll", &self.events_path, e)),
                }
            },
        )
    }
}

/// The value of the `frozen` key of a `cgroup.events` file.
pub(crate) fn parse_events_frozen(text: &[u8]) -> Option<bool> {
    text.split(|&b| b == b'\n').find_map(|line| {
        let value = line.strip_prefix(b"frozen ")?;
        match value.trim_ascii() {
            b"1" => Some(true),
            b"0" => Some(false),
            _ => None,
        }
    })
}

impl Freezer for CgroupV2Freezer {
    fn kind(&self) -> FreezerKind {
        FreezerKind::V2
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    fn freeze(&self, timeout: Duration) -> Result<()> {
        pwrite_all(&self.freeze_file, &self.freeze_path, b"1")?;
        settle_freeze(self, timeout, self.wait_frozen(true, timeout))
    }

    fn thaw(&self) -> Result<()> {
        pwrite_all(&self.freeze_file, &self.freeze_path, b"0")?;
        settle_thaw(&self.dir, self.wait_frozen(false, THAW_TIMEOUT)?)
    }

    fn is_frozen(&self) -> Result<bool> {
        let mut buf = [0u8; 16];
        let requested = pread_small(&self.freeze_file, &self.freeze_path, &mut buf)?;
        Ok(requested.trim_ascii() == b"1" || self.events_frozen()?)
    }

    fn parent(&self) -> Result<Option<Box<dyn Freezer>>> {
        let Some(dir) = self.dir.parent() else {
            return Ok(None);
        };
        let mut up = CgroupV2Freezer::new(dir)?;
        if let Some(v1) = self.v1_sibling().and_then(Path::parent) {
            up = up.with_v1_sibling(v1);
        }
        Ok(Some(Box::new(up)))
    }

    fn is_paused(&self) -> Result<bool> {
        if self.is_frozen()? {
            return Ok(true);
        }
        match &self.v1_state {
            Some(p) => {
                let text = std::fs::read(p).at("read", p)?;
                Ok(text.trim_ascii() != b"THAWED")
            }
            None => Ok(false),
        }
    }

    fn thaw_command(&self) -> (PathBuf, &'static [u8]) {
        (self.freeze_path.clone(), b"0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events() {
        assert_eq!(parse_events_frozen(b"populated 1\nfrozen 1\n"), Some(true));
        assert_eq!(parse_events_frozen(b"populated 1\nfrozen 0\n"), Some(false));
        assert_eq!(parse_events_frozen(b"populated 1\n"), None);
    }
}
