//! Point-in-time copy of a live overlayfs upper dir.
//!
//! [`Capture::precopy`] copies the upper dir while the container runs and
//! records, per path, the `lstat` taken before the copy. While the container's
//! cgroup is frozen, [`Capture::sync_frozen`] walks the upper dir again and
//! re-copies only what changed, so that the capture directory ends up exactly
//! equal to the upper dir at that instant.
//!
//! The upper dir belongs to a possibly hostile container that may swap a
//! directory for a symlink at any moment (CVE-2018-15664 class). The source is
//! therefore only ever traversed relative to open directory fds, one name at a
//! time, with `O_NOFOLLOW` (`crate::sys::fs`). The capture directory is
//! private to us, but is reached the same way: its paths may be far longer
//! than `PATH_MAX` (a legal tree of any depth is captured, up to
//! `crate::sys::fs::MAX_TREE_DEPTH` levels), so every entry is made relative
//! to an open directory of it.
//!
//! Layout: [`meta`] (the stat record change detection compares), [`walk`]
//! (the fd-relative walk both phases share), [`copier`] (creating one entry:
//! clone, sparse copy, special files), [`dest`] (capture-side metadata and
//! removal), [`fail`] (race or real error), [`track`] (fanotify dirty
//! tracking), [`precopy`] (phase 1), [`passes`] (iterative pre-copy over
//! the dirty set), [`incr`] (phase 2 for the dirty paths only: the frozen
//! window's fast path), [`sync`] (phase 2 in full: the fallback) and
//! [`verify`] (the exactness check); [`estimate`] counts, before a capture
//! starts, what it will take.

mod copier;
mod dest;
mod estimate;
mod fail;
mod incr;
mod mapped;
mod merge;
mod meta;
mod passes;
mod paths;
mod precopy;
mod sync;
#[cfg(test)]
mod tests;
pub(crate) mod track;
mod verify;
mod walk;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{Mode, mkdirat};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::sys::fs::{open_dir, proc_fd_available};
use crate::types::CaptureStrategy;
use copier::Copier;
pub(crate) use copier::probe_reflink as can_reflink;
pub(crate) use estimate::{Estimate, estimate};
pub(crate) use mapped::{Forced, MappedFiles};
use meta::Rec;
use paths::Ctx;
pub(crate) use track::{Dirty, Tracker};

/// Counters of one phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PhaseStats {
    /// Entries of the upper dir walked (the root excluded).
    pub(crate) entries: u64,
    /// Non-directory entries (re)created in the capture directory.
    pub(crate) files: u64,
    /// File data bytes copied or cloned.
    pub(crate) bytes_copied: u64,
    /// Entries removed from the capture directory because they vanished.
    pub(crate) removed: u64,
    /// Wall time of the phase.
    pub(crate) duration: Duration,
}

/// A capture of one upper dir into one capture directory.
///
/// Call [`Capture::precopy`] once while the container runs, then
/// [`Capture::sync_frozen`] while it is frozen.
pub(crate) struct Capture {
    ctx: Ctx,
    /// The upper dir, opened once; everything is reached relative to it.
    root: OwnedFd,
    /// The capture directory, likewise.
    dest_root: OwnedFd,
    /// Per path, what its copy was made from (in path order: a subtree is
    /// a range).
    recs: BTreeMap<Vec<u8>, Rec>,
    gen_: u32,
    copier: Copier,
    /// Regular files the next sync re-copies whatever their stat says.
    forced: Forced,
    /// A pause after each pre-copy entry (tests only, see
    /// [`Capture::pace_precopy`]).
    pace: Option<Duration>,
    /// The recorded directories the window checks, listed before the
    /// freeze by [`Capture::prepare_frozen`] so that the window does not
    /// scan every record to find them.
    window_dirs: Option<Vec<Vec<u8>>>,
    /// The upper dir's lower layers, when known: only the directories they
    /// also hold need the window's check (see [`merge`]).
    lowers: Option<merge::Lowers>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("upper", &self.ctx.upper)
            .field("dest", &self.ctx.dest)
            .field("entries", &self.recs.len())
            .finish()
    }
}

impl Capture {
    /// Opens the live upper dir `upper` and creates the capture directory
    /// `dest` (which must not exist; its parent must).
    pub(crate) fn new(upper: &Path, dest: &Path) -> Result<Capture> {
        let root = open_dir(upper).at("open", upper)?;
        // Files are reopened through /proc/self/fd: fail early without it.
        if let Err(e) = proc_fd_available() {
            return Err(Error::Unsupported(format!(
                "/proc/self/fd unavailable: {e}"
            )));
        }
        mkdirat(AT_FDCWD, dest, Mode::from_bits_truncate(0o700)).at("mkdir", dest)?;
        let dest_root = open_dir(dest).at("open", dest)?;
        Ok(Capture {
            ctx: Ctx {
                upper: upper.to_path_buf(),
                dest: dest.to_path_buf(),
            },
            root,
            dest_root,
            recs: BTreeMap::new(),
            gen_: 0,
            copier: Copier::new(dest),
            forced: Forced::default(),
            pace: None,
            window_dirs: None,
            lowers: None,
        })
    }

    /// Phase 1, container running: copies everything. Entries that change
    /// while being copied (vanish, are replaced, truncated, grown, swapped
    /// for symlinks) are left for [`Capture::sync_frozen`]; only real errors
    /// (capture side, I/O) fail. `progress(bytes_copied)` is called about
    /// every 100 ms and at the end.
    pub(crate) fn precopy(&mut self, progress: &mut dyn FnMut(u64)) -> Result<PhaseStats> {
        precopy::precopy(self, progress)
    }

    /// Tells the capture the upper dir's lower layers (the overlay's
    /// `lowerdir`s), so that the frozen window checks only the directories
    /// they also hold (see [`merge`]). Without it, or when one cannot be
    /// opened, the window checks every recorded directory.
    pub(crate) fn set_lowers(&mut self, lowers: &[std::path::PathBuf]) {
        self.lowers = merge::Lowers::open(lowers);
    }

    /// Lists the recorded directories the next frozen incremental sync
    /// checks one by one (the merge directories, or all without the lower
    /// layers): called right before the freeze, after the last pass, so the
    /// window only `lstat`s them.
    pub(crate) fn prepare_frozen(&mut self) {
        let dirs = incr::recorded_dirs(&self.recs);
        self.window_dirs = Some(match &self.lowers {
            Some(l) => l.merge_dirs(dirs),
            None => dirs,
        });
    }

    /// Makes the pre-copy sleep `pace` after each entry, so that a test's
    /// container changes its tree while the walk is in the middle of it
    /// (set only by a debug build's fault hook).
    pub(crate) fn pace_precopy(&mut self, pace: Duration) {
        self.pace = Some(pace);
    }

    /// Pre-copy passes over what `tracker` saw change since the last one,
    /// while that shrinks (see [`passes`]); returns how many ran.
    pub(crate) fn converge(&mut self, tracker: &mut Tracker) -> Result<u32> {
        Ok(passes::converge(self, tracker)?.0)
    }

    /// Marks regular files that the next [`Self::sync_frozen`] re-copies
    /// even when their stat is unchanged: files mapped shared-writable by the
    /// container, whose writes to already-dirty pages change neither mtime
    /// nor ctime (see [`MappedFiles`]).
    pub(crate) fn force_recopy(&mut self, files: &Forced) {
        self.forced.extend(files);
    }

    /// Phase 2, container frozen: walks the upper dir, re-copies entries that
    /// changed since they were recorded (per inode, so hardlinks follow),
    /// removes vanished ones and fixes metadata, leaving the capture dir
    /// exactly equal to the upper dir. No fsync. Every error is an error.
    pub(crate) fn sync_frozen(&mut self) -> Result<PhaseStats> {
        // The window is no place to wait for a lease holder (who may be
        // frozen itself).
        self.copier.no_waiting();
        sync::sync_frozen(self)
    }

    /// Phase 2 (or a running pass before it), incrementally: brings the
    /// capture up to date for the `dirty` paths only (see [`incr`]).
    /// `strict` (frozen): every error is an error, and the forced
    /// re-copies are done and consumed. Running: returns the paths that
    /// could not be finished, to be looked at again.
    pub(crate) fn sync_dirty(&mut self, dirty: Dirty, strict: bool) -> Result<(PhaseStats, Dirty)> {
        if strict {
            self.copier.no_waiting();
        }
        incr::sync_dirty(self, dirty, strict)
    }

    /// Checks, frozen and after a sync, that every record equals its
    /// entry's `lstat` and every entry has one (see [`verify`]): a full
    /// compare's cost.
    pub(crate) fn verify_frozen(&self) -> Result<()> {
        verify::verify_frozen(self)
    }

    /// Totals of the capture dir after sync: non-directory entries, and
    /// content bytes (sum of regular file sizes, each path counted).
    /// Counted from the records when asked (after the thaw), never in the
    /// window.
    pub(crate) fn totals(&self) -> (u64, u64) {
        sync::totals(&self.recs)
    }

    /// How file data was (or, before any copy, will first be tried to be) copied.
    pub(crate) fn strategy(&self) -> CaptureStrategy {
        self.copier.strategy()
    }

    /// The capture directory.
    #[cfg(test)]
    pub(crate) fn dest(&self) -> &Path {
        &self.ctx.dest
    }
}
