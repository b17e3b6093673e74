//! The free-space check made before a commit starts: a capture that fills
//! the filesystem it shares with the container's upper dir would make the
//! container's own writes fail, and one that runs out midway has wasted its
//! pre-copy. So what the capture and the layer blob will take is budgeted
//! from an [`Estimate`] of the upper dir and compared with `statvfs` of
//! where they go, before anything is created or frozen.
//!
//! The budget (see [`Budget::of`]):
//! - capture: the file data as allocated on disk (holes stay holes), unless
//!   the capture clones (reflinks) it, plus one 4 KiB block per directory;
//!   one inode per name (hard links share theirs);
//! - layer blob: the uncompressed tar (a 512-byte header and 512 bytes of
//!   PAX records per entry, the data padded to 512 bytes, the end blocks)
//!   plus 1/256 and 64 KiB, the most zstd or gzip output exceeds its input
//!   by on incompressible data. Compression usually makes the blob much
//!   smaller; budgeting less could fail the build after the freeze.
//!
//! When both go to one filesystem their needs add up. Only the blocks
//! available to unprivileged users (`f_bavail`) count, so the reserve a
//! filesystem keeps for root stays free for the host. A shortage is an
//! [`Error::Io`] (kind `io`) whose message says "No space left on device
//! (ENOSPC)" and what was needed and available: the same kind as a write
//! that ran out of space.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::capture::Estimate;
use crate::error::{Error, IoContext, Result};

/// A tar header block.
const TAR_BLOCK: u64 = 512;
/// What one entry's PAX records (long names, nanosecond times, xattrs) are
/// budgeted on top of its header.
const PAX_ALLOWANCE: u64 = 512;
/// The blocks a directory takes on a typical filesystem.
const DIR_BYTES: u64 = 4096;
/// Fixed slack of the blob budget: compressor frames and headers.
const BLOB_SLACK: u64 = 64 << 10;

/// What a commit will write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Bytes of the capture directory.
    pub(crate) capture_bytes: u64,
    /// Inodes of the capture directory.
    pub(crate) capture_inodes: u64,
    /// Bytes of the layer blob, at most.
    pub(crate) blob_bytes: u64,
}

impl Budget {
    /// The budget of a capture of `est`; `reflink`: file data is cloned.
    pub(crate) fn of(est: &Estimate, reflink: bool) -> Budget {
        let data = if reflink { 0 } else { est.allocated };
        let capture_bytes = data.saturating_add(est.dirs.saturating_mul(DIR_BYTES));
        let entries = est.dirs.saturating_add(est.names);
        let tar = entries
            .saturating_mul(TAR_BLOCK + PAX_ALLOWANCE)
            .saturating_add(est.content.saturating_add(est.inodes * (TAR_BLOCK - 1)))
            .saturating_add(2 * TAR_BLOCK);
        Budget {
            capture_bytes,
            capture_inodes: est.dirs.saturating_add(est.inodes).saturating_add(1),
            blob_bytes: tar.saturating_add(tar / 256).saturating_add(BLOB_SLACK),
        }
    }
}

/// Free space of one filesystem, as `statvfs` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Free {
    /// Bytes available to unprivileged users.
    pub(crate) bytes: u64,
    /// Inodes available to unprivileged users; `None` when the filesystem
    /// has no fixed inode count (it reports 0 inodes in all).
    pub(crate) inodes: Option<u64>,
}

impl Free {
    /// The free space of the filesystem holding `path`.
    pub(crate) fn of(path: &Path) -> Result<Free> {
        let v = nix::sys::statvfs::statvfs(path).at("statvfs", path)?;
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        let (bavail, frsize, files, favail) = (
            v.blocks_available() as u64,
            v.fragment_size() as u64,
            v.files() as u64,
            v.files_available() as u64,
        );
        Ok(Free {
            bytes: bavail.saturating_mul(frsize),
            inodes: (files > 0).then_some(favail),
        })
    }
}

/// Checks that the capture (going to the filesystem of `capture_dir`) and
/// the blob (to that of `blob_dir`) fit; both directories exist.
pub(crate) fn check(
    est: &Estimate,
    budget: &Budget,
    capture_dir: &Path,
    blob_dir: &Path,
) -> Result<()> {
    let same_fs = dev(capture_dir)? == dev(blob_dir)?;
    let capture_free = Free::of(capture_dir)?;
    let blob_free = if same_fs {
        capture_free
    } else {
        Free::of(blob_dir)?
    };
    shortage(est, budget, capture_free, blob_free, same_fs).map_or(Ok(()), |(which, msg)| {
        let path = if which == Side::Blob {
            blob_dir
        } else {
            capture_dir
        };
        Err(Error::io(
            "not enough free space on",
            path,
            std::io::Error::new(std::io::ErrorKind::StorageFull, msg),
        ))
    })
}

fn dev(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p).at("stat", p)?.dev())
}

/// Which filesystem is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Capture,
    Blob,
}

/// What is short, if anything, and the message saying so.
fn shortage(
    est: &Estimate,
    b: &Budget,
    capture: Free,
    blob: Free,
    same_fs: bool,
) -> Option<(Side, String)> {
    let what = format!(
        "the capture needs {} ({} of file data in {} files, {} directories) and the layer blob up to {}",
        mib(b.capture_bytes),
        mib(est.allocated),
        est.inodes,
        est.dirs,
        mib(b.blob_bytes)
    );
    let enospc = "No space left on device (ENOSPC)";
    if let Some(free) = capture.inodes
        && free < b.capture_inodes
    {
        return Some((
            Side::Capture,
            format!(
                "{enospc}: the capture needs {} inodes, {free} available",
                b.capture_inodes
            ),
        ));
    }
    if same_fs {
        let need = b.capture_bytes.saturating_add(b.blob_bytes);
        return (need > capture.bytes).then(|| {
            (
                Side::Capture,
                format!(
                    "{enospc}: {what}, {} in all; {} available",
                    mib(need),
                    mib(capture.bytes)
                ),
            )
        });
    }
    if b.capture_bytes > capture.bytes {
        return Some((
            Side::Capture,
            format!("{enospc}: {what}; {} available", mib(capture.bytes)),
        ));
    }
    (b.blob_bytes > blob.bytes).then(|| {
        (
            Side::Blob,
            format!(
                "{enospc}: {what}; {} available for the blob",
                mib(blob.bytes)
            ),
        )
    })
}

/// Bytes in MiB, for messages.
fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn est(dirs: u64, files: u64, each: u64) -> Estimate {
        Estimate {
            dirs,
            names: files,
            inodes: files,
            allocated: files * each,
            content: files * each,
        }
    }

    fn free(bytes: u64) -> Free {
        Free {
            bytes,
            inodes: None,
        }
    }

    #[test]
    fn the_budget_covers_the_data_and_the_tar_overhead() {
        let e = est(2, 4, 8 * MB);
        let b = Budget::of(&e, false);
        assert_eq!(b.capture_bytes, 32 * MB + 2 * 4096);
        assert_eq!(b.capture_inodes, 7);
        // The tar alone: 6 entries of header + PAX, the data, the end.
        let tar = 6 * 1024 + 32 * MB + 1024;
        assert!(b.blob_bytes >= tar + tar / 256, "{b:?}");
        assert!(b.blob_bytes < tar + tar / 100 + MB, "{b:?}");
        // Cloned data costs the capture nothing but its directories.
        assert_eq!(Budget::of(&e, true).capture_bytes, 2 * 4096);
        assert_eq!(Budget::of(&e, true).blob_bytes, b.blob_bytes);
    }

    #[test]
    fn hard_links_and_holes_count_once() {
        // One 8 MiB sparse file with 1 MiB allocated, under three names.
        let e = Estimate {
            dirs: 0,
            names: 3,
            inodes: 1,
            allocated: MB,
            content: 8 * MB,
        };
        let b = Budget::of(&e, false);
        assert_eq!(b.capture_bytes, MB);
        assert_eq!(b.capture_inodes, 2);
        assert!(b.blob_bytes > 8 * MB && b.blob_bytes < 9 * MB, "{b:?}");
    }

    #[test]
    fn shortages_are_found_on_the_right_side() {
        let e = est(1, 4, 8 * MB);
        let b = Budget::of(&e, false);
        let plenty = free(1 << 40);
        assert_eq!(shortage(&e, &b, plenty, plenty, true), None);
        assert_eq!(shortage(&e, &b, plenty, plenty, false), None);

        // One filesystem for both: the sum must fit.
        let (side, msg) = shortage(&e, &b, free(40 * MB), free(40 * MB), true).unwrap();
        assert_eq!(side, Side::Capture);
        assert!(msg.starts_with("No space left on device (ENOSPC)"), "{msg}");
        assert!(msg.contains("40.0 MiB available"), "{msg}");
        // Two filesystems: each its own.
        assert_eq!(shortage(&e, &b, free(40 * MB), free(40 * MB), false), None);
        let (side, _) = shortage(&e, &b, free(8 * MB), plenty, false).unwrap();
        assert_eq!(side, Side::Capture);
        let (side, msg) = shortage(&e, &b, plenty, free(8 * MB), false).unwrap();
        assert_eq!(side, Side::Blob);
        assert!(msg.contains("available for the blob"), "{msg}");
        // Reflinked: the capture fits where its data would not.
        let r = Budget::of(&e, true);
        assert_eq!(shortage(&e, &r, free(40 * MB), free(40 * MB), true), None);
    }

    #[test]
    fn inodes_are_checked_when_the_filesystem_counts_them() {
        let e = est(10, 1000, 1);
        let b = Budget::of(&e, false);
        let few = Free {
            bytes: 1 << 40,
            inodes: Some(100),
        };
        let (_, msg) = shortage(&e, &b, few, few, true).unwrap();
        assert!(msg.contains("1011 inodes, 100 available"), "{msg}");
        let many = Free {
            inodes: Some(1 << 20),
            ..few
        };
        assert_eq!(shortage(&e, &b, many, many, true), None);
    }

    #[test]
    fn free_space_of_a_real_filesystem() {
        let t = tempfile::tempdir().unwrap();
        let f = Free::of(t.path()).unwrap();
        assert!(f.bytes > 0);
        let e = est(0, 1, 1);
        check(&e, &Budget::of(&e, false), t.path(), t.path()).unwrap();
        let huge = est(0, 1, u64::MAX / 2);
        let err = check(&huge, &Budget::of(&huge, false), t.path(), t.path()).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Io);
        assert!(err.to_string().contains("ENOSPC"), "{err}");
        assert!(err.to_string().contains(&t.path().display().to_string()));
    }
}
