//! Where the blobs of an image come from.
//!
//! The new layer is a file on disk; base layers are read, when the target
//! registry lacks them, from a [`BlobSource`] (containerd's content store).
//! A source answers `None` for a blob it does not have, never an error.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::containerd::ContainerdClient;
use crate::error::Result;

/// Where base layer blobs can be read from when the target registry lacks
/// them (containerd's content store).
pub(crate) trait BlobSource: Send + Sync {
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

/// Where each layer blob of the image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LayerData {
    /// The new layer blob on disk.
    File(PathBuf),
    /// A base layer: already in the target registry, cross-repository
    /// mounted, read from the [`BlobSource`], or pulled from the base
    /// image's registry, in that order.
    Base,
}

/// Where a blob to upload comes from.
pub(super) enum Origin {
    /// A layer.
    Layer(LayerData),
    /// The image config, held in memory.
    Config,
}
