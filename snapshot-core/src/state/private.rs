//! Where captures may live: below a directory only root can enter, on a
//! path only root can change.
//!
//! A capture is a copy of whatever the container created: setuid-root
//! executables, device nodes of any major:minor, files of any mode. Its own
//! root takes the upper dir root's mode (0755, say). Whoever can reach one of
//! those files can run it or open the device, for as long as the capture
//! exists (a failed job keeps it). So every capture is created inside a
//! *private root*: a directory that we own, mode 0700, whose ancestors are
//! owned by root (or us) and writable by nobody else (a sticky directory
//! such as `/tmp` is accepted: others cannot move our entries in it). An
//! unprivileged user can then neither enter the private root nor swap it, or
//! any directory above it, for one of their own while we copy into it.
//!
//! Invariants: a private root is checked every time one is handed out, not
//! only when it is created; a directory we do not own, or a path someone
//! else can change, is refused with [`Error::InvalidArgument`], never used.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The private subdirectory made in a configured `capture_root` that others
/// can enter, and under containerd's snapshotter root.
pub(crate) const PRIVATE_SUBDIR: &str = "seamless-capture";

/// The private root to create captures in, given the configured
/// `capture_root` directory `dir`:
/// - missing: created (mode 0700), and used itself;
/// - ours and mode 0700 (or stricter): used itself;
/// - owned by root (or us) but open to others: its [`PRIVATE_SUBDIR`]
///   subdirectory, created or made mode 0700;
/// - owned by anyone else, or not a directory: refused.
///
/// Returns the private root's canonical path.
pub(crate) fn private_root_in(dir: &Path) -> Result<PathBuf> {
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .at("create directory", dir)?;
    }
    let dir = std::fs::canonicalize(dir).at("resolve", dir)?;
    let md = std::fs::symlink_metadata(&dir).at("stat", &dir)?;
    if !md.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "capture root {} is not a directory",
            dir.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    let root = if md.uid() == me && md.mode() & 0o077 == 0 {
        check_private(&dir)?;
        dir
    } else if trusted_owner(md.uid()) {
        private_subdir(&dir.join(PRIVATE_SUBDIR))?
    } else {
        return Err(Error::InvalidArgument(format!(
            "capture root {} is owned by uid {}: captures need a directory only root controls",
            dir.display(),
            md.uid()
        )));
    };
    check_ancestors(&root)?;
    Ok(root)
}

/// The private directory `dir` (a name reserved for captures): created mode
/// 0700 if missing, made mode 0700 if it is ours but open to others (an
/// older version or a umask may have left it so), refused if it is not a
/// directory we own. Its ancestors are checked too. Returns its canonical
/// path.
pub(crate) fn private_subdir(dir: &Path) -> Result<PathBuf> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create directory", dir, e)),
    }
    // Not canonicalized yet: a symlink in its place is refused, not followed.
    let md = std::fs::symlink_metadata(dir).at("stat", dir)?;
    let me = nix::unistd::geteuid().as_raw();
    if !md.is_dir() || md.uid() != me {
        return Err(Error::InvalidArgument(format!(
            "{} is not a directory owned by uid {me}: refusing to put captures in it",
            dir.display()
        )));
    }
    if md.mode() & 0o077 != 0 {
        tracing::warn!(path = %dir.display(), mode = format!("{:o}", md.mode() & 0o7777), "making the capture directory private (0700)");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).at("chmod", dir)?;
    }
    let dir = std::fs::canonicalize(dir).at("resolve", dir)?;
    check_private(&dir)?;
    check_ancestors(&dir)?;
    Ok(dir)
}

/// Checks that the existing directory `dir` and every directory above it
/// are a path only root (or we) can change: the private root in the
/// job-directory case, where each capture's own 0700 job directory is the
/// private part.
pub(crate) fn check_trusted_path(dir: &Path) -> Result<()> {
    let dir = std::fs::canonicalize(dir).at("resolve", dir)?;
    check_ancestors(&dir)?;
    let md = std::fs::symlink_metadata(&dir).at("stat", &dir)?;
    check_trusted(&dir, &dir, &md)
}

/// Whether a directory owned by `uid` is one only root controls.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// `dir` (canonical) is a directory we own that nobody else can enter.
fn check_private(dir: &Path) -> Result<()> {
    let md = std::fs::symlink_metadata(dir).at("stat", dir)?;
    let me = nix::unistd::geteuid().as_raw();
    if !md.is_dir() || md.uid() != me || md.mode() & 0o077 != 0 {
        return Err(Error::InvalidArgument(format!(
            "capture directory {} is not private (uid {}, mode {:o}; needs uid {me}, mode 0700)",
            dir.display(),
            md.uid(),
            md.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Every proper ancestor of the canonical path `dir` is owned by root (or
/// us) and writable by nobody else, unless sticky.
fn check_ancestors(dir: &Path) -> Result<()> {
    for a in dir.ancestors().skip(1) {
        let md = std::fs::symlink_metadata(a).at("stat", a)?;
        check_trusted(dir, a, &md)?;
    }
    Ok(())
}

/// The directory `a` (above or at `dir`) cannot be changed by anyone but
/// root: owned by root or us, and not writable by group or others, unless
/// sticky (others then cannot rename or remove what they do not own).
fn check_trusted(dir: &Path, a: &Path, md: &std::fs::Metadata) -> Result<()> {
    let mode = md.mode();
    let writable_by_others = mode & 0o022 != 0 && mode & libc::S_ISVTX == 0;
    if !trusted_owner(md.uid()) || writable_by_others {
        return Err(Error::InvalidArgument(format!(
            "captures cannot go to {}: {} (uid {}, mode {:o}) can be changed by others, \
             who could move the captures out of it; use a directory only root can change",
            dir.display(),
            a.display(),
            md.uid(),
            mode & 0o7777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn chmod(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    /// A scratch dir whose ancestors are trusted (`/tmp` is sticky).
    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// A new directory `name` in `t` that anyone can enter (0755).
    fn open_dir(t: &tempfile::TempDir, name: &str) -> PathBuf {
        let dir = t.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        dir
    }

    #[test]
    fn a_missing_root_is_created_private_and_used_itself() {
        let t = scratch();
        let dir = t.path().join("a/b");
        let root = private_root_in(&dir).unwrap();
        assert_eq!(root, std::fs::canonicalize(&dir).unwrap());
        assert_eq!(mode(&root), 0o700);
    }

    #[test]
    fn a_private_root_of_ours_is_used_itself() {
        let t = scratch();
        chmod(t.path(), 0o700);
        let root = private_root_in(t.path()).unwrap();
        assert_eq!(root, std::fs::canonicalize(t.path()).unwrap());
    }

    #[test]
    fn an_open_root_gets_a_private_subdirectory() {
        let t = scratch();
        let dir = open_dir(&t, "open");
        let root = private_root_in(&dir).unwrap();
        assert_eq!(root.file_name().unwrap(), PRIVATE_SUBDIR);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(
            mode(&dir),
            0o755,
            "the configured directory is left as it is"
        );

        // A subdirectory an older version (or a umask) left open is closed.
        chmod(&root, 0o755);
        assert_eq!(private_root_in(&dir).unwrap(), root);
        assert_eq!(mode(&root), 0o700);
    }

    #[test]
    fn a_symlink_or_file_in_place_of_the_subdirectory_is_refused() {
        let t = scratch();
        let dir = open_dir(&t, "open");
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(PRIVATE_SUBDIR)).unwrap();
        let e = private_root_in(&dir).unwrap_err();
        assert!(e.to_string().contains("not a directory owned"), "{e}");

        std::fs::remove_file(dir.join(PRIVATE_SUBDIR)).unwrap();
        std::fs::write(dir.join(PRIVATE_SUBDIR), b"x").unwrap();
        assert!(private_root_in(&dir).is_err());
    }

    #[test]
    fn a_path_others_can_change_is_refused() {
        let t = scratch();
        let open = t.path().join("world-writable");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let e = private_root_in(&open.join("caps")).unwrap_err();
        assert!(e.to_string().contains("can be changed by others"), "{e}");
        let e = check_trusted_path(&open).unwrap_err();
        assert!(e.to_string().contains("can be changed by others"), "{e}");
        // Sticky, like /tmp: others cannot move our entries.
        chmod(&open, 0o1777);
        private_root_in(&open.join("caps")).unwrap();
        check_trusted_path(&open).unwrap();
    }

    #[test]
    #[ignore = "needs root"]
    fn a_root_owned_by_someone_else_is_refused() {
        let t = scratch();
        let theirs = t.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let e = private_root_in(&theirs).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        // The same for a reserved subdirectory someone else made.
        let open = open_dir(&t, "open");
        std::fs::create_dir(open.join(PRIVATE_SUBDIR)).unwrap();
        nix::unistd::chown(
            &open.join(PRIVATE_SUBDIR),
            Some(nix::unistd::Uid::from_raw(65534)),
            None,
        )
        .unwrap();
        assert!(private_root_in(&open).is_err());
    }
}
