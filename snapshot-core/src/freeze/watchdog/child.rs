//! The forked watchdog: the fallback where the embedded program cannot be
//! executed. The same loop and protocol as `helper.c`, run in a forked child.
//!
//! Invariant: we may have been forked from a multi-threaded process, so the
//! child runs only async-signal-safe code: raw libc syscalls (nix's wrappers
//! are not documented as async-signal-safe; only its errno read, a plain
//! thread-local load, is used), no allocation, no locks, no panics (all
//! arithmetic is saturating, no indexing).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::{ForkResult, Pid, fork};

use super::{DISARM, EXIT_DISARMED, EXIT_FIRED, EXIT_FIRED_WRITE_FAILED, EXIT_NOT_READY, READY};

/// Forks the watchdog; returns its pid and our end of its socket. The
/// caller waits for its ready byte.
pub(super) fn fork_child(
    thaw_file: &File,
    thaw_bytes: &'static [u8],
    deadline: &libc::timespec,
) -> nix::Result<(Pid, OwnedFd)> {
    // A socket rather than a pipe: the disarm uses send(MSG_NOSIGNAL), which
    // cannot raise SIGPIPE in a host process (Python, C) that did not ignore
    // it. CLOEXEC so that processes spawned meanwhile by other threads do not
    // keep our end open.
    let (parent_end, child_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let (parent_fd, child_fd, thaw_fd) = (
        parent_end.as_raw_fd(),
        child_end.as_raw_fd(),
        thaw_file.as_raw_fd(),
    );
    let deadline = *deadline;
    // SAFETY: the child branch calls only async-signal-safe functions (see
    // `watchdog_child`) and never returns.
    match unsafe { fork() }? {
        ForkResult::Child => watchdog_child(parent_fd, child_fd, thaw_fd, thaw_bytes, deadline),
        ForkResult::Parent { child } => Ok((child, parent_end)),
    }
}

/// Milliseconds (rounded up, clamped to `c_int`) from `now` to `deadline`;
/// 0 when passed. Plain saturating arithmetic: runs in the forked child.
// `i64::from` is the identity on 64-bit targets, a widening on 32-bit ones.
#[allow(clippy::useless_conversion)]
pub(super) fn ms_until(deadline: &libc::timespec, now: &libc::timespec) -> libc::c_int {
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

/// The forked watchdog: `helper.c`'s loop, async-signal-safe.
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
        // Own session: a signal to the committer's process group or terminal
        // does not reach us. We live at most until the deadline, so ignoring
        // the usual termination signals is safe too.
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
        let ready = loop {
            let n = libc::write(sock, (&READY as *const u8).cast(), 1);
            if n < 0 && Errno::last_raw() == libc::EINTR {
                continue;
            }
            break n == 1;
        };
        if !ready {
            libc::_exit(EXIT_NOT_READY);
        }
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
            break; // EOF: the committer is gone (or sent garbage)
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
/// committer's unrelated pipes and sockets open. Best effort (close_range is
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
