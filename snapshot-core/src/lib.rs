//! # seamless-snapshot
//!
//! Saves a *running* containerd container as an OCI image while the container
//! barely notices: its overlayfs writable layer is copied while it runs, its
//! cgroup is frozen only for as long as it takes to bring that copy to the
//! exact state of one instant, and the image is built and pushed in the
//! background.
//!
//! The entry point is the [`SeamlessSnapshot`] trait and its containerd-backed
//! implementation [`ContainerdSnapshotter`]:
//!
//! ```no_run
//! use seamless_snapshot::{Config, ContainerdSnapshotter, SeamlessSnapshot};
//! use std::time::Duration;
//!
//! let snap = ContainerdSnapshotter::new(Config::default())?;
//! let res = snap.commit_with_wait("my-container", "registry.example.com/me/dev:snap1",
//!                                 Duration::from_secs(600))?;
//! println!("paused {:?}, pushed {:?}", res.pause_time, res.manifest_digest);
//! # Ok::<(), seamless_snapshot::Error>(())
//! ```
//!
//! *Pause* is always what a process inside the container experiences: from the
//! instant the freeze is requested to the instant the thaw completes.
#![deny(missing_docs)]

mod capture;
mod config;
mod containerd;
mod error;
mod freeze;
mod image;
mod job;
mod layer;
mod procfs;
mod prune;
mod publish;
mod registry;
mod result;
mod snapshotter;
mod space;
mod state;
mod status;
mod sys;
mod types;

// Entry points for the `cargo fuzz` targets (fuzz/), which build with
// `--cfg fuzzing`; never part of a normal build or of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod fuzzing;

use std::time::Duration;

#[doc(inline)]
pub use config::{BackgroundMode, CommitOptions, Config};
#[doc(inline)]
pub use error::{Error, ErrorKind, Result};
#[doc(inline)]
pub use result::{PauseBreakdown, SnapshotResult};
#[doc(inline)]
pub use snapshotter::ContainerdSnapshotter;
#[doc(inline)]
pub use status::{ErrorInfo, LayerInfo, PhaseTimings, Progress, SnapshotState, SnapshotStatus};
#[doc(inline)]
pub use types::{CapturePath, CaptureStrategy, Compression, FreezerKind};

/// Commit running containers to OCI images with a minimal pause.
///
/// Implementations are `Send + Sync` and return owned values, so one instance
/// can be shared between threads and wrapped by the C ABI and the Python
/// module. The methods block; from async code call them inside
/// `tokio::task::spawn_blocking`.
pub trait SeamlessSnapshot: Send + Sync {
    /// Captures the container's writable layer at one instant and returns as
    /// soon as the container is thawed. The layer is built and pushed to
    /// `target_ref` in the background; follow it with [`Self::get_status`].
    ///
    /// `target_ref` is a registry reference (`registry/repo:tag`),
    /// `oci:PATH[:TAG]` (an OCI image layout directory), `oci-archive:FILE[:TAG]`
    /// (a tar of one, replaced atomically) or `containerd:NAME` (containerd's
    /// image store, in the configured namespace); a malformed one is
    /// [`ErrorKind::InvalidReference`] before anything is touched.
    fn commit(&self, container_id: &str, target_ref: &str) -> Result<SnapshotResult>;

    /// Like [`Self::commit`], then waits until the image is pushed.
    ///
    /// On timeout returns [`Error::Timeout`] carrying the capture's
    /// [`SnapshotResult`]; the background job keeps running and stays
    /// queryable. If the job fails, returns
    /// [`Error::JobFailed`] with the job's error kind.
    fn commit_with_wait(
        &self,
        container_id: &str,
        target_ref: &str,
        timeout: Duration,
    ) -> Result<SnapshotResult>;

    /// The status of a snapshot, from this or any other process.
    fn get_status(&self, snapshot_id: &str) -> Result<SnapshotStatus>;
}
