//! The `SeamlessSnapshot` class: the library's `ContainerdSnapshotter` behind
//! the trait's three methods, plus `wait` and `list`, per-commit options as
//! keyword arguments, and asyncio variants.
//!
//! Every call that can block (file system, containerd, registry, sleeping in
//! a wait) runs inside `py.detach`, so other Python threads run meanwhile.
//! The snapshotter is `Send + Sync` and its methods take `&self`, so one
//! client is shared by any number of threads without a lock of ours around
//! the calls (the class is `frozen`: pyo3 takes no borrow flag either).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use seamless_snapshot::{
    CommitOptions, Compression, Config, ContainerdSnapshotter, Error, SeamlessSnapshot,
};

use crate::errors::IntoPyResult;
use crate::types::{PySnapshotResult, PySnapshotStatus};

/// How long `commit_with_wait` and `wait` wait by default: the CLI's default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The snapshotter and the process it was made in.
#[derive(Debug)]
struct Owned {
    pid: u32,
    /// `None` only transiently while being replaced, and after drop.
    snap: Option<Arc<ContainerdSnapshotter>>,
}

/// Commits running containers of one containerd namespace to OCI images.
///
/// ``commit`` returns as soon as the container is thawed; the layer is built
/// and pushed in the background on threads of this client, and followed with
/// ``get_status`` or ``wait`` (from any process sharing ``state_dir``).
/// ``commit_with_wait`` also waits for the push.
///
/// Every blocking call releases the GIL. One client may be used from any
/// number of threads at once.
///
/// Background jobs live in this process and belong to this client: keep the
/// client alive until they are done. Dropping it (or exiting) fails the
/// unfinished ones (their status then reads ``"failed"``).
///
/// After ``os.fork()`` the client keeps working in the child: its first call
/// there creates a fresh snapshotter from the same configuration (the
/// parent's background threads do not exist in a child). Jobs started before
/// the fork stay the parent's: the child can read their status, and its own
/// jobs run in the child. As with any threaded library, do not fork while
/// another thread is inside a call of the client.
///
/// A blocking call returns to Python only when it is done: Ctrl-C during
/// ``commit_with_wait`` or ``wait`` is seen when the wait ends. Give a
/// ``timeout``, or await the ``*_async`` variants (cancelling the awaiting
/// task returns at once; the call itself finishes in its thread).
///
/// Args:
///     address: containerd's gRPC socket.
///     namespace: the containerd namespace of the containers.
///     state_dir: where job records, capture directories and layer blobs are
///         kept (``None``: ``DEFAULT_STATE_DIR``).
///     docker_config: a docker ``config.json`` with registry credentials
///         (``None``: ``$DOCKER_CONFIG`` or ``~/.docker/config.json``);
///         ``credHelpers``, then ``credsStore``, then ``auths``, as docker.
///     registry_ca: CA certificate files (PEM) trusted for every registry,
///         on top of the system's roots and the ``certs.d`` ones.
///     registry_certs_dirs: directories in containerd's ``certs.d`` layout
///         (``None``: ``/etc/containerd/certs.d``, ``/etc/docker/certs.d``).
///     capture_root: where capture directories go (``None``: chosen on the
///         filesystem of the container's writable layer).
///     freeze_timeout: seconds (or a ``timedelta``) to wait for the cgroup to
///         report frozen (``None``: the library's default).
///     max_pause: upper bound of the frozen window, after which a watchdog
///         thaws the container and the commit fails (``None``: the default).
///     push_retries: an upper bound on the retries of one registry operation
///         (``None``: the default, 100; 0 disables retries).
///     push_retry_budget: seconds (or a ``timedelta``) during which transient
///         registry errors are retried (``None``: the default, 5 minutes).
///     push_stall_timeout: seconds (or a ``timedelta``) without upload
///         progress after which a request is retried (``None``: 60 s).
///     push_connect_timeout: seconds (or a ``timedelta``) connecting to a
///         registry may take (``None``: 30 s).
///     push_chunk_size: bytes per upload request; 0 for one request per blob
///         (``None``: the default, 32 MiB).
///     push_concurrency: blobs uploaded at the same time (``None``: 3).
///     keep_failed: keep a failed job's capture and blob for a post-mortem
///         (``None``: the default, true).
#[pyclass(name = "SeamlessSnapshot", module = "seamless_snapshot", frozen)]
#[derive(Debug)]
pub struct Client {
    config: Config,
    owned: Mutex<Owned>,
}

impl Drop for Client {
    fn drop(&mut self) {
        let owned = match self.owned.get_mut() {
            Ok(o) => o,
            Err(poisoned) => poisoned.into_inner(),
        };
        if owned.pid != std::process::id() {
            // A forked child: dropping the parent's snapshotter here would
            // mark the parent's in-flight jobs failed and touch a runtime
            // whose threads this process does not have. Leak it instead.
            std::mem::forget(owned.snap.take());
        }
    }
}

impl Client {
    /// The snapshotter of this process: after a fork, a new one.
    fn snapshotter(&self) -> Result<Arc<ContainerdSnapshotter>, Error> {
        let mut owned = self
            .owned
            .lock()
            .map_err(|_| Error::Internal("a thread panicked inside the client".into()))?;
        let pid = std::process::id();
        if owned.pid != pid || owned.snap.is_none() {
            let fresh = Arc::new(ContainerdSnapshotter::new(self.config.clone())?);
            // Same reason as in `drop`: never drop the parent's one here.
            std::mem::forget(owned.snap.replace(fresh));
            owned.pid = pid;
        }
        owned
            .snap
            .clone()
            .ok_or_else(|| Error::Internal("no snapshotter".into()))
    }

    /// Runs `f` on the snapshotter with the GIL released.
    fn blocking<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&ContainerdSnapshotter) -> Result<T, Error> + Send,
    ) -> PyResult<T> {
        py.detach(|| self.snapshotter().and_then(|snap| f(&snap)))
            .py_err(py)
    }
}

/// A duration argument: seconds (int or float) or a `datetime.timedelta`.
fn duration_arg(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    if let Ok(d) = value.extract::<Duration>() {
        return Ok(d);
    }
    let secs: f64 = value.extract()?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| {
            Error::InvalidArgument(format!(
                "{name} must be a non-negative, finite number of seconds, not {secs}"
            ))
        })
        .py_err(py)
}

fn opt_duration(
    py: Python<'_>,
    name: &str,
    value: Option<&Bound<'_, PyAny>>,
    default: Duration,
) -> PyResult<Duration> {
    value.map_or(Ok(default), |v| duration_arg(py, name, v))
}

/// The per-commit keyword arguments.
#[allow(clippy::too_many_arguments)] // one per keyword argument of the Python API
fn commit_options(
    py: Python<'_>,
    compression: Option<&str>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    message: Option<String>,
    author: Option<String>,
    insecure_registries: Option<Vec<String>>,
    extra_xattrs: Option<Vec<String>>,
    build: BuildArgs,
) -> PyResult<CommitOptions> {
    let compression = match compression {
        Some(c) => c.parse::<Compression>().py_err(py)?,
        None => Compression::default(),
    };
    Ok(CommitOptions {
        compression,
        labels: labels.unwrap_or_default(),
        annotations: annotations.unwrap_or_default(),
        message,
        author,
        insecure_registries: insecure_registries.unwrap_or_default(),
        extra_xattrs: extra_xattrs.unwrap_or_default(),
        // A test and audit option: from the configuration's defaults.
        verify_capture: false,
        compression_level: build.0,
        compression_threads: build.1,
        max_sparse_expansion: build.2,
    })
}

/// `compression_level`, `compression_threads`, `max_sparse_expansion`.
type BuildArgs = (Option<i32>, Option<u32>, Option<u64>);

/// `asyncio.to_thread(method, *args, **kwargs)`: a coroutine that runs the
/// blocking method in the event loop's default executor.
fn to_thread<'py>(
    slf: &Bound<'py, Client>,
    method: &str,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let mut call_args = vec![slf.getattr(method)?];
    call_args.extend(args.iter());
    py.import("asyncio")?
        .getattr("to_thread")?
        .call(PyTuple::new(py, call_args)?, kwargs)
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (
        address = None, namespace = None, state_dir = None, *,
        docker_config = None, capture_root = None, freeze_timeout = None,
        max_pause = None, push_retries = None, keep_failed = None,
        push_retry_budget = None, push_stall_timeout = None,
        push_connect_timeout = None, push_chunk_size = None, push_concurrency = None,
        registry_ca = None, registry_certs_dirs = None,
    ))]
    #[allow(clippy::too_many_arguments)] // one per keyword argument of the Python API
    fn new(
        py: Python<'_>,
        address: Option<String>,
        namespace: Option<String>,
        state_dir: Option<PathBuf>,
        docker_config: Option<PathBuf>,
        capture_root: Option<PathBuf>,
        freeze_timeout: Option<&Bound<'_, PyAny>>,
        max_pause: Option<&Bound<'_, PyAny>>,
        push_retries: Option<u32>,
        keep_failed: Option<bool>,
        push_retry_budget: Option<&Bound<'_, PyAny>>,
        push_stall_timeout: Option<&Bound<'_, PyAny>>,
        push_connect_timeout: Option<&Bound<'_, PyAny>>,
        push_chunk_size: Option<u64>,
        push_concurrency: Option<u32>,
        registry_ca: Option<Vec<PathBuf>>,
        registry_certs_dirs: Option<Vec<PathBuf>>,
    ) -> PyResult<Self> {
        let d = Config::default();
        let config = Config {
            containerd_address: address.unwrap_or(d.containerd_address),
            namespace: namespace.unwrap_or(d.namespace),
            state_dir: state_dir.unwrap_or(d.state_dir),
            docker_config,
            capture_root,
            freeze_timeout: opt_duration(py, "freeze_timeout", freeze_timeout, d.freeze_timeout)?,
            max_pause: opt_duration(py, "max_pause", max_pause, d.max_pause)?,
            push_retries: push_retries.unwrap_or(d.push_retries),
            push_retry_budget: opt_duration(
                py,
                "push_retry_budget",
                push_retry_budget,
                d.push_retry_budget,
            )?,
            push_stall_timeout: opt_duration(
                py,
                "push_stall_timeout",
                push_stall_timeout,
                d.push_stall_timeout,
            )?,
            push_connect_timeout: opt_duration(
                py,
                "push_connect_timeout",
                push_connect_timeout,
                d.push_connect_timeout,
            )?,
            push_chunk_size: push_chunk_size.unwrap_or(d.push_chunk_size),
            push_concurrency: push_concurrency.unwrap_or(d.push_concurrency),
            keep_failed: keep_failed.unwrap_or(d.keep_failed),
            registry_ca: registry_ca.unwrap_or_default(),
            registry_certs_dirs: registry_certs_dirs.unwrap_or(d.registry_certs_dirs.clone()),
            ..d
        };
        let client = Client {
            config,
            owned: Mutex::new(Owned {
                pid: std::process::id(),
                snap: None,
            }),
        };
        // Creates the state directory and recovers orphaned jobs now, so that
        // a bad state_dir fails here rather than at the first commit.
        client.blocking(py, |_| Ok(()))?;
        Ok(client)
    }

    /// containerd's gRPC socket.
    #[getter]
    fn address(&self) -> &str {
        &self.config.containerd_address
    }

    /// The containerd namespace.
    #[getter]
    fn namespace(&self) -> &str {
        &self.config.namespace
    }

    /// The state directory.
    #[getter]
    fn state_dir(&self) -> &std::ffi::OsStr {
        self.config.state_dir.as_os_str()
    }

    /// Captures the container's writable layer at one instant and returns as
    /// soon as the container is thawed. The image is built and pushed to
    /// ``target_ref`` in the background; follow it with :meth:`get_status`
    /// or :meth:`wait`.
    ///
    /// Args:
    ///     container_id: the containerd container id.
    ///     target_ref: where the image goes: a registry reference
    ///         (``registry/repo:tag``), ``oci:PATH[:TAG]`` (an OCI image
    ///         layout directory), ``oci-archive:FILE[:TAG]`` (a tar of one)
    ///         or ``containerd:NAME`` (containerd's image store).
    ///     compression: ``"gzip"`` (default), ``"zstd"`` or ``"none"``.
    ///     labels: added to the image config's labels.
    ///     annotations: added to the manifest's annotations.
    ///     message: the new layer's history comment.
    ///     author: the new layer's history author.
    ///     insecure_registries: registry hosts (``host`` or ``host:port``)
    ///         reached over plain HTTP; loopback registries always are.
    ///     extra_xattrs: xattrs the layer carries beyond ``user.*``,
    ///         ``security.capability`` and POSIX ACLs: exact names
    ///         (``"security.selinux"``) or prefixes ending in ``.`` or ``*``
    ///         (``"trusted."``).
    ///     compression_level: gzip 0-9 (default 6), zstd 1-22 (default 3).
    ///     compression_threads: threads compressing the layer; default one
    ///         per core (the output does not depend on it).
    ///     max_sparse_expansion: the most bytes of holes one sparse file may
    ///         expand to in the layer (default 16 GiB); above, the job fails
    ///         with ``unsupported``.
    ///
    /// Raises:
    ///     SeamlessSnapshotError: a subclass per error kind, e.g.
    ///         ContainerNotFoundError, ContainerNotRunningError,
    ///         InvalidReferenceError, BusyError.
    #[pyo3(signature = (
        container_id, target_ref, *, compression = None, labels = None,
        annotations = None, message = None, author = None, insecure_registries = None,
        extra_xattrs = None, compression_level = None, compression_threads = None,
        max_sparse_expansion = None,
    ))]
    #[allow(clippy::too_many_arguments)] // one per keyword argument of the Python API
    fn commit(
        &self,
        py: Python<'_>,
        container_id: &str,
        target_ref: &str,
        compression: Option<&str>,
        labels: Option<BTreeMap<String, String>>,
        annotations: Option<BTreeMap<String, String>>,
        message: Option<String>,
        author: Option<String>,
        insecure_registries: Option<Vec<String>>,
        extra_xattrs: Option<Vec<String>>,
        compression_level: Option<i32>,
        compression_threads: Option<u32>,
        max_sparse_expansion: Option<u64>,
    ) -> PyResult<PySnapshotResult> {
        let options = commit_options(
            py,
            compression,
            labels,
            annotations,
            message,
            author,
            insecure_registries,
            extra_xattrs,
            (compression_level, compression_threads, max_sparse_expansion),
        )?;
        self.blocking(py, |s| {
            s.commit_with(container_id, target_ref, &options, None)
        })
        .map(PySnapshotResult::from)
    }

    /// Like :meth:`commit`, then waits until the image is pushed; the result
    /// then has ``manifest_digest`` and ``layer``.
    ///
    /// Args:
    ///     timeout: seconds (or a ``timedelta``) to wait in all, default 1800.
    ///     (the others as for :meth:`commit`)
    ///
    /// Raises:
    ///     TimeoutError: the push did not finish in time; it goes on in the
    ///         background (``.snapshot_id``, and ``.result`` holds the capture).
    ///     JobFailedError: the build or push failed (``.job_kind``).
    #[pyo3(signature = (
        container_id, target_ref, timeout = None, *, compression = None, labels = None,
        annotations = None, message = None, author = None, insecure_registries = None,
        extra_xattrs = None, compression_level = None, compression_threads = None,
        max_sparse_expansion = None,
    ))]
    #[allow(clippy::too_many_arguments)] // one per keyword argument of the Python API
    fn commit_with_wait(
        &self,
        py: Python<'_>,
        container_id: &str,
        target_ref: &str,
        timeout: Option<&Bound<'_, PyAny>>,
        compression: Option<&str>,
        labels: Option<BTreeMap<String, String>>,
        annotations: Option<BTreeMap<String, String>>,
        message: Option<String>,
        author: Option<String>,
        insecure_registries: Option<Vec<String>>,
        extra_xattrs: Option<Vec<String>>,
        compression_level: Option<i32>,
        compression_threads: Option<u32>,
        max_sparse_expansion: Option<u64>,
    ) -> PyResult<PySnapshotResult> {
        let timeout = opt_duration(py, "timeout", timeout, DEFAULT_TIMEOUT)?;
        let options = commit_options(
            py,
            compression,
            labels,
            annotations,
            message,
            author,
            insecure_registries,
            extra_xattrs,
            (compression_level, compression_threads, max_sparse_expansion),
        )?;
        self.blocking(py, |s| {
            s.commit_with(container_id, target_ref, &options, Some(timeout))
        })
        .map(PySnapshotResult::from)
    }

    /// The status of a snapshot, from this or any other process using the
    /// same ``state_dir``.
    ///
    /// Raises:
    ///     SnapshotNotFoundError: no snapshot with this id.
    ///     InvalidArgumentError: not a valid snapshot id.
    fn get_status(&self, py: Python<'_>, snapshot_id: &str) -> PyResult<PySnapshotStatus> {
        self.blocking(py, |s| s.get_status(snapshot_id))
            .map(PySnapshotStatus::from)
    }

    /// Waits until a snapshot is completed and returns its final status.
    ///
    /// Args:
    ///     timeout: seconds (or a ``timedelta``), default 1800.
    ///
    /// Raises:
    ///     TimeoutError: still not completed; the job goes on.
    ///     JobFailedError: the snapshot failed.
    ///     SnapshotNotFoundError: no snapshot with this id.
    #[pyo3(signature = (snapshot_id, timeout = None))]
    fn wait(
        &self,
        py: Python<'_>,
        snapshot_id: &str,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PySnapshotStatus> {
        let timeout = opt_duration(py, "timeout", timeout, DEFAULT_TIMEOUT)?;
        self.blocking(py, |s| s.wait(snapshot_id, timeout))
            .map(PySnapshotStatus::from)
    }

    /// All snapshots in the state directory, oldest first.
    fn list(&self, py: Python<'_>) -> PyResult<Vec<PySnapshotStatus>> {
        self.blocking(py, |s| s.list())
            .map(|all| all.into_iter().map(PySnapshotStatus::from).collect())
    }

    /// :meth:`commit` as a coroutine, run in the event loop's default executor
    /// (``asyncio.to_thread``). Cancelling the awaiting task does not stop the
    /// commit once it runs.
    #[pyo3(signature = (*args, **kwargs))]
    fn commit_async<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        to_thread(slf, "commit", args, kwargs)
    }

    /// :meth:`commit_with_wait` as a coroutine (``asyncio.to_thread``).
    #[pyo3(signature = (*args, **kwargs))]
    fn commit_with_wait_async<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        to_thread(slf, "commit_with_wait", args, kwargs)
    }

    /// :meth:`wait` as a coroutine (``asyncio.to_thread``).
    #[pyo3(signature = (*args, **kwargs))]
    fn wait_async<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        to_thread(slf, "wait", args, kwargs)
    }

    fn __repr__(&self) -> String {
        format!(
            "SeamlessSnapshot(address={:?}, namespace={:?}, state_dir={:?})",
            self.config.containerd_address, self.config.namespace, self.config.state_dir
        )
    }
}
