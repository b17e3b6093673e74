//! Integration tests of the C ABI against the rig. libseamless is installed
//! into a prefix by `snapshot-ffi/install.sh`, and the C and Go programs are
//! built against that prefix through pkg-config, as a user would build them:
//! `examples/c/commit.c` (also under valgrind), the multi-threaded
//! `snapshot-ffi/tests/c/abi_test.c`, and the Go example.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use seamless_snapshot_tests::{Rig, check_cmd, run_cmd, wait_until};

/// Appends a line to /data/log every ~2 ms and keeps the count in
/// /data/counter.
const WRITER: &str = "i=0; while true; do echo $i >> /data/log; i=$((i+1)); echo $i > /data/counter; usleep 2000; done";

/// The workspace root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The target directory this test binary was built in (`<target>/tmp` is
/// cargo's scratch directory for integration tests).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .to_path_buf()
}

/// The library installed into `<target>/tmp/ffi-prefix` by install.sh, once
/// per test binary, built with this test binary's profile (a debug test run
/// reuses the debug build instead of building everything again in release).
fn prefix() -> &'static Path {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ffi-prefix");
        let _ = std::fs::remove_dir_all(&prefix);
        let profile = if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        };
        check_cmd(
            Command::new("bash")
                .arg(workspace().join("snapshot-ffi/install.sh"))
                .arg(&prefix)
                .env("PROFILE", profile)
                .env("CARGO_TARGET_DIR", target_dir()),
        );
        let lib = prefix.join("lib");
        let soname = std::fs::read_link(lib.join("libseamless.so")).expect("libseamless.so link");
        assert_eq!(soname, Path::new("libseamless.so.0"));
        assert!(lib.join("libseamless.so.0").exists());
        assert!(lib.join("libseamless.a").exists());
        assert!(prefix.join("include/seamless.h").exists());
        prefix
    })
}

/// A command that finds the installed library: pkg-config at build time, the
/// loader at run time.
fn with_prefix(mut cmd: Command) -> Command {
    let p = prefix();
    cmd.env("PKG_CONFIG_PATH", p.join("lib/pkgconfig"))
        .env("LD_LIBRARY_PATH", p.join("lib"));
    cmd
}

/// Builds a C program with `cc ... $(pkg-config --cflags --libs seamless)`.
fn build_c(source: &str, out: &Path) {
    let script = format!(
        "cc -std=c11 -D_DEFAULT_SOURCE -Wall -Wextra -Werror -pthread -o '{}' '{}' \
         $(pkg-config --cflags --libs seamless)",
        out.display(),
        workspace().join(source).display()
    );
    let mut sh = Command::new("sh");
    sh.args(["-c", &script]);
    check_cmd(&mut with_prefix(sh));
}

/// The client arguments (`-a SOCKET -n NS -s STATE`) shared by the C and Go
/// programs.
fn client_args(rig: &Rig) -> Vec<String> {
    vec![
        "-a".into(),
        rig.socket().into(),
        "-n".into(),
        rig.ns().into(),
        "-s".into(),
        rig.state_dir().display().to_string(),
    ]
}

/// Starts the writer container `id` and waits until it has written a bit.
fn start_writer(rig: &Rig, id: &str) {
    rig.run_container(id, WRITER);
    wait_until(Duration::from_secs(10), || rig.read_counter(id) > 20)
        .unwrap_or_else(|_| panic!("{id} does not write"));
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks what a commit example printed (`result: {json}`, `status:
/// {json}`) against the registry, and returns the result JSON.
fn check_commit_output(rig: &Rig, out: &Output, target: &str) -> serde_json::Value {
    assert!(out.status.success(), "the example failed: {}", show(out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |label: &str| -> serde_json::Value {
        let json = stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} line: {}", show(out)));
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{label} {json}: {e}"))
    };
    let result = line("result: ");
    let status = line("status: ");
    assert_eq!(result["target_ref"], target);
    assert_eq!(status["snapshot_id"], result["snapshot_id"]);
    assert_eq!(status["state"], "completed", "{status}");
    let digest = result["manifest_digest"].as_str().expect("manifest_digest");
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(status["manifest_digest"], digest);
    assert!(result["pause_time"].as_f64().expect("pause_time") < 1.0);
    // The registry has the image, its last layer the one just built.
    let manifest = rig.inspect_raw(target);
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(
        layers.last().expect("a layer")["digest"],
        result["layer"]["digest"],
        "{manifest}"
    );
    result
}

/// Starts writer `id`, builds examples/c/commit.c and runs it, through
/// `runner` (e.g. valgrind) when given, to commit `id` to `<id>:1`.
/// Returns what it printed and the target.
fn run_c_example(rig: &Rig, id: &str, runner: &[&str]) -> (Output, String) {
    start_writer(rig, id);
    let exe = rig.tmp().join("commit");
    build_c("examples/c/commit.c", &exe);
    let target = rig.target(id, "1");
    let mut cmd = match runner.split_first() {
        Some((program, args)) => {
            let mut c = with_prefix(Command::new(program));
            c.args(args).arg(&exe);
            c
        }
        None => with_prefix(Command::new(&exe)),
    };
    cmd.args(client_args(rig)).args([id, &target]);
    (run_cmd(&mut cmd), target)
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn c_example_commits_a_running_container() {
    let rig = Rig::new();
    let (out, target) = run_c_example(&rig, "c-writer", &[]);
    check_commit_output(&rig, &out, &target);

    // The image holds the writer's data.
    let rootfs = rig.pull_unpack(&target);
    let log = std::fs::read(rootfs.join("data/log")).unwrap();
    assert!(
        log.ends_with(b"\n") && log.len() > 20,
        "{} bytes",
        log.len()
    );
    assert_eq!(rig.task_status("c-writer").as_deref(), Some("RUNNING"));
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn c_example_is_clean_under_valgrind() {
    let rig = Rig::new();
    // --child-silent-after-fork: where the library's freeze watchdog cannot
    // be its own program, it is a forked copy of this process that leaves
    // with _exit; a leak report of the parent's heap in that copy says
    // nothing about the library.
    let valgrind = [
        "valgrind",
        "--leak-check=full",
        "--error-exitcode=1",
        "--child-silent-after-fork=yes",
    ];
    let (out, target) = run_c_example(&rig, "vg-writer", &valgrind);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stderr
        .lines()
        .find(|l| l.contains("ERROR SUMMARY:"))
        .unwrap_or_else(|| panic!("no valgrind summary: {}", show(&out)));
    eprintln!("valgrind: {summary}");
    assert!(
        summary.contains("ERROR SUMMARY: 0 errors"),
        "{}",
        show(&out)
    );
    for kind in ["definitely lost", "indirectly lost", "possibly lost"] {
        if let Some(l) = stderr.lines().find(|l| l.contains(kind)) {
            assert!(l.contains(": 0 bytes in 0 blocks"), "{l}\n{}", show(&out));
        }
    }
    check_commit_output(&rig, &out, &target);
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn c_four_threads_commit_through_one_client() {
    let rig = Rig::new();
    let ids = ["t-0", "t-1", "t-2", "t-3"];
    for id in ids {
        start_writer(&rig, id);
    }
    let exe = rig.tmp().join("abi_test");
    build_c("snapshot-ffi/tests/c/abi_test.c", &exe);

    let repo = format!("{}/{}", rig.registry(), rig.ns());
    let mut cmd = with_prefix(Command::new(&exe));
    cmd.args(client_args(&rig)).arg(&repo).args(ids);
    let out = run_cmd(&mut cmd);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "abi_test failed: {}", show(&out));
    for id in ids {
        let manifest = rig.inspect_raw(&rig.target(id, "1"));
        assert!(manifest["layers"].as_array().is_some_and(|l| l.len() >= 2));
        assert_eq!(rig.task_status(id).as_deref(), Some("RUNNING"));
    }
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn go_example_commits_a_running_container() {
    let rig = Rig::new();
    start_writer(&rig, "go-writer");
    let go_dir = workspace().join("examples/go");
    let go = |args: &[&str]| {
        let mut cmd = with_prefix(Command::new("go"));
        cmd.current_dir(&go_dir)
            .args(args)
            // Standard library only: nothing may be downloaded.
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=readonly")
            .env("GOCACHE", target_dir().join("go-build"));
        cmd
    };
    let exe = rig.tmp().join("go-commit");
    check_cmd(&mut go(&["vet", "./..."]));
    check_cmd(&mut go(&["test", "./..."]));
    check_cmd(&mut go(&["build", "-o", exe.to_str().unwrap(), "."]));

    let target = rig.target("go-writer", "1");
    let mut cmd = with_prefix(Command::new(&exe));
    cmd.args(client_args(&rig)).args(["go-writer", &target]);
    let out = run_cmd(&mut cmd);
    check_commit_output(&rig, &out, &target);

    // Errors carry their code: an unknown container exits 1 naming it.
    let mut cmd = with_prefix(Command::new(&exe));
    cmd.args(client_args(&rig))
        .args(["no-such-container", &target]);
    let out = run_cmd(&mut cmd);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("container_not_found (1)"), "{stderr}");
}
