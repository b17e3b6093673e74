//! Multi-threaded compression and sparse files, read back by independent
//! tools: the system's `gzip`, `zstd` and GNU `tar`, Python's and Go's gzip
//! readers.

use super::*;
use std::io::Write;
use std::process::Stdio;

use crate::error::ErrorKind;

/// Pseudo-random bytes (incompressible) from `seed`.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

fn text(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 64);
    let mut i = 0u64;
    while v.len() < n {
        v.extend_from_slice(
            format!("line {i}: the quick brown fox jumps over the lazy dog\n").as_bytes(),
        );
        i += 1;
    }
    v.truncate(n);
    v
}

/// A tree of several chunks' worth of mixed data, small files, a symlink
/// and a sparse file.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("small")).unwrap();
    fs::write(root.join("noise.bin"), noise(1_500_000, 7)).unwrap();
    fs::write(root.join("text.txt"), text(2_000_001)).unwrap();
    for i in 0..200 {
        fs::write(
            root.join(format!("small/f{i:03}")),
            format!("file {i}\n").repeat(i),
        )
        .unwrap();
    }
    symlink("text.txt", root.join("link")).unwrap();
    make_sparse(&root.join("sparse.img"), 8 << 20);
}

/// A sparse file of `size` bytes with data at its start, in its middle and
/// at its end; returns its contents.
fn make_sparse(path: &Path, size: u64) -> Vec<u8> {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut full = vec![0u8; size as usize];
    for (at, data) in [
        (0, b"head".to_vec()),
        (size / 2 + 12_345, noise(70_000, 3)),
        (size - 5, b"tail!".to_vec()),
    ] {
        std::os::unix::fs::FileExt::write_all_at(&f, &data, at).unwrap();
        full[at as usize..at as usize + data.len()].copy_from_slice(&data);
    }
    f.sync_all().unwrap();
    assert!(
        fs::metadata(path).unwrap().blocks() * 512 < size / 2,
        "the filesystem under {} does not keep holes",
        path.display()
    );
    full
}

fn opts(c: Compression, level: Option<i32>, threads: u32) -> BuildOptions {
    BuildOptions {
        level,
        threads,
        ..BuildOptions::new(c)
    }
}

fn build_with(root: &Path, out: &Path, o: &BuildOptions) -> Result<LayerBlob> {
    build_layer(root, out, o, &XattrPolicy::default(), None, &mut |_| {})
}

/// Runs `cmd` with `input` on stdin (if any) and returns its stdout.
fn run(cmd: &mut Command, input: Option<&[u8]>) -> Vec<u8> {
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let writer = input.map(|i| {
        let mut stdin = child.stdin.take().unwrap();
        let i = i.to_vec();
        std::thread::spawn(move || stdin.write_all(&i).unwrap())
    });
    let out = child.wait_with_output().unwrap();
    if let Some(w) = writer {
        w.join().unwrap();
    }
    assert!(out.status.success(), "{cmd:?} failed: {:?}", out.status);
    out.stdout
}

const GO_GUNZIP: &str = r#"package main

import (
	"compress/gzip"
	"io"
	"os"
)

func main() {
	r, err := gzip.NewReader(os.Stdin)
	if err != nil {
		panic(err)
	}
	r.Multistream(false)
	if _, err := io.Copy(os.Stdout, r); err != nil {
		panic(err)
	}
	if err := r.Close(); err != nil {
		panic(err)
	}
}
"#;

const PY_GUNZIP: &str =
    "import gzip, sys\nsys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))";

/// Unpacks `blob` with GNU tar into the new directory `dest`.
fn untar(blob: &LayerBlob, dest: &Path) -> PathBuf {
    fs::create_dir(dest).unwrap();
    let mut cmd = Command::new("tar");
    run(cmd.arg("-xf").arg(&blob.path).arg("-C").arg(dest), None);
    dest.to_path_buf()
}

/// Compares the regular files, symlinks and directories of two trees.
fn same_tree(a: &Path, b: &Path) {
    let mut names: Vec<_> = fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let mut other: Vec<_> = fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    other.sort();
    assert_eq!(names, other, "{} vs {}", a.display(), b.display());
    for n in names {
        let (x, y) = (a.join(&n), b.join(&n));
        let mx = fs::symlink_metadata(&x).unwrap();
        if mx.is_dir() {
            same_tree(&x, &y);
        } else if mx.file_type().is_symlink() {
            assert_eq!(fs::read_link(&x).unwrap(), fs::read_link(&y).unwrap());
        } else {
            assert!(
                fs::read(&x).unwrap() == fs::read(&y).unwrap(),
                "{} differs",
                y.display()
            );
            assert_eq!(
                mx.permissions().mode(),
                fs::metadata(&y).unwrap().permissions().mode()
            );
        }
    }
}

#[test]
fn multi_threaded_layers_read_back_by_system_tools() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("capture");
    make_tree(&root);
    let go = tmp.path().join("gunzip.go");
    fs::write(&go, GO_GUNZIP).unwrap();
    for (c, level) in [
        (Compression::Gzip, None),
        (Compression::Gzip, Some(1)),
        (Compression::Zstd, None),
        (Compression::Zstd, Some(9)),
    ] {
        let mut blobs = Vec::new();
        for threads in [1, 3] {
            let out = tmp.path().join(format!("{c}-{level:?}-{threads}"));
            blobs.push(build_with(&root, &out, &opts(c, level, threads)).unwrap());
        }
        // The thread count never changes a byte.
        assert_eq!(blobs[0].digest, blobs[1].digest, "{c} {level:?}");
        let blob = &blobs[1];
        let raw = fs::read(&blob.path).unwrap();
        assert_eq!(blob.digest, sha(&raw));
        assert_eq!(blob.size, raw.len() as u64);
        let path = blob.path.to_str().unwrap();
        let tar = match c {
            Compression::Gzip => {
                run(Command::new("gzip").args(["-t", path]), None);
                let tar = run(Command::new("gzip").args(["-dc", path]), None);
                let py = run(Command::new("python3").args(["-c", PY_GUNZIP]), Some(&raw));
                assert!(py == tar, "python's gzip reads another stream");
                let go_out = run(Command::new("go").arg("run").arg(&go), Some(&raw));
                assert!(go_out == tar, "go's gzip reads another stream");
                tar
            }
            _ => run(Command::new("zstd").args(["-dcq", path]), None),
        };
        assert_eq!(blob.diff_id, sha(&tar));
        assert_eq!(blob.uncompressed_size, tar.len() as u64);
        let dest = untar(blob, &tmp.path().join(format!("x-{c}-{level:?}")));
        same_tree(&root, &dest);
        fs::remove_dir_all(&dest).unwrap();
    }
}

/// Bytes this thread has read through `read(2)` and friends.
fn thread_rchar() -> u64 {
    let io = fs::read_to_string("/proc/thread-self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn sparse_file_round_trips_without_reading_its_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("capture");
    fs::create_dir(&root).unwrap();
    let size = 256u64 << 20;
    let want = make_sparse(&root.join("disk.img"), size);
    let before = thread_rchar();
    // The walk (which reads the files) runs on this thread.
    let blob = build_with(
        &root,
        &tmp.path().join("l"),
        &opts(Compression::Zstd, Some(1), 2),
    )
    .unwrap();
    let read = thread_rchar() - before;
    assert!(
        read < 16 << 20,
        "{read} bytes read for a file of 76 KB of data"
    );
    let tar = decompress(&blob);
    assert_eq!(blob.diff_id, sha(&tar));
    let dest = untar(&blob, &tmp.path().join("x"));
    let got = fs::read(dest.join("disk.img")).unwrap();
    assert!(got == want, "the sparse file's contents changed");
}

#[test]
fn sparse_expansion_above_the_limit_is_a_typed_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("capture");
    fs::create_dir(&root).unwrap();
    let f = File::create(root.join("huge.img")).unwrap();
    // 1 TiB of holes: never expanded, refused at once.
    f.set_len(1 << 40).unwrap();
    drop(f);
    let out = tmp.path().join("l");
    let o = BuildOptions {
        max_sparse_expansion: 1 << 30,
        ..BuildOptions::new(Compression::Gzip)
    };
    let e = build_with(&root, &out, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&*root.join("huge.img").to_string_lossy()),
        "{msg}"
    );
    assert!(msg.contains("max_sparse_expansion"), "{msg}");
    assert!(!out.exists(), "a failed build left its blob");
    // Under the limit it builds.
    fs::write(root.join("huge.img"), b"").unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(root.join("huge.img"))
        .unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    let blob = build_with(&root, &out, &o).unwrap();
    check_digests(&blob);
}

#[test]
fn compression_level_out_of_range_is_invalid_argument() {
    let tmp = tempfile::tempdir().unwrap();
    for (c, level) in [
        (Compression::Gzip, 10),
        (Compression::Gzip, -1),
        (Compression::Zstd, 0),
        (Compression::Zstd, 23),
    ] {
        let out = tmp.path().join("l");
        let e = build_with(tmp.path(), &out, &opts(c, Some(level), 1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{c} {level}: {e}");
        assert!(!out.exists());
    }
}
