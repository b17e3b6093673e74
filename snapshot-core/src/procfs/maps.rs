//! `/proc/<pid>/maps`: the files the container's processes map
//! shared-writable.
//!
//! A write through a `MAP_SHARED` mapping to a page that is already dirty
//! changes neither the file's mtime nor its ctime, so the frozen sync's stat
//! comparison cannot see it. Inside the frozen window the mappings are
//! stable, so the committer lists them and has those files re-copied.
//!
//! A line is `start-end perms offset dev inode [padding] path`; the kernel
//! escapes only a newline in the path (as `\012`): a backslash is shown as
//! itself, so no other sequence is decoded.

use std::collections::HashSet;
use std::path::Path;

use super::unescape_octal;

/// Paths, relative to the container's root (so to its upper dir), of the
/// regular files mapped shared-writable by any of `pids` on the filesystem
/// whose device is `root_dev` (the container's root overlay). Processes that
/// vanished or whose maps cannot be read are skipped.
pub(crate) fn shared_writable_files(pids: &HashSet<u32>, root_dev: u64) -> Vec<Vec<u8>> {
    let mut out: HashSet<Vec<u8>> = HashSet::new();
    for pid in pids {
        let path = format!("/proc/{pid}/maps");
        if let Ok(text) = std::fs::read(Path::new(&path)) {
            out.extend(parse_maps(&text, root_dev));
        }
    }
    out.into_iter().collect()
}

/// The shared-writable file paths of one `/proc/<pid>/maps`.
fn parse_maps(text: &[u8], root_dev: u64) -> Vec<Vec<u8>> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| parse_line(line, root_dev))
        .collect()
}

fn parse_line(line: &[u8], root_dev: u64) -> Option<Vec<u8>> {
    // start-end perms offset dev inode [padding] path
    let mut rest = line;
    let mut fields: [&[u8]; 5] = [&[]; 5];
    for f in &mut fields {
        rest = trim_start(rest);
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        *f = &rest[..end];
        rest = &rest[end..];
    }
    let [_, perms, _, dev, _] = fields;
    if perms.get(1) != Some(&b'w') || perms.get(3) != Some(&b's') {
        return None;
    }
    if parse_dev(dev)? != root_dev {
        return None;
    }
    let path = trim_start(rest);
    // An unlinked file is no longer in the upper dir.
    if path.ends_with(b" (deleted)") {
        return None;
    }
    let rel = unescape_octal(path.strip_prefix(b"/")?, |b| b == b'\n');
    (!rel.is_empty()).then_some(rel)
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

    #[test]
    fn shared_writable_rootfs_files_only() {
        let dev = libc::makedev(0, 0x46);
        let text = b"\
55d0c0000000-55d0c0001000 r--p 00000000 00:46 123  /bin/busybox
7fb91dbc4000-7fb91dbc5000 rw-s 00000000 00:46 10724854                   /data/db file
7fb91dbc6000-7fb91dbc7000 rw-s 00000000 00:46 10724855                   /data/gone (deleted)
7fb91dbc8000-7fb91dbc9000 rw-s 00000000 fe:00 10724856                   /volume/shared
7fb91dbca000-7fb91dbcb000 r--s 00000000 00:46 10724857                   /data/readonly
7fb91dbcc000-7fb91dbcd000 rw-p 00000000 00:46 10724858                   /data/private
7fb91dbce000-7fb91dbcf000 rw-s 00000000 00:46 10724859                   /data/new\\012line
7ffd5c5a1000-7ffd5c5c2000 rw-p 00000000 00:00 0                          [stack]
";
        let got = parse_maps(text, dev);
        assert_eq!(
            got,
            vec![b"data/db file".to_vec(), b"data/new\nline".to_vec()]
        );
    }

    #[test]
    fn only_a_newline_is_an_escape() {
        let dev = libc::makedev(0, 0x46);
        let text = b"7fb91dbce000-7fb91dbcf000 rw-s 00000000 00:46 1 /a\\134b\\040c\\012d\n";
        assert_eq!(parse_maps(text, dev), vec![b"a\\134b\\040c\nd".to_vec()]);
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
        let root_dev = std::fs::metadata("/").unwrap().dev();
        let file_dev = std::fs::metadata(&p).unwrap().dev();
        let pids = HashSet::from([std::process::id()]);
        let found = shared_writable_files(&pids, file_dev);
        // SAFETY: unmaps the page mapped above.
        unsafe { libc::munmap(ptr, 4096) };
        let want = p.as_os_str().as_encoded_bytes()[1..].to_vec();
        assert!(found.contains(&want), "{found:?}");
        if root_dev != file_dev {
            assert!(shared_writable_files(&pids, root_dev).is_empty());
        }
    }
}
