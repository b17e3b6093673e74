//! Never freezing more than the container (issue 8, item 8): the freezer
//! climbs from its init's cgroup to the cgroup holding all its processes,
//! but never above the container's own cgroup (its OCI `cgroupsPath`), which
//! is where other workloads begin. A container process moved elsewhere makes
//! the commit refused, with nothing frozen; processes in a sub-cgroup of the
//! container's (systemd's `init.scope`) are committed as usual.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use seamless_snapshot::{ContainerdSnapshotter, ErrorKind, SeamlessSnapshot};
use seamless_snapshot_tests::{CgroupFiles, Rig, wait_until};

/// The freezer cgroup directories (v2 and v1 freezer) of `files`, with
/// `name` appended.
fn dirs(files: &CgroupFiles, f: impl Fn(&Path) -> PathBuf) -> Vec<PathBuf> {
    files
        .v2
        .iter()
        .chain(files.v1.iter())
        .map(|d| f(d))
        .collect()
}

/// Moves process `pid` into each of `dirs` (created if needed).
fn move_to(pid: u32, dirs: &[PathBuf]) {
    for d in dirs {
        if !d.exists() {
            fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        fs::write(d.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", d.display()));
    }
}

/// Removes the (emptied) cgroup directories `dirs`.
fn remove(dirs: &[PathBuf]) {
    for d in dirs {
        wait_until(Duration::from_secs(10), || fs::remove_dir(d).is_ok())
            .unwrap_or_else(|_| panic!("cannot remove {}", d.display()));
    }
}

/// Starts `sleep 1000` inside container `id`; returns its host pid.
fn start_sleeper(rig: &Rig, id: &str) -> u32 {
    rig.exec_detached(id, &["sleep", "1000"]);
    let files = rig.cgroup(id);
    let dir = files.v2.or(files.v1).expect("a freezer cgroup");
    let mut found = None;
    wait_until(Duration::from_secs(10), || {
        found = fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .find(|p| {
                fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == b"sleep\x001000\x00")
            });
        found.is_some()
    })
    .expect("the sleeper did not start");
    found.unwrap()
}

/// Whether any freezer of `dirs` is frozen or freezing.
fn any_frozen(dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|d| {
        let v1 = fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() != "THAWED");
        let v2 = fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1");
        v1 || v2
    })
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn a_process_moved_out_of_the_container_cgroup_is_refused_with_nothing_frozen() {
    let rig = Rig::new();
    rig.start_counter("escaper");
    // Another workload beside it, under the same parent cgroup (the
    // namespace's): the one a climb above the container would freeze.
    rig.start_counter("neighbour");
    let own = rig.cgroup("escaper");
    let parents = dirs(&own, |d| d.parent().unwrap().to_path_buf());
    let elsewhere = dirs(&own, |d| d.parent().unwrap().join("elsewhere"));
    let neighbour = rig.cgroup("neighbour");
    let all = || {
        let mut v = dirs(&own, Path::to_path_buf);
        v.extend(dirs(&neighbour, Path::to_path_buf));
        v.extend(parents.iter().cloned());
        v.extend(elsewhere.iter().cloned());
        v
    };
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();

    // One of its processes moved out, beside the container.
    let sleeper = start_sleeper(&rig, "escaper");
    move_to(sleeper, &elsewhere);
    let moved_child = snap.commit("escaper", &rig.target("escaper", "1"));
    let frozen_after_child = any_frozen(&all());

    // Its init moved out.
    let init = rig.task_pid("escaper").unwrap();
    move_to(init, &elsewhere);
    let moved_init = snap.commit("escaper", &rig.target("escaper", "2"));
    let frozen_after_init = any_frozen(&all());

    // Back home, and the moved sleeper gone.
    move_to(init, &dirs(&own, Path::to_path_buf));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sleeper as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_until(Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{sleeper}")).exists()
    })
    .expect("the sleeper does not die");
    remove(&elsewhere);

    for (what, r) in [("a child", moved_child), ("init", moved_init)] {
        let e = match r {
            Ok(r) => panic!(
                "{what} moved out: committed (pause {:?}), freezing more than the container",
                r.pause_time
            ),
            Err(e) => e,
        };
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{what} moved out: {e}");
        assert!(
            e.to_string().contains("cgroupsPath"),
            "{what} moved out: {e}"
        );
    }
    assert!(!frozen_after_child, "a cgroup was left frozen");
    assert!(!frozen_after_init, "a cgroup was left frozen");
    assert!(snap.list().unwrap().is_empty(), "a job was started");
    rig.assert_counting("escaper");
    rig.assert_counting("neighbour");

    // With every process home again, it commits.
    let r = snap
        .commit_with_wait(
            "escaper",
            &rig.target("escaper", "3"),
            Duration::from_secs(120),
        )
        .unwrap();
    assert!(r.manifest_digest.is_some());
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn processes_in_a_sub_cgroup_of_the_container_are_committed() {
    let rig = Rig::new();
    rig.start_counter("nested");
    let own = rig.cgroup("nested");
    let scope = dirs(&own, |d| d.join("init.scope"));
    let sleeper = start_sleeper(&rig, "nested");
    // Like systemd in a container: init in `init.scope`, the rest beside it.
    let init = rig.task_pid("nested").unwrap();
    move_to(init, &scope);
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let r = snap.commit_with_wait(
        "nested",
        &rig.target("nested", "1"),
        Duration::from_secs(120),
    );
    let frozen = any_frozen(&dirs(&own, Path::to_path_buf)) || any_frozen(&scope);

    move_to(init, &dirs(&own, Path::to_path_buf));
    remove(&scope);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sleeper as i32),
        nix::sys::signal::Signal::SIGKILL,
    );

    let r = r.unwrap();
    assert!(r.manifest_digest.is_some());
    assert!(!frozen, "left frozen");
    rig.assert_counting("nested");
}
