//! Which directories of the upper dir are *merge* directories: those a
//! lower layer also holds at the same path, so that overlayfs shows their
//! lower entries through them.
//!
//! Why the frozen window cares: a directory's times can change with no
//! fanotify event when overlayfs renames an entry that hides a lower one
//! with `RENAME_WHITEOUT` and the upper filesystem fails that rename (ext4
//! makes the whiteout, then puts the old entry back and stamps the source
//! directory; see [`super::incr`]). Overlayfs asks for a whiteout only when
//! the renamed name is positive in a lower layer, which it looks up through
//! the source directory's own lower directories: the source is a merge
//! directory. So only merge directories need the window's `lstat` — the
//! few a container's writes reach in the image (`/etc`, `/var/log`, ...),
//! not the thousands it creates.
//!
//! Over-approximated, never under: a directory counts as merge when any
//! lower layer holds a directory (not a symlink to one) at its path, under
//! a parent that counts as merge, whatever whiteouts or opaque markers in
//! higher layers hide; a lower layer that cannot be read at some path
//! counts as holding it. The path is the directory's own because
//! `redirect_dir=on`, which lets a merge directory's lower live elsewhere,
//! is refused before a capture starts.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::fstatat;

use super::paths::split_rel;
use crate::sys::fs::DirCursor;

/// The lower layers of an upper dir, opened.
#[derive(Debug)]
pub(super) struct Lowers {
    roots: Vec<OwnedFd>,
}

impl Lowers {
    /// Opens every lower layer; `None` if any cannot be opened (then every
    /// directory must be treated as a merge directory).
    pub(super) fn open(paths: &[std::path::PathBuf]) -> Option<Lowers> {
        let mut roots = Vec::with_capacity(paths.len());
        for p in paths {
            match crate::sys::fs::open_dir(p) {
                Ok(fd) => roots.push(fd),
                Err(e) => {
                    tracing::debug!(lower = %p.display(), error = %e, "lower layer not readable: every directory is checked");
                    return None;
                }
            }
        }
        Some(Lowers { roots })
    }

    /// The merge directories among `dirs` (directory paths relative to
    /// the upper dir, in path order: a parent before its children), in
    /// the same order. The root is always one.
    pub(super) fn merge_dirs(&self, dirs: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut cursors: Vec<DirCursor> = self.roots.iter().map(|_| DirCursor::new()).collect();
        let mut merge: HashSet<Vec<u8>> = HashSet::new();
        let mut out = Vec::new();
        for rel in dirs {
            if rel.is_empty() {
                merge.insert(Vec::new());
                out.push(rel);
                continue;
            }
            let Ok((prel, name)) = split_rel(&rel) else {
                // Not a path a lower layer could hold: checked anyway.
                out.push(rel);
                continue;
            };
            if !merge.contains(prel) {
                continue;
            }
            let held = self
                .roots
                .iter()
                .zip(cursors.iter_mut())
                .any(|(root, cur)| {
                    let dir = match cur.open(root.as_fd(), prel) {
                        Ok(d) => d,
                        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return false,
                        Err(_) => return true,
                    };
                    match fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                        Ok(st) => st.st_mode & libc::S_IFMT == libc::S_IFDIR,
                        Err(Errno::ENOENT | Errno::ENOTDIR) => false,
                        Err(_) => true,
                    }
                });
            if held {
                merge.insert(rel.clone());
                out.push(rel);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn only_directories_some_lower_layer_holds_at_the_same_path() {
        let t = tempfile::tempdir().expect("tempdir");
        let (l1, l2) = (t.path().join("l1"), t.path().join("l2"));
        for d in ["etc/ssl", "var/log", "usr"] {
            std::fs::create_dir_all(l1.join(d)).expect("mkdir");
        }
        std::fs::create_dir_all(l2.join("opt/app")).expect("mkdir");
        std::fs::write(l1.join("etc/file"), b"x").expect("write");
        std::os::unix::fs::symlink("usr", l1.join("lib")).expect("symlink");
        let lowers = Lowers::open(&[l1, l2]).expect("open lowers");
        let recorded = dirs(&[
            "",
            "data",
            "data/etc",
            "etc",
            "etc/file",
            "etc/new",
            "etc/ssl",
            "lib",
            "opt",
            "opt/app",
            "opt/app/x",
            "var",
            "var/log",
        ]);
        let got = lowers.merge_dirs(recorded);
        // "data/etc" is below a non-merge directory; "etc/file" is a file in
        // the lower; "lib" a symlink there; "etc/new", "opt/app/x" new.
        assert_eq!(
            got,
            dirs(&["", "etc", "etc/ssl", "opt", "opt/app", "var", "var/log"])
        );
    }

    #[test]
    fn no_lower_layer_means_only_the_root() {
        let lowers = Lowers::open(&[]).expect("no lowers");
        assert_eq!(lowers.merge_dirs(dirs(&["", "a", "a/b"])), dirs(&[""]));
    }

    #[test]
    fn an_unreadable_lower_layer_is_refused() {
        assert!(Lowers::open(&["/nonexistent/seamless-lower".into()]).is_none());
    }
}
