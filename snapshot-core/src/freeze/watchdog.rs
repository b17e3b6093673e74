//! The dead-man switch of the frozen window: a forked child process that
//! writes the cgroup's thaw command when the committing process dies (its
//! socket end closes) or when the window's bound elapses before it is
//! disarmed.
//!
//! Invariants: the thaw file is opened before the fork, so the child only
//! `write`s; the child runs only async-signal-safe code (we may have been
//! forked from a multi-threaded process), which is why it alone uses raw
//! libc calls: no allocation, no locks, no panics. Everything in the parent
//! goes through nix. An armed watchdog that is dropped fires at once, and
//! every watchdog is reaped.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, send, socketpair};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::{ForkResult, Pid, fork};

use super::deadline_after;
use crate::error::{Error, IoContext, Result};

/// Byte the parent sends to disarm the watchdog.
const DISARM: u8 = b'D';
/// Watchdog exit codes.
const EXIT_DISARMED: i32 = 0;
const EXIT_FIRED: i32 = 10;
const EXIT_FIRED_WRITE_FAILED: i32 = 11;

/// How an armed [`Watchdog`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WatchdogOutcome {
    /// Disarmed before the deadline; it did not write.
    Disarmed,
    /// It wrote the thaw command (deadline passed, or the parent went away).
    Fired {
        /// Whether the thaw write succeeded.
        thaw_written: bool,
    },
    /// Its exit status was lost (it was killed, or reaped by someone else).
    Unknown,
}

/// A dead-man switch: a forked child process that writes a cgroup's thaw
/// command when the parent dies (its socket end closes) or when `bound`
/// elapses before [`Watchdog::disarm`]. Dropping an armed watchdog without
/// disarming it makes it fire at once.
#[derive(Debug)]
pub(super) struct Watchdog {
    pid: Pid,
    sock: Option<OwnedFd>,
    deadline: Instant,
    path: PathBuf,
}

impl Watchdog {
    /// Forks the watchdog. `thaw_path` is opened here, before the fork, so
    /// that the child only has to `write` to it.
    pub(super) fn arm(
        thaw_path: &Path,
        thaw_bytes: &'static [u8],
        bound: Duration,
    ) -> Result<Watchdog> {
        let thaw_file = OpenOptions::new()
            .write(true)
            .open(thaw_path)
            .at("open", thaw_path)?;
        // A socket rather than a pipe: the parent's disarm uses
        // send(MSG_NOSIGNAL), which cannot raise SIGPIPE in a host process
        // (Python, C) that did not ignore it. CLOEXEC so that processes spawned
        // meanwhile by other threads do not keep the parent's end open.
        let (parent_end, child_end) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .at("socketpair for watchdog of", thaw_path)?;

        let deadline = deadline_after(bound);
        let deadline_ts = monotonic_after(bound).at("read the monotonic clock for", thaw_path)?;
        let child_fd = child_end.as_raw_fd();
        let parent_fd = parent_end.as_raw_fd();
        let thaw_fd = thaw_file.as_raw_fd();

        // SAFETY: the child branch calls only async-signal-safe functions
        // (see `watchdog_child`) and never returns.
        match unsafe { fork() }.at("fork watchdog for", thaw_path)? {
            ForkResult::Child => {
                watchdog_child(parent_fd, child_fd, thaw_fd, thaw_bytes, deadline_ts)
            }
            ForkResult::Parent { child } => {
                drop(child_end);
                drop(thaw_file);
                Ok(Watchdog {
                    pid: child,
                    sock: Some(parent_end),
                    deadline,
                    path: thaw_path.to_path_buf(),
                })
            }
        }
    }

    /// The watchdog's process id.
    #[cfg(test)]
    pub(super) fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// Disarms the watchdog and reaps it; tells whether it had fired.
    pub(super) fn disarm(mut self) -> Result<WatchdogOutcome> {
        self.finish(true)
    }

    /// Makes the watchdog fire now (used when our own thaw failed) and reaps it.
    pub(super) fn fire_now(mut self) -> Result<WatchdogOutcome> {
        self.finish(false)
    }

    fn finish(&mut self, disarm: bool) -> Result<WatchdogOutcome> {
        let Some(sock) = self.sock.take() else {
            return Ok(WatchdogOutcome::Unknown);
        };
        if disarm {
            // Fails with EPIPE if the watchdog already fired and exited: fine,
            // its exit status says so.
            let _ = send(sock.as_raw_fd(), &[DISARM], MsgFlags::MSG_NOSIGNAL);
        }
        // Closing our end is an EOF for the watchdog: it fires unless it
        // already read the disarm byte.
        drop(sock);
        let status = loop {
            match waitpid(self.pid, None) {
                Ok(status) => break status,
                Err(Errno::EINTR) => continue,
                // Reaped elsewhere (SIGCHLD ignored, or a waitpid(-1) in
                // another thread): the exit status is lost.
                Err(Errno::ECHILD) => return Ok(self.unknown()),
                Err(e) => return Err(Error::errno("waitpid watchdog of", &self.path, e)),
            }
        };
        Ok(match status {
            WaitStatus::Exited(_, EXIT_DISARMED) => WatchdogOutcome::Disarmed,
            WaitStatus::Exited(_, EXIT_FIRED) => WatchdogOutcome::Fired { thaw_written: true },
            WaitStatus::Exited(_, EXIT_FIRED_WRITE_FAILED) => WatchdogOutcome::Fired {
                thaw_written: false,
            },
            _ => self.unknown(),
        })
    }

    /// With the status lost: the watchdog can only have fired after its
    /// deadline, as we held our socket end until now.
    fn unknown(&self) -> WatchdogOutcome {
        if Instant::now() >= self.deadline {
            WatchdogOutcome::Unknown
        } else {
            WatchdogOutcome::Disarmed
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.sock.is_some() {
            let _ = self.finish(false);
        }
    }
}

/// `CLOCK_MONOTONIC` now + `d`, as the timespec the child compares against
/// (saturating).
fn monotonic_after(d: Duration) -> nix::Result<libc::timespec> {
    let now = *clock_gettime(ClockId::CLOCK_MONOTONIC)?.as_ref();
    let add_secs = libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX / 2);
    let mut sec = now.tv_sec.saturating_add(add_secs);
    let mut nsec = now.tv_nsec + d.subsec_nanos() as libc::c_long /* < 1e9 */;
    if nsec >= 1_000_000_000 {
        nsec -= 1_000_000_000;
        sec = sec.saturating_add(1);
    }
    Ok(libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    })
}

/// Milliseconds (rounded up, clamped to `c_int`) from `now` to `deadline`;
/// 0 when passed. Plain saturating arithmetic: runs in the forked child.
// `i64::from` is the identity on 64-bit targets, a widening on 32-bit ones.
#[allow(clippy::useless_conversion)]
fn ms_until(deadline: &libc::timespec, now: &libc::timespec) -> libc::c_int {
    let sec = i64::from(deadline.tv_sec).saturating_sub(i64::from(now.tv_sec));
    let nsec = i64::from(deadline.tv_nsec).saturating_sub(i64::from(now.tv_nsec));
    let total_ns = sec.saturating_mul(1_000_000_000).saturating_add(nsec);
    if total_ns <= 0 {
        return 0;
    }
    let ms = total_ns.saturating_add(999_999) / 1_000_000;
    if ms > libc::c_int::MAX as i64 {
        libc::c_int::MAX
    } else {
        ms as libc::c_int
    }
}

/// The forked watchdog. We may have been forked from a multi-threaded
/// process, so only async-signal-safe calls: no allocation, no locks, no
/// panics (all arithmetic is saturating, no indexing). Raw libc syscalls
/// here, not nix's wrappers: those are not documented as async-signal-safe
/// (some build `CString`s or collections); only nix's errno read, a plain
/// thread-local load, is used.
fn watchdog_child(
    parent_fd: RawFd,
    sock: RawFd,
    thaw_fd: RawFd,
    thaw: &'static [u8],
    deadline: libc::timespec,
) -> ! {
    // SAFETY: all calls below are async-signal-safe syscalls on fds we own.
    unsafe {
        libc::close(parent_fd);
        // Own session: a signal to the parent's process group or terminal
        // does not reach us. We live at most `bound`, so ignoring the usual
        // termination signals is safe too.
        libc::setsid();
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        close_other_fds(sock, thaw_fd);
        loop {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
            let ms = ms_until(&deadline, &now);
            if ms == 0 {
                break; // bound overrun
            }
            let mut pfd = libc::pollfd {
                fd: sock,
                events: libc::POLLIN,
                revents: 0,
            };
            let rc = libc::poll(&mut pfd, 1, ms);
            if rc == 0 || (rc < 0 && Errno::last_raw() == libc::EINTR) {
                continue;
            }
            if rc < 0 {
                break; // cannot watch any more: thaw rather than risk it
            }
            let mut byte = 0u8;
            let n = libc::read(sock, (&mut byte as *mut u8).cast(), 1);
            if n == 1 && byte == DISARM {
                libc::_exit(EXIT_DISARMED);
            }
            if n < 0 && Errno::last_raw() == libc::EINTR {
                continue;
            }
            break; // EOF: the parent is gone (or sent garbage)
        }
        let written = loop {
            let n = libc::write(thaw_fd, thaw.as_ptr().cast(), thaw.len());
            if n < 0 && Errno::last_raw() == libc::EINTR {
                continue;
            }
            break n;
        };
        libc::_exit(if written == thaw.len() as isize {
            EXIT_FIRED
        } else {
            EXIT_FIRED_WRITE_FAILED
        })
    }
}

/// Closes every fd but `a` and `b`, so that the watchdog does not keep the
/// parent's unrelated pipes and sockets open. Best effort (close_range is
/// Linux 5.9+). Runs in the forked child; nix has no `close_range`.
fn close_other_fds(a: RawFd, b: RawFd) {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let ranges = [
        (0, lo.saturating_sub(1)),
        (lo.saturating_add(1), hi.saturating_sub(1)),
        (hi.checked_add(1).unwrap_or(-1), libc::c_int::MAX),
    ];
    for (first, last) in ranges {
        if 0 <= first && first <= last {
            // SAFETY: raw syscall, async-signal-safe; fds a and b are excluded.
            unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    first as libc::c_uint,
                    last as libc::c_uint,
                    0 as libc::c_uint,
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    const BOUND: Duration = Duration::from_secs(10);

    #[test]
    fn watchdog_fires_on_drop_and_when_disarmed_does_not() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let wd = Watchdog::arm(file.path(), b"THAWED", BOUND).unwrap();
        assert_eq!(wd.disarm().unwrap(), WatchdogOutcome::Disarmed);
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "");

        // The armed watchdog must not hold the parent's other fds open.
        let (r, w) = nix::unistd::pipe().unwrap();
        let r = File::from(r);
        let wd = Watchdog::arm(file.path(), b"THAWED", BOUND).unwrap();
        drop(w);
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut &r, &mut rest).unwrap(); // EOF, not a hang
        let pid = wd.pid();
        drop(wd); // reaped by drop, after firing
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "THAWED");
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
    }

    #[test]
    fn fire_now_writes_and_reports_it() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let wd = Watchdog::arm(file.path(), b"0", BOUND).unwrap();
        assert_eq!(
            wd.fire_now().unwrap(),
            WatchdogOutcome::Fired { thaw_written: true }
        );
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "0");
    }

    #[test]
    fn ms_until_rounds_up_and_saturates() {
        let ts = |s, ns| libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        };
        assert_eq!(ms_until(&ts(10, 0), &ts(10, 0)), 0);
        assert_eq!(ms_until(&ts(10, 0), &ts(11, 0)), 0);
        assert_eq!(ms_until(&ts(10, 1), &ts(10, 0)), 1);
        assert_eq!(ms_until(&ts(11, 0), &ts(10, 999_000_000)), 1);
        assert_eq!(ms_until(&ts(12, 500_000_000), &ts(10, 0)), 2500);
        assert_eq!(
            ms_until(&ts(libc::time_t::MAX, 0), &ts(0, 0)),
            libc::c_int::MAX
        );
    }

    #[test]
    fn monotonic_after_saturates() {
        let now = *clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap().as_ref();
        let later = monotonic_after(Duration::from_millis(1500)).unwrap();
        let ms = ms_until(&later, &now);
        assert!((1500..1600).contains(&ms), "{ms}");
        assert!(later.tv_nsec < 1_000_000_000);
        let far = monotonic_after(Duration::MAX).unwrap();
        assert!(far.tv_sec >= libc::time_t::MAX / 2);
    }
}
