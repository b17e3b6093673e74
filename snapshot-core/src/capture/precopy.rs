//! Phase 1, container running: copies the whole upper dir once, recording
//! per path the `lstat` taken before its copy.
//!
//! Invariants: an entry that changes while being copied (vanishes, is
//! replaced, truncated, grown, swapped for a symlink) is recorded as not ok
//! and left for the frozen sync; only real errors (capture side, I/O) fail.
//! The same name met twice (a directory changed while being read) counts
//! once; sockets are not part of an image. Multiply-linked inodes are copied
//! once and linked for their other names.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{FileStat, Mode, fstat, mkdirat};
use nix::unistd::linkat;

use super::copier::{Copier, Prog, Source};
use super::dest::{Dst, apply_meta};
use super::fail::{FResult, Fail, changed};
use super::meta::{Meta, Rec, now_ns};
use super::paths::Ctx;
use super::walk::{Entry, Visit, walk};
use super::{Capture, PhaseStats};
use crate::error::{Error, IoContext, Result};
use crate::sys::fs::open_beneath;
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
    let mut v = Pre {
        ctx: &c.ctx,
        recs: &mut c.recs,
        copier: &mut c.copier,
        links: HashMap::new(),
        stats: PhaseStats::default(),
        prog: Prog::new(progress),
        gen_: c.gen_,
    };
    walk(&c.ctx, top, st, false, &mut v)?;
    v.prog.report();
    let mut stats = v.stats;
    stats.duration = start.elapsed();
    tracing::debug!(?stats, "pre-copy done");
    Ok(stats)
}

/// The pre-copy visitor: copies every entry as it is met.
struct Pre<'a, 'p> {
    ctx: &'a Ctx,
    recs: &'a mut HashMap<Vec<u8>, Rec>,
    copier: &'a mut Copier,
    /// First path and success of each multiply-linked inode.
    links: HashMap<(u64, u64), (Vec<u8>, bool)>,
    stats: PhaseStats,
    prog: Prog<'p>,
    gen_: u32,
}

impl Pre<'_, '_> {
    fn copy_entry(&mut self, e: &Entry<'_>, meta: &Meta, atime: (i64, i64)) -> FResult<u64> {
        if meta.is_dir() {
            if e.dir.is_none() {
                return Err(changed("open", self.ctx.up(e.rel)));
            }
            let dpath = self.ctx.dp(e.rel);
            mkdirat(AT_FDCWD, &dpath, Mode::from_bits_truncate(0o700)).at("mkdir", &dpath)?;
            return Ok(0);
        }
        if meta.multi_linked()
            && let Some((first, ok)) = self.links.get(&meta.key())
        {
            if !*ok {
                return Err(changed("link", self.ctx.up(e.rel)));
            }
            let (from, to) = (self.ctx.dp(first), self.ctx.dp(e.rel));
            linkat(AT_FDCWD, &from, AT_FDCWD, &to, nix::fcntl::AtFlags::empty()).at("link", &to)?;
            return Ok(0);
        }
        let src = Source {
            parent: e.parent,
            name: e.name,
            rel: e.rel,
            meta,
            atime,
        };
        let r = self.copier.create(self.ctx, &src, &mut self.prog);
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

    fn leave(&mut self, dir: BorrowedFd<'_>, rel: &[u8], st: &FileStat) -> Result<()> {
        let (meta, atime) = Meta::from_stat(st);
        let dpath = self.ctx.dp(rel);
        match apply_meta(
            self.ctx,
            rel,
            &XRef::Fd(dir),
            &Dst::Path(&dpath),
            &meta,
            atime,
            true,
        ) {
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
