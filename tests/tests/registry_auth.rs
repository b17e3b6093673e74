//! Pushing to a registry that requires credentials: refused without them
//! (as `registry_unauthorized`, not as a transport error), accepted with the
//! credentials of a docker `config.json`, or of a credential helper
//! (`docker-credential-<name>` on `PATH`) named by `credHelpers` or
//! `credsStore`; a helper's "credentials not found" is anonymous access.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use seamless_snapshot::{Config, ContainerdSnapshotter, ErrorKind, SeamlessSnapshot};
use seamless_snapshot_tests::registries::TestRegistry;
use seamless_snapshot_tests::{Rig, check_cmd, wait_until};

const PUSH_TIMEOUT: Duration = Duration::from_secs(300);

/// A docker-registry with htpasswd auth on a free loopback port.
fn htpasswd_registry(dir: &Path, user: &str, password: &str) -> TestRegistry {
    let hash = bcrypt::hash(password, 5).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: seamless-test\n    path: {}\n",
        dir.join("htpasswd").display()
    );
    TestRegistry::start(dir, &auth, None)
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
    let reg = htpasswd_registry(&dir, "tester", "s3cret!");
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

/// Writes `docker-credential-<name>` into `bin`: it logs the server URL it
/// is asked for to `bin/<name>.log`, answers `user`/`secret` for `server`
/// and "credentials not found" for anything else.
fn write_helper(bin: &Path, name: &str, server: &str, user: &str, secret: &str) {
    std::fs::create_dir_all(bin).unwrap();
    let path = bin.join(format!("docker-credential-{name}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread -r server || true\n\
             echo \"$server\" >> '{log}'\n\
             if [ \"$server\" = '{server}' ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{secret}\"}}\\n' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
            log = bin.join(format!("{name}.log")).display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `PATH` with `bin` first.
fn path_with(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn helper_log(bin: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(bin.join(format!("{name}.log")))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `seamless-snapshot commit --wait` of `container` to `target` with the
/// docker config `cfg`, `bin` first on its `PATH`.
fn commit_cli(rig: &Rig, bin: &Path, container: &str, target: &str, cfg: &Path) -> Command {
    let mut c = rig.cli();
    c.env("PATH", path_with(bin))
        .args([
            "commit",
            "--container",
            container,
            "--target",
            target,
            "--wait",
        ])
        .arg("--docker-config")
        .arg(cfg);
    c
}

fn config_json(dir: &Path, json: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("config.json");
    std::fs::write(&p, json).unwrap();
    p
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn credentials_from_a_credential_helper() {
    let rig = Rig::new();
    rig.run_container("helped", "echo helped > /f && while true; do sleep 1; done");
    let dir = rig.new_dir("helper-registry");
    let reg = htpasswd_registry(&dir, "helped-user", "helper-pass");
    let bin = dir.join("bin");
    write_helper(
        &bin,
        "seamless-test",
        &reg.addr,
        "helped-user",
        "helper-pass",
    );
    // credHelpers names the helper for this registry; the auths entry (a
    // wrong password) is not used when a helper answers.
    let cfg = config_json(
        &dir.join("docker"),
        &format!(
            "{{\"credHelpers\":{{\"{r}\":\"seamless-test\"}},\
              \"auths\":{{\"{r}\":{{\"username\":\"helped-user\",\"password\":\"wrong\"}}}}}}",
            r = reg.addr
        ),
    );
    let target = format!("{}/{}/helped:1", reg.addr, rig.ns());
    // Through the CLI: the helper is found on the PATH the command (and its
    // detached worker) runs with.
    let out = check_cmd(&mut commit_cli(&rig, &bin, "helped", &target, &cfg));
    assert!(out.contains("pushed"), "{out}");
    assert_eq!(helper_log(&bin, "seamless-test"), vec![reg.addr.clone()]);
    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            "helped-user:helper-pass",
        ])
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );

    // A helper that fails otherwise: the push fails, as unauthorized, with
    // the helper's own message.
    let broken = dir.join("broken-bin");
    std::fs::create_dir_all(&broken).unwrap();
    let helper = broken.join("docker-credential-seamless-broken");
    std::fs::write(
        &helper,
        "#!/bin/sh\ncat >/dev/null\necho 'the keychain is locked' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = config_json(
        &dir.join("docker-broken"),
        "{\"credsStore\":\"seamless-broken\"}",
    );
    let out = commit_cli(&rig, &broken, "helped", &target, &cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("registry_unauthorized") && stderr.contains("the keychain is locked"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn a_helper_without_credentials_means_anonymous() {
    let rig = Rig::new();
    rig.run_container("anon", "echo anon > /f && while true; do sleep 1; done");
    let dir = rig.new_dir("helper-anon");
    let bin = dir.join("bin");
    // The default helper for every registry has nothing for the rig's.
    write_helper(&bin, "seamless-none", "elsewhere.example:1", "u", "p");
    let cfg = config_json(&dir.join("docker"), "{\"credsStore\":\"seamless-none\"}");
    let target = rig.target("anon", "1");
    let out = check_cmd(&mut commit_cli(&rig, &bin, "anon", &target, &cfg));
    assert!(out.contains("pushed"), "{out}");
    assert_eq!(
        helper_log(&bin, "seamless-none"),
        vec![rig.registry().to_string()]
    );
    let manifest = rig.inspect_raw(&target);
    assert!(manifest["layers"].as_array().is_some_and(|l| !l.is_empty()));
}
