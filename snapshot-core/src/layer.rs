//! Builds an OCI image layer blob from a capture directory.
//!
//! A capture directory is an exact copy of an overlayfs upper dir, with
//! overlay's on-disk conventions: whiteouts are character devices 0/0 and
//! opaque directories carry `trusted.overlay.opaque` (or
//! `user.overlay.opaque`) = `y`. They are converted to the OCI conventions
//! (`.wh.<name>` files and `.wh..wh..opq` markers) while the tar stream is
//! written, compressed and hashed in one pass.

mod tar;

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::types::Compression;
use tar::{Entry, Kind};

/// What was built.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    /// The blob file.
    pub path: PathBuf,
    /// Its OCI media type (see [`Compression::media_type`]).
    pub media_type: String,
    /// `sha256:<hex>` of the blob as stored (compressed).
    pub digest: String,
    /// Size of the blob as stored, in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar (the OCI diff id).
    pub diff_id: String,
    /// Size of the uncompressed tar, in bytes.
    pub uncompressed_size: u64,
    /// Number of tar entries (PAX extended headers not counted, whiteout and
    /// opaque markers counted).
    pub entries: u64,
}

/// Overlay xattrs that mark a directory opaque (value `y`).
const OPAQUE_XATTRS: [&[u8]; 2] = [b"trusted.overlay.opaque", b"user.overlay.opaque"];
/// Overlay xattr namespaces that are never emitted.
const OVERLAY_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];
/// Overlay features whose meaning is lost outside the overlay mount.
const UNSUPPORTED_XATTRS: [&[u8]; 4] = [
    b"trusted.overlay.redirect",
    b"user.overlay.redirect",
    b"trusted.overlay.metacopy",
    b"user.overlay.metacopy",
];
/// The OCI whiteout prefix and opaque marker.
const WH_PREFIX: &[u8] = b".wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";

/// How many content bytes between two progress reports.
const PROGRESS_STEP: u64 = 1 << 20;
/// Read buffer for file content.
const READ_BUF: usize = 256 * 1024;

/// Writes the layer of `capture_dir` compressed to the new file `out`
/// (created with `O_EXCL`, fsync'ed before return), computing diff_id and
/// blob digest in the same single pass. `progress(bytes_of_file_content_read_so_far)`
/// is called periodically, and once at the end.
///
/// Entries are sorted by name bytes within each directory, depth-first, so
/// the same tree always gives the same bytes. On error the partial `out` is
/// removed. Returns [`Error::Unsupported`] if the tree uses overlay redirects
/// or metacopy, or holds a file whose name starts with `.wh.` (it would read
/// as a whiteout).
pub fn build_layer(
    capture_dir: &Path,
    out: &Path,
    compression: Compression,
    progress: &mut dyn FnMut(u64),
) -> Result<LayerBlob> {
    let md = fs::symlink_metadata(capture_dir).at("lstat", capture_dir)?;
    if !md.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "capture dir {} is not a directory",
            capture_dir.display()
        )));
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(out)
        .at("create", out)?;
    tracing::debug!(capture_dir = %capture_dir.display(), out = %out.display(), %compression, "building layer");
    let res = build_into(file, capture_dir, out, compression, progress);
    match &res {
        Ok(blob) => tracing::debug!(
            digest = %blob.digest, diff_id = %blob.diff_id, size = blob.size,
            uncompressed_size = blob.uncompressed_size, entries = blob.entries, "layer built"
        ),
        Err(e) => {
            tracing::debug!(error = %e, "layer build failed, removing partial blob");
            let _ = fs::remove_file(out);
        }
    }
    res
}

fn build_into(
    file: File,
    capture_dir: &Path,
    out: &Path,
    compression: Compression,
    progress: &mut dyn FnMut(u64),
) -> Result<LayerBlob> {
    let blob = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
    let enc = Encoder::new(compression, blob).at("init compressor", out)?;
    let mut w = Walker {
        w: HashWriter::new(enc),
        out,
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

    let entries = w.entries;
    let (tar_hash, uncompressed_size, enc) = w.w.into_parts();
    let blob = enc.finish().at("write", out)?;
    let (blob_hash, size, buf) = blob.into_parts();
    let file = buf
        .into_inner()
        .map_err(|e| Error::io("write", out, e.into_error()))?;
    file.sync_all().at("fsync", out)?;
    drop(file);
    // Make the new directory entry durable too.
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .at("fsync", parent)?;
    }
    Ok(LayerBlob {
        path: out.to_path_buf(),
        media_type: compression.media_type().to_string(),
        digest: format!("sha256:{}", hex::encode(blob_hash.finalize())),
        size,
        diff_id: format!("sha256:{}", hex::encode(tar_hash.finalize())),
        uncompressed_size,
        entries,
    })
}

/// A writer that hashes and counts what goes through it.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn into_parts(self) -> (Sha256, u64, W) {
        (self.hasher, self.count, self.inner)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // Only hash what the inner writer accepted.
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The compressor in the middle of the pipeline.
enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    None(W),
}

impl<W: Write> Encoder<W> {
    fn new(c: Compression, w: W) -> io::Result<Self> {
        Ok(match c {
            // flate2's gzip header has mtime 0 and no name: deterministic.
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(w, 3)?),
            Compression::None => Encoder::None(w),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::None(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::None(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::None(w) => w.flush(),
        }
    }
}

/// The xattrs of one file, split into what matters to the conversion.
#[derive(Default)]
struct Xattrs {
    /// Emitted as `SCHILY.xattr.*`, sorted by name.
    emit: Vec<(Vec<u8>, Vec<u8>)>,
    /// The directory is opaque.
    opaque: bool,
}

/// Reads the xattrs of `path` (not following symlinks).
fn read_xattrs(path: &Path) -> Result<Xattrs> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("path with NUL: {}", path.display())))?;
    let Some(list) = xattr_call(path, "llistxattr", |buf| unsafe {
        // SAFETY: `c` is a valid C string; `buf` is valid for `buf.len()` bytes
        // (null with length 0 only queries the size).
        libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    })?
    else {
        return Ok(Xattrs::default());
    };
    let mut x = Xattrs::default();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if UNSUPPORTED_XATTRS.contains(&name) {
            return Err(Error::Unsupported(format!(
                "{} has overlay xattr {}: redirects and metacopy cannot be converted to an OCI layer",
                path.display(),
                String::from_utf8_lossy(name)
            )));
        }
        let cname =
            CString::new(name).map_err(|_| Error::Internal("xattr name with NUL".into()))?;
        let Some(value) = xattr_call(path, "lgetxattr", |buf| unsafe {
            // SAFETY: as above; `cname` is a valid C string.
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })?
        else {
            // Removed since listed.
            continue;
        };
        if OPAQUE_XATTRS.contains(&name) {
            x.opaque |= value == b"y";
            continue;
        }
        if OVERLAY_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        if name.contains(&b'=') {
            // A PAX key cannot contain '='.
            tracing::warn!(path = %path.display(), name = %String::from_utf8_lossy(name), "skipping xattr whose name contains '='");
            continue;
        }
        x.emit.push((name.to_vec(), value));
    }
    x.emit.sort();
    Ok(x)
}

/// Runs a size-query-then-fetch xattr syscall, growing the buffer on
/// `ERANGE`. `None` when there is nothing (no xattr support, or the
/// attribute vanished).
fn xattr_call(
    path: &Path,
    op: &'static str,
    mut call: impl FnMut(&mut [u8]) -> libc::ssize_t,
) -> Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    loop {
        let n = call(&mut buf);
        if n >= 0 {
            let n = n as usize;
            if buf.is_empty() && n > 0 {
                // That was the size query.
                buf.resize(n, 0);
                continue;
            }
            buf.truncate(n);
            return Ok(Some(buf));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) => {
                // Grew between the size query and the fetch.
                let len = buf.len().max(64) * 2;
                buf.resize(len, 0);
            }
            Some(libc::ENOTSUP) | Some(libc::ENODATA) => return Ok(None),
            _ => return Err(Error::io(op, path, err)),
        }
    }
}

/// The depth-first walk that writes the tar stream.
struct Walker<'a, W: Write> {
    w: W,
    out: &'a Path,
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

        let x = read_xattrs(abs)?;
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
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::process::Command;

    use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
    use nix::sys::time::TimeSpec;
    use serde_json::Value;

    const MTIME: (i64, i64) = (1_700_000_000, 123_456_789);

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn setx(path: &Path, name: &str, value: &[u8]) {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: both strings are NUL-terminated; value is a live slice.
        let r = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "lsetxattr {name}: {}", io::Error::last_os_error());
    }

    fn getx(path: &Path, name: &str) -> Option<Vec<u8>> {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        let mut buf = vec![0u8; 4096];
        // SAFETY: both strings are NUL-terminated; buf is writable for its length.
        let r =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (r >= 0).then(|| {
            buf.truncate(r as usize);
            buf
        })
    }

    fn set_mtime(path: &Path, sec: i64, nsec: i64) {
        let t = TimeSpec::new(sec, nsec);
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn whiteout(path: &Path) {
        mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).unwrap();
    }

    /// A valid v2 `security.capability` value granting CAP_NET_BIND_SERVICE.
    fn cap_value() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&0x0200_0001u32.to_le_bytes());
        v.extend_from_slice(&(1u32 << 10).to_le_bytes());
        v.extend_from_slice(&[0u8; 12]);
        v
    }

    fn long_name() -> String {
        "n".repeat(200)
    }

    fn deep_rel() -> String {
        format!("{}/{}", "d".repeat(60), "f".repeat(60))
    }

    /// Builds a capture dir exercising every conversion.
    fn make_tree(root: &Path) {
        let a = root.join("a.txt");
        fs::write(&a, b"hello").unwrap();
        // chown clears setuid, so it goes first.
        std::os::unix::fs::lchown(&a, Some(1234), Some(5678)).unwrap();
        fs::set_permissions(&a, fs::Permissions::from_mode(0o4755)).unwrap();
        setx(&a, "user.foo", b"bar\0\nbaz");
        setx(&a, "security.capability", &cap_value());
        setx(&a, "trusted.overlay.origin", b"junk");
        fs::hard_link(&a, root.join("b.txt")).unwrap();
        set_mtime(&a, MTIME.0, MTIME.1);

        let big = root.join("bigid");
        fs::write(&big, b"").unwrap();
        std::os::unix::fs::lchown(&big, Some(3_000_000), Some(3_000_001)).unwrap();
        set_mtime(&big, 1_600_000_000, 0);

        fs::write(root.join(std::ffi::OsStr::from_bytes(b"caf\xe9")), b"x").unwrap();
        fs::write(root.join(long_name()), b"long").unwrap();
        fs::create_dir(root.join("d".repeat(60))).unwrap();
        fs::write(root.join(deep_rel()), b"deep").unwrap();

        let content: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
        fs::write(root.join("big"), &content).unwrap();
        fs::write(root.join("zero"), b"").unwrap();

        mknod(
            &root.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .unwrap();
        mknod(
            &root.join("blk"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o600),
            makedev(7, 200),
        )
        .unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
        symlink("a.txt", root.join("link")).unwrap();
        symlink("t".repeat(150), root.join("longlink")).unwrap();

        // Whiteouts, one of them sharing an inode like overlay's shared whiteout.
        whiteout(&root.join("gone"));
        fs::hard_link(root.join("gone"), root.join("gone2")).unwrap();
        set_mtime(&root.join("gone"), 1_500_000_000, 0);

        let opq = root.join("opq");
        fs::create_dir(&opq).unwrap();
        fs::write(opq.join("inner"), b"i").unwrap();
        setx(&opq, "trusted.overlay.opaque", b"y");
        setx(&opq, "trusted.overlay.impure", b"y");
        setx(&opq, "user.keep", b"1");
        let uopq = root.join("uopq");
        fs::create_dir(&uopq).unwrap();
        setx(&uopq, "user.overlay.opaque", b"y");
        let sticky = root.join("tmp");
        fs::create_dir(&sticky).unwrap();
        fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
        // The listener is dropped here; its socket file stays.
    }

    fn decompress(blob: &LayerBlob) -> Vec<u8> {
        let raw = fs::read(&blob.path).unwrap();
        let mut out = Vec::new();
        match blob.media_type.as_str() {
            m if m.ends_with("+gzip") => {
                flate2::read::GzDecoder::new(&raw[..])
                    .read_to_end(&mut out)
                    .unwrap();
            }
            m if m.ends_with("+zstd") => {
                zstd::stream::read::Decoder::new(&raw[..])
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
            _ => out = raw,
        }
        out
    }

    fn sha(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    fn check_digests(blob: &LayerBlob) -> Vec<u8> {
        let raw = fs::read(&blob.path).unwrap();
        assert_eq!(blob.digest, sha(&raw));
        assert_eq!(blob.size, raw.len() as u64);
        let tar = decompress(blob);
        assert_eq!(blob.diff_id, sha(&tar));
        assert_eq!(blob.uncompressed_size, tar.len() as u64);
        assert_eq!(tar.len() % 512, 0);
        assert!(tar[tar.len() - 1024..].iter().all(|&b| b == 0));
        tar
    }

    const PY_DUMP: &str = r#"
import tarfile, sys, json, hashlib
out = []
with tarfile.open(sys.argv[1], 'r:', encoding='utf-8', errors='surrogateescape') as tf:
    for m in tf:
        b = lambda s: s.encode('utf-8', 'surrogateescape').hex()
        d = {'name': b(m.name), 'type': m.type.decode(), 'mode': m.mode, 'uid': m.uid,
             'gid': m.gid, 'size': m.size, 'link': b(m.linkname), 'major': m.devmajor,
             'minor': m.devminor, 'uname': m.uname, 'gname': m.gname,
             'pax': {k: b(v) for k, v in m.pax_headers.items()}}
        if m.isreg():
            d['sha'] = hashlib.sha256(tf.extractfile(m).read()).hexdigest()
        out.append(d)
print(json.dumps(out))
"#;

    /// Lists the archive with Python's tarfile (an independent PAX reader).
    fn py_dump(tar: &Path) -> Vec<Value> {
        let o = Command::new("python3")
            .args(["-c", PY_DUMP])
            .arg(tar)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn find<'a>(entries: &'a [Value], name: &[u8]) -> &'a Value {
        let h = hex::encode(name);
        entries
            .iter()
            .find(|e| e["name"] == h.as_str())
            .unwrap_or_else(|| panic!("no entry {:?}", String::from_utf8_lossy(name)))
    }

    fn pax(e: &Value, key: &str) -> Option<Vec<u8>> {
        e["pax"][key].as_str().map(|h| hex::decode(h).unwrap())
    }

    fn build(root: &Path, out: &Path, c: Compression) -> LayerBlob {
        build_layer(root, out, c, &mut |_| {}).unwrap()
    }

    #[test]
    fn compression_names() {
        for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
            assert_eq!(c.as_str().parse::<Compression>().unwrap(), c);
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
        }
        assert_eq!(Compression::default(), Compression::Gzip);
        assert_eq!(
            Compression::Zstd.media_type(),
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert_eq!(
            Compression::None.media_type(),
            "application/vnd.oci.image.layer.v1.tar"
        );
        let e = "lz4".parse::<Compression>().unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::InvalidArgument);
    }

    #[test]
    fn full_tree_read_back_by_python_and_gnu_tar() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("capture");
        fs::create_dir(&root).unwrap();
        make_tree(&root);
        let out = tmp.path().join("layer.tar.gz");
        let mut reports = Vec::new();
        let blob = build_layer(&root, &out, Compression::Gzip, &mut |n| reports.push(n)).unwrap();
        assert_eq!(blob.media_type, Compression::Gzip.media_type());
        let tar_bytes = check_digests(&blob);
        let tar_path = tmp.path().join("layer.tar");
        fs::write(&tar_path, &tar_bytes).unwrap();

        // Progress: increasing, ends with all content bytes.
        let content_total: u64 = 5 + 1 + 4 + 4 + (3 * 1024 * 1024 + 7) + 1;
        assert!(reports.len() >= 3, "{reports:?}");
        assert!(reports.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*reports.last().unwrap(), content_total);

        let entries = py_dump(&tar_path);
        assert_eq!(entries.len() as u64, blob.entries);
        // Order: sorted by name bytes, directory before children; the
        // opaque marker right after its directory.
        let names: Vec<Vec<u8>> = entries
            .iter()
            .map(|e| hex::decode(e["name"].as_str().unwrap()).unwrap())
            .collect();
        let d60 = "d".repeat(60);
        let expected: Vec<Vec<u8>> = [
            b"a.txt".to_vec(),
            b"b.txt".to_vec(),
            b"big".to_vec(),
            b"bigid".to_vec(),
            b"blk".to_vec(),
            b"caf\xe9".to_vec(),
            d60.clone().into_bytes(),
            deep_rel().into_bytes(),
            b"fifo".to_vec(),
            b".wh.gone".to_vec(),
            b".wh.gone2".to_vec(),
            b"link".to_vec(),
            b"longlink".to_vec(),
            long_name().into_bytes(),
            b"null".to_vec(),
            b"opq".to_vec(),
            b"opq/.wh..wh..opq".to_vec(),
            b"opq/inner".to_vec(),
            b"tmp".to_vec(),
            b"uopq".to_vec(),
            b"uopq/.wh..wh..opq".to_vec(),
            b"zero".to_vec(),
        ]
        .into();
        assert_eq!(names, expected);

        let a = find(&entries, b"a.txt");
        assert_eq!(a["type"], "0");
        assert_eq!(a["mode"], 0o4755);
        assert_eq!(
            (a["uid"].as_u64(), a["gid"].as_u64()),
            (Some(1234), Some(5678))
        );
        assert_eq!(a["uname"], "");
        assert_eq!(a["sha"], hex::encode(Sha256::digest(b"hello")));
        assert_eq!(pax(a, "mtime").unwrap(), b"1700000000.123456789");
        assert_eq!(pax(a, "SCHILY.xattr.user.foo").unwrap(), b"bar\0\nbaz");
        assert_eq!(
            pax(a, "SCHILY.xattr.security.capability").unwrap(),
            cap_value()
        );
        assert!(
            a["pax"]
                .as_object()
                .unwrap()
                .keys()
                .all(|k| !k.contains("overlay"))
        );
        let b = find(&entries, b"b.txt");
        assert_eq!(b["type"], "1");
        assert_eq!(b["link"], hex::encode("a.txt"));
        assert_eq!(b["size"], 0);

        let big = find(&entries, b"bigid");
        assert_eq!(
            (big["uid"].as_u64(), big["gid"].as_u64()),
            (Some(3_000_000), Some(3_000_001))
        );
        assert_eq!(pax(big, "uid").unwrap(), b"3000000");
        assert_eq!(pax(big, "mtime"), None);

        let long = find(&entries, long_name().as_bytes());
        assert_eq!(pax(long, "path").unwrap(), long_name().as_bytes());
        let deep = find(&entries, deep_rel().as_bytes());
        assert_eq!(pax(deep, "path"), None, "fits ustar prefix/name");
        assert_eq!(deep["sha"], hex::encode(Sha256::digest(b"deep")));
        assert_eq!(
            find(&entries, b"caf\xe9")["sha"],
            hex::encode(Sha256::digest(b"x"))
        );

        let null = find(&entries, b"null");
        assert_eq!(
            (
                null["type"].as_str(),
                null["major"].as_u64(),
                null["minor"].as_u64()
            ),
            (Some("3"), Some(1), Some(3))
        );
        let blk = find(&entries, b"blk");
        assert_eq!(
            (
                blk["type"].as_str(),
                blk["major"].as_u64(),
                blk["minor"].as_u64()
            ),
            (Some("4"), Some(7), Some(200))
        );
        assert_eq!(find(&entries, b"fifo")["type"], "6");
        assert_eq!(find(&entries, b"link")["link"], hex::encode("a.txt"));
        let ll = find(&entries, b"longlink");
        assert_eq!(ll["link"], hex::encode("t".repeat(150)));
        assert_eq!(pax(ll, "linkpath").unwrap(), "t".repeat(150).as_bytes());

        let wh = find(&entries, b".wh.gone");
        assert_eq!(
            (
                wh["type"].as_str(),
                wh["mode"].as_u64(),
                wh["size"].as_u64()
            ),
            (Some("0"), Some(0), Some(0))
        );
        assert_eq!(
            find(&entries, b".wh.gone2")["type"],
            "0",
            "whiteout hard links are not tar hard links"
        );
        let opq = find(&entries, b"opq");
        assert_eq!(opq["type"], "5");
        assert_eq!(pax(opq, "SCHILY.xattr.user.keep").unwrap(), b"1");
        assert_eq!(
            opq["pax"].as_object().unwrap().len(),
            1 + usize::from(pax(opq, "mtime").is_some())
        );
        assert_eq!(find(&entries, b"opq/.wh..wh..opq")["size"], 0);
        assert_eq!(find(&entries, b"tmp")["mode"], 0o1777);

        // GNU tar: directories end with '/', no "./" or "/" prefixes.
        let o = Command::new("tar")
            .arg("-tf")
            .arg(&tar_path)
            .output()
            .unwrap();
        assert!(o.status.success());
        let listing = String::from_utf8_lossy(&o.stdout).to_string();
        for l in listing.lines() {
            assert!(!l.starts_with("./") && !l.starts_with('/'), "{l}");
        }
        for d in ["opq/", "uopq/", "tmp/", &format!("{d60}/")] {
            assert!(listing.lines().any(|l| l == d), "{d} missing in\n{listing}");
        }

        // GNU tar extraction restores what we wrote.
        let dest = tmp.path().join("x");
        fs::create_dir(&dest).unwrap();
        let st = Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(&tar_path)
            .arg("-C")
            .arg(&dest)
            .status()
            .unwrap();
        assert!(st.success());
        let a = fs::symlink_metadata(dest.join("a.txt")).unwrap();
        assert_eq!(a.mode() & 0o7777, 0o4755);
        assert_eq!((a.uid(), a.gid()), (1234, 5678));
        assert_eq!((a.mtime(), a.mtime_nsec()), MTIME);
        let b = fs::symlink_metadata(dest.join("b.txt")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(
            getx(&dest.join("a.txt"), "user.foo").unwrap(),
            b"bar\0\nbaz"
        );
        assert_eq!(
            getx(&dest.join("a.txt"), "security.capability").unwrap(),
            cap_value()
        );
        assert_eq!(getx(&dest.join("a.txt"), "trusted.overlay.origin"), None);
        assert_eq!(
            fs::read(dest.join(std::ffi::OsStr::from_bytes(b"caf\xe9"))).unwrap(),
            b"x"
        );
        assert_eq!(fs::read(dest.join(long_name())).unwrap(), b"long");
        assert_eq!(fs::read(dest.join(deep_rel())).unwrap(), b"deep");
        assert_eq!(
            fs::read(dest.join("big")).unwrap(),
            fs::read(root.join("big")).unwrap()
        );
        assert_eq!(
            fs::read_link(dest.join("longlink")).unwrap(),
            Path::new(&"t".repeat(150))
        );
        let wh = fs::symlink_metadata(dest.join(".wh.gone")).unwrap();
        assert!(wh.is_file());
        assert_eq!(wh.mtime(), 1_500_000_000);
        assert!(dest.join("opq/.wh..wh..opq").is_file());
        assert!(!dest.join("sock").exists());
        let null = fs::symlink_metadata(dest.join("null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), makedev(1, 3));
    }

    #[test]
    fn deterministic_and_all_compressions() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("capture");
        fs::create_dir(&root).unwrap();
        make_tree(&root);
        let mut diff_ids = Vec::new();
        for (i, c) in [Compression::Gzip, Compression::Zstd, Compression::None]
            .into_iter()
            .enumerate()
        {
            let b1 = build(&root, &tmp.path().join(format!("{i}-1")), c);
            // Reading the tree again (atimes change) must not change a byte.
            let b2 = build(&root, &tmp.path().join(format!("{i}-2")), c);
            assert_eq!(b1.digest, b2.digest);
            assert_eq!(b1.diff_id, b2.diff_id);
            check_digests(&b1);
            assert_eq!(b1.media_type, c.media_type());
            diff_ids.push(b1.diff_id.clone());
            if c == Compression::None {
                assert_eq!(b1.digest, b1.diff_id);
                assert_eq!(b1.size, b1.uncompressed_size);
            } else {
                assert!(b1.size < b1.uncompressed_size);
            }
        }
        // Same tar whatever the compression.
        assert!(diff_ids.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn empty_dir_gives_empty_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("c");
        fs::create_dir(&root).unwrap();
        let blob = build(&root, &tmp.path().join("l"), Compression::None);
        assert_eq!(blob.entries, 0);
        assert_eq!(fs::read(&blob.path).unwrap(), vec![0u8; 1024]);
    }

    #[test]
    fn out_is_created_exclusively() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("c");
        fs::create_dir(&root).unwrap();
        let out = tmp.path().join("l");
        fs::write(&out, b"keep").unwrap();
        let e = build_layer(&root, &out, Compression::Gzip, &mut |_| {}).unwrap_err();
        assert!(
            matches!(&e, Error::Io { source, path, .. } if source.kind() == io::ErrorKind::AlreadyExists && path == &out),
            "{e:?}"
        );
        assert_eq!(fs::read(&out).unwrap(), b"keep");
        // Not a directory.
        let e =
            build_layer(&out, &tmp.path().join("m"), Compression::Gzip, &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::InvalidArgument);
    }

    fn expect_unsupported(root: &Path, out: &Path) {
        let e = build_layer(root, out, Compression::Gzip, &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Unsupported, "{e}");
        assert!(!out.exists(), "partial blob left behind");
    }

    #[test]
    fn redirect_metacopy_and_wh_names_are_unsupported() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let r1 = tmp.path().join("r1");
        fs::create_dir_all(r1.join("a/moved")).unwrap();
        fs::write(r1.join("a/file"), b"x").unwrap();
        setx(&r1.join("a/moved"), "trusted.overlay.redirect", b"/old");
        expect_unsupported(&r1, &tmp.path().join("o1"));

        let r2 = tmp.path().join("r2");
        fs::create_dir(&r2).unwrap();
        fs::write(r2.join("f"), b"").unwrap();
        setx(&r2.join("f"), "trusted.overlay.metacopy", b"");
        expect_unsupported(&r2, &tmp.path().join("o2"));

        let r3 = tmp.path().join("r3");
        fs::create_dir(&r3).unwrap();
        fs::write(r3.join(".wh.x"), b"").unwrap();
        expect_unsupported(&r3, &tmp.path().join("o3"));
    }

    #[test]
    fn size_change_while_reading_is_an_error() {
        let mut progress = |_| {};
        let mut w = Walker {
            w: Vec::new(),
            out: Path::new("/out"),
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
