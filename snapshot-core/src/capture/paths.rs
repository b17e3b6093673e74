//! Relative paths inside the tree and the two absolute bases they are joined
//! to: the upper dir (source) and the capture directory (destination).
//!
//! Invariant: a source path built here is only ever used in messages; the
//! source is reached through directory fds (`crate::sys::fs`). The capture
//! directory is private to us, so its paths are used directly.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Paths of both sides, for operations and error messages.
pub(super) struct Ctx {
    pub(super) upper: PathBuf,
    pub(super) dest: PathBuf,
}

impl Ctx {
    /// `base` joined with the relative path `rel` (`base` itself if empty).
    pub(super) fn join(base: &Path, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            base.to_path_buf()
        } else {
            base.join(OsStr::from_bytes(rel))
        }
    }

    /// Source path (messages only: never used to access the upper dir).
    pub(super) fn up(&self, rel: &[u8]) -> PathBuf {
        Self::join(&self.upper, rel)
    }

    /// Capture path.
    pub(super) fn dp(&self, rel: &[u8]) -> PathBuf {
        Self::join(&self.dest, rel)
    }
}

/// The parent of a relative path (`""` for top-level names).
pub(super) fn parent_rel(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => &rel[..i],
        None => b"",
    }
}
