//! Pushing to a real registry (`docker-registry` on loopback), and the
//! retry of an unreachable one.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

use super::*;
use crate::image::{History, assemble};

/// A [`BlobSource`] that has nothing.
struct NoBlobSource;

impl BlobSource for NoBlobSource {
    fn open<'a>(
        &'a self,
        _digest: &'a str,
    ) -> BoxFuture<'a, Result<Option<BoxStream<'static, Result<Bytes>>>>> {
        Box::pin(async { Ok(None) })
    }
}

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn answers_v2(addr: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") && &buf[9..12] == b"200"
}

/// Starts a registry on a free loopback port; panics when it cannot.
fn start_registry() -> Registry {
    assert!(
        Path::new(REGISTRY_BIN).exists(),
        "{REGISTRY_BIN} missing: install the docker-registry package to run this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(REGISTRY_BIN)
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reg = Registry {
        child,
        addr,
        _dir: dir,
    };
    for _ in 0..200 {
        if answers_v2(&reg.addr) {
            return reg;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("registry at {} did not come up", reg.addr);
}

#[derive(Default)]
struct MemSource {
    blobs: HashMap<String, Bytes>,
    opens: AtomicUsize,
}

impl BlobSource for MemSource {
    fn open<'a>(
        &'a self,
        digest: &'a str,
    ) -> BoxFuture<'a, Result<Option<BoxStream<'static, Result<Bytes>>>>> {
        Box::pin(async move {
            self.opens.fetch_add(1, Ordering::SeqCst);
            Ok(self.blobs.get(digest).map(|b| {
                // Several pieces, to exercise streaming.
                let pieces: Vec<Result<Bytes>> = b
                    .chunks(7000)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                stream::iter(pieces).boxed()
            }))
        })
    }
}

fn blob(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn hist(by: &str) -> History {
    History {
        created: chrono::Utc::now(),
        created_by: by.into(),
        comment: None,
        author: Some("test".into()),
    }
}

fn layer_file(dir: &Path, name: &str, data: &[u8]) -> (Descriptor, PathBuf) {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    (
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: sha256_digest(data),
            size: data.len() as u64,
        },
        p,
    )
}

type Calls = Arc<Mutex<Vec<(u64, u64)>>>;

async fn push(req: &PushRequest, src: &dyn BlobSource, retries: u32) -> (Result<String>, Calls) {
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let settings = RegistrySettings {
        tuning: PushTuning {
            retries,
            // Small chunks: several PATCHes per blob.
            chunk_size: 64 * 1024,
            ..Default::default()
        },
        ..Default::default()
    };
    let r = push_image(req, &settings, src, &move |d, t| {
        c.lock().unwrap().push((d, t))
    })
    .await;
    (r, calls)
}

async fn pull_raw(client: &Client, reference: &str) -> (Bytes, String) {
    client
        .pull_manifest_raw(
            &parse_reference(reference).unwrap(),
            &RegistryAuth::Anonymous,
            &[crate::image::OCI_MANIFEST],
        )
        .await
        .unwrap()
}

async fn pull_blob(client: &Client, reference: &str, digest: &str) -> Vec<u8> {
    let mut out = Vec::new();
    client
        .pull_blob(&parse_reference(reference).unwrap(), digest, &mut out)
        .await
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the docker-registry binary"]
async fn push_to_real_registry() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let a = &reg.addr;

    // Base image: one layer that only the in-memory source has.
    let base_layer = blob(1, 300_000);
    let base_desc = Descriptor {
        media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
        digest: sha256_digest(&base_layer),
        size: base_layer.len() as u64,
    };
    let base_manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::image::DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha256_digest(b"x"), "size": 1},
        "layers": [base_desc],
    })
    .to_string();
    let base_config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b"base-diff")]},
    })
    .to_string();
    let src = MemSource {
        blobs: HashMap::from([(base_desc.digest.clone(), Bytes::from(base_layer.clone()))]),
        ..Default::default()
    };

    let new1 = blob(2, 100_000);
    let (l1, p1) = layer_file(tmp.path(), "l1", &new1);
    let ann = BTreeMap::from([("org.example.k".to_string(), "v".to_string())]);
    let img1 = assemble(
        base_manifest.as_bytes(),
        base_config.as_bytes(),
        &l1,
        &sha256_digest(b"diff1"),
        &hist("one"),
        &BTreeMap::new(),
        &ann,
    )
    .unwrap();
    let req1 = PushRequest {
        target: format!("{a}/test/app:v1"),
        base_ref: None,
        image: img1.clone(),
        new_layer: (l1.clone(), p1),
    };
    let (r, calls) = push(&req1, &src, 2).await;
    let d1 = r.unwrap();
    assert_eq!(d1, img1.manifest_descriptor.digest);
    assert_eq!(src.opens.load(Ordering::SeqCst), 1);
    let total1 = base_desc.size + l1.size + img1.config_descriptor.size;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.first(), Some(&(0, total1)));
    assert_eq!(calls.last(), Some(&(total1, total1)));
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let v1 = format!("{a}/test/app:v1");
    let (m, d) = pull_raw(&client, &v1).await;
    assert_eq!(&m[..], &img1.manifest[..]);
    assert_eq!(d, d1);
    assert_eq!(pull_blob(&client, &v1, &base_desc.digest).await, base_layer);
    assert_eq!(pull_blob(&client, &v1, &l1.digest).await, new1);
    assert_eq!(
        pull_blob(&client, &v1, &img1.config_descriptor.digest).await,
        img1.config
    );

    // A derived image in the same repository: base blobs exist, only the
    // new layer and the config go up; the source is not asked.
    let new2 = blob(3, 50_000);
    let (l2, p2) = layer_file(tmp.path(), "l2", &new2);
    let img2 = assemble(
        &img1.manifest,
        &img1.config,
        &l2,
        &sha256_digest(b"diff2"),
        &hist("two"),
        &BTreeMap::from([("l".to_string(), "2".to_string())]),
        &BTreeMap::new(),
    )
    .unwrap();
    let req2 = PushRequest {
        target: format!("{a}/test/app:v2"),
        base_ref: Some(v1.clone()),
        image: img2.clone(),
        new_layer: (l2.clone(), p2.clone()),
    };
    let (r, calls) = push(&req2, &src, 2).await;
    assert_eq!(r.unwrap(), img2.manifest_descriptor.digest);
    assert_eq!(
        src.opens.load(Ordering::SeqCst),
        1,
        "existing blobs re-read"
    );
    let total2 = l2.size + img2.config_descriptor.size;
    assert_eq!(calls.lock().unwrap().last(), Some(&(total2, total2)));

    // Pushing the same image again uploads nothing.
    let (r, calls) = push(&req2, &src, 2).await;
    assert_eq!(r.unwrap(), img2.manifest_descriptor.digest);
    assert_eq!(calls.lock().unwrap().last(), Some(&(0, 0)));

    // Another repository of the same registry: base layers are mounted
    // from test/app (not counted, not read from any source).
    let empty = MemSource::default();
    let req3 = PushRequest {
        target: format!("{a}/other/app:v2"),
        ..req2.clone()
    };
    let (r, calls) = push(&req3, &empty, 2).await;
    assert_eq!(r.unwrap(), img2.manifest_descriptor.digest);
    assert_eq!(empty.opens.load(Ordering::SeqCst), 0);
    assert_eq!(calls.lock().unwrap().last(), Some(&(total2, total2)));
    let other = format!("{a}/other/app:v2");
    let (m, _) = pull_raw(&client, &other).await;
    assert_eq!(&m[..], &img2.manifest[..]);
    assert_eq!(
        pull_blob(&client, &other, &base_desc.digest).await,
        base_layer
    );
    assert_eq!(pull_blob(&client, &other, &l1.digest).await, new1);

    // Independent check with skopeo when available.
    if Path::new("/usr/bin/skopeo").exists() {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{other}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, img2.manifest);
    }

    // Base layers missing everywhere, with no base reference: a clear
    // Registry error, and the tag is not created.
    let req4 = PushRequest {
        target: format!("{a}/third/app:v1"),
        base_ref: None,
        ..req2.clone()
    };
    let (r, _) = push(&req4, &empty, 0).await;
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    // Both base layers (base_desc, l1) are missing and go up concurrently:
    // either may be the one reported.
    assert!(
        e.to_string().contains(&base_desc.digest) || e.to_string().contains(&l1.digest),
        "{e}"
    );
    let no_tag = client
        .pull_manifest_raw(
            &parse_reference(&req4.target).unwrap(),
            &RegistryAuth::Anonymous,
            &[crate::image::OCI_MANIFEST],
        )
        .await;
    assert!(no_tag.is_err());

    // Last resort: pull base layers from the base image's registry (a
    // second registry: no mount possible, the source has nothing).
    let reg_b = start_registry();
    let req5 = PushRequest {
        target: format!("{}/fourth/app:v2", reg_b.addr),
        base_ref: Some(v1.clone()),
        ..req2.clone()
    };
    let opens_before = empty.opens.load(Ordering::SeqCst);
    let (r, calls) = push(&req5, &empty, 0).await;
    assert_eq!(r.unwrap(), img2.manifest_descriptor.digest);
    // Asked for both base layers, had neither.
    assert_eq!(empty.opens.load(Ordering::SeqCst), opens_before + 2);
    let total5 = base_desc.size + l1.size + total2;
    assert_eq!(calls.lock().unwrap().last(), Some(&(total5, total5)));
    let b = format!("{}/fourth/app:v2", reg_b.addr);
    assert_eq!(pull_blob(&client, &b, &base_desc.digest).await, base_layer);
    drop(reg_b);

    // A wrong size in the descriptor of the new layer is caught.
    let mut bad = req2.clone();
    bad.target = format!("{a}/fifth/app:v1");
    bad.new_layer.0.size += 1;
    let (r, _) = push(&bad, &src, 0).await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");

    drop(reg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_registry_after_retries() {
    let tmp = tempfile::tempdir().unwrap();
    let (l, p) = layer_file(tmp.path(), "l", b"data");
    let img = assemble(
        br#"{"schemaVersion":2,"layers":[]}"#,
        br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#,
        &l,
        &sha256_digest(b"d"),
        &hist("x"),
        &BTreeMap::new(),
        &BTreeMap::new(),
    )
    .unwrap();
    let req = PushRequest {
        target: format!("127.0.0.1:{}/x/y:z", free_port()),
        base_ref: None,
        image: img,
        new_layer: (l, p),
    };
    let start = std::time::Instant::now();
    let (r, _) = push(&req, &NoBlobSource, 2).await;
    let e = r.unwrap_err();
    assert!(matches!(e, Error::RegistryUnreachable { .. }), "{e}");
    assert!(e.to_string().contains("3 attempt"), "{e}");
    // 250 ms + 500 ms of backoff, jittered down by up to half.
    assert!(start.elapsed() >= Duration::from_millis(375));

    let bad = PushRequest {
        target: "127.0.0.1:1/UPPER:x".into(),
        ..req
    };
    let (r, _) = push(&bad, &NoBlobSource, 0).await;
    assert!(matches!(r, Err(Error::InvalidReference { .. })));
}
