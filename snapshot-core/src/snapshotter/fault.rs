//! Test-only fault injection, read only in debug builds: a release build
//! has no such behaviour whatever its environment.

use std::time::Duration;

/// Test-only fault injection: stay inside the frozen window this many
/// milliseconds longer (so that tests can kill the committer, or thaw the
/// container from outside, there).
pub(super) const FAULT_HOLD_FROZEN: &str = "SEAMLESS_FAULT_HOLD_FROZEN_MS";
/// Test-only fault injection: wait this many milliseconds between the
/// pre-copy and the freeze (so that tests can pause the container there).
pub(super) const FAULT_HOLD_BEFORE_FREEZE: &str = "SEAMLESS_FAULT_HOLD_BEFORE_FREEZE_MS";
/// Test-only fault injection: wait this many milliseconds at the start of
/// the pre-copy, the job `capturing`, its capture dir created and the upper
/// dir open (so that tests can stop or delete the container there).
pub(super) const FAULT_HOLD_PRECOPY: &str = "SEAMLESS_FAULT_HOLD_PRECOPY_MS";
/// Test-only fault injection: wait this many milliseconds in the background
/// job, its status `building`, before the layer is built (so that tests can
/// stop or delete the container there).
pub(crate) const FAULT_HOLD_BEFORE_BUILD: &str = "SEAMLESS_FAULT_HOLD_BEFORE_BUILD_MS";

/// Test-only fault injection: sleep this many microseconds after each entry
/// of the pre-copy (so that a container's changes race with the walk itself,
/// not only with the sync).
pub(super) const FAULT_PRECOPY_PACE: &str = "SEAMLESS_FAULT_PRECOPY_PACE_US";

/// Test-only fault injection: wait this many milliseconds between a job's
/// push and the removal of its capture and blob (so that tests can see
/// whether a waiter returns before that cleanup).
pub(crate) const FAULT_HOLD_BEFORE_CLEANUP: &str = "SEAMLESS_FAULT_HOLD_BEFORE_CLEANUP_MS";

/// Test-only fault injection: `1` skips the free-space check (so that
/// tests can make the pre-copy itself run out of space).
/// Debug builds: the dirty tracker is untrustworthy from the start (the
/// window must then compare everything).
pub(super) const FAULT_DISTRUST_TRACKER: &str = "SEAMLESS_FAULT_DISTRUST_TRACKER";

pub(super) const FAULT_SKIP_SPACE_CHECK: &str = "SEAMLESS_FAULT_SKIP_SPACE_CHECK";

/// Whether a fault-injection flag is set (`1`); never in a release build.
pub(super) fn fault_flag(var: &str) -> bool {
    cfg!(debug_assertions) && std::env::var_os(var).is_some_and(|v| v == "1")
}

/// The duration a fault-injection variable asks for. Read only in debug
/// builds: a release build has no such behaviour whatever its environment.
pub(crate) fn fault_hold(var: &str) -> Option<Duration> {
    fault_number(var, "milliseconds").map(Duration::from_millis)
}

/// [`fault_hold`] for a variable counting microseconds.
pub(super) fn fault_hold_us(var: &str) -> Option<Duration> {
    fault_number(var, "microseconds").map(Duration::from_micros)
}

fn fault_number(var: &str, unit: &str) -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let n = std::env::var(var).ok()?;
    match n.trim().parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => {
            tracing::warn!(value = %n, "ignoring {var}: not a number of {unit}");
            None
        }
    }
}
