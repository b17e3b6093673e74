use super::*;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use nix::sys::stat::{SFlag, UtimensatFlags, mknodat, utimensat};
use nix::sys::time::TimeSpec;

use crate::sys::xattr::{self, XRef};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

mod fs_quirks;

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
        if fmt != libc::S_IFDIR {
            inos.entry(md.ino()).or_default().push(rel.to_vec());
            return;
        }
        for e in std::fs::read_dir(&p).unwrap() {
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
