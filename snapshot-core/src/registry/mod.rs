//! Pushing the new image to any OCI registry.
//!
//! Blobs first, manifest last, so a failure never moves the tag. Each blob
//! is checked with `HEAD` and only uploaded when missing; base layers are
//! cross-repository mounted when the base image lives in the same registry,
//! else streamed from a [`BlobSource`] (containerd's content store) or,
//! as a last resort, from the base image's registry. Up to
//! [`PushTuning::concurrency`] blobs go up at the same time, in chunks
//! resumed after transient errors; the manifest only once every blob is
//! there. Uploads stream from disk or from the source; nothing is held in
//! memory whole except the config and manifest.
//!
//! By concern: [`reference`](mod@reference) (parsing, plain HTTP or HTTPS),
//! [`credentials`] (docker config: `auths`, `credHelpers`, `credsStore`),
//! [`auth`] (the token handshake, cross-repository mounts), [`tls`] (CA
//! certificates, `certs.d`), [`retry`] (error classification, backoff,
//! the time budget), [`source`] (where blobs come from), [`upload`] (the
//! registry client; our own chunked, resumable upload requests).

mod auth;
mod credentials;
mod reference;
mod retry;
mod source;
mod tls;
mod upload;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::image::{Descriptor, NewImage, sha256_digest};
pub(crate) use reference::parse_reference;
// For the fuzz targets (`crate::fuzzing`).
#[cfg(fuzzing)]
pub(crate) use reference::plain_http_registries;
pub(crate) use source::BlobSource;
use source::{LayerData, Origin};
pub(crate) use tls::DEFAULT_CERTS_DIRS;
use upload::Pusher;

/// Registry settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct RegistrySettings {
    /// Registries (`host` or `host:port`) reached over plain HTTP. Loopback
    /// registries always are.
    pub(crate) insecure: Vec<String>,
    /// A docker `config.json` (or the directory holding it) to read
    /// credentials from. `None`: `$DOCKER_CONFIG`, then `~/.docker`.
    pub(crate) docker_config: Option<PathBuf>,
    /// CA certificate files (PEM) trusted for every registry.
    pub(crate) ca_files: Vec<PathBuf>,
    /// `certs.d` roots searched for per-registry CA certificates.
    pub(crate) certs_dirs: Vec<PathBuf>,
    /// Retries, timeouts, chunks, concurrency.
    pub(crate) tuning: PushTuning,
}

/// How a push retries, times out, cuts and overlaps its uploads (the
/// `push_*` fields of [`Config`], which documents them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct PushTuning {
    pub(crate) retries: u32,
    pub(crate) retry_budget: Duration,
    pub(crate) stall_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) chunk_size: u64,
    pub(crate) concurrency: u32,
}

impl PushTuning {
    /// The `push_*` fields of `c`.
    pub(crate) fn of(c: &Config) -> Self {
        PushTuning {
            retries: c.push_retries,
            retry_budget: c.push_retry_budget,
            stall_timeout: c.push_stall_timeout,
            connect_timeout: c.push_connect_timeout,
            chunk_size: c.push_chunk_size,
            concurrency: c.push_concurrency,
        }
    }
}

impl Default for PushTuning {
    fn default() -> Self {
        Self::of(&Config::default())
    }
}

/// How often upload progress is reported.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// What to push.
#[derive(Debug, Clone)]
pub(crate) struct PushRequest {
    /// The target reference (`registry/repo:tag`).
    pub(crate) target: String,
    /// The base image reference, for cross-repository mounts and as the
    /// last-resort source of base layers.
    pub(crate) base_ref: Option<String>,
    /// The assembled config and manifest.
    pub(crate) image: NewImage,
    /// The new layer's descriptor and its blob on disk.
    pub(crate) new_layer: (Descriptor, PathBuf),
}

/// Pushes the image: blobs that the registry lacks, then the manifest last
/// (a failure never moves the tag). Returns the manifest digest.
///
/// `progress(done, total)` is called with the bytes uploaded so far over
/// the bytes of all blobs that need uploading (blobs already present or
/// mounted are not counted).
pub(crate) async fn push_image(
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

    let pusher = Pusher::connect(
        target,
        source,
        settings,
        base,
        Bytes::from(image.config.clone()),
    )
    .await?;

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
    // Bytes sent so far, per blob: uploads resume, so a blob's count may
    // go back after an error.
    let sent: Vec<Arc<AtomicU64>> = missing.iter().map(|_| Arc::default()).collect();
    let report = || {
        let done: u64 = sent.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        progress(done.min(total), total)
    };
    progress(0, total);
    let each: Vec<_> = missing
        .iter()
        .zip(&sent)
        .map(|((desc, origin), sent)| upload_one(&pusher, desc, origin, sent))
        .collect();
    let uploads = stream::iter(each)
        .buffer_unordered(pusher.concurrency())
        // The first failure ends the push (the other uploads are dropped).
        .try_for_each(|()| std::future::ready(Ok(())));
    {
        let mut uploads = std::pin::pin!(uploads);
        let mut tick = tokio::time::interval(PROGRESS_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = &mut uploads => break r?,
                _ = tick.tick() => report(),
            }
        }
    }
    progress(total, total);

    pusher
        .push_manifest(
            &image.manifest_descriptor.media_type,
            Bytes::from(image.manifest.clone()),
        )
        .await?;
    tracing::info!(target = %pusher.target(), digest, bytes = total, "image pushed");
    Ok(digest)
}

/// Uploads one blob; `sent` ends at its size.
async fn upload_one(
    pusher: &Pusher<'_>,
    desc: &Descriptor,
    origin: &Origin,
    sent: &Arc<AtomicU64>,
) -> Result<()> {
    pusher.upload(desc, origin, sent).await?;
    sent.store(desc.size, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests;
