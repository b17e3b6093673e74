//! Background jobs: turning a capture directory into a layer, an image, and a
//! push, with the status kept up to date on disk.
//!
//! A job is fully described by its [`JobSpec`] (`<state>/jobs/<id>/job.json`),
//! so it can run in this process or in a detached worker process.
//!
//! Failure policy: on success the capture directory and the layer blob are
//! removed, before the status says `completed` (a waiter that returns then
//! finds nothing left behind). On failure they are kept when `keep_failed` is set (the default)
//! so the cause can be examined and the job rerun with
//! [`crate::ContainerdSnapshotter::run_job`]; otherwise they are removed.
//! A job whose worker process died is failed and cleaned up the same way by
//! [`recover_orphans`], except that an interrupted capture is always removed.
//! What a finished job kept goes when it is pruned (`crate::prune`).
//!
//! Next to `status.json`, a job directory holds `job.json` (the spec),
//! `capture.path` (where the capture directory is, written before it is
//! created) and, while the layer is built and pushed, `layer.blob`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::CommitOptions;
use crate::containerd::ContainerdClient;
use crate::error::{Error, Result};
use crate::image::{self, Descriptor, History};
use crate::layer;
use crate::procfs::idmap::UserNamespace;
use crate::publish::{self, Target};
use crate::registry::{self, PushRequest, PushTuning, RegistrySettings};
use crate::snapshotter::fault::{FAULT_HOLD_BEFORE_BUILD, FAULT_HOLD_BEFORE_CLEANUP, fault_hold};
use crate::state::{self, StatusStore};
use crate::status::{LayerInfo, SnapshotState, SnapshotStatus, Worker};

const SPEC_FILE: &str = "job.json";
const BLOB_FILE: &str = "layer.blob";
/// Records where a job's capture directory is, written before the capture
/// starts so that an interrupted capture can be cleaned up.
const CAPTURE_PATH_FILE: &str = "capture.path";
/// How often progress is written to the status file at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Everything a background job needs, persisted next to its status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobSpec {
    /// The snapshot id.
    pub(crate) snapshot_id: String,
    /// The source container.
    pub(crate) container_id: String,
    /// Where the image goes, as given.
    pub(crate) target_ref: String,
    /// [`Self::target_ref`] parsed at commit time (paths made absolute
    /// against the committer's directory). `None` in specs written before
    /// targets other than registries existed: parsed from `target_ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<Target>,
    /// containerd's socket (to read base layers from its content store).
    pub(crate) containerd_address: String,
    /// The containerd namespace.
    pub(crate) namespace: String,
    /// The base image's containerd name.
    pub(crate) base_image: String,
    /// The base image's platform manifest descriptor.
    pub(crate) base_manifest_descriptor: Descriptor,
    /// The base manifest, verbatim.
    pub(crate) base_manifest: String,
    /// The base config, verbatim.
    pub(crate) base_config: String,
    /// The frozen copy of the writable layer.
    pub(crate) capture_dir: PathBuf,
    /// The overlay mount had `userxattr`: overlay's own xattrs in the
    /// capture are `user.overlay.*` rather than `trusted.overlay.*`.
    #[serde(default)]
    pub(crate) overlay_userxattr: bool,
    /// The container's user namespace (its ID maps as the host sees them),
    /// read at commit time; `None` without one (or with identity maps):
    /// the layer's owners are then the host's as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) user_namespace: Option<UserNamespace>,
    /// The instant the copy represents.
    pub(crate) captured_at: DateTime<Utc>,
    /// Commit options.
    pub(crate) options: CommitOptions,
    /// Docker config for credentials.
    pub(crate) docker_config: Option<PathBuf>,
    /// CA files trusted for every registry.
    #[serde(default)]
    pub(crate) registry_ca: Vec<PathBuf>,
    /// `certs.d` roots.
    #[serde(default = "crate::config::Config::default_registry_certs_dirs")]
    pub(crate) registry_certs_dirs: Vec<PathBuf>,
    /// Retries, timeouts, chunks and concurrency of the push.
    #[serde(default)]
    pub(crate) push: PushTuning,
    /// Keep the capture directory and blob after a failure.
    pub(crate) keep_failed: bool,
}

impl JobSpec {
    /// Persists the spec in the job's directory.
    pub(crate) fn save(&self, store: &StatusStore) -> Result<()> {
        store.write_json(&self.snapshot_id, SPEC_FILE, "job", self)
    }

    /// Loads a job's spec.
    pub(crate) fn load(store: &StatusStore, id: &str) -> Result<JobSpec> {
        store.read_json(id, SPEC_FILE, "job")
    }
}

/// Writes status changes, throttling progress-only updates.
pub(crate) struct StatusWriter {
    store: StatusStore,
    inner: Mutex<(SnapshotStatus, Instant)>,
}

impl StatusWriter {
    /// Starts from `status` (written at once).
    pub(crate) fn new(store: StatusStore, status: SnapshotStatus) -> Result<Self> {
        store.write(&status)?;
        Ok(StatusWriter {
            store,
            inner: Mutex::new((status, Instant::now())),
        })
    }

    /// Starts from `status`, already written.
    pub(crate) fn written(store: StatusStore, status: SnapshotStatus) -> Self {
        StatusWriter {
            store,
            inner: Mutex::new((status, Instant::now())),
        }
    }

    /// Applies `f` and writes the status now.
    pub(crate) fn update(&self, f: impl FnOnce(&mut SnapshotStatus)) -> Result<()> {
        let mut g = self.inner.lock().map_err(|_| poisoned())?;
        f(&mut g.0);
        g.1 = Instant::now();
        self.store.write(&g.0)
    }

    /// Records progress; written at most every 250 ms. Progress is advisory:
    /// a failed write is logged, not fatal.
    pub(crate) fn progress(&self, done: u64, total: u64) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        g.0.progress.done = done;
        g.0.progress.total = total;
        if g.1.elapsed() >= PROGRESS_INTERVAL {
            g.1 = Instant::now();
            if let Err(e) = self.store.write(&g.0) {
                tracing::warn!(error = %e, "writing progress failed");
            }
        }
    }

    /// Records `e` as the job's failure (best effort) and returns it.
    pub(crate) fn fail(&self, e: Error) -> Error {
        if let Err(we) = self.update(|s| {
            s.state = SnapshotState::Failed;
            s.error = Some((&e).into());
        }) {
            tracing::warn!(error = %we, "recording failure failed");
        }
        e
    }

    /// A copy of the current status.
    pub(crate) fn snapshot(&self) -> Result<SnapshotStatus> {
        Ok(self.inner.lock().map_err(|_| poisoned())?.0.clone())
    }
}

fn poisoned() -> Error {
    Error::Internal("status lock poisoned".into())
}

/// Runs a captured job with containerd's content store (of the spec's
/// address and namespace) as the source of base layers. A failure to
/// connect is recorded as the job's failure.
pub(crate) async fn connect_and_run(spec: JobSpec, store: StatusStore) -> Result<SnapshotStatus> {
    let client = ContainerdClient::connect(
        &spec.containerd_address,
        &spec.namespace,
        crate::Config::DEFAULT_CONTAINERD_TIMEOUT,
    )
    .await
    .inspect_err(|e| {
        let _ = store.mark_failed(&spec.snapshot_id, e);
    })?;
    run(spec, store, &client).await
}

/// Runs a captured job to completion: build, assemble, push, clean up.
/// The final state (completed or failed) is always written.
async fn run(
    spec: JobSpec,
    store: StatusStore,
    containerd: &ContainerdClient,
) -> Result<SnapshotStatus> {
    let mut status = store.read(&spec.snapshot_id)?;
    status.worker = Worker::current();
    let writer = std::sync::Arc::new(StatusWriter::new(store.clone(), status)?);
    let outcome = run_inner(&spec, &store, &writer, containerd).await;
    let blob = store.job_dir(&spec.snapshot_id).join(BLOB_FILE);
    match outcome {
        Ok(pushed) => {
            // Cleaned up before "completed": whoever waits for it may exit,
            // or look for the capture, as soon as they read it.
            if let Some(h) = fault_hold(FAULT_HOLD_BEFORE_CLEANUP) {
                std::thread::sleep(h);
            }
            cleanup(&spec.capture_dir, &blob);
            writer.update(|s| {
                s.timings.push = Some(pushed.push_time);
                s.state = SnapshotState::Completed;
                s.manifest_digest = Some(pushed.digest);
                s.error = None;
            })?;
        }
        Err(ref e) => {
            tracing::error!(snapshot = %spec.snapshot_id, error = %e, "snapshot job failed");
            if !spec.keep_failed {
                cleanup(&spec.capture_dir, &blob);
            }
            writer.update(|s| {
                s.state = SnapshotState::Failed;
                s.error = Some(e.into());
            })?;
        }
    }
    writer.snapshot()
}

fn cleanup(capture_dir: &Path, blob: &Path) {
    discard_capture(capture_dir);
    remove_blob(blob);
}

/// Removes a layer blob; errors are logged.
fn remove_blob(blob: &Path) {
    if let Err(e) = std::fs::remove_file(blob)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %blob.display(), error = %e, "removing layer blob failed");
    }
}

async fn run_inner(
    spec: &JobSpec,
    store: &StatusStore,
    writer: &std::sync::Arc<StatusWriter>,
    containerd: &ContainerdClient,
) -> Result<Pushed> {
    let target = match &spec.target {
        Some(t) => t.clone(),
        None => Target::parse(&spec.target_ref)?,
    };
    // Build the layer (blocking file work) off the async threads.
    let started = Instant::now();
    let total = dir_content_bytes(&spec.capture_dir);
    writer.update(|s| {
        s.state = SnapshotState::Building;
        s.progress.done = 0;
        s.progress.total = total;
    })?;
    if let Some(h) = fault_hold(FAULT_HOLD_BEFORE_BUILD) {
        tokio::time::sleep(h).await;
    }
    let blob_path = store.job_dir(&spec.snapshot_id).join(BLOB_FILE);
    // A rerun after a failure starts the blob afresh.
    match std::fs::remove_file(&blob_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io("remove", &blob_path, e));
        }
        _ => {}
    }
    let capture_dir = spec.capture_dir.clone();
    let build = layer::BuildOptions::of(&spec.options);
    let xattrs = layer::XattrPolicy {
        userxattr: spec.overlay_userxattr,
        extra: spec.options.extra_xattrs.clone(),
    };
    let owners = spec.user_namespace.clone();
    let w = writer.clone();
    let bp = blob_path.clone();
    let blob = tokio::task::spawn_blocking(move || {
        layer::build_layer(
            &capture_dir,
            &bp,
            &build,
            &xattrs,
            owners.as_ref(),
            &mut |done| w.progress(done, total),
        )
    })
    .await
    .map_err(|e| Error::Internal(format!("layer builder panicked: {e}")))??;

    let layer_desc = Descriptor {
        media_type: blob.media_type.clone(),
        digest: blob.digest.clone(),
        size: blob.size,
    };
    let history = History {
        created: spec.captured_at,
        created_by: format!("seamless-snapshot commit {}", spec.container_id),
        comment: spec.options.message.clone(),
        author: spec.options.author.clone(),
    };
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "org.opencontainers.image.base.name".to_string(),
        spec.base_image.clone(),
    );
    annotations.insert(
        "org.opencontainers.image.base.digest".to_string(),
        spec.base_manifest_descriptor.digest.clone(),
    );
    annotations.insert(
        "org.opencontainers.image.created".to_string(),
        spec.captured_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    annotations.insert(
        "io.seamless-snapshot.container".to_string(),
        spec.container_id.clone(),
    );
    annotations.insert(
        "io.seamless-snapshot.snapshot-id".to_string(),
        spec.snapshot_id.clone(),
    );
    annotations.extend(spec.options.annotations.clone());
    let new_image = image::assemble(
        spec.base_manifest.as_bytes(),
        spec.base_config.as_bytes(),
        &layer_desc,
        &blob.diff_id,
        &history,
        &spec.options.labels,
        &annotations,
    )?;
    let build_time = started.elapsed();
    let layer_info = LayerInfo {
        digest: blob.digest.clone(),
        diff_id: blob.diff_id.clone(),
        size: blob.size,
        media_type: blob.media_type.clone(),
    };
    writer.update(|s| {
        s.timings.build = Some(build_time);
        s.layer = Some(layer_info);
        s.state = SnapshotState::Pushing;
        s.progress.done = 0;
        s.progress.total = 0;
    })?;

    let started = Instant::now();
    let request = PushRequest {
        target: spec.target_ref.clone(),
        // containerd image names need not be registry references (an
        // imported image, say); then no mount or pull from it is tried.
        base_ref: registry::parse_reference(&spec.base_image)
            .ok()
            .map(|_| spec.base_image.clone()),
        image: new_image,
        new_layer: (layer_desc, blob_path),
    };
    let settings = RegistrySettings {
        insecure: spec.options.insecure_registries.clone(),
        docker_config: spec.docker_config.clone(),
        ca_files: spec.registry_ca.clone(),
        certs_dirs: spec.registry_certs_dirs.clone(),
        tuning: spec.push.clone(),
    };
    let w = writer.clone();
    let digest = publish::publish(
        &target,
        &request,
        &settings,
        containerd,
        &move |done, total| w.progress(done, total),
    )
    .await?;
    Ok(Pushed {
        digest,
        push_time: started.elapsed(),
    })
}

/// What a job that pushed its image records once it has cleaned up.
struct Pushed {
    digest: String,
    push_time: Duration,
}

/// Sum of regular-file sizes below `dir` (for progress totals; best effort).
fn dir_content_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path, total: &mut u64) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                walk(&e.path(), total);
            } else if md.is_file() {
                *total += md.len();
            }
        }
    }
    let mut total = 0;
    walk(dir, &mut total);
    total
}

/// Removes a capture directory whose capture failed (partial copies are
/// useless), however deep its tree; errors are logged.
pub(crate) fn discard_capture(dir: &Path) {
    if let Err(e) = crate::sys::fs::remove_all(dir) {
        tracing::warn!(path = %dir.display(), error = %e, "removing capture dir failed");
    }
}

/// Records where the job's capture directory goes, before it is created.
pub(crate) fn record_capture_dir(store: &StatusStore, id: &str, dir: &Path) -> Result<()> {
    let path = dir.as_os_str().as_encoded_bytes();
    state::write_atomic(&store.job_dir(id), CAPTURE_PATH_FILE, path)
}

/// Removes what job `id` keeps outside its status: the capture directory
/// recorded in `capture.path` and the layer blob. Best effort (logged).
///
/// A capture directory is `<job dir>/capture` or `<private root>/<id>`: a
/// recorded path named otherwise is not removed (a damaged or forged record
/// must not make us delete something else).
pub(crate) fn discard_kept(store: &StatusStore, id: &str) {
    let dir = store.job_dir(id);
    if let Ok(p) = std::fs::read(dir.join(CAPTURE_PATH_FILE)) {
        use std::os::unix::ffi::OsStrExt;
        let capture = Path::new(std::ffi::OsStr::from_bytes(&p));
        let name = capture.file_name().and_then(|n| n.to_str());
        if capture.is_absolute() && (name == Some("capture") || name == Some(id)) {
            discard_capture(capture);
        } else {
            tracing::warn!(snapshot = %id, path = %capture.display(), "not removing an unexpected capture path");
        }
    }
    remove_blob(&dir.join(BLOB_FILE));
}

/// Marks jobs whose process died as failed and removes what they leave
/// behind: always an interrupted capture (a partial copy is useless),
/// and a built job's capture and blob unless `keep_failed`; and the
/// half-created directories of committers killed before their job's first
/// status was in place. Best effort.
pub(crate) fn recover_orphans(store: &StatusStore, keep_failed: bool) {
    store.remove_abandoned();
    let Ok(all) = store.list() else { return };
    for s in all {
        if state::dead_worker(&s).is_none() {
            continue;
        }
        if s.state == SnapshotState::Capturing || !keep_failed {
            discard_kept(store, &s.snapshot_id);
        }
        match state::effective_status(store, s) {
            Ok(failed) if failed.state == SnapshotState::Failed => {
                if let Err(e) = store.write(&failed) {
                    tracing::warn!(error = %e, "recording orphaned job failed");
                }
            }
            _ => {}
        }
    }
}
