//! Tests of the frozen window: its orchestration against a fake freezer,
//! then the real v1 and v2 freezers, discovery and the watchdog on real
//! cgroups (root only, `#[ignore]`d so that they run when asked for).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use super::discover::freezer_for_pid;
use super::v1::{CgroupV1Freezer, V1_STATE, V1State, parse_v1_state};
use super::v2::{CgroupV2Freezer, V2_EVENTS, V2_FREEZE, parse_events_frozen};
use super::*;

// ---- orchestration with a fake ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Freeze,
    Work,
    Thaw,
}

struct FakeFreezer {
    calls: Mutex<Vec<Call>>,
    fail_freeze: bool,
    fail_thaw: bool,
    /// The fake cgroup's state: set by a successful freeze, cleared by a
    /// successful thaw or by [`FakeFreezer::foreign_thaw`].
    frozen: std::sync::atomic::AtomicBool,
    thaw_file: tempfile::NamedTempFile,
}

impl FakeFreezer {
    fn new() -> Self {
        FakeFreezer {
            calls: Mutex::new(Vec::new()),
            fail_freeze: false,
            fail_thaw: false,
            frozen: std::sync::atomic::AtomicBool::new(false),
            thaw_file: tempfile::NamedTempFile::new().unwrap(),
        }
    }
    fn record(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    /// Someone else thaws the cgroup.
    fn foreign_thaw(&self) {
        self.frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
    fn thaw_written(&self) -> String {
        std::fs::read_to_string(self.thaw_file.path()).unwrap()
    }
}

impl Freezer for FakeFreezer {
    fn kind(&self) -> FreezerKind {
        FreezerKind::V2
    }
    fn path(&self) -> &Path {
        Path::new("/fake")
    }
    fn freeze(&self, _timeout: Duration) -> Result<()> {
        self.record(Call::Freeze);
        if self.fail_freeze {
            Err(freeze_error(self.path(), "fake freeze failure"))
        } else {
            self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }
    fn thaw(&self) -> Result<()> {
        self.record(Call::Thaw);
        if self.fail_thaw {
            Err(freeze_error(self.path(), "fake thaw failure"))
        } else {
            self.frozen
                .store(false, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }
    fn is_frozen(&self) -> Result<bool> {
        Ok(self.frozen.load(std::sync::atomic::Ordering::SeqCst))
    }
    fn parent(&self) -> Result<Option<Box<dyn Freezer>>> {
        Ok(None)
    }
    fn thaw_command(&self) -> (PathBuf, &'static [u8]) {
        (self.thaw_file.path().to_path_buf(), b"0")
    }
}

const T: Duration = Duration::from_secs(1);
const BOUND: Duration = Duration::from_secs(10);

#[test]
fn order_is_freeze_work_thaw() {
    let f = FakeFreezer::new();
    let (v, timing) = with_frozen(&f, T, BOUND, || {
        f.record(Call::Work);
        Ok(42)
    })
    .unwrap();
    assert_eq!(v, 42);
    assert_eq!(f.calls(), [Call::Freeze, Call::Work, Call::Thaw]);
    assert!(timing.pause >= timing.freeze + timing.frozen_work);
    assert_eq!(f.thaw_written(), "", "watchdog must not fire");
}

#[test]
fn a_foreign_thaw_inside_the_window_discards_the_work() {
    let f = FakeFreezer::new();
    let r = with_frozen(&f, T, BOUND, || {
        f.record(Call::Work);
        f.foreign_thaw();
        Ok(42)
    });
    match r {
        Err(Error::Freeze { message, .. }) => {
            assert!(message.contains("thawed by someone else"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
    // Our thaw still ran (harmless on a thawed cgroup), and no watchdog.
    assert_eq!(f.calls(), [Call::Freeze, Call::Work, Call::Thaw]);
    assert_eq!(f.thaw_written(), "");
}

#[test]
fn thaws_after_work_error() {
    let f = FakeFreezer::new();
    let r: Result<((), _)> = with_frozen(&f, T, BOUND, || {
        f.record(Call::Work);
        Err(Error::Internal("boom".into()))
    });
    assert!(matches!(r, Err(Error::Internal(m)) if m == "boom"));
    assert_eq!(f.calls(), [Call::Freeze, Call::Work, Call::Thaw]);
}

#[test]
fn thaws_after_work_panic() {
    let f = FakeFreezer::new();
    let r: Result<((), _)> = with_frozen(&f, T, BOUND, || {
        f.record(Call::Work);
        panic!("work exploded")
    });
    match r {
        Err(Error::Internal(m)) => assert!(m.contains("work exploded"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(f.calls(), [Call::Freeze, Call::Work, Call::Thaw]);
}

#[test]
fn freeze_failure_runs_no_work_and_still_thaws() {
    let mut f = FakeFreezer::new();
    f.fail_freeze = true;
    let r = with_frozen(&f, T, BOUND, || {
        f.record(Call::Work);
        Ok(())
    });
    assert!(matches!(r, Err(Error::Freeze { .. })), "{r:?}");
    assert_eq!(f.calls(), [Call::Freeze, Call::Thaw]);
}

#[test]
fn thaw_failure_fires_watchdog_and_errors() {
    let mut f = FakeFreezer::new();
    f.fail_thaw = true;
    let r = with_frozen(&f, T, BOUND, || Ok(()));
    match r {
        Err(Error::Freeze { message, .. }) => {
            assert!(message.contains("thaw failed"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(f.thaw_written(), "0", "watchdog wrote the thaw command");
}

#[test]
fn bound_overrun_discards_and_watchdog_writes() {
    let f = FakeFreezer::new();
    let r = with_frozen(&f, T, Duration::from_millis(50), || {
        std::thread::sleep(Duration::from_millis(250));
        Ok(())
    });
    match r {
        Err(Error::Freeze { message, .. }) => {
            assert!(message.contains("exceeded bound"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(f.thaw_written(), "0");
    assert_eq!(f.calls(), [Call::Freeze, Call::Thaw]);
}

#[test]
fn zero_bound_is_rejected() {
    let f = FakeFreezer::new();
    let r = with_frozen(&f, T, Duration::ZERO, || Ok(()));
    assert!(matches!(r, Err(Error::InvalidArgument(_))));
    assert!(f.calls().is_empty());
}

// ---- real cgroups (root) ----

const HELPER_ENV: &str = "SEAMLESS_FREEZE_HELPER";

/// The mount point of the hierarchy whose freezer `kind` drives, from our
/// own mount table (on this machine's hybrid layout: v1 at
/// /sys/fs/cgroup/freezer, v2 at /sys/fs/cgroup/unified).
fn freezer_hierarchy(kind: FreezerKind) -> PathBuf {
    let text = std::fs::read("/proc/self/mountinfo").unwrap();
    crate::procfs::mountinfo::cgroup_mounts(&text)
        .into_iter()
        .find(|m| {
            m.root == Path::new("/")
                && match kind {
                    FreezerKind::V2 => m.cgroup_version_2() == Some(true),
                    FreezerKind::V1 => {
                        m.cgroup_version_2() == Some(false) && m.has_super_option("freezer")
                    }
                }
        })
        .map(|m| m.mount_point)
        .unwrap_or_else(|| {
            panic!("no {kind:?} cgroup freezer hierarchy is mounted: this test needs one")
        })
}

/// A test cgroup holding a `sleep 30`; removed on drop, even on failure.
struct TestCgroup {
    kind: FreezerKind,
    dir: PathBuf,
    child: Child,
}

impl TestCgroup {
    fn new(kind: FreezerKind) -> Self {
        Self::with_command(kind, &["sleep", "30"])
    }

    /// Panics (the test fails) when not root or when the host has no
    /// freezer of `kind`: these tests are ignored unless asked for.
    fn with_command(kind: FreezerKind, argv: &[&str]) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (it is #[ignore]d for that reason)"
        );
        let base = freezer_hierarchy(kind);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = base.join(format!("seamless-test-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let child = match Command::new(argv[0]).args(&argv[1..]).spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                panic!("spawn {argv:?}: {e}");
            }
        };
        let cg = TestCgroup { kind, dir, child };
        std::fs::write(cg.dir.join("cgroup.procs"), cg.child.id().to_string()).unwrap();
        cg
    }

    fn freezer(&self) -> Box<dyn Freezer> {
        match self.kind {
            FreezerKind::V2 => Box::new(CgroupV2Freezer::new(&self.dir).unwrap()),
            FreezerKind::V1 => Box::new(CgroupV1Freezer::new(&self.dir).unwrap()),
        }
    }

    /// The kernel's own view, read through fresh opens.
    fn frozen_on_disk(&self) -> bool {
        match self.kind {
            FreezerKind::V2 => {
                let ev = std::fs::read(self.dir.join(V2_EVENTS)).unwrap();
                parse_events_frozen(&ev).unwrap()
            }
            FreezerKind::V1 => {
                let st = std::fs::read(self.dir.join(V1_STATE)).unwrap();
                parse_v1_state(&st).unwrap() != V1State::Thawed
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let (file, bytes): (&str, &[u8]) = match self.kind {
            FreezerKind::V2 => (V2_FREEZE, b"0"),
            FreezerKind::V1 => (V1_STATE, b"THAWED"),
        };
        let _ = std::fs::write(self.dir.join(file), bytes);
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn freeze_thaw_roundtrip(kind: FreezerKind) {
    let cg = TestCgroup::new(kind);
    let f = cg.freezer();
    assert_eq!(f.kind(), kind);
    assert!(!f.is_frozen().unwrap());
    f.freeze(T).unwrap();
    assert!(f.is_frozen().unwrap());
    assert!(cg.frozen_on_disk());
    f.thaw().unwrap();
    assert!(!f.is_frozen().unwrap());
    assert!(!cg.frozen_on_disk());

    let ((), _) = with_frozen(&*f, T, BOUND, || {
        assert!(cg.frozen_on_disk());
        Ok(())
    })
    .unwrap();
    assert!(!cg.frozen_on_disk());

    // Empty work: the pause the mechanism itself costs.
    let timings: Vec<PauseTiming> = (0..50)
        .map(|_| with_frozen(&*f, T, BOUND, || Ok(())).unwrap().1)
        .collect();
    let med = |get: fn(&PauseTiming) -> Duration| median(timings.iter().map(get).collect());
    println!(
        "{kind:?} empty-work pause: median {:?} (freeze {:?}, thaw {:?}), max {:?}",
        med(|t| t.pause),
        med(|t| t.freeze),
        med(|t| t.thaw),
        timings.iter().map(|t| t.pause).max().unwrap()
    );
}

#[test]
#[ignore = "benchmark (needs root and a cgroup freezer); run with --ignored --nocapture"]
fn bench_freeze_thaw() {
    for kind in [FreezerKind::V2, FreezerKind::V1] {
        let cg = TestCgroup::new(kind);
        let f = cg.freezer();
        let mut fr = Vec::new();
        let mut th = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            f.freeze(T).unwrap();
            fr.push(t.elapsed());
            let t = Instant::now();
            f.thaw().unwrap();
            th.push(t.elapsed());
        }
        println!(
            "{kind:?} direct: freeze {:?} thaw {:?}",
            median(fr),
            median(th)
        );
        let mut fr = Vec::new();
        let mut th = Vec::new();
        for _ in 0..50 {
            let wd = Watchdog::arm(&f.thaw_command().0, f.thaw_command().1, BOUND).unwrap();
            let t = Instant::now();
            f.freeze(T).unwrap();
            fr.push(t.elapsed());
            let t = Instant::now();
            f.thaw().unwrap();
            th.push(t.elapsed());
            wd.disarm().unwrap();
        }
        println!(
            "{kind:?} with watchdog: freeze {:?} thaw {:?}",
            median(fr),
            median(th)
        );
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    crate::procfs::stat::process_cpu_ticks(pid).unwrap()
}

/// A CPU-bound task really stops running while frozen.
fn busy_task_stops(kind: FreezerKind) {
    let cg = TestCgroup::with_command(kind, &["sh", "-c", "while :; do :; done"]);
    let pid = cg.child.id();
    std::thread::sleep(Duration::from_millis(50));
    let ((before, after), t) = with_frozen(&*cg.freezer(), T, BOUND, || {
        let before = cpu_ticks(pid);
        std::thread::sleep(Duration::from_millis(200));
        Ok((before, cpu_ticks(pid)))
    })
    .unwrap();
    assert_eq!(before, after, "task ran while frozen");
    let start = cpu_ticks(pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    while cpu_ticks(pid) == start {
        assert!(Instant::now() < deadline, "task does not run after thaw");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "{kind:?} busy task: freeze took {:?}, thaw {:?}",
        t.freeze, t.thaw
    );
}

#[test]
#[ignore = "needs root and a cgroup v2 freezer"]
fn v2_busy_task_stops() {
    busy_task_stops(FreezerKind::V2);
}

#[test]
#[ignore = "needs root and a cgroup v1 freezer"]
fn v1_busy_task_stops() {
    busy_task_stops(FreezerKind::V1);
}

#[test]
#[ignore = "needs root and a cgroup v2 freezer"]
fn v2_freeze_thaw() {
    freeze_thaw_roundtrip(FreezerKind::V2);
}

#[test]
#[ignore = "needs root and a cgroup v1 freezer"]
fn v1_freeze_thaw() {
    freeze_thaw_roundtrip(FreezerKind::V1);
}

#[test]
#[ignore = "needs root and cgroup v1 and v2 freezers"]
fn freezer_for_pid_finds_test_cgroups() {
    for kind in [FreezerKind::V2, FreezerKind::V1] {
        let cg = TestCgroup::new(kind);
        let f = freezer_for_pid(cg.child.id()).unwrap();
        assert_eq!(f.kind(), kind);
        assert_eq!(f.path(), cg.dir);
    }
    // Every cgroup of this test process is a root cgroup or holds the
    // process itself: nothing may be frozen.
    let e = freezer_for_pid(std::process::id()).err().unwrap();
    assert_eq!(e.kind(), crate::error::ErrorKind::Unsupported, "{e}");
}

#[test]
#[ignore = "needs root and cgroup v1 and v2 freezers"]
fn freezer_for_pids_climbs_to_the_common_cgroup_not_above_the_container() {
    for kind in [FreezerKind::V2, FreezerKind::V1] {
        let cg = TestCgroup::new(kind);
        // The container's cgroup path, as its OCI cgroupsPath would say.
        let top = format!("/{}", cg.dir.file_name().unwrap().to_string_lossy());
        // Like systemd in a container: init in one child cgroup, another
        // process in a sibling.
        let (a, b) = (cg.dir.join("a"), cg.dir.join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let mut other = Command::new("sleep").arg("30").spawn().unwrap();
        std::fs::write(a.join("cgroup.procs"), cg.child.id().to_string()).unwrap();
        std::fs::write(b.join("cgroup.procs"), other.id().to_string()).unwrap();
        let init = cg.child.id();
        let both = [init, other.id()];

        let alone = freezer_for_pids(init, &[init], None).map(|f| f.path().to_owned());
        let climbed = freezer_for_pids(init, &both, Some(&top)).map(|f| f.path().to_owned());
        // The container's own cgroup is `a`, or unknown: `b` is outside it,
        // and the common cgroup above may hold other workloads.
        let a_path = format!("{top}/a");
        let not_above_a = freezer_for_pids(init, &both, Some(&a_path)).err();
        let not_above_init = freezer_for_pids(init, &both, None).err();
        // Init itself outside the container's cgroup.
        let init_elsewhere = freezer_for_pids(init, &[init], Some(&format!("{top}/b"))).err();
        // A process outside the container's tree: never climb to a cgroup
        // that holds us (the root here), even when told it is the top.
        let with_us = freezer_for_pids(init, &[init, std::process::id()], Some("/")).err();

        let _ = other.kill();
        let _ = other.wait();
        std::fs::write(cg.dir.join("cgroup.procs"), init.to_string()).unwrap();
        std::fs::remove_dir(&a).unwrap();
        std::fs::remove_dir(&b).unwrap();

        assert_eq!(alone.unwrap(), a);
        assert_eq!(climbed.unwrap(), cg.dir);
        for (what, e) in [
            ("above a", not_above_a),
            ("above init", not_above_init),
            ("init elsewhere", init_elsewhere),
            ("holding us", with_us),
        ] {
            let e = e.unwrap_or_else(|| panic!("{kind:?} {what}: a freezer was chosen"));
            assert_eq!(
                e.kind(),
                crate::error::ErrorKind::Unsupported,
                "{what}: {e}"
            );
        }
    }
}

fn bound_overrun_thaws(kind: FreezerKind) {
    let cg = TestCgroup::new(kind);
    let f = cg.freezer();
    let r = with_frozen(&*f, T, Duration::from_millis(100), || {
        assert!(cg.frozen_on_disk());
        std::thread::sleep(Duration::from_millis(400));
        // The watchdog has thawed it under our feet.
        assert!(!cg.frozen_on_disk());
        Ok(())
    });
    match r {
        Err(Error::Freeze { message, .. }) => assert!(message.contains("exceeded bound")),
        other => panic!("unexpected {other:?}"),
    }
    assert!(!cg.frozen_on_disk());
}

#[test]
#[ignore = "needs root and a cgroup v2 freezer"]
fn v2_bound_overrun_thaws() {
    bound_overrun_thaws(FreezerKind::V2);
}

#[test]
#[ignore = "needs root and a cgroup v1 freezer"]
fn v1_bound_overrun_thaws() {
    bound_overrun_thaws(FreezerKind::V1);
}

/// Not a test by itself: the committer process of
/// `*_watchdog_thaws_after_committer_*`, re-executed from this binary.
/// Run on its own it fails: it needs the cgroup its parent test made.
#[test]
#[ignore = "helper process, re-executed by the committer_sigkill tests"]
fn helper_committer() {
    let spec = std::env::var(HELPER_ENV)
        .expect("helper_committer only runs as the child of a committer_sigkill test");
    let (kind, dir) = spec.split_once(':').unwrap();
    let f: Box<dyn Freezer> = match kind {
        "v2" => Box::new(CgroupV2Freezer::new(dir).unwrap()),
        _ => Box::new(CgroupV1Freezer::new(dir).unwrap()),
    };
    let _ = with_frozen(&*f, T, Duration::from_secs(60), || -> Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "FROZEN").unwrap();
        out.flush().unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// How a test kills the committer inside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// SIGKILL to the committer process.
    Process,
    /// `cgroup.kill` of a cgroup v2 of its own that it joined before it
    /// started (as a systemd unit stop or a pod deletion would).
    Cgroup,
}

/// A cgroup v2 for a committer; killed (if still populated) and removed on
/// drop.
struct CommitterCgroup(PathBuf);

impl CommitterCgroup {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = freezer_hierarchy(FreezerKind::V2).join(format!(
            "seamless-test-committer-{}-{nanos:x}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).unwrap();
        CommitterCgroup(dir)
    }

    fn kill(&self) {
        std::fs::write(self.0.join("cgroup.kill"), "1").unwrap();
    }
}

impl Drop for CommitterCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..200 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("could not remove {}", self.0.display());
    }
}

fn committer_killed(kind: FreezerKind, how: Kill) {
    let cg = TestCgroup::new(kind);
    let test_name = module_path!()
        .split_once("::")
        .map(|(_, rest)| format!("{rest}::helper_committer"))
        .unwrap();
    let label = if kind == FreezerKind::V2 { "v2" } else { "v1" };
    let committer_cg = (how == Kill::Cgroup).then(CommitterCgroup::new);
    let mut cmd = match &committer_cg {
        // Joins its cgroup before it runs anything, watchdog included.
        Some(c) => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                    c.0.display()
                ))
                .arg(std::env::current_exe().unwrap());
            cmd
        }
        None => Command::new(std::env::current_exe().unwrap()),
    };
    let mut helper = cmd
        .args([
            &test_name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, format!("{label}:{}", cg.dir.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(helper.stdout.take().unwrap());
    let mut line = String::new();
    let mut frozen = false;
    while out.read_line(&mut line).unwrap() > 0 {
        if line.contains("FROZEN") {
            frozen = true;
            break;
        }
        line.clear();
    }
    if !frozen {
        let _ = helper.kill();
        let _ = helper.wait();
        panic!("helper never reported FROZEN");
    }
    assert!(cg.frozen_on_disk());
    match &committer_cg {
        Some(c) => c.kill(),
        None => nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(helper.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap(),
    }
    let killed = Instant::now();
    helper.wait().unwrap();
    while cg.frozen_on_disk() {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "{kind:?}: still frozen 1 s after {how:?} kill of the committer"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "{kind:?}: thawed {:?} after {how:?} kill of the committer",
        killed.elapsed()
    );
}

#[test]
#[ignore = "needs root and a cgroup v2 freezer"]
fn v2_watchdog_thaws_after_committer_sigkill() {
    committer_killed(FreezerKind::V2, Kill::Process);
}

#[test]
#[ignore = "needs root and a cgroup v1 freezer"]
fn v1_watchdog_thaws_after_committer_sigkill() {
    committer_killed(FreezerKind::V1, Kill::Process);
}

#[test]
#[ignore = "needs root and a cgroup v2 freezer"]
fn v2_watchdog_thaws_after_committer_cgroup_kill() {
    committer_killed(FreezerKind::V2, Kill::Cgroup);
}

#[test]
#[ignore = "needs root, a cgroup v1 freezer and cgroup v2"]
fn v1_watchdog_thaws_after_committer_cgroup_kill() {
    committer_killed(FreezerKind::V1, Kill::Cgroup);
}

/// The pid of the watchdog writing to `thaw`: a child of ours holding it
/// open (other tests' watchdogs hold other files).
fn watchdog_of(thaw: &Path) -> u32 {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap();
    let children: Vec<u32> = tasks
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    children
        .into_iter()
        .find(|c| {
            std::fs::read_dir(format!("/proc/{c}/fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == thaw))
            })
        })
        .expect("no watchdog child holds the thaw file")
}

/// The watchdog dies inside the window: the committer thaws at once, while
/// its work still runs, and discards the window.
#[test]
fn a_dead_watchdog_thaws_at_once_and_discards() {
    let f = FakeFreezer::new();
    let r = with_frozen(&f, T, BOUND, || {
        let wd = watchdog_of(f.thaw_file.path());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(wd as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let killed = Instant::now();
        while f.thaw_written() != "0" {
            assert!(
                killed.elapsed() < Duration::from_secs(1),
                "no thaw 1 s after the watchdog died"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    });
    match r {
        Err(Error::Freeze { message, .. }) => {
            assert!(message.contains("watchdog died"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn dead_watchdog_thaws(kind: FreezerKind) {
    let cg = TestCgroup::new(kind);
    let f = cg.freezer();
    let r = with_frozen(&*f, T, BOUND, || {
        assert!(cg.frozen_on_disk());
        let wd = watchdog_of(&f.thaw_command().0);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(wd as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let killed = Instant::now();
        while cg.frozen_on_disk() {
            assert!(
                killed.elapsed() < Duration::from_secs(1),
                "{kind:?}: still frozen 1 s after the watchdog died"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    });
    assert!(
        matches!(&r, Err(Error::Freeze { message, .. }) if message.contains("watchdog died")),
        "{r:?}"
    );
    assert!(!cg.frozen_on_disk());
}

#[test]
#[ignore = "needs root and a cgroup v2 freezer"]
fn v2_dead_watchdog_thaws_at_once() {
    dead_watchdog_thaws(FreezerKind::V2);
}

#[test]
#[ignore = "needs root and a cgroup v1 freezer"]
fn v1_dead_watchdog_thaws_at_once() {
    dead_watchdog_thaws(FreezerKind::V1);
}
