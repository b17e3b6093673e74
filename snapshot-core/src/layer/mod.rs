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
//! [`sparse`] (holes found without reading them), [`xattrs`] (which xattrs a
//! layer carries: [`XattrPolicy`]), [`owners`] (IDs as a container in a user
//! namespace sees them), [`tar`] (header encoding), [`pipeline`] (the walk
//! and the compressor on separate threads, with bounded memory),
//! [`compress`] (parallel gzip, multi-threaded zstd, the blob digest). This
//! module opens the blob, runs the pipeline and makes the result durable; the
//! invariant it keeps is that a failed build leaves no blob behind.

mod compress;
mod owners;
mod pipeline;
mod sparse;
pub(crate) mod tar;
#[cfg(test)]
mod tests;
mod walk;
mod xattrs;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::config::CommitOptions;
use crate::error::{Error, IoContext, Result};
use crate::procfs::idmap::UserNamespace;
use crate::types::Compression;
// The header encoder, for the fuzz targets (`crate::fuzzing`).
#[cfg(fuzzing)]
pub(crate) use tar::{Entry, Kind, encode_header};
pub(crate) use xattrs::XattrPolicy;

/// How a layer is compressed and what it may expand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BuildOptions {
    /// The algorithm.
    pub(crate) compression: Compression,
    /// Its level; `None`: the algorithm's default (gzip 6, zstd 3).
    pub(crate) level: Option<i32>,
    /// Compression threads; 0: one per available core.
    pub(crate) threads: u32,
    /// Largest hole total of one sparse file written out as zeros.
    pub(crate) max_sparse_expansion: u64,
}

/// At most this many compression threads: more buys nothing on one layer
/// stream and costs memory (zstd keeps a job buffer per worker).
const MAX_THREADS: u32 = 16;

impl BuildOptions {
    /// `compression` with every other setting at its default.
    #[cfg(test)]
    pub(crate) fn new(compression: Compression) -> Self {
        BuildOptions {
            compression,
            level: None,
            threads: 0,
            max_sparse_expansion: CommitOptions::DEFAULT_MAX_SPARSE_EXPANSION,
        }
    }

    /// The build options of a commit's (merged) options.
    pub(crate) fn of(o: &CommitOptions) -> Self {
        BuildOptions {
            compression: o.compression,
            level: o.compression_level,
            threads: o.compression_threads.unwrap_or(0),
            max_sparse_expansion: o
                .max_sparse_expansion
                .unwrap_or(CommitOptions::DEFAULT_MAX_SPARSE_EXPANSION),
        }
    }

    /// The thread count to use: `threads`, or the available cores.
    fn threads(&self) -> u32 {
        let n = match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            n => n,
        };
        n.clamp(1, MAX_THREADS)
    }
}

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

/// Writes the layer of `capture_dir` compressed as `opts` say to the new
/// file `out` (created with `O_EXCL`, fsync'ed before return), computing
/// diff_id and blob digest in the same single pass; reading, compressing
/// (on `opts.threads` cores) and writing overlap. `progress(bytes_of_file_content_read_so_far)`
/// is called periodically, and once at the end.
///
/// Entries are sorted by name bytes within each directory, depth-first, so
/// the same tree always gives the same bytes; they carry the xattrs that
/// `xattrs` lets through. With `owners` (a container in a user namespace),
/// owners and the IDs in xattrs are translated to the container's; with
/// `None` they are the capture's as they are. On error the partial `out` is removed. Returns
/// [`Error::Unsupported`] if the tree uses overlay redirects or metacopy, or
/// holds a file whose name starts with `.wh.` (it would read as a whiteout)
/// or a sparse file with more than `opts.max_sparse_expansion` bytes of
/// holes; [`Error::InvalidArgument`] for a level out of range.
pub(crate) fn build_layer(
    capture_dir: &Path,
    out: &Path,
    opts: &BuildOptions,
    xattrs: &XattrPolicy,
    owners: Option<&UserNamespace>,
    progress: &mut dyn FnMut(u64),
) -> Result<LayerBlob> {
    let codec = compress::Codec::new(opts.compression, opts.level, opts.threads())?;
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
    tracing::debug!(
        capture_dir = %capture_dir.display(), out = %out.display(),
        compression = %codec.compression, level = codec.level, threads = codec.threads,
        "building layer"
    );
    let max_sparse = opts.max_sparse_expansion;
    let res = pipeline::run(file, out, codec, |w| {
        walk::write_archive(w, capture_dir, out, xattrs, owners, max_sparse, progress)
            .map(|(_, entries)| entries)
    })
    .and_then(|built| finish(built, out, codec.compression));
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

/// Makes the blob `out` durable and describes it.
fn finish(built: pipeline::Built, out: &Path, compression: Compression) -> Result<LayerBlob> {
    let file = built.file;
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
        digest: format!("sha256:{}", hex::encode(built.blob_hash.finalize())),
        size: built.size,
        diff_id: format!("sha256:{}", hex::encode(built.tar_hash.finalize())),
        uncompressed_size: built.uncompressed_size,
        entries: built.entries,
    })
}
