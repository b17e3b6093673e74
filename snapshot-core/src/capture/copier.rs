//! Creating one non-directory entry in the capture directory from its
//! source: file data by clone (`FICLONE`) where the capture filesystem can,
//! else by `copy_file_range` of the data extents only (holes stay holes),
//! else by `read`/`write`; symlinks, devices and fifos are recreated.
//!
//! Invariants: a regular file is opened `O_PATH`, checked to be the inode
//! the walk saw, and only then reopened for reading (`crate::sys::fs`),
//! without blocking on a file lease ([`Copier::reopen`]); a copy method that
//! fails for want of support by the filesystem is switched off for the rest
//! of the capture, once, while a failure particular to one file falls back
//! for that file only.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, mknodat};
use nix::unistd::{Whence, ftruncate, lseek, symlinkat};

use super::dest::{Dst, apply_meta};
use super::fail::{FResult, Fail, SrcExt, changed};
use super::meta::Meta;
use super::paths::Ctx;
use crate::error::{Error, IoContext};
use crate::sys::fs::{open_path, reopen_read};
use crate::sys::xattr::XRef;
use crate::types::CaptureStrategy;

/// Chunk size of one `copy_file_range` call (progress granularity).
const CHUNK: usize = 64 << 20;

/// How long, in all, the pre-copy waits for other processes to release the
/// file leases that keep it from opening files (see [`Copier::reopen`]).
const LEASE_WAIT: Duration = Duration::from_secs(2);

/// Reports progress at most every 100 ms.
pub(super) struct Prog<'a> {
    cb: &'a mut dyn FnMut(u64),
    total: u64,
    last: Instant,
}

impl<'a> Prog<'a> {
    pub(super) fn new(cb: &'a mut dyn FnMut(u64)) -> Self {
        Prog {
            cb,
            total: 0,
            last: Instant::now(),
        }
    }

    fn add(&mut self, n: u64) {
        self.total += n;
        if self.last.elapsed() >= Duration::from_millis(100) {
            (self.cb)(self.total);
            self.last = Instant::now();
        }
    }

    /// Reports the total so far, whenever the last report was.
    pub(super) fn report(&mut self) {
        (self.cb)(self.total);
    }
}

/// Creates capture entries; remembers which copy methods work.
pub(super) struct Copier {
    reflink: bool,
    cfr: bool,
    reflinked: u64,
    copied: u64,
    buf: Vec<u8>,
    /// What is left of the time to wait for leases to be released.
    lease_wait: Duration,
}

/// One entry of the source tree to copy: `name` in the open source
/// directory `parent`, at `rel` below the upper dir, as `meta` recorded it.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    /// The open source directory holding the entry.
    pub(super) parent: BorrowedFd<'a>,
    /// The entry's name in `parent`.
    pub(super) name: &'a CStr,
    /// Its path relative to the upper dir (and the capture dir).
    pub(super) rel: &'a [u8],
    /// Its recorded stat.
    pub(super) meta: &'a Meta,
    /// The access time to give the copy.
    pub(super) atime: (i64, i64),
}

impl Copier {
    /// A copier into the capture directory `dest`, cloning if its
    /// filesystem can clone at all.
    pub(super) fn new(dest: &Path) -> Copier {
        Copier {
            reflink: probe_reflink(dest),
            cfr: true,
            reflinked: 0,
            copied: 0,
            buf: Vec::new(),
            lease_wait: LEASE_WAIT,
        }
    }

    /// From now on never wait for a lease to be released: the container is
    /// frozen, and a frozen holder could never release one.
    pub(super) fn no_waiting(&mut self) {
        self.lease_wait = Duration::ZERO;
    }

    /// Files cloned and files copied so far.
    #[cfg(test)]
    pub(super) fn counts(&self) -> (u64, u64) {
        (self.reflinked, self.copied)
    }

    /// How file data was (or, before any copy, will first be tried to be) copied.
    pub(super) fn strategy(&self) -> CaptureStrategy {
        match (self.reflinked > 0, self.copied > 0) {
            (true, true) => CaptureStrategy::Mixed,
            (true, false) => CaptureStrategy::Reflink,
            (false, true) => CaptureStrategy::CopyFileRange,
            (false, false) if self.reflink => CaptureStrategy::Reflink,
            (false, false) => CaptureStrategy::CopyFileRange,
        }
    }

    /// Creates the non-directory `rel` in the capture dir, as entry
    /// `src.name` of its open directory `into`, from entry `name` of the
    /// source directory `parent`, with all its metadata. Returns the data
    /// bytes copied.
    pub(super) fn create(
        &mut self,
        ctx: &Ctx,
        src: &Source<'_>,
        into: BorrowedFd<'_>,
        prog: &mut Prog<'_>,
    ) -> FResult<u64> {
        let Source {
            parent,
            name,
            rel,
            meta,
            atime,
        } = *src;
        let derr = |op| move |e| Error::errno(op, ctx.dp(rel), e);
        let fmt = meta.fmt();
        match fmt {
            libc::S_IFREG => return self.copy_regular(ctx, src, into, prog),
            libc::S_IFLNK => {
                let target =
                    nix::fcntl::readlinkat(parent, name).src("readlink", || ctx.up(rel))?;
                symlinkat(target.as_os_str(), into, name).map_err(derr("symlink"))?;
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                mknodat(
                    into,
                    name,
                    SFlag::from_bits_truncate(fmt),
                    Mode::from_bits_truncate(meta.mode & 0o777),
                    meta.rdev as libc::dev_t,
                )
                .map_err(derr("mknod"))?;
            }
            _ => {
                return Err(Fail::Fatal(Error::Internal(format!(
                    "unexpected file type {fmt:o} at {}",
                    ctx.up(rel).display()
                ))));
            }
        }
        let src = XRef::at(parent, name).src("listxattr", || ctx.up(rel))?;
        apply_meta(ctx, rel, &src, &Dst::At(into, name), meta, atime, true)?;
        Ok(0)
    }

    fn copy_regular(
        &mut self,
        ctx: &Ctx,
        src: &Source<'_>,
        into: BorrowedFd<'_>,
        prog: &mut Prog<'_>,
    ) -> FResult<u64> {
        let (rel, meta) = (src.rel, src.meta);
        let up = || ctx.up(rel);
        let p = open_path(src.parent, src.name).src("open", up)?;
        let st = fstat(&p).src("stat", up)?;
        let (now, _) = Meta::from_stat(&st);
        if now.fmt() != libc::S_IFREG || now.key() != meta.key() {
            return Err(changed("open", up()));
        }
        let f = self.reopen(&p, up)?;
        drop(p);
        let f = File::from(f);
        let d = openat(
            into,
            src.name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| Error::errno("create", ctx.dp(rel), e))?;
        let d = File::from(d);
        let n = self.copy_data(ctx, rel, &f, &d, meta.size, prog)?;
        apply_meta(
            ctx,
            rel,
            &XRef::Fd(f.as_fd()),
            &Dst::Fd(d.as_fd()),
            meta,
            src.atime,
            true,
        )?;
        Ok(n)
    }

    /// Reopens `p` for reading. A file under another process's write lease
    /// (`fcntl(F_SETLEASE)`) refuses at once, and the kernel asks the holder
    /// to release it: the open is retried while some of the wait budget is
    /// left (none once frozen, see [`Self::no_waiting`]). Still leased, it
    /// is a race: the frozen sync tries once more, and there it is an error
    /// rather than a window stalled until the kernel breaks the lease.
    fn reopen(&mut self, p: &OwnedFd, path: impl Fn() -> PathBuf) -> FResult<OwnedFd> {
        let mut nap = Duration::from_millis(1);
        loop {
            match reopen_read(p) {
                Err(Errno::EWOULDBLOCK) => {}
                r => return r.src("open", path),
            }
            if self.lease_wait.is_zero() {
                return Err(Fail::Race(Error::Busy(format!(
                    "{} is held by another process's file lease (fcntl F_SETLEASE) that was not released in time",
                    path().display()
                ))));
            }
            let n = nap.min(self.lease_wait);
            std::thread::sleep(n);
            self.lease_wait -= n;
            nap = (nap * 2).min(Duration::from_millis(50));
        }
    }

    /// Copies `size` bytes of data: a clone if possible, else the data
    /// extents only, so holes stay holes.
    fn copy_data(
        &mut self,
        ctx: &Ctx,
        rel: &[u8],
        f: &File,
        d: &File,
        size: i64,
        prog: &mut Prog<'_>,
    ) -> FResult<u64> {
        if size <= 0 {
            return Ok(0);
        }
        if self.reflink {
            match ficlone(d, f) {
                Ok(()) => {
                    self.reflinked += 1;
                    prog.add(size as u64);
                    return Ok(size as u64);
                }
                Err(e) => {
                    // Only "this filesystem (pair) cannot clone" ends cloning;
                    // EINVAL, ETXTBSY, EPERM... concern this one file (a
                    // btrfs NOCOW file, a swap file): copy it, clone the rest.
                    if matches!(
                        e,
                        Errno::EOPNOTSUPP | Errno::ENOTTY | Errno::EXDEV | Errno::ENOSYS
                    ) {
                        self.reflink = false;
                    }
                    ftruncate(d, 0).at("truncate", ctx.dp(rel))?;
                }
            }
        }
        self.copied += 1;
        let mut copied = 0u64;
        let mut off = 0i64;
        while off < size {
            let data = match lseek(f, off, Whence::SeekData) {
                Ok(x) => x,
                Err(Errno::ENXIO) => break,
                // No SEEK_DATA support: all data.
                Err(Errno::EINVAL | Errno::EOPNOTSUPP) => off,
                Err(e) => return Err(Error::errno("lseek", ctx.up(rel), e).into()),
            };
            if data >= size {
                break;
            }
            let hole = match lseek(f, data, Whence::SeekHole) {
                Ok(x) => x.min(size),
                Err(Errno::EINVAL | Errno::EOPNOTSUPP) => size,
                Err(e) => return Err::<(), _>(e).src("lseek", || ctx.up(rel)).map(|_| 0),
            };
            copied += self.copy_range(ctx, rel, f, d, data, hole - data, prog)?;
            off = hole;
        }
        ftruncate(d, size).at("truncate", ctx.dp(rel))?;
        Ok(copied)
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_range(
        &mut self,
        ctx: &Ctx,
        rel: &[u8],
        f: &File,
        d: &File,
        mut off: i64,
        len: i64,
        prog: &mut Prog<'_>,
    ) -> FResult<u64> {
        let mut left = len as u64;
        while left > 0 {
            let chunk = left.min(CHUNK as u64) as usize;
            if self.cfr {
                let (mut i, mut o) = (off, off);
                // Raw libc: nix's wrapper needs its `zerocopy` feature.
                // SAFETY: offsets point to live locals; fds are open.
                let r = unsafe {
                    libc::copy_file_range(f.as_raw_fd(), &mut i, d.as_raw_fd(), &mut o, chunk, 0)
                };
                match Errno::result(r).map(|n| n as usize) {
                    Ok(0) => return Err(changed("copy", ctx.up(rel))),
                    Ok(n) => {
                        off += n as i64;
                        left -= n as u64;
                        prog.add(n as u64);
                        continue;
                    }
                    Err(Errno::EXDEV | Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOSYS) => {
                        self.cfr = false;
                    }
                    Err(e) => return Err::<(), _>(e).src("copy", || ctx.up(rel)).map(|_| 0),
                }
            }
            if self.buf.is_empty() {
                self.buf = vec![0; 1 << 20];
            }
            let want = chunk.min(self.buf.len());
            let n = f
                .read_at(&mut self.buf[..want], off as u64)
                .src("read", || ctx.up(rel))?;
            if n == 0 {
                return Err(changed("read", ctx.up(rel)));
            }
            d.write_all_at(&self.buf[..n], off as u64)
                .at("write", ctx.dp(rel))?;
            off += n as i64;
            left -= n as u64;
            prog.add(n as u64);
        }
        Ok(len as u64)
    }
}

/// Makes `dst` share the data of `src` (`FICLONE`).
fn ficlone(dst: &File, src: &File) -> nix::Result<()> {
    // Raw ioctl: nix has no FICLONE wrapper.
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    Errno::result(r).map(drop)
}

/// Whether the capture filesystem can clone files at all. Cloning from the
/// upper dir may still fail (other filesystem); the first such failure
/// switches to copying.
pub(crate) fn probe_reflink(dest: &Path) -> bool {
    let a = dest.join(".reflink-probe-a");
    let b = dest.join(".reflink-probe-b");
    let ok = (|| -> std::io::Result<bool> {
        // FICLONE needs a readable source.
        let fa = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&a)?;
        fa.write_all_at(b"x", 0)?;
        let fb = File::create(&b)?;
        Ok(ficlone(&fb, &fa).is_ok())
    })()
    .unwrap_or(false);
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    ok
}
