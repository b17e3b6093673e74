//! The fanotify event stream of a `FAN_REPORT_DFID_NAME` group, parsed:
//! pure code over the bytes `read(2)` returned, so that it is tested
//! without a kernel.
//!
//! Layout (`linux/fanotify.h`): each event is a `fanotify_event_metadata`
//! (24 bytes: `event_len` u32, `vers` u8, reserved u8, `metadata_len` u16,
//! `mask` u64, `fd` i32, `pid` i32) followed by info records, each a header
//! (`info_type` u8, pad u8, `len` u16), then for the fid types an 8-byte
//! fsid, a `file_handle` (`handle_bytes` u32, `handle_type` i32, the bytes)
//! and, for `DFID_NAME`, a NUL-terminated name.
//!
//! Invariant: a malformed buffer is an error, never a guess; a record of a
//! type we do not ask for is skipped by its length.

/// `FANOTIFY_METADATA_VERSION`.
const METADATA_VERSION: u8 = 3;
/// Size of `fanotify_event_metadata`.
pub(super) const METADATA_LEN: usize = 24;

/// Info record types (`FAN_EVENT_INFO_TYPE_*`).
const INFO_FID: u8 = 1;
const INFO_DFID_NAME: u8 = 2;
const INFO_DFID: u8 = 3;

/// Event bits (`FAN_*`).
pub(super) const MODIFY: u64 = 0x2;
pub(super) const ATTRIB: u64 = 0x4;
pub(super) const CLOSE_WRITE: u64 = 0x8;
pub(super) const MOVED_FROM: u64 = 0x40;
pub(super) const MOVED_TO: u64 = 0x80;
pub(super) const CREATE: u64 = 0x100;
pub(super) const DELETE: u64 = 0x200;
pub(super) const DELETE_SELF: u64 = 0x400;
pub(super) const MOVE_SELF: u64 = 0x800;
pub(super) const Q_OVERFLOW: u64 = 0x4000;
pub(super) const FS_ERROR: u64 = 0x8000;
pub(super) const ONDIR: u64 = 0x4000_0000;

/// Events that change a directory's entries.
pub(super) const DIRENT: u64 = MOVED_FROM | MOVED_TO | CREATE | DELETE;

/// The events asked for: every change to an entry's content, metadata or
/// name, on directories too.
pub(super) const WANTED: u64 =
    MODIFY | ATTRIB | CLOSE_WRITE | DIRENT | DELETE_SELF | MOVE_SELF | ONDIR;

/// A file handle as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handle<'a> {
    pub(crate) kind: i32,
    pub(crate) bytes: &'a [u8],
}

/// One event: its mask, and the directory and name it names (the name is
/// `.` for an event on a directory itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Event<'a> {
    pub(super) mask: u64,
    pub(super) dir: Option<Handle<'a>>,
    pub(super) name: &'a [u8],
    /// The object's own handle (`FID` record), when reported.
    pub(super) obj: Option<Handle<'a>>,
    /// An fd the kernel opened for us (only outside fid mode): to close.
    pub(super) fd: i32,
}

/// A buffer that is not a sequence of well-formed events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Malformed(pub(super) &'static str);

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Calls `f` for each event of `buf`, in order.
pub(super) fn parse<'a>(mut buf: &'a [u8], mut f: impl FnMut(Event<'a>)) -> Result<(), Malformed> {
    while !buf.is_empty() {
        let len = u32_at(buf, 0).ok_or(Malformed("short metadata"))? as usize;
        if buf.get(4) != Some(&METADATA_VERSION) {
            return Err(Malformed("metadata version"));
        }
        let meta_len = u16_at(buf, 6).ok_or(Malformed("short metadata"))? as usize;
        if len < METADATA_LEN || meta_len < METADATA_LEN || meta_len > len || len > buf.len() {
            return Err(Malformed("event length"));
        }
        let mask = u64_at(buf, 8).ok_or(Malformed("short metadata"))?;
        let fd = u32_at(buf, 16).ok_or(Malformed("short metadata"))? as i32;
        let mut ev = Event {
            mask,
            dir: None,
            name: b"",
            obj: None,
            fd,
        };
        let mut info = &buf[meta_len..len];
        while !info.is_empty() {
            let kind = info[0];
            let rlen = u16_at(info, 2).ok_or(Malformed("short info header"))? as usize;
            if rlen < 4 || rlen > info.len() {
                return Err(Malformed("info length"));
            }
            let rec = &info[..rlen];
            if kind == INFO_DFID_NAME || kind == INFO_DFID || kind == INFO_FID {
                // header 4, fsid 8, then the file_handle.
                let hb = u32_at(rec, 12).ok_or(Malformed("short handle"))? as usize;
                let kind_ = u32_at(rec, 16).ok_or(Malformed("short handle"))? as i32;
                let bytes = rec.get(20..20 + hb).ok_or(Malformed("short handle"))?;
                let h = Some(Handle { kind: kind_, bytes });
                if kind == INFO_FID {
                    ev.obj = h;
                } else {
                    ev.dir = h;
                }
                if kind == INFO_DFID_NAME {
                    let rest = &rec[20 + hb..];
                    let end = rest
                        .iter()
                        .position(|b| *b == 0)
                        .ok_or(Malformed("unterminated name"))?;
                    ev.name = &rest[..end];
                }
            }
            // Other record types (pidfd, error) carry nothing we use.
            info = &info[rlen..];
        }
        f(ev);
        buf = &buf[len..];
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod build {
    //! Builds event buffers as the kernel lays them out, for tests.

    use super::*;

    /// One event with a `DFID_NAME` record (no record when `dir` is None).
    pub(crate) fn event(mask: u64, dir: Option<(i32, &[u8])>, name: &[u8]) -> Vec<u8> {
        event_obj(mask, dir, name, None)
    }

    /// The same, with a `FID` record of the object when `obj` is given.
    pub(crate) fn event_obj(
        mask: u64,
        dir: Option<(i32, &[u8])>,
        name: &[u8],
        obj: Option<(i32, &[u8])>,
    ) -> Vec<u8> {
        let mut info = Vec::new();
        for (t, h) in [dir.map(|d| (INFO_DFID_NAME, d)), obj.map(|o| (INFO_FID, o))]
            .into_iter()
            .flatten()
        {
            let (kind, h) = h;
            let mut rec = vec![t, 0, 0, 0];
            rec.extend_from_slice(&[7u8; 8]);
            rec.extend_from_slice(&(h.len() as u32).to_ne_bytes());
            rec.extend_from_slice(&kind.to_ne_bytes());
            rec.extend_from_slice(h);
            if t == INFO_DFID_NAME {
                rec.extend_from_slice(name);
                rec.push(0);
            }
            while rec.len() % 4 != 0 {
                rec.push(0);
            }
            let l = rec.len() as u16;
            rec[2..4].copy_from_slice(&l.to_ne_bytes());
            info.extend(rec);
        }
        let len = (METADATA_LEN + info.len()) as u32;
        let mut out = Vec::new();
        out.extend_from_slice(&len.to_ne_bytes());
        out.push(METADATA_VERSION);
        out.push(0);
        out.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        out.extend_from_slice(&mask.to_ne_bytes());
        out.extend_from_slice(&(-1i32).to_ne_bytes());
        out.extend_from_slice(&1234i32.to_ne_bytes());
        out.extend(info);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_their_records_are_parsed() {
        let mut buf = build::event(
            CREATE,
            Some((1, b"\x01\x02\x03\x04\x05\x06\x07\x08")),
            b"file",
        );
        buf.extend(build::event(Q_OVERFLOW, None, b""));
        buf.extend(build::event(ATTRIB | ONDIR, Some((0x81, b"abcd")), b"."));
        let mut seen = Vec::new();
        parse(&buf, |e| {
            seen.push((
                e.mask,
                e.dir.map(|h| (h.kind, h.bytes.to_vec())),
                e.name.to_vec(),
            ))
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (
                    CREATE,
                    Some((1, b"\x01\x02\x03\x04\x05\x06\x07\x08".to_vec())),
                    b"file".to_vec()
                ),
                (Q_OVERFLOW, None, Vec::new()),
                (
                    ATTRIB | ONDIR,
                    Some((0x81, b"abcd".to_vec())),
                    b".".to_vec()
                ),
            ]
        );
    }

    #[test]
    fn the_object_handle_is_kept_apart() {
        let buf = build::event_obj(MODIFY, Some((1, b"dddd")), b"f", Some((2, b"oooooooo")));
        let mut seen = Vec::new();
        parse(&buf, |e| seen.push((e.dir, e.name.to_vec(), e.obj))).unwrap();
        let dir = Handle {
            kind: 1,
            bytes: b"dddd",
        };
        let obj = Handle {
            kind: 2,
            bytes: b"oooooooo",
        };
        assert_eq!(seen, vec![(Some(dir), b"f".to_vec(), Some(obj))]);
    }

    #[test]
    fn malformed_buffers_are_errors() {
        let good = build::event(CREATE, Some((1, b"12345678")), b"x");
        assert!(parse(&good[..good.len() - 1], |_| {}).is_err(), "truncated");
        let mut bad = good.clone();
        bad[4] = 2;
        assert!(parse(&bad, |_| {}).is_err(), "version");
        let mut bad = good.clone();
        // A name without its NUL.
        let n = bad.len();
        bad[n - 4..].copy_from_slice(b"xxxx");
        assert!(parse(&bad, |_| {}).is_err(), "name");
        let mut bad = good;
        bad[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(parse(&bad, |_| {}).is_err(), "length");
    }
}
