//! Pause benchmark (issue 9): how long does a process inside the container
//! stall during a seamless commit, against the kernel's own freeze + thaw
//! (the floor) and `ctr task pause` + `ctr snapshots diff` + `ctr task
//! resume` (the baseline), all on the same container in the same run?
//!
//! Needs root and the rig (`tests/rig/start.sh DIR`, then `. DIR/env`):
//!
//! ```text
//! cargo build --release -p seamless-snapshot-tests --bin bench-pause
//! target/release/bench-pause [--fs host,xfs] [--layers 10000x200,100000x200] [--full]
//!     [--writer hot:100:10] [--methods floor,seamless,ctr,cp] [--no-ctr] [-n 5] [--json]
//! ```
//!
//! A case is a filesystem (the rig's own, or XFS with reflink on a loop file
//! with a containerd of its own, made here), a writable layer (files × MiB of
//! incompressible data) and a writer (none, or one rewriting a bounded set
//! of small files continuously). Each case gets a fresh container running
//! the stall probe (`tests/rig/probe.c`, logging every gap between two of
//! its clock readings above a threshold) and the writer, then, in rounds:
//! bare freeze + thaw cycles (`floor`), one `commit` waited until pushed
//! (`seamless`), one ctr pause + diff + resume (`ctr`), one `cp -a` of the
//! upper dir (`cp_a`). See BENCHMARKS.md for the columns and results.

mod args;
mod floor;
mod methods;
mod probe;
mod report;
mod stats;
mod workload;
mod xfs;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use seamless_snapshot::ContainerdSnapshotter;
use seamless_snapshot_tests::{Rig, RigEnv};
use serde_json::json;

use crate::args::{Args, Fs, Layer, Method, Writer};
use crate::floor::Bare;
use crate::report::CaseResult;
use crate::workload::Workload;

fn main() {
    let args = args::parse();
    let host = match RigEnv::from_env() {
        Ok(env) => env,
        Err(why) => {
            eprintln!("bench-pause: {why}");
            std::process::exit(2);
        }
    };
    let machine_before = report::machine();
    let started = Instant::now();
    let mut cases = Vec::new();
    for &fs in &args.fs {
        let xfs = (fs == Fs::Xfs).then(|| xfs::XfsRig::start(&host, args.xfs_size_gib));
        let env = xfs.as_ref().map_or_else(|| host.clone(), |x| x.env.clone());
        for &layer in &args.layers {
            for &writer in &args.writers {
                eprintln!("case: {fs} {layer} writer {writer}");
                let res = catch_unwind(AssertUnwindSafe(|| {
                    run_case(&args, &env, fs, layer, writer)
                }));
                let case = res.unwrap_or_else(|panic| {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".to_string());
                    CaseResult {
                        fs,
                        fs_type: "?".into(),
                        layer,
                        writer,
                        floor_freezer: "?".into(),
                        samples: BTreeMap::new(),
                        errors: vec![why],
                    }
                });
                if !args.json {
                    eprint!("{}", case.table());
                }
                cases.push(case);
                // What is done so far survives a run cut short.
                json_report(&args, &machine_before, started, &cases, false);
            }
        }
    }
    let machine_after = report::machine();
    let elapsed = started.elapsed().as_secs_f64();
    let text = json_report(&args, &machine_before, started, &cases, true);
    if args.json {
        println!("{text}");
        return;
    }
    println!(
        "machine: {}; load before {}, after {}; {:.0} s; probe logs gaps > {} us, nice {}",
        machine_before,
        machine_before["loadavg"],
        machine_after["loadavg"],
        elapsed,
        args.probe_threshold_us,
        args.probe_nice
    );
    for c in &cases {
        print!("{}", c.table());
    }
    if let Some(f) = report::floor_overall(&cases) {
        println!("\nfloor (bare freeze+thaw) stall median over all cases: {f:.3} ms");
    }
}

/// The JSON report of `cases`, written to `--json-out` if given;
/// `complete` is false while cases are still to come.
fn json_report(
    args: &Args,
    machine: &serde_json::Value,
    started: Instant,
    cases: &[CaseResult],
    complete: bool,
) -> String {
    let out = json!({
        "complete": complete,
        "machine": machine,
        "loadavg_now": report::machine()["loadavg"],
        "elapsed_s": started.elapsed().as_secs_f64(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "probe_threshold_us": args.probe_threshold_us,
        "probe_nice": args.probe_nice,
        "cases": cases.iter().map(CaseResult::to_json).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&out).expect("JSON");
    if let Some(path) = &args.json_out
        && let Err(e) = std::fs::write(path, &text)
    {
        eprintln!("bench-pause: {}: {e}", path.display());
    }
    text
}

/// The upper dir's filesystem, as the kernel names it.
fn fs_type(path: &std::path::Path) -> String {
    use nix::sys::statfs::{EXT4_SUPER_MAGIC, XFS_SUPER_MAGIC, statfs};
    match statfs(path).map(|s| s.filesystem_type()) {
        Ok(t) if t == EXT4_SUPER_MAGIC => "ext4".into(),
        Ok(t) if t == XFS_SUPER_MAGIC => "xfs".into(),
        Ok(t) => format!("{:#x}", t.0),
        Err(e) => format!("? ({e})"),
    }
}

fn run_case(args: &Args, env: &RigEnv, fs: Fs, layer: Layer, writer: Writer) -> CaseResult {
    let rig = Rig::with_env(env.clone());
    let mut w = Workload::start(
        &rig,
        layer,
        writer,
        args.probe_threshold_us,
        args.probe_nice,
    );
    let bare = Bare::of(&w.cgroup);
    eprintln!(
        "  upper dir {}, cgroup {}",
        w.upper.display(),
        bare.dir().display()
    );
    let snap = ContainerdSnapshotter::new(rig.config()).expect("a snapshotter for the rig");
    let mut case = CaseResult {
        fs,
        fs_type: fs_type(&w.upper),
        layer,
        writer,
        floor_freezer: bare.kind().to_string(),
        samples: BTreeMap::new(),
        errors: Vec::new(),
    };
    let has = |m| args.methods.contains(&m);
    let seamless_runs = if has(Method::Seamless) {
        args.seamless_runs(layer)
    } else {
        0
    };
    let rounds = seamless_runs
        .max(args.ctr_runs(layer))
        .max(args.cp_runs())
        .max(1);
    let push_timeout = Duration::from_secs(args.push_timeout_s);
    for i in 0..rounds {
        let mut line = format!("  round {i}:");
        if has(Method::Floor) {
            let s = methods::floor(&bare, &mut w.probe, args.floor_cycles);
            let st: Vec<f64> = s.iter().map(|s| s.stall_ms).collect();
            line += &format!(
                " floor p50 {:.3} ms;",
                stats::median(&st).unwrap_or(f64::NAN)
            );
            case.samples.entry(Method::Floor).or_default().extend(s);
        }
        if i < seamless_runs {
            let target = rig.target("bench", &format!("r{i}"));
            match methods::seamless(&snap, &target, &mut w.probe, push_timeout) {
                Ok(s) => {
                    line += &format!(
                        " seamless stall {:.3} ms pause_time {:.3} ms commit {:.0} ms pushed {:.0} ms;",
                        s.stall_ms,
                        s.fields
                            .get("result.pause_time")
                            .copied()
                            .unwrap_or(f64::NAN)
                            * 1e3,
                        s.response_ms,
                        s.pushed_ms.unwrap_or(f64::NAN)
                    );
                    case.samples.entry(Method::Seamless).or_default().push(s);
                }
                Err(e) => {
                    line += &format!(" seamless failed: {e};");
                    case.errors.push(format!("round {i}: {e}"));
                }
            }
        }
        if i < args.ctr_runs(layer) {
            let s = methods::ctr(&rig, &mut w.probe);
            line += &format!(" ctr stall {:.0} ms;", s.stall_ms);
            case.samples.entry(Method::Ctr).or_default().push(s);
        }
        if i < args.cp_runs() {
            let s = methods::cp_a(&w.upper, &rig.new_dir("cp").join("upper"));
            line += &format!(" cp -a {:.0} ms;", s.response_ms);
            case.samples.entry(Method::CpA).or_default().push(s);
        }
        eprintln!("{line}");
    }
    snap.shutdown(Duration::from_secs(60));
    case
}
