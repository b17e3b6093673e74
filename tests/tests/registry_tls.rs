//! A registry serving TLS on loopback, with a certificate from a test CA:
//! trusted through `--registry-ca`, containerd's `certs.d/<host>/ca.crt`,
//! or a `hosts.toml` `ca` entry; without any of them the push fails at
//! once, as `registry_unreachable`, with one line saying how to trust the
//! CA (never falling back to plain HTTP).

use std::path::Path;
use std::time::Duration;

use seamless_snapshot::{Config, ContainerdSnapshotter, ErrorKind, SeamlessSnapshot};
use seamless_snapshot_tests::registries::{TestRegistry, make_server_cert};
use seamless_snapshot_tests::{Rig, check_cmd};

const PUSH_TIMEOUT: Duration = Duration::from_secs(300);

/// The pushed image's manifest, read over TLS with the CA (skopeo verifies).
fn inspect_tls(reference: &str, cert_dir: &Path) -> serde_json::Value {
    let out = check_cmd(
        std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=true", "--cert-dir"])
            .arg(cert_dir)
            .arg(format!("docker://{reference}")),
    );
    serde_json::from_str(&out).unwrap()
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn a_tls_registry_with_a_private_ca() {
    let rig = Rig::new();
    rig.run_container("tls", "echo tls > /f && while true; do sleep 1; done");
    let dir = rig.new_dir("tls-registry");
    let (ca, cert, key) = make_server_cert(&dir.join("pki"));
    let reg = TestRegistry::start(&dir.join("registry"), "", Some((&cert, &key)));
    // skopeo's view: a directory with the CA as *.crt.
    let skopeo_certs = dir.join("skopeo-certs");
    std::fs::create_dir_all(&skopeo_certs).unwrap();
    std::fs::copy(&ca, skopeo_certs.join("ca.crt")).unwrap();

    // --registry-ca, through the CLI (its detached worker reads the job).
    let target = format!("{}/{}/tls:cli", reg.addr, rig.ns());
    let out = check_cmd(
        rig.cli()
            .args([
                "commit",
                "--container",
                "tls",
                "--target",
                &target,
                "--wait",
            ])
            .arg("--registry-ca")
            .arg(&ca)
            .arg("--registry-certs-dir")
            .arg(dir.join("no-certs.d")),
    );
    assert!(out.contains("pushed"), "{out}");
    assert!(inspect_tls(&target, &skopeo_certs)["layers"].is_array());
    // Over TLS, not plain HTTP: the registry saw no plain-HTTP request on
    // its TLS listener.
    let log = std::fs::read_to_string(dir.join("registry/registry.log")).unwrap();
    assert!(!log.contains("does not look like a TLS handshake"), "{log}");

    // containerd's certs.d layout: <dir>/<host:port>/ca.crt.
    let certs_d = dir.join("certs.d");
    std::fs::create_dir_all(certs_d.join(&reg.addr)).unwrap();
    std::fs::copy(&ca, certs_d.join(&reg.addr).join("ca.crt")).unwrap();
    let snap = ContainerdSnapshotter::new(Config {
        registry_certs_dirs: vec![certs_d.clone()],
        ..rig.config()
    })
    .unwrap();
    let target = format!("{}/{}/tls:certs-d", reg.addr, rig.ns());
    snap.commit_with_wait("tls", &target, PUSH_TIMEOUT).unwrap();
    assert!(inspect_tls(&target, &skopeo_certs)["layers"].is_array());

    // hosts.toml's `ca` for the host (a path relative to its directory).
    let hosts_d = dir.join("hosts.d");
    let host_dir = hosts_d.join(&reg.addr);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(&ca, host_dir.join("private-ca.pem")).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://{a}\"\n\n[host.\"https://{a}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  ca = \"private-ca.pem\"\n",
            a = reg.addr
        ),
    )
    .unwrap();
    let snap = ContainerdSnapshotter::new(Config {
        registry_certs_dirs: vec![hosts_d],
        ..rig.config()
    })
    .unwrap();
    let target = format!("{}/{}/tls:hosts-toml", reg.addr, rig.ns());
    snap.commit_with_wait("tls", &target, PUSH_TIMEOUT).unwrap();
    assert!(inspect_tls(&target, &skopeo_certs)["layers"].is_array());

    // No CA: refused at once (not retried), in one line.
    let snap = ContainerdSnapshotter::new(Config {
        registry_certs_dirs: vec![],
        push_retries: 4,
        ..rig.config()
    })
    .unwrap();
    let target = format!("{}/{}/tls:untrusted", reg.addr, rig.ns());
    let err = snap
        .commit_with_wait("tls", &target, PUSH_TIMEOUT)
        .unwrap_err();
    match &err {
        seamless_snapshot::Error::JobFailed { kind, message, .. } => {
            assert_eq!(*kind, ErrorKind::RegistryUnreachable, "{err}");
            assert!(
                message.contains("TLS handshake failed")
                    && message.contains("UnknownIssuer")
                    && message.contains("--registry-ca")
                    && !message.contains('\n')
                    && !message.contains("attempt"),
                "{message}"
            );
        }
        other => panic!("expected a failed job, got {other}"),
    }
}
