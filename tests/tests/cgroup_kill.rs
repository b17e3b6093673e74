//! The committer's whole cgroup killed inside the frozen window (issue 8,
//! item 7), as a systemd unit stop, a pod deletion or an OOM group kill
//! would: the watchdog, a process of its own outside that cgroup, thaws the
//! container. The CLI runs in cgroups made for it (a cgroup v2 and, on
//! hybrid hosts, a v1 one), joined before it starts; each round kills it
//! with `cgroup.kill` (v2) or by SIGKILL to every pid of its v1 cgroup, in
//! turn.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use seamless_snapshot::{ContainerdSnapshotter, SeamlessSnapshot};
use seamless_snapshot_tests::{CgroupFiles, Rig, wait_until};

const HOLD_FROZEN: &str = "SEAMLESS_FAULT_HOLD_FROZEN_MS";
const ROUNDS: usize = 100;
/// Every this many rounds (and after the last), a commit must succeed.
const COMMIT_EVERY: usize = 10;

/// The mount points of the cgroup v2 hierarchy and of one v1 hierarchy
/// (`name=systemd` preferred: what systemd kills a unit through on a legacy
/// host), from our mount table.
fn hierarchies() -> (PathBuf, Option<PathBuf>) {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(3) != Some(&"/") {
            continue;
        }
        let (mount_point, fs_type, options) = (fields[4], fields[dash + 1], fields[dash + 3]);
        match fs_type {
            "cgroup2" if v2.is_none() => v2 = Some(PathBuf::from(mount_point)),
            "cgroup" => v1.push((options.contains("name=systemd"), PathBuf::from(mount_point))),
            _ => {}
        }
    }
    v1.sort_by_key(|(systemd, _)| !systemd);
    (
        v2.expect("this test needs a cgroup v2 hierarchy (for cgroup.kill)"),
        v1.into_iter().next().map(|(_, p)| p),
    )
}

/// The committer's cgroups for one round; killed and removed on drop.
struct CommitterCgroups {
    v2: PathBuf,
    v1: Option<PathBuf>,
}

impl CommitterCgroups {
    fn new(round: usize) -> Self {
        let (v2_root, v1_root) = hierarchies();
        let name = format!("seamless-committer-{}-{round}", std::process::id());
        let cg = CommitterCgroups {
            v2: v2_root.join(&name),
            v1: v1_root.map(|r| r.join(&name)),
        };
        for d in std::iter::once(&cg.v2).chain(cg.v1.as_ref()) {
            fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        cg
    }

    fn pids(dir: &Path) -> Vec<i32> {
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// SIGKILL to every process of the v1 cgroup, until it is empty.
    fn kill_v1_pids(dir: &Path) {
        let start = Instant::now();
        loop {
            let pids = Self::pids(dir);
            if pids.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{pids:?} live on"
            );
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn kill_v2(&self) {
        fs::write(self.v2.join("cgroup.kill"), "1").unwrap();
    }

    /// The wrapper that joins the cgroups, then runs the CLI.
    fn wrap(&self, cli: &Command) -> Command {
        let mut join = format!("echo $$ > {}/cgroup.procs", self.v2.display());
        if let Some(v1) = &self.v1 {
            join.push_str(&format!(" && echo $$ > {}/cgroup.procs", v1.display()));
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{join} && exec \"$0\" \"$@\""))
            .arg(cli.get_program())
            .args(cli.get_args());
        cmd
    }
}

impl Drop for CommitterCgroups {
    fn drop(&mut self) {
        let _ = fs::write(self.v2.join("cgroup.kill"), "1");
        if let Some(v1) = &self.v1 {
            Self::kill_v1_pids(v1);
        }
        for d in std::iter::once(&self.v2).chain(self.v1.as_ref()) {
            let removed = wait_until(Duration::from_secs(10), || fs::remove_dir(d).is_ok());
            if removed.is_err() {
                eprintln!("could not remove {}", d.display());
            }
        }
    }
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn the_committers_cgroup_killed_in_the_window_100_times() {
    let rig = Rig::new();
    rig.start_counter("victim");
    let cgroup: CgroupFiles = rig.cgroup("victim");
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut commits = 0;
    for round in 0..ROUNDS {
        let cgs = CommitterCgroups::new(round);
        let v1_kill = round % 2 == 1 && cgs.v1.is_some();
        let target = rig.target("killed", &round.to_string());
        let mut cli = rig.cli();
        cli.args([
            "commit",
            "--container",
            "victim",
            "--target",
            &target,
            "--json",
        ]);
        let mut child = cgs
            .wrap(&cli)
            // Far longer than the round: the kill must end the window.
            .env(HOLD_FROZEN, "20000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the CLI");
        rig.wait_frozen_by(&cgroup, &mut child);

        let killed_at = Instant::now();
        match (&cgs.v1, v1_kill) {
            (Some(v1), true) => CommitterCgroups::kill_v1_pids(v1),
            _ => cgs.kill_v2(),
        }
        let thawed = wait_until(Duration::from_secs(1), || !cgroup.is_frozen());
        let after = killed_at.elapsed();
        let status = child.wait().unwrap();
        if thawed.is_err() {
            cgroup.thaw();
            panic!(
                "round {round}: still frozen {after:?} after the committer's cgroup was killed ({})",
                if v1_kill { "v1 pids" } else { "cgroup.kill" }
            );
        }
        slowest = slowest.max(after);
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "round {round}: the CLI was not killed in the window: {status}"
        );
        drop(cgs);

        assert_eq!(rig.task_status("victim").as_deref(), Some("RUNNING"));
        rig.assert_counting("victim");
        if (round + 1) % COMMIT_EVERY == 0 {
            let r = snap
                .commit("victim", &rig.target("later", &round.to_string()))
                .unwrap_or_else(|e| panic!("round {round}: a later commit failed: {e}"));
            assert!(!cgroup.is_frozen());
            assert!(r.pause_time < Duration::from_secs(1), "{:?}", r.pause_time);
            commits += 1;
        }
    }
    // The last later commit's push completes too.
    let r = snap
        .commit_with_wait(
            "victim",
            &rig.target("later", "last"),
            Duration::from_secs(120),
        )
        .unwrap();
    assert!(r.manifest_digest.is_some());
    rig.assert_counting("victim");
    eprintln!(
        "{ROUNDS} rounds in {:?}: thawed at most {slowest:?} after the kill; {commits} later commits",
        started.elapsed()
    );
}
