//! `/proc/<pid>/maps`: the files the container's processes map
//! shared-writable.
//!
//! A write through a `MAP_SHARED` mapping to a page that is already dirty
//! changes neither the file's mtime nor its ctime, so the frozen sync's stat
//! comparison cannot see it: such files are re-copied whatever their stat.
//!
//! A line is `start-end perms offset dev inode [padding] path`; the kernel
//! escapes only a newline in the path (as `\012`): a backslash is shown as
//! itself, so no other sequence is decoded. For a file mapped through
//! overlayfs, kernels before 6.8 show the *upper* filesystem's device and
//! inode (and, before 6.6, the upper file's host path); 6.8 and later show the
//! overlay's. So each mapping is reported with its device, inode and path,
//! and the caller matches either device.

use std::collections::HashSet;
use std::path::Path;

use super::unescape_octal;

/// One shared-writable file mapping, as `/proc/<pid>/maps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SharedMapping {
    /// The device shown (the overlay's on 6.8+, the upper fs's before).
    pub(crate) dev: u64,
    /// The inode number shown.
    pub(crate) ino: u64,
    /// The path shown, unescaped, absolute.
    pub(crate) path: Vec<u8>,
}

/// The regular-file mappings that `pids` hold shared and writable (files
/// unlinked since are left out: they are no longer in any directory).
/// Processes that vanished or whose maps cannot be read are skipped.
pub(crate) fn shared_writable_mappings(pids: &HashSet<u32>) -> HashSet<SharedMapping> {
    let mut out = HashSet::new();
    for pid in pids {
        let path = format!("/proc/{pid}/maps");
        if let Ok(text) = std::fs::read(Path::new(&path)) {
            out.extend(parse_maps(&text));
        }
    }
    out
}

/// The shared-writable file mappings of one `/proc/<pid>/maps`.
pub(crate) fn parse_maps(text: &[u8]) -> impl Iterator<Item = SharedMapping> + '_ {
    text.split(|&b| b == b'\n').filter_map(parse_line)
}

fn parse_line(line: &[u8]) -> Option<SharedMapping> {
    // start-end perms offset dev inode [padding] path
    let mut rest = line;
    let mut fields: [&[u8]; 5] = [&[]; 5];
    for f in &mut fields {
        rest = trim_start(rest);
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        *f = &rest[..end];
        rest = &rest[end..];
    }
    let [_, perms, _, dev, ino] = fields;
    if perms.get(1) != Some(&b'w') || perms.get(3) != Some(&b's') {
        return None;
    }
    let dev = parse_dev(dev)?;
    let ino = std::str::from_utf8(ino).ok()?.parse().ok()?;
    let path = trim_start(rest);
    // An unlinked file is no longer in the upper dir.
    if path.ends_with(b" (deleted)") || !path.starts_with(b"/") {
        return None;
    }
    let path = unescape_octal(path, |b| b == b'\n');
    Some(SharedMapping { dev, ino, path })
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

/// `maj:min` in hex, as maps shows it.
fn parse_dev(s: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(s).ok()?;
    let (maj, min) = s.split_once(':')?;
    let maj = u32::from_str_radix(maj, 16).ok()?;
    let min = u32::from_str_radix(min, 16).ok()?;
    Some(libc::makedev(maj, min))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Vec<SharedMapping> {
        let mut v: Vec<_> = parse_maps(text).collect();
        v.sort_by_key(|m| m.ino);
        v
    }

    #[test]
    fn shared_writable_file_mappings_only() {
        let ovl = libc::makedev(0, 0x46);
        let upper = libc::makedev(0xfe, 0);
        let text = b"\
55d0c0000000-55d0c0001000 r--p 00000000 00:46 123  /bin/busybox
7fb91dbc4000-7fb91dbc5000 rw-s 00000000 00:46 10724854                   /data/db file
7fb91dbc6000-7fb91dbc7000 rw-s 00000000 00:46 10724855                   /data/gone (deleted)
7fb91dbc8000-7fb91dbc9000 rw-s 00000000 fe:00 10724856                   /var/lib/containerd/snapshots/7/fs/data/old-kernel
7fb91dbca000-7fb91dbcb000 r--s 00000000 00:46 10724857                   /data/readonly
7fb91dbcc000-7fb91dbcd000 rw-p 00000000 00:46 10724858                   /data/private
7fb91dbce000-7fb91dbcf000 rw-s 00000000 00:46 10724859                   /data/new\\012line
7fb91dbd0000-7fb91dbd1000 rw-s 00000000 00:01 2048                       /dev/zero (deleted)
7fb91dbd2000-7fb91dbd3000 rw-s 00000000 00:05 77                         /SYSV00000000
7ffd5c5a1000-7ffd5c5c2000 rw-p 00000000 00:00 0                          [stack]
";
        let m = |dev, ino, path: &[u8]| SharedMapping {
            dev,
            ino,
            path: path.to_vec(),
        };
        assert_eq!(
            parse(text),
            vec![
                m(libc::makedev(0, 5), 77, b"/SYSV00000000"),
                m(ovl, 10724854, b"/data/db file"),
                m(
                    upper,
                    10724856,
                    b"/var/lib/containerd/snapshots/7/fs/data/old-kernel"
                ),
                m(ovl, 10724859, b"/data/new\nline"),
            ]
        );
    }

    #[test]
    fn only_a_newline_is_an_escape() {
        let text = b"7fb91dbce000-7fb91dbcf000 rw-s 00000000 00:46 1 /a\\134b\\040c\\012d\n";
        assert_eq!(parse(text)[0].path, b"/a\\134b\\040c\nd".to_vec());
    }

    #[test]
    fn own_shared_mapping_is_found() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mapped");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        // SAFETY: maps one page of a file kept open for the test's duration.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let pids = HashSet::from([std::process::id()]);
        let found = shared_writable_mappings(&pids);
        // SAFETY: unmaps the page mapped above.
        unsafe { libc::munmap(ptr, 4096) };
        let meta = std::fs::metadata(&p).unwrap();
        let want = SharedMapping {
            dev: meta.dev(),
            ino: meta.ino(),
            path: p.as_os_str().as_encoded_bytes().to_vec(),
        };
        assert!(found.contains(&want), "{found:?}");
    }
}
