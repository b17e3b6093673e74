//! Build-and-push benchmark: the background half of a commit (layer build,
//! then push) of one container, for gzip and zstd on one thread and on every
//! core, against the compression floor measured in the same run:
//! `tar -cf - DIR | pigz` and `tar -cf - DIR | zstd -T0` into a file.
//!
//! Needs the rig (`tests/rig/start.sh`, then `. /tmp/seamless-rig/env`), root,
//! `pigz` and `zstd`:
//!
//! ```text
//! cargo run --release -p seamless-snapshot-tests --bin bench-build -- [--mb 600] [--files 10000] [--json]
//! ```
//!
//! The container's writable layer gets `--mb` MiB: half incompressible
//! (xorshift bytes), half compressible text, plus `--files` small text files.
//! Each configuration is one commit with `commit_with` (wait), the build and
//! push times are the job's own (`PhaseTimings`), and the peak resident
//! memory is this process's (`VmHWM`, reset before each commit through
//! `/proc/self/clear_refs`): the job runs in process. Only measured numbers
//! are printed.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use seamless_snapshot::{CommitOptions, Compression, ContainerdSnapshotter, SeamlessSnapshot};
use seamless_snapshot_tests::Rig;

struct Args {
    mib: usize,
    files: usize,
    json: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        mib: 600,
        files: 10_000,
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
            "--mb" => a.mib = num("--mb"),
            "--files" => a.files = num("--files"),
            "--json" => a.json = true,
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    a
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("bench-build: {msg}");
    }
    eprintln!("usage: bench-build [--mb 600] [--files 10000] [--json]");
    std::process::exit(2);
}

/// Writes the layer's data under `dir`: `mib` MiB half noise, half text, and
/// `files` small text files, all in bounded memory.
fn populate(dir: &Path, mib: usize, files: usize) {
    fs::create_dir_all(dir.join("small")).unwrap();
    let half = (mib << 20) / 2;
    let mut w = BufWriter::new(File::create(dir.join("random.bin")).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..half / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.write_all(&x.to_le_bytes()).unwrap();
    }
    w.flush().unwrap();
    let mut w = BufWriter::new(File::create(dir.join("text.log")).unwrap());
    let mut n = 0;
    let mut i = 0u64;
    while n < half {
        let line = format!(
            "{i:010} INFO request served path=/api/v1/items/{} status=200 bytes={}\n",
            i % 977,
            (i * 7919) % 65_536
        );
        w.write_all(line.as_bytes()).unwrap();
        n += line.len();
        i += 1;
    }
    w.flush().unwrap();
    for f in 0..files {
        let sub = dir.join(format!("small/d{:03}", f / 100));
        if f % 100 == 0 {
            fs::create_dir_all(&sub).unwrap();
        }
        fs::write(
            sub.join(format!("f{f:05}.txt")),
            format!("small file {f}\n").repeat(1 + f % 200),
        )
        .unwrap();
    }
}

/// Runs `sh -c script` and returns how long it took.
fn timed_sh(script: &str) -> Duration {
    let t = Instant::now();
    let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "{script} failed");
    t.elapsed()
}

fn vm_hwm_kib() -> u64 {
    let s = fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn reset_hwm() {
    // "5" resets the peak RSS (Linux 4.0+).
    fs::write("/proc/self/clear_refs", "5").unwrap();
}

fn main() {
    let args = parse_args();
    let rig = match Rig::try_new() {
        Ok(rig) => rig,
        Err(why) => {
            eprintln!("bench-build: {why}");
            std::process::exit(2);
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    rig.run_container("bench", "sleep 1000000");
    let data = rig.rootfs("bench").join("data");
    let t = Instant::now();
    populate(&data, args.mib, args.files);
    eprintln!(
        "bench-build: wrote {} MiB + {} files in {:?}",
        args.mib,
        args.files,
        t.elapsed()
    );
    let d = data.display();
    let floor = rig.new_dir("floor");
    let f = floor.display();
    // Warm the page cache, as the capture will have.
    timed_sh(&format!("tar -cf - -C {d} . > /dev/null"));
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for (name, script) in [
        (
            "tar | gzip -6 (1 core)",
            format!("tar -cf - -C {d} . | gzip -6 > {f}/l.gz"),
        ),
        (
            "tar | pigz -6",
            format!("tar -cf - -C {d} . | pigz -6 > {f}/l.gz"),
        ),
        (
            "tar | zstd -3 (1 core)",
            format!("tar -cf - -C {d} . | zstd -q -3 > {f}/l.zst"),
        ),
        (
            "tar | zstd -3 -T0",
            format!("tar -cf - -C {d} . | zstd -q -3 -T0 > {f}/l.zst"),
        ),
    ] {
        let took = timed_sh(&script);
        let out = if name.contains("zstd") {
            "l.zst"
        } else {
            "l.gz"
        };
        let size = fs::metadata(floor.join(out)).unwrap().len();
        fs::remove_file(floor.join(out)).unwrap();
        eprintln!(
            "bench-build: floor {name}: {:.2} s, {size} bytes",
            took.as_secs_f64()
        );
        rows.push(serde_json::json!({"what": name, "build_s": took.as_secs_f64(), "size": size}));
    }

    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    for (i, (c, threads)) in [
        (Compression::Gzip, 1),
        (Compression::Gzip, 0),
        (Compression::Zstd, 1),
        (Compression::Zstd, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let opts = CommitOptions {
            compression: c,
            compression_threads: Some(threads),
            ..CommitOptions::default()
        };
        reset_hwm();
        let target = rig.target("bench", &format!("{i}"));
        let r = snap
            .commit_with("bench", &target, &opts, Some(Duration::from_secs(1800)))
            .unwrap();
        let hwm = vm_hwm_kib();
        let st = snap.get_status(&r.snapshot_id).unwrap();
        let build = st.timings.build.unwrap_or_default().as_secs_f64();
        let push = st.timings.push.unwrap_or_default().as_secs_f64();
        let size = r.layer.as_ref().map_or(0, |l| l.size);
        let what = format!(
            "seamless {c}, {} thread{}",
            if threads == 0 { cores } else { 1 },
            if threads == 1 { "" } else { "s" }
        );
        eprintln!(
            "bench-build: {what}: build {build:.2} s, push {push:.2} s, {size} bytes, peak RSS {} MiB",
            hwm / 1024
        );
        rows.push(serde_json::json!({
            "what": what, "build_s": build, "push_s": push, "size": size,
            "peak_rss_mib": hwm as f64 / 1024.0,
        }));
    }
    if args.json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        println!("| what | build (s) | push (s) | size (bytes) | peak RSS (MiB) |");
        println!("|---|---|---|---|---|");
        for r in rows {
            let f = |k: &str| r[k].as_f64().map_or("-".to_string(), |v| format!("{v:.2}"));
            println!(
                "| {} | {} | {} | {} | {} |",
                r["what"].as_str().unwrap_or(""),
                f("build_s"),
                f("push_s"),
                r["size"],
                f("peak_rss_mib")
            );
        }
    }
    // Keep the machine's disk: the data lives in the container's layer,
    // removed with the rig's namespace.
    fs::remove_dir_all(&data).ok();
}
