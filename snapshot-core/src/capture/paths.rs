//! Relative paths inside the tree and the two absolute bases they are joined
//! to: the upper dir (source) and the capture directory (destination).
//!
//! Invariant: a path built here is only ever used in messages; both trees
//! are reached through directory fds (`crate::sys::fs`), the source because
//! its owner may swap names under us, both because a path may be far longer
//! than `PATH_MAX`.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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

    /// Capture path (messages only).
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

/// The parent of a non-empty relative path and its last component.
pub(super) fn split_rel(rel: &[u8]) -> Result<(&[u8], CString)> {
    let parent = parent_rel(rel);
    let name = if parent.is_empty() {
        rel
    } else {
        &rel[parent.len() + 1..]
    };
    let name = CString::new(name).map_err(|_| Error::Internal("NUL in a file name".into()))?;
    Ok((parent, name))
}
