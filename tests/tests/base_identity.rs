//! The base image is the one the container's root filesystem stacks on, not
//! whatever its image name points at by the time of the commit (issue 8,
//! item 4): the name re-tagged after the container started, a container of a
//! non-host platform of a multi-platform image, a user-namespaced container
//! (whose snapshot sits on a remapped copy of the image's), and a base no
//! image holds any more.

use std::fs;
use std::path::Path;
use std::time::Duration;

use seamless_snapshot::{ContainerdSnapshotter, ErrorKind, SeamlessSnapshot, SnapshotResult};
use seamless_snapshot_tests::{BASE_IMAGE, Rig, check_cmd, wait_until};
use serde_json::Value;

const PUSH_TIMEOUT: Duration = Duration::from_secs(300);
/// Made by `tests/rig/variant-image.sh`: the base plus one layer.
const DERIVED: &str = "seamless.test/variant:derived";
/// Made by `tests/rig/variant-image.sh`: an index of the host platform
/// (`DERIVED`) and another one (the base's layers).
const MULTI: &str = "seamless.test/variant:multi";
/// Writes a file of its own, then idles.
const SCRIPT: &str = "mkdir -p /data && echo mine > /data/mine && while true; do sleep 1; done";

/// Builds the variant images from the base and imports them, every platform.
fn import_variants(rig: &Rig) {
    let tar = rig.tmp().join("variant.tar");
    check_cmd(
        std::process::Command::new(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("rig/variant-image.sh"),
        )
        .arg(&rig.env.base_tar)
        .arg(&tar),
    );
    let tar = tar.to_string_lossy().into_owned();
    rig.ctr(&[
        "images",
        "import",
        "--all-platforms",
        "--base-name",
        "seamless.test/variant",
        &tar,
    ]);
}

/// The digest an image name points at now.
fn target_of(rig: &Rig, name: &str) -> String {
    let out = rig.ctr(&["images", "ls"]);
    out.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&name)).then(|| f[2].to_string())
        })
        .unwrap_or_else(|| panic!("no image {name}: {out}"))
}

/// A JSON blob of containerd's content store.
fn content(rig: &Rig, digest: &str) -> Value {
    serde_json::from_str(&rig.ctr(&["content", "get", digest])).expect("JSON blob")
}

/// The layer descriptors of a manifest, as (mediaType, digest, size).
fn layers(manifest: &Value) -> Vec<(String, String, u64)> {
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            (
                l["mediaType"].as_str().unwrap().to_string(),
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Starts container `id` from `image` (with `ctr run` `flags`) and waits
/// for its file.
fn start(rig: &Rig, flags: &[&str], image: &str, id: &str) {
    rig.run_image_with(flags, image, id, &["sh", "-c", SCRIPT]);
    wait_until(Duration::from_secs(10), || {
        rig.rootfs(id).join("data/mine").exists()
    })
    .expect("the container did not write its file");
}

/// The parent of a container's snapshot, as `ctr` shows it.
fn snapshot_parent(rig: &Rig, id: &str) -> String {
    let info = rig.ctr(&["snapshots", "--snapshotter", "overlayfs", "info", id]);
    let info: Value = serde_json::from_str(&info).expect("snapshot info JSON");
    info["Parent"].as_str().expect("Parent").to_string()
}

/// Commits `id` to a new target in the rig's registry and waits for the
/// push; returns the result and the target.
fn commit(rig: &Rig, id: &str) -> seamless_snapshot::Result<(SnapshotResult, String)> {
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let target = rig.target(id, "1");
    let r = snap.commit_with_wait(id, &target, PUSH_TIMEOUT)?;
    Ok((r, target))
}

/// Checks that the pushed `target` is `base_manifest`'s layers plus one,
/// recorded as based on `base_digest`, and holds the container's file and
/// none of the derived image's.
fn check_pushed(rig: &Rig, target: &str, base_manifest: &Value, base_digest: &str) {
    let pushed = rig.inspect_raw(target);
    let base_layers = layers(base_manifest);
    let pushed_layers = layers(&pushed);
    assert_eq!(
        pushed_layers.len(),
        base_layers.len() + 1,
        "{pushed_layers:?}"
    );
    assert_eq!(pushed_layers[..base_layers.len()], base_layers[..]);
    assert_eq!(
        pushed["annotations"]["org.opencontainers.image.base.digest"],
        base_digest
    );
    let rootfs = rig.pull_unpack(target);
    assert_eq!(
        fs::read_to_string(rootfs.join("data/mine")).unwrap(),
        "mine\n"
    );
    assert!(rootfs.join("base/keep/file").exists());
    assert!(
        !rootfs.join("variant/derived").exists(),
        "the derived image's layer is in the image"
    );
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn commit_after_the_base_name_moved() {
    let rig = Rig::new();
    let base_digest = target_of(&rig, BASE_IMAGE);
    let base_manifest = content(&rig, &base_digest);
    import_variants(&rig);
    start(&rig, &[], BASE_IMAGE, "retag");

    // The original stays under a second name (as CRI keeps a digest
    // reference of every image); its own name now points elsewhere.
    rig.ctr(&["images", "tag", BASE_IMAGE, "seamless.test/original:kept"]);
    rig.ctr(&["images", "tag", "--force", DERIVED, BASE_IMAGE]);
    assert_eq!(target_of(&rig, BASE_IMAGE), target_of(&rig, DERIVED));

    let (r, target) = commit(&rig, "retag").unwrap();
    assert_eq!(r.base_image, "seamless.test/original:kept");
    check_pushed(&rig, &target, &base_manifest, &base_digest);
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn commit_of_a_non_host_platform() {
    let rig = Rig::new();
    import_variants(&rig);
    // The index's manifest that is not the host's has the base's layers.
    let index = content(&rig, &target_of(&rig, MULTI));
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let other = &entries[1];
    let other_arch = other["platform"]["architecture"].as_str().unwrap();
    let other_digest = other["digest"].as_str().unwrap();
    let other_manifest = content(&rig, other_digest);
    assert_eq!(
        layers(&other_manifest),
        layers(&content(&rig, &target_of(&rig, BASE_IMAGE)))
    );
    let platform = format!("linux/{other_arch}");
    start(&rig, &["--platform", &platform], MULTI, "foreign");

    let (r, target) = commit(&rig, "foreign").unwrap();
    assert_eq!(r.base_image, MULTI);
    check_pushed(&rig, &target, &other_manifest, other_digest);
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn commit_of_a_user_namespaced_container() {
    let rig = Rig::new();
    let base_digest = target_of(&rig, BASE_IMAGE);
    let base_manifest = content(&rig, &base_digest);
    // ctr stacks such a container on `<chain ID>-<uid>-<gid>`, a copy of the
    // image's layers with shifted owners.
    let map = ["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];
    start(&rig, &map, BASE_IMAGE, "userns");
    let parent = snapshot_parent(&rig, "userns");
    assert!(parent.ends_with("-100000-100000"), "{parent}");

    let (r, target) = commit(&rig, "userns").unwrap();
    assert_eq!(r.base_image, BASE_IMAGE);
    check_pushed(&rig, &target, &base_manifest, &base_digest);
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn commit_fails_when_no_image_has_the_base() {
    let rig = Rig::new();
    let base_manifest = content(&rig, &target_of(&rig, BASE_IMAGE));
    let base_config = content(&rig, base_manifest["config"]["digest"].as_str().unwrap());
    import_variants(&rig);
    start(&rig, &[], BASE_IMAGE, "orphan");
    // containerd names the committed snapshot of the image's layers after
    // their chain ID (one layer: its diff ID), and that is the parent of
    // the container's snapshot.
    let parent = snapshot_parent(&rig, "orphan");
    assert_eq!(base_config["rootfs"]["diff_ids"][0], *parent);

    // Nothing has the original's layers any more (containerd then collects
    // its manifest and config; `MULTI` has them for its other platform):
    // its name is another image's.
    rig.ctr(&["images", "rm", MULTI]);
    rig.ctr(&["images", "tag", "--force", DERIVED, BASE_IMAGE]);
    let derived = target_of(&rig, DERIVED);

    let e = commit(&rig, "orphan").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidImage, "{e}");
    let msg = e.to_string();
    for part in ["container orphan", BASE_IMAGE, &parent, &derived, rig.ns()] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
    eprintln!("{msg}");

    // Nothing frozen, nothing recorded, nothing left behind.
    assert_eq!(rig.task_status("orphan").as_deref(), Some("RUNNING"));
    assert!(!rig.cgroup("orphan").is_frozen());
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    assert!(snap.list().unwrap().is_empty());
    let leftovers = rig.state_dir_files();
    assert!(leftovers.is_empty(), "left in the state dir: {leftovers:?}");
}
