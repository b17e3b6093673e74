//! Pushing to a registry with token authentication (docker-registry's
//! `token` auth, a token server of the test suite): the push's token covers
//! `pull` on the base image's repository, so base layers are mounted across
//! repositories, not uploaded again; an identity token in the docker config
//! is exchanged for an access token (OAuth2 refresh-token grant), never sent
//! to the registry as a bearer token. A mount the registry refuses with 202
//! (the base is not in the named repository) has its upload session
//! cancelled. An expired token (a 401 on a blob check or the manifest) is
//! renewed, an identity token's by exchanging it again.

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use seamless_snapshot::{Config, ContainerdSnapshotter, ErrorKind, SeamlessSnapshot};
use seamless_snapshot_tests::proxy::FaultProxy;
use seamless_snapshot_tests::registries::{TestRegistry, TokenServer};
use seamless_snapshot_tests::{BASE_IMAGE, Rig, check_cmd};

const PUSH_TIMEOUT: Duration = Duration::from_secs(300);

/// A token server and a registry that trusts it.
fn token_registry(
    rig: &Rig,
    users: &[(&str, &str)],
    refresh: &[(&str, &str)],
) -> (TokenServer, TestRegistry) {
    token_registry_with(rig, users, refresh, 600)
}

/// [`token_registry`] with tokens living `lifetime` seconds.
fn token_registry_with(
    rig: &Rig,
    users: &[(&str, &str)],
    refresh: &[(&str, &str)],
    lifetime: i64,
) -> (TokenServer, TestRegistry) {
    let dir = rig.new_dir("token-registry");
    let tokens = TokenServer::start_with_lifetime(&dir.join("token"), users, refresh, lifetime);
    let reg = TestRegistry::start(&dir.join("registry"), &tokens.auth_yaml(), None);
    (tokens, reg)
}

fn docker_config(rig: &Rig, json: &str) -> std::path::PathBuf {
    let dir = rig.new_dir("docker-config");
    let p = dir.join("config.json");
    std::fs::write(&p, json).unwrap();
    p
}

/// A snapshotter with `pusher:pw` for `reg` in its docker config.
fn pusher_snapshotter(rig: &Rig, reg: &TestRegistry) -> ContainerdSnapshotter {
    let auth = base64::engine::general_purpose::STANDARD.encode("pusher:pw");
    let cfg = docker_config(
        rig,
        &format!("{{\"auths\":{{\"{}\":{{\"auth\":\"{auth}\"}}}}}}", reg.addr),
    );
    ContainerdSnapshotter::new(Config {
        docker_config: Some(cfg),
        ..rig.config()
    })
    .unwrap()
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn cross_repository_mount_on_a_token_registry() {
    let rig = Rig::new();
    let (tokens, reg) = token_registry(&rig, &[("pusher", "pw")], &[]);
    // The base image in the token registry under `base`, and in containerd
    // under that name: the container runs from it.
    let base_ref = format!("{}/base:1", reg.addr);
    check_cmd(
        Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--dest-creds",
                "pusher:pw",
            ])
            .arg(format!("oci-archive:{}", rig.env.base_tar.display()))
            .arg(format!("docker://{base_ref}")),
    );
    rig.ctr(&["images", "tag", BASE_IMAGE, &base_ref]);
    rig.run_image(
        &base_ref,
        "mounted",
        &[
            "sh",
            "-c",
            "echo mine > /new-file && while true; do sleep 1; done",
        ],
    );
    let base_manifest = rig_inspect(&base_ref);
    let base_layers: Vec<String> = base_manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert!(!base_layers.is_empty());
    let before = reg.requests().len();

    let snap = pusher_snapshotter(&rig, &reg);
    let target = format!("{}/app:1", reg.addr);
    let r = snap
        .commit_with_wait("mounted", &target, PUSH_TIMEOUT)
        .unwrap();
    assert!(r.manifest_digest.is_some());

    // Every base layer mounted (201), none uploaded: the registry's own log.
    let requests: Vec<String> = reg.requests().split_off(before);
    for d in &base_layers {
        let hex = d.trim_start_matches("sha256:");
        assert!(
            requests.iter().any(|r| r.starts_with("POST ")
                && r.contains("mount=")
                && r.contains(hex)
                && r.ends_with(" 201")),
            "base layer {d} not mounted: {requests:#?}"
        );
        assert!(
            !requests
                .iter()
                .any(|r| (r.starts_with("PUT ") || r.starts_with("PATCH ")) && r.contains(hex)),
            "base layer {d} uploaded again: {requests:#?}"
        );
    }
    // One token for the push, covering the base's repository too.
    let push_tokens: Vec<_> = tokens
        .requests()
        .into_iter()
        .filter(|t| t.all("scope").contains(&"repository:app:pull,push"))
        .collect();
    assert!(!push_tokens.is_empty(), "{:?}", tokens.requests());
    assert!(
        push_tokens
            .iter()
            .all(|t| t.all("scope").contains(&"repository:base:pull")
                && t.user.as_deref() == Some("pusher")
                && t.status == 200),
        "{push_tokens:?}"
    );
    // The image is whole: its manifest lists the base layers and one more.
    let pushed = rig_inspect(&target);
    let layers = pushed["layers"].as_array().unwrap();
    assert_eq!(layers.len(), base_layers.len() + 1);
}

/// The manifest of `reference` in the token registry (skopeo as `pusher`).
fn rig_inspect(reference: &str) -> serde_json::Value {
    let out = check_cmd(
        Command::new("skopeo")
            .args([
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--creds",
                "pusher:pw",
            ])
            .arg(format!("docker://{reference}")),
    );
    serde_json::from_str(&out).unwrap()
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn identity_tokens_are_exchanged_never_sent() {
    let rig = Rig::new();
    rig.run_container("idtok", "echo id > /f && while true; do sleep 1; done");
    let (tokens, reg) = token_registry(
        &rig,
        &[("pusher", "pw")],
        &[("seamless-refresh-1", "pusher")],
    );
    let cfg = docker_config(
        &rig,
        &format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"{}\",\"identitytoken\":\"seamless-refresh-1\"}}}}}}",
            reg.addr,
            // The identity token wins over a user name and password.
            base64::engine::general_purpose::STANDARD.encode("pusher:wrong")
        ),
    );
    let snap = ContainerdSnapshotter::new(Config {
        docker_config: Some(cfg),
        ..rig.config()
    })
    .unwrap();
    let target = format!("{}/{}/idtok:1", reg.addr, rig.ns());
    let r = snap
        .commit_with_wait("idtok", &target, PUSH_TIMEOUT)
        .unwrap();
    assert!(r.manifest_digest.is_some());
    let requests = tokens.requests();
    let grants: Vec<_> = requests.iter().filter(|t| t.method == "POST").collect();
    assert!(!grants.is_empty(), "{requests:?}");
    for g in &grants {
        assert_eq!(g.all("grant_type"), vec!["refresh_token"], "{g:?}");
        assert_eq!(g.all("refresh_token"), vec!["seamless-refresh-1"]);
        assert_eq!(g.all("service"), vec![tokens.service.as_str()]);
        assert!(!g.all("client_id").is_empty());
        assert!(
            g.all("scope")
                .contains(&format!("repository:{}/idtok:pull,push", rig.ns()).as_str())
        );
        assert_eq!(g.status, 200);
    }
    // The user name and password were not used.
    assert!(requests.iter().all(|t| t.user.is_none()), "{requests:?}");
    assert!(
        rig_inspect(&target)["layers"]
            .as_array()
            .is_some_and(|l| l.len() > 1)
    );

    // An identity token the token server does not know: refused as
    // unauthorized, with the token server's answer.
    let cfg = docker_config(
        &rig,
        &format!(
            "{{\"auths\":{{\"{}\":{{\"identitytoken\":\"revoked\"}}}}}}",
            reg.addr
        ),
    );
    let snap = ContainerdSnapshotter::new(Config {
        docker_config: Some(cfg),
        push_retries: 0,
        ..rig.config()
    })
    .unwrap();
    let err = snap
        .commit_with_wait("idtok", &target, PUSH_TIMEOUT)
        .unwrap_err();
    match &err {
        seamless_snapshot::Error::JobFailed { kind, message, .. } => {
            assert_eq!(*kind, ErrorKind::RegistryUnauthorized, "{err}");
            assert!(message.contains("identity token"), "{message}");
        }
        other => panic!("expected a failed job, got {other}"),
    }
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn a_refused_mount_closes_its_upload_session() {
    let rig = Rig::new();
    let dir = rig.new_dir("anon-registry");
    let reg = TestRegistry::start(&dir, "", None);
    // The container's image names a repository of the target registry
    // that does not hold the base: every mount is answered 202 (an upload
    // session opened instead).
    let base_ref = format!("{}/nowhere:1", reg.addr);
    rig.ctr(&["images", "tag", BASE_IMAGE, &base_ref]);
    rig.run_image(
        &base_ref,
        "unmounted",
        &["sh", "-c", "echo x > /x && while true; do sleep 1; done"],
    );
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let target = format!("{}/app:1", reg.addr);
    snap.commit_with_wait("unmounted", &target, PUSH_TIMEOUT)
        .unwrap();
    let requests = reg.requests();
    let mounts: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("POST ") && r.contains("mount="))
        .collect();
    assert!(!mounts.is_empty(), "{requests:#?}");
    assert!(mounts.iter().all(|r| r.ends_with(" 202")), "{mounts:#?}");
    // Each session the refused mounts opened was cancelled.
    let cancelled = requests
        .iter()
        .filter(|r| r.starts_with("DELETE /v2/app/blobs/uploads/") && r.ends_with(" 204"))
        .count();
    assert_eq!(cancelled, mounts.len(), "{requests:#?}");
    let pushed = rig.inspect_raw(&target);
    assert!(pushed["layers"].as_array().is_some_and(|l| l.len() > 1));
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn expired_tokens_are_renewed_with_the_credentials() {
    let rig = Rig::new();
    rig.run_container("renew", "echo r > /f && while true; do sleep 1; done");
    // Tokens that read as expired at once (the registry still takes them,
    // within its 60 s leeway): every request of the push needs a new one.
    let (tokens, reg) = token_registry_with(&rig, &[("pusher", "pw")], &[], -30);
    let snap = pusher_snapshotter(&rig, &reg);
    let target = format!("{}/{}/renew:1", reg.addr, rig.ns());
    snap.commit_with_wait("renew", &target, PUSH_TIMEOUT)
        .unwrap();
    let requests = tokens.requests();
    // The push's own token, then renewals: each with the user name and
    // password, none anonymous.
    assert!(requests.len() > 1, "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|t| t.method == "GET" && t.user.as_deref() == Some("pusher") && t.status == 200),
        "{requests:?}"
    );
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn a_401_on_a_check_or_the_manifest_gets_a_new_token() {
    let rig = Rig::new();
    rig.run_container("late401", "echo l > /f && while true; do sleep 1; done");
    let (tokens, reg) = token_registry(&rig, &[], &[("seamless-refresh-2", "pusher")]);
    // The token expired meanwhile, as the registry sees it: a blob check
    // and the manifest PUT answered 401 once each (through a proxy).
    let proxy = FaultProxy::start(&reg.addr);
    proxy.fail("HEAD", "/blobs/", 401, None, 0, 1);
    proxy.fail("PUT", "/manifests/", 401, None, 0, 1);
    let cfg = docker_config(
        &rig,
        &format!(
            "{{\"auths\":{{\"{}\":{{\"identitytoken\":\"seamless-refresh-2\"}}}}}}",
            proxy.addr()
        ),
    );
    let snap = ContainerdSnapshotter::new(Config {
        docker_config: Some(cfg),
        ..rig.config()
    })
    .unwrap();
    let target = format!("{}/{}/late401:1", proxy.addr(), rig.ns());
    let r = snap
        .commit_with_wait("late401", &target, PUSH_TIMEOUT)
        .unwrap();
    assert!(r.manifest_digest.is_some());
    // The identity token was exchanged again for each 401 (a token got for
    // it is not renewed by the registry client itself).
    let grants = tokens
        .requests()
        .iter()
        .filter(|t| t.method == "POST" && t.status == 200)
        .count();
    assert!(grants >= 3, "{:?}", tokens.requests());
    let log = proxy.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("PUT") && l.contains("/manifests/") && l.contains("201")),
        "{log}"
    );
}
