//! The cgroup v1 freezer controller: write `freezer.state`, re-read it until
//! `FROZEN`.
//!
//! Invariant: `freezer.state` is opened twice in [`CgroupV1Freezer::new`]
//! (a writer and a reader), so the frozen window has no path lookups; the
//! wait re-reads it at a short interval, sleeping in between, because it is
//! the read itself that moves the kernel's state from FREEZING to FROZEN.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::control::{
    THAW_TIMEOUT, open_control, pread_small, pwrite_all, settle_freeze, settle_thaw, wait_until,
};
use super::{Freezer, freeze_error};
use crate::error::Result;
use crate::types::FreezerKind;

/// The v1 controller's state file.
pub(super) const V1_STATE: &str = "freezer.state";

/// States of the v1 `freezer.state` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum V1State {
    Thawed,
    Freezing,
    Frozen,
}

pub(crate) fn parse_v1_state(text: &[u8]) -> Option<V1State> {
    match text.trim_ascii() {
        b"THAWED" => Some(V1State::Thawed),
        b"FREEZING" => Some(V1State::Freezing),
        b"FROZEN" => Some(V1State::Frozen),
        _ => None,
    }
}

/// Freezer of a cgroup v1 freezer-controller directory (`freezer.state`).
#[derive(Debug)]
pub(crate) struct CgroupV1Freezer {
    dir: PathBuf,
    state_path: PathBuf,
    writer: File,
    reader: File,
}

impl CgroupV1Freezer {
    /// Opens `freezer.state` of the v1 freezer cgroup directory `dir`.
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let state_path = dir.join(V1_STATE);
        let writer = open_control(&state_path, false, true)?;
        let reader = open_control(&state_path, true, false)?;
        let freezer = CgroupV1Freezer {
            dir,
            state_path,
            writer,
            reader,
        };
        freezer.state()?;
        Ok(freezer)
    }

    /// Reads the state. The read itself is what moves the kernel's state
    /// from FREEZING to FROZEN once every task is frozen.
    fn state(&self) -> Result<V1State> {
        let mut buf = [0u8; 32];
        let text = pread_small(&self.reader, &self.state_path, &mut buf)?;
        parse_v1_state(text).ok_or_else(|| {
            freeze_error(
                &self.dir,
                format!(
                    "unexpected freezer.state {:?}",
                    String::from_utf8_lossy(text)
                ),
            )
        })
    }

    fn wait_state(&self, want: V1State, timeout: Duration) -> Result<bool> {
        wait_until(
            timeout,
            || Ok(self.state()? == want),
            |wait| {
                std::thread::sleep(wait);
                Ok(())
            },
        )
    }
}

impl Freezer for CgroupV1Freezer {
    fn kind(&self) -> FreezerKind {
        FreezerKind::V1
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    fn freeze(&self, timeout: Duration) -> Result<()> {
        pwrite_all(&self.writer, &self.state_path, b"FROZEN")?;
        settle_freeze(self, timeout, self.wait_state(V1State::Frozen, timeout))
    }

    fn thaw(&self) -> Result<()> {
        pwrite_all(&self.writer, &self.state_path, b"THAWED")?;
        settle_thaw(&self.dir, self.wait_state(V1State::Thawed, THAW_TIMEOUT)?)
    }

    fn is_frozen(&self) -> Result<bool> {
        Ok(self.state()? != V1State::Thawed)
    }

    fn parent(&self) -> Result<Option<Box<dyn Freezer>>> {
        match self.path().parent() {
            Some(dir) => Ok(Some(Box::new(CgroupV1Freezer::new(dir)?))),
            None => Ok(None),
        }
    }

    fn thaw_command(&self) -> (PathBuf, &'static [u8]) {
        (self.state_path.clone(), b"THAWED")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state() {
        assert_eq!(parse_v1_state(b"FREEZING\n"), Some(V1State::Freezing));
        assert_eq!(parse_v1_state(b"FROZEN\n"), Some(V1State::Frozen));
        assert_eq!(parse_v1_state(b"THAWED\n"), Some(V1State::Thawed));
        assert_eq!(parse_v1_state(b"x"), None);
    }
}
