//! One case's container: its writable layer filled, the probe and the
//! writer running inside it, and where its upper dir and cgroup are.
//!
//! The probe and its log live in a host tmpfs directory bind-mounted at
//! `/bench`: neither is part of the writable layer, so the layer holds only
//! the populated files and the writer's hot files, and the probe's writes
//! raise no events on the layer's filesystem.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use seamless_snapshot_tests::{BASE_IMAGE, CgroupFiles, Rig, check_cmd, wait_until};

use crate::args::{Layer, Writer};
use crate::probe::ProbeLog;

pub const CONTAINER: &str = "bench";

/// A running case container.
pub struct Workload {
    pub upper: PathBuf,
    pub cgroup: CgroupFiles,
    pub probe: ProbeLog,
    shm: PathBuf,
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.shm);
    }
}

impl Workload {
    pub fn start(
        rig: &Rig,
        layer: Layer,
        writer: Writer,
        threshold_us: u64,
        nice: i32,
    ) -> Workload {
        let shm = PathBuf::from(format!("/dev/shm/seamless-bench-{}", rig.ns()));
        fs::create_dir_all(&shm).expect("create the probe's tmpfs dir");
        let probe_bin = shm.join("probe");
        fs::copy(&rig.env.probe, &probe_bin).expect("copy the probe");
        fs::set_permissions(&probe_bin, fs::Permissions::from_mode(0o755)).expect("chmod probe");
        let mount = format!(
            "type=bind,src={},dst=/bench,options=rbind:rw",
            shm.display()
        );
        rig.run_image_with(
            &["--mount", &mount],
            BASE_IMAGE,
            CONTAINER,
            &["sh", "-c", "while true; do sleep 1; done"],
        );
        let merged = rig.rootfs(CONTAINER);

        eprintln!("  populating {layer}");
        let t = Instant::now();
        populate(&merged.join("data/bench"), layer);
        // Written back now, not during the first measurement; only this fs.
        check_cmd(Command::new("sync").arg("-f").arg(&merged));
        eprintln!("  took {:.1} s", t.elapsed().as_secs_f64());

        let pid = rig.task_pid(CONTAINER).expect("the container's pid");
        let upper = upper_dir(pid);
        let cgroup = CgroupFiles::of_pid(pid);

        let thr = threshold_us.to_string();
        rig.exec_detached(CONTAINER, &["/bench/probe", "/bench/probe.log", &thr]);
        if let Writer::Hot { files, interval_ms } = writer {
            // One small rewrite every interval_ms, round and round the set.
            let script = format!(
                "mkdir -p /data/hot; i=0; while true; do j=0; while [ $j -lt {files} ]; do \
                 echo $i > /data/hot/h$j; j=$((j+1)); usleep {}; done; i=$((i+1)); done",
                interval_ms * 1000
            );
            rig.exec_detached(CONTAINER, &["sh", "-c", &script]);
        }
        let probe = ProbeLog::new(&shm.join("probe.log"));
        wait_until(Duration::from_secs(10), || probe.started()).expect("the probe did not start");
        if nice != 0 {
            renice_probe(&cgroup, nice);
        }
        if let Writer::Hot {
            files, interval_ms, ..
        } = writer
        {
            // Let the writer go once round its set before measuring.
            std::thread::sleep(Duration::from_millis(files as u64 * interval_ms + 500));
        } else {
            std::thread::sleep(Duration::from_millis(500));
        }
        Workload {
            upper,
            cgroup,
            probe,
            shm,
        }
    }
}

/// Sets the nice value of the probe (found by name among the cgroup's
/// processes) from the host: the container has no `CAP_SYS_NICE`.
fn renice_probe(cg: &CgroupFiles, nice: i32) {
    let dir = cg.v2.as_ref().or(cg.v1.as_ref()).expect("a cgroup dir");
    let procs = fs::read_to_string(dir.join("cgroup.procs")).expect("read cgroup.procs");
    let pid: u32 = procs
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .find(|p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "probe"))
        .expect("the probe's pid");
    // SAFETY: a plain syscall on another process, no pointers.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, nice) };
    assert_eq!(r, 0, "setpriority: {}", std::io::Error::last_os_error());
}

/// Fills `layer.files` files totalling `layer.mib` MiB under `dir`, 100 per
/// directory, with incompressible bytes (gzip gains nothing).
fn populate(dir: &Path, layer: Layer) {
    let per_file = (layer.mib << 20) / layer.files;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; per_file];
    for i in 0..layer.files {
        // xorshift: cheap and incompressible.
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let b = state.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let sub = dir.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&sub).expect("create a layer dir");
        }
        fs::write(sub.join(format!("f{i:06}")), &buf).expect("write a layer file");
    }
}

/// The overlay upper dir of the root mount of process `pid`.
fn upper_dir(pid: u32) -> PathBuf {
    let info = fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("read mountinfo");
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(4) != Some(&"/") || fields.get(sep + 1) != Some(&"overlay") {
            continue;
        }
        if let Some(opts) = fields.get(sep + 3)
            && let Some(u) = opts.split(',').find_map(|o| o.strip_prefix("upperdir="))
        {
            return PathBuf::from(u);
        }
    }
    panic!("no overlay root mount with an upperdir in /proc/{pid}/mountinfo");
}
