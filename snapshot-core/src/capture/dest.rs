//! The capture side: removing entries from the capture directory and making
//! an entry's owner, mode, xattrs and times equal to its source's.
//!
//! Invariants: the order is owner, then mode, then xattrs (chown clears
//! setuid bits and `security.capability`), then times; the xattrs of the
//! copy end up exactly those of the source, except an SELinux label the
//! capture filesystem insists on ([`lenient_xattr`]). Source-side failures
//! are classified as races or not ([`super::fail`]); capture-side ones are
//! fatal.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags};
use nix::sys::stat::{
    FchmodatFlags, Mode, UtimensatFlags, fchmod, fchmodat, futimens, lstat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, unlinkat};

use super::fail::{FResult, SrcExt};
use super::meta::Meta;
use super::paths::Ctx;
use crate::error::{Error, IoContext, Result};
use crate::sys::xattr::{self, XRef};

/// Removes whatever is at `p` in the capture dir. Returns whether something was there.
pub(super) fn remove_dest(p: &Path) -> Result<bool> {
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

/// Sets the times of `p` itself (not a symlink's target).
pub(super) fn set_path_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) -> Result<()> {
    utimensat(
        AT_FDCWD,
        p,
        &timespec(atime),
        &timespec(mtime),
        UtimensatFlags::NoFollowSymlink,
    )
    .at("utimensat", p)
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
    Fd(BorrowedFd<'a>),
    Path(&'a Path),
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
    match dst {
        Dst::Fd(fd) => {
            fchown(fd, uid, gid).at("chown", ctx.dp(rel))?;
            fchmod(fd, perm).at("chmod", ctx.dp(rel))?;
            copy_xattrs(ctx, rel, src, &XRef::Fd(*fd))?;
            if times {
                futimens(fd, &timespec(atime), &timespec(meta.mtime))
                    .at("futimens", ctx.dp(rel))?;
            }
        }
        Dst::Path(p) => {
            // lchown: the last component is never followed.
            fchownat(AT_FDCWD, *p, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW).at("chown", *p)?;
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
