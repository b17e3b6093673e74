//! Which extended attributes a pushed layer carries (issue 8, item 5): the
//! portable ones by default, host-specific ones only when asked for, and
//! `user.overlay.*` as the container's own data on a mount without
//! `userxattr` (the rig's, and containerd's default when run as root).

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use seamless_snapshot::{CommitOptions, Compression, ContainerdSnapshotter};
use seamless_snapshot_tests::layer_tar::{tar_entries, top_layer_tar};
use seamless_snapshot_tests::{Rig, set_xattr};

const PUSH_TIMEOUT: Duration = Duration::from_secs(300);

/// Every entry of an uncompressed tar with its xattrs, by path.
fn tar_xattrs(tar: &[u8]) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    tar_entries(tar)
        .into_iter()
        .map(|(path, e)| (path, e.xattrs))
        .collect()
}

/// The xattr names of entry `path`.
fn names(entries: &BTreeMap<String, BTreeMap<String, Vec<u8>>>, path: &str) -> Vec<String> {
    entries
        .get(path)
        .unwrap_or_else(|| panic!("no {path} in {:?}", entries.keys()))
        .keys()
        .cloned()
        .collect()
}

fn commit_layer(rig: &Rig, id: &str, tag: &str, extra_xattrs: &[&str]) -> Vec<u8> {
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let target = rig.target(id, tag);
    let options = CommitOptions {
        compression: Compression::None,
        extra_xattrs: extra_xattrs.iter().map(|s| s.to_string()).collect(),
        ..CommitOptions::default()
    };
    let r = snap
        .commit_with(id, &target, &options, Some(PUSH_TIMEOUT))
        .unwrap();
    assert!(r.manifest_digest.is_some());
    top_layer_tar(rig, &format!("{}/{id}", rig.ns()), tag)
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn default_and_opted_in_xattrs() {
    let rig = Rig::new();
    rig.run_container("xattrs", "sleep 100000");
    rig.exec(
        "xattrs",
        "mkdir -p /data/d && echo hello > /data/f && echo in > /data/d/inner",
    );
    // The rig mounts without userxattr: overlay's own xattrs are trusted.*.
    let merged = rig.rootfs("xattrs");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.contains(&format!(" {} ", merged.display())))
        .expect("the container's overlay mount");
    assert!(
        line.contains("upperdir=") && !line.contains("userxattr"),
        "{line}"
    );

    // Set from the host through the container's view (busybox has no
    // setfattr; trusted.* needs CAP_SYS_ADMIN).
    let f = merged.join("data/f");
    set_xattr(&f, "user.foo", b"1");
    set_xattr(&f, "trusted.foo", b"host-specific");
    set_xattr(&f, "user.overlay.foo", b"the container's own");
    set_xattr(&merged.join("data/d"), "user.overlay.opaque", b"y");

    let tar = commit_layer(&rig, "xattrs", "default", &[]);
    let entries = tar_xattrs(&tar);
    assert_eq!(names(&entries, "data/f"), ["user.foo", "user.overlay.foo"]);
    assert_eq!(
        entries["data/f"]["user.overlay.foo"],
        b"the container's own".to_vec()
    );
    // Not opaque: on this mount user.overlay.opaque is only data.
    assert_eq!(names(&entries, "data/d/"), ["user.overlay.opaque"]);
    assert!(entries.contains_key("data/d/inner"));
    assert!(!entries.contains_key("data/d/.wh..wh..opq"), "{entries:?}");

    let tar = commit_layer(&rig, "xattrs", "trusted", &["trusted."]);
    let entries = tar_xattrs(&tar);
    assert_eq!(
        names(&entries, "data/f"),
        ["trusted.foo", "user.foo", "user.overlay.foo"]
    );
    assert_eq!(entries["data/f"]["trusted.foo"], b"host-specific".to_vec());
    // Overlay's own stay out whatever is opted in.
    assert!(
        entries
            .values()
            .flat_map(|x| x.keys())
            .all(|k| !k.starts_with("trusted.overlay.")),
        "{entries:?}"
    );
}
