//! The proof suite's hostile container (issue 8): while it is committed over
//! and over, with the pre-copy stretched and the freeze delayed so that the
//! races really happen, the container swaps directories for symlinks to host
//! paths (absolute and `../..` relative ones, to a host directory holding a
//! secret and to the capture root), replaces files by fifos and by device
//! nodes of the host's root disk, links files and then replaces them,
//! renames files and directories across directories, and keeps a tree
//! deeper than `PATH_MAX` whose middle it swaps for a symlink, deletes and
//! recreates base image files and directories (whiteouts, opaque ones), over
//! thousands of rounds. Every commit succeeds within a bound, no byte of the
//! host secret is in any image, no host path is written, nothing blocks on
//! the fifo, and device nodes are device entries.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use seamless_snapshot_tests::{
    CompareOptions, Kind, Rig, check_cmd, compare_trees, scan_tree, wait_until,
};

/// Every commit, capture to pushed image, returns within this.
const COMMIT_BOUND: Duration = Duration::from_secs(60);
/// Rounds of hostile operations the container must have done in all.
const MIN_ROUNDS: u64 = 1000;
/// Commits made at least, and at most.
const MIN_COMMITS: usize = 10;
const MAX_COMMITS: usize = 30;

/// Levels of the deep tree (10-byte names: 4,950 bytes of path, more than
/// `PATH_MAX`), the loop swapping the one below level `SWAP_AT`.
const LEVELS: usize = 450;
const SWAP_AT: usize = 400;
const NAME: &str = "x123456789";

/// The container's script. `$S` is the host's secret directory, `MAJ:MIN`
/// the host's root disk. The loop counts its rounds in `/data/rounds` and
/// stops when `/data/stop` appears.
fn hostile_script(secret_dir: &Path, maj: u64, min: u64) -> String {
    let chunk = NAME.to_string() + "/";
    format!(
        r#"
S={s}
H=/data/h
mkdir -p $H/ra/deep $H/rb/sub/inner $H/hl $H/dev
echo moving > $H/ra/file
echo inner > $H/rb/sub/inner/f
mknod $H/dev/disk b {maj} {min}
mknod $H/dev/mem c 1 1
mkfifo $H/dev/fifo
mkfifo $H/dev/wfifo
# Blocked until someone opens the fifo for reading: it must never be us.
(echo leaked > $H/dev/wfifo; echo opened > /data/fifo-was-opened) &
cd $H/ra/deep
c=''; i=0; while [ $i -lt 50 ]; do c="${{c}}{chunk}"; i=$((i+1)); done
j=0; while [ $j -lt {top} ]; do mkdir -p "$c"; cd -P "$c"; j=$((j+1)); done
k=0; while [ $k -lt {below} ]; do mkdir -p "$c"; k=$((k+1)); done
echo bottom > "$c/bottom.txt"
echo ready > /data/ready
n=0
while [ ! -e /data/stop ]; do
  n=$((n+1))
  if [ $((n%2)) = 1 ]; then
    rm -rf $H/abs; ln -s $S $H/abs
    rm -rf $H/rel; ln -s ../../../../../../../../../../../../../../../..$S $H/rel
    rm -rf $H/cap; ln -s ../../../../../seamless-capture $H/cap
    rm -rf $H/up; ln -s ../../../.. $H/up
    mv {name} y123456789; ln -s $S {name}
    mv $H/ra/deep $H/rb/deep; mv $H/ra/file $H/rb/file; mv $H/rb/sub $H/ra/sub
    rm -rf /base/keep; echo "w $n" > /base/file-to-delete
  else
    rm -f $H/abs; mkdir $H/abs; echo "dir $n" > $H/abs/secret
    rm -f $H/rel; mkdir $H/rel; echo "dir $n" > $H/rel/secret
    rm -f $H/cap; mkdir $H/cap; echo "cap $n" > $H/cap/f
    rm -f $H/up; mkdir $H/up; echo "up $n" > $H/up/f
    rm -f {name}; mv y123456789 {name}
    mv $H/rb/deep $H/ra/deep; mv $H/rb/file $H/ra/file; mv $H/ra/sub $H/rb/sub
    mkdir -p /base/keep/sub; echo "k $n" > /base/keep/file; rm -f /base/file-to-delete
  fi
  rm -rf $H/node
  case $((n%5)) in
    0) echo "file $n" > $H/node;;
    1) mkfifo $H/node;;
    2) mknod $H/node b {maj} {min};;
    3) mknod $H/node c 1 1;;
    4) mkdir $H/node;;
  esac
  echo "v$n" > $H/hl/a; ln -f $H/hl/a $H/hl/b; ln -f $H/hl/a $H/rb/c
  echo "w$n" > $H/hl/a.new; mv -f $H/hl/a.new $H/hl/a
  echo $n > /data/rounds
done
echo $n > /data/stopped
sleep 100000
"#,
        s = secret_dir.display(),
        name = NAME,
        top = SWAP_AT / 50,
        below = (LEVELS - SWAP_AT) / 50,
    )
}

/// Path, kind, size, mtime and content of every entry below `dir`.
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (Kind, u64, i64, i64, Vec<u8>)> {
    scan_tree(dir)
        .into_iter()
        .map(|(p, e)| {
            let content = if e.kind == Kind::File {
                fs::read(dir.join(&p)).unwrap()
            } else {
                Vec::new()
            };
            (p, (e.kind, e.size, e.mtime, e.mtime_nsec, content))
        })
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs `commit --wait` with the fault holds `env`, killing it past
/// [`COMMIT_BOUND`]; returns its JSON result.
fn commit(rig: &Rig, id: &str, target: &str, env: &[(&str, u64)]) -> serde_json::Value {
    let mut cmd = rig.cli();
    cmd.args(["commit", "--container", id, "--target", target, "--json"])
        .args(["--wait", "--timeout", "60s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v.to_string());
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn the CLI");
    let done = wait_until(COMMIT_BOUND, || child.try_wait().ok().flatten().is_some());
    if done.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("commit to {target} ({env:?}) still running after {COMMIT_BOUND:?}");
    }
    let out = child.wait_with_output().expect("CLI output");
    assert!(
        out.status.success(),
        "commit to {target} ({env:?}) failed after {:?}: {}{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "commit --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Copies `reference` into an OCI layout; returns the layout, its top
/// layer's blob, and the raw and decompressed contents of every blob
/// (manifest, config, layers).
fn fetch_blobs(rig: &Rig, reference: &str) -> (PathBuf, PathBuf, Vec<(String, Vec<u8>)>) {
    let layout = rig.pull_layout(reference);
    let blob = |digest: &serde_json::Value| {
        let hex = digest
            .as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
            .expect("sha256 digest");
        layout.join("blobs/sha256").join(hex)
    };
    let json = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&fs::read(p).expect("read layout file")).expect("JSON")
    };
    let index = json(&layout.join("index.json"));
    let manifest = json(&blob(&index["manifests"][0]["digest"]));
    let top = blob(
        &manifest["layers"]
            .as_array()
            .and_then(|l| l.last())
            .expect("a layer")["digest"],
    );
    let mut blobs = Vec::new();
    for de in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let p = de.unwrap().path();
        let raw = fs::read(&p).unwrap();
        if raw.starts_with(&[0x1f, 0x8b]) {
            let out = Command::new("gzip")
                .args(["-dc"])
                .arg(&p)
                .output()
                .expect("gzip");
            assert!(out.status.success(), "gunzip {}", p.display());
            blobs.push((format!("{} (gunzipped)", p.display()), out.stdout));
        }
        blobs.push((p.display().to_string(), raw));
    }
    (layout, top, blobs)
}

/// GNU tar's listing of a gzip layer: path -> (type letter, size or
/// `major,minor`).
fn layer_listing(blob: &Path) -> BTreeMap<String, (char, String)> {
    let out = check_cmd(
        Command::new("tar")
            .args(["--numeric-owner", "-tvzf"])
            .arg(blob),
    );
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // perms owner size|maj,min date time name [-> target]
        // The date, YYYY-MM-DD (a whiteout's mode, `----------`, is not).
        let Some(date) = f.iter().skip(2).position(|w| {
            let b = w.as_bytes();
            b.len() == 10 && b[4] == b'-' && b[7] == b'-' && b[..4].iter().all(u8::is_ascii_digit)
        }) else {
            continue;
        };
        let kind = f[0].chars().next().unwrap_or('?');
        let date = date + 2;
        let Some(name) = f.get(date + 2) else {
            continue;
        };
        m.insert(name.to_string(), (kind, f[2..date].concat()));
    }
    m
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn hostile_container_is_committed_safely() {
    let t0 = Instant::now();
    let rig = Rig::new();
    // Built before the clock of the first commit starts.
    seamless_snapshot_tests::cli_path();
    eprintln!("rig and CLI at {:?}", t0.elapsed());

    // On the host: a secret the container points its symlinks at, and a
    // directory it would like us to write into.
    let nonce = format!("{:016x}{:08x}", rand_u64(), std::process::id());
    let token = format!("HOST-SECRET-{nonce}");
    let secret_dir = tempfile::Builder::new()
        .prefix("seamless-hostile-")
        .tempdir_in("/tmp")
        .unwrap();
    let sd = secret_dir.path();
    fs::write(sd.join("secret"), token.repeat(64)).unwrap();
    fs::create_dir(sd.join("trap")).unwrap();
    fs::write(sd.join("trap/keep"), b"host file\n").unwrap();
    let host_before = fingerprint(sd);
    let snap_root = rig.env.root.join("io.containerd.snapshotter.v1.overlayfs");
    let names = |d: &Path| -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "seamless-capture")
            .collect();
        v.sort();
        v
    };
    let snap_root_before = names(&snap_root);
    let rig_dir_before = names(&rig.env.dir);

    // The host's root disk, for the container's device nodes.
    let root_dev = fs::metadata("/").unwrap().dev();
    let (maj, min) = (libc::major(root_dev) as u64, libc::minor(root_dev) as u64);
    assert!(maj != 0, "/ is not on a block device ({maj}:{min})");

    rig.run_container("hostile", &hostile_script(sd, maj, min));
    let rootfs = rig.rootfs("hostile");
    wait_until(Duration::from_secs(60), || {
        rootfs.join("data/ready").exists()
    })
    .expect("the hostile container did not set up its tree");
    // The loop truncates before it writes: an empty read is retried.
    let rounds = || -> u64 {
        for _ in 0..100 {
            if let Some(n) = fs::read_to_string(rootfs.join("data/rounds"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return n;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        0
    };

    eprintln!("hostile container set up at {:?}", t0.elapsed());

    // Commits with the pre-copy stretched (a pause after each entry) and the
    // freeze delayed, so that the walk and the sync meet the changes.
    const PACE: &str = "SEAMLESS_FAULT_PRECOPY_PACE_US";
    const BEFORE: &str = "SEAMLESS_FAULT_HOLD_BEFORE_FREEZE_MS";
    const FROZEN: &str = "SEAMLESS_FAULT_HOLD_FROZEN_MS";
    let plans: [&[(&str, u64)]; 6] = [
        &[],
        &[(PACE, 300)],
        &[(PACE, 1000), (BEFORE, 150)],
        &[(BEFORE, 400)],
        &[(PACE, 100), (FROZEN, 100)],
        &[(PACE, 2000)],
    ];
    let mut targets = Vec::new();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    while targets.len() < MIN_COMMITS || (rounds() < MIN_ROUNDS && targets.len() < MAX_COMMITS) {
        let n = targets.len();
        let target = rig.target("hostile", &n.to_string());
        let t = Instant::now();
        let r = commit(&rig, "hostile", &target, plans[n % plans.len()]);
        slowest = slowest.max(t.elapsed());
        assert!(r["manifest_digest"].is_string(), "{r}");
        targets.push(target);
    }
    let total_rounds = rounds();
    eprintln!(
        "{} commits in {:?} (slowest {slowest:?}) over {total_rounds} hostile rounds",
        targets.len(),
        started.elapsed()
    );
    assert!(
        total_rounds >= MIN_ROUNDS,
        "only {total_rounds} hostile rounds over {} commits",
        targets.len()
    );

    // Quiesce the container and commit once more: that image equals it.
    fs::write(rootfs.join("data/stop"), b"").unwrap();
    wait_until(Duration::from_secs(30), || {
        rootfs.join("data/stopped").exists()
    })
    .expect("the hostile loop did not stop");
    // The quiet image is unpacked by umoci, which cannot create a tree
    // deeper than PATH_MAX: GNU rm (fd-relative) removes it first.
    check_cmd(
        Command::new("rm")
            .arg("-rf")
            .arg(rootfs.join("data/h/ra/deep"))
            .arg(rootfs.join("data/h/rb/deep")),
    );
    let last = rig.target("hostile", "quiet");
    commit(&rig, "hostile", &last, &[]);
    targets.push(last.clone());

    // Nothing blocked on the fifo: nobody ever opened it for reading, and
    // the container still runs.
    assert!(
        !rootfs.join("data/fifo-was-opened").exists(),
        "the committer opened the container's fifo"
    );
    assert_eq!(rig.task_status("hostile").as_deref(), Some("RUNNING"));

    for target in &targets {
        let (layout, top, blobs) = fetch_blobs(&rig, target);
        // A layer's tar holds every file's bytes as they are: scanning the
        // decompressed layers scans every file of the image (which umoci
        // cannot unpack while it holds the tree deeper than PATH_MAX).
        for (name, bytes) in &blobs {
            assert!(
                !contains(bytes, nonce.as_bytes()),
                "{target}: the host secret is in blob {name}"
            );
        }
        // Device nodes are device entries (no data), fifos are fifos.
        let listing = layer_listing(&top);
        let dev = |p: &str| listing.get(p).cloned();
        assert_eq!(
            dev("data/h/dev/disk"),
            Some(('b', format!("{maj},{min}"))),
            "{target}"
        );
        assert_eq!(dev("data/h/dev/mem"), Some(('c', "1,1".into())), "{target}");
        assert_eq!(dev("data/h/dev/fifo"), Some(('p', "0".into())), "{target}");
        // The tree deeper than PATH_MAX is there, down to the swapped level.
        let deep = listing
            .keys()
            .filter(|p| p.starts_with("data/h/ra/deep/") || p.starts_with("data/h/rb/deep/"))
            .count();
        assert!(
            deep >= SWAP_AT || *target == last,
            "{target}: {deep} entries of the deep tree"
        );
        for (path, (kind, size)) in &listing {
            match kind {
                'b' => assert_eq!(size, &format!("{maj},{min}"), "{target}: {path}"),
                'c' => assert_eq!(size, "1,1", "{target}: {path}"),
                'p' => assert_eq!(size, "0", "{target}: {path}"),
                _ => {}
            }
        }
        fs::remove_dir_all(layout.parent().unwrap()).unwrap();
    }

    eprintln!("images scanned at {:?}", t0.elapsed());

    // The quiet image is the container, entry for entry.
    let image = rig.pull_unpack(&last);
    let diffs = compare_trees(&rootfs, &image, &CompareOptions::default());
    assert!(
        diffs.is_empty(),
        "the last image differs from the quiet container:\n{}",
        diffs.join("\n")
    );

    // No host path was written.
    assert!(
        fingerprint(sd) == host_before,
        "the host directory the container pointed at changed"
    );
    assert_eq!(
        names(&snap_root),
        snap_root_before,
        "{}",
        snap_root.display()
    );
    assert_eq!(
        names(&rig.env.dir),
        rig_dir_before,
        "{}",
        rig.env.dir.display()
    );
    let captures = snap_root.join("seamless-capture");
    if captures.exists() {
        let left = scan_tree(&captures);
        assert!(
            left.len() == 1,
            "captures left behind: {:?}",
            left.keys().collect::<Vec<_>>()
        );
    }
}

/// A random number from the kernel.
fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let f = fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut &f, &mut b).unwrap();
    u64::from_le_bytes(b)
}
