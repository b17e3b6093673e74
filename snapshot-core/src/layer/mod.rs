//! Builds an OCI image layer blob from a capture directory.
//!
//! A capture directory is an exact copy of an overlayfs upper dir, with
//! overlay's on-disk conventions: whiteouts are character devices 0/0 and
//! opaque directories carry `trusted.overlay.opaque` (or, on a mount with
//! `userxattr`, `user.overlay.opaque`) = `y`. They are converted to the OCI
//! conventions (`.wh.<name>` files and `.wh..wh..opq` markers) while the tar
//! stream is written, compressed and hashed in one pass.
//!
//! Layout: [`walk`] (the tree to tar entries, with the conversions),
//! [`xattrs`] (which xattrs a layer carries: [`XattrPolicy`]), [`owners`]
//! (IDs as a container in a user namespace sees them), [`tar`]
//! (header encoding), [`compress`] (compression and the two digests). This module opens the
//! blob, runs the pipeline and makes the result durable; the invariant it
//! keeps is that a failed build leaves no blob behind.

mod compress;
mod owners;
pub(crate) mod tar;
#[cfg(test)]
mod tests;
mod walk;
mod xattrs;

use std::fs::{self, File, OpenOptions};
use std::io::BufWriter;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::error::{Error, IoContext, Result};
use crate::procfs::idmap::UserNamespace;
use crate::types::Compression;
use compress::{Encoder, HashWriter};
// The header encoder, for the fuzz targets (`crate::fuzzing`).
#[cfg(fuzzing)]
pub(crate) use tar::{Entry, Kind, encode_header};
pub(crate) use xattrs::XattrPolicy;

/// What was built.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct LayerBlob {
    /// The blob file.
    pub(crate) path: PathBuf,
    /// Its OCI media type (see [`Compression::media_type`]).
    pub(crate) media_type: String,
    /// `sha256:<hex>` of the blob as stored (compressed).
    pub(crate) digest: String,
    /// Size of the blob as stored, in bytes.
    pub(crate) size: u64,
    /// `sha256:<hex>` of the uncompressed tar (the OCI diff id).
    pub(crate) diff_id: String,
    /// Size of the uncompressed tar, in bytes.
    pub(crate) uncompressed_size: u64,
    /// Number of tar entries (PAX extended headers not counted, whiteout and
    /// opaque markers counted).
    pub(crate) entries: u64,
}

/// Writes the layer of `capture_dir` compressed to the new file `out`
/// (created with `O_EXCL`, fsync'ed before return), computing diff_id and
/// blob digest in the same single pass. `progress(bytes_of_file_content_read_so_far)`
/// is called periodically, and once at the end.
///
/// Entries are sorted by name bytes within each directory, depth-first, so
/// the same tree always gives the same bytes; they carry the xattrs that
/// `xattrs` lets through. With `owners` (a container in a user namespace),
/// owners and the IDs in xattrs are translated to the container's; with
/// `None` they are the capture's as they are. On error the partial `out` is removed. Returns
/// [`Error::Unsupported`] if the tree uses overlay redirects or metacopy, or
/// holds a file whose name starts with `.wh.` (it would read as a whiteout).
pub(crate) fn build_layer(
    capture_dir: &Path,
    out: &Path,
    compression: Compression,
    xattrs: &XattrPolicy,
    owners: Option<&UserNamespace>,
    progress: &mut dyn FnMut(u64),
) -> Result<LayerBlob> {
    let md = fs::symlink_metadata(capture_dir).at("lstat", capture_dir)?;
    if !md.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "capture dir {} is not a directory",
            capture_dir.display()
        )));
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(out)
        .at("create", out)?;
    tracing::debug!(capture_dir = %capture_dir.display(), out = %out.display(), %compression, "building layer");
    let res = build_into(
        file,
        capture_dir,
        out,
        compression,
        xattrs,
        owners,
        progress,
    );
    match &res {
        Ok(blob) => tracing::debug!(
            digest = %blob.digest, diff_id = %blob.diff_id, size = blob.size,
            uncompressed_size = blob.uncompressed_size, entries = blob.entries, "layer built"
        ),
        Err(e) => {
            tracing::debug!(error = %e, "layer build failed, removing partial blob");
            let _ = fs::remove_file(out);
        }
    }
    res
}

fn build_into(
    file: File,
    capture_dir: &Path,
    out: &Path,
    compression: Compression,
    xattrs: &XattrPolicy,
    owners: Option<&UserNamespace>,
    progress: &mut dyn FnMut(u64),
) -> Result<LayerBlob> {
    let blob = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
    let enc = Encoder::new(compression, blob).at("init compressor", out)?;
    let (w, entries) = walk::write_archive(
        HashWriter::new(enc),
        capture_dir,
        out,
        xattrs,
        owners,
        progress,
    )?;

    let (tar_hash, uncompressed_size, enc) = w.into_parts();
    let blob = enc.finish().at("write", out)?;
    let (blob_hash, size, buf) = blob.into_parts();
    let file = buf
        .into_inner()
        .map_err(|e| Error::io("write", out, e.into_error()))?;
    file.sync_all().at("fsync", out)?;
    drop(file);
    // Make the new directory entry durable too.
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .at("fsync", parent)?;
    }
    Ok(LayerBlob {
        path: out.to_path_buf(),
        media_type: compression.media_type().to_string(),
        digest: format!("sha256:{}", hex::encode(blob_hash.finalize())),
        size,
        diff_id: format!("sha256:{}", hex::encode(tar_hash.finalize())),
        uncompressed_size,
        entries,
    })
}
