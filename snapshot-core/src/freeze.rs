//! Freezing and thawing a container's cgroup directly.
//!
//! containerd's / runc's pause costs 5–17 ms of round trips; writing the
//! cgroup freezer file ourselves and waiting for the kernel's confirmation
//! costs well under a millisecond. This module does that, measures the pause
//! honestly (freeze request → thaw complete, `CLOCK_MONOTONIC`), and makes sure
//! the container is never left frozen: [`with_frozen`] thaws on every path,
//! and a forked dead-man switch ([`Watchdog`]) thaws the cgroup if the
//! committing process dies inside the window or the window overruns its bound.

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::procfs::cgroup::{parse_proc_cgroup, v1_freezer_path, v2_path};
use crate::procfs::mountinfo::{self, Mount};
use crate::types::FreezerKind;

const V2_FREEZE: &str = "cgroup.freeze";
const V2_EVENTS: &str = "cgroup.events";
const V1_STATE: &str = "freezer.state";

/// How long a thaw may take before it is reported as failed. Thawing is
/// immediate in both interfaces unless an ancestor cgroup is frozen.
const THAW_TIMEOUT: Duration = Duration::from_secs(1);

/// Interval between re-reads of the freezer state. Sleeping (not spinning)
/// leaves the CPU to the tasks that must reach the refrigerator.
const POLL_INTERVAL: Duration = Duration::from_micros(20);

/// Low-level cgroup freezer operations, behind a trait so that the
/// orchestration ([`with_frozen`]) can be tested with a fake.
pub trait Freezer: Send + Sync {
    /// Which interface this freezer drives.
    fn kind(&self) -> FreezerKind;
    /// The cgroup directory.
    fn path(&self) -> &Path;
    /// Requests the freeze and waits until the cgroup is fully frozen. On
    /// timeout it thaws again and returns [`Error::Freeze`].
    fn freeze(&self, timeout: Duration) -> Result<()>;
    /// Requests the thaw and waits until the cgroup is thawed.
    fn thaw(&self) -> Result<()>;
    /// Whether the cgroup is frozen, or a freeze is in progress.
    fn is_frozen(&self) -> Result<bool>;
    /// The file and the bytes the watchdog writes to thaw the cgroup.
    fn thaw_command(&self) -> (PathBuf, &'static [u8]);
}

fn freeze_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Freeze {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// `now + d`, saturating at a year for absurd durations.
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

/// Opens a cgroup control file once, so that the frozen window has no path
/// lookups. `File` opens with `O_CLOEXEC`.
fn open_control(path: &Path, read: bool, write: bool) -> Result<File> {
    OpenOptions::new()
        .read(read)
        .write(write)
        .open(path)
        .at("open", path)
}

/// Reads a small control file from offset 0 into `buf`; returns the bytes read.
fn pread_small<'b>(file: &File, path: &Path, buf: &'b mut [u8]) -> Result<&'b [u8]> {
    loop {
        match file.read_at(buf, 0) {
            Ok(n) => return Ok(buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
}

fn pwrite_all(file: &File, path: &Path, bytes: &[u8]) -> Result<()> {
    loop {
        match file.write_at(bytes, 0) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(freeze_error(
                    path,
                    format!("short write ({n} of {} bytes)", bytes.len()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("write", path, e)),
        }
    }
}

/// Freezer of a cgroup v2 directory (`cgroup.freeze`, `cgroup.events`).
#[derive(Debug)]
pub struct CgroupV2Freezer {
    dir: PathBuf,
    freeze_path: PathBuf,
    events_path: PathBuf,
    freeze_file: File,
    events_file: File,
}

impl CgroupV2Freezer {
    /// Opens the freezer files of the cgroup v2 directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let freeze_path = dir.join(V2_FREEZE);
        let events_path = dir.join(V2_EVENTS);
        let freeze_file = open_control(&freeze_path, true, true)?;
        let events_file = open_control(&events_path, true, false)?;
        let freezer = CgroupV2Freezer {
            dir,
            freeze_path,
            events_path,
            freeze_file,
            events_file,
        };
        // Fails early on kernels whose cgroup.events has no `frozen` key.
        freezer.events_frozen()?;
        Ok(freezer)
    }

    /// The `frozen` value of `cgroup.events`.
    fn events_frozen(&self) -> Result<bool> {
        let mut buf = [0u8; 256];
        let text = pread_small(&self.events_file, &self.events_path, &mut buf)?;
        parse_events_frozen(text)
            .ok_or_else(|| freeze_error(&self.dir, "cgroup.events has no `frozen` line"))
    }

    /// Waits until `cgroup.events` says `frozen <want>`; false on timeout.
    ///
    /// Each wait is `poll(POLLPRI)` capped at [`POLL_INTERVAL`]: the kernel
    /// sends at most one `cgroup.events` notification per 10 ms per file
    /// (later ones are deferred by a timer) and delivers them from a
    /// workqueue, so a back-to-back freeze could otherwise wait ~10–20 ms
    /// for a state that is already there.
    fn wait_frozen(&self, want: bool, timeout: Duration) -> Result<bool> {
        let _slack = FineTimerSlack::set();
        let deadline = deadline_after(timeout);
        loop {
            // Reading also re-arms the kernfs notification for the next poll.
            if self.events_frozen()? == want {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let wait = POLL_INTERVAL.min(deadline - now);
            let mut fds = [PollFd::new(self.events_file.as_fd(), PollFlags::POLLPRI)];
            match ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::errno("poll", &self.events_path, e)),
            }
        }
    }
}

/// The value of the `frozen` key of a `cgroup.events` file.
fn parse_events_frozen(text: &[u8]) -> Option<bool> {
    text.split(|&b| b == b'\n').find_map(|line| {
        let value = line.strip_prefix(b"frozen ")?;
        match value.trim_ascii() {
            b"1" => Some(true),
            b"0" => Some(false),
            _ => None,
        }
    })
}

impl Freezer for CgroupV2Freezer {
    fn kind(&self) -> FreezerKind {
        FreezerKind::V2
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    fn freeze(&self, timeout: Duration) -> Result<()> {
        pwrite_all(&self.freeze_file, &self.freeze_path, b"1")?;
        match self.wait_frozen(true, timeout) {
            Ok(true) => Ok(()),
            Ok(false) => Err(match self.thaw() {
                Ok(()) => freeze_error(
                    &self.dir,
                    format!("not frozen within {timeout:?}; thawed again"),
                ),
                Err(e) => freeze_error(
                    &self.dir,
                    format!("not frozen within {timeout:?}; thawing failed too: {e}"),
                ),
            }),
            Err(e) => {
                let _ = self.thaw();
                Err(e)
            }
        }
    }

    fn thaw(&self) -> Result<()> {
        pwrite_all(&self.freeze_file, &self.freeze_path, b"0")?;
        if self.wait_frozen(false, THAW_TIMEOUT)? {
            Ok(())
        } else {
            Err(freeze_error(
                &self.dir,
                format!("still frozen {THAW_TIMEOUT:?} after the thaw request (frozen ancestor?)"),
            ))
        }
    }

    fn is_frozen(&self) -> Result<bool> {
        let mut buf = [0u8; 16];
        let requested = pread_small(&self.freeze_file, &self.freeze_path, &mut buf)?;
        Ok(requested.trim_ascii() == b"1" || self.events_frozen()?)
    }

    fn thaw_command(&self) -> (PathBuf, &'static [u8]) {
        (self.freeze_path.clone(), b"0")
    }
}

/// States of the v1 `freezer.state` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V1State {
    Thawed,
    Freezing,
    Frozen,
}

fn parse_v1_state(text: &[u8]) -> Option<V1State> {
    match text.trim_ascii() {
        b"THAWED" => Some(V1State::Thawed),
        b"FREEZING" => Some(V1State::Freezing),
        b"FROZEN" => Some(V1State::Frozen),
        _ => None,
    }
}

/// Freezer of a cgroup v1 freezer-controller directory (`freezer.state`).
#[derive(Debug)]
pub struct CgroupV1Freezer {
    dir: PathBuf,
    state_path: PathBuf,
    writer: File,
    reader: File,
}

impl CgroupV1Freezer {
    /// Opens `freezer.state` of the v1 freezer cgroup directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let state_path = dir.join(V1_STATE);
        let writer = open_control(&state_path, false, true)?;
        let reader = open_control(&state_path, true, false)?;
        let freezer = CgroupV1Freezer {
            dir,
            state_path,
            writer,
            reader,
        };
        freezer.state()?;
        Ok(freezer)
    }

    /// Reads the state. The read itself is what moves the kernel's state
    /// from FREEZING to FROZEN once every task is frozen.
    fn state(&self) -> Result<V1State> {
        let mut buf = [0u8; 32];
        let text = pread_small(&self.reader, &self.state_path, &mut buf)?;
        parse_v1_state(text).ok_or_else(|| {
            freeze_error(
                &self.dir,
                format!(
                    "unexpected freezer.state {:?}",
                    String::from_utf8_lossy(text)
                ),
            )
        })
    }

    fn wait_state(&self, want: V1State, timeout: Duration) -> Result<bool> {
        let _slack = FineTimerSlack::set();
        let deadline = deadline_after(timeout);
        loop {
            if self.state()? == want {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }
}

/// Lowers this thread's timer slack (default 50 µs) while polling the
/// freezer state, so that a 20 µs sleep is 20 µs; restores it on drop.
struct FineTimerSlack(libc::c_int);

impl FineTimerSlack {
    fn set() -> Self {
        // SAFETY: prctl with these options only reads/sets a per-thread integer.
        let old = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK) };
        if old > 1000 {
            // SAFETY: as above.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
        }
        FineTimerSlack(old)
    }
}

impl Drop for FineTimerSlack {
    fn drop(&mut self) {
        if self.0 > 1000 {
            // SAFETY: restores the value read in `set`.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, self.0 as libc::c_ulong) };
        }
    }
}

impl Freezer for CgroupV1Freezer {
    fn kind(&self) -> FreezerKind {
        FreezerKind::V1
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    fn freeze(&self, timeout: Duration) -> Result<()> {
        pwrite_all(&self.writer, &self.state_path, b"FROZEN")?;
        match self.wait_state(V1State::Frozen, timeout) {
            Ok(true) => Ok(()),
            Ok(false) => Err(match self.thaw() {
                Ok(()) => freeze_error(
                    &self.dir,
                    format!("not frozen within {timeout:?}; thawed again"),
                ),
                Err(e) => freeze_error(
                    &self.dir,
                    format!("not frozen within {timeout:?}; thawing failed too: {e}"),
                ),
            }),
            Err(e) => {
                let _ = self.thaw();
                Err(e)
            }
        }
    }

    fn thaw(&self) -> Result<()> {
        pwrite_all(&self.writer, &self.state_path, b"THAWED")?;
        if self.wait_state(V1State::Thawed, THAW_TIMEOUT)? {
            Ok(())
        } else {
            Err(freeze_error(
                &self.dir,
                format!("not thawed {THAW_TIMEOUT:?} after the thaw request (frozen ancestor?)"),
            ))
        }
    }

    fn is_frozen(&self) -> Result<bool> {
        Ok(self.state()? != V1State::Thawed)
    }

    fn thaw_command(&self) -> (PathBuf, &'static [u8]) {
        (self.state_path.clone(), b"THAWED")
    }
}

// ---------------------------------------------------------------------------
// Finding the cgroup of a process.

/// Whether `path` is `/`, i.e. a hierarchy's root cgroup.
fn is_root_cgroup(path: &str) -> bool {
    Path::new(path)
        .components()
        .all(|c| c == Component::RootDir)
}

/// Whether cgroup `inner` is `outer` or one of its descendants.
fn cgroup_contains(outer: &str, inner: &str) -> bool {
    Path::new(inner).starts_with(Path::new(outer))
}

/// The directory of cgroup `path` under one of `mounts`, if one shows it.
fn resolve_under(mounts: &[&Mount], path: &str) -> Option<PathBuf> {
    let cgroup = Path::new(path);
    // A path with `..` is outside our cgroup namespace: not reachable.
    if cgroup.components().any(|c| c == Component::ParentDir) || !cgroup.is_absolute() {
        return None;
    }
    mounts.iter().find_map(|m| {
        let rel = cgroup.strip_prefix(&m.root).ok()?;
        Some(m.mount_point.join(rel))
    })
}

/// The freezer cgroup directories available for a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreezerDirs {
    /// The process's cgroup v2 directory, when usable.
    pub v2: Option<PathBuf>,
    /// The process's v1 freezer cgroup directory, when usable.
    pub v1: Option<PathBuf>,
    /// Why candidates were rejected (for error messages).
    pub rejected: Vec<String>,
}

/// Resolves the freezer cgroup directories of a process from its
/// `/proc/<pid>/cgroup` (`target`), the caller's own `/proc/self/cgroup`
/// (`own`) and the caller's `/proc/self/mountinfo`. Pure: takes file contents.
///
/// A candidate is rejected when it is a root cgroup (not freezable, and it
/// holds the whole host) or when it contains the caller itself (freezing it
/// would freeze the committer). On a hybrid host where the process is in both
/// a v2 cgroup and a v1 freezer cgroup with different paths, the v2 cgroup is
/// dropped: runtimes always place containers in the v1 freezer, while the v2
/// path may then be a shared service cgroup such as containerd's.
pub fn freezer_dirs(target: &str, own: &str, mountinfo: &[u8]) -> FreezerDirs {
    let lines = parse_proc_cgroup(target);
    let own_lines = parse_proc_cgroup(own);
    let mounts = mountinfo::cgroup_mounts(mountinfo);
    let mut dirs = FreezerDirs::default();

    let mut pick = |label: &str, path: Option<&str>, own: Option<&str>, v2: bool| {
        let path = path?;
        if is_root_cgroup(path) {
            dirs.rejected
                .push(format!("{label} cgroup {path:?} is the root cgroup"));
            return None;
        }
        if own.is_some_and(|own| cgroup_contains(path, own)) {
            dirs.rejected
                .push(format!("{label} cgroup {path:?} contains this process"));
            return None;
        }
        let candidates: Vec<&Mount> = mounts
            .iter()
            .filter(|m| m.cgroup_version_2() == Some(v2) && (v2 || m.has_super_option("freezer")))
            .collect();
        let dir = resolve_under(&candidates, path);
        if dir.is_none() {
            dirs.rejected.push(format!(
                "{label} cgroup {path:?} is not under a visible mount"
            ));
        }
        dir.map(|d| (path.to_owned(), d))
    };

    let v2 = pick("v2", v2_path(&lines), v2_path(&own_lines), true);
    let v1 = pick(
        "v1 freezer",
        v1_freezer_path(&lines),
        v1_freezer_path(&own_lines),
        false,
    );
    let v2 = match (v2, &v1) {
        (Some((p2, _)), Some((p1, _))) if p2 != *p1 => {
            dirs.rejected.push(format!(
                "v2 cgroup {p2:?} differs from the v1 freezer cgroup {p1:?}; using v1"
            ));
            None
        }
        (v2, _) => v2,
    };
    dirs.v2 = v2.map(|(_, d)| d);
    dirs.v1 = v1.map(|(_, d)| d);
    dirs
}

/// Finds the freezer cgroup of process `pid` on this host, from
/// `/proc/<pid>/cgroup` and `/proc/self/mountinfo` (see [`freezer_dirs`]).
/// Prefers cgroup v2 when its directory has `cgroup.freeze`, else the v1
/// freezer controller. [`Error::Unsupported`] when neither is usable.
pub fn freezer_for_pid(pid: u32) -> Result<Box<dyn Freezer>> {
    let read = |path: &str| std::fs::read_to_string(path).at("read", path);
    let target = read(&format!("/proc/{pid}/cgroup"))?;
    let own = read("/proc/self/cgroup")?;
    let mountinfo = std::fs::read("/proc/self/mountinfo").at("read", "/proc/self/mountinfo")?;
    let mut dirs = freezer_dirs(&target, &own, &mountinfo);
    if let Some(dir) = dirs.v2.take() {
        if dir.join(V2_FREEZE).exists() {
            return Ok(Box::new(CgroupV2Freezer::new(dir)?));
        }
        dirs.rejected
            .push(format!("{} has no {V2_FREEZE}", dir.display()));
    }
    if let Some(dir) = dirs.v1.take() {
        return Ok(Box::new(CgroupV1Freezer::new(dir)?));
    }
    Err(Error::Unsupported(format!(
        "no usable cgroup freezer for pid {pid}: {}",
        if dirs.rejected.is_empty() {
            "neither a cgroup v2 nor a v1 freezer cgroup".to_owned()
        } else {
            dirs.rejected.join("; ")
        }
    )))
}

/// The freezer cgroup that holds every one of `pids` (the container's
/// processes): `init`'s own cgroup, or its nearest ancestor holding them all
/// when some processes live in sibling cgroups (systemd inside a container
/// moves itself to `<container>/init.scope`). Freezing is hierarchical, so the
/// whole container stops. A cgroup that holds this process is never chosen.
pub fn freezer_for_pids(init: u32, pids: &[u32]) -> Result<Box<dyn Freezer>> {
    let mut freezer = freezer_for_pid(init)?;
    let me = std::process::id();
    // Deep nesting inside a container is rare; a handful of levels suffice.
    for _ in 0..8 {
        let inside = pids_below(freezer.path())?;
        let missing: Vec<u32> = pids
            .iter()
            .copied()
            // A process that exited meanwhile is no concern.
            .filter(|p| !inside.contains(p) && Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if missing.is_empty() {
            return Ok(freezer);
        }
        let parent = freezer.path().parent().map(Path::to_path_buf);
        let unsupported = |why: String| {
            Error::Unsupported(format!(
                "container processes {missing:?} are outside cgroup {}: {why}",
                freezer.path().display()
            ))
        };
        let Some(parent) = parent else {
            return Err(unsupported("no parent cgroup".into()));
        };
        if pids_below(&parent)?.contains(&me) {
            return Err(unsupported(format!(
                "their common cgroup {} also holds this process",
                parent.display()
            )));
        }
        freezer = match freezer.kind() {
            FreezerKind::V2 => {
                Box::new(CgroupV2Freezer::new(&parent).map_err(|e| unsupported(e.to_string()))?)
            }
            FreezerKind::V1 => {
                Box::new(CgroupV1Freezer::new(&parent).map_err(|e| unsupported(e.to_string()))?)
            }
        };
    }
    Err(Error::Unsupported(format!(
        "container processes are spread over cgroups more than 8 levels apart (below {})",
        freezer.path().display()
    )))
}

/// Every pid in the cgroup `dir` and its descendants.
pub fn pids_below(dir: &Path) -> Result<std::collections::HashSet<u32>> {
    let mut out = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let procs = d.join("cgroup.procs");
        match std::fs::read_to_string(&procs) {
            Ok(text) => out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
            // Removed while we walk: its processes are gone or moved.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read", procs, e)),
        }
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read directory", d, e)),
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    Ok(out)
}

/// Runs the calling thread under `SCHED_FIFO` until dropped, then restores
/// its previous policy. Best effort: without the privilege nothing changes.
struct RealtimeGuard {
    policy: libc::c_int,
    param: libc::sched_param,
}

impl RealtimeGuard {
    fn enter() -> Option<RealtimeGuard> {
        // SAFETY: plain syscalls on the calling thread (pid 0) with valid
        // pointers to local values.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let mut param: libc::sched_param = std::mem::zeroed();
            if policy < 0 || libc::sched_getparam(0, &mut param) != 0 {
                return None;
            }
            if policy == libc::SCHED_FIFO || policy == libc::SCHED_RR {
                return None; // already real-time: leave it as the caller set it
            }
            // A low real-time priority: above every normal task, below the
            // kernel's own real-time threads.
            let rt = libc::sched_param { sched_priority: 1 };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &rt) != 0 {
                tracing::debug!(
                    error = %io::Error::last_os_error(),
                    "no SCHED_FIFO for the frozen window"
                );
                return None;
            }
            Some(RealtimeGuard { policy, param })
        }
    }
}

impl Drop for RealtimeGuard {
    fn drop(&mut self) {
        // SAFETY: restores the values read in `enter` for the same thread.
        let rc = unsafe { libc::sched_setscheduler(0, self.policy, &self.param) };
        if rc != 0 {
            tracing::warn!(
                error = %io::Error::last_os_error(),
                "could not restore the scheduling policy after the frozen window"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Dead-man switch.

/// Byte the parent sends to disarm the watchdog.
const DISARM: u8 = b'D';
/// Watchdog exit codes.
const EXIT_DISARMED: i32 = 0;
const EXIT_FIRED: i32 = 10;
const EXIT_FIRED_WRITE_FAILED: i32 = 11;

/// How an armed [`Watchdog`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogOutcome {
    /// Disarmed before the deadline; it did not write.
    Disarmed,
    /// It wrote the thaw command (deadline passed, or the parent went away).
    Fired {
        /// Whether the thaw write succeeded.
        thaw_written: bool,
    },
    /// Its exit status was lost (it was killed, or reaped by someone else).
    Unknown,
}

/// A dead-man switch: a forked child process that writes a cgroup's thaw
/// command when the parent dies (its socket end closes) or when `bound`
/// elapses before [`Watchdog::disarm`]. Dropping an armed watchdog without
/// disarming it makes it fire at once.
#[derive(Debug)]
pub struct Watchdog {
    pid: libc::pid_t,
    sock: Option<OwnedFd>,
    deadline: Instant,
    path: PathBuf,
}

impl Watchdog {
    /// Forks the watchdog. `thaw_path` is opened here, before the fork, so
    /// that the child only has to `write` to it.
    pub fn arm(thaw_path: &Path, thaw_bytes: &'static [u8], bound: Duration) -> Result<Watchdog> {
        let thaw_file = OpenOptions::new()
            .write(true)
            .open(thaw_path)
            .at("open", thaw_path)?;
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // A socket rather than a pipe: the parent's disarm uses
        // send(MSG_NOSIGNAL), which cannot raise SIGPIPE in a host process
        // (Python, C) that did not ignore it. CLOEXEC so that processes spawned
        // meanwhile by other threads do not keep the parent's end open.
        // SAFETY: fds is a valid 2-element array.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(Error::io(
                "socketpair for watchdog of",
                thaw_path,
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: socketpair succeeded; both fds are new and owned by us.
        let (parent_end, child_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

        let deadline = deadline_after(bound);
        let deadline_ts = monotonic_after(bound);
        let child_fd = child_end.as_raw_fd();
        let parent_fd = parent_end.as_raw_fd();
        let thaw_fd = thaw_file.as_raw_fd();

        // SAFETY: the child branch calls only async-signal-safe functions
        // (see `watchdog_child`) and never returns.
        match unsafe { libc::fork() } {
            -1 => Err(Error::io(
                "fork watchdog for",
                thaw_path,
                io::Error::last_os_error(),
            )),
            0 => watchdog_child(parent_fd, child_fd, thaw_fd, thaw_bytes, deadline_ts),
            pid => {
                drop(child_end);
                drop(thaw_file);
                Ok(Watchdog {
                    pid,
                    sock: Some(parent_end),
                    deadline,
                    path: thaw_path.to_path_buf(),
                })
            }
        }
    }

    /// The watchdog's process id.
    #[cfg(test)]
    pub fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Disarms the watchdog and reaps it; tells whether it had fired.
    pub fn disarm(mut self) -> Result<WatchdogOutcome> {
        self.finish(true)
    }

    /// Makes the watchdog fire now (used when our own thaw failed) and reaps it.
    pub fn fire_now(mut self) -> Result<WatchdogOutcome> {
        self.finish(false)
    }

    fn finish(&mut self, disarm: bool) -> Result<WatchdogOutcome> {
        let Some(sock) = self.sock.take() else {
            return Ok(WatchdogOutcome::Unknown);
        };
        if disarm {
            // Fails with EPIPE if the watchdog already fired and exited: fine,
            // its exit status says so.
            // SAFETY: sends one byte from a valid buffer on an owned socket.
            unsafe {
                libc::send(
                    sock.as_raw_fd(),
                    (&DISARM as *const u8).cast(),
                    1,
                    libc::MSG_NOSIGNAL,
                )
            };
        }
        // Closing our end is an EOF for the watchdog: it fires unless it
        // already read the disarm byte.
        drop(sock);
        let mut status: libc::c_int = 0;
        loop {
            // SAFETY: waits for our own child with a valid status pointer.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if rc == self.pid {
                break;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Reaped elsewhere (SIGCHLD ignored, or a waitpid(-1) in
                // another thread): the exit status is lost.
                Some(libc::ECHILD) => return Ok(self.unknown()),
                _ => return Err(Error::io("waitpid watchdog of", &self.path, err)),
            }
        }
        Ok(if libc::WIFEXITED(status) {
            match libc::WEXITSTATUS(status) {
                EXIT_DISARMED => WatchdogOutcome::Disarmed,
                EXIT_FIRED => WatchdogOutcome::Fired { thaw_written: true },
                EXIT_FIRED_WRITE_FAILED => WatchdogOutcome::Fired {
                    thaw_written: false,
                },
                _ => self.unknown(),
            }
        } else {
            self.unknown()
        })
    }

    /// With the status lost: the watchdog can only have fired after its
    /// deadline, as we held our socket end until now.
    fn unknown(&self) -> WatchdogOutcome {
        if Instant::now() >= self.deadline {
            WatchdogOutcome::Unknown
        } else {
            WatchdogOutcome::Disarmed
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.sock.is_some() {
            let _ = self.finish(false);
        }
    }
}

/// `CLOCK_MONOTONIC` now + `d`, as a timespec (saturating).
fn monotonic_after(d: Duration) -> libc::timespec {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let add_secs = libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX / 2);
    let mut sec = now.tv_sec.saturating_add(add_secs);
    let mut nsec = now.tv_nsec + d.subsec_nanos() as libc::c_long /* < 1e9 */;
    if nsec >= 1_000_000_000 {
        nsec -= 1_000_000_000;
        sec = sec.saturating_add(1);
    }
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

/// Milliseconds (rounded up, clamped to `c_int`) from `now` to `deadline`;
/// 0 when passed. Plain saturating arithmetic: runs in the forked child.
// `i64::from` is the identity on 64-bit targets, a widening on 32-bit ones.
#[allow(clippy::useless_conversion)]
fn ms_until(deadline: &libc::timespec, now: &libc::timespec) -> libc::c_int {
    let sec = i64::from(deadline.tv_sec).saturating_sub(i64::from(now.tv_sec));
    let nsec = i64::from(deadline.tv_nsec).saturating_sub(i64::from(now.tv_nsec));
    let total_ns = sec.saturating_mul(1_000_000_000).saturating_add(nsec);
    if total_ns <= 0 {
        return 0;
    }
    let ms = total_ns.saturating_add(999_999) / 1_000_000;
    if ms > libc::c_int::MAX as i64 {
        libc::c_int::MAX
    } else {
        ms as libc::c_int
    }
}

fn errno() -> libc::c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// The forked watchdog. We may have been forked from a multi-threaded
/// process, so only async-signal-safe calls: no allocation, no locks, no
/// panics (all arithmetic is saturating, no indexing).
fn watchdog_child(
    parent_fd: RawFd,
    sock: RawFd,
    thaw_fd: RawFd,
    thaw: &'static [u8],
    deadline: libc::timespec,
) -> ! {
    // SAFETY: all calls below are async-signal-safe syscalls on fds we own.
    unsafe {
        libc::close(parent_fd);
        // Own session: a signal to the parent's process group or terminal
        // does not reach us. We live at most `bound`, so ignoring the usual
        // termination signals is safe too.
        libc::setsid();
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        close_other_fds(sock, thaw_fd);
        loop {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
            let ms = ms_until(&deadline, &now);
            if ms == 0 {
                break; // bound overrun
            }
            let mut pfd = libc::pollfd {
                fd: sock,
                events: libc::POLLIN,
                revents: 0,
            };
            let rc = libc::poll(&mut pfd, 1, ms);
            if rc == 0 || (rc < 0 && errno() == libc::EINTR) {
                continue;
            }
            if rc < 0 {
                break; // cannot watch any more: thaw rather than risk it
            }
            let mut byte = 0u8;
            let n = libc::read(sock, (&mut byte as *mut u8).cast(), 1);
            if n == 1 && byte == DISARM {
                libc::_exit(EXIT_DISARMED);
            }
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            break; // EOF: the parent is gone (or sent garbage)
        }
        let written = loop {
            let n = libc::write(thaw_fd, thaw.as_ptr().cast(), thaw.len());
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            break n;
        };
        libc::_exit(if written == thaw.len() as isize {
            EXIT_FIRED
        } else {
            EXIT_FIRED_WRITE_FAILED
        })
    }
}

/// Closes every fd but `a` and `b`, so that the watchdog does not keep the
/// parent's unrelated pipes and sockets open. Best effort (close_range is
/// Linux 5.9+).
fn close_other_fds(a: RawFd, b: RawFd) {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let ranges = [
        (0, lo.saturating_sub(1)),
        (lo.saturating_add(1), hi.saturating_sub(1)),
        (hi.checked_add(1).unwrap_or(-1), libc::c_int::MAX),
    ];
    for (first, last) in ranges {
        if 0 <= first && first <= last {
            // SAFETY: raw syscall, async-signal-safe; fds a and b are excluded.
            unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    first as libc::c_uint,
                    last as libc::c_uint,
                    0 as libc::c_uint,
                )
            };
        }
    }
}

// ---------------------------------------------------------------------------
// Orchestration.

/// The measured pause (all on `CLOCK_MONOTONIC`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PauseTiming {
    /// Freeze requested → thaw completed: what the container experiences.
    pub pause: Duration,
    /// Freeze requested → fully frozen.
    pub freeze: Duration,
    /// The work done while frozen.
    pub frozen_work: Duration,
    /// Thaw requested → thawed.
    pub thaw: Duration,
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Runs `f`, turning a panic into [`Error::Internal`].
fn no_panic<R>(what: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(Error::Internal(format!(
            "{what} panicked: {}",
            panic_message(&*p)
        )))
    })
}

/// Runs `work` with the cgroup frozen and returns its result with the
/// measured pause. Blocking: call it from a blocking thread.
///
/// A [`Watchdog`] is armed before the freeze and thaws the cgroup if this
/// process dies, or once `bound` has elapsed since arming. The cgroup is
/// thawed on every path (work error, work panic, freeze failure). If the
/// watchdog fired, the copy may have seen a running container, so the
/// result is discarded with [`Error::Freeze`] even if `work` succeeded.
/// `freeze_timeout` should be well below `bound`.
pub fn with_frozen<T>(
    freezer: &dyn Freezer,
    freeze_timeout: Duration,
    bound: Duration,
    work: impl FnOnce() -> Result<T>,
) -> Result<(T, PauseTiming)> {
    if bound.is_zero() {
        return Err(Error::InvalidArgument(
            "frozen-window bound must be > 0".into(),
        ));
    }
    let (thaw_path, thaw_bytes) = freezer.thaw_command();
    let watchdog = Watchdog::arm(&thaw_path, thaw_bytes, bound)?;
    // Every scheduling delay of this thread inside the window is pause the
    // container feels: run it real-time until the thaw (dropped on return).
    let _rt = RealtimeGuard::enter();

    let t0 = Instant::now();
    if let Err(e) = no_panic("freeze", || freezer.freeze(freeze_timeout)) {
        // The freeze may have half-happened: thaw anyway.
        return Err(match end_window(freezer, watchdog) {
            Ok(_) => e,
            Err(thaw_err) => freeze_error(freezer.path(), format!("{e}; then {thaw_err}")),
        });
    }
    let t1 = Instant::now();
    let outcome = panic::catch_unwind(AssertUnwindSafe(work));
    let t2 = Instant::now();
    let thawed = no_panic("thaw", || freezer.thaw());
    let t3 = Instant::now();
    // Retiring the watchdog (send + waitpid) is outside the pause.
    let ended = retire_watchdog(freezer, watchdog, thawed);
    let timing = PauseTiming {
        pause: t3 - t0,
        freeze: t1 - t0,
        frozen_work: t2 - t1,
        thaw: t3 - t2,
    };
    tracing::debug!(cgroup = %freezer.path().display(), ?timing, "frozen window");
    let fired = ended?;
    let value = match outcome {
        Ok(result) => result?,
        Err(p) => {
            return Err(Error::Internal(format!(
                "work in the frozen window panicked: {}",
                panic_message(&*p)
            )));
        }
    };
    if fired {
        tracing::warn!(cgroup = %freezer.path().display(), ?bound, ?timing, "watchdog fired; capture discarded");
        return Err(freeze_error(
            freezer.path(),
            format!(
                "frozen window exceeded bound {bound:?} (pause {:?}); capture discarded",
                timing.pause
            ),
        ));
    }
    Ok((value, timing))
}

/// Thaws and retires the watchdog; see [`retire_watchdog`].
fn end_window(freezer: &dyn Freezer, watchdog: Watchdog) -> Result<bool> {
    let thawed = no_panic("thaw", || freezer.thaw());
    retire_watchdog(freezer, watchdog, thawed)
}

/// Retires the watchdog after our thaw attempt `thawed`. Ok(true) when the
/// watchdog fired (the window was not fully frozen). Err when our thaw
/// failed (the cgroup may still be frozen).
fn retire_watchdog(freezer: &dyn Freezer, watchdog: Watchdog, thawed: Result<()>) -> Result<bool> {
    match thawed {
        Ok(()) => Ok(match watchdog.disarm() {
            Ok(WatchdogOutcome::Disarmed) => false,
            Ok(WatchdogOutcome::Fired { .. } | WatchdogOutcome::Unknown) => true,
            Err(e) => {
                // We thawed ourselves; only the watchdog's verdict is lost.
                tracing::warn!(error = %e, "watchdog status lost; capture discarded");
                true
            }
        }),
        Err(thaw_err) => {
            // Let the watchdog's pre-opened fd try too, then check.
            let _ = watchdog.fire_now();
            let state = no_panic("is_frozen", || freezer.is_frozen());
            let detail = match state {
                Ok(false) => "thawed by the watchdog".to_owned(),
                Ok(true) => "THE CGROUP IS STILL FROZEN".to_owned(),
                Err(e) => format!("state unknown: {e}"),
            };
            tracing::error!(cgroup = %freezer.path().display(), error = %thaw_err, %detail, "thaw failed");
            Err(freeze_error(
                freezer.path(),
                format!("thaw failed: {thaw_err}; {detail}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::Mutex;

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
        thaw_file: tempfile::NamedTempFile,
    }

    impl FakeFreezer {
        fn new() -> Self {
            FakeFreezer {
                calls: Mutex::new(Vec::new()),
                fail_freeze: false,
                fail_thaw: false,
                thaw_file: tempfile::NamedTempFile::new().unwrap(),
            }
        }
        fn record(&self, c: Call) {
            self.calls.lock().unwrap().push(c);
        }
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
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
                Ok(())
            }
        }
        fn thaw(&self) -> Result<()> {
            self.record(Call::Thaw);
            if self.fail_thaw {
                Err(freeze_error(self.path(), "fake thaw failure"))
            } else {
                Ok(())
            }
        }
        fn is_frozen(&self) -> Result<bool> {
            Ok(false)
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

    #[test]
    fn watchdog_fires_on_drop_and_when_disarmed_does_not() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let wd = Watchdog::arm(file.path(), b"THAWED", BOUND).unwrap();
        assert_eq!(wd.disarm().unwrap(), WatchdogOutcome::Disarmed);
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "");

        // The armed watchdog must not hold the parent's other fds open.
        let (r, w) = nix::unistd::pipe().unwrap();
        let r = File::from(r);
        let wd = Watchdog::arm(file.path(), b"THAWED", BOUND).unwrap();
        drop(w);
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut &r, &mut rest).unwrap(); // EOF, not a hang
        let pid = wd.pid();
        drop(wd); // reaped by drop, after firing
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "THAWED");
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
    }

    #[test]
    fn ms_until_rounds_up_and_saturates() {
        let ts = |s, ns| libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        };
        assert_eq!(ms_until(&ts(10, 0), &ts(10, 0)), 0);
        assert_eq!(ms_until(&ts(10, 0), &ts(11, 0)), 0);
        assert_eq!(ms_until(&ts(10, 1), &ts(10, 0)), 1);
        assert_eq!(ms_until(&ts(11, 0), &ts(10, 999_000_000)), 1);
        assert_eq!(ms_until(&ts(12, 500_000_000), &ts(10, 0)), 2500);
        assert_eq!(
            ms_until(&ts(libc::time_t::MAX, 0), &ts(0, 0)),
            libc::c_int::MAX
        );
    }

    // ---- parsing ----

    const HYBRID_CGROUP: &str = "\
12:freezer:/k8s/abc
11:cpu,cpuacct:/k8s/abc
1:name=systemd:/system.slice/containerd.service
0::/k8s/abc
";
    const HYBRID_MOUNTINFO: &[u8] = b"\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime shared:14 - cgroup cgroup rw,freezer
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
";
    const V2_MOUNTINFO: &[u8] = b"\
29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn resolves_hybrid_and_pure_v2() {
        let own_root = "12:freezer:/\n0::/\n";
        let d = freezer_dirs(HYBRID_CGROUP, own_root, HYBRID_MOUNTINFO);
        assert_eq!(
            d.v2.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified/k8s/abc"))
        );
        assert_eq!(
            d.v1.as_deref(),
            Some(Path::new("/sys/fs/cgroup/freezer/k8s/abc"))
        );

        let d = freezer_dirs("0::/ns/ctr\n", "0::/user.slice\n", V2_MOUNTINFO);
        assert_eq!(d.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/ns/ctr")));
        assert_eq!(d.v1, None);

        // The v2 cgroup is the root: only v1.
        let d = freezer_dirs("6:freezer:/ns/c\n0::/\n", own_root, HYBRID_MOUNTINFO);
        assert_eq!(d.v2, None);
        assert_eq!(
            d.v1.as_deref(),
            Some(Path::new("/sys/fs/cgroup/freezer/ns/c"))
        );

        // Hybrid with a shared v2 service cgroup: v1 wins.
        let target = "6:freezer:/ns/c\n0::/system.slice/containerd.service\n";
        let d = freezer_dirs(target, own_root, HYBRID_MOUNTINFO);
        assert_eq!(d.v2, None);
        assert!(d.v1.is_some());

        // A cgroup that contains the caller is refused.
        let d = freezer_dirs("0::/a\n", "0::/a/b\n", V2_MOUNTINFO);
        assert_eq!(d.v2, None);
        assert!(
            d.rejected[0].contains("contains this process"),
            "{:?}",
            d.rejected
        );

        // Mount root other than "/", and paths outside the namespace.
        let mi = b"1 2 0:1 /sub /mnt/cg rw - cgroup2 none rw\n";
        let d = freezer_dirs("0::/sub/x\n", "", mi);
        assert_eq!(d.v2.as_deref(), Some(Path::new("/mnt/cg/x")));
        assert_eq!(freezer_dirs("0::/other/x\n", "", mi).v2, None);
        assert_eq!(freezer_dirs("0::/../x\n", "", V2_MOUNTINFO).v2, None);
    }

    #[test]
    fn parses_state_files() {
        assert_eq!(parse_events_frozen(b"populated 1\nfrozen 1\n"), Some(true));
        assert_eq!(parse_events_frozen(b"populated 1\nfrozen 0\n"), Some(false));
        assert_eq!(parse_events_frozen(b"populated 1\n"), None);
        assert_eq!(parse_v1_state(b"FREEZING\n"), Some(V1State::Freezing));
        assert_eq!(parse_v1_state(b"FROZEN\n"), Some(V1State::Frozen));
        assert_eq!(parse_v1_state(b"THAWED\n"), Some(V1State::Thawed));
        assert_eq!(parse_v1_state(b"x"), None);
    }

    // ---- real cgroups (root) ----

    const HELPER_ENV: &str = "SEAMLESS_FREEZE_HELPER";

    /// A test cgroup holding a `sleep 30`; removed on drop, even on failure.
    struct TestCgroup {
        kind: FreezerKind,
        dir: PathBuf,
        child: Child,
    }

    impl TestCgroup {
        fn new(kind: FreezerKind) -> Option<Self> {
            Self::with_command(kind, &["sleep", "30"])
        }

        fn with_command(kind: FreezerKind, argv: &[&str]) -> Option<Self> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("not root: skipped");
                return None;
            }
            let base = match kind {
                FreezerKind::V2 => "/sys/fs/cgroup/unified",
                FreezerKind::V1 => "/sys/fs/cgroup/freezer",
            };
            if !Path::new(base).join("cgroup.procs").exists() {
                eprintln!("{base} missing: skipped");
                return None;
            }
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let dir =
                Path::new(base).join(format!("seamless-test-{}-{nanos:x}", std::process::id()));
            std::fs::create_dir(&dir).unwrap();
            let child = match Command::new(argv[0]).args(&argv[1..]).spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    panic!("spawn sleep: {e}");
                }
            };
            let cg = TestCgroup { kind, dir, child };
            std::fs::write(cg.dir.join("cgroup.procs"), cg.child.id().to_string()).unwrap();
            Some(cg)
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
        let Some(cg) = TestCgroup::new(kind) else {
            return;
        };
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
    #[ignore = "benchmark; run with --ignored --nocapture"]
    fn bench_freeze_thaw() {
        for kind in [FreezerKind::V2, FreezerKind::V1] {
            let Some(cg) = TestCgroup::new(kind) else {
                return;
            };
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
        let Some(cg) = TestCgroup::with_command(kind, &["sh", "-c", "while :; do :; done"]) else {
            return;
        };
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
    fn v2_busy_task_stops() {
        busy_task_stops(FreezerKind::V2);
    }

    #[test]
    fn v1_busy_task_stops() {
        busy_task_stops(FreezerKind::V1);
    }

    #[test]
    fn v2_freeze_thaw() {
        freeze_thaw_roundtrip(FreezerKind::V2);
    }

    #[test]
    fn v1_freeze_thaw() {
        freeze_thaw_roundtrip(FreezerKind::V1);
    }

    #[test]
    fn freezer_for_pid_finds_test_cgroups() {
        for kind in [FreezerKind::V2, FreezerKind::V1] {
            let Some(cg) = TestCgroup::new(kind) else {
                return;
            };
            let f = freezer_for_pid(cg.child.id()).unwrap();
            assert_eq!(f.kind(), kind);
            assert_eq!(f.path(), cg.dir);
        }
        // This test process sits in root cgroups here: nothing to freeze.
        if std::fs::read_to_string("/proc/self/cgroup")
            .unwrap()
            .contains("freezer:/\n")
        {
            let e = freezer_for_pid(std::process::id()).err().unwrap();
            assert_eq!(e.kind(), crate::error::ErrorKind::Unsupported, "{e}");
        }
    }

    #[test]
    fn realtime_guard_restores_the_policy() {
        // SAFETY: reads the calling thread's policy.
        let before = unsafe { libc::sched_getscheduler(0) };
        {
            let g = RealtimeGuard::enter();
            if nix::unistd::geteuid().is_root() && before == libc::SCHED_OTHER {
                assert!(g.is_some());
                // SAFETY: reads the calling thread's policy.
                let now = unsafe { libc::sched_getscheduler(0) };
                assert_eq!(now, libc::SCHED_FIFO);
            }
        }
        // SAFETY: reads the calling thread's policy.
        let after = unsafe { libc::sched_getscheduler(0) };
        assert_eq!(after, before);
    }

    #[test]
    fn freezer_for_pids_climbs_to_the_common_cgroup() {
        for kind in [FreezerKind::V2, FreezerKind::V1] {
            let Some(cg) = TestCgroup::new(kind) else {
                return;
            };
            // Like systemd in a container: init in one child cgroup, another
            // process in a sibling.
            let (a, b) = (cg.dir.join("a"), cg.dir.join("b"));
            std::fs::create_dir(&a).unwrap();
            std::fs::create_dir(&b).unwrap();
            let mut other = Command::new("sleep").arg("30").spawn().unwrap();
            std::fs::write(a.join("cgroup.procs"), cg.child.id().to_string()).unwrap();
            std::fs::write(b.join("cgroup.procs"), other.id().to_string()).unwrap();

            let alone = freezer_for_pids(cg.child.id(), &[cg.child.id()]).unwrap();
            assert_eq!(alone.path(), a);
            let both = freezer_for_pids(cg.child.id(), &[cg.child.id(), other.id()]);
            // A process outside the container's tree: never climb to a cgroup
            // that holds us (the root here).
            let outside = freezer_for_pids(cg.child.id(), &[cg.child.id(), std::process::id()]);

            let _ = other.kill();
            let _ = other.wait();
            std::fs::write(cg.dir.join("cgroup.procs"), cg.child.id().to_string()).unwrap();
            std::fs::remove_dir(&a).unwrap();
            std::fs::remove_dir(&b).unwrap();

            assert_eq!(both.unwrap().path(), cg.dir);
            let e = outside.err().unwrap();
            assert_eq!(e.kind(), crate::error::ErrorKind::Unsupported, "{e}");
        }
    }

    fn bound_overrun_thaws(kind: FreezerKind) {
        let Some(cg) = TestCgroup::new(kind) else {
            return;
        };
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
    fn v2_bound_overrun_thaws() {
        bound_overrun_thaws(FreezerKind::V2);
    }

    #[test]
    fn v1_bound_overrun_thaws() {
        bound_overrun_thaws(FreezerKind::V1);
    }

    /// Not a test by itself: the committer process of
    /// `watchdog_thaws_after_committer_sigkill`, re-executed from this binary.
    #[test]
    #[ignore = "helper process, run by committer_sigkill tests"]
    fn committer_helper() {
        let Ok(spec) = std::env::var(HELPER_ENV) else {
            return;
        };
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

    fn committer_sigkill(kind: FreezerKind) {
        let Some(cg) = TestCgroup::new(kind) else {
            return;
        };
        let test_name = module_path!()
            .split_once("::")
            .map(|(_, rest)| format!("{rest}::committer_helper"))
            .unwrap();
        let label = if kind == FreezerKind::V2 { "v2" } else { "v1" };
        let mut helper = Command::new(std::env::current_exe().unwrap())
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
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(helper.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let killed = Instant::now();
        helper.wait().unwrap();
        while cg.frozen_on_disk() {
            assert!(
                killed.elapsed() < Duration::from_secs(5),
                "still frozen 5 s after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        println!(
            "{kind:?}: thawed {:?} after SIGKILL of the committer",
            killed.elapsed()
        );
    }

    #[test]
    fn v2_watchdog_thaws_after_committer_sigkill() {
        committer_sigkill(FreezerKind::V2);
    }

    #[test]
    fn v1_watchdog_thaws_after_committer_sigkill() {
        committer_sigkill(FreezerKind::V1);
    }
}
