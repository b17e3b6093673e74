//! The capture side: removing entries from the capture directory and making
//! an entry's owner, mode, xattrs and times equal to its source's.
//!
//! Invariants: every operation is relative to an open capture directory
//! (its paths may be far longer than `PATH_MAX`); the order is owner, then
//! mode, then xattrs (chown clears setuid bits and `security.capability`),
//! then times; the xattrs of the copy end up exactly those of the source,
//! except an SELinux label the capture filesystem insists on
//! ([`lenient_xattr`]). Source-side failures are classified as races or not
//! ([`super::fail`]); capture-side ones are fatal.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags, fchmod, fchmodat, futimens, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat};

use super::fail::{FResult, SrcExt};
use super::meta::Meta;
use super::paths::Ctx;
use crate::error::{Error, IoContext, Result};
use crate::sys::fs::remove_all_at;
use crate::sys::xattr::{self, XRef};

/// Removes whatever entry `name` of the capture directory `dir` (the copy
/// of `rel`) is, a directory with everything below it. Returns whether
/// something was there.
pub(super) fn remove_dest(ctx: &Ctx, dir: BorrowedFd<'_>, name: &CStr, rel: &[u8]) -> Result<bool> {
    remove_all_at(dir, name).map_err(|e| Error::errno("remove", ctx.dp(rel), e))
}

fn timespec(t: (i64, i64)) -> TimeSpec {
    TimeSpec::new(t.0 as libc::time_t, t.1 as libc::c_long)
}

/// Sets the times of the capture entry `dst` (the copy of `rel`) itself,
/// not a symlink's target.
pub(super) fn set_times(
    ctx: &Ctx,
    rel: &[u8],
    dst: &Dst<'_>,
    atime: (i64, i64),
    mtime: (i64, i64),
) -> Result<()> {
    let (a, m) = (timespec(atime), timespec(mtime));
    match dst {
        Dst::Fd(fd) => futimens(fd, &a, &m),
        Dst::At(dir, name) => utimensat(dir, *name, &a, &m, UtimensatFlags::NoFollowSymlink),
    }
    .map_err(|e| Error::errno("utimensat", ctx.dp(rel), e))
}

/// The capture filesystem may label new files itself (SELinux); that label
/// is not ours to fight over.
fn lenient_xattr(name: &CStr) -> bool {
    name.to_bytes() == b"security.selinux"
}

/// Makes the xattrs of `dst` exactly those of `src`.
fn copy_xattrs(ctx: &Ctx, rel: &[u8], src: &XRef<'_>, dst: &XRef<'_>) -> FResult<()> {
    let names = xattr::list(src).src("listxattr", || ctx.up(rel))?;
    let have = xattr::list(dst).at("listxattr", ctx.dp(rel))?;
    for n in xattr::names(&have) {
        if xattr::names(&names).any(|m| m == n) {
            continue;
        }
        match xattr::remove(dst, n) {
            Ok(()) | Err(Errno::ENODATA) => {}
            Err(_) if lenient_xattr(n) => {}
            Err(e) => return Err(Error::errno("removexattr", ctx.dp(rel), e).into()),
        }
    }
    for n in xattr::names(&names) {
        let v = xattr::get(src, n).src("getxattr", || ctx.up(rel))?;
        match xattr::set(dst, n, &v) {
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
pub(super) enum Dst<'a> {
    /// An open file or directory.
    Fd(BorrowedFd<'a>),
    /// Entry `name` of the open capture directory (never followed).
    At(BorrowedFd<'a>, &'a CStr),
}

/// Gives the capture entry `dst` (the copy of `rel`) the owner, mode and
/// xattrs of the source `src`, and with `times` its atime and mtime.
#[allow(clippy::too_many_arguments)]
pub(super) fn apply_meta(
    ctx: &Ctx,
    rel: &[u8],
    src: &XRef<'_>,
    dst: &Dst<'_>,
    meta: &Meta,
    atime: (i64, i64),
    times: bool,
) -> FResult<()> {
    let perm = Mode::from_bits_truncate(meta.mode & 0o7777);
    let (uid, gid) = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
    let derr = |op| move |e| Error::errno(op, ctx.dp(rel), e);
    match dst {
        Dst::Fd(fd) => {
            fchown(fd, uid, gid).map_err(derr("chown"))?;
            fchmod(fd, perm).map_err(derr("chmod"))?;
            copy_xattrs(ctx, rel, src, &XRef::Fd(*fd))?;
        }
        Dst::At(dir, name) => {
            // lchown: the last component is never followed.
            fchownat(dir, *name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(derr("chown"))?;
            if meta.fmt() != libc::S_IFLNK {
                // The capture dir is ours: the entry is not a symlink.
                fchmodat(dir, *name, perm, FchmodatFlags::FollowSymlink).map_err(derr("chmod"))?;
            }
            let x = XRef::at(*dir, name).map_err(derr("setxattr"))?;
            copy_xattrs(ctx, rel, src, &x)?;
        }
    }
    if times {
        set_times(ctx, rel, dst, atime, meta.mtime)?;
    }
    Ok(())
}
