//! The capture proper of one commit, top to bottom: the pre-copy while the
//! container runs (with its shared-writable mappings sampled all along),
//! the check that nobody else paused it meanwhile, then the frozen window
//! (its processes, the files they map shared and writable, the sync of the
//! copy), then the thaw.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;

use super::ContainerdSnapshotter;
use super::fault::{
    FAULT_HOLD_BEFORE_FREEZE, FAULT_HOLD_FROZEN, FAULT_HOLD_PRECOPY, FAULT_PRECOPY_PACE,
    fault_hold, fault_hold_us,
};
use super::presence::Presence;
use crate::capture::{Capture, MappedFiles};
use crate::error::{Error, IoContext, Result};
use crate::freeze;
use crate::job::StatusWriter;

impl ContainerdSnapshotter {
    /// The capture proper, in the order it happens: pre-copy while the
    /// container runs; the freeze window (its processes, the files they map
    /// shared and writable, the sync of the copy, the test-only fault hold);
    /// thaw.
    pub(super) fn capture_frozen(
        &self,
        container_id: &str,
        upper: &Path,
        dest: &Path,
        freezer: &dyn freeze::Freezer,
        pid: u32,
        writer: &StatusWriter,
    ) -> Result<(Capture, freeze::PauseTiming, chrono::DateTime<Utc>)> {
        // The container may exit, be killed or deleted while we copy: then
        // say so, whatever error its going away caused.
        let presence = Presence::record(container_id, pid, upper, freezer.path())?;
        self.capture_present(container_id, upper, dest, freezer, pid, writer, &presence)
            .map_err(|e| presence.explain(e))
    }

    #[allow(clippy::too_many_arguments)] // capture_frozen's, and what it checks
    fn capture_present(
        &self,
        container_id: &str,
        upper: &Path,
        dest: &Path,
        freezer: &dyn freeze::Freezer,
        pid: u32,
        writer: &StatusWriter,
        presence: &Presence,
    ) -> Result<(Capture, freeze::PauseTiming, chrono::DateTime<Utc>)> {
        // The files the container maps shared-writable, on either device
        // its memory maps may show them with (the root overlay's, or the
        // upper dir's filesystem's on kernels before 6.8).
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let root_dev = std::fs::metadata(&root).at("stat", &root)?.dev();
        let upper_dev = std::fs::metadata(upper).at("stat", upper)?.dev();
        let mut mapped = MappedFiles::new(root_dev, upper_dev);

        // Pre-copy: the bulk of the data, while the container runs, with the
        // mappings sampled all along.
        let mut capture = Capture::new(upper, dest)?;
        if let Some(h) = fault_hold(FAULT_HOLD_PRECOPY) {
            std::thread::sleep(h);
        }
        if let Some(pace) = fault_hold_us(FAULT_PRECOPY_PACE) {
            capture.pace_precopy(pace);
        }
        let pre = sampling_mappings(freezer.path(), &mut mapped, || {
            capture.precopy(&mut |done| writer.progress(done, 0))
        })?;
        tracing::debug!(entries = pre.entries, bytes = pre.bytes_copied, took = ?pre.duration, "pre-copy done");

        // Looked up before the freeze, to keep the window short.
        let hold = fault_hold(FAULT_HOLD_FROZEN);

        // The pre-copy may have taken minutes: if someone paused the
        // container meanwhile, leave their pause alone (our thaw would undo
        // it) and give up.
        if let Some(h) = fault_hold(FAULT_HOLD_BEFORE_FREEZE) {
            std::thread::sleep(h);
        }
        ensure_not_frozen(freezer, container_id)?;
        // What the pre-copy saw mapped is forced now; the window adds only
        // what its own sample finds.
        capture.force_recopy(mapped.files());

        // The freeze window; `with_frozen` thaws on every path.
        let ((sync, captured_at), pause) = freeze::with_frozen(
            freezer,
            self.config.freeze_timeout,
            self.config.max_pause,
            || {
                let at = Utc::now();
                // The container's processes, stable while frozen.
                let pids = freeze::pids_below(freezer.path())?;
                // A container that exited meanwhile is not captured.
                presence.check_frozen(&pids)?;
                // Files written through shared mappings may have changed
                // without a trace in their stat: copy them again (those seen
                // during the pre-copy are forced already).
                let mut now = MappedFiles::new(root_dev, upper_dev);
                now.sample(&pids);
                capture.force_recopy(now.files());
                // Bring the copy to the exact state of this instant.
                let stats = capture.sync_frozen()?;
                // A snapshot removed under the container leaves an empty
                // (or emptying) upper dir behind our open fd: not its state.
                presence.check_upper()?;
                if let Some(h) = hold {
                    std::thread::sleep(h);
                }
                Ok((stats, at))
            },
        )?;

        // Thawed.
        tracing::info!(
            pause_us = pause.pause.as_micros() as u64,
            synced_entries = sync.entries,
            recopied_bytes = sync.bytes_copied,
            removed = sync.removed,
            "container thawed"
        );
        Ok((capture, pause, captured_at))
    }
}

/// How often the mappings of the container's processes are sampled during
/// the pre-copy.
const MAPPINGS_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// Runs `f` while another thread samples, every
/// [`MAPPINGS_SAMPLE_INTERVAL`], the shared-writable mappings of the
/// processes in `cgroup` into `mapped`: a file mapped, written and unmapped
/// again during the pre-copy is still known in the frozen window.
///
/// A plain spawned thread rather than `std::thread::scope`: a scope makes
/// std allocate a thread handle for the calling thread, which may be a C,
/// Go or Python caller's own thread that never frees it.
fn sampling_mappings<T>(cgroup: &Path, mapped: &mut MappedFiles, f: impl FnOnce() -> T) -> T {
    let stop = Arc::new(AtomicBool::new(false));
    let spawned = {
        let stop = stop.clone();
        let cgroup = cgroup.to_path_buf();
        let mut sampled = mapped.clone();
        std::thread::Builder::new()
            .name("seamless-mappings".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // A cgroup that cannot be read now is read again next
                    // time; the window's own sample is the one that must
                    // succeed.
                    if let Ok(pids) = freeze::pids_below(&cgroup) {
                        sampled.sample(&pids);
                    }
                    std::thread::park_timeout(MAPPINGS_SAMPLE_INTERVAL);
                }
                sampled
            })
    };
    let sampler = match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            // Without the sampler only the window's sample is taken.
            tracing::warn!(error = %e, "cannot start the mappings sampler");
            None
        }
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = sampler {
        h.thread().unpark();
        match h.join() {
            Ok(sampled) => *mapped = sampled,
            Err(_) => tracing::warn!("the mappings sampler panicked"),
        }
    }
    out
}

/// Refuses a container whose cgroup is frozen (or freezing): someone else
/// paused it, and our thaw would unpause it behind their back.
pub(super) fn ensure_not_frozen(freezer: &dyn freeze::Freezer, container_id: &str) -> Result<()> {
    if freezer.is_paused()? {
        return Err(Error::ContainerNotRunning {
            id: container_id.to_string(),
            status: format!("frozen (cgroup {})", freezer.path().display()),
        });
    }
    Ok(())
}
