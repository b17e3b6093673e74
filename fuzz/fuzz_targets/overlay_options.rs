//! Overlay mount options as containerd reports them, and the mountinfo
//! cross-check: never a panic; accepted options rebuilt from their parse
//! parse the same.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use seamless_snapshot::fuzzing;

fuzz_target!(|data: &[u8]| {
    // Options separated by NUL; after a 0xff byte, a mountinfo text.
    let (opts, mountinfo) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(opts) = std::str::from_utf8(opts) else {
        return;
    };
    let options: Vec<String> = opts.split('\0').map(str::to_owned).collect();
    let Ok((upper, lowers, work, userxattr)) = fuzzing::parse_overlay_options(&options) else {
        let _ = fuzzing::check_mountinfo_text(mountinfo, Path::new("/upper"));
        return;
    };
    assert!(upper.is_absolute(), "relative upperdir {upper:?} accepted");
    let mut rebuilt = vec![format!("upperdir={}", upper.display())];
    if !lowers.is_empty() {
        let l: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        rebuilt.push(format!("lowerdir={}", l.join(":")));
    }
    if let Some(w) = &work {
        rebuilt.push(format!("workdir={}", w.display()));
    }
    if userxattr {
        rebuilt.push("userxattr".into());
    }
    let again = fuzzing::parse_overlay_options(&rebuilt).expect("rebuilt options parse");
    assert_eq!(again, (upper.clone(), lowers, work, userxattr));
    let _ = fuzzing::check_mountinfo_text(mountinfo, &upper);
});
