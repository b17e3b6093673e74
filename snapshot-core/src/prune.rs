//! Removing finished jobs: a failed job keeps its capture directory and
//! layer blob (`keep_failed`) for a post-mortem or a rerun, and every job
//! keeps its directory and status; [`prune`] removes them once they are old
//! enough.
//!
//! Rules: a job is removed when it is finished (completed or failed, a job
//! whose worker died counting as failed) and its status was last written at
//! least `older_than` ago. A job still in progress (its worker alive), a
//! failed job being rerun (`run_job` holds the job's worker lock) and a job
//! directory without a readable status are never touched. Removal takes the
//! job's capture directory (the recorded one only, see
//! [`job::discard_kept`]), its blob, then the job directory itself.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{Error, IoContext, Result};
use crate::job;
use crate::state::{StatusStore, effective_status, lock_file, try_lock_dir};
use crate::status::SnapshotStatus;

/// Removes (or with `dry_run` only lists) the jobs of `store` that the
/// rules above allow, oldest first; returns their statuses as they were.
pub(crate) fn prune(
    store: &StatusStore,
    older_than: Duration,
    dry_run: bool,
) -> Result<Vec<SnapshotStatus>> {
    let now = Utc::now();
    let mut pruned = Vec::new();
    for s in store.list()? {
        let s = match effective_status(store, s) {
            Ok(s) => s,
            // Removed meanwhile (another prune).
            Err(Error::SnapshotNotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        if !is_prunable(&s, now, older_than) {
            continue;
        }
        if dry_run || remove_job(store, &s.snapshot_id, now, older_than)? {
            pruned.push(s);
        }
    }
    Ok(pruned)
}

/// Whether the (effective) status `s` is of a job finished at least
/// `older_than` before `now`.
pub(crate) fn is_prunable(s: &SnapshotStatus, now: DateTime<Utc>, older_than: Duration) -> bool {
    let age = (now - s.updated_at).to_std().unwrap_or(Duration::ZERO);
    s.state.is_terminal() && age >= older_than
}

/// Removes job `id` if it is still prunable once nobody else can work on
/// it; `false` when it is not (busy, changed, or gone).
fn remove_job(
    store: &StatusStore,
    id: &str,
    now: DateTime<Utc>,
    older_than: Duration,
) -> Result<bool> {
    let dir = store.job_dir(id);
    // The directory's own lock is the status writers' turn: no status
    // changes while we decide. Busy or gone: leave it to the next prune.
    let _turn = match try_lock_dir(&dir, String::new) {
        Ok(l) => l,
        Err(Error::Busy(_)) => return Ok(false),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    let s = match store.read(id) {
        Ok(s) => effective_status(store, s)?,
        Err(Error::SnapshotNotFound(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    if !is_prunable(&s, now, older_than) {
        return Ok(false);
    }
    // A rerun of a failed job holds the worker lock while it works.
    let _worker = match lock_file(&dir, ".worker", String::new) {
        Ok(l) => l,
        Err(Error::Busy(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    job::discard_kept(store, id);
    // fd-bounded, at any depth (a kept capture may be deeper than PATH_MAX).
    crate::sys::fs::remove_all(&dir).at("remove", &dir)?;
    tracing::info!(snapshot = %id, state = %s.state, "pruned");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{SnapshotState, Worker};

    fn status(id: &str, state: SnapshotState, age: Duration) -> SnapshotStatus {
        let mut s = SnapshotStatus::new(id, "c", "r/x:y");
        s.state = state;
        s.updated_at = Utc::now() - chrono::Duration::from_std(age).unwrap();
        s
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn only_finished_jobs_old_enough_are_prunable() {
        let now = Utc::now();
        for state in [SnapshotState::Completed, SnapshotState::Failed] {
            assert!(is_prunable(&status("a", state, 2 * HOUR), now, HOUR));
            assert!(!is_prunable(&status("a", state, HOUR / 2), now, HOUR));
            assert!(is_prunable(
                &status("a", state, Duration::ZERO),
                now,
                Duration::ZERO
            ));
        }
        for state in [
            SnapshotState::Pending,
            SnapshotState::Capturing,
            SnapshotState::Captured,
            SnapshotState::Building,
            SnapshotState::Pushing,
        ] {
            assert!(!is_prunable(&status("a", state, 100 * HOUR), now, HOUR));
        }
        // A status from the future (clock stepped back) is not old.
        assert!(!is_prunable(
            &status("a", SnapshotState::Failed, Duration::ZERO),
            now - chrono::Duration::hours(1),
            HOUR
        ));
    }

    /// Writes job `id` with a status `age` old, its blob, and a capture
    /// directory in the job dir; returns the capture.
    fn job(store: &StatusStore, s: &SnapshotStatus) -> std::path::PathBuf {
        let dir = store.create_job_dir(&s.snapshot_id).unwrap();
        let capture = dir.join("capture");
        std::fs::create_dir_all(capture.join("etc")).unwrap();
        std::fs::write(capture.join("etc/suid"), b"x").unwrap();
        job::record_capture_dir(store, &s.snapshot_id, &capture).unwrap();
        std::fs::write(dir.join("layer.blob"), b"blob").unwrap();
        // Written directly: `store.write` would stamp `updated_at` now.
        store
            .write_json(&s.snapshot_id, "status.json", "status", s)
            .unwrap();
        capture
    }

    #[test]
    fn prune_removes_old_finished_jobs_and_what_they_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StatusStore::new(tmp.path());
        let old_failed = status("old-failed", SnapshotState::Failed, 2 * HOUR);
        let old_done = status("old-done", SnapshotState::Completed, 2 * HOUR);
        let new_failed = status("new-failed", SnapshotState::Failed, Duration::ZERO);
        let mut running = status("running", SnapshotState::Building, 2 * HOUR);
        running.worker = Worker::current();
        let mut orphan = status("orphan", SnapshotState::Pushing, 2 * HOUR);
        orphan.worker = Worker::current().map(|w| Worker {
            start_ticks: w.start_ticks + 1,
            ..w
        });
        let captures: Vec<_> = [&old_failed, &old_done, &new_failed, &running, &orphan]
            .into_iter()
            .map(|s| job(&store, s))
            .collect();
        // A directory without a status is left alone.
        store.create_job_dir("no-status").unwrap();

        let listed = prune(&store, HOUR, true).unwrap();
        let ids = |v: &[SnapshotStatus]| {
            let mut ids: Vec<_> = v.iter().map(|s| s.snapshot_id.clone()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&listed), ["old-done", "old-failed", "orphan"]);
        assert!(
            captures.iter().all(|c| c.exists()),
            "a dry run removed something"
        );

        let pruned = prune(&store, HOUR, false).unwrap();
        assert_eq!(ids(&pruned), ids(&listed));
        let orphan_status = pruned.iter().find(|s| s.snapshot_id == "orphan").unwrap();
        assert_eq!(
            orphan_status.state,
            SnapshotState::Failed,
            "reported as it really was"
        );
        for id in ["old-failed", "old-done", "orphan"] {
            assert!(!store.job_dir(id).exists(), "{id} left behind");
        }
        for (c, kept) in captures.iter().zip([false, false, true, true, false]) {
            assert_eq!(c.exists(), kept, "{}", c.display());
        }
        assert!(store.job_dir("new-failed").join("layer.blob").exists());
        assert!(store.job_dir("no-status").exists());
        assert!(prune(&store, HOUR, false).unwrap().is_empty());
    }

    #[test]
    fn a_job_being_rerun_is_not_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StatusStore::new(tmp.path());
        let s = status("rerun", SnapshotState::Failed, 2 * HOUR);
        let capture = job(&store, &s);
        let _worker = lock_file(&store.job_dir("rerun"), ".worker", String::new).unwrap();
        // Listed (a dry run does not look at locks), not removed.
        assert_eq!(prune(&store, HOUR, true).unwrap().len(), 1);
        assert!(prune(&store, HOUR, false).unwrap().is_empty());
        assert!(capture.exists());
    }

    #[test]
    fn a_capture_recorded_elsewhere_is_not_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StatusStore::new(tmp.path());
        let s = status("forged", SnapshotState::Failed, 2 * HOUR);
        job(&store, &s);
        let precious = tmp.path().join("precious");
        std::fs::create_dir(&precious).unwrap();
        job::record_capture_dir(&store, "forged", &precious).unwrap();
        assert_eq!(prune(&store, HOUR, false).unwrap().len(), 1);
        assert!(precious.exists());
        assert!(!store.job_dir("forged").exists());
    }
}
