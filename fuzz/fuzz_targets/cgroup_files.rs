//! Cgroup inputs: `/proc/<pid>/cgroup` (a container's and our own) with
//! mountinfo, the OCI `cgroupsPath` (and the spec JSON holding it),
//! `cgroup.events` and `freezer.state`. Never a panic; a freezer directory
//! found is never a root cgroup nor one holding us, and never climbs out
//! with `..`; the container's cgroup is always init's or an ancestor.
#![no_main]

use std::path::{Component, Path};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use seamless_snapshot::fuzzing;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    target: &'a str,
    own: &'a str,
    mountinfo: &'a [u8],
    cgroups_path: Option<&'a str>,
    init_cg: &'a str,
    events: &'a [u8],
    state: &'a [u8],
    spec: &'a [u8],
}

fn check_pick(cgroup: &Option<String>, dir: &Option<std::path::PathBuf>, own: Option<&str>) {
    let Some(cg) = cgroup else {
        assert!(dir.is_none());
        return;
    };
    let dir = dir.as_ref().expect("a cgroup without its directory");
    assert!(
        !Path::new(cg).components().all(|c| c == Component::RootDir),
        "root cgroup {cg:?} picked"
    );
    if let Some(own) = own {
        assert!(
            !Path::new(own).starts_with(cg),
            "cgroup {cg:?} holds our own {own:?}"
        );
    }
    assert!(
        !dir.components().any(|c| c == Component::ParentDir),
        "directory {dir:?} climbs with .."
    );
}

fuzz_target!(|input: Input<'_>| {
    let (lines, v2, v1) = fuzzing::proc_cgroup(input.target);
    for (_, _, path) in &lines {
        assert!(!path.contains('\n'));
    }
    let (_, own_v2, own_v1) = fuzzing::proc_cgroup(input.own);
    let (d2, d1, c2, c1, _) = fuzzing::freezer_dirs(input.target, input.own, input.mountinfo);
    check_pick(&c2, &d2, own_v2.as_deref());
    check_pick(&c1, &d1, own_v1.as_deref());
    if let Some(c) = &c2 {
        assert_eq!(Some(c), v2.as_ref());
    }
    if let Some(c) = &c1 {
        assert_eq!(Some(c), v1.as_ref());
    }

    if let Ok(c) = fuzzing::container_cgroup(input.cgroups_path, input.init_cg) {
        assert!(
            Path::new(input.init_cg).starts_with(&c),
            "container cgroup {c:?} is not init's {:?} or above it",
            input.init_cg
        );
    }
    if let Ok(Some(p)) = fuzzing::spec_cgroups_path(input.spec) {
        assert!(!p.is_empty());
        let _ = fuzzing::container_cgroup(Some(&p), input.init_cg);
    }
    let _ = fuzzing::cgroup_events_frozen(input.events);
    if let Some(s) = fuzzing::freezer_state(input.state) {
        assert!(matches!(s.as_str(), "Thawed" | "Freezing" | "Frozen"));
    }
});
