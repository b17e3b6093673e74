//! Captures on filesystems and files that behave unlike the usual ones:
//! whole-second timestamps, file leases, files that cannot be cloned.

use super::*;
use std::os::fd::AsRawFd;
use std::time::Instant;

use crate::error::ErrorKind;

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

/// A write lease (`fcntl(F_SETLEASE, F_WRLCK)`) on `path`, held by this
/// process through its own read-only fd until dropped. The break signal
/// (SIGIO) is ignored: only `F_GETLEASE` tells a break is asked for.
struct Lease(File);

impl Lease {
    fn take(path: &Path) -> Lease {
        // SAFETY: ignoring SIGIO installs no handler; nothing else in the
        // test binary uses the signal.
        unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGIO,
                nix::sys::signal::SigHandler::SigIgn,
            )
        }
        .unwrap();
        let f = File::open(path).unwrap();
        Lease(f).set(libc::F_WRLCK)
    }

    fn set(self, kind: libc::c_int) -> Lease {
        // SAFETY: F_SETLEASE on an fd we own.
        let r = unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_SETLEASE, kind) };
        assert_eq!(r, 0, "F_SETLEASE: {}", std::io::Error::last_os_error());
        self
    }

    /// The lease type, or the type a pending break asks for.
    fn get(&self) -> libc::c_int {
        // SAFETY: F_GETLEASE on an fd we own.
        unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_GETLEASE) }
    }
}

/// A holder that never releases its write lease (as one frozen with the
/// container would not): the capture fails at once with `Busy` naming the
/// file, instead of waiting for the kernel's 45 s lease-break timeout.
#[test]
#[ignore = "needs root"]
fn unreleased_lease_fails_fast() {
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir(&u).unwrap();
    std::fs::write(u.join("leased"), b"data").unwrap();
    std::fs::write(u.join("plain"), b"plain").unwrap();
    let lease = Lease::take(&u.join("leased"));
    let started = Instant::now();
    let mut c = Capture::new(&u, &t.path().join("cap")).unwrap();
    c.precopy(&mut |_| {}).unwrap();
    let e = c.sync_frozen().unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("upper/leased") && msg.contains("file lease"),
        "{e}"
    );
    assert_eq!(std::fs::read(c.dest().join("plain")).unwrap(), b"plain");
    drop(lease);
}

/// A holder that releases its lease when asked (as the protocol wants):
/// the pre-copy waits for it and copies the file; no 45 s wait either.
#[test]
#[ignore = "needs root"]
fn released_lease_is_copied() {
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir(&u).unwrap();
    std::fs::write(u.join("leased"), b"leased data").unwrap();
    let lease = Lease::take(&u.join("leased"));
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let holder = std::thread::spawn(move || {
        while !s2.load(Ordering::Relaxed) {
            if lease.get() != libc::F_WRLCK {
                return Some(lease.set(libc::F_UNLCK));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    });
    let started = Instant::now();
    let dest = t.path().join("cap");
    let mut c = Capture::new(&u, &dest).unwrap();
    c.precopy(&mut |_| {}).unwrap();
    c.sync_frozen().unwrap();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let released = holder.join().unwrap();
    assert!(released.is_some(), "no lease break was asked for");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(std::fs::read(dest.join("leased")).unwrap(), b"leased data");
}

/// A file the filesystem cannot clone (btrfs: NOCOW source, COW copy:
/// `EINVAL`) is copied; the files after it are still cloned.
#[test]
#[ignore = "needs root (mounts a btrfs loop filesystem)"]
fn one_failed_clone_keeps_cloning() {
    let fs = LoopMount::new(&["mkfs.btrfs", "-q"], 256 << 20);
    let u = fs.path().join("upper");
    std::fs::create_dir(&u).unwrap();
    let nocow = u.join("0-nocow");
    File::create(&nocow).unwrap();
    let st = std::process::Command::new("chattr")
        .arg("+C")
        .arg(&nocow)
        .status()
        .unwrap();
    assert!(st.success(), "chattr +C: {st}");
    std::fs::write(&nocow, vec![b'n'; 100_000]).unwrap();
    for i in 0..5 {
        std::fs::write(u.join(format!("f{i}")), vec![b'a' + i; 10_000]).unwrap();
    }
    // Old enough not to be racy: the NOCOW file is copied once only.
    std::thread::sleep(Duration::from_millis(100));
    let dest = fs.path().join("cap");
    let mut c = Capture::new(&u, &dest).unwrap();
    c.precopy(&mut |_| {}).unwrap();
    // Copied again by the sync, after the failed clone whatever the order
    // of the pre-copy.
    for i in 0..5 {
        std::fs::write(u.join(format!("f{i}")), vec![b'A' + i; 20_000]).unwrap();
    }
    c.sync_frozen().unwrap();
    assert_trees_equal(&u, &dest);
    assert_eq!(c.copier.counts(), (10, 1));
    assert_eq!(c.strategy(), CaptureStrategy::Mixed);
}
