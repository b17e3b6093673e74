//! The dead-man switch of the frozen window: a process of its own that
//! writes the cgroup's thaw command when the committer dies (its socket end
//! closes) or when the window's bound elapses before it is disarmed; and, in
//! the committer, a [`monitor`] thread that thaws at once if that process
//! dies first.
//!
//! Why a program of its own, and where it runs:
//! - It must outlive the committer's whole cgroup. A systemd unit stop, a pod
//!   deletion, an OOM group kill or `cgroup.kill` kill every process of that
//!   cgroup, and a child is born in its parent's cgroups. So, once started, it
//!   is moved ([`isolate`]) into `seamless-watchdog`, a cgroup of its own
//!   directly under the cgroup v2 root we see, and into the root cgroup of
//!   every v1 hierarchy: never inside the container's cgroup (the freezer never
//!   picks a root, and `seamless-watchdog` is not a container's), nor the
//!   committer's. It gets `oom_score_adj` -1000 and `SCHED_FIFO` one priority
//!   above the committer's window thread ([`super::realtime`]). A committer
//!   confined to a cgroup namespace can move it no further out than that
//!   namespace's root.
//! - It must share no writable memory with the committer: a forked child
//!   shares every page copy-on-write, so the committer's first write to each
//!   page inside the window would fault and copy. So it is a separate program
//!   (`helper.c`, a few KB, compiled by `build.rs` and embedded here), written
//!   to a sealed memfd and started with `posix_spawn`, which does not touch
//!   the committer's page tables ([`spawn`]). The library runs inside C, Go
//!   and Python programs, so re-executing `/proc/self/exe` is no option.
//! - Where the memfd cannot be executed (`vm.memfd_noexec=2`, an LSM), the
//!   watchdog is a fork running the same loop ([`child`]), isolated the same
//!   way: it survives the same kills, only the copy-on-write cost returns (a
//!   warning says so).
//! - Arming costs about a millisecond (program start, cgroup moves, the
//!   monitor thread), all before the freeze. Measured here, back-to-back
//!   empty windows (the freeze tests) pause ~10 µs longer after it than after
//!   a bare fork; with 10 ms between windows the two are alike: the cost is
//!   in how recently the container's tasks ran, not in the window.
//!
//! Protocol over a socket pair: the watchdog sends `R` once it runs (the
//! committer waits for it before freezing); the committer sends `D` to
//! disarm, and closing its end (dying) makes the watchdog fire. Exit codes
//! tell how it ended.
//!
//! Invariants: the thaw file is opened by the committer before the watchdog
//! starts, so the watchdog only `write`s; the forked fallback runs only
//! async-signal-safe code. An armed watchdog that is dropped fires at once,
//! and every watchdog is reaped. The monitor is stopped before the watchdog is
//! disarmed, so the watchdog's normal exit is never taken for its death.

mod child;
mod isolate;
mod monitor;
mod spawn;
#[cfg(test)]
mod tests;

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{MsgFlags, send};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;

use super::deadline_after;
use super::realtime;
use crate::error::{Error, IoContext, Result};
use monitor::Monitor;

/// Byte the watchdog sends once it runs.
const READY: u8 = b'R';
/// Byte the committer sends to disarm the watchdog.
const DISARM: u8 = b'D';
/// Watchdog exit codes (the same in `helper.c`).
const EXIT_DISARMED: i32 = 0;
const EXIT_FIRED: i32 = 10;
const EXIT_FIRED_WRITE_FAILED: i32 = 11;
/// It could not start (bad arguments, no socket): before [`READY`].
const EXIT_NOT_READY: i32 = 12;
/// How long a new watchdog may take to say it runs (loading a program on a
/// loaded machine). Before the freeze: it costs no pause.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How an armed [`Watchdog`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WatchdogOutcome {
    /// Disarmed before the deadline; it did not write.
    Disarmed,
    /// It wrote the thaw command (deadline passed, or the committer went
    /// away).
    Fired {
        /// Whether the thaw write succeeded.
        thaw_written: bool,
    },
    /// It died before it was disarmed (killed): the monitor thawed the
    /// cgroup at once.
    Vanished,
    /// Its exit status was lost (reaped by someone else) after its deadline.
    Unknown,
}

/// How the watchdog runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WatchdogKind {
    /// The embedded program, spawned from a memfd.
    Program,
    /// The forked fallback.
    Forked,
}

/// A dead-man switch for one frozen window: a separate process that writes
/// a cgroup's thaw command when the committer dies or when `bound` elapses
/// before [`Watchdog::disarm`], watched by a thread of ours that thaws at
/// once if it dies. Dropping an armed watchdog without disarming it makes it
/// fire at once.
#[derive(Debug)]
pub(super) struct Watchdog {
    pid: Pid,
    kind: WatchdogKind,
    sock: Option<OwnedFd>,
    monitor: Option<Monitor>,
    deadline: Instant,
    path: PathBuf,
}

impl Watchdog {
    /// Starts the watchdog (the program, else the fork), isolates it, waits
    /// until it runs and starts the monitor. `thaw_path` is opened here, so
    /// that the watchdog only has to `write` to it.
    pub(super) fn arm(
        thaw_path: &Path,
        thaw_bytes: &'static [u8],
        bound: Duration,
    ) -> Result<Watchdog> {
        Self::arm_as(None, spawn::PROGRAM, thaw_path, thaw_bytes, bound)
    }

    /// [`Watchdog::arm`] with the program `image`, or, with `Some(kind)`,
    /// only that kind (tests).
    fn arm_as(
        only: Option<WatchdogKind>,
        image: &[u8],
        thaw_path: &Path,
        thaw_bytes: &'static [u8],
        bound: Duration,
    ) -> Result<Watchdog> {
        let thaw_file = OpenOptions::new()
            .write(true)
            .open(thaw_path)
            .at("open", thaw_path)?;
        let deadline = deadline_after(bound);
        let deadline_ts = monotonic_after(bound).at("read the monotonic clock for", thaw_path)?;
        // Read before this thread goes real-time for the window.
        let priority = realtime::watchdog_priority();

        let program = (only != Some(WatchdogKind::Forked)).then(|| {
            spawn::spawn_program(image, &thaw_file, thaw_bytes, &deadline_ts)
                .and_then(|(pid, sock)| ready(pid, sock).map(|sock| (pid, sock)))
                .at("start the watchdog program for", thaw_path)
        });
        let (pid, sock, kind) = match program {
            Some(Ok((pid, sock))) => (pid, sock, WatchdogKind::Program),
            Some(Err(e)) if only == Some(WatchdogKind::Program) => return Err(e),
            fallback => {
                if let Some(Err(e)) = fallback {
                    tracing::warn!(error = %e, "watchdog program unavailable; forking it instead (copy-on-write faults in the frozen window)");
                }
                let (pid, sock) = child::fork_child(&thaw_file, thaw_bytes, &deadline_ts)
                    .at("fork watchdog for", thaw_path)?;
                let sock = ready(pid, sock).at("start the forked watchdog for", thaw_path)?;
                (pid, sock, WatchdogKind::Forked)
            }
        };
        let mut watchdog = Watchdog {
            pid,
            kind,
            sock: Some(sock),
            monitor: None,
            deadline,
            path: thaw_path.to_path_buf(),
        };
        // From here on, an error drops `watchdog`: it fires and is reaped.
        isolate::isolate(pid, priority);
        tracing::debug!(pid = pid.as_raw(), ?kind, priority, "watchdog armed");
        let sock = watchdog
            .sock
            .as_ref()
            .map(|s| s.try_clone())
            .transpose()
            .at("dup the watchdog socket for", thaw_path)?
            .ok_or_else(|| Error::Internal("watchdog socket missing".into()))?;
        watchdog.monitor = Some(Monitor::start(sock, thaw_file, thaw_bytes, thaw_path)?);
        Ok(watchdog)
    }

    /// The watchdog's process id.
    #[cfg(test)]
    pub(super) fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// How the watchdog runs.
    #[cfg(test)]
    pub(super) fn kind(&self) -> WatchdogKind {
        self.kind
    }

    /// Puts the watchdog back under the normal policy, once our own thaw
    /// succeeded: it is no longer needed in time, and at `SCHED_FIFO` its
    /// wakeup and exit on disarm would run ahead of the container's tasks
    /// just thawed, which is pause they feel. Best effort.
    pub(super) fn demote(&self) {
        if let Err(e) = realtime::set_normal(self.pid.as_raw()) {
            tracing::debug!(watchdog = self.pid.as_raw(), error = %e, "cannot demote the watchdog");
        }
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
        // First the monitor: the watchdog's exit below must not look like a
        // death to it.
        let vanished = self.monitor.take().is_some_and(Monitor::stop);
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
                Ok(status) => break Some(status),
                Err(Errno::EINTR) => continue,
                // Reaped elsewhere (SIGCHLD ignored, or a waitpid(-1) in
                // another thread): the exit status is lost.
                Err(Errno::ECHILD) => break None,
                Err(e) => return Err(Error::errno("waitpid watchdog of", &self.path, e)),
            }
        };
        let outcome = match status {
            Some(WaitStatus::Exited(_, EXIT_DISARMED)) => WatchdogOutcome::Disarmed,
            Some(WaitStatus::Exited(_, EXIT_FIRED)) => {
                WatchdogOutcome::Fired { thaw_written: true }
            }
            Some(WaitStatus::Exited(_, EXIT_FIRED_WRITE_FAILED)) => WatchdogOutcome::Fired {
                thaw_written: false,
            },
            _ => self.unknown(),
        };
        let outcome = match outcome {
            WatchdogOutcome::Fired { .. } => outcome,
            _ if vanished => WatchdogOutcome::Vanished,
            _ => outcome,
        };
        tracing::debug!(pid = self.pid.as_raw(), kind = ?self.kind, ?outcome, "watchdog retired");
        Ok(outcome)
    }

    /// With the status lost: the watchdog can only have fired after its
    /// deadline, as we held our socket end until now (a death before is
    /// the monitor's to see).
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

/// Waits for a new watchdog's [`READY`] byte on `sock`. On failure the
/// watchdog is killed and reaped (nothing is frozen yet).
fn ready(pid: Pid, sock: OwnedFd) -> std::result::Result<OwnedFd, std::io::Error> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => break Err(std::io::Error::other("not ready in time")),
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => break Err(e.into()),
        }
        let mut byte = [0u8];
        match nix::unistd::read(&sock, &mut byte) {
            Ok(1) if byte[0] == READY => break Ok(()),
            Ok(_) => break Err(std::io::Error::other("exited before it was ready")),
            Err(Errno::EINTR) => continue,
            Err(e) => break Err(e.into()),
        }
    };
    match outcome {
        Ok(()) => Ok(sock),
        Err(e) => {
            let _ = kill(pid, Signal::SIGKILL);
            while waitpid(pid, None) == Err(Errno::EINTR) {}
            Err(e)
        }
    }
}

/// `CLOCK_MONOTONIC` now + `d`, the deadline as the watchdog compares it
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
