//! Dirty tracking of an upper dir: which paths may have changed since a
//! point in time, so that a later sync looks at those only.
//!
//! A fanotify group (`FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME`) marks the
//! whole filesystem holding the upper dir (the overlay mount itself cannot
//! be marked); each event names a directory by its file handle and an entry
//! by name. Handles are resolved to paths ([`kernel`]) and cached; the
//! thousands of unrelated events of the rest of the filesystem (the capture
//! itself among them) are dropped by that path. Overlayfs copy-up (a create
//! under `work/`, then a rename into the upper dir) and whiteouts (renamed
//! in) are renames into the tree like any other.
//!
//! What a path in the [`Dirty`] set means: the entry may differ from its
//! copy; for a directory, its own metadata may; with `subtree`, anything
//! below it may too (a directory created or moved in: events inside it
//! before it arrived named another path). A directory whose entries change
//! is dirty itself (its times did). A link count change reported on an
//! inode alone (a rename over one of a hardlink's names) puts the inode in
//! [`Dirty::inodes`]. What no event reports at all — a directory's times
//! stamped by a failed overlayfs whiteout rename — the frozen sync covers
//! by looking at every directory ([`super::incr`]).
//!
//! Invariants: nothing is ever guessed. A queue overflow, a filesystem
//! error, a handle that cannot be resolved for any reason but the
//! directory's removal, an event without a directory, a lost mark, a
//! failed start, or the upper dir itself renamed make the tracker
//! *untrustworthy* for the rest of its life, and the caller does a full
//! compare instead. A removed directory (unresolvable handle, `ESTALE`) is
//! safe to ignore: its removal is an event in a directory that still
//! exists, or whose removal is, up to the upper dir. Cached paths go stale
//! only through a directory rename inside the tree, which clears the cache
//! (and whose target is re-synced as a subtree). Reading never blocks.

pub(crate) mod events;
pub(crate) mod kernel;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use events::{
    ATTRIB, DELETE_SELF, DIRENT, Event, FS_ERROR, Handle, MOVE_SELF, MOVED_FROM, MOVED_TO, ONDIR,
    Q_OVERFLOW, parse,
};
use kernel::{Kernel, Resolved, Source};

/// What may differ from the copy.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    /// Paths (relative to the upper dir), in path order (a parent before
    /// its children); `true`: its whole subtree.
    pub(crate) paths: BTreeMap<Vec<u8>, bool>,
    /// Live inodes events in the tree were about (created, linked, moved
    /// in, written, removed): their other names may have changed without
    /// an event of their own (a link count; a write through a name removed
    /// since, which overlayfs may still use).
    pub(crate) inodes: HashSet<(u64, u64)>,
}

impl Dirty {
    /// Nothing dirty.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.inodes.is_empty()
    }

    /// How many paths and inodes.
    pub(crate) fn len(&self) -> usize {
        self.paths.len() + self.inodes.len()
    }

    /// Marks `rel` dirty (its subtree too if `subtree`).
    pub(crate) fn mark(&mut self, rel: Vec<u8>, subtree: bool) {
        *self.paths.entry(rel).or_default() |= subtree;
    }

    /// Adds everything `other` holds.
    pub(crate) fn merge(&mut self, other: Dirty) {
        for (p, s) in other.paths {
            self.mark(p, s);
        }
        self.inodes.extend(other.inodes);
    }
}

/// Size of the read buffer: many events per `read`.
const BUF_LEN: usize = 64 * 1024;

/// The dirty tracker of one upper dir.
pub(crate) struct Tracker {
    src: Option<Box<dyn Source>>,
    /// The upper dir's absolute path, as the kernel reports it.
    upper: Vec<u8>,
    /// Its parent and its name there.
    upper_parent: Vec<u8>,
    upper_name: Vec<u8>,
    /// Handle (type, then bytes) -> path relative to the upper dir, `None`
    /// for a directory outside it.
    cache: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// The cache key being built (no allocation per event).
    key: Vec<u8>,
    buf: Vec<u8>,
    dirty: Dirty,
    /// Handles (type, then bytes) of the non-directories events in the tree
    /// were about, resolved to inodes when the set is taken.
    arrived: HashSet<Vec<u8>>,
    /// Events to look at again (their directory was busy).
    deferred: Vec<Deferred>,
    untrusted: Option<String>,
    /// Events read (all of the filesystem) and kept (in the tree).
    pub(crate) read: u64,
    pub(crate) kept: u64,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("dirty", &self.dirty.len())
            .field("untrusted", &self.untrusted)
            .finish()
    }
}

impl Tracker {
    /// Starts tracking `upper` (an absolute path without symlinks, as
    /// `/proc/self/fd` shows it). Never fails: a tracker that cannot start
    /// is untrustworthy from the start, with the reason.
    pub(crate) fn start(upper: &Path) -> Tracker {
        let upper = match std::fs::canonicalize(upper) {
            Ok(p) => p,
            Err(e) => return Tracker::untrusted_from(upper, format!("resolve the upper dir: {e}")),
        };
        match Kernel::start(&upper) {
            Ok(k) => Tracker::with_source(&upper, Box::new(k)),
            Err(e) => Tracker::untrusted_from(
                &upper,
                format!("fanotify on the upper dir's filesystem: {e}"),
            ),
        }
    }

    fn untrusted_from(upper: &Path, why: String) -> Tracker {
        let mut t = Tracker::new(upper, None);
        t.untrusted = Some(why);
        t
    }

    /// A tracker reading `src` (tests pass a fake).
    pub(crate) fn with_source(upper: &Path, src: Box<dyn Source>) -> Tracker {
        Tracker::new(upper, Some(src))
    }

    fn new(upper: &Path, src: Option<Box<dyn Source>>) -> Tracker {
        let upper = upper.as_os_str().as_bytes().to_vec();
        let cut = upper.iter().rposition(|b| *b == b'/').unwrap_or(0);
        Tracker {
            src,
            upper_parent: if cut == 0 {
                b"/".to_vec()
            } else {
                upper[..cut].to_vec()
            },
            upper_name: upper[(cut + 1).min(upper.len())..].to_vec(),
            upper,
            cache: HashMap::new(),
            key: Vec::with_capacity(64),
            buf: vec![0; BUF_LEN],
            dirty: Dirty::default(),
            arrived: HashSet::new(),
            deferred: Vec::new(),
            untrusted: None,
            read: 0,
            kept: 0,
        }
    }

    /// Why the tracker cannot be trusted, if it cannot.
    pub(crate) fn untrusted(&self) -> Option<&str> {
        self.untrusted.as_deref()
    }

    /// A tracker that tracks nothing and is never trusted.
    pub(crate) fn lost(why: &str) -> Tracker {
        Tracker::untrusted_from(Path::new("/"), why.to_string())
    }

    /// Makes the tracker untrustworthy for the rest of its life.
    pub(crate) fn distrust(&mut self, why: impl Into<String>) {
        if self.untrusted.is_none() {
            let why = why.into();
            tracing::debug!(reason = %why, "dirty tracking untrustworthy: full compare");
            self.untrusted = Some(why);
        }
        // Nothing more is worth reading.
        self.src = None;
        self.dirty = Dirty::default();
        self.arrived.clear();
        self.deferred.clear();
        self.cache.clear();
    }

    /// Looks at the deferred events again; `last`: those still not
    /// resolvable make the tracker untrustworthy.
    fn retry(&mut self, last: bool) {
        for d in std::mem::take(&mut self.deferred) {
            let before = self.deferred.len();
            let e = Event {
                mask: d.mask,
                dir: Some(Handle {
                    kind: d.dir.0,
                    bytes: &d.dir.1,
                }),
                name: &d.name,
                obj: d
                    .obj
                    .as_ref()
                    .map(|(kind, bytes)| Handle { kind: *kind, bytes }),
                fd: -1,
            };
            self.event(e);
            if last && self.deferred.len() > before {
                self.distrust("resolve a directory handle: ENOMEM, again and again");
            }
        }
    }

    /// Reads every queued event into the dirty set, without blocking.
    pub(crate) fn drain(&mut self) {
        self.retry(false);
        loop {
            let Some(src) = self.src.as_mut() else {
                return;
            };
            let n = match src.read(&mut self.buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => return self.distrust(format!("read fanotify events: {e}")),
            };
            let buf = std::mem::take(&mut self.buf);
            let parsed = parse(&buf[..n], |e| {
                if e.fd >= 0 {
                    // Not asked for in fid mode; never leak one.
                    // SAFETY: the kernel opened this fd for us and nothing
                    // else owns it.
                    drop(unsafe { OwnedFd::from_raw_fd(e.fd) });
                }
                self.read += 1;
                self.event(e);
            });
            self.buf = buf;
            if let Err(m) = parsed {
                return self.distrust(format!("malformed fanotify event: {}", m.0));
            }
        }
    }

    /// Checks the mark is still in place (not inside the window: it reads
    /// a proc file).
    pub(crate) fn check_mark(&mut self) {
        if let Some(src) = self.src.as_mut()
            && !src.marked()
        {
            self.distrust("the fanotify filesystem mark is gone");
        }
    }

    /// The dirty set so far, emptied, with the inodes that arrived as they
    /// are now; `Err(reason)` if untrustworthy.
    pub(crate) fn take(&mut self) -> Result<Dirty, String> {
        self.retry(true);
        for h in std::mem::take(&mut self.arrived) {
            let Some(src) = self.src.as_mut() else { break };
            let (kind, bytes) = h.split_at(4);
            let kind = i32::from_ne_bytes([kind[0], kind[1], kind[2], kind[3]]);
            match src.inode(Handle { kind, bytes }) {
                Ok(Some(key)) => {
                    self.dirty.inodes.insert(key);
                }
                Ok(None) => {}
                Err(e) => self.distrust(format!("resolve a file handle: {e}")),
            }
        }
        if let Some(why) = &self.untrusted {
            return Err(why.clone());
        }
        Ok(std::mem::take(&mut self.dirty))
    }

    /// Marks paths dirty again (a pass could not finish them).
    pub(crate) fn put_back(&mut self, dirty: Dirty) {
        if self.untrusted.is_none() {
            self.dirty.merge(dirty);
        }
    }

    /// How many paths and inodes are dirty now.
    pub(crate) fn len(&self) -> usize {
        self.dirty.len() + self.arrived.len() + self.deferred.len()
    }

    fn event(&mut self, e: Event<'_>) {
        if self.untrusted.is_some() {
            return;
        }
        if e.mask & Q_OVERFLOW != 0 {
            return self.distrust("the fanotify event queue overflowed");
        }
        if e.mask & FS_ERROR != 0 {
            return self.distrust("a filesystem error was reported");
        }
        let Some(dir) = e.dir else {
            if e.obj.is_some() {
                // An event on an inode alone. A link count changed
                // (`ATTRIB`) on an inode that lives on: the name that went
                // may have had an event naming another inode (a rename
                // over a hardlink reports the inode moved in, not the one
                // replaced), so its other names are looked at. The last
                // name gone, or the inode moved: its names have events of
                // their own.
                if e.mask & ATTRIB != 0 && e.mask & DELETE_SELF == 0 {
                    self.object(&e);
                }
                return;
            }
            return self.distrust("an event without a file handle");
        };
        let Some(drel) = self.dir_rel(dir) else {
            // A removed directory: but a file can still be written through
            // a name removed with it (below).
            if self.untrusted.is_none() {
                self.object(&e);
            }
            return;
        };
        match drel {
            Place::Busy => {
                // Being renamed or removed right now: looked at again at
                // the next read, or when the set is taken.
                self.deferred.push(Deferred {
                    mask: e.mask,
                    dir: (dir.kind, dir.bytes.to_vec()),
                    name: e.name.to_vec(),
                    obj: e.obj.map(|o| (o.kind, o.bytes.to_vec())),
                });
            }
            Place::Outside => {}
            Place::UpperParent => {
                if e.name == self.upper_name.as_slice() {
                    if e.mask & DIRENT != 0 {
                        return self.distrust("the upper dir itself was renamed or removed");
                    }
                    self.mark(Vec::new(), false);
                }
            }
            Place::Inside(drel) => self.inside(e, drel),
        }
    }

    /// An event in the directory `drel` of the tree.
    fn inside(&mut self, e: Event<'_>, drel: Vec<u8>) {
        self.kept += 1;
        #[cfg(test)]
        if std::env::var_os("SEAMLESS_TRACK_DEBUG").is_some() {
            eprintln!(
                "event {:#x} obj {:?} {:?} {:?}",
                e.mask,
                e.obj.map(|o| o.kind),
                String::from_utf8_lossy(&drel),
                String::from_utf8_lossy(e.name)
            );
        }
        if e.name == b"." {
            if drel.is_empty() && e.mask & (DELETE_SELF | MOVE_SELF) != 0 {
                return self.distrust("the upper dir itself was renamed or removed");
            }
            return self.mark(drel, false);
        }
        let mut rel = drel.clone();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(e.name);
        let moved_dir = e.mask & ONDIR != 0 && e.mask & (MOVED_FROM | MOVED_TO) != 0;
        if moved_dir {
            // Cached paths below it (or outside, moving in) are stale.
            self.cache.clear();
        }
        if e.mask & DIRENT != 0 {
            self.mark(drel, false);
        }
        self.object(&e);
        // A directory that arrives brings what was done inside it under
        // another name (or none).
        let subtree = e.mask & ONDIR != 0 && e.mask & (MOVED_TO | events::CREATE) != 0;
        self.mark(rel, subtree);
    }

    /// Keeps the inode of an event on a non-directory, whatever its name:
    /// overlayfs reaches a hardlinked file's upper inode through whichever
    /// of its names it met first, even one removed since, so an event may
    /// name a path that is gone while the inode lives on under others.
    fn object(&mut self, e: &Event<'_>) {
        if e.mask & ONDIR == 0
            && let Some(obj) = e.obj
        {
            self.key.clear();
            self.key.extend_from_slice(&obj.kind.to_ne_bytes());
            self.key.extend_from_slice(obj.bytes);
            if !self.arrived.contains(self.key.as_slice()) {
                self.arrived.insert(self.key.clone());
            }
        }
    }

    fn mark(&mut self, rel: Vec<u8>, subtree: bool) {
        self.dirty.mark(rel, subtree);
    }

    /// Where the directory `h` is now; `None` if removed or if the tracker
    /// just became untrustworthy.
    fn dir_rel(&mut self, h: Handle<'_>) -> Option<Place> {
        self.key.clear();
        self.key.extend_from_slice(&h.kind.to_ne_bytes());
        self.key.extend_from_slice(h.bytes);
        if let Some(hit) = self.cache.get(self.key.as_slice()) {
            return Some(match hit {
                Some(rel) => Place::Inside(rel.clone()),
                None => Place::Outside,
            });
        }
        let resolved = self.src.as_mut()?.resolve(h);
        let path = match resolved {
            Resolved::Path(p) => p,
            Resolved::Gone => return None,
            Resolved::Outside => {
                self.cache.insert(self.key.clone(), None);
                return Some(Place::Outside);
            }
            Resolved::Failed(nix::errno::Errno::ENOMEM) => return Some(Place::Busy),
            Resolved::Failed(e) => {
                self.distrust(format!("resolve a directory handle: {e}"));
                return None;
            }
        };
        if path == self.upper_parent {
            // Not cached: only its entry for the upper dir matters, and it
            // is rare.
            return Some(Place::UpperParent);
        }
        let rel = if path == self.upper {
            Some(Vec::new())
        } else {
            path.strip_prefix(self.upper.as_slice())
                .and_then(|r| r.strip_prefix(b"/"))
                .map(<[u8]>::to_vec)
        };
        self.cache.insert(self.key.clone(), rel.clone());
        Some(match rel {
            Some(r) => Place::Inside(r),
            None => Place::Outside,
        })
    }
}

/// An event whose directory could not be resolved yet, owned.
struct Deferred {
    mask: u64,
    dir: (i32, Vec<u8>),
    name: Vec<u8>,
    obj: Option<(i32, Vec<u8>)>,
}

/// Where an event's directory is.
enum Place {
    /// Not known yet: the kernel answered `ENOMEM` (a rename or removal
    /// racing with the reconnection of its path) again and again.
    Busy,
    Outside,
    UpperParent,
    Inside(Vec<u8>),
}
