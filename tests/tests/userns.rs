//! User-namespaced containers (issue 8, item 12): a container run with
//! `ctr run --uidmap 0:100000:65536 --gidmap 0:100000:65536` (containerd
//! 1.6's ctr chowns a copy of the image's snapshot by the shift) has its
//! files owned by host IDs 100000 and up; the pushed layer must carry the
//! owners the container sees (0, 1000), in tar headers, POSIX ACLs and file
//! capabilities alike, built by the CLI's detached worker from the job's
//! persisted maps. The commit itself (freeze, capture, base lookup through
//! the remapped snapshot) must work as for any container.

use std::fs;

use seamless_snapshot_tests::layer_tar::{TarEntry, tar_entries, top_layer_tar};
use seamless_snapshot_tests::{BASE_IMAGE, Rig, check_cmd, entry, set_xattr};

/// The container's root is host 100000, its uid 1000 host 101000.
const SHIFT: u32 = 100_000;
const MAPS: [&str; 4] = ["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];

/// A POSIX ACL xattr: owner rw, named user `uid` r, owning group r, named
/// group `gid` r, mask r, others nothing.
fn acl(uid: u32, gid: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, uid),
        (0x04, 4, u32::MAX),
        (0x08, 4, gid),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// `security.capability` granting CAP_NET_RAW (effective): v3 with root
/// `rootid`, or v2 without.
fn cap(rootid: Option<u32>) -> Vec<u8> {
    let revision: u32 = if rootid.is_some() { 3 } else { 2 };
    let mut v = ((revision << 24) | 1).to_le_bytes().to_vec();
    v.extend_from_slice(&(1u32 << 13).to_le_bytes());
    v.extend_from_slice(&[0u8; 12]);
    if let Some(r) = rootid {
        v.extend_from_slice(&r.to_le_bytes());
    }
    v
}

/// Commits container `id` to `<registry>/<ns>/<id>:t` with the CLI, an
/// uncompressed layer, and waits for the push: the target and the `--json`
/// result.
fn commit_uncompressed(rig: &Rig, id: &str) -> (String, serde_json::Value) {
    let target = rig.target(id, "t");
    let out = check_cmd(rig.cli().args([
        "commit",
        "--container",
        id,
        "--target",
        &target,
        "--compression",
        "none",
        "--wait",
        "--timeout",
        "300s",
        "--json",
    ]));
    let result: serde_json::Value = serde_json::from_str(&out).expect("commit JSON");
    assert!(result["manifest_digest"].is_string(), "{result}");
    (target, result)
}

/// The persisted job spec of the commit whose `--json` result is `result`.
fn job_spec(rig: &Rig, result: &serde_json::Value) -> serde_json::Value {
    let id = result["snapshot_id"].as_str().expect("snapshot_id");
    let path = rig.state_dir().join("jobs").join(id).join("job.json");
    serde_json::from_slice(&fs::read(&path).unwrap()).expect("job JSON")
}

fn owner(entries: &std::collections::BTreeMap<String, TarEntry>, path: &str) -> (u64, u64) {
    let e = entries
        .get(path)
        .unwrap_or_else(|| panic!("no {path} in {:?}", entries.keys()));
    (e.uid, e.gid)
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn layer_owners_are_the_containers_not_the_hosts() {
    let rig = Rig::new();
    let id = "userns";
    rig.run_image_with(&MAPS, BASE_IMAGE, id, &["sh", "-c", "sleep 100000"]);
    let pid = rig.task_pid(id).expect("a running task");
    let uid_map = fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"],
        "the container runs in a user namespace"
    );
    // Owned by root and by 1000 as the container sees them; a base file
    // modified (copied up from ctr's chowned copy of the image) and one
    // deleted.
    let seen = rig.exec(
        id,
        "mkdir -p /data && echo r > /data/root && echo u > /data/user \
         && mkdir /data/home && echo h > /data/home/file \
         && ln -s user /data/link && chown -R 1000:1000 /data/home /data/user \
         && chown -h 1000:1000 /data/link && echo acl > /data/acl && echo p > /data/ping \
         && echo more >> /base/file-to-modify && rm /base/file-to-delete \
         && stat -c %u:%g /data/user",
    );
    assert_eq!(seen.trim(), "1000:1000");
    let merged = rig.rootfs(id);
    assert_eq!(
        entry(&merged.join("data/user")).unwrap().uid,
        SHIFT + 1000,
        "on the host the container's files belong to the shifted IDs"
    );
    // busybox has neither setfacl nor setcap: set through the container's
    // view from the host, as the kernel stores them for a process inside
    // (host IDs; a v3 capability whose root is the namespace's).
    set_xattr(
        &merged.join("data/acl"),
        "system.posix_acl_access",
        &acl(SHIFT + 1000, SHIFT + 1000),
    );
    set_xattr(
        &merged.join("data/ping"),
        "security.capability",
        &cap(Some(SHIFT)),
    );

    // The CLI's detached worker builds the layer from the persisted job.
    let (target, result) = commit_uncompressed(&rig, id);
    // The maps went to the worker with the job.
    let spec = job_spec(&rig, &result);
    assert_eq!(
        spec["user_namespace"]["uid_map"],
        serde_json::json!([{"inside": 0, "outside": 100000, "count": 65536}]),
        "{spec}"
    );
    assert_eq!(rig.task_status(id).as_deref(), Some("RUNNING"));
    assert!(!rig.cgroup(id).is_frozen());

    let tar = top_layer_tar(&rig, &format!("{}/{id}", rig.ns()), "t");
    let entries = tar_entries(&tar);
    for (path, want) in [
        ("data/", (0, 0)),
        ("data/root", (0, 0)),
        ("data/user", (1000, 1000)),
        ("data/home/", (1000, 1000)),
        ("data/home/file", (1000, 1000)),
        ("data/link", (1000, 1000)),
        ("data/acl", (0, 0)),
        ("base/", (0, 0)),
        ("base/file-to-modify", (0, 0)),
    ] {
        assert_eq!(owner(&entries, path), want, "{path}");
    }
    assert!(entries.contains_key("base/.wh.file-to-delete"));
    let host_ids: Vec<_> = entries
        .iter()
        .filter(|(_, e)| e.uid >= u64::from(SHIFT) || e.gid >= u64::from(SHIFT))
        .collect();
    assert!(host_ids.is_empty(), "host IDs in the layer: {host_ids:?}");
    assert_eq!(
        entries["data/acl"].xattrs["system.posix_acl_access"],
        acl(1000, 1000)
    );
    // The namespace's root: the v2 form, as the container reads it.
    assert_eq!(
        entries["data/ping"].xattrs["security.capability"],
        cap(None)
    );

    // Pulled back and unpacked: the same owners on disk.
    let rootfs = rig.pull_unpack(&target);
    for (path, want) in [("data/root", 0), ("data/user", 1000), ("data/home", 1000)] {
        let e = entry(&rootfs.join(path)).unwrap();
        assert_eq!((e.uid, e.gid), (want, want), "{path}");
    }
    assert_eq!(
        fs::read_to_string(rootfs.join("base/file-to-modify"))
            .unwrap()
            .lines()
            .last(),
        Some("more")
    );

    // A later commit works as well.
    let out = check_cmd(rig.cli().args([
        "commit",
        "--container",
        id,
        "--target",
        &rig.target(id, "again"),
        "--wait",
    ]));
    assert!(out.contains("pushed"), "{out}");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn without_a_user_namespace_nothing_is_mapped() {
    let rig = Rig::new();
    let id = "plain";
    rig.run_container(id, "sleep 100000");
    rig.exec(id, "echo u > /data/user && chown 1000:1000 /data/user");
    let (_, result) = commit_uncompressed(&rig, id);
    // No maps in the job: the layer is built exactly as before.
    let spec = job_spec(&rig, &result);
    assert!(spec.get("user_namespace").is_none(), "{spec}");
    let entries = tar_entries(&top_layer_tar(&rig, &format!("{}/{id}", rig.ns()), "t"));
    assert_eq!(owner(&entries, "data/user"), (1000, 1000));
}
