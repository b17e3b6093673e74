//! The one error type of the library and its stable kinds.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::result::SnapshotResult;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the library returns.
///
/// Each variant maps to an [`ErrorKind`] with a stable numeric code (see
/// [`ErrorKind::code`]) so that the C ABI and the Python module can expose
/// them without string matching.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// containerd does not know a container with this id in the namespace.
    #[error("container {id:?} not found in containerd namespace {namespace:?}")]
    ContainerNotFound {
        /// The container id that was asked for.
        id: String,
        /// The containerd namespace that was searched.
        namespace: String,
    },

    /// The container exists but has no running task.
    #[error("container {id:?} is not running (task status: {status})")]
    ContainerNotRunning {
        /// The container id.
        id: String,
        /// The task status containerd reported.
        status: String,
    },

    /// The container's root filesystem is not a kernel overlayfs mount, or uses
    /// an overlayfs feature whose writable layer cannot be converted faithfully.
    #[error("unsupported root filesystem: {0}")]
    Unsupported(String),

    /// The target (a registry reference, `oci:`, `oci-archive:` or
    /// `containerd:` form) or the base image reference cannot be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The registry refused the credentials (HTTP 401/403).
    #[error("registry {registry} refused access: {message}")]
    RegistryUnauthorized {
        /// The registry host.
        registry: String,
        /// What the registry said.
        message: String,
    },

    /// The registry could not be reached, or kept failing after retries.
    #[error("registry {registry} unreachable: {message}")]
    RegistryUnreachable {
        /// The registry host.
        registry: String,
        /// The last transport error.
        message: String,
    },

    /// The registry answered with an error that is neither auth nor transport.
    #[error("registry {registry} error: {message}")]
    Registry {
        /// The registry host.
        registry: String,
        /// What the registry said.
        message: String,
    },

    /// containerd could not be reached or answered with an unexpected error.
    #[error("containerd at {address}: {message}")]
    Containerd {
        /// The socket address used.
        address: String,
        /// The gRPC status or transport error.
        message: String,
    },

    /// The container's cgroup could not be frozen or thawed.
    #[error("cgroup freezer {path}: {message}")]
    Freeze {
        /// The cgroup directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// An I/O error, with the path it happened on.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`"open"`, `"copy"`, ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A wait for a snapshot ran out of time. The snapshot's background job
    /// continues and stays queryable under `snapshot_id`.
    #[error(
        "snapshot {snapshot_id} not finished after {timeout:?}; it continues in the background"
    )]
    Timeout {
        /// The snapshot waited for.
        snapshot_id: String,
        /// How long was waited.
        timeout: Duration,
        /// When the wait followed a commit (`commit_with_wait`): what that
        /// commit captured, since the snapshot exists and goes on.
        capture: Option<Box<SnapshotResult>>,
    },

    /// No snapshot with this id is known in the state directory.
    #[error("snapshot {0:?} not found")]
    SnapshotNotFound(String),

    /// The background build or push of a snapshot failed.
    #[error("snapshot {id} failed ({kind}): {message}")]
    JobFailed {
        /// The snapshot id.
        id: String,
        /// The kind of the error that failed the job.
        kind: ErrorKind,
        /// Its message.
        message: String,
    },

    /// The configuration or an argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Image data (manifest, config, index) is malformed, or no image in
    /// containerd has the layers the container runs on.
    #[error("invalid image data: {0}")]
    InvalidImage(String),

    /// An internal invariant was broken; a bug.
    #[error("internal error: {0}")]
    Internal(String),

    /// Another operation holds the container or job (a concurrent commit of
    /// the same container, a second worker on the same job), or a file of
    /// the container under another process's file lease that was not
    /// released in time.
    #[error("busy: {0}")]
    Busy(String),
}

/// The kind of an [`Error`], with a stable numeric code.
///
/// The code is the discriminant itself (`kind as u32`), so there is one
/// table to keep. Codes are never reused or renumbered; 0 is reserved for
/// success in the C ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u32)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::ContainerNotFound`].
    ContainerNotFound = 1,
    /// See [`Error::ContainerNotRunning`].
    ContainerNotRunning = 2,
    /// See [`Error::Unsupported`].
    Unsupported = 3,
    /// See [`Error::InvalidReference`].
    InvalidReference = 4,
    /// See [`Error::RegistryUnauthorized`].
    RegistryUnauthorized = 5,
    /// See [`Error::RegistryUnreachable`].
    RegistryUnreachable = 6,
    /// See [`Error::Registry`].
    Registry = 7,
    /// See [`Error::Containerd`].
    Containerd = 8,
    /// See [`Error::Freeze`].
    Freeze = 9,
    /// See [`Error::Io`].
    Io = 10,
    /// See [`Error::Timeout`].
    Timeout = 11,
    /// See [`Error::SnapshotNotFound`].
    SnapshotNotFound = 12,
    /// See [`Error::JobFailed`].
    JobFailed = 13,
    /// See [`Error::InvalidArgument`].
    InvalidArgument = 14,
    /// See [`Error::InvalidImage`].
    InvalidImage = 15,
    /// See [`Error::Internal`].
    Internal = 16,
    /// See [`Error::Busy`].
    Busy = 17,
}

impl ErrorKind {
    /// Every kind, in code order.
    pub const ALL: [ErrorKind; 17] = [
        ErrorKind::ContainerNotFound,
        ErrorKind::ContainerNotRunning,
        ErrorKind::Unsupported,
        ErrorKind::InvalidReference,
        ErrorKind::RegistryUnauthorized,
        ErrorKind::RegistryUnreachable,
        ErrorKind::Registry,
        ErrorKind::Containerd,
        ErrorKind::Freeze,
        ErrorKind::Io,
        ErrorKind::Timeout,
        ErrorKind::SnapshotNotFound,
        ErrorKind::JobFailed,
        ErrorKind::InvalidArgument,
        ErrorKind::InvalidImage,
        ErrorKind::Internal,
        ErrorKind::Busy,
    ];

    /// The stable numeric code of this kind.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The kind with this code, if any.
    pub fn from_code(code: u32) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The snake_case name of this kind, as used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ContainerNotFound => "container_not_found",
            ErrorKind::ContainerNotRunning => "container_not_running",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::InvalidReference => "invalid_reference",
            ErrorKind::RegistryUnauthorized => "registry_unauthorized",
            ErrorKind::RegistryUnreachable => "registry_unreachable",
            ErrorKind::Registry => "registry",
            ErrorKind::Containerd => "containerd",
            ErrorKind::Freeze => "freeze",
            ErrorKind::Io => "io",
            ErrorKind::Timeout => "timeout",
            ErrorKind::SnapshotNotFound => "snapshot_not_found",
            ErrorKind::JobFailed => "job_failed",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::InvalidImage => "invalid_image",
            ErrorKind::Internal => "internal",
            ErrorKind::Busy => "busy",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::ContainerNotFound { .. } => ErrorKind::ContainerNotFound,
            Error::ContainerNotRunning { .. } => ErrorKind::ContainerNotRunning,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::InvalidReference { .. } => ErrorKind::InvalidReference,
            Error::RegistryUnauthorized { .. } => ErrorKind::RegistryUnauthorized,
            Error::RegistryUnreachable { .. } => ErrorKind::RegistryUnreachable,
            Error::Registry { .. } => ErrorKind::Registry,
            Error::Containerd { .. } => ErrorKind::Containerd,
            Error::Freeze { .. } => ErrorKind::Freeze,
            Error::Io { .. } => ErrorKind::Io,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::SnapshotNotFound(_) => ErrorKind::SnapshotNotFound,
            Error::JobFailed { .. } => ErrorKind::JobFailed,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::InvalidImage(_) => ErrorKind::InvalidImage,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Busy(_) => ErrorKind::Busy,
        }
    }

    /// The message followed by its whole cause chain (`outer: inner: ...`),
    /// as the C ABI, the Python module and the CLI show it.
    pub fn full_message(&self) -> String {
        message_chain(self)
    }

    /// Builds an [`Error::Io`] from an error and the path it concerns.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Io`] from a `nix` errno and the path it concerns.
    pub(crate) fn errno(
        op: &'static str,
        path: impl Into<PathBuf>,
        errno: nix::errno::Errno,
    ) -> Self {
        Error::io(op, path, std::io::Error::from_raw_os_error(errno as i32))
    }
}

/// The whole cause chain of an error, `outer: inner: ...`. Sources whose
/// text the message already contains are skipped: messages often embed
/// their source (`"open /x: No such file or directory"`).
pub(crate) fn message_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// Extension to attach an operation and a path to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    /// Converts the error into an [`Error::Io`] naming `op` and `path`.
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::errno(op, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_nonzero() {
        let kinds = ErrorKind::ALL;
        let mut codes: Vec<u32> = kinds.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
        assert!(!codes.contains(&0));
        for k in kinds {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(ErrorKind::from_code(k.code()), Some(k));
        }
        assert_eq!(ErrorKind::from_code(0), None);
        // The codes are a published contract: pin a few.
        assert_eq!(ErrorKind::ContainerNotFound.code(), 1);
        assert_eq!(ErrorKind::Io.code(), 10);
        assert_eq!(ErrorKind::Busy.code(), 17);
    }

    #[test]
    fn the_cause_chain_is_whole_without_repeats() {
        #[derive(Debug)]
        struct Outer(std::io::Error, bool);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                if self.1 {
                    write!(f, "open /x: {}", self.0)
                } else {
                    f.write_str("open /x")
                }
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let inner = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let plain = message_chain(&Outer(inner(), false));
        assert_eq!(plain, format!("open /x: {}", inner()));
        let embedded = message_chain(&Outer(inner(), true));
        assert_eq!(embedded, plain);
        let io = Error::io("open", "/y", inner());
        assert_eq!(io.full_message(), format!("open /y: {}", inner()));
    }

    #[test]
    fn io_error_carries_path() {
        let e = Error::io(
            "open",
            "/x/y",
            std::io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.to_string().contains("/x/y"));
    }
}
