//! The exactness check of a frozen sync (`verify_capture`): in the same
//! window, after the sync, walk the whole upper dir and compare every
//! entry's `lstat` with the record its copy was made from, exactly (no
//! racy-clean margin: nothing moves while frozen), and every record with an
//! entry. Costs a full compare inside the window.
//!
//! Invariant: any difference fails the commit with the paths it found; a
//! record is a faithful description of its copy (both syncs keep it so),
//! so equal records mean an equal capture, up to content changes no stat
//! shows (shared-writable mappings, re-copied whatever their stat says).

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::stat::{FileStat, fstat};

use super::Capture;
use super::meta::Meta;
use super::walk::{Entry, Visit, walk};
use crate::error::{Error, IoContext, Result};
use crate::sys::fs::open_beneath;

/// How many differing paths an error names.
const SHOWN: usize = 8;

/// Runs [`Capture::verify_frozen`].
pub(super) fn verify_frozen(c: &Capture) -> Result<()> {
    let top = open_beneath(c.root.as_fd(), b"").at("open", &c.ctx.upper)?;
    let st = fstat(&top).at("stat", &c.ctx.upper)?;
    let mut v = Check {
        c,
        matched: 0,
        diffs: Vec::new(),
        count: 0,
    };
    v.check(b"", &st);
    walk(&c.ctx, top, st, b"", true, &mut v)?;
    let missing = c.recs.len() as u64 - v.matched;
    if missing > 0 {
        // Records of paths that are not there: name a few.
        let mut shown = 0;
        for k in c.recs.keys() {
            if shown >= SHOWN {
                break;
            }
            if !v.walked(k) {
                v.diffs.push(format!(
                    "{}: recorded, not there",
                    String::from_utf8_lossy(k)
                ));
                shown += 1;
            }
        }
        v.count += missing;
    }
    if v.count == 0 {
        return Ok(());
    }
    Err(Error::Internal(format!(
        "capture verification found {} difference(s) after the frozen sync: {}",
        v.count,
        v.diffs.join("; ")
    )))
}

struct Check<'a> {
    c: &'a Capture,
    /// Records matched by an entry (equal or not).
    matched: u64,
    diffs: Vec<String>,
    count: u64,
}

impl Check<'_> {
    fn check(&mut self, rel: &[u8], st: &FileStat) {
        let (meta, _) = Meta::from_stat(st);
        let why = match self.c.recs.get(rel) {
            None => Some("not captured".to_string()),
            Some(r) => {
                self.matched += 1;
                if !r.ok {
                    Some("copy not completed".to_string())
                } else if !r.meta.same(&meta) {
                    Some(format!("copied from {:?}, now {:?}", r.meta, meta))
                } else {
                    None
                }
            }
        };
        if let Some(why) = why {
            self.count += 1;
            if self.diffs.len() < SHOWN {
                self.diffs
                    .push(format!("{}: {why}", String::from_utf8_lossy(rel)));
            }
        }
    }

    /// Whether the walk met `rel` (only for naming missing ones: checked
    /// again, cheaply enough, by `lstat` through the upper dir's path).
    fn walked(&self, rel: &[u8]) -> bool {
        std::fs::symlink_metadata(self.c.ctx.up(rel)).is_ok()
    }
}

impl Visit for Check<'_> {
    fn entry(&mut self, e: Entry<'_>) -> Result<bool> {
        if e.st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
            return Ok(false);
        }
        self.check(e.rel, e.st);
        Ok(e.st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    fn leave(&mut self, _: Option<BorrowedFd<'_>>, _: &CStr, _: &[u8], _: &FileStat) -> Result<()> {
        Ok(())
    }
}
