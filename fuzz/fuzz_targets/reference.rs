//! Image references (`--target`, base image names) and the plain-HTTP
//! registry choice: never a panic; a reference that parses has a full form
//! that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_snapshot::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(whole) = fuzzing::parse_reference(s) {
        match fuzzing::parse_reference(&whole) {
            Ok(again) => assert_eq!(again, whole, "full form of {s:?} is not stable"),
            Err(e) => panic!("full form {whole:?} of {s:?} does not parse: {e}"),
        }
    }
    // Lines before the first empty one are --insecure-registry entries, the
    // rest registries.
    let lines: Vec<&str> = s.split('\n').collect();
    let cut = lines
        .iter()
        .position(|l| l.is_empty())
        .unwrap_or(lines.len());
    let insecure: Vec<String> = lines[..cut].iter().map(|l| l.to_string()).collect();
    let registries = lines.get(cut + 1..).unwrap_or_default();
    let plain = fuzzing::plain_http_registries(&insecure, registries);
    for r in registries {
        let port = r.strip_prefix("127.0.0.1:");
        if port.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            || *r == "localhost"
        {
            assert!(
                plain.iter().any(|p| p == r),
                "loopback {r:?} not plain HTTP"
            );
        }
    }
});
