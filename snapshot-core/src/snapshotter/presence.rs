//! Whether the container is still there: a commit can take minutes, and the
//! container may exit, be killed, be deleted, or lose its snapshot meanwhile.
//!
//! Invariants: a capture is kept only if, inside the frozen window, the
//! container's init process (pid and start time, as at the start) is among
//! the frozen processes, and, after the frozen sync, the upper dir's path
//! still names the directory that was copied. containerd removes a snapshot
//! by renaming its directory first and emptying it afterwards, so a path
//! that still resolves after the sync means nothing was removed during it.
//! Any failure of a commit whose container went away is reported as
//! [`Error::ContainerNotRunning`] saying so, rather than as whatever I/O
//! error its disappearance caused.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::procfs::stat::process_start_ticks;

/// What identifies the container for the length of one commit.
pub(super) struct Presence {
    id: String,
    init_pid: u32,
    /// `None` when the init process was already gone at the start.
    init_start: Option<u64>,
    upper: PathBuf,
    /// `(dev, ino)` of the upper dir at the start.
    upper_ident: (u64, u64),
    cgroup: PathBuf,
}

impl Presence {
    /// Records the container `id`'s identity now: its init process `pid`,
    /// its upper dir, its cgroup.
    pub(super) fn record(id: &str, pid: u32, upper: &Path, cgroup: &Path) -> Result<Presence> {
        let md = std::fs::metadata(upper).at("stat", upper)?;
        Ok(Presence {
            id: id.to_string(),
            init_pid: pid,
            init_start: process_start_ticks(pid),
            upper: upper.to_path_buf(),
            upper_ident: (md.dev(), md.ino()),
            cgroup: cgroup.to_path_buf(),
        })
    }

    fn gone(&self, status: impl Into<String>) -> Error {
        Error::ContainerNotRunning {
            id: self.id.clone(),
            status: status.into(),
        }
    }

    fn init_alive(&self) -> bool {
        self.init_start.is_some() && process_start_ticks(self.init_pid) == self.init_start
    }

    fn upper_in_place(&self) -> bool {
        std::fs::metadata(&self.upper).is_ok_and(|m| (m.dev(), m.ino()) == self.upper_ident)
    }

    /// Inside the frozen window: fails unless the init process is one of
    /// the frozen `pids` (a container that exited during the pre-copy has
    /// none, or no longer its own init).
    pub(super) fn check_frozen(&self, pids: &HashSet<u32>) -> Result<()> {
        if pids.contains(&self.init_pid) && self.init_alive() {
            Ok(())
        } else {
            Err(self.gone("exited during the commit, before the freeze"))
        }
    }

    /// After the frozen sync, still frozen: fails unless the upper dir's
    /// path still names the directory copied (see the module docs).
    pub(super) fn check_upper(&self) -> Result<()> {
        if self.upper_in_place() {
            Ok(())
        } else {
            Err(self.gone(self.upper_removed()))
        }
    }

    fn upper_removed(&self) -> String {
        format!(
            "its writable layer {} was removed during the commit",
            self.upper.display()
        )
    }

    /// A failure `e` of the capture, explained by the container going away
    /// when it did: its writable layer removed, its cgroup removed (the task
    /// deleted), or its init process gone. Otherwise `e` as it is.
    pub(super) fn explain(&self, e: Error) -> Error {
        let why = if !self.upper_in_place() && !self.cgroup.exists() {
            "deleted during the commit".to_string()
        } else if !self.upper_in_place() {
            self.upper_removed()
        } else if !self.cgroup.exists() {
            "stopped and its task deleted during the commit".to_string()
        } else if !self.init_alive() {
            "exited during the commit".to_string()
        } else {
            return e;
        };
        if !matches!(e, Error::ContainerNotRunning { .. }) {
            tracing::debug!(container = %self.id, error = %e, "capture failed as the container went away");
        }
        self.gone(why)
    }
}
