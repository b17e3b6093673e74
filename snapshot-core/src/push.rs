//! Pushing the new image to any OCI registry.
//!
//! Blobs first, manifest last, so a failure never moves the tag. Each blob
//! is checked with `HEAD` and only uploaded when missing; base layers are
//! cross-repository mounted when the base image lives in the same registry,
//! else streamed from a [`BlobSource`] (containerd's content store) or,
//! as a last resort, from the base image's registry. Uploads stream from
//! disk or from the source; nothing is held in memory whole except the
//! config and manifest.

use std::collections::HashSet;
use std::future::Future;
use std::io::BufReader;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio_util::io::ReaderStream;

use crate::containerd::ContainerdClient;
use crate::error::{Error, Result};
use crate::image::{Descriptor, NewImage, sha256_digest};

/// Registry settings.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// Registries (`host` or `host:port`) reached over plain HTTP. Loopback
    /// registries always are.
    pub insecure: Vec<String>,
    /// A docker `config.json` (or the directory holding it) to read
    /// credentials from. `None`: `$DOCKER_CONFIG`, then `~/.docker`.
    pub docker_config: Option<PathBuf>,
    /// How many times a transient error (connection refused or reset,
    /// timeout, HTTP 5xx, 429) is retried, with exponential backoff.
    pub retries: u32,
}

/// Where base layer blobs can be read from when the target registry lacks
/// them (containerd's content store).
pub trait BlobSource: Send + Sync {
    /// A stream of the blob's bytes, or `None` when this source does not
    /// have it.
    fn open<'a>(
        &'a self,
        digest: &'a str,
    ) -> BoxFuture<'a, Result<Option<BoxStream<'static, Result<Bytes>>>>>;
}

// Here rather than in containerd.rs: the registry side depends on the
// containerd client, never the other way round.
impl BlobSource for ContainerdClient {
    fn open<'a>(
        &'a self,
        digest: &'a str,
    ) -> BoxFuture<'a, Result<Option<BoxStream<'static, Result<Bytes>>>>> {
        Box::pin(self.content_stream(digest))
    }
}

/// A [`BlobSource`] that has nothing.
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBlobSource;

#[cfg(test)]
impl BlobSource for NoBlobSource {
    fn open<'a>(
        &'a self,
        _digest: &'a str,
    ) -> BoxFuture<'a, Result<Option<BoxStream<'static, Result<Bytes>>>>> {
        Box::pin(async { Ok(None) })
    }
}

/// Where each blob of the image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerData {
    /// The new layer blob on disk.
    File(PathBuf),
    /// A base layer: already in the target registry, cross-repository
    /// mounted, read from the [`BlobSource`], or pulled from the base
    /// image's registry, in that order.
    Base,
}

/// What to push.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// The target reference (`registry/repo:tag`).
    pub target: String,
    /// The base image reference, for cross-repository mounts and as the
    /// last-resort source of base layers.
    pub base_ref: Option<String>,
    /// The assembled config and manifest.
    pub image: NewImage,
    /// The new layer's descriptor and its blob on disk.
    pub new_layer: (Descriptor, PathBuf),
}

/// Connection timeout of every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A request whose peer sends nothing for this long fails (and is retried).
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Read size from the layer file.
const FILE_CHUNK: usize = 256 * 1024;
/// First retry delay; doubled per attempt up to [`BACKOFF_CAP`].
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest retry delay.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How often progress is reported during an upload.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Parses and validates an image reference.
///
/// Fails with [`Error::InvalidReference`] on what the distribution grammar
/// rejects (uppercase repository, bad tag or digest, empty parts) and on a
/// bare `host:port` or `host.domain` with no repository, which the grammar
/// would otherwise read as a Docker Hub image.
pub fn parse_reference(s: &str) -> Result<Reference> {
    let invalid = |reason: String| Error::InvalidReference {
        reference: s.to_string(),
        reason,
    };
    if s.is_empty() {
        return Err(invalid("empty reference".into()));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains whitespace".into()));
    }
    if !s.contains('/') {
        let name = s.split(['@', ':']).next().unwrap_or(s);
        if name.contains('.') || name == "localhost" {
            return Err(invalid(format!(
                "missing repository: {name:?} looks like a registry host"
            )));
        }
    }
    let r = Reference::try_from(s).map_err(|e| invalid(e.to_string()))?;
    if r.repository().is_empty() {
        return Err(invalid("missing repository".into()));
    }
    Ok(r)
}

/// The host part of a `host`, `host:port`, `[v6]` or `[v6]:port` string.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.matches(':').count() {
        1 => registry.split(':').next().unwrap_or(registry),
        _ => registry,
    }
}

/// Whether a registry address is on the loopback interface
/// (127.0.0.0/8, `::1`, `localhost`).
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = host_of(registry);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The registries among `registries` to reach over plain HTTP: loopback
/// ones and those listed in `insecure` (an entry without a port matches any
/// port), plus the `insecure` entries themselves.
pub fn plain_http_registries(insecure: &[String], registries: &[&str]) -> Vec<String> {
    let entries: Vec<&str> = insecure
        .iter()
        .map(|e| {
            let e = e.trim();
            let e = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .unwrap_or(e);
            e.trim_end_matches('/')
        })
        .filter(|e| !e.is_empty())
        .collect();
    let mut out: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
    for r in registries {
        let listed = entries
            .iter()
            .any(|e| *e == *r || (host_of(e) == *e && *e == host_of(r)));
        if (listed || is_loopback_registry(r)) && !out.iter().any(|o| o == r) {
            out.push(r.to_string());
        }
    }
    out
}

/// Credentials for `registry` from the docker config.
async fn registry_auth(registry: &str, docker_config: Option<&Path>) -> Result<RegistryAuth> {
    let registry = registry.to_string();
    let path = docker_config.map(|p| {
        if p.is_dir() {
            p.join("config.json")
        } else {
            p.to_path_buf()
        }
    });
    // Credential helpers are external programs: keep them off the runtime.
    tokio::task::spawn_blocking(move || lookup_credential(&registry, path.as_deref()))
        .await
        .map_err(|e| Error::Internal(format!("credential lookup task: {e}")))?
}

fn lookup_credential(registry: &str, path: Option<&Path>) -> Result<RegistryAuth> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    let res = match path {
        Some(p) => {
            let f = std::fs::File::open(p).map_err(|e| Error::io("open", p, e))?;
            match docker_credential::get_credential_from_reader(BufReader::new(f), registry) {
                Err(E::ConfigReadError) => {
                    return Err(Error::InvalidArgument(format!(
                        "docker config {}: not a valid config.json",
                        p.display()
                    )));
                }
                r => r,
            }
        }
        None => docker_credential::get_credential(registry),
    };
    match res {
        Ok(DockerCredential::UsernamePassword(u, p)) => Ok(RegistryAuth::Basic(u, p)),
        Ok(DockerCredential::IdentityToken(t)) => Ok(RegistryAuth::Bearer(t)),
        // No config, or nothing for this registry: anonymous.
        Err(E::ConfigNotFound | E::ConfigReadError | E::NoCredentialConfigured) => {
            Ok(RegistryAuth::Anonymous)
        }
        Err(e) => Err(Error::RegistryUnauthorized {
            registry: registry.to_string(),
            message: format!("reading credentials from the docker config: {e}"),
        }),
    }
}

/// How an error from the registry client is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Worth retrying; after the last retry: [`Error::RegistryUnreachable`].
    Transient,
    /// [`Error::RegistryUnauthorized`].
    Unauthorized,
    /// [`Error::Registry`], saying what was not found.
    NotFound,
    /// [`Error::Registry`].
    Other,
}

fn class_of_status(code: u16) -> Class {
    match code {
        401 | 403 => Class::Unauthorized,
        404 => Class::NotFound,
        501 | 505 => Class::Other,
        408 | 429 | 500..=599 => Class::Transient,
        _ => Class::Other,
    }
}

fn classify(e: &OciDistributionError) -> Class {
    use OciDistributionError as E;
    match e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => Class::Unauthorized,
        E::ServerError { code, .. } => class_of_status(*code),
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                Class::Unauthorized
            } else if codes.contains(&&OciErrorCode::Toomanyrequests) {
                Class::Transient
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::NameUnknown
                        | OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::ManifestBlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                Class::NotFound
            } else {
                Class::Other
            }
        }
        E::RequestError(r) => match r.status() {
            Some(s) => class_of_status(s.as_u16()),
            None if r.is_builder() || r.is_redirect() => Class::Other,
            // Connect, timeout, reset, truncated body.
            None => Class::Transient,
        },
        E::IoError(_) => Class::Transient,
        E::ImageManifestNotFoundError(_) => Class::NotFound,
        _ => Class::Other,
    }
}

/// The error and its sources on one line, bounded (registries may answer
/// with whole HTML pages).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let m = src.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = src.source();
    }
    const MAX: usize = 600;
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn to_error(e: &OciDistributionError, registry: &str, what: &str, attempts: u32) -> Error {
    let chain = error_chain(e);
    let registry = registry.to_string();
    match classify(e) {
        Class::Transient => Error::RegistryUnreachable {
            registry,
            message: format!("{what}: {chain} (gave up after {attempts} attempt(s))"),
        },
        Class::Unauthorized => Error::RegistryUnauthorized {
            registry,
            message: format!("{what}: {chain}"),
        },
        Class::NotFound => Error::Registry {
            registry,
            message: format!("{what}: not found (unknown repository, tag or blob): {chain}"),
        },
        Class::Other => Error::Registry {
            registry,
            message: format!("{what}: {chain}"),
        },
    }
}

/// The delay before retry number `attempt` (0-based).
fn backoff(attempt: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .min(BACKOFF_CAP)
}

/// A failed attempt.
enum Failure {
    /// From the registry client: classified, maybe retried.
    Oci(OciDistributionError),
    /// From our side (reading the file, the blob source): not retried.
    Fatal(Error),
}

/// Runs `op` until it succeeds, retrying transient registry errors.
async fn retry<T, F, Fut>(retries: u32, registry: &str, what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Failure>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Oci(e)) => {
                if classify(&e) == Class::Transient && attempt < retries {
                    let delay = backoff(attempt);
                    tracing::warn!(registry, what, error = %error_chain(&e), ?delay, "transient registry error, retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    continue;
                }
                return Err(to_error(&e, registry, what, attempt + 1));
            }
        }
    }
}

/// Polls `fut` to completion, calling `tick` periodically meanwhile.
async fn with_ticks<F: Future>(fut: F, tick: impl Fn()) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut interval = tokio::time::interval(PROGRESS_TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = interval.tick() => tick(),
        }
    }
}

/// Where a blob to upload comes from.
enum Origin {
    Layer(LayerData),
    Config,
}

/// Shared state of one push.
struct Pusher<'a> {
    client: Client,
    target: Reference,
    target_registry: String,
    source: Option<Reference>,
    source_auth: tokio::sync::OnceCell<()>,
    settings: &'a RegistrySettings,
    base: &'a dyn BlobSource,
    config: Bytes,
}

impl Pusher<'_> {
    async fn exists(&self, digest: &str) -> Result<bool> {
        retry(
            self.settings.retries,
            &self.target_registry,
            &format!("check blob {digest}"),
            || async {
                self.client
                    .blob_exists(&self.target, digest)
                    .await
                    .map_err(Failure::Oci)
            },
        )
        .await
    }

    /// Tries a cross-repository mount from the base image's repository.
    /// Any failure (including the registry answering 202 = no mount) only
    /// means "upload it instead".
    async fn try_mount(&self, digest: &str) -> bool {
        let Some(src) = &self.source else {
            return false;
        };
        if src.resolve_registry() != self.target.resolve_registry()
            || src.repository() == self.target.repository()
        {
            return false;
        }
        match self.client.mount_blob(&self.target, src, digest).await {
            Ok(()) => {
                tracing::debug!(digest, from = src.repository(), "blob mounted");
                true
            }
            Err(e) => {
                tracing::debug!(digest, error = %error_chain(&e), "cross-repository mount refused; uploading");
                false
            }
        }
    }

    async fn auth_source(&self, src: &Reference) -> std::result::Result<(), Failure> {
        self.source_auth
            .get_or_try_init(|| async {
                let auth = registry_auth(src.registry(), self.settings.docker_config.as_deref())
                    .await
                    .map_err(Failure::Fatal)?;
                self.client
                    .auth(src, &auth, RegistryOperation::Pull)
                    .await
                    .map(|_| ())
                    .map_err(Failure::Oci)
            })
            .await
            .copied()
    }

    /// Opens the blob's bytes for one upload attempt.
    async fn open(
        &self,
        desc: &Descriptor,
        origin: &Origin,
    ) -> std::result::Result<BoxStream<'static, std::result::Result<Bytes, Failure>>, Failure> {
        match origin {
            Origin::Config => {
                let data = self.config.clone();
                Ok(stream::once(async move { Ok(data) }).boxed())
            }
            Origin::Layer(LayerData::File(path)) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| Failure::Fatal(Error::io("open", path, e)))?;
                let len = file
                    .metadata()
                    .await
                    .map_err(|e| Failure::Fatal(Error::io("stat", path, e)))?
                    .len();
                if len != desc.size {
                    return Err(Failure::Fatal(Error::InvalidArgument(format!(
                        "layer blob {} is {len} bytes, its descriptor says {}",
                        path.display(),
                        desc.size
                    ))));
                }
                let path = path.clone();
                Ok(ReaderStream::with_capacity(file, FILE_CHUNK)
                    .map(move |r| r.map_err(|e| Failure::Fatal(Error::io("read", &path, e))))
                    .boxed())
            }
            Origin::Layer(LayerData::Base) => {
                if let Some(s) = self.base.open(&desc.digest).await.map_err(Failure::Fatal)? {
                    return Ok(s.map(|r| r.map_err(Failure::Fatal)).boxed());
                }
                let Some(src) = &self.source else {
                    return Err(Failure::Fatal(self.missing_base(desc)));
                };
                self.auth_source(src).await?;
                let od = OciDescriptor {
                    media_type: desc.media_type.clone(),
                    digest: desc.digest.clone(),
                    size: i64::try_from(desc.size).unwrap_or(i64::MAX),
                    ..Default::default()
                };
                let s = self.client.pull_blob_stream(src, &od).await.map_err(|e| {
                    match classify(&e) {
                        // The source registry's own verdict, not the target's.
                        Class::Transient => Failure::Oci(e),
                        _ => Failure::Fatal(Error::Registry {
                            registry: src.resolve_registry().to_string(),
                            message: format!(
                                "pull base layer {} from {src}: {}",
                                desc.digest,
                                error_chain(&e)
                            ),
                        }),
                    }
                })?;
                Ok(
                    s.map(|r| r.map_err(|e| Failure::Oci(OciDistributionError::IoError(e))))
                        .boxed(),
                )
            }
        }
    }

    fn missing_base(&self, desc: &Descriptor) -> Error {
        Error::Registry {
            registry: self.target_registry.clone(),
            message: format!(
                "base layer {} is not in {} and no source has it (no base image reference, \
                 not in the local content store)",
                desc.digest, self.target
            ),
        }
    }

    /// One upload attempt. Bytes read are added to `sent`.
    async fn upload_once(
        &self,
        desc: &Descriptor,
        origin: &Origin,
        sent: &Arc<AtomicU64>,
    ) -> std::result::Result<(), Failure> {
        sent.store(0, Ordering::Relaxed);
        let input = self.open(desc, origin).await?;
        // The registry client only sees its own error type: keep the real
        // cause aside so that a failing source is reported as itself.
        let slot: Arc<Mutex<Option<Failure>>> = Arc::new(Mutex::new(None));
        let (slot_in, sent_in) = (slot.clone(), sent.clone());
        let body = input
            .map(move |r| match r {
                Ok(b) => {
                    sent_in.fetch_add(b.len() as u64, Ordering::Relaxed);
                    Ok(b)
                }
                Err(f) => {
                    let msg = match &f {
                        Failure::Oci(e) => error_chain(e),
                        Failure::Fatal(e) => e.to_string(),
                    };
                    if let Ok(mut s) = slot_in.lock() {
                        s.get_or_insert(f);
                    }
                    Err(OciDistributionError::IoError(std::io::Error::other(msg)))
                }
            })
            .boxed();
        let res = self
            .client
            .push_blob_stream(&self.target, body, &desc.digest, Some(desc.size))
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => {
                let cause = slot.lock().ok().and_then(|mut s| s.take());
                Err(cause.unwrap_or(Failure::Oci(e)))
            }
        }
    }
}

/// Pushes the image: blobs that the registry lacks, then the manifest last
/// (a failure never moves the tag). Returns the manifest digest.
///
/// `progress(done, total)` is called with the bytes uploaded so far over
/// the bytes of all blobs that need uploading (blobs already present or
/// mounted are not counted).
pub async fn push_image(
    req: &PushRequest,
    settings: &RegistrySettings,
    base: &dyn BlobSource,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<String> {
    let target = parse_reference(&req.target)?;
    let source = req.base_ref.as_deref().map(parse_reference).transpose()?;
    let image = &req.image;

    let digest = sha256_digest(&image.manifest);
    if digest != image.manifest_descriptor.digest {
        return Err(Error::Internal(format!(
            "manifest descriptor says {} but the manifest hashes to {digest}",
            image.manifest_descriptor.digest
        )));
    }
    if target.digest().is_some_and(|d| d != digest) {
        return Err(Error::InvalidReference {
            reference: req.target.clone(),
            reason: format!("its digest differs from the image's {digest}"),
        });
    }

    let target_registry = target.resolve_registry().to_string();
    let mut hosts = vec![target.resolve_registry()];
    if let Some(s) = &source {
        hosts.push(s.resolve_registry());
    }
    // Installing twice is harmless; Client::new panics without a provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain_http_registries(&settings.insecure, &hosts)),
        // One PUT per blob, as containerd does: works with registries that
        // mishandle chunked uploads.
        use_monolithic_push: true,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..Default::default()
    };
    let client = Client::try_from(config)
        .map_err(|e| Error::Internal(format!("registry client: {}", error_chain(&e))))?;

    let auth = registry_auth(target.registry(), settings.docker_config.as_deref()).await?;
    retry(
        settings.retries,
        &target_registry,
        "authenticate",
        || async {
            client
                .auth(&target, &auth, RegistryOperation::Push)
                .await
                .map(|_| ())
                .map_err(Failure::Oci)
        },
    )
    .await?;

    let pusher = Pusher {
        client,
        target,
        target_registry,
        source,
        source_auth: tokio::sync::OnceCell::new(),
        settings,
        base,
        config: Bytes::from(image.config.clone()),
    };

    // The plan: base layers, the new layer, the config. A digest listed
    // twice is uploaded once.
    let mut plan: Vec<(Descriptor, Origin)> = image
        .base_layers
        .iter()
        .map(|d| (d.clone(), Origin::Layer(LayerData::Base)))
        .collect();
    plan.push((
        req.new_layer.0.clone(),
        Origin::Layer(LayerData::File(req.new_layer.1.clone())),
    ));
    plan.push((image.config_descriptor.clone(), Origin::Config));
    let mut seen = HashSet::new();
    plan.retain(|(d, _)| seen.insert(d.digest.clone()));

    let mut missing = Vec::new();
    for (desc, origin) in plan {
        if pusher.exists(&desc.digest).await? {
            tracing::debug!(digest = desc.digest, "blob already in registry");
            continue;
        }
        if matches!(origin, Origin::Layer(LayerData::Base)) && pusher.try_mount(&desc.digest).await
        {
            continue;
        }
        missing.push((desc, origin));
    }

    let total: u64 = missing.iter().map(|(d, _)| d.size).sum();
    let mut done = 0u64;
    progress(0, total);
    for (desc, origin) in &missing {
        let sent = Arc::new(AtomicU64::new(0));
        let what = format!("upload blob {}", desc.digest);
        let upload = retry(settings.retries, &pusher.target_registry, &what, || {
            pusher.upload_once(desc, origin, &sent)
        });
        with_ticks(upload, || {
            let now = done + sent.load(Ordering::Relaxed).min(desc.size);
            progress(now.min(total), total);
        })
        .await?;
        done += desc.size;
        progress(done, total);
    }

    let media_type = image.manifest_descriptor.media_type.clone();
    let body = Bytes::from(image.manifest.clone());
    retry(
        settings.retries,
        &pusher.target_registry,
        &format!("push manifest to {}", pusher.target),
        || async {
            let content_type = media_type.parse().map_err(|_| {
                Failure::Fatal(Error::InvalidImage(format!(
                    "bad manifest media type {media_type:?}"
                )))
            })?;
            pusher
                .client
                .push_manifest_raw(&pusher.target, body.clone(), content_type)
                .await
                .map_err(Failure::Oci)
        },
    )
    .await?;
    tracing::info!(target = %pusher.target, digest, bytes = total, "image pushed");
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{History, assemble};
    use std::collections::{BTreeMap, HashMap};
    use std::io::{Read, Write};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn references() {
        let r = parse_reference("127.0.0.1:5000/a/b:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("v1"));
        let r = parse_reference("ubuntu").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/ubuntu");
        assert_eq!(r.tag(), Some("latest"));
        assert!(parse_reference("localhost/x@sha256:0123456789012345678901234567890123456789012345678901234567890123").is_ok());
        for bad in [
            "",
            "Registry.example.com/UPPER/case:tag",
            "example.com/Upper",
            "example.com/repo:bad tag",
            "example.com/repo:-tag",
            "example.com/",
            "example.com:5000",
            "localhost:5000",
            "example.com/repo@sha256:abc",
            "example.com//repo",
        ] {
            let e = parse_reference(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidReference { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn loopback_and_insecure() {
        for r in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:80",
            "LOCALHOST",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback_registry(r), "{r}");
        }
        for r in [
            "10.0.0.1:5000",
            "example.com",
            "[::2]:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback_registry(r), "{r}");
        }
        let insecure = vec!["reg.lan".to_string(), "http://other:5000/".to_string()];
        let got = plain_http_registries(
            &insecure,
            &[
                "reg.lan:5000",
                "127.0.0.1:4000",
                "ghcr.io",
                "other:5000",
                "other:6000",
            ],
        );
        assert_eq!(
            got,
            vec!["reg.lan", "other:5000", "reg.lan:5000", "127.0.0.1:4000"]
        );
        assert!(plain_http_registries(&[], &["index.docker.io"]).is_empty());
    }

    fn envelope(code: &str) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: serde_json::from_str(&format!(
                r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#
            ))
            .unwrap(),
            url: "u".into(),
        }
    }

    fn server(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "m".into(),
        }
    }

    #[test]
    fn error_mapping() {
        assert_eq!(classify(&server(401)), Class::Unauthorized);
        assert_eq!(classify(&server(403)), Class::Unauthorized);
        assert_eq!(classify(&server(404)), Class::NotFound);
        assert_eq!(classify(&server(429)), Class::Transient);
        assert_eq!(classify(&server(502)), Class::Transient);
        assert_eq!(classify(&server(400)), Class::Other);
        assert_eq!(classify(&envelope("DENIED")), Class::Unauthorized);
        assert_eq!(classify(&envelope("NAME_UNKNOWN")), Class::NotFound);
        assert_eq!(classify(&envelope("TOOMANYREQUESTS")), Class::Transient);
        assert_eq!(classify(&envelope("MANIFEST_INVALID")), Class::Other);
        assert_eq!(
            classify(&OciDistributionError::UnauthorizedError { url: "u".into() }),
            Class::Unauthorized
        );
        let io = OciDistributionError::IoError(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        ));
        assert_eq!(classify(&io), Class::Transient);

        let e = to_error(&server(401), "r", "push", 1);
        assert!(matches!(e, Error::RegistryUnauthorized { .. }));
        let e = to_error(&envelope("NAME_UNKNOWN"), "r", "push manifest", 1);
        assert!(matches!(e, Error::Registry { .. }));
        assert!(e.to_string().contains("not found"), "{e}");
        let e = to_error(&server(503), "r", "push", 3);
        assert!(matches!(e, Error::RegistryUnreachable { .. }));
        assert!(e.to_string().contains("3 attempt"), "{e}");
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(200));
        assert_eq!(backoff(1), Duration::from_millis(400));
        assert_eq!(backoff(4), Duration::from_millis(3200));
        assert_eq!(backoff(5), BACKOFF_CAP);
        assert_eq!(backoff(40), BACKOFF_CAP);
    }

    #[test]
    fn credentials_from_explicit_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        // "user:pass"
        std::fs::write(
            &cfg,
            r#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"},"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="}}}"#,
        )
        .unwrap();
        assert_eq!(
            lookup_credential("127.0.0.1:5000", Some(&cfg)).unwrap(),
            RegistryAuth::Basic("user".into(), "pass".into())
        );
        assert_eq!(
            lookup_credential("docker.io", Some(&cfg)).unwrap(),
            RegistryAuth::Basic("hub".into(), "secret".into())
        );
        assert_eq!(
            lookup_credential("ghcr.io", Some(&cfg)).unwrap(),
            RegistryAuth::Anonymous
        );
        let rt = tokio::runtime::Runtime::new().unwrap();
        // A directory is taken as the directory holding config.json.
        assert_eq!(
            rt.block_on(registry_auth("127.0.0.1:5000", Some(dir.path())))
                .unwrap(),
            RegistryAuth::Basic("user".into(), "pass".into())
        );
        let missing = dir.path().join("nope.json");
        assert!(matches!(
            lookup_credential("x", Some(&missing)),
            Err(Error::Io { .. })
        ));
        std::fs::write(&cfg, "not json").unwrap();
        assert!(matches!(
            lookup_credential("x", Some(&cfg)),
            Err(Error::InvalidArgument(_))
        ));
    }

    // ---- integration with a real registry ----

    const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

    struct Registry {
        child: Child,
        addr: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for Registry {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn answers_v2(addr: &str) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") && &buf[9..12] == b"200"
    }

    fn start_registry() -> Option<Registry> {
        if !Path::new(REGISTRY_BIN).exists() {
            eprintln!("{REGISTRY_BIN} missing: skipping");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let reg = Registry {
            child,
            addr,
            _dir: dir,
        };
        for _ in 0..200 {
            if answers_v2(&reg.addr) {
                return Some(reg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("registry at {} did not come up", reg.addr);
    }

    #[derive(Default)]
    struct MemSource {
        blobs: HashMap<String, Bytes>,
        opens: AtomicUsize,
    }

    impl BlobSource for MemSource {
        fn open<'a>(
            &'a self,
            digest: &'a str,
        ) -> BoxFuture<'a, Result<Option<BoxStream<'static, Result<Bytes>>>>> {
            Box::pin(async move {
                self.opens.fetch_add(1, Ordering::SeqCst);
                Ok(self.blobs.get(digest).map(|b| {
                    // Several pieces, to exercise streaming.
                    let pieces: Vec<Result<Bytes>> = b
                        .chunks(7000)
                        .map(|c| Ok(Bytes::copy_from_slice(c)))
                        .collect();
                    stream::iter(pieces).boxed()
                }))
            })
        }
    }

    fn blob(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn hist(by: &str) -> History {
        History {
            created: chrono::Utc::now(),
            created_by: by.into(),
            comment: None,
            author: Some("test".into()),
        }
    }

    fn layer_file(dir: &Path, name: &str, data: &[u8]) -> (Descriptor, PathBuf) {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        (
            Descriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                digest: sha256_digest(data),
                size: data.len() as u64,
            },
            p,
        )
    }

    type Calls = Arc<Mutex<Vec<(u64, u64)>>>;

    async fn push(
        req: &PushRequest,
        src: &dyn BlobSource,
        retries: u32,
    ) -> (Result<String>, Calls) {
        let calls: Calls = Arc::default();
        let c = calls.clone();
        let settings = RegistrySettings {
            retries,
            ..Default::default()
        };
        let r = push_image(req, &settings, src, &move |d, t| {
            c.lock().unwrap().push((d, t))
        })
        .await;
        (r, calls)
    }

    async fn pull_raw(client: &Client, reference: &str) -> (Bytes, String) {
        client
            .pull_manifest_raw(
                &parse_reference(reference).unwrap(),
                &RegistryAuth::Anonymous,
                &[crate::image::OCI_MANIFEST],
            )
            .await
            .unwrap()
    }

    async fn pull_blob(client: &Client, reference: &str, digest: &str) -> Vec<u8> {
        let mut out = Vec::new();
        client
            .pull_blob(&parse_reference(reference).unwrap(), digest, &mut out)
            .await
            .unwrap();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn push_to_real_registry() {
        let Some(reg) = start_registry() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let a = &reg.addr;

        // Base image: one layer that only the in-memory source has.
        let base_layer = blob(1, 300_000);
        let base_desc = Descriptor {
            media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
            digest: sha256_digest(&base_layer),
            size: base_layer.len() as u64,
        };
        let base_manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::image::DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha256_digest(b"x"), "size": 1},
            "layers": [base_desc],
        })
        .to_string();
        let base_config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b"base-diff")]},
        })
        .to_string();
        let src = MemSource {
            blobs: HashMap::from([(base_desc.digest.clone(), Bytes::from(base_layer.clone()))]),
            ..Default::default()
        };

        let new1 = blob(2, 100_000);
        let (l1, p1) = layer_file(tmp.path(), "l1", &new1);
        let ann = BTreeMap::from([("org.example.k".to_string(), "v".to_string())]);
        let img1 = assemble(
            base_manifest.as_bytes(),
            base_config.as_bytes(),
            &l1,
            &sha256_digest(b"diff1"),
            &hist("one"),
            &BTreeMap::new(),
            &ann,
        )
        .unwrap();
        let req1 = PushRequest {
            target: format!("{a}/test/app:v1"),
            base_ref: None,
            image: img1.clone(),
            new_layer: (l1.clone(), p1),
        };
        let (r, calls) = push(&req1, &src, 2).await;
        let d1 = r.unwrap();
        assert_eq!(d1, img1.manifest_descriptor.digest);
        assert_eq!(src.opens.load(Ordering::SeqCst), 1);
        let total1 = base_desc.size + l1.size + img1.config_descriptor.size;
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.first(), Some(&(0, total1)));
        assert_eq!(calls.last(), Some(&(total1, total1)));
        assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));

        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        });
        let v1 = format!("{a}/test/app:v1");
        let (m, d) = pull_raw(&client, &v1).await;
        assert_eq!(&m[..], &img1.manifest[..]);
        assert_eq!(d, d1);
        assert_eq!(pull_blob(&client, &v1, &base_desc.digest).await, base_layer);
        assert_eq!(pull_blob(&client, &v1, &l1.digest).await, new1);
        assert_eq!(
            pull_blob(&client, &v1, &img1.config_descriptor.digest).await,
            img1.config
        );

        // A derived image in the same repository: base blobs exist, only the
        // new layer and the config go up; the source is not asked.
        let new2 = blob(3, 50_000);
        let (l2, p2) = layer_file(tmp.path(), "l2", &new2);
        let img2 = assemble(
            &img1.manifest,
            &img1.config,
            &l2,
            &sha256_digest(b"diff2"),
            &hist("two"),
            &BTreeMap::from([("l".to_string(), "2".to_string())]),
            &BTreeMap::new(),
        )
        .unwrap();
        let req2 = PushRequest {
            target: format!("{a}/test/app:v2"),
            base_ref: Some(v1.clone()),
            image: img2.clone(),
            new_layer: (l2.clone(), p2.clone()),
        };
        let (r, calls) = push(&req2, &src, 2).await;
        assert_eq!(r.unwrap(), img2.manifest_descriptor.digest);
        assert_eq!(
            src.opens.load(Ordering::SeqCst),
            1,
            "existing blobs re-read"
        );
        let total2 = l2.size + img2.config_descriptor.size;
        assert_eq!(calls.lock().unwrap().last(), Some(&(total2, total2)));

        // Pushing the same image again uploads nothing.
        let (r, calls) = push(&req2, &src, 2).await;
        assert_eq!(r.unwrap(), img2.manifest_descriptor.digest);
        assert_eq!(calls.lock().unwrap().last(), Some(&(0, 0)));

        // Another repository of the same registry: base layers are mounted
        // from test/app (not counted, not read from any source).
        let empty = MemSource::default();
        let req3 = PushRequest {
            target: format!("{a}/other/app:v2"),
            ..req2.clone()
        };
        let (r, calls) = push(&req3, &empty, 2).await;
        assert_eq!(r.unwrap(), img2.manifest_descriptor.digest);
        assert_eq!(empty.opens.load(Ordering::SeqCst), 0);
        assert_eq!(calls.lock().unwrap().last(), Some(&(total2, total2)));
        let other = format!("{a}/other/app:v2");
        let (m, _) = pull_raw(&client, &other).await;
        assert_eq!(&m[..], &img2.manifest[..]);
        assert_eq!(
            pull_blob(&client, &other, &base_desc.digest).await,
            base_layer
        );
        assert_eq!(pull_blob(&client, &other, &l1.digest).await, new1);

        // Independent check with skopeo when available.
        if Path::new("/usr/bin/skopeo").exists() {
            let out = Command::new("skopeo")
                .args(["inspect", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{other}"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.stdout, img2.manifest);
        }

        // Base layers missing everywhere, with no base reference: a clear
        // Registry error, and the tag is not created.
        let req4 = PushRequest {
            target: format!("{a}/third/app:v1"),
            base_ref: None,
            ..req2.clone()
        };
        let (r, _) = push(&req4, &empty, 0).await;
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Registry { .. }), "{e}");
        assert!(e.to_string().contains(&base_desc.digest), "{e}");
        let no_tag = client
            .pull_manifest_raw(
                &parse_reference(&req4.target).unwrap(),
                &RegistryAuth::Anonymous,
                &[crate::image::OCI_MANIFEST],
            )
            .await;
        assert!(no_tag.is_err());

        // Last resort: pull base layers from the base image's registry (a
        // second registry: no mount possible, the source has nothing).
        let Some(reg_b) = start_registry() else {
            return;
        };
        let req5 = PushRequest {
            target: format!("{}/fourth/app:v2", reg_b.addr),
            base_ref: Some(v1.clone()),
            ..req2.clone()
        };
        let opens_before = empty.opens.load(Ordering::SeqCst);
        let (r, calls) = push(&req5, &empty, 0).await;
        assert_eq!(r.unwrap(), img2.manifest_descriptor.digest);
        // Asked for both base layers, had neither.
        assert_eq!(empty.opens.load(Ordering::SeqCst), opens_before + 2);
        let total5 = base_desc.size + l1.size + total2;
        assert_eq!(calls.lock().unwrap().last(), Some(&(total5, total5)));
        let b = format!("{}/fourth/app:v2", reg_b.addr);
        assert_eq!(pull_blob(&client, &b, &base_desc.digest).await, base_layer);
        drop(reg_b);

        // A wrong size in the descriptor of the new layer is caught.
        let mut bad = req2.clone();
        bad.target = format!("{a}/fifth/app:v1");
        bad.new_layer.0.size += 1;
        let (r, _) = push(&bad, &src, 0).await;
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");

        drop(reg);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_registry_after_retries() {
        let tmp = tempfile::tempdir().unwrap();
        let (l, p) = layer_file(tmp.path(), "l", b"data");
        let img = assemble(
            br#"{"schemaVersion":2,"layers":[]}"#,
            br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#,
            &l,
            &sha256_digest(b"d"),
            &hist("x"),
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
        .unwrap();
        let req = PushRequest {
            target: format!("127.0.0.1:{}/x/y:z", free_port()),
            base_ref: None,
            image: img,
            new_layer: (l, p),
        };
        let start = std::time::Instant::now();
        let (r, _) = push(&req, &NoBlobSource, 2).await;
        let e = r.unwrap_err();
        assert!(matches!(e, Error::RegistryUnreachable { .. }), "{e}");
        assert!(e.to_string().contains("3 attempt"), "{e}");
        // 200 ms + 400 ms of backoff.
        assert!(start.elapsed() >= Duration::from_millis(600));

        let bad = PushRequest {
            target: "127.0.0.1:1/UPPER:x".into(),
            ..req
        };
        let (r, _) = push(&bad, &NoBlobSource, 0).await;
        assert!(matches!(r, Err(Error::InvalidReference { .. })));
    }
}
