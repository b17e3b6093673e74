//! The status store: one directory per job under `<state>/jobs/<id>/`.
//!
//! Each job directory holds `status.json`. Writes go to a temporary file
//! that is fsynced and renamed over the old one, so a reader in another
//! process sees either the old or the new status, and a crash never leaves a
//! torn file. Snapshot ids become directory names: only a safe alphabet is
//! accepted. Directories are created mode 0700 (they hold copies of the
//! container's files); locks are `flock`s, released when their holder dies.

use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, IoContext, Result};
use crate::status::{SnapshotState, SnapshotStatus, Worker};

/// Reads and writes job records under `<state>/jobs/`.
#[derive(Debug, Clone)]
pub(crate) struct StatusStore {
    jobs: PathBuf,
}

const STATUS_FILE: &str = "status.json";

impl StatusStore {
    /// A store rooted at `<state_dir>/jobs`. Nothing is created yet.
    pub(crate) fn new(state_dir: &Path) -> Self {
        StatusStore {
            jobs: state_dir.join("jobs"),
        }
    }

    /// The directory of one job.
    pub(crate) fn job_dir(&self, id: &str) -> PathBuf {
        self.jobs.join(id)
    }

    /// The directory holding the job directories, created if missing.
    pub(crate) fn jobs_dir(&self) -> Result<&Path> {
        fs::create_dir_all(&self.jobs).at("create directory", &self.jobs)?;
        Ok(&self.jobs)
    }

    /// Creates the directory of a new job (mode 0700: it holds a copy of the
    /// container's files). It is new, so it is ours: a capture inside it is
    /// out of reach of anyone but root.
    #[cfg(test)]
    pub(crate) fn create_job_dir(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        self.jobs_dir()?;
        let dir = self.job_dir(id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .at("create directory", &dir)?;
        Ok(dir)
    }

    /// Creates the directory of a new job holding its first `status`, at
    /// once: it is made under a temporary name (`.new-<pid>-<start>-<id>`,
    /// naming its creator) and renamed into place with the status inside, so
    /// a committer killed in between leaves no job without a status (which
    /// nobody could list, wait on or prune), only a temporary directory that
    /// [`Self::remove_abandoned`] removes once its creator is gone.
    pub(crate) fn create_job(&self, status: &SnapshotStatus) -> Result<PathBuf> {
        let id = &status.snapshot_id;
        validate_id(id)?;
        self.jobs_dir()?;
        let me = Worker::current()
            .ok_or_else(|| Error::Internal("cannot read our own /proc/self/stat".into()))?;
        let tmp = self
            .jobs
            .join(format!("{NEW_PREFIX}{}-{}-{id}", me.pid, me.start_ticks));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .at("create directory", &tmp)?;
        let mut status = status.clone();
        status.updated_at = Utc::now();
        let json = serde_json::to_vec_pretty(&status)
            .map_err(|e| Error::Internal(format!("serialize status: {e}")))?;
        write_atomic(&tmp, STATUS_FILE, &json)?;
        let dir = self.job_dir(id);
        // rename(2) onto an existing directory would replace it if empty:
        // ids are unique, but never take over one that exists.
        if dir.exists() {
            return Err(Error::Internal(format!(
                "job directory {} exists",
                dir.display()
            )));
        }
        fs::rename(&tmp, &dir).at("rename", &dir)?;
        Ok(dir)
    }

    /// Removes the temporary directories of jobs being created (see
    /// [`Self::create_job`]) whose creator is gone. Best effort (logged).
    pub(crate) fn remove_abandoned(&self) {
        let Ok(entries) = fs::read_dir(&self.jobs) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let Some(creator) = name.to_str().and_then(creator_of_new) else {
                continue;
            };
            if !creator.is_alive() {
                let path = e.path();
                if let Err(err) = crate::sys::fs::remove_all(&path) {
                    tracing::warn!(path = %path.display(), error = %err, "removing an abandoned job directory failed");
                }
            }
        }
    }

    /// Atomically replaces the job's status (temp file, fsync, rename),
    /// unless the job is already `completed`: that state is final, so a
    /// late writer (a stale progress update, an orphan check that raced
    /// with the worker's last write) can never regress it.
    pub(crate) fn write(&self, status: &SnapshotStatus) -> Result<()> {
        validate_id(&status.snapshot_id)?;
        let dir = self.job_dir(&status.snapshot_id);
        // The committer, the worker and any process recovering orphans may
        // write the same job: they take turns, so the check below and the
        // rename are one step.
        let _turn = lock_dir(&dir)?;
        match self.read(&status.snapshot_id) {
            Ok(current) if current.state == SnapshotState::Completed => {
                if status.state != SnapshotState::Completed {
                    tracing::debug!(
                        snapshot = %status.snapshot_id,
                        state = %status.state,
                        "not overwriting a completed status"
                    );
                }
                return Ok(());
            }
            _ => {}
        }
        let mut status = status.clone();
        status.updated_at = Utc::now();
        self.write_json(&status.snapshot_id, STATUS_FILE, "status", &status)
    }

    /// Reads a job's status.
    pub(crate) fn read(&self, id: &str) -> Result<SnapshotStatus> {
        self.read_json(id, STATUS_FILE, "status")
    }

    /// Atomically replaces the JSON file `name` (holding a `what`) of a job.
    pub(crate) fn write_json<T: Serialize>(
        &self,
        id: &str,
        name: &str,
        what: &str,
        value: &T,
    ) -> Result<()> {
        validate_id(id)?;
        let json = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::Internal(format!("serialize {what}: {e}")))?;
        write_atomic(&self.job_dir(id), name, &json)
    }

    /// Reads the JSON file `name` (holding a `what`) of a job; a missing
    /// file is [`Error::SnapshotNotFound`].
    pub(crate) fn read_json<T: DeserializeOwned>(
        &self,
        id: &str,
        name: &str,
        what: &str,
    ) -> Result<T> {
        validate_id(id)?;
        let path = self.job_dir(id).join(name);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::SnapshotNotFound(id.to_string()));
            }
            Err(e) => return Err(Error::io("read", path, e)),
        };
        serde_json::from_slice(&data)
            .map_err(|e| Error::InvalidArgument(format!("corrupt {what} {}: {e}", path.display())))
    }

    /// Records a job as failed with `e`.
    pub(crate) fn mark_failed(&self, id: &str, e: &Error) -> Result<()> {
        let mut s = self.read(id)?;
        s.state = SnapshotState::Failed;
        s.error = Some(e.into());
        self.write(&s)
    }

    /// All known snapshot ids, oldest first.
    pub(crate) fn list(&self) -> Result<Vec<SnapshotStatus>> {
        let entries = match fs::read_dir(&self.jobs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read directory", &self.jobs, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.at("read directory", &self.jobs)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            match self.read(&name) {
                Ok(s) => out.push(s),
                // A job directory without status yet, or a foreign file: skip.
                Err(Error::SnapshotNotFound(_)) | Err(Error::InvalidArgument(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }
}

/// The prefix of a job directory being created (see
/// [`StatusStore::create_job`]); ids never start with a dot.
const NEW_PREFIX: &str = ".new-";

/// The creator named by a temporary job directory `.new-<pid>-<start>-<id>`.
fn creator_of_new(name: &str) -> Option<Worker> {
    let mut parts = name.strip_prefix(NEW_PREFIX)?.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    let start_ticks = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(Worker { pid, start_ticks })
}

/// Writes `name` in `dir` atomically and durably. The temporary name is
/// unique to this call (pid and a process-wide counter), so concurrent
/// writers, in one process or several, never write into each other's file.
pub(crate) fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let dst = dir.join(name);
    let mut f = fs::File::create(&tmp).at("create", &tmp)?;
    f.write_all(data).at("write", &tmp)?;
    f.sync_all().at("fsync", &tmp)?;
    drop(f);
    fs::rename(&tmp, &dst).at("rename", &dst)?;
    // Make the rename itself durable.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// An exclusive, blocking `flock` on the directory itself (no lock file to
/// leave behind); released on drop or when the process dies.
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<fs::File>> {
    let d = fs::File::open(dir).at("open", dir)?;
    nix::fcntl::Flock::lock(d, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| Error::errno("flock", dir, errno))
}

/// An exclusive, non-blocking `flock` on the directory `dir` itself;
/// [`Error::Busy`] with `busy()` when another holder has it.
pub(crate) fn try_lock_dir(
    dir: &Path,
    busy: impl FnOnce() -> String,
) -> Result<nix::fcntl::Flock<fs::File>> {
    let d = fs::File::open(dir).at("open", dir)?;
    nix::fcntl::Flock::lock(d, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            Error::Busy(busy())
        } else {
            Error::errno("flock", dir, errno)
        }
    })
}

/// Snapshot ids become directory names: accept only a safe alphabet.
pub(crate) fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid snapshot id {id:?}"
        )))
    }
}

/// Creates `dir` if missing, mode 0700.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .at("create directory", dir)
}

/// Takes an exclusive, non-blocking `flock` on `<dir>/<name>.lock`; released
/// when the returned value drops (or the process dies).
pub(crate) fn lock_file(
    dir: &Path,
    name: &str,
    busy: impl FnOnce() -> String,
) -> Result<nix::fcntl::Flock<std::fs::File>> {
    ensure_private_dir(dir)?;
    // Names come from container ids: keep them to a safe alphabet.
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{safe}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .at("open", &path)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                Error::Busy(busy())
            } else {
                Error::errno("flock", &path, errno)
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::ErrorKind;
    use crate::status::Progress;

    #[test]
    fn a_job_appears_with_its_status_and_abandoned_ones_go() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StatusStore::new(tmp.path());
        let mut s = SnapshotStatus::new("n1", "c", "r/x:y");
        s.state = SnapshotState::Capturing;
        let dir = store.create_job(&s).unwrap();
        assert_eq!(store.read("n1").unwrap().state, SnapshotState::Capturing);
        assert!(
            store.create_job(&s).is_err(),
            "an existing job was taken over"
        );

        // A committer killed before the rename: a dead creator's directory
        // goes, a live one's stays.
        let me = Worker::current().unwrap();
        let dead = tmp
            .path()
            .join(format!("jobs/.new-{}-{}-n2", me.pid, me.start_ticks + 1));
        let live = tmp
            .path()
            .join(format!("jobs/.new-{}-{}-n3", me.pid, me.start_ticks));
        for d in [&dead, &live] {
            fs::create_dir(d).unwrap();
            fs::write(d.join(STATUS_FILE), b"{").unwrap();
        }
        store.remove_abandoned();
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(dir.exists());
        let ids: Vec<_> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|s| s.snapshot_id)
            .collect();
        assert_eq!(ids, ["n1"]);
    }

    #[test]
    fn write_read_roundtrip_and_list() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StatusStore::new(tmp.path());
        store.create_job_dir("a1").unwrap();
        let mut s = SnapshotStatus::new("a1", "c", "localhost:5000/x:y");
        s.state = SnapshotState::Building;
        s.progress = Progress { done: 5, total: 10 };
        s.timings.pause = Some(Duration::from_micros(80));
        store.write(&s).unwrap();
        let back = store.read("a1").unwrap();
        assert_eq!(back.state, SnapshotState::Building);
        assert_eq!(back.progress.done, 5);
        assert_eq!(back.timings.pause, Some(Duration::from_micros(80)));
        // No temp file left behind.
        let names: Vec<_> = fs::read_dir(store.job_dir("a1"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("status.json")]);
        store.create_job_dir("b2").unwrap();
        assert_eq!(store.list().unwrap().len(), 1, "b2 has no status yet");
    }

    #[test]
    fn completed_is_final() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StatusStore::new(tmp.path());
        store.create_job_dir("done1").unwrap();
        let mut s = SnapshotStatus::new("done1", "c", "localhost:5000/x:y");
        s.state = SnapshotState::Completed;
        s.manifest_digest = Some("sha256:aa".into());
        store.write(&s).unwrap();
        let mut late = s.clone();
        late.state = SnapshotState::Pushing;
        late.manifest_digest = None;
        store.write(&late).unwrap();
        store
            .mark_failed("done1", &Error::Internal("late orphan check".into()))
            .unwrap();
        let back = store.read("done1").unwrap();
        assert_eq!(back.state, SnapshotState::Completed);
        assert_eq!(back.manifest_digest.as_deref(), Some("sha256:aa"));
        assert!(back.error.is_none());
    }

    #[test]
    fn concurrent_writers_never_tear_or_regress() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StatusStore::new(tmp.path());
        store.create_job_dir("race1").unwrap();
        let base = SnapshotStatus::new("race1", "c", "localhost:5000/x:y");
        store.write(&base).unwrap();
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let store = store.clone();
                let base = base.clone();
                scope.spawn(move || {
                    for i in 0..50u64 {
                        let mut s = base.clone();
                        s.state = SnapshotState::Pushing;
                        s.progress = Progress {
                            done: t * 1000 + i,
                            total: 10_000,
                        };
                        store.write(&s).unwrap();
                        // Every read sees a whole file.
                        store.read("race1").unwrap();
                    }
                });
            }
            let store = store.clone();
            let base = base.clone();
            scope.spawn(move || {
                std::thread::sleep(Duration::from_millis(5));
                let mut s = base.clone();
                s.state = SnapshotState::Completed;
                store.write(&s).unwrap();
            });
        });
        assert_eq!(store.read("race1").unwrap().state, SnapshotState::Completed);
        let leftovers: Vec<_> = fs::read_dir(store.job_dir("race1"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "status.json")
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn unknown_and_invalid_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StatusStore::new(tmp.path());
        assert_eq!(
            store.read("nope").unwrap_err().kind(),
            ErrorKind::SnapshotNotFound
        );
        assert_eq!(
            store.read("../etc").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert!(store.list().unwrap().is_empty());
    }
}
