//! The upload side of a push: one registry client, authenticated for the
//! target, that checks, mounts and uploads blobs and puts the manifest.
//!
//! Checks, the manifest and pulls from the base image's registry go
//! through the registry client (`oci-client`); blob uploads and
//! cross-repository mounts through our own requests ([`session`]:
//! authorized by the push's [`Negotiator`], progress-watched, no
//! whole-request timeout;
//! [`chunked`]: chunked, resumable, monolithic as a fallback). Every blob
//! upload streams (from the layer file, the [`BlobSource`] or the base
//! image's registry); a failure of our side (reading the file, the source)
//! is reported as itself, not as the registry's.

mod chunked;
mod session;

use std::future::Future;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::io::AsyncSeekExt;
use tokio_util::io::ReaderStream;

use super::RegistrySettings;
use super::auth::{Negotiator, push_scopes};
use super::credentials;
use super::reference::scheme_for;
use super::retry::{Class, Failure, RetryPolicy, classify, error_chain, retry};
use super::source::{BlobSource, LayerData, Origin};
use super::tls;
use crate::error::{Error, Result};
use crate::image::Descriptor;

/// Read size from the layer file.
const FILE_CHUNK: usize = 256 * 1024;

/// Shared state of one push.
pub(super) struct Pusher<'a> {
    client: Client,
    /// Our own upload requests.
    http: session::Http,
    /// The client of the token handshake (base registry's pulls).
    negotiation: reqwest::Client,
    /// Registries reached over plain HTTP.
    plain_http: Vec<String>,
    target: Reference,
    target_registry: String,
    source: Option<Reference>,
    source_auth: tokio::sync::OnceCell<()>,
    settings: &'a RegistrySettings,
    policy: RetryPolicy,
    /// Bytes per `PATCH`; 0: monolithic uploads.
    chunk_size: u64,
    /// The registry refused a chunk: monolithic uploads from then on.
    monolithic: AtomicBool,
    base: &'a dyn BlobSource,
    config: Bytes,
}

impl<'a> Pusher<'a> {
    /// A client for the target registry (plain HTTP for loopback and
    /// `insecure` registries), authenticated for pushing to `target`.
    pub(super) async fn connect(
        target: Reference,
        source: Option<Reference>,
        settings: &'a RegistrySettings,
        base: &'a dyn BlobSource,
        config: Bytes,
    ) -> Result<Pusher<'a>> {
        let target_registry = target.resolve_registry().to_string();
        let mut hosts = vec![target.resolve_registry()];
        if let Some(s) = &source {
            hosts.push(s.resolve_registry());
        }
        let roots = tls::extra_roots(&settings.ca_files, &settings.certs_dirs, &hosts)?;
        let negotiation = tls::http_client(&roots)?;
        let plain_http = tls::plain_http(&negotiation, &settings.insecure, &hosts).await;
        let scheme = scheme_for(&plain_http, &target_registry);
        let tuning = &settings.tuning;
        let client_config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain_http.clone()),
            extra_root_certificates: tls::oci_certificates(&roots),
            // Its uploads are not ours (blob uploads are), but its requests
            // are small: a read timeout up to the answer's headers is right.
            connect_timeout: Some(tuning.connect_timeout),
            read_timeout: Some(tuning.stall_timeout),
            ..Default::default()
        };
        let client = Client::try_from(client_config)
            .map_err(|e| Error::Internal(format!("registry client: {}", error_chain(&e))))?;
        let policy = RetryPolicy {
            retries: tuning.retries,
            budget: tuning.retry_budget,
        };

        let credential =
            credentials::resolve(target.registry(), settings.docker_config.as_deref()).await?;
        let negotiator = Negotiator {
            http: negotiation.clone(),
            scheme,
            registry: target_registry.clone(),
            credential,
            scopes: push_scopes(&target, source.as_ref()),
        };
        // Authorizes both (the client for its own requests).
        let http = retry(policy, &target_registry, "authenticate", || {
            session::Http::new(
                scheme,
                client.clone(),
                target.clone(),
                negotiator.clone(),
                &roots,
                tuning.connect_timeout,
                tuning.stall_timeout,
            )
        })
        .await?;

        Ok(Pusher {
            client,
            http,
            negotiation,
            plain_http,
            target,
            target_registry,
            source,
            source_auth: tokio::sync::OnceCell::new(),
            settings,
            policy,
            chunk_size: tuning.chunk_size,
            monolithic: AtomicBool::new(false),
            base,
            config,
        })
    }

    /// How many blobs go up at the same time.
    pub(super) fn concurrency(&self) -> usize {
        usize::try_from(self.settings.tuning.concurrency.max(1)).unwrap_or(1)
    }

    /// The target reference.
    pub(super) fn target(&self) -> &Reference {
        &self.target
    }

    /// Runs a request of the registry client; a 401 gets one new token
    /// (tokens expire, and one got for an identity token is not renewed by
    /// the client itself) and a second try before it counts as a refusal.
    async fn renewing<T, Fut>(&self, op: impl Fn() -> Fut) -> std::result::Result<T, Failure>
    where
        Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        match op().await {
            Err(e) if classify(&e) == Class::Unauthorized => {
                tracing::debug!(error = %error_chain(&e), "401 from the registry client: new token");
                self.http.refresh().await?;
                op().await.map_err(Failure::Oci)
            }
            r => r.map_err(Failure::Oci),
        }
    }

    /// Whether the target repository has the blob.
    pub(super) async fn exists(&self, digest: &str) -> Result<bool> {
        retry(
            self.policy,
            &self.target_registry,
            &format!("check blob {digest}"),
            || self.renewing(|| self.client.blob_exists(&self.target, digest)),
        )
        .await
    }

    /// Tries a cross-repository mount from the base image's repository.
    /// Any failure (including the registry answering 202 = no mount, whose
    /// upload session is then cancelled) only means "upload it instead".
    pub(super) async fn try_mount(&self, digest: &str) -> bool {
        let Some(src) = &self.source else {
            return false;
        };
        if src.resolve_registry() != self.target.resolve_registry()
            || src.repository() == self.target.repository()
        {
            return false;
        }
        self.http.mount(src.repository(), digest).await
    }

    async fn auth_source(&self, src: &Reference) -> std::result::Result<(), Failure> {
        self.source_auth
            .get_or_try_init(|| async {
                let credential =
                    credentials::resolve(src.registry(), self.settings.docker_config.as_deref())
                        .await
                        .map_err(Failure::Fatal)?;
                let registry = src.resolve_registry();
                let access = Negotiator {
                    http: self.negotiation.clone(),
                    scheme: scheme_for(&self.plain_http, registry),
                    registry: registry.to_string(),
                    credential,
                    scopes: vec![format!("repository:{}:pull", src.repository())],
                }
                .access()
                .await?;
                access
                    .install(&self.client, src, RegistryOperation::Pull)
                    .await
                    .map_err(Failure::Oci)
            })
            .await
            .copied()
    }

    /// The blob's bytes from `offset` on: a file seeks there, a stream is
    /// read up to there.
    async fn open_at(
        &self,
        desc: &Descriptor,
        origin: &Origin,
        offset: u64,
    ) -> std::result::Result<BoxStream<'static, std::result::Result<Bytes, Failure>>, Failure> {
        if offset > desc.size {
            return Err(Failure::Fatal(Error::Internal(format!(
                "upload of {} resumed at {offset}, beyond its {} bytes",
                desc.digest, desc.size
            ))));
        }
        let whole = match origin {
            Origin::Config => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let data = self.config.slice(start.min(self.config.len())..);
                return Ok(stream::once(async move { Ok(data) }).boxed());
            }
            Origin::Layer(LayerData::File(path)) => {
                let mut file = tokio::fs::File::open(path)
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
                file.seek(std::io::SeekFrom::Start(offset))
                    .await
                    .map_err(|e| Failure::Fatal(Error::io("seek", path, e)))?;
                let path = path.clone();
                return Ok(ReaderStream::with_capacity(file, FILE_CHUNK)
                    .map(move |r| r.map_err(|e| Failure::Fatal(Error::io("read", &path, e))))
                    .boxed());
            }
            Origin::Layer(LayerData::Base) => self.open_base(desc).await?,
        };
        Ok(skip(whole, offset))
    }

    /// A base layer's bytes: from the [`BlobSource`], else from the base
    /// image's registry.
    async fn open_base(
        &self,
        desc: &Descriptor,
    ) -> std::result::Result<BoxStream<'static, std::result::Result<Bytes, Failure>>, Failure> {
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

    /// Puts the manifest under the target reference (moves the tag).
    pub(super) async fn push_manifest(&self, media_type: &str, body: Bytes) -> Result<()> {
        retry(
            self.policy,
            &self.target_registry,
            &format!("push manifest to {}", self.target),
            || async {
                let content_type: reqwest::header::HeaderValue =
                    media_type.parse().map_err(|_| {
                        Failure::Fatal(Error::InvalidImage(format!(
                            "bad manifest media type {media_type:?}"
                        )))
                    })?;
                self.renewing(|| {
                    self.client
                        .push_manifest_raw(&self.target, body.clone(), content_type.clone())
                })
                .await
            },
        )
        .await
        .map(|_| ())
    }
}

/// `s` without its first `n` bytes.
fn skip(
    s: BoxStream<'static, std::result::Result<Bytes, Failure>>,
    n: u64,
) -> BoxStream<'static, std::result::Result<Bytes, Failure>> {
    if n == 0 {
        return s;
    }
    s.scan(n, |left, r| {
        let out = match r {
            Ok(mut b) if *left > 0 => {
                let cut = usize::try_from(*left).unwrap_or(usize::MAX).min(b.len());
                *left -= cut as u64;
                Ok(b.split_off(cut))
            }
            other => other,
        };
        std::future::ready(Some(out))
    })
    .filter(|r| std::future::ready(!matches!(r, Ok(b) if b.is_empty())))
    .boxed()
}
