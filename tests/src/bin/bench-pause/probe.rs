//! The stall probe's log, read as it grows, and the clocks it is read
//! against.
//!
//! The probe (`tests/rig/probe.c`) runs inside the container and appends
//! `<start_ns> <gap_ns>` for every gap between two of its CLOCK_MONOTONIC
//! readings longer than its threshold. The container shares the host's
//! CLOCK_MONOTONIC (no time namespace), so an interval the benchmark
//! measured itself can be matched against the gaps.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use seamless_snapshot_tests::{largest_gap_in, monotonic_ns};

/// The records read so far, and where the next read starts.
pub struct ProbeLog {
    path: PathBuf,
    offset: u64,
    partial: String,
    records: Vec<(u64, u64)>,
}

impl ProbeLog {
    pub fn new(path: &Path) -> ProbeLog {
        ProbeLog {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
            records: Vec::new(),
        }
    }

    /// Reads what the probe appended since the last call.
    fn refresh(&mut self) {
        let Ok(mut f) = File::open(&self.path) else {
            return;
        };
        let mut buf = String::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_string(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&buf);
        // Only whole lines: the probe may be in the middle of one.
        let Some(end) = self.partial.rfind('\n') else {
            return;
        };
        let whole: String = self.partial.drain(..=end).collect();
        self.records.extend(
            whole
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
                }),
        );
    }

    /// The largest gap (ms) overlapping `[from, to]` (CLOCK_MONOTONIC ns);
    /// 0 when the probe logged none (every gap was below its threshold).
    ///
    /// The probe writes a gap's record only once it runs again, so this
    /// waits until the probe has logged something after `to` or 200 ms have
    /// passed (a probe that never stalls above its threshold logs nothing).
    pub fn largest_gap_ms(&mut self, from: u64, to: u64) -> f64 {
        let deadline = monotonic_ns() + 200_000_000;
        loop {
            self.refresh();
            let seen_after = self.records.last().is_some_and(|(s, g)| s + g > to);
            if seen_after || monotonic_ns() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        largest_gap_in(&self.records, from, to) as f64 / 1e6
    }

    /// Whether the probe has written its start line.
    pub fn started(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.len() > 0)
    }
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC now (ns), to place a wall-clock instant
/// the library reported (`captured_at`) on the probe's clock. Taken as the
/// narrowest of a few bracketed readings.
pub fn realtime_offset_ns() -> i128 {
    let real = || {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
            .expect("clock_gettime(CLOCK_REALTIME)");
        t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128
    };
    (0..5)
        .map(|_| {
            let a = monotonic_ns();
            let r = real();
            let b = monotonic_ns();
            (b - a, r - (a as i128 + (b - a) as i128 / 2))
        })
        .min_by_key(|(width, _)| *width)
        .map(|(_, off)| off)
        .unwrap_or(0)
}
