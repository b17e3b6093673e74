//! Files the container maps shared and writable.
//!
//! A write to an already-dirty page of a `MAP_SHARED` mapping changes neither
//! mtime nor ctime, so the frozen sync re-copies such files whatever their
//! stat says. They are sampled from the start of the pre-copy on, and a file
//! once seen mapped stays dirty for the whole capture: it may be unmapped
//! again before the freeze with such writes still in its pages.
//!
//! A mapping is matched on either device `/proc/<pid>/maps` may show for a
//! file of the container's root overlay: the overlay's (kernels 6.8 and
//! later; the path shown is then the container's, relative to its root), or
//! the upper filesystem's (before 6.8; the inode shown is then the upper
//! file's, and the path may be a host path, so the inode is used).

use std::collections::HashSet;

use crate::procfs::maps::{SharedMapping, shared_writable_mappings};

/// Regular files to re-copy in the next sync whatever their stat says: by
/// path relative to the upper dir, or by upper-dir inode number.
#[derive(Debug, Clone, Default)]
pub(crate) struct Forced {
    paths: HashSet<Vec<u8>>,
    inos: HashSet<u64>,
}

impl Forced {
    /// Files forced by path (relative to the upper dir).
    #[cfg(test)]
    pub(crate) fn paths(paths: impl IntoIterator<Item = Vec<u8>>) -> Forced {
        Forced {
            paths: paths.into_iter().collect(),
            inos: HashSet::new(),
        }
    }

    /// Whether the entry `rel` with upper-dir inode `ino` is forced.
    pub(super) fn contains(&self, rel: &[u8], ino: u64) -> bool {
        (!self.inos.is_empty() && self.inos.contains(&ino)) || self.paths.contains(rel)
    }

    /// Adds everything `other` forces.
    pub(super) fn extend(&mut self, other: &Forced) {
        self.paths.extend(other.paths.iter().cloned());
        self.inos.extend(other.inos.iter().copied());
    }

    /// Adds the files forced to `dirty`: those by path as they are, those
    /// by inode through the records (a scan, only when there are some).
    pub(super) fn add_to(
        &self,
        recs: &std::collections::BTreeMap<Vec<u8>, super::meta::Rec>,
        dirty: &mut super::track::Dirty,
    ) {
        for p in &self.paths {
            dirty.mark(p.clone(), false);
        }
        if !self.inos.is_empty() {
            for (k, r) in recs {
                if r.meta.fmt() == libc::S_IFREG && self.inos.contains(&r.meta.ino) {
                    dirty.mark(k.clone(), false);
                }
            }
        }
    }

    /// Forgets everything.
    pub(super) fn clear(&mut self) {
        self.paths.clear();
        self.inos.clear();
    }
}

/// Every file of the container's root overlay seen mapped shared-writable
/// by its processes so far.
#[derive(Debug, Clone)]
pub(crate) struct MappedFiles {
    overlay_dev: u64,
    upper_dev: u64,
    seen: Forced,
}

impl MappedFiles {
    /// Tracks mappings of files on the overlay `overlay_dev` (the device of
    /// the container's root) whose upper dir lives on `upper_dev`.
    pub(crate) fn new(overlay_dev: u64, upper_dev: u64) -> MappedFiles {
        MappedFiles {
            overlay_dev,
            upper_dev,
            seen: Forced::default(),
        }
    }

    /// Adds what `pids` map shared-writable now.
    pub(crate) fn sample(&mut self, pids: &HashSet<u32>) {
        for m in shared_writable_mappings(pids) {
            self.record(m);
        }
    }

    fn record(&mut self, m: SharedMapping) {
        if m.dev == self.overlay_dev {
            if let Some(rel) = m.path.strip_prefix(b"/")
                && !rel.is_empty()
            {
                self.seen.paths.insert(rel.to_vec());
            }
        } else if m.dev == self.upper_dev {
            self.seen.inos.insert(m.ino);
        }
    }

    /// The files seen so far.
    pub(crate) fn files(&self) -> &Forced {
        &self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_device_is_matched_path_or_inode() {
        let (ovl, upper, other) = (10, 20, 30);
        let mut m = MappedFiles::new(ovl, upper);
        let map = |dev, ino, path: &[u8]| SharedMapping {
            dev,
            ino,
            path: path.to_vec(),
        };
        // 6.8+: the overlay's device, the path inside the container.
        m.record(map(ovl, 500, b"/data/db"));
        // Before 6.8: the upper fs's device and inode, a host path.
        m.record(map(
            upper,
            777,
            b"/var/lib/containerd/snapshots/9/fs/data/old",
        ));
        // A volume on another device, and the overlay's root itself.
        m.record(map(other, 888, b"/volume/file"));
        m.record(map(ovl, 2, b"/"));
        let f = m.files();
        assert!(f.contains(b"data/db", 1));
        assert!(f.contains(b"data/old", 777));
        assert!(!f.contains(b"data/old", 778));
        assert!(!f.contains(b"volume/file", 888));
        assert!(!f.contains(b"", 2));
        assert!(
            !f.contains(b"data/other", 500),
            "overlay inodes are not upper inodes"
        );
    }
}
