//! Test support for seamless-snapshot: a [`Rig`] bound to the private
//! containerd and registry started by `tests/rig/start.sh`, with helpers to
//! run containers, inspect their cgroups, pull pushed images back and compare
//! file trees path by path.
//!
//! The rig is found through the environment written to `RIG_DIR/env`. The
//! tests that need it are `#[ignore = "needs root and the test rig"]`:
//! `cargo test` lists them as ignored, and `tests/run.sh` runs them with
//! `--include-ignored` after starting the rig. Run without the rig, they fail
//! with the reason; they never pass without having run.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use seamless_snapshot::Config;

pub mod layer_tar;
pub mod proxy;
pub mod registries;

/// The name under which the base image is imported into each namespace.
pub const BASE_IMAGE: &str = "seamless.test/base:latest";

/// The rig's coordinates, from the `SEAMLESS_TEST_*` environment variables.
#[derive(Debug, Clone)]
pub struct RigEnv {
    /// containerd's socket.
    pub containerd: String,
    /// containerd's `--root`.
    pub root: PathBuf,
    /// containerd's `--state`.
    pub state: PathBuf,
    /// The registry, `127.0.0.1:PORT` (plain HTTP).
    pub registry: String,
    /// The base image as an OCI layout tarball.
    pub base_tar: PathBuf,
    /// The static stall probe binary.
    pub probe: PathBuf,
    /// The rig directory.
    pub dir: PathBuf,
}

impl RigEnv {
    /// Reads the environment, or says why the rig cannot be used (not
    /// running, or we are not root).
    pub fn from_env() -> Result<RigEnv, String> {
        let env = RigEnv::from_vars(|k| std::env::var(k).ok()).ok();
        match env {
            None => Err("the test rig is not running: run tests/rig/start.sh and source RIG_DIR/env, or use tests/run.sh".to_string()),
            Some(_) if !nix::unistd::geteuid().is_root() => {
                Err("the integration tests need root".to_string())
            }
            Some(e) if !Path::new(&e.containerd).exists() => Err(format!(
                "the test rig is not running: no containerd socket {} (tests/rig/start.sh)",
                e.containerd
            )),
            Some(e) => Ok(e),
        }
    }

    /// Reads the `export SEAMLESS_TEST_*=...` lines of a rig's `env` file
    /// (`RIG_DIR/env`, written by `tests/rig/start.sh`): a second rig in the
    /// same process, e.g. one whose directory is on another filesystem.
    pub fn from_env_file(path: &Path) -> Result<RigEnv, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let vars: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("export ")?.split_once('='))
            .collect();
        RigEnv::from_vars(|k| vars.get(k).map(|v| v.to_string()))
            .map_err(|k| format!("{}: no {k}", path.display()))
    }

    /// The coordinates from `SEAMLESS_TEST_*` variables looked up with
    /// `var`; the name of the first one missing or empty.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<RigEnv, &'static str> {
        let get = |k: &'static str| var(k).filter(|v| !v.is_empty()).ok_or(k);
        Ok(RigEnv {
            containerd: get("SEAMLESS_TEST_CONTAINERD")?,
            root: get("SEAMLESS_TEST_CONTAINERD_ROOT")?.into(),
            state: get("SEAMLESS_TEST_CONTAINERD_STATE")?.into(),
            registry: get("SEAMLESS_TEST_REGISTRY")?,
            base_tar: get("SEAMLESS_TEST_BASE_TAR")?.into(),
            probe: get("SEAMLESS_TEST_PROBE")?.into(),
            dir: get("SEAMLESS_TEST_RIG")?.into(),
        })
    }
}

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);
static EXEC_COUNTER: AtomicU32 = AtomicU32::new(0);

/// One test's private containerd namespace with the base image imported.
/// Everything it created is removed on drop.
#[derive(Debug)]
pub struct Rig {
    /// The rig's coordinates.
    pub env: RigEnv,
    ns: String,
    tmp: tempfile::TempDir,
    counter: AtomicU32,
    children: Mutex<Vec<std::process::Child>>,
}

/// What `ctr` printed and how it exited.
pub type CmdOutput = Output;

/// Runs a command, returning its output (stdout and stderr captured).
pub fn run_cmd(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

/// Runs a command and panics with its stderr unless it succeeds; returns stdout.
pub fn check_cmd(cmd: &mut Command) -> String {
    let out = run_cmd(cmd);
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Rig {
    /// A fresh namespace `seamless-<pid>-<n>` with the base image imported.
    /// Panics with the reason when the rig is not available (see
    /// [`RigEnv::from_env`]): the tests using it are `#[ignore]`d by default
    /// and run by `tests/run.sh` where the rig is up.
    #[allow(clippy::new_without_default)] // creating a namespace is not a default value
    pub fn new() -> Rig {
        match Rig::try_new() {
            Ok(rig) => rig,
            Err(why) => panic!("{why}"),
        }
    }

    /// A new namespace, or why the rig is not available.
    pub fn try_new() -> Result<Rig, String> {
        Ok(Rig::with_env(RigEnv::from_env()?))
    }

    /// A new namespace in the rig `env` (see [`RigEnv::from_env_file`]).
    pub fn with_env(env: RigEnv) -> Rig {
        let n = NS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let ns = format!("seamless-{}-{n}", std::process::id());
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{ns}-"))
            .tempdir_in(&env.dir)
            .expect("temp dir in the rig dir");
        let rig = Rig {
            env,
            ns,
            tmp,
            counter: AtomicU32::new(0),
            children: Mutex::new(Vec::new()),
        };
        let base = rig.env.base_tar.to_string_lossy().into_owned();
        rig.ctr(&[
            "images",
            "import",
            "--base-name",
            "seamless.test/base",
            &base,
        ]);
        let images = rig.ctr(&["images", "ls", "-q"]);
        assert!(
            images.lines().any(|l| l.trim() == BASE_IMAGE),
            "importing {base} did not create {BASE_IMAGE}: {images}"
        );
        rig
    }

    /// The containerd namespace of this test.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// containerd's socket.
    pub fn socket(&self) -> &str {
        &self.env.containerd
    }

    /// The registry host:port.
    pub fn registry(&self) -> &str {
        &self.env.registry
    }

    /// A scratch directory removed with the rig.
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// A new unique directory under [`Self::tmp`].
    pub fn new_dir(&self, prefix: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let d = self.tmp().join(format!("{prefix}-{n}"));
        fs::create_dir_all(&d).expect("create dir");
        d
    }

    /// The state directory the library and the CLI use in this test.
    pub fn state_dir(&self) -> PathBuf {
        self.tmp().join("state")
    }

    /// The files (not directories) in [`Self::state_dir`]: a commit refused
    /// before it started leaves none.
    pub fn state_dir_files(&self) -> Vec<PathBuf> {
        scan_tree(&self.state_dir())
            .into_iter()
            .filter(|(_, e)| e.kind != Kind::Dir)
            .map(|(p, _)| p)
            .collect()
    }

    /// A library configuration for this namespace.
    pub fn config(&self) -> Config {
        Config {
            containerd_address: self.env.containerd.clone(),
            namespace: self.ns.clone(),
            state_dir: self.state_dir(),
            ..Config::default()
        }
    }

    /// A target reference in the rig's registry: `REG/<ns>/<name>:<tag>`.
    pub fn target(&self, name: &str, tag: &str) -> String {
        format!("{}/{}/{name}:{tag}", self.env.registry, self.ns)
    }

    /// `ctr -a SOCK -n NS args...` (not checked).
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(&self.env.containerd)
            .arg("-n")
            .arg(&self.ns);
        c.args(args);
        c
    }

    /// Runs `ctr` and returns stdout; panics on failure.
    pub fn ctr(&self, args: &[&str]) -> String {
        check_cmd(&mut self.ctr_cmd(args))
    }

    /// Starts a container from the base image running `sh -c script`.
    pub fn run_container(&self, id: &str, script: &str) {
        self.run_image(BASE_IMAGE, id, &["sh", "-c", script]);
    }

    /// Starts a container from `image` (in this namespace) running `args`,
    /// detached, on the overlayfs snapshotter.
    pub fn run_image(&self, image: &str, id: &str, args: &[&str]) {
        self.run_image_with(&[], image, id, args);
    }

    /// [`Self::run_image`] with more `ctr run` flags (`--platform`,
    /// `--uidmap`, ...).
    pub fn run_image_with(&self, flags: &[&str], image: &str, id: &str, args: &[&str]) {
        let mut a = vec!["run", "-d", "--null-io", "--snapshotter", "overlayfs"];
        a.extend_from_slice(flags);
        a.extend_from_slice(&[image, id]);
        a.extend_from_slice(args);
        self.ctr(&a);
        // ctr returns once the task is started; a short-lived one may
        // already be STOPPED.
        wait_until(Duration::from_secs(10), || {
            matches!(self.task_status(id).as_deref(), Some("RUNNING" | "STOPPED"))
        })
        .unwrap_or_else(|_| panic!("container {id} did not start"));
    }

    /// Runs `sh -c script` inside a running container; returns its stdout and
    /// panics when it fails.
    pub fn exec(&self, id: &str, script: &str) -> String {
        let out = self.try_exec(id, script);
        if !out.status.success() {
            panic!(
                "exec in {id} failed ({}): {script}\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `sh -c script` inside a running container, unchecked.
    pub fn try_exec(&self, id: &str, script: &str) -> Output {
        let exec_id = format!("x{}", EXEC_COUNTER.fetch_add(1, Ordering::SeqCst));
        run_cmd(&mut self.ctr_cmd(&[
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            id,
            "sh",
            "-c",
            script,
        ]))
    }

    /// Starts `args` inside a running container and returns without waiting.
    pub fn exec_detached(&self, id: &str, args: &[&str]) {
        let exec_id = format!("d{}", EXEC_COUNTER.fetch_add(1, Ordering::SeqCst));
        let mut a = vec!["task", "exec", "-d", "--exec-id", &exec_id, id];
        a.extend_from_slice(args);
        self.ctr(&a);
    }

    /// Keeps a child process (e.g. a CLI run) to be killed on drop.
    pub fn adopt(&self, child: std::process::Child) {
        self.children.lock().unwrap().push(child);
    }

    /// `(pid, status)` of every task in the namespace.
    pub fn tasks(&self) -> Vec<(String, u32, String)> {
        let out = run_cmd(&mut self.ctr_cmd(&["task", "ls"]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() < 3 {
                    return None;
                }
                Some((f[0].to_string(), f[1].parse().ok()?, f[2].to_string()))
            })
            .collect()
    }

    /// The task status (`RUNNING`, `STOPPED`, `PAUSED`, ...) of a container.
    pub fn task_status(&self, id: &str) -> Option<String> {
        self.tasks()
            .into_iter()
            .find(|(t, _, _)| t == id)
            .map(|(_, _, s)| s)
    }

    /// The host pid of a container's init process.
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        self.tasks()
            .into_iter()
            .find(|(t, _, _)| t == id)
            .map(|(_, p, _)| p)
            .filter(|p| *p > 0)
    }

    /// The container's merged root filesystem as seen from the host.
    pub fn rootfs(&self, id: &str) -> PathBuf {
        self.env
            .state
            .join("io.containerd.runtime.v2.task")
            .join(&self.ns)
            .join(id)
            .join("rootfs")
    }

    /// The cgroup freezer files of a running container.
    pub fn cgroup(&self, id: &str) -> CgroupFiles {
        let pid = self
            .task_pid(id)
            .unwrap_or_else(|| panic!("container {id} has no task"));
        CgroupFiles::of_pid(pid)
    }

    /// Pulls `reference` from the rig's registry with skopeo and unpacks it
    /// with umoci; returns the unpacked root filesystem.
    pub fn pull_unpack(&self, reference: &str) -> PathBuf {
        let layout = self.pull_layout(reference);
        let bundle = layout.with_file_name("bundle");
        check_cmd(
            Command::new("umoci")
                .arg("unpack")
                .arg("--image")
                .arg(format!("{}:t", layout.display()))
                .arg(&bundle),
        );
        bundle.join("rootfs")
    }

    /// Copies `reference` from the rig's registry with skopeo into a new
    /// OCI layout (`<dir>/oci`, tag `t`) and returns the layout's path.
    pub fn pull_layout(&self, reference: &str) -> PathBuf {
        let layout = self.new_dir("pull").join("oci");
        check_cmd(
            Command::new("skopeo")
                .args(["copy", "-q", "--src-tls-verify=false"])
                .arg(format!("docker://{reference}"))
                .arg(format!("oci:{}:t", layout.display())),
        );
        layout
    }

    /// The manifest of a pushed image, via skopeo.
    pub fn inspect_raw(&self, reference: &str) -> serde_json::Value {
        let out = check_cmd(
            Command::new("skopeo")
                .args(["inspect", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{reference}")),
        );
        serde_json::from_str(&out).expect("manifest JSON")
    }

    /// The CLI with the global options for this namespace and state dir.
    pub fn cli(&self) -> Command {
        self.cli_in(&self.state_dir())
    }

    /// The CLI with the global options for this namespace and `state_dir`.
    pub fn cli_in(&self, state_dir: &Path) -> Command {
        let mut c = Command::new(cli_path());
        c.arg("--address")
            .arg(&self.env.containerd)
            .arg("--namespace")
            .arg(&self.ns)
            .arg("--state-dir")
            .arg(state_dir);
        c
    }

    fn cleanup(&self) {
        for mut c in self
            .children
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        let tasks = self.tasks();
        for (id, pid, _) in &tasks {
            // A frozen task does not die from SIGKILL under the v1 freezer.
            if *pid > 0 {
                CgroupFiles::of_pid(*pid).thaw();
            }
            let _ = run_cmd(&mut self.ctr_cmd(&["task", "kill", "-a", "-s", "SIGKILL", id]));
        }
        for (id, _, _) in &tasks {
            let _ = wait_until(Duration::from_secs(10), || {
                !matches!(
                    self.task_status(id).as_deref(),
                    Some("RUNNING" | "PAUSED" | "PAUSING")
                )
            });
            let _ = run_cmd(&mut self.ctr_cmd(&["task", "delete", "-f", id]));
        }
        let out = run_cmd(&mut self.ctr_cmd(&["containers", "ls", "-q"]));
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = run_cmd(&mut self.ctr_cmd(&["containers", "rm", id]));
        }
        let out = run_cmd(&mut self.ctr_cmd(&["images", "ls", "-q"]));
        for img in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = run_cmd(&mut self.ctr_cmd(&["images", "rm", "--sync", img]));
        }
        let out = run_cmd(&mut self.ctr_cmd(&["leases", "ls", "-q"]));
        for l in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = run_cmd(&mut self.ctr_cmd(&["leases", "rm", "--sync", l]));
        }
        let out = run_cmd(&mut self.ctr_cmd(&["content", "ls", "-q"]));
        for d in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = run_cmd(&mut self.ctr_cmd(&["content", "rm", d]));
        }
        let mut rm = Command::new("ctr");
        rm.arg("-a")
            .arg(&self.env.containerd)
            .args(["namespaces", "rm", &self.ns]);
        let out = run_cmd(&mut rm);
        if !out.status.success() {
            eprintln!(
                "warning: namespace {} not removed: {}",
                self.ns,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // runc leaves the namespace's parent cgroups behind.
        for ctl in [
            "freezer", "unified", "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices",
            "systemd",
        ] {
            let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(ctl).join(&self.ns));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.cleanup();
    }
}

impl Rig {
    /// The number a test writer keeps in the container's `/data/counter`.
    /// The writer truncates before it writes: an empty read is retried.
    pub fn read_counter(&self, id: &str) -> u64 {
        let p = self.rootfs(id).join("data/counter");
        for _ in 0..100 {
            if let Ok(s) = std::fs::read_to_string(&p)
                && let Ok(n) = s.trim().parse()
            {
                return n;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("cannot read {}", p.display());
    }
}

/// A container script that counts in `/data/counter` every 5 ms, so a test
/// can tell whether the container runs ([`Rig::read_counter`]).
pub const COUNTER: &str =
    "i=0; while true; do i=$((i+1)); echo $i > /data/counter; usleep 5000; done";

impl Rig {
    /// Starts container `id` running [`COUNTER`] and waits until it counts.
    pub fn start_counter(&self, id: &str) {
        self.run_container(id, COUNTER);
        wait_until(Duration::from_secs(10), || self.read_counter(id) > 10)
            .unwrap_or_else(|_| panic!("container {id} does not count"));
    }

    /// Panics unless container `id` (running [`COUNTER`]) keeps counting.
    pub fn assert_counting(&self, id: &str) {
        let before = self.read_counter(id);
        wait_until(Duration::from_secs(10), || {
            self.read_counter(id) > before + 5
        })
        .unwrap_or_else(|_| panic!("container {id} does not run"));
    }

    /// Starts `seamless-snapshot commit --json` of container `id` to
    /// `target`, with a debug-build fault hold `(variable, milliseconds)`,
    /// stdout and stderr piped.
    pub fn spawn_commit(
        &self,
        id: &str,
        target: &str,
        fault: Option<(&str, u64)>,
    ) -> std::process::Child {
        let mut cmd = self.cli();
        cmd.args(["commit", "--container", id, "--target", target, "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((var, ms)) = fault {
            cmd.env(var, ms.to_string());
        }
        cmd.spawn().expect("spawn the CLI")
    }

    /// Waits until `cgroup` is frozen by the commit `child`; panics if the
    /// child exits first or nothing freezes within a minute.
    pub fn wait_frozen_by(&self, cgroup: &CgroupFiles, child: &mut std::process::Child) {
        let frozen = wait_until(Duration::from_secs(60), || {
            cgroup.is_frozen() || child.try_wait().ok().flatten().is_some()
        });
        if child.try_wait().ok().flatten().is_some() {
            panic!("the CLI exited before the container was frozen");
        }
        assert!(frozen.is_ok(), "the container was never frozen");
    }
}

impl Rig {
    /// Capture directories of this test's jobs that still exist: inside the
    /// job directories, or next to containerd's snapshots (where they go
    /// when the state dir is on another filesystem).
    pub fn leftover_captures(&self) -> Vec<PathBuf> {
        let jobs = self.state_dir().join("jobs");
        let Ok(entries) = fs::read_dir(&jobs) else {
            return Vec::new();
        };
        let beside = self
            .env
            .root
            .join("io.containerd.snapshotter.v1.overlayfs/seamless-capture");
        entries
            .filter_map(|e| e.ok())
            .flat_map(|e| [e.path().join("capture"), beside.join(e.file_name())])
            .filter(|p| p.exists())
            .collect()
    }

    /// The ids of the jobs in [`Self::state_dir`], oldest first (ids are
    /// time-ordered).
    pub fn job_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(self.state_dir().join("jobs"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

/// Waits up to `timeout` for `child` to exit; kills it and panics with
/// `what` if it does not (a hang).
pub fn wait_exit(
    child: &mut std::process::Child,
    timeout: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return status;
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` every 20 ms until it returns true; `Err(elapsed)` on timeout.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Result<Duration, Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The seamless-snapshot CLI binary: `$SEAMLESS_CLI`, or built with cargo
/// into the target directory this test binary lives in.
pub fn cli_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("SEAMLESS_CLI") {
            return PathBuf::from(p);
        }
        // <target>/<profile>/deps/<test binary>
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in <target>/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut c = Command::new(cargo);
        c.current_dir(&workspace)
            .args(["build", "-q", "-p", "seamless-snapshot-cli", "--target-dir"])
            .arg(&target_dir);
        if profile_dir.file_name() == Some(OsStr::new("release")) {
            c.arg("--release");
        }
        check_cmd(&mut c);
        profile_dir.join("seamless-snapshot")
    })
    .clone()
}

/// The freezer files of a container's cgroup (v1 freezer and/or v2).
#[derive(Debug, Clone)]
pub struct CgroupFiles {
    /// `/sys/fs/cgroup/freezer/<path>`, when the v1 freezer is mounted.
    pub v1: Option<PathBuf>,
    /// The v2 directory (`/sys/fs/cgroup/unified/<path>` or `/sys/fs/cgroup/<path>`).
    pub v2: Option<PathBuf>,
}

impl CgroupFiles {
    /// Finds the cgroups of `pid` via `/proc/<pid>/cgroup`.
    pub fn of_pid(pid: u32) -> CgroupFiles {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let mut v1 = None;
        let mut v2 = None;
        for line in text.lines() {
            let mut f = line.splitn(3, ':');
            let (_, ctl, path) = match (f.next(), f.next(), f.next()) {
                (Some(a), Some(b), Some(c)) => (a, b, c.trim_start_matches('/')),
                _ => continue,
            };
            if ctl.split(',').any(|c| c == "freezer") {
                let d = Path::new("/sys/fs/cgroup/freezer").join(path);
                if d.join("freezer.state").exists() {
                    v1 = Some(d);
                }
            } else if ctl.is_empty() {
                for base in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
                    let d = Path::new(base).join(path);
                    if d.join("cgroup.freeze").exists() {
                        v2 = Some(d);
                        break;
                    }
                }
            }
        }
        CgroupFiles { v1, v2 }
    }

    /// Whether either freezer holds (or is bringing) the cgroup frozen.
    pub fn is_frozen(&self) -> bool {
        if let Some(d) = &self.v1
            && let Ok(s) = fs::read_to_string(d.join("freezer.state"))
            && s.trim() != "THAWED"
        {
            return true;
        }
        if let Some(d) = &self.v2 {
            if fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1") {
                return true;
            }
            if fs::read_to_string(d.join("cgroup.events"))
                .is_ok_and(|s| s.lines().any(|l| l.trim() == "frozen 1"))
            {
                return true;
            }
        }
        false
    }

    /// Freezes through every freezer interface the process has (as another
    /// tool would).
    pub fn freeze(&self) {
        if let Some(d) = &self.v1 {
            let _ = fs::write(d.join("freezer.state"), "FROZEN");
        }
        if let Some(d) = &self.v2 {
            let _ = fs::write(d.join("cgroup.freeze"), "1");
        }
    }

    /// Thaws both freezers (cleanup after a failed test).
    pub fn thaw(&self) {
        if let Some(d) = &self.v1 {
            let _ = fs::write(d.join("freezer.state"), "THAWED");
        }
        if let Some(d) = &self.v2 {
            let _ = fs::write(d.join("cgroup.freeze"), "0");
        }
    }
}

/// The kind of a file system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A unix socket.
    Socket,
}

/// What is compared of one path.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its kind.
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size (regular files).
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: i64,
    /// Device number (devices).
    pub rdev: u64,
    /// Symlink target.
    pub link: Option<OsString>,
    /// Extended attributes, except overlayfs' own and `security.selinux`.
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    /// `(dev, ino)`, to find hard links.
    pub inode: (u64, u64),
    /// Link count.
    pub nlink: u64,
}

/// Lists the extended attributes of `path` (not following symlinks).
pub fn xattrs(path: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return out;
    };
    let mut names = vec![0u8; 4096];
    // SAFETY: the buffer is valid for names.len() bytes and c is NUL-terminated.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return out;
    }
    names.truncate(n as usize);
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.overlay.") || name == b"security.selinux" {
            continue;
        }
        let cname = CString::new(name).expect("xattr name without NUL");
        let mut val = vec![0u8; 65536];
        // SAFETY: as above.
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        if m >= 0 {
            val.truncate(m as usize);
            out.insert(OsString::from_vec(name.to_vec()), val);
        }
    }
    out
}

/// Sets an extended attribute on `path` (not following symlinks).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    let n = CString::new(name).expect("name without NUL");
    // SAFETY: valid NUL-terminated strings and a buffer of value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        panic!(
            "lsetxattr {} {name}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// Stats one path.
pub fn entry(path: &Path) -> std::io::Result<Entry> {
    let md = fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::Char
    } else if ft.is_block_device() {
        Kind::Block
    } else {
        Kind::Socket
    };
    Ok(Entry {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: if kind == Kind::File { md.size() } else { 0 },
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec(),
        rdev: md.rdev(),
        link: if kind == Kind::Symlink {
            Some(fs::read_link(path)?.into_os_string())
        } else {
            None
        },
        xattrs: xattrs(path),
        inode: (md.dev(), md.ino()),
        nlink: md.nlink(),
    })
}

/// Every path under `root` (relative, `root` itself as ""), without
/// following symlinks or crossing into other file systems.
pub fn scan_tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let root_dev = fs::symlink_metadata(root)
        .unwrap_or_else(|e| panic!("stat {}: {e}", root.display()))
        .dev();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let e = entry(&abs).unwrap_or_else(|e| panic!("stat {}: {e}", abs.display()));
        if e.kind == Kind::Dir && e.inode.0 == root_dev {
            let rd =
                fs::read_dir(&abs).unwrap_or_else(|e| panic!("readdir {}: {e}", abs.display()));
            for de in rd {
                let de = de.unwrap_or_else(|e| panic!("readdir {}: {e}", abs.display()));
                stack.push(rel.join(de.file_name()));
            }
        }
        out.insert(rel, e);
    }
    out
}

/// Options of [`compare_trees`].
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// Top-level paths (relative) left out on both sides, e.g. `proc`.
    pub ignore: Vec<PathBuf>,
    /// Compare directory mtimes too (off: unpackers touch them).
    pub dir_mtimes: bool,
}

fn same_file_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    let mut fa = fs::File::open(a)?;
    let mut fb = fs::File::open(b)?;
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let m = f.read(&mut buf[n..])?;
        if m == 0 {
            break;
        }
        n += m;
    }
    Ok(n)
}

fn is_ignored(rel: &Path, ignore: &[PathBuf]) -> bool {
    ignore.iter().any(|i| rel.starts_with(i))
}

fn show(p: &Path) -> String {
    format!("/{}", p.as_os_str().to_string_lossy())
}

/// Compares `actual` against `expected` path by path: set of paths, kind,
/// mode (with setuid), owner, size, content, mtime (seconds; nanoseconds when
/// `actual` has them), symlink target, device numbers, xattrs and hard-link
/// groups. Returns one line per difference (empty: identical).
pub fn compare_trees(expected: &Path, actual: &Path, opts: &CompareOptions) -> Vec<String> {
    let e = scan_tree(expected);
    let a = scan_tree(actual);
    let mut diffs = Vec::new();
    let ek: BTreeSet<&PathBuf> = e.keys().filter(|p| !is_ignored(p, &opts.ignore)).collect();
    let ak: BTreeSet<&PathBuf> = a.keys().filter(|p| !is_ignored(p, &opts.ignore)).collect();
    for p in ek.difference(&ak) {
        diffs.push(format!("missing in snapshot: {}", show(p)));
    }
    for p in ak.difference(&ek) {
        diffs.push(format!("extra in snapshot: {}", show(p)));
    }
    let mut e_groups: BTreeMap<(u64, u64), BTreeSet<&PathBuf>> = BTreeMap::new();
    let mut a_groups: BTreeMap<(u64, u64), BTreeSet<&PathBuf>> = BTreeMap::new();
    for p in ek.intersection(&ak) {
        let (x, y) = (&e[*p], &a[*p]);
        let name = show(p);
        if x.kind != y.kind {
            diffs.push(format!("{name}: kind {:?} != {:?}", y.kind, x.kind));
            continue;
        }
        // The root directory's own metadata comes from the unpacker.
        if p.as_os_str().is_empty() {
            continue;
        }
        if x.mode != y.mode {
            diffs.push(format!("{name}: mode {:o} != {:o}", y.mode, x.mode));
        }
        if (x.uid, x.gid) != (y.uid, y.gid) {
            diffs.push(format!(
                "{name}: owner {}:{} != {}:{}",
                y.uid, y.gid, x.uid, x.gid
            ));
        }
        if x.xattrs != y.xattrs {
            diffs.push(format!("{name}: xattrs {:?} != {:?}", y.xattrs, x.xattrs));
        }
        if x.kind != Kind::Dir || opts.dir_mtimes {
            let ns_differs = y.mtime_nsec != 0 && y.mtime_nsec != x.mtime_nsec;
            if x.mtime != y.mtime || ns_differs {
                diffs.push(format!(
                    "{name}: mtime {}.{:09} != {}.{:09}",
                    y.mtime, y.mtime_nsec, x.mtime, x.mtime_nsec
                ));
            }
        }
        match x.kind {
            Kind::File => {
                if x.size != y.size {
                    diffs.push(format!("{name}: size {} != {}", y.size, x.size));
                } else {
                    match same_file_content(&expected.join(p), &actual.join(p)) {
                        Ok(true) => {}
                        Ok(false) => diffs.push(format!("{name}: content differs")),
                        Err(err) => diffs.push(format!("{name}: cannot compare content: {err}")),
                    }
                }
                if x.nlink > 1 || y.nlink > 1 {
                    e_groups.entry(x.inode).or_default().insert(*p);
                    a_groups.entry(y.inode).or_default().insert(*p);
                }
            }
            Kind::Symlink if x.link != y.link => {
                diffs.push(format!("{name}: symlink -> {:?} != {:?}", y.link, x.link));
            }
            Kind::Char | Kind::Block if x.rdev != y.rdev => {
                diffs.push(format!("{name}: rdev {} != {}", y.rdev, x.rdev));
            }
            _ => {}
        }
    }
    // Hard links: the same groups of paths share an inode on both sides.
    let e_sets: BTreeSet<&BTreeSet<&PathBuf>> = e_groups.values().filter(|g| g.len() > 1).collect();
    let a_sets: BTreeSet<&BTreeSet<&PathBuf>> = a_groups.values().filter(|g| g.len() > 1).collect();
    for g in e_sets.difference(&a_sets) {
        diffs.push(format!(
            "hard-link group not preserved: {:?}",
            g.iter().map(|p| show(p)).collect::<Vec<_>>()
        ));
    }
    for g in a_sets.difference(&e_sets) {
        diffs.push(format!(
            "unexpected hard-link group: {:?}",
            g.iter().map(|p| show(p)).collect::<Vec<_>>()
        ));
    }
    diffs
}

/// A path from raw bytes (for non-UTF-8 names).
pub fn path_from_bytes(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock the stall probe uses).
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock_gettime");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// The stall probe's log: `(start_ns, gap_ns)` records.
pub fn read_probe_log(path: &Path) -> Vec<(u64, u64)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect()
}

/// The largest stall (ns) that overlaps `[from, to]` (CLOCK_MONOTONIC ns).
pub fn largest_gap_in(log: &[(u64, u64)], from: u64, to: u64) -> u64 {
    log.iter()
        .filter(|(s, g)| *s <= to && s + g >= from)
        .map(|(_, g)| *g)
        .max()
        .unwrap_or(0)
}

/// `n` pseudo-random (incompressible) bytes from `seed` (xorshift).
pub fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rig_env_from_a_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("env");
        let keys = [
            "CONTAINERD",
            "CONTAINERD_ROOT",
            "CONTAINERD_STATE",
            "REGISTRY",
            "BASE_TAR",
            "PROBE",
            "RIG",
        ];
        let text: String = keys
            .iter()
            .map(|k| format!("export SEAMLESS_TEST_{k}=/x/{k}\n"))
            .collect();
        fs::write(&p, &text).unwrap();
        let env = RigEnv::from_env_file(&p).unwrap();
        assert_eq!(env.containerd, "/x/CONTAINERD");
        assert_eq!(env.dir, Path::new("/x/RIG"));
        fs::write(&p, text.replace("/x/PROBE", "")).unwrap();
        let err = RigEnv::from_env_file(&p).unwrap_err();
        assert!(err.ends_with("no SEAMLESS_TEST_PROBE"), "{err}");
    }

    #[test]
    fn gaps_inside_an_interval() {
        let log = vec![(100, 50), (1000, 300), (5000, 10)];
        assert_eq!(largest_gap_in(&log, 120, 900), 50);
        assert_eq!(largest_gap_in(&log, 900, 6000), 300);
        assert_eq!(largest_gap_in(&log, 2000, 3000), 0);
    }

    #[test]
    fn compare_identical_and_different_trees() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for d in [&a, &b] {
            fs::create_dir_all(d.join("sub")).unwrap();
            fs::write(d.join("sub/f"), b"hello").unwrap();
            std::os::unix::fs::symlink("/nowhere", d.join("l")).unwrap();
            fs::hard_link(d.join("sub/f"), d.join("h")).unwrap();
        }
        // Align mtimes.
        for p in ["sub/f", "l"] {
            let st = entry(&a.join(p)).unwrap();
            let ts = [
                nix::sys::time::TimeSpec::new(st.mtime, st.mtime_nsec),
                nix::sys::time::TimeSpec::new(st.mtime, st.mtime_nsec),
            ];
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &b.join(p),
                &ts[0],
                &ts[1],
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        let d = compare_trees(&a, &b, &CompareOptions::default());
        assert!(d.is_empty(), "{d:?}");
        fs::write(b.join("sub/f"), b"hellO").unwrap();
        fs::remove_file(b.join("h")).unwrap();
        let d = compare_trees(&a, &b, &CompareOptions::default());
        assert!(
            d.iter().any(|l| l.contains("missing in snapshot: /h")),
            "{d:?}"
        );
        assert!(
            d.iter()
                .any(|l| l.contains("content differs") || l.contains("mtime")),
            "{d:?}"
        );
    }

    #[test]
    fn cgroup_files_of_self() {
        // Our own process is never frozen.
        assert!(!CgroupFiles::of_pid(std::process::id()).is_frozen());
    }
}
