//! Phase 1, container running: copies the whole upper dir once, recording
//! per path the `lstat` taken before its copy.
//!
//! Invariants: an entry that changes while being copied (vanishes, is
//! replaced, truncated, grown, swapped for a symlink) is recorded as not ok
//! and left for the frozen sync; only real errors (capture side, I/O) fail.
//! The same name met twice (a directory changed while being read) counts
//! once; sockets are not part of an image. Multiply-linked inodes are copied
//! once and linked for their other names. The capture side is reached
//! through a cursor on its directories (`crate::sys::fs::DirCursor`), which
//! follows the walk one `openat` per step.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use nix::fcntl::AtFlags;
use nix::sys::stat::{FileStat, Mode, fstat, mkdirat};
use nix::unistd::linkat;

use super::copier::{Copier, Prog, Source};
use super::dest::{Dst, apply_meta};
use super::fail::{FResult, Fail, changed};
use super::meta::{Meta, Rec, now_ns};
use super::paths::{Ctx, parent_rel, split_rel};
use super::walk::{Entry, Visit, walk};
use super::{Capture, PhaseStats};
use crate::error::{Error, IoContext, Result};
use crate::sys::fs::{DirCursor, open_beneath};
use crate::sys::xattr::XRef;

/// Runs [`Capture::precopy`].
pub(super) fn precopy(c: &mut Capture, progress: &mut dyn FnMut(u64)) -> Result<PhaseStats> {
    if c.gen_ != 0 {
        return Err(Error::InvalidArgument(
            "precopy must be the first and only pre-copy pass".into(),
        ));
    }
    let start = Instant::now();
    c.gen_ += 1;
    let top = open_beneath(c.root.as_fd(), b"").at("open", &c.ctx.upper)?;
    let taken = now_ns();
    let st = fstat(&top).at("stat", &c.ctx.upper)?;
    let (meta, atime) = Meta::from_stat(&st);
    c.recs.insert(
        Vec::new(),
        Rec {
            meta,
            atime,
            taken,
            ok: true,
            seen: c.gen_,
        },
    );
    let droot = c.dest_root.as_fd();
    let mut v = Pre {
        ctx: &c.ctx,
        droot,
        dst: DirCursor::new(),
        link_src: DirCursor::new(),
        recs: &mut c.recs,
        copier: &mut c.copier,
        links: HashMap::new(),
        stats: PhaseStats::default(),
        prog: Prog::new(progress),
        gen_: c.gen_,
        pace: c.pace,
    };
    walk(&c.ctx, top, st, b"", false, &mut v)?;
    v.prog.report();
    let mut stats = v.stats;
    stats.duration = start.elapsed();
    tracing::debug!(?stats, "pre-copy done");
    Ok(stats)
}

/// The pre-copy visitor: copies every entry as it is met.
struct Pre<'a, 'p> {
    ctx: &'a Ctx,
    /// The capture directory.
    droot: BorrowedFd<'a>,
    /// The capture directory entries are created in.
    dst: DirCursor,
    /// The capture directory of a first name hardlinks are made to.
    link_src: DirCursor,
    recs: &'a mut BTreeMap<Vec<u8>, Rec>,
    copier: &'a mut Copier,
    /// First path and success of each multiply-linked inode.
    links: HashMap<(u64, u64), (Vec<u8>, bool)>,
    stats: PhaseStats,
    prog: Prog<'p>,
    gen_: u32,
    /// A pause after each entry (tests only).
    pace: Option<std::time::Duration>,
}

impl Pre<'_, '_> {
    fn copy_entry(&mut self, e: &Entry<'_>, meta: &Meta, atime: (i64, i64)) -> FResult<u64> {
        let prel = parent_rel(e.rel);
        let into = self
            .dst
            .open(self.droot, prel)
            .map_err(|err| Error::errno("open", self.ctx.dp(prel), err))?;
        if meta.is_dir() {
            if e.dir.is_none() {
                return Err(changed("open", self.ctx.up(e.rel)));
            }
            mkdirat(into, e.name, Mode::from_bits_truncate(0o700))
                .map_err(|err| Error::errno("mkdir", self.ctx.dp(e.rel), err))?;
            return Ok(0);
        }
        if meta.multi_linked()
            && let Some((first, ok)) = self.links.get(&meta.key())
        {
            if !*ok {
                return Err(changed("link", self.ctx.up(e.rel)));
            }
            let (fprel, fname) = split_rel(first)?;
            let from = self
                .link_src
                .open(self.droot, fprel)
                .map_err(|err| Error::errno("open", self.ctx.dp(fprel), err))?;
            linkat(from, fname.as_c_str(), into, e.name, AtFlags::empty())
                .map_err(|err| Error::errno("link", self.ctx.dp(e.rel), err))?;
            return Ok(0);
        }
        let src = Source {
            parent: e.parent,
            name: e.name,
            rel: e.rel,
            meta,
            atime,
        };
        let r = self.copier.create(self.ctx, &src, into, &mut self.prog);
        if meta.multi_linked() {
            self.links.insert(meta.key(), (e.rel.to_vec(), r.is_ok()));
        }
        r
    }
}

impl Visit for Pre<'_, '_> {
    fn entry(&mut self, e: Entry<'_>) -> Result<bool> {
        let (meta, atime) = Meta::from_stat(e.st);
        // Sockets are not part of an image; the same name twice means the
        // directory changed while being read: the first sighting counts.
        if meta.fmt() == libc::S_IFSOCK || self.recs.contains_key(e.rel) {
            return Ok(false);
        }
        self.stats.entries += 1;
        if let Some(pace) = self.pace {
            std::thread::sleep(pace);
        }
        let ok = match self.copy_entry(&e, &meta, atime) {
            Ok(n) => {
                self.stats.bytes_copied += n;
                if !meta.is_dir() {
                    self.stats.files += 1;
                }
                true
            }
            Err(Fail::Race(err)) => {
                tracing::debug!(error = %err, "changed during pre-copy; left for sync");
                false
            }
            Err(Fail::Fatal(err)) => return Err(err),
        };
        self.recs.insert(
            e.rel.to_vec(),
            Rec {
                meta,
                atime,
                taken: e.taken,
                ok,
                seen: self.gen_,
            },
        );
        Ok(ok && meta.is_dir())
    }

    fn leave(
        &mut self,
        dir: Option<BorrowedFd<'_>>,
        name: &CStr,
        rel: &[u8],
        st: &FileStat,
    ) -> Result<()> {
        let (meta, atime) = Meta::from_stat(st);
        let res = match dir {
            // Moved away before all its children were seen.
            None => Err(changed("open", self.ctx.up(rel))),
            Some(dir) => {
                let dst = if rel.is_empty() {
                    Dst::Fd(self.droot)
                } else {
                    let prel = parent_rel(rel);
                    let pfd = self
                        .dst
                        .open(self.droot, prel)
                        .map_err(|e| Error::errno("open", self.ctx.dp(prel), e))?;
                    Dst::At(pfd, name)
                };
                apply_meta(self.ctx, rel, &XRef::Fd(dir), &dst, &meta, atime, true)
            }
        };
        match res {
            Ok(()) => Ok(()),
            Err(Fail::Race(err)) => {
                tracing::debug!(error = %err, "directory changed during pre-copy");
                if let Some(r) = self.recs.get_mut(rel) {
                    r.ok = false;
                }
                Ok(())
            }
            Err(Fail::Fatal(err)) => Err(err),
        }
    }
}
