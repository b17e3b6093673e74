//! `/proc/<pid>/uid_map` and `gid_map`: never a panic; a map that parses
//! maps no outside ID to two inside ones, and maps the start of each of
//! its own lines to that line's inside start.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_snapshot::fuzzing;

fuzz_target!(|data: &[u8]| {
    let probes: Vec<u32> = data
        .chunks_exact(4)
        .take(8)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let Ok(mapped) = fuzzing::id_map(data, &probes) else {
        return;
    };
    assert_eq!(mapped.len(), probes.len());
    // Each well-formed line "inside outside count" maps outside to inside.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [inside, outside, count] = f[..]
            && let (Ok(i), Ok(o), Ok(c)) = (
                inside.parse::<u32>(),
                outside.parse::<u32>(),
                count.parse::<u32>(),
            )
            && c > 0
        {
            let got = fuzzing::id_map(data, &[o]).expect("parsed once already");
            assert_eq!(got, vec![Some(i)], "{line:?} in {text:?}");
        }
    }
});
