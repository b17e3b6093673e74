//! The xattrs of a capture entry as an OCI layer sees them: overlay's own
//! attributes are never emitted, an overlay opaque marker becomes a flag,
//! and overlay features that have no OCI form are refused.
//!
//! Invariants: the emitted list is sorted by name (the same tree always gives
//! the same bytes); an attribute that vanishes between listing and reading is
//! simply absent; a name that cannot be a PAX key (contains `=`) is skipped
//! with a warning.

use std::path::Path;

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::sys::xattr::{self, XRef};

/// Overlay xattrs that mark a directory opaque (value `y`).
const OPAQUE_XATTRS: [&[u8]; 2] = [b"trusted.overlay.opaque", b"user.overlay.opaque"];
/// Overlay xattr namespaces that are never emitted.
const OVERLAY_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];
/// Overlay features whose meaning is lost outside the overlay mount.
const UNSUPPORTED_XATTRS: [&[u8]; 4] = [
    b"trusted.overlay.redirect",
    b"user.overlay.redirect",
    b"trusted.overlay.metacopy",
    b"user.overlay.metacopy",
];

/// The xattrs of one file, split into what matters to the conversion.
#[derive(Default)]
pub(super) struct Xattrs {
    /// Emitted as `SCHILY.xattr.*`, sorted by name.
    pub(super) emit: Vec<(Vec<u8>, Vec<u8>)>,
    /// The directory is opaque.
    pub(super) opaque: bool,
}

/// Reads the xattrs of `x` (an open file, or an entry not followed), the
/// capture entry at `path`.
pub(super) fn read_xattrs(x: &XRef<'_>, path: &Path) -> Result<Xattrs> {
    let list = match xattr::list(x) {
        Ok(l) => l,
        Err(Errno::ENODATA) => return Ok(Xattrs::default()),
        Err(e) => return Err(Error::errno("llistxattr", path, e)),
    };
    let mut out = Xattrs::default();
    for cname in xattr::names(&list) {
        let name = cname.to_bytes();
        if UNSUPPORTED_XATTRS.contains(&name) {
            return Err(Error::Unsupported(format!(
                "{} has overlay xattr {}: redirects and metacopy cannot be converted to an OCI layer",
                path.display(),
                String::from_utf8_lossy(name)
            )));
        }
        let value = match xattr::get(x, cname) {
            Ok(v) => v,
            // Removed since listed.
            Err(Errno::ENODATA | Errno::EOPNOTSUPP) => continue,
            Err(e) => return Err(Error::errno("lgetxattr", path, e)),
        };
        if OPAQUE_XATTRS.contains(&name) {
            out.opaque |= value == b"y";
            continue;
        }
        if OVERLAY_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        if name.contains(&b'=') {
            // A PAX key cannot contain '='.
            tracing::warn!(path = %path.display(), name = %String::from_utf8_lossy(name), "skipping xattr whose name contains '='");
            continue;
        }
        out.emit.push((name.to_vec(), value));
    }
    out.emit.sort();
    Ok(out)
}
