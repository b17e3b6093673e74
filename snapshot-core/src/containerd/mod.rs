//! Resolving a container through containerd's gRPC API: its task, its
//! overlayfs mount and its base image (identified by its snapshot's parent,
//! not by the image name it records: see `base`).

mod base;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use containerd_client::services::v1::snapshots::{MountsRequest, StatSnapshotRequest};
use containerd_client::services::v1::{
    GetContainerRequest, GetImageRequest, GetRequest as GetTaskRequest, ListImagesRequest,
    ListPidsRequest, ReadContentRequest,
};
use containerd_client::tonic::{self, Code, Request, metadata::MetadataValue};
use futures_util::stream::{BoxStream, StreamExt};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::image::Descriptor;
use crate::procfs::mountinfo;

/// What containerd knows of a running container.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    /// The container id.
    pub id: String,
    /// The image it was created from (a containerd image name).
    pub image: String,
    /// The snapshotter holding its root filesystem.
    pub snapshotter: String,
    /// The key of its active snapshot.
    pub snapshot_key: String,
    /// The pid of its init process.
    pub pid: u32,
    /// Its OCI runtime spec's `linux.cgroupsPath`: its own cgroup, the
    /// highest one a commit may freeze (`None` when unset).
    pub cgroups_path: Option<String>,
}

/// The kernel overlayfs mount of a container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    /// The writable layer.
    pub upper: PathBuf,
    /// The read-only layers, topmost first.
    pub lowers: Vec<PathBuf>,
    /// overlayfs' work directory.
    pub work: Option<PathBuf>,
    /// Whether overlay's private xattrs live in `user.overlay.*`.
    pub userxattr: bool,
}

/// The base image of a container, read from containerd's content store.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// The containerd image name it was found under: the container's own,
    /// or another name of the same image when that one was re-tagged.
    pub name: String,
    /// The descriptor of the platform manifest used.
    pub manifest_descriptor: Descriptor,
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// The config's bytes.
    pub config: Vec<u8>,
}

/// The part of an OCI runtime spec (the JSON in a container's `spec`) read
/// here; everything else is ignored.
#[derive(Debug, Deserialize)]
struct RuntimeSpec {
    #[serde(default)]
    linux: Option<LinuxSpec>,
}

#[derive(Debug, Deserialize)]
struct LinuxSpec {
    #[serde(rename = "cgroupsPath", default)]
    cgroups_path: Option<String>,
}

/// `linux.cgroupsPath` of an OCI runtime spec's JSON; `None` when unset or
/// empty.
pub(crate) fn spec_cgroups_path(json: &[u8]) -> serde_json::Result<Option<String>> {
    let spec: RuntimeSpec = serde_json::from_slice(json)?;
    Ok(spec
        .linux
        .and_then(|l| l.cgroups_path)
        .filter(|p| !p.is_empty()))
}

/// A client bound to one containerd socket and namespace.
#[derive(Clone)]
pub struct ContainerdClient {
    client: std::sync::Arc<containerd_client::Client>,
    address: String,
    namespace: MetadataValue<tonic::metadata::Ascii>,
    namespace_name: String,
}

impl std::fmt::Debug for ContainerdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdClient")
            .field("address", &self.address)
            .field("namespace", &self.namespace_name)
            .finish()
    }
}

impl ContainerdClient {
    /// Connects to containerd at `address` (a unix socket path), for `namespace`.
    ///
    /// Every call must answer (its response headers arrive) within
    /// `timeout`, and connecting within [`CONNECT_TIMEOUT`]: a wedged
    /// containerd fails a commit with [`Error::Containerd`], it never hangs
    /// it. (A content stream that stalls after its first answer is not
    /// covered.)
    pub async fn connect(address: &str, namespace: &str, timeout: Duration) -> Result<Self> {
        let ns = validate_namespace(namespace)?;
        let path = PathBuf::from(address.strip_prefix("unix://").unwrap_or(address));
        let fail = |e: &dyn std::error::Error| Error::Containerd {
            address: address.to_string(),
            message: format!("connect: {}", crate::error::message_chain(e)),
        };
        // The URI is a placeholder: the connector dials the unix socket.
        let endpoint = tonic::transport::Endpoint::from_static("http://[::]")
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout);
        let channel = endpoint.connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }));
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT, channel).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fail(&e)),
            Err(e) => return Err(fail(&e)),
        };
        let client = containerd_client::Client::from(channel);
        Ok(ContainerdClient {
            client: std::sync::Arc::new(client),
            address: address.to_string(),
            namespace: ns,
            namespace_name: namespace.to_string(),
        })
    }

    /// The gRPC client, for the one writer outside this module
    /// (`publish::containerd_import`, which stores a new image): everything
    /// here only reads.
    pub(crate) fn grpc(&self) -> &containerd_client::Client {
        &self.client
    }

    /// A request carrying this client's namespace.
    pub(crate) fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        req
    }

    /// An [`Error::Containerd`] naming this client's address.
    pub(crate) fn rpc_error(&self, what: &str, status: &tonic::Status) -> Error {
        Error::Containerd {
            address: self.address.clone(),
            message: format!("{what}: {} ({:?})", status.message(), status.code()),
        }
    }

    /// The container and its running task.
    pub async fn container(&self, id: &str) -> Result<ContainerInfo> {
        let resp = self
            .client
            .containers()
            .get(self.request(GetContainerRequest { id: id.to_string() }))
            .await;
        let container = match resp {
            Ok(r) => r.into_inner().container,
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(self.rpc_error("get container", &s)),
        };
        let container = container.ok_or_else(|| Error::ContainerNotFound {
            id: id.to_string(),
            namespace: self.namespace_name.clone(),
        })?;
        let task = self
            .client
            .tasks()
            .get(self.request(GetTaskRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await;
        let process = match task {
            Ok(r) => r.into_inner().process,
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(self.rpc_error("get task", &s)),
        };
        let Some(process) = process else {
            return Err(Error::ContainerNotRunning {
                id: id.to_string(),
                status: "no task".to_string(),
            });
        };
        let status = containerd_client::types::v1::Status::try_from(process.status)
            .map(|s| s.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| format!("unknown({})", process.status));
        if status != "running" || process.pid == 0 {
            return Err(Error::ContainerNotRunning {
                id: id.to_string(),
                status,
            });
        }
        let cgroups_path = match &container.spec {
            Some(spec) => spec_cgroups_path(&spec.value).map_err(|e| Error::Containerd {
                address: self.address.clone(),
                message: format!("container {id}: its spec is not an OCI runtime spec: {e}"),
            })?,
            None => None,
        };
        Ok(ContainerInfo {
            id: id.to_string(),
            image: container.image,
            snapshotter: container.snapshotter,
            snapshot_key: container.snapshot_key,
            pid: process.pid,
            cgroups_path,
        })
    }

    /// The pids of every process of the container's task.
    pub async fn task_pids(&self, id: &str) -> Result<Vec<u32>> {
        let resp = self
            .client
            .tasks()
            .list_pids(self.request(ListPidsRequest {
                container_id: id.to_string(),
            }))
            .await
            .map_err(|s| self.rpc_error("list task pids", &s))?;
        Ok(resp.into_inner().processes.iter().map(|p| p.pid).collect())
    }

    /// The overlayfs mount of the container's snapshot. Any snapshotter whose
    /// mount is kernel overlayfs is accepted.
    pub async fn overlay_mount(&self, container: &ContainerInfo) -> Result<OverlayMount> {
        if container.snapshot_key.is_empty() {
            return Err(Error::Unsupported(format!(
                "container {} has no snapshot (rootfs not managed by a snapshotter)",
                container.id
            )));
        }
        let resp = self
            .client
            .snapshots()
            .mounts(self.request(MountsRequest {
                snapshotter: container.snapshotter.clone(),
                key: container.snapshot_key.clone(),
            }))
            .await
            .map_err(|s| self.rpc_error("snapshot mounts", &s))?
            .into_inner();
        let mounts: Vec<(String, Vec<String>)> = resp
            .mounts
            .into_iter()
            .map(|m| (m.r#type, m.options))
            .collect();
        match mounts.as_slice() {
            [(kind, options)] if kind == "overlay" => parse_overlay_options(options),
            [(kind, _)] => Err(Error::Unsupported(format!(
                "snapshotter {:?} mounts the rootfs as {kind:?}, not kernel overlayfs",
                container.snapshotter
            ))),
            _ => Err(Error::Unsupported(format!(
                "snapshotter {:?} returned {} mounts; expected one overlay mount",
                container.snapshotter,
                mounts.len()
            ))),
        }
    }

    /// A stream of a blob from the content store, or `None` when absent.
    pub async fn content_stream(
        &self,
        digest: &str,
    ) -> Result<Option<BoxStream<'static, Result<Bytes>>>> {
        let resp = self
            .client
            .content()
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await;
        let stream = match resp {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(self.rpc_error("read content", &s)),
        };
        let address = self.address.clone();
        let digest = digest.to_string();
        let mapped = stream.map(move |item| match item {
            Ok(chunk) => Ok(Bytes::from(chunk.data)),
            Err(s) => Err(Error::Containerd {
                address: address.clone(),
                message: format!("read content {digest}: {}", s.message()),
            }),
        });
        Ok(Some(mapped.boxed()))
    }

    /// The container's base image: the manifest and config whose layers
    /// are the ones its root filesystem stacks on (see `base`). Fails with
    /// [`Error::InvalidImage`] when no image of the namespace has them.
    pub async fn base_image(&self, container: &ContainerInfo) -> Result<BaseImage> {
        let chain = self.base_chain(container).await?;
        let mut visited = std::collections::HashSet::new();
        let mut named = Vec::new();
        if let Some(target) = self.image_target(&container.image).await? {
            let found = base::find_in_image(
                self,
                &container.image,
                target,
                chain.as_deref(),
                &mut visited,
                &mut named,
            )
            .await?;
            if let Some(b) = found {
                return Ok(b);
            }
        }
        // The name moved since the container started: another name (a
        // digest reference, a second tag) may still hold the original.
        let mut others = Vec::new();
        for (name, target) in self.list_images().await? {
            if name == container.image {
                continue;
            }
            let found = base::find_in_image(
                self,
                &name,
                target,
                chain.as_deref(),
                &mut visited,
                &mut others,
            )
            .await?;
            if let Some(b) = found {
                return Ok(b);
            }
        }
        Err(Error::InvalidImage(base::no_match_message(
            &container.id,
            &container.image,
            &self.namespace_name,
            chain.as_deref(),
            &named,
        )))
    }

    /// The chain ID of the image layers under the container's snapshot
    /// (`None`: no parent): its parent's name, as containerd's unpacker
    /// names committed layers, seen through a user-namespace remap.
    async fn base_chain(&self, container: &ContainerInfo) -> Result<Option<String>> {
        let parent = self
            .snapshot_parent(container, &container.snapshot_key)
            .await?;
        if parent.is_empty() {
            return Ok(None);
        }
        // A chain ID has no '-': only a name with one can be a remap.
        if parent.contains('-') {
            let grandparent = self.snapshot_parent(container, &parent).await?;
            if let Some(chain) = base::remapped_base(&parent, &grandparent) {
                return Ok(Some(chain.to_string()));
            }
        }
        Ok(Some(parent))
    }

    /// The parent of snapshot `key` of the container's snapshotter.
    async fn snapshot_parent(&self, container: &ContainerInfo, key: &str) -> Result<String> {
        let resp = self
            .client
            .snapshots()
            .stat(self.request(StatSnapshotRequest {
                snapshotter: container.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            .map_err(|s| self.rpc_error(&format!("stat snapshot {key}"), &s))?;
        let info = resp.into_inner().info.ok_or_else(|| Error::Containerd {
            address: self.address.clone(),
            message: format!("stat snapshot {key}: no info in the answer"),
        })?;
        Ok(info.parent)
    }

    /// What image `name` points at, or `None` when there is no such image.
    async fn image_target(&self, name: &str) -> Result<Option<Descriptor>> {
        let resp = self
            .client
            .images()
            .get(self.request(GetImageRequest {
                name: name.to_string(),
            }))
            .await;
        let img = match resp {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(self.rpc_error("get image", &s)),
        };
        Ok(img.and_then(|i| i.target).map(descriptor))
    }

    /// Every image of the namespace: its name and what it points at.
    async fn list_images(&self) -> Result<Vec<(String, Descriptor)>> {
        let resp = self
            .client
            .images()
            .list(self.request(ListImagesRequest {
                filters: Vec::new(),
            }))
            .await
            .map_err(|s| self.rpc_error("list images", &s))?;
        Ok(resp
            .into_inner()
            .images
            .into_iter()
            .filter_map(|i| Some((i.name, descriptor(i.target?))))
            .collect())
    }
}

impl base::Blobs for ContainerdClient {
    async fn read(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let Some(mut stream) = self.content_stream(digest).await? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Some(out))
    }
}

fn descriptor(d: containerd_client::types::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type,
        digest: d.digest,
        size: u64::try_from(d.size).unwrap_or(0),
    }
}

/// How long connecting to containerd's socket may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn validate_namespace(ns: &str) -> Result<MetadataValue<tonic::metadata::Ascii>> {
    // containerd's own rule: a label-like identifier.
    let valid = !ns.is_empty()
        && ns.len() <= 76
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && ns.as_bytes()[0].is_ascii_alphanumeric();
    if !valid {
        return Err(Error::InvalidArgument(format!(
            "invalid containerd namespace {ns:?}"
        )));
    }
    MetadataValue::try_from(ns)
        .map_err(|e| Error::InvalidArgument(format!("invalid containerd namespace {ns:?}: {e}")))
}

/// Parses the options of an overlay mount as containerd reports them.
pub fn parse_overlay_options(options: &[String]) -> Result<OverlayMount> {
    let mut upper = None;
    let mut lowers = Vec::new();
    let mut work = None;
    let mut userxattr = false;
    for opt in options {
        let (key, value) = opt.split_once('=').unwrap_or((opt.as_str(), ""));
        match key {
            "upperdir" => upper = Some(PathBuf::from(value)),
            "lowerdir" => lowers = value.split(':').map(PathBuf::from).collect(),
            "workdir" => work = Some(PathBuf::from(value)),
            "userxattr" => userxattr = true,
            // These change how the upper dir encodes the filesystem in ways a
            // plain layer cannot express (renamed dirs, data in lower layers).
            "redirect_dir" | "metacopy" if value == "on" => {
                return Err(Error::Unsupported(format!(
                    "overlay option {opt:?} is not supported"
                )));
            }
            _ => {}
        }
    }
    let upper = upper.ok_or_else(|| {
        Error::Unsupported(
            "overlay mount without upperdir (read-only rootfs): nothing to commit".to_string(),
        )
    })?;
    if !upper.is_absolute() {
        return Err(Error::Unsupported(format!(
            "overlay upperdir {} is not an absolute path",
            upper.display()
        )));
    }
    Ok(OverlayMount {
        upper,
        lowers,
        work,
        userxattr,
    })
}

/// Checks, in the container's own mount namespace, that its root is the
/// overlay whose upper dir containerd reported, so that we copy the layer the
/// processes really write to.
pub fn check_mountinfo(pid: u32, upper: &Path) -> Result<()> {
    let path = PathBuf::from(format!("/proc/{pid}/mountinfo"));
    let text = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
    check_mountinfo_text(&text, upper)
}

/// [`check_mountinfo`] on the text of a mountinfo file.
pub fn check_mountinfo_text(text: &[u8], upper: &Path) -> Result<()> {
    // The last mount on "/" is the visible root.
    let root = mountinfo::parse(text)
        .filter(|m| m.mount_point == Path::new("/"))
        .last()
        .ok_or_else(|| Error::Unsupported("container has no root mount in mountinfo".into()))?;
    if root.fs_type != "overlay" {
        return Err(Error::Unsupported(format!(
            "container root is {:?}, not overlayfs",
            root.fs_type
        )));
    }
    // The kernel may enable these by default (module parameters) even when
    // containerd did not ask: refuse before anything is frozen or copied.
    for opt in ["redirect_dir=on", "metacopy=on"] {
        if root.has_super_option(opt) {
            return Err(Error::Unsupported(format!(
                "container root overlay uses {opt}, which a layer cannot express"
            )));
        }
    }
    let want = upper.as_os_str().as_bytes();
    if !root.super_option_values("upperdir").any(|u| u == want) {
        return Err(Error::Unsupported(format!(
            "container root overlay does not use upperdir {} (super options: {})",
            upper.display(),
            root.super_options_text()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options() {
        let m = parse_overlay_options(&opts(&[
            "index=off",
            "workdir=/var/lib/c/snapshots/3/work",
            "upperdir=/var/lib/c/snapshots/3/fs",
            "lowerdir=/var/lib/c/snapshots/2/fs:/var/lib/c/snapshots/1/fs",
        ]))
        .unwrap();
        assert_eq!(m.upper, PathBuf::from("/var/lib/c/snapshots/3/fs"));
        assert_eq!(m.lowers.len(), 2);
        assert_eq!(m.work, Some(PathBuf::from("/var/lib/c/snapshots/3/work")));
        assert!(!m.userxattr);

        let e = parse_overlay_options(&opts(&["lowerdir=/a:/b"])).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        let e = parse_overlay_options(&opts(&["upperdir=/u", "metacopy=on"])).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        let e = parse_overlay_options(&opts(&["upperdir=/u", "redirect_dir=on"])).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        assert!(parse_overlay_options(&opts(&["upperdir=/u", "redirect_dir=off"])).is_ok());
    }

    #[test]
    fn mountinfo_root_overlay() {
        let text = "\
1 0 0:1 / / rw - ext4 /dev/vda rw
2000 1900 0:99 / / rw,relatime - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/var/lib/c/3/fs,workdir=/var/lib/c/3/work,index=off
2001 2000 0:5 / /proc rw - proc proc rw
";
        let text = text.as_bytes();
        check_mountinfo_text(text, Path::new("/var/lib/c/3/fs")).unwrap();
        let e = check_mountinfo_text(text, Path::new("/other/fs")).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        let meta = String::from_utf8_lossy(text).replace("index=off", "index=off,metacopy=on");
        let e = check_mountinfo_text(meta.as_bytes(), Path::new("/var/lib/c/3/fs")).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        let e = check_mountinfo_text(b"1 0 0:1 / / rw - ext4 /dev/vda rw\n", Path::new("/u"))
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
    }

    #[test]
    fn cgroups_path_from_the_runtime_spec() {
        let spec = br#"{"ociVersion":"1.1.0","process":{"args":["sh"]},
            "linux":{"cgroupsPath":"/ns/c1","namespaces":[{"type":"pid"}]}}"#;
        assert_eq!(spec_cgroups_path(spec).unwrap().as_deref(), Some("/ns/c1"));
        let systemd = br#"{"linux":{"cgroupsPath":"system.slice:cri-containerd:abc"}}"#;
        assert_eq!(
            spec_cgroups_path(systemd).unwrap().as_deref(),
            Some("system.slice:cri-containerd:abc")
        );
        for none in [
            &br#"{}"#[..],
            br#"{"linux":{}}"#,
            br#"{"linux":{"cgroupsPath":""}}"#,
        ] {
            assert_eq!(spec_cgroups_path(none).unwrap(), None);
        }
        assert!(spec_cgroups_path(b"not json").is_err());
    }

    #[test]
    fn namespaces() {
        assert!(validate_namespace("default").is_ok());
        assert!(validate_namespace("seamless-12-3").is_ok());
        assert!(validate_namespace("").is_err());
        assert!(validate_namespace("bad ns").is_err());
        assert!(validate_namespace("-x").is_err());
    }
}
