//! `/proc/<pid>/maps`: never a panic; every mapping reported is an absolute
//! path, and a line built from it parses back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_snapshot::fuzzing;

fuzz_target!(|data: &[u8]| {
    for (dev, ino, path) in fuzzing::maps(data) {
        assert!(path.starts_with(b"/"), "relative path {path:?}");
        // The kernel escapes only a newline in the path.
        let mut line = format!(
            "7f00-7f10 rw-s 00000000 {:x}:{:x} {ino}                 ",
            libc::major(dev),
            libc::minor(dev)
        )
        .into_bytes();
        for &b in &path {
            if b == b'\n' {
                line.extend_from_slice(b"\\012");
            } else {
                line.push(b);
            }
        }
        let again = fuzzing::maps(&line);
        // A path the kernel would show with " (deleted)" is not reported.
        if !path.ends_with(b" (deleted)") {
            assert_eq!(
                again,
                vec![(dev, ino, path)],
                "{:?}",
                String::from_utf8_lossy(&line)
            );
        }
    }
});
