//! The syscalls behind the tracker ([`Source`]): a fanotify group with a
//! filesystem mark, read without blocking, and directory handles resolved
//! with `open_by_handle_at` against an fd on the upper dir's filesystem.
//! [`Kernel`] is the real one; tests substitute a recording fake.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::stat::fstat;

use super::events::{Handle, WANTED};
use crate::sys::fs::open_dir;

/// What a directory handle stands for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// Its absolute path (in our mount namespace).
    Path(Vec<u8>),
    /// Removed: it no longer has a path.
    Gone,
    /// Could not be resolved.
    Failed(Errno),
}

/// The kernel interface the tracker uses.
pub(crate) trait Source: Send {
    /// Reads queued events into `buf` without blocking: `Ok(0)` when the
    /// queue is empty.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// The directory `h` stands for now.
    fn resolve(&mut self, h: Handle<'_>) -> Resolved;
    /// Whether the filesystem mark is still in place.
    fn marked(&mut self) -> bool;
}

/// `FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME`, non-blocking, close-on-exec.
const INIT_FLAGS: libc::c_uint =
    libc::FAN_CLASS_NOTIF | libc::FAN_REPORT_DFID_NAME | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;

/// A fanotify group marking the whole filesystem of one directory.
pub(crate) struct Kernel {
    group: OwnedFd,
    /// The marked directory, for `open_by_handle_at`.
    mount: OwnedFd,
    /// `/proc/self/fdinfo/<group>`: lists the group's marks.
    fdinfo: CString,
}

impl Kernel {
    /// Starts reporting every change on the filesystem holding `dir`.
    pub(crate) fn start(dir: &Path) -> io::Result<Kernel> {
        let mount = open_dir(dir).map_err(io::Error::from)?;
        // SAFETY: fanotify_init takes two flag words and returns a new fd
        // or -1; no memory is passed.
        let fd = unsafe { libc::fanotify_init(INIT_FLAGS, libc::O_RDONLY as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by fanotify_init and is owned by
        // nothing else.
        let group = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: `group` and the NUL-terminated `path` outlive the call;
        // the kernel only reads the path.
        let rc = unsafe {
            libc::fanotify_mark(
                group.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                WANTED,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let fdinfo = CString::new(format!("/proc/self/fdinfo/{}", group.as_raw_fd()))
            .map_err(io::Error::other)?;
        Ok(Kernel {
            group,
            mount,
            fdinfo,
        })
    }
}

impl Source for Kernel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match nix::unistd::read(self.group.as_fd(), buf) {
            Ok(n) => Ok(n),
            Err(Errno::EAGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    fn resolve(&mut self, h: Handle<'_>) -> Resolved {
        // struct file_handle: handle_bytes u32, handle_type i32, bytes; in
        // u64 words for its alignment.
        let mut raw = vec![0u64; 1 + h.bytes.len().div_ceil(8)];
        {
            // SAFETY: `raw` is a live allocation of at least 8 +
            // bytes.len() bytes; viewing initialized u64s as bytes is sound.
            let b = unsafe {
                std::slice::from_raw_parts_mut(raw.as_mut_ptr().cast::<u8>(), raw.len() * 8)
            };
            b[0..4].copy_from_slice(&(h.bytes.len() as u32).to_ne_bytes());
            b[4..8].copy_from_slice(&h.kind.to_ne_bytes());
            b[8..8 + h.bytes.len()].copy_from_slice(h.bytes);
        }
        // SAFETY: `raw` holds a complete struct file_handle (header and
        // handle_bytes bytes) and outlives the call; the kernel only reads it.
        let fd = unsafe {
            libc::open_by_handle_at(
                self.mount.as_raw_fd(),
                raw.as_mut_ptr().cast::<libc::file_handle>(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return match Errno::last() {
                Errno::ESTALE | Errno::ENOENT => Resolved::Gone,
                e => Resolved::Failed(e),
            };
        }
        // SAFETY: a fresh fd owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        match fstat(&fd) {
            // Removed but still referenced: no path of its own any more.
            Ok(st) if st.st_nlink == 0 => return Resolved::Gone,
            Ok(_) => {}
            Err(e) => return Resolved::Failed(e),
        }
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        match nix::fcntl::readlink(link.as_str()) {
            Ok(p) => Resolved::Path(p.as_bytes().to_vec()),
            Err(e) => Resolved::Failed(e),
        }
    }

    fn marked(&mut self) -> bool {
        // A filesystem mark shows as an `sdev:` line.
        std::fs::read(self.fdinfo.to_str().unwrap_or_default())
            .map(|b| b.windows(13).any(|w| w == b"fanotify sdev"))
            .unwrap_or(false)
    }
}
