//! The stat record change detection works on: [`Meta`] (the compared stat
//! fields) and [`Rec`] (what was recorded for one path, and when).
//!
//! Invariant: a path is clean only if its copy completed without a race, its
//! stat is unchanged, and its ctime is older than the instant of the `lstat`
//! by more than [`RACY_NS`] plus the granularity of the upper filesystem's
//! timestamps (a write in the same timestamp tick would keep the ctime: git's
//! "racy clean" problem). The granularity is read off the ctime itself
//! ([`granularity_ns`]), so a filesystem with 1 s timestamps (ext4 with
//! 128-byte inodes) gets a margin of seconds, not milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::stat::FileStat;

/// An entry is re-copied if its recorded ctime is not older than this (plus
/// the timestamp granularity) before the instant its `lstat` was taken: the
/// kernel stamps ctimes from a clock that lags by up to a tick.
const RACY_NS: i128 = 50_000_000;

/// The margin assumed for a ctime with no sub-second part: the filesystem
/// may keep whole seconds only, or even two (FAT-like).
const COARSE_NS: i128 = 2_000_000_000;

/// An upper bound of the timestamp granularity of the filesystem that set
/// a ctime, read off the ctime's nanoseconds: the kernel truncates every
/// timestamp to the filesystem's granularity, a power of ten between 1 ns
/// and 1 s, so the largest power of ten dividing `nsec` is at least that
/// granularity. On a fine-grained filesystem this is almost always a few ns
/// (1 in 10^k ctimes looks 10^k ns coarse, costing one needless re-copy at
/// worst); a zero `nsec` means whole seconds, or an unlucky instant.
fn granularity_ns(nsec: i64) -> i128 {
    if nsec == 0 {
        return COARSE_NS;
    }
    let mut g: i128 = 1;
    while (nsec as i128) % (g * 10) == 0 {
        g *= 10;
    }
    g
}

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

    /// An overlayfs whiteout: a character device 0/0.
    pub(super) fn is_whiteout(&self) -> bool {
        self.fmt() == libc::S_IFCHR && self.rdev == 0
    }

    /// A non-directory that may have other names. Not a whiteout: overlayfs
    /// makes whiteouts hardlinks of one shared inode (linked and unlinked
    /// under its `work/` dir), a sharing the image does not carry.
    pub(super) fn multi_linked(&self) -> bool {
        !self.is_dir() && self.nlink > 1 && !self.is_whiteout()
    }

    /// Whether a copy made from `self` is a copy of `now`: every field
    /// equal, except a whiteout's link count and ctime, which change with
    /// every other whiteout overlayfs links or unlinks, without an event in
    /// the tree.
    pub(super) fn same(&self, now: &Meta) -> bool {
        if self.is_whiteout() && now.is_whiteout() {
            let strip = |m: &Meta| Meta {
                nlink: 0,
                ctime: (0, 0),
                ..*m
            };
            return strip(self) == strip(now);
        }
        self == now
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
        let (sec, nsec) = self.meta.ctime;
        let ctime = sec as i128 * 1_000_000_000 + nsec as i128;
        let margin = RACY_NS + granularity_ns(nsec);
        self.ok && self.meta.same(now) && (ctime < self.taken - margin || now.is_whiteout())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granularity_is_read_off_the_nanoseconds() {
        assert_eq!(granularity_ns(0), COARSE_NS);
        assert_eq!(granularity_ns(123_456_789), 1);
        assert_eq!(granularity_ns(123_456_780), 10);
        assert_eq!(granularity_ns(120_000_000), 10_000_000);
        assert_eq!(granularity_ns(500_000_000), 100_000_000);
    }

    fn rec(ctime: (i64, i64), taken: i128) -> Rec {
        let meta = Meta {
            dev: 1,
            ino: 2,
            mode: libc::S_IFREG | 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            rdev: 0,
            size: 4,
            mtime: ctime,
            ctime,
        };
        Rec {
            meta,
            atime: (0, 0),
            taken,
            ok: true,
            seen: 1,
        }
    }

    #[test]
    fn whole_second_ctimes_stay_racy_for_seconds() {
        let s = 1_000_000_000i128;
        // Fine-grained: clean 50 ms (and a little) after the ctime.
        let r = rec((100, 123_456_789), 100 * s + 300_000_000);
        assert!(r.clean(&r.meta));
        let r = rec((100, 123_456_789), 100 * s + 150_000_000);
        assert!(!r.clean(&r.meta));
        // Whole seconds: a write later in second 100 (or 101, on a 2 s
        // filesystem) would keep the same ctime.
        let r = rec((100, 0), 100 * s + 900_000_000);
        assert!(!r.clean(&r.meta));
        let r = rec((100, 0), 101 * s + 900_000_000);
        assert!(!r.clean(&r.meta));
        let r = rec((100, 0), 102 * s + 100_000_000);
        assert!(r.clean(&r.meta));
    }
}
