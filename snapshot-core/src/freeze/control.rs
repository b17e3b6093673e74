//! What the v1 and v2 freezers share: their control files, opened once and
//! then read and written at offset 0 (no path lookup inside the frozen
//! window), the cadence of their state waits, and what a freeze that times
//! out or a thaw that does not complete turns into.
//!
//! Invariant: a freeze that does not complete is thawed again before its
//! error is returned, so a failed [`super::Freezer::freeze`] never leaves
//! the cgroup frozen on purpose.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::prctl;

use super::{Freezer, deadline_after, freeze_error};
use crate::error::{Error, IoContext, Result};

/// How long a thaw may take before it is reported as failed. Thawing is
/// immediate in both interfaces unless an ancestor cgroup is frozen.
pub(super) const THAW_TIMEOUT: Duration = Duration::from_secs(1);

/// Interval between re-reads of the freezer state. Sleeping (not spinning)
/// leaves the CPU to the tasks that must reach the refrigerator.
pub(super) const POLL_INTERVAL: Duration = Duration::from_micros(20);

/// Opens a cgroup control file once, so that the frozen window has no path
/// lookups. `File` opens with `O_CLOEXEC`.
pub(super) fn open_control(path: &Path, read: bool, write: bool) -> Result<File> {
    OpenOptions::new()
        .read(read)
        .write(write)
        .open(path)
        .at("open", path)
}

/// Reads a small control file from offset 0 into `buf`; returns the bytes read.
pub(super) fn pread_small<'b>(file: &File, path: &Path, buf: &'b mut [u8]) -> Result<&'b [u8]> {
    loop {
        match file.read_at(buf, 0) {
            Ok(n) => return Ok(buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
}

/// Writes `bytes` to a control file at offset 0, in one write.
pub(super) fn pwrite_all(file: &File, path: &Path, bytes: &[u8]) -> Result<()> {
    loop {
        match file.write_at(bytes, 0) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(freeze_error(
                    path,
                    format!("short write ({n} of {} bytes)", bytes.len()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("write", path, e)),
        }
    }
}

/// Re-checks `reached` until it holds (true) or `timeout` passes (false),
/// calling `pause` with at most [`POLL_INTERVAL`] between checks.
pub(super) fn wait_until(
    timeout: Duration,
    mut reached: impl FnMut() -> Result<bool>,
    mut pause: impl FnMut(Duration) -> Result<()>,
) -> Result<bool> {
    let _slack = FineTimerSlack::set();
    let deadline = deadline_after(timeout);
    loop {
        if reached()? {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        pause(POLL_INTERVAL.min(deadline - now))?;
    }
}

/// Completes a freeze request from the outcome of its wait (`waited`):
/// Ok when frozen, else thaws again and returns the error.
pub(super) fn settle_freeze(
    freezer: &dyn Freezer,
    timeout: Duration,
    waited: Result<bool>,
) -> Result<()> {
    match waited {
        Ok(true) => Ok(()),
        Ok(false) => Err(match freezer.thaw() {
            Ok(()) => freeze_error(
                freezer.path(),
                format!("not frozen within {timeout:?}; thawed again"),
            ),
            Err(e) => freeze_error(
                freezer.path(),
                format!("not frozen within {timeout:?}; thawing failed too: {e}"),
            ),
        }),
        Err(e) => {
            let _ = freezer.thaw();
            Err(e)
        }
    }
}

/// Completes a thaw request from whether its wait saw the cgroup thawed.
pub(super) fn settle_thaw(dir: &Path, thawed: bool) -> Result<()> {
    if thawed {
        Ok(())
    } else {
        Err(freeze_error(
            dir,
            format!("still frozen {THAW_TIMEOUT:?} after the thaw request (frozen ancestor?)"),
        ))
    }
}

/// Lowers this thread's timer slack (default 50 µs) while polling the
/// freezer state, so that a 20 µs sleep is 20 µs; restores it on drop.
struct FineTimerSlack {
    /// The slack to restore, when it was lowered.
    restore: Option<libc::c_ulong>,
}

/// The timer slack used while waiting, in nanoseconds.
const FINE_SLACK_NS: libc::c_ulong = 1000;

impl FineTimerSlack {
    fn set() -> Self {
        let restore = prctl::get_timerslack()
            .ok()
            .and_then(|old| libc::c_ulong::try_from(old).ok())
            .filter(|&old| old > FINE_SLACK_NS)
            .filter(|_| prctl::set_timerslack(FINE_SLACK_NS).is_ok());
        FineTimerSlack { restore }
    }
}

impl Drop for FineTimerSlack {
    fn drop(&mut self) {
        if let Some(old) = self.restore {
            let _ = prctl::set_timerslack(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_slack_is_lowered_and_restored() {
        let before = prctl::get_timerslack().unwrap();
        {
            let _slack = FineTimerSlack::set();
            let now = prctl::get_timerslack().unwrap();
            assert_eq!(now, before.min(1000));
        }
        assert_eq!(prctl::get_timerslack().unwrap(), before);
    }

    #[test]
    fn wait_until_reports_reached_and_timeout() {
        let mut checks = 0;
        let r = wait_until(
            Duration::from_secs(5),
            || {
                checks += 1;
                Ok(checks == 3)
            },
            |d| {
                assert!(d <= POLL_INTERVAL);
                Ok(())
            },
        );
        assert!(r.unwrap());
        assert_eq!(checks, 3);
        let t = Instant::now();
        let r = wait_until(
            Duration::from_millis(20),
            || Ok(false),
            |d| {
                std::thread::sleep(d);
                Ok(())
            },
        );
        assert!(!r.unwrap());
        assert!(t.elapsed() >= Duration::from_millis(20));
    }
}
