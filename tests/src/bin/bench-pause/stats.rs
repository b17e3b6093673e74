//! Percentiles, and the generic reading of a JSON result: every numeric leaf
//! becomes a named column, so fields added to the library's result later
//! (a window breakdown, say) show up without changing the benchmark.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// p50, p99 and max of some samples (nearest rank; p99 of fewer than 100
/// samples is the largest but one at most).
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        Some(Summary {
            n: s.len(),
            p50: percentile(&s, 50.0),
            p99: percentile(&s, 99.0),
            max: s[s.len() - 1],
        })
    }

    pub fn to_json(s: Option<Summary>) -> Value {
        match s {
            Some(s) => json!({"n": s.n, "p50": s.p50, "p99": s.p99, "max": s.max}),
            None => Value::Null,
        }
    }
}

/// The median of sorted-or-not samples, for the tables.
pub fn median(samples: &[f64]) -> Option<f64> {
    Summary::of(samples).map(|s| s.p50)
}

/// Nearest-rank percentile of sorted samples; the median of an even count
/// is the mean of the middle two.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    if p == 50.0 && n % 2 == 0 {
        return (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0;
    }
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Every numeric leaf of `v` under its dotted path (`pause_time`,
/// `window.freeze_wait`, `timings.push`), and every string leaf under
/// `strings` (`capture_strategy`, `freezer`), in `out`.
pub fn flatten(
    prefix: &str,
    v: &Value,
    nums: &mut BTreeMap<String, f64>,
    strings: &mut BTreeMap<String, String>,
) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                nums.insert(prefix.to_string(), f);
            }
        }
        Value::String(s) => {
            strings.insert(prefix.to_string(), s.clone());
        }
        Value::Bool(b) => {
            strings.insert(prefix.to_string(), b.to_string());
        }
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&key(k), v, nums, strings);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&key(&i.to_string()), v, nums, strings);
            }
        }
        Value::Null => {}
    }
}

/// Fields that name a thing rather than describe how it went (ids, paths,
/// digests, instants, the worker's pid): left out of the per-case summary.
pub fn is_identity(key: &str) -> bool {
    const IDS: [&str; 11] = [
        "snapshot_id",
        "container_id",
        "target_ref",
        "old_upper_dir",
        "new_upper_dir",
        "captured_at",
        "base_image",
        "manifest_digest",
        "digest",
        "pid",
        "start_ticks",
    ];
    let last = key.rsplit('.').next().unwrap_or(key);
    IDS.contains(&last) || last.ends_with("_at") || last.ends_with("_digest") || last == "diff_id"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.n, s.p50, s.p99, s.max), (4, 2.5, 4.0, 4.0));
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (100.5, 198.0, 200.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn flattens_nested_results() {
        let v = json!({"pause_time": 0.5, "window": {"sync": 0.1, "path": "incremental"},
                       "layer": {"size": 3}, "snapshot_id": "x"});
        let (mut n, mut s) = (BTreeMap::new(), BTreeMap::new());
        flatten("", &v, &mut n, &mut s);
        assert_eq!(n["window.sync"], 0.1);
        assert_eq!(n["layer.size"], 3.0);
        assert_eq!(s["window.path"], "incremental");
        assert!(is_identity("snapshot_id") && !is_identity("window.path"));
        assert!(is_identity("status.worker.pid") && !is_identity("result.pause_time"));
    }
}
