//! Iterative pre-copy, as CRIU's iterative pre-dump: after the first full
//! copy, passes over what the tracker saw change meanwhile, while that
//! shrinks, so that the frozen window finds as little as possible to do.
//!
//! Invariants: a pass only ever looks at dirty paths (race-tolerant: what
//! it cannot finish stays dirty); the last pass runs right before the
//! freeze, over the smallest set seen, so a file rewritten continuously is
//! copied as late as possible; at most [`MAX_PASSES`] passes, and passes
//! stop as soon as the set stops shrinking or is down to [`SMALL`] paths
//! (that pass is the last). An untrustworthy tracker, or a pass that
//! fails, stops them (the window then compares everything).

use super::track::Tracker;
use super::{Capture, PhaseStats};
use crate::error::Result;

/// Passes after the first full copy, at most.
pub(crate) const MAX_PASSES: u32 = 6;

/// A dirty set this small is copied by one last pass, then the window.
pub(crate) const SMALL: usize = 64;

/// Runs the passes; returns how many ran, and what they did in all.
pub(crate) fn converge(c: &mut Capture, t: &mut Tracker) -> Result<(u32, PhaseStats)> {
    let mut done = PhaseStats::default();
    let mut passes = 0;
    let mut last = usize::MAX;
    while passes < MAX_PASSES {
        t.drain();
        let n = t.len();
        if t.untrusted().is_some() || n == 0 {
            break;
        }
        let final_pass = n <= SMALL || n >= last;
        let Ok(dirty) = t.take() else { break };
        // The container runs: a pass can trip over what it is changing
        // (an xattr refused on an entry that changed type meanwhile, ...).
        // Rather than fail the commit, trust nothing the passes did: the
        // window then compares everything.
        let (stats, left) = match c.sync_dirty(dirty, false) {
            Ok(done) => done,
            Err(e) => {
                t.distrust(format!("a pre-copy pass failed: {e}"));
                break;
            }
        };
        t.put_back(left);
        tracing::debug!(pass = passes + 1, dirty = n, ?stats, "pre-copy pass");
        done.entries += stats.entries;
        done.files += stats.files;
        done.bytes_copied += stats.bytes_copied;
        done.removed += stats.removed;
        done.duration += stats.duration;
        passes += 1;
        last = n;
        if final_pass {
            break;
        }
    }
    Ok((passes, done))
}
