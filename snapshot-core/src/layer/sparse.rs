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

/// How many bytes of the first `size` bytes of the file are holes. The
/// file offset is back at 0 afterwards (seeking for holes moves it).
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
    lseek(fd, 0, Whence::SeekSet)?;
    Ok(size - data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::FileExt;

    #[test]
    fn holes_counted_and_offset_restored() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(4 << 20).unwrap();
        f.write_all_at(b"data", 1 << 20).unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        let holes = hole_bytes(&f, 4 << 20).unwrap();
        // At least the first MiB and most of the rest are holes.
        assert!(((3 << 20)..(4 << 20)).contains(&holes), "{holes}");
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 4 << 20);
        assert_eq!(&all[1 << 20..(1 << 20) + 4], b"data");
        assert_eq!(
            next_data(&f, 0, 4 << 20).unwrap().map(|r| r.0),
            Some(1 << 20)
        );
        assert_eq!(next_data(&f, (2 << 20) + 1, 4 << 20).unwrap(), None);
    }
}
