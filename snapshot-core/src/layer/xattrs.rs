//! The xattrs of a capture entry as an OCI layer sees them: only those the
//! [`XattrPolicy`] carries are emitted, overlay's own attributes never are
//! (an opaque marker becomes a flag), and overlay features that have no OCI
//! form are refused.
//!
//! Which xattrs are overlay's own depends on the mount: `trusted.overlay.*`,
//! or `user.overlay.*` with the `userxattr` option; the other namespace is
//! the container's data like any other. An xattr of the container's own in
//! overlay's namespace is stored escaped (kernel 6.7+: `P.overlay.overlay.x`
//! for `P.overlay.x`) and is emitted under the name the container sees.
//!
//! Invariants: the emitted list is sorted by name (the same tree always gives
//! the same bytes); an attribute that vanishes between listing and reading is
//! simply absent; a name that cannot be a PAX key (contains `=`) is skipped
//! with a warning.

use std::path::Path;

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::sys::xattr::{self, XRef};

/// Carried by default: meaningful wherever the image runs. Host-specific
/// labels (`security.selinux`, `security.ima`, `security.evm`) and the
/// `trusted.*` namespace would make the digest depend on the host and are
/// refused by some unpackers: they are carried only when asked for.
const DEFAULT_PREFIXES: [&[u8]; 1] = [b"user."];
const DEFAULT_NAMES: [&[u8]; 3] = [
    b"security.capability",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
];
/// Inside overlay's namespace: what an escaped xattr of the container's own
/// starts with.
const ESCAPE: &[u8] = b"overlay.";

/// Which xattrs a layer carries, and which namespace is overlay's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct XattrPolicy {
    /// The overlay mount had `userxattr`: overlay's own xattrs are
    /// `user.overlay.*`, not `trusted.overlay.*`.
    pub(crate) userxattr: bool,
    /// Carried beyond the default (`crate::CommitOptions::extra_xattrs`):
    /// exact names, or prefixes ending in `.` or `*`.
    pub(crate) extra: Vec<String>,
}

impl XattrPolicy {
    /// Overlay's private namespace on this mount.
    fn overlay_prefix(&self) -> &'static [u8] {
        if self.userxattr {
            b"user.overlay."
        } else {
            b"trusted.overlay."
        }
    }

    /// Whether the layer carries the container's xattr `name`.
    fn carries(&self, name: &[u8]) -> bool {
        DEFAULT_PREFIXES.iter().any(|p| name.starts_with(p))
            || DEFAULT_NAMES.contains(&name)
            || self.extra.iter().any(|pat| {
                let pat = pat.as_bytes();
                match pat.strip_suffix(b"*") {
                    Some(prefix) => name.starts_with(prefix),
                    None if pat.ends_with(b".") => name.starts_with(pat),
                    None => name == pat,
                }
            })
    }
}

/// The xattrs of one file, split into what matters to the conversion.
#[derive(Default)]
pub(super) struct Xattrs {
    /// Emitted as `SCHILY.xattr.*`, sorted by name.
    pub(super) emit: Vec<(Vec<u8>, Vec<u8>)>,
    /// The directory is opaque.
    pub(super) opaque: bool,
}

/// What a stored xattr name is to the conversion.
enum Stored<'a> {
    /// Overlay's opaque-directory marker.
    Opaque,
    /// Overlay's own bookkeeping (origin, impure, ...): never emitted.
    Private,
    /// An overlay feature a layer cannot express.
    Unsupported,
    /// The container's xattr, under the name the container sees.
    Container(std::borrow::Cow<'a, [u8]>),
}

impl XattrPolicy {
    fn classify<'a>(&self, stored: &'a [u8]) -> Stored<'a> {
        let overlay = self.overlay_prefix();
        let Some(own) = stored.strip_prefix(overlay) else {
            return Stored::Container(stored.into());
        };
        match own {
            b"opaque" => Stored::Opaque,
            b"redirect" | b"metacopy" => Stored::Unsupported,
            _ if own.starts_with(ESCAPE) => {
                Stored::Container([overlay, &own[ESCAPE.len()..]].concat().into())
            }
            _ => Stored::Private,
        }
    }
}

/// Reads the xattrs that `policy` carries of `x` (an open file, or an
/// entry not followed), the capture entry at `path`.
pub(super) fn read_xattrs(x: &XRef<'_>, path: &Path, policy: &XattrPolicy) -> Result<Xattrs> {
    let list = match xattr::list(x) {
        Ok(l) => l,
        Err(Errno::ENODATA) => return Ok(Xattrs::default()),
        Err(e) => return Err(Error::errno("llistxattr", path, e)),
    };
    let mut out = Xattrs::default();
    for cname in xattr::names(&list) {
        let stored = cname.to_bytes();
        let name = match policy.classify(stored) {
            Stored::Unsupported => {
                return Err(Error::Unsupported(format!(
                    "{} has overlay xattr {}: redirects and metacopy cannot be converted to an OCI layer",
                    path.display(),
                    String::from_utf8_lossy(stored)
                )));
            }
            Stored::Private => continue,
            Stored::Opaque => None,
            Stored::Container(name) if policy.carries(&name) => Some(name),
            Stored::Container(_) => continue,
        };
        let value = match xattr::get(x, cname) {
            Ok(v) => v,
            // Removed since listed.
            Err(Errno::ENODATA | Errno::EOPNOTSUPP) => continue,
            Err(e) => return Err(Error::errno("lgetxattr", path, e)),
        };
        let Some(name) = name else {
            out.opaque |= value == b"y";
            continue;
        };
        if name.contains(&b'=') {
            // A PAX key cannot contain '='.
            tracing::warn!(path = %path.display(), name = %String::from_utf8_lossy(&name), "skipping xattr whose name contains '='");
            continue;
        }
        out.emit.push((name.into_owned(), value));
    }
    out.emit.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &XattrPolicy, stored: &[&str]) -> Vec<String> {
        stored
            .iter()
            .filter_map(|s| match p.classify(s.as_bytes()) {
                Stored::Container(n) if p.carries(&n) => {
                    Some(String::from_utf8(n.into_owned()).unwrap())
                }
                Stored::Container(_) | Stored::Private => None,
                Stored::Opaque => Some("<opaque>".into()),
                Stored::Unsupported => Some("<unsupported>".into()),
            })
            .collect()
    }

    const STORED: [&str; 14] = [
        "user.foo",
        "security.capability",
        "system.posix_acl_access",
        "system.posix_acl_default",
        "security.selinux",
        "security.ima",
        "trusted.foo",
        "trusted.overlay.opaque",
        "trusted.overlay.origin",
        "trusted.overlay.overlay.nested",
        "user.overlay.opaque",
        "user.overlay.redirect",
        "user.overlay.origin",
        "user.overlay.overlay.nested",
    ];

    /// What the default policy carries of [`STORED`] in either mode.
    const PORTABLE: [&str; 4] = [
        "user.foo",
        "security.capability",
        "system.posix_acl_access",
        "system.posix_acl_default",
    ];

    #[test]
    fn default_policy_without_userxattr() {
        let p = XattrPolicy::default();
        let rest = [
            "<opaque>",
            // The container's own in both cases: user.* is its data here.
            "user.overlay.opaque",
            "user.overlay.redirect",
            "user.overlay.origin",
            "user.overlay.overlay.nested",
        ];
        assert_eq!(names(&p, &STORED), [&PORTABLE[..], &rest].concat());
        assert!(matches!(
            p.classify(b"trusted.overlay.metacopy"),
            Stored::Unsupported
        ));
    }

    #[test]
    fn default_policy_with_userxattr() {
        let p = XattrPolicy {
            userxattr: true,
            extra: Vec::new(),
        };
        // The escaped one under the name the container sees.
        let rest = ["<opaque>", "<unsupported>", "user.overlay.nested"];
        assert_eq!(names(&p, &STORED), [&PORTABLE[..], &rest].concat());
    }

    #[test]
    fn extra_names_and_prefixes() {
        let p = XattrPolicy {
            userxattr: false,
            extra: vec!["security.selinux".into(), "trusted.*".into()],
        };
        let got = names(&p, &STORED);
        assert!(got.contains(&"security.selinux".to_string()));
        assert!(!got.contains(&"security.ima".to_string()));
        assert!(got.contains(&"trusted.foo".to_string()));
        // Overlay's own stay out; the container's escaped one is unescaped.
        assert!(!got.iter().any(|n| n == "trusted.overlay.origin"));
        assert!(got.contains(&"trusted.overlay.nested".to_string()));
        let p = XattrPolicy {
            userxattr: false,
            extra: vec!["security.".into()],
        };
        let got = names(&p, &STORED);
        assert!(got.contains(&"security.ima".to_string()));
        assert!(!got.contains(&"trusted.foo".to_string()));
        let all = XattrPolicy {
            userxattr: true,
            extra: vec!["*".into()],
        };
        assert!(names(&all, &STORED).contains(&"trusted.overlay.origin".to_string()));
        // An exact name is not a prefix.
        let p = XattrPolicy {
            userxattr: false,
            extra: vec!["trusted".into(), "security.ima.x".into()],
        };
        assert!(!names(&p, &STORED).iter().any(|n| n.starts_with("trusted")));
        assert!(!p.carries(b"security.ima"));
    }
}
