//! Phase 2, container frozen: brings the capture directory to exactly the
//! state of the upper dir at this instant. This is the whole frozen-window
//! path of a capture, in the order it runs:
//!
//! 1. [`find_changes`]: walk the upper dir, only comparing stats with the
//!    records (no copy while walking); dirty multiply-linked inodes make all
//!    their names dirty;
//! 2. [`Resync::remove_vanished`]: remove what is no longer there, deepest
//!    first;
//! 3. [`Resync::recreate`]: recreate each changed entry, in walk order
//!    (parents first), hardlinks linked to the first name recreated;
//! 4. [`Resync::restore_dir_times`]: reset the times of every directory whose
//!    content was changed by steps 2 and 3;
//! 5. [`totals`]: recount the capture.
//!
//! Invariants: every error is an error (nothing may change while frozen, so
//! a change is not a race to tolerate); no fsync; the cost of an unchanged
//! entry is one `lstat` (plus an open and a readdir for a directory) and a
//! record lookup: nothing is allocated for it. Changes are applied relative
//! to open directories on both sides ([`OpenParent`]), reached from the
//! previous one in a few `openat` calls whatever the depth.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{FileStat, Mode, fstat, fstatat, mkdirat};
use nix::unistd::linkat;

use super::copier::{Copier, Prog, Source};
use super::dest::{Dst, apply_meta, remove_dest, set_times};
use super::fail::Fail;
use super::meta::{Meta, Rec, now_ns};
use super::paths::{Ctx, split_rel};
use super::walk::{Entry, Visit, walk};
use super::{Capture, Forced, PhaseStats};
use crate::error::{Error, IoContext, Result};
use crate::sys::fs::{DirCursor, open_beneath, open_subdir};
use crate::sys::xattr::XRef;

/// Runs [`Capture::sync_frozen`].
pub(super) fn sync_frozen(c: &mut Capture) -> Result<PhaseStats> {
    let start = Instant::now();
    c.gen_ += 1;
    let (work, entries) = find_changes(c)?;

    let mut noprog = |_: u64| {};
    let (root, droot) = (c.root.as_fd(), c.dest_root.as_fd());
    let mut parent = OpenParent {
        src: DirCursor::new(),
        dst: DirCursor::new(),
    };
    let mut s = Resync {
        ctx: &c.ctx,
        root,
        droot,
        link_src: DirCursor::new(),
        recs: &mut c.recs,
        copier: &mut c.copier,
        gen_: c.gen_,
        stats: PhaseStats {
            entries,
            ..PhaseStats::default()
        },
        retime: HashSet::new(),
        made: HashMap::new(),
        prog: Prog::new(&mut noprog),
    };
    s.remove_vanished(&mut parent)?;
    for it in work {
        s.recreate(&mut parent, it)?;
    }
    s.restore_dir_times(&mut parent)?;
    let mut stats = s.stats;

    stats.duration = start.elapsed();
    tracing::debug!(?stats, "frozen sync done");
    Ok(stats)
}

// ------------------------------------------------- 1. finding the changes

/// One path that sync must (re)create.
pub(super) struct Item {
    pub(super) rel: Vec<u8>,
    pub(super) meta: Meta,
    pub(super) atime: (i64, i64),
    pub(super) taken: i128,
}

/// Walks the upper dir and returns, in walk order, the paths to recreate
/// (followed by the clean names of dirty multiply-linked inodes), and the
/// number of entries walked. Consumes the forced re-copies.
fn find_changes(c: &mut Capture) -> Result<(Vec<Item>, u64)> {
    let top = open_beneath(c.root.as_fd(), b"").at("open", &c.ctx.upper)?;
    let taken = now_ns();
    let st = fstat(&top).at("stat", &c.ctx.upper)?;
    let mut col = Collect::new(&mut c.recs, &c.forced, c.gen_);
    col.see(b"", &st, taken);
    walk(&c.ctx, top, st, b"", true, &mut col)?;
    let Collect {
        mut work,
        clean_links,
        dirty_inodes,
        entries,
        ..
    } = col;
    // Forced once: the next sync looks at its own mappings.
    c.forced.clear();
    // Parents of clean paths exist in the capture, so order is kept.
    work.extend(
        clean_links
            .into_iter()
            .filter(|i| dirty_inodes.contains(&i.meta.key())),
    );
    Ok((work, entries))
}

/// The sync visitor: only compares; copying happens after the walk.
pub(super) struct Collect<'a> {
    pub(super) recs: &'a mut BTreeMap<Vec<u8>, Rec>,
    pub(super) forced: &'a Forced,
    pub(super) gen_: u32,
    pub(super) work: Vec<Item>,
    /// Clean multiply-linked paths: dirty after all if their inode is.
    pub(super) clean_links: Vec<Item>,
    pub(super) dirty_inodes: HashSet<(u64, u64)>,
    pub(super) entries: u64,
}

impl<'a> Collect<'a> {
    /// A visitor comparing with `recs` for walk generation `gen_`.
    pub(super) fn new(
        recs: &'a mut BTreeMap<Vec<u8>, Rec>,
        forced: &'a Forced,
        gen_: u32,
    ) -> Collect<'a> {
        Collect {
            recs,
            forced,
            gen_,
            work: Vec::new(),
            clean_links: Vec::new(),
            dirty_inodes: HashSet::new(),
            entries: 0,
        }
    }

    pub(super) fn see(&mut self, rel: &[u8], st: &FileStat, taken: i128) {
        let (meta, atime) = Meta::from_stat(st);
        let dirty = match self.recs.get_mut(rel) {
            Some(r) => {
                r.seen = self.gen_;
                !r.clean(&meta)
                    || (meta.fmt() == libc::S_IFREG && self.forced.contains(rel, meta.ino))
            }
            None => true,
        };
        let item = || Item {
            rel: rel.to_vec(),
            meta,
            atime,
            taken,
        };
        if dirty {
            if meta.multi_linked() {
                self.dirty_inodes.insert(meta.key());
            }
            self.work.push(item());
        } else if meta.multi_linked() {
            self.clean_links.push(item());
        }
    }
}

impl Visit for Collect<'_> {
    fn entry(&mut self, e: Entry<'_>) -> Result<bool> {
        // Sockets count as absent, so a former file there is removed.
        if e.st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
            return Ok(false);
        }
        self.entries += 1;
        self.see(e.rel, e.st, e.taken);
        Ok(e.st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    fn leave(&mut self, _: Option<BorrowedFd<'_>>, _: &CStr, _: &[u8], _: &FileStat) -> Result<()> {
        Ok(())
    }
}

// ------------------------------------------------- 2.-4. applying them

/// The state of applying the changes to the capture directory.
pub(super) struct Resync<'a, 'p> {
    pub(super) ctx: &'a Ctx,
    /// The upper dir: every source directory is reopened beneath it.
    pub(super) root: BorrowedFd<'a>,
    /// The capture directory, likewise.
    pub(super) droot: BorrowedFd<'a>,
    /// The capture directory of a first name hardlinks are made to.
    pub(super) link_src: DirCursor,
    pub(super) recs: &'a mut BTreeMap<Vec<u8>, Rec>,
    pub(super) copier: &'a mut Copier,
    pub(super) gen_: u32,
    pub(super) stats: PhaseStats,
    /// Directories whose times must be set after all changes inside them.
    pub(super) retime: HashSet<Vec<u8>>,
    /// First path recreated for each multiply-linked inode.
    pub(super) made: HashMap<(u64, u64), Vec<u8>>,
    pub(super) prog: Prog<'p>,
}

/// The parent directory of the entry being changed, kept open on both
/// sides: work items come in walk order, so siblings share it and the next
/// one is a few `openat` calls away, at any depth.
pub(super) struct OpenParent {
    pub(super) src: DirCursor,
    pub(super) dst: DirCursor,
}

impl OpenParent {
    /// The capture directory `prel`.
    fn dst<'a>(
        &'a mut self,
        droot: BorrowedFd<'a>,
        ctx: &Ctx,
        prel: &[u8],
    ) -> Result<BorrowedFd<'a>> {
        self.dst
            .open(droot, prel)
            .map_err(|e| Error::errno("open", ctx.dp(prel), e))
    }

    /// The directory `prel` of the upper dir and of the capture.
    fn both<'a>(
        &'a mut self,
        (root, droot): (BorrowedFd<'a>, BorrowedFd<'a>),
        ctx: &Ctx,
        prel: &[u8],
    ) -> Result<(BorrowedFd<'a>, BorrowedFd<'a>)> {
        let src = self
            .src
            .open(root, prel)
            .map_err(|e| Error::errno("open", ctx.up(prel), e))?;
        let dst = self
            .dst
            .open(droot, prel)
            .map_err(|e| Error::errno("open", ctx.dp(prel), e))?;
        Ok((src, dst))
    }
}

impl Resync<'_, '_> {
    /// Step 2: removes vanished paths, deepest first (a prefix sorts before
    /// its children).
    fn remove_vanished(&mut self, parent: &mut OpenParent) -> Result<()> {
        let gen_ = self.gen_;
        let mut vanished: Vec<Vec<u8>> = self
            .recs
            .iter()
            .filter(|(_, r)| r.seen != gen_)
            .map(|(k, _)| k.clone())
            .collect();
        vanished.sort_unstable_by(|a, b| b.cmp(a));
        for rel in vanished {
            self.remove(parent, &rel)?;
        }
        Ok(())
    }

    /// Removes the capture entry `rel` (with everything below it) and its
    /// record.
    pub(super) fn remove(&mut self, parent: &mut OpenParent, rel: &[u8]) -> Result<()> {
        let (prel, name) = split_rel(rel)?;
        self.link_src.forget_beneath(rel);
        let there = match parent.dst.open(self.droot, prel) {
            Ok(dir) => remove_dest(self.ctx, dir, &name, rel)?,
            // Its directory is gone already (or is no directory).
            Err(Errno::ENOENT | Errno::ENOTDIR) => false,
            Err(e) => return Err(Error::errno("open", self.ctx.dp(prel), e)),
        };
        if there {
            self.stats.removed += 1;
        }
        self.recs.remove(rel);
        self.retime.insert(prel.to_vec());
        Ok(())
    }

    /// Step 3, one item: makes its capture entry equal to the source and
    /// records it.
    pub(super) fn recreate(&mut self, parent: &mut OpenParent, it: Item) -> Result<()> {
        let rel = it.rel.as_slice();
        if rel.is_empty() {
            let d = open_beneath(self.root, b"").at("open", &self.ctx.upper)?;
            check_same(self.ctx, rel, &d, &it.meta)?;
            self.dir_meta(&it, &d, &Dst::Fd(self.droot))?;
        } else {
            let (prel, name) = split_rel(rel)?;
            // What is removed below may hold the cursor's directory.
            self.link_src.forget_beneath(rel);
            let (pfd, dfd) = parent.both((self.root, self.droot), self.ctx, prel)?;
            if it.meta.is_dir() {
                let is_dir = fstatat(dfd, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR)
                    .unwrap_or(false);
                if !is_dir {
                    remove_dest(self.ctx, dfd, &name, rel)?;
                    mkdirat(dfd, name.as_c_str(), Mode::from_bits_truncate(0o700))
                        .map_err(|e| Error::errno("mkdir", self.ctx.dp(rel), e))?;
                    self.retime.insert(prel.to_vec());
                }
                let d = open_subdir(pfd, &name, it.meta.key()).at("open", self.ctx.up(rel))?;
                self.dir_meta(&it, &d, &Dst::At(dfd, &name))?;
            } else {
                remove_dest(self.ctx, dfd, &name, rel)?;
                self.retime.insert(prel.to_vec());
                self.create_nondir(pfd, dfd, &name, &it)?;
            }
        }
        if it.meta.is_dir() {
            self.retime.insert(it.rel.clone());
        }
        self.recs.insert(
            it.rel,
            Rec {
                meta: it.meta,
                atime: it.atime,
                taken: it.taken,
                ok: true,
                seen: self.gen_,
            },
        );
        Ok(())
    }

    /// Owner, mode and xattrs of an existing capture directory `dst` from
    /// its open source `d`; its times wait for step 4.
    fn dir_meta(&self, it: &Item, d: &OwnedFd, dst: &Dst<'_>) -> Result<()> {
        apply_meta(
            self.ctx,
            &it.rel,
            &XRef::Fd(d.as_fd()),
            dst,
            &it.meta,
            it.atime,
            false,
        )
        .map_err(Fail::into_error)
    }

    /// Creates the (removed) non-directory `name` of the capture directory
    /// `dfd` from entry `name` of the source directory `pfd`: a hardlink if
    /// its inode was already recreated under another name, else a copy.
    fn create_nondir(
        &mut self,
        pfd: BorrowedFd<'_>,
        dfd: BorrowedFd<'_>,
        name: &CString,
        it: &Item,
    ) -> Result<()> {
        let first = if it.meta.multi_linked() {
            self.made.get(&it.meta.key())
        } else {
            None
        };
        if let Some(first) = first {
            let (fprel, fname) = split_rel(first)?;
            let from = self
                .link_src
                .open(self.droot, fprel)
                .map_err(|e| Error::errno("open", self.ctx.dp(fprel), e))?;
            linkat(
                from,
                fname.as_c_str(),
                dfd,
                name.as_c_str(),
                AtFlags::empty(),
            )
            .map_err(|e| Error::errno("link", self.ctx.dp(&it.rel), e))?;
        } else {
            self.stats.bytes_copied += self
                .copier
                .create(
                    self.ctx,
                    &Source {
                        parent: pfd,
                        name,
                        rel: &it.rel,
                        meta: &it.meta,
                        atime: it.atime,
                    },
                    dfd,
                    &mut self.prog,
                )
                .map_err(Fail::into_error)?;
            if it.meta.multi_linked() {
                self.made.insert(it.meta.key(), it.rel.clone());
            }
        }
        self.stats.files += 1;
        Ok(())
    }

    /// Step 4: restores the times of directories changed inside. Setting a
    /// directory's times does not touch its parent: any order; sorted, so
    /// that the capture-side cursor moves little.
    pub(super) fn restore_dir_times(&mut self, parent: &mut OpenParent) -> Result<()> {
        let mut dirs: Vec<&Vec<u8>> = self.retime.iter().collect();
        dirs.sort_unstable();
        for rel in dirs {
            let Some(r) = self.recs.get(rel.as_slice()).filter(|r| r.meta.is_dir()) else {
                continue;
            };
            if rel.is_empty() {
                set_times(self.ctx, rel, &Dst::Fd(self.droot), r.atime, r.meta.mtime)?;
                continue;
            }
            let (prel, name) = split_rel(rel)?;
            let dfd = parent.dst(self.droot, self.ctx, prel)?;
            set_times(self.ctx, rel, &Dst::At(dfd, &name), r.atime, r.meta.mtime)?;
        }
        Ok(())
    }
}

/// Checks an opened directory is the inode the walk saw.
fn check_same(ctx: &Ctx, rel: &[u8], fd: &OwnedFd, meta: &Meta) -> Result<()> {
    let st = fstat(fd).at("stat", ctx.up(rel))?;
    if Meta::from_stat(&st).0.key() != meta.key() {
        return Err(Error::io(
            "open",
            ctx.up(rel),
            std::io::Error::other("changed while frozen"),
        ));
    }
    Ok(())
}

/// Step 5: non-directory entries, and content bytes (sum of regular file
/// sizes, each path counted).
pub(super) fn totals(recs: &BTreeMap<Vec<u8>, Rec>) -> (u64, u64) {
    let mut totals = (0u64, 0u64);
    for r in recs.values() {
        if !r.meta.is_dir() {
            totals.0 += 1;
        }
        if r.meta.fmt() == libc::S_IFREG {
            totals.1 += r.meta.size.max(0) as u64;
        }
    }
    totals
}
