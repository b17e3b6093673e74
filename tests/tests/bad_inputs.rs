//! Bad inputs and a misbehaving environment (issue 8, "the proof suite"):
//! each gives a typed error and a one-line message a person understands,
//! and modifies nothing: the container keeps running unfrozen, no job or
//! capture is left behind. The README's table lists the same cases.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use seamless_snapshot::{
    Config, ContainerdSnapshotter, Error, ErrorKind, SeamlessSnapshot, SnapshotResult,
};
use seamless_snapshot_tests::{Kind, Rig, scan_tree, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// Asserts `r` failed with `kind`, in one line mentioning every `words`.
fn expect_error(r: Result<SnapshotResult, Error>, kind: ErrorKind, words: &[&str]) -> Error {
    let e = match r {
        Ok(r) => panic!("expected {kind}, got a snapshot {}", r.snapshot_id),
        Err(e) => e,
    };
    let message = e.full_message();
    assert_eq!(e.kind(), kind, "{message}");
    assert!(!message.contains('\n'), "not one line: {message:?}");
    for w in words {
        assert!(message.contains(w), "{message:?} does not mention {w:?}");
    }
    eprintln!("{kind}: {message}");
    e
}

/// Nothing was left in the state directory but empty directories.
fn assert_state_clean(state_dir: &Path) {
    let files: Vec<_> = scan_tree(state_dir)
        .into_iter()
        .filter(|(_, e)| e.kind != Kind::Dir)
        .map(|(p, _)| p)
        .collect();
    assert!(files.is_empty(), "left in the state dir: {files:?}");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn container_errors_touch_nothing() {
    let rig = Rig::new();
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let target = rig.target("bad", "1");
    rig.start_counter("alive");

    // Unknown container.
    expect_error(
        snap.commit("no-such-container", &target),
        ErrorKind::ContainerNotFound,
        &["no-such-container", rig.ns()],
    );

    // Stopped container.
    rig.run_container("stopped", "exit 0");
    wait_until(Duration::from_secs(10), || {
        rig.task_status("stopped").as_deref() == Some("STOPPED")
    })
    .unwrap();
    expect_error(
        snap.commit("stopped", &target),
        ErrorKind::ContainerNotRunning,
        &["stopped", "not running"],
    );

    // A rootfs that is not kernel overlayfs (the native snapshotter copies).
    rig.ctr(&[
        "run",
        "-d",
        "--snapshotter",
        "native",
        seamless_snapshot_tests::BASE_IMAGE,
        "native",
        "sh",
        "-c",
        "while true; do sleep 1; done",
    ]);
    expect_error(
        snap.commit("native", &target),
        ErrorKind::Unsupported,
        &["native", "overlayfs"],
    );
    assert_eq!(rig.task_status("native").as_deref(), Some("RUNNING"));

    // Malformed reference: refused before anything is touched.
    expect_error(
        snap.commit("alive", "UPPER/Case::"),
        ErrorKind::InvalidReference,
        &["UPPER/Case::"],
    );

    // Unknown snapshot id.
    let e = snap.get_status("20260101T000000-000000000000").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SnapshotNotFound, "{e}");
    assert!(e.full_message().contains("20260101T000000-000000000000"));

    assert!(!rig.cgroup("alive").is_frozen());
    rig.assert_counting("alive");
    assert!(snap.list().unwrap().is_empty());
    assert_state_clean(&rig.state_dir());
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn environment_errors_are_typed_and_quick() {
    let rig = Rig::new();
    rig.start_counter("alive");
    let target = rig.target("env", "1");

    // An unusable state directory (its parent is a regular file).
    let file = rig.tmp().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let bad_state = file.join("state");
    let e = ContainerdSnapshotter::new(Config {
        state_dir: bad_state.clone(),
        ..rig.config()
    })
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(
        e.full_message().contains(&*bad_state.to_string_lossy()),
        "{}",
        e.full_message()
    );

    // No containerd at the address.
    let missing = rig.tmp().join("no-containerd.sock");
    let snap = ContainerdSnapshotter::new(Config {
        containerd_address: missing.to_string_lossy().into_owned(),
        ..rig.config()
    })
    .unwrap();
    expect_error(
        snap.commit("alive", &target),
        ErrorKind::Containerd,
        &[&missing.to_string_lossy(), "connect"],
    );

    // A containerd that accepts connections and never answers: bounded by
    // `containerd_timeout`, never a hang.
    let silent = rig.tmp().join("silent.sock");
    let listener = UnixListener::bind(&silent).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_silent = stop.clone();
    let held = std::thread::spawn(move || {
        // Keep accepted connections open, reading nothing, until told.
        let mut conns = Vec::new();
        listener.set_nonblocking(true).unwrap();
        while !stop_silent.load(Ordering::Relaxed) {
            if let Ok((c, _)) = listener.accept() {
                conns.push(c);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let snap = ContainerdSnapshotter::new(Config {
        containerd_address: silent.to_string_lossy().into_owned(),
        containerd_timeout: Duration::from_secs(2),
        ..rig.config()
    })
    .unwrap();
    let started = Instant::now();
    expect_error(
        snap.commit("alive", &target),
        ErrorKind::Containerd,
        &[&silent.to_string_lossy()],
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}");
    stop.store(true, Ordering::Relaxed);
    let _ = held.join();
    stop.store(false, Ordering::Relaxed);

    // A "registry" that does not speak HTTP: the capture happens, the push
    // fails as unreachable, the container never notices.
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = garbage.local_addr().unwrap().port();
    let stop_talker = stop.clone();
    let talker = std::thread::spawn(move || {
        use std::io::Write;
        garbage.set_nonblocking(true).unwrap();
        while !stop_talker.load(Ordering::Relaxed) {
            if let Ok((mut c, _)) = garbage.accept() {
                let _ = c.write_all(b"this is not HTTP\r\n\r\n");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let snap = ContainerdSnapshotter::new(Config {
        push_retries: 0,
        ..rig.config()
    })
    .unwrap();
    let e = expect_error(
        snap.commit_with_wait("alive", &format!("127.0.0.1:{port}/x/y:1"), WAIT),
        ErrorKind::JobFailed,
        &[&format!("127.0.0.1:{port}")],
    );
    match e {
        Error::JobFailed { kind, .. } => assert!(
            matches!(kind, ErrorKind::RegistryUnreachable | ErrorKind::Registry),
            "job kind {kind}"
        ),
        other => panic!("{other}"),
    }
    stop.store(true, Ordering::Relaxed);
    let _ = talker.join();
    assert!(!rig.cgroup("alive").is_frozen());
    rig.assert_counting("alive");
}
