//! The results: the machine, one table per case, the ratios to the floor and
//! to the ctr baseline of the same case, issue 9's "done when" checks, and
//! the same as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::args::{Fs, Layer, Method, Writer};
use crate::methods::Sample;
use crate::stats::{Summary, is_identity, median};

/// What one case measured.
pub struct CaseResult {
    pub fs: Fs,
    /// The upper dir's filesystem type as the kernel reports it.
    pub fs_type: String,
    pub layer: Layer,
    pub writer: Writer,
    pub floor_freezer: String,
    pub samples: BTreeMap<Method, Vec<Sample>>,
    pub errors: Vec<String>,
}

impl CaseResult {
    fn of(&self, m: Method) -> &[Sample] {
        self.samples.get(&m).map_or(&[], Vec::as_slice)
    }

    fn stall(&self, m: Method) -> Option<Summary> {
        Summary::of(&self.of(m).iter().map(|s| s.stall_ms).collect::<Vec<_>>())
    }

    fn response(&self, m: Method) -> Option<Summary> {
        Summary::of(&self.of(m).iter().map(|s| s.response_ms).collect::<Vec<_>>())
    }

    fn pushed(&self, m: Method) -> Option<Summary> {
        Summary::of(
            &self
                .of(m)
                .iter()
                .filter_map(|s| s.pushed_ms)
                .collect::<Vec<_>>(),
        )
    }

    fn field(&self, m: Method, key: &str) -> Vec<f64> {
        self.of(m)
            .iter()
            .filter_map(|s| s.fields.get(key).copied())
            .collect()
    }

    /// `pause_time` in ms, as the library reported it.
    fn pause(&self) -> Option<Summary> {
        let v: Vec<f64> = self
            .field(Method::Seamless, "result.pause_time")
            .iter()
            .map(|s| s * 1e3)
            .collect();
        Summary::of(&v)
    }

    fn ratio(a: Option<Summary>, b: Option<Summary>) -> Option<f64> {
        let (a, b) = (a?.p50, b?.p50);
        (b > 0.0).then_some(a / b)
    }

    fn ratios(&self) -> BTreeMap<&'static str, Option<f64>> {
        let floor = self.stall(Method::Floor);
        let ctr = self.stall(Method::Ctr);
        BTreeMap::from([
            (
                "seamless_stall_over_floor_stall",
                Self::ratio(self.stall(Method::Seamless), floor),
            ),
            (
                "ctr_stall_over_seamless_stall",
                Self::ratio(ctr, self.stall(Method::Seamless)),
            ),
            ("ctr_stall_over_floor_stall", Self::ratio(ctr, floor)),
            (
                "seamless_commit_over_cp_a",
                Self::ratio(self.response(Method::Seamless), self.response(Method::CpA)),
            ),
            (
                "ctr_response_over_seamless_commit",
                Self::ratio(self.response(Method::Ctr), self.response(Method::Seamless)),
            ),
        ])
    }

    /// Issue 9's "done when", for the parts one case can show.
    fn checks(&self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let seamless = self.stall(Method::Seamless);
        let floor = self.stall(Method::Floor);
        let bounded_writer = match self.writer {
            Writer::Hot { files, .. } => files <= 100,
            Writer::None => false,
        };
        if let (Some(s), Some(f), true) = (seamless, floor, bounded_writer) {
            let bound = (2.0 * f.p50).max(f.p50 + 0.5);
            out.push((
                format!(
                    "stall median {:.3} ms <= max(2 x floor, floor + 0.5 ms) = {bound:.3} ms",
                    s.p50
                ),
                s.p50 <= bound,
            ));
        }
        let commit = self.response(Method::Seamless);
        if self.fs_type == "ext4"
            && let (Some(c), Some(cp)) = (commit, self.response(Method::CpA))
        {
            out.push((
                format!("commit {:.1} ms <= cp -a {:.1} ms (ext4)", c.p50, cp.p50),
                c.p50 <= cp.p50,
            ));
        }
        if self.fs_type == "xfs"
            && let Some(c) = commit
        {
            let bound = 30.0 * self.layer.files as f64 / 10_000.0;
            out.push((
                format!(
                    "commit {:.1} ms <= 30 ms per 10,000 files = {bound:.1} ms (xfs)",
                    c.p50
                ),
                c.p50 <= bound,
            ));
        }
        out
    }

    /// Medians of every numeric field of the seamless results, and the
    /// distinct values of their descriptive string fields.
    fn seamless_fields(
        &self,
    ) -> (
        BTreeMap<String, Summary>,
        BTreeMap<String, BTreeSet<String>>,
    ) {
        let samples = self.of(Method::Seamless);
        let keys: BTreeSet<&String> = samples
            .iter()
            .flat_map(|s| s.fields.keys())
            .filter(|k| !is_identity(k))
            .collect();
        let nums = keys
            .into_iter()
            .filter_map(|k| Some((k.clone(), Summary::of(&self.field(Method::Seamless, k))?)))
            .collect();
        let mut strings: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in samples {
            for (k, v) in s.strings.iter().filter(|(k, _)| !is_identity(k)) {
                strings.entry(k.clone()).or_default().insert(v.clone());
            }
        }
        (nums, strings)
    }

    pub fn title(&self) -> String {
        format!(
            "{} ({}) {} writer {}",
            self.fs, self.fs_type, self.layer, self.writer
        )
    }

    pub fn to_json(&self) -> Value {
        let mut methods = serde_json::Map::new();
        for (m, samples) in &self.samples {
            let mut o = json!({
                "n": samples.len(),
                "stall_ms": Summary::to_json(self.stall(*m)),
                "response_ms": Summary::to_json(self.response(*m)),
                "pushed_ms": Summary::to_json(self.pushed(*m)),
                "samples": samples.iter().map(|s| json!({
                    "stall_ms": s.stall_ms,
                    "call_gap_ms": s.call_gap_ms,
                    "response_ms": s.response_ms,
                    "pushed_ms": s.pushed_ms,
                    "fields": s.fields,
                    "strings": s.strings,
                })).collect::<Vec<_>>(),
            });
            if *m == Method::Seamless {
                let (nums, strings) = self.seamless_fields();
                o["pause_time_ms"] = Summary::to_json(self.pause());
                o["call_gap_ms"] = Summary::to_json(Summary::of(
                    &samples
                        .iter()
                        .filter_map(|s| s.call_gap_ms)
                        .collect::<Vec<_>>(),
                ));
                o["fields"] = nums
                    .into_iter()
                    .map(|(k, s)| (k, Summary::to_json(Some(s))))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
                o["strings"] = json!(strings);
            }
            methods.insert(m.name().to_string(), o);
        }
        json!({
            "fs": self.fs.to_string(),
            "fs_type": self.fs_type,
            "files": self.layer.files,
            "mib": self.layer.mib,
            "writer": self.writer.to_string(),
            "floor_freezer": self.floor_freezer,
            "methods": methods,
            "ratios": self.ratios(),
            "checks": self.checks().into_iter().map(|(what, ok)| json!({"check": what, "ok": ok})).collect::<Vec<_>>(),
            "errors": self.errors,
        })
    }

    pub fn table(&self) -> String {
        let mut o = String::new();
        let f = |v: Option<f64>, w: usize, p: usize| match v {
            Some(v) => format!("{v:>w$.p$}"),
            None => format!("{:>w$}", "-"),
        };
        let _ = writeln!(
            o,
            "\n== {} (floor: bare {} freeze+thaw)",
            self.title(),
            self.floor_freezer
        );
        let _ = writeln!(
            o,
            "{:<9} {:>4} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>10} {:>10} | {:>10} | {:>8} {:>8}",
            "method",
            "n",
            "stall p50",
            "p99",
            "max",
            "pause p50",
            "p99",
            "max",
            "resp p50",
            "max",
            "pushed p50",
            "x floor",
            "x ctr"
        );
        let floor = self.stall(Method::Floor);
        let ctr = self.stall(Method::Ctr);
        for (m, samples) in &self.samples {
            let frozen = *m != Method::CpA;
            let stall = if frozen { self.stall(*m) } else { None };
            let pause = if *m == Method::Seamless {
                self.pause()
            } else {
                None
            };
            let resp = self.response(*m);
            let _ = writeln!(
                o,
                "{:<9} {:>4} | {} {} {} | {} {} {} | {} {} | {} | {} {}",
                if *m == Method::CpA { "cp -a" } else { m.name() },
                samples.len(),
                f(stall.map(|s| s.p50), 9, 3),
                f(stall.map(|s| s.p99), 9, 3),
                f(stall.map(|s| s.max), 9, 3),
                f(pause.map(|s| s.p50), 9, 3),
                f(pause.map(|s| s.p99), 9, 3),
                f(pause.map(|s| s.max), 9, 3),
                f(resp.map(|s| s.p50), 10, 1),
                f(resp.map(|s| s.max), 10, 1),
                f(self.pushed(*m).map(|s| s.p50), 10, 1),
                f(Self::ratio(stall, floor), 8, 1),
                f(Self::ratio(stall, ctr), 8, 4),
            );
        }
        let (nums, strings) = self.seamless_fields();
        if !nums.is_empty() {
            let list: Vec<String> = nums
                .iter()
                .filter(|(k, _)| !k.starts_with("status.progress"))
                .map(|(k, s)| format!("{k}={}", short(s.p50)))
                .collect();
            let _ = writeln!(o, "seamless fields (p50): {}", list.join(" "));
        }
        if !strings.is_empty() {
            let list: Vec<String> = strings
                .iter()
                .map(|(k, v)| format!("{k}={}", v.iter().cloned().collect::<Vec<_>>().join("|")))
                .collect();
            let _ = writeln!(o, "seamless strings: {}", list.join(" "));
        }
        let ratios: Vec<String> = self
            .ratios()
            .into_iter()
            .filter_map(|(k, v)| Some(format!("{k}={}", short(v?))))
            .collect();
        if !ratios.is_empty() {
            let _ = writeln!(o, "ratios (p50/p50): {}", ratios.join(" "));
        }
        for (what, ok) in self.checks() {
            let _ = writeln!(
                o,
                "issue 9 check: {what}: {}",
                if ok { "yes" } else { "NO" }
            );
        }
        for e in &self.errors {
            let _ = writeln!(o, "error: {e}");
        }
        o
    }
}

fn short(v: f64) -> String {
    if v != 0.0 && (v.abs() < 0.01 || v.abs() >= 1e6) {
        format!("{v:.3e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// nproc, kernel, memory, cgroup mode, load: what BENCHMARKS.md records.
pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cgroup = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "unified (v2 only)"
    } else if std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        "hybrid (v1 controllers + v2 at /sys/fs/cgroup/unified)"
    } else {
        "legacy (v1 only)"
    };
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "mem_gib": (mem_kib as f64 / (1 << 20) as f64 * 10.0).round() / 10.0,
        "cgroup": cgroup,
        "loadavg": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

/// The medians of the floor's stalls across cases, for the summary line.
pub fn floor_overall(cases: &[CaseResult]) -> Option<f64> {
    let all: Vec<f64> = cases
        .iter()
        .flat_map(|c| c.of(Method::Floor).iter().map(|s| s.stall_ms))
        .collect();
    median(&all)
}
