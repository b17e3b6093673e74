//! `/proc/<pid>/stat`: never a panic, whatever the command name holds; the
//! numbered fields count from the line's last `)`, so no name shifts them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_snapshot::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let _ = fuzzing::stat(text, usize::from(n));
    // The kernel writes the name between parentheses as it is: the fields
    // after the last ')' are the real ones whatever the name holds.
    let line = format!("1 ({text}) S 1 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 4242 0 0");
    let (start, state, utime) = fuzzing::stat(&line, 14);
    assert_eq!(
        (start, state, utime),
        (Some(4242), Some('S'), Some(7)),
        "{line:?}"
    );
});
