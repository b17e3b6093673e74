//! Registries with authentication or TLS for the registry tests: a
//! `docker-registry` on a free loopback port with its own config, a small
//! token server (distribution's `token` auth: JWTs signed with a test key
//! whose self-signed certificate travels in the `x5c` header), and test
//! certificates made with the `openssl` CLI.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{check_cmd, wait_until};

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry` serving `dir/data` on a loopback port. Its access
/// log (stdout) and log (stderr) go to `dir/access.log` and
/// `dir/registry.log`.
#[derive(Debug)]
pub struct TestRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: PathBuf,
}

impl TestRegistry {
    /// Starts a registry whose config has `extra` appended (YAML at the top
    /// level: `auth:`), serving TLS with `tls` = (certificate, key) files.
    pub fn start(dir: &Path, extra: &str, tls: Option<(&Path, &Path)>) -> TestRegistry {
        let port = free_port();
        let tls_yaml = tls
            .map(|(c, k)| {
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    c.display(),
                    k.display()
                )
            })
            .unwrap_or_default();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
             http:\n  addr: 127.0.0.1:{port}\n{tls_yaml}{extra}",
            root = dir.join("data").display(),
        );
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(std::fs::File::create(dir.join("access.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (tests/rig/install.sh installs it)");
        let addr = format!("127.0.0.1:{port}");
        wait_until(Duration::from_secs(20), || {
            TcpStream::connect(&addr).is_ok()
        })
        .expect("test registry did not start");
        TestRegistry {
            child,
            addr,
            dir: dir.to_path_buf(),
        }
    }

    /// The request lines of the access log (`METHOD URI STATUS`).
    pub fn requests(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                // Apache combined format: ... "METHOD URI HTTP/1.1" STATUS ...
                let (_, rest) = l.split_once('"')?;
                let (request, rest) = rest.split_once('"')?;
                let status = rest.split_whitespace().next()?;
                let mut p = request.split_whitespace();
                Some(format!("{} {} {status}", p.next()?, p.next()?))
            })
            .collect()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `openssl args...` in `dir`, checked.
fn openssl(dir: &Path, args: &[&str]) {
    check_cmd(Command::new("openssl").current_dir(dir).args(args));
}

/// A self-signed RSA certificate `NAME.pem` and its key `NAME.key` in
/// `dir`, for `subject`, valid two days.
fn self_signed(dir: &Path, name: &str, subject: &str) {
    let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &cert,
            "-subj", subject, "-days", "2",
        ],
    );
}

/// A test CA and a server certificate it signed for `127.0.0.1` and
/// `localhost`, in `dir`: `(ca.pem, server.pem, server.key)`.
pub fn make_server_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    self_signed(dir, "ca", "/CN=seamless test CA");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// One request the token server answered.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// Query (GET) or form (POST) parameters; `scope` may repeat, and a
    /// POST's space-separated scopes are split.
    pub params: Vec<(String, String)>,
    /// The Basic user, if any.
    pub user: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
}

impl TokenRequest {
    /// The values of parameter `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A token server for distribution's `token` auth: `GET /token` with HTTP
/// Basic credentials (or none: a token without access), `POST /token` with
/// `grant_type=refresh_token` (an identity token). Every request is logged.
#[derive(Debug)]
pub struct TokenServer {
    /// `http://127.0.0.1:PORT/token`.
    pub realm: String,
    /// The service name (the registry's `service`).
    pub service: String,
    /// The issuer (the registry's `issuer`).
    pub issuer: String,
    /// The signing certificate (the registry's `rootcertbundle`).
    pub cert: PathBuf,
    log: Arc<Mutex<Vec<TokenRequest>>>,
}

struct Signer {
    key: PathBuf,
    cert_b64: String,
    service: String,
    issuer: String,
    users: BTreeMap<String, String>,
    refresh_tokens: BTreeMap<String, String>,
    lifetime: i64,
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

impl Signer {
    /// A JWT granting `scopes` (`repository:NAME:a,b`) to `subject`.
    fn token(&self, subject: &str, scopes: &[&str]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let (kind, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": kind, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.cert_b64]});
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": subject, "aud": self.service,
            "exp": now + self.lifetime, "nbf": now - 120, "iat": now - 120,
            "jti": format!("{subject}-{now}-{}", scopes.len()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(signing_input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl dgst -sign failed");
        format!("{signing_input}.{}", b64url(&out.stdout))
    }

    /// Answers one request: (status, JSON body, the log entry).
    fn answer(
        &self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        body: &str,
    ) -> (u16, String, TokenRequest) {
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut params = parse_params(if method == "POST" { body } else { query });
        let basic = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.strip_prefix("Basic "))
            .and_then(|b| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            });
        if method == "POST" {
            // OAuth2: scopes space-separated in one parameter.
            let mut split = Vec::new();
            for (k, v) in params.drain(..) {
                if k == "scope" {
                    split.extend(
                        v.split(' ')
                            .filter(|s| !s.is_empty())
                            .map(|s| (k.clone(), s.to_string())),
                    );
                } else {
                    split.push((k, v));
                }
            }
            params = split;
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let scopes: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .collect();
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let (status, body) = match method {
            "GET" => match &basic {
                Some((u, p)) if self.users.get(u) == Some(p) => (
                    200,
                    serde_json::json!({"token": self.token(u, &scopes)}).to_string(),
                ),
                Some(_) => (401, r#"{"details":"bad credentials"}"#.to_string()),
                // Anonymous: a token that grants nothing.
                None => (
                    200,
                    serde_json::json!({"token": self.token("", &[])}).to_string(),
                ),
            },
            "POST" => {
                let user = get("refresh_token").and_then(|t| self.refresh_tokens.get(&t).cloned());
                match (get("grant_type").as_deref(), user, get("client_id")) {
                    (Some("refresh_token"), Some(u), Some(_)) => (
                        200,
                        serde_json::json!({"access_token": self.token(&u, &scopes), "expires_in": 600})
                            .to_string(),
                    ),
                    _ => (401, r#"{"error":"invalid_grant"}"#.to_string()),
                }
            }
            _ => (405, "{}".to_string()),
        };
        let entry = TokenRequest {
            method: method.to_string(),
            params,
            user: basic.map(|(u, _)| u),
            status,
        };
        (status, body, entry)
    }
}

fn serve(
    stream: TcpStream,
    signer: &Signer,
    log: &Mutex<Vec<TokenRequest>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let (status, answer, entry) =
        signer.answer(&method, &target, &headers, &String::from_utf8_lossy(&body));
    log.lock().unwrap().push(entry);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    stream.flush()
}

impl TokenServer {
    /// Starts a token server in `dir` (its key and certificate are made
    /// there) accepting `users` (name, password) on `GET` and
    /// `refresh_tokens` (token, user) on `POST`; its tokens expire after 10
    /// minutes.
    pub fn start(
        dir: &Path,
        users: &[(&str, &str)],
        refresh_tokens: &[(&str, &str)],
    ) -> TokenServer {
        Self::start_with_lifetime(dir, users, refresh_tokens, 600)
    }

    /// [`Self::start`] with tokens whose `exp` is `lifetime` seconds from
    /// their issue (negative: already expired for a client, still accepted
    /// by docker-registry within its 60 s leeway).
    pub fn start_with_lifetime(
        dir: &Path,
        users: &[(&str, &str)],
        refresh_tokens: &[(&str, &str)],
        lifetime: i64,
    ) -> TokenServer {
        std::fs::create_dir_all(dir).unwrap();
        self_signed(dir, "token", "/CN=seamless test token signer");
        openssl(
            dir,
            &[
                "x509",
                "-in",
                "token.pem",
                "-outform",
                "DER",
                "-out",
                "token.der",
            ],
        );
        let der = std::fs::read(dir.join("token.der")).unwrap();
        let cert_b64 = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(der)
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let signer = Arc::new(Signer {
            key: dir.join("token.key"),
            cert_b64,
            service: "seamless-test-registry".into(),
            issuer: "seamless-test-issuer".into(),
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            refresh_tokens: refresh_tokens
                .iter()
                .map(|(t, u)| (t.to_string(), u.to_string()))
                .collect(),
            lifetime,
        });
        let log: Arc<Mutex<Vec<TokenRequest>>> = Arc::default();
        let (s, l) = (signer.clone(), log.clone());
        // Lives as long as the test process; each connection is answered
        // and closed.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve(stream, &s, &l);
            }
        });
        TokenServer {
            realm: format!("http://127.0.0.1:{port}/token"),
            service: signer.service.clone(),
            issuer: signer.issuer.clone(),
            cert: dir.join("token.pem"),
            log,
        }
    }

    /// The registry config's `auth:` section for this server.
    pub fn auth_yaml(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            self.realm,
            self.service,
            self.issuer,
            self.cert.display()
        )
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.log.lock().unwrap().clone()
    }
}
