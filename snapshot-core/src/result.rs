//! The value a commit returns.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::status::{LayerInfo, secs};
use crate::types::{CaptureStrategy, FreezerKind};

/// What `commit` and `commit_with_wait` return. Owned and serializable, so it
/// crosses the C and Python boundaries as JSON unchanged.
///
/// `#[non_exhaustive]`: fields may be added; read it, do not build it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SnapshotResult {
    /// The snapshot's id, for `get_status`.
    pub snapshot_id: String,
    /// The container committed.
    pub container_id: String,
    /// Where the image is pushed.
    pub target_ref: String,
    /// The pause the container felt: from the instant the freeze was requested
    /// to the instant the thaw completed (seconds).
    #[serde(with = "secs")]
    pub pause_time: Duration,
    /// The whole call (seconds): resolve, pre-copy, pause, and with
    /// `commit_with_wait` the build and push too.
    #[serde(with = "secs")]
    pub total_time: Duration,
    /// The frozen point-in-time copy of the writable layer that gets packed.
    /// Removed once the image is pushed.
    pub old_upper_dir: PathBuf,
    /// The live upper dir the container keeps writing to.
    pub new_upper_dir: PathBuf,
    /// Non-directory entries captured.
    pub files_captured: u64,
    /// Bytes of regular-file content captured.
    pub bytes_captured: u64,
    /// How file data was copied.
    pub capture_strategy: CaptureStrategy,
    /// Which cgroup freezer interface was used.
    pub freezer: FreezerKind,
    /// The instant of the freeze (UTC).
    pub captured_at: DateTime<Utc>,
    /// The base image the layer is stacked on.
    pub base_image: String,
    /// The pushed manifest's digest (only with `commit_with_wait`).
    pub manifest_digest: Option<String>,
    /// The new layer (only with `commit_with_wait`).
    pub layer: Option<LayerInfo>,
}
