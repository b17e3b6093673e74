//! Pushing the new image to any OCI registry.
//!
//! Blobs first, manifest last, so a failure never moves the tag. Each blob
//! is checked with `HEAD` and only uploaded when missing; base layers are
//! cross-repository mounted when the base image lives in the same registry,
//! else streamed from a [`BlobSource`] (containerd's content store) or,
//! as a last resort, from the base image's registry. Uploads stream from
//! disk or from the source; nothing is held in memory whole except the
//! config and manifest.
//!
//! By concern: [`reference`](mod@reference) (parsing, plain HTTP or HTTPS), [`auth`]
//! (docker config credentials), [`retry`] (error classification, backoff),
//! [`source`] (where blobs come from), [`upload`] (the registry client).

mod auth;
mod reference;
mod retry;
mod source;
mod upload;

use std::collections::HashSet;
use std::path::PathBuf;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::image::{Descriptor, NewImage, sha256_digest};
pub(crate) use reference::parse_reference;
// For the fuzz targets (`crate::fuzzing`).
#[cfg(fuzzing)]
pub(crate) use reference::plain_http_registries;
pub(crate) use source::BlobSource;
use source::{LayerData, Origin};
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
    /// How many times a transient error (connection refused or reset,
    /// timeout, HTTP 5xx, 429) is retried, with exponential backoff.
    pub(crate) retries: u32,
}

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
    let mut done = 0u64;
    progress(0, total);
    for (desc, origin) in &missing {
        pusher
            .upload(desc, origin, |sent| {
                progress((done + sent).min(total), total)
            })
            .await?;
        done += desc.size;
        progress(done, total);
    }

    pusher
        .push_manifest(
            &image.manifest_descriptor.media_type,
            Bytes::from(image.manifest.clone()),
        )
        .await?;
    tracing::info!(target = %pusher.target(), digest, bytes = total, "image pushed");
    Ok(digest)
}

#[cfg(test)]
mod tests;
