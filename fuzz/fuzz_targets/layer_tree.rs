//! The layer writer and the overlay → OCI conversion on generated trees.
//!
//! A small tree description (files, directories, symlinks, hard links,
//! fifos, devices, whiteouts as overlay's char 0/0 devices — some sharing one
//! inode — and in their xattr form, opaque directories, xattrs in and out of
//! overlay's namespace) is materialised in a temporary capture directory,
//! the layer is built uncompressed, and the tar is read back with the `tar`
//! crate. Checked: the build fails exactly when the tree holds what a layer
//! cannot express (a real name starting with `.wh.`, overlay redirects or
//! metacopy), and otherwise every entry's path is relative and normalised,
//! parents come before children, whiteouts and opaque markers are exactly
//! those of the tree, hard links point to an earlier regular entry, sizes
//! and contents match, and the xattrs are exactly those the policy carries.
//!
//! Needs root (device nodes, `trusted.*` xattrs). Works in `/dev/shm` when
//! present (the build fsyncs its blob).
#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use seamless_snapshot::fuzzing;

/// Newlines are kept out of names, link targets and xattrs: the `tar`
/// crate's PAX reader splits records at newlines instead of by their length
/// (tar 0.4.46 src/pax.rs), a reader's limitation; the core's own tests
/// parse such records by length.
fn no_nl(b: &u8) -> bool {
    *b != b'\n'
}

const MAX_DEPTH: usize = 6;
const MAX_NODES: usize = 64;

#[derive(Arbitrary, Debug)]
enum Name {
    Small(u8),
    Raw(Vec<u8>),
}

impl Name {
    fn bytes(&self) -> Vec<u8> {
        const SMALL: [&[u8]; 9] = [
            b"a",
            b"b",
            b"c",
            b"dir",
            b".wh.x",
            b".wh..opq",
            b"x y",
            b"\xff\xfe",
            b"..a",
        ];
        let mut b = match self {
            Name::Small(i) if *i == 255 => vec![b'L'; 200],
            Name::Small(i) => SMALL[usize::from(*i) % SMALL.len()].to_vec(),
            Name::Raw(r) => r
                .iter()
                .copied()
                .filter(|&c| c != b'/' && c != 0 && no_nl(&c))
                .collect(),
        };
        b.truncate(255);
        if b.is_empty() || b == b"." || b == b".." {
            b = b"n".to_vec();
        }
        b
    }
}

#[derive(Arbitrary, Debug)]
enum XName {
    Known(u8),
    User(Vec<u8>),
}

const KNOWN_XATTRS: [&str; 10] = [
    "user.a",
    "user.b",
    "user.overlay.origin",
    "user.overlay.overlay.q",
    "trusted.t",
    "trusted.overlay.origin",
    "trusted.overlay.overlay.q",
    "trusted.overlay.impure",
    "trusted.overlay.redirect",
    "user.overlay.metacopy",
];

impl XName {
    fn bytes(&self) -> Vec<u8> {
        match self {
            XName::Known(i) => KNOWN_XATTRS[usize::from(*i) % KNOWN_XATTRS.len()]
                .as_bytes()
                .to_vec(),
            XName::User(r) => {
                let mut n = b"user.".to_vec();
                n.extend(r.iter().copied().filter(|&c| c != 0 && no_nl(&c)).take(20));
                n
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Xattr {
    name: XName,
    value: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Node {
    File {
        name: Name,
        data: Vec<u8>,
        mode: u16,
        xattrs: Vec<Xattr>,
    },
    Dir {
        name: Name,
        opaque: bool,
        xattrs: Vec<Xattr>,
        children: Vec<Node>,
    },
    Symlink {
        name: Name,
        target: Vec<u8>,
    },
    HardLink {
        name: Name,
        to: u8,
    },
    /// A char 0/0 device; `shared`: a hard link to an earlier one.
    Whiteout {
        name: Name,
        shared: bool,
    },
    /// An empty file carrying overlay's `whiteout` xattr.
    XattrWhiteout {
        name: Name,
    },
    Fifo {
        name: Name,
    },
    Device {
        name: Name,
        block: bool,
        major: u8,
        minor: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    userxattr: bool,
    carry_trusted: bool,
    nodes: Vec<Node>,
}

/// What the model expects at a tar path.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    /// A regular file (or a hard link to one with the same inode `id`).
    File {
        id: usize,
        data: Vec<u8>,
        mode: u32,
    },
    Dir {
        mode: u32,
    },
    Symlink(Vec<u8>),
    /// An OCI whiteout `.wh.<name>`.
    Whiteout,
    /// An opaque marker.
    Opaque,
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
}

struct Model {
    policy_userxattr: bool,
    carry_trusted: bool,
    want: BTreeMap<Vec<u8>, Want>,
    /// Expected xattrs by tar path.
    xattrs: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Regular files created: (absolute path, tar path, inode id).
    files: Vec<(PathBuf, usize)>,
    first_whiteout: Option<PathBuf>,
    next_id: usize,
    /// The build must be refused.
    refuse: bool,
    nodes: usize,
}

fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> bool {
    let (Ok(p), Ok(n)) = (
        CString::new(path.as_os_str().as_bytes()),
        CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: valid NUL-terminated strings and a live buffer of its length.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    rc == 0
}

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> bool {
    let Ok(p) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::mknod(p.as_ptr(), mode, dev) == 0 }
}

impl Model {
    fn overlay_prefix(&self) -> &'static [u8] {
        if self.policy_userxattr {
            b"user.overlay."
        } else {
            b"trusted.overlay."
        }
    }

    /// Applies the xattrs of a node to `path` and records what the layer
    /// must carry (at tar path `rel`).
    fn xattrs(&mut self, path: &Path, rel: &[u8], xattrs: &[Xattr]) {
        let mut carried = BTreeMap::new();
        for x in xattrs {
            let stored = x.name.bytes();
            let value: Vec<u8> = x.value.iter().copied().filter(no_nl).take(64).collect();
            if !set_xattr(path, &stored, &value) {
                continue;
            }
            let emitted = match stored.strip_prefix(self.overlay_prefix()) {
                Some(b"redirect" | b"metacopy") => {
                    self.refuse = true;
                    continue;
                }
                Some(own) if own.starts_with(b"overlay.") => {
                    [self.overlay_prefix(), &own[b"overlay.".len()..]].concat()
                }
                Some(_) => continue, // overlay's own: never emitted
                None => stored.clone(),
            };
            let carry = emitted.starts_with(b"user.")
                || (self.carry_trusted && emitted.starts_with(b"trusted."));
            if carry && !emitted.contains(&b'=') {
                carried.insert(emitted, value);
            } else {
                carried.remove(&emitted);
            }
        }
        // A later set of the same name replaced the value: keep the last.
        let mut last = BTreeMap::new();
        for (k, v) in carried {
            last.insert(k, v);
        }
        self.xattrs.insert(rel.to_vec(), last);
    }

    fn add(&mut self, dir: &Path, rel: &[u8], nodes: &[Node], depth: usize) {
        for node in nodes {
            if self.nodes >= MAX_NODES {
                return;
            }
            self.nodes += 1;
            let name = match node {
                Node::File { name, .. }
                | Node::Dir { name, .. }
                | Node::Symlink { name, .. }
                | Node::HardLink { name, .. }
                | Node::Whiteout { name, .. }
                | Node::XattrWhiteout { name }
                | Node::Fifo { name }
                | Node::Device { name, .. } => name.bytes(),
            };
            let path = dir.join(OsStr::from_bytes(&name));
            if path.symlink_metadata().is_ok() {
                continue; // the name is taken
            }
            let tar_path = [rel, &name].concat();
            let is_wh_name = name.starts_with(b".wh.");
            match node {
                Node::File {
                    data, mode, xattrs, ..
                } => {
                    let data: Vec<u8> = data.iter().copied().take(4096).collect();
                    if std::fs::write(&path, &data).is_err() {
                        continue;
                    }
                    let mode = u32::from(*mode) & 0o7777;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                        .expect("chmod");
                    self.xattrs(&path, &tar_path, xattrs);
                    let id = self.next_id;
                    self.next_id += 1;
                    self.files.push((path.clone(), id));
                    self.want.insert(tar_path, Want::File { id, data, mode });
                }
                Node::Dir {
                    opaque,
                    xattrs,
                    children,
                    ..
                } => {
                    if depth >= MAX_DEPTH || std::fs::create_dir(&path).is_err() {
                        continue;
                    }
                    let mut dir_rel = tar_path.clone();
                    dir_rel.push(b'/');
                    self.xattrs(&path, &dir_rel, xattrs);
                    if *opaque {
                        let name = [self.overlay_prefix(), b"opaque"].concat();
                        assert!(set_xattr(&path, &name, b"y"), "set opaque");
                        self.want
                            .insert([&dir_rel[..], b".wh..wh..opq"].concat(), Want::Opaque);
                    }
                    self.add(&path, &dir_rel, children, depth + 1);
                    // After the children: their modes must not be limited.
                    let mode = std::fs::symlink_metadata(&path)
                        .expect("stat")
                        .permissions()
                        .mode()
                        & 0o7777;
                    self.want.insert(dir_rel, Want::Dir { mode });
                }
                Node::Symlink { target, .. } => {
                    let mut t: Vec<u8> = target
                        .iter()
                        .copied()
                        .filter(|&c| c != 0 && no_nl(&c))
                        .take(300)
                        .collect();
                    if t.is_empty() {
                        t.push(b'x');
                    }
                    if std::os::unix::fs::symlink(OsStr::from_bytes(&t), &path).is_err() {
                        continue;
                    }
                    self.want.insert(tar_path, Want::Symlink(t));
                }
                Node::HardLink { to, .. } => {
                    if self.files.is_empty() {
                        continue;
                    }
                    let (src, id) = self.files[usize::from(*to) % self.files.len()].clone();
                    if std::fs::hard_link(&src, &path).is_err() {
                        continue;
                    }
                    let src_want = self
                        .want
                        .values()
                        .find(|w| matches!(w, Want::File { id: i, .. } if *i == id))
                        .cloned()
                        .expect("linked file in the model");
                    let src_x = self
                        .want
                        .iter()
                        .find(|(_, w)| matches!(w, Want::File { id: i, .. } if *i == id))
                        .and_then(|(p, _)| self.xattrs.get(p).cloned())
                        .unwrap_or_default();
                    self.files.push((path.clone(), id));
                    self.xattrs.insert(tar_path.clone(), src_x);
                    self.want.insert(tar_path, src_want);
                }
                Node::Whiteout { shared, .. } => {
                    let made = match (&self.first_whiteout, shared) {
                        (Some(first), true) => std::fs::hard_link(first, &path).is_ok(),
                        _ => mknod(&path, libc::S_IFCHR | 0o600, 0),
                    };
                    if !made {
                        continue;
                    }
                    if self.first_whiteout.is_none() {
                        self.first_whiteout = Some(path.clone());
                    }
                    // A whiteout's own name starting with .wh. would be
                    // mangled: it must be refused like a real name.
                    if is_wh_name {
                        self.refuse = true;
                    }
                    self.want
                        .insert([rel, b".wh.", &name].concat(), Want::Whiteout);
                }
                Node::XattrWhiteout { .. } => {
                    // Overlay honours this form only in lower layers; in an
                    // upper dir (a capture) it is a plain empty file whose
                    // overlay xattrs are private.
                    if std::fs::write(&path, b"").is_err() {
                        continue;
                    }
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                        .expect("chmod");
                    let x = [self.overlay_prefix(), b"whiteout"].concat();
                    assert!(set_xattr(&path, &x, b""), "set whiteout xattr");
                    let xs = [self.overlay_prefix(), b"whiteouts"].concat();
                    set_xattr(dir, &xs, b"");
                    let id = self.next_id;
                    self.next_id += 1;
                    self.files.push((path.clone(), id));
                    self.xattrs.insert(tar_path.clone(), BTreeMap::new());
                    self.want.insert(
                        tar_path,
                        Want::File {
                            id,
                            data: Vec::new(),
                            mode: 0o644,
                        },
                    );
                }
                Node::Fifo { .. } => {
                    if !mknod(&path, libc::S_IFIFO | 0o644, 0) {
                        continue;
                    }
                    self.want.insert(tar_path, Want::Fifo);
                }
                Node::Device {
                    block,
                    major,
                    minor,
                    ..
                } => {
                    let (major, minor) = (u32::from(*major), u32::from(*minor));
                    if major == 0 && minor == 0 && !block {
                        continue; // that is a whiteout
                    }
                    let kind = if *block { libc::S_IFBLK } else { libc::S_IFCHR };
                    if !mknod(&path, kind | 0o600, libc::makedev(major, minor)) {
                        continue;
                    }
                    self.want.insert(
                        tar_path,
                        if *block {
                            Want::Block(major, minor)
                        } else {
                            Want::Char(major, minor)
                        },
                    );
                }
            }
            if is_wh_name && !matches!(node, Node::Whiteout { .. }) {
                self.refuse = true;
            }
        }
    }
}

fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn check_path(p: &[u8]) {
    assert!(!p.is_empty(), "empty path");
    assert!(!p.starts_with(b"/"), "absolute path {p:?}");
    let body = p.strip_suffix(b"/").unwrap_or(p);
    for c in body.split(|&b| b == b'/') {
        assert!(
            !c.is_empty() && c != b"." && c != b"..",
            "path {:?} is not normalised",
            String::from_utf8_lossy(p)
        );
    }
}

fuzz_target!(|input: Input| {
    let tmp = tempfile::Builder::new()
        .prefix("seamless-fuzz-")
        .tempdir_in(scratch_root())
        .expect("temp dir");
    let capture = tmp.path().join("capture");
    std::fs::create_dir(&capture).expect("capture dir");
    std::fs::set_permissions(&capture, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut m = Model {
        policy_userxattr: input.userxattr,
        carry_trusted: input.carry_trusted,
        want: BTreeMap::new(),
        xattrs: BTreeMap::new(),
        files: Vec::new(),
        first_whiteout: None,
        next_id: 0,
        refuse: false,
        nodes: 0,
    };
    m.add(&capture, b"", &input.nodes, 0);

    let out = tmp.path().join("layer.tar");
    let extra = if input.carry_trusted {
        vec!["trusted.".to_string()]
    } else {
        Vec::new()
    };
    let built = fuzzing::build_layer_tar(&capture, &out, input.userxattr, extra);
    if m.refuse {
        let e = built.expect_err("a tree a layer cannot express was built");
        assert!(!out.exists(), "a failed build left its blob ({e})");
        return;
    }
    let entries_count = match built {
        Ok(n) => n,
        Err(e) => panic!("build failed: {e}"),
    };

    let file = std::fs::File::open(&out).expect("blob");
    let mut archive = tar::Archive::new(file);
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut seen_set: BTreeSet<Vec<u8>> = BTreeSet::new();
    // Regular entries' paths by model inode id.
    let mut first_of: HashMap<usize, Vec<u8>> = HashMap::new();
    let mut prev_dir: Option<Vec<u8>> = None;
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("a well-formed entry");
        let path = entry.path_bytes().into_owned();
        check_path(&path);
        assert!(seen_set.insert(path.clone()), "duplicate entry {path:?}");
        // The parent directory came before.
        let body = path.strip_suffix(b"/").unwrap_or(&path);
        if let Some(i) = body.iter().rposition(|&b| b == b'/') {
            let parent = &body[..=i];
            assert!(seen_set.contains(parent), "{path:?} before its parent");
        }
        let want = m
            .want
            .get(&path)
            .unwrap_or_else(|| panic!("unexpected entry {:?}", String::from_utf8_lossy(&path)))
            .clone();
        let header = entry.header().clone();
        let kind = header.entry_type();
        // Xattrs: exactly those the policy carries.
        let mut got_x = BTreeMap::new();
        if let Some(exts) = entry.pax_extensions().expect("pax") {
            for ext in exts {
                let ext = ext.expect("pax record");
                if let Some(n) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    got_x.insert(n.to_vec(), ext.value_bytes().to_vec());
                }
            }
        }
        let name = body.rsplit(|&b| b == b'/').next().unwrap_or(body);
        match want {
            Want::File { id, data, mode } => {
                // A hard link entry has no metadata of its own: the inode's
                // xattrs go with its first name.
                let want_x = if kind.is_hard_link() {
                    BTreeMap::new()
                } else {
                    m.xattrs.get(&path).cloned().unwrap_or_default()
                };
                assert_eq!(got_x, want_x, "xattrs of {path:?}");
                if kind.is_hard_link() {
                    let target = entry.link_name_bytes().expect("link target").into_owned();
                    assert_eq!(
                        first_of.get(&id),
                        Some(&target),
                        "hard link {path:?} to {target:?}, not to the earlier entry of its inode"
                    );
                    assert_eq!(entry.size(), 0);
                } else {
                    assert!(kind.is_file(), "{path:?} is {kind:?}, not a file");
                    assert!(
                        first_of.insert(id, path.clone()).is_none(),
                        "inode {id} stored twice"
                    );
                    assert_eq!(header.mode().expect("mode"), mode, "mode of {path:?}");
                    assert_eq!(entry.size(), data.len() as u64, "size of {path:?}");
                    let mut content = Vec::new();
                    entry.read_to_end(&mut content).expect("content");
                    assert_eq!(content, data, "content of {path:?}");
                }
            }
            Want::Dir { mode } => {
                assert!(kind.is_dir(), "{path:?} is {kind:?}");
                assert_eq!(header.mode().expect("mode"), mode, "mode of {path:?}");
                assert_eq!(
                    got_x,
                    m.xattrs.get(&path).cloned().unwrap_or_default(),
                    "xattrs of {path:?}"
                );
            }
            Want::Symlink(t) => {
                assert!(kind.is_symlink(), "{path:?} is {kind:?}");
                assert_eq!(entry.link_name_bytes().expect("target").into_owned(), t);
            }
            Want::Whiteout => {
                assert!(kind.is_file() && entry.size() == 0, "whiteout {path:?}");
                assert!(name.starts_with(b".wh."));
            }
            Want::Opaque => {
                assert!(
                    kind.is_file() && entry.size() == 0,
                    "opaque marker {path:?}"
                );
                // Right after its directory.
                assert_eq!(
                    prev_dir.as_deref(),
                    Some(&path[..path.len() - b".wh..wh..opq".len()]),
                    "opaque marker {path:?} not right after its directory"
                );
            }
            Want::Fifo => assert!(kind.is_fifo(), "{path:?} is {kind:?}"),
            Want::Char(ma, mi) | Want::Block(ma, mi) => {
                let block = matches!(want, Want::Block(..));
                assert!(
                    if block {
                        kind.is_block_special()
                    } else {
                        kind.is_character_special()
                    },
                    "{path:?} is {kind:?}"
                );
                assert_eq!(header.device_major().expect("major"), Some(ma));
                assert_eq!(header.device_minor().expect("minor"), Some(mi));
            }
        }
        prev_dir = kind.is_dir().then(|| path.clone());
        seen.push(path);
    }
    let missing: Vec<_> = m.want.keys().filter(|k| !seen_set.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "entries missing from the layer: {missing:?}"
    );
    assert_eq!(seen.len() as u64, entries_count, "entry count");
    // A whiteout and its name never both appear in one directory.
    for p in &seen {
        let body = p.strip_suffix(b"/").unwrap_or(p);
        let (dir, name) = match body.iter().rposition(|&b| b == b'/') {
            Some(i) => (&body[..=i], &body[i + 1..]),
            None => (&b""[..], body),
        };
        if let Some(hidden) = name.strip_prefix(b".wh.")
            && hidden != b".wh..opq"
        {
            let plain = [dir, hidden].concat();
            assert!(
                !seen_set.contains(&plain) && !seen_set.contains(&[&plain[..], b"/"].concat()),
                "{p:?} and the name it hides both present"
            );
        }
    }
});
