//! Pause benchmark: how long does a process inside the container stall
//! during a seamless commit, compared with `ctr task pause` + `ctr snapshots
//! diff` + `ctr task resume` on the same container?
//!
//! Needs the rig (`tests/rig/start.sh`, then `. /tmp/seamless-rig/env`) and root:
//!
//! ```text
//! cargo run --release -p seamless-snapshot-tests --bin bench-pause -- [-n 5] [--files 10000] [--mb 200] [--json]
//! ```
//!
//! The container's writable layer gets `--files` files of `--mb` MiB in total
//! (incompressible data written from the host through the container's merged
//! view), a shell writer that keeps appending, and the stall probe
//! (`tests/rig/probe.c`) logging every gap > 200 µs between two
//! CLOCK_MONOTONIC readings. For each method the benchmark records the
//! interval it ran in (CLOCK_MONOTONIC, shared with the container) and reports
//! the largest probe gap inside it. Only measured numbers are printed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use seamless_snapshot::{ContainerdSnapshotter, SeamlessSnapshot};
use seamless_snapshot_tests::{Rig, largest_gap_in, monotonic_ns, read_probe_log, wait_until};

struct Args {
    iterations: usize,
    files: usize,
    mib: usize,
    json: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        iterations: 5,
        files: 10_000,
        mib: 200,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage(&format!("{name} needs a number")))
        };
        match arg.as_str() {
            "-n" | "--iterations" => a.iterations = num("--iterations"),
            "--files" => a.files = num("--files"),
            "--mb" => a.mib = num("--mb"),
            "--json" => a.json = true,
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if a.iterations == 0 || a.files == 0 {
        usage("--iterations and --files must be > 0");
    }
    a
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("bench-pause: {msg}");
    }
    eprintln!("usage: bench-pause [-n ITERATIONS=5] [--files 10000] [--mb 200] [--json]");
    std::process::exit(2);
}

/// Fills `n` files totalling `mib` MiB under `dir` with incompressible bytes.
fn populate(dir: &std::path::Path, n: usize, mib: usize) {
    let per_file = (mib << 20) / n;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; per_file];
    for i in 0..n {
        // xorshift: cheap, incompressible for gzip.
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let b = state.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let sub = dir.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&sub).unwrap();
        }
        fs::write(sub.join(format!("f{i:05}")), &buf).unwrap();
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn main() {
    let args = parse_args();
    let rig = match Rig::try_new() {
        Ok(rig) => rig,
        Err(why) => {
            eprintln!("bench-pause: {why}");
            std::process::exit(2);
        }
    };
    let id = "bench";
    rig.run_container(id, "while true; do sleep 1; done");
    let merged = rig.rootfs(id);

    eprintln!(
        "populating the writable layer: {} files, {} MiB",
        args.files, args.mib
    );
    let t = Instant::now();
    populate(&merged.join("data/bench"), args.files, args.mib);
    check(&mut Command::new("sync"));
    eprintln!("  took {:.1} s", t.elapsed().as_secs_f64());

    // Probe and writer run inside the container.
    let probe_in = merged.join("probe");
    fs::copy(&rig.env.probe, &probe_in).unwrap();
    fs::set_permissions(&probe_in, fs::Permissions::from_mode(0o755)).unwrap();
    rig.exec_detached(id, &["/probe", "/probe.log", "200"]);
    rig.exec_detached(
        id,
        &[
            "sh",
            "-c",
            "i=0; while true; do echo $i >> /data/writer.log; i=$((i+1)); usleep 1000; done",
        ],
    );
    let probe_log = merged.join("probe.log");
    wait_until(Duration::from_secs(10), || probe_log.exists()).expect("probe did not start");
    std::thread::sleep(Duration::from_secs(1));

    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let mut seamless_stall = Vec::new();
    let mut seamless_pause = Vec::new();
    let mut seamless_call = Vec::new();
    let mut ctr_stall = Vec::new();
    let mut ctr_call = Vec::new();

    for i in 0..args.iterations {
        // (a) seamless: the interval is the commit call (pre-copy, freeze,
        // sync, thaw); build and push run afterwards and are waited for
        // outside the interval.
        let target = rig.target("bench", &format!("run{i}"));
        let t0 = monotonic_ns();
        let r = snap.commit(id, &target).unwrap();
        let t1 = monotonic_ns();
        snap.wait(&r.snapshot_id, Duration::from_secs(1800))
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let log = read_probe_log(&probe_log);
        let stall = ms(largest_gap_in(&log, t0, t1));
        seamless_stall.push(stall);
        seamless_pause.push(r.pause_time.as_secs_f64() * 1e3);
        seamless_call.push(ms(t1 - t0));

        // (b) ctr pause + snapshots diff + resume.
        let t0 = monotonic_ns();
        check(rig.ctr_cmd(&["task", "pause", id]).stdout(Stdio::null()));
        check(
            rig.ctr_cmd(&["snapshots", "--snapshotter", "overlayfs", "diff", id])
                .stdout(Stdio::null()),
        );
        check(rig.ctr_cmd(&["task", "resume", id]).stdout(Stdio::null()));
        let t1 = monotonic_ns();
        std::thread::sleep(Duration::from_secs(1));
        let log = read_probe_log(&probe_log);
        let cstall = ms(largest_gap_in(&log, t0, t1));
        ctr_stall.push(cstall);
        ctr_call.push(ms(t1 - t0));
        eprintln!(
            "run {i}: seamless max stall {stall:.3} ms (pause_time {:.3} ms, call {:.0} ms); ctr pause+diff+resume max stall {cstall:.3} ms (call {:.0} ms)",
            r.pause_time.as_secs_f64() * 1e3,
            seamless_call[i],
            ctr_call[i]
        );
    }

    let ratio = median(&ctr_stall) / median(&seamless_stall);
    let report = serde_json::json!({
        "files": args.files,
        "mib": args.mib,
        "iterations": args.iterations,
        "probe_threshold_us": 200,
        "seamless": {
            "max_stall_ms": seamless_stall,
            "pause_time_ms": seamless_pause,
            "call_ms": seamless_call,
            "median_max_stall_ms": median(&seamless_stall),
            "max_max_stall_ms": max(&seamless_stall),
            "median_pause_time_ms": median(&seamless_pause),
            "max_pause_time_ms": max(&seamless_pause),
        },
        "ctr_pause_diff_resume": {
            "max_stall_ms": ctr_stall,
            "call_ms": ctr_call,
            "median_max_stall_ms": median(&ctr_stall),
            "max_max_stall_ms": max(&ctr_stall),
        },
        "ratio_median_max_stall": if ratio.is_finite() { serde_json::json!(ratio) } else { serde_json::Value::Null },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nwritable layer: {} files, {} MiB; {} runs; stall = largest gap seen by the probe (> 200 us)\n",
        args.files, args.mib, args.iterations
    );
    let _ = writeln!(
        out,
        "{:<28} {:>16} {:>16} {:>18} {:>18}",
        "method", "stall median ms", "stall max ms", "pause_time med ms", "pause_time max ms"
    );
    let _ = writeln!(
        out,
        "{:<28} {:>16.3} {:>16.3} {:>18.3} {:>18.3}",
        "seamless commit",
        median(&seamless_stall),
        max(&seamless_stall),
        median(&seamless_pause),
        max(&seamless_pause)
    );
    let _ = writeln!(
        out,
        "{:<28} {:>16.3} {:>16.3} {:>18} {:>18}",
        "ctr pause+diff+resume",
        median(&ctr_stall),
        max(&ctr_stall),
        "-",
        "-"
    );
    if ratio.is_finite() {
        let _ = writeln!(
            out,
            "\nratio of median stalls (ctr / seamless): {ratio:.1}x"
        );
    } else {
        let _ = writeln!(
            out,
            "\nratio: n/a (the probe saw no gap > 200 us during the seamless commits)"
        );
    }
}

fn check(cmd: &mut Command) {
    let st = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(st.success(), "{cmd:?} failed: {st}");
}
