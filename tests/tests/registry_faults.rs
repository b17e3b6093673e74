//! Pushing through a fault-injecting proxy in front of the rig's real
//! registry: transient faults (resets mid-upload, 500/503 bursts with
//! `Retry-After`, an expired token, a slow link) end in the exact image;
//! permanent ones in a failed job of the right kind; the tag never points
//! to an incomplete image. Sizes and timeouts are scaled down: a 4 MiB
//! layer, 512 KiB chunks, a stall timeout of seconds.

use std::process::Command;
use std::time::{Duration, Instant};

use seamless_snapshot::{Config, ContainerdSnapshotter, Error, ErrorKind, SeamlessSnapshot};
use seamless_snapshot_tests::proxy::{FaultProxy, LogEntry};
use seamless_snapshot_tests::{Rig, wait_until};

const WAIT: Duration = Duration::from_secs(120);
const CHUNK: u64 = 512 * 1024;
/// The random file of the container: its layer is about as big.
const DATA: u64 = 4 * 1024 * 1024;

/// A container holding `DATA` random bytes in `/data/r`.
fn random_container(rig: &Rig, id: &str) {
    rig.run_container(
        id,
        &format!("mkdir -p /data && head -c {DATA} /dev/urandom > /data/r.tmp && mv /data/r.tmp /data/r && while true; do sleep 1; done"),
    );
    wait_until(Duration::from_secs(20), || {
        rig.rootfs(id).join("data/r").exists()
    })
    .expect("the container wrote /data/r");
}

fn config(rig: &Rig) -> Config {
    Config {
        push_chunk_size: CHUNK,
        push_stall_timeout: Duration::from_secs(10),
        push_retry_budget: Duration::from_secs(60),
        ..rig.config()
    }
}

/// The manifest digest of `reference` in the real registry, if it is there.
fn registry_digest(reference: &str) -> Option<String> {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The image pushed through the proxy is in the registry, exactly: the
/// same manifest digest, and the file reads back byte for byte.
fn assert_exact(rig: &Rig, id: &str, real: &str, digest: &str) {
    assert_eq!(registry_digest(real).as_deref(), Some(digest));
    let rootfs = rig.pull_unpack(real);
    let pulled = std::fs::read(rootfs.join("data/r")).expect("pulled /data/r");
    let original = std::fs::read(rig.rootfs(id).join("data/r")).expect("container's /data/r");
    assert_eq!(pulled.len() as u64, DATA);
    assert!(pulled == original, "pulled /data/r differs");
}

/// Every manifest `PUT` arrives after the last blob upload closed, and no
/// upload request comes after it.
fn assert_manifest_last(log: &[LogEntry], text: &str) {
    let blobs_done = log
        .iter()
        .filter(|e| e.method == "PUT" && e.is_upload() && e.status == Some(201))
        .map(|e| e.at + e.took)
        .max()
        .unwrap_or_else(|| panic!("no blob upload closed:\n{text}"));
    let first_manifest = log
        .iter()
        .filter(|e| e.is_manifest_put())
        .map(|e| e.at)
        .min()
        .unwrap_or_else(|| panic!("no manifest put:\n{text}"));
    assert!(
        first_manifest >= blobs_done,
        "manifest before a blob:\n{text}"
    );
    assert!(
        !log.iter().any(|e| e.is_upload() && e.at >= first_manifest),
        "upload after the manifest:\n{text}"
    );
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn transient_faults_end_in_the_exact_image() {
    let rig = Rig::new();
    random_container(&rig, "flaky");
    let proxy = FaultProxy::start(rig.registry());
    // The first two POSTs of an upload: 500, no Retry-After (backoff).
    proxy.fail("POST", "/blobs/uploads/", 500, None, 0, 2);
    // The 2nd and 3rd PATCH: 503, Retry-After: 1.
    proxy.fail("PATCH", "/blobs/uploads/", 503, Some("1"), 1, 2);
    // A later PATCH: 401 (the token expired): a new one, then on.
    proxy.fail("PATCH", "/blobs/uploads/", 401, None, 6, 1);
    // The first manifest PUT: 503 with Retry-After.
    proxy.fail("PUT", "/manifests/", 503, Some("1"), 0, 1);
    // A reset half way through the layer (chunks start at 2 MiB).
    let reset_at = 4 * CHUNK + 100 * 1024;
    proxy.reset_at(reset_at);

    let snap = ContainerdSnapshotter::new(config(&rig)).unwrap();
    let target = format!("{}/{}/flaky:1", proxy.addr(), rig.ns());
    let r = snap
        .commit_with_wait("flaky", &target, WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_text()));
    let digest = r.manifest_digest.clone().expect("manifest digest");
    let log = proxy.log();
    let text = proxy.log_text();

    // The reset: the PATCH carrying byte `reset_at`, cut; the session asked
    // where it is (GET), then the next PATCH of that session starts where
    // the registry acknowledged, not at 0.
    let i = log
        .iter()
        .position(|e| e.status.is_none() && e.fault.is_some())
        .unwrap_or_else(|| panic!("no reset:\n{text}"));
    let cut = &log[i];
    assert_eq!(cut.method, "PATCH", "{text}");
    assert_eq!(cut.range_start(), Some(4 * CHUNK), "{text}");
    let acked = log[..i]
        .iter()
        .filter(|e| e.path == cut.path && e.method == "PATCH" && e.status == Some(202))
        .filter_map(|e| {
            e.content_range
                .as_deref()?
                .split('-')
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or_else(|| panic!("nothing acknowledged before the reset:\n{text}"));
    assert_eq!(acked + 1, 4 * CHUNK, "{text}");
    let after: Vec<&LogEntry> = log[i + 1..].iter().filter(|e| e.path == cut.path).collect();
    assert_eq!(
        after.first().map(|e| e.method.as_str()),
        Some("GET"),
        "{text}"
    );
    let next_patch = after
        .iter()
        .find(|e| e.method == "PATCH")
        .unwrap_or_else(|| panic!("no PATCH after the reset:\n{text}"));
    assert_eq!(next_patch.range_start(), Some(acked + 1), "{text}");
    assert!(
        !after
            .iter()
            .any(|e| e.method == "PATCH" && e.range_start() == Some(0)),
        "restarted from 0:\n{text}"
    );

    // Retry-After: 1 honoured: the same session's next request a second later.
    let injected_503: Vec<&LogEntry> = log
        .iter()
        .filter(|e| e.method == "PATCH" && e.status == Some(503))
        .collect();
    assert_eq!(injected_503.len(), 2, "{text}");
    for e in injected_503 {
        let next = log
            .iter()
            .find(|n| n.path == e.path && n.at > e.at)
            .unwrap_or_else(|| panic!("no retry of {e:?}:\n{text}"));
        assert!(
            next.at >= e.at + e.took + Duration::from_millis(950),
            "retried before Retry-After:\n{text}"
        );
    }
    // The 401: a new token (GET /v2/), then the upload went on.
    let j = log
        .iter()
        .position(|e| e.status == Some(401))
        .unwrap_or_else(|| panic!("no 401:\n{text}"));
    assert!(
        log[j..]
            .iter()
            .any(|e| e.method == "GET" && e.path == "/v2/"),
        "no re-authentication after the 401:\n{text}"
    );
    assert_eq!(
        log.iter()
            .filter(|e| e.method == "POST" && e.status == Some(500))
            .count(),
        2,
        "{text}"
    );
    assert_manifest_last(&log, &text);
    assert_eq!(
        log.iter()
            .filter(|e| e.is_manifest_put())
            .map(|e| e.status)
            .collect::<Vec<_>>(),
        vec![Some(503), Some(201)],
        "{text}"
    );

    let real = format!("{}/{}/flaky:1", rig.registry(), rig.ns());
    assert_exact(&rig, "flaky", &real, &digest);
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn slow_link_upload_outlives_the_old_timeout_and_chunk_refusal_falls_back() {
    let rig = Rig::new();
    random_container(&rig, "slow");
    let proxy = FaultProxy::start(rig.registry());
    // This registry refuses chunks: every blob goes up in one PUT...
    proxy.fail("PATCH", "/blobs/uploads/", 405, None, 0, usize::MAX);
    // ... over a link so slow that the layer's PUT takes about 4 s,
    // more than the 2 s a whole-request timeout would allow.
    proxy.limit_rate(Some(1024 * 1024));
    let stall = Duration::from_secs(2);
    let snap = ContainerdSnapshotter::new(Config {
        push_stall_timeout: stall,
        push_concurrency: 4,
        ..config(&rig)
    })
    .unwrap();
    let target = format!("{}/{}/slow:1", proxy.addr(), rig.ns());
    let r = snap
        .commit_with_wait("slow", &target, WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_text()));
    let log = proxy.log();
    let text = proxy.log_text();
    let layer_put = log
        .iter()
        .filter(|e| e.method == "PUT" && e.is_upload() && e.status == Some(201))
        .max_by_key(|e| e.took)
        .unwrap_or_else(|| panic!("no blob PUT:\n{text}"));
    assert!(
        layer_put.took > stall,
        "the slow upload was not slow:\n{text}"
    );
    // No upload attempt failed but the refused PATCHes.
    assert!(
        log.iter()
            .filter(|e| e.is_upload())
            .all(|e| e.status.is_some_and(|s| s < 400) || e.status == Some(405)),
        "{text}"
    );
    assert_manifest_last(&log, &text);
    let real = format!("{}/{}/slow:1", rig.registry(), rig.ns());
    assert_exact(&rig, "slow", &real, r.manifest_digest.as_deref().unwrap());
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn permanent_faults_fail_at_once_with_their_kind() {
    let rig = Rig::new();
    random_container(&rig, "perm");
    // (method, path, status, expected kind, what)
    let cases: [(&str, &str, u16, ErrorKind, &str); 4] = [
        (
            "POST",
            "/blobs/uploads/",
            403,
            ErrorKind::RegistryUnauthorized,
            "denied",
        ),
        // Every upload request refused even with a fresh token.
        (
            "PATCH",
            "/blobs/uploads/",
            401,
            ErrorKind::RegistryUnauthorized,
            "unauthorized",
        ),
        (
            "POST",
            "/blobs/uploads/",
            404,
            ErrorKind::Registry,
            "unknown-repo",
        ),
        // The closing PUT: DIGEST_INVALID.
        (
            "PUT",
            "/blobs/uploads/",
            400,
            ErrorKind::Registry,
            "bad-digest",
        ),
    ];
    for (method, path, status, kind, name) in cases {
        let proxy = FaultProxy::start(rig.registry());
        proxy.fail(method, path, status, None, 0, usize::MAX);
        let snap = ContainerdSnapshotter::new(config(&rig)).unwrap();
        let target = format!("{}/{}/{name}:1", proxy.addr(), rig.ns());
        let started = Instant::now();
        let err = snap.commit_with_wait("perm", &target, WAIT).unwrap_err();
        let text = proxy.log_text();
        match &err {
            Error::JobFailed { kind: k, .. } => assert_eq!(*k, kind, "{err}\n{text}"),
            other => panic!("{name}: expected a failed job, got {other}\n{text}"),
        }
        // At once: not after the 60 s retry budget.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{name}: slow\n{text}"
        );
        assert!(!proxy.log().iter().any(LogEntry::is_manifest_put), "{text}");
        assert_eq!(
            registry_digest(&format!("{}/{}/{name}:1", rig.registry(), rig.ns())),
            None,
            "{name}: a tag for a failed push"
        );
    }

    // A registry that stays unavailable: retried for the budget, then
    // registry_unreachable.
    let proxy = FaultProxy::start(rig.registry());
    proxy.fail("PATCH", "/blobs/uploads/", 503, None, 0, usize::MAX);
    let budget = Duration::from_secs(3);
    let snap = ContainerdSnapshotter::new(Config {
        push_retry_budget: budget,
        ..config(&rig)
    })
    .unwrap();
    let target = format!("{}/{}/down:1", proxy.addr(), rig.ns());
    let err = snap.commit_with_wait("perm", &target, WAIT).unwrap_err();
    let text = proxy.log_text();
    assert!(
        matches!(
            &err,
            Error::JobFailed {
                kind: ErrorKind::RegistryUnreachable,
                ..
            }
        ),
        "{err}\n{text}"
    );
    let log = proxy.log();
    let patches: Vec<&LogEntry> = log.iter().filter(|e| e.method == "PATCH").collect();
    let span = patches.last().unwrap().at - patches.first().unwrap().at;
    assert!(
        patches.len() >= 3 && span <= budget + Duration::from_secs(1),
        "{text}"
    );
    assert!(!proxy.log().iter().any(LogEntry::is_manifest_put), "{text}");
    assert_eq!(
        registry_digest(&format!("{}/{}/down:1", rig.registry(), rig.ns())),
        None
    );
}
