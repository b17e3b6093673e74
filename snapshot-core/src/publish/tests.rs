use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;
use crate::image::OCI_MANIFEST;

fn invalid(s: &str) -> String {
    match Target::parse(s) {
        Err(Error::InvalidReference { reference, reason }) => {
            assert_eq!(reference, s);
            reason
        }
        other => panic!("{s}: expected InvalidReference, got {other:?}"),
    }
}

#[test]
fn registry_references_stay_registry_targets() {
    assert_eq!(
        Target::parse("127.0.0.1:5000/a/b:v1").unwrap(),
        Target::Registry {
            reference: "127.0.0.1:5000/a/b:v1".into()
        }
    );
    // Not a known prefix: still the registry grammar's to reject.
    invalid("localhost:5000");
    invalid("example.com/Upper");
}

#[test]
fn oci_layouts() {
    assert_eq!(
        Target::parse("oci:/tmp/layout:v1").unwrap(),
        Target::OciLayout {
            dir: PathBuf::from("/tmp/layout"),
            tag: "v1".into()
        }
    );
    assert_eq!(
        Target::parse("oci:/tmp/layout").unwrap(),
        Target::OciLayout {
            dir: PathBuf::from("/tmp/layout"),
            tag: DEFAULT_TAG.into()
        }
    );
    // Split at the first colon, as skopeo does: the rest is the ref name.
    assert_eq!(
        Target::parse("oci:/x:a/b:c").unwrap(),
        Target::OciLayout {
            dir: PathBuf::from("/x"),
            tag: "a/b:c".into()
        }
    );
    // A relative path is made absolute now, not in the worker.
    let Target::OciLayout { dir, .. } = Target::parse("oci:rel/dir:t").unwrap() else {
        panic!("not a layout");
    };
    assert_eq!(dir, std::env::current_dir().unwrap().join("rel/dir"));
    for bad in [
        "oci:",
        "oci::tag",
        "oci:/x:",
        "oci:/x:bad tag",
        "oci:/x:-lead",
        "oci:/x:a..b/",
        "oci:/x\n:t",
    ] {
        invalid(bad);
    }
}

#[test]
fn oci_archives() {
    assert_eq!(
        Target::parse("oci-archive:/tmp/a.tar").unwrap(),
        Target::OciArchive {
            file: PathBuf::from("/tmp/a.tar"),
            tag: DEFAULT_TAG.into()
        }
    );
    assert_eq!(
        Target::parse("oci-archive:/tmp/a.tar:v2").unwrap(),
        Target::OciArchive {
            file: PathBuf::from("/tmp/a.tar"),
            tag: "v2".into()
        }
    );
    for bad in [
        "oci-archive:",
        "oci-archive:/tmp/dir/",
        "oci-archive:/",
        "oci-archive:/a.tar:b c",
    ] {
        invalid(bad);
    }
}

#[test]
fn containerd_names() {
    assert_eq!(
        Target::parse("containerd:app").unwrap(),
        Target::Containerd {
            name: "docker.io/library/app:latest".into()
        }
    );
    assert_eq!(
        Target::parse("containerd:localhost/snap/app:v1").unwrap(),
        Target::Containerd {
            name: "localhost/snap/app:v1".into()
        }
    );
    for bad in [
        "containerd:",
        "containerd:Bad Name",
        "containerd:app:-tag",
        "containerd:localhost:5000",
        "containerd:app@sha256:0123456789012345678901234567890123456789012345678901234567890123",
    ] {
        invalid(bad);
    }
}

#[test]
fn ref_names() {
    for ok in ["latest", "v1.0", "a/b", "a--b", "x:y@z+w", "1"] {
        assert!(valid_ref_name(ok), "{ok}");
    }
    for bad in ["", "-a", "a-", "a//b", "/a", "a b", "a---b", "ä"] {
        assert!(!valid_ref_name(bad), "{bad}");
    }
}

#[test]
fn targets_round_trip_through_the_job_spec() {
    for s in [
        "oci:/l:t",
        "oci-archive:/a.tar",
        "containerd:app",
        "localhost/x:y",
    ] {
        let t = Target::parse(s).unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), t, "{json}");
    }
}

fn desc(digest: &str) -> Descriptor {
    Descriptor {
        media_type: OCI_MANIFEST.into(),
        digest: digest.into(),
        size: 7,
    }
}

#[test]
fn index_keeps_other_tags_and_replaces_the_same() {
    use super::oci_layout::{REF_NAME, updated_index as updated};
    let one = updated(None, &desc("sha256:aa"), "one").unwrap();
    let two = updated(Some(&one), &desc("sha256:bb"), "two").unwrap();
    let again = updated(Some(&two), &desc("sha256:cc"), "one").unwrap();
    let v: Value = serde_json::from_slice(&again).unwrap();
    assert_eq!(v["schemaVersion"], 2);
    let m = v["manifests"].as_array().unwrap();
    let names: Vec<(&str, &str)> = m
        .iter()
        .map(|d| {
            (
                d["annotations"][REF_NAME].as_str().unwrap(),
                d["digest"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, vec![("two", "sha256:bb"), ("one", "sha256:cc")]);
    // Foreign entries (untagged, other fields) survive untouched.
    let foreign = json!({"schemaVersion": 2, "manifests": [{"digest": "sha256:dd", "size": 1, "mediaType": OCI_MANIFEST, "platform": {"os": "linux"}}], "annotations": {"k": "v"}});
    let out = updated(
        Some(&serde_json::to_vec(&foreign).unwrap()),
        &desc("sha256:ee"),
        "t",
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["annotations"]["k"], "v");
    assert_eq!(v["manifests"][0], foreign["manifests"][0]);
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
    assert!(updated(Some(b"[]"), &desc("sha256:ee"), "t").is_err());
    assert!(updated(Some(b"{\"manifests\": 3}"), &desc("sha256:ee"), "t").is_err());
}
