//! Someone else touching the container's freezer around a commit (issue 8,
//! item 2): a pause made during the pre-copy is left in place and the commit
//! refused; a thaw from outside inside the frozen window discards the
//! capture; committers with different state directories still exclude each
//! other.

use std::process::{Child, Stdio};
use std::time::Duration;

use seamless_snapshot::{ContainerdSnapshotter, ErrorKind, SeamlessSnapshot};
use seamless_snapshot_tests::{Rig, run_cmd, wait_until};

const WRITER: &str = "i=0; while true; do i=$((i+1)); echo $i > /data/counter; usleep 5000; done";

/// Starts a CLI commit of `id` with a debug-build fault hold (`var` = ms).
fn spawn_commit(rig: &Rig, id: &str, tag: &str, var: &str, ms: u64) -> Child {
    let mut cmd = rig.cli();
    cmd.args(["commit", "--container", id, "--target"])
        .arg(rig.target(id, tag))
        .arg("--json")
        .env(var, ms.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("spawn the CLI")
}

fn assert_runs(rig: &Rig, id: &str) {
    let before = rig.read_counter(id);
    wait_until(Duration::from_secs(10), || {
        rig.read_counter(id) > before + 5
    })
    .unwrap_or_else(|_| panic!("container {id} does not run"));
}

/// Capture directories of this test's jobs that still exist: inside the job
/// directories, or next to containerd's snapshots (where they go when the
/// state dir is on another filesystem).
fn leftover_captures(rig: &Rig) -> Vec<std::path::PathBuf> {
    let jobs = rig.state_dir().join("jobs");
    let Ok(entries) = std::fs::read_dir(&jobs) else {
        return Vec::new();
    };
    let beside = rig
        .env
        .root
        .join("io.containerd.snapshotter.v1.overlayfs/seamless-capture");
    entries
        .filter_map(|e| e.ok())
        .flat_map(|e| [e.path().join("capture"), beside.join(e.file_name())])
        .filter(|p| p.exists())
        .collect()
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn a_thaw_from_outside_inside_the_window_discards_the_capture() {
    let rig = Rig::new();
    rig.run_container("thawed", WRITER);
    wait_until(Duration::from_secs(10), || rig.read_counter("thawed") > 10).unwrap();
    let cgroup = rig.cgroup("thawed");

    let mut child = spawn_commit(&rig, "thawed", "1", "SEAMLESS_FAULT_HOLD_FROZEN_MS", 3000);
    wait_until(Duration::from_secs(60), || {
        cgroup.is_frozen() || child.try_wait().ok().flatten().is_some()
    })
    .expect("the commit never froze the container");
    assert!(child.try_wait().unwrap().is_none(), "the CLI exited early");

    // containerd's own resume refuses (its shim thinks the task runs);
    // whatever it does, a tool writing the freezer file directly (runc
    // resume on a pure cgroup v2 host) does thaw it.
    let ctr = run_cmd(&mut rig.ctr_cmd(&["task", "resume", "thawed"]));
    eprintln!(
        "ctr task resume inside the window: {} {}",
        ctr.status,
        String::from_utf8_lossy(&ctr.stderr).trim()
    );
    cgroup.thaw();
    assert_runs(&rig, "thawed");

    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a capture of a running container was kept: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("kind: freeze"), "{stderr}");
    assert!(stderr.contains("thawed by someone else"), "{stderr}");
    assert!(!cgroup.is_frozen());
    assert_eq!(leftover_captures(&rig), Vec::<std::path::PathBuf>::new());
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let failed: Vec<_> = snap.list().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        failed[0].error.as_ref().map(|e| e.kind),
        Some(ErrorKind::Freeze)
    );

    // A later commit works.
    let r = snap
        .commit_with_wait(
            "thawed",
            &rig.target("thawed", "2"),
            Duration::from_secs(120),
        )
        .unwrap();
    assert!(r.manifest_digest.is_some());
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn a_pause_during_the_precopy_is_left_in_place() {
    let rig = Rig::new();
    rig.run_container("paused", WRITER);
    wait_until(Duration::from_secs(10), || rig.read_counter("paused") > 10).unwrap();
    let cgroup = rig.cgroup("paused");

    let mut child = spawn_commit(
        &rig,
        "paused",
        "1",
        "SEAMLESS_FAULT_HOLD_BEFORE_FREEZE_MS",
        3000,
    );
    // The job exists once the pre-copy has started; the pre-copy of this
    // small layer ends well within the hold.
    let jobs = rig.state_dir().join("jobs");
    wait_until(Duration::from_secs(60), || {
        std::fs::read_dir(&jobs).is_ok_and(|mut d| d.next().is_some())
            || child.try_wait().ok().flatten().is_some()
    })
    .expect("the commit never started capturing");
    std::thread::sleep(Duration::from_millis(500));
    rig.ctr(&["task", "pause", "paused"]);

    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let still_paused = rig.task_status("paused");
    let still_frozen = cgroup.is_frozen();
    rig.ctr(&["task", "resume", "paused"]);
    assert!(!out.status.success(), "committed a paused container");
    assert!(stderr.contains("kind: container_not_running"), "{stderr}");
    assert_eq!(still_paused.as_deref(), Some("PAUSED"));
    assert!(still_frozen, "the outside pause was undone");
    assert_eq!(leftover_captures(&rig), Vec::<std::path::PathBuf>::new());
    assert_runs(&rig, "paused");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn committers_with_different_state_dirs_exclude_each_other() {
    let rig = Rig::new();
    rig.run_container("shared", WRITER);
    wait_until(Duration::from_secs(10), || rig.read_counter("shared") > 10).unwrap();
    let cgroup = rig.cgroup("shared");

    let mut first = spawn_commit(&rig, "shared", "1", "SEAMLESS_FAULT_HOLD_FROZEN_MS", 3000);
    wait_until(Duration::from_secs(60), || {
        cgroup.is_frozen() || first.try_wait().ok().flatten().is_some()
    })
    .expect("the first commit never froze the container");

    let mut other = rig.config();
    other.state_dir = rig.new_dir("other-state");
    let snap = ContainerdSnapshotter::new(other).unwrap();
    let err = snap
        .commit("shared", &rig.target("shared", "2"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");

    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "first commit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!cgroup.is_frozen());
    assert_runs(&rig, "shared");
}
