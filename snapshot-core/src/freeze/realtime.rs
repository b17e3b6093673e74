//! Running the committing thread real-time for the frozen window: every
//! scheduling delay of that thread inside the window is pause the container
//! feels.
//!
//! Invariant: the thread's previous policy and parameters are restored when
//! the guard drops, and a thread that is already real-time is left as its
//! caller set it. nix has no wrapper for `sched_{get,set}scheduler` or
//! `sched_getparam`, hence the raw libc calls.

use std::io;

/// Runs the calling thread under `SCHED_FIFO` until dropped, then restores
/// its previous policy. Best effort: without the privilege nothing changes.
pub(super) struct RealtimeGuard {
    policy: libc::c_int,
    param: libc::sched_param,
}

impl RealtimeGuard {
    pub(super) fn enter() -> Option<RealtimeGuard> {
        // SAFETY: plain syscalls on the calling thread (pid 0) with valid
        // pointers to local values.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let mut param: libc::sched_param = std::mem::zeroed();
            if policy < 0 || libc::sched_getparam(0, &mut param) != 0 {
                return None;
            }
            if policy == libc::SCHED_FIFO || policy == libc::SCHED_RR {
                return None; // already real-time: leave it as the caller set it
            }
            // A low real-time priority: above every normal task, below the
            // kernel's own real-time threads.
            let rt = libc::sched_param { sched_priority: 1 };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &rt) != 0 {
                tracing::debug!(
                    error = %io::Error::last_os_error(),
                    "no SCHED_FIFO for the frozen window"
                );
                return None;
            }
            Some(RealtimeGuard { policy, param })
        }
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
