//! The command line: which cases (filesystem × layer × writer) and which
//! methods run, and how often.

use std::fmt;

/// A filesystem the container's writable layer lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    /// The rig's own directory (ext4 on this machine): whatever the host has.
    Host,
    /// An XFS filesystem with reflink on a loop file, made by the benchmark,
    /// with its own containerd (root, state, capture dir all on it).
    Xfs,
}

impl fmt::Display for Fs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Fs::Host => "host",
            Fs::Xfs => "xfs",
        })
    }
}

/// A writable layer: `files` files holding `mib` MiB in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    pub files: usize,
    pub mib: usize,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{}f/{}MiB", self.files, self.mib))
    }
}

/// What runs beside the probe inside the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Nothing: only the probe.
    None,
    /// Rewrites `files` small files (`/data/hot/h<i>`), one every
    /// `interval_ms`, round and round: a bounded dirty set, all of it dirtied
    /// again within `files × interval_ms`.
    Hot { files: usize, interval_ms: u64 },
}

impl fmt::Display for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Writer::None => f.pad("none"),
            Writer::Hot { files, interval_ms } => f.pad(&format!("hot:{files}:{interval_ms}ms")),
        }
    }
}

/// A way of measuring, each run on the same container in the same case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    /// Bare freeze + thaw written by the benchmark itself.
    Floor,
    /// This library's `commit`, then waiting for the push.
    Seamless,
    /// `ctr task pause` + `ctr snapshots diff` + `ctr task resume`.
    Ctr,
    /// `cp -a` of the upper dir (timing only: nothing is frozen).
    CpA,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Floor => "floor",
            Method::Seamless => "seamless",
            Method::Ctr => "ctr",
            Method::CpA => "cp_a",
        }
    }
}

/// Everything the command line sets.
#[derive(Debug, Clone)]
pub struct Args {
    pub fs: Vec<Fs>,
    pub layers: Vec<Layer>,
    pub writers: Vec<Writer>,
    pub methods: Vec<Method>,
    /// Seamless commits per case (fewer for layers of 1 GiB and more).
    pub iterations: usize,
    /// ctr pause + diff + resume runs per case (1 for big layers).
    pub ctr_iterations: usize,
    /// `cp -a` runs per case.
    pub cp_iterations: usize,
    /// Bare freeze + thaw cycles before each seamless commit.
    pub floor_cycles: usize,
    /// The probe logs gaps longer than this.
    pub probe_threshold_us: u64,
    /// Nice value of the probe (0: as the container's other processes).
    pub probe_nice: i32,
    /// Size of the sparse XFS image file.
    pub xfs_size_gib: u64,
    /// How long to wait for one image to be pushed.
    pub push_timeout_s: u64,
    pub json: bool,
    /// Also write the JSON report to this file (with the table on stdout).
    pub json_out: Option<std::path::PathBuf>,
}

const USAGE: &str = "\
usage: bench-pause [options]
  --fs LIST              host,xfs (default both; host = the rig dir's filesystem)
  --layers LIST          FILESxMIB,... (default 10000x200,100000x200)
  --files LIST --mb LIST the cross product of both lists instead of --layers
  --full                 files 1000,10000,100000 x MiB 10,200,2048
  --writer LIST          none | hot[:FILES[:INTERVAL_MS]] (default hot:100:10)
  --methods LIST         floor,seamless,ctr,cp (default all)
  --no-ctr               same as leaving ctr out of --methods
  -n, --iterations N     seamless commits per case (default 5; at most 3 for >= 1 GiB)
  --ctr-iterations N     ctr runs per case (default 2; 1 for >= 1 GiB or >= 100,000 files)
  --cp-iterations N      cp -a runs per case (default 2)
  --floor-cycles N       bare freeze+thaw cycles before each commit (default 40)
  --probe-threshold-us N gaps the probe logs (default 20)
  --probe-nice N         the probe's nice value, set from the host (default 0; -20
                         keeps other load on a busy machine from stalling the probe)
  --xfs-size-gib N       sparse XFS image size (default 24)
  --push-timeout-s N     (default 1800)
  --json                 JSON report on stdout (progress on stderr)
  --json-out FILE        the table on stdout and the JSON report in FILE";

pub fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("bench-pause: {msg}");
    }
    eprintln!("{USAGE}");
    std::process::exit(2);
}

fn list<T>(v: &str, what: &str, one: impl Fn(&str) -> Option<T>) -> Vec<T> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| one(s.trim()).unwrap_or_else(|| usage(&format!("bad {what}: {s}"))))
        .collect()
}

fn parse_writer(s: &str) -> Option<Writer> {
    let mut it = s.split(':');
    match it.next()? {
        "none" => Some(Writer::None),
        "hot" => {
            let files = it.next().map_or(Some(100), |v| v.parse().ok())?;
            let interval_ms = it.next().map_or(Some(10), |v| v.parse().ok())?;
            (files > 0).then_some(Writer::Hot { files, interval_ms })
        }
        _ => None,
    }
}

fn parse_layer(s: &str) -> Option<Layer> {
    let (f, m) = s.split_once('x')?;
    let l = Layer {
        files: f.parse().ok()?,
        mib: m.parse().ok()?,
    };
    (l.files > 0).then_some(l)
}

fn cross(files: &[usize], mib: &[usize]) -> Vec<Layer> {
    files
        .iter()
        .flat_map(|&files| mib.iter().map(move |&mib| Layer { files, mib }))
        .collect()
}

pub fn parse() -> Args {
    let mut a = Args {
        fs: vec![Fs::Host, Fs::Xfs],
        layers: vec![
            Layer {
                files: 10_000,
                mib: 200,
            },
            Layer {
                files: 100_000,
                mib: 200,
            },
        ],
        writers: vec![Writer::Hot {
            files: 100,
            interval_ms: 10,
        }],
        methods: vec![Method::Floor, Method::Seamless, Method::Ctr, Method::CpA],
        iterations: 5,
        ctr_iterations: 2,
        cp_iterations: 2,
        floor_cycles: 40,
        probe_threshold_us: 20,
        probe_nice: 0,
        xfs_size_gib: 24,
        push_timeout_s: 1800,
        json: false,
        json_out: None,
    };
    let (mut files, mut mib): (Option<Vec<usize>>, Option<Vec<usize>>) = (None, None);
    let mut no_ctr = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| -> String {
            it.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        let num = |name: &str, v: String| -> u64 {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{name} needs a number")))
        };
        match arg.as_str() {
            "--fs" => {
                a.fs = list(&val("--fs"), "filesystem", |s| match s {
                    "host" | "ext4" => Some(Fs::Host),
                    "xfs" => Some(Fs::Xfs),
                    _ => None,
                })
            }
            "--layers" => a.layers = list(&val("--layers"), "layer", parse_layer),
            "--files" => files = Some(list(&val("--files"), "count", |s| s.parse().ok())),
            "--mb" => mib = Some(list(&val("--mb"), "size", |s| s.parse().ok())),
            "--full" => {
                files = Some(vec![1_000, 10_000, 100_000]);
                mib = Some(vec![10, 200, 2048]);
            }
            "--writer" => a.writers = list(&val("--writer"), "writer", parse_writer),
            "--methods" => {
                a.methods = list(&val("--methods"), "method", |s| match s {
                    "floor" => Some(Method::Floor),
                    "seamless" => Some(Method::Seamless),
                    "ctr" => Some(Method::Ctr),
                    "cp" | "cp_a" => Some(Method::CpA),
                    _ => None,
                })
            }
            "--no-ctr" => no_ctr = true,
            "-n" | "--iterations" => a.iterations = num(&arg, val(&arg)) as usize,
            "--ctr-iterations" => a.ctr_iterations = num(&arg, val(&arg)) as usize,
            "--cp-iterations" => a.cp_iterations = num(&arg, val(&arg)) as usize,
            "--floor-cycles" => a.floor_cycles = num(&arg, val(&arg)) as usize,
            "--probe-threshold-us" => a.probe_threshold_us = num(&arg, val(&arg)),
            "--probe-nice" => {
                a.probe_nice = val(&arg)
                    .parse()
                    .ok()
                    .filter(|n| (-20..=19).contains(n))
                    .unwrap_or_else(|| usage("--probe-nice needs -20..19"))
            }
            "--xfs-size-gib" => a.xfs_size_gib = num(&arg, val(&arg)),
            "--push-timeout-s" => a.push_timeout_s = num(&arg, val(&arg)),
            "--json" => a.json = true,
            "--json-out" => a.json_out = Some(val(&arg).into()),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if files.is_some() || mib.is_some() {
        let f = files.unwrap_or_else(|| a.layers.iter().map(|l| l.files).collect());
        let m = mib.unwrap_or_else(|| a.layers.iter().map(|l| l.mib).collect());
        a.layers = cross(&f, &m);
        a.layers.dedup();
    }
    if no_ctr {
        a.methods.retain(|m| *m != Method::Ctr);
    }
    a.methods.sort();
    a.methods.dedup();
    if a.iterations == 0 || a.layers.is_empty() || a.fs.is_empty() || a.writers.is_empty() {
        usage("nothing to run");
    }
    if a.probe_threshold_us == 0 {
        usage("--probe-threshold-us must be > 0");
    }
    a
}

impl Args {
    /// Seamless commits for `layer`: a 2 GiB layer costs minutes per push.
    pub fn seamless_runs(&self, layer: Layer) -> usize {
        if layer.mib >= 1024 {
            self.iterations.min(3)
        } else {
            self.iterations
        }
    }

    /// ctr runs for `layer`: the whole diff is frozen time, seconds each.
    pub fn ctr_runs(&self, layer: Layer) -> usize {
        if !self.methods.contains(&Method::Ctr) {
            0
        } else if layer.mib >= 1024 || layer.files >= 100_000 {
            self.ctr_iterations.min(1)
        } else {
            self.ctr_iterations
        }
    }

    pub fn cp_runs(&self) -> usize {
        if self.methods.contains(&Method::CpA) {
            self.cp_iterations
        } else {
            0
        }
    }
}
