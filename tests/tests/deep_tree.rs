//! Hostile or unusual containers (issue 8, item 10): a directory chain
//! deeper than `PATH_MAX` — legal, and it occurs in real `node_modules` —
//! is committed like any other tree, and nothing of it is left behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use seamless_snapshot::{Config, ContainerdSnapshotter, SeamlessSnapshot};
use seamless_snapshot_tests::{Rig, check_cmd, run_cmd};

/// Levels of the chain and the name of each (10 bytes: 16,500 bytes of
/// path, four times `PATH_MAX`).
const LEVELS: usize = 1500;
const NAME: &str = "x123456789";
/// The line the container writes at the bottom.
const LINE: &str = "at the bottom of 1500 levels";

/// The shell script that builds the chain inside the container: `mkdir -p`
/// and `cd -P` 100 levels at a time, so that no path handed to the kernel
/// is longer than `PATH_MAX`.
fn deep_script() -> String {
    format!(
        "set -e; mkdir /deep; cd /deep; c=''; i=0; \
         while [ $i -lt 100 ]; do c=\"${{c}}{NAME}/\"; i=$((i+1)); done; \
         j=0; while [ $j -lt {} ]; do mkdir -p \"$c\"; cd -P \"$c\"; j=$((j+1)); done; \
         echo '{LINE}' > bottom.txt; echo ok",
        LEVELS / 100,
    )
}

/// The deep file's path inside the image, relative to its root.
fn deep_rel() -> String {
    let mut p = String::from("deep/");
    for _ in 0..LEVELS {
        p.push_str(NAME);
        p.push('/');
    }
    p.push_str("bottom.txt");
    p
}

/// Lowers this process's soft limit on open files to `n` (the default of a
/// shell or a systemd service is 1,024): a walker holding one fd per level
/// would fail with `EMFILE` long before the bottom of the chain.
fn limit_open_files(n: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit to write to.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    r.rlim_cur = n.min(r.rlim_max);
    // SAFETY: `r` is a valid rlimit; only this test runs in this process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0);
}

/// Copies `reference` into an OCI layout with skopeo and returns the path
/// of the blob of its top layer (the one the commit added).
fn top_layer_blob(rig: &Rig, reference: &str) -> PathBuf {
    let layout = rig.pull_layout(reference);
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        layout.join("blobs/sha256").join(hex)
    };
    let json = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).expect("read layout file")).expect("JSON")
    };
    let index = json(&layout.join("index.json"));
    let manifest = json(&blob(
        index["manifests"][0]["digest"]
            .as_str()
            .expect("manifest digest"),
    ));
    let layers = manifest["layers"].as_array().expect("layers");
    blob(
        layers.last().expect("a layer")["digest"]
            .as_str()
            .expect("layer digest"),
    )
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn a_tree_deeper_than_path_max_is_committed() {
    let rig = Rig::new();
    rig.run_container("deep", "while true; do sleep 1; done");
    assert_eq!(rig.exec("deep", &deep_script()), "ok\n");

    // The capture, the layer build and the cleanup run in this process.
    limit_open_files(1024);
    let captures = rig.new_dir("captures");
    let snap = ContainerdSnapshotter::new(Config {
        capture_root: Some(captures.clone()),
        ..rig.config()
    })
    .unwrap();
    let target = rig.target("deep", "1");
    let r = snap
        .commit_with_wait("deep", &target, Duration::from_secs(300))
        .unwrap();
    assert!(r.manifest_digest.is_some());
    assert!(
        r.files_captured >= 1,
        "files captured: {}",
        r.files_captured
    );
    assert_eq!(rig.task_status("deep").as_deref(), Some("RUNNING"));

    // umoci unpacks by path and cannot create such a tree: read the pushed
    // layer with GNU tar (an independent PAX reader) instead.
    let blob = top_layer_blob(&rig, &target);
    let listing = check_cmd(Command::new("tar").arg("-tzf").arg(&blob));
    let deep = deep_rel();
    let dirs = listing
        .lines()
        .filter(|l| l.starts_with("deep/") && l.ends_with(&format!("{NAME}/")))
        .count();
    assert_eq!(
        dirs,
        LEVELS,
        "directories of the chain in the layer; it starts with {:?}",
        listing.lines().take(5).collect::<Vec<_>>()
    );
    assert!(
        listing.lines().any(|l| l == deep),
        "the deep file is not in the layer"
    );
    let out = run_cmd(Command::new("tar").arg("-xzOf").arg(&blob).arg(&deep));
    assert!(
        out.status.success(),
        "tar -x of the deep file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{LINE}\n"));

    // The capture directory of the finished job is gone, however deep. (A
    // capture root open to others gets a private `seamless-capture/`
    // inside, which stays.)
    let private = captures.join("seamless-capture");
    let left: Vec<_> = [&captures, &private]
        .into_iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| *p != private)
        .collect();
    assert!(left.is_empty(), "capture left behind: {left:?}");
}
