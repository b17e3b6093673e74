//! `/proc/<pid>/mountinfo`: never a panic; every parsed mount, written back
//! with the kernel's escapes, parses to itself.
#![no_main]

use std::os::unix::ffi::OsStrExt;

use libfuzzer_sys::fuzz_target;
use seamless_snapshot::fuzzing;

/// The kernel's `\ooo` escaping of `bytes` (space, tab, newline, backslash,
/// and `extra`).
fn escape(bytes: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in bytes {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\\') || extra.contains(&b) {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (mounts, cgroups) = fuzzing::mountinfo(data);
    assert!(cgroups <= mounts.len());
    for m in mounts {
        let (root, mount_point, fs_type, opts) = &m;
        let mut line = b"1 2 0:1 ".to_vec();
        line.extend(escape(root.as_os_str().as_bytes(), b""));
        line.push(b' ');
        line.extend(escape(mount_point.as_os_str().as_bytes(), b""));
        line.extend_from_slice(b" rw - ");
        line.extend(escape(fs_type.as_bytes(), b""));
        line.extend_from_slice(b" src ");
        let opts_escaped: Vec<Vec<u8>> = opts.iter().map(|o| escape(o, b",")).collect();
        line.extend(opts_escaped.join(&b','));
        let (again, _) = fuzzing::mountinfo(&line);
        assert_eq!(again.len(), 1, "{:?}", String::from_utf8_lossy(&line));
        assert_eq!(again[0], m, "{:?}", String::from_utf8_lossy(&line));
    }
});
