use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;

fn config(json: &str) -> DockerConfig {
    serde_json::from_str(json).unwrap()
}

fn basic(u: &str, p: &str) -> Credential {
    Credential::Basic {
        username: u.into(),
        password: p.into(),
    }
}

/// Resolves with a fake helper table: `(helper, server) -> answer`; records
/// the calls.
fn resolve_with(
    cfg: &DockerConfig,
    registry: &str,
    answers: &[(&str, Option<(&str, &str)>)],
    calls: &RefCell<Vec<(String, String)>>,
) -> Result<Credential> {
    resolve_in(cfg, registry, &|helper, server| {
        calls
            .borrow_mut()
            .push((helper.to_string(), server.to_string()));
        match answers.iter().find(|(h, _)| *h == helper) {
            Some((_, a)) => Ok(a.map(|(u, s)| (u.to_string(), s.to_string()))),
            None => Err(Error::RegistryUnauthorized {
                registry: server.into(),
                message: format!("no helper {helper}"),
            }),
        }
    })
}

#[test]
fn names_normalise_to_one_host() {
    for k in [
        "docker.io",
        "index.docker.io",
        "registry-1.docker.io",
        "https://index.docker.io/v1/",
        "HTTPS://Index.Docker.IO/v1/",
        "http://registry-1.docker.io",
    ] {
        assert_eq!(normalize(k), "docker.io", "{k}");
    }
    assert_eq!(normalize("https://127.0.0.1:5000/v1/"), "127.0.0.1:5000");
    assert_eq!(normalize("Reg.Example.com:443"), "reg.example.com:443");
    assert_eq!(normalize("ghcr.io"), "ghcr.io");
    assert_eq!(server_key("docker.io"), DOCKER_HUB_KEY);
    assert_eq!(server_key("index.docker.io"), DOCKER_HUB_KEY);
    assert_eq!(server_key("127.0.0.1:5000"), "127.0.0.1:5000");
}

#[test]
fn auths_entries_by_every_form() {
    let cfg = config(
        r#"{"auths":{
            "127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"},
            "https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},
            "https://reg.example.com/v1/":{"username":"u","password":"p:w"},
            "tok.example.com":{"identitytoken":"refresh-me","auth":"dXNlcjpwYXNz"},
            "bearer.example.com":{"registrytoken":"direct"},
            "empty.example.com":{},
            "bad.example.com":{"auth":"!!!"}
        }}"#,
    );
    let none = RefCell::new(Vec::new());
    let get = |r: &str| resolve_with(&cfg, r, &[], &none);
    assert_eq!(get("127.0.0.1:5000").unwrap(), basic("user", "pass"));
    // Docker Hub under every name it goes by.
    for hub in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
        assert_eq!(get(hub).unwrap(), basic("hub", "secret"), "{hub}");
    }
    // A key with scheme and path names its host; a password may hold ':'.
    assert_eq!(get("reg.example.com").unwrap(), basic("u", "p:w"));
    // An identity token wins over a password in the same entry.
    assert_eq!(
        get("tok.example.com").unwrap(),
        Credential::IdentityToken("refresh-me".into())
    );
    assert_eq!(
        get("bearer.example.com").unwrap(),
        Credential::RegistryToken("direct".into())
    );
    assert_eq!(get("empty.example.com").unwrap(), Credential::Anonymous);
    assert_eq!(get("ghcr.io").unwrap(), Credential::Anonymous);
    // Another port is another registry.
    assert_eq!(get("127.0.0.1:5001").unwrap(), Credential::Anonymous);
    assert!(matches!(
        get("bad.example.com"),
        Err(Error::InvalidArgument(m)) if m.contains("bad.example.com")
    ));
    assert!(none.borrow().is_empty(), "no helper configured, none run");
}

#[test]
fn helpers_come_first_and_not_found_is_anonymous() {
    let cfg = config(
        r#"{"auths":{"a.example.com":{"auth":"dXNlcjpwYXNz"},"c.example.com":{"auth":"dXNlcjpwYXNz"}},
            "credHelpers":{"a.example.com":"one","docker.io":"hub","c.example.com":"none"},
            "credsStore":"store"}"#,
    );
    let calls = RefCell::new(Vec::new());
    let answers = [
        ("one", Some(("helper-user", "helper-secret"))),
        ("hub", Some(("<token>", "hub-refresh"))),
        ("store", Some(("store-user", "store-secret"))),
        ("none", None),
    ];
    let get = |r: &str| resolve_with(&cfg, r, &answers, &calls);
    // credHelpers before the auths entry of the same registry.
    assert_eq!(
        get("a.example.com").unwrap(),
        basic("helper-user", "helper-secret")
    );
    // The hub's helper is found by any hub name and asked with docker's key;
    // the user `<token>` marks an identity token.
    assert_eq!(
        get("registry-1.docker.io").unwrap(),
        Credential::IdentityToken("hub-refresh".into())
    );
    // credsStore for every other registry.
    assert_eq!(
        get("b.example.com").unwrap(),
        basic("store-user", "store-secret")
    );
    // "Not found" is anonymous, and the auths entry is not consulted then.
    assert_eq!(get("c.example.com").unwrap(), Credential::Anonymous);
    assert_eq!(
        *calls.borrow(),
        vec![
            ("one".to_string(), "a.example.com".to_string()),
            ("hub".to_string(), DOCKER_HUB_KEY.to_string()),
            ("store".to_string(), "b.example.com".to_string()),
            ("none".to_string(), "c.example.com".to_string()),
        ]
    );
    // Any other helper failure is an error, kept as it is.
    let cfg = config(r#"{"credsStore":"missing"}"#);
    let err = resolve_with(&cfg, "x.example.com", &answers, &calls).unwrap_err();
    assert!(
        matches!(&err, Error::RegistryUnauthorized { message, .. } if message.contains("no helper missing")),
        "{err}"
    );
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn helper_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let t = Duration::from_secs(20);
    // The server URL arrives on stdin; the answer is JSON on stdout.
    let ok = script(
        dir.path(),
        "ok",
        r#"[ "$1" = get ] || exit 3
read -r server || true
printf '{"ServerURL":"%s","Username":"u-%s","Secret":"s3cret"}\n' "$server" "$server""#,
    );
    assert_eq!(
        helper::run(&ok, "reg:5000", t).unwrap(),
        Some(("u-reg:5000".to_string(), "s3cret".to_string()))
    );
    let missing = script(
        dir.path(),
        "missing",
        "cat >/dev/null; echo 'credentials not found in native keychain'; exit 1",
    );
    assert_eq!(helper::run(&missing, "reg:5000", t).unwrap(), None);
    let broken = script(
        dir.path(),
        "broken",
        "cat >/dev/null; echo 'keychain locked' >&2; exit 2",
    );
    let err = helper::run(&broken, "reg:5000", t).unwrap_err();
    assert!(
        matches!(&err, Error::RegistryUnauthorized { message, .. } if message.contains("keychain locked")),
        "{err}"
    );
    let garbage = script(dir.path(), "garbage", "cat >/dev/null; echo 'nope'");
    assert!(matches!(
        helper::run(&garbage, "reg:5000", t),
        Err(Error::RegistryUnauthorized { .. })
    ));
    let slow = script(dir.path(), "slow", "exec sleep 30");
    let started = std::time::Instant::now();
    let err = helper::run(&slow, "reg:5000", Duration::from_millis(300)).unwrap_err();
    assert!(err.to_string().contains("no answer"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A helper name is never a path.
    assert!(helper::get("../x", "reg:5000", t).is_err());
    assert!(matches!(
        helper::get("seamless-no-such-helper", "reg:5000", t),
        Err(Error::RegistryUnauthorized { message, .. }) if message.contains("PATH")
    ));
}

#[test]
fn config_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"}}}"#,
    )
    .unwrap();
    assert_eq!(
        resolve_blocking("127.0.0.1:5000", Some(&cfg)).unwrap(),
        basic("user", "pass")
    );
    // A directory is taken as the directory holding config.json.
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        rt.block_on(resolve("127.0.0.1:5000", Some(dir.path())))
            .unwrap(),
        basic("user", "pass")
    );
    let missing = dir.path().join("nope.json");
    assert!(matches!(
        resolve_blocking("x", Some(&missing)),
        Err(Error::Io { .. })
    ));
    std::fs::write(&cfg, "not json").unwrap();
    assert!(matches!(
        resolve_blocking("x", Some(&cfg)),
        Err(Error::InvalidArgument(_))
    ));
}
