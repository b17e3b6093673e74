//! The container exits, is killed, is deleted (or loses its snapshot), or
//! is paused during the pre-copy or during the background build (issue 8,
//! proof suite): a clear outcome in bounded time and nothing left frozen.
//!
//! During the pre-copy (held open by the debug-build hold at its start) the
//! commit fails with `container_not_running` saying what happened, its job
//! reads failed, and no capture is left. During the build (held before the
//! layer is built, in the detached worker) the capture is complete: the
//! snapshot completes, and the pushed image holds exactly the files the
//! container had. A pause during the build is left in place. A pause during
//! the pre-copy: `foreign_freezer.rs`.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use seamless_snapshot::{ErrorKind, SnapshotState, SnapshotStatus};
use seamless_snapshot_tests::{
    COUNTER, CompareOptions, Rig, check_cmd, compare_trees, wait_exit, wait_until,
};

const HOLD_PRECOPY: &str = "SEAMLESS_FAULT_HOLD_PRECOPY_MS";
const HOLD_BEFORE_BUILD: &str = "SEAMLESS_FAULT_HOLD_BEFORE_BUILD_MS";
/// Long enough for any of the actions below on a loaded machine.
const HOLD_MS: u64 = 5000;
/// A commit must end within this, hold included.
const BOUND: Duration = Duration::from_secs(90);
const ID: &str = "gone";

/// Files written once, then a counter; a SIGTERM makes it exit (status 3).
fn script() -> String {
    format!(
        "trap 'exit 3' TERM; mkdir -p /static/sub && \
         for i in 1 2 3 4 5; do head -c $((i * 5000)) /dev/urandom > /static/f$i; done && \
         echo hello > /static/sub/x && ln -s f1 /static/link; {COUNTER}"
    )
}

/// What happens to the container.
#[derive(Debug, Clone, Copy)]
enum Act {
    /// Its process exits by itself (on SIGTERM).
    Exit,
    /// `ctr task kill -s KILL`.
    Kill,
    /// Killed, its task and the container deleted (with its snapshot).
    Delete,
    /// Only its snapshot removed (`ctr snapshots rm`) under the running task.
    RemoveSnapshot,
    /// `ctr task pause`.
    Pause,
}

fn act(rig: &Rig, what: Act) {
    let stopped = |rig: &Rig| {
        wait_until(Duration::from_secs(20), || {
            rig.task_status(ID).as_deref() == Some("STOPPED")
        })
        .expect("the task never stopped");
    };
    match what {
        Act::Exit => {
            rig.ctr(&["task", "kill", "-s", "SIGTERM", ID]);
            stopped(rig);
        }
        Act::Kill => {
            rig.ctr(&["task", "kill", "-s", "SIGKILL", ID]);
            stopped(rig);
        }
        Act::Delete => {
            rig.ctr(&["task", "kill", "-s", "SIGKILL", ID]);
            stopped(rig);
            rig.ctr(&["task", "delete", ID]);
            rig.ctr(&["containers", "delete", ID]);
        }
        Act::RemoveSnapshot => {
            rig.ctr(&["snapshots", "--snapshotter", "overlayfs", "rm", ID]);
        }
        Act::Pause => {
            rig.ctr(&["task", "pause", ID]);
        }
    }
}

/// Starts the container, and `commit --wait --json` with the `hold`;
/// returns the child once its job is in `state`, and the container's files
/// as copied then.
fn commit_held(rig: &Rig, hold: &str, state: SnapshotState) -> (Child, std::path::PathBuf) {
    rig.run_container(ID, &script());
    wait_until(Duration::from_secs(10), || rig.read_counter(ID) > 10)
        .expect("the container does not count");
    let expected = rig.new_dir("expected").join("static");
    check_cmd(
        Command::new("cp")
            .arg("-a")
            .arg(rig.rootfs(ID).join("static"))
            .arg(&expected),
    );
    let mut child = rig
        .cli()
        .args(["commit", "--container", ID, "--target"])
        .arg(rig.target("gone", "1"))
        .args(["--wait", "--json"])
        .env(hold, HOLD_MS.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the CLI");
    let reached = wait_until(BOUND, || {
        rig.job_ids()
            .first()
            .is_some_and(|id| status(rig, id).state == state)
            || child.try_wait().ok().flatten().is_some()
    });
    assert!(
        reached.is_ok() && child.try_wait().ok().flatten().is_none(),
        "the commit never reached {state}"
    );
    (child, expected)
}

fn status(rig: &Rig, id: &str) -> SnapshotStatus {
    let out = check_cmd(rig.cli().args(["status", "--json", id]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON of {id}: {e}: {out}"))
}

/// Waits (bounded) for the CLI; `(success, stdout, stderr)`.
fn finish(mut child: Child) -> (bool, String, String) {
    let code = wait_exit(&mut child, BOUND, "the commit");
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (code.success(), out, err)
}

/// The container's cgroup, if it still exists, is not frozen.
fn not_frozen(rig: &Rig) {
    if let Some(pid) = rig.task_pid(ID) {
        let cg = seamless_snapshot_tests::CgroupFiles::of_pid(pid);
        assert!(!cg.is_frozen(), "the container was left frozen");
    }
}

fn during_precopy(what: Act, says: &str) {
    let rig = Rig::new();
    let (child, _) = commit_held(&rig, HOLD_PRECOPY, SnapshotState::Capturing);
    let cgroup = rig.cgroup(ID);
    act(&rig, what);
    let (ok, out, err) = finish(child);
    assert!(!ok, "{what:?} during the pre-copy, yet committed: {out}");
    assert!(err.contains("kind: container_not_running"), "{err}");
    assert!(err.contains(says), "{err}");
    assert!(
        !cgroup.is_frozen(),
        "the container's cgroup was left frozen"
    );
    not_frozen(&rig);
    let ids = rig.job_ids();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let s = status(&rig, &ids[0]);
    assert_eq!(s.state, SnapshotState::Failed);
    assert_eq!(
        s.error.map(|e| e.kind),
        Some(ErrorKind::ContainerNotRunning)
    );
    assert_eq!(rig.leftover_captures(), Vec::<std::path::PathBuf>::new());
    if matches!(what, Act::RemoveSnapshot) {
        // The task runs on, unfrozen, on what its mount still holds.
        rig.assert_counting(ID);
    }
}

fn during_build(what: Act) {
    let rig = Rig::new();
    let (child, expected) = commit_held(&rig, HOLD_BEFORE_BUILD, SnapshotState::Building);
    act(&rig, what);
    let (ok, out, err) = finish(child);
    assert!(ok, "{what:?} during the build failed the snapshot: {err}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("result JSON");
    assert!(r["manifest_digest"].is_string(), "{out}");
    let pulled = rig.pull_unpack(&rig.target("gone", "1"));
    let diffs = compare_trees(
        &expected,
        &pulled.join("static"),
        &CompareOptions::default(),
    );
    assert!(diffs.is_empty(), "{diffs:?}");
    assert_eq!(rig.leftover_captures(), Vec::<std::path::PathBuf>::new());
    if matches!(what, Act::Pause) {
        // Someone else's pause is theirs to undo.
        let paused = rig.task_status(ID);
        rig.ctr(&["task", "resume", ID]);
        assert_eq!(paused.as_deref(), Some("PAUSED"));
        rig.assert_counting(ID);
    } else {
        not_frozen(&rig);
    }
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn exit_during_the_precopy() {
    during_precopy(Act::Exit, "exited during the commit");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn kill_during_the_precopy() {
    during_precopy(Act::Kill, "exited during the commit");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn delete_during_the_precopy() {
    during_precopy(Act::Delete, "deleted during the commit");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn snapshot_removed_during_the_precopy() {
    during_precopy(Act::RemoveSnapshot, "was removed during the commit");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn exit_during_the_build() {
    during_build(Act::Exit);
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn kill_during_the_build() {
    during_build(Act::Kill);
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn delete_during_the_build() {
    during_build(Act::Delete);
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn pause_during_the_build() {
    during_build(Act::Pause);
}
