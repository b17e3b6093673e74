//! Fd-relative traversal of a directory tree that a possibly hostile party
//! may change at any moment (CVE-2018-15664 class: a directory swapped for a
//! symlink between two system calls).
//!
//! Invariants kept by every helper here:
//! - a path inside the tree is never resolved by the kernel in one go: each
//!   component is opened relative to an open directory fd, with `O_NOFOLLOW`;
//! - a directory opened by name is checked (`fstat`) to be the inode that was
//!   stat'ed before, so a swap in between is reported as `ESTALE`;
//! - a non-directory is first opened `O_PATH` (opening a device or fifo has
//!   no side effect then) and only reopened for reading, through
//!   `/proc/self/fd`, once the caller has checked what it is;
//! - depth costs neither stack nor descriptors: nothing here recurses, and a
//!   chain of open directories ([`DirStack`], [`DirCursor`]) holds at most
//!   [`MAX_OPEN_DIRS`] fds however deep it goes (a tree may be far deeper
//!   than `PATH_MAX`, and the default `RLIMIT_NOFILE` is 1024). A directory
//!   reopened through `..` is checked to be the inode passed on the way down.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat};
use nix::unistd::{UnlinkatFlags, dup, unlinkat};

/// Where the kernel shows this process's open fds; `PROC_FD/<n>` reopens fd
/// `n` (and `PROC_FD/<n>/<name>` names entry `name` of directory fd `n`)
/// without resolving any path of the traversed tree.
pub(crate) const PROC_FD: &str = "/proc/self/fd";

/// Open flags for a directory of the tree: never follow a symlink.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Fails if [`PROC_FD`] is unusable (no procfs mounted), so that a caller
/// relying on [`reopen_read`] can refuse early.
pub(crate) fn proc_fd_available() -> std::io::Result<()> {
    std::fs::metadata(PROC_FD).map(drop)
}

/// Opens the directory `path` that is the top of a traversal. Only its last
/// component is protected from being a symlink: the path up to the tree is
/// trusted.
pub(crate) fn open_dir(path: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(path, dir_flags(), Mode::empty())
}

/// The inode key `(st_dev, st_ino)` of a stat record.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
pub(crate) fn inode_key(st: &FileStat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// Opens subdirectory `name` of `parent` without following symlinks and
/// checks it is the directory inode `expect` (an [`inode_key`]), not
/// something swapped in since it was stat'ed (`ESTALE` then).
pub(crate) fn open_subdir(
    parent: BorrowedFd<'_>,
    name: &CStr,
    expect: (u64, u64),
) -> nix::Result<OwnedFd> {
    let fd = openat(parent, name, dir_flags(), Mode::empty())?;
    let st = fstat(&fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR || inode_key(&st) != expect {
        return Err(Errno::ESTALE);
    }
    Ok(fd)
}

/// Opens `rel` (a directory, `/`-separated, relative) beneath `root`, one
/// component at a time, never following a symlink; `rel` empty gives a new
/// fd of `root` itself. `.`, `..` and empty components are `EINVAL`.
pub(crate) fn open_beneath(root: BorrowedFd<'_>, rel: &[u8]) -> nix::Result<OwnedFd> {
    let mut cur = openat(root, c".", dir_flags(), Mode::empty())?;
    if rel.is_empty() {
        return Ok(cur);
    }
    for comp in rel.split(|b| *b == b'/') {
        if comp.is_empty() || comp == b"." || comp == b".." {
            return Err(Errno::EINVAL);
        }
        cur = openat(&cur, comp, dir_flags(), Mode::empty())?;
    }
    Ok(cur)
}

/// Names in a directory, without `.` and `..`, in directory order.
pub(crate) fn read_names(fd: BorrowedFd<'_>) -> nix::Result<Vec<CString>> {
    // A dup has its own `DIR` but shares the offset; nix rewinds when done.
    let mut d = Dir::from_fd(dup(fd)?)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name();
        if n == c"." || n == c".." {
            continue;
        }
        out.push(n.to_owned());
    }
    Ok(out)
}

/// Opens entry `name` of `parent` `O_PATH` without following a symlink:
/// the object itself is not opened (no device or fifo side effects), only
/// referenced, for `fstat` and a later [`reopen_read`].
pub(crate) fn open_path(parent: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    openat(
        parent,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Reopens an [`open_path`] fd for reading through [`PROC_FD`], with
/// `O_NOATIME` when allowed (`EPERM` for a file we do not own unless
/// privileged: then without).
///
/// Always `O_NONBLOCK`: a file under another process's write lease
/// (`fcntl(F_SETLEASE)`) then fails at once with `EWOULDBLOCK` (the lease
/// break is started) instead of blocking until its holder releases it or the
/// kernel's lease-break timeout (`/proc/sys/fs/lease-break-time`, 45 s)
/// expires. Reads of a regular file ignore the flag.
pub(crate) fn reopen_read(path_fd: &OwnedFd) -> nix::Result<OwnedFd> {
    let proc = format!("{PROC_FD}/{}", path_fd.as_raw_fd());
    let ro = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    match nix::fcntl::open(proc.as_str(), ro | OFlag::O_NOATIME, Mode::empty()) {
        Err(Errno::EPERM) => nix::fcntl::open(proc.as_str(), ro, Mode::empty()),
        r => r,
    }
}

/// Most directory fds a [`DirStack`] holds at once, its top's included:
/// far below the default `RLIMIT_NOFILE` of 1024, enough that a walk of an
/// ordinary tree never closes one.
pub(crate) const MAX_OPEN_DIRS: usize = 64;

/// The deepest level (the top is level 0) that the walks of the capture and
/// of the layer go to before failing with an error naming the path: far
/// deeper than real software goes (a path of `PATH_MAX`, 4,096 bytes, has at
/// most 2,048 levels), yet a bound on what a tree built to exhaust memory
/// costs (every path below the top is held whole).
pub(crate) const MAX_TREE_DEPTH: usize = 4096;

/// Opens `..` of `dir`, checked to be the directory inode `expect` (an
/// [`inode_key`]; `ESTALE` otherwise: `dir` was moved).
fn dotdot(dir: BorrowedFd<'_>, expect: (u64, u64)) -> nix::Result<OwnedFd> {
    let fd = openat(dir, c"..", dir_flags(), Mode::empty())?;
    if inode_key(&fstat(&fd)?) != expect {
        return Err(Errno::ESTALE);
    }
    Ok(fd)
}

/// One level of a [`DirStack`]: a directory, its name in the level above,
/// and what the walk keeps about it.
pub(crate) struct DirLevel<T> {
    fd: Option<OwnedFd>,
    name: CString,
    key: (u64, u64),
    /// The walk's own state of this level.
    pub(crate) data: T,
}

impl<T> DirLevel<T> {
    /// The open directory; `None` while closed (see [`DirStack::ensure_open`]).
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// Its name in the level above (empty for the top).
    pub(crate) fn name(&self) -> &CStr {
        &self.name
    }

    /// The open directory and the walk's state, borrowed together.
    pub(crate) fn parts(&mut self) -> (Option<BorrowedFd<'_>>, &mut T) {
        (self.fd.as_ref().map(AsFd::as_fd), &mut self.data)
    }
}

/// The chain of directories from the top of a walk down to the one being
/// read, each an entry of the level above, holding at most
/// [`MAX_OPEN_DIRS`] fds: a push past that closes the shallowest open level
/// below the top (which stays open). A closed level is reopened when it is
/// the deepest again: by [`Self::pop`] through `..` of the level left (one
/// `openat`, checked to be the inode it was), else by [`Self::ensure_open`]
/// by name from its nearest open ancestor, each step checked. While the
/// chain is no deeper than the bound it makes no system call of its own.
pub(crate) struct DirStack<T> {
    levels: Vec<DirLevel<T>>,
    /// Levels `1..first_open` are closed, the later ones open (but for the
    /// deepest after a failed reopen).
    first_open: usize,
    max_open: usize,
}

impl<T> DirStack<T> {
    /// A chain holding only `top`, the directory with inode `key` (an
    /// [`inode_key`]).
    pub(crate) fn new(top: OwnedFd, key: (u64, u64), data: T) -> Self {
        Self::with_max_open(top, key, data, MAX_OPEN_DIRS)
    }

    /// As [`Self::new`] with another bound on open fds (at least 2).
    pub(crate) fn with_max_open(top: OwnedFd, key: (u64, u64), data: T, max_open: usize) -> Self {
        DirStack {
            levels: vec![DirLevel {
                fd: Some(top),
                name: CString::default(),
                key,
                data,
            }],
            first_open: 1,
            max_open: max_open.max(2),
        }
    }

    /// The number of levels, the top included (0 once it was popped).
    pub(crate) fn len(&self) -> usize {
        self.levels.len()
    }

    /// Whether even the top was popped.
    pub(crate) fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The deepest level.
    pub(crate) fn last_mut(&mut self) -> Option<&mut DirLevel<T>> {
        self.levels.last_mut()
    }

    /// Adds `fd`, the subdirectory `name` (inode `key`) of the deepest level,
    /// below it.
    pub(crate) fn push(&mut self, fd: OwnedFd, name: CString, key: (u64, u64), data: T) {
        self.levels.push(DirLevel {
            fd: Some(fd),
            name,
            key,
            data,
        });
        if 1 + self.levels.len() - self.first_open > self.max_open {
            self.levels[self.first_open].fd = None;
            self.first_open += 1;
        }
    }

    /// Removes the deepest level and returns it. The level now deepest, if
    /// closed, is reopened through `..` of the removed one when that is
    /// still it; otherwise it stays closed for [`Self::ensure_open`].
    pub(crate) fn pop(&mut self) -> Option<DirLevel<T>> {
        let gone = self.levels.pop()?;
        let n = self.levels.len();
        if n >= 2 && n - 1 < self.first_open {
            let up = self.levels.len() - 1;
            if let Some(fd) = &gone.fd {
                self.levels[up].fd = dotdot(fd.as_fd(), self.levels[up].key).ok();
            }
            self.first_open = up;
        }
        self.first_open = self.first_open.min(n.max(1));
        Some(gone)
    }

    /// Makes sure the deepest level is open: a closed one is reopened by
    /// name from its nearest open ancestor, each step checked to be the
    /// inode it was (`ESTALE` otherwise). On error it stays closed.
    pub(crate) fn ensure_open(&mut self) -> nix::Result<()> {
        let Some(last) = self.levels.len().checked_sub(1) else {
            return Ok(());
        };
        if self.levels[last].fd.is_some() {
            return Ok(());
        }
        let from = (0..last)
            .rev()
            .find(|&j| self.levels[j].fd.is_some())
            .ok_or(Errno::EBADF)?;
        let mut cur: Option<OwnedFd> = None;
        for k in from + 1..=last {
            let parent = match (&cur, &self.levels[from].fd) {
                (Some(fd), _) | (None, Some(fd)) => fd.as_fd(),
                (None, None) => return Err(Errno::EBADF),
            };
            let lvl = &self.levels[k];
            cur = Some(open_subdir(parent, &lvl.name, lvl.key)?);
        }
        self.levels[last].fd = cur;
        Ok(())
    }

    /// The number of levels holding an open fd.
    #[cfg(test)]
    pub(crate) fn open_fds(&self) -> usize {
        self.levels.iter().filter(|l| l.fd.is_some()).count()
    }
}

/// The number of `/`-separated components of `rel` (0 for `""`).
fn components(rel: &[u8]) -> usize {
    if rel.is_empty() {
        0
    } else {
        rel.split(|b| *b == b'/').count()
    }
}

/// How many leading components `a` and `b` share.
fn shared_components(a: &[u8], b: &[u8]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    a.split(|c| *c == b'/')
        .zip(b.split(|c| *c == b'/'))
        .take_while(|(x, y)| x == y)
        .count()
}

/// One open directory beneath a root, moved from path to path with as few
/// `openat` calls as the paths are apart: up through `..` to the deepest
/// directory both share (each checked to be the inode passed on the way
/// down, `ESTALE` otherwise), or from the root when that is as short, then
/// down by name, never following a symlink. Holds one fd however deep it is;
/// callers that visit paths in walk order pay about one `openat` (and an
/// `fstat`) per step.
pub(crate) struct DirCursor {
    /// The open directory's path below the root (`""`: the root itself).
    rel: Vec<u8>,
    /// The open directory; `None` at the root (the caller's fd is used).
    fd: Option<OwnedFd>,
    /// Inode keys of each directory from the root's child down to `rel`:
    /// one per component.
    keys: Vec<(u64, u64)>,
}

impl DirCursor {
    /// A cursor at the root, whose fd every call passes (none is made here).
    pub(crate) fn new() -> DirCursor {
        DirCursor {
            rel: Vec::new(),
            fd: None,
            keys: Vec::new(),
        }
    }

    /// The directory `rel` (`/`-separated, relative; `""` is `root`)
    /// beneath `root`. `.`, `..` and empty components are `EINVAL`. On
    /// error the cursor is back at the root.
    pub(crate) fn open<'a>(
        &'a mut self,
        root: BorrowedFd<'a>,
        rel: &[u8],
    ) -> nix::Result<BorrowedFd<'a>> {
        if rel != self.rel.as_slice()
            && let Err(e) = self.move_to(root, rel)
        {
            self.reset();
            return Err(e);
        }
        Ok(self.fd.as_ref().map_or(root, AsFd::as_fd))
    }

    fn move_to(&mut self, root: BorrowedFd<'_>, rel: &[u8]) -> nix::Result<()> {
        let mut shared = shared_components(&self.rel, rel);
        let ups = self.keys.len() - shared;
        if ups > 0 && ups >= shared {
            self.reset();
            shared = 0;
        }
        for _ in 0..ups.min(self.keys.len()) {
            self.up()?;
        }
        let comps = rel.split(|b| *b == b'/').filter(|_| !rel.is_empty());
        for comp in comps.skip(shared) {
            if comp.is_empty() || comp == b"." || comp == b".." {
                return Err(Errno::EINVAL);
            }
            let cur = self.fd.as_ref().map_or(root, AsFd::as_fd);
            let fd = openat(cur, comp, dir_flags(), Mode::empty())?;
            self.keys.push(inode_key(&fstat(&fd)?));
            self.fd = Some(fd);
            if !self.rel.is_empty() {
                self.rel.push(b'/');
            }
            self.rel.extend_from_slice(comp);
        }
        debug_assert_eq!(self.keys.len(), components(&self.rel));
        Ok(())
    }

    /// One level up, to the parent of the open directory.
    fn up(&mut self) -> nix::Result<()> {
        let depth = self.keys.len();
        if depth <= 1 {
            // To the root itself: the caller's fd.
            self.reset();
            return Ok(());
        }
        let Some(fd) = &self.fd else {
            return Err(Errno::EBADF);
        };
        let parent = dotdot(fd.as_fd(), self.keys[depth - 2])?;
        self.fd = Some(parent);
        self.keys.pop();
        let cut = self.rel.iter().rposition(|b| *b == b'/').unwrap_or(0);
        self.rel.truncate(cut);
        Ok(())
    }

    /// Back to the root, closing the open directory.
    pub(crate) fn reset(&mut self) {
        self.fd = None;
        self.keys.clear();
        self.rel.clear();
    }

    /// Forgets the open directory if it is `rel` or beneath it: for when
    /// `rel` was removed (a new directory may take its name).
    pub(crate) fn forget_beneath(&mut self, rel: &[u8]) {
        let inside = rel.is_empty()
            || (self.rel.starts_with(rel)
                && (self.rel.len() == rel.len() || self.rel[rel.len()] == b'/'));
        if inside {
            self.reset();
        }
    }
}

/// Removes entry `name` of `parent` whatever it is, a directory with
/// everything below it (as `rm -rf`, never following a symlink, at any
/// depth, with a [`DirStack`]'s bounded fds). Returns whether anything was
/// there.
pub(crate) fn remove_all_at(parent: BorrowedFd<'_>, name: &CStr) -> nix::Result<bool> {
    match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => return Ok(true),
        Err(Errno::ENOENT) => return Ok(false),
        // Linux's answer for a directory.
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e),
    }
    match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) => return Ok(true),
        Err(Errno::ENOENT) => return Ok(false),
        Err(Errno::ENOTEMPTY | Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    let top = openat(parent, name, dir_flags(), Mode::empty())?;
    let key = inode_key(&fstat(&top)?);
    let names = read_names(top.as_fd())?;
    let mut stack = DirStack::new(top, key, (names, 0usize));
    while let Some(lvl) = stack.last_mut() {
        let (fd, (names, idx)) = lvl.parts();
        let Some(fd) = fd else {
            stack.ensure_open()?;
            continue;
        };
        if *idx < names.len() {
            let n = std::mem::take(&mut names[*idx]);
            *idx += 1;
            match unlinkat(fd, n.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => continue,
                Err(Errno::EISDIR) => {}
                Err(e) => return Err(e),
            }
            match unlinkat(fd, n.as_c_str(), UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => continue,
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
            let sub = openat(fd, n.as_c_str(), dir_flags(), Mode::empty())?;
            let key = inode_key(&fstat(&sub)?);
            let names = read_names(sub.as_fd())?;
            stack.push(sub, n, key, (names, 0));
            continue;
        }
        // The deepest level is empty now: remove it from the one above.
        let Some(done) = stack.pop() else { break };
        if stack.is_empty() {
            break;
        }
        stack.ensure_open()?;
        let Some(up) = stack.last_mut().and_then(|l| l.fd()) else {
            return Err(Errno::EBADF);
        };
        unlinkat(up, done.name(), UnlinkatFlags::RemoveDir)?;
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)?;
    Ok(true)
}

/// Removes `path` as [`remove_all_at`] does; the path up to its last
/// component is trusted. Returns whether anything was there.
pub(crate) fn remove_all(path: &Path) -> nix::Result<bool> {
    let name = path.file_name().ok_or(Errno::EINVAL)?;
    let name = CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = match nix::fcntl::open(parent, dir_flags(), Mode::empty()) {
        Err(Errno::ENOENT) => return Ok(false),
        r => r?,
    };
    remove_all_at(dir.as_fd(), &name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::mkdirat;

    fn key_of(fd: BorrowedFd<'_>) -> (u64, u64) {
        inode_key(&fstat(fd).unwrap())
    }

    fn sub(dir: BorrowedFd<'_>, name: &CStr) -> OwnedFd {
        openat(dir, name, dir_flags(), Mode::empty()).unwrap()
    }

    /// A chain of `depth` directories `name` below `top`; the deepest is
    /// returned open.
    fn chain(top: &Path, depth: usize, name: &CStr) -> OwnedFd {
        let mut cur = open_dir(top).unwrap();
        for _ in 0..depth {
            mkdirat(&cur, name, Mode::from_bits_truncate(0o755)).unwrap();
            cur = sub(cur.as_fd(), name);
        }
        cur
    }

    /// A [`DirStack`] down `depth` levels of `name` below `top`, holding at
    /// most `max_open` fds; returns it and the inode keys of the levels.
    fn stack_down(
        top: &Path,
        name: &CStr,
        depth: usize,
        max_open: usize,
    ) -> (DirStack<usize>, Vec<(u64, u64)>) {
        let top = open_dir(top).unwrap();
        let mut keys = vec![key_of(top.as_fd())];
        let mut stack = DirStack::with_max_open(top, keys[0], 0, max_open);
        for i in 1..=depth {
            let parent = stack.last_mut().unwrap().fd().unwrap();
            let fd = sub(parent, name);
            keys.push(key_of(fd.as_fd()));
            stack.push(fd, name.to_owned(), keys[i], i);
            assert!(stack.open_fds() <= max_open.max(2));
        }
        (stack, keys)
    }

    #[test]
    fn dir_stack_holds_few_fds_and_climbs_back_through_dotdot() {
        let t = tempfile::tempdir().unwrap();
        chain(t.path(), 40, c"d");
        let (mut stack, keys) = stack_down(t.path(), c"d", 40, 4);
        assert_eq!(stack.open_fds(), 4);
        for i in (0..40).rev() {
            assert_eq!(stack.pop().unwrap().data, i + 1);
            let lvl = stack.last_mut().unwrap();
            assert_eq!(lvl.data, i);
            let fd = lvl.fd().expect("reopened through ..");
            assert_eq!(key_of(fd), keys[i]);
            assert!(stack.open_fds() <= 4);
        }
        assert_eq!(stack.pop().unwrap().name(), c"");
        assert!(stack.is_empty() && stack.pop().is_none());
        assert!(stack.ensure_open().is_ok());
    }

    #[test]
    fn dir_stack_reopens_by_name_when_moved_and_fails_when_gone() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        chain(p, 4, c"d");
        // Open: the top and the 4th level; levels 1 to 3 closed.
        let (mut stack, keys) = stack_down(p, c"d", 4, 2);
        // The 4th level moves away: its `..` is no longer the 3rd.
        std::fs::rename(p.join("d/d/d/d"), p.join("moved")).unwrap();
        stack.pop();
        assert!(stack.last_mut().unwrap().fd().is_none());
        stack.ensure_open().unwrap();
        assert_eq!(key_of(stack.last_mut().unwrap().fd().unwrap()), keys[3]);

        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        chain(p, 3, c"d");
        let (mut stack, _) = stack_down(p, c"d", 3, 2);
        // Neither `..` of the 3rd level nor the name of the 2nd leads back.
        std::fs::rename(p.join("d/d/d"), p.join("moved")).unwrap();
        std::fs::rename(p.join("d/d"), p.join("d/gone")).unwrap();
        stack.pop();
        assert_eq!(stack.ensure_open(), Err(Errno::ENOENT));
        assert!(stack.last_mut().unwrap().fd().is_none());
        // An inode swapped in under the same name is refused.
        std::fs::create_dir(p.join("d/d")).unwrap();
        assert_eq!(stack.ensure_open(), Err(Errno::ESTALE));
    }

    #[test]
    fn cursor_moves_between_paths_and_checks_dotdot() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        for d in ["x/y/z", "x/w", "q"] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        let root = open_dir(p).unwrap();
        let root = root.as_fd();
        let stat_key = |rel: &str| {
            let md = std::fs::metadata(p.join(rel)).unwrap();
            use std::os::unix::fs::MetadataExt;
            (md.dev(), md.ino())
        };
        let mut c = DirCursor::new();
        assert_eq!(c.open(root, b"").unwrap().as_raw_fd(), root.as_raw_fd());
        for rel in [
            "x/y/z", "x/y", "x/w", "x", "q", "x/y/z", "", "x/y/z", "x/y/z",
        ] {
            let fd = c.open(root, rel.as_bytes()).unwrap();
            assert_eq!(key_of(fd), stat_key(rel), "{rel}");
        }
        for bad in ["x/../q", "x//y", "/x", "x/", ".", "x/./y"] {
            assert_eq!(
                c.open(root, bad.as_bytes()).err(),
                Some(Errno::EINVAL),
                "{bad}"
            );
            assert_eq!(key_of(c.open(root, b"x/w").unwrap()), stat_key("x/w"));
        }
        assert_eq!(c.open(root, b"x/nope").err(), Some(Errno::ENOENT));

        // `..` of a moved directory is not its old parent.
        c.open(root, b"x/y/z").unwrap();
        std::fs::rename(p.join("x/y/z"), p.join("z2")).unwrap();
        assert_eq!(c.open(root, b"x/y").err(), Some(Errno::ESTALE));
        assert_eq!(key_of(c.open(root, b"x/y").unwrap()), stat_key("x/y"));

        // A directory removed and made anew under the same name.
        c.forget_beneath(b"x/yy");
        let old = key_of(c.open(root, b"x/y").unwrap());
        assert!(remove_all_at(root, c"x").unwrap());
        std::fs::create_dir_all(p.join("x/y")).unwrap();
        c.forget_beneath(b"x");
        let new = key_of(c.open(root, b"x/y").unwrap());
        assert_ne!(old, new);
        assert_eq!(new, stat_key("x/y"));
        c.forget_beneath(b"");
        assert_eq!(key_of(c.open(root, b"q").unwrap()), stat_key("q"));
    }

    #[test]
    fn cursor_and_removal_work_far_beyond_path_max() {
        const DEPTH: usize = 1500;
        let name = c"x123456789";
        let t = tempfile::tempdir().unwrap();
        let top = t.path().join("top");
        std::fs::create_dir(&top).unwrap();
        let bottom = chain(&top, DEPTH, name);
        let want = key_of(bottom.as_fd());
        drop(bottom);
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();

        let root = open_dir(&top).unwrap();
        let root = root.as_fd();
        let rel = vec![name.to_bytes(); DEPTH].join(&b'/');
        let mut c = DirCursor::new();
        let deep = c.open(root, &rel).unwrap();
        assert_eq!(key_of(deep), want);
        // Entries of every kind at the bottom and halfway up.
        for (at, depth) in [(deep.as_raw_fd(), DEPTH), (-1, DEPTH / 2)] {
            let dir = if at >= 0 {
                c.open(root, &rel).unwrap()
            } else {
                c.open(root, &rel[..(name.to_bytes().len() + 1) * depth - 1])
                    .unwrap()
            };
            let f = openat(
                dir,
                c"f",
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .unwrap();
            drop(f);
            nix::unistd::symlinkat(outside.as_path(), dir, c"to-outside").unwrap();
            nix::unistd::mkfifoat(dir, c"fifo", Mode::from_bits_truncate(0o644)).unwrap();
        }
        assert!(remove_all(&top).unwrap());
        assert!(!top.exists());
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"k");
        assert!(!remove_all(&top).unwrap());
        assert!(!remove_all(&t.path().join("no/such/dir")).unwrap());
    }
}
