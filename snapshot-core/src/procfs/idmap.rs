//! `/proc/<pid>/uid_map` and `gid_map` (user_namespaces(7)): how the IDs of
//! a process's user namespace map to those of the namespace reading the
//! file, and what a process inside sees for an ID with no mapping.
//!
//! Each line is `ID-inside-ns ID-outside-ns length`, three unsigned 32-bit
//! decimal numbers separated by blanks (the kernel right-aligns them in
//! 10-character fields). Read by a process of another user namespace, the
//! outside IDs are those of the reader's namespace: for us, the IDs `stat`
//! shows on the host's file systems.
//!
//! Unlike the other `/proc` parsers, a malformed map is an error
//! ([`IdMapError`]), not skipped: a range left out would silently leave host
//! IDs in an image. The rules are the kernel's own for writing a map
//! (`map_write`): a length of at least 1, no range wrapping past
//! `u32::MAX`, no two ranges overlapping on either side.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// What the kernel shows for an ID with no mapping (`overflowuid` and
/// `overflowgid`) when `/proc/sys/kernel` cannot tell: its default.
pub(crate) const DEFAULT_OVERFLOW_ID: u32 = 65534;

/// One line of a map: `count` consecutive IDs from `inside` (in the
/// namespace) are `outside` onwards (in the reader's namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IdRange {
    /// First ID inside the namespace.
    pub(crate) inside: u32,
    /// The ID it is outside.
    pub(crate) outside: u32,
    /// How many consecutive IDs.
    pub(crate) count: u32,
}

/// A whole `uid_map` or `gid_map`, validated: no range wraps, no two
/// overlap on either side. An empty map (never written) maps nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct IdMap {
    ranges: Vec<IdRange>,
}

/// Why a map's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IdMapError {
    /// A line is not three unsigned 32-bit decimal numbers, or its range is
    /// empty or wraps past 4294967295.
    #[error("line {line} {text:?}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// The line as read (lossy UTF-8).
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A line's range overlaps an earlier line's on the `side` side.
    #[error("line {line}: its {side} IDs overlap those of line {earlier}")]
    Overlap {
        /// 1-based line number.
        line: usize,
        /// The earlier line it overlaps.
        earlier: usize,
        /// `"inside"` or `"outside"`.
        side: &'static str,
    },
}

/// One number of a line.
fn number(field: &[u8]) -> Option<u32> {
    // `u32::from_str` accepts a leading '+', the kernel's parser does not.
    if !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Whether `[a, a + n)` and `[b, b + m)` share an ID.
fn overlaps(a: u32, n: u32, b: u32, m: u32) -> bool {
    let (a, n, b, m) = (u64::from(a), u64::from(n), u64::from(b), u64::from(m));
    a < b + m && b < a + n
}

impl IdMap {
    /// The map of a process in the initial user namespace (or in the
    /// reader's own): every ID is itself.
    pub(crate) fn identity() -> IdMap {
        IdMap {
            ranges: vec![IdRange {
                inside: 0,
                outside: 0,
                count: u32::MAX,
            }],
        }
    }

    /// Parses a map's text (blank lines are ignored).
    pub(crate) fn parse(text: &[u8]) -> std::result::Result<IdMap, IdMapError> {
        let mut ranges: Vec<(usize, IdRange)> = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let n = i + 1;
            let fields: Vec<&[u8]> = line
                .split(|b| b.is_ascii_whitespace())
                .filter(|f| !f.is_empty())
                .collect();
            if fields.is_empty() {
                continue;
            }
            let bad = |reason| IdMapError::Malformed {
                line: n,
                text: String::from_utf8_lossy(line).into_owned(),
                reason,
            };
            let [inside, outside, count] = fields[..] else {
                return Err(bad("not three numbers"));
            };
            let (Some(inside), Some(outside), Some(count)) =
                (number(inside), number(outside), number(count))
            else {
                return Err(bad("not an unsigned 32-bit decimal number"));
            };
            if count == 0 {
                return Err(bad("a range of no IDs"));
            }
            // As the kernel: `first + count` must not wrap.
            if inside.checked_add(count).is_none() || outside.checked_add(count).is_none() {
                return Err(bad("the range goes past 4294967295"));
            }
            let r = IdRange {
                inside,
                outside,
                count,
            };
            for (earlier, e) in &ranges {
                let side = if overlaps(e.inside, e.count, inside, count) {
                    "inside"
                } else if overlaps(e.outside, e.count, outside, count) {
                    "outside"
                } else {
                    continue;
                };
                return Err(IdMapError::Overlap {
                    line: n,
                    earlier: *earlier,
                    side,
                });
            }
            ranges.push((n, r));
        }
        Ok(IdMap {
            ranges: ranges.into_iter().map(|(_, r)| r).collect(),
        })
    }

    /// Whether every ID is itself (the map the initial namespace shows).
    pub(crate) fn is_identity(&self) -> bool {
        *self == IdMap::identity()
    }

    /// The ID inside the namespace of `outside`, `None` when it has none.
    pub(crate) fn to_inside(&self, outside: u32) -> Option<u32> {
        self.ranges.iter().find_map(|r| {
            let offset = outside.checked_sub(r.outside)?;
            (offset < r.count).then(|| r.inside + offset)
        })
    }
}

/// The ID maps of a container's user namespace as seen from ours, and what
/// the kernel shows inside for an unmapped ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserNamespace {
    /// `uid_map`.
    pub(crate) uid_map: IdMap,
    /// `gid_map`.
    pub(crate) gid_map: IdMap,
    /// `/proc/sys/kernel/overflowuid` when read.
    pub(crate) overflow_uid: u32,
    /// `/proc/sys/kernel/overflowgid` when read.
    pub(crate) overflow_gid: u32,
}

impl UserNamespace {
    /// `None` when both maps are the identity (no ID to translate),
    /// otherwise the namespace of these maps.
    pub(crate) fn from_maps(
        uid_map: IdMap,
        gid_map: IdMap,
        overflow_uid: u32,
        overflow_gid: u32,
    ) -> Option<UserNamespace> {
        if uid_map.is_identity() && gid_map.is_identity() {
            return None;
        }
        Some(UserNamespace {
            uid_map,
            gid_map,
            overflow_uid,
            overflow_gid,
        })
    }

    /// The user namespace of process `pid`, `None` when it is ours or its
    /// maps are the identity (a container without a user namespace).
    pub(crate) fn of_pid(pid: u32) -> Result<Option<UserNamespace>> {
        // Read from the namespace the process is in, a map is relative to
        // that namespace's parent, not to us: compare the namespaces first.
        let ours = ns_inode(Path::new("/proc/self/ns/user"))?;
        let theirs = ns_inode(&PathBuf::from(format!("/proc/{pid}/ns/user")))?;
        if ours == theirs {
            return Ok(None);
        }
        let uid_map = read_map(&PathBuf::from(format!("/proc/{pid}/uid_map")))?;
        let gid_map = read_map(&PathBuf::from(format!("/proc/{pid}/gid_map")))?;
        Ok(UserNamespace::from_maps(
            uid_map,
            gid_map,
            read_overflow(Path::new("/proc/sys/kernel/overflowuid"))?,
            read_overflow(Path::new("/proc/sys/kernel/overflowgid"))?,
        ))
    }

    /// The owner a process inside sees for host uid `uid`: its mapping, or
    /// the overflow uid as the kernel shows it (`from_kuid_munged`).
    pub(crate) fn uid(&self, uid: u32) -> u32 {
        self.uid_map.to_inside(uid).unwrap_or(self.overflow_uid)
    }

    /// The group a process inside sees for host gid `gid` (see [`Self::uid`]).
    pub(crate) fn gid(&self, gid: u32) -> u32 {
        self.gid_map.to_inside(gid).unwrap_or(self.overflow_gid)
    }
}

/// `(dev, ino)` of a namespace file: equal for the same namespace.
fn ns_inode(path: &Path) -> Result<(u64, u64)> {
    let md = std::fs::metadata(path).at("stat", path)?;
    Ok((md.dev(), md.ino()))
}

fn read_map(path: &Path) -> Result<IdMap> {
    let text = std::fs::read(path).at("read", path)?;
    IdMap::parse(&text).map_err(|e| {
        Error::io(
            "parse",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })
}

/// An overflow ID file; its default when absent (a kernel without it).
fn read_overflow(path: &Path) -> Result<u32> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DEFAULT_OVERFLOW_ID),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    number(text.trim_ascii()).ok_or_else(|| {
        Error::io(
            "parse",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an ID"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(inside: u32, outside: u32, count: u32) -> IdRange {
        IdRange {
            inside,
            outside,
            count,
        }
    }

    fn parse(s: &str) -> std::result::Result<IdMap, IdMapError> {
        IdMap::parse(s.as_bytes())
    }

    fn reason(s: &str) -> &'static str {
        match parse(s) {
            Err(IdMapError::Malformed { reason, .. }) => reason,
            other => panic!("{s:?}: {other:?}"),
        }
    }

    #[test]
    fn kernel_formatting_and_identity() {
        // As the kernel prints them: right-aligned in 10-character fields.
        let m = parse("         0          0 4294967295\n").unwrap();
        assert!(m.is_identity());
        assert_eq!(m.to_inside(0), Some(0));
        assert_eq!(m.to_inside(4_294_967_294), Some(4_294_967_294));
        // -1 is never an ID.
        assert_eq!(m.to_inside(u32::MAX), None);
        let m = parse("         0     100000      65536\n").unwrap();
        assert!(!m.is_identity());
        assert_eq!(m.ranges, [range(0, 100_000, 65536)]);
        // Tabs, no final newline, blank lines.
        assert_eq!(parse("\n0\t100000\t65536").unwrap(), m);
    }

    #[test]
    fn boundaries_of_a_range() {
        let m = parse("0 100000 65536").unwrap();
        assert_eq!(m.to_inside(99_999), None);
        assert_eq!(m.to_inside(100_000), Some(0));
        assert_eq!(m.to_inside(101_000), Some(1000));
        assert_eq!(m.to_inside(165_535), Some(65535));
        assert_eq!(m.to_inside(165_536), None);
        assert_eq!(m.to_inside(0), None);
        // A range reaching the last ID.
        let m = parse("5 4294967290 5").unwrap();
        assert_eq!(m.to_inside(4_294_967_294), Some(9));
        assert_eq!(m.to_inside(u32::MAX), None);
    }

    #[test]
    fn several_ranges() {
        // Rootless podman's shape: root is the user, the rest subordinate.
        let m = parse("0 1000 1\n1 100000 65536\n").unwrap();
        assert_eq!(m.to_inside(1000), Some(0));
        assert_eq!(m.to_inside(100_000), Some(1));
        assert_eq!(m.to_inside(100_999), Some(1000));
        assert_eq!(m.to_inside(0), None);
        assert_eq!(m.to_inside(1001), None);
        // Not sorted by either side.
        let m = parse("1000 200000 10\n0 300000 1000\n").unwrap();
        assert_eq!(m.to_inside(200_005), Some(1005));
        assert_eq!(m.to_inside(300_999), Some(999));
        assert_eq!(m.to_inside(301_000), None);
    }

    #[test]
    fn empty_map_maps_nothing() {
        let m = parse("").unwrap();
        assert_eq!(m.to_inside(0), None);
        assert!(!m.is_identity());
    }

    #[test]
    fn malformed_maps_are_typed_errors() {
        assert_eq!(reason("0 100000"), "not three numbers");
        assert_eq!(reason("0 100000 65536 7"), "not three numbers");
        assert_eq!(
            reason("0 1 1\n0 -1 5"),
            "not an unsigned 32-bit decimal number"
        );
        assert_eq!(reason("+0 1 1"), "not an unsigned 32-bit decimal number");
        assert_eq!(
            reason("0 1 4294967296"),
            "not an unsigned 32-bit decimal number"
        );
        assert_eq!(reason("0x0 1 1"), "not an unsigned 32-bit decimal number");
        assert_eq!(
            reason("0 1 \u{e9}"),
            "not an unsigned 32-bit decimal number"
        );
        assert_eq!(reason("0 100000 0"), "a range of no IDs");
        assert_eq!(reason("1 0 4294967295"), "the range goes past 4294967295");
        assert_eq!(reason("0 4294967295 1"), "the range goes past 4294967295");
        let e = parse("0 1 1\n\n0 x 1").unwrap_err();
        assert_eq!(
            e,
            IdMapError::Malformed {
                line: 3,
                text: "0 x 1".into(),
                reason: "not an unsigned 32-bit decimal number"
            }
        );
        assert_eq!(
            e.to_string(),
            r#"line 3 "0 x 1": not an unsigned 32-bit decimal number"#
        );
        let bytes = IdMap::parse(b"0 \xff 1").unwrap_err();
        assert!(matches!(bytes, IdMapError::Malformed { line: 1, .. }));
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        assert_eq!(
            parse("0 100000 10\n5 200000 10").unwrap_err(),
            IdMapError::Overlap {
                line: 2,
                earlier: 1,
                side: "inside"
            }
        );
        assert_eq!(
            parse("0 100000 10\n10 100009 10").unwrap_err(),
            IdMapError::Overlap {
                line: 2,
                earlier: 1,
                side: "outside"
            }
        );
        // Adjacent is fine.
        let m = parse("0 100000 10\n10 100010 10").unwrap();
        assert_eq!(m.to_inside(100_019), Some(19));
    }

    #[test]
    fn unmapped_ids_are_the_overflow_ids() {
        let ns = UserNamespace::from_maps(
            parse("0 100000 65536").unwrap(),
            parse("0 200000 10").unwrap(),
            65534,
            65533,
        )
        .unwrap();
        assert_eq!(
            (ns.uid(100_000), ns.uid(101_000), ns.uid(0)),
            (0, 1000, 65534)
        );
        assert_eq!(
            (ns.gid(200_009), ns.gid(200_010), ns.gid(100_000)),
            (9, 65533, 65533)
        );
        // Identity maps need no translation.
        assert_eq!(
            UserNamespace::from_maps(IdMap::identity(), IdMap::identity(), 65534, 65534),
            None
        );
        // One side mapped is enough to translate.
        assert!(
            UserNamespace::from_maps(IdMap::identity(), parse("0 1 1").unwrap(), 65534, 65534)
                .is_some()
        );
    }

    #[test]
    fn serde_round_trip() {
        let ns = UserNamespace::from_maps(
            parse("0 1000 1\n1 100000 65536").unwrap(),
            parse("0 100000 65536").unwrap(),
            65534,
            65534,
        )
        .unwrap();
        let json = serde_json::to_string(&ns).unwrap();
        assert!(
            json.contains(r#""uid_map":[{"inside":0,"outside":1000,"count":1}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<UserNamespace>(&json).unwrap(), ns);
    }

    #[test]
    fn our_own_namespace_needs_no_translation() {
        let me = std::process::id();
        assert_eq!(UserNamespace::of_pid(me).unwrap(), None);
        // No such process: an error naming the path.
        let e = UserNamespace::of_pid(u32::MAX).unwrap_err();
        assert!(e.to_string().contains("/proc/4294967295/ns/user"), "{e}");
    }
}
