//! Incremental sync: brings the capture to the state of the upper dir for
//! the paths a [`Dirty`] set names, and nothing else. The frozen window's
//! fast path, top to bottom (also run, race-tolerant, as the running
//! pre-copy passes):
//!
//! 1. [`Pass::look`]: `lstat` each dirty path (a vanished one, or one below
//!    a vanished or replaced directory, is gone), compare it with its
//!    record; a directory that arrived (created, moved in, replaced by
//!    another inode) has its subtree walked and compared like the full sync
//!    does, and the records below it it no longer holds are gone;
//! 2. [`Pass::links`]: every other name of an inode that changed (by a
//!    record scan, only when a multiply-linked inode is involved);
//! 3. remove what is gone, deepest first; recreate what changed, parents
//!    first (hardlinks linked to the first name recreated); restore the
//!    times of the directories changed inside — [`super::sync::Resync`],
//!    shared with the full sync.
//!
//! Frozen (strict), the recorded merge directories (those a lower layer
//! also holds, see [`super::merge`]; every recorded directory when the
//! lower layers are unknown) are looked at as well: their times can change
//! with no event (see [`sync_dirty`]); an `lstat` each, no walk.
//!
//! Invariants: the records end up describing the capture exactly as the
//! full sync would leave them for the paths looked at; nothing else is
//! touched, nothing is walked but arrived directories, and the totals are
//! not recounted (see [`super::Capture::totals`]). Strict (frozen): every
//! error is an error. Running: a path that cannot be finished is handed
//! back dirty, with its record marked not ok (a later full compare redoes
//! it too).

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{FileStat, fstat, fstatat};

use super::copier::Prog;
use super::meta::{Meta, Rec, now_ns};
use super::paths::split_rel;
use super::sync::{Collect, OpenParent, Resync};
use super::track::Dirty;
use super::walk::walk;
use super::{Capture, PhaseStats};
use crate::error::{Error, IoContext, Result};
use crate::sys::fs::{DirCursor, inode_key, open_beneath};

/// Whether `rel` is `root` or below it.
fn beneath(rel: &[u8], root: &[u8]) -> bool {
    root.is_empty()
        || (rel.starts_with(root) && (rel.len() == root.len() || rel[root.len()] == b'/'))
}

/// The paths of the recorded directories.
pub(super) fn recorded_dirs(recs: &std::collections::BTreeMap<Vec<u8>, Rec>) -> Vec<Vec<u8>> {
    recs.iter()
        .filter(|(_, r)| r.meta.is_dir())
        .map(|(k, _)| k.clone())
        .collect()
}

/// The records of the entries directly in `dir` (`""`: the root).
fn direct_children<'r>(
    recs: &'r std::collections::BTreeMap<Vec<u8>, Rec>,
    dir: &[u8],
) -> impl Iterator<Item = (&'r Vec<u8>, &'r Rec)> + 'r {
    let (lo, hi, skip) = if dir.is_empty() {
        (Vec::new(), None, 0)
    } else {
        let mut lo = dir.to_vec();
        lo.push(b'/');
        let mut hi = dir.to_vec();
        hi.push(b'/' + 1);
        let skip = lo.len();
        (lo, Some(hi), skip)
    };
    let range = match hi {
        Some(hi) => recs.range(lo..hi),
        None => recs.range(lo..),
    };
    range.filter(move |(k, _)| !k.is_empty() && !k[skip..].contains(&b'/'))
}

/// Runs [`Capture::sync_dirty`].
pub(super) fn sync_dirty(
    c: &mut Capture,
    mut dirty: Dirty,
    strict: bool,
) -> Result<(PhaseStats, Dirty)> {
    let start = Instant::now();
    c.gen_ += 1;
    if strict {
        // Files mapped shared-writable change without events (forced
        // until the end of this pass, so that an unchanged stat does not
        // hide them).
        c.forced.add_to(&c.recs, &mut dirty);
        // Directory times can change without any event: overlayfs renames
        // an entry that hides a lower one with RENAME_WHITEOUT, and when
        // that rename fails in the upper filesystem (a directory moved
        // over a non-empty one: ENOTEMPTY), ext4 has already made the
        // whiteout and puts the old entry back with `ext4_setent`, which
        // stamps the source directory's mtime and ctime; a failed rename
        // raises no event. Only a merge directory's own times change that
        // way (overlayfs asks for the whiteout only when a lower layer holds
        // the name), so the merge directories listed before the freeze are
        // checked (one `lstat` each; all recorded directories when no list
        // was made), and looked at if they differ from their records.
        let root = c.root.as_fd();
        let mut src = DirCursor::new();
        let dirs = match c.window_dirs.take() {
            Some(d) => d,
            None => recorded_dirs(&c.recs),
        };
        for rel in dirs {
            let Some(r) = c.recs.get(&rel) else { continue };
            if !r.meta.is_dir() || dirty.paths.contains_key(&rel) {
                continue;
            }
            let clean = match lstat(&c.ctx, root, &mut src, &rel) {
                Ok(Some(st)) => r.clean(&Meta::from_stat(&st).0),
                // Looked at, it says what went wrong.
                _ => false,
            };
            if !clean {
                dirty.mark(rel, false);
            }
        }
    }
    let mut pass = Pass {
        left: Dirty::default(),
        nlinks: std::collections::HashMap::new(),
        gone: Vec::new(),
        sweep: Vec::new(),
        walked: Vec::new(),
        dirs: Vec::new(),
        src: DirCursor::new(),
        strict,
    };
    let mut col = Collect::new(&mut c.recs, &c.forced, c.gen_);
    let root = c.root.as_fd();
    for (rel, subtree) in dirty.paths {
        pass.look(&c.ctx, root, &mut col, rel, subtree)?;
    }
    // The direct entries recorded under a dirty directory that no event
    // named are looked at once too: a directory's record is never
    // refreshed without its entries. An entry's removal must not depend on
    // its event reaching us under the right path (long randomized runs
    // found records of removed entries kept when whole directories moved
    // over each other); this costs one `lstat` per recorded child of a
    // directory that changed.
    for dir in std::mem::take(&mut pass.dirs) {
        let kids: Vec<Vec<u8>> = direct_children(col.recs, &dir)
            .filter(|(_, r)| r.seen != col.gen_)
            .map(|(k, _)| k.clone())
            .collect();
        for k in kids {
            pass.look(&c.ctx, root, &mut col, k, false)?;
        }
    }
    // An inode that got a name: unless that name, looked at, is its only
    // one, its other names are looked at too.
    for key in dirty.inodes {
        if pass.nlinks.get(&key) != Some(&1) {
            col.dirty_inodes.insert(key);
        }
    }
    pass.links(&c.ctx, root, &mut col)?;
    let Collect {
        mut work,
        clean_links,
        dirty_inodes,
        entries,
        ..
    } = col;
    work.extend(
        clean_links
            .into_iter()
            .filter(|i| dirty_inodes.contains(&i.meta.key())),
    );
    work.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
    work.dedup_by(|a, b| a.rel == b.rel);
    // Records below a swept directory that its walk did not see.
    let gen_ = c.gen_;
    for s in &pass.sweep {
        let mut hi = s.clone();
        hi.push(b'/' + 1);
        let mut lo = s.clone();
        lo.push(b'/');
        pass.gone.extend(
            c.recs
                .range(lo..hi)
                .filter(|(_, r)| r.seen != gen_)
                .map(|(k, _)| k.clone()),
        );
    }
    pass.gone.sort_unstable_by(|a, b| b.cmp(a));
    pass.gone.dedup();

    let mut noprog = |_: u64| {};
    let mut parent = OpenParent {
        src: DirCursor::new(),
        dst: DirCursor::new(),
    };
    let mut s = Resync {
        ctx: &c.ctx,
        root,
        droot: c.dest_root.as_fd(),
        link_src: DirCursor::new(),
        recs: &mut c.recs,
        copier: &mut c.copier,
        gen_,
        stats: PhaseStats {
            entries,
            ..PhaseStats::default()
        },
        retime: HashSet::new(),
        made: std::collections::HashMap::new(),
        prog: Prog::new(&mut noprog),
    };
    for rel in pass.gone {
        if let Err(e) = s.remove(&mut parent, &rel) {
            if strict {
                return Err(e);
            }
            tracing::debug!(error = %e, "left for the next pass");
            parent.dst.reset();
            pass.left.mark(rel, false);
        }
    }
    for it in work {
        let (rel, meta, atime, taken) = (it.rel.clone(), it.meta, it.atime, it.taken);
        if let Err(e) = s.recreate(&mut parent, it) {
            if strict {
                return Err(e);
            }
            tracing::debug!(error = %e, "left for the next pass");
            parent.src.reset();
            parent.dst.reset();
            // Recorded as not ok, so that a full compare redoes or removes
            // what may be half made.
            s.recs.insert(
                rel.clone(),
                Rec {
                    meta,
                    atime,
                    taken,
                    ok: false,
                    seen: gen_,
                },
            );
            pass.left.mark(rel, false);
        }
    }
    s.restore_dir_times(&mut parent)?;
    let mut stats = s.stats;
    if strict {
        c.forced.clear();
    }
    stats.duration = start.elapsed();
    tracing::debug!(
        ?stats,
        left = pass.left.len(),
        strict,
        "incremental sync done"
    );
    Ok((stats, pass.left))
}

/// The `lstat` of `rel` beneath `root` (its parent opened through `src`),
/// `None` if it does not exist (nor, then, its parent as a directory).
fn lstat(
    ctx: &super::paths::Ctx,
    root: std::os::fd::BorrowedFd<'_>,
    src: &mut DirCursor,
    rel: &[u8],
) -> Result<Option<FileStat>> {
    if rel.is_empty() {
        let d = open_beneath(root, b"").at("open", &ctx.upper)?;
        return Ok(Some(fstat(&d).at("stat", &ctx.upper)?));
    }
    let (prel, name) = split_rel(rel)?;
    let dir = match src.open(root, prel) {
        Ok(d) => d,
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(None),
        Err(e) => return Err(Error::errno("open", ctx.up(prel), e)),
    };
    match fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(Error::errno("lstat", ctx.up(rel), e)),
    }
}

/// One incremental pass's bookkeeping.
struct Pass {
    /// Paths handed back (running passes only).
    left: Dirty,
    /// Records to remove (with their capture entries).
    gone: Vec<Vec<u8>>,
    /// Directories whose records below, unless seen in this pass, are gone.
    sweep: Vec<Vec<u8>>,
    /// Subtrees walked whole: their dirty paths are covered.
    walked: Vec<Vec<u8>>,
    /// Directories looked at, still the same directory: their recorded
    /// direct entries are looked at as well.
    dirs: Vec<Vec<u8>>,
    /// Link counts of the inodes looked at.
    nlinks: std::collections::HashMap<(u64, u64), u64>,
    /// The source directory of the last path looked at.
    src: DirCursor,
    strict: bool,
}

impl Pass {
    /// Step 1 for one dirty path.
    fn look(
        &mut self,
        ctx: &super::paths::Ctx,
        root: std::os::fd::BorrowedFd<'_>,
        col: &mut Collect<'_>,
        rel: Vec<u8>,
        subtree: bool,
    ) -> Result<()> {
        if self.walked.iter().any(|w| beneath(&rel, w)) {
            // The walk saw it (or, unseen, it is gone with the sweep).
            return Ok(());
        }
        // Looked at, whatever comes of it (the link scan stops on it).
        if let Some(r) = col.recs.get_mut(&rel) {
            r.seen = col.gen_;
        }
        if !self.strict {
            // Running: a directory may have moved since the last path.
            self.src.reset();
        }
        col.entries += 1;
        let taken = now_ns();
        let st = match self.lstat(ctx, root, &rel) {
            Ok(Some(st)) => st,
            Ok(None) => {
                self.gone_at(col, rel);
                return Ok(());
            }
            Err(e) if !self.strict => {
                tracing::debug!(error = %e, "left for the next pass");
                self.left.mark(rel, subtree);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let (meta, _) = Meta::from_stat(&st);
        if meta.fmt() == libc::S_IFSOCK {
            // Not part of an image: as if absent.
            self.gone_at(col, rel);
            return Ok(());
        }
        self.nlinks.insert(meta.key(), meta.nlink);
        let old = col.recs.get(&rel).copied();
        if let Some(o) = old
            && o.meta.multi_linked()
        {
            col.dirty_inodes.insert(o.meta.key());
        }
        let same_dir = old.is_some_and(|o| o.meta.is_dir() && o.meta.key() == meta.key());
        col.see(&rel, &st, taken);
        let arrived = meta.is_dir() && (subtree || !same_dir);
        if arrived {
            // Arrived: whatever is below it is looked at now.
            let opened = open_beneath(root, &rel)
                .and_then(|top| Ok((fstat(&top)?, top)))
                .map_err(|e| Error::errno("open", ctx.up(&rel), e))
                .and_then(|(st, top)| {
                    if inode_key(&st) == meta.key() {
                        Ok((st, top))
                    } else {
                        let changed = std::io::Error::other("changed");
                        Err(Error::io("open", ctx.up(&rel), changed))
                    }
                });
            let (top_st, top) = match opened {
                Ok(o) => o,
                Err(e) if !self.strict => {
                    tracing::debug!(error = %e, "left for the next pass");
                    self.left.mark(rel, true);
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if let Err(e) = walk(ctx, top, top_st, &rel, self.strict, col) {
                if self.strict {
                    return Err(e);
                }
                self.left.mark(rel.clone(), true);
            }
            self.walked.push(rel.clone());
        }
        if same_dir && !arrived {
            self.dirs.push(rel.clone());
        }
        let was_dir = old.is_some_and(|o| o.meta.is_dir());
        if arrived || (was_dir && !same_dir) {
            self.sweep.push(rel);
        }
        Ok(())
    }

    /// `rel` is gone: its copy and record, and every record below it.
    /// Its copy is removed even without a record (a running pass may have
    /// left one half made).
    fn gone_at(&mut self, col: &mut Collect<'_>, rel: Vec<u8>) {
        if let Some(r) = col.recs.get(&rel)
            && r.meta.multi_linked()
        {
            col.dirty_inodes.insert(r.meta.key());
        }
        self.gone.push(rel.clone());
        self.sweep.push(rel);
    }

    /// The `lstat` of `rel` beneath `root` ([`lstat`]).
    fn lstat(
        &mut self,
        ctx: &super::paths::Ctx,
        root: std::os::fd::BorrowedFd<'_>,
        rel: &[u8],
    ) -> Result<Option<FileStat>> {
        lstat(ctx, root, &mut self.src, rel)
    }

    /// Step 2: the other names of every multiply-linked inode involved
    /// (which may not have had an event of their own: a link count change
    /// is reported on the name used only).
    fn links(
        &mut self,
        ctx: &super::paths::Ctx,
        root: std::os::fd::BorrowedFd<'_>,
        col: &mut Collect<'_>,
    ) -> Result<()> {
        if col.dirty_inodes.is_empty() {
            return Ok(());
        }
        let gen_ = col.gen_;
        // A name looked at may bring another inode in: until none is new.
        loop {
            let names: Vec<Vec<u8>> = col
                .recs
                .iter()
                .filter(|(k, r)| {
                    r.seen != gen_
                        && !r.meta.is_dir()
                        && col.dirty_inodes.contains(&r.meta.key())
                        && !self.walked.iter().any(|w| beneath(k, w))
                })
                .map(|(k, _)| k.clone())
                .collect();
            if names.is_empty() {
                break;
            }
            for rel in names {
                self.look(ctx, root, col, rel, false)?;
            }
        }
        Ok(())
    }
}
