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
pub(super) fn fault_hold(var: &str) -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let ms = std::env::var(var).ok()?;
    match ms.trim().parse::<u64>() {
        Ok(ms) => Some(Duration::from_millis(ms)),
        Err(_) => {
            tracing::warn!(value = %ms, "ignoring {var}: not a number of milliseconds");
            None
        }
    }
}
