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
//! time, with `O_NOFOLLOW`; regular files are opened `O_PATH`, checked with
//! `fstat`, and only then reopened for reading through `/proc/self/fd`. The
//! capture directory is private to us, so plain paths are used there.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstat, fstatat,
    futimens, lstat, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{UnlinkatFlags, Whence, dup, ftruncate, linkat, lseek, symlinkat, unlinkat};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::types::CaptureStrategy;

/// Counters of one phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseStats {
    /// Entries of the upper dir walked (the root excluded).
    pub entries: u64,
    /// Non-directory entries (re)created in the capture directory.
    pub files: u64,
    /// File data bytes copied or cloned.
    pub bytes_copied: u64,
    /// Entries removed from the capture directory because they vanished.
    pub removed: u64,
    /// Wall time of the phase.
    pub duration: Duration,
}

/// An entry is re-copied if its recorded ctime is not older than this before
/// the instant its `lstat` was taken: a write in the same timestamp tick would
/// keep the ctime (git's "racy clean" problem).
const RACY_NS: i128 = 50_000_000;

/// Chunk size of one `copy_file_range` call (progress granularity).
const CHUNK: usize = 64 << 20;

/// Open flags for a source directory: never follow a symlink.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Current wall-clock time in ns since the epoch (what ctimes are taken from).
fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// The stat fields change detection compares (atime is deliberately absent:
/// reads change it without touching ctime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    dev: u64,
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    rdev: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Meta {
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    fn from_stat(st: &FileStat) -> (Meta, (i64, i64)) {
        let meta = Meta {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mode: st.st_mode as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink as u64,
            rdev: st.st_rdev as u64,
            size: st.st_size as i64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
        };
        (meta, (st.st_atime as i64, st.st_atime_nsec as i64))
    }

    fn fmt(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    fn is_dir(&self) -> bool {
        self.fmt() == libc::S_IFDIR
    }

    /// Inode key for hardlink tracking.
    fn key(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// A non-directory that may have other names.
    fn multi_linked(&self) -> bool {
        !self.is_dir() && self.nlink > 1
    }
}

/// What was recorded for one path.
#[derive(Debug, Clone, Copy)]
struct Rec {
    meta: Meta,
    atime: (i64, i64),
    /// Wall-clock ns when the `lstat` was taken.
    taken: i128,
    /// The copy completed without a race.
    ok: bool,
    /// Walk generation that last saw the path.
    seen: u32,
}

impl Rec {
    fn clean(&self, now: &Meta) -> bool {
        let ctime = self.meta.ctime.0 as i128 * 1_000_000_000 + self.meta.ctime.1 as i128;
        self.ok && self.meta == *now && ctime < self.taken - RACY_NS
    }
}

/// A failure while copying one entry: a race with the running container
/// (the entry is left for sync) or a real error.
enum Fail {
    Race(Error),
    Fatal(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Fatal(e)
    }
}

impl Fail {
    fn into_error(self) -> Error {
        match self {
            Fail::Race(e) | Fail::Fatal(e) => e,
        }
    }
}

type FResult<T> = std::result::Result<T, Fail>;

/// Errnos a concurrent change of the source can cause.
fn is_race(e: Errno) -> bool {
    matches!(
        e,
        Errno::ENOENT
            | Errno::ENOTDIR
            | Errno::ELOOP
            | Errno::ESTALE
            | Errno::EINVAL
            | Errno::ENODATA
            | Errno::ENXIO
    )
}

/// Classifies errors of source-side operations.
trait SrcExt<T> {
    fn src(self, op: &'static str, path: impl FnOnce() -> PathBuf) -> FResult<T>;
}

impl<T> SrcExt<T> for nix::Result<T> {
    fn src(self, op: &'static str, path: impl FnOnce() -> PathBuf) -> FResult<T> {
        self.map_err(|e| {
            let err = Error::errno(op, path(), e);
            if is_race(e) {
                Fail::Race(err)
            } else {
                Fail::Fatal(err)
            }
        })
    }
}

impl<T> SrcExt<T> for std::io::Result<T> {
    fn src(self, op: &'static str, path: impl FnOnce() -> PathBuf) -> FResult<T> {
        self.map_err(|e| match e.raw_os_error() {
            Some(n) => match Err::<(), _>(Errno::from_raw(n)).src(op, path) {
                Err(f) => f,
                Ok(()) => Fail::Fatal(Error::Internal("unreachable".into())),
            },
            None => Fail::Fatal(Error::io(op, path(), e)),
        })
    }
}

/// The source changed under us without an errno (other inode, short read).
fn changed(op: &'static str, path: PathBuf) -> Fail {
    Fail::Race(Error::io(
        op,
        path,
        std::io::Error::other("changed while being copied"),
    ))
}

/// Paths of both sides, for operations and error messages.
struct Ctx {
    upper: PathBuf,
    dest: PathBuf,
}

impl Ctx {
    fn join(base: &Path, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            base.to_path_buf()
        } else {
            base.join(OsStr::from_bytes(rel))
        }
    }

    /// Source path (messages only: never used to access the upper dir).
    fn up(&self, rel: &[u8]) -> PathBuf {
        Self::join(&self.upper, rel)
    }

    /// Capture path.
    fn dp(&self, rel: &[u8]) -> PathBuf {
        Self::join(&self.dest, rel)
    }
}

/// The parent of a relative path (`""` for top-level names).
fn parent_rel(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => &rel[..i],
        None => b"",
    }
}

/// Opens subdirectory `name` of `parent` without following symlinks and
/// checks it is the inode `expect` describes (not something swapped in).
fn open_subdir(parent: BorrowedFd<'_>, name: &CStr, expect: &Meta) -> nix::Result<OwnedFd> {
    let fd = openat(parent, name, dir_flags(), Mode::empty())?;
    let st = fstat(&fd)?;
    let (m, _) = Meta::from_stat(&st);
    if !m.is_dir() || m.key() != expect.key() {
        return Err(Errno::ESTALE);
    }
    Ok(fd)
}

/// Opens `rel` (a directory) beneath `root`, one component at a time, never
/// following a symlink.
fn open_beneath(root: BorrowedFd<'_>, rel: &[u8]) -> nix::Result<OwnedFd> {
    let mut cur = openat(root, c".", dir_flags(), Mode::empty())?;
    if rel.is_empty() {
        return Ok(cur);
    }
    for comp in rel.split(|b| *b == b'/') {
        if comp.is_empty() || comp == b"." || comp == b".." {
            return Err(Errno::EINVAL);
        }
        cur = openat(&cur, comp, dir_flags(), Mode::empty())?;
    }
    Ok(cur)
}

/// Names in a directory, without `.` and `..`.
fn read_names(fd: BorrowedFd<'_>) -> nix::Result<Vec<CString>> {
    // A dup has its own `DIR` but shares the offset; nix rewinds when done.
    let mut d = Dir::from_fd(dup(fd)?)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name();
        if n == c"." || n == c".." {
            continue;
        }
        out.push(n.to_owned());
    }
    Ok(out)
}

/// Removes whatever is at `p` in the capture dir. Returns whether something was there.
fn remove_dest(p: &Path) -> Result<bool> {
    match lstat(p) {
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(Error::errno("lstat", p, e)),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            std::fs::remove_dir_all(p).at("remove", p)?;
            Ok(true)
        }
        Ok(_) => match unlinkat(AT_FDCWD, p, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(true),
            Err(e) => Err(Error::errno("unlink", p, e)),
        },
    }
}

fn timespec(t: (i64, i64)) -> TimeSpec {
    TimeSpec::new(t.0 as libc::time_t, t.1 as libc::c_long)
}

fn set_path_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) -> Result<()> {
    utimensat(
        AT_FDCWD,
        p,
        &timespec(atime),
        &timespec(mtime),
        UtimensatFlags::NoFollowSymlink,
    )
    .at("utimensat", p)
}

// ---------------------------------------------------------------- xattrs

/// Where xattrs are read or written: an open fd, or a path whose last
/// component is not followed (`l*xattr`).
enum XRef<'a> {
    Fd(BorrowedFd<'a>),
    Path(CString),
}

impl XRef<'_> {
    fn path(p: &Path) -> nix::Result<XRef<'static>> {
        Ok(XRef::Path(
            CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?,
        ))
    }

    /// `/proc/self/fd/<dir>/<name>`: the entry `name` of an open directory.
    fn at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<XRef<'static>> {
        let mut v = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
        v.extend_from_slice(name.to_bytes());
        Ok(XRef::Path(CString::new(v).map_err(|_| Errno::EINVAL)?))
    }
}

fn xlist(x: &XRef<'_>) -> nix::Result<Vec<u8>> {
    loop {
        // SAFETY: a null buffer with size 0 asks for the needed size.
        let n = unsafe {
            match x {
                XRef::Fd(fd) => libc::flistxattr(fd.as_raw_fd(), std::ptr::null_mut(), 0),
                XRef::Path(p) => libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0),
            }
        };
        let n = match Errno::result(n) {
            Ok(n) => n as usize,
            Err(Errno::EOPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n];
        // SAFETY: buf has n writable bytes.
        let r = unsafe {
            match x {
                XRef::Fd(fd) => libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), n),
                XRef::Path(p) => libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), n),
            }
        };
        match Errno::result(r) {
            Ok(m) => {
                buf.truncate(m as usize);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn xget(x: &XRef<'_>, name: &CStr) -> nix::Result<Vec<u8>> {
    loop {
        // SAFETY: a null buffer with size 0 asks for the needed size.
        let n = unsafe {
            match x {
                XRef::Fd(fd) => {
                    libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), std::ptr::null_mut(), 0)
                }
                XRef::Path(p) => {
                    libc::lgetxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0)
                }
            }
        };
        let n = Errno::result(n)? as usize;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n];
        // SAFETY: buf has n writable bytes.
        let r = unsafe {
            match x {
                XRef::Fd(fd) => {
                    libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), n)
                }
                XRef::Path(p) => {
                    libc::lgetxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), n)
                }
            }
        };
        match Errno::result(r) {
            Ok(m) => {
                buf.truncate(m as usize);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn xset(x: &XRef<'_>, name: &CStr, value: &[u8]) -> nix::Result<()> {
    // SAFETY: pointers are valid for the given lengths.
    let r = unsafe {
        match x {
            XRef::Fd(fd) => libc::fsetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            ),
            XRef::Path(p) => libc::lsetxattr(
                p.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            ),
        }
    };
    Errno::result(r).map(drop)
}

fn xremove(x: &XRef<'_>, name: &CStr) -> nix::Result<()> {
    // SAFETY: valid C strings.
    let r = unsafe {
        match x {
            XRef::Fd(fd) => libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()),
            XRef::Path(p) => libc::lremovexattr(p.as_ptr(), name.as_ptr()),
        }
    };
    Errno::result(r).map(drop)
}

/// Names in a `listxattr` buffer.
fn xnames(buf: &[u8]) -> impl Iterator<Item = &CStr> {
    buf.split_inclusive(|b| *b == 0)
        .filter_map(|s| CStr::from_bytes_with_nul(s).ok())
        .filter(|s| !s.is_empty())
}

/// The capture filesystem may label new files itself (SELinux); that label
/// is not ours to fight over.
fn lenient_xattr(name: &CStr) -> bool {
    name.to_bytes() == b"security.selinux"
}

/// Makes the xattrs of `dst` exactly those of `src`.
fn copy_xattrs(ctx: &Ctx, rel: &[u8], src: &XRef<'_>, dst: &XRef<'_>) -> FResult<()> {
    let names = xlist(src).src("listxattr", || ctx.up(rel))?;
    let have = xlist(dst).at("listxattr", ctx.dp(rel))?;
    for n in xnames(&have) {
        if xnames(&names).any(|m| m == n) {
            continue;
        }
        match xremove(dst, n) {
            Ok(()) | Err(Errno::ENODATA) => {}
            Err(_) if lenient_xattr(n) => {}
            Err(e) => return Err(Error::errno("removexattr", ctx.dp(rel), e).into()),
        }
    }
    for n in xnames(&names) {
        let v = xget(src, n).src("getxattr", || ctx.up(rel))?;
        match xset(dst, n, &v) {
            Ok(()) => {}
            Err(e) if lenient_xattr(n) => {
                tracing::debug!(path = %ctx.dp(rel).display(), error = %e, "xattr not preserved");
            }
            Err(e) => return Err(Error::errno("setxattr", ctx.dp(rel), e).into()),
        }
    }
    Ok(())
}

/// The capture-side object whose metadata is set.
enum Dst<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a Path),
}

/// Owner, then mode, then xattrs (chown clears setuid bits and
/// `security.capability`), then optionally times.
#[allow(clippy::too_many_arguments)]
fn apply_meta(
    ctx: &Ctx,
    rel: &[u8],
    src: &XRef<'_>,
    dst: &Dst<'_>,
    meta: &Meta,
    atime: (i64, i64),
    times: bool,
) -> FResult<()> {
    let perm = Mode::from_bits_truncate(meta.mode & 0o7777);
    match dst {
        Dst::Fd(fd) => {
            // SAFETY: plain syscall on a borrowed fd.
            let r = unsafe { libc::fchown(fd.as_raw_fd(), meta.uid, meta.gid) };
            Errno::result(r).at("chown", ctx.dp(rel))?;
            fchmod(fd, perm).at("chmod", ctx.dp(rel))?;
            copy_xattrs(ctx, rel, src, &XRef::Fd(*fd))?;
            if times {
                futimens(fd, &timespec(atime), &timespec(meta.mtime))
                    .at("futimens", ctx.dp(rel))?;
            }
        }
        Dst::Path(p) => {
            let c = CString::new(p.as_os_str().as_bytes())
                .map_err(|_| Error::errno("chown", *p, Errno::EINVAL))?;
            // SAFETY: valid C string; lchown never follows the last component.
            let r = unsafe { libc::lchown(c.as_ptr(), meta.uid, meta.gid) };
            Errno::result(r).at("chown", *p)?;
            if meta.fmt() != libc::S_IFLNK {
                // The capture dir is ours: the last component is not a symlink.
                fchmodat(AT_FDCWD, *p, perm, FchmodatFlags::FollowSymlink).at("chmod", *p)?;
            }
            let x = XRef::path(p).at("setxattr", *p)?;
            copy_xattrs(ctx, rel, src, &x)?;
            if times {
                set_path_times(p, atime, meta.mtime)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- copying

/// Reports progress at most every 100 ms.
struct Prog<'a> {
    cb: &'a mut dyn FnMut(u64),
    total: u64,
    last: Instant,
}

impl Prog<'_> {
    fn add(&mut self, n: u64) {
        self.total += n;
        if self.last.elapsed() >= Duration::from_millis(100) {
            (self.cb)(self.total);
            self.last = Instant::now();
        }
    }
}

/// Creates capture entries; remembers which copy methods work.
struct Copier {
    reflink: bool,
    cfr: bool,
    reflinked: u64,
    copied: u64,
    buf: Vec<u8>,
}

impl Copier {
    /// Creates the non-directory `rel` in the capture dir from entry `name`
    /// of the source directory `parent`, with all its metadata. Returns the
    /// data bytes copied.
    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        ctx: &Ctx,
        parent: BorrowedFd<'_>,
        name: &CStr,
        rel: &[u8],
        meta: &Meta,
        atime: (i64, i64),
        prog: &mut Prog<'_>,
    ) -> FResult<u64> {
        let dpath = ctx.dp(rel);
        let fmt = meta.fmt();
        match fmt {
            libc::S_IFREG => return self.copy_regular(ctx, parent, name, rel, meta, atime, prog),
            libc::S_IFLNK => {
                let target =
                    nix::fcntl::readlinkat(parent, name).src("readlink", || ctx.up(rel))?;
                symlinkat(target.as_os_str(), AT_FDCWD, &dpath).at("symlink", &dpath)?;
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                mknodat(
                    AT_FDCWD,
                    &dpath,
                    SFlag::from_bits_truncate(fmt),
                    Mode::from_bits_truncate(meta.mode & 0o777),
                    meta.rdev as libc::dev_t,
                )
                .at("mknod", &dpath)?;
            }
            _ => {
                return Err(Fail::Fatal(Error::Internal(format!(
                    "unexpected file type {fmt:o} at {}",
                    ctx.up(rel).display()
                ))));
            }
        }
        let src = XRef::at(parent, name).src("listxattr", || ctx.up(rel))?;
        apply_meta(ctx, rel, &src, &Dst::Path(&dpath), meta, atime, true)?;
        Ok(0)
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_regular(
        &mut self,
        ctx: &Ctx,
        parent: BorrowedFd<'_>,
        name: &CStr,
        rel: &[u8],
        meta: &Meta,
        atime: (i64, i64),
        prog: &mut Prog<'_>,
    ) -> FResult<u64> {
        let up = || ctx.up(rel);
        // O_PATH never opens the object itself (no device or fifo side effects).
        let p = openat(
            parent,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .src("open", up)?;
        let st = fstat(&p).src("stat", up)?;
        let (now, _) = Meta::from_stat(&st);
        if now.fmt() != libc::S_IFREG || now.key() != meta.key() {
            return Err(changed("open", up()));
        }
        let proc = format!("/proc/self/fd/{}", p.as_raw_fd());
        let ro = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let f = match nix::fcntl::open(proc.as_str(), ro | OFlag::O_NOATIME, Mode::empty()) {
            Err(Errno::EPERM) => nix::fcntl::open(proc.as_str(), ro, Mode::empty()),
            r => r,
        }
        .src("open", up)?;
        drop(p);
        let f = File::from(f);
        let dpath = ctx.dp(rel);
        let d = nix::fcntl::open(
            &dpath,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .at("create", &dpath)?;
        let d = File::from(d);
        let n = self.copy_data(ctx, rel, &f, &d, meta.size, prog)?;
        apply_meta(
            ctx,
            rel,
            &XRef::Fd(f.as_fd()),
            &Dst::Fd(d.as_fd()),
            meta,
            atime,
            true,
        )?;
        Ok(n)
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
            // SAFETY: FICLONE takes the source fd as its argument.
            let r = unsafe { libc::ioctl(d.as_raw_fd(), libc::FICLONE, f.as_raw_fd()) };
            match Errno::result(r) {
                Ok(_) => {
                    self.reflinked += 1;
                    prog.add(size as u64);
                    return Ok(size as u64);
                }
                Err(e) => {
                    if matches!(
                        e,
                        Errno::EOPNOTSUPP
                            | Errno::ENOTTY
                            | Errno::EXDEV
                            | Errno::EINVAL
                            | Errno::ENOSYS
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

// ---------------------------------------------------------------- walking

/// One entry met by the walk.
struct Entry<'a> {
    parent: BorrowedFd<'a>,
    name: &'a CStr,
    rel: &'a [u8],
    st: &'a FileStat,
    /// Wall-clock ns just before the `lstat`.
    taken: i128,
    /// For a directory: the opened and verified directory (`None` if it
    /// changed under us before it could be opened).
    dir: Option<BorrowedFd<'a>>,
}

trait Visit {
    /// Called for every entry, parents before children. Returns whether to
    /// descend into a directory.
    fn entry(&mut self, e: Entry<'_>) -> Result<bool>;
    /// Called after all children of a descended directory (and the root).
    fn leave(&mut self, dir: BorrowedFd<'_>, rel: &[u8], st: &FileStat) -> Result<()>;
}

struct Level {
    dir: OwnedFd,
    names: Vec<CString>,
    idx: usize,
    rel_len: usize,
    st: FileStat,
}

/// Walks the tree below `top` without recursion, holding one fd per level.
/// `strict`: every source error is an error (frozen container); otherwise
/// races make the walker skip the entry.
fn walk(ctx: &Ctx, top: OwnedFd, top_st: FileStat, strict: bool, v: &mut dyn Visit) -> Result<()> {
    let names = match read_names(top.as_fd()) {
        Ok(n) => n,
        Err(e) => return Err(Error::errno("readdir", ctx.up(b""), e)),
    };
    let mut stack = vec![Level {
        dir: top,
        names,
        idx: 0,
        rel_len: 0,
        st: top_st,
    }];
    let mut rel: Vec<u8> = Vec::with_capacity(256);
    while let Some(lvl) = stack.last_mut() {
        if lvl.idx >= lvl.names.len() {
            if let Some(done) = stack.pop() {
                rel.truncate(done.rel_len);
                v.leave(done.dir.as_fd(), &rel, &done.st)?;
            }
            continue;
        }
        let name = std::mem::take(&mut lvl.names[lvl.idx]);
        lvl.idx += 1;
        rel.truncate(lvl.rel_len);
        if lvl.rel_len > 0 {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.to_bytes());
        let taken = now_ns();
        let st = match fstatat(
            lvl.dir.as_fd(),
            name.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(e) if !strict && is_race(e) => continue,
            Err(e) => return Err(Error::errno("lstat", ctx.up(&rel), e)),
        };
        let (meta, _) = Meta::from_stat(&st);
        let mut sub = None;
        if meta.is_dir() {
            match open_subdir(lvl.dir.as_fd(), &name, &meta) {
                Ok(fd) => sub = Some(fd),
                Err(e) if !strict && is_race(e) => {}
                Err(e) => return Err(Error::errno("open", ctx.up(&rel), e)),
            }
        }
        let descend = v.entry(Entry {
            parent: lvl.dir.as_fd(),
            name: &name,
            rel: &rel,
            st: &st,
            taken,
            dir: sub.as_ref().map(|f| f.as_fd()),
        })?;
        if let (true, Some(fd)) = (descend, sub) {
            let names = match read_names(fd.as_fd()) {
                Ok(n) => n,
                // Removed while being read: its children are new at sync.
                Err(e) if !strict && is_race(e) => Vec::new(),
                Err(e) => return Err(Error::errno("readdir", ctx.up(&rel), e)),
            };
            stack.push(Level {
                dir: fd,
                names,
                idx: 0,
                rel_len: rel.len(),
                st,
            });
        }
    }
    Ok(())
}

/// Phase 1 visitor: copies every entry as it is met.
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
        let r = self.copier.create(
            self.ctx,
            e.parent,
            e.name,
            e.rel,
            meta,
            atime,
            &mut self.prog,
        );
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

/// One path that sync must (re)create.
struct Item {
    rel: Vec<u8>,
    meta: Meta,
    atime: (i64, i64),
    taken: i128,
}

/// Phase 2 visitor: only compares; copying happens after the walk.
struct Collect<'a> {
    recs: &'a mut HashMap<Vec<u8>, Rec>,
    forced: &'a HashSet<Vec<u8>>,
    gen_: u32,
    work: Vec<Item>,
    /// Clean multiply-linked paths: dirty after all if their inode is.
    clean_links: Vec<Item>,
    dirty_inodes: HashSet<(u64, u64)>,
    entries: u64,
}

impl Collect<'_> {
    fn see(&mut self, rel: &[u8], st: &FileStat, taken: i128) {
        let (meta, atime) = Meta::from_stat(st);
        let dirty = match self.recs.get_mut(rel) {
            Some(r) => {
                r.seen = self.gen_;
                !r.clean(&meta) || (meta.fmt() == libc::S_IFREG && self.forced.contains(rel))
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

    fn leave(&mut self, _: BorrowedFd<'_>, _: &[u8], _: &FileStat) -> Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------- API

/// A capture of one upper dir into one capture directory.
///
/// Call [`Capture::precopy`] once while the container runs, then
/// [`Capture::sync_frozen`] while it is frozen.
pub struct Capture {
    ctx: Ctx,
    /// The upper dir, opened once; everything is reached relative to it.
    root: OwnedFd,
    recs: HashMap<Vec<u8>, Rec>,
    gen_: u32,
    copier: Copier,
    totals: (u64, u64),
    /// Regular files the next sync re-copies whatever their stat says.
    forced: HashSet<Vec<u8>>,
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
    pub fn new(upper: &Path, dest: &Path) -> Result<Capture> {
        let root = nix::fcntl::open(upper, dir_flags(), Mode::empty()).at("open", upper)?;
        // Files are reopened through /proc/self/fd: fail early without it.
        if let Err(e) = std::fs::metadata("/proc/self/fd") {
            return Err(Error::Unsupported(format!(
                "/proc/self/fd unavailable: {e}"
            )));
        }
        mkdirat(AT_FDCWD, dest, Mode::from_bits_truncate(0o700)).at("mkdir", dest)?;
        let reflink = probe_reflink(dest);
        Ok(Capture {
            ctx: Ctx {
                upper: upper.to_path_buf(),
                dest: dest.to_path_buf(),
            },
            root,
            recs: HashMap::new(),
            gen_: 0,
            copier: Copier {
                reflink,
                cfr: true,
                reflinked: 0,
                copied: 0,
                buf: Vec::new(),
            },
            totals: (0, 0),
            forced: HashSet::new(),
        })
    }

    /// Phase 1, container running: copies everything. Entries that change
    /// while being copied (vanish, are replaced, truncated, grown, swapped
    /// for symlinks) are left for [`Capture::sync_frozen`]; only real errors
    /// (capture side, I/O) fail. `progress(bytes_copied)` is called about
    /// every 100 ms and at the end.
    pub fn precopy(&mut self, progress: &mut dyn FnMut(u64)) -> Result<PhaseStats> {
        if self.gen_ != 0 {
            return Err(Error::InvalidArgument(
                "precopy must be the first and only pre-copy pass".into(),
            ));
        }
        let start = Instant::now();
        self.gen_ += 1;
        let top = open_beneath(self.root.as_fd(), b"").at("open", &self.ctx.upper)?;
        let taken = now_ns();
        let st = fstat(&top).at("stat", &self.ctx.upper)?;
        let (meta, atime) = Meta::from_stat(&st);
        self.recs.insert(
            Vec::new(),
            Rec {
                meta,
                atime,
                taken,
                ok: true,
                seen: self.gen_,
            },
        );
        let mut v = Pre {
            ctx: &self.ctx,
            recs: &mut self.recs,
            copier: &mut self.copier,
            links: HashMap::new(),
            stats: PhaseStats::default(),
            prog: Prog {
                cb: progress,
                total: 0,
                last: Instant::now(),
            },
            gen_: self.gen_,
        };
        walk(&self.ctx, top, st, false, &mut v)?;
        (v.prog.cb)(v.prog.total);
        let mut stats = v.stats;
        stats.duration = start.elapsed();
        tracing::debug!(?stats, "pre-copy done");
        Ok(stats)
    }

    /// Marks regular files (paths relative to the upper dir) that the next
    /// [`Self::sync_frozen`] re-copies even when their stat is unchanged: files
    /// mapped shared-writable by the container, whose writes to already-dirty
    /// pages change neither mtime nor ctime.
    pub fn force_recopy(&mut self, paths: impl IntoIterator<Item = Vec<u8>>) {
        self.forced.extend(paths);
    }

    /// Phase 2, container frozen: walks the upper dir, re-copies entries that
    /// changed since they were recorded (per inode, so hardlinks follow),
    /// removes vanished ones and fixes metadata, leaving the capture dir
    /// exactly equal to the upper dir. No fsync. Every error is an error.
    pub fn sync_frozen(&mut self) -> Result<PhaseStats> {
        let start = Instant::now();
        self.gen_ += 1;
        let gen_ = self.gen_;
        let ctx = &self.ctx;
        let root = self.root.as_fd();

        let top = open_beneath(root, b"").at("open", &ctx.upper)?;
        let taken = now_ns();
        let st = fstat(&top).at("stat", &ctx.upper)?;
        let mut col = Collect {
            recs: &mut self.recs,
            forced: &self.forced,
            gen_,
            work: Vec::new(),
            clean_links: Vec::new(),
            dirty_inodes: HashSet::new(),
            entries: 0,
        };
        col.see(b"", &st, taken);
        walk(ctx, top, st, true, &mut col)?;
        let Collect {
            mut work,
            clean_links,
            dirty_inodes,
            entries,
            ..
        } = col;
        // Forced once: the next sync looks at its own mappings.
        self.forced.clear();
        // Parents of clean paths exist in the capture, so order is kept.
        work.extend(
            clean_links
                .into_iter()
                .filter(|i| dirty_inodes.contains(&i.meta.key())),
        );

        let mut stats = PhaseStats {
            entries,
            ..PhaseStats::default()
        };
        // Directories whose times must be set after all changes inside them.
        let mut retime: HashSet<Vec<u8>> = HashSet::new();

        // Vanished paths, deepest first (a prefix sorts before its children).
        let mut vanished: Vec<Vec<u8>> = self
            .recs
            .iter()
            .filter(|(_, r)| r.seen != gen_)
            .map(|(k, _)| k.clone())
            .collect();
        vanished.sort_unstable_by(|a, b| b.cmp(a));
        for rel in vanished {
            if remove_dest(&ctx.dp(&rel))? {
                stats.removed += 1;
            }
            self.recs.remove(&rel);
            retime.insert(parent_rel(&rel).to_vec());
        }

        let mut noprog = |_: u64| {};
        let mut prog = Prog {
            cb: &mut noprog,
            total: 0,
            last: Instant::now(),
        };
        let mut parent: Option<(Vec<u8>, OwnedFd)> = None;
        let mut made: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
        for it in work {
            let rel = it.rel.as_slice();
            let dpath = ctx.dp(rel);
            if rel.is_empty() {
                let d = open_beneath(root, b"").at("open", &ctx.upper)?;
                check_same(ctx, rel, &d, &it.meta)?;
                apply_meta(
                    ctx,
                    rel,
                    &XRef::Fd(d.as_fd()),
                    &Dst::Path(&dpath),
                    &it.meta,
                    it.atime,
                    false,
                )
                .map_err(Fail::into_error)?;
            } else {
                let prel = parent_rel(rel);
                let name_bytes = if prel.is_empty() {
                    rel
                } else {
                    &rel[prel.len() + 1..]
                };
                let name = CString::new(name_bytes)
                    .map_err(|_| Error::Internal("NUL in a file name".into()))?;
                if parent.as_ref().is_none_or(|(p, _)| p.as_slice() != prel) {
                    let fd = open_beneath(root, prel).at("open", ctx.up(prel))?;
                    parent = Some((prel.to_vec(), fd));
                }
                let Some((_, pfd)) = parent.as_ref() else {
                    return Err(Error::Internal("parent not open".into()));
                };
                if it.meta.is_dir() {
                    let is_dir = lstat(&dpath)
                        .map(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR)
                        .unwrap_or(false);
                    if !is_dir {
                        remove_dest(&dpath)?;
                        mkdirat(AT_FDCWD, &dpath, Mode::from_bits_truncate(0o700))
                            .at("mkdir", &dpath)?;
                        retime.insert(prel.to_vec());
                    }
                    let d = open_subdir(pfd.as_fd(), &name, &it.meta).at("open", ctx.up(rel))?;
                    apply_meta(
                        ctx,
                        rel,
                        &XRef::Fd(d.as_fd()),
                        &Dst::Path(&dpath),
                        &it.meta,
                        it.atime,
                        false,
                    )
                    .map_err(Fail::into_error)?;
                } else {
                    remove_dest(&dpath)?;
                    retime.insert(prel.to_vec());
                    let first = if it.meta.multi_linked() {
                        made.get(&it.meta.key())
                    } else {
                        None
                    };
                    if let Some(first) = first {
                        linkat(
                            AT_FDCWD,
                            &ctx.dp(first),
                            AT_FDCWD,
                            &dpath,
                            nix::fcntl::AtFlags::empty(),
                        )
                        .at("link", &dpath)?;
                    } else {
                        stats.bytes_copied += self
                            .copier
                            .create(ctx, pfd.as_fd(), &name, rel, &it.meta, it.atime, &mut prog)
                            .map_err(Fail::into_error)?;
                        if it.meta.multi_linked() {
                            made.insert(it.meta.key(), it.rel.clone());
                        }
                    }
                    stats.files += 1;
                }
            }
            if it.meta.is_dir() {
                retime.insert(it.rel.clone());
            }
            self.recs.insert(
                it.rel,
                Rec {
                    meta: it.meta,
                    atime: it.atime,
                    taken: it.taken,
                    ok: true,
                    seen: gen_,
                },
            );
        }

        // Setting a directory's times does not touch its parent: any order.
        for rel in &retime {
            if let Some(r) = self.recs.get(rel.as_slice())
                && r.meta.is_dir()
            {
                set_path_times(&ctx.dp(rel), r.atime, r.meta.mtime)?;
            }
        }

        let mut totals = (0u64, 0u64);
        for r in self.recs.values() {
            if !r.meta.is_dir() {
                totals.0 += 1;
            }
            if r.meta.fmt() == libc::S_IFREG {
                totals.1 += r.meta.size.max(0) as u64;
            }
        }
        self.totals = totals;
        stats.duration = start.elapsed();
        tracing::debug!(?stats, "frozen sync done");
        Ok(stats)
    }

    /// Totals of the capture dir after sync: non-directory entries, and
    /// content bytes (sum of regular file sizes, each path counted).
    pub fn totals(&self) -> (u64, u64) {
        self.totals
    }

    /// How file data was (or, before any copy, will first be tried to be) copied.
    pub fn strategy(&self) -> CaptureStrategy {
        let c = &self.copier;
        match (c.reflinked > 0, c.copied > 0) {
            (true, true) => CaptureStrategy::Mixed,
            (true, false) => CaptureStrategy::Reflink,
            (false, true) => CaptureStrategy::CopyFileRange,
            (false, false) if c.reflink => CaptureStrategy::Reflink,
            (false, false) => CaptureStrategy::CopyFileRange,
        }
    }

    /// The capture directory.
    #[cfg(test)]
    pub fn dest(&self) -> &Path {
        &self.ctx.dest
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

/// Whether the capture filesystem can clone files at all. Cloning from the
/// upper dir may still fail (other filesystem); the first such failure
/// switches to copying.
fn probe_reflink(dest: &Path) -> bool {
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
        // SAFETY: FICLONE takes the source fd as its argument.
        let r = unsafe { libc::ioctl(fb.as_raw_fd(), libc::FICLONE, fa.as_raw_fd()) };
        Ok(r == 0)
    })()
    .unwrap_or(false);
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::hash::{DefaultHasher, Hasher};
    use std::io::{Read, Write};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn root() -> bool {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[derive(Debug, PartialEq)]
    struct Info {
        fmt: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        size: Option<u64>,
        hash: Option<u64>,
        mtime: (i64, i64),
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
        target: Option<Vec<u8>>,
        rdev: u64,
        group: Vec<Vec<u8>>,
    }

    fn xattrs_of(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let x = XRef::path(p).unwrap();
        let names = xlist(&x).unwrap();
        let mut out: Vec<_> = xnames(&names)
            .map(|n| (n.to_bytes().to_vec(), xget(&x, n).unwrap()))
            .collect();
        out.sort();
        out
    }

    fn hash_file(p: &Path) -> u64 {
        let mut f = File::open(p).unwrap();
        let mut h = DefaultHasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.write(&buf[..n]);
        }
        h.finish()
    }

    fn tree_info(root: &Path) -> BTreeMap<Vec<u8>, Info> {
        fn rec(
            root: &Path,
            rel: &[u8],
            out: &mut BTreeMap<Vec<u8>, Info>,
            inos: &mut HashMap<u64, Vec<Vec<u8>>>,
        ) {
            let p = Ctx::join(root, rel);
            let md = std::fs::symlink_metadata(&p).unwrap();
            let fmt = md.mode() & libc::S_IFMT;
            if fmt == libc::S_IFSOCK {
                return;
            }
            let is_reg = fmt == libc::S_IFREG;
            out.insert(
                rel.to_vec(),
                Info {
                    fmt,
                    mode: md.mode(),
                    uid: md.uid(),
                    gid: md.gid(),
                    size: (fmt != libc::S_IFDIR).then(|| md.size()),
                    hash: is_reg.then(|| hash_file(&p)),
                    mtime: (md.mtime(), md.mtime_nsec()),
                    xattrs: xattrs_of(&p),
                    target: (fmt == libc::S_IFLNK).then(|| {
                        std::fs::read_link(&p)
                            .unwrap()
                            .as_os_str()
                            .as_bytes()
                            .to_vec()
                    }),
                    rdev: md.rdev(),
                    group: Vec::new(),
                },
            );
            if fmt != libc::S_IFDIR {
                inos.entry(md.ino()).or_default().push(rel.to_vec());
                return;
            }
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                let mut r = rel.to_vec();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(e.file_name().as_bytes());
                rec(root, &r, out, inos);
            }
        }
        let mut out = BTreeMap::new();
        let mut inos = HashMap::new();
        rec(root, b"", &mut out, &mut inos);
        for mut paths in inos.into_values() {
            paths.sort();
            for p in &paths {
                if let Some(i) = out.get_mut(p) {
                    i.group = paths.clone();
                }
            }
        }
        out
    }

    /// Compares type, mode, owner, size, content, mtime, xattrs, symlink
    /// target, rdev and hardlink grouping of two trees (sockets ignored).
    fn assert_trees_equal(a: &Path, b: &Path) {
        let ta = tree_info(a);
        let tb = tree_info(b);
        let ka: Vec<_> = ta.keys().map(|k| String::from_utf8_lossy(k)).collect();
        let kb: Vec<_> = tb.keys().map(|k| String::from_utf8_lossy(k)).collect();
        assert_eq!(ka, kb, "path sets differ");
        for (k, ia) in &ta {
            assert_eq!(
                Some(ia),
                tb.get(k),
                "entry {:?} differs",
                String::from_utf8_lossy(k)
            );
        }
    }

    fn setx(p: &Path, name: &CStr, v: &[u8]) {
        xset(&XRef::path(p).unwrap(), name, v).unwrap();
    }

    fn mknod(p: &Path, kind: SFlag, perm: u32, dev: u64) {
        mknodat(AT_FDCWD, p, kind, Mode::from_bits_truncate(perm), dev).unwrap();
    }

    fn chown(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn capture(upper: &Path, dest: &Path) -> (Capture, PhaseStats, PhaseStats) {
        let mut c = Capture::new(upper, dest).unwrap();
        let mut last = 0;
        let pre = c.precopy(&mut |n| last = n).unwrap();
        assert_eq!(last, pre.bytes_copied);
        let sync = c.sync_frozen().unwrap();
        (c, pre, sync)
    }

    fn build_tricky(u: &Path) {
        std::fs::write(u.join("file.txt"), b"hello").unwrap();
        setx(&u.join("file.txt"), c"user.test", b"value");
        std::fs::write(u.join("n".repeat(200)), b"long name").unwrap();
        std::fs::write(u.join(OsStr::from_bytes(b"bad\xff\xfename")), b"x").unwrap();
        std::fs::create_dir(u.join("empty")).unwrap();
        std::fs::create_dir_all(u.join("a/b/c/d")).unwrap();
        std::fs::write(u.join("a/b/c/d/file"), b"deep").unwrap();
        std::fs::write(u.join("a/h1"), b"linked").unwrap();
        std::fs::hard_link(u.join("a/h1"), u.join("a/b/h2")).unwrap();
        std::fs::hard_link(u.join("a/h1"), u.join("h3")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", u.join("abs")).unwrap();
        std::os::unix::fs::symlink("nope/nothing", u.join("dangling")).unwrap();
        std::os::unix::fs::symlink("a/b", u.join("rel")).unwrap();
        setx(&u.join("rel"), c"trusted.sym", b"1");
        mknod(&u.join("wh"), SFlag::S_IFCHR, 0, 0);
        mknod(&u.join("null"), SFlag::S_IFCHR, 0o666, libc::makedev(1, 3));
        mknod(&u.join("fifo"), SFlag::S_IFIFO, 0o640, 0);
        std::fs::create_dir(u.join("opq")).unwrap();
        std::fs::write(u.join("opq/inside"), b"o").unwrap();
        setx(&u.join("opq"), c"trusted.overlay.opaque", b"y");
        let s = u.join("suid");
        std::fs::write(&s, b"#!/bin/sh\n").unwrap();
        chown(&s, 1000, 1000);
        chmod(&s, 0o4755);
        // VFS_CAP_REVISION_2, cap_net_bind_service permitted.
        let mut cap = Vec::new();
        for w in [0x0200_0000u32, 1 << 10, 0, 0, 0] {
            cap.extend_from_slice(&w.to_le_bytes());
        }
        setx(&s, c"security.capability", &cap);
        std::fs::create_dir(u.join("sticky")).unwrap();
        chmod(&u.join("sticky"), 0o1777);
        std::fs::create_dir(u.join("sgid")).unwrap();
        chown(&u.join("sgid"), 1000, 1001);
        chmod(&u.join("sgid"), 0o2750);
        let sp = File::create(u.join("sparse")).unwrap();
        sp.set_len(256 << 20).unwrap();
        sp.write_all_at(&[7u8; 4096], 0).unwrap();
        sp.write_all_at(&[9u8; 4096], 100 << 20).unwrap();
        drop(sp);
        let _sock = std::os::unix::net::UnixListener::bind(u.join("sock")).unwrap();
        utimensat(
            AT_FDCWD,
            &u.join("file.txt"),
            &TimeSpec::new(1_000_000, 111),
            &TimeSpec::new(1_500_000_000, 123_456_789),
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        chmod(&u.join("a/b/c"), 0o500);
    }

    /// Set `CAPTURE_TEST_XFS` to a directory on a reflink-capable fs.
    #[test]
    #[ignore]
    fn reflink_on_xfs() {
        let Some(base) = std::env::var_os("CAPTURE_TEST_XFS") else {
            return;
        };
        let t = tempfile::tempdir_in(base).unwrap();
        let u = t.path().join("upper");
        std::fs::create_dir(&u).unwrap();
        build_tricky(&u);
        std::fs::write(u.join("later"), b"x").unwrap();
        let dest = t.path().join("cap");
        let mut c = Capture::new(&u, &dest).unwrap();
        c.precopy(&mut |_| {}).unwrap();
        std::fs::write(u.join("later"), vec![b'y'; 1 << 20]).unwrap();
        c.sync_frozen().unwrap();
        assert_eq!(c.strategy(), CaptureStrategy::Reflink);
        assert_trees_equal(&u, &dest);
        let md = std::fs::metadata(dest.join("sparse")).unwrap();
        assert!(
            md.blocks() * 512 < 1 << 20,
            "not sparse: {} blocks",
            md.blocks()
        );
    }

    #[test]
    fn capture_is_send() {
        fn is_send<T: Send>() {}
        is_send::<Capture>();
    }

    #[test]
    fn sync_without_precopy_and_second_precopy() {
        if !root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let u = t.path().join("upper");
        std::fs::create_dir_all(u.join("a")).unwrap();
        std::fs::write(u.join("a/f"), b"data").unwrap();
        let dest = t.path().join("cap");
        let mut c = Capture::new(&u, &dest).unwrap();
        let s = c.sync_frozen().unwrap();
        assert_eq!((s.files, s.bytes_copied), (1, 4));
        assert_trees_equal(&u, &dest);
        assert!(c.precopy(&mut |_| {}).is_err());
        assert_eq!(c.dest(), dest.as_path());
        assert!(Capture::new(&u, &t.path().join("no/parent")).is_err());
    }

    #[test]
    fn tricky_tree_is_copied_exactly() {
        if !root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let u = t.path().join("upper");
        std::fs::create_dir(&u).unwrap();
        build_tricky(&u);
        let dest = t.path().join("cap");
        let (c, pre, _) = capture(&u, &dest);
        assert!(pre.files >= 15, "{pre:?}");
        assert_trees_equal(&u, &dest);
        let md = std::fs::metadata(dest.join("sparse")).unwrap();
        assert_eq!(md.size(), 256 << 20);
        assert!(
            md.blocks() * 512 < 1 << 20,
            "not sparse: {} blocks",
            md.blocks()
        );
        assert!(!dest.join("sock").exists());
        let x = xattrs_of(&dest.join("suid"));
        assert!(x.iter().any(|(n, _)| n == b"security.capability"));
        let (files, bytes) = c.totals();
        assert_eq!(files, 16);
        assert!(bytes >= 256 << 20);
        assert_eq!(c.strategy(), CaptureStrategy::CopyFileRange);
        // dest must not exist beforehand
        assert!(Capture::new(&u, &dest).is_err());
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    fn churn(u: &Path, rng: &mut Rng) {
        let d = |r: &mut Rng| u.join(format!("d{}", r.next(4)));
        let f = |r: &mut Rng| d(r).join(format!("f{}", r.next(40)));
        match rng.next(11) {
            0 => {
                if let Ok(mut h) = std::fs::OpenOptions::new().append(true).open(f(rng)) {
                    let _ = h.write_all(&[b'a'; 3000]);
                }
            }
            1 => {
                if let Ok(h) = std::fs::OpenOptions::new().write(true).open(f(rng)) {
                    let _ = h.set_len(rng.next(100_000));
                }
            }
            2 => {
                let tmp = d(rng).join(format!("tmp{}", rng.next(1000)));
                if std::fs::write(&tmp, vec![b'r'; rng.next(50_000) as usize]).is_ok() {
                    let _ = std::fs::rename(&tmp, f(rng));
                }
            }
            3 => {
                let _ = std::fs::remove_file(f(rng));
            }
            4 => {
                let _ = std::fs::write(f(rng), b"new");
            }
            5 => {
                let _ = std::fs::hard_link(f(rng), f(rng));
            }
            6 => {
                let s = d(rng).join(format!("s{}", rng.next(5)));
                if std::fs::create_dir(&s).is_ok() {
                    let _ = std::fs::write(s.join("x"), b"in sub");
                } else {
                    let _ = std::fs::remove_dir_all(&s);
                }
            }
            7 => {
                let _ = std::fs::set_permissions(
                    f(rng),
                    std::fs::Permissions::from_mode(0o600 + rng.next(0o177) as u32),
                );
            }
            8 => {
                let a = d(rng).join(format!("s{}", rng.next(5)));
                let b = d(rng).join(format!("s{}", rng.next(5)));
                let _ = std::fs::rename(a, b);
            }
            9 => {
                if let Ok(x) = XRef::path(&f(rng)) {
                    let _ = xset(&x, c"user.x", &rng.next(1000).to_le_bytes());
                }
            }
            _ => {
                let _ = std::os::unix::fs::symlink("target", f(rng));
            }
        }
    }

    #[test]
    fn concurrent_changes_are_synced_exactly() {
        if !root() {
            return;
        }
        for iter in 0..3u64 {
            let t = tempfile::tempdir().unwrap();
            let u = t.path().join("upper");
            let mut rng = Rng(iter + 1);
            for i in 0..4 {
                std::fs::create_dir_all(u.join(format!("d{i}"))).unwrap();
                for j in 0..40 {
                    let size = if j % 10 == 0 { 512 << 10 } else { 2000 };
                    std::fs::write(u.join(format!("d{i}/f{j}")), vec![b'0' + j as u8; size])
                        .unwrap();
                }
            }
            for _ in 0..200 {
                churn(&u, &mut rng);
            }
            let stop = Arc::new(AtomicBool::new(false));
            let (u2, s2) = (u.clone(), stop.clone());
            let writer = std::thread::spawn(move || {
                let mut rng = Rng(iter + 100);
                let mut n = 0u64;
                while !s2.load(Ordering::Relaxed) {
                    churn(&u2, &mut rng);
                    n += 1;
                }
                n
            });
            std::thread::sleep(Duration::from_millis(5));
            let dest = t.path().join("cap");
            let mut c = Capture::new(&u, &dest).unwrap();
            c.precopy(&mut |_| {}).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            stop.store(true, Ordering::Relaxed);
            let ops = writer.join().unwrap();
            let sync = c.sync_frozen().unwrap();
            assert!(ops > 0);
            eprintln!("iteration {iter}: {ops} concurrent ops, sync {sync:?}");
            assert_trees_equal(&u, &dest);
            // A second sync with no change in between keeps it equal.
            std::thread::sleep(Duration::from_millis(60));
            c.sync_frozen().unwrap();
            assert_trees_equal(&u, &dest);
        }
    }

    fn contains_secret(dir: &Path) -> bool {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            let name = e.file_name();
            if name.as_bytes().starts_with(b"secret") || name == "deeper" {
                return true;
            }
            if ft.is_dir() {
                if contains_secret(&e.path()) {
                    return true;
                }
            } else if ft.is_file() && std::fs::read(e.path()).unwrap().starts_with(b"TOPSECRET") {
                return true;
            }
        }
        false
    }

    #[test]
    fn symlink_swap_never_escapes() {
        if !root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("outside");
        std::fs::create_dir_all(out.join("deeper")).unwrap();
        std::fs::write(out.join("secret.txt"), b"TOPSECRET").unwrap();
        std::fs::write(out.join("deeper/secret2"), b"TOPSECRET").unwrap();
        let u = t.path().join("upper");
        std::fs::create_dir_all(u.join("x/sub")).unwrap();
        for i in 0..300 {
            std::fs::write(u.join(format!("x/sub/f{i}")), b"inner").unwrap();
        }
        std::fs::create_dir_all(u.join("x/sub/nested")).unwrap();
        std::os::unix::fs::symlink(&out, u.join("x/lnk")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (x, s2) = (u.join("x"), stop.clone());
        let swapper = std::thread::spawn(move || {
            let a = CString::new(x.join("sub").as_os_str().as_bytes()).unwrap();
            let b = CString::new(x.join("lnk").as_os_str().as_bytes()).unwrap();
            let mut n = 0u64;
            while !s2.load(Ordering::Relaxed) {
                // SAFETY: valid C strings.
                let r = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(r, 0);
                n += 1;
            }
            n
        });
        let mut last = None;
        for i in 0..30 {
            let dest = t.path().join(format!("cap{i}"));
            let mut c = Capture::new(&u, &dest).unwrap();
            c.precopy(&mut |_| {}).unwrap();
            assert!(!contains_secret(&dest), "escaped the upper dir");
            last = Some((c, dest));
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        assert!(swaps > 100);
        let (mut c, dest) = last.unwrap();
        c.sync_frozen().unwrap();
        assert!(!contains_secret(&dest));
        assert_trees_equal(&u, &dest);
    }

    #[test]
    fn unchanged_tree_syncs_nothing() {
        if !root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let u = t.path().join("upper");
        std::fs::create_dir_all(u.join("a/b")).unwrap();
        for i in 0..50 {
            std::fs::write(u.join(format!("a/f{i}")), vec![b'z'; 10_000]).unwrap();
        }
        std::fs::hard_link(u.join("a/f1"), u.join("a/b/l1")).unwrap();
        std::os::unix::fs::symlink("f1", u.join("a/s")).unwrap();
        mknod(&u.join("wh"), SFlag::S_IFCHR, 0, 0);
        std::thread::sleep(Duration::from_millis(100));
        let dest = t.path().join("cap");
        let mut c = Capture::new(&u, &dest).unwrap();
        let pre = c.precopy(&mut |_| {}).unwrap();
        assert_eq!(pre.bytes_copied, 500_000);
        std::thread::sleep(Duration::from_millis(100));
        let s = c.sync_frozen().unwrap();
        assert_eq!((s.files, s.bytes_copied, s.removed), (0, 0, 0), "{s:?}");
        assert_eq!(s.entries, 55);
        assert_trees_equal(&u, &dest);
        assert_eq!(c.totals(), (53, 510_000));

        // One change: exactly that file (racy now, so ctime rule applies too).
        std::fs::write(u.join("a/f7"), b"changed").unwrap();
        std::fs::remove_file(u.join("a/f8")).unwrap();
        let s = c.sync_frozen().unwrap();
        assert_eq!((s.files, s.bytes_copied, s.removed), (1, 7, 1), "{s:?}");
        assert_trees_equal(&u, &dest);
    }

    /// A page of `path` mapped shared-writable, for writes that bypass write(2).
    struct SharedMap {
        _file: std::fs::File,
        ptr: *mut u8,
        len: usize,
    }

    impl SharedMap {
        fn new(path: &Path, len: usize) -> Self {
            use std::os::fd::AsRawFd;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            // SAFETY: maps `len` bytes of an open file we keep alive.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED);
            SharedMap {
                _file: file,
                ptr: ptr.cast(),
                len,
            }
        }

        fn write(&self, at: usize, b: u8) {
            assert!(at < self.len);
            // SAFETY: in bounds of the live mapping.
            unsafe { self.ptr.add(at).write_volatile(b) };
        }
    }

    impl Drop for SharedMap {
        fn drop(&mut self) {
            // SAFETY: unmaps what `new` mapped.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }

    #[test]
    fn forced_recopy_catches_writes_through_shared_mappings() {
        if !root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let u = t.path().join("upper");
        std::fs::create_dir_all(&u).unwrap();
        let (plain, forced) = (u.join("plain"), u.join("forced"));
        std::fs::write(&plain, vec![b'a'; 4096]).unwrap();
        std::fs::write(&forced, vec![b'a'; 4096]).unwrap();
        let maps = [SharedMap::new(&plain, 4096), SharedMap::new(&forced, 4096)];
        // The first write faults and updates ctime; the page stays dirty.
        for m in &maps {
            m.write(0, b'1');
        }
        std::thread::sleep(Duration::from_millis(120));
        let dest = t.path().join("cap");
        let mut c = Capture::new(&u, &dest).unwrap();
        c.precopy(&mut |_| {}).unwrap();
        let ctime = |p: &Path| std::fs::metadata(p).unwrap().ctime_nsec();
        let before = ctime(&plain);
        // Writes to an already-dirty page: no fault, no time update.
        for m in &maps {
            m.write(1, b'2');
        }
        std::thread::sleep(Duration::from_millis(120));
        c.force_recopy([b"forced".to_vec()]);
        c.sync_frozen().unwrap();
        assert_eq!(
            std::fs::read(dest.join("forced")).unwrap(),
            std::fs::read(&forced).unwrap()
        );
        if ctime(&plain) == before {
            // Without the hint the change is invisible to a stat comparison:
            // this is why the committer looks at the container's mappings.
            assert_ne!(
                std::fs::read(dest.join("plain")).unwrap(),
                std::fs::read(&plain).unwrap()
            );
        }
        // The hint is used once.
        c.sync_frozen().unwrap();
    }

    #[test]
    fn hardlink_and_type_changes() {
        if !root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let u = t.path().join("upper");
        std::fs::create_dir_all(u.join("dir/sub")).unwrap();
        std::fs::write(u.join("a"), b"A").unwrap();
        std::fs::hard_link(u.join("a"), u.join("b")).unwrap();
        std::fs::write(u.join("c"), b"C").unwrap();
        std::fs::write(u.join("dir/sub/f"), b"F").unwrap();
        std::fs::write(u.join("tofile"), b"").unwrap();
        std::fs::write(u.join("todir"), b"x").unwrap();
        mknod(&u.join("wh"), SFlag::S_IFCHR, 0, 0);
        std::fs::create_dir(u.join("dir2")).unwrap();
        let dest = t.path().join("cap");
        let mut c = Capture::new(&u, &dest).unwrap();
        c.precopy(&mut |_| {}).unwrap();

        std::fs::remove_file(u.join("b")).unwrap();
        std::fs::write(u.join("b"), b"new b").unwrap();
        std::fs::hard_link(u.join("a"), u.join("dir/a2")).unwrap();
        std::fs::hard_link(u.join("c"), u.join("dir/sub/c2")).unwrap();
        std::fs::remove_dir_all(u.join("dir/sub")).unwrap();
        std::fs::write(u.join("dir/sub"), b"now a file").unwrap();
        std::fs::remove_file(u.join("todir")).unwrap();
        std::fs::create_dir(u.join("todir")).unwrap();
        std::fs::write(u.join("todir/in"), b"in").unwrap();
        std::fs::remove_file(u.join("wh")).unwrap();
        std::fs::write(u.join("wh"), b"no longer a whiteout").unwrap();
        std::fs::remove_dir(u.join("dir2")).unwrap();
        std::os::unix::fs::symlink("a", u.join("dir2")).unwrap();
        setx(&u.join("dir"), c"trusted.overlay.opaque", b"y");
        std::fs::write(u.join("tmp"), b"Z").unwrap();
        std::fs::rename(u.join("tmp"), u.join("c")).unwrap();

        c.sync_frozen().unwrap();
        assert_trees_equal(&u, &dest);
        let a = std::fs::metadata(dest.join("a")).unwrap();
        assert_eq!(a.nlink(), 2);
    }

    /// `cargo test -- --ignored sync_cost --nocapture`: cost of an unchanged entry.
    #[test]
    #[ignore]
    fn sync_cost_per_unchanged_entry() {
        let t = tempfile::tempdir().unwrap();
        let u = t.path().join("upper");
        for i in 0..200 {
            let d = u.join(format!("d{i}"));
            std::fs::create_dir_all(&d).unwrap();
            for j in 0..100 {
                std::fs::write(d.join(format!("file-{j}")), b"x").unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut c = Capture::new(&u, &t.path().join("cap")).unwrap();
        let pre = c.precopy(&mut |_| {}).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let s = c.sync_frozen().unwrap();
        assert_eq!(s.files, 0);
        eprintln!(
            "precopy {:?}; sync of {} entries {:?} = {:.2} us/entry",
            pre.duration,
            s.entries,
            s.duration,
            s.duration.as_secs_f64() * 1e6 / s.entries as f64
        );
    }
}
