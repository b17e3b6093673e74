//! Where a new image goes: a registry, an OCI image layout directory, an
//! OCI layout archive, or containerd's own image store.
//!
//! A target string is parsed once, at commit time, into a [`Target`]
//! (before anything is frozen: a malformed one is
//! [`Error::InvalidReference`]); the job stores it, with any path made
//! absolute, and [`publish`] dispatches to one module per destination:
//! `registry` (the crate's registry client), [`oci_layout`] (`oci:` and
//! `oci-archive:`), [`containerd_import`] (`containerd:`). Every
//! destination gets its blobs first and its name (tag, index entry, image
//! record) last, so a failure never leaves a name pointing at an incomplete
//! image. Base layers the destination lacks are read from containerd's
//! content store (the [`BlobSource`]).

mod containerd_import;
mod oci_layout;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_util::io::ReaderStream;

use crate::containerd::ContainerdClient;
use crate::error::{Error, IoContext, Result};
use crate::image::Descriptor;
use crate::registry::{self, BlobSource, PushRequest, RegistrySettings};

/// The tag of an `oci:` or `oci-archive:` target given without one.
pub(crate) const DEFAULT_TAG: &str = "latest";

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Target {
    /// A registry reference (`registry/repo:tag`), validated.
    Registry {
        /// The reference as given.
        reference: String,
    },
    /// `oci:PATH[:TAG]`: an OCI image layout directory.
    OciLayout {
        /// The layout directory, absolute.
        dir: PathBuf,
        /// Its `org.opencontainers.image.ref.name` in `index.json`.
        tag: String,
    },
    /// `oci-archive:FILE[:TAG]`: a tar of an OCI image layout.
    OciArchive {
        /// The archive, absolute.
        file: PathBuf,
        /// Its `org.opencontainers.image.ref.name` in `index.json`.
        tag: String,
    },
    /// `containerd:NAME`: an image in containerd's image store.
    Containerd {
        /// The image name, normalised as a registry reference
        /// (`app` → `docker.io/library/app:latest`), as `nerdctl` looks it up.
        name: String,
    },
}

impl Target {
    /// Parses a target string. The `oci:` and `oci-archive:` forms split
    /// PATH from TAG at the first `:` after the prefix, as `skopeo` does, so
    /// the same string names the same image for both (a PATH cannot hold a
    /// `:`); a relative PATH is made absolute against the current
    /// directory. Anything without a known prefix is a registry reference.
    pub(crate) fn parse(s: &str) -> Result<Target> {
        let invalid = |reason: &str| Error::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = s.strip_prefix("oci:") {
            let (path, tag) = path_and_tag(rest).map_err(|r| invalid(&r))?;
            return Ok(Target::OciLayout { dir: path, tag });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (path, tag) = path_and_tag(rest).map_err(|r| invalid(&r))?;
            if path.file_name().is_none() || rest.ends_with('/') {
                return Err(invalid("the archive path names a directory"));
            }
            return Ok(Target::OciArchive { file: path, tag });
        }
        if let Some(name) = s.strip_prefix("containerd:") {
            if name.is_empty() {
                return Err(invalid("empty image name"));
            }
            let r = registry::parse_reference(name).map_err(|e| match e {
                Error::InvalidReference { reason, .. } => invalid(&reason),
                other => other,
            })?;
            if r.digest().is_some() {
                return Err(invalid("a containerd image name cannot carry a digest"));
            }
            return Ok(Target::Containerd { name: r.whole() });
        }
        registry::parse_reference(s)?;
        Ok(Target::Registry {
            reference: s.to_string(),
        })
    }
}

/// Splits `PATH[:TAG]`, checking both.
fn path_and_tag(rest: &str) -> std::result::Result<(PathBuf, String), String> {
    let (path, tag) = match rest.split_once(':') {
        Some((p, t)) => (p, t),
        None => (rest, DEFAULT_TAG),
    };
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.chars().any(|c| c.is_control()) {
        return Err("the path contains control characters".into());
    }
    if !valid_ref_name(tag) {
        return Err(format!(
            "{tag:?} is not a valid OCI ref name (letters and digits, separated by one of -._:@+ or --, in /-separated components)"
        ));
    }
    let path = std::path::absolute(Path::new(path)).map_err(|e| format!("{path}: {e}"))?;
    Ok((path, tag.to_string()))
}

/// The grammar of `org.opencontainers.image.ref.name` (image-spec
/// annotations): `/`-separated components of alphanumerics joined by
/// single `-._:@+` or by `--`.
fn valid_ref_name(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    s.split('/').all(|component| {
        let b = component.as_bytes();
        let mut i = 0;
        let mut expect_alnum = true;
        while i < b.len() {
            if b[i].is_ascii_alphanumeric() {
                expect_alnum = false;
                i += 1;
            } else if expect_alnum {
                return false;
            } else if b[i] == b'-' && b.get(i + 1) == Some(&b'-') {
                expect_alnum = true;
                i += 2;
            } else if b"-._:@+".contains(&b[i]) {
                expect_alnum = true;
                i += 1;
            } else {
                return false;
            }
        }
        !b.is_empty() && !expect_alnum
    })
}

/// Publishes the image to `target`; returns the manifest digest.
///
/// `containerd` is the job's connection: the source of base layers for
/// every destination, and the store a `containerd:` target writes to.
/// `progress(done, total)` as for a registry push.
pub(crate) async fn publish(
    target: &Target,
    req: &PushRequest,
    settings: &RegistrySettings,
    containerd: &ContainerdClient,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<String> {
    match target {
        Target::Registry { .. } => registry::push_image(req, settings, containerd, progress).await,
        Target::OciLayout { dir, tag } => {
            oci_layout::write_layout(dir, tag, req, containerd, progress).await
        }
        Target::OciArchive { file, tag } => {
            oci_layout::write_archive(file, tag, req, containerd, progress).await
        }
        Target::Containerd { name } => {
            containerd_import::import(containerd, name, req, progress).await
        }
    }
}

/// Progress over a sequence of blobs: `done` bytes before the current one.
/// (A struct, not a closure capturing the callback: such a closure held
/// across an await makes the job's future not `Send`, a compiler
/// limitation with higher-ranked lifetimes.)
struct Progress<'a> {
    report: &'a (dyn Fn(u64, u64) + Send + Sync),
    done: u64,
    total: u64,
}

impl Progress<'_> {
    /// `n` bytes of the current blob are through.
    fn sent(&self, n: u64) {
        (self.report)((self.done + n).min(self.total), self.total)
    }
}

/// Size of the pieces blobs are streamed in.
const CHUNK: usize = 1 << 20;

/// The blobs of the image, in the order a destination should store them
/// (layers, config, manifest last), each once.
fn blobs(req: &PushRequest) -> Vec<(Descriptor, BlobData)> {
    let image = &req.image;
    let mut out: Vec<(Descriptor, BlobData)> = image
        .base_layers
        .iter()
        .map(|d| (d.clone(), BlobData::Base))
        .collect();
    out.push((
        req.new_layer.0.clone(),
        BlobData::File(req.new_layer.1.clone()),
    ));
    out.push((
        image.config_descriptor.clone(),
        BlobData::Memory(Bytes::from(image.config.clone())),
    ));
    out.push((
        image.manifest_descriptor.clone(),
        BlobData::Memory(Bytes::from(image.manifest.clone())),
    ));
    let mut seen = std::collections::HashSet::new();
    out.retain(|(d, _)| seen.insert(d.digest.clone()));
    out
}

/// Where one blob's bytes are.
#[derive(Debug, Clone)]
enum BlobData {
    /// A base layer, in containerd's content store.
    Base,
    /// The new layer on disk.
    File(PathBuf),
    /// The config or manifest.
    Memory(Bytes),
}

impl BlobData {
    /// A stream of the blob's bytes.
    async fn open(
        &self,
        desc: &Descriptor,
        base: &dyn BlobSource,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        match self {
            BlobData::Memory(b) => Ok(stream::once(std::future::ready(Ok(b.clone()))).boxed()),
            BlobData::File(p) => {
                let f = tokio::fs::File::open(p).await.at("open", p)?;
                let p = p.clone();
                Ok(ReaderStream::with_capacity(f, CHUNK)
                    .map(move |r| r.at("read", &p))
                    .boxed())
            }
            BlobData::Base => base.open(&desc.digest).await?.ok_or_else(|| {
                Error::InvalidImage(format!(
                    "base layer {} is not in containerd's content store",
                    desc.digest
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests;
