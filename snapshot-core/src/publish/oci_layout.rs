//! `oci:` and `oci-archive:` targets: an OCI image layout (image-spec
//! `image-layout.md`): `oci-layout`, `index.json`, `blobs/sha256/<hex>`.
//!
//! Invariants: every blob is written under a temporary name, checked
//! against its digest and size, synced, then renamed into place, so a blob
//! path never holds partial or wrong bytes; `index.json` is replaced
//! atomically, last, under an exclusive `flock` of the layout directory, and
//! keeps every other tag of an existing layout (the same tag is replaced).
//! An archive is a layout written to a private temporary directory beside
//! it, tarred into a temporary file and renamed over the archive: a reader
//! sees the old archive or the complete new one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::{BlobData, Progress, blobs};
use crate::error::{Error, IoContext, Result};
use crate::image::{Descriptor, OCI_INDEX};
use crate::layer::tar;
use crate::registry::{BlobSource, PushRequest};
use crate::state;

/// The annotation naming an image of a layout's index.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";

/// Writes the image into the layout at `dir` (created if missing) under
/// `tag`; returns the manifest digest.
pub(super) async fn write_layout(
    dir: &Path,
    tag: &str,
    req: &PushRequest,
    base: &dyn BlobSource,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<String> {
    prepare_dir(dir)?;
    let blob_dir = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir).at("mkdir", &blob_dir)?;

    let plan: Vec<_> = blobs(req)
        .into_iter()
        .filter(|(d, _)| !has_blob(&blob_dir, d))
        .collect();
    let total: u64 = plan.iter().map(|(d, _)| d.size).sum();
    let mut p = Progress {
        report: progress,
        done: 0,
        total,
    };
    progress(0, total);
    for (desc, data) in &plan {
        write_blob(&blob_dir, desc, data, base, &p).await?;
        p.done += desc.size;
    }
    progress(total, total);

    let manifest = &req.image.manifest_descriptor;
    // Exclusive while the index changes: two commits into one layout never
    // lose each other's tag.
    let _lock = state::lock_dir(dir)?;
    let index = dir.join(INDEX_FILE);
    let old = match fs::read(&index) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("read", &index, e)),
    };
    let new = updated_index(old.as_deref(), manifest, tag)
        .map_err(|reason| Error::InvalidImage(format!("{}: {reason}", index.display())))?;
    state::write_atomic(dir, INDEX_FILE, &new)?;
    tracing::info!(layout = %dir.display(), tag, digest = manifest.digest, "image written to OCI layout");
    Ok(manifest.digest.clone())
}

/// Writes an archive of a layout holding the image under `tag` to `file`,
/// replacing it atomically; returns the manifest digest.
pub(super) async fn write_archive(
    file: &Path,
    tag: &str,
    req: &PushRequest,
    base: &dyn BlobSource,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<String> {
    let parent = file.parent().unwrap_or(Path::new("/"));
    let name = file
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{}: not a file name", file.display())))?
        .to_string_lossy();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let layout = parent.join(format!(".{name}.{unique}.layout"));
    let tmp_tar = parent.join(format!(".{name}.{unique}.tmp"));
    // Private: the layout holds the container's files until it is removed.
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&layout)
        .at("mkdir", &layout)?;
    let result = archive_via(&layout, &tmp_tar, file, tag, req, base, progress).await;
    if let Err(e) = crate::sys::fs::remove_all(&layout) {
        tracing::warn!(path = %layout.display(), error = %e, "removing temporary layout failed");
    }
    if result.is_err() {
        let _ = fs::remove_file(&tmp_tar);
    }
    result
}

/// The work of [`write_archive`] between its temporary paths. (A function,
/// not an async block: a block capturing the progress callback makes the
/// job's future not `Send`, a compiler limitation.)
async fn archive_via(
    layout: &Path,
    tmp_tar: &Path,
    file: &Path,
    tag: &str,
    req: &PushRequest,
    base: &dyn BlobSource,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<String> {
    let digest = write_layout(layout, tag, req, base, progress).await?;
    let (l, t) = (layout.to_path_buf(), tmp_tar.to_path_buf());
    tokio::task::spawn_blocking(move || tar_layout(&l, &t))
        .await
        .map_err(|e| Error::Internal(format!("archive writer panicked: {e}")))??;
    fs::rename(tmp_tar, file).at("rename", file)?;
    sync_dir(file.parent().unwrap_or(Path::new("/")));
    Ok(digest)
}

/// Makes `dir` a layout: created when missing; an existing directory must
/// be empty or already a layout (never scribble into an unrelated one).
fn prepare_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).at("mkdir", dir)?;
    let marker = dir.join(LAYOUT_FILE);
    match fs::read(&marker) {
        Ok(b) => {
            let v: Value = serde_json::from_slice(&b).map_err(|e| {
                Error::InvalidImage(format!(
                    "{}: not an OCI layout marker: {e}",
                    marker.display()
                ))
            })?;
            if v.get("imageLayoutVersion")
                .and_then(Value::as_str)
                .is_none()
            {
                return Err(Error::InvalidImage(format!(
                    "{}: no imageLayoutVersion",
                    marker.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut entries = fs::read_dir(dir).at("read dir", dir)?;
            if entries.next().is_some() {
                return Err(Error::InvalidArgument(format!(
                    "{} is neither empty nor an OCI image layout (no {LAYOUT_FILE})",
                    dir.display()
                )));
            }
            state::write_atomic(dir, LAYOUT_FILE, br#"{"imageLayoutVersion":"1.0.0"}"#)
        }
        Err(e) => Err(Error::io("read", &marker, e)),
    }
}

fn blob_path(blob_dir: &Path, digest: &str) -> PathBuf {
    blob_dir.join(digest.strip_prefix("sha256:").unwrap_or(digest))
}

/// Whether the layout already has the blob (content-addressed: the right
/// size under its digest's name is taken as the blob, as other layout
/// writers do).
fn has_blob(blob_dir: &Path, desc: &Descriptor) -> bool {
    fs::metadata(blob_path(blob_dir, &desc.digest)).is_ok_and(|m| m.len() == desc.size)
}

/// Streams one blob into place, checking digest and size.
async fn write_blob(
    blob_dir: &Path,
    desc: &Descriptor,
    data: &BlobData,
    base: &dyn BlobSource,
    progress: &Progress<'_>,
) -> Result<()> {
    let dest = blob_path(blob_dir, &desc.digest);
    let tmp = blob_dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = async {
        let mut stream = data.open(desc, base).await?;
        let mut f = tokio::fs::File::create(&tmp).await.at("create", &tmp)?;
        let mut hasher = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            n += chunk.len() as u64;
            f.write_all(&chunk).await.at("write", &tmp)?;
            progress.sent(n);
        }
        f.sync_all().await.at("fsync", &tmp)?;
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != desc.digest || n != desc.size {
            return Err(Error::InvalidImage(format!(
                "blob {} read back as {got} ({n} bytes, expected {})",
                desc.digest, desc.size
            )));
        }
        fs::rename(&tmp, &dest).at("rename", &dest)
    }
    .await;
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The index with `manifest` named `tag`, replacing any other entry of that
/// name and keeping everything else. `None`: a new index.
pub(super) fn updated_index(
    old: Option<&[u8]>,
    manifest: &Descriptor,
    tag: &str,
) -> std::result::Result<Vec<u8>, String> {
    let mut index = match old {
        Some(b) => serde_json::from_slice::<Value>(b).map_err(|e| e.to_string())?,
        None => json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
    };
    let obj = index.as_object_mut().ok_or("not a JSON object")?;
    let manifests = obj
        .entry("manifests")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or("\"manifests\" is not an array")?;
    manifests.retain(|m| {
        m.pointer(&format!("/annotations/{}", REF_NAME.replace('/', "~1"))) != Some(&json!(tag))
    });
    let mut entry = Map::new();
    entry.insert("mediaType".into(), json!(manifest.media_type));
    entry.insert("digest".into(), json!(manifest.digest));
    entry.insert("size".into(), json!(manifest.size));
    entry.insert("annotations".into(), json!({ REF_NAME: tag }));
    manifests.push(Value::Object(entry));
    serde_json::to_vec(&index).map_err(|e| e.to_string())
}

/// Makes renames in `dir` durable; best effort.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Tars the layout at `layout` into `out` (ustar; `oci-layout`,
/// `index.json`, then the blobs), synced.
fn tar_layout(layout: &Path, out: &Path) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(out)
        .at("create", out)?;
    let mut w = std::io::BufWriter::with_capacity(super::CHUNK, f);
    let mut put = |path: &str, src: Option<&Path>| -> Result<()> {
        let mut e = tar::Entry::new(
            path.as_bytes().to_vec(),
            if src.is_some() {
                tar::Kind::Regular
            } else {
                tar::Kind::Dir
            },
        );
        e.mode = if src.is_some() { 0o644 } else { 0o755 };
        if let Some(src) = src {
            e.size = fs::metadata(src).at("stat", src)?.len();
        }
        w.write_all(&tar::encode_header(&e)).at("write", out)?;
        if let Some(src) = src {
            let mut r = fs::File::open(src).at("open", src)?;
            let n = std::io::copy(&mut r, &mut w).at("copy", src)?;
            if n != e.size {
                return Err(Error::Internal(format!(
                    "{} changed while archived",
                    src.display()
                )));
            }
            w.write_all(&vec![0; tar::padding(n)]).at("write", out)?;
        }
        Ok(())
    };
    put(LAYOUT_FILE, Some(&layout.join(LAYOUT_FILE)))?;
    put(INDEX_FILE, Some(&layout.join(INDEX_FILE)))?;
    put("blobs/", None)?;
    put("blobs/sha256/", None)?;
    let blob_dir = layout.join("blobs").join("sha256");
    let mut names: Vec<String> = fs::read_dir(&blob_dir)
        .at("read dir", &blob_dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for n in names {
        put(&format!("blobs/sha256/{n}"), Some(&blob_dir.join(&n)))?;
    }
    // End of archive: two zero blocks.
    w.write_all(&[0; 2 * tar::BLOCK]).at("write", out)?;
    let f = w
        .into_inner()
        .map_err(|e| Error::io("write", out, e.into_error()))?;
    f.sync_all().at("fsync", out)
}
