//! Targets without a registry, each read back by a tool of its own:
//! `oci:` by `skopeo inspect` and `umoci unpack`, `oci-archive:` by
//! `skopeo inspect` and `skopeo copy`, `containerd:` by `ctr run` of the new
//! image in the rig's containerd (after a garbage collection). A second
//! commit into the same layout keeps the first tag; malformed targets are
//! typed errors before anything is frozen.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use seamless_snapshot::{
    CommitOptions, ContainerdSnapshotter, ErrorKind, SeamlessSnapshot, SnapshotState,
};
use seamless_snapshot_tests::{Rig, check_cmd, wait_until};

const PUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// A container that wrote `/data/hello` (text), `/data/bin` (random bytes)
/// and `/data/sub/link` (a symlink), then idles.
fn writer(rig: &Rig, id: &str, text: &str) {
    rig.run_container(
        id,
        &format!(
            "mkdir -p /data/sub && head -c 200000 /dev/urandom > /data/bin && ln -s ../hello /data/sub/link && echo {text} > /data/hello.tmp && mv /data/hello.tmp /data/hello && while true; do sleep 1; done"
        ),
    );
    wait_until(Duration::from_secs(20), || {
        rig.rootfs(id).join("data/hello").exists()
    })
    .expect("the container wrote /data/hello");
}

/// Commits `id` to `target`, waiting for the job; returns the manifest
/// digest.
fn commit(rig: &Rig, id: &str, target: &str) -> String {
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let r = snap
        .commit_with(id, target, &CommitOptions::default(), Some(PUSH_TIMEOUT))
        .unwrap_or_else(|e| panic!("commit to {target}: {}", e.full_message()));
    assert_eq!(r.target_ref, target, "the result names the target as given");
    let status = snap.get_status(&r.snapshot_id).unwrap();
    assert_eq!(status.state, SnapshotState::Completed, "{status:?}");
    assert_eq!(status.target_ref, target);
    let digest = r.manifest_digest.expect("a manifest digest");
    assert_eq!(status.manifest_digest.as_deref(), Some(digest.as_str()));
    digest
}

/// `skopeo inspect`'s digest of a `transport:...` reference.
fn skopeo_digest(reference: &str) -> String {
    check_cmd(
        Command::new("skopeo")
            .args(["inspect", "--format", "{{.Digest}}"])
            .arg(reference),
    )
    .trim()
    .to_string()
}

/// Unpacks `layout:tag` with umoci; returns its root filesystem.
fn umoci_unpack(rig: &Rig, layout: &Path, tag: &str) -> std::path::PathBuf {
    let bundle = rig.new_dir("bundle").join("b");
    check_cmd(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&bundle),
    );
    bundle.join("rootfs")
}

/// The container's files read back from an unpacked image, byte for byte,
/// on top of the base (busybox is there).
fn assert_same_files(rig: &Rig, id: &str, rootfs: &Path) {
    let live = rig.rootfs(id);
    for f in ["data/hello", "data/bin"] {
        let a = std::fs::read(live.join(f)).expect("container's file");
        let b = std::fs::read(rootfs.join(f)).unwrap_or_else(|e| panic!("unpacked {f}: {e}"));
        assert!(a == b, "{f} differs");
    }
    assert_eq!(
        std::fs::read_link(rootfs.join("data/sub/link")).unwrap(),
        Path::new("../hello")
    );
    assert!(rootfs.join("bin/busybox").exists(), "base layer missing");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn oci_layout_read_back_and_second_tag_kept() {
    let rig = Rig::new();
    writer(&rig, "layout-a", "first");
    writer(&rig, "layout-b", "second");
    // Not yet there: the layout directory is created.
    let layout = rig.tmp().join("out").join("layout");

    let one = commit(&rig, "layout-a", &format!("oci:{}:one", layout.display()));
    assert_eq!(skopeo_digest(&format!("oci:{}:one", layout.display())), one);
    assert_same_files(&rig, "layout-a", &umoci_unpack(&rig, &layout, "one"));

    // A second commit into the same layout under another tag keeps both.
    let two = commit(&rig, "layout-b", &format!("oci:{}:two", layout.display()));
    assert_ne!(one, two);
    assert_eq!(skopeo_digest(&format!("oci:{}:one", layout.display())), one);
    assert_eq!(skopeo_digest(&format!("oci:{}:two", layout.display())), two);
    assert_same_files(&rig, "layout-b", &umoci_unpack(&rig, &layout, "two"));
    let rootfs = umoci_unpack(&rig, &layout, "one");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/hello")).unwrap(),
        "first\n"
    );

    // The same tag again is replaced, not duplicated.
    let again = commit(&rig, "layout-b", &format!("oci:{}:one", layout.display()));
    assert_eq!(
        skopeo_digest(&format!("oci:{}:one", layout.display())),
        again
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(names, vec!["two", "one"]);
    // No temporary files left in the layout.
    let leftovers: Vec<_> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn oci_archive_read_back_by_skopeo() {
    let rig = Rig::new();
    writer(&rig, "archive", "archived");
    let dir = rig.new_dir("archive");
    let file = dir.join("image.tar");
    // An older file at the path is replaced whole.
    std::fs::write(&file, b"not an archive").unwrap();

    let digest = commit(
        &rig,
        "archive",
        &format!("oci-archive:{}:v1", file.display()),
    );
    assert_eq!(
        skopeo_digest(&format!("oci-archive:{}:v1", file.display())),
        digest
    );
    let copy = rig.new_dir("copy").join("oci");
    check_cmd(
        Command::new("skopeo")
            .args(["copy", "-q"])
            .arg(format!("oci-archive:{}:v1", file.display()))
            .arg(format!("oci:{}:c", copy.display())),
    );
    assert_eq!(skopeo_digest(&format!("oci:{}:c", copy.display())), digest);
    assert_same_files(&rig, "archive", &umoci_unpack(&rig, &copy, "c"));
    // Written through a temporary name: only the archive is left.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["image.tar".to_string()]);
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn containerd_target_runs_with_ctr() {
    let rig = Rig::new();
    writer(&rig, "imported", "from-containerd");
    let name = format!("localhost/{}/snap:v1", rig.ns());
    let digest = commit(&rig, "imported", &format!("containerd:{name}"));

    let listed = rig.ctr(&["images", "ls"]);
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in:\n{listed}"));
    assert!(line.contains(&digest), "{line}");

    // A synchronous garbage collection (removing another image triggers
    // one): the new layer and config are kept by the manifest's labels.
    rig.ctr(&[
        "images",
        "tag",
        "seamless.test/base:latest",
        "gc-trigger:latest",
    ]);
    rig.ctr(&["images", "rm", "--sync", "gc-trigger:latest"]);

    let out = rig.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "overlayfs",
        &name,
        "reader",
        "sh",
        "-c",
        "cat /data/hello /data/sub/link; md5sum /data/bin",
    ]);
    let expected_md5 =
        check_cmd(Command::new("md5sum").arg(rig.rootfs("imported").join("data/bin")));
    let md5 = expected_md5.split_whitespace().next().unwrap();
    assert!(
        out.starts_with("from-containerd\nfrom-containerd\n"),
        "{out}"
    );
    assert!(out.contains(md5), "{out}");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn malformed_targets_are_refused_before_anything_is_frozen() {
    let rig = Rig::new();
    rig.start_counter("alive");
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    for bad in [
        "oci:",
        "oci::tag",
        "oci:/tmp/x:bad tag",
        "oci-archive:",
        "oci-archive:/tmp/dir/",
        "containerd:",
        "containerd:Bad Name",
        "containerd:app:-tag",
    ] {
        let e = snap.commit("alive", bad).expect_err(bad);
        assert_eq!(e.kind(), ErrorKind::InvalidReference, "{bad}: {e}");
        assert!(
            e.full_message().contains(bad),
            "{bad}: {}",
            e.full_message()
        );
    }
    assert!(!rig.cgroup("alive").is_frozen());
    rig.assert_counting("alive");
    assert!(snap.list().unwrap().is_empty());
    assert!(
        rig.state_dir_files().is_empty(),
        "{:?}",
        rig.state_dir_files()
    );
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn cli_relative_oci_path_with_a_detached_worker() {
    let rig = Rig::new();
    writer(&rig, "cli-layout", "relative");
    let cwd = rig.new_dir("cwd");
    // Without --wait: a detached worker builds the image from the job spec,
    // where the path was made absolute against the committer's directory.
    let target = "oci:rel/layout:cli";
    let out = check_cmd(rig.cli().current_dir(&cwd).args([
        "commit",
        "--container",
        "cli-layout",
        "--target",
        target,
        "--json",
    ]));
    let r: serde_json::Value = serde_json::from_str(&out).expect("commit --json");
    assert_eq!(r["target_ref"], target);
    let id = r["snapshot_id"].as_str().expect("snapshot_id").to_string();
    let st = check_cmd(rig.cli().args(["wait", &id, "--timeout", "120s", "--json"]));
    let st: serde_json::Value = serde_json::from_str(&st).expect("wait --json");
    assert_eq!(st["state"], "completed", "{st}");
    assert_eq!(st["target_ref"], target, "{st}");
    let layout = cwd.join("rel/layout");
    assert_eq!(
        Some(skopeo_digest(&format!("oci:{}:cli", layout.display())).as_str()),
        st["manifest_digest"].as_str()
    );
    assert_same_files(&rig, "cli-layout", &umoci_unpack(&rig, &layout, "cli"));
}
