//! The incremental frozen window is exact against a real container: a
//! random workload (create, overwrite, append, truncate, renames of files
//! and directories across directories, unlink, mkdir/rmdir, hardlinks,
//! symlinks, chmod/chown, copy-up and deletion of base files, opaque
//! directories) runs while the container is committed again and again with
//! `verify_capture`, which makes each window also run the full compare and
//! fail on any difference.
//!
//! `SEAMLESS_EXACTNESS_CYCLES` sets the number of commits (the CI default
//! is small); `tests/exactness/run.sh` runs the long unit-level run.

use std::time::Duration;

use seamless_snapshot::{CapturePath, ContainerdSnapshotter, SeamlessSnapshot};
use seamless_snapshot_tests::{Rig, wait_until};

/// A busybox workload: random operations on a small namespace of names,
/// failures ignored (a name may be missing, a directory in the way).
const WORKLOAD: &str = r#"
cd /
mkdir -p /w/a /w/b /w/c
set -- /w /w/a /w/b /w/c
while true; do
  eval "p=\${$(( RANDOM % 4 + 1 ))}/f$(( RANDOM % 6 ))"
  eval "q=\${$(( RANDOM % 4 + 1 ))}/f$(( RANDOM % 6 ))"
  eval "r=\${$(( RANDOM % 4 + 1 ))}/d$(( RANDOM % 6 ))"
  eval "s=\${$(( RANDOM % 4 + 1 ))}/d$(( RANDOM % 6 ))"
  case $(( RANDOM % 18 )) in
    0) head -c $(( RANDOM % 5000 )) /dev/urandom > $p ;;
    1) echo more >> $p ;;
    2) : > $p ;;
    3) mv $p $q ;;
    4) rm -f $p ;;
    5) mkdir $r ;;
    6) rmdir $r ;;
    7) mv $r $s ;;
    8) ln $p $q ;;
    9) ln -s f$(( RANDOM % 6 )) $p ;;
    10) chmod $(( RANDOM % 8 ))$(( RANDOM % 8 ))4 $p ;;
    11) chown $(( RANDOM % 3 )):$(( RANDOM % 3 )) $p ;;
    12) echo x >> /etc/hosts; echo y >> /etc/passwd ;;
    13) rm -f /bin/[$(( RANDOM % 10 ))]* ;;
    14) rm -rf /etc/base-dir; mkdir /etc/base-dir; echo o > /etc/base-dir/new ;;
    15) rm -rf $r ;;
    16) cp $p $r/ ;;
    *) echo $RANDOM > $q ;;
  esac 2>/dev/null
done
"#;

fn cycles() -> usize {
    std::env::var("SEAMLESS_EXACTNESS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25)
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn incremental_windows_are_exact_under_a_random_workload() {
    let rig = Rig::new();
    rig.run_container(
        "randomw",
        "mkdir -p /etc/base-dir; while true; do sleep 1; done",
    );
    // The workload runs beside the container's init, in its cgroup.
    rig.exec_detached("randomw", &["sh", "-c", WORKLOAD]);
    let w = rig.rootfs("randomw").join("w");
    let changed = |w: &std::path::Path| std::fs::read_dir(w).map_or(0, |d| d.count());
    wait_until(Duration::from_secs(20), || changed(&w) > 3).expect("the workload does not run");
    // Debug builds: a pause between the last pre-copy pass and the freeze,
    // so that each window has the workload's latest changes to sync.
    // SAFETY: set before any other thread of this test reads the
    // environment (the rig's threads do not).
    unsafe { std::env::set_var("SEAMLESS_FAULT_HOLD_BEFORE_FREEZE_MS", "40") };
    let mut config = rig.config();
    config.defaults.verify_capture = true;
    let snap = ContainerdSnapshotter::new(config).unwrap();
    let (mut incremental, mut window_files) = (0, 0);
    for cycle in 0..cycles() {
        let target = rig.target("randomw", &cycle.to_string());
        let r = snap
            .commit("randomw", &target)
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        let b = &r.pause_breakdown;
        assert!(b.verified, "cycle {cycle}: not verified");
        assert!(b.precopy_passes >= 1);
        window_files += b.files_copied + b.entries_removed;
        if b.capture_path == Some(CapturePath::Incremental) {
            incremental += 1;
        } else {
            eprintln!("cycle {cycle}: full compare: {:?}", b.fallback_reason);
        }
        eprintln!(
            "cycle {cycle}: pause {:?}, {} checked, {} files, {} passes",
            r.pause_time, b.entries_checked, b.files_copied, b.precopy_passes
        );
    }
    assert_eq!(incremental, cycles(), "every window incremental");
    eprintln!(
        "{window_files} entries copied or removed inside the windows; /w holds {}",
        changed(&w)
    );
    // The last one to the end: the image is pushed.
    let target = rig.target("randomw", "last");
    let r = snap
        .commit_with_wait("randomw", &target, Duration::from_secs(120))
        .unwrap();
    assert!(r.manifest_digest.is_some());
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn an_untrustworthy_tracker_falls_back_to_the_full_compare() {
    let rig = Rig::new();
    rig.run_container(
        "distrust",
        "mkdir /many; for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do echo $i > /many/$i; done; \
         i=0; while true; do i=$((i+1)); echo $i > /n; usleep 2000; done",
    );
    let n = rig.rootfs("distrust").join("n");
    wait_until(Duration::from_secs(20), || n.exists()).expect("the writer does not run");
    // Debug builds: the tracker is distrusted from the start.
    // SAFETY: set before the commit's threads start; no other thread of
    // this test reads the environment.
    unsafe { std::env::set_var("SEAMLESS_FAULT_DISTRUST_TRACKER", "1") };
    let mut config = rig.config();
    config.defaults.verify_capture = true;
    let snap = ContainerdSnapshotter::new(config).unwrap();
    let r = snap.commit("distrust", &rig.target("distrust", "1"));
    // SAFETY: as above.
    unsafe { std::env::remove_var("SEAMLESS_FAULT_DISTRUST_TRACKER") };
    let r = r.unwrap();
    let b = &r.pause_breakdown;
    assert_eq!(b.capture_path, Some(CapturePath::Full));
    assert!(
        b.fallback_reason
            .as_deref()
            .is_some_and(|w| w.contains("distrusted")),
        "{b:?}"
    );
    assert!(b.verified);
    assert_eq!(b.precopy_passes, 1, "no passes without a tracker");
    // A full compare looks at every entry of the layer.
    assert!(b.entries_checked > 20, "{b:?}");
}
