//! Soak: many consecutive commits of one container whose writer keeps a
//! checkable invariant, every pushed image pulled back and checked.
//!
//! Needs the rig and root; run through `tests/soak/soak.sh` (which starts the
//! rig when needed and builds the CLI):
//!
//! ```text
//! soak [--commits 500] [--writer-sleep-us 50000] [--window 1000] [--json]
//! ```
//!
//! The writer (busybox `sh` inside the container) repeats, for n = 1, 2, ...:
//!
//! 1. write `/data/soak/d<n % 7>/.tmp`: `n % 40 + 1` lines `file n line i`,
//!    then a last line `sha256 <hex of the lines before it>`;
//! 2. rename it to `/data/soak/d<n % 7>/<n>`;
//! 3. append `n` to `/data/soak/log` (one `write`);
//! 4. replace `/data/soak/last` with `n` (a rename);
//! 5. remove file `n - W` (W = `--window`, default 1000), so that the layer,
//!    and with it each commit's cost, stays bounded however long the soak.
//!
//! So at every instant the container passes through, with M the highest file,
//! L the last line of the log and K the number in `last`: the files are
//! exactly `lo..=M`, each in its directory with its checksum valid and its
//! own content, where `lo` is `max(1, K - W + 1)` (or `max(1, K - W)` before
//! step 5, and then `M = K`); the log is exactly `1..=L`; and
//! `K <= L <= M <= K + 1`. In particular file N exists only if every file
//! from `lo` to N does. Files spread over seven directories, so a copy that is
//! not of one instant (a late directory seen after an early one changed)
//! shows a file whose predecessor is missing, or one deleted too early. Each
//! pulled image must satisfy all of it.
//!
//! Each commit is `seamless-snapshot commit --wait --json`; its `pause_time`
//! goes into the distribution printed at the end. Exits 1 on any failed
//! commit or violated invariant, after running all commits.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use seamless_snapshot_tests::{Rig, run_cmd, wait_until};
use sha2::{Digest, Sha256};

const DIRS: u64 = 7;

struct Args {
    commits: usize,
    writer_sleep_us: u64,
    window: u64,
    json: bool,
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("soak: {msg}");
    }
    eprintln!("usage: soak [--commits 500] [--writer-sleep-us 50000] [--window 1000] [--json]");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut a = Args {
        commits: 500,
        writer_sleep_us: 50_000,
        window: 1000,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage(&format!("{name} needs a number")))
        };
        match arg.as_str() {
            "-n" | "--commits" => a.commits = num("--commits") as usize,
            "--writer-sleep-us" => a.writer_sleep_us = num("--writer-sleep-us"),
            "--window" => a.window = num("--window"),
            "--json" => a.json = true,
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if a.commits == 0 || a.window == 0 {
        usage("--commits and --window must be > 0");
    }
    a
}

/// The writer's script (see the module docs); `usleep` between files.
fn writer_script(sleep_us: u64, window: u64) -> String {
    format!(
        r#"mkdir -p /data/soak && cd /data/soak || exit 1
for d in 0 1 2 3 4 5 6; do mkdir -p d$d; done
n=0
while true; do
  n=$((n+1))
  d=d$((n % {DIRS}))
  i=0; k=$((n % 40))
  while [ $i -le $k ]; do echo "file $n line $i"; i=$((i+1)); done > $d/.tmp
  s=$(sha256sum < $d/.tmp)
  echo "sha256 ${{s%% *}}" >> $d/.tmp
  mv $d/.tmp $d/$n
  echo $n >> log
  echo $n > .last.tmp && mv .last.tmp last
  o=$((n - {window}))
  [ $o -ge 1 ] && rm d$((o % {DIRS}))/$o
  usleep {sleep_us}
done"#
    )
}

/// The payload file `n` must hold, before its checksum line.
fn expected_payload(n: u64) -> String {
    (0..=n % 40)
        .map(|i| format!("file {n} line {i}\n"))
        .collect()
}

/// Checks the writer's invariant (window `w`) on an unpacked image; returns
/// the violations (empty when it holds) and the highest file number.
fn check_image(rootfs: &Path, w: u64) -> (Vec<String>, u64) {
    let soak = rootfs.join("data/soak");
    let mut bad = Vec::new();
    let mut files = BTreeSet::new();
    for d in 0..DIRS {
        let dir = soak.join(format!("d{d}"));
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                bad.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        for ent in rd {
            let ent = match ent {
                Ok(e) => e,
                Err(e) => {
                    bad.push(format!("{}: {e}", dir.display()));
                    continue;
                }
            };
            let name = ent.file_name().to_string_lossy().into_owned();
            if name == ".tmp" {
                continue; // a file being written: no promise about it
            }
            let Ok(n) = name.parse::<u64>() else {
                bad.push(format!("unexpected entry d{d}/{name}"));
                continue;
            };
            if n % DIRS != d {
                bad.push(format!("file {n} in d{d}"));
            }
            match fs::read(ent.path()) {
                Ok(data) => check_file(n, &data, &mut bad),
                Err(e) => bad.push(format!("d{d}/{name}: {e}")),
            }
            files.insert(n);
        }
    }
    let m = files.last().copied().unwrap_or(0);
    let lo = files.first().copied().unwrap_or(1);
    if files.len() as u64 != m + 1 - lo.min(m + 1) {
        let missing: Vec<u64> = (lo..=m).filter(|n| !files.contains(n)).take(10).collect();
        bad.push(format!(
            "files {lo}..={m} but only {} of them; missing (first 10): {missing:?}",
            files.len()
        ));
    }
    let log = fs::read_to_string(soak.join("log")).unwrap_or_default();
    let mut l = 0;
    for line in log.lines() {
        match line.parse::<u64>() {
            Ok(v) if v == l + 1 => l = v,
            _ => {
                bad.push(format!(
                    "log line {} is {line:?}, expected {}",
                    l + 1,
                    l + 1
                ));
                break;
            }
        }
    }
    if !log.is_empty() && !log.ends_with('\n') {
        bad.push("log ends in a partial line".to_string());
    }
    let k = match fs::read_to_string(soak.join("last")) {
        Ok(s) => s.trim().parse::<u64>().unwrap_or_else(|_| {
            bad.push(format!("last is {s:?}"));
            0
        }),
        Err(_) => 0, // before the writer's first file
    };
    if !(k <= l && l <= m && m <= k + 1) {
        bad.push(format!(
            "last {k}, log {l}, highest file {m}: not last <= log <= highest <= last + 1"
        ));
    }
    // The lowest file: K - W + 1 once step 5 of K ran, K - W before (and
    // then file K + 1 is not written yet).
    let after = (k + 1).saturating_sub(w).max(1);
    let before = k.saturating_sub(w).max(1);
    if !files.is_empty() && lo != after && !(lo == before && m == k) {
        bad.push(format!(
            "lowest file {lo} with last {k}, highest {m}: expected {after} (or {before} with highest {k})"
        ));
    }
    (bad, m)
}

fn check_file(n: u64, data: &[u8], bad: &mut Vec<String>) {
    let Ok(text) = std::str::from_utf8(data) else {
        bad.push(format!("file {n}: not UTF-8"));
        return;
    };
    let body = text.strip_suffix('\n').unwrap_or(text);
    let Some((payload, sum_line)) = body.rsplit_once('\n') else {
        bad.push(format!("file {n}: no checksum line ({} bytes)", data.len()));
        return;
    };
    let payload = format!("{payload}\n");
    let want = format!("sha256 {}", hex::encode(Sha256::digest(payload.as_bytes())));
    if sum_line != want || !text.ends_with('\n') {
        bad.push(format!(
            "file {n}: checksum line {sum_line:?} does not match"
        ));
    }
    if payload != expected_payload(n) {
        bad.push(format!("file {n}: content is not file {n}'s"));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let args = parse_args();
    let rig = match Rig::try_new() {
        Ok(rig) => rig,
        Err(why) => {
            eprintln!("soak: {why}");
            std::process::exit(2);
        }
    };
    let id = "soak";
    rig.run_container(id, &writer_script(args.writer_sleep_us, args.window));
    let last = rig.rootfs(id).join("data/soak/last");
    wait_until(Duration::from_secs(30), || last.exists())
        .unwrap_or_else(|_| panic!("the writer did not start"));

    let start = Instant::now();
    let mut pauses = Vec::new();
    let mut commit_failures = 0usize;
    let mut violations = 0usize;
    let mut highest = 0u64;
    for i in 0..args.commits {
        let target = rig.target("soak", &format!("c{i}"));
        let out = run_cmd(
            rig.cli()
                .args(["commit", "--container", id, "--target", &target])
                .args(["--wait", "--timeout", "10m", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let result: Option<serde_json::Value> = out
            .status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten();
        let Some(result) = result else {
            commit_failures += 1;
            eprintln!(
                "commit {i}: FAILED ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            continue;
        };
        let pause_ms = result["pause_time"].as_f64().unwrap_or(f64::NAN) * 1e3;
        pauses.push(pause_ms);
        let rootfs = rig.pull_unpack(&target);
        let (bad, m) = check_image(&rootfs, args.window);
        // pull_unpack's directory is <tmp>/pull-N/bundle/rootfs.
        if let Some(pull_dir) = rootfs.parent().and_then(Path::parent) {
            let _ = fs::remove_dir_all(pull_dir);
        }
        if m < highest {
            eprintln!("commit {i}: VIOLATION: highest file went back from {highest} to {m}");
            violations += 1;
        }
        highest = highest.max(m);
        if !bad.is_empty() {
            violations += 1;
            eprintln!("commit {i}: VIOLATION ({target}):");
            for b in bad.iter().take(20) {
                eprintln!("  {b}");
            }
        }
        // Every commit, so that a run cut short still has its numbers.
        eprintln!(
            "commit {i}: pause {pause_ms:.3} ms, highest file {m}, {:.0} s elapsed",
            start.elapsed().as_secs_f64()
        );
    }
    // The writer must still be running: the soak never stopped it.
    let running = rig.task_status(id).as_deref() == Some("RUNNING");

    let wall = start.elapsed().as_secs_f64();
    let mut sorted = pauses.clone();
    sorted.sort_by(f64::total_cmp);
    let report = serde_json::json!({
        "commits": args.commits,
        "succeeded": pauses.len(),
        "commit_failures": commit_failures,
        "invariant_violations": violations,
        "writer_still_running": running,
        "highest_file": highest,
        "window": args.window,
        "pause_ms": {
            "p50": percentile(&sorted, 50.0),
            "p99": percentile(&sorted, 99.0),
            "max": sorted.last().copied().unwrap_or(f64::NAN),
        },
        "wall_s": wall,
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!(
            "soak: {} commits, {} succeeded, {commit_failures} failed, {violations} invariant violations; \
             writer running at the end: {running}; highest file {highest}\n\
             pause_time ms: p50 {:.3}, p99 {:.3}, max {:.3}; wall {:.0} s",
            args.commits,
            pauses.len(),
            report["pause_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
            report["pause_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            report["pause_ms"]["max"].as_f64().unwrap_or(f64::NAN),
            wall
        );
    }
    if commit_failures > 0 || violations > 0 || !running {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(dir: &Path, n: u64, content: &str) {
        let d = dir.join(format!("d{}", n % DIRS));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(n.to_string()), content).unwrap();
    }

    fn good(n: u64) -> String {
        let p = expected_payload(n);
        format!("{p}sha256 {}\n", hex::encode(Sha256::digest(p.as_bytes())))
    }

    /// The checker accepts what the writer writes and catches a missing
    /// predecessor, a bad checksum, and a log ahead of the files.
    #[test]
    fn checker_accepts_the_writer_and_catches_violations() {
        let root = tempfile::tempdir().unwrap();
        let soak = root.path().join("data/soak");
        for d in 0..DIRS {
            fs::create_dir_all(soak.join(format!("d{d}"))).unwrap();
        }
        for n in 1..=20 {
            write_file(&soak, n, &good(n));
        }
        fs::write(
            soak.join("log"),
            (1..=20).map(|n| format!("{n}\n")).collect::<String>(),
        )
        .unwrap();
        fs::write(soak.join("last"), "19\n").unwrap();
        assert_eq!(check_image(root.path(), 1000), (vec![], 20));

        write_file(&soak, 22, &good(22));
        let (bad, _) = check_image(root.path(), 1000);
        assert!(bad.iter().any(|b| b.contains("missing")), "{bad:?}");
        fs::remove_file(soak.join("d1/22")).unwrap();

        write_file(&soak, 5, &good(5).replace("line 0", "line X"));
        let (bad, _) = check_image(root.path(), 1000);
        assert!(bad.iter().any(|b| b.contains("file 5")), "{bad:?}");
        write_file(&soak, 5, &good(5));

        fs::write(soak.join("last"), "17\n").unwrap();
        let (bad, _) = check_image(root.path(), 1000);
        assert!(bad.iter().any(|b| b.contains("last 17")), "{bad:?}");
        fs::write(soak.join("last"), "19\n").unwrap();

        // A window of 10 after file 19's step 5: files 10..=20 are one too
        // many (file 9 was removed before 20 was written) ...
        let (bad, _) = check_image(root.path(), 10);
        assert!(bad.iter().any(|b| b.contains("lowest file 1")), "{bad:?}");
        // ... and files 10..=20 (written 20, not yet `last`) are right.
        for n in 1..10 {
            fs::remove_file(soak.join(format!("d{}/{n}", n % DIRS))).unwrap();
        }
        assert_eq!(check_image(root.path(), 10), (vec![], 20));
        // A file deleted out of order is a gap.
        fs::remove_file(soak.join("d5/12")).unwrap();
        let (bad, _) = check_image(root.path(), 10);
        assert!(bad.iter().any(|b| b.contains("missing")), "{bad:?}");
    }
}
