//! The tar header encoder on arbitrary entries: never a panic, and the `tar`
//! crate reads back exactly the path, link, type, mode, ids, size, mtime,
//! device numbers and xattrs that were encoded (PAX records where ustar
//! fields are too small).
#![no_main]

use std::io::Read;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use seamless_snapshot::fuzzing::{self, TarEntry};

#[derive(Arbitrary, Debug)]
struct Input {
    path: Vec<u8>,
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    /// Small sizes get content; any size is encoded.
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
    link: Vec<u8>,
    dev_major: u64,
    dev_minor: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fuzz_target!(|input: Input| {
    // What the walker can produce: a non-empty relative path without NUL,
    // no `=` or NUL in xattr names, nanoseconds below one second, sizes of
    // files.
    // No newline anywhere a PAX record may hold it: the `tar` crate's PAX
    // reader splits records at newlines instead of by their length (tar
    // 0.4.46 src/pax.rs), a reader's limitation; the core's own tests parse
    // such records by length.
    let keep = |b: &u8| *b != 0 && *b != b'\n';
    let path: Vec<u8> = input.path.iter().copied().filter(keep).collect();
    if path.is_empty() || path[0] == b'/' {
        return;
    }
    let link: Vec<u8> = input.link.iter().copied().filter(keep).collect();
    let xattrs: Vec<(Vec<u8>, Vec<u8>)> = input
        .xattrs
        .iter()
        .filter(|(n, _)| !n.is_empty() && !n.contains(&b'='))
        .map(|(n, v)| {
            (
                n.iter().copied().filter(keep).collect(),
                v.iter().copied().filter(|&b| b != b'\n').collect(),
            )
        })
        .filter(|(n, _): &(Vec<u8>, Vec<u8>)| !n.is_empty())
        .collect();
    let kind = input.kind % 7;
    // A file's size is an off_t: at most i64::MAX (the `tar` crate cannot
    // read a size near u64::MAX back).
    let size = if kind == 0 {
        input.size.min(i64::MAX as u64)
    } else {
        0
    };
    let e = TarEntry {
        path: path.clone(),
        kind,
        mode: input.mode,
        uid: input.uid,
        gid: input.gid,
        size,
        mtime: input.mtime,
        mtime_nsec: input.mtime_nsec % 1_000_000_000,
        link: link.clone(),
        dev_major: input.dev_major,
        dev_minor: input.dev_minor,
        xattrs: xattrs.clone(),
    };
    let mut blob = fuzzing::encode_tar_header(&e);
    assert_eq!(blob.len() % 512, 0, "header blocks not whole");
    // Content only when small enough to materialise.
    let content_len = if size <= 4096 { size as usize } else { 0 };
    if size <= 4096 {
        blob.extend(std::iter::repeat_n(0xa5u8, content_len));
        blob.resize(blob.len().next_multiple_of(512), 0);
        blob.extend_from_slice(&[0u8; 1024]);
    }
    let mut archive = tar::Archive::new(&blob[..]);
    let mut entries = archive.entries().expect("entries");
    let mut entry = entries
        .next()
        .expect("one entry")
        .expect("a readable entry");
    assert_eq!(&*entry.path_bytes(), &path[..], "path");
    let h = entry.header().clone();
    let want_type = [b'0', b'1', b'2', b'3', b'4', b'5', b'6'][usize::from(kind)];
    assert_eq!(h.entry_type().as_byte(), want_type, "type");
    if kind == 1 || kind == 2 {
        assert_eq!(
            entry.link_name_bytes().as_deref(),
            Some(&link[..]).filter(|l| !l.is_empty()),
            "link"
        );
    }
    assert_eq!(h.mode().expect("mode"), input.mode & 0o7777, "mode");
    let pax: Vec<(Vec<u8>, Vec<u8>)> = entry
        .pax_extensions()
        .expect("pax")
        .map(|exts| {
            exts.map(|x| {
                let x = x.expect("pax record");
                (x.key_bytes().to_vec(), x.value_bytes().to_vec())
            })
            .collect()
        })
        .unwrap_or_default();
    let pax_num = |key: &[u8]| {
        pax.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let uid =
        pax_num(b"uid").map_or_else(|| h.uid().expect("uid"), |v| v.parse().expect("pax uid"));
    let gid =
        pax_num(b"gid").map_or_else(|| h.gid().expect("gid"), |v| v.parse().expect("pax gid"));
    assert_eq!((uid, gid), (input.uid, input.gid), "ids");
    assert_eq!(entry.size(), size, "size");
    match pax_num(b"mtime") {
        Some(v) => {
            let (s, frac) = v.split_once('.').unwrap_or((&v, "0"));
            let neg = s.starts_with('-');
            let whole: i128 = s.parse().expect("mtime seconds");
            let frac: i128 = format!("{frac:0<9}").parse().expect("mtime fraction");
            let ns = whole * 1_000_000_000 + if neg { -frac } else { frac };
            let want = i128::from(input.mtime) * 1_000_000_000
                + i128::from(input.mtime_nsec % 1_000_000_000);
            assert_eq!(ns, want, "pax mtime {v}");
        }
        None => {
            assert_eq!(input.mtime_nsec % 1_000_000_000, 0);
            assert_eq!(h.mtime().expect("mtime"), input.mtime as u64, "mtime");
        }
    }
    // Device numbers as the walker has them (major < 2^12, minor < 2^20)
    // fit the octal fields.
    if (kind == 3 || kind == 4) && input.dev_major <= 0o7777777 && input.dev_minor <= 0o7777777 {
        assert_eq!(
            h.device_major().expect("major"),
            Some(input.dev_major as u32),
            "major"
        );
        assert_eq!(
            h.device_minor().expect("minor"),
            Some(input.dev_minor as u32),
            "minor"
        );
    }
    let got_x: Vec<(Vec<u8>, Vec<u8>)> = pax
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(b"SCHILY.xattr.")?.to_vec(), v.clone())))
        .collect();
    assert_eq!(got_x, xattrs, "xattrs");
    if content_len > 0 {
        let mut c = Vec::new();
        entry.read_to_end(&mut c).expect("content");
        assert_eq!(c.len(), content_len);
    }
    drop(entry);
    if size <= 4096 {
        assert!(entries.next().is_none(), "more than one entry");
    }
});
