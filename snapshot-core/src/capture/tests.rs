use super::*;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::stat::{SFlag, UtimensatFlags, fstat, fstatat, mknodat, utimensat};
use nix::sys::time::TimeSpec;

use crate::sys::xattr::{self, XRef};
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

mod fs_quirks;
mod incremental;

#[derive(Debug, PartialEq)]
struct Info {
    fmt: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    hash: Option<u64>,
    mtime: (i64, i64),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    target: Option<Vec<u8>>,
    rdev: u64,
    group: Vec<Vec<u8>>,
}

fn xattrs_of(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let x = XRef::path(p).unwrap();
    let names = xattr::list(&x).unwrap();
    let mut out: Vec<_> = xattr::names(&names)
        .map(|n| (n.to_bytes().to_vec(), xattr::get(&x, n).unwrap()))
        .collect();
    out.sort();
    out
}

fn hash_file(p: &Path) -> u64 {
    let mut f = File::open(p).unwrap();
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    h.finish()
}

fn tree_info(root: &Path) -> BTreeMap<Vec<u8>, Info> {
    fn rec(
        root: &Path,
        rel: &[u8],
        out: &mut BTreeMap<Vec<u8>, Info>,
        inos: &mut HashMap<u64, Vec<Vec<u8>>>,
    ) {
        let p = Ctx::join(root, rel);
        let md = std::fs::symlink_metadata(&p).unwrap();
        let fmt = md.mode() & libc::S_IFMT;
        if fmt == libc::S_IFSOCK {
            return;
        }
        let is_reg = fmt == libc::S_IFREG;
        out.insert(
            rel.to_vec(),
            Info {
                fmt,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                size: (fmt != libc::S_IFDIR).then(|| md.size()),
                hash: is_reg.then(|| hash_file(&p)),
                mtime: (md.mtime(), md.mtime_nsec()),
                xattrs: xattrs_of(&p),
                target: (fmt == libc::S_IFLNK).then(|| {
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
                rdev: md.rdev(),
                group: Vec::new(),
            },
        );
        // Whiteouts share one inode in overlayfs; the capture need not.
        let whiteout = fmt == libc::S_IFCHR && md.rdev() == 0;
        if fmt != libc::S_IFDIR {
            if !whiteout {
                inos.entry(md.ino()).or_default().push(rel.to_vec());
            }
            return;
        }
        for e in std::fs::read_dir(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())) {
            let e = e.unwrap();
            let mut r = rel.to_vec();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(e.file_name().as_bytes());
            rec(root, &r, out, inos);
        }
    }
    let mut out = BTreeMap::new();
    let mut inos = HashMap::new();
    rec(root, b"", &mut out, &mut inos);
    for mut paths in inos.into_values() {
        paths.sort();
        for p in &paths {
            if let Some(i) = out.get_mut(p) {
                i.group = paths.clone();
            }
        }
    }
    out
}

/// Compares type, mode, owner, size, content, mtime, xattrs, symlink
/// target, rdev and hardlink grouping of two trees (sockets ignored).
fn assert_trees_equal(a: &Path, b: &Path) {
    let ta = tree_info(a);
    let tb = tree_info(b);
    let ka: Vec<_> = ta.keys().map(|k| String::from_utf8_lossy(k)).collect();
    let kb: Vec<_> = tb.keys().map(|k| String::from_utf8_lossy(k)).collect();
    assert_eq!(ka, kb, "path sets differ");
    for (k, ia) in &ta {
        assert_eq!(
            Some(ia),
            tb.get(k),
            "entry {:?} differs",
            String::from_utf8_lossy(k)
        );
    }
}

fn setx(p: &Path, name: &CStr, v: &[u8]) {
    xattr::set(&XRef::path(p).unwrap(), name, v).unwrap();
}

fn mknod(p: &Path, kind: SFlag, perm: u32, dev: u64) {
    mknodat(AT_FDCWD, p, kind, Mode::from_bits_truncate(perm), dev).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn capture(upper: &Path, dest: &Path) -> (Capture, PhaseStats, PhaseStats) {
    let mut c = Capture::new(upper, dest).unwrap();
    let mut last = 0;
    let pre = c.precopy(&mut |n| last = n).unwrap();
    assert_eq!(last, pre.bytes_copied);
    let sync = c.sync_frozen().unwrap();
    (c, pre, sync)
}

fn build_tricky(u: &Path) {
    std::fs::write(u.join("file.txt"), b"hello").unwrap();
    setx(&u.join("file.txt"), c"user.test", b"value");
    std::fs::write(u.join("n".repeat(200)), b"long name").unwrap();
    std::fs::write(u.join(OsStr::from_bytes(b"bad\xff\xfename")), b"x").unwrap();
    std::fs::create_dir(u.join("empty")).unwrap();
    std::fs::create_dir_all(u.join("a/b/c/d")).unwrap();
    std::fs::write(u.join("a/b/c/d/file"), b"deep").unwrap();
    std::fs::write(u.join("a/h1"), b"linked").unwrap();
    std::fs::hard_link(u.join("a/h1"), u.join("a/b/h2")).unwrap();
    std::fs::hard_link(u.join("a/h1"), u.join("h3")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", u.join("abs")).unwrap();
    std::os::unix::fs::symlink("nope/nothing", u.join("dangling")).unwrap();
    std::os::unix::fs::symlink("a/b", u.join("rel")).unwrap();
    setx(&u.join("rel"), c"trusted.sym", b"1");
    mknod(&u.join("wh"), SFlag::S_IFCHR, 0, 0);
    mknod(&u.join("null"), SFlag::S_IFCHR, 0o666, libc::makedev(1, 3));
    mknod(&u.join("fifo"), SFlag::S_IFIFO, 0o640, 0);
    std::fs::create_dir(u.join("opq")).unwrap();
    std::fs::write(u.join("opq/inside"), b"o").unwrap();
    setx(&u.join("opq"), c"trusted.overlay.opaque", b"y");
    let s = u.join("suid");
    std::fs::write(&s, b"#!/bin/sh\n").unwrap();
    chown(&s, 1000, 1000);
    chmod(&s, 0o4755);
    // VFS_CAP_REVISION_2, cap_net_bind_service permitted.
    let mut cap = Vec::new();
    for w in [0x0200_0000u32, 1 << 10, 0, 0, 0] {
        cap.extend_from_slice(&w.to_le_bytes());
    }
    setx(&s, c"security.capability", &cap);
    std::fs::create_dir(u.join("sticky")).unwrap();
    chmod(&u.join("sticky"), 0o1777);
    std::fs::create_dir(u.join("sgid")).unwrap();
    chown(&u.join("sgid"), 1000, 1001);
    chmod(&u.join("sgid"), 0o2750);
    let sp = File::create(u.join("sparse")).unwrap();
    sp.set_len(256 << 20).unwrap();
    sp.write_all_at(&[7u8; 4096], 0).unwrap();
    sp.write_all_at(&[9u8; 4096], 100 << 20).unwrap();
    drop(sp);
    let _sock = std::os::unix::net::UnixListener::bind(u.join("sock")).unwrap();
    utimensat(
        AT_FDCWD,
        &u.join("file.txt"),
        &TimeSpec::new(1_000_000, 111),
        &TimeSpec::new(1_500_000_000, 123_456_789),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    chmod(&u.join("a/b/c"), 0o500);
}

/// A filesystem made by `mkfs` on a sparse loop image file, mounted in a
/// temporary directory for the life of the value (unmounted on drop).
struct LoopMount {
    // Dropped after the unmount in `drop`: holds the image and the mount point.
    dir: tempfile::TempDir,
}

impl LoopMount {
    /// `mkfs` (the program and its options; the image is appended) on an
    /// image of `size` bytes.
    fn new(mkfs: &[&str], size: u64) -> LoopMount {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        File::create(&img).unwrap().set_len(size).unwrap();
        let run = |cmd: &mut std::process::Command| {
            let st = cmd.status().unwrap();
            assert!(st.success(), "{cmd:?}: {st}");
        };
        let out = std::process::Command::new(mkfs[0])
            .args(&mkfs[1..])
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success(), "{mkfs:?}: {out:?}");
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        run(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(dir.path().join("mnt")));
        LoopMount { dir }
    }

    /// XFS with reflink (XFS needs 300 MiB at least; the file stays sparse).
    fn xfs() -> LoopMount {
        Self::new(&["mkfs.xfs", "-q", "-m", "reflink=1"], 512 << 20)
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        // mount(8) set up the loop device to detach itself on unmount.
        if let Err(e) = nix::mount::umount(&self.path()) {
            eprintln!("umount {}: {e}", self.path().display());
        }
    }
}

#[test]
#[ignore = "needs root (mounts an XFS loop filesystem)"]
fn reflink_on_xfs() {
    let xfs = LoopMount::xfs();
    let t = tempfile::tempdir_in(xfs.path()).unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir(&u).unwrap();
    build_tricky(&u);
    std::fs::write(u.join("later"), b"x").unwrap();
    let dest = t.path().join("cap");
    let mut c = Capture::new(&u, &dest).unwrap();
    c.precopy(&mut |_| {}).unwrap();
    std::fs::write(u.join("later"), vec![b'y'; 1 << 20]).unwrap();
    c.sync_frozen().unwrap();
    assert_eq!(c.strategy(), CaptureStrategy::Reflink);
    assert_trees_equal(&u, &dest);
    let md = std::fs::metadata(dest.join("sparse")).unwrap();
    assert!(
        md.blocks() * 512 < 1 << 20,
        "not sparse: {} blocks",
        md.blocks()
    );
}

#[test]
fn capture_is_send() {
    fn is_send<T: Send>() {}
    is_send::<Capture>();
}

#[test]
#[ignore = "needs root"]
fn sync_without_precopy_and_second_precopy() {
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir_all(u.join("a")).unwrap();
    std::fs::write(u.join("a/f"), b"data").unwrap();
    let dest = t.path().join("cap");
    let mut c = Capture::new(&u, &dest).unwrap();
    let s = c.sync_frozen().unwrap();
    assert_eq!((s.files, s.bytes_copied), (1, 4));
    assert_trees_equal(&u, &dest);
    assert!(c.precopy(&mut |_| {}).is_err());
    assert_eq!(c.dest(), dest.as_path());
    assert!(Capture::new(&u, &t.path().join("no/parent")).is_err());
}

#[test]
#[ignore = "needs root"]
fn tricky_tree_is_copied_exactly() {
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir(&u).unwrap();
    build_tricky(&u);
    let dest = t.path().join("cap");
    let (c, pre, _) = capture(&u, &dest);
    assert!(pre.files >= 15, "{pre:?}");
    assert_trees_equal(&u, &dest);
    let md = std::fs::metadata(dest.join("sparse")).unwrap();
    assert_eq!(md.size(), 256 << 20);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "not sparse: {} blocks",
        md.blocks()
    );
    assert!(!dest.join("sock").exists());
    let x = xattrs_of(&dest.join("suid"));
    assert!(x.iter().any(|(n, _)| n == b"security.capability"));
    let (files, bytes) = c.totals();
    assert_eq!(files, 16);
    assert!(bytes >= 256 << 20);
    assert_eq!(c.strategy(), CaptureStrategy::CopyFileRange);
    // dest must not exist beforehand
    assert!(Capture::new(&u, &dest).is_err());
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn churn(u: &Path, rng: &mut Rng) {
    let d = |r: &mut Rng| u.join(format!("d{}", r.next(4)));
    let f = |r: &mut Rng| d(r).join(format!("f{}", r.next(40)));
    match rng.next(11) {
        0 => {
            if let Ok(mut h) = std::fs::OpenOptions::new().append(true).open(f(rng)) {
                let _ = h.write_all(&[b'a'; 3000]);
            }
        }
        1 => {
            if let Ok(h) = std::fs::OpenOptions::new().write(true).open(f(rng)) {
                let _ = h.set_len(rng.next(100_000));
            }
        }
        2 => {
            let tmp = d(rng).join(format!("tmp{}", rng.next(1000)));
            if std::fs::write(&tmp, vec![b'r'; rng.next(50_000) as usize]).is_ok() {
                let _ = std::fs::rename(&tmp, f(rng));
            }
        }
        3 => {
            let _ = std::fs::remove_file(f(rng));
        }
        4 => {
            let _ = std::fs::write(f(rng), b"new");
        }
        5 => {
            let _ = std::fs::hard_link(f(rng), f(rng));
        }
        6 => {
            let s = d(rng).join(format!("s{}", rng.next(5)));
            if std::fs::create_dir(&s).is_ok() {
                let _ = std::fs::write(s.join("x"), b"in sub");
            } else {
                let _ = std::fs::remove_dir_all(&s);
            }
        }
        7 => {
            let _ = std::fs::set_permissions(
                f(rng),
                std::fs::Permissions::from_mode(0o600 + rng.next(0o177) as u32),
            );
        }
        8 => {
            let a = d(rng).join(format!("s{}", rng.next(5)));
            let b = d(rng).join(format!("s{}", rng.next(5)));
            let _ = std::fs::rename(a, b);
        }
        9 => {
            if let Ok(x) = XRef::path(&f(rng)) {
                let _ = xattr::set(&x, c"user.x", &rng.next(1000).to_le_bytes());
            }
        }
        _ => {
            let _ = std::os::unix::fs::symlink("target", f(rng));
        }
    }
}

#[test]
#[ignore = "needs root"]
fn concurrent_changes_are_synced_exactly() {
    for iter in 0..3u64 {
        let t = tempfile::tempdir().unwrap();
        let u = t.path().join("upper");
        let mut rng = Rng(iter + 1);
        for i in 0..4 {
            std::fs::create_dir_all(u.join(format!("d{i}"))).unwrap();
            for j in 0..40 {
                let size = if j % 10 == 0 { 512 << 10 } else { 2000 };
                std::fs::write(u.join(format!("d{i}/f{j}")), vec![b'0' + j as u8; size]).unwrap();
            }
        }
        for _ in 0..200 {
            churn(&u, &mut rng);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (u2, s2) = (u.clone(), stop.clone());
        let writer = std::thread::spawn(move || {
            let mut rng = Rng(iter + 100);
            let mut n = 0u64;
            while !s2.load(Ordering::Relaxed) {
                churn(&u2, &mut rng);
                n += 1;
            }
            n
        });
        std::thread::sleep(Duration::from_millis(5));
        let dest = t.path().join("cap");
        let mut c = Capture::new(&u, &dest).unwrap();
        c.precopy(&mut |_| {}).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        stop.store(true, Ordering::Relaxed);
        let ops = writer.join().unwrap();
        let sync = c.sync_frozen().unwrap();
        assert!(ops > 0);
        eprintln!("iteration {iter}: {ops} concurrent ops, sync {sync:?}");
        assert_trees_equal(&u, &dest);
        // A second sync with no change in between keeps it equal.
        std::thread::sleep(Duration::from_millis(60));
        c.sync_frozen().unwrap();
        assert_trees_equal(&u, &dest);
    }
}

fn contains_secret(dir: &Path) -> bool {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let name = e.file_name();
        if name.as_bytes().starts_with(b"secret") || name == "deeper" {
            return true;
        }
        if ft.is_dir() {
            if contains_secret(&e.path()) {
                return true;
            }
        } else if ft.is_file() && std::fs::read(e.path()).unwrap().starts_with(b"TOPSECRET") {
            return true;
        }
    }
    false
}

#[test]
#[ignore = "needs root"]
fn symlink_swap_never_escapes() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("outside");
    std::fs::create_dir_all(out.join("deeper")).unwrap();
    std::fs::write(out.join("secret.txt"), b"TOPSECRET").unwrap();
    std::fs::write(out.join("deeper/secret2"), b"TOPSECRET").unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir_all(u.join("x/sub")).unwrap();
    for i in 0..300 {
        std::fs::write(u.join(format!("x/sub/f{i}")), b"inner").unwrap();
    }
    std::fs::create_dir_all(u.join("x/sub/nested")).unwrap();
    std::os::unix::fs::symlink(&out, u.join("x/lnk")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (x, s2) = (u.join("x"), stop.clone());
    let swapper = std::thread::spawn(move || {
        let a = CString::new(x.join("sub").as_os_str().as_bytes()).unwrap();
        let b = CString::new(x.join("lnk").as_os_str().as_bytes()).unwrap();
        let mut n = 0u64;
        while !s2.load(Ordering::Relaxed) {
            // SAFETY: valid C strings.
            let r = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            };
            assert_eq!(r, 0);
            n += 1;
        }
        n
    });
    let mut last = None;
    for i in 0..30 {
        let dest = t.path().join(format!("cap{i}"));
        let mut c = Capture::new(&u, &dest).unwrap();
        c.precopy(&mut |_| {}).unwrap();
        assert!(!contains_secret(&dest), "escaped the upper dir");
        last = Some((c, dest));
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 100);
    let (mut c, dest) = last.unwrap();
    c.sync_frozen().unwrap();
    assert!(!contains_secret(&dest));
    assert_trees_equal(&u, &dest);
}

#[test]
#[ignore = "needs root"]
fn unchanged_tree_syncs_nothing() {
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir_all(u.join("a/b")).unwrap();
    for i in 0..50 {
        std::fs::write(u.join(format!("a/f{i}")), vec![b'z'; 10_000]).unwrap();
    }
    std::fs::hard_link(u.join("a/f1"), u.join("a/b/l1")).unwrap();
    std::os::unix::fs::symlink("f1", u.join("a/s")).unwrap();
    mknod(&u.join("wh"), SFlag::S_IFCHR, 0, 0);
    std::thread::sleep(Duration::from_millis(100));
    let dest = t.path().join("cap");
    let mut c = Capture::new(&u, &dest).unwrap();
    let pre = c.precopy(&mut |_| {}).unwrap();
    assert_eq!(pre.bytes_copied, 500_000);
    std::thread::sleep(Duration::from_millis(100));
    let s = c.sync_frozen().unwrap();
    assert_eq!((s.files, s.bytes_copied, s.removed), (0, 0, 0), "{s:?}");
    assert_eq!(s.entries, 55);
    assert_trees_equal(&u, &dest);
    assert_eq!(c.totals(), (53, 510_000));

    // One change: exactly that file (racy now, so ctime rule applies too).
    std::fs::write(u.join("a/f7"), b"changed").unwrap();
    std::fs::remove_file(u.join("a/f8")).unwrap();
    let s = c.sync_frozen().unwrap();
    assert_eq!((s.files, s.bytes_copied, s.removed), (1, 7, 1), "{s:?}");
    assert_trees_equal(&u, &dest);
}

/// A page of `path` mapped shared-writable, for writes that bypass write(2).
struct SharedMap {
    _file: std::fs::File,
    ptr: *mut u8,
    len: usize,
}

impl SharedMap {
    fn new(path: &Path, len: usize) -> Self {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        // SAFETY: maps `len` bytes of an open file we keep alive.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        SharedMap {
            _file: file,
            ptr: ptr.cast(),
            len,
        }
    }

    fn write(&self, at: usize, b: u8) {
        assert!(at < self.len);
        // SAFETY: in bounds of the live mapping.
        unsafe { self.ptr.add(at).write_volatile(b) };
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmaps what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[test]
#[ignore = "needs root"]
fn forced_recopy_catches_writes_through_shared_mappings() {
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir_all(&u).unwrap();
    let (plain, forced) = (u.join("plain"), u.join("forced"));
    std::fs::write(&plain, vec![b'a'; 4096]).unwrap();
    std::fs::write(&forced, vec![b'a'; 4096]).unwrap();
    let maps = [SharedMap::new(&plain, 4096), SharedMap::new(&forced, 4096)];
    // The first write faults and updates ctime; the page stays dirty.
    for m in &maps {
        m.write(0, b'1');
    }
    std::thread::sleep(Duration::from_millis(120));
    let dest = t.path().join("cap");
    let mut c = Capture::new(&u, &dest).unwrap();
    c.precopy(&mut |_| {}).unwrap();
    let ctime = |p: &Path| std::fs::metadata(p).unwrap().ctime_nsec();
    let before = ctime(&plain);
    // Writes to an already-dirty page: no fault, no time update.
    for m in &maps {
        m.write(1, b'2');
    }
    std::thread::sleep(Duration::from_millis(120));
    c.force_recopy(&Forced::paths([b"forced".to_vec()]));
    c.sync_frozen().unwrap();
    assert_eq!(
        std::fs::read(dest.join("forced")).unwrap(),
        std::fs::read(&forced).unwrap()
    );
    if ctime(&plain) == before {
        // Without the hint the change is invisible to a stat comparison:
        // this is why the committer looks at the container's mappings.
        assert_ne!(
            std::fs::read(dest.join("plain")).unwrap(),
            std::fs::read(&plain).unwrap()
        );
    }
    // The hint is used once.
    c.sync_frozen().unwrap();
}

/// Kernels before 6.8 show a file mapped through overlayfs with the upper
/// filesystem's device and inode: found through the process's own maps as
/// such a kernel would show them, the file is re-copied by inode.
#[test]
#[ignore = "needs root"]
fn mapped_files_found_by_upper_inode_are_recopied() {
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir_all(u.join("data")).unwrap();
    let file = u.join("data/mapped");
    std::fs::write(&file, vec![b'a'; 4096]).unwrap();
    let map = SharedMap::new(&file, 4096);
    map.write(0, b'1');
    std::thread::sleep(Duration::from_millis(120));
    let dest = t.path().join("cap");
    let mut c = Capture::new(&u, &dest).unwrap();
    c.precopy(&mut |_| {}).unwrap();
    map.write(1, b'2');
    std::thread::sleep(Duration::from_millis(120));
    // No overlay here: the "overlay" device matches nothing, the upper
    // filesystem's is that of the temporary directory.
    let upper_dev = std::fs::metadata(&u).unwrap().dev();
    let mut mapped = MappedFiles::new(u64::MAX, upper_dev);
    mapped.sample(&std::collections::HashSet::from([std::process::id()]));
    c.force_recopy(mapped.files());
    c.sync_frozen().unwrap();
    assert_eq!(
        std::fs::read(dest.join("data/mapped")).unwrap(),
        std::fs::read(&file).unwrap()
    );
}

#[test]
#[ignore = "needs root"]
fn hardlink_and_type_changes() {
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir_all(u.join("dir/sub")).unwrap();
    std::fs::write(u.join("a"), b"A").unwrap();
    std::fs::hard_link(u.join("a"), u.join("b")).unwrap();
    std::fs::write(u.join("c"), b"C").unwrap();
    std::fs::write(u.join("dir/sub/f"), b"F").unwrap();
    std::fs::write(u.join("tofile"), b"").unwrap();
    std::fs::write(u.join("todir"), b"x").unwrap();
    mknod(&u.join("wh"), SFlag::S_IFCHR, 0, 0);
    std::fs::create_dir(u.join("dir2")).unwrap();
    let dest = t.path().join("cap");
    let mut c = Capture::new(&u, &dest).unwrap();
    c.precopy(&mut |_| {}).unwrap();

    std::fs::remove_file(u.join("b")).unwrap();
    std::fs::write(u.join("b"), b"new b").unwrap();
    std::fs::hard_link(u.join("a"), u.join("dir/a2")).unwrap();
    std::fs::hard_link(u.join("c"), u.join("dir/sub/c2")).unwrap();
    std::fs::remove_dir_all(u.join("dir/sub")).unwrap();
    std::fs::write(u.join("dir/sub"), b"now a file").unwrap();
    std::fs::remove_file(u.join("todir")).unwrap();
    std::fs::create_dir(u.join("todir")).unwrap();
    std::fs::write(u.join("todir/in"), b"in").unwrap();
    std::fs::remove_file(u.join("wh")).unwrap();
    std::fs::write(u.join("wh"), b"no longer a whiteout").unwrap();
    std::fs::remove_dir(u.join("dir2")).unwrap();
    std::os::unix::fs::symlink("a", u.join("dir2")).unwrap();
    setx(&u.join("dir"), c"trusted.overlay.opaque", b"y");
    std::fs::write(u.join("tmp"), b"Z").unwrap();
    std::fs::rename(u.join("tmp"), u.join("c")).unwrap();

    c.sync_frozen().unwrap();
    assert_trees_equal(&u, &dest);
    let a = std::fs::metadata(dest.join("a")).unwrap();
    assert_eq!(a.nlink(), 2);
}

/// `cargo test -- --ignored bench_sync_cost --nocapture`: cost of an unchanged entry.
#[test]
#[ignore = "benchmark"]
fn bench_sync_cost_per_unchanged_entry() {
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("upper");
    for i in 0..200 {
        let d = u.join(format!("d{i}"));
        std::fs::create_dir_all(&d).unwrap();
        for j in 0..100 {
            std::fs::write(d.join(format!("file-{j}")), b"x").unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut c = Capture::new(&u, &t.path().join("cap")).unwrap();
    let pre = c.precopy(&mut |_| {}).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let s = c.sync_frozen().unwrap();
    assert_eq!(s.files, 0);
    eprintln!(
        "precopy {:?}; sync of {} entries {:?} = {:.2} us/entry",
        pre.duration,
        s.entries,
        s.duration,
        s.duration.as_secs_f64() * 1e6 / s.entries as f64
    );
}

/// Makes a chain of `levels` directories `name` below `top`, calling
/// `at(level, dir)` in each (level 1 is the first below `top`); returns the
/// deepest open. Fd-relative: the chain may be far deeper than `PATH_MAX`.
fn deep_chain(
    top: &Path,
    levels: usize,
    name: &CStr,
    mut at: impl FnMut(usize, BorrowedFd<'_>),
) -> OwnedFd {
    let dflags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY;
    let mut cur = crate::sys::fs::open_dir(top).unwrap();
    for level in 1..=levels {
        mkdirat(&cur, name, Mode::from_bits_truncate(0o755)).unwrap();
        cur = nix::fcntl::openat(&cur, name, dflags, Mode::empty()).unwrap();
        at(level, cur.as_fd());
    }
    cur
}

/// Writes `data` to the new or truncated file `name` of `dir`.
fn write_at(dir: BorrowedFd<'_>, name: &CStr, data: &[u8]) {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    File::from(fd).write_all(data).unwrap();
}

/// What a capture must preserve of one entry: mode, owner, size (not of a
/// directory), mtime, content or symlink target, link count.
type DeepInfo = (u32, u32, u32, i64, (i64, i64), Option<Vec<u8>>, u64);

/// Every entry below `root` (itself as `""`), at any depth: reached through
/// a cursor, one name at a time.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn deep_tree_info(root: &Path) -> BTreeMap<Vec<u8>, DeepInfo> {
    use nix::fcntl::{AtFlags, OFlag};
    let top = crate::sys::fs::open_dir(root).unwrap();
    let mut cur = crate::sys::fs::DirCursor::new();
    let info = |st: &nix::sys::stat::FileStat, data| {
        let fmt = st.st_mode & libc::S_IFMT;
        (
            st.st_mode as u32,
            st.st_uid,
            st.st_gid,
            if fmt == libc::S_IFDIR {
                0
            } else {
                st.st_size as i64
            },
            (st.st_mtime as i64, st.st_mtime_nsec as i64),
            data,
            if fmt == libc::S_IFDIR {
                0
            } else {
                st.st_nlink as u64
            },
        )
    };
    let mut out = BTreeMap::new();
    out.insert(Vec::new(), info(&fstat(&top).unwrap(), None));
    let mut todo = vec![Vec::new()];
    while let Some(rel) = todo.pop() {
        let dir = cur.open(top.as_fd(), &rel).unwrap();
        for name in crate::sys::fs::read_names(dir).unwrap() {
            let st = fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
            let data = match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => {
                    let fd =
                        nix::fcntl::openat(dir, name.as_c_str(), OFlag::O_RDONLY, Mode::empty())
                            .unwrap();
                    let mut v = Vec::new();
                    File::from(fd).read_to_end(&mut v).unwrap();
                    Some(v)
                }
                libc::S_IFLNK => Some(
                    nix::fcntl::readlinkat(dir, name.as_c_str())
                        .unwrap()
                        .into_encoded_bytes(),
                ),
                _ => None,
            };
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(name.to_bytes());
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                todo.push(r.clone());
            }
            out.insert(r, info(&st, data));
        }
    }
    out
}

fn assert_deep_trees_equal(a: &Path, b: &Path) {
    let (ta, tb) = (deep_tree_info(a), deep_tree_info(b));
    assert_eq!(ta.len(), tb.len(), "entry counts differ");
    for (k, ia) in &ta {
        let short = String::from_utf8_lossy(&k[k.len().saturating_sub(60)..]).into_owned();
        assert_eq!(
            Some(ia),
            tb.get(k),
            "entry ...{short} ({} bytes) differs",
            k.len()
        );
    }
}

/// While alive, this process's soft limit on open files is at most `n`
/// (the usual default is 1,024): a walker holding one fd per level fails
/// with `EMFILE` long before the bottom of a deep chain.
struct OpenFilesLimit(libc::rlimit);

impl OpenFilesLimit {
    fn at_most(n: u64) -> OpenFilesLimit {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `old` is a valid rlimit to write to.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        let new = libc::rlimit {
            rlim_cur: n.min(old.rlim_cur),
            rlim_max: old.rlim_max,
        };
        // SAFETY: `new` is a valid rlimit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) }, 0);
        OpenFilesLimit(old)
    }
}

impl Drop for OpenFilesLimit {
    fn drop(&mut self) {
        // SAFETY: the saved rlimit is valid.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
    }
}

const DEEP_LEVELS: usize = 1500;
const DEEP_NAME: &CStr = c"x123456789";

/// One tar entry: name, type flag, link name, content.
type TarEntry = (Vec<u8>, String, Vec<u8>, Vec<u8>);

/// Lists a tar archive with Python's tarfile (an independent PAX reader).
fn py_tar_list(tar: &Path) -> Vec<TarEntry> {
    const PY: &str = r#"
import tarfile, sys
b = lambda s: s.encode('utf-8', 'surrogateescape').hex()
with tarfile.open(sys.argv[1], 'r:', encoding='utf-8', errors='surrogateescape') as tf:
    for m in tf:
        data = tf.extractfile(m).read().hex() if m.isreg() else ''
        print(b(m.name), m.type.decode(), b(m.linkname) or '-', data or '-')
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", PY])
        .arg(tar)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let unhex = |s: &str| {
        if s == "-" {
            Vec::new()
        } else {
            hex::decode(s).unwrap()
        }
    };
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (unhex(f[0]), f[1].to_string(), unhex(f[2]), unhex(f[3]))
        })
        .collect()
}

#[test]
#[ignore = "needs root"]
fn a_tree_deeper_than_path_max_is_captured_and_layered() {
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir(&u).unwrap();
    let half = DEEP_LEVELS / 2;
    let bottom = deep_chain(&u, DEEP_LEVELS, DEEP_NAME, |level, dir| {
        if level == half {
            write_at(dir, c"mid", b"halfway");
            mkdirat(dir, c"gone", Mode::from_bits_truncate(0o755)).unwrap();
        }
    });
    let b = bottom.as_fd();
    write_at(b, c"f", b"at the bottom");
    nix::unistd::linkat(b, c"f", b, c"f2", nix::fcntl::AtFlags::empty()).unwrap();
    nix::unistd::symlinkat("f", b, c"l").unwrap();
    mknodat(b, c"p", SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0).unwrap();
    xattr::set(&XRef::Fd(b), c"user.deep", b"yes").unwrap();
    // A chain is one rel per level: 1500 paths averaging 8 KB.
    let chain_rel = |levels: usize| vec![DEEP_NAME.to_bytes(); levels].join(&b'/');

    let _limit = OpenFilesLimit::at_most(1024);
    let dest = t.path().join("cap");
    let mut c = Capture::new(&u, &dest).unwrap();
    c.precopy(&mut |_| {}).unwrap();
    assert_deep_trees_equal(&u, &dest);

    // Changes the frozen sync applies at depth: a rewrite (followed by the
    // other name), a removal halfway, new entries below the bottom, a
    // symlink turned into a directory.
    write_at(b, c"f", b"rewritten at the bottom");
    let top = crate::sys::fs::open_dir(&u).unwrap();
    let mut cur = crate::sys::fs::DirCursor::new();
    let mid = cur.open(top.as_fd(), &chain_rel(half)).unwrap();
    assert!(crate::sys::fs::remove_all_at(mid, c"gone").unwrap());
    mkdirat(b, c"new", Mode::from_bits_truncate(0o711)).unwrap();
    let new = nix::fcntl::openat(b, c"new", nix::fcntl::OFlag::O_RDONLY, Mode::empty()).unwrap();
    write_at(new.as_fd(), c"g", b"new below the bottom");
    nix::unistd::unlinkat(b, c"l", nix::unistd::UnlinkatFlags::NoRemoveDir).unwrap();
    mkdirat(b, c"l", Mode::from_bits_truncate(0o700)).unwrap();
    let s = c.sync_frozen().unwrap();
    assert!(s.removed >= 1 && s.files >= 3, "{s:?}");
    assert_eq!(s.entries, (DEEP_LEVELS + 7) as u64, "{s:?}");
    assert_deep_trees_equal(&u, &dest);

    let out = t.path().join("layer.tar");
    let blob = crate::layer::build_layer(
        &dest,
        &out,
        &crate::layer::BuildOptions::new(crate::types::Compression::None),
        &crate::layer::XattrPolicy::default(),
        None,
        &mut |_| {},
    )
    .unwrap();
    let list = py_tar_list(&out);
    assert_eq!(list.len() as u64, blob.entries);
    let mut deep = chain_rel(DEEP_LEVELS);
    let dirs = list
        .iter()
        .filter(|(n, ty, _, _)| ty == "5" && n.ends_with(DEEP_NAME.to_bytes()))
        .count();
    assert_eq!(dirs, DEEP_LEVELS);
    let find = |name: &[u8]| {
        list.iter()
            .find(|(n, ..)| n == name)
            .unwrap_or_else(|| panic!("no entry of {} bytes in the layer", name.len()))
    };
    deep.extend_from_slice(b"/f");
    let (_, ty, _, data) = find(&deep);
    assert_eq!(
        (ty.as_str(), data.as_slice()),
        ("0", &b"rewritten at the bottom"[..])
    );
    let f2 = [&deep[..deep.len() - 1], b"f2"].concat();
    let (_, ty, link, _) = find(&f2);
    assert_eq!((ty.as_str(), link), ("1", &deep));
    let g = [&deep[..deep.len() - 1], b"new/g"].concat();
    assert_eq!(find(&g).3, b"new below the bottom");
    let mid = [chain_rel(half).as_slice(), b"/mid"].concat();
    assert_eq!(find(&mid).3, b"halfway");
    let gone = [chain_rel(half).as_slice(), b"/gone"].concat();
    assert!(list.iter().all(|(n, ..)| !n.starts_with(&gone)));
}

#[test]
#[ignore = "needs root"]
fn a_tree_deeper_than_the_limit_is_refused_with_its_path() {
    use crate::sys::fs::MAX_TREE_DEPTH;
    let t = tempfile::tempdir().unwrap();
    let u = t.path().join("upper");
    std::fs::create_dir(&u).unwrap();
    deep_chain(&u, MAX_TREE_DEPTH, c"d", |_, _| {});
    let mut c = Capture::new(&u, &t.path().join("cap")).unwrap();
    c.precopy(&mut |_| {}).unwrap();
    let out = t.path().join("layer.tar");
    crate::layer::build_layer(
        &t.path().join("cap"),
        &out,
        &crate::layer::BuildOptions::new(crate::types::Compression::None),
        &crate::layer::XattrPolicy::default(),
        None,
        &mut |_| {},
    )
    .unwrap();
    std::fs::remove_file(&out).unwrap();

    // One level more.
    let u = t.path().join("upper2");
    std::fs::create_dir(&u).unwrap();
    deep_chain(&u, MAX_TREE_DEPTH + 1, c"d", |_, _| {});
    let mut c = Capture::new(&u, &t.path().join("cap2")).unwrap();
    let e = c.precopy(&mut |_| {}).unwrap_err();
    assert_eq!(e.kind(), crate::error::ErrorKind::Unsupported, "{e}");
    let deepest = format!(
        "{}/{}",
        u.display(),
        vec!["d"; MAX_TREE_DEPTH + 1].join("/")
    );
    assert!(e.to_string().contains(&deepest), "{e}");
    let e = c.sync_frozen().unwrap_err();
    assert_eq!(e.kind(), crate::error::ErrorKind::Unsupported, "{e}");
    // The layer walk refuses it too (a copy made by hand).
    let e = crate::layer::build_layer(
        &u,
        &out,
        &crate::layer::BuildOptions::new(crate::types::Compression::None),
        &crate::layer::XattrPolicy::default(),
        None,
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(e.kind(), crate::error::ErrorKind::Unsupported, "{e}");
    assert!(!out.exists());
}
