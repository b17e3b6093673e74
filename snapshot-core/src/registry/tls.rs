//! Which certificate authorities a registry's TLS certificate may chain to,
//! and what a failed handshake is reported as.
//!
//! On top of the system's roots (rustls-platform-verifier: the OS trust
//! store), a push trusts the CA files given (`Config::registry_ca`,
//! `--registry-ca`) and those of containerd's and docker's `certs.d`
//! layout for each registry it talks to: under every directory of
//! `Config::registry_certs_dirs` (default `/etc/containerd/certs.d`, then
//! `/etc/docker/certs.d`), the first of `<host:port>/`, `docker.io/` (for
//! Docker Hub) or `_default/` that exists, and in it every `*.crt` file
//! (`ca.crt` among them) and the `ca` entries of `hosts.toml` (top-level,
//! when its `server` is this host or absent, and those of
//! `[host."https://<host:port>"]`; relative paths are relative to that
//! directory). The registries of one push (target and base) share one
//! client, so their CAs are trusted for both.
//!
//! A handshake that fails (an unknown or bad certificate, a server not
//! speaking TLS) is not transient: it ends the push at once as
//! `registry_unreachable`, with one line saying how to trust the CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

use super::credentials::normalize;
use super::reference::{plain_for_loopback_only, plain_http_registries};
use crate::error::{Error, Result};

/// Where containerd and docker keep per-registry certificates.
pub(crate) const DEFAULT_CERTS_DIRS: [&str; 2] = ["/etc/containerd/certs.d", "/etc/docker/certs.d"];

/// Timeouts of our own small requests (ping, token, mount).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a loopback registry has to answer whether it speaks TLS.
const TLS_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes sure rustls has its crypto provider: reqwest and oci-client are
/// built without one, and panic without it. Installing twice is harmless.
pub(super) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `hosts.toml`: only what concerns CAs.
#[derive(Debug, Default, Deserialize)]
struct HostsToml {
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    ca: Option<OneOrMany>,
    #[serde(default)]
    host: std::collections::BTreeMap<String, HostEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct HostEntry {
    #[serde(default)]
    ca: Option<OneOrMany>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn paths(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// The CA files that apply to `host` from one `certs.d` root (none if it
/// does not exist).
fn certs_d_files(root: &Path, host: &str) -> Result<Vec<PathBuf>> {
    let mut names = vec![host.to_string()];
    if normalize(host) == "docker.io" {
        names.push("docker.io".to_string());
    }
    names.push("_default".to_string());
    let Some(dir) = names.iter().map(|n| root.join(n)).find(|d| d.is_dir()) else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => return Err(Error::io("read directory", &dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "crt") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let toml_path = dir.join("hosts.toml");
    let text = match std::fs::read_to_string(&toml_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(Error::io("read", &toml_path, e)),
    };
    let hosts: HostsToml = toml::from_str(&text)
        .map_err(|e| Error::InvalidArgument(format!("{}: {}", toml_path.display(), e.message())))?;
    let me = normalize(host);
    let mut cas: Vec<&str> = Vec::new();
    if hosts.server.as_deref().is_none_or(|s| normalize(s) == me) {
        cas.extend(hosts.ca.iter().flat_map(OneOrMany::paths));
    }
    for (url, entry) in &hosts.host {
        if normalize(url) == me {
            cas.extend(entry.ca.iter().flat_map(OneOrMany::paths));
        }
    }
    for ca in cas {
        let p = Path::new(ca);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        };
        if !files.contains(&p) {
            files.push(p);
        }
    }
    Ok(files)
}

/// The certificates of one PEM file, each checked to be a usable root.
fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read CA certificate", path, e))?;
    let bad = |why: String| {
        Error::InvalidArgument(format!("CA certificate file {}: {why}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    let mut store = rustls::RootCertStore::empty();
    for c in &certs {
        store
            .add(c.clone())
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(certs)
}

/// The extra roots of a push to `hosts`: the `ca_files`, then the `certs.d`
/// ones of each host.
pub(super) fn extra_roots(
    ca_files: &[PathBuf],
    certs_dirs: &[PathBuf],
    hosts: &[&str],
) -> Result<Vec<CertificateDer<'static>>> {
    let mut files: Vec<PathBuf> = ca_files.to_vec();
    for root in certs_dirs {
        for host in hosts {
            for f in certs_d_files(root, host)? {
                if !files.contains(&f) {
                    files.push(f);
                }
            }
        }
    }
    let mut roots = Vec::new();
    for f in &files {
        tracing::debug!(file = %f.display(), "trusting registry CA");
        roots.extend(read_pem(f)?);
    }
    Ok(roots)
}

/// The roots as oci-client takes them.
pub(super) fn oci_certificates(
    roots: &[CertificateDer<'_>],
) -> Vec<oci_client::client::Certificate> {
    roots
        .iter()
        .map(|c| oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Der,
            data: c.to_vec(),
        })
        .collect()
}

/// The roots as reqwest takes them.
pub(super) fn reqwest_certificates(
    roots: &[CertificateDer<'_>],
) -> Result<Vec<reqwest::Certificate>> {
    roots
        .iter()
        .map(|c| reqwest::Certificate::from_der(c))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(format!("registry CA: {e}")))
}

/// The HTTP client of our own requests to registries and token servers,
/// trusting what oci-client's does.
pub(super) fn http_client(roots: &[CertificateDer<'_>]) -> Result<reqwest::Client> {
    install_crypto_provider();
    reqwest::Client::builder()
        .tls_certs_merge(reqwest_certificates(roots)?)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("seamless-snapshot/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Internal(format!("registry HTTP client: {e}")))
}

/// The registries of `hosts` to reach over plain HTTP: those listed in
/// `insecure`, and loopback ones that do not answer TLS (a loopback
/// registry serving TLS is reached over TLS, its certificate checked).
pub(super) async fn plain_http(
    http: &reqwest::Client,
    insecure: &[String],
    hosts: &[&str],
) -> Vec<String> {
    let mut plain = plain_http_registries(insecure, hosts);
    for h in hosts {
        if plain.iter().any(|p| p == h)
            && plain_for_loopback_only(insecure, h)
            && speaks_tls(http, h).await
        {
            tracing::debug!(registry = h, "loopback registry serves TLS");
            plain.retain(|p| p != h);
        }
    }
    plain
}

/// Whether `registry` answers a TLS handshake. A certificate we do not
/// trust still counts (the push then fails saying so); a server answering
/// in plain text, refusing the connection or silent does not.
async fn speaks_tls(http: &reqwest::Client, registry: &str) -> bool {
    let res = http
        .get(format!("https://{registry}/v2/"))
        .timeout(TLS_PROBE_TIMEOUT)
        .send()
        .await;
    match res {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(registry, error = ?e, "TLS probe");
            rustls_error(&e).is_some_and(|t| !matches!(t, rustls::Error::InvalidMessage(_)))
        }
    }
}

/// The rustls error somewhere in `e`'s cause chain.
fn rustls_error(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        // io::Error's source() skips the error it wraps (hyper's connector
        // wraps rustls' io::Error in another): look inside, at every depth.
        let mut inner = Some(err);
        while let Some(i) = inner {
            if let Some(t) = i.downcast_ref::<rustls::Error>() {
                return Some(t.clone());
            }
            inner = i
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|r| r as &(dyn std::error::Error + 'static));
        }
        next = err.source();
    }
    None
}

/// The TLS failure somewhere in `e`'s cause chain, if any.
pub(super) fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    rustls_error(e).map(|t| t.to_string())
}

/// The error of a failed TLS handshake with `registry`: one line, saying
/// how to trust its CA.
pub(super) fn tls_error(registry: &str, failure: &str) -> Error {
    Error::RegistryUnreachable {
        registry: registry.to_string(),
        message: format!(
            "TLS handshake failed: {failure} (trust its CA with --registry-ca FILE or \
             certs.d/{registry}/ca.crt; a plain-HTTP registry needs --insecure-registry)"
        ),
    }
}

#[cfg(test)]
mod tests;
