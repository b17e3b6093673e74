//! Captures on filesystems and files that behave unlike the usual ones:
//! whole-second timestamps.

use super::*;

/// Sleeps until the wall clock is between 10 and 200 ms into a second.
fn early_in_a_second() {
    loop {
        let ms = meta::now_ns() / 1_000_000 % 1000;
        if (10..200).contains(&ms) {
            return;
        }
        let wait = (1010 - ms) % 1000;
        std::thread::sleep(Duration::from_millis(wait.max(1) as u64));
    }
}

/// ext4 with 128-byte inodes keeps whole seconds: a same-size rewrite in
/// the second of the pre-copy leaves size, mtime and ctime as they were, so
/// only a margin of the granularity tells the copy is not clean.
#[test]
#[ignore = "needs root (mounts an ext4 loop filesystem)"]
fn same_second_rewrite_on_whole_second_timestamps() {
    let fs = LoopMount::new(&["mkfs.ext4", "-q", "-I", "128"], 64 << 20);
    let u = fs.path().join("upper");
    std::fs::create_dir(&u).unwrap();
    let f = u.join("f");
    let times = |p: &Path| {
        let md = std::fs::metadata(p).unwrap();
        (
            md.ctime(),
            md.ctime_nsec(),
            md.mtime(),
            md.mtime_nsec(),
            md.len(),
        )
    };
    // On a loaded machine the sequence may straddle a second: try again.
    for attempt in 0..10 {
        early_in_a_second();
        std::fs::write(&f, b"old content").unwrap();
        let before = times(&f);
        assert_eq!(before.1, 0, "not a whole-second filesystem");
        // The pre-copy's lstat comes well after the 50 ms racy margin.
        std::thread::sleep(Duration::from_millis(100));
        let dest = fs.path().join(format!("cap{attempt}"));
        let mut c = Capture::new(&u, &dest).unwrap();
        c.precopy(&mut |_| {}).unwrap();
        std::fs::write(&f, b"new content").unwrap();
        if times(&f) != before {
            eprintln!("attempt {attempt} crossed a second");
            continue;
        }
        // Writes reach the disk; a cold cache cannot hide the ctime.
        nix::unistd::sync();
        c.sync_frozen().unwrap();
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"new content");
        return;
    }
    panic!("no attempt fitted into one second");
}
