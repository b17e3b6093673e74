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
use crate::sys::fs::{inode_key, open_dir};

/// What a directory handle stands for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// Its absolute path (in our mount namespace).
    Path(Vec<u8>),
    /// Removed: it no longer has a path.
    Gone,
    /// Not below the marked directory (found without its path: one longer
    /// than the kernel shows).
    Outside,
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
    /// The inode key (device, inode) of the live object `h`, `None` if it
    /// no longer exists (no name left, or freed).
    fn inode(&mut self, h: Handle<'_>) -> nix::Result<Option<(u64, u64)>>;
}

/// `FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME`, non-blocking, close-on-exec.
/// `FAN_REPORT_FID | FAN_REPORT_TARGET_FID` too (Linux 5.17): a name
/// arriving for an inode that has others (a hardlink) must lead to those
/// others, and only the target's own handle tells which inode it named. An unlimited queue: the mark
/// covers a whole filesystem, whose other users (a build, a package
/// install) can queue more than the default 16,384 events between two
/// reads; the tracker reads continuously, so the queue stays short.
const INIT_FLAGS: libc::c_uint = libc::FAN_CLASS_NOTIF
    | libc::FAN_REPORT_DFID_NAME
    | libc::FAN_REPORT_FID
    | libc::FAN_REPORT_TARGET_FID
    | libc::FAN_UNLIMITED_QUEUE
    | libc::FAN_CLOEXEC
    | libc::FAN_NONBLOCK;

/// Attempts at resolving a handle the kernel answered `ENOMEM` for.
const RETRIES: usize = 8;

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

impl Kernel {
    /// Opens (`O_PATH`) the object of handle `h`. `ENOMEM` is also what
    /// the kernel answers when the object is renamed or removed while its
    /// path is being reconnected: tried again a few times.
    fn open(&self, h: Handle<'_>) -> nix::Result<OwnedFd> {
        let mut opened = self.open_once(h);
        for _ in 0..RETRIES {
            if !matches!(opened, Err(Errno::ENOMEM)) {
                break;
            }
            std::thread::yield_now();
            opened = self.open_once(h);
        }
        opened
    }

    fn open_once(&self, h: Handle<'_>) -> nix::Result<OwnedFd> {
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
            return Err(Errno::last());
        }
        // SAFETY: a fresh fd owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Whether the directory `fd` is below the marked directory: its
    /// ancestors through `..`, up to the filesystem's root.
    fn below_mount(&self, mut fd: OwnedFd) -> nix::Result<bool> {
        let top = inode_key(&fstat(&self.mount)?);
        let mut key = inode_key(&fstat(&fd)?);
        loop {
            if key == top {
                return Ok(true);
            }
            let up = nix::fcntl::openat(
                &fd,
                c"..",
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )?;
            let up_key = inode_key(&fstat(&up)?);
            if up_key == key {
                return Ok(false);
            }
            (fd, key) = (up, up_key);
        }
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
        let fd = match self.open(h) {
            Ok(fd) => fd,
            Err(Errno::ESTALE | Errno::ENOENT) => return Resolved::Gone,
            Err(e) => return Resolved::Failed(e),
        };
        match fstat(&fd) {
            // Removed but still referenced: no path of its own any more.
            Ok(st) if st.st_nlink == 0 => return Resolved::Gone,
            Ok(_) => {}
            Err(e) => return Resolved::Failed(e),
        }
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        match nix::fcntl::readlink(link.as_str()) {
            Ok(p) => Resolved::Path(p.as_bytes().to_vec()),
            // Deeper than a page of path: at least tell whether it is in
            // the tree (another user of the filesystem, most likely).
            Err(Errno::ENAMETOOLONG) => match self.below_mount(fd) {
                Ok(false) => Resolved::Outside,
                Ok(true) => Resolved::Failed(Errno::ENAMETOOLONG),
                Err(e) => Resolved::Failed(e),
            },
            Err(e) => Resolved::Failed(e),
        }
    }

    fn inode(&mut self, h: Handle<'_>) -> nix::Result<Option<(u64, u64)>> {
        let fd = match self.open(h) {
            Ok(fd) => fd,
            Err(Errno::ESTALE | Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = fstat(&fd)?;
        Ok((st.st_nlink > 0).then(|| inode_key(&st)))
    }

    fn marked(&mut self) -> bool {
        // A filesystem mark shows as an `sdev:` line.
        std::fs::read(self.fdinfo.to_str().unwrap_or_default())
            .map(|b| b.windows(13).any(|w| w == b"fanotify sdev"))
            .unwrap_or(false)
    }
}
