//! Which image a container's root filesystem really stacks on.
//!
//! A container records its image by *name*, and names move: a later pull or
//! import re-tags them, and an index names a manifest per platform while the
//! container may run a non-host one. What does not move is the container's
//! snapshot: its parent is the committed snapshot of the image's layers,
//! which containerd's unpacker names after the layers' chain ID (OCI image
//! spec). So the base is the manifest whose config's `diff_ids` have that
//! chain ID, looked for under the container's image name first (every
//! manifest of an index, the host platform's first, so the ordinary case
//! reads what it always did), then under every other image of the
//! namespace. When none has it the commit fails before anything is frozen:
//! a layer stacked on other layers would make an image that never existed.
//!
//! Invariant: a [`BaseImage`] returned here has a config whose layers'
//! chain ID is the container snapshot's parent.

use std::collections::HashSet;
use std::future::Future;

use crate::error::Result;
use crate::image::{self, Descriptor};

use super::BaseImage;

/// How deep nested indexes are followed.
const MAX_INDEX_DEPTH: usize = 4;

/// A content store, read whole blob by blob (manifests, configs, indexes).
pub(crate) trait Blobs {
    /// The blob's bytes, or `None` when the store does not have it (content
    /// of platforms that were never pulled, say).
    fn read(&self, digest: &str) -> impl Future<Output = Result<Option<Vec<u8>>>>;
}

/// One manifest looked at, for the error message when nothing matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The manifest's digest.
    pub manifest: String,
    /// The chain ID of its config's layers (`None`: no layers).
    pub chain: Option<String>,
}

/// Looks through `target` (the descriptor an image name points at: a
/// manifest, or an index followed to every manifest it names) for the
/// manifest whose layers have chain ID `chain`.
///
/// Manifests whose digest is in `visited` are skipped and every manifest
/// looked at is added, so one manifest under several names is read once.
/// Blobs the store lacks and documents that are not a well-formed manifest
/// or config are skipped (they cannot be the base); each manifest whose
/// chain ID was computed is pushed to `seen`.
pub(crate) async fn find_in_image<B: Blobs>(
    blobs: &B,
    name: &str,
    target: Descriptor,
    chain: Option<&str>,
    visited: &mut HashSet<String>,
    seen: &mut Vec<Seen>,
) -> Result<Option<BaseImage>> {
    // Depth first, in index order: the host platform's manifest is the
    // first one read.
    let mut stack = vec![(target, 0)];
    while let Some((desc, depth)) = stack.pop() {
        if !visited.insert(desc.digest.clone()) {
            continue;
        }
        let Some(doc) = blobs.read(&desc.digest).await? else {
            continue;
        };
        if image::is_index(&desc.media_type, &doc) {
            if depth < MAX_INDEX_DEPTH {
                let Ok(entries) = image::index_manifests(&doc) else {
                    continue;
                };
                stack.extend(entries.into_iter().rev().map(|d| (d, depth + 1)));
            }
            continue;
        }
        let Ok(config_digest) = image::manifest_config_digest(&doc) else {
            continue;
        };
        let Some(config) = blobs.read(&config_digest).await? else {
            continue;
        };
        let Ok(diff_ids) = image::config_diff_ids(&config) else {
            continue;
        };
        let manifest_chain = image::chain_id(&diff_ids);
        if manifest_chain.as_deref() == chain {
            return Ok(Some(BaseImage {
                name: name.to_string(),
                manifest_descriptor: desc,
                manifest: doc,
                config,
            }));
        }
        seen.push(Seen {
            manifest: desc.digest,
            chain: manifest_chain,
        });
    }
    Ok(None)
}

/// The image layers' snapshot under a snapshot that containerd made to
/// shift the ownership of an image for a user namespace
/// (`WithRemappedSnapshot`, `ctr run --uidmap`): such a snapshot is named
/// `<chain ID>-<uid>-<gid>` and its parent is that chain ID. Its content
/// is only the image's own files with shifted owners, not a layer of the
/// image, so the base is its parent. `None` when `name` is not of that form.
pub(crate) fn remapped_base<'a>(name: &'a str, parent: &str) -> Option<&'a str> {
    let (rest, gid) = name.rsplit_once('-')?;
    let (chain, uid) = rest.rsplit_once('-')?;
    let is_id = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u32>().is_ok()
    };
    (is_id(uid) && is_id(gid) && chain == parent && chain.starts_with("sha256:")).then_some(chain)
}

/// The failure when no image matches: names the container, its image, the
/// chain ID wanted and what its image name holds now.
pub(crate) fn no_match_message(
    container: &str,
    image_name: &str,
    namespace: &str,
    chain: Option<&str>,
    named: &[Seen],
) -> String {
    let wanted = match chain {
        Some(c) => format!("the layers with chain ID {c} (the parent of its snapshot)"),
        None => "no layers (its snapshot has no parent)".to_string(),
    };
    let now = if named.is_empty() {
        format!(
            "{image_name:?} is no longer an image, or its manifests are not in the content store"
        )
    } else {
        let list: Vec<String> = named
            .iter()
            .take(3)
            .map(|s| {
                format!(
                    "manifest {} with chain ID {}",
                    s.manifest,
                    s.chain.as_deref().unwrap_or("(no layers)")
                )
            })
            .collect();
        let more = named.len().saturating_sub(3);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!("{image_name:?} now names {}{more}", list.join(", "))
    };
    format!(
        "cannot identify the base image of container {container}: its root filesystem \
         stacks on {wanted}, which neither its image {image_name:?} nor any other image in \
         containerd namespace {namespace} has ({now}): the image was re-tagged or removed \
         after the container started"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{OCI_INDEX, OCI_MANIFEST, sha256_digest};
    use serde_json::json;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// An in-memory content store that records what was read.
    #[derive(Default)]
    struct Store {
        blobs: HashMap<String, Vec<u8>>,
        reads: RefCell<Vec<String>>,
    }

    impl Store {
        fn put(&mut self, bytes: Vec<u8>) -> Descriptor {
            let digest = sha256_digest(&bytes);
            let size = bytes.len() as u64;
            self.blobs.insert(digest.clone(), bytes);
            Descriptor {
                media_type: String::new(),
                digest,
                size,
            }
        }

        /// A manifest + config for layers `diff_ids` on `arch`.
        fn image(&mut self, arch: &str, diff_ids: &[String]) -> Descriptor {
            let config = json!({"architecture": arch, "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": diff_ids}});
            let config = self.put(config.to_string().into_bytes());
            let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": image::OCI_CONFIG, "digest": config.digest, "size": config.size},
                "layers": []});
            let mut d = self.put(manifest.to_string().into_bytes());
            d.media_type = OCI_MANIFEST.into();
            d
        }

        fn index(&mut self, entries: &[(&str, &Descriptor)]) -> Descriptor {
            let manifests: Vec<_> = entries
                .iter()
                .map(|(arch, d)| {
                    json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size,
                    "platform": {"os": "linux", "architecture": arch}})
                })
                .collect();
            let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
            let mut d = self.put(idx.to_string().into_bytes());
            d.media_type = OCI_INDEX.into();
            d
        }
    }

    impl Blobs for Store {
        async fn read(&self, digest: &str) -> Result<Option<Vec<u8>>> {
            self.reads.borrow_mut().push(digest.to_string());
            Ok(self.blobs.get(digest).cloned())
        }
    }

    fn diff(n: u8) -> String {
        sha256_digest(&[n])
    }

    fn find(store: &Store, target: &Descriptor, chain: Option<&str>) -> Option<BaseImage> {
        let mut visited = HashSet::new();
        let mut seen = Vec::new();
        block_on(find_in_image(
            store,
            "img",
            target.clone(),
            chain,
            &mut visited,
            &mut seen,
        ))
        .unwrap()
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn picks_the_manifest_whose_layers_match_among_platforms() {
        let mut s = Store::default();
        let host = image::host_architecture();
        let other = if host == "amd64" { "arm64" } else { "amd64" };
        let host_layers = [diff(1), diff(2)];
        let other_layers = [diff(3), diff(4)];
        let host_m = s.image(host, &host_layers);
        let other_m = s.image(other, &other_layers);
        // The other platform first in the index: the host's is still read first.
        let idx = s.index(&[(other, &other_m), (host, &host_m)]);

        // The ordinary case: index, host manifest, its config; nothing else.
        let b = find(&s, &idx, image::chain_id(&host_layers).as_deref()).unwrap();
        assert_eq!(b.manifest_descriptor.digest, host_m.digest);
        assert_eq!(b.name, "img");
        assert_eq!(s.reads.borrow().len(), 3, "{:?}", s.reads.borrow());

        // A container of the other platform gets the other manifest.
        let b = find(&s, &idx, image::chain_id(&other_layers).as_deref()).unwrap();
        assert_eq!(b.manifest_descriptor.digest, other_m.digest);
        assert_eq!(
            image::config_diff_ids(&b.config).unwrap(),
            other_layers.to_vec()
        );

        // Same first layer, different stack: no match. Nor the bottom layer
        // alone (a chain ID is of the whole stack).
        let partial = [diff(1), diff(5)];
        assert!(find(&s, &idx, image::chain_id(&partial).as_deref()).is_none());
        assert!(find(&s, &idx, Some(&diff(1))).is_none());
        assert!(find(&s, &idx, None).is_none());
    }

    #[test]
    fn skips_missing_content_follows_nested_indexes_and_lists_what_it_saw() {
        let mut s = Store::default();
        let wanted = [diff(7)];
        let m_missing = s.image("amd64", &[diff(8)]);
        s.blobs.remove(&m_missing.digest);
        let m_noconfig = s.image("arm64", &[diff(9)]);
        let cfg = image::manifest_config_digest(&s.blobs[&m_noconfig.digest]).unwrap();
        s.blobs.remove(&cfg);
        let m_bad = s.put(b"not json".to_vec());
        let m_want = s.image("s390x", &wanted);
        let m_empty = s.image("riscv64", &[]);
        let inner = s.index(&[("s390x", &m_want), ("riscv64", &m_empty)]);
        let outer = s.index(&[
            ("amd64", &m_missing),
            ("arm64", &m_noconfig),
            ("ppc64le", &m_bad),
            ("s390x", &inner),
        ]);

        let b = find(&s, &outer, image::chain_id(&wanted).as_deref()).unwrap();
        assert_eq!(b.manifest_descriptor.digest, m_want.digest);
        // An image without layers matches a snapshot without parent.
        let b = find(&s, &outer, None).unwrap();
        assert_eq!(b.manifest_descriptor.digest, m_empty.digest);

        let mut visited = HashSet::new();
        let mut seen = Vec::new();
        let none = block_on(find_in_image(
            &s,
            "img",
            outer.clone(),
            Some(&diff(99)),
            &mut visited,
            &mut seen,
        ))
        .unwrap();
        assert!(none.is_none());
        assert_eq!(
            seen,
            [
                Seen {
                    manifest: m_want.digest.clone(),
                    chain: Some(diff(7))
                },
                Seen {
                    manifest: m_empty.digest.clone(),
                    chain: None
                },
            ]
        );
        // What was visited is not read again under another name.
        let before = s.reads.borrow().len();
        let again = block_on(find_in_image(
            &s,
            "other-name",
            m_want.clone(),
            Some(&diff(7)),
            &mut visited,
            &mut seen,
        ))
        .unwrap();
        assert!(again.is_none());
        assert_eq!(s.reads.borrow().len(), before);

        let msg = no_match_message("c1", "img", "ns", Some(&diff(99)), &seen);
        assert!(msg.contains("container c1"), "{msg}");
        assert!(msg.contains("\"img\""), "{msg}");
        assert!(msg.contains(&diff(99)), "{msg}");
        assert!(msg.contains(&m_want.digest), "{msg}");
        assert!(msg.contains("namespace ns"), "{msg}");
    }

    #[test]
    fn a_single_manifest_target() {
        let mut s = Store::default();
        let m = s.image("amd64", &[diff(1)]);
        assert!(find(&s, &m, Some(&diff(1))).is_some());
        assert!(find(&s, &m, Some(&diff(2))).is_none());
    }

    #[test]
    fn remapped_snapshot_names() {
        let c = "sha256:a7da2161504b62212c7511b6157796fb258af90bddbce88d28faebbffb680cff";
        let remapped = format!("{c}-100000-100000");
        assert_eq!(remapped_base(&remapped, c), Some(c));
        // Its parent must be the chain ID it is named after.
        assert_eq!(remapped_base(&remapped, "sha256:other"), None);
        assert_eq!(remapped_base(c, ""), None);
        assert_eq!(remapped_base(&format!("{c}-1-x"), c), None);
        assert_eq!(remapped_base(&format!("{c}--1"), c), None);
        assert_eq!(remapped_base(&format!("{c}-99999999999-1"), c), None);
        assert_eq!(remapped_base("x-1-2", "x"), None);
    }
}
