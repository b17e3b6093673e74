//! Integration tests of the `seamless-snapshot` CLI against the rig.

use std::time::{Duration, Instant};

use seamless_snapshot::{ContainerdSnapshotter, ErrorKind, SeamlessSnapshot};
use seamless_snapshot_tests::{Rig, check_cmd, run_cmd, wait_until};

const HOLD_FROZEN: &str = "SEAMLESS_FAULT_HOLD_FROZEN_MS";

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn sigkill_in_frozen_window_thaws() {
    let rig = Rig::new();
    rig.start_counter("victim");
    let cgroup = rig.cgroup("victim");
    let target = rig.target("killed", "1");
    let mut child = rig.spawn_commit("victim", &target, Some((HOLD_FROZEN, 30_000)));
    let pid = child.id();
    rig.wait_frozen_by(&cgroup, &mut child);
    // Frozen: kill the committer right there.
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();

    let thawed = wait_until(Duration::from_secs(3), || !cgroup.is_frozen());
    let after = killed_at.elapsed();
    if thawed.is_err() || after > Duration::from_secs(3) {
        cgroup.thaw();
        panic!("the container stayed frozen {after:?} after the committer was killed");
    }
    eprintln!("thawed within {after:?} of the SIGKILL");
    assert_eq!(rig.task_status("victim").as_deref(), Some("RUNNING"));
    rig.assert_counting("victim");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn commit_without_wait_completes_via_cli() {
    let rig = Rig::new();
    rig.start_counter("bg");
    let target = rig.target("bg", "1");

    let out =
        check_cmd(
            rig.cli()
                .args(["commit", "--container", "bg", "--target", &target, "--json"]),
        );
    let r: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("commit --json printed no JSON ({e}): {out}"));
    let id = r["snapshot_id"].as_str().expect("snapshot_id").to_string();
    let pause = r["pause_time"].as_f64().expect("pause_time in seconds");
    assert!((0.0..1.0).contains(&pause), "pause {pause}");
    assert!(!rig.cgroup("bg").is_frozen());

    let w = run_cmd(rig.cli().args(["wait", &id, "--timeout", "120s"]));
    assert!(
        w.status.success(),
        "wait failed: {}{}",
        String::from_utf8_lossy(&w.stdout),
        String::from_utf8_lossy(&w.stderr)
    );
    let st = check_cmd(rig.cli().args(["status", &id, "--json"]));
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["state"], "completed", "{st}");
    assert!(
        st["manifest_digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{st}"
    );
    let list = check_cmd(rig.cli().args(["list", "--json"]));
    assert!(list.contains(&id), "{list}");
    // The image is really there.
    let m = rig.inspect_raw(&target);
    assert!(m["layers"].as_array().is_some_and(|l| l.len() >= 2), "{m}");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn concurrent_commit_is_busy_and_a_foreign_freeze_is_left_alone() {
    let rig = Rig::new();
    rig.start_counter("guarded");
    let cgroup = rig.cgroup("guarded");

    // A first commit holds the container frozen for a while.
    let target = rig.target("guarded", "1");
    let mut first = rig.spawn_commit("guarded", &target, Some((HOLD_FROZEN, 3000)));
    rig.wait_frozen_by(&cgroup, &mut first);

    // A second commit of the same container is refused while it lasts (its
    // thaw would end the first one's window early), from the same state
    // directory and from another one alike.
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let err = snap
        .commit("guarded", &rig.target("guarded", "2"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    let mut elsewhere = rig.config();
    elsewhere.state_dir = rig.new_dir("other-state");
    let err = ContainerdSnapshotter::new(elsewhere)
        .unwrap()
        .commit("guarded", &rig.target("guarded", "2"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "another state dir: {err}");
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "first commit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!cgroup.is_frozen());

    // Someone else freezes the container: we refuse, and leave it frozen.
    cgroup.freeze();
    let err = snap
        .commit("guarded", &rig.target("guarded", "3"))
        .unwrap_err();
    let still_frozen = cgroup.is_frozen();
    cgroup.thaw();
    assert_eq!(err.kind(), ErrorKind::ContainerNotRunning, "{err}");
    assert!(still_frozen, "a foreign freeze was undone");
    rig.assert_counting("guarded");
}

/// The detached worker's start gate: a bare EOF on its standard input means
/// the committer died (or failed) before recording it as the job's worker,
/// so it must leave the job alone; one byte lets it run. (That the committer
/// writes the byte is what `commit_without_wait_completes_via_cli` relies
/// on.)
#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn a_worker_whose_gate_was_not_opened_leaves_the_job_alone() {
    use std::io::Write;
    use std::process::Stdio;

    let rig = Rig::new();
    let state = rig.state_dir();
    let state = state.to_str().expect("UTF-8 state dir");

    let closed = run_cmd(rig.cli().args(["worker", state, "no-such-job"]));
    let stderr = String::from_utf8_lossy(&closed.stderr);
    assert_eq!(closed.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("leaving it alone"), "{stderr}");

    let mut opened = rig
        .cli()
        .args(["worker", state, "no-such-job"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut gate = opened.stdin.take().unwrap();
    gate.write_all(b"1").unwrap();
    drop(gate);
    let out = opened.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Past the gate, the job itself is looked up (and is not there).
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("leaving it alone"), "{stderr}");
    assert!(stderr.contains("no-such-job"), "{stderr}");
}
