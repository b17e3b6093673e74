//! Freezing and thawing a container's cgroup directly, and the frozen
//! window around the work that must see the container stopped.
//!
//! containerd's / runc's pause costs 5–17 ms of round trips; writing the
//! cgroup freezer file ourselves and waiting for the kernel's confirmation
//! costs well under a millisecond. The freezers ([`v2`], [`v1`], sharing
//! [`control`], found by [`discover`] no higher than the container's own
//! cgroup, [`scope`]) do that; this module runs the window,
//! top to bottom in [`with_frozen`]: arm the dead-man switch ([`watchdog`]),
//! go real-time ([`realtime`]), freeze, work, thaw, retire the watchdog.
//!
//! Invariants: the pause is measured honestly (freeze request → thaw
//! complete, `CLOCK_MONOTONIC`); the container is never left frozen: the
//! cgroup is thawed on every path out of [`with_frozen`], the watchdog (a
//! process of its own, outside the committer's cgroups) thaws it if the
//! committing process or its whole cgroup is killed inside the window or the
//! window overruns its bound, and the committer thaws at once if the
//! watchdog dies; a capture from a window cut short is discarded.

mod control;
mod discover;
mod realtime;
mod scope;
#[cfg(test)]
mod tests;
mod v1;
mod v2;
mod watchdog;

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub(crate) use discover::{freezer_for_pids, pids_below};
// The parsers of outside input, for the fuzz targets (`crate::fuzzing`).
#[cfg(fuzzing)]
pub(crate) use {
    discover::freezer_dirs, scope::container_cgroup, v1::parse_v1_state, v2::parse_events_frozen,
};

use crate::error::{Error, Result};
use crate::types::FreezerKind;
use realtime::RealtimeGuard;
use watchdog::{Watchdog, WatchdogOutcome};

/// Low-level cgroup freezer operations, behind a trait so that the
/// orchestration ([`with_frozen`]) can be tested with a fake.
pub(crate) trait Freezer: Send + Sync {
    /// Which interface this freezer drives.
    fn kind(&self) -> FreezerKind;
    /// The cgroup directory.
    fn path(&self) -> &Path;
    /// Requests the freeze and waits until the cgroup is fully frozen. On
    /// timeout it thaws again and returns [`Error::Freeze`].
    fn freeze(&self, timeout: Duration) -> Result<()>;
    /// Requests the thaw and waits until the cgroup is thawed.
    fn thaw(&self) -> Result<()>;
    /// Whether the cgroup is frozen, or a freeze is in progress, through
    /// this freezer's interface.
    fn is_frozen(&self) -> Result<bool>;
    /// Whether anyone holds the cgroup paused: through this interface, or,
    /// on a hybrid host, through the other one (runc pauses containers
    /// through the v1 freezer there, which the v2 files do not show).
    fn is_paused(&self) -> Result<bool> {
        self.is_frozen()
    }
    /// The same freezer one cgroup up (`None` at a hierarchy's root).
    fn parent(&self) -> Result<Option<Box<dyn Freezer>>>;
    /// The file and the bytes the watchdog writes to thaw the cgroup.
    fn thaw_command(&self) -> (PathBuf, &'static [u8]);
}

/// An [`Error::Freeze`] about the cgroup at `path`.
fn freeze_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Freeze {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// `now + d`, saturating at a year for absurd durations.
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

/// The measured pause (all on `CLOCK_MONOTONIC`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct PauseTiming {
    /// Freeze requested → thaw completed: what the container experiences.
    pub(crate) pause: Duration,
    /// Freeze requested → fully frozen.
    pub(crate) freeze: Duration,
    /// The work done while frozen.
    pub(crate) frozen_work: Duration,
    /// Thaw requested → thawed.
    pub(crate) thaw: Duration,
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Runs `f`, turning a panic into [`Error::Internal`].
fn no_panic<R>(what: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(Error::Internal(format!(
            "{what} panicked: {}",
            panic_message(&*p)
        )))
    })
}

/// Runs `work` with the cgroup frozen and returns its result with the
/// measured pause. Blocking: call it from a blocking thread.
///
/// A [`Watchdog`] is armed before the freeze and thaws the cgroup if this
/// process dies, or once `bound` has elapsed since arming; if the watchdog
/// dies, its monitor thaws at once. The cgroup is thawed on every path (work
/// error, work panic, freeze failure). If the watchdog fired or died, or the
/// cgroup is no longer frozen when `work` returns (someone else thawed it),
/// the copy may have seen a running container, so the result is discarded
/// with [`Error::Freeze`] even if `work` succeeded.
/// `freeze_timeout` should be well below `bound`.
pub(crate) fn with_frozen<T>(
    freezer: &dyn Freezer,
    freeze_timeout: Duration,
    bound: Duration,
    work: impl FnOnce() -> Result<T>,
) -> Result<(T, PauseTiming)> {
    if bound.is_zero() {
        return Err(Error::InvalidArgument(
            "frozen-window bound must be > 0".into(),
        ));
    }
    let (thaw_path, thaw_bytes) = freezer.thaw_command();
    let watchdog = Watchdog::arm(&thaw_path, thaw_bytes, bound)?;
    // Every scheduling delay of this thread inside the window is pause the
    // container feels: run it real-time until the thaw (dropped on return).
    let rt = RealtimeGuard::enter();

    let t0 = Instant::now();
    if let Err(e) = no_panic("freeze", || freezer.freeze(freeze_timeout)) {
        // The freeze may have half-happened: thaw anyway.
        return Err(match end_window(freezer, watchdog) {
            Ok(_) => e,
            Err(thaw_err) => freeze_error(freezer.path(), format!("{e}; then {thaw_err}")),
        });
    }
    let t1 = Instant::now();
    let outcome = panic::catch_unwind(AssertUnwindSafe(work));
    // Someone else (`ctr task resume`, `runc resume`) may have thawed the
    // cgroup inside the window: then the work saw a running container.
    let still_frozen = no_panic("is_frozen", || freezer.is_frozen());
    let t2 = Instant::now();
    let thawed = no_panic("thaw", || freezer.thaw());
    let t3 = Instant::now();
    // The thawed tasks first: from here on, CPU time this thread or the
    // watchdog takes at a real-time priority delays them (on a small
    // machine, by the watchdog's wakeup and exit). Retiring the watchdog
    // (send + waitpid) is outside the pause.
    drop(rt);
    let ended = retire_watchdog(freezer, watchdog, thawed);
    let timing = PauseTiming {
        pause: t3 - t0,
        freeze: t1 - t0,
        frozen_work: t2 - t1,
        thaw: t3 - t2,
    };
    tracing::debug!(cgroup = %freezer.path().display(), ?timing, "frozen window");
    let cut_short = ended?;
    let value = match outcome {
        Ok(result) => result?,
        Err(p) => {
            return Err(Error::Internal(format!(
                "work in the frozen window panicked: {}",
                panic_message(&*p)
            )));
        }
    };
    if let Some(outcome) = cut_short {
        tracing::warn!(cgroup = %freezer.path().display(), ?bound, ?timing, ?outcome, "window cut short; capture discarded");
        let why = match outcome {
            WatchdogOutcome::Vanished => {
                "the watchdog died inside the frozen window (the cgroup was thawed at once)"
                    .to_owned()
            }
            _ => format!("frozen window exceeded bound {bound:?}"),
        };
        return Err(freeze_error(
            freezer.path(),
            format!("{why} (pause {:?}); capture discarded", timing.pause),
        ));
    }
    match still_frozen {
        Ok(true) => Ok((value, timing)),
        Ok(false) => {
            tracing::warn!(cgroup = %freezer.path().display(), "thawed by someone else inside the window; capture discarded");
            Err(freeze_error(
                freezer.path(),
                "the cgroup was thawed by someone else inside the frozen window; capture discarded",
            ))
        }
        Err(e) => Err(freeze_error(
            freezer.path(),
            format!("cannot confirm the cgroup stayed frozen ({e}); capture discarded"),
        )),
    }
}

/// Thaws and retires the watchdog; see [`retire_watchdog`].
fn end_window(freezer: &dyn Freezer, watchdog: Watchdog) -> Result<Option<WatchdogOutcome>> {
    let thawed = no_panic("thaw", || freezer.thaw());
    retire_watchdog(freezer, watchdog, thawed)
}

/// Retires the watchdog after our thaw attempt `thawed`. Ok(Some(outcome))
/// when the window was cut short (the watchdog fired, or died and the
/// monitor thawed): the window was not fully frozen. Err when our thaw
/// failed (the cgroup may still be frozen).
fn retire_watchdog(
    freezer: &dyn Freezer,
    watchdog: Watchdog,
    thawed: Result<()>,
) -> Result<Option<WatchdogOutcome>> {
    match thawed {
        Ok(()) => {
            watchdog.demote();
            Ok(match watchdog.disarm() {
                Ok(WatchdogOutcome::Disarmed) => None,
                Ok(outcome) => Some(outcome),
                Err(e) => {
                    // We thawed ourselves; only the watchdog's verdict is lost.
                    tracing::warn!(error = %e, "watchdog status lost; capture discarded");
                    Some(WatchdogOutcome::Unknown)
                }
            })
        }
        Err(thaw_err) => {
            // Let the watchdog's pre-opened fd try too, then check.
            let _ = watchdog.fire_now();
            let state = no_panic("is_frozen", || freezer.is_frozen());
            let detail = match state {
                Ok(false) => "thawed by the watchdog".to_owned(),
                Ok(true) => "THE CGROUP IS STILL FROZEN".to_owned(),
                Err(e) => format!("state unknown: {e}"),
            };
            tracing::error!(cgroup = %freezer.path().display(), error = %thaw_err, %detail, "thaw failed");
            Err(freeze_error(
                freezer.path(),
                format!("thaw failed: {thaw_err}; {detail}"),
            ))
        }
    }
}
