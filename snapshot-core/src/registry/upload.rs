//! The upload side of a push: one registry client, authenticated for the
//! target, that checks, mounts and uploads blobs and puts the manifest.
//!
//! Every blob upload streams (from the layer file, the [`BlobSource`] or the
//! base image's registry) and is retried as a whole; a failure of our side
//! (reading the file, the source) is reported as itself, not as the
//! registry's.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::{Client, Reference, RegistryOperation};
use tokio_util::io::ReaderStream;

use super::RegistrySettings;
use super::auth::{Access, push_scopes};
use super::credentials;
use super::reference::scheme_for;
use super::retry::{Class, Failure, classify, error_chain, retry};
use super::source::{BlobSource, LayerData, Origin};
use super::tls;
use crate::error::{Error, Result};
use crate::image::Descriptor;

/// Connection timeout of every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A request whose peer sends nothing for this long fails (and is retried).
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Read size from the layer file.
const FILE_CHUNK: usize = 256 * 1024;
/// How often progress is reported during an upload.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

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

/// Shared state of one push.
pub(super) struct Pusher<'a> {
    client: Client,
    /// Our own requests (token handshake of the base's registry).
    http: reqwest::Client,
    /// Registries reached over plain HTTP.
    plain_http: Vec<String>,
    /// The target's authorization, for cross-repository mounts.
    access: Access,
    target: Reference,
    target_registry: String,
    source: Option<Reference>,
    source_auth: tokio::sync::OnceCell<()>,
    settings: &'a RegistrySettings,
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
        let http = tls::http_client(&roots)?;
        let plain_http = tls::plain_http(&http, &settings.insecure, &hosts).await;
        let client_config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain_http.clone()),
            extra_root_certificates: tls::oci_certificates(&roots),
            // One PUT per blob, as containerd does: works with registries that
            // mishandle chunked uploads.
            use_monolithic_push: true,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..Default::default()
        };
        let client = Client::try_from(client_config)
            .map_err(|e| Error::Internal(format!("registry client: {}", error_chain(&e))))?;

        let credential =
            credentials::resolve(target.registry(), settings.docker_config.as_deref()).await?;
        let scopes = push_scopes(&target, source.as_ref());
        let access = retry(
            settings.retries,
            &target_registry,
            "authenticate",
            || async {
                let access = Access::negotiate(
                    &http,
                    scheme_for(&plain_http, &target_registry),
                    &target_registry,
                    &credential,
                    &scopes,
                )
                .await?;
                access
                    .install(&client, &target, RegistryOperation::Push)
                    .await
                    .map_err(Failure::Oci)?;
                Ok(access)
            },
        )
        .await?;

        Ok(Pusher {
            client,
            http,
            plain_http,
            access,
            target,
            target_registry,
            source,
            source_auth: tokio::sync::OnceCell::new(),
            settings,
            base,
            config,
        })
    }

    /// The target reference.
    pub(super) fn target(&self) -> &Reference {
        &self.target
    }

    /// Whether the target repository has the blob.
    pub(super) async fn exists(&self, digest: &str) -> Result<bool> {
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
        self.access
            .mount(self.target.repository(), src.repository(), digest)
            .await
    }

    async fn auth_source(&self, src: &Reference) -> std::result::Result<(), Failure> {
        self.source_auth
            .get_or_try_init(|| async {
                let credential =
                    credentials::resolve(src.registry(), self.settings.docker_config.as_deref())
                        .await
                        .map_err(Failure::Fatal)?;
                let registry = src.resolve_registry();
                let access = Access::negotiate(
                    &self.http,
                    scheme_for(&self.plain_http, registry),
                    registry,
                    &credential,
                    &[format!("repository:{}:pull", src.repository())],
                )
                .await?;
                access
                    .install(&self.client, src, RegistryOperation::Pull)
                    .await
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

    /// Uploads one blob, retrying transient errors; `sent(bytes)` is called
    /// periodically with the bytes of this blob read so far.
    pub(super) async fn upload(
        &self,
        desc: &Descriptor,
        origin: &Origin,
        sent: impl Fn(u64),
    ) -> Result<()> {
        let count = Arc::new(AtomicU64::new(0));
        let what = format!("upload blob {}", desc.digest);
        let upload = retry(self.settings.retries, &self.target_registry, &what, || {
            self.upload_once(desc, origin, &count)
        });
        with_ticks(upload, || {
            sent(count.load(Ordering::Relaxed).min(desc.size))
        })
        .await
    }

    /// Puts the manifest under the target reference (moves the tag).
    pub(super) async fn push_manifest(&self, media_type: &str, body: Bytes) -> Result<()> {
        retry(
            self.settings.retries,
            &self.target_registry,
            &format!("push manifest to {}", self.target),
            || async {
                let content_type = media_type.parse().map_err(|_| {
                    Failure::Fatal(Error::InvalidImage(format!(
                        "bad manifest media type {media_type:?}"
                    )))
                })?;
                self.client
                    .push_manifest_raw(&self.target, body.clone(), content_type)
                    .await
                    .map_err(Failure::Oci)
            },
        )
        .await
        .map(|_| ())
    }
}
