//! Holes of sparse files, found with `lseek(SEEK_DATA/SEEK_HOLE)`, so that the
//! layer writes them as zeros without reading them from the disk.
//!
//! Invariant: what is reported as data covers every byte that is not a hole
//! (a filesystem without hole support reports the whole file as data), so a
//! file read by these ranges gives its exact contents.

use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

/// Whether a file with these stat numbers may have holes at all: fewer
/// allocated bytes than its size.
pub(super) fn may_have_holes(size: u64, blocks: u64) -> bool {
    blocks.saturating_mul(512) < size
}

/// The next data range `[start, end)` at or after `from` in a file of `size`
/// bytes, or `None` if only a hole is left.
pub(super) fn next_data(fd: impl AsFd, from: u64, size: u64) -> nix::Result<Option<(u64, u64)>> {
    if from >= size {
        return Ok(None);
    }
    let off = i64::try_from(from).map_err(|_| Errno::EOVERFLOW)?;
    let start = match lseek(fd.as_fd(), off, Whence::SeekData) {
        Ok(s) => s as u64,
        // No data after `from`.
        Err(Errno::ENXIO) => return Ok(None),
        // No hole support: all data.
        Err(Errno::EINVAL) => return Ok(Some((from, size))),
        Err(e) => return Err(e),
    };
    if start >= size {
        return Ok(None);
    }
    let end = match lseek(fd.as_fd(), start as i64, Whence::SeekHole) {
        Ok(e) => (e as u64).min(size),
        Err(Errno::ENXIO) => size,
        Err(e) => return Err(e),
    };
    Ok(Some((start, end.max(start))))
}

/// How many bytes of the first `size` bytes of the file are holes.
pub(super) fn hole_bytes(fd: impl AsFd, size: u64) -> nix::Result<u64> {
    let fd = fd.as_fd();
    let mut pos = 0;
    let mut data = 0;
    while let Some((start, end)) = next_data(fd, pos, size)? {
        data += end - start;
        pos = end;
        if end == start {
            break;
        }
    }
    Ok(size - data)
}
