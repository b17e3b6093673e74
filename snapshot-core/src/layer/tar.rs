//! A minimal tar header encoder: ustar headers plus PAX extended headers.
//!
//! Only what an OCI layer writer needs. Names are raw bytes throughout so
//! non-UTF-8 file names round-trip exactly.

/// Size of a tar block.
pub(crate) const BLOCK: usize = 512;

/// Largest value of an 11-digit octal field (size, mtime): 8 GiB - 1.
const MAX_OCTAL_11: u64 = 0o777_7777_7777;
/// Largest value of a 7-digit octal field (uid, gid, devmajor, devminor).
const MAX_OCTAL_7: u64 = 0o777_7777;

/// The ustar name written for PAX extended headers (fixed, for determinism).
const PAX_HEADER_NAME: &[u8] = b"././@PaxHeader";

/// The type of a tar entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file (content follows).
    Regular,
    /// A hard link to an earlier entry (`link` is its path).
    HardLink,
    /// A symbolic link (`link` is its target).
    Symlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A directory.
    Dir,
    /// A named pipe.
    Fifo,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::Regular => b'0',
            Kind::HardLink => b'1',
            Kind::Symlink => b'2',
            Kind::Char => b'3',
            Kind::Block => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }
}

/// Everything a header describes.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Relative path, raw bytes; directories end with `/`.
    pub path: Vec<u8>,
    /// Entry type.
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
    /// Content size (regular files only, else 0).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Link target (symlinks, hard links), raw bytes.
    pub link: Vec<u8>,
    /// Device major number (devices only).
    pub dev_major: u64,
    /// Device minor number (devices only).
    pub dev_minor: u64,
    /// Extended attributes, written as `SCHILY.xattr.<name>` in this order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// An entry of `kind` at `path` with everything else zero/empty.
    pub(crate) fn new(path: Vec<u8>, kind: Kind) -> Self {
        Entry {
            path,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            link: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
        }
    }
}

/// Number of decimal digits of `n`.
fn digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// The length of a PAX record `"<len> <key>=<value>\n"`, where `<len>`
/// counts its own digits.
pub(crate) fn pax_record_len(key_len: usize, value_len: usize) -> usize {
    // " " + key + "=" + value + "\n"
    let base = key_len + value_len + 3;
    let mut len = base + digits(base);
    // Adding the digits may itself add a digit (e.g. 98 -> 100 -> 101).
    while base + digits(len) != len {
        len = base + digits(len);
    }
    len
}

/// Appends one PAX record to `out`.
pub(crate) fn push_pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let len = pax_record_len(key.len(), value.len());
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Splits `path` into ustar `(prefix, name)` fields (reassembled by readers as
/// `prefix + "/" + name`), or `None` if it cannot be stored in ustar fields.
pub(crate) fn split_ustar_name(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((&[], path));
    }
    if path.len() > 155 + 1 + 100 {
        return None;
    }
    // Smallest split index whose name part fits, so that the prefix is as
    // short as possible; the name part must be non-empty (a directory's
    // trailing '/' cannot be the split point) and the prefix non-empty.
    let first = (path.len() - 101).max(1);
    let last = 155.min(path.len() - 2);
    (first..=last)
        .find(|&i| path[i] == b'/')
        .map(|i| (&path[..i], &path[i + 1..]))
}

/// Formats a PAX `mtime` value, exact to the nanosecond.
pub(crate) fn format_mtime(sec: i64, nsec: u32) -> String {
    if nsec == 0 {
        sec.to_string()
    } else if sec >= 0 {
        format!("{sec}.{nsec:09}")
    } else {
        // sec + nsec/1e9 is negative: -(|sec| - 1) - (1e9 - nsec)/1e9.
        let whole = -(sec + 1);
        let frac = 1_000_000_000 - nsec;
        format!("-{whole}.{frac:09}")
    }
}

/// Writes `v` into a numeric field: octal (NUL-terminated) if it fits,
/// else GNU base-256 (two's complement, high bit of the first byte set).
fn put_num(field: &mut [u8], v: i64) {
    let digits = field.len() - 1;
    let max_octal = if digits >= 21 {
        i64::MAX
    } else {
        (1i64 << (3 * digits)) - 1
    };
    if (0..=max_octal).contains(&v) {
        let s = format!("{:0width$o}", v, width = digits);
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        let bytes = v.to_be_bytes();
        let fill = if v < 0 { 0xff } else { 0 };
        let n = field.len();
        for (i, b) in field.iter_mut().enumerate() {
            // Right-align the 8 value bytes, sign-extend the rest.
            *b = if i + 8 >= n { bytes[i + 8 - n] } else { fill };
        }
        field[0] |= 0x80;
    }
}

/// Clamps an unsigned value into `i64` for [`put_num`].
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Fields of one ustar block.
struct Ustar<'a> {
    prefix: &'a [u8],
    name: &'a [u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    flag: u8,
    link: &'a [u8],
    dev_major: u64,
    dev_minor: u64,
}

fn copy_trunc(field: &mut [u8], v: &[u8]) {
    let n = v.len().min(field.len());
    field[..n].copy_from_slice(&v[..n]);
}

fn ustar_block(u: &Ustar<'_>) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    copy_trunc(&mut h[0..100], u.name);
    put_num(&mut h[100..108], i64::from(u.mode & 0o7777));
    put_num(&mut h[108..116], to_i64(u.uid));
    put_num(&mut h[116..124], to_i64(u.gid));
    put_num(&mut h[124..136], to_i64(u.size));
    put_num(&mut h[136..148], u.mtime);
    h[156] = u.flag;
    copy_trunc(&mut h[157..257], u.link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // uname/gname stay empty: ownership is numeric.
    put_num(&mut h[329..337], to_i64(u.dev_major));
    put_num(&mut h[337..345], to_i64(u.dev_minor));
    copy_trunc(&mut h[345..500], u.prefix);
    // The checksum is computed with its own field as spaces.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}");
    h[148..154].copy_from_slice(s.as_bytes());
    h[154] = 0;
    h[155] = b' ';
    h
}

/// Number of zero bytes that pad `len` bytes of data to a whole block.
pub(crate) fn padding(len: u64) -> usize {
    let rem = (len % BLOCK as u64) as usize;
    if rem == 0 { 0 } else { BLOCK - rem }
}

/// Encodes the header block(s) of `e`: an optional PAX extended header with
/// its data, then the ustar header. The content (if any) is not included.
pub(crate) fn encode_header(e: &Entry) -> Vec<u8> {
    let split = split_ustar_name(&e.path);
    let link_fits = e.link.len() <= 100;
    let path_pax = split.is_none();
    let link_pax = !link_fits;

    let mut pax = Vec::new();
    let not_utf8 = |b: &[u8]| std::str::from_utf8(b).is_err();
    if (path_pax && not_utf8(&e.path)) || (link_pax && not_utf8(&e.link)) {
        push_pax_record(&mut pax, b"hdrcharset", b"BINARY");
    }
    if path_pax {
        push_pax_record(&mut pax, b"path", &e.path);
    }
    if link_pax {
        push_pax_record(&mut pax, b"linkpath", &e.link);
    }
    if e.size > MAX_OCTAL_11 {
        push_pax_record(&mut pax, b"size", e.size.to_string().as_bytes());
    }
    if e.uid > MAX_OCTAL_7 {
        push_pax_record(&mut pax, b"uid", e.uid.to_string().as_bytes());
    }
    if e.gid > MAX_OCTAL_7 {
        push_pax_record(&mut pax, b"gid", e.gid.to_string().as_bytes());
    }
    if e.mtime_nsec != 0 || e.mtime < 0 || e.mtime > MAX_OCTAL_11 as i64 {
        let v = format_mtime(e.mtime, e.mtime_nsec);
        push_pax_record(&mut pax, b"mtime", v.as_bytes());
    }
    for (name, value) in &e.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        push_pax_record(&mut pax, &key, value);
    }

    let mut out = Vec::with_capacity(BLOCK * 2 + pax.len() + padding(pax.len() as u64));
    if !pax.is_empty() {
        let ph = ustar_block(&Ustar {
            prefix: &[],
            name: PAX_HEADER_NAME,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: pax.len() as u64,
            mtime: 0,
            flag: b'x',
            link: &[],
            dev_major: 0,
            dev_minor: 0,
        });
        out.extend_from_slice(&ph);
        out.extend_from_slice(&pax);
        out.resize(out.len() + padding(pax.len() as u64), 0);
    }
    // When the path goes in PAX, the ustar name holds a truncated copy for
    // readers that ignore PAX.
    let (prefix, name) = split.unwrap_or((&[], &e.path));
    out.extend_from_slice(&ustar_block(&Ustar {
        prefix,
        name,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        mtime: e.mtime,
        flag: e.kind.flag(),
        link: &e.link,
        dev_major: e.dev_major,
        dev_minor: e.dev_minor,
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the records of a PAX data block, checking every length prefix.
    fn parse_pax(mut data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let sp = data.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&data[..sp]).unwrap().parse().unwrap();
            let rec = &data[..len];
            assert_eq!(rec[len - 1], b'\n', "record length prefix is wrong");
            let kv = &rec[sp + 1..len - 1];
            let eq = kv.iter().position(|&b| b == b'=').unwrap();
            out.push((kv[..eq].to_vec(), kv[eq + 1..].to_vec()));
            data = &data[len..];
        }
        out
    }

    fn octal(field: &[u8]) -> u64 {
        let s: String = field
            .iter()
            .take_while(|&&b| b != 0 && b != b' ')
            .map(|&b| b as char)
            .collect();
        u64::from_str_radix(&s, 8).unwrap()
    }

    #[test]
    fn pax_record_length_counts_itself() {
        let mut r = Vec::new();
        push_pax_record(&mut r, b"a", b"");
        assert_eq!(r, b"5 a=\n");
        // Boundaries where the length gains a digit.
        assert_eq!(pax_record_len(1, 4), 9); // "9 a=xxxx\n"
        assert_eq!(pax_record_len(1, 5), 11); // base 9 -> 10 -> 11
        assert_eq!(pax_record_len(1, 93), 99); // base 97 -> 99
        assert_eq!(pax_record_len(1, 94), 101); // base 98 -> 100 -> 101
        assert_eq!(pax_record_len(1, 992), 999); // base 996 -> 999
        assert_eq!(pax_record_len(1, 993), 1001); // base 997 -> 1000 -> 1001
        assert_eq!(pax_record_len(1, 995), 1003); // base 999 -> 1002 -> 1003
        for vlen in 0..3000 {
            let mut r = Vec::new();
            push_pax_record(&mut r, b"path", &vec![b'x'; vlen]);
            let parsed = parse_pax(&r);
            assert_eq!(parsed.len(), 1);
            assert_eq!(parsed[0].1.len(), vlen);
        }
    }

    #[test]
    fn ustar_split() {
        let short = vec![b'a'; 100];
        assert_eq!(split_ustar_name(&short), Some((&[][..], &short[..])));
        // 60 + 1 + 60 = 121 bytes: splits at the slash.
        let mut p = vec![b'd'; 60];
        p.push(b'/');
        p.extend(vec![b'f'; 60]);
        let (pre, name) = split_ustar_name(&p).unwrap();
        assert_eq!(pre, &[b'd'; 60][..]);
        assert_eq!(name, &[b'f'; 60][..]);
        // Name part longer than 100: impossible.
        let mut p = vec![b'd'; 10];
        p.push(b'/');
        p.extend(vec![b'f'; 101]);
        assert_eq!(split_ustar_name(&p), None);
        // A single 200-byte component: impossible.
        assert_eq!(split_ustar_name(&[b'x'; 200]), None);
        // Prefix longer than 155: impossible.
        let mut p = vec![b'd'; 160];
        p.push(b'/');
        p.extend(vec![b'f'; 50]);
        assert_eq!(split_ustar_name(&p), None);
        // Directory: the trailing slash is never the split point.
        let mut p = vec![b'd'; 50];
        p.push(b'/');
        p.extend(vec![b'e'; 99]);
        p.push(b'/');
        let (pre, name) = split_ustar_name(&p).unwrap();
        assert_eq!(pre.len(), 50);
        assert_eq!(name.len(), 100);
        assert!(name.ends_with(b"/"));
        let mut p = vec![b'd'; 50];
        p.push(b'/');
        p.extend(vec![b'e'; 100]);
        p.push(b'/');
        assert_eq!(split_ustar_name(&p), None);
        // Several slashes: shortest prefix whose name part fits.
        let p = [&[b'a'; 50][..], b"/", &[b'b'; 50], b"/", &[b'c'; 50]].concat();
        let (pre, name) = split_ustar_name(&p).unwrap();
        // The first slash would leave a 101-byte name part.
        assert_eq!(pre, &p[..101]);
        assert_eq!(name, &[b'c'; 50][..]);
        // Exactly 256 = 155 + 1 + 100.
        let p = [&[b'a'; 155][..], b"/", &[b'b'; 100]].concat();
        let (pre, name) = split_ustar_name(&p).unwrap();
        assert_eq!((pre.len(), name.len()), (155, 100));
    }

    #[test]
    fn mtime_format() {
        assert_eq!(format_mtime(5, 0), "5");
        assert_eq!(format_mtime(1700000000, 123456789), "1700000000.123456789");
        assert_eq!(format_mtime(1, 5), "1.000000005");
        assert_eq!(format_mtime(-2, 500_000_000), "-1.500000000");
        assert_eq!(format_mtime(-1, 1), "-0.999999999");
    }

    #[test]
    fn header_fields_and_checksum() {
        let mut e = Entry::new(b"usr/bin/x".to_vec(), Kind::Regular);
        e.mode = 0o104755; // includes file type bits, which must be dropped
        e.uid = 1000;
        e.gid = 100;
        e.size = 1234;
        e.mtime = 1_700_000_000;
        let h = encode_header(&e);
        assert_eq!(h.len(), BLOCK);
        assert_eq!(&h[..9], b"usr/bin/x");
        assert_eq!(octal(&h[100..108]), 0o4755);
        assert_eq!(octal(&h[108..116]), 1000);
        assert_eq!(octal(&h[116..124]), 100);
        assert_eq!(octal(&h[124..136]), 1234);
        assert_eq!(octal(&h[136..148]), 1_700_000_000);
        assert_eq!(h[156], b'0');
        assert_eq!(&h[257..265], b"ustar\x0000");
        let mut copy = h.clone();
        copy[148..156].fill(b' ');
        let sum: u64 = copy.iter().map(|&b| b as u64).sum();
        assert_eq!(octal(&h[148..156]), sum);
    }

    #[test]
    fn pax_for_big_values() {
        let mut e = Entry::new(vec![b'n'; 200], Kind::Regular);
        e.size = 9 << 30;
        e.uid = 3_000_000;
        e.gid = 0o7777777; // still fits
        e.mtime = 1;
        e.mtime_nsec = 7;
        e.link = Vec::new();
        e.xattrs = vec![(b"user.a".to_vec(), b"v\n\0x".to_vec())];
        let h = encode_header(&e);
        assert_eq!(h[156], b'x');
        let size = octal(&h[124..136]) as usize;
        let recs = parse_pax(&h[BLOCK..BLOCK + size]);
        let get = |k: &[u8]| recs.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        assert_eq!(get(b"path").unwrap(), vec![b'n'; 200]);
        assert_eq!(get(b"size").unwrap(), (9u64 << 30).to_string().as_bytes());
        assert_eq!(get(b"uid").unwrap(), b"3000000");
        assert_eq!(get(b"gid"), None);
        assert_eq!(get(b"mtime").unwrap(), b"1.000000007");
        assert_eq!(get(b"SCHILY.xattr.user.a").unwrap(), b"v\n\0x");
        assert_eq!(get(b"hdrcharset"), None);
        let main = &h[h.len() - BLOCK..];
        assert_eq!(main[156], b'0');
        // Base-256 size field.
        assert_eq!(main[124], 0x80);
        let mut v = 0u64;
        for &b in &main[125..136] {
            v = (v << 8) | b as u64;
        }
        assert_eq!(v, 9 << 30);
        assert_eq!(h.len() % BLOCK, 0);
    }

    #[test]
    fn binary_names_get_hdrcharset() {
        let mut p = vec![b'a'; 150];
        p.push(0xe9);
        let e = Entry::new(p.clone(), Kind::Regular);
        let h = encode_header(&e);
        let size = octal(&h[124..136]) as usize;
        let recs = parse_pax(&h[BLOCK..BLOCK + size]);
        assert_eq!(recs[0], (b"hdrcharset".to_vec(), b"BINARY".to_vec()));
        assert_eq!(recs[1], (b"path".to_vec(), p));
        // A short non-UTF-8 name is stored raw in the ustar header.
        let e = Entry::new(b"caf\xe9".to_vec(), Kind::Regular);
        let h = encode_header(&e);
        assert_eq!(h.len(), BLOCK);
        assert_eq!(&h[..4], b"caf\xe9");
    }

    #[test]
    fn negative_mtime_base256() {
        let mut f = [0u8; 12];
        put_num(&mut f, -1);
        assert_eq!(f, [0xff; 12]);
        put_num(&mut f, 0o777_7777_7777 + 1);
        assert_eq!(f[0], 0x80);
        assert_eq!(&f[1..7], &[0; 6]);
        assert_eq!(&f[7..], &[0x02, 0, 0, 0, 0]);
    }
}
