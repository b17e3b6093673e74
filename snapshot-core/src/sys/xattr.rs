//! Extended attributes of a file reached by an open fd or by a path whose
//! last component is never followed (the `l*xattr` calls).
//!
//! Invariants: a list or a value is always returned whole — the size is
//! queried, then fetched, and if it grew in between (`ERANGE`) the size is
//! queried again; a filesystem without xattr support (`EOPNOTSUPP`) lists
//! none. Every other errno is returned to the caller, which decides what it
//! means (e.g. `ENODATA`: the attribute vanished since it was listed).

use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use super::fs::PROC_FD;

/// Where xattrs are read or written: an open fd, or a path whose last
/// component is not followed.
pub(crate) enum XRef<'a> {
    Fd(BorrowedFd<'a>),
    Path(CString),
}

impl XRef<'_> {
    /// The object at `p` itself (a symlink, not its target). `EINVAL` if
    /// `p` contains a NUL byte. Tests only: the code reaches entries by
    /// (directory fd, name) with [`Self::at`], a path may exceed `PATH_MAX`.
    #[cfg(test)]
    pub(crate) fn path(p: &std::path::Path) -> nix::Result<XRef<'static>> {
        use std::os::unix::ffi::OsStrExt;
        Ok(XRef::Path(
            CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?,
        ))
    }

    /// Entry `name` of the open directory `dir`, as `/proc/self/fd/<dir>/<name>`:
    /// reached without resolving any other component of a path.
    pub(crate) fn at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<XRef<'static>> {
        // Room for the prefix, the name and the NUL: one allocation.
        let mut v = Vec::with_capacity(PROC_FD.len() + 16 + name.to_bytes().len());
        // Writing to a Vec cannot fail.
        let _ = write!(v, "{PROC_FD}/{}/", dir.as_raw_fd());
        v.extend_from_slice(name.to_bytes());
        Ok(XRef::Path(CString::new(v).map_err(|_| Errno::EINVAL)?))
    }
}

/// Runs a size-query-then-fetch call: `call` gets an empty buffer for the
/// query, then one of the queried size; `ERANGE` (it grew) starts over.
fn read_whole(mut call: impl FnMut(&mut [u8]) -> libc::ssize_t) -> nix::Result<Vec<u8>> {
    loop {
        let n = Errno::result(call(&mut []))? as usize;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n];
        match Errno::result(call(&mut buf)) {
            Ok(m) => {
                buf.truncate(m as usize);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The raw `listxattr` buffer of `x` (NUL-terminated names, see [`names`]);
/// empty where xattrs are not supported.
pub(crate) fn list(x: &XRef<'_>) -> nix::Result<Vec<u8>> {
    let r = read_whole(|buf| match x {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes (an empty
        // `buf` only queries the size); the fd is borrowed, so open.
        XRef::Fd(fd) => unsafe {
            libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
        },
        // SAFETY: as above; `p` is a valid C string.
        XRef::Path(p) => unsafe {
            libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        },
    });
    match r {
        Err(Errno::EOPNOTSUPP) => Ok(Vec::new()),
        r => r,
    }
}

/// The value of xattr `name` of `x` (`ENODATA` if it has none).
pub(crate) fn get(x: &XRef<'_>, name: &CStr) -> nix::Result<Vec<u8>> {
    read_whole(|buf| match x {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes (an empty
        // `buf` only queries the size); `name` is a valid C string.
        XRef::Fd(fd) => unsafe {
            libc::fgetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        },
        // SAFETY: as above; `p` is a valid C string.
        XRef::Path(p) => unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        },
    })
}

/// Creates or replaces xattr `name` of `x`.
pub(crate) fn set(x: &XRef<'_>, name: &CStr, value: &[u8]) -> nix::Result<()> {
    let r = match x {
        // SAFETY: valid C string; `value` is valid for reads of its length.
        XRef::Fd(fd) => unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        },
        // SAFETY: as above; `p` is a valid C string.
        XRef::Path(p) => unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        },
    };
    Errno::result(r).map(drop)
}

/// Removes xattr `name` of `x` (`ENODATA` if it has none).
pub(crate) fn remove(x: &XRef<'_>, name: &CStr) -> nix::Result<()> {
    let r = match x {
        // SAFETY: valid C string on a borrowed (open) fd.
        XRef::Fd(fd) => unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) },
        // SAFETY: valid C strings.
        XRef::Path(p) => unsafe { libc::lremovexattr(p.as_ptr(), name.as_ptr()) },
    };
    Errno::result(r).map(drop)
}

/// The names in a [`list`] buffer.
pub(crate) fn names(buf: &[u8]) -> impl Iterator<Item = &CStr> {
    buf.split_inclusive(|b| *b == 0)
        .filter_map(|s| CStr::from_bytes_with_nul(s).ok())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_skip_empty_and_unterminated() {
        let v: Vec<_> = names(b"user.a\0\0user.b\0user.c")
            .map(CStr::to_bytes)
            .collect();
        assert_eq!(v, [b"user.a".as_slice(), b"user.b"]);
        assert_eq!(names(b"").count(), 0);
    }

    #[test]
    fn at_names_the_entry_through_proc() {
        let d = std::fs::File::open("/").unwrap();
        let x = XRef::at(std::os::fd::AsFd::as_fd(&d), c"etc").unwrap();
        let XRef::Path(p) = x else { panic!() };
        let want = format!("/proc/self/fd/{}/etc", d.as_raw_fd());
        assert_eq!(p.to_bytes(), want.as_bytes());
    }

    #[test]
    fn set_get_list_remove_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, b"").unwrap();
        let x = XRef::path(&f).unwrap();
        set(&x, c"user.k", &[7u8; 300]).unwrap();
        assert_eq!(get(&x, c"user.k").unwrap(), [7u8; 300]);
        let l = list(&x).unwrap();
        assert!(names(&l).any(|n| n == c"user.k"));
        remove(&x, c"user.k").unwrap();
        assert_eq!(get(&x, c"user.k"), Err(Errno::ENODATA));
        assert_eq!(remove(&x, c"user.k"), Err(Errno::ENODATA));
        assert!(XRef::path(std::path::Path::new("a\0b")).is_err());
    }
}
