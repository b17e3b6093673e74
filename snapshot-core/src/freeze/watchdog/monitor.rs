//! The committer's side of the dead-man switch: a thread that watches the
//! watchdog's socket for the whole window and, if the watchdog dies (its end
//! closes: it was killed, alone or with its cgroup), thaws the cgroup at once
//! through its own thaw file. The window's work runs on another thread and
//! cannot notice; the capture is then discarded (see
//! [`super::WatchdogOutcome::Vanished`]).
//!
//! Invariant: [`Monitor::stop`] returns only once the thread has ended, so no
//! thaw of ours can follow it.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::pipe2;

use crate::error::{Error, IoContext, Result};

/// A running monitor thread.
#[derive(Debug)]
pub(super) struct Monitor {
    /// Closing it (dropping) tells the thread to end.
    stop: OwnedFd,
    thread: JoinHandle<bool>,
}

impl Monitor {
    /// Starts watching `sock` (our end of the watchdog's socket, a
    /// duplicate); on its hangup the thread writes `thaw_bytes` to `thaw`.
    pub(super) fn start(
        sock: OwnedFd,
        thaw: File,
        thaw_bytes: &'static [u8],
        thaw_path: &Path,
    ) -> Result<Monitor> {
        let (stop_rx, stop) =
            pipe2(OFlag::O_CLOEXEC).at("pipe for the watchdog monitor of", thaw_path)?;
        let path = thaw_path.to_path_buf();
        // A pipe, not a std channel: a blocking std channel receive makes std
        // allocate a thread handle for the calling thread, which may be a C,
        // Go or Python caller's own thread that never frees it.
        let (up, up_tx) =
            pipe2(OFlag::O_CLOEXEC).at("pipe for the watchdog monitor of", thaw_path)?;
        let thread = std::thread::Builder::new()
            .name("seamless-wd-mon".into())
            .spawn(move || watch(&sock, &stop_rx, thaw, thaw_bytes, &path, up_tx))
            .map_err(|e| Error::io("start the watchdog monitor of", thaw_path, e))?;
        // Its start (stack, real-time policy) must not overlap the window:
        // that CPU time would be pause.
        let mut byte = [0u8; 1];
        // The byte, or EOF if the thread ended first; EINTR: ask again.
        while let Err(Errno::EINTR) = nix::unistd::read(&up, &mut byte) {}
        Ok(Monitor { stop, thread })
    }

    /// Stops the thread; tells whether it saw the watchdog die (and thawed).
    pub(super) fn stop(self) -> bool {
        drop(self.stop);
        // A panic in the thread (none is expected): we cannot tell, so
        // treat the window as cut short.
        self.thread.join().unwrap_or(true)
    }
}

/// The thread: waits for the stop pipe (false) or the watchdog's hangup
/// (thaw, true). The hangup is also what a watchdog that fired at its
/// deadline leaves: a second thaw is harmless.
fn watch(
    sock: &OwnedFd,
    stop: &OwnedFd,
    thaw: File,
    bytes: &[u8],
    path: &Path,
    up: OwnedFd,
) -> bool {
    // Not real-time: a watchdog's death is rare, a wakeup among the
    // machine's ordinary tasks takes milliseconds at worst, and a real-time
    // thread more near the window lengthened the freeze (the empty-window
    // pause of the freeze tests) by tens of microseconds.
    let _ = nix::unistd::write(&up, b"u");
    drop(up);
    loop {
        let mut fds = [
            // POLLHUP and POLLERR are reported whatever is asked.
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            // Cannot watch any more: thaw, as the watchdog itself would.
            Err(_) => break,
        }
        let fired = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        if fired(&fds[1]) {
            return false;
        }
        // The watchdog sends nothing after its ready byte: anything on the
        // socket is its end closing.
        if fired(&fds[0]) {
            break;
        }
    }
    // At offset 0, like every control-file write (the watchdog may have
    // written through the same open file already).
    match thaw.write_at(bytes, 0) {
        Ok(_) => {
            tracing::warn!(cgroup = %path.display(), "the watchdog ended inside the frozen window; thawed at once")
        }
        Err(e) => {
            tracing::error!(cgroup = %path.display(), error = %e, "the watchdog ended inside the frozen window; our thaw failed")
        }
    }
    true
}
