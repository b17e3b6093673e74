//! The floor: a bare freeze + thaw of the container's cgroup, written by the
//! benchmark itself the way the library's freezer does it, so the stall the
//! probe sees is the kernel's part alone.
//!
//! v2: write `1` to `cgroup.freeze`, wait for `frozen 1` in `cgroup.events`
//! (`poll(POLLPRI)` capped at 20 µs with fine timer slack, re-reading each
//! time: the kernel rate-limits the notifications to one per 10 ms per
//! file), then `0` and `frozen 0`. v1: `FROZEN` / `THAWED` to
//! `freezer.state`, re-read every 20 µs. The thread runs `SCHED_FIFO` for
//! the cycle, as the library's window does. A guard thaws on every path out.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::time::TimeSpec;
use seamless_snapshot_tests::{CgroupFiles, monotonic_ns};

const POLL: Duration = Duration::from_micros(20);
const TIMEOUT: Duration = Duration::from_secs(2);

/// The freezer files of one cgroup, opened once.
pub enum Bare {
    V2 {
        dir: PathBuf,
        freeze: File,
        events: File,
    },
    V1 {
        dir: PathBuf,
        state: File,
    },
}

fn open(path: &Path, write: bool) -> File {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn pread(f: &File, buf: &mut [u8]) -> usize {
    f.read_at(buf, 0).expect("read a cgroup control file")
}

impl Bare {
    /// The v2 freezer when the cgroup has one (as the library prefers),
    /// else v1.
    pub fn of(cg: &CgroupFiles) -> Bare {
        if let Some(d) = &cg.v2 {
            Bare::V2 {
                dir: d.clone(),
                freeze: open(&d.join("cgroup.freeze"), true),
                events: open(&d.join("cgroup.events"), false),
            }
        } else if let Some(d) = &cg.v1 {
            Bare::V1 {
                dir: d.clone(),
                state: open(&d.join("freezer.state"), true),
            }
        } else {
            panic!("the container's cgroup has no freezer");
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Bare::V2 { .. } => "v2",
            Bare::V1 { .. } => "v1",
        }
    }

    fn try_request(&self, frozen: bool) -> std::io::Result<usize> {
        let (f, v): (&File, &[u8]) = match self {
            Bare::V2 { freeze, .. } => (freeze, if frozen { b"1" } else { b"0" }),
            Bare::V1 { state, .. } => (state, if frozen { b"FROZEN" } else { b"THAWED" }),
        };
        f.write_at(v, 0)
    }

    fn request(&self, frozen: bool) {
        self.try_request(frozen)
            .expect("write a cgroup freezer file");
    }

    fn reached(&self, frozen: bool) -> bool {
        let mut buf = [0u8; 256];
        match self {
            Bare::V2 { events, .. } => {
                let n = pread(events, &mut buf);
                let want: &[u8] = if frozen { b"frozen 1" } else { b"frozen 0" };
                buf[..n].split(|b| *b == b'\n').any(|l| l == want)
            }
            Bare::V1 { state, .. } => {
                let n = pread(state, &mut buf);
                let want: &[u8] = if frozen { b"FROZEN" } else { b"THAWED" };
                buf[..n].trim_ascii() == want
            }
        }
    }

    fn wait(&self, frozen: bool) {
        let start = Instant::now();
        while !self.reached(frozen) {
            assert!(start.elapsed() < TIMEOUT, "freezer did not settle");
            match self {
                Bare::V2 { events, .. } => {
                    let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLPRI)];
                    let _ = ppoll(&mut fds, Some(TimeSpec::from_duration(POLL)), None);
                }
                Bare::V1 { .. } => std::thread::sleep(POLL),
            }
        }
    }

    /// One freeze + thaw; returns (request instant, thawed instant) on
    /// CLOCK_MONOTONIC.
    pub fn cycle(&self) -> (u64, u64) {
        let _rt = Realtime::enter();
        let guard = ThawOnDrop(self);
        let t0 = monotonic_ns();
        self.request(true);
        self.wait(true);
        self.request(false);
        self.wait(false);
        let t1 = monotonic_ns();
        std::mem::forget(guard);
        (t0, t1)
    }

    pub fn dir(&self) -> &Path {
        match self {
            Bare::V2 { dir, .. } | Bare::V1 { dir, .. } => dir,
        }
    }
}

struct ThawOnDrop<'a>(&'a Bare);

impl Drop for ThawOnDrop<'_> {
    fn drop(&mut self) {
        // No panic here: this runs while unwinding from a failed cycle.
        let _ = self.0.try_request(false);
    }
}

/// `SCHED_FIFO` 1 and 1 ns timer slack for the calling thread until dropped
/// (nix wraps neither `sched_setscheduler` nor `PR_SET_TIMERSLACK` reads).
struct Realtime {
    policy: libc::c_int,
    param: libc::sched_param,
    slack: libc::c_int,
}

impl Realtime {
    fn enter() -> Option<Realtime> {
        // SAFETY: plain syscalls on the calling thread with pointers to
        // local values.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let mut param: libc::sched_param = std::mem::zeroed();
            if policy < 0 || libc::sched_getparam(0, &mut param) != 0 {
                return None;
            }
            let slack = libc::prctl(libc::PR_GET_TIMERSLACK);
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
            let rt = libc::sched_param { sched_priority: 1 };
            libc::sched_setscheduler(0, libc::SCHED_FIFO, &rt);
            Some(Realtime {
                policy,
                param,
                slack,
            })
        }
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        unsafe {
            libc::sched_setscheduler(0, self.policy, &self.param);
            libc::prctl(libc::PR_SET_TIMERSLACK, self.slack.max(1) as libc::c_ulong);
        }
    }
}
