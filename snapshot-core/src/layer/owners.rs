//! Owners as the container sees them: for a container in a user namespace,
//! every ID the layer stores (tar uid/gid, the IDs inside POSIX ACL xattrs,
//! the root ID of a v3 file capability) is translated from the host's IDs
//! back to the namespace's through the inverse of its `uid_map`/`gid_map`.
//!
//! The rule throughout is "what a process inside sees": an ID with no
//! mapping becomes the overflow ID (65534 by default), as `stat` and
//! `getxattr` show it inside (the kernel's `from_kuid_munged`). A v3 file
//! capability (`security.capability` with a root ID, written by a process in
//! a user namespace) is stored as the container reads it: the v2 form when
//! its root ID is the namespace's root (or the host's root, which owns every
//! namespace), a v3 with the translated root ID when another ID inside is
//! its root (a nested namespace's), and left out, with a warning, when its
//! root ID means nothing inside: the container cannot read it either
//! (`EOVERFLOW`), and no translation would keep its meaning.
//!
//! Without a user namespace no function here is called: the layer's bytes
//! are exactly those of the host's IDs.

use std::path::Path;

use crate::error::{Error, Result};
use crate::procfs::idmap::UserNamespace;

/// POSIX ACL xattrs (`include/uapi/linux/posix_acl_xattr.h`): a 4-byte
/// little-endian version, then 8-byte entries `tag: u16, perm: u16, id: u32`.
const ACL_NAMES: [&[u8]; 2] = [b"system.posix_acl_access", b"system.posix_acl_default"];
const ACL_VERSION: u32 = 2;
const ACL_HEADER: usize = 4;
const ACL_ENTRY: usize = 8;
/// The entry tags whose id is a user or a group (the others carry
/// `ACL_UNDEFINED_ID`).
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

/// File capabilities (`include/uapi/linux/capability.h`).
const CAPS_NAME: &[u8] = b"security.capability";
const CAP_REVISION_MASK: u32 = 0xff00_0000;
const CAP_REVISION_2: u32 = 0x0200_0000;
const CAP_REVISION_3: u32 = 0x0300_0000;
/// Size of a v2 value; a v3 value is the same plus its root ID.
const CAPS_SIZE_2: usize = 20;
const CAPS_SIZE_3: usize = 24;

fn le32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

/// The xattr `name` = `value` of the capture entry at `path` as the
/// container sees it; `None` when it is left out (see the module docs).
/// Xattrs without IDs are returned unchanged.
pub(super) fn map_xattr(
    ns: &UserNamespace,
    name: &[u8],
    value: Vec<u8>,
    path: &Path,
) -> Result<Option<Vec<u8>>> {
    if ACL_NAMES.contains(&name) {
        return map_acl(ns, value)
            .map(Some)
            .map_err(|why| malformed(path, name, why));
    }
    if name == CAPS_NAME {
        return map_caps(ns, value).map_err(|why| malformed(path, name, why));
    }
    Ok(Some(value))
}

/// A value the kernel would not have stored: refused rather than carried
/// with host IDs in it.
fn malformed(path: &Path, name: &[u8], why: &str) -> Error {
    Error::Unsupported(format!(
        "{}: xattr {} is malformed ({why}); its IDs cannot be mapped to the container's user namespace",
        path.display(),
        String::from_utf8_lossy(name)
    ))
}

/// An ACL with its user and group entries' IDs translated.
fn map_acl(ns: &UserNamespace, mut value: Vec<u8>) -> std::result::Result<Vec<u8>, &'static str> {
    if value.len() < ACL_HEADER || (value.len() - ACL_HEADER) % ACL_ENTRY != 0 {
        return Err("its size is not a header and whole entries");
    }
    if le32(&value, 0) != ACL_VERSION {
        return Err("unknown version");
    }
    for entry in value[ACL_HEADER..].chunks_exact_mut(ACL_ENTRY) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let id = le32(entry, 4);
        let mapped = match tag {
            ACL_USER => ns.uid(id),
            ACL_GROUP => ns.gid(id),
            _ => continue,
        };
        entry[4..8].copy_from_slice(&mapped.to_le_bytes());
    }
    Ok(value)
}

/// A file capability as the container reads it (see the module docs).
fn map_caps(
    ns: &UserNamespace,
    value: Vec<u8>,
) -> std::result::Result<Option<Vec<u8>>, &'static str> {
    if value.len() < 4 {
        return Err("shorter than its header");
    }
    let magic = le32(&value, 0);
    if magic & CAP_REVISION_MASK != CAP_REVISION_3 {
        // v1 and v2 hold no ID.
        return Ok(Some(value));
    }
    if value.len() != CAPS_SIZE_3 {
        return Err("a v3 capability of the wrong size");
    }
    let rootid = le32(&value, CAPS_SIZE_2);
    let inside = match ns.uid_map.to_inside(rootid) {
        Some(id) => id,
        // The host's root is an ancestor of every namespace: the container
        // reads the v2 form.
        None if rootid == 0 => 0,
        None => {
            tracing::warn!(
                rootid,
                "leaving out a file capability whose root ID has no mapping in the container's user namespace"
            );
            return Ok(None);
        }
    };
    if inside == 0 {
        let mut v2 = value;
        v2.truncate(CAPS_SIZE_2);
        let flags = magic & !CAP_REVISION_MASK;
        v2[..4].copy_from_slice(&(CAP_REVISION_2 | flags).to_le_bytes());
        return Ok(Some(v2));
    }
    let mut v3 = value;
    v3[CAPS_SIZE_2..].copy_from_slice(&inside.to_le_bytes());
    Ok(Some(v3))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::procfs::idmap::IdMap;

    /// Root at host 100000 (65536 IDs); groups the same, except gid 5 at
    /// host 5000.
    fn ns() -> UserNamespace {
        UserNamespace::from_maps(
            IdMap::parse(b"0 100000 65536").unwrap(),
            IdMap::parse(b"0 100000 5\n5 5000 1\n6 100006 65530").unwrap(),
            65534,
            65534,
        )
        .unwrap()
    }

    /// A POSIX ACL xattr value of `(tag, perm, id)` entries.
    pub(crate) fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = ACL_VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    const UNDEFINED: u32 = u32::MAX;

    #[test]
    fn acl_user_and_group_entries_are_mapped() {
        let path = Path::new("/c/f");
        let host = acl(&[
            (0x01, 6, UNDEFINED),
            (ACL_USER, 4, 101_000),
            (ACL_USER, 4, 7),
            (0x04, 4, UNDEFINED),
            (ACL_GROUP, 5, 5000),
            (ACL_GROUP, 1, 100_000),
            (0x10, 7, UNDEFINED),
            (0x20, 0, UNDEFINED),
        ]);
        let want = acl(&[
            (0x01, 6, UNDEFINED),
            (ACL_USER, 4, 1000),
            // No mapping: what the container sees.
            (ACL_USER, 4, 65534),
            (0x04, 4, UNDEFINED),
            (ACL_GROUP, 5, 5),
            (ACL_GROUP, 1, 0),
            (0x10, 7, UNDEFINED),
            (0x20, 0, UNDEFINED),
        ]);
        for name in ACL_NAMES {
            assert_eq!(
                map_xattr(&ns(), name, host.clone(), path).unwrap(),
                Some(want.clone())
            );
        }
        // Only the header: nothing to map.
        let empty = acl(&[]);
        assert_eq!(map_acl(&ns(), empty.clone()), Ok(empty));
    }

    #[test]
    fn malformed_acls_are_refused() {
        let path = Path::new("/c/f");
        let mut short = acl(&[(ACL_USER, 4, 101_000)]);
        short.pop();
        let mut v1 = acl(&[(ACL_USER, 4, 101_000)]);
        v1[0] = 1;
        for bad in [short, v1, vec![2, 0]] {
            let e = map_xattr(&ns(), b"system.posix_acl_access", bad, path).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
            assert!(
                e.to_string()
                    .contains("/c/f: xattr system.posix_acl_access is malformed"),
                "{e}"
            );
        }
    }

    fn caps(magic: u32, rootid: Option<u32>) -> Vec<u8> {
        let mut v = magic.to_le_bytes().to_vec();
        // permitted/inheritable, low then high words.
        for w in [0x2000u32, 0, 1, 0] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        if let Some(r) = rootid {
            v.extend_from_slice(&r.to_le_bytes());
        }
        v
    }

    #[test]
    fn v3_capabilities_become_what_the_container_reads() {
        let path = Path::new("/c/ping");
        let map = |v| map_xattr(&ns(), CAPS_NAME, v, path).unwrap();
        // The namespace's root: the v2 form, the effective flag kept.
        assert_eq!(
            map(caps(CAP_REVISION_3 | 1, Some(100_000))),
            Some(caps(CAP_REVISION_2 | 1, None))
        );
        assert_eq!(
            map(caps(CAP_REVISION_3, Some(100_000))),
            Some(caps(CAP_REVISION_2, None))
        );
        // The host's root owns every namespace: v2 too.
        assert_eq!(
            map(caps(CAP_REVISION_3 | 1, Some(0))),
            Some(caps(CAP_REVISION_2 | 1, None))
        );
        // A nested namespace's root inside: v3 with the container's ID.
        assert_eq!(
            map(caps(CAP_REVISION_3 | 1, Some(101_000))),
            Some(caps(CAP_REVISION_3 | 1, Some(1000)))
        );
        // A root ID the container cannot see: left out.
        assert_eq!(map(caps(CAP_REVISION_3 | 1, Some(5000))), None);
        // v2 and v1 carry no ID.
        let v2 = caps(CAP_REVISION_2 | 1, None);
        assert_eq!(map(v2.clone()), Some(v2));
        let v1 = caps(0x0100_0000, None)[..12].to_vec();
        assert_eq!(map(v1.clone()), Some(v1));
        // A v3 of the wrong size, or no header at all: refused.
        for bad in [caps(CAP_REVISION_3, None), vec![0, 0, 0]] {
            let e = map_xattr(&ns(), CAPS_NAME, bad, path).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        }
    }

    #[test]
    fn xattrs_without_ids_are_unchanged() {
        let v = b"\x02\0\0\0\x02\0\x04\0\xa0\x86\x01\0".to_vec();
        assert_eq!(
            map_xattr(&ns(), b"user.acl_lookalike", v.clone(), Path::new("/f")).unwrap(),
            Some(v)
        );
    }
}
