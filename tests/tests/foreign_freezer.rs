//! Someone else touching the container's freezer around a commit (issue 8,
//! item 2): a pause made during the pre-copy is left in place and the commit
//! refused; a thaw from outside inside the frozen window discards the
//! capture. Committers with different state directories excluding each
//! other: `cli.rs`, `concurrent_commit_is_busy_and_a_foreign_freeze_is_left_alone`.

use std::time::Duration;

use seamless_snapshot::{ContainerdSnapshotter, ErrorKind, SeamlessSnapshot};
use seamless_snapshot_tests::{Rig, run_cmd, wait_until};

const HOLD_FROZEN: &str = "SEAMLESS_FAULT_HOLD_FROZEN_MS";
const HOLD_BEFORE_FREEZE: &str = "SEAMLESS_FAULT_HOLD_BEFORE_FREEZE_MS";

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn a_thaw_from_outside_inside_the_window_discards_the_capture() {
    let rig = Rig::new();
    rig.start_counter("thawed");
    let cgroup = rig.cgroup("thawed");
    let target = rig.target("thawed", "1");
    let mut child = rig.spawn_commit("thawed", &target, Some((HOLD_FROZEN, 3000)));
    rig.wait_frozen_by(&cgroup, &mut child);

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
    rig.assert_counting("thawed");

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
    assert_eq!(rig.leftover_captures(), Vec::<std::path::PathBuf>::new());
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
    rig.start_counter("paused");
    let cgroup = rig.cgroup("paused");
    let target = rig.target("paused", "1");
    let mut child = rig.spawn_commit("paused", &target, Some((HOLD_BEFORE_FREEZE, 3000)));
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
    assert_eq!(rig.leftover_captures(), Vec::<std::path::PathBuf>::new());
    rig.assert_counting("paused");
}
