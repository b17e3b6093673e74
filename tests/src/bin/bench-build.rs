//! Build-and-push benchmark: the background half of a commit (layer build,
//! then push) of one container, for gzip and zstd on one thread and on every
//! core, against two references measured in the same run on the same data:
//!
//! - (a) containerd's own commit of the same container: `ctr task pause`,
//!   `ctr snapshots diff --keep` (gzip, the only layer media type
//!   containerd 1.6's differ produces), `ctr task resume`; then the image
//!   record (a manifest and config referencing the base image's layers and
//!   the diff blob, imported with `ctr images import --no-unpack`) and
//!   `ctr images push --plain-http` to the rig's registry;
//! - (b) the compression floor, `tar -cf - DIR | pigz` and
//!   `tar -cf - DIR | zstd -T0` into a file, plus the upload of that file as
//!   one blob to the same registry with curl (POST, then a monolithic PUT).
//!
//! Needs the rig (`tests/rig/start.sh`, then `. /tmp/seamless-rig/env`), root,
//! `pigz`, `zstd`, `curl` and `tar`:
//!
//! ```text
//! cargo run --release -p seamless-snapshot-tests --bin bench-build -- \
//!     [--mb 600] [--sizes 600,2048] [--files 10000] \
//!     [--configs gzip:1,gzip:0,zstd:1,zstd:0] [--no-floor] [--no-containerd] [--json]
//! ```
//!
//! `--configs` picks the seamless commits (compression:threads, 0 = every
//! core); `--no-floor` and `--no-containerd` skip the references, e.g. to
//! measure one configuration's peak memory in a fresh process.
//!
//! For each size the container's writable layer gets that many MiB: half
//! incompressible (xorshift bytes), half compressible text, plus `--files`
//! small text files. Each seamless configuration is one commit with
//! `commit_with` (wait); the build and push times are the job's own
//! (`PhaseTimings`), and the peak resident memory is this process's
//! (`VmHWM`, reset before each commit through `/proc/self/clear_refs`): the
//! job runs in process. The reset sets the peak to the current resident
//! memory, so what the allocator kept from an earlier commit in the same
//! process counts in the next one's peak (an upper bound; the RSS at the
//! reset is printed on stderr). Before every commit (seamless or containerd) a
//! marker file in the layer gets new content, so every layer digest is new
//! and every push uploads its layer. Only measured numbers are printed; the
//! done-when checks of issue 10 are computed from them at the end.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use seamless_snapshot::{CommitOptions, Compression, ContainerdSnapshotter, SeamlessSnapshot};
use seamless_snapshot_tests::{BASE_IMAGE, Rig};
use serde_json::{Value, json};

type Res<T> = Result<T, String>;

struct Args {
    sizes: Vec<usize>,
    files: usize,
    containerd: bool,
    floor: bool,
    /// The seamless configurations: (compression, threads; 0 = all cores).
    configs: Vec<(Compression, u32)>,
    json: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        sizes: Vec::new(),
        files: 10_000,
        containerd: true,
        floor: true,
        configs: vec![
            (Compression::Gzip, 1),
            (Compression::Gzip, 0),
            (Compression::Zstd, 1),
            (Compression::Zstd, 0),
        ],
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| -> String {
            it.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        let num = |name: &str, v: &str| -> usize {
            v.trim()
                .parse()
                .unwrap_or_else(|_| usage(&format!("{name}: not a number: {v}")))
        };
        match arg.as_str() {
            "--mb" => {
                let v = val("--mb");
                a.sizes.push(num("--mb", &v));
            }
            "--sizes" => {
                let v = val("--sizes");
                a.sizes.extend(v.split(',').map(|s| num("--sizes", s)));
            }
            "--files" => {
                let v = val("--files");
                a.files = num("--files", &v);
            }
            "--no-containerd" => a.containerd = false,
            "--no-floor" => a.floor = false,
            "--configs" => {
                let v = val("--configs");
                a.configs = v
                    .split(',')
                    .map(|c| {
                        let (name, threads) = c.split_once(':').unwrap_or((c, "0"));
                        let comp = match name {
                            "gzip" => Compression::Gzip,
                            "zstd" => Compression::Zstd,
                            _ => usage(&format!("--configs: unknown compression {name}")),
                        };
                        (comp, num("--configs", threads) as u32)
                    })
                    .collect();
            }
            "--json" => a.json = true,
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if a.sizes.is_empty() {
        a.sizes.push(600);
    }
    a
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("bench-build: {msg}");
    }
    eprintln!(
        "usage: bench-build [--mb 600]... [--sizes 600,2048] [--files 10000] [--configs gzip:1,gzip:0,zstd:1,zstd:0] [--no-floor] [--no-containerd] [--json]"
    );
    std::process::exit(2);
}

/// Adds what was being done to an error.
trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

/// Writes the layer's data under `dir`: `mib` MiB half noise, half text, and
/// `files` small text files, all in bounded memory.
fn populate(dir: &Path, mib: usize, files: usize) -> Res<()> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move || format!("writing {p}")
    };
    fs::create_dir_all(dir.join("small")).ctx(io(dir))?;
    let half = (mib << 20) / 2;
    let path = dir.join("random.bin");
    let mut w = BufWriter::new(File::create(&path).ctx(io(&path))?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..half / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.write_all(&x.to_le_bytes()).ctx(io(&path))?;
    }
    w.flush().ctx(io(&path))?;
    let path = dir.join("text.log");
    let mut w = BufWriter::new(File::create(&path).ctx(io(&path))?);
    let mut n = 0;
    let mut i = 0u64;
    while n < half {
        let line = format!(
            "{i:010} INFO request served path=/api/v1/items/{} status=200 bytes={}\n",
            i % 977,
            (i * 7919) % 65_536
        );
        w.write_all(line.as_bytes()).ctx(io(&path))?;
        n += line.len();
        i += 1;
    }
    w.flush().ctx(io(&path))?;
    for f in 0..files {
        let sub = dir.join(format!("small/d{:03}", f / 100));
        if f % 100 == 0 {
            fs::create_dir_all(&sub).ctx(io(&sub))?;
        }
        let p = sub.join(format!("f{f:05}.txt"));
        fs::write(&p, format!("small file {f}\n").repeat(1 + f % 200)).ctx(io(&p))?;
    }
    Ok(())
}

/// Gives the layer new content (a marker file), so the next commit's layer
/// digest is one the registry has never seen.
fn touch_marker(data: &Path, what: &str) -> Res<()> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let p = data.join(".bench-marker");
    fs::write(&p, format!("{what} {nanos}\n")).ctx(|| format!("writing {}", p.display()))
}

/// Runs `cmd` (described as `what`) with no stdin; its stdout, or what
/// failed.
fn output(cmd: &mut Command, what: &str) -> Res<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("running {what}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `sh -c script`; its stdout, or what failed.
fn sh(script: &str) -> Res<String> {
    output(
        Command::new("sh").arg("-c").arg(script),
        &format!("`{script}`"),
    )
}

/// Runs `sh -c script` and returns how long it took.
fn timed_sh(script: &str) -> Res<Duration> {
    let t = Instant::now();
    sh(script)?;
    Ok(t.elapsed())
}

/// Runs `ctr -n NS args`; stdout, or what failed.
fn ctr(rig: &Rig, args: &[&str]) -> Res<String> {
    output(&mut rig.ctr_cmd(args), &format!("ctr {}", args.join(" ")))
}

/// A `/proc/self/status` field in KiB (0 if unreadable).
fn status_kib(field: &str) -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Peak resident memory since the last [`reset_hwm`].
fn vm_hwm_kib() -> u64 {
    status_kib("VmHWM:")
}

/// Resident memory now (the floor of the next peak after a reset: memory
/// the allocator kept from earlier commits counts).
fn vm_rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn reset_hwm() -> Res<()> {
    // "5" resets the peak RSS (Linux 4.0+).
    fs::write("/proc/self/clear_refs", "5").ctx(|| "resetting VmHWM".to_string())
}

/// `sha256:<hex>` of a file (with `sha256sum`, not timed by callers).
fn sha256_file(p: &Path) -> Res<String> {
    let out = sh(&format!("sha256sum < '{}'", p.display()))?;
    let hex = out.split_whitespace().next().unwrap_or_default();
    if hex.len() != 64 {
        return Err(format!("sha256sum of {}: {out}", p.display()));
    }
    Ok(format!("sha256:{hex}"))
}

/// Uploads `file` as one blob to `repo` in the rig's registry as a client
/// without chunking would: POST an upload session, then one PUT of the whole
/// body with `?digest=`. Returns the time of POST + PUT; the digest is
/// computed before (not timed) and the blob checked after (not timed).
fn upload_blob(registry: &str, repo: &str, file: &Path) -> Res<Duration> {
    let digest = sha256_file(file)?;
    let script = format!(
        r#"set -e
loc=$(curl -fsS -X POST -D - -o /dev/null 'http://{registry}/v2/{repo}/blobs/uploads/' | tr -d '\r' | awk 'tolower($1)=="location:" {{print $2}}')
[ -n "$loc" ] || {{ echo "no Location from the upload POST" >&2; exit 1; }}
case $loc in http*) ;; *) loc="http://{registry}$loc" ;; esac
case $loc in *\?*) sep='&' ;; *) sep='?' ;; esac
curl -fsS -X PUT -H 'Expect:' -H 'Content-Type: application/octet-stream' -T '{file}' "$loc${{sep}}digest={digest}" -o /dev/null"#,
        file = file.display()
    );
    let took = timed_sh(&script)?;
    let code = sh(&format!(
        "curl -sS -o /dev/null -w '%{{http_code}}' -I 'http://{registry}/v2/{repo}/blobs/{digest}'"
    ))?;
    if code.trim() != "200" {
        return Err(format!(
            "after uploading {}: HEAD of {digest} in {repo} answered {code}",
            file.display()
        ));
    }
    Ok(took)
}

/// One row of the table.
struct Row {
    what: String,
    /// Build (seamless), compression (floor) or pause + diff + resume
    /// (containerd).
    build_s: f64,
    /// Push (seamless, containerd: image record + `ctr images push`) or the
    /// blob's upload (floor).
    push_s: Option<f64>,
    size: u64,
    peak_rss_mib: Option<f64>,
}

impl Row {
    fn total(&self) -> f64 {
        self.build_s + self.push_s.unwrap_or(0.0)
    }
    fn json(&self) -> Value {
        json!({
            "what": self.what, "build_s": self.build_s, "push_s": self.push_s,
            "total_s": self.total(), "size": self.size, "peak_rss_mib": self.peak_rss_mib,
        })
    }
}

/// One done-when check.
struct Check {
    mib: usize,
    what: String,
    measured: f64,
    limit: f64,
    unit: &'static str,
    how: String,
}

impl Check {
    fn pass(&self) -> bool {
        self.measured <= self.limit
    }
}

/// The blob in containerd's content store (`root/io.containerd.content.v1.content`).
fn content_blob(rig: &Rig, digest: &str) -> PathBuf {
    rig.env
        .root
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// `(digest, labels)` of every blob in the namespace's content store.
fn content_ls(rig: &Rig) -> Res<Vec<(String, String)>> {
    Ok(ctr(rig, &["content", "ls"])?
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Some((f.first()?.to_string(), f.last()?.to_string()))
        })
        .collect())
}

/// containerd's own commit of container `id` and its push to `target`, timed
/// as a containerd user does it (nerdctl commit pauses by default):
/// pause + `ctr snapshots diff --keep` + resume, then the image record
/// (manifest + config, `ctr images import --no-unpack`) + `ctr images push`.
/// `ctr snapshots diff` also copies the new blob to its stdout (to
/// /dev/null here): that read-back is in the diff time.
fn containerd_commit_push(rig: &Rig, id: &str, target: &str, work: &Path) -> Res<Row> {
    let info: Value = serde_json::from_str(&ctr(rig, &["containers", "info", id])?)
        .ctx(|| format!("parsing `ctr containers info {id}`"))?;
    let key = info["SnapshotKey"]
        .as_str()
        .ok_or_else(|| format!("no SnapshotKey in `ctr containers info {id}`"))?
        .to_string();
    let snapshotter = info["Snapshotter"]
        .as_str()
        .unwrap_or("overlayfs")
        .to_string();
    let before: BTreeSet<String> = content_ls(rig)?.into_iter().map(|(d, _)| d).collect();

    let t = Instant::now();
    ctr(rig, &["task", "pause", id])?;
    let diff = rig
        .ctr_cmd(&[
            "snapshots",
            "--snapshotter",
            &snapshotter,
            "diff",
            "--keep",
            &key,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let resumed = ctr(rig, &["task", "resume", id]);
    let diff_s = t.elapsed().as_secs_f64();
    let diff = diff.ctx(|| "running ctr snapshots diff".to_string())?;
    if !diff.status.success() {
        return Err(format!(
            "ctr snapshots diff {key} failed ({}): {}",
            diff.status,
            String::from_utf8_lossy(&diff.stderr).trim()
        ));
    }
    resumed?;

    // The new blob: the one `--keep` labelled, with its diff id.
    let (layer, labels) = content_ls(rig)?
        .into_iter()
        .find(|(d, l)| !before.contains(d) && l.contains("containerd.io/uncompressed="))
        .ok_or("ctr snapshots diff left no new blob in the content store")?;
    let diff_id = labels
        .split(',')
        .find_map(|l| l.strip_prefix("containerd.io/uncompressed="))
        .ok_or_else(|| format!("no uncompressed label on {layer}: {labels}"))?
        .to_string();
    let layer_size = fs::metadata(content_blob(rig, &layer))
        .ctx(|| format!("size of {layer} in the content store"))?
        .len();

    // Manifest and config: the base image's, plus the new layer.
    let base_manifest = ctr(rig, &["images", "ls"])?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&BASE_IMAGE)).then(|| f.get(2).map(|s| s.to_string()))?
        })
        .ok_or_else(|| format!("{BASE_IMAGE} not in `ctr images ls`"))?;
    let mut manifest: Value = serde_json::from_str(&ctr(rig, &["content", "get", &base_manifest])?)
        .ctx(|| format!("parsing the manifest {base_manifest}"))?;
    let base_config = manifest["config"]["digest"]
        .as_str()
        .ok_or("no config in the base manifest")?
        .to_string();
    let mut config: Value = serde_json::from_str(&ctr(rig, &["content", "get", &base_config])?)
        .ctx(|| format!("parsing the config {base_config}"))?;
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or("no rootfs.diff_ids in the base config")?
        .push(json!(diff_id));
    if let Some(h) = config["history"].as_array_mut() {
        h.push(json!({"created_by": "ctr snapshots diff (bench-build)"}));
    }
    let config_bytes = serde_json::to_vec(&config).ctx(|| "config".to_string())?;
    let layout = work.join("oci");
    fs::create_dir_all(layout.join("blobs/sha256"))
        .ctx(|| format!("mkdir {}", layout.display()))?;
    let write_blob = |bytes: &[u8]| -> Res<String> {
        let p = layout.join("blobs/sha256/tmp");
        fs::write(&p, bytes).ctx(|| format!("writing {}", p.display()))?;
        let d = sha256_file(&p)?;
        let to = layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        fs::rename(&p, &to).ctx(|| format!("renaming to {}", to.display()))?;
        Ok(d)
    };
    let config_digest = write_blob(&config_bytes)?;
    manifest["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
    manifest["config"]["digest"] = json!(config_digest);
    manifest["config"]["size"] = json!(config_bytes.len());
    manifest["layers"]
        .as_array_mut()
        .ok_or("no layers in the base manifest")?
        .push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer, "size": layer_size,
        }));
    let manifest_bytes = serde_json::to_vec(&manifest).ctx(|| "manifest".to_string())?;
    let manifest_digest = write_blob(&manifest_bytes)?;
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "diff"},
    }]});
    fs::write(layout.join("index.json"), index.to_string()).ctx(|| "index.json".to_string())?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .ctx(|| "oci-layout".to_string())?;
    let tar = work.join("image.tar");
    sh(&format!(
        "tar -C '{}' -cf '{}' .",
        layout.display(),
        tar.display()
    ))?;
    let tar_s = tar.to_string_lossy().into_owned();
    let image = "seamless.test/ctr-diff:diff";

    let t = Instant::now();
    ctr(
        rig,
        &[
            "images",
            "import",
            "--no-unpack",
            "--base-name",
            "seamless.test/ctr-diff",
            &tar_s,
        ],
    )?;
    ctr(rig, &["images", "push", "--plain-http", target, image])?;
    let push_s = t.elapsed().as_secs_f64();

    // Check that the registry has the layer, then drop what we made.
    let (reg, rest) = target.split_once('/').ok_or("target without a registry")?;
    let repo = rest.rsplit_once(':').map_or(rest, |(r, _)| r);
    let code = sh(&format!(
        "curl -sS -o /dev/null -w '%{{http_code}}' -I 'http://{reg}/v2/{repo}/blobs/{layer}'"
    ))?;
    if code.trim() != "200" {
        return Err(format!(
            "after ctr images push: HEAD of {layer} in {repo} answered {code}"
        ));
    }
    ctr(rig, &["images", "rm", image])?;
    ctr(
        rig,
        &["content", "rm", &manifest_digest, &config_digest, &layer],
    )
    .ok();
    fs::remove_dir_all(work).ok();
    Ok(Row {
        what:
            "containerd: pause + `ctr snapshots diff` (gzip) + resume; import + `ctr images push`"
                .to_string(),
        build_s: diff_s,
        push_s: Some(push_s),
        size: layer_size,
        peak_rss_mib: None,
    })
}

/// Everything measured for one size.
struct SizeRun {
    mib: usize,
    rows: Vec<Row>,
    checks: Vec<Check>,
}

fn run_size(rig: &Rig, args: &Args, mib: usize, cores: usize) -> Res<SizeRun> {
    let id = format!("bench-{mib}");
    rig.run_container(&id, "sleep 1000000");
    let data = rig.rootfs(&id).join("data");
    let t = Instant::now();
    populate(&data, mib, args.files)?;
    eprintln!(
        "bench-build: {mib} MiB: wrote {mib} MiB + {} files in {:.1} s",
        args.files,
        t.elapsed().as_secs_f64()
    );
    let d = data.display();
    let floor = rig.new_dir("floor");
    let f = floor.display();
    // Warm the page cache, as the capture will have.
    timed_sh(&format!("tar -cf - -C {d} . > /dev/null"))?;
    let mut rows: Vec<Row> = Vec::new();
    // (name, script, output, upload it?)
    let floors = if args.floor { 4 } else { 0 };
    for (name, script, out, upload) in [
        (
            "floor: `tar | gzip -6` (1 core)",
            format!("tar -cf - -C {d} . | gzip -6 > {f}/l.gz"),
            "l.gz",
            false,
        ),
        (
            "floor: `tar | pigz -6`",
            format!("tar -cf - -C {d} . | pigz -6 > {f}/l.gz"),
            "l.gz",
            true,
        ),
        (
            "floor: `tar | zstd -3` (1 core)",
            format!("tar -cf - -C {d} . | zstd -q -3 > {f}/l.zst"),
            "l.zst",
            false,
        ),
        (
            "floor: `tar | zstd -3 -T0`",
            format!("tar -cf - -C {d} . | zstd -q -3 -T0 > {f}/l.zst"),
            "l.zst",
            true,
        ),
    ]
    .into_iter()
    .take(floors)
    {
        let took = timed_sh(&script)?;
        let file = floor.join(out);
        let size = fs::metadata(&file)
            .ctx(|| format!("{}", file.display()))?
            .len();
        let push_s = if upload {
            let repo = format!("{}/floor-{mib}", rig.ns());
            Some(upload_blob(rig.registry(), &repo, &file)?.as_secs_f64())
        } else {
            None
        };
        fs::remove_file(&file).ctx(|| format!("removing {}", file.display()))?;
        eprintln!(
            "bench-build: {mib} MiB: {name}: {:.2} s, upload {}, {size} bytes",
            took.as_secs_f64(),
            push_s.map_or("-".to_string(), |s| format!("{s:.2} s"))
        );
        rows.push(Row {
            what: name.to_string(),
            build_s: took.as_secs_f64(),
            push_s,
            size,
            peak_rss_mib: None,
        });
    }

    let snap = ContainerdSnapshotter::new(rig.config())
        .ctx(|| "ContainerdSnapshotter::new".to_string())?;
    for &(c, threads) in &args.configs {
        let opts = CommitOptions {
            compression: c,
            compression_threads: Some(threads),
            ..CommitOptions::default()
        };
        let n = if threads == 0 { cores } else { 1 };
        let what = format!("seamless {c}, {n} thread{}", if n == 1 { "" } else { "s" });
        touch_marker(&data, &what)?;
        reset_hwm()?;
        let rss_at_start = vm_rss_kib();
        let target = rig.target(&format!("bench-{mib}"), &format!("{c}-{n}"));
        let r = snap
            .commit_with(&id, &target, &opts, Some(Duration::from_secs(3600)))
            .ctx(|| format!("{what}: commit_with {id} -> {target}"))?;
        let hwm = vm_hwm_kib();
        let st = snap
            .get_status(&r.snapshot_id)
            .ctx(|| format!("{what}: get_status"))?;
        let build = st.timings.build.unwrap_or_default().as_secs_f64();
        let push = st.timings.push.unwrap_or_default().as_secs_f64();
        let size = r.layer.as_ref().map_or(0, |l| l.size);
        eprintln!(
            "bench-build: {mib} MiB: {what}: build {build:.2} s, push {push:.2} s, {size} bytes, peak RSS {:.1} MiB (RSS at reset {:.1} MiB)",
            hwm as f64 / 1024.0,
            rss_at_start as f64 / 1024.0
        );
        rows.push(Row {
            what,
            build_s: build,
            push_s: Some(push),
            size,
            peak_rss_mib: Some(hwm as f64 / 1024.0),
        });
    }

    if args.containerd {
        touch_marker(&data, "containerd")?;
        let target = rig.target(&format!("ctr-{mib}"), "gzip");
        let row = containerd_commit_push(rig, &id, &target, &rig.new_dir("ctr"))?;
        eprintln!(
            "bench-build: {mib} MiB: containerd: diff {:.2} s, push {:.2} s, {} bytes",
            row.build_s,
            row.push_s.unwrap_or_default(),
            row.size
        );
        rows.push(row);
    }

    let checks = checks(mib, cores, &rows);
    // Keep the machine's disk: the data lives in the container's layer,
    // removed with the rig's namespace.
    fs::remove_dir_all(&data).ok();
    rig.ctr_cmd(&["task", "kill", "-s", "KILL", &id])
        .output()
        .ok();
    Ok(SizeRun { mib, rows, checks })
}

/// The done-when checks of issue 10 for one size, from the rows measured.
fn checks(mib: usize, cores: usize, rows: &[Row]) -> Vec<Check> {
    let find = |prefix: &str| rows.iter().find(|r| r.what.starts_with(prefix));
    let plural = if cores == 1 { "" } else { "s" };
    let ctrd = find("containerd:");
    let mut out = Vec::new();
    for (c, floor) in [
        ("gzip", "floor: `tar | pigz"),
        ("zstd", "floor: `tar | zstd -3 -T0"),
    ] {
        let Some(s) = find(&format!("seamless {c}, {cores} thread{plural}")) else {
            continue;
        };
        if let Some(a) = ctrd {
            out.push(Check {
                mib,
                what: format!("seamless {c} build+push ≤ ½ × containerd diff+push (gzip)"),
                measured: s.total(),
                limit: a.total() / 2.0,
                unit: "s",
                how: format!("{:.2} s vs ½ × {:.2} s", s.total(), a.total()),
            });
        }
        if let Some(fl) = find(floor) {
            out.push(Check {
                mib,
                what: format!("seamless {c} build+push ≤ 1.3 × (floor + upload)"),
                measured: s.total(),
                limit: 1.3 * fl.total(),
                unit: "s",
                how: format!(
                    "{:.2} s vs 1.3 × ({:.2} + {:.2}) s",
                    s.total(),
                    fl.build_s,
                    fl.push_s.unwrap_or_default()
                ),
            });
        }
        if let Some(rss) = s.peak_rss_mib {
            out.push(Check {
                mib,
                what: format!("seamless {c} peak RSS < 128 MiB"),
                measured: rss,
                limit: 128.0,
                unit: "MiB",
                how: format!("{rss:.1} MiB"),
            });
        }
    }
    out
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{v:.2}"))
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
    let mut runs = Vec::new();
    for &mib in &args.sizes {
        match run_size(&rig, &args, mib, cores) {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("bench-build: {mib} MiB: {e}");
                std::process::exit(1);
            }
        }
    }
    if args.json {
        let v: Vec<Value> = runs
            .iter()
            .map(|r| {
                json!({
                    "mib": r.mib,
                    "rows": r.rows.iter().map(Row::json).collect::<Vec<_>>(),
                    "checks": r.checks.iter().map(|c| json!({
                        "what": c.what, "measured": c.measured, "limit": c.limit,
                        "unit": c.unit, "pass": c.pass(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", Value::Array(v));
        return;
    }
    for r in &runs {
        println!("\n{} MiB layer (+ {} small files)\n", r.mib, args.files);
        println!(
            "| what | build / diff (s) | push / upload (s) | total (s) | blob (bytes) | peak RSS (MiB) |"
        );
        println!("|---|---|---|---|---|---|");
        for row in &r.rows {
            println!(
                "| {} | {:.2} | {} | {:.2} | {} | {} |",
                row.what,
                row.build_s,
                fmt_opt(row.push_s),
                row.total(),
                row.size,
                fmt_opt(row.peak_rss_mib)
            );
        }
    }
    println!("\nDone-when checks (seamless on all {cores} cores)\n");
    println!("| layer | check | measured | limit | result |");
    println!("|---|---|---|---|---|");
    for c in runs.iter().flat_map(|r| &r.checks) {
        println!(
            "| {} MiB | {} | {} | {:.2} {} | {} |",
            c.mib,
            c.what,
            c.how,
            c.limit,
            c.unit,
            if c.pass() { "PASS" } else { "FAIL" }
        );
    }
}
