//! Running out of disk space (issue 8, item 13): a commit whose capture or
//! blob cannot fit is refused before anything is created or frozen; a
//! pre-copy that runs out of space midway leaves nothing behind. The small
//! filesystems are 8 MiB tmpfs mounts; the container holds 32 MiB.
//!
//! Every commit here runs with the frozen window held 5 s
//! (`SEAMLESS_FAULT_HOLD_FROZEN_MS`), so a freeze, had there been one,
//! could not be missed by a poll of the cgroup.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use seamless_snapshot_tests::{COUNTER, Kind, Rig, check_cmd, scan_tree, wait_until};

const HOLD_FROZEN: &str = "SEAMLESS_FAULT_HOLD_FROZEN_MS";
const SKIP_SPACE_CHECK: &str = "SEAMLESS_FAULT_SKIP_SPACE_CHECK";

/// An 8 MiB tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        check_cmd(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs"])
                .arg(&dir),
        );
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Bytes free.
    fn free(&self) -> u64 {
        let v = nix::sys::statvfs::statvfs(&self.0).unwrap();
        v.blocks_available() * v.fragment_size()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Starts container `id` with 32 MiB of data in its writable layer, then
/// counting ([`COUNTER`]).
fn start_big(rig: &Rig, id: &str) {
    rig.run_container(
        id,
        &format!(
            "mkdir -p /data && dd if=/dev/urandom of=/data/big bs=1048576 count=32 2>/dev/null && {COUNTER}"
        ),
    );
    let counter = rig.rootfs(id).join("data/counter");
    wait_until(Duration::from_secs(60), || counter.exists())
        .unwrap_or_else(|_| panic!("container {id} did not start counting"));
    rig.assert_counting(id);
}

/// Runs `seamless-snapshot [global] commit ... [extra]` with the frozen
/// window held 5 s and `env`, polling the container's cgroup until the CLI
/// exits; panics if it was ever frozen. Returns the CLI's output.
fn commit_unfrozen(
    rig: &Rig,
    id: &str,
    state_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let cgroup = rig.cgroup(id);
    let mut cmd = rig.cli_in(state_dir);
    cmd.args([
        "commit",
        "--container",
        id,
        "--target",
        &rig.target(id, "1"),
    ])
    .args(extra)
    .env(HOLD_FROZEN, "5000")
    .envs(env.iter().copied())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the CLI");
    let mut frozen = false;
    while child.try_wait().expect("wait for the CLI").is_none() {
        frozen |= cgroup.is_frozen();
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!frozen, "the container was frozen");
    assert!(!out.status.success(), "the commit succeeded: {out:?}");
    out
}

/// [`commit_unfrozen`] of container `big` with `--capture-root` on `small`.
fn commit_into(rig: &Rig, small: &Tmpfs, state_dir: &Path, env: &[(&str, &str)]) -> Output {
    let root = small.path().to_str().expect("UTF-8 path");
    commit_unfrozen(rig, "big", state_dir, &["--capture-root", root], env)
}

/// The statuses in `state_dir`, as `list --json` prints them.
fn list(rig: &Rig, state_dir: &Path) -> Vec<serde_json::Value> {
    let out = check_cmd(rig.cli_in(state_dir).args(["list", "--json"]));
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Files (not directories) below `dir`.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    scan_tree(dir)
        .into_iter()
        .filter(|(_, e)| e.kind != Kind::Dir)
        .map(|(p, _)| p)
        .collect()
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn no_room_is_refused_before_anything_is_frozen_or_created() {
    let rig = Rig::new();
    start_big(&rig, "big");

    // No room for the capture: an 8 MiB capture root.
    let small = Tmpfs::mount(rig.tmp().join("small-captures"));
    let state = rig.state_dir();
    let out = commit_into(&rig, &small, &state, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device (ENOSPC)"), "{err}");
    assert!(err.contains("the capture needs"), "{err}");
    assert!(err.contains("kind: io, code 10"), "{err}");
    assert!(err.contains(small.path().to_str().unwrap()), "{err}");
    // Nothing left: no job, no capture, nothing written.
    assert!(list(&rig, &state).is_empty());
    assert!(files_in(&state).is_empty(), "{:?}", files_in(&state));
    assert!(
        files_in(small.path()).is_empty(),
        "{:?}",
        files_in(small.path())
    );
    rig.assert_counting("big");

    // No room for the blob: an 8 MiB state dir (the capture then goes to
    // the upper dir's filesystem).
    let small_state = Tmpfs::mount(rig.tmp().join("small-state"));
    let out = commit_unfrozen(&rig, "big", small_state.path(), &[], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device (ENOSPC)"), "{err}");
    assert!(err.contains("available for the blob"), "{err}");
    assert!(list(&rig, small_state.path()).is_empty());
    assert!(
        files_in(small_state.path()).is_empty(),
        "{:?}",
        files_in(small_state.path())
    );
    assert_eq!(rig.task_status("big").as_deref(), Some("RUNNING"));
    rig.assert_counting("big");
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn a_precopy_out_of_space_midway_cleans_up() {
    let rig = Rig::new();
    start_big(&rig, "big");
    let small = Tmpfs::mount(rig.tmp().join("small-captures"));
    let empty = small.free();
    let state = rig.state_dir();

    // The check skipped, the pre-copy itself runs out of space.
    let out = commit_into(&rig, &small, &state, &[(SKIP_SPACE_CHECK, "1")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        !err.contains("the capture needs"),
        "the check was not skipped: {err}"
    );

    // The partial capture is gone and its space free again; the job is
    // recorded as failed, not left in progress.
    assert!(
        files_in(small.path()).is_empty(),
        "{:?}",
        files_in(small.path())
    );
    assert!(
        small.free() + (64 << 10) >= empty,
        "{} of {} bytes free",
        small.free(),
        empty
    );
    let jobs = list(&rig, &state);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["state"], "failed", "{jobs:?}");
    assert_eq!(jobs[0]["error"]["kind"], "io", "{jobs:?}");
    let job_dir = state
        .join("jobs")
        .join(jobs[0]["snapshot_id"].as_str().unwrap());
    assert!(!job_dir.join("capture").exists());
    assert!(std::fs::metadata(&job_dir).unwrap().mode() & 0o077 == 0);
    assert_eq!(rig.task_status("big").as_deref(), Some("RUNNING"));
    rig.assert_counting("big");
}
