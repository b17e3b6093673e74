//! The stat record change detection works on: [`Meta`] (the compared stat
//! fields) and [`Rec`] (what was recorded for one path, and when).
//!
//! Invariant: a path is clean only if its copy completed without a race, its
//! stat is unchanged, and its ctime is older than the instant of the `lstat`
//! by more than [`RACY_NS`] (a write in the same timestamp tick would keep
//! the ctime: git's "racy clean" problem).

use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::stat::FileStat;

/// An entry is re-copied if its recorded ctime is not older than this before
/// the instant its `lstat` was taken.
const RACY_NS: i128 = 50_000_000;

/// Current wall-clock time in ns since the epoch (what ctimes are taken from).
pub(super) fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// The stat fields change detection compares (atime is deliberately absent:
/// reads change it without touching ctime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) nlink: u64,
    pub(super) rdev: u64,
    pub(super) size: i64,
    pub(super) mtime: (i64, i64),
    pub(super) ctime: (i64, i64),
}

impl Meta {
    /// The compared fields, and the atime (restored, never compared).
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    pub(super) fn from_stat(st: &FileStat) -> (Meta, (i64, i64)) {
        let meta = Meta {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mode: st.st_mode as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink as u64,
            rdev: st.st_rdev as u64,
            size: st.st_size as i64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
        };
        (meta, (st.st_atime as i64, st.st_atime_nsec as i64))
    }

    /// The file type bits (`S_IFMT` part of the mode).
    pub(super) fn fmt(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub(super) fn is_dir(&self) -> bool {
        self.fmt() == libc::S_IFDIR
    }

    /// Inode key for hardlink tracking.
    pub(super) fn key(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// A non-directory that may have other names.
    pub(super) fn multi_linked(&self) -> bool {
        !self.is_dir() && self.nlink > 1
    }
}

/// What was recorded for one path.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rec {
    pub(super) meta: Meta,
    pub(super) atime: (i64, i64),
    /// Wall-clock ns when the `lstat` was taken.
    pub(super) taken: i128,
    /// The copy completed without a race.
    pub(super) ok: bool,
    /// Walk generation that last saw the path.
    pub(super) seen: u32,
}

impl Rec {
    /// Whether the copy made from this record still matches `now`.
    pub(super) fn clean(&self, now: &Meta) -> bool {
        let ctime = self.meta.ctime.0 as i128 * 1_000_000_000 + self.meta.ctime.1 as i128;
        self.ok && self.meta == *now && ctime < self.taken - RACY_NS
    }
}
