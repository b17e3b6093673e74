//! `containerd:` targets: the image imported into containerd's content
//! store and image store, in the container's namespace, through
//! containerd's API (as `ctr images import` does), so `ctr run` and
//! `nerdctl run` use it at once.
//!
//! Invariants: everything is written under a lease (expiring on its own
//! should we die), so containerd's garbage collector cannot take a blob
//! between its write and the image record that keeps it; the manifest
//! carries `containerd.io/gc.ref.content.*` labels to its config and
//! layers, which keep them once the lease is gone; blobs go first, each
//! checked by containerd against its size and digest, and the image record
//! (created, or updated when the name exists) last. Blobs the store already
//! has (the base layers) are not written again.

use std::collections::HashMap;

use bytes::Bytes;
use containerd_client::services::v1::{
    CreateImageRequest, CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
    Image, InfoRequest, UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::{Code, Request, metadata::MetadataValue};
use containerd_client::types::Descriptor as CdDescriptor;
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::Value;

use super::{Progress, blobs};
use crate::containerd::ContainerdClient;
use crate::error::{Error, Result};
use crate::image::Descriptor;
use crate::registry::PushRequest;

/// How long the lease protecting a half-done import lives if we die.
const LEASE_EXPIRY: chrono::Duration = chrono::Duration::hours(1);

/// Imports the image under `name`; returns the manifest digest.
pub(super) async fn import(
    client: &ContainerdClient,
    name: &str,
    req: &PushRequest,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<String> {
    let lease = Lease::create(client).await?;
    let result = import_leased(client, &lease, name, req, progress).await;
    lease.delete(client).await;
    result
}

async fn import_leased(
    client: &ContainerdClient,
    lease: &Lease,
    name: &str,
    req: &PushRequest,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<String> {
    let manifest = &req.image.manifest_descriptor;
    let gc_labels = gc_labels(&req.image.manifest)?;
    let mut plan = Vec::new();
    for (desc, data) in blobs(req) {
        let labels = if desc.digest == manifest.digest {
            gc_labels.clone()
        } else {
            HashMap::new()
        };
        if exists(client, lease, &desc.digest).await? {
            // Ours from an earlier run, or the base's: the labels are what
            // matter (a manifest written before without them would let
            // the collector take the new layer).
            if !labels.is_empty() {
                set_labels(client, lease, &desc.digest, labels).await?;
            }
            continue;
        }
        plan.push((desc, data, labels));
    }
    let total: u64 = plan.iter().map(|(d, _, _)| d.size).sum();
    let mut p = Progress {
        report: progress,
        done: 0,
        total,
    };
    progress(0, total);
    for (desc, data, labels) in plan {
        let source = data.open(&desc, client).await?;
        write(client, lease, &desc, source, labels, &p).await?;
        p.done += desc.size;
    }
    progress(total, total);

    let image = Image {
        name: name.to_string(),
        labels: HashMap::new(),
        target: Some(CdDescriptor {
            media_type: manifest.media_type.clone(),
            digest: manifest.digest.clone(),
            size: to_i64(manifest.size),
            annotations: HashMap::new(),
        }),
        created_at: None,
        updated_at: None,
    };
    let mut images = client.grpc().images();
    let created = images
        .create(lease.request(
            client,
            CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            },
        ))
        .await;
    match created {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists => {
            // No field mask: the whole record (its target) is replaced.
            images
                .update(lease.request(
                    client,
                    UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    },
                ))
                .await
                .map_err(|s| client.rpc_error("update image", &s))?;
        }
        Err(s) => return Err(client.rpc_error("create image", &s)),
    }
    tracing::info!(
        image = name,
        digest = manifest.digest,
        "image imported into containerd"
    );
    Ok(manifest.digest.clone())
}

/// The labels that make containerd's collector keep a manifest's config
/// and layers for as long as the manifest is kept (containerd's own
/// names: `config`, `l.<index>`).
fn gc_labels(manifest: &[u8]) -> Result<HashMap<String, String>> {
    let bad = |why: &str| Error::InvalidImage(format!("new manifest: {why}"));
    let v: Value = serde_json::from_slice(manifest).map_err(|e| bad(&e.to_string()))?;
    let digest = |d: &Value| {
        d.get("digest")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| bad("a descriptor without a digest"))
    };
    let mut labels = HashMap::new();
    let config = v.get("config").ok_or_else(|| bad("no config"))?;
    labels.insert(
        "containerd.io/gc.ref.content.config".into(),
        digest(config)?,
    );
    let layers = v
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no layers"))?;
    for (i, l) in layers.iter().enumerate() {
        labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), digest(l)?);
    }
    Ok(labels)
}

async fn exists(client: &ContainerdClient, lease: &Lease, digest: &str) -> Result<bool> {
    let r = client
        .grpc()
        .content()
        .info(lease.request(
            client,
            InfoRequest {
                digest: digest.to_string(),
            },
        ))
        .await;
    match r {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(client.rpc_error("content info", &s)),
    }
}

/// Replaces the labels of an existing blob (ours: the manifest).
async fn set_labels(
    client: &ContainerdClient,
    lease: &Lease,
    digest: &str,
    labels: HashMap<String, String>,
) -> Result<()> {
    let info = containerd_client::services::v1::Info {
        digest: digest.to_string(),
        size: 0,
        created_at: None,
        updated_at: None,
        labels,
    };
    client
        .grpc()
        .content()
        .update(lease.request(
            client,
            UpdateRequest {
                info: Some(info),
                update_mask: None,
            },
        ))
        .await
        .map_err(|s| client.rpc_error("update content labels", &s))?;
    Ok(())
}

/// Streams one blob through a content writer: `WRITE`s, then a `COMMIT`
/// with the expected size and digest (containerd refuses a mismatch) and
/// the blob's labels.
async fn write(
    client: &ContainerdClient,
    lease: &Lease,
    desc: &Descriptor,
    source: BoxStream<'static, Result<Bytes>>,
    labels: HashMap<String, String>,
    progress: &Progress<'_>,
) -> Result<()> {
    // Unique per attempt: a ref left by a dead writer is never contended.
    let write_ref = format!(
        "seamless-snapshot-{}-{}",
        desc.digest,
        uuid::Uuid::new_v4().simple()
    );
    let failure: std::sync::Arc<std::sync::Mutex<Option<Error>>> = Default::default();
    let requests = write_requests(source, write_ref, desc.clone(), labels, failure.clone());
    let resp = client
        .grpc()
        .content()
        .write(lease.request(client, requests))
        .await;
    let mut responses = match resp {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
        Err(s) => return Err(client.rpc_error(&format!("write {}", desc.digest), &s)),
    };
    let mut committed = false;
    loop {
        match responses.message().await {
            Ok(Some(r)) => {
                progress.sent(u64::try_from(r.offset).unwrap_or(0));
                committed |= r.action == WriteAction::Commit as i32;
            }
            Ok(None) => break,
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(client.rpc_error(&format!("write {}", desc.digest), &s)),
        }
    }
    if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    if !committed {
        let s = containerd_client::tonic::Status::data_loss("the stream ended before the commit");
        return Err(client.rpc_error(&format!("write {}", desc.digest), &s));
    }
    Ok(())
}

/// The request stream of one content write, fed by a task of its own
/// from `source`. A read error of the source ends the stream before the
/// commit (containerd abandons the write) and is left in `failure`.
///
/// (A channel rather than a stream adapter over `source`: tonic's write
/// future over an adapted boxed stream is one rustc cannot prove `Send`.)
fn write_requests(
    mut source: BoxStream<'static, Result<Bytes>>,
    write_ref: String,
    desc: Descriptor,
    labels: HashMap<String, String>,
    failure: std::sync::Arc<std::sync::Mutex<Option<Error>>>,
) -> impl futures_util::Stream<Item = WriteContentRequest> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
    let base = WriteContentRequest {
        action: WriteAction::Write as i32,
        r#ref: write_ref,
        total: to_i64(desc.size),
        expected: desc.digest,
        offset: 0,
        data: Vec::new(),
        labels: HashMap::new(),
    };
    tokio::spawn(async move {
        let mut offset = 0i64;
        while let Some(chunk) = source.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    if let Ok(mut f) = failure.lock() {
                        *f = Some(e);
                    }
                    return;
                }
            };
            let n = to_i64(chunk.len() as u64);
            let msg = WriteContentRequest {
                offset,
                data: chunk.to_vec(),
                ..base.clone()
            };
            if tx.send(msg).await.is_err() {
                // The write call is gone (failed): nothing to feed.
                return;
            }
            offset = offset.saturating_add(n);
        }
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset,
            labels,
            ..base
        };
        let _ = tx.send(commit).await;
    });
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A containerd lease: what is written under it is not collected until it
/// is deleted (or expires).
struct Lease {
    id: String,
    header: MetadataValue<containerd_client::tonic::metadata::Ascii>,
}

impl Lease {
    async fn create(client: &ContainerdClient) -> Result<Lease> {
        let id = format!("seamless-snapshot-{}", uuid::Uuid::new_v4().simple());
        let expire =
            (chrono::Utc::now() + LEASE_EXPIRY).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
        client
            .grpc()
            .leases()
            .create(client.request(CreateLeaseRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(|s| client.rpc_error("create lease", &s))?;
        let header = MetadataValue::try_from(id.as_str())
            .map_err(|e| Error::Internal(format!("lease id {id:?}: {e}")))?;
        Ok(Lease { id, header })
    }

    /// A request in the client's namespace, under this lease.
    fn request<T>(&self, client: &ContainerdClient, msg: T) -> Request<T> {
        let mut r = client.request(msg);
        r.metadata_mut()
            .insert("containerd-lease", self.header.clone());
        r
    }

    /// Deletes the lease; best effort (it expires anyway).
    async fn delete(self, client: &ContainerdClient) {
        let r = client
            .grpc()
            .leases()
            .delete(client.request(DeleteLeaseRequest {
                id: self.id.clone(),
                sync: false,
            }))
            .await;
        if let Err(s) = r {
            tracing::warn!(lease = self.id, error = %s.message(), "deleting lease failed");
        }
    }
}
