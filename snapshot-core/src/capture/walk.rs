//! The walk of the upper dir shared by pre-copy and frozen sync: depth
//! first, parents before children, without recursion, every entry reached
//! by name relative to its parent's fd, the open directories kept in a
//! [`DirStack`] (a bounded number of fds at any depth).
//!
//! Invariants: an entry is `lstat`ed (never followed) and a directory is
//! only descended into through an fd checked to be the inode that was
//! stat'ed (`crate::sys::fs::open_subdir`); one reopened on the way back up
//! is checked the same way. Not strict (container running), an entry that
//! changes under the walk is skipped or not descended into, and a directory
//! that cannot be reopened is left without its remaining children; strict
//! (container frozen), every error is an error. A tree deeper than
//! [`MAX_TREE_DEPTH`] is an error naming the path, in both modes.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::stat::{FileStat, fstatat};

use super::fail::is_race;
use super::meta::{Meta, now_ns};
use super::paths::Ctx;
use crate::error::{Error, Result};
use crate::sys::fs::{DirStack, MAX_TREE_DEPTH, inode_key, open_subdir, read_names};

/// One entry met by the walk.
pub(super) struct Entry<'a> {
    pub(super) parent: BorrowedFd<'a>,
    pub(super) name: &'a CStr,
    pub(super) rel: &'a [u8],
    pub(super) st: &'a FileStat,
    /// Wall-clock ns just before the `lstat`.
    pub(super) taken: i128,
    /// For a directory: the opened and verified directory (`None` if it
    /// changed under us before it could be opened).
    pub(super) dir: Option<BorrowedFd<'a>>,
}

/// What a walk does with the entries it meets.
pub(super) trait Visit {
    /// Called for every entry, parents before children. Returns whether to
    /// descend into a directory.
    fn entry(&mut self, e: Entry<'_>) -> Result<bool>;
    /// Called after all children of a descended directory (and the root),
    /// `name` in its parent (empty for the root), with the directory open;
    /// `None` if a non-strict walk could not reopen it to see them all.
    fn leave(
        &mut self,
        dir: Option<BorrowedFd<'_>>,
        name: &CStr,
        rel: &[u8],
        st: &FileStat,
    ) -> Result<()>;
}

/// One directory of the walk and the names in it still to visit.
struct Level {
    names: Vec<CString>,
    idx: usize,
    rel_len: usize,
    st: FileStat,
}

/// Walks the tree below `top` (the directory `base` of the upper dir)
/// without recursion, with a bounded number of open fds. `strict`: every source error is an error (frozen container);
/// otherwise races make the walker skip the entry.
pub(super) fn walk(
    ctx: &Ctx,
    top: OwnedFd,
    top_st: FileStat,
    base: &[u8],
    strict: bool,
    v: &mut dyn Visit,
) -> Result<()> {
    let names = match read_names(top.as_fd()) {
        Ok(n) => n,
        Err(e) => return Err(Error::errno("readdir", ctx.up(base), e)),
    };
    let key = inode_key(&top_st);
    let mut stack = DirStack::new(
        top,
        key,
        Level {
            names,
            idx: 0,
            rel_len: base.len(),
            st: top_st,
        },
    );
    let mut rel: Vec<u8> = Vec::with_capacity(256);
    rel.extend_from_slice(base);
    while let Some(lvl) = stack.last_mut() {
        let (dir, l) = lvl.parts();
        let (Some(dir), true) = (dir, l.idx < l.names.len()) else {
            // All its children seen, or it could not be reopened.
            if let Some(done) = stack.pop() {
                rel.truncate(done.data.rel_len);
                v.leave(done.fd(), done.name(), &rel, &done.data.st)?;
            }
            if let Err(e) = stack.ensure_open() {
                let at = stack.last_mut().map_or(0, |l| l.data.rel_len);
                if strict || !is_race(e) {
                    return Err(Error::errno("open", ctx.up(&rel[..at]), e));
                }
                tracing::debug!(path = %ctx.up(&rel[..at]).display(), error = %e, "moved during the walk");
            }
            continue;
        };
        let name = std::mem::take(&mut l.names[l.idx]);
        l.idx += 1;
        rel.truncate(l.rel_len);
        if l.rel_len > 0 {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.to_bytes());
        let taken = now_ns();
        let st = match fstatat(
            dir,
            name.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(e) if !strict && is_race(e) => continue,
            Err(e) => return Err(Error::errno("lstat", ctx.up(&rel), e)),
        };
        let (meta, _) = Meta::from_stat(&st);
        let mut sub = None;
        if meta.is_dir() {
            match open_subdir(dir, &name, meta.key()) {
                Ok(fd) => sub = Some(fd),
                Err(e) if !strict && is_race(e) => {}
                Err(e) => return Err(Error::errno("open", ctx.up(&rel), e)),
            }
        }
        let descend = v.entry(Entry {
            parent: dir,
            name: &name,
            rel: &rel,
            st: &st,
            taken,
            dir: sub.as_ref().map(|f| f.as_fd()),
        })?;
        if let (true, Some(fd)) = (descend, sub) {
            // The new directory's level is the stack's length.
            if stack.len() > MAX_TREE_DEPTH {
                return Err(Error::Unsupported(format!(
                    "{}: a directory more than {MAX_TREE_DEPTH} levels deep",
                    ctx.up(&rel).display()
                )));
            }
            let names = match read_names(fd.as_fd()) {
                Ok(n) => n,
                // Removed while being read: its children are new at sync.
                Err(e) if !strict && is_race(e) => Vec::new(),
                Err(e) => return Err(Error::errno("readdir", ctx.up(&rel), e)),
            };
            stack.push(
                fd,
                name,
                meta.key(),
                Level {
                    names,
                    idx: 0,
                    rel_len: rel.len(),
                    st,
                },
            );
        }
    }
    Ok(())
}
