//! Image config and manifest assembly: the base image plus one new layer.
//!
//! Pure logic on JSON bytes. The base config is kept as a
//! [`serde_json::Value`] so that fields this crate does not know survive
//! unchanged; only `rootfs.diff_ids`, `history`, `created` and
//! `config.Labels` are touched.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// One history entry for the new layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// When the layer was created; also becomes the config's `created`.
    pub created: DateTime<Utc>,
    /// What created it (shown by `docker history`).
    pub created_by: String,
    /// Free-form comment (the commit message).
    pub comment: Option<String>,
    /// The author.
    pub author: Option<String>,
}

/// A blob descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The blob's media type.
    pub media_type: String,
    /// `sha256:<hex>` of the blob.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The assembled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewImage {
    /// The new config JSON.
    pub config: Vec<u8>,
    /// Descriptor of [`Self::config`].
    pub config_descriptor: Descriptor,
    /// The new manifest JSON.
    pub manifest: Vec<u8>,
    /// Descriptor of [`Self::manifest`]; its digest is the image's digest.
    pub manifest_descriptor: Descriptor,
    /// The base image's layers, in order (the new layer is not included).
    pub base_layers: Vec<Descriptor>,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The OCI architecture name of the host (`GOARCH` spelling).
pub fn host_architecture() -> &'static str {
    oci_arch(std::env::consts::ARCH)
}

fn oci_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        // Rust names the little-endian variant powerpc64 too; Linux
        // containers on ppc64 are all little-endian.
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        "mips64" => "mips64le",
        "mips" => "mipsle",
        other => other,
    }
}

/// Whether a manifest document is an OCI index or a Docker manifest list.
///
/// `media_type` is what the registry or content store said (may be empty);
/// when it is not conclusive the document's own `mediaType` and shape decide.
pub fn is_index(media_type: &str, json: &[u8]) -> bool {
    match media_type {
        OCI_INDEX | DOCKER_MANIFEST_LIST => return true,
        OCI_MANIFEST | DOCKER_MANIFEST => return false,
        _ => {}
    }
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(json) else {
        return false;
    };
    match doc.get("mediaType").and_then(Value::as_str) {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        // An index has `manifests` and no `layers`/`config`.
        _ => doc.get("manifests").is_some_and(Value::is_array) && doc.get("layers").is_none(),
    }
}

/// The manifests an OCI index or Docker manifest list names, those for the
/// host platform (`linux` + the host architecture) first, best variant
/// first, then every other entry in index order.
///
/// Entries that are not well-formed descriptors are left out: they cannot be
/// a base image, and one bad entry must not hide the others.
pub fn index_manifests(index_json: &[u8]) -> Result<Vec<Descriptor>> {
    index_manifests_for(index_json, "linux", host_architecture())
}

fn index_manifests_for(index_json: &[u8], os: &str, arch: &str) -> Result<Vec<Descriptor>> {
    let doc: Value = serde_json::from_slice(index_json)
        .map_err(|e| Error::InvalidImage(format!("image index is not JSON: {e}")))?;
    let manifests = doc
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::InvalidImage("image index has no manifests array".into()))?;
    let mut ranked: Vec<(u8, Descriptor)> = manifests
        .iter()
        .filter_map(|m| {
            let desc: Descriptor = serde_json::from_value(m.clone()).ok()?;
            validate_digest(&desc.digest).ok()?;
            Some((platform_rank(m.get("platform"), os, arch), desc))
        })
        .collect();
    // Stable: equal ranks keep their index order, so the first of several
    // indistinguishable variants wins, as container runtimes do.
    ranked.sort_by_key(|(rank, _)| *rank);
    Ok(ranked.into_iter().map(|(_, d)| d).collect())
}

/// How well an index entry's platform fits `os`/`arch`: 0 is best; other
/// platforms and entries without one rank last.
fn platform_rank(platform: Option<&Value>, os: &str, arch: &str) -> u8 {
    const OTHER: u8 = 3;
    let Some(p) = platform else { return OTHER };
    let p_os = p.get("os").and_then(Value::as_str);
    let p_arch = p.get("architecture").and_then(Value::as_str);
    if p_os != Some(os) || p_arch != Some(arch) {
        return OTHER;
    }
    // arm64 images are published as plain `arm64` or `arm64/v8`; other
    // variants (e.g. arm/v6 vs arm/v7) cannot be told apart without reading
    // the CPU.
    match (arch, p.get("variant").and_then(Value::as_str)) {
        ("arm64", Some("v8")) => 0,
        (_, None) => 1,
        _ => 2,
    }
}

/// The chain ID of a stack of layers given by their diff IDs, bottom first
/// (OCI image spec, "ChainID"): `ChainID(L0) = DiffID(L0)`,
/// `ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))`. It is the
/// name containerd gives the committed snapshot of those layers. `None` for
/// no layers (a snapshot without parent).
pub fn chain_id<S: AsRef<str>>(diff_ids: &[S]) -> Option<String> {
    let (first, rest) = diff_ids.split_first()?;
    let mut chain = first.as_ref().to_string();
    for diff_id in rest {
        chain = sha256_digest(format!("{chain} {}", diff_id.as_ref()).as_bytes());
    }
    Some(chain)
}

/// The `rootfs.diff_ids` of an image config, each a valid digest.
pub fn config_diff_ids(config: &[u8]) -> Result<Vec<String>> {
    let doc: Value = serde_json::from_slice(config)
        .map_err(|e| Error::InvalidImage(format!("image config is not JSON: {e}")))?;
    let ids = match &doc["rootfs"]["diff_ids"] {
        // An image without layers may leave the list out.
        Value::Null => return Ok(Vec::new()),
        Value::Array(ids) => ids,
        _ => {
            return Err(Error::InvalidImage(
                "image config rootfs.diff_ids is not an array".into(),
            ));
        }
    };
    ids.iter()
        .map(|v| {
            let d = v.as_str().ok_or_else(|| {
                Error::InvalidImage(format!("image config diff_id {v} is not a string"))
            })?;
            validate_digest(d)?;
            Ok(d.to_string())
        })
        .collect()
}

/// The config digest a manifest names.
pub fn manifest_config_digest(manifest: &[u8]) -> Result<String> {
    let doc: Value = serde_json::from_slice(manifest)
        .map_err(|e| Error::InvalidImage(format!("manifest is not JSON: {e}")))?;
    let digest = doc["config"]["digest"]
        .as_str()
        .ok_or_else(|| Error::InvalidImage("manifest has no config digest".into()))?;
    validate_digest(digest)?;
    Ok(digest.to_string())
}

fn validate_digest(d: &str) -> Result<()> {
    match d.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(Error::InvalidImage(format!("bad digest {d:?}"))),
    }
}

fn object_mut<'a>(v: &'a mut Value, what: &str) -> Result<&'a mut Map<String, Value>> {
    v.as_object_mut()
        .ok_or_else(|| Error::InvalidImage(format!("{what} is not a JSON object")))
}

/// Gets `obj[key]` as an object, creating it when absent or null.
fn child_object<'a>(
    obj: &'a mut Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<&'a mut Map<String, Value>> {
    let slot = obj.entry(key.to_string()).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    object_mut(slot, what)
}

/// Gets `obj[key]` as an array, creating it when absent or null.
fn child_array<'a>(
    obj: &'a mut Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<&'a mut Vec<Value>> {
    let slot = obj.entry(key.to_string()).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut()
        .ok_or_else(|| Error::InvalidImage(format!("{what} is not a JSON array")))
}

fn to_json(v: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Internal(format!("serialize JSON: {e}")))
}

/// Builds the new config and manifest.
///
/// Config: the base config with `diff_id` appended to `rootfs.diff_ids`, a
/// history entry appended, `created` set to `history.created`, and `labels`
/// merged into `config.Labels`. Manifest: an OCI image manifest listing the
/// base layers (descriptors copied as they are, Docker media types
/// included) followed by `new_layer`, with `annotations`.
///
/// Fails with [`Error::InvalidImage`] when the base manifest's layer count
/// differs from the base config's `diff_ids` count, or on malformed JSON.
pub fn assemble(
    base_manifest: &[u8],
    base_config: &[u8],
    new_layer: &Descriptor,
    diff_id: &str,
    history: &History,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<NewImage> {
    validate_digest(&new_layer.digest)?;
    validate_digest(diff_id)?;

    let manifest_doc: Value = serde_json::from_slice(base_manifest)
        .map_err(|e| Error::InvalidImage(format!("base manifest is not JSON: {e}")))?;
    if is_index("", base_manifest) {
        return Err(Error::InvalidImage(
            "base manifest is an index; select a platform manifest first".into(),
        ));
    }
    let base_layer_values: Vec<Value> = manifest_doc
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| Error::InvalidImage("base manifest has no layers array".into()))?;
    let mut base_layers = Vec::with_capacity(base_layer_values.len());
    for l in &base_layer_values {
        let d: Descriptor = serde_json::from_value(l.clone()).map_err(|e| {
            Error::InvalidImage(format!("bad layer descriptor in base manifest: {e}"))
        })?;
        validate_digest(&d.digest)?;
        base_layers.push(d);
    }

    let mut config: Value = serde_json::from_slice(base_config)
        .map_err(|e| Error::InvalidImage(format!("base config is not JSON: {e}")))?;
    let root = object_mut(&mut config, "base config")?;

    let created = history.created.to_rfc3339_opts(SecondsFormat::AutoSi, true);

    let rootfs = child_object(root, "rootfs", "config rootfs")?;
    rootfs
        .entry("type".to_string())
        .or_insert_with(|| Value::String("layers".into()));
    let diff_ids = child_array(rootfs, "diff_ids", "config rootfs.diff_ids")?;
    if diff_ids.len() != base_layers.len() {
        return Err(Error::InvalidImage(format!(
            "base manifest has {} layers but its config has {} diff_ids",
            base_layers.len(),
            diff_ids.len()
        )));
    }
    diff_ids.push(Value::String(diff_id.to_string()));

    let mut entry = Map::new();
    entry.insert("created".into(), Value::String(created.clone()));
    entry.insert(
        "created_by".into(),
        Value::String(history.created_by.clone()),
    );
    if let Some(c) = &history.comment {
        entry.insert("comment".into(), Value::String(c.clone()));
    }
    if let Some(a) = &history.author {
        entry.insert("author".into(), Value::String(a.clone()));
    }
    child_array(root, "history", "config history")?.push(Value::Object(entry));

    root.insert("created".into(), Value::String(created));

    if !labels.is_empty() {
        let exec = child_object(root, "config", "config.config")?;
        let lab = child_object(exec, "Labels", "config.config.Labels")?;
        for (k, v) in labels {
            lab.insert(k.clone(), Value::String(v.clone()));
        }
    }

    let config_bytes = to_json(&config)?;
    let config_descriptor = Descriptor {
        media_type: OCI_CONFIG.to_string(),
        digest: sha256_digest(&config_bytes),
        size: config_bytes.len() as u64,
    };

    let mut layers = base_layer_values;
    layers.push(
        serde_json::to_value(new_layer)
            .map_err(|e| Error::Internal(format!("serialize descriptor: {e}")))?,
    );
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor,
        "layers": layers,
    });
    if !annotations.is_empty() {
        object_mut(&mut manifest, "manifest")?.insert("annotations".into(), json!(annotations));
    }
    let manifest_bytes = to_json(&manifest)?;
    let manifest_descriptor = Descriptor {
        media_type: OCI_MANIFEST.to_string(),
        digest: sha256_digest(&manifest_bytes),
        size: manifest_bytes.len() as u64,
    };

    Ok(NewImage {
        config: config_bytes,
        config_descriptor,
        manifest: manifest_bytes,
        manifest_descriptor,
        base_layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn base_manifest() -> Vec<u8> {
        json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d('c'), "size": 100},
            "layers": [
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": d('1'), "size": 10},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d('2'), "size": 20,
                 "annotations": {"x": "y"}}
            ]
        })
        .to_string()
        .into_bytes()
    }

    fn base_config() -> Vec<u8> {
        json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2020-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/bin"], "Labels": {"old": "1", "keep": "k"}},
            "rootfs": {"type": "layers", "diff_ids": [d('a'), d('b')]},
            "history": [{"created_by": "base"}, {"created_by": "meta", "empty_layer": true}, {"created_by": "b2"}],
            "x-unknown": {"nested": [1, 2, 3]}
        })
        .to_string()
        .into_bytes()
    }

    fn hist() -> History {
        History {
            created: Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap(),
            created_by: "seamless-snapshot commit".into(),
            comment: Some("msg".into()),
            author: None,
        }
    }

    fn new_layer() -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            digest: d('9'),
            size: 99,
        }
    }

    #[test]
    fn assemble_builds_config_and_manifest() {
        let labels = BTreeMap::from([
            ("old".to_string(), "2".to_string()),
            ("new".into(), "n".into()),
        ]);
        let ann = BTreeMap::from([(
            "org.opencontainers.image.base.name".to_string(),
            "docker.io/library/x:1".to_string(),
        )]);
        let img = assemble(
            &base_manifest(),
            &base_config(),
            &new_layer(),
            &d('8'),
            &hist(),
            &labels,
            &ann,
        )
        .unwrap();

        let cfg: Value = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"], json!([d('a'), d('b'), d('8')]));
        assert_eq!(cfg["created"], "2024-05-06T07:08:09Z");
        let h = cfg["history"].as_array().unwrap();
        assert_eq!(h.len(), 4);
        assert_eq!(
            h[3],
            json!({"created": "2024-05-06T07:08:09Z", "created_by": "seamless-snapshot commit", "comment": "msg"})
        );
        assert_eq!(
            cfg["config"]["Labels"],
            json!({"old": "2", "keep": "k", "new": "n"})
        );
        assert_eq!(cfg["config"]["Env"], json!(["PATH=/bin"]));
        assert_eq!(cfg["x-unknown"], json!({"nested": [1, 2, 3]}));

        assert_eq!(img.config_descriptor.digest, sha256_digest(&img.config));
        assert_eq!(img.config_descriptor.size, img.config.len() as u64);
        assert_eq!(img.config_descriptor.media_type, OCI_CONFIG);

        let man: Value = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(man["schemaVersion"], 2);
        assert_eq!(man["mediaType"], OCI_MANIFEST);
        assert_eq!(man["config"]["digest"], img.config_descriptor.digest);
        assert_eq!(man["config"]["mediaType"], OCI_CONFIG);
        let layers = man["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 3);
        assert_eq!(
            layers[0]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        assert_eq!(layers[1]["annotations"], json!({"x": "y"}));
        assert_eq!(
            layers[2],
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": d('9'), "size": 99})
        );
        assert_eq!(
            man["annotations"]["org.opencontainers.image.base.name"],
            "docker.io/library/x:1"
        );
        assert_eq!(img.manifest_descriptor.digest, sha256_digest(&img.manifest));
        assert_eq!(img.manifest_descriptor.size, img.manifest.len() as u64);
        assert_eq!(img.base_layers.len(), 2);
        assert_eq!(img.base_layers[1].digest, d('2'));

        // Deterministic.
        let again = assemble(
            &base_manifest(),
            &base_config(),
            &new_layer(),
            &d('8'),
            &hist(),
            &labels,
            &ann,
        )
        .unwrap();
        assert_eq!(again, img);
    }

    #[test]
    fn assemble_without_labels_or_annotations_and_minimal_config() {
        let m = json!({"schemaVersion": 2, "layers": []}).to_string();
        let c = json!({"architecture": "arm64", "os": "linux", "config": null}).to_string();
        let img = assemble(
            m.as_bytes(),
            c.as_bytes(),
            &new_layer(),
            &d('8'),
            &hist(),
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
        .unwrap();
        let cfg: Value = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(
            cfg["rootfs"],
            json!({"type": "layers", "diff_ids": [d('8')]})
        );
        assert_eq!(cfg["history"].as_array().unwrap().len(), 1);
        assert!(cfg["config"].is_null());
        let man: Value = serde_json::from_slice(&img.manifest).unwrap();
        assert!(man.get("annotations").is_none());
        assert_eq!(man["layers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn assemble_rejects_layer_count_mismatch() {
        let c = json!({"rootfs": {"type": "layers", "diff_ids": [d('a')]}}).to_string();
        let e = assemble(
            &base_manifest(),
            c.as_bytes(),
            &new_layer(),
            &d('8'),
            &hist(),
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidImage(_)), "{e}");
        assert!(e.to_string().contains("2 layers"), "{e}");
    }

    #[test]
    fn assemble_rejects_bad_input() {
        let none = BTreeMap::new();
        assert!(matches!(
            assemble(
                b"nope",
                &base_config(),
                &new_layer(),
                &d('8'),
                &hist(),
                &none,
                &none
            ),
            Err(Error::InvalidImage(_))
        ));
        assert!(matches!(
            assemble(
                &base_manifest(),
                b"[]",
                &new_layer(),
                &d('8'),
                &hist(),
                &none,
                &none
            ),
            Err(Error::InvalidImage(_))
        ));
        assert!(matches!(
            assemble(
                &base_manifest(),
                &base_config(),
                &new_layer(),
                "sha256:xyz",
                &hist(),
                &none,
                &none
            ),
            Err(Error::InvalidImage(_))
        ));
        let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).to_string();
        assert!(matches!(
            assemble(
                idx.as_bytes(),
                &base_config(),
                &new_layer(),
                &d('8'),
                &hist(),
                &none,
                &none
            ),
            Err(Error::InvalidImage(_))
        ));
    }

    fn index() -> Vec<u8> {
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d('5'), "size": 5, "platform": {"os": "unknown", "architecture": "unknown"}},
                {"mediaType": OCI_MANIFEST, "digest": d('1'), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": OCI_MANIFEST, "digest": d('2'), "size": 2, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"mediaType": OCI_MANIFEST, "digest": d('3'), "size": 3, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": OCI_MANIFEST, "digest": d('4'), "size": 4, "platform": {"os": "windows", "architecture": "amd64"}}
            ]
        })
        .to_string()
        .into_bytes()
    }

    fn digests(v: &[Descriptor]) -> Vec<String> {
        v.iter().map(|d| d.digest.clone()).collect()
    }

    #[test]
    fn index_manifests_host_platform_first() {
        let amd = index_manifests_for(&index(), "linux", "amd64").unwrap();
        assert_eq!(
            amd[0],
            Descriptor {
                media_type: OCI_MANIFEST.into(),
                digest: d('1'),
                size: 1
            }
        );
        // Every other entry follows, in index order.
        assert_eq!(digests(&amd), [d('1'), d('5'), d('2'), d('3'), d('4')]);
        assert_eq!(
            digests(&index_manifests_for(&index(), "linux", "arm64").unwrap()),
            [d('3'), d('5'), d('1'), d('2'), d('4')]
        );
        // No entry for the platform: all of them, in index order.
        assert_eq!(
            digests(&index_manifests_for(&index(), "linux", "s390x").unwrap()),
            [d('5'), d('1'), d('2'), d('3'), d('4')]
        );
        // The host (amd64 or arm64 here) comes first.
        let host = index_manifests(&index()).unwrap();
        assert!(host[0].digest == d('1') || host[0].digest == d('3'));
        assert!(matches!(
            index_manifests(b"{}"),
            Err(Error::InvalidImage(_))
        ));
        // A malformed entry is left out, the others kept.
        let idx = json!({"manifests": [
            {"mediaType": OCI_MANIFEST, "digest": "sha256:nothex", "size": 1},
            {"digest": d('2')},
            {"mediaType": OCI_MANIFEST, "digest": d('3'), "size": 3}
        ]})
        .to_string();
        assert_eq!(digests(&index_manifests(idx.as_bytes()).unwrap()), [d('3')]);
    }

    #[test]
    fn chain_ids() {
        // Computed by hand:
        //   printf '%s' "$A $B" | sha256sum
        //   printf '%s' "sha256:<that> $C" | sha256sum
        // which also matched the snapshot names containerd 1.6 gave the
        // layers of a two-layer image on the test rig.
        let a = "sha256:a7da2161504b62212c7511b6157796fb258af90bddbce88d28faebbffb680cff";
        let b = "sha256:e59188c6156adbd82ef9e30d932dc656ec3463f8f970c8a1502f5fb09443ef81";
        let c = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(chain_id::<&str>(&[]), None);
        assert_eq!(chain_id(&[a]).as_deref(), Some(a));
        assert_eq!(
            chain_id(&[a, b]).as_deref(),
            Some("sha256:3dfdb1283697597c73054b61b49434a915e68aa8e6fa182370c929e55dc0fe6e")
        );
        assert_eq!(
            chain_id(&[a, b, c]).as_deref(),
            Some("sha256:98de8ddb143fac64f1c34607cd4ec625c26a5e73cbe338e9452deaea97fb12af")
        );
        // Order matters.
        assert_ne!(chain_id(&[b, a]), chain_id(&[a, b]));
    }

    #[test]
    fn config_diff_ids_and_manifest_config() {
        assert_eq!(config_diff_ids(&base_config()).unwrap(), [d('a'), d('b')]);
        assert!(config_diff_ids(b"{}").unwrap().is_empty());
        for bad in [
            &b"nope"[..],
            br#"{"rootfs": {"diff_ids": "x"}}"#,
            br#"{"rootfs": {"diff_ids": [1]}}"#,
            br#"{"rootfs": {"diff_ids": ["sha256:short"]}}"#,
        ] {
            assert!(
                matches!(config_diff_ids(bad), Err(Error::InvalidImage(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(manifest_config_digest(&base_manifest()).unwrap(), d('c'));
        assert!(matches!(
            manifest_config_digest(br#"{"layers": []}"#),
            Err(Error::InvalidImage(_))
        ));
    }

    #[test]
    fn arch_names() {
        assert_eq!(oci_arch("x86_64"), "amd64");
        assert_eq!(oci_arch("aarch64"), "arm64");
        assert_eq!(oci_arch("s390x"), "s390x");
    }

    #[test]
    fn index_detection() {
        assert!(is_index(OCI_INDEX, b""));
        assert!(is_index(DOCKER_MANIFEST_LIST, b""));
        assert!(!is_index(OCI_MANIFEST, &index()));
        assert!(is_index("", &index()));
        assert!(is_index(
            "application/octet-stream",
            br#"{"manifests": []}"#
        ));
        assert!(!is_index("", &base_manifest()));
        assert!(!is_index("", b"not json"));
    }

    #[test]
    fn digest_of_empty_and_abc() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_digest(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
