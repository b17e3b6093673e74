//! What a capture of the upper dir will take, counted by one walk before it
//! starts (the container running): entries, and file data once per inode.
//!
//! Invariants: the walk is the capture's own (fd-relative, never following
//! a symlink, races skipped), so a hostile tree cannot make it read outside
//! the upper dir; sockets are left out as the capture leaves them out. The
//! numbers are an estimate of a moving tree, good for a free-space check,
//! not for anything exact.

use std::collections::HashSet;
use std::ffi::CStr;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use nix::sys::stat::{FileStat, fstat};

use super::meta::Meta;
use super::paths::Ctx;
use super::walk::{Entry, Visit, walk};
use crate::error::{IoContext, Result};
use crate::sys::fs::open_dir;

/// The size of an upper dir, as a capture and a layer of it would see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Estimate {
    /// Directories (the root excluded).
    pub(crate) dirs: u64,
    /// Non-directory names (sockets excluded); a hard link counts per name.
    pub(crate) names: u64,
    /// Inodes among those names (a hard-linked file counts once).
    pub(crate) inodes: u64,
    /// Bytes the regular files occupy on disk (`st_blocks`, once per inode):
    /// what a copy that keeps holes writes.
    pub(crate) allocated: u64,
    /// Apparent size of the regular files (`st_size`, once per inode): what
    /// a tar of them holds.
    pub(crate) content: u64,
}

/// Walks the upper dir `upper` and counts what a capture of it takes.
pub(crate) fn estimate(upper: &Path) -> Result<Estimate> {
    let top = open_dir(upper).at("open", upper)?;
    let st = fstat(&top).at("stat", upper)?;
    let ctx = Ctx {
        upper: upper.to_path_buf(),
        dest: PathBuf::new(),
    };
    let mut v = Counter::default();
    walk(&ctx, top, st, b"", false, &mut v)?;
    Ok(v.est)
}

#[derive(Default)]
struct Counter {
    est: Estimate,
    /// Multiply-linked inodes already counted.
    seen: HashSet<(u64, u64)>,
}

impl Visit for Counter {
    fn entry(&mut self, e: Entry<'_>) -> Result<bool> {
        let (meta, _) = Meta::from_stat(e.st);
        if meta.is_dir() {
            self.est.dirs += 1;
            return Ok(true);
        }
        if meta.fmt() == libc::S_IFSOCK {
            return Ok(false);
        }
        self.est.names += 1;
        if meta.multi_linked() && !self.seen.insert(meta.key()) {
            return Ok(false);
        }
        self.est.inodes += 1;
        if meta.fmt() == libc::S_IFREG {
            self.est.allocated += (e.st.st_blocks as u64).saturating_mul(512);
            self.est.content += meta.size.max(0) as u64;
        }
        Ok(false)
    }

    fn leave(
        &mut self,
        _dir: Option<BorrowedFd<'_>>,
        _name: &CStr,
        _rel: &[u8],
        _st: &FileStat,
    ) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn counts_names_inodes_and_data_once() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path();
        std::fs::create_dir_all(up.join("a/b")).unwrap();
        std::fs::write(up.join("a/f"), vec![1u8; 10_000]).unwrap();
        std::fs::hard_link(up.join("a/f"), up.join("a/b/g")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", up.join("l")).unwrap();
        // Sparse: 8 MiB apparent, one 4 KiB block of data.
        let sparse = std::fs::File::create(up.join("sparse")).unwrap();
        sparse.write_all_at(&[1u8; 4096], 8 << 20).unwrap();
        drop(sparse);
        let _sock = std::os::unix::net::UnixListener::bind(up.join("sock")).unwrap();

        let e = estimate(up).unwrap();
        assert_eq!(e.dirs, 2);
        assert_eq!(e.names, 4, "a/f, a/b/g, l, sparse; not the socket");
        assert_eq!(e.inodes, 3, "the hard link shares its inode");
        assert_eq!(e.content, 10_000 + (8 << 20) + 4096);
        assert!(e.allocated >= 10_000 + 4096, "{e:?}");
        assert!(e.allocated < 1 << 20, "holes are not counted: {e:?}");
    }
}
