//! Which extended attributes a pushed layer carries (issue 8, item 5): the
//! portable ones by default, host-specific ones only when asked for, and
//! `user.overlay.*` as the container's own data on a mount without
//! `userxattr` (the rig's, and containerd's default when run as root).

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::time::Duration;

use seamless_snapshot::{CommitOptions, Compression, ContainerdSnapshotter};
use seamless_snapshot_tests::{Rig, check_cmd, set_xattr};

const PUSH_TIMEOUT: Duration = Duration::from_secs(300);

/// The top layer blob of the pushed image `<registry>/<repo>:<tag>`, as
/// the registry serves it.
fn top_layer_blob(rig: &Rig, repo: &str, tag: &str) -> Vec<u8> {
    let manifest = rig.inspect_raw(&format!("{}/{repo}:{tag}", rig.registry()));
    let top = manifest["layers"]
        .as_array()
        .and_then(|l| l.last())
        .expect("a layer");
    assert_eq!(
        top["mediaType"], "application/vnd.oci.image.layer.v1.tar",
        "an uncompressed layer"
    );
    let digest = top["digest"].as_str().expect("digest");
    let out = rig.new_dir("blob").join("layer.tar");
    check_cmd(
        Command::new("curl")
            .args(["-sSf", "-o"])
            .arg(&out)
            .arg(format!(
                "http://{}/v2/{repo}/blobs/{digest}",
                rig.registry()
            )),
    );
    fs::read(&out).unwrap()
}

fn octal(field: &[u8]) -> usize {
    let s = String::from_utf8_lossy(field);
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    usize::from_str_radix(s, 8).unwrap_or_else(|e| panic!("octal field {s:?}: {e}"))
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The PAX records (`LEN KEY=VALUE\n`) of an extended header.
fn pax_records(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(sp) = data.iter().position(|b| *b == b' ') {
        let len: usize = String::from_utf8_lossy(&data[..sp])
            .parse()
            .expect("PAX length");
        let rec = &data[sp + 1..len - 1];
        let eq = rec.iter().position(|b| *b == b'=').expect("PAX '='");
        out.push((
            String::from_utf8_lossy(&rec[..eq]).into_owned(),
            rec[eq + 1..].to_vec(),
        ));
        data = &data[len..];
    }
    out
}

/// Every entry of an uncompressed tar, by path, with its xattrs (the
/// `SCHILY.xattr.*` records of its PAX header).
fn tar_xattrs(tar: &[u8]) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut pax = Vec::new();
    let mut off = 0;
    while off + 512 <= tar.len() && tar[off..off + 512].iter().any(|b| *b != 0) {
        let h = &tar[off..off + 512];
        let size = octal(&h[124..136]);
        let data = &tar[off + 512..off + 512 + size];
        off += 512 + size.div_ceil(512) * 512;
        if h[156] == b'x' {
            pax = pax_records(data);
            continue;
        }
        let (prefix, name) = (cstr(&h[345..500]), cstr(&h[..100]));
        let mut path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let mut xattrs = BTreeMap::new();
        for (k, v) in pax.drain(..) {
            if k == "path" {
                path = String::from_utf8_lossy(&v).into_owned();
            } else if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                xattrs.insert(x.to_string(), v);
            }
        }
        out.insert(path, xattrs);
    }
    out
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
    top_layer_blob(rig, &format!("{}/{id}", rig.ns()), tag)
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
