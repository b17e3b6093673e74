//! The containerd-backed implementation of [`SeamlessSnapshot`]: the
//! orchestration of a commit, from containerd's view of the container to the
//! start of the background job.
//!
//! Invariants: one commit per container at a time (a lock in
//! `<state>/locks`); a container frozen by someone else is refused, never
//! thawed; the job directory and its status exist before the capture starts
//! and the capture directory is recorded before it is created, so that a
//! commit interrupted at any point is found and cleaned up by the next
//! [`ContainerdSnapshotter::new`]; a failed capture leaves no partial copy.
//! A capture is only ever created below a private root (`state::private`),
//! and a commit whose capture or blob would not fit (`space`) is refused
//! before any job or capture exists and before anything is frozen.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::SeamlessSnapshot;
use crate::capture;
use crate::config::{BackgroundMode, CommitOptions, Config};
use crate::containerd::{self, ContainerdClient};
use crate::error::{Error, IoContext, Result};
use crate::freeze;
use crate::job::{self, JobSpec, StatusWriter};
use crate::procfs::idmap::UserNamespace;
use crate::prune;
use crate::publish::Target;
use crate::registry::PushTuning;
use crate::result::SnapshotResult;
use crate::space;
use crate::state::{self, StatusStore, ensure_private_dir, lock_file, try_lock_dir};
use crate::status::{SnapshotState, SnapshotStatus, Worker};
use fault::{FAULT_SKIP_SPACE_CHECK, fault_flag};
use window::ensure_not_frozen;

pub(crate) mod fault;
mod presence;
mod window;

/// Commits containers of one containerd namespace.
///
/// Owns a small tokio runtime for gRPC calls and in-process background jobs.
/// Dropping it stops in-process jobs that have not finished and marks them
/// `failed`.
pub struct ContainerdSnapshotter {
    config: Config,
    store: StatusStore,
    /// `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// Ids of in-process jobs still running.
    in_flight: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Drop for ContainerdSnapshotter {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Do not block the caller on a layer build in progress.
            rt.shutdown_background();
        }
        let ids: Vec<String> = match self.in_flight.lock() {
            Ok(mut g) => g.drain().collect(),
            Err(_) => return,
        };
        for id in ids {
            let e = Error::Internal(
                "the snapshotter was dropped before the background job finished".into(),
            );
            if let Err(we) = self.store.mark_failed(&id, &e) {
                tracing::warn!(snapshot = %id, error = %we, "recording abandoned job failed");
            }
        }
    }
}

impl std::fmt::Debug for ContainerdSnapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdSnapshotter")
            .field("config", &self.config)
            .finish()
    }
}

fn new_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("seamless-snapshot")
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("start tokio runtime: {e}")))
}

impl ContainerdSnapshotter {
    /// Creates an implementation from `config`. Creates the state directory;
    /// does not contact containerd yet.
    pub fn new(config: Config) -> Result<Self> {
        ensure_private_dir(&config.state_dir)?;
        let snap = ContainerdSnapshotter {
            store: StatusStore::new(&config.state_dir),
            config,
            runtime: Some(new_runtime()?),
            in_flight: Default::default(),
        };
        job::recover_orphans(&snap.store, snap.config.keep_failed);
        if let Some(age) = snap.config.keep_finished_for
            && let Err(e) = prune::prune(&snap.store, age, false)
        {
            tracing::warn!(error = %e, "removing old finished jobs failed");
        }
        Ok(snap)
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime> {
        self.runtime
            .as_ref()
            .ok_or_else(|| Error::Internal("runtime already shut down".into()))
    }

    /// Drops the implementation like `drop`, but first waits up to `timeout`
    /// for its runtime's threads to exit, so that none of them still runs
    /// library code afterwards (a C caller may unload the library next).
    /// A blocking step in progress (a layer build) is not interrupted; past
    /// `timeout` it is left to end in the background, as on drop.
    pub fn shutdown(mut self, timeout: Duration) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(timeout);
        }
        // Drop marks the in-process jobs that did not finish as failed.
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Commits with explicit per-commit `options`; with `wait`, also waits for
    /// the push (as [`SeamlessSnapshot::commit_with_wait`]).
    pub fn commit_with(
        &self,
        container_id: &str,
        target_ref: &str,
        options: &CommitOptions,
        wait: Option<Duration>,
    ) -> Result<SnapshotResult> {
        let started = Instant::now();
        let mut result = self.capture(container_id, target_ref, options)?;
        if let Some(timeout) = wait {
            let remaining = timeout.saturating_sub(started.elapsed());
            let status = match self.wait(&result.snapshot_id, remaining) {
                Ok(status) => status,
                Err(Error::Timeout {
                    snapshot_id,
                    timeout,
                    ..
                }) => {
                    result.total_time = started.elapsed();
                    return Err(Error::Timeout {
                        snapshot_id,
                        timeout,
                        capture: Some(Box::new(result)),
                    });
                }
                Err(e) => return Err(e),
            };
            result.manifest_digest = status.manifest_digest;
            result.layer = status.layer;
        }
        result.total_time = started.elapsed();
        Ok(result)
    }

    /// Waits until a snapshot is completed. Returns [`Error::JobFailed`] when
    /// it failed and [`Error::Timeout`] when `timeout` passes first (the job
    /// goes on).
    pub fn wait(&self, snapshot_id: &str, timeout: Duration) -> Result<SnapshotStatus> {
        state::wait_for(&self.store, snapshot_id, timeout, &mut |_| {})
    }

    /// Like [`Self::wait`], calling `on_status` with every status read while
    /// waiting (the last one included), e.g. to show progress.
    pub fn wait_observing(
        &self,
        snapshot_id: &str,
        timeout: Duration,
        on_status: &mut dyn FnMut(&SnapshotStatus),
    ) -> Result<SnapshotStatus> {
        state::wait_for(&self.store, snapshot_id, timeout, on_status)
    }

    /// All snapshots in the state directory, oldest first.
    pub fn list(&self) -> Result<Vec<SnapshotStatus>> {
        let mut all = self.store.list()?;
        for s in &mut all {
            *s = state::effective_status(&self.store, s.clone())?;
        }
        Ok(all)
    }

    /// Removes finished snapshots (failed or completed) whose status was last
    /// written at least `older_than` ago: the capture directory and layer
    /// blob a failed one kept, and the job directory with its status. A
    /// snapshot still in progress (its worker alive) or being rerun is never
    /// touched. With `dry_run` nothing is removed. Returns the statuses of
    /// the snapshots removed (or that would be), oldest first.
    pub fn prune(&self, older_than: Duration, dry_run: bool) -> Result<Vec<SnapshotStatus>> {
        prune::prune(&self.store, older_than, dry_run)
    }

    /// The start gate of a [`BackgroundMode::Process`] worker: reads standard
    /// input to EOF and says whether the committer opened the gate (wrote a
    /// byte after recording this process as the job's worker). `false` means
    /// the committer died or failed first: the job is not this process's to
    /// run. When standard input is a terminal (a person rerunning a job by
    /// hand) there is no gate and this returns `true` at once.
    pub fn worker_start_gate() -> bool {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            return true;
        }
        let mut gate = Vec::new();
        let _ = stdin.lock().read_to_end(&mut gate);
        !gate.is_empty()
    }

    /// Runs (or reruns) the background part of a captured snapshot in this
    /// process, to completion. This is what a [`BackgroundMode::Process`]
    /// worker calls once [`ContainerdSnapshotter::worker_start_gate`] opened.
    pub fn run_job(state_dir: &Path, snapshot_id: &str) -> Result<SnapshotStatus> {
        let store = StatusStore::new(state_dir);
        let spec = JobSpec::load(&store, snapshot_id)?;
        let _lock = lock_file(&store.job_dir(snapshot_id), ".worker", || {
            format!("snapshot {snapshot_id} is already being worked on")
        })?;
        let current = store.read(snapshot_id)?;
        if current.state == SnapshotState::Completed {
            // Nothing left to do; rerunning would only find the capture gone.
            return Ok(current);
        }
        new_runtime()?.block_on(job::connect_and_run(spec, store))
    }

    /// Where the captures of commits of `upper` go: on the upper dir's
    /// filesystem when possible, so reflinks work and copies stay within one
    /// device; always below a directory only root can enter (see
    /// [`Config::capture_root`]).
    fn capture_home(&self, upper: &Path) -> Result<CaptureHome> {
        if let Some(root) = &self.config.capture_root {
            return Ok(CaptureHome::Root(state::private_root_in(root)?));
        }
        let upper_dev = std::fs::metadata(upper).at("stat", upper)?.dev();
        let jobs = self.store.jobs_dir()?;
        if std::fs::metadata(jobs).at("stat", jobs)?.dev() == upper_dev {
            // Each job directory is new and 0700: the path to it must be
            // one nobody else can change.
            state::check_trusted_path(jobs)?;
            return Ok(CaptureHome::JobDir(jobs.to_path_buf()));
        }
        // <snapshotter root>/snapshots/<n>/fs -> <snapshotter root>/seamless-capture
        let root = upper
            .ancestors()
            .nth(3)
            .ok_or_else(|| Error::Unsupported(format!("unexpected upper dir {}", upper.display())))?
            .join(state::PRIVATE_SUBDIR);
        Ok(CaptureHome::Root(state::private_subdir(&root)?))
    }

    /// Fails with "No space left on device" when a capture of `upper` in
    /// `home` and its layer blob in the state directory would not fit (see
    /// `space`); called before anything is created or frozen.
    fn check_space(&self, upper: &Path, home: &CaptureHome) -> Result<()> {
        if fault_flag(FAULT_SKIP_SPACE_CHECK) {
            return Ok(());
        }
        let est = capture::estimate(upper)?;
        let upper_dev = std::fs::metadata(upper).at("stat", upper)?.dev();
        let dir = home.dir();
        let same_fs = std::fs::metadata(dir).at("stat", dir)?.dev() == upper_dev;
        let budget = space::Budget::of(&est, same_fs && capture::can_reflink(dir));
        tracing::debug!(?est, ?budget, "space needed");
        space::check(&est, &budget, dir, self.store.jobs_dir()?)
    }

    fn capture(
        &self,
        container_id: &str,
        target_ref: &str,
        options: &CommitOptions,
    ) -> Result<SnapshotResult> {
        let started = Instant::now();
        // Reject a bad target before anything is touched.
        let target = Target::parse(target_ref)?;
        let (client, container, mount, base, pids) = self.runtime()?.block_on(async {
            let client = ContainerdClient::connect(
                &self.config.containerd_address,
                &self.config.namespace,
                self.config.containerd_timeout,
            )
            .await?;
            let container = client.container(container_id).await?;
            let mount = client.overlay_mount(&container).await?;
            let base = client.base_image(&container).await?;
            let pids = client.task_pids(container_id).await?;
            Ok::<_, Error>((client, container, mount, base, pids))
        })?;
        drop(client);
        containerd::check_mountinfo(container.pid, &mount.upper)?;
        // A container in a user namespace sees other IDs than the host's its
        // files are owned by: its maps go with the job, for the layer to
        // carry the container's view. Read before anything is created (a map
        // never changes once written).
        let user_namespace = UserNamespace::of_pid(container.pid)?;
        if let Some(ns) = &user_namespace {
            tracing::debug!(?ns, "container in a user namespace: owners are mapped back");
        }
        // One commit per container at a time: a second one's thaw would end
        // the first one's frozen window early. The lock is on the upper dir
        // itself, so committers with different state directories (or
        // libraries) exclude each other too.
        let _lock = try_lock_dir(&mount.upper, || {
            format!("another commit of container {container_id} is in progress")
        })?;
        let freezer =
            freeze::freezer_for_pids(container.pid, &pids, container.cgroups_path.as_deref())?;
        ensure_not_frozen(freezer.as_ref(), container_id)?;
        // Where the capture goes, and whether it and the blob fit: refused
        // before any job or capture exists.
        let home = self.capture_home(&mount.upper)?;
        self.check_space(&mount.upper, &home)?;

        let id = new_snapshot_id();
        let mut status = SnapshotStatus::new(&id, container_id, target_ref);
        status.state = SnapshotState::Capturing;
        status.worker = Worker::current();
        self.store.create_job(&status)?;
        let writer = StatusWriter::written(self.store.clone(), status);

        let capture_dir = home.capture_dir(&self.store, &id);
        if let Err(e) = job::record_capture_dir(&self.store, &id, &capture_dir) {
            return Err(writer.fail(e));
        }
        // From here on a failure also removes the (partial) capture.
        let abandon = |e: Error| {
            job::discard_capture(&capture_dir);
            writer.fail(e)
        };
        let verify = self.config.defaults.verify_capture || options.verify_capture;
        let (capture, pause, captured_at, breakdown) = self
            .capture_frozen(
                container_id,
                &mount,
                &capture_dir,
                freezer.as_ref(),
                container.pid,
                &writer,
                verify,
            )
            .map_err(abandon)?;
        let capture_time = started.elapsed();
        let (files, bytes) = capture.totals();

        let spec = JobSpec {
            snapshot_id: id.clone(),
            container_id: container_id.to_string(),
            target_ref: target_ref.to_string(),
            target: Some(target),
            containerd_address: self.config.containerd_address.clone(),
            namespace: self.config.namespace.clone(),
            base_image: base.name.clone(),
            base_manifest_descriptor: base.manifest_descriptor.clone(),
            base_manifest: String::from_utf8_lossy(&base.manifest).into_owned(),
            base_config: String::from_utf8_lossy(&base.config).into_owned(),
            capture_dir: capture_dir.clone(),
            overlay_userxattr: mount.userxattr,
            user_namespace,
            captured_at,
            options: merge_options(&self.config.defaults, options),
            docker_config: self.config.docker_config.clone(),
            registry_ca: self.config.registry_ca.clone(),
            registry_certs_dirs: self.config.registry_certs_dirs.clone(),
            push: PushTuning::of(&self.config),
            keep_failed: self.config.keep_failed,
        };
        spec.save(&self.store).map_err(abandon)?;
        writer
            .update(|s| {
                s.state = SnapshotState::Captured;
                s.timings.capture = Some(capture_time);
                s.timings.pause = Some(pause.pause);
                s.pause_breakdown = Some(breakdown.clone());
                s.progress.done = bytes;
                s.progress.total = bytes;
            })
            .and_then(|()| self.start_background(spec, &writer))
            .map_err(abandon)?;
        drop(writer);

        Ok(SnapshotResult {
            snapshot_id: id,
            container_id: container_id.to_string(),
            target_ref: target_ref.to_string(),
            pause_time: pause.pause,
            total_time: started.elapsed(),
            old_upper_dir: capture_dir,
            new_upper_dir: mount.upper.clone(),
            files_captured: files,
            bytes_captured: bytes,
            capture_strategy: capture.strategy(),
            freezer: freezer.kind(),
            captured_at,
            base_image: base.name,
            manifest_digest: None,
            layer: None,
            pause_breakdown: breakdown,
        })
    }

    fn start_background(&self, spec: JobSpec, writer: &StatusWriter) -> Result<()> {
        match &self.config.background {
            BackgroundMode::InProcess => {
                let store = self.store.clone();
                let in_flight = self.in_flight.clone();
                if let Ok(mut g) = in_flight.lock() {
                    g.insert(spec.snapshot_id.clone());
                }
                self.runtime()?.spawn(async move {
                    let id = spec.snapshot_id.clone();
                    if let Err(e) = job::connect_and_run(spec, store).await {
                        tracing::error!(snapshot = %id, error = %e, "background job error");
                    }
                    if let Ok(mut g) = in_flight.lock() {
                        g.remove(&id);
                    }
                });
                Ok(())
            }
            BackgroundMode::Process { program, args } => {
                let log = self.store.job_dir(&spec.snapshot_id).join("worker.log");
                let log_file = std::fs::File::create(&log).at("create", &log)?;
                let log_err = log_file.try_clone().at("dup", &log)?;
                let mut child = std::process::Command::new(program)
                    .args(args)
                    .arg(&self.config.state_dir)
                    .arg(&spec.snapshot_id)
                    // The start gate: the worker waits for EOF on stdin, so
                    // that it is recorded as the job's worker before it
                    // writes the status itself.
                    .stdin(Stdio::piped())
                    .stdout(log_file)
                    .stderr(log_err)
                    // Its own process group: a Ctrl-C on the committer's
                    // terminal does not stop the upload.
                    .process_group(0)
                    .spawn()
                    .at("spawn worker", program)?;
                let recorded = writer.update(|s| s.worker = Worker::of_pid(child.id()));
                // One byte opens the gate; a bare EOF (we failed to record
                // the worker, or died before this line) tells it to leave the
                // job alone: the job reads failed, and a worker completing it
                // afterwards would turn a final state into another.
                if recorded.is_ok()
                    && let Some(mut gate) = child.stdin.take()
                {
                    let _ = gate.write_all(b"1");
                }
                drop(child.stdin.take());
                recorded
                // The worker is reaped by init once we exit; a zombie until then.
            }
        }
    }
}

/// Where the captures of a commit go (see
/// [`ContainerdSnapshotter::capture_home`]).
enum CaptureHome {
    /// `<job dir>/capture`: the job's own new 0700 directory keeps it
    /// private. Holds the jobs directory.
    JobDir(PathBuf),
    /// `<private root>/<id>`, a root-owned 0700 directory.
    Root(PathBuf),
}

impl CaptureHome {
    /// An existing directory on the captures' filesystem.
    fn dir(&self) -> &Path {
        match self {
            CaptureHome::JobDir(d) | CaptureHome::Root(d) => d,
        }
    }

    /// The capture directory of job `id` (not created).
    fn capture_dir(&self, store: &StatusStore, id: &str) -> PathBuf {
        match self {
            CaptureHome::JobDir(_) => store.job_dir(id).join("capture"),
            CaptureHome::Root(root) => root.join(id),
        }
    }
}

/// Per-commit options on top of the configured defaults.
fn merge_options(defaults: &CommitOptions, given: &CommitOptions) -> CommitOptions {
    let mut o = given.clone();
    for (k, v) in &defaults.labels {
        o.labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    for (k, v) in &defaults.annotations {
        o.annotations.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if o.message.is_none() {
        o.message = defaults.message.clone();
    }
    if o.author.is_none() {
        o.author = defaults.author.clone();
    }
    o.compression_level = o.compression_level.or(defaults.compression_level);
    o.compression_threads = o.compression_threads.or(defaults.compression_threads);
    o.max_sparse_expansion = o.max_sparse_expansion.or(defaults.max_sparse_expansion);
    for h in &defaults.insecure_registries {
        if !o.insecure_registries.contains(h) {
            o.insecure_registries.push(h.clone());
        }
    }
    o.verify_capture |= defaults.verify_capture;
    for x in &defaults.extra_xattrs {
        if !o.extra_xattrs.contains(x) {
            o.extra_xattrs.push(x.clone());
        }
    }
    o
}

/// A new snapshot id: time-ordered and unique.
fn new_snapshot_id() -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", Utc::now().format("%Y%m%dT%H%M%S"), &uuid[..12])
}

impl SeamlessSnapshot for ContainerdSnapshotter {
    fn commit(&self, container_id: &str, target_ref: &str) -> Result<SnapshotResult> {
        self.commit_with(container_id, target_ref, &CommitOptions::default(), None)
    }

    fn commit_with_wait(
        &self,
        container_id: &str,
        target_ref: &str,
        timeout: Duration,
    ) -> Result<SnapshotResult> {
        self.commit_with(
            container_id,
            target_ref,
            &CommitOptions::default(),
            Some(timeout),
        )
    }

    fn get_status(&self, snapshot_id: &str) -> Result<SnapshotStatus> {
        state::effective_status(&self.store, self.store.read(snapshot_id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_and_unique() {
        let a = new_snapshot_id();
        let b = new_snapshot_id();
        assert_ne!(a, b);
        state::validate_id(&a).unwrap();
    }

    #[test]
    fn options_merge_keeps_given_values() {
        let mut d = CommitOptions::default();
        d.labels.insert("a".into(), "default".into());
        d.labels.insert("b".into(), "default".into());
        d.message = Some("dm".into());
        d.insecure_registries.push("r:5000".into());
        d.extra_xattrs.push("trusted.".into());
        let mut g = CommitOptions::default();
        g.extra_xattrs.push("security.selinux".into());
        g.labels.insert("a".into(), "given".into());
        let m = merge_options(&d, &g);
        assert_eq!(m.labels["a"], "given");
        assert_eq!(m.labels["b"], "default");
        assert_eq!(m.message.as_deref(), Some("dm"));
        assert_eq!(m.insecure_registries, vec!["r:5000".to_string()]);
        assert_eq!(m.extra_xattrs, ["security.selinux", "trusted."]);
        // Build settings: given ones win, unset ones come from the defaults.
        d.compression_level = Some(9);
        d.compression_threads = Some(4);
        d.max_sparse_expansion = Some(1 << 20);
        g.compression_level = Some(1);
        let m = merge_options(&d, &g);
        assert_eq!(m.compression_level, Some(1));
        assert_eq!(m.compression_threads, Some(4));
        assert_eq!(m.max_sparse_expansion, Some(1 << 20));
        // And they reach the layer builder.
        let b = crate::layer::BuildOptions::of(&m);
        assert_eq!(
            (b.level, b.threads, b.max_sparse_expansion),
            (Some(1), 4, 1 << 20)
        );
        let b = crate::layer::BuildOptions::of(&CommitOptions::default());
        assert_eq!(
            b.max_sparse_expansion,
            CommitOptions::DEFAULT_MAX_SPARSE_EXPANSION
        );
        // Old job specs and JSON options without the fields still parse.
        let o: CommitOptions = serde_json::from_str(r#"{"compression": "zstd"}"#).unwrap();
        assert_eq!((o.compression_level, o.compression_threads), (None, None));
    }

    /// A job `id` in `state` (status not written yet) with a capture
    /// directory recorded in its job dir: `(job dir, capture, status)`.
    fn job_with_capture(
        store: &StatusStore,
        id: &str,
        state: SnapshotState,
    ) -> (PathBuf, PathBuf, SnapshotStatus) {
        let dir = store.create_job_dir(id).unwrap();
        let capture = dir.join("capture");
        std::fs::create_dir_all(capture.join("partial")).unwrap();
        job::record_capture_dir(store, id, &capture).unwrap();
        let mut s = SnapshotStatus::new(id, "c", "r/x:y");
        s.state = state;
        (dir, capture, s)
    }

    #[test]
    fn interrupted_capture_is_failed_and_removed_on_start() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StatusStore::new(tmp.path());
        let (_, capture, mut s) = job_with_capture(&store, "j-int", SnapshotState::Capturing);
        // A worker that is certainly gone (same pid, other start time).
        s.worker = Worker::current().map(|w| Worker {
            start_ticks: w.start_ticks + 1,
            ..w
        });
        store.write(&s).unwrap();

        let snap = ContainerdSnapshotter::new(Config {
            state_dir: tmp.path().to_path_buf(),
            ..Config::default()
        })
        .unwrap();
        let st = snap.get_status("j-int").unwrap();
        assert_eq!(st.state, SnapshotState::Failed);
        assert!(st.error.unwrap().message.contains("exited"));
        assert!(!capture.exists(), "partial capture left behind");
        // Persisted, not only computed.
        assert_eq!(store.read("j-int").unwrap().state, SnapshotState::Failed);
    }

    #[test]
    fn old_finished_jobs_are_removed_on_start_when_configured() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StatusStore::new(tmp.path());
        let (dir, capture, s) = job_with_capture(&store, "j-old", SnapshotState::Failed);
        store.write(&s).unwrap();
        let config = Config {
            state_dir: tmp.path().to_path_buf(),
            ..Config::default()
        };

        // Not by default, nor when younger than the limit.
        drop(ContainerdSnapshotter::new(config.clone()).unwrap());
        let keep_hour = Config {
            keep_finished_for: Some(Duration::from_secs(3600)),
            ..config.clone()
        };
        drop(ContainerdSnapshotter::new(keep_hour).unwrap());
        assert!(capture.exists());

        let keep_none = Config {
            keep_finished_for: Some(Duration::ZERO),
            ..config
        };
        let snap = ContainerdSnapshotter::new(keep_none).unwrap();
        assert!(!dir.exists(), "the job dir is left");
        assert_eq!(
            snap.get_status("j-old").unwrap_err().kind(),
            crate::ErrorKind::SnapshotNotFound
        );
    }
}
