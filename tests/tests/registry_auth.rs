//! Pushing to a registry that requires credentials: refused without them
//! (as `registry_unauthorized`, not as a transport error), accepted with the
//! credentials of a docker `config.json`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use seamless_snapshot::{Config, ContainerdSnapshotter, ErrorKind, SeamlessSnapshot};
use seamless_snapshot_tests::{Rig, wait_until};

const PUSH_TIMEOUT: Duration = Duration::from_secs(300);

/// A docker-registry with htpasswd auth on a free loopback port.
struct AuthRegistry {
    child: Child,
    addr: String,
}

impl AuthRegistry {
    fn start(dir: &std::path::Path, user: &str, password: &str) -> AuthRegistry {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hash = bcrypt::hash(password, 5).unwrap();
        std::fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
             http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: seamless-test\n    path: {htpasswd}\n",
            root = dir.join("data").display(),
            htpasswd = dir.join("htpasswd").display(),
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (tests/rig/install.sh installs it)");
        let addr = format!("127.0.0.1:{port}");
        wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).is_ok()
        })
        .expect("auth registry did not start");
        AuthRegistry { child, addr }
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn credentials_from_docker_config() {
    let rig = Rig::new();
    rig.run_container(
        "authd",
        "mkdir -p /data && echo secret-data > /data/f && while true; do sleep 1; done",
    );
    wait_until(Duration::from_secs(10), || {
        rig.rootfs("authd").join("data/f").exists()
    })
    .unwrap();
    let dir = rig.new_dir("auth-registry");
    let reg = AuthRegistry::start(&dir, "tester", "s3cret!");
    let target = format!("{}/{}/authd:1", reg.addr, rig.ns());

    // No credentials: the job fails as unauthorized, and says so.
    let empty = dir.join("no-creds");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("config.json"), "{\"auths\":{}}").unwrap();
    let anonymous = ContainerdSnapshotter::new(Config {
        docker_config: Some(empty.join("config.json")),
        push_retries: 1,
        ..rig.config()
    })
    .unwrap();
    let err = anonymous
        .commit_with_wait("authd", &target, PUSH_TIMEOUT)
        .unwrap_err();
    match &err {
        seamless_snapshot::Error::JobFailed { kind, .. } => {
            assert_eq!(*kind, ErrorKind::RegistryUnauthorized, "{err}")
        }
        other => panic!("expected a failed job, got {other}"),
    }
    // Wrong password: the same.
    let wrong = dir.join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    let auth =
        |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    std::fs::write(
        wrong.join("config.json"),
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"{}\"}}}}}}",
            reg.addr,
            auth("tester", "nope")
        ),
    )
    .unwrap();
    let wrong_snap = ContainerdSnapshotter::new(Config {
        docker_config: Some(wrong.join("config.json")),
        push_retries: 1,
        ..rig.config()
    })
    .unwrap();
    let err = wrong_snap
        .commit_with_wait("authd", &target, PUSH_TIMEOUT)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            seamless_snapshot::Error::JobFailed {
                kind: ErrorKind::RegistryUnauthorized,
                ..
            }
        ),
        "{err}"
    );

    // The right credentials from a docker config.json: pushed.
    let good = dir.join("good");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::write(
        good.join("config.json"),
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"{}\"}}}}}}",
            reg.addr,
            auth("tester", "s3cret!")
        ),
    )
    .unwrap();
    let snap = ContainerdSnapshotter::new(Config {
        docker_config: Some(good.join("config.json")),
        ..rig.config()
    })
    .unwrap();
    let r = snap
        .commit_with_wait("authd", &target, PUSH_TIMEOUT)
        .unwrap();
    let digest = r.manifest_digest.clone().expect("manifest digest");
    let st = snap.get_status(&r.snapshot_id).unwrap();
    assert_eq!(st.manifest_digest.as_deref(), Some(digest.as_str()));

    // Independent check: skopeo sees the tag only with the credentials.
    let inspect = |creds: Option<&str>| {
        let mut c = Command::new("skopeo");
        c.args(["inspect", "--raw", "--tls-verify=false"]);
        if let Some(cr) = creds {
            c.args(["--creds", cr]);
        }
        c.arg(format!("docker://{target}"));
        c.output().unwrap()
    };
    let out = inspect(Some("tester:s3cret!"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(manifest["layers"].as_array().is_some_and(|l| !l.is_empty()));
    assert!(!inspect(None).status.success());
}
