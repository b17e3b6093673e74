//! The value a commit returns.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::status::{LayerInfo, secs};
use crate::types::{CapturePath, CaptureStrategy, FreezerKind};

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
    /// Where the pause went, and what was done inside it.
    #[serde(default)]
    pub pause_breakdown: PauseBreakdown,
}

/// The frozen window of one commit, taken apart: how long freezing and
/// thawing took, the work in between, what that work handled, and how.
///
/// `#[non_exhaustive]`: fields may be added; read it, do not build it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[non_exhaustive]
#[serde(default)]
pub struct PauseBreakdown {
    /// Freeze requested to every task frozen (seconds).
    #[serde(with = "secs")]
    pub freeze: Duration,
    /// Everything done while frozen (seconds): the container's processes
    /// and mappings, the sync, and the verification when asked for.
    #[serde(with = "secs")]
    pub frozen_work: Duration,
    /// The sync proper, part of `frozen_work` (seconds).
    #[serde(with = "secs")]
    pub sync: Duration,
    /// Thaw requested to thawed (seconds).
    #[serde(with = "secs")]
    pub thaw: Duration,
    /// Entries looked at while frozen: the dirty paths (and what they
    /// lead to) for an incremental sync, every entry for a full one.
    pub entries_checked: u64,
    /// Non-directory entries copied (or linked) while frozen.
    pub files_copied: u64,
    /// File data bytes copied while frozen.
    pub bytes_copied: u64,
    /// Entries removed from the copy while frozen.
    pub entries_removed: u64,
    /// How the copy was brought up to date.
    pub capture_path: Option<CapturePath>,
    /// Why the full compare was used, when it was.
    pub fallback_reason: Option<String>,
    /// Pre-copy passes made before the freeze: the full copy, then each
    /// pass over what changed meanwhile.
    pub precopy_passes: u32,
    /// Whether the window also ran the full compare to verify the sync
    /// (`verify_capture`).
    pub verified: bool,
}
