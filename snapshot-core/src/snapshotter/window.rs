//! The capture proper of one commit, top to bottom: dirty tracking started,
//! the pre-copy while the container runs (its shared-writable mappings
//! sampled and the tracker's events read all along), the passes over what
//! changed meanwhile, the check that nobody else paused it, then the frozen
//! window (its processes, the files they map shared and writable, the
//! incremental sync of what changed since the last pass — or the full
//! compare when the tracking cannot be trusted — and the verification when
//! asked for), then the thaw.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;

use super::ContainerdSnapshotter;
use super::fault::{
    FAULT_DISTRUST_TRACKER, FAULT_HOLD_BEFORE_FREEZE, FAULT_HOLD_FROZEN, FAULT_HOLD_PRECOPY,
    FAULT_PRECOPY_PACE, fault_flag, fault_hold, fault_hold_us,
};
use super::presence::Presence;
use crate::capture::{Capture, MappedFiles, PhaseStats, Tracker};
use crate::containerd::OverlayMount;
use crate::error::{Error, IoContext, Result};
use crate::freeze;
use crate::job::StatusWriter;
use crate::result::PauseBreakdown;
use crate::types::CapturePath;

/// What [`ContainerdSnapshotter::capture_frozen`] gives: the copy, the
/// pause, the instant it captures, and what the window did.
pub(super) type Captured = (
    Capture,
    freeze::PauseTiming,
    chrono::DateTime<Utc>,
    PauseBreakdown,
);

impl ContainerdSnapshotter {
    /// The capture proper, in the order it happens: pre-copy while the
    /// container runs; the freeze window (its processes, the files they map
    /// shared and writable, the sync of the copy, the test-only fault hold);
    /// thaw. `verify`: the window also runs the full compare and fails on
    /// any difference.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn capture_frozen(
        &self,
        container_id: &str,
        mount: &OverlayMount,
        dest: &Path,
        freezer: &dyn freeze::Freezer,
        pid: u32,
        writer: &StatusWriter,
        verify: bool,
    ) -> Result<Captured> {
        // The container may exit, be killed or deleted while we copy: then
        // say so, whatever error its going away caused.
        let presence = Presence::record(container_id, pid, &mount.upper, freezer.path())?;
        self.capture_present(
            container_id,
            mount,
            dest,
            freezer,
            pid,
            writer,
            verify,
            &presence,
        )
        .map_err(|e| presence.explain(e))
    }

    #[allow(clippy::too_many_arguments)] // capture_frozen's, and what it checks
    fn capture_present(
        &self,
        container_id: &str,
        mount: &OverlayMount,
        dest: &Path,
        freezer: &dyn freeze::Freezer,
        pid: u32,
        writer: &StatusWriter,
        verify: bool,
        presence: &Presence,
    ) -> Result<Captured> {
        let upper = mount.upper.as_path();
        // The files the container maps shared-writable, on either device
        // its memory maps may show them with (the root overlay's, or the
        // upper dir's filesystem's on kernels before 6.8).
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let root_dev = std::fs::metadata(&root).at("stat", &root)?.dev();
        let upper_dev = std::fs::metadata(upper).at("stat", upper)?.dev();
        let mut mapped = MappedFiles::new(root_dev, upper_dev);

        // Dirty tracking, from before the pre-copy: what changes from here
        // on is reported (an untrustworthy tracker means a full compare).
        let mut tracker = Tracker::start(upper);
        if fault_flag(FAULT_DISTRUST_TRACKER) {
            tracker.distrust("distrusted by a test");
        }
        // Pre-copy: the bulk of the data, while the container runs, with the
        // mappings sampled and the tracker read all along.
        let mut capture = Capture::new(upper, dest)?;
        // The window checks only directories a lower layer also holds.
        capture.set_lowers(&mount.lowers);
        if let Some(h) = fault_hold(FAULT_HOLD_PRECOPY) {
            std::thread::sleep(h);
        }
        if let Some(pace) = fault_hold_us(FAULT_PRECOPY_PACE) {
            capture.pace_precopy(pace);
        }
        let (pre, mut tracker) = sampling_mappings(freezer.path(), &mut mapped, || {
            reading(tracker, || {
                capture.precopy(&mut |done| writer.progress(done, 0))
            })
        });
        let pre = pre?;
        tracing::debug!(entries = pre.entries, bytes = pre.bytes_copied, took = ?pre.duration, "pre-copy done");
        // Then passes over what changed meanwhile, while that shrinks.
        let passes = 1 + capture.converge(&mut tracker)?;

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
        // Known now: can the window trust the tracker? (Reading the mark's
        // state is no work for the window.)
        tracker.drain();
        tracker.check_mark();
        let fallback = tracker.untrusted().map(str::to_owned);
        if fallback.is_none() {
            // What the window's directory check goes through, found now.
            capture.prepare_frozen();
        }

        // The freeze window; `with_frozen` thaws on every path.
        let ((sync, path, fallback, captured_at), pause) = freeze::with_frozen(
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
                // Bring the copy to the exact state of this instant: the
                // events of the container's processes are all queued now
                // (generated in their syscalls, which the freeze let
                // finish), so what changed since the last pass is known,
                // unless the tracker says otherwise, here or before.
                let (stats, path, fallback) = match fallback {
                    Some(why) => (capture.sync_frozen()?, CapturePath::Full, Some(why)),
                    None => {
                        tracker.drain();
                        match tracker.take() {
                            Ok(dirty) => {
                                let (stats, _) = capture.sync_dirty(dirty, true)?;
                                (stats, CapturePath::Incremental, None)
                            }
                            Err(why) => (capture.sync_frozen()?, CapturePath::Full, Some(why)),
                        }
                    }
                };
                // A snapshot removed under the container leaves an empty
                // (or emptying) upper dir behind our open fd: not its state.
                presence.check_upper()?;
                if verify {
                    capture.verify_frozen()?;
                }
                if let Some(h) = hold {
                    std::thread::sleep(h);
                }
                Ok((stats, path, fallback, at))
            },
        )?;

        // Thawed.
        tracing::info!(
            pause_us = pause.pause.as_micros() as u64,
            synced_entries = sync.entries,
            recopied_bytes = sync.bytes_copied,
            removed = sync.removed,
            ?path,
            passes,
            "container thawed"
        );
        let breakdown = breakdown(&pause, &sync, path, fallback, passes, verify);
        Ok((capture, pause, captured_at, breakdown))
    }
}

/// What the window did, for the result and the status.
fn breakdown(
    pause: &freeze::PauseTiming,
    sync: &PhaseStats,
    path: CapturePath,
    fallback_reason: Option<String>,
    precopy_passes: u32,
    verified: bool,
) -> PauseBreakdown {
    PauseBreakdown {
        freeze: pause.freeze,
        frozen_work: pause.frozen_work,
        sync: sync.duration,
        thaw: pause.thaw,
        entries_checked: sync.entries,
        files_copied: sync.files,
        bytes_copied: sync.bytes_copied,
        entries_removed: sync.removed,
        capture_path: Some(path),
        fallback_reason,
        precopy_passes,
        verified,
    }
}

/// How often the tracker's queue is read during the pre-copy (it has no
/// bound: this keeps it short).
const TRACKER_READ_INTERVAL: Duration = Duration::from_millis(10);

/// Runs `f` while another thread reads `tracker`'s events every
/// [`TRACKER_READ_INTERVAL`]; gives the tracker back. (A plain spawned
/// thread, for the reason [`sampling_mappings`] gives.)
fn reading<T>(tracker: Tracker, f: impl FnOnce() -> T) -> (T, Tracker) {
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Mutex::new(tracker));
    let spawned = {
        let (stop, shared) = (stop.clone(), shared.clone());
        std::thread::Builder::new()
            .name("seamless-track".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut t) = shared.lock() {
                        t.drain();
                    }
                    std::thread::park_timeout(TRACKER_READ_INTERVAL);
                }
            })
    };
    if let Err(e) = &spawned {
        // The queue has no bound: read once at the end instead.
        tracing::warn!(error = %e, "cannot start the tracker reader");
    }
    let out = f();
    stop.store(true, Ordering::Relaxed);
    if let Ok(h) = spawned {
        h.thread().unpark();
        let _ = h.join();
    }
    let tracker = match Arc::try_unwrap(shared) {
        Ok(m) => match m.into_inner() {
            Ok(t) => t,
            Err(poisoned) => {
                let mut t = poisoned.into_inner();
                t.distrust("the tracker reader panicked");
                t
            }
        },
        // The reader is joined: unreachable, and never trusted if reached.
        Err(_) => Tracker::lost("the tracker reader was lost"),
    };
    (out, tracker)
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
