//! Fd-relative traversal of a directory tree that a possibly hostile party
//! may change at any moment (CVE-2018-15664 class: a directory swapped for a
//! symlink between two system calls).
//!
//! Invariants kept by every helper here:
//! - a path inside the tree is never resolved by the kernel in one go: each
//!   component is opened relative to an open directory fd, with `O_NOFOLLOW`;
//! - a directory opened by name is checked (`fstat`) to be the inode that was
//!   stat'ed before, so a swap in between is reported as `ESTALE`;
//! - a non-directory is first opened `O_PATH` (opening a device or fifo has
//!   no side effect then) and only reopened for reading, through
//!   `/proc/self/fd`, once the caller has checked what it is.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat};
use nix::unistd::dup;

/// Where the kernel shows this process's open fds; `PROC_FD/<n>` reopens fd
/// `n` (and `PROC_FD/<n>/<name>` names entry `name` of directory fd `n`)
/// without resolving any path of the traversed tree.
pub(crate) const PROC_FD: &str = "/proc/self/fd";

/// Open flags for a directory of the tree: never follow a symlink.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Fails if [`PROC_FD`] is unusable (no procfs mounted), so that a caller
/// relying on [`reopen_read`] can refuse early.
pub(crate) fn proc_fd_available() -> std::io::Result<()> {
    std::fs::metadata(PROC_FD).map(drop)
}

/// Opens the directory `path` that is the top of a traversal. Only its last
/// component is protected from being a symlink: the path up to the tree is
/// trusted.
pub(crate) fn open_dir(path: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(path, dir_flags(), Mode::empty())
}

/// The inode key `(st_dev, st_ino)` of a stat record.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn inode_key(st: &FileStat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// Opens subdirectory `name` of `parent` without following symlinks and
/// checks it is the directory inode `expect` (an [`inode_key`]), not
/// something swapped in since it was stat'ed (`ESTALE` then).
pub(crate) fn open_subdir(
    parent: BorrowedFd<'_>,
    name: &CStr,
    expect: (u64, u64),
) -> nix::Result<OwnedFd> {
    let fd = openat(parent, name, dir_flags(), Mode::empty())?;
    let st = fstat(&fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR || inode_key(&st) != expect {
        return Err(Errno::ESTALE);
    }
    Ok(fd)
}

/// Opens `rel` (a directory, `/`-separated, relative) beneath `root`, one
/// component at a time, never following a symlink; `rel` empty gives a new
/// fd of `root` itself. `.`, `..` and empty components are `EINVAL`.
pub(crate) fn open_beneath(root: BorrowedFd<'_>, rel: &[u8]) -> nix::Result<OwnedFd> {
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

/// Names in a directory, without `.` and `..`, in directory order.
pub(crate) fn read_names(fd: BorrowedFd<'_>) -> nix::Result<Vec<CString>> {
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

/// Opens entry `name` of `parent` `O_PATH` without following a symlink:
/// the object itself is not opened (no device or fifo side effects), only
/// referenced, for `fstat` and a later [`reopen_read`].
pub(crate) fn open_path(parent: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    openat(
        parent,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Reopens an [`open_path`] fd for reading through [`PROC_FD`], with
/// `O_NOATIME` when allowed (`EPERM` for a file we do not own unless
/// privileged: then without).
///
/// Always `O_NONBLOCK`: a file under another process's write lease
/// (`fcntl(F_SETLEASE)`) then fails at once with `EWOULDBLOCK` (the lease
/// break is started) instead of blocking until its holder releases it or the
/// kernel's lease-break timeout (`/proc/sys/fs/lease-break-time`, 45 s)
/// expires. Reads of a regular file ignore the flag.
pub(crate) fn reopen_read(path_fd: &OwnedFd) -> nix::Result<OwnedFd> {
    let proc = format!("{PROC_FD}/{}", path_fd.as_raw_fd());
    let ro = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    match nix::fcntl::open(proc.as_str(), ro | OFlag::O_NOATIME, Mode::empty()) {
        Err(Errno::EPERM) => nix::fcntl::open(proc.as_str(), ro, Mode::empty()),
        r => r,
    }
}
