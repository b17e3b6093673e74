//! The depth-first walk of a capture directory that writes the tar stream,
//! converting overlay conventions to OCI ones on the way: a whiteout (char
//! device 0/0) becomes an empty `.wh.<name>` file, an opaque directory gets a
//! `.wh..wh..opq` marker right after it, a second name of a multiply-linked
//! inode becomes a tar hard link to the first.
//!
//! Invariants: entries are sorted by name bytes within each directory,
//! directories before their children, so the same tree always gives the same
//! bytes; a regular file is opened (and checked to be the inode stat'ed)
//! before its header is written, and exactly the size in its header is
//! written for it; a real name starting with `.wh.` is refused. The capture
//! directory is private to us, so plain paths are used.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::tar::{self, Entry, Kind};
use super::xattrs::{XattrPolicy, read_xattrs};
use crate::error::{Error, IoContext, Result};

/// The OCI whiteout prefix and opaque marker.
const WH_PREFIX: &[u8] = b".wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";

/// How many content bytes between two progress reports.
const PROGRESS_STEP: u64 = 1 << 20;
/// Read buffer for file content.
const READ_BUF: usize = 256 * 1024;

/// Writes the whole archive of `capture_dir` (ending with the two zero
/// blocks) to `w`, and reports the content bytes read once more at the end.
/// Returns `w` and the number of entries written. Write errors name `out`.
/// Entries carry the xattrs `xattrs` lets through.
pub(super) fn write_archive<W: Write>(
    w: W,
    capture_dir: &Path,
    out: &Path,
    xattrs: &XattrPolicy,
    progress: &mut dyn FnMut(u64),
) -> Result<(W, u64)> {
    let mut w = Walker {
        w,
        out,
        xattrs,
        links: HashMap::new(),
        entries: 0,
        read: 0,
        reported: 0,
        progress,
        buf: vec![0u8; READ_BUF],
    };
    let mut abs = capture_dir.to_path_buf();
    let mut rel = Vec::new();
    w.walk_dir(&mut abs, &mut rel)?;
    // End of archive: two zero blocks.
    w.w.write_all(&[0u8; 2 * tar::BLOCK]).at("write", out)?;
    (w.progress)(w.read);
    Ok((w.w, w.entries))
}

/// The depth-first walk that writes the tar stream.
struct Walker<'a, W: Write> {
    w: W,
    out: &'a Path,
    xattrs: &'a XattrPolicy,
    /// First path emitted for each multiply-linked inode.
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    read: u64,
    reported: u64,
    progress: &'a mut dyn FnMut(u64),
    buf: Vec<u8>,
}

impl<W: Write> Walker<'_, W> {
    fn emit(&mut self, e: &Entry) -> Result<()> {
        self.w
            .write_all(&tar::encode_header(e))
            .at("write", self.out)?;
        self.entries += 1;
        Ok(())
    }

    /// Walks directory `abs`, whose children have tar paths `rel` + name
    /// (`rel` is empty or ends with '/').
    fn walk_dir(&mut self, abs: &mut PathBuf, rel: &mut Vec<u8>) -> Result<()> {
        let mut names = fs::read_dir(&*abs)
            .at("readdir", &*abs)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<OsString>>>()
            .at("readdir", &*abs)?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let len = rel.len();
            abs.push(&name);
            let res = self.entry(abs, rel, name.as_bytes());
            abs.pop();
            rel.truncate(len);
            res?;
        }
        Ok(())
    }

    fn entry(&mut self, abs: &mut PathBuf, rel: &mut Vec<u8>, name: &[u8]) -> Result<()> {
        let md = fs::symlink_metadata(&*abs).at("lstat", &*abs)?;
        let ft = md.file_type();
        if ft.is_socket() {
            tracing::debug!(path = %abs.display(), "skipping socket");
            return Ok(());
        }
        if ft.is_char_device() && md.rdev() == 0 {
            // Overlay whiteout. Whiteouts are often hard links to one shared
            // inode, so this comes before the hard link check.
            rel.extend_from_slice(WH_PREFIX);
            rel.extend_from_slice(name);
            let mut e = Entry::new(rel.clone(), Kind::Regular);
            e.mtime = md.mtime();
            e.mtime_nsec = nsec(&md);
            return self.emit(&e);
        }
        if name.starts_with(WH_PREFIX) {
            return Err(Error::Unsupported(format!(
                "{}: a file name starting with .wh. cannot be stored in an OCI layer",
                abs.display()
            )));
        }
        rel.extend_from_slice(name);

        let mut e = Entry::new(Vec::new(), Kind::Regular);
        e.mode = md.mode() & 0o7777;
        e.uid = u64::from(md.uid());
        e.gid = u64::from(md.gid());
        e.mtime = md.mtime();
        e.mtime_nsec = nsec(&md);

        if !ft.is_dir() && md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key) {
                e.path = rel.clone();
                e.kind = Kind::HardLink;
                e.link = first.clone();
                return self.emit(&e);
            }
            self.links.insert(key, rel.clone());
        }

        let x = read_xattrs(abs, self.xattrs)?;
        e.xattrs = x.emit;
        if ft.is_dir() {
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
            return self.walk_dir(abs, rel);
        }
        e.path = rel.clone();
        if ft.is_file() {
            e.size = md.len();
            // Open before writing the header so that an unreadable file
            // fails the build before anything about it is written.
            let mut f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&*abs)
                .at("open", &*abs)?;
            let fmd = f.metadata().at("fstat", &*abs)?;
            if (fmd.dev(), fmd.ino()) != (md.dev(), md.ino()) {
                return Err(Error::io(
                    "open",
                    &*abs,
                    io::Error::other("file replaced while being archived"),
                ));
            }
            self.emit(&e)?;
            return self.copy_content(&mut f, e.size, abs);
        }
        if ft.is_symlink() {
            e.kind = Kind::Symlink;
            e.link = fs::read_link(&*abs)
                .at("readlink", &*abs)?
                .into_os_string()
                .into_vec();
        } else if ft.is_char_device() || ft.is_block_device() {
            e.kind = if ft.is_char_device() {
                Kind::Char
            } else {
                Kind::Block
            };
            let rdev = md.rdev();
            e.dev_major = u64::from(libc::major(rdev));
            e.dev_minor = u64::from(libc::minor(rdev));
        } else if ft.is_fifo() {
            e.kind = Kind::Fifo;
        } else {
            tracing::debug!(path = %abs.display(), "skipping unknown file type");
            return Ok(());
        }
        self.emit(&e)
    }

    /// Streams exactly `size` bytes of `src` into the archive, then pads.
    /// A size change while reading is an error: a header already promised
    /// `size` bytes.
    fn copy_content(&mut self, src: &mut impl Read, size: u64, path: &Path) -> Result<()> {
        let mut left = size;
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
                                "file shrank while being archived ({left} of {size} bytes missing)"
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
            self.read += n as u64;
            if self.read - self.reported >= PROGRESS_STEP {
                self.reported = self.read;
                (self.progress)(self.read);
            }
        }
        let mut probe = [0u8; 1];
        loop {
            match src.read(&mut probe) {
                Ok(0) => break,
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
        let pad = tar::padding(size);
        self.w
            .write_all(&[0u8; tar::BLOCK][..pad])
            .at("write", self.out)
    }
}

fn nsec(md: &fs::Metadata) -> u32 {
    u32::try_from(md.mtime_nsec()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_change_while_reading_is_an_error() {
        let mut progress = |_| {};
        let mut w = Walker {
            w: Vec::new(),
            out: Path::new("/out"),
            xattrs: &XattrPolicy::default(),
            links: HashMap::new(),
            entries: 0,
            read: 0,
            reported: 0,
            progress: &mut progress,
            buf: vec![0u8; 4],
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
