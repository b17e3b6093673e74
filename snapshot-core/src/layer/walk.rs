//! The depth-first walk of a capture directory that writes the tar stream,
//! converting overlay conventions to OCI ones on the way: a whiteout (char
//! device 0/0) becomes an empty `.wh.<name>` file, an opaque directory gets a
//! `.wh..wh..opq` marker right after it, a second name of a multiply-linked
//! inode becomes a tar hard link to the first. For a container in a user
//! namespace, owners and the IDs in xattrs are those the container sees
//! ([`super::owners`]).
//!
//! Invariants: entries are sorted by name bytes within each directory,
//! directories before their children, so the same tree always gives the same
//! bytes; a regular file is opened (and checked to be the inode stat'ed)
//! before its header is written, and exactly the size in its header is
//! written for it (the holes of a sparse file as zeros, never read: see
//! [`super::sparse`]); a name starting with `.wh.` is refused, a whiteout's
//! too. The capture directory is private to us, but its paths may be far
//! longer than `PATH_MAX`: the walk is iterative, every entry is reached by
//! name relative to its open directory, the open directories are kept in a
//! [`DirStack`] (bounded fds at any depth), and a tree deeper than
//! [`MAX_TREE_DEPTH`] is refused with its path. Tar names are whole paths
//! (PAX `path` records where ustar fields are too short).

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};

use super::owners::map_xattr;
use super::sparse;
use super::tar::{self, Entry, Kind};
use super::xattrs::{XattrPolicy, Xattrs, read_xattrs};
use crate::error::{Error, IoContext, Result};
use crate::procfs::idmap::UserNamespace;
use crate::sys::fs::{DirStack, MAX_TREE_DEPTH, inode_key, open_dir, open_subdir, read_names};
use crate::sys::xattr::XRef;

/// The OCI whiteout prefix and opaque marker.
const WH_PREFIX: &[u8] = b".wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";

/// How many content bytes between two progress reports.
const PROGRESS_STEP: u64 = 1 << 20;
/// Read buffer for file content.
const READ_BUF: usize = 256 * 1024;
/// Holes of one file from which a warning is logged (they expand to zeros
/// in the tar, and take time and space downstream).
const SPARSE_WARN: u64 = 1 << 30;

/// Writes the whole archive of `capture_dir` (ending with the two zero
/// blocks) to `w`, and reports the content bytes read once more at the end.
/// Returns `w` and the number of entries written. Write errors name `out`.
/// Entries carry the xattrs `xattrs` lets through, and the IDs of
/// `owners` when the container is in a user namespace. A file whose holes
/// exceed `max_sparse` bytes fails the build ([`Error::Unsupported`]).
pub(super) fn write_archive<W: Write>(
    w: W,
    capture_dir: &Path,
    out: &Path,
    xattrs: &XattrPolicy,
    owners: Option<&UserNamespace>,
    max_sparse: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<(W, u64)> {
    let top = open_dir(capture_dir).at("open", capture_dir)?;
    let key = inode_key(&fstat(&top).at("stat", capture_dir)?);
    let mut w = Walker {
        w,
        base: capture_dir,
        out,
        xattrs,
        owners,
        links: HashMap::new(),
        entries: 0,
        read: 0,
        reported: 0,
        progress,
        buf: vec![0u8; READ_BUF],
        max_sparse,
    };
    w.walk(top, key)?;
    // End of archive: two zero blocks.
    w.w.write_all(&[0u8; 2 * tar::BLOCK]).at("write", out)?;
    (w.progress)(w.read);
    Ok((w.w, w.entries))
}

/// The capture entry at tar path `rel` (a directory's ends with '/'), for
/// messages.
fn abs(base: &Path, rel: &[u8]) -> PathBuf {
    let rel = rel.strip_suffix(b"/").unwrap_or(rel);
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(OsStr::from_bytes(rel))
    }
}

/// The names of the open directory `dir` (at tar path `rel`), sorted by
/// their bytes.
fn sorted_names(dir: BorrowedFd<'_>, base: &Path, rel: &[u8]) -> Result<Vec<CString>> {
    let mut names = read_names(dir).map_err(|e| Error::errno("readdir", abs(base, rel), e))?;
    names.sort_by(|a, b| a.to_bytes().cmp(b.to_bytes()));
    Ok(names)
}

/// One directory of the walk and the names in it still to write.
struct Level {
    names: Vec<CString>,
    idx: usize,
    /// Length of its tar path (ending with '/'; 0 for the top).
    rel_len: usize,
}

/// The depth-first walk that writes the tar stream.
struct Walker<'a, W: Write> {
    w: W,
    /// The capture directory (messages only).
    base: &'a Path,
    out: &'a Path,
    xattrs: &'a XattrPolicy,
    /// The container's user namespace, when it has one: IDs are translated.
    owners: Option<&'a UserNamespace>,
    /// First path emitted for each multiply-linked inode.
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    read: u64,
    reported: u64,
    progress: &'a mut dyn FnMut(u64),
    buf: Vec<u8>,
    /// Largest hole total of one file (`max_sparse_expansion`).
    max_sparse: u64,
}

impl<W: Write> Walker<'_, W> {
    /// The xattrs the layer carries of `x` (the capture entry at `path`),
    /// with their IDs as the container sees them.
    fn xattrs_of(&self, x: &XRef<'_>, path: &Path) -> Result<Xattrs> {
        let mut found = read_xattrs(x, path, self.xattrs)?;
        if let Some(ns) = self.owners {
            let mut mapped = Vec::with_capacity(found.emit.len());
            for (name, value) in found.emit {
                if let Some(value) = map_xattr(ns, &name, value, path)? {
                    mapped.push((name, value));
                }
            }
            found.emit = mapped;
        }
        Ok(found)
    }

    /// The hole bytes of the open file `f` (stat `st`, `size` bytes, at
    /// `path`); more than `max_sparse` is an error, more than
    /// [`SPARSE_WARN`] a warning.
    fn holes(&self, f: &OwnedFd, st: &FileStat, size: u64, path: &Path) -> Result<u64> {
        let blocks = u64::try_from(st.st_blocks).unwrap_or(0);
        if !sparse::may_have_holes(size, blocks) {
            return Ok(0);
        }
        let holes = sparse::hole_bytes(f, size).at("seek", path)?;
        if holes > self.max_sparse {
            return Err(Error::Unsupported(format!(
                "{}: sparse file of {size} bytes whose holes ({holes} bytes) would be \
                 written out as zeros, more than max_sparse_expansion ({} bytes)",
                path.display(),
                self.max_sparse
            )));
        }
        if holes >= SPARSE_WARN {
            tracing::warn!(
                path = %path.display(), size, holes,
                "sparse file: its holes are written out as zeros in the layer"
            );
        }
        Ok(holes)
    }

    fn emit(&mut self, e: &Entry) -> Result<()> {
        self.w
            .write_all(&tar::encode_header(e))
            .at("write", self.out)?;
        self.entries += 1;
        Ok(())
    }

    /// Writes every entry below the open directory `top` (inode `key`),
    /// without recursion.
    fn walk(&mut self, top: OwnedFd, key: (u64, u64)) -> Result<()> {
        let names = sorted_names(top.as_fd(), self.base, b"")?;
        let mut stack = DirStack::new(
            top,
            key,
            Level {
                names,
                idx: 0,
                rel_len: 0,
            },
        );
        let mut rel = Vec::new();
        while let Some(lvl) = stack.last_mut() {
            let (dir, l) = lvl.parts();
            if l.idx >= l.names.len() {
                stack.pop();
                if let Err(e) = stack.ensure_open() {
                    let at = stack.last_mut().map_or(0, |l| l.data.rel_len);
                    return Err(Error::errno("open", abs(self.base, &rel[..at]), e));
                }
                continue;
            }
            let Some(dir) = dir else {
                return Err(Error::Internal("directory of the walk not open".into()));
            };
            let name = std::mem::take(&mut l.names[l.idx]);
            l.idx += 1;
            rel.truncate(l.rel_len);
            let Some((sub, key)) = self.entry(dir, &name, &mut rel)? else {
                continue;
            };
            // The new directory's level is the stack's length.
            if stack.len() > MAX_TREE_DEPTH {
                return Err(Error::Unsupported(format!(
                    "{}: a directory more than {MAX_TREE_DEPTH} levels deep",
                    abs(self.base, &rel).display()
                )));
            }
            let names = sorted_names(sub.as_fd(), self.base, &rel)?;
            let level = Level {
                names,
                idx: 0,
                rel_len: rel.len(),
            };
            stack.push(sub, name, key, level);
        }
        Ok(())
    }

    /// Writes entry `name` of the open directory `dir`, whose children have
    /// tar paths `rel` + name (`rel` is empty or ends with '/'). For a
    /// directory, returns it open with its inode key, `rel` then being its
    /// tar path.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        rel: &mut Vec<u8>,
    ) -> Result<Option<(OwnedFd, (u64, u64))>> {
        let base = self.base;
        let name_b = name.to_bytes();
        let start = rel.len();
        rel.extend_from_slice(name_b);
        let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| Error::errno("lstat", abs(base, rel), e))?;
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt == libc::S_IFSOCK {
            tracing::debug!(path = %abs(base, rel).display(), "skipping socket");
            return Ok(None);
        }
        // Before the whiteout conversion: a whiteout of a `.wh.` name would
        // become another marker (`.wh..opq` the opaque one).
        if name_b.starts_with(WH_PREFIX) {
            return Err(Error::Unsupported(format!(
                "{}: a file name starting with .wh. cannot be stored in an OCI layer",
                abs(base, rel).display()
            )));
        }
        let mtime_nsec = u32::try_from(st.st_mtime_nsec).unwrap_or(0);
        if fmt == libc::S_IFCHR && st.st_rdev == 0 {
            // Overlay whiteout. Whiteouts are often hard links to one shared
            // inode, so this comes before the hard link check.
            rel.truncate(start);
            rel.extend_from_slice(WH_PREFIX);
            rel.extend_from_slice(name_b);
            let mut e = Entry::new(rel.clone(), Kind::Regular);
            e.mtime = st.st_mtime;
            e.mtime_nsec = mtime_nsec;
            self.emit(&e)?;
            return Ok(None);
        }
        let mut e = Entry::new(Vec::new(), Kind::Regular);
        e.mode = st.st_mode & 0o7777;
        let (uid, gid) = match self.owners {
            Some(ns) => (ns.uid(st.st_uid), ns.gid(st.st_gid)),
            None => (st.st_uid, st.st_gid),
        };
        e.uid = u64::from(uid);
        e.gid = u64::from(gid);
        e.mtime = st.st_mtime;
        e.mtime_nsec = mtime_nsec;

        let key = inode_key(&st);
        if fmt != libc::S_IFDIR && st.st_nlink > 1 {
            if let Some(first) = self.links.get(&key) {
                e.path = rel.clone();
                e.kind = Kind::HardLink;
                e.link = first.clone();
                self.emit(&e)?;
                return Ok(None);
            }
            self.links.insert(key, rel.clone());
        }

        match fmt {
            libc::S_IFDIR => {
                let sub = open_subdir(dir, name, key)
                    .map_err(|e| Error::errno("open", abs(base, rel), e))?;
                let x = self.xattrs_of(&XRef::Fd(sub.as_fd()), &abs(base, rel))?;
                e.xattrs = x.emit;
                rel.push(b'/');
                e.path = rel.clone();
                e.kind = Kind::Dir;
                self.emit(&e)?;
                if x.opaque {
                    let mut m = Entry::new([&rel[..], WH_OPAQUE].concat(), Kind::Regular);
                    m.mtime = e.mtime;
                    m.mtime_nsec = e.mtime_nsec;
                    self.emit(&m)?;
                }
                return Ok(Some((sub, key)));
            }
            libc::S_IFREG => {
                let path = abs(base, rel);
                e.size = st.st_size as u64;
                // Open before writing the header so that an unreadable file
                // fails the build before anything about it is written.
                let f = openat(
                    dir,
                    name,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .at("open", &path)?;
                let fst = fstat(&f).at("fstat", &path)?;
                if inode_key(&fst) != key {
                    return Err(Error::io(
                        "open",
                        &path,
                        io::Error::other("file replaced while being archived"),
                    ));
                }
                let holes = self.holes(&f, &fst, e.size, &path)?;
                e.xattrs = self.xattrs_of(&XRef::Fd(f.as_fd()), &path)?.emit;
                e.path = rel.clone();
                self.emit(&e)?;
                if holes > 0 {
                    self.copy_sparse(&mut File::from(f), e.size, &path)?;
                } else {
                    self.copy_content(&mut File::from(f), e.size, &path)?;
                }
                return Ok(None);
            }
            libc::S_IFLNK => {
                e.kind = Kind::Symlink;
                e.link = readlinkat(dir, name)
                    .map_err(|e| Error::errno("readlink", abs(base, rel), e))?
                    .into_vec();
            }
            libc::S_IFCHR | libc::S_IFBLK => {
                e.kind = if fmt == libc::S_IFCHR {
                    Kind::Char
                } else {
                    Kind::Block
                };
                e.dev_major = u64::from(libc::major(st.st_rdev));
                e.dev_minor = u64::from(libc::minor(st.st_rdev));
            }
            libc::S_IFIFO => e.kind = Kind::Fifo,
            _ => {
                tracing::debug!(path = %abs(base, rel).display(), "skipping unknown file type");
                return Ok(None);
            }
        }
        let x = XRef::at(dir, name).map_err(|e| Error::errno("llistxattr", abs(base, rel), e))?;
        e.xattrs = self.xattrs_of(&x, &abs(base, rel))?.emit;
        e.path = rel.clone();
        self.emit(&e)?;
        Ok(None)
    }

    /// Streams exactly `size` bytes of `src` into the archive, then pads.
    /// A size change while reading is an error: a header already promised
    /// `size` bytes.
    fn copy_content(&mut self, src: &mut impl Read, size: u64, path: &Path) -> Result<()> {
        self.copy_bytes(src, size, size, path)?;
        check_end(src, size, path)?;
        self.pad(size)
    }

    /// Streams a sparse file of `size` bytes: its data ranges read from
    /// `src`, its holes written as zeros without reading them.
    fn copy_sparse(&mut self, src: &mut File, size: u64, path: &Path) -> Result<()> {
        let mut pos = 0;
        loop {
            let (start, end) = sparse::next_data(&*src, pos, size)
                .at("seek", path)?
                .unwrap_or((size, size));
            self.write_zeros(start - pos)?;
            if start >= size {
                break;
            }
            src.seek(SeekFrom::Start(start)).at("seek", path)?;
            self.copy_bytes(
                &mut Read::by_ref(src).take(end - start),
                end - start,
                size,
                path,
            )?;
            pos = end;
        }
        src.seek(SeekFrom::Start(size)).at("seek", path)?;
        check_end(src, size, path)?;
        self.pad(size)
    }

    /// Writes `n` zero bytes (a hole), counted as content read.
    fn write_zeros(&mut self, mut n: u64) -> Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            self.w.write_all(&ZEROS[..k]).at("write", self.out)?;
            n -= k as u64;
            self.count_read(k);
        }
        Ok(())
    }

    fn count_read(&mut self, n: usize) {
        self.read += n as u64;
        if self.read - self.reported >= PROGRESS_STEP {
            self.reported = self.read;
            (self.progress)(self.read);
        }
    }

    /// Copies exactly `n` bytes of `src` (part of a file of `size` bytes)
    /// into the archive; fewer is an error.
    fn copy_bytes(&mut self, src: &mut impl Read, n: u64, size: u64, path: &Path) -> Result<()> {
        let mut left = n;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = match src.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(Error::io(
                        "read",
                        path,
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "file shrank while being archived ({left} more bytes expected of {size})"
                            ),
                        ),
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read", path, e)),
            };
            self.w.write_all(&self.buf[..n]).at("write", self.out)?;
            left -= n as u64;
            self.count_read(n);
        }
        Ok(())
    }

    /// Pads a file's content of `size` bytes to a whole block.
    fn pad(&mut self, size: u64) -> Result<()> {
        let pad = tar::padding(size);
        self.w
            .write_all(&[0u8; tar::BLOCK][..pad])
            .at("write", self.out)
    }
}

/// Checks that `src`, read up to `size`, has nothing more.
fn check_end(src: &mut impl Read, size: u64, path: &Path) -> Result<()> {
    let mut probe = [0u8; 1];
    loop {
        match src.read(&mut probe) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                return Err(Error::io(
                    "read",
                    path,
                    io::Error::other(format!(
                        "file grew while being archived (beyond {size} bytes)"
                    )),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_change_while_reading_is_an_error() {
        let mut progress = |_| {};
        let mut w = Walker {
            w: Vec::new(),
            base: Path::new("/base"),
            out: Path::new("/out"),
            xattrs: &XattrPolicy::default(),
            owners: None,
            links: HashMap::new(),
            entries: 0,
            read: 0,
            reported: 0,
            progress: &mut progress,
            buf: vec![0u8; 4],
            max_sparse: 0,
        };
        let src = Path::new("/src");
        let e = w.copy_content(&mut &b"short"[..], 10, src).unwrap_err();
        assert!(matches!(&e, Error::Io { path, .. } if path == src), "{e}");
        let e = w
            .copy_content(&mut &b"longer than ten"[..], 10, src)
            .unwrap_err();
        assert!(matches!(&e, Error::Io { path, .. } if path == src), "{e}");
        w.w.clear();
        w.copy_content(&mut &b"exactly 10"[..], 10, src).unwrap();
        assert_eq!(w.w.len(), 512);
        assert_eq!(&w.w[..10], b"exactly 10");
    }
}
