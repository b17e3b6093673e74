//! Reading a status as it really is, and waiting on it.
//!
//! A job that is not finished but whose worker process is gone (it crashed,
//! or was killed) is an orphan: it is reported as failed, whatever its
//! status file says. Waiting polls the store, so it works across processes.

use std::time::{Duration, Instant};

use super::StatusStore;
use crate::error::{Error, Result};
use crate::status::{ErrorInfo, SnapshotState, SnapshotStatus, Worker};

/// How often `wait_for` re-reads a status.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// The worker of an unfinished job whose process is gone: the job is an
/// orphan and nobody will finish it.
pub(crate) fn dead_worker(status: &SnapshotStatus) -> Option<Worker> {
    if status.state.is_terminal() {
        return None;
    }
    status.worker.filter(|w| !w.is_alive())
}

/// A status as it really is: a non-terminal job whose worker process is gone
/// is reported as failed.
pub(crate) fn effective_status(
    store: &StatusStore,
    status: SnapshotStatus,
) -> Result<SnapshotStatus> {
    match dead_worker(&status) {
        Some(w) => {
            // The worker may have finished between our read and the check.
            let mut again = store.read(&status.snapshot_id)?;
            if !again.state.is_terminal() {
                again.error = Some(ErrorInfo::from(&Error::Internal(format!(
                    "the process running this snapshot (pid {}) exited while it was {}",
                    w.pid, again.state
                ))));
                again.state = SnapshotState::Failed;
            }
            Ok(again)
        }
        None => Ok(status),
    }
}

/// Waits on the status store (works across processes).
pub(crate) fn wait_for(
    store: &StatusStore,
    id: &str,
    timeout: Duration,
    on_status: &mut dyn FnMut(&SnapshotStatus),
) -> Result<SnapshotStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = effective_status(store, store.read(id)?)?;
        on_status(&status);
        if let Some(e) = status.failure() {
            return Err(e);
        }
        if status.state == SnapshotState::Completed {
            return Ok(status);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout {
                snapshot_id: id.to_string(),
                timeout,
                capture: None,
            });
        }
        std::thread::sleep(WAIT_POLL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn dead_worker_reads_failed_and_wait_times_out() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StatusStore::new(tmp.path());
        store.create_job_dir("j1").unwrap();
        let mut s = SnapshotStatus::new("j1", "c", "r/x:y");
        s.state = SnapshotState::Pushing;
        s.worker = Some(Worker {
            pid: std::process::id(),
            start_ticks: 1,
        });
        store.write(&s).unwrap();
        let err = wait_for(&store, "j1", Duration::from_secs(1), &mut |_| {}).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::JobFailed);

        store.create_job_dir("j2").unwrap();
        let mut s = SnapshotStatus::new("j2", "c", "r/x:y");
        s.state = SnapshotState::Building;
        s.worker = Worker::current();
        store.write(&s).unwrap();
        let err = wait_for(&store, "j2", Duration::from_millis(150), &mut |_| {}).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
    }
}
