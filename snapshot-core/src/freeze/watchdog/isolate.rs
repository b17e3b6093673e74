//! Putting a new watchdog where the committer's fate cannot reach it: out of
//! the committer's cgroups (into `seamless-watchdog` under the cgroup v2
//! root, and into the root of each v1 hierarchy), out of the OOM killer's
//! choices (`oom_score_adj` -1000), and ahead of the committer on the CPU
//! (`SCHED_FIFO`, one priority above the window thread).
//!
//! Invariant: best effort, step by step: what cannot be done (no privilege,
//! a read-only cgroupfs) is logged (a cgroup move as a warning) and the rest
//! still done; the watchdog works wherever it runs, it only survives less.

use std::io;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use super::realtime;
use crate::procfs::mountinfo::{self, Mount};

/// The watchdogs' cgroup v2, directly under the root we see. Created on
/// first use and left in place (empty between commits): removing it would
/// race with another committer's watchdog moving in.
pub(super) const WATCHDOG_CGROUP: &str = "seamless-watchdog";

/// Where a watchdog goes: `(cgroup directory, create it first)`, from our
/// mountinfo: `seamless-watchdog` under the first cgroup2 mount showing its
/// hierarchy's root, and the root of each v1 hierarchy mounted with its root
/// shown (one mount per hierarchy). Pure: takes the file's contents.
pub(super) fn targets(mountinfo: &[u8]) -> Vec<(PathBuf, bool)> {
    let mut out: Vec<(PathBuf, bool)> = Vec::new();
    let mut v1_seen: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut v2_done = false;
    let at_root = |m: &Mount| m.root == Path::new("/");
    for m in mountinfo::cgroup_mounts(mountinfo)
        .into_iter()
        .filter(at_root)
    {
        match m.cgroup_version_2() {
            Some(true) if !v2_done => {
                v2_done = true;
                out.push((m.mount_point.join(WATCHDOG_CGROUP), true));
            }
            Some(false) => {
                // A hierarchy is identified by its controllers (and name).
                let mut key: Vec<Vec<u8>> = m
                    .super_options
                    .iter()
                    .filter(|o| !matches!(o.as_slice(), b"rw" | b"ro"))
                    .cloned()
                    .collect();
                key.sort();
                if !v1_seen.contains(&key) {
                    v1_seen.push(key);
                    out.push((m.mount_point.clone(), false));
                }
            }
            _ => {}
        }
    }
    out
}

/// Moves process `pid` into `dir` (creating it first when `create`).
fn join(dir: &Path, create: bool, pid: Pid) -> io::Result<()> {
    if create {
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    std::fs::write(dir.join("cgroup.procs"), pid.as_raw().to_string())
}

/// Isolates the watchdog `pid`, best effort (see the module docs); the
/// cgroup moves come first, so that a v1 `cpu` hierarchy's real-time budget
/// is the root's when `SCHED_FIFO` is asked for.
pub(super) fn isolate(pid: Pid, priority: libc::c_int) {
    let mut problems: Vec<String> = Vec::new();
    match std::fs::read("/proc/self/mountinfo") {
        Ok(text) => {
            for (dir, create) in targets(&text) {
                if let Err(e) = join(&dir, create, pid) {
                    problems.push(format!("cannot move it into {}: {e}", dir.display()));
                }
            }
        }
        Err(e) => problems.push(format!("cannot read /proc/self/mountinfo: {e}")),
    }
    if !problems.is_empty() {
        tracing::warn!(
            watchdog = pid.as_raw(),
            problems = %problems.join("; "),
            "the watchdog may die with the committer's cgroup"
        );
    }
    // Without the privilege (CAP_SYS_RESOURCE, CAP_SYS_NICE) these are
    // refused: as best effort as the window thread's own real-time policy.
    // A watchdog of a few KB is the OOM killer's last choice anyway.
    let oom = format!("/proc/{pid}/oom_score_adj");
    if let Err(e) = std::fs::write(&oom, "-1000") {
        tracing::debug!(watchdog = pid.as_raw(), error = %e, "cannot write {oom}");
    }
    if let Err(e) = realtime::set_fifo(pid.as_raw(), priority) {
        tracing::debug!(watchdog = pid.as_raw(), error = %e, "no SCHED_FIFO priority {priority} for the watchdog");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_hybrid_v2_and_duplicates() {
        let hybrid = b"\
31 25 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime shared:14 - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/systemd rw,relatime shared:15 - cgroup cgroup rw,xattr,name=systemd
39 31 0:34 /sub /mnt/freezer-sub rw,relatime - cgroup cgroup rw,freezer
40 31 0:34 / /mnt/freezer-again ro,relatime - cgroup cgroup ro,freezer
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
42 31 0:38 / /mnt/unified-again rw,relatime - cgroup2 cgroup2 rw
";
        let t = targets(hybrid);
        let want: Vec<(PathBuf, bool)> = vec![
            ("/sys/fs/cgroup/cpu,cpuacct".into(), false),
            ("/sys/fs/cgroup/freezer".into(), false),
            ("/sys/fs/cgroup/systemd".into(), false),
            ("/sys/fs/cgroup/unified/seamless-watchdog".into(), true),
        ];
        assert_eq!(t, want);

        let v2 = b"29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            targets(v2),
            vec![(PathBuf::from("/sys/fs/cgroup/seamless-watchdog"), true)]
        );
        // Only a subtree visible: nowhere to go.
        let sub = b"29 23 0:26 /kubepods/x /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert!(targets(sub).is_empty());
    }
}
