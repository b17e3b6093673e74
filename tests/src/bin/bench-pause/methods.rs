//! One measurement of each method on a case's container.
//!
//! Every method yields a [`Sample`]: the largest stall the probe saw in the
//! frozen interval, the time until the call returned, and (seamless only)
//! the time until the image was pushed plus the library's result and
//! status as JSON, read generically.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use seamless_snapshot::{ContainerdSnapshotter, SeamlessSnapshot};
use seamless_snapshot_tests::{Rig, check_cmd, monotonic_ns};
use serde_json::Value;

use crate::floor::Bare;
use crate::probe::{ProbeLog, realtime_offset_ns};
use crate::stats::flatten;
use crate::workload::CONTAINER;

/// One measurement.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Largest probe gap in the frozen interval (ms).
    pub stall_ms: f64,
    /// Largest probe gap during the whole call (ms): includes preemption
    /// by the call's own work (seamless: the pre-copy).
    pub call_gap_ms: Option<f64>,
    /// Until the call returned (ms): `commit`, the ctr sequence, `cp -a`,
    /// or (floor) freeze request to thawed.
    pub response_ms: f64,
    /// Until the image was pushed (ms), from the start of the call.
    pub pushed_ms: Option<f64>,
    /// Numeric leaves of the result and status (`result.pause_time`,
    /// `status.timings.push`, ...), seconds as the library reports them.
    pub fields: BTreeMap<String, f64>,
    /// String leaves (`result.capture_strategy`, `result.freezer`, ...).
    pub strings: BTreeMap<String, String>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// `cycles` bare freeze + thaw cycles, a few ms apart.
pub fn floor(bare: &Bare, probe: &mut ProbeLog, cycles: usize) -> Vec<Sample> {
    let mut spans = Vec::with_capacity(cycles);
    for i in 0..cycles {
        spans.push(bare.cycle());
        // Spread over the scheduler's phases rather than in lockstep.
        std::thread::sleep(Duration::from_micros(3_000 + (i as u64 * 1_777) % 5_000));
    }
    spans
        .into_iter()
        .map(|(t0, t1)| Sample {
            stall_ms: probe.largest_gap_ms(t0, t1),
            response_ms: ms(t1 - t0),
            ..Sample::default()
        })
        .collect()
}

/// One `commit`, then waiting for the push.
///
/// The frozen interval is placed from the result: `captured_at` (wall
/// clock, taken inside the window) moved onto CLOCK_MONOTONIC, ±
/// `pause_time` (the window lies within it), ± 1 ms for the clock
/// conversion.
pub fn seamless(
    snap: &ContainerdSnapshotter,
    target: &str,
    probe: &mut ProbeLog,
    push_timeout: Duration,
) -> Result<Sample, String> {
    let t0 = monotonic_ns();
    let r = snap
        .commit(CONTAINER, target)
        .map_err(|e| format!("commit: {e}"))?;
    let t1 = monotonic_ns();
    let status = snap
        .wait(&r.snapshot_id, push_timeout)
        .map_err(|e| format!("waiting for the push: {e}"))?;
    let t2 = monotonic_ns();

    let at_real = r.captured_at.timestamp_nanos_opt().unwrap_or(0) as i128;
    let at = (at_real - realtime_offset_ns()).max(0) as u64;
    let pause = r.pause_time.as_nanos() as u64;
    let margin = 1_000_000;
    let stall = probe.largest_gap_ms(at.saturating_sub(pause + margin), at + pause + margin);
    let call_gap = probe.largest_gap_ms(t0, t1);

    let mut s = Sample {
        stall_ms: stall,
        call_gap_ms: Some(call_gap),
        response_ms: ms(t1 - t0),
        pushed_ms: Some(ms(t2 - t0)),
        ..Sample::default()
    };
    let result = serde_json::to_value(&r).map_err(|e| e.to_string())?;
    let status = serde_json::to_value(&status).map_err(|e| e.to_string())?;
    flatten("result", &result, &mut s.fields, &mut s.strings);
    // The status repeats some result fields; its timings and layer are new.
    if let Value::Object(m) = status {
        for (k, v) in m.iter().filter(|(k, _)| result.get(k.as_str()).is_none()) {
            flatten(&format!("status.{k}"), v, &mut s.fields, &mut s.strings);
        }
    }
    Ok(s)
}

/// `ctr task pause` + `ctr snapshots diff` (the layer to /dev/null) +
/// `ctr task resume`. The container is frozen from the first to the last.
pub fn ctr(rig: &Rig, probe: &mut ProbeLog) -> Sample {
    let t0 = monotonic_ns();
    let mut resume = ResumeOnDrop(Some(rig));
    check_cmd(
        rig.ctr_cmd(&["task", "pause", CONTAINER])
            .stdout(Stdio::null()),
    );
    check_cmd(
        rig.ctr_cmd(&["snapshots", "--snapshotter", "overlayfs", "diff", CONTAINER])
            .stdout(Stdio::null()),
    );
    check_cmd(
        rig.ctr_cmd(&["task", "resume", CONTAINER])
            .stdout(Stdio::null()),
    );
    resume.0 = None;
    let t1 = monotonic_ns();
    Sample {
        stall_ms: probe.largest_gap_ms(t0, t1),
        response_ms: ms(t1 - t0),
        ..Sample::default()
    }
}

struct ResumeOnDrop<'a>(Option<&'a Rig>);

impl Drop for ResumeOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(rig) = self.0 {
            let _ = rig
                .ctr_cmd(&["task", "resume", CONTAINER])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `cp -a` of the upper dir to a new directory on the same filesystem
/// (coreutils ≥ 9 clones with reflink where the filesystem can), timed,
/// then removed. Nothing is frozen: the probe is not consulted.
pub fn cp_a(upper: &std::path::Path, dest: &std::path::Path) -> Sample {
    let t0 = monotonic_ns();
    check_cmd(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(upper)
            .arg(dest),
    );
    let t1 = monotonic_ns();
    let _ = std::fs::remove_dir_all(dest);
    Sample {
        response_ms: ms(t1 - t0),
        ..Sample::default()
    }
}
