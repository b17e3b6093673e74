//! Integration tests of the library against the rig (private containerd +
//! registry). Each test uses its own containerd namespace; they skip when the
//! rig is not running (and fail under CI=true).

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use seamless_snapshot::{
    CommitOptions, Compression, ContainerdSnapshotter, ErrorKind, SeamlessSnapshot, SnapshotState,
};
use seamless_snapshot_tests::{
    CompareOptions, Kind, Rig, compare_trees, entry, path_from_bytes, scan_tree, set_xattr,
    wait_until, xattrs,
};

const PUSH_TIMEOUT: Duration = Duration::from_secs(300);

/// Appends a line to /data/log every ~2 ms and keeps the line count in
/// /data/counter.
const WRITER: &str = "i=0; while true; do echo $i >> /data/log; i=$((i+1)); echo $i > /data/counter; usleep 2000; done";

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn commit_running_writer() {
    let rig = Rig::new();
    rig.run_container("writer", WRITER);
    wait_until(Duration::from_secs(10), || rig.read_counter("writer") > 100).unwrap();

    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let target = rig.target("writer", "1");
    let r = snap
        .commit_with_wait("writer", &target, PUSH_TIMEOUT)
        .unwrap();
    let at_commit = rig.read_counter("writer");
    eprintln!(
        "pause {:?}, total {:?}, files {}, bytes {}",
        r.pause_time, r.total_time, r.files_captured, r.bytes_captured
    );

    // The container runs on, thawed, and keeps writing.
    assert_eq!(rig.task_status("writer").as_deref(), Some("RUNNING"));
    assert!(!rig.cgroup("writer").is_frozen(), "container left frozen");
    wait_until(Duration::from_secs(10), || {
        rig.read_counter("writer") > at_commit + 20
    })
    .expect("the writer stopped after the commit");

    // The job is completed with the digest the call returned.
    let st = snap.get_status(&r.snapshot_id).unwrap();
    assert_eq!(st.state, SnapshotState::Completed);
    assert!(st.error.is_none());
    let digest = r.manifest_digest.clone().expect("manifest digest");
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(st.manifest_digest.as_deref(), Some(digest.as_str()));
    assert!(r.layer.is_some());
    assert!(
        r.pause_time < Duration::from_secs(1),
        "pause {:?}",
        r.pause_time
    );
    assert!(r.files_captured >= 2);

    // The image's log is a prefix of the live log, and the counter file is
    // consistent with it: both files were captured at one instant.
    let rootfs = rig.pull_unpack(&target);
    let snap_log = fs::read(rootfs.join("data/log")).unwrap();
    let snap_counter = fs::read_to_string(rootfs.join("data/counter")).unwrap();
    let live_log = fs::read(rig.rootfs("writer").join("data/log")).unwrap();
    assert!(!snap_log.is_empty());
    assert!(
        live_log.starts_with(&snap_log),
        "snapshot log ({} bytes) is not a prefix of the live log ({} bytes)",
        snap_log.len(),
        live_log.len()
    );
    assert!(snap_log.ends_with(b"\n"), "torn last line in the snapshot");
    let lines = snap_log.iter().filter(|b| **b == b'\n').count() as u64;
    let last: u64 = String::from_utf8_lossy(&snap_log)
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(last + 1, lines);
    let c = snap_counter.trim();
    assert!(
        c.is_empty() || c == lines.to_string() || c == (lines - 1).to_string(),
        "counter {c:?} inconsistent with {lines} log lines"
    );
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn tricky_layer_roundtrip() {
    let rig = Rig::new();
    rig.run_container("tricky", "while true; do sleep 1; done");
    let setup = r#"
set -e
mkdir -p /data/tricky/empty1/empty2 /data/tricky/emptydir
cd /data/tricky
echo hello > new-file
chmod 600 new-file
dd if=/dev/urandom of=random.bin bs=1k count=300 2>/dev/null
echo modified >> /base/file-to-modify
chmod 640 /base/keep/sub/nested
rm /base/file-to-delete
rm -rf /base/dir-to-delete
rm -rf /base/dir-to-replace
mkdir -p /base/dir-to-replace/new-sub
echo new > /base/dir-to-replace/new-file
echo new2 > /base/dir-to-replace/new-sub/new2
echo linked > hl-a
ln hl-a hl-b
mkdir hl-dir
ln hl-a hl-dir/hl-c
ln /base/keep/file hl-lower
ln -s /base/keep/file abs-link
ln -s /does/not/exist dangling
ln -s ../tricky/new-file rel-link
printf '#!/bin/sh\necho suid\n' > suid
chmod 4755 suid
printf 'g\n' > sgid
chmod 2711 sgid
mkdir sticky
chmod 1777 sticky
mkfifo fifo
truncate -s 256M sparse
printf middle | dd of=sparse bs=1 seek=134217728 conv=notrunc 2>/dev/null
printf end | dd of=sparse bs=1 seek=268435000 conv=notrunc 2>/dev/null
name200=$(head -c 200 /dev/zero | tr '\0' n)
echo long > "$name200"
echo owned > owned
chown 1234:5678 owned
mkdir owned-dir
chown 1234:5678 owned-dir
chmod 750 owned-dir
echo old > fixed-mtime
touch -d '2001-02-03 04:05:06' fixed-mtime
"#;
    rig.exec("tricky", setup);

    // From the host, through the container's merged view: a non-UTF-8 name
    // and user xattrs (busybox has no setfattr).
    let merged = rig.rootfs("tricky");
    let bad_name = path_from_bytes(b"data/tricky/bad-\xff\xfe-name");
    fs::write(merged.join(&bad_name), b"not utf-8\n").unwrap();
    set_xattr(
        &merged.join("data/tricky/new-file"),
        "user.test",
        b"value-1",
    );
    set_xattr(&merged.join("data/tricky/emptydir"), "user.dir", b"d");
    set_xattr(
        &merged.join("base/keep/sub/nested"),
        "user.lower",
        b"copied up",
    );
    set_xattr(
        &merged.join("data/tricky/random.bin"),
        "user.bin",
        &[0, 1, 2, 255],
    );

    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let target = rig.target("tricky", "1");
    let started = Instant::now();
    let r = snap
        .commit_with_wait("tricky", &target, PUSH_TIMEOUT)
        .unwrap();
    eprintln!(
        "commit: pause {:?}, total {:?} (wall {:?}), files {}, bytes {}",
        r.pause_time,
        r.total_time,
        started.elapsed(),
        r.files_captured,
        r.bytes_captured
    );

    let rootfs = rig.pull_unpack(&target);
    let diffs = compare_trees(&merged, &rootfs, &CompareOptions::default());
    assert!(
        diffs.is_empty(),
        "snapshot differs from the container:\n{}",
        diffs.join("\n")
    );

    // Deleted paths are gone (whiteouts), the replaced dir holds only its
    // new content (opaque dir), and no whiteout marker leaked into the tree.
    assert!(!rootfs.join("base/file-to-delete").exists());
    assert!(!rootfs.join("base/dir-to-delete").exists());
    let mut replaced: Vec<String> = fs::read_dir(rootfs.join("base/dir-to-replace"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    replaced.sort();
    assert_eq!(replaced, ["new-file", "new-sub"]);
    assert_eq!(
        fs::read_to_string(rootfs.join("base/file-to-modify")).unwrap(),
        "original content\nmodified\n"
    );
    for p in scan_tree(&rootfs).keys() {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        assert!(
            !name.is_some_and(|n| n.starts_with(".wh.")),
            "whiteout leaked: {}",
            p.display()
        );
    }
    // Spot checks that do not rely on the comparison alone.
    let sparse = fs::metadata(rootfs.join("data/tricky/sparse")).unwrap();
    assert_eq!(sparse.len(), 256 << 20);
    assert_eq!(
        fs::read(rootfs.join(&bad_name)).unwrap(),
        b"not utf-8\n".to_vec()
    );
    assert_eq!(
        fs::read_link(rootfs.join("data/tricky/dangling")).unwrap(),
        Path::new("/does/not/exist")
    );
    let t = rootfs.join("data/tricky");
    assert_eq!(
        xattrs(&t.join("new-file")).get(OsStr::new("user.test")),
        Some(&b"value-1".to_vec())
    );
    assert_eq!(
        xattrs(&rootfs.join("base/keep/sub/nested")).get(OsStr::new("user.lower")),
        Some(&b"copied up".to_vec())
    );
    let e = |p: &str| entry(&t.join(p)).unwrap();
    assert_eq!(e("suid").mode, 0o4755);
    assert_eq!(e("sgid").mode, 0o2711);
    assert_eq!(e("sticky").mode, 0o1777);
    assert_eq!((e("owned").uid, e("owned").gid), (1234, 5678));
    assert_eq!(e("fixed-mtime").mtime, 981_173_106);
    assert_eq!(e("fifo").kind, Kind::Fifo);
    assert_eq!(e("hl-a").inode, e("hl-dir/hl-c").inode);
    assert_eq!(e("hl-a").nlink, 3);
    assert_eq!(
        e("hl-lower").inode,
        entry(&rootfs.join("base/keep/file")).unwrap().inode
    );
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn snapshot_image_runs() {
    let rig = Rig::new();
    rig.run_container(
        "src",
        "echo 'user data 42' > /data/user-file; mkdir -p /data/dir; echo nested > /data/dir/f; while true; do sleep 1; done",
    );
    wait_until(Duration::from_secs(10), || {
        rig.rootfs("src").join("data/dir/f").exists()
    })
    .unwrap();
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let target = rig.target("runs", "v1");
    // zstd on this one, gzip on the others.
    let opts = CommitOptions {
        compression: Compression::Zstd,
        ..Default::default()
    };
    let r = snap
        .commit_with("src", &target, &opts, Some(PUSH_TIMEOUT))
        .unwrap();
    assert!(r.manifest_digest.is_some());

    rig.ctr(&["images", "pull", "--plain-http", &target]);
    let out = rig.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "overlayfs",
        &target,
        "check",
        "sh",
        "-c",
        "cat /data/user-file /data/dir/f; test -f /base/keep/file && echo base-ok",
    ]);
    assert_eq!(out, "user data 42\nnested\nbase-ok\n");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn error_cases() {
    let rig = Rig::new();
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let target = rig.target("err", "1");

    let e = snap
        .commit_with_wait("no-such-container", &target, PUSH_TIMEOUT)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ContainerNotFound, "{e}");

    rig.run_container("stopped", "exit 0");
    wait_until(Duration::from_secs(10), || {
        rig.task_status("stopped").as_deref() == Some("STOPPED")
    })
    .unwrap();
    let e = snap
        .commit_with_wait("stopped", &target, PUSH_TIMEOUT)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ContainerNotRunning, "{e}");

    rig.run_container("alive", "while true; do sleep 1; done");
    let e = snap
        .commit_with_wait("alive", "UPPER/Case::", PUSH_TIMEOUT)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidReference, "{e}");
    assert_eq!(rig.task_status("alive").as_deref(), Some("RUNNING"));
    assert!(!rig.cgroup("alive").is_frozen());

    // Nothing left behind: no job recorded, no capture, no blob.
    assert!(snap.list().unwrap().is_empty());
    let leftovers = rig.state_dir_files();
    assert!(leftovers.is_empty(), "left in the state dir: {leftovers:?}");
}
