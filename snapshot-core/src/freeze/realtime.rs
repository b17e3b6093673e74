//! Running the committing thread real-time for the frozen window: every
//! scheduling delay of that thread inside the window is pause the container
//! feels. The watchdog runs one priority above it ([`watchdog_priority`]), so
//! that a committer spinning at its priority cannot starve it.
//!
//! Invariant: the thread's previous policy and parameters are restored when
//! the guard drops, and a thread that is already real-time is left as its
//! caller set it. nix has no wrapper for `sched_{get,set}scheduler` or
//! `sched_getparam`, hence the raw libc calls.

use std::io;

/// The window thread's `SCHED_FIFO` priority: above every normal task, below
/// the kernel's own real-time threads.
const WINDOW_PRIORITY: libc::c_int = 1;

/// The calling thread's policy and parameters.
fn current() -> Option<(libc::c_int, libc::sched_param)> {
    // SAFETY: plain syscalls on the calling thread (pid 0) with a valid
    // pointer to a local value.
    unsafe {
        let policy = libc::sched_getscheduler(0);
        let mut param: libc::sched_param = std::mem::zeroed();
        if policy < 0 || libc::sched_getparam(0, &mut param) != 0 {
            return None;
        }
        Some((policy, param))
    }
}

/// The `SCHED_FIFO` priority for the watchdog of a window run by the calling
/// thread: one above the priority that thread will have in the window (its
/// own when the caller already made it real-time, else [`WINDOW_PRIORITY`]).
pub(super) fn watchdog_priority() -> libc::c_int {
    // SAFETY: a plain query.
    let max = unsafe { libc::sched_get_priority_max(libc::SCHED_FIFO) }.max(WINDOW_PRIORITY + 1);
    let window = match current() {
        Some((libc::SCHED_FIFO | libc::SCHED_RR, param)) => param.sched_priority,
        _ => WINDOW_PRIORITY,
    };
    window.saturating_add(1).min(max)
}

/// Runs process `pid` (its main thread) under `SCHED_FIFO` at `priority`.
pub(super) fn set_fifo(pid: libc::pid_t, priority: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: a plain syscall with a pointer to a local value.
    if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs process `pid` (its main thread) under the normal policy again.
pub(super) fn set_normal(pid: libc::pid_t) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain syscall with a pointer to a local value.
    if unsafe { libc::sched_setscheduler(pid, libc::SCHED_OTHER, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs the calling thread under `SCHED_FIFO` until dropped, then restores
/// its previous policy. Best effort: without the privilege nothing changes.
pub(super) struct RealtimeGuard {
    policy: libc::c_int,
    param: libc::sched_param,
}

impl RealtimeGuard {
    pub(super) fn enter() -> Option<RealtimeGuard> {
        let (policy, param) = current()?;
        if policy == libc::SCHED_FIFO || policy == libc::SCHED_RR {
            return None; // already real-time: leave it as the caller set it
        }
        let rt = libc::sched_param {
            sched_priority: WINDOW_PRIORITY,
        };
        // SAFETY: a plain syscall on the calling thread with a pointer to a
        // local value.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &rt) } != 0 {
            tracing::debug!(
                error = %io::Error::last_os_error(),
                "no SCHED_FIFO for the frozen window"
            );
            return None;
        }
        Some(RealtimeGuard { policy, param })
    }
}

impl Drop for RealtimeGuard {
    fn drop(&mut self) {
        // SAFETY: restores the values read in `enter` for the same thread.
        let rc = unsafe { libc::sched_setscheduler(0, self.policy, &self.param) };
        if rc != 0 {
            tracing::warn!(
                error = %io::Error::last_os_error(),
                "could not restore the scheduling policy after the frozen window"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: reads the calling thread's policy.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn realtime_guard_restores_the_policy() {
        let before = policy();
        drop(RealtimeGuard::enter());
        assert_eq!(policy(), before);
    }

    #[test]
    #[ignore = "needs root"]
    fn realtime_guard_runs_fifo_then_restores() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let before = policy();
        assert_eq!(
            before,
            libc::SCHED_OTHER,
            "the test thread starts SCHED_OTHER"
        );
        {
            let g = RealtimeGuard::enter();
            assert!(g.is_some(), "no SCHED_FIFO as root");
            assert_eq!(policy(), libc::SCHED_FIFO);
        }
        assert_eq!(policy(), before);
    }
}
