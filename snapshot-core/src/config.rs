//! Configuration of the containerd-backed implementation and per-commit options.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::Compression;

/// How the background build and push of a commit runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum BackgroundMode {
    /// On the implementation's own runtime, inside this process. The job stops
    /// if the process exits; its status then reads `failed` (worker gone).
    #[default]
    InProcess,
    /// In a detached process: `program args... <state-dir> <snapshot-id>` is
    /// started in its own process group. It must call
    /// [`crate::ContainerdSnapshotter::worker_start_gate`] (standard input:
    /// the committer records the worker's pid in the status, then writes one
    /// byte and closes it) and, only if that returns `true`,
    /// [`crate::ContainerdSnapshotter::run_job`]. The CLI uses this so that a
    /// commit without `--wait` completes after the command returns.
    Process {
        /// The executable.
        program: PathBuf,
        /// Arguments placed before the state directory and the snapshot id.
        args: Vec<String>,
    },
}

/// Configuration of [`crate::ContainerdSnapshotter`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// containerd's gRPC socket.
    pub containerd_address: String,
    /// containerd namespace the containers live in.
    pub namespace: String,
    /// Where job records, capture directories and layer blobs are kept.
    pub state_dir: PathBuf,
    /// Where capture directories are created. `None`: inside `state_dir` when
    /// it is on the same filesystem as the container's upper dir (so reflinks
    /// work), else in `seamless-capture/` next to containerd's snapshot
    /// directories.
    ///
    /// A capture holds whatever the container made (setuid-root files,
    /// device nodes), so it always lives below a directory only root can
    /// enter: a `capture_root` that is missing is created mode 0700; one that
    /// is ours and 0700 is used as it is; one owned by root but open to
    /// others gets a private `seamless-capture/` subdirectory; one owned by
    /// anyone else, or on a path that others can change (a directory above
    /// it writable by others and not sticky), is refused with
    /// `invalid_argument`.
    pub capture_root: Option<PathBuf>,
    /// How long one containerd call may take to answer before the commit
    /// fails with `containerd` (a wedged containerd never hangs a commit).
    pub containerd_timeout: Duration,
    /// How long to wait for the cgroup to report frozen before giving up.
    pub freeze_timeout: Duration,
    /// Upper bound of the frozen window: the watchdog thaws the container
    /// when it is exceeded (and the capture is then discarded).
    pub max_pause: Duration,
    /// Path of a docker `config.json` for registry credentials. `None`: the
    /// default lookup (`$DOCKER_CONFIG`, `~/.docker/config.json`). For each
    /// registry: its `credHelpers` entry, else `credsStore`, else its
    /// `auths` entry; a helper's "credentials not found" is anonymous.
    pub docker_config: Option<PathBuf>,
    /// CA certificate files (PEM) trusted for every registry, on top of the
    /// system's roots and those found in `registry_certs_dirs`.
    pub registry_ca: Vec<PathBuf>,
    /// Directories in containerd's and docker's `certs.d` layout searched
    /// for a registry's CA certificates: in `<dir>/<host:port>/` (or
    /// `docker.io/`, or `_default/`), every `*.crt` and the `ca` entries of
    /// `hosts.toml`. Missing directories are skipped.
    pub registry_certs_dirs: Vec<PathBuf>,
    /// An upper bound on the retries of one registry operation, on top of
    /// `push_retry_budget` (the default, 100, leaves the time budget in
    /// charge); 0 disables retries.
    pub push_retries: u32,
    /// How long transient registry errors (connection failures, stalls, HTTP
    /// 5xx, 408, 429) of one operation are retried, with exponential backoff
    /// and jitter or as the registry's `Retry-After` asks, before the push
    /// fails with `registry_unreachable`. Counted from the first failure; an
    /// upload that the registry acknowledged more bytes of since starts a new
    /// budget. Permanent errors (refused credentials, unknown repository,
    /// invalid digest) fail at once.
    pub push_retry_budget: Duration,
    /// An upload request fails (and is retried, resuming where the registry
    /// says it is) when no byte of its body could be sent for this long, or
    /// no byte sent was acknowledged for this long (the TCP user timeout of
    /// the connection); its answer may then take four times this, plus as
    /// long as the body took to send (bytes may still be queued in socket
    /// buffers on a slow link). There is no bound on the duration of a
    /// whole upload.
    pub push_stall_timeout: Duration,
    /// How long connecting to a registry may take.
    pub push_connect_timeout: Duration,
    /// Size of the pieces (`PATCH` requests) a blob is uploaded in; a piece
    /// cut by a transient error is resumed from the last byte the registry
    /// acknowledged. Each piece streams from disk, so this costs no memory.
    /// 0: one `PUT` per blob (restarted as a whole after an error), which
    /// is also what happens with registries that refuse chunked uploads.
    pub push_chunk_size: u64,
    /// How many blobs are uploaded at the same time (at least 1). The
    /// manifest always goes last.
    pub push_concurrency: u32,
    /// Keep the capture directory and blob when a job fails (for a retry or a
    /// post-mortem). They are always removed after success.
    pub keep_failed: bool,
    /// How long finished jobs (failed or completed) are kept: when a
    /// snapshotter is created, older ones are removed with whatever they
    /// kept (capture directory, blob, job directory), as
    /// [`crate::ContainerdSnapshotter::prune`] does. `None`: kept until
    /// pruned.
    pub keep_finished_for: Option<Duration>,
    /// Where the background build and push run.
    pub background: BackgroundMode,
    /// Options applied to every commit.
    pub defaults: CommitOptions,
}

impl Config {
    /// Default containerd socket.
    pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";
    /// Default containerd namespace.
    pub const DEFAULT_NAMESPACE: &str = "default";
    /// Default bound on one containerd call (`containerd_timeout`).
    pub const DEFAULT_CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default state directory (job records, capture directories, blobs).
    pub const DEFAULT_STATE_DIR: &str = "/var/lib/seamless-snapshot";

    /// Default `registry_certs_dirs`: `/etc/containerd/certs.d`, then
    /// `/etc/docker/certs.d`.
    pub fn default_registry_certs_dirs() -> Vec<PathBuf> {
        crate::registry::DEFAULT_CERTS_DIRS
            .iter()
            .map(PathBuf::from)
            .collect()
    }
    /// Default `push_retries`.
    pub const DEFAULT_PUSH_RETRIES: u32 = 100;
    /// Default `push_retry_budget`.
    pub const DEFAULT_PUSH_RETRY_BUDGET: Duration = Duration::from_secs(5 * 60);
    /// Default `push_stall_timeout`.
    pub const DEFAULT_PUSH_STALL_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default `push_connect_timeout`.
    pub const DEFAULT_PUSH_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default `push_chunk_size` (32 MiB).
    pub const DEFAULT_PUSH_CHUNK_SIZE: u64 = 32 << 20;
    /// Default `push_concurrency`.
    pub const DEFAULT_PUSH_CONCURRENCY: u32 = 3;
}

impl Default for Config {
    fn default() -> Self {
        Config {
            containerd_address: Self::DEFAULT_CONTAINERD_ADDRESS.to_string(),
            namespace: Self::DEFAULT_NAMESPACE.to_string(),
            state_dir: PathBuf::from(Self::DEFAULT_STATE_DIR),
            capture_root: None,
            containerd_timeout: Self::DEFAULT_CONTAINERD_TIMEOUT,
            freeze_timeout: Duration::from_secs(2),
            max_pause: Duration::from_secs(10),
            docker_config: None,
            registry_ca: Vec::new(),
            registry_certs_dirs: Self::default_registry_certs_dirs(),
            push_retries: Self::DEFAULT_PUSH_RETRIES,
            push_retry_budget: Self::DEFAULT_PUSH_RETRY_BUDGET,
            push_stall_timeout: Self::DEFAULT_PUSH_STALL_TIMEOUT,
            push_connect_timeout: Self::DEFAULT_PUSH_CONNECT_TIMEOUT,
            push_chunk_size: Self::DEFAULT_PUSH_CHUNK_SIZE,
            push_concurrency: Self::DEFAULT_PUSH_CONCURRENCY,
            keep_failed: true,
            keep_finished_for: None,
            background: BackgroundMode::InProcess,
            defaults: CommitOptions::default(),
        }
    }
}

/// Options of one commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CommitOptions {
    /// Compression of the new layer.
    pub compression: Compression,
    /// Compression level: gzip 0 to 9, zstd 1 to 22. `None`: the
    /// configured default, else gzip 6 / zstd 3. Out of range fails the
    /// build with `invalid_argument`.
    pub compression_level: Option<i32>,
    /// Threads compressing the layer (gzip in independent 128 KiB blocks, as
    /// pigz; zstd in its multi-threaded mode), at most 16; the output does
    /// not depend on it. `None` or 0: one per available core.
    pub compression_threads: Option<u32>,
    /// The most bytes of holes one sparse file may have: holes are written
    /// to the layer as zeros (without being read from disk), so a huge
    /// sparse file would expand to its full size; above this the build fails
    /// with `unsupported`, naming the file. `None`: the configured default,
    /// else [`CommitOptions::DEFAULT_MAX_SPARSE_EXPANSION`].
    pub max_sparse_expansion: Option<u64>,
    /// Labels added to the image config (`config.Labels`).
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the manifest.
    pub annotations: BTreeMap<String, String>,
    /// The history comment of the new layer.
    pub message: Option<String>,
    /// The history author.
    pub author: Option<String>,
    /// Registry hosts (`host` or `host:port`) reached over plain HTTP.
    /// Loopback registries always are.
    pub insecure_registries: Vec<String>,
    /// Extended attributes the layer carries beyond the default ones
    /// (`user.*`, `security.capability`, `system.posix_acl_access`,
    /// `system.posix_acl_default`): exact names (`security.selinux`), or
    /// prefixes ending in `.` or `*` (`trusted.`, `security.*`; `*` alone
    /// is every xattr). Host-specific ones (`security.selinux`,
    /// `security.ima`, `security.evm`, `trusted.*`) are left out by default:
    /// they make the image depend on the host and some unpackers refuse
    /// them. Overlay's own xattrs are never carried.
    pub extra_xattrs: Vec<String>,
    /// Verify the capture inside the frozen window: after the sync, also
    /// compare the whole upper dir with its copy and fail the commit
    /// (`internal`) on any difference. For tests and audits: it costs a
    /// full compare in the window (about 1.5 µs per entry), which is what
    /// the incremental sync exists to avoid.
    pub verify_capture: bool,
}

impl CommitOptions {
    /// Default `max_sparse_expansion`: 16 GiB.
    pub const DEFAULT_MAX_SPARSE_EXPANSION: u64 = 16 << 30;
}
