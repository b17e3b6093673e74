//! `seamless-snapshot`: commit running containerd containers to OCI images
//! with a pause bounded by the cgroup freeze itself.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use seamless_snapshot::{
    BackgroundMode, CommitOptions, Compression, Config, ContainerdSnapshotter, Error,
    SeamlessSnapshot, SnapshotState, SnapshotStatus,
};

#[derive(Parser, Debug)]
#[command(name = "seamless-snapshot", version, about)]
struct Cli {
    /// containerd's socket.
    #[arg(long, global = true, env = "CONTAINERD_ADDRESS", default_value = Config::DEFAULT_CONTAINERD_ADDRESS)]
    address: String,
    /// containerd namespace.
    #[arg(long, short = 'n', global = true, env = "CONTAINERD_NAMESPACE", default_value = Config::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Where snapshot jobs, captures and blobs are kept.
    #[arg(long, global = true, env = "SEAMLESS_STATE_DIR", default_value = Config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

/// The arguments of `commit`.
#[derive(clap::Args, Debug)]
struct CommitArgs {
    /// The container id.
    #[arg(long)]
    container: String,
    /// Where the image goes: a registry reference (REGISTRY/REPO:TAG),
    /// oci:PATH[:TAG] (an OCI image layout directory), oci-archive:FILE[:TAG]
    /// (a tar of one) or containerd:NAME (containerd's image store, in
    /// --namespace).
    #[arg(long)]
    target: String,
    /// Wait until the image is pushed.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits (e.g. 10m, 90s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30m")]
    timeout: Duration,
    /// Layer compression.
    #[arg(long, default_value = "gzip")]
    compression: Compression,
    /// Compression level (gzip 0-9, default 6; zstd 1-22, default 3).
    #[arg(long)]
    compression_level: Option<i32>,
    /// Compression threads (default: one per core).
    #[arg(long)]
    compression_threads: Option<u32>,
    /// The most bytes of holes one sparse file may expand to in the layer
    /// (default 16 GiB).
    #[arg(long)]
    max_sparse_expansion: Option<u64>,
    /// A registry host reached over plain HTTP (loopback ones always are).
    #[arg(long = "insecure-registry")]
    insecure_registry: Vec<String>,
    /// An xattr the layer carries beyond user.*, security.capability and
    /// POSIX ACLs: a name, or a prefix ending in '.' or '*'.
    #[arg(long = "xattr", value_name = "NAME")]
    xattrs: Vec<String>,
    /// Also compare the whole upper dir with its copy inside the frozen
    /// window and fail on any difference (for tests and audits: costs a
    /// full compare in the pause).
    #[arg(long)]
    verify_capture: bool,
    /// History comment of the new layer.
    #[arg(long, short = 'm')]
    message: Option<String>,
    /// History author.
    #[arg(long)]
    author: Option<String>,
    /// An image config label, KEY=VALUE.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// A manifest annotation, KEY=VALUE.
    #[arg(long = "annotation")]
    annotations: Vec<String>,
    /// Docker config.json with registry credentials (default:
    /// $DOCKER_CONFIG/config.json, then ~/.docker/config.json).
    ///
    /// For each registry, as docker resolves them: its credHelpers entry,
    /// else credsStore (the helper docker-credential-NAME on PATH; a helper
    /// answering "credentials not found" means anonymous), else its auths
    /// entry (auth, username/password, identitytoken). Docker Hub is
    /// https://index.docker.io/v1/ there. An identitytoken is exchanged for
    /// an access token at the registry's token endpoint, never sent as is.
    #[arg(long)]
    docker_config: Option<PathBuf>,
    /// A CA certificate file (PEM) trusted for every registry, on top of
    /// the system's roots and the certs.d ones (repeatable).
    #[arg(long = "registry-ca", value_name = "FILE")]
    registry_ca: Vec<PathBuf>,
    /// A directory in containerd's certs.d layout: DIR/HOST:PORT/*.crt and
    /// hosts.toml's ca entries (repeatable; default /etc/containerd/certs.d
    /// and /etc/docker/certs.d).
    #[arg(long = "registry-certs-dir", value_name = "DIR")]
    registry_certs_dir: Vec<PathBuf>,
    /// Where the capture directory goes (default: the state dir when on
    /// the container's filesystem, else next to containerd's snapshots).
    #[arg(long)]
    capture_root: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Capture a running container and push it as an image.
    // Boxed: by far the largest variant.
    Commit(Box<CommitArgs>),
    /// Show a snapshot's status.
    Status {
        /// The snapshot id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait for a snapshot to be pushed.
    Wait {
        /// The snapshot id.
        id: String,
        /// How long to wait.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30m")]
        timeout: Duration,
        /// Print the final status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List known snapshots.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove finished snapshots (failed or completed), with the capture and
    /// blob a failed one kept; never one still in progress.
    Prune {
        /// Only those whose status last changed at least this long ago
        /// (e.g. 7d, 12h, 0s).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
        /// List what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the removed snapshots' statuses as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Internal: run a snapshot's background build and push.
    #[command(hide = true)]
    Worker {
        /// State directory.
        state_dir: PathBuf,
        /// Snapshot id.
        id: String,
    },
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("seamless-snapshot: error: {}", e.full_message());
            eprintln!("  (kind: {}, code {})", e.kind(), e.kind().code());
            ExitCode::from(exit_code(&e))
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("LOG_LEVEL")
        .ok()
        .and_then(|l| EnvFilter::try_new(l).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Exit codes: 1 generic, 2 usage (clap), 3 timeout, 4 job failed.
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Timeout { .. } => 3,
        Error::JobFailed { .. } => 4,
        _ => 1,
    }
}

fn parse_pairs(v: &[String], what: &str) -> Result<Vec<(String, String)>, Error> {
    v.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Error::InvalidArgument(format!("{what} {s:?} is not KEY=VALUE")))
        })
        .collect()
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Commit(args) => {
            let CommitArgs {
                container,
                target,
                wait,
                timeout,
                compression,
                compression_level,
                compression_threads,
                max_sparse_expansion,
                insecure_registry,
                xattrs,
                verify_capture,
                message,
                author,
                labels,
                annotations,
                docker_config,
                registry_ca,
                registry_certs_dir,
                capture_root,
                json,
            } = *args;
            let exe = std::env::current_exe().map_err(|source| Error::Io {
                op: "locate own executable",
                path: "/proc/self/exe".into(),
                source,
            })?;
            let config = Config {
                containerd_address: cli.address,
                namespace: cli.namespace,
                state_dir: cli.state_dir.clone(),
                docker_config,
                registry_ca,
                registry_certs_dirs: if registry_certs_dir.is_empty() {
                    Config::default_registry_certs_dirs()
                } else {
                    registry_certs_dir
                },
                capture_root,
                // Without --wait the build and push must outlive this command.
                background: BackgroundMode::Process {
                    program: exe,
                    args: vec!["worker".to_string()],
                },
                ..Config::default()
            };
            let options = CommitOptions {
                compression,
                compression_level,
                compression_threads,
                max_sparse_expansion,
                labels: parse_pairs(&labels, "label")?.into_iter().collect(),
                annotations: parse_pairs(&annotations, "annotation")?
                    .into_iter()
                    .collect(),
                message,
                author,
                insecure_registries: insecure_registry,
                extra_xattrs: xattrs,
                verify_capture,
            };
            let snap = ContainerdSnapshotter::new(config)?;
            let started = Instant::now();
            let mut result = snap.commit_with(&container, &target, &options, None)?;
            if !json {
                println!(
                    "captured {} ({} files, {} bytes) in {:.3} s; container paused {:.3} ms",
                    result.snapshot_id,
                    result.files_captured,
                    result.bytes_captured,
                    result.total_time.as_secs_f64(),
                    result.pause_time.as_secs_f64() * 1e3
                );
            }
            if wait {
                let remaining = timeout.saturating_sub(started.elapsed());
                match wait_with_progress(&snap, &result.snapshot_id, remaining, !json) {
                    Ok(status) => {
                        result.manifest_digest = status.manifest_digest;
                        result.layer = status.layer;
                        result.total_time = started.elapsed();
                    }
                    Err(e) => {
                        // The capture happened: keep its id and pause visible.
                        if json {
                            print_json(&result)?;
                        }
                        return Err(e);
                    }
                }
            }
            if json {
                print_json(&result)?;
            } else if let Some(d) = &result.manifest_digest {
                println!("pushed {target}@{d}");
            } else {
                println!(
                    "building and pushing in the background; follow with: seamless-snapshot status {}",
                    result.snapshot_id
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { id, json } => {
            let status = reader(&cli.address, &cli.namespace, &cli.state_dir)?.get_status(&id)?;
            if json {
                print_json(&status)?;
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Wait { id, timeout, json } => {
            let status = wait_with_progress(
                &reader(&cli.address, &cli.namespace, &cli.state_dir)?,
                &id,
                timeout,
                !json,
            )?;
            if json {
                print_json(&status)?;
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List { json } => {
            let all = reader(&cli.address, &cli.namespace, &cli.state_dir)?.list()?;
            if json {
                print_json(&all)?;
            } else {
                println!("{:<32} {:<10} {:<24} TARGET", "ID", "STATE", "CONTAINER");
                for s in &all {
                    println!(
                        "{:<32} {:<10} {:<24} {}",
                        s.snapshot_id, s.state, s.container_id, s.target_ref
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune {
            older_than,
            dry_run,
            json,
        } => {
            let pruned =
                reader(&cli.address, &cli.namespace, &cli.state_dir)?.prune(older_than, dry_run)?;
            if json {
                print_json(&pruned)?;
            } else {
                let verb = if dry_run { "would remove" } else { "removed" };
                let now = std::time::SystemTime::now();
                for s in &pruned {
                    let changed = std::time::SystemTime::from(s.updated_at);
                    let age = now.duration_since(changed).unwrap_or_default();
                    let age = humantime::format_duration(Duration::from_secs(age.as_secs()));
                    println!(
                        "{verb} {} ({}, {age} ago) {}",
                        s.snapshot_id, s.state, s.target_ref
                    );
                }
                println!("{verb} {} snapshot(s)", pruned.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker { state_dir, id } => {
            // The start gate (see `BackgroundMode::Process`): wait until the
            // committer has recorded us as the job's worker; if it died
            // first, the job is not ours.
            if !ContainerdSnapshotter::worker_start_gate() {
                eprintln!("worker: the committer did not start job {id}; leaving it alone");
                return Ok(ExitCode::from(4));
            }
            let status = ContainerdSnapshotter::run_job(&state_dir, &id)?;
            if status.state == SnapshotState::Completed {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(4))
            }
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Error> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| Error::Internal(format!("serialize output: {e}")))?;
    println!("{s}");
    Ok(())
}

fn print_status(s: &SnapshotStatus) {
    println!("snapshot:   {}", s.snapshot_id);
    println!("container:  {}", s.container_id);
    println!("target:     {}", s.target_ref);
    println!("state:      {}", s.state);
    if s.progress.total > 0 {
        println!(
            "progress:   {} / {} bytes",
            s.progress.done, s.progress.total
        );
    }
    if let Some(p) = s.timings.pause {
        println!("pause:      {:.3} ms", p.as_secs_f64() * 1e3);
    }
    for (name, t) in [
        ("capture", s.timings.capture),
        ("build", s.timings.build),
        ("push", s.timings.push),
    ] {
        if let Some(t) = t {
            println!("{name:<11} {:.3} s", t.as_secs_f64());
        }
    }
    if let Some(d) = &s.manifest_digest {
        println!("manifest:   {d}");
    }
    if let Some(e) = &s.error {
        println!("error:      [{}] {}", e.kind, e.message);
    }
}

/// A snapshotter for the commands that only read the state directory.
fn reader(
    address: &str,
    namespace: &str,
    state_dir: &std::path::Path,
) -> Result<ContainerdSnapshotter, Error> {
    ContainerdSnapshotter::new(Config {
        containerd_address: address.to_string(),
        namespace: namespace.to_string(),
        state_dir: state_dir.to_path_buf(),
        ..Config::default()
    })
}

/// The core's wait, with a progress bar on a terminal.
fn wait_with_progress(
    snap: &ContainerdSnapshotter,
    id: &str,
    timeout: Duration,
    show: bool,
) -> Result<SnapshotStatus, Error> {
    let bar = (show && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:10} [{bar:30}] {bytes}/{total_bytes} {elapsed}",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
        b
    });
    let result = snap.wait_observing(id, timeout, &mut |status| {
        if let Some(b) = &bar {
            b.set_message(status.state.to_string());
            b.set_length(status.progress.total);
            b.set_position(status.progress.done);
        }
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    result
}
