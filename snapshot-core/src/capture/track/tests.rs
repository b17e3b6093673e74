use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;

use super::events::{ATTRIB, CREATE, DELETE, MODIFY, MOVED_FROM, MOVED_TO, build};
use super::*;

/// A recording fake of the kernel: queued reads, a handle -> path table,
/// and the handles it was asked to resolve.
#[derive(Clone, Default)]
struct Fake {
    reads: Arc<Mutex<VecDeque<Vec<u8>>>>,
    paths: Arc<Mutex<HashMap<Vec<u8>, Resolved>>>,
    resolved: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Source for Fake {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.reads.lock().unwrap().pop_front() {
            Some(b) => {
                buf[..b.len()].copy_from_slice(&b);
                Ok(b.len())
            }
            None => Ok(0),
        }
    }
    fn resolve(&mut self, h: Handle<'_>) -> Resolved {
        self.resolved.lock().unwrap().push(h.bytes.to_vec());
        self.paths
            .lock()
            .unwrap()
            .get(h.bytes)
            .cloned()
            .unwrap_or(Resolved::Failed(Errno::EIO))
    }
    fn marked(&mut self) -> bool {
        true
    }
    fn inode(&mut self, h: Handle<'_>) -> nix::Result<Option<(u64, u64)>> {
        Ok(h.bytes.first().map(|b| (1, *b as u64)))
    }
}

impl Fake {
    fn dir(&self, h: &[u8], path: &str) {
        self.paths
            .lock()
            .unwrap()
            .insert(h.to_vec(), Resolved::Path(path.as_bytes().to_vec()));
    }
    fn busy(&self, h: &[u8]) {
        self.paths
            .lock()
            .unwrap()
            .insert(h.to_vec(), Resolved::Failed(Errno::ENOMEM));
    }
    fn gone(&self, h: &[u8]) {
        self.paths
            .lock()
            .unwrap()
            .insert(h.to_vec(), Resolved::Gone);
    }
    fn queue(&self, evs: &[(u64, &[u8], &str)]) {
        let mut b = Vec::new();
        for (mask, h, name) in evs {
            b.extend(build::event(*mask, Some((1, h)), name.as_bytes()));
        }
        self.reads.lock().unwrap().push_back(b);
    }
    fn resolves(&self) -> usize {
        self.resolved.lock().unwrap().len()
    }
}

fn tracker() -> (Tracker, Fake) {
    let f = Fake::default();
    f.dir(b"UPPR", "/snap/9/fs");
    f.dir(b"SNAP", "/snap/9");
    f.dir(b"WORK", "/snap/9/work");
    f.dir(b"SUBD", "/snap/9/fs/a/b");
    f.dir(b"HOST", "/var/log");
    f.dir(b"LIKE", "/snap/9/fs2");
    let t = Tracker::with_source(&PathBuf::from("/snap/9/fs"), Box::new(f.clone()));
    (t, f)
}

fn paths(d: &Dirty) -> Vec<(String, bool)> {
    d.paths
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), *v))
        .collect()
}

#[test]
fn events_in_the_tree_are_kept_others_dropped() {
    let (mut t, f) = tracker();
    f.queue(&[
        (MODIFY, b"HOST", "syslog"),
        (MODIFY, b"LIKE", "x"),
        (CREATE, b"WORK", "#12"),
        (MODIFY, b"SUBD", "f"),
        (ATTRIB | ONDIR, b"SUBD", "."),
        (MOVED_FROM, b"WORK", "#12"),
        (MOVED_TO, b"UPPR", "copied"),
        (CREATE | ONDIR, b"SUBD", "new"),
        (ATTRIB | ONDIR, b"UPPR", "."),
    ]);
    t.drain();
    assert_eq!(t.read, 9);
    assert_eq!(
        paths(&t.take().unwrap()),
        [
            ("", false),
            ("a/b", false),
            ("a/b/f", false),
            ("a/b/new", true),
            ("copied", false),
        ]
        .map(|(p, s)| (p.to_string(), s))
    );
    assert!(t.take().unwrap().is_empty(), "taken means emptied");
}

#[test]
fn the_upper_dir_itself_from_its_parent() {
    let (mut t, f) = tracker();
    f.queue(&[(ATTRIB | ONDIR, b"SNAP", "fs"), (MODIFY, b"SNAP", "other")]);
    t.drain();
    assert_eq!(paths(&t.take().unwrap()), [(String::new(), false)]);
    f.queue(&[(MOVED_FROM | ONDIR, b"SNAP", "fs")]);
    t.drain();
    assert!(t.take().unwrap_err().contains("upper dir itself"));
}

#[test]
fn handles_are_cached_until_a_directory_moves_in_the_tree() {
    let (mut t, f) = tracker();
    f.queue(&[
        (MODIFY, b"SUBD", "f"),
        (MODIFY, b"SUBD", "g"),
        (MODIFY, b"HOST", "x"),
        (MODIFY, b"HOST", "y"),
    ]);
    t.drain();
    assert_eq!(f.resolves(), 2);
    // A directory renamed outside the tree leaves the cache alone.
    f.queue(&[(MOVED_FROM | ONDIR, b"HOST", "d"), (MODIFY, b"SUBD", "f")]);
    t.drain();
    assert_eq!(f.resolves(), 2);
    // One renamed inside clears it: a/b may now be elsewhere.
    f.queue(&[
        (MOVED_FROM | ONDIR, b"UPPR", "a"),
        (MOVED_TO | ONDIR, b"UPPR", "z"),
    ]);
    f.dir(b"SUBD", "/snap/9/fs/z/b");
    f.queue(&[(MODIFY, b"SUBD", "f")]);
    t.drain();
    let d = paths(&t.take().unwrap());
    assert!(d.contains(&("z".into(), true)), "{d:?}");
    assert!(d.contains(&("a".into(), false)), "{d:?}");
    assert!(d.contains(&("z/b/f".into(), false)), "{d:?}");
}

#[test]
fn removed_directories_are_ignored_their_removal_is_not() {
    let (mut t, f) = tracker();
    f.gone(b"GONE");
    f.queue(&[(DELETE, b"GONE", "f"), (DELETE | ONDIR, b"UPPR", "gone")]);
    t.drain();
    assert_eq!(
        paths(&t.take().unwrap()),
        [("", false), ("gone", false)].map(|(p, s)| (p.to_string(), s))
    );
}

#[test]
fn a_busy_directory_is_looked_at_again() {
    let (mut t, f) = tracker();
    f.busy(b"BUSY");
    f.queue(&[(MODIFY, b"BUSY", "f")]);
    t.drain();
    assert_eq!(t.len(), 1, "deferred");
    f.dir(b"BUSY", "/snap/9/fs/now");
    t.drain();
    assert_eq!(paths(&t.take().unwrap()), [("now/f".to_string(), false)]);
    // Still busy when the set is taken: no guess.
    f.busy(b"BUS2");
    f.queue(&[(MODIFY, b"BUS2", "f")]);
    t.drain();
    assert!(t.take().unwrap_err().contains("ENOMEM"));
}

#[test]
fn anything_unknown_makes_it_untrustworthy() {
    // An overflow.
    let (mut t, f) = tracker();
    let mut b = build::event(MODIFY, Some((1, b"SUBD")), b"f");
    b.extend(build::event(events::Q_OVERFLOW, None, b""));
    f.reads.lock().unwrap().push_back(b);
    t.drain();
    assert!(t.take().unwrap_err().contains("overflow"));
    // Once untrustworthy, always.
    let mut d = Dirty::default();
    d.mark(b"x".to_vec(), false);
    t.put_back(d);
    assert!(t.take().is_err());
    // A handle that cannot be resolved.
    let (mut t, f) = tracker();
    f.queue(&[(MODIFY, b"????", "f")]);
    t.drain();
    assert!(t.take().unwrap_err().contains("resolve"));
    // An event without a directory.
    let (mut t, f) = tracker();
    f.reads
        .lock()
        .unwrap()
        .push_back(build::event(MODIFY, None, b""));
    t.drain();
    assert!(t.take().is_err());
    // (An event on an inode alone is not one of those: a link count
    // changed on a live inode names it; a removed one, nothing.)
    let (mut t, f) = tracker();
    let mut b = build::event_obj(ATTRIB, None, b"", Some((1, b"INOD")));
    b.extend(build::event_obj(
        ATTRIB | events::DELETE_SELF,
        None,
        b"",
        Some((1, b"GONE")),
    ));
    f.reads.lock().unwrap().push_back(b);
    t.drain();
    let d = t.take().unwrap();
    assert!(d.paths.is_empty());
    assert_eq!(d.inodes, HashSet::from([(1, b'I' as u64)]));
    // A garbled buffer.
    let (mut t, f) = tracker();
    f.reads.lock().unwrap().push_back(vec![1, 2, 3]);
    t.drain();
    assert!(t.take().unwrap_err().contains("malformed"));
}

#[test]
fn inodes_that_get_a_name_are_reported_live() {
    let (mut t, f) = tracker();
    let mut b = build::event_obj(CREATE, Some((1, b"SUBD")), b"link", Some((1, b"\x07ino")));
    // Directories arriving are walked, not looked up by inode.
    b.extend(build::event_obj(
        CREATE | ONDIR,
        Some((1, b"SUBD")),
        b"dir",
        Some((1, b"\x08ino")),
    ));
    // Outside the tree: nothing. Written: kept too.
    b.extend(build::event_obj(
        MODIFY,
        Some((1, b"SUBD")),
        b"w",
        Some((1, b"\x0aino")),
    ));
    b.extend(build::event_obj(
        CREATE,
        Some((1, b"HOST")),
        b"x",
        Some((1, b"\x09ino")),
    ));
    f.reads.lock().unwrap().push_back(b);
    t.drain();
    let d = t.take().unwrap();
    assert_eq!(d.inodes, HashSet::from([(1, 7), (1, 10)]));
}

#[test]
fn a_tracker_that_cannot_start_says_why() {
    let t = Tracker::start(Path::new("/nonexistent/upper"));
    assert!(t.untrusted().is_some());
}

// ------------------------------------------------- against the kernel

fn run(cmd: &str) {
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .unwrap();
    assert!(st.success(), "{cmd}");
}

/// Sorted dirty paths after `ops` ran in the shell inside `dir`.
fn kernel_dirty(t: &mut Tracker, dir: &Path, ops: &str) -> Vec<(String, bool)> {
    run(&format!("cd {} && {ops}", dir.display()));
    t.drain();
    paths(&t.take().unwrap())
}

#[test]
#[ignore = "needs root"]
fn kernel_reports_changes_in_the_tree_only() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let upper = tmp.path().join("upper");
    let other = tmp.path().join("other");
    std::fs::create_dir_all(upper.join("d/e")).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(upper.join("d/e/f"), b"x").unwrap();
    let mut t = Tracker::start(&upper);
    assert_eq!(t.untrusted(), None);
    run(&format!("echo y >> {}/noise", other.display()));
    let d = kernel_dirty(&mut t, &upper, "echo more >> d/e/f");
    assert_eq!(d, [("d/e/f".to_string(), false)]);
    let d = kernel_dirty(
        &mut t,
        &upper,
        "chmod 700 d && mkdir d/n && mv d/e d/n/e2 && rm d/n/e2/f && touch d/n/e2/g",
    );
    for want in [
        ("d", false),
        ("d/n", true),
        ("d/e", false),
        ("d/n/e2", true),
        ("d/n/e2/f", false),
    ] {
        assert!(
            d.contains(&(want.0.to_string(), want.1)),
            "{want:?} in {d:?}"
        );
    }
    let d = kernel_dirty(&mut t, &upper, "chmod 711 .");
    assert_eq!(d, [(String::new(), false)]);
    // A hardlink made and removed again: the inode it named is reported.
    run(&format!(
        "cd {} && ln d/n/e2/g h && echo w >> h && rm h",
        upper.display()
    ));
    t.drain();
    let d = t.take().unwrap();
    let g = std::fs::symlink_metadata(upper.join("d/n/e2/g")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(d.inodes.contains(&(g.dev(), g.ino())), "{:?}", d.inodes);
    // A rename over one name of a hardlinked file: the events name the
    // inode moved in; the one replaced lost a link (its other name's
    // ctime and link count changed) and is reported too.
    run(&format!(
        "cd {} && echo a > k1 && ln k1 k2 && echo b > x",
        upper.display()
    ));
    t.drain();
    t.take().unwrap();
    run(&format!("cd {} && mv x k2", upper.display()));
    t.drain();
    let d = t.take().unwrap();
    let k1 = std::fs::symlink_metadata(upper.join("k1")).unwrap();
    assert!(d.inodes.contains(&(k1.dev(), k1.ino())), "{:?}", d.inodes);
    t.check_mark();
    assert_eq!(t.untrusted(), None);
    assert!(t.read >= t.kept);
}

#[test]
#[ignore = "needs root (mounts an overlay)"]
fn kernel_reports_overlay_copy_up_and_whiteouts() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let b = tmp.path();
    for d in ["lower/dir", "upper", "work", "merged"] {
        std::fs::create_dir_all(b.join(d)).unwrap();
    }
    std::fs::write(b.join("lower/dir/base"), b"base").unwrap();
    std::fs::write(b.join("lower/gone"), b"gone").unwrap();
    run(&format!(
        "mount -t overlay overlay -o lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work {0}/merged",
        b.display()
    ));
    let mut t = Tracker::start(&b.join("upper"));
    let d = kernel_dirty(&mut t, &b.join("merged"), "echo x >> dir/base && rm gone");
    run(&format!("umount {}/merged", b.display()));
    for want in ["dir", "dir/base", "gone"] {
        assert!(d.iter().any(|(p, _)| p == want), "{want} in {d:?}");
    }
}

/// The tracker on each filesystem an upper dir may live on: it either
/// reports a change made in the tree, or says it cannot be trusted (and the
/// window compares everything) — never silence.
#[test]
#[ignore = "needs root (mounts tmpfs, xfs and btrfs filesystems)"]
fn every_filesystem_either_reports_or_is_untrustworthy() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let b = tmp.path();
    let mut seen = Vec::new();
    for (fs, mk) in [
        ("tmpfs", None),
        ("xfs", Some("mkfs.xfs -q -f")),
        ("btrfs", Some("mkfs.btrfs -q -f")),
        ("ext4", Some("mkfs.ext4 -q -F")),
    ] {
        let mnt = b.join(fs);
        std::fs::create_dir_all(&mnt).unwrap();
        match mk {
            None => run(&format!("mount -t tmpfs tmpfs {}", mnt.display())),
            Some(mk) => {
                let img = b.join(format!("{fs}.img"));
                let f = std::fs::File::create(&img).unwrap();
                f.set_len(320 << 20).unwrap();
                let made = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("{mk} {} >/dev/null 2>&1", img.display()))
                    .status()
                    .unwrap();
                if !made.success() {
                    eprintln!("{fs}: no mkfs here, skipped");
                    continue;
                }
                run(&format!(
                    "mount -o loop {} {}",
                    img.display(),
                    mnt.display()
                ));
            }
        }
        let upper = mnt.join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        let mut t = Tracker::start(&upper);
        std::fs::write(upper.join("f"), b"x").unwrap();
        t.drain();
        let got = t.take();
        // Its fds hold the filesystem.
        drop(t);
        run(&format!("umount {}", mnt.display()));
        match got {
            Ok(d) => {
                assert!(d.paths.contains_key(b"f".as_slice()), "{fs}: {d:?}");
                seen.push(format!("{fs}: tracked"));
            }
            Err(why) => seen.push(format!("{fs}: untrustworthy ({why})")),
        }
    }
    eprintln!("{}", seen.join("\n"));
}
