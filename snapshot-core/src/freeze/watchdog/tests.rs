//! Tests of the watchdog: both kinds (the spawned program and the forked
//! fallback) fire, disarm, and are watched by the monitor; isolation on real
//! cgroups (root only).

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};

use super::child::ms_until;
use super::*;

const BOUND: Duration = Duration::from_secs(10);
const KINDS: [WatchdogKind; 2] = [WatchdogKind::Program, WatchdogKind::Forked];

fn arm(kind: WatchdogKind, path: &Path, bytes: &'static [u8], bound: Duration) -> Watchdog {
    let wd = Watchdog::arm_as(Some(kind), spawn::PROGRAM, path, bytes, bound).unwrap();
    assert_eq!(wd.kind(), kind);
    wd
}

#[test]
fn the_program_is_the_default() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let wd = Watchdog::arm(file.path(), b"THAWED", BOUND).unwrap();
    assert_eq!(wd.kind(), WatchdogKind::Program);
    let pid = wd.pid();
    let argv0 = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(argv0.starts_with(b"seamless-watchdog\0"), "{argv0:?}");
    // It holds only its socket, the thaw file and /dev/null.
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(fds.len(), 3, "{fds:?}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap(),
        file.path()
    );
    assert_eq!(wd.disarm().unwrap(), WatchdogOutcome::Disarmed);
}

#[test]
fn fires_on_drop_and_when_disarmed_does_not() {
    for kind in KINDS {
        let file = tempfile::NamedTempFile::new().unwrap();
        let wd = arm(kind, file.path(), b"THAWED", BOUND);
        assert_eq!(wd.disarm().unwrap(), WatchdogOutcome::Disarmed);
        assert_eq!(
            std::fs::read_to_string(file.path()).unwrap(),
            "",
            "{kind:?}"
        );

        // The armed watchdog must not hold the committer's other fds open.
        let (r, w) = nix::unistd::pipe().unwrap();
        let r = File::from(r);
        let wd = arm(kind, file.path(), b"THAWED", BOUND);
        drop(w);
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut &r, &mut rest).unwrap(); // EOF, not a hang
        let pid = wd.pid();
        drop(wd); // reaped by drop, after firing
        assert_eq!(
            std::fs::read_to_string(file.path()).unwrap(),
            "THAWED",
            "{kind:?}"
        );
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
    }
}

#[test]
fn fire_now_writes_and_reports_it() {
    for kind in KINDS {
        let file = tempfile::NamedTempFile::new().unwrap();
        let wd = arm(kind, file.path(), b"0", BOUND);
        assert_eq!(
            wd.fire_now().unwrap(),
            WatchdogOutcome::Fired { thaw_written: true },
            "{kind:?}"
        );
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "0");
    }
}

#[test]
fn fires_at_the_deadline() {
    for kind in KINDS {
        let file = tempfile::NamedTempFile::new().unwrap();
        let wd = arm(kind, file.path(), b"0", Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "0");
        assert_eq!(
            wd.disarm().unwrap(),
            WatchdogOutcome::Fired { thaw_written: true },
            "{kind:?}"
        );
        // The monitor's own thaw, seeing it exit, wrote over it at offset 0.
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "0");
    }
}

/// A watchdog killed inside the window (alone, or with its cgroup): the
/// committer's monitor thaws at once, long before the window would end.
#[test]
fn a_killed_watchdog_is_followed_by_a_thaw_at_once() {
    for kind in KINDS {
        let file = tempfile::NamedTempFile::new().unwrap();
        let wd = arm(kind, file.path(), b"0", BOUND);
        kill(Pid::from_raw(wd.pid() as i32), Signal::SIGKILL).unwrap();
        let killed = Instant::now();
        while std::fs::read_to_string(file.path()).unwrap() != "0" {
            assert!(
                killed.elapsed() < Duration::from_secs(1),
                "{kind:?}: no thaw 1 s after the watchdog died"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(wd.disarm().unwrap(), WatchdogOutcome::Vanished, "{kind:?}");
    }
}

/// Where the program cannot run, the watchdog is forked instead.
#[test]
fn a_program_that_cannot_run_falls_back_to_a_fork() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let wd = Watchdog::arm_as(None, b"not an executable", file.path(), b"0", BOUND).unwrap();
    assert_eq!(wd.kind(), WatchdogKind::Forked);
    assert_eq!(
        wd.fire_now().unwrap(),
        WatchdogOutcome::Fired { thaw_written: true }
    );
    assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "0");
}

#[test]
fn a_program_that_cannot_run_is_an_error() {
    let file = File::create(tempfile::NamedTempFile::new().unwrap().path()).unwrap();
    let deadline = monotonic_after(BOUND).unwrap();
    for image in [&b"not an executable"[..], b"#!/nonexistent\n"] {
        let r = spawn::spawn_program(image, &file, b"0", &deadline)
            .and_then(|(pid, sock)| ready(pid, sock));
        assert!(r.is_err(), "{image:?}");
    }
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

#[test]
fn monotonic_after_saturates() {
    let now = *clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap().as_ref();
    let later = monotonic_after(Duration::from_millis(1500)).unwrap();
    let ms = ms_until(&later, &now);
    assert!((1500..1600).contains(&ms), "{ms}");
    assert!(later.tv_nsec < 1_000_000_000);
    let far = monotonic_after(Duration::MAX).unwrap();
    assert!(far.tv_sec >= libc::time_t::MAX / 2);
}

/// Whether this process has CAP_SYS_RESOURCE (bit 24 of CapEff).
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    eff & (1 << 24) != 0
}

/// Out of every cgroup of ours, out of the OOM killer's reach, and above
/// the window thread's real-time priority until demoted.
#[test]
#[ignore = "needs root"]
fn the_watchdog_is_isolated() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root");
    for kind in KINDS {
        let file = tempfile::NamedTempFile::new().unwrap();
        let wd = arm(kind, file.path(), b"0", BOUND);
        let pid = wd.pid();
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let oom = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        // SAFETY: plain queries about a child of ours.
        let (policy, prio) = unsafe {
            let mut p: libc::sched_param = std::mem::zeroed();
            let policy = libc::sched_getscheduler(pid as i32);
            assert_eq!(libc::sched_getparam(pid as i32, &mut p), 0);
            (policy, p.sched_priority)
        };
        // After our thaw it goes back to the normal policy, and still
        // disarms (see `retire_watchdog`).
        wd.demote();
        // SAFETY: a plain query about a child of ours.
        let demoted = unsafe { libc::sched_getscheduler(pid as i32) };
        assert_eq!(wd.disarm().unwrap(), WatchdogOutcome::Disarmed);
        assert_eq!(demoted, libc::SCHED_OTHER, "{kind:?}: demoted");

        for line in cgroups.lines() {
            let path = line.splitn(3, ':').nth(2).unwrap();
            if line.starts_with("0::") {
                assert_eq!(path, format!("/{}", isolate::WATCHDOG_CGROUP), "{kind:?}");
            } else {
                assert_eq!(path, "/", "{kind:?}: {line}");
            }
        }
        if has_cap_sys_resource() {
            assert_eq!(oom.trim(), "-1000", "{kind:?}");
        } else {
            // Lowering it takes CAP_SYS_RESOURCE, which some sandboxes drop.
            let ours = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
            assert_eq!(oom, ours, "{kind:?}");
            eprintln!("no CAP_SYS_RESOURCE: oom_score_adj -1000 not checked");
        }
        assert_eq!(policy, libc::SCHED_FIFO, "{kind:?}");
        assert_eq!(prio, 2, "{kind:?}: one above the window thread's 1");
    }
}
