//! The public status of a snapshot, as stored in `status.json` and returned
//! by `get_status`.
//!
//! Plain data with a stable JSON form: durations are float seconds, states
//! and error kinds snake_case. Where it is stored lives in `crate::state`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::procfs::stat::process_start_ticks;
use crate::result::PauseBreakdown;

/// Serde helpers writing durations as seconds (a float).
pub(crate) mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes a duration as float seconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    /// Deserializes float seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<Duration>`.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        /// Serializes an optional duration as float seconds or null.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&d.as_secs_f64()),
                None => s.serialize_none(),
            }
        }

        /// Deserializes optional float seconds.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            match Option::<f64>::deserialize(d)? {
                Some(v) => Duration::try_from_secs_f64(v)
                    .map(Some)
                    .map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

/// The life cycle of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// Accepted, nothing done yet.
    Pending,
    /// Copying the writable layer (pre-copy, freeze, sync, thaw).
    Capturing,
    /// The point-in-time copy exists; the container runs on.
    Captured,
    /// Packing the layer and building config and manifest.
    Building,
    /// Uploading blobs and the manifest.
    Pushing,
    /// The manifest is in the registry under the target reference.
    Completed,
    /// The snapshot failed; see `error`.
    Failed,
}

impl SnapshotState {
    /// Whether no further transition happens.
    pub fn is_terminal(self) -> bool {
        matches!(self, SnapshotState::Completed | SnapshotState::Failed)
    }
}

impl std::fmt::Display for SnapshotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            SnapshotState::Pending => "pending",
            SnapshotState::Capturing => "capturing",
            SnapshotState::Captured => "captured",
            SnapshotState::Building => "building",
            SnapshotState::Pushing => "pushing",
            SnapshotState::Completed => "completed",
            SnapshotState::Failed => "failed",
        };
        // `pad` so that width and alignment flags work in tables.
        f.pad(s)
    }
}

/// Progress of the current phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes done in the current phase.
    pub done: u64,
    /// Bytes the current phase has in all (0 when not known yet).
    pub total: u64,
}

/// How long each phase took (`None`: not run yet).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTimings {
    /// The whole capture, pre-copy through thaw.
    #[serde(with = "secs::option", default)]
    pub capture: Option<Duration>,
    /// The pause felt by the container: freeze requested to thaw completed.
    #[serde(with = "secs::option", default)]
    pub pause: Option<Duration>,
    /// Packing the layer, config and manifest.
    #[serde(with = "secs::option", default)]
    pub build: Option<Duration>,
    /// Uploading blobs and manifest.
    #[serde(with = "secs::option", default)]
    pub push: Option<Duration>,
}

/// An error, as stored and reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The error's kind.
    pub kind: ErrorKind,
    /// The kind's stable numeric code.
    pub code: u32,
    /// The error message.
    pub message: String,
}

impl From<&Error> for ErrorInfo {
    fn from(e: &Error) -> Self {
        ErrorInfo {
            kind: e.kind(),
            code: e.kind().code(),
            message: e.to_string(),
        }
    }
}

/// The new layer, once built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Digest of the compressed blob.
    pub digest: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
}

/// Which process runs a job, to tell a live job from an orphaned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Worker {
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22),
    /// so a recycled pid is not mistaken for the worker.
    pub start_ticks: u64,
}

impl Worker {
    /// This process.
    pub(crate) fn current() -> Option<Worker> {
        let pid = std::process::id();
        process_start_ticks(pid).map(|start_ticks| Worker { pid, start_ticks })
    }

    /// Another process, identified by pid and start time.
    pub(crate) fn of_pid(pid: u32) -> Option<Worker> {
        process_start_ticks(pid).map(|start_ticks| Worker { pid, start_ticks })
    }

    /// Whether the worker process still runs.
    pub(crate) fn is_alive(&self) -> bool {
        process_start_ticks(self.pid) == Some(self.start_ticks)
    }
}

/// The status of a snapshot, as returned by `get_status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    /// The snapshot id.
    pub snapshot_id: String,
    /// The container it was taken from.
    pub container_id: String,
    /// Where the image goes.
    pub target_ref: String,
    /// Where the snapshot is in its life cycle.
    pub state: SnapshotState,
    /// Progress of the current phase.
    pub progress: Progress,
    /// Durations of the phases done so far.
    pub timings: PhaseTimings,
    /// Why it failed, when `state` is `failed`.
    pub error: Option<ErrorInfo>,
    /// The pushed manifest's digest, when `state` is `completed`.
    pub manifest_digest: Option<String>,
    /// The new layer, once built.
    pub layer: Option<LayerInfo>,
    /// The frozen window taken apart, once the capture is done.
    #[serde(default)]
    pub pause_breakdown: Option<PauseBreakdown>,
    /// When the snapshot was requested.
    pub created_at: DateTime<Utc>,
    /// When this status was last written.
    pub updated_at: DateTime<Utc>,
    /// The process running the background job, if any.
    ///
    /// Kept in the status file so that any process can tell a live job from
    /// an orphaned one; not part of the API.
    #[serde(default)]
    pub(crate) worker: Option<Worker>,
}

impl SnapshotStatus {
    /// The job's failure as an [`Error::JobFailed`], when it failed.
    pub fn failure(&self) -> Option<Error> {
        (self.state == SnapshotState::Failed).then(|| {
            let (kind, message) = self
                .error
                .as_ref()
                .map(|e| (e.kind, e.message.clone()))
                .unwrap_or((ErrorKind::Internal, "unknown error".into()));
            Error::JobFailed {
                id: self.snapshot_id.clone(),
                kind,
                message,
            }
        })
    }

    /// A fresh, pending status.
    pub(crate) fn new(snapshot_id: &str, container_id: &str, target_ref: &str) -> Self {
        let now = Utc::now();
        SnapshotStatus {
            snapshot_id: snapshot_id.to_string(),
            container_id: container_id.to_string(),
            target_ref: target_ref.to_string(),
            state: SnapshotState::Pending,
            progress: Progress::default(),
            timings: PhaseTimings::default(),
            error: None,
            manifest_digest: None,
            layer: None,
            pause_breakdown: None,
            created_at: now,
            updated_at: now,
            worker: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_serialize_as_seconds() {
        let t = PhaseTimings {
            pause: Some(Duration::from_millis(1500)),
            ..Default::default()
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["pause"], serde_json::json!(1.5));
        assert!(v["build"].is_null());
    }

    #[test]
    fn worker_liveness() {
        let me = Worker::current().unwrap();
        assert!(me.is_alive());
        let stale = Worker {
            pid: me.pid,
            start_ticks: me.start_ticks + 1,
        };
        assert!(!stale.is_alive());
    }
}
