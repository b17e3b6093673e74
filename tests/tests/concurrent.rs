//! The proof suite's concurrent commits (issue 8): eight containers, each
//! with its own tree (files of different sizes and modes, xattrs, symlinks,
//! hard links, a fifo, deleted and replaced base files) and a running
//! writer, committed at the same time — four by CLI processes, four by
//! threads sharing one library instance — each to its own reference. Each
//! pulled image is exactly its container: the static part entry for entry,
//! the writer's files a prefix of what it wrote, nothing of another
//! container.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use seamless_snapshot::{ContainerdSnapshotter, SeamlessSnapshot};
use seamless_snapshot_tests::{
    CompareOptions, Rig, cli_path, compare_trees, set_xattr, wait_until,
};

const CONTAINERS: usize = 8;
/// Every commit, capture to pushed image, completes within this.
const BOUND: Duration = Duration::from_secs(120);

/// Container `i`'s script: its own tree, then a writer that makes
/// `/data/c/1`, `/data/c/2`, ... (each holding `i:n`) by rename, so that a
/// file `n` exists only once all before it do.
fn script(i: usize) -> String {
    let base_change = match i % 3 {
        0 => "rm /base/file-to-delete".to_string(),
        1 => "rm -rf /base/dir-to-delete".to_string(),
        _ => format!(
            "rm -rf /base/dir-to-replace; mkdir /base/dir-to-replace; echo new-{i} > /base/dir-to-replace/n{i}"
        ),
    };
    format!(
        r#"set -e
O=/data/own-{i}
mkdir -p $O/sub /data/c
j=0; while [ $j -lt {files} ]; do head -c $(({i}*1000+j*777+1)) /dev/urandom > $O/f$j; j=$((j+1)); done
echo owner=container-{i} > $O/marker
ln $O/marker $O/sub/marker-link
ln -s ../own-{i}/marker $O/sym
ln -s /base/keep/file $O/abs-sym
mkfifo $O/fifo
chmod 640 $O/f0
chmod 4755 $O/f1
touch -d '2001-02-0{day} 04:05:06' $O/f2
{base_change}
echo modified-by-{i} >> /base/file-to-modify
echo ready > /data/ready
n=0
while [ ! -e /data/c/stop ]; do n=$((n+1)); echo {i}:$n > /data/c/.tmp; mv /data/c/.tmp /data/c/$n; usleep 20000; done
echo $n > /data/c/stopped
sleep 100000
"#,
        files = 3 + i,
        day = i + 1,
    )
}

/// Checks the writer's files in `image` (of container `i`): `1..=k` for
/// some `k >= 1`, each holding `i:n`, and perhaps the next one still under
/// its temporary name. Returns `k`.
fn check_counter(image: &Path, i: usize) -> u64 {
    let dir = image.join("data/c");
    let mut numbers = Vec::new();
    for de in fs::read_dir(&dir).unwrap() {
        let de = de.unwrap();
        let name = de.file_name().into_string().unwrap();
        let content = fs::read_to_string(de.path()).unwrap();
        if name == "stop" || name == "stopped" {
            panic!("image {i}: the writer was told to stop before the commit");
        }
        if name == ".tmp" {
            // Being written, or written and not yet renamed.
            assert!(
                content.is_empty() || content.starts_with(&format!("{i}:")),
                "image {i}: /data/c/.tmp holds {content:?}"
            );
            continue;
        }
        let n: u64 = name
            .parse()
            .unwrap_or_else(|_| panic!("image {i}: unexpected /data/c/{name}"));
        assert_eq!(content, format!("{i}:{n}\n"), "image {i}: /data/c/{n}");
        numbers.push(n);
    }
    numbers.sort_unstable();
    let k = numbers.len() as u64;
    assert!(k >= 1, "image {i}: the writer's files are missing");
    assert!(
        numbers.iter().copied().eq(1..=k),
        "image {i}: the writer's files are not a prefix: {} files, last {:?}",
        k,
        numbers.last()
    );
    k
}

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn eight_containers_committed_concurrently_are_each_exact() {
    let t0 = Instant::now();
    let rig = Rig::new();
    cli_path();
    let ids: Vec<String> = (0..CONTAINERS).map(|i| format!("conc{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        rig.run_container(id, &script(i));
    }
    for (i, id) in ids.iter().enumerate() {
        let rootfs = rig.rootfs(id);
        wait_until(Duration::from_secs(60), || rootfs.join("data/c/3").exists())
            .unwrap_or_else(|_| panic!("container {id} did not set up and write"));
        // Busybox has no setfattr: through the container's merged view.
        let own = rootfs.join(format!("data/own-{i}"));
        set_xattr(
            &own.join("marker"),
            "user.owner",
            format!("container-{i}").as_bytes(),
        );
        set_xattr(&own, "user.dir", &[i as u8; 3]);
        set_xattr(&own.join("f0"), "user.size", i.to_string().as_bytes());
    }

    eprintln!("{CONTAINERS} containers set up in {:?}", t0.elapsed());

    // All eight at once: even ones by the CLI, odd ones by threads sharing
    // one library instance.
    let targets: Vec<String> = (0..CONTAINERS)
        .map(|i| rig.target(&format!("conc{i}"), "1"))
        .collect();
    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let started = Instant::now();
    let mut children = Vec::new();
    for i in (0..CONTAINERS).step_by(2) {
        let mut cmd = rig.cli();
        cmd.args(["commit", "--container", &ids[i], "--target", &targets[i]])
            .args(["--json", "--wait", "--timeout", "120s"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push((i, cmd.spawn().expect("spawn the CLI")));
    }
    std::thread::scope(|s| {
        let threads: Vec<_> = (1..CONTAINERS)
            .step_by(2)
            .map(|i| {
                let (snap, id, target) = (&snap, &ids[i], &targets[i]);
                (i, s.spawn(move || snap.commit_with_wait(id, target, BOUND)))
            })
            .collect();
        for (i, mut child) in children {
            let done = wait_until(BOUND, || child.try_wait().ok().flatten().is_some());
            if done.is_err() {
                let _ = child.kill();
            }
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "commit of conc{i}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for (i, t) in threads {
            match t.join().expect("commit thread") {
                Ok(r) => assert!(r.manifest_digest.is_some(), "conc{i}: {r:?}"),
                Err(e) => panic!("commit of conc{i}: {}", e.full_message()),
            }
        }
    });
    eprintln!("{CONTAINERS} concurrent commits in {:?}", started.elapsed());

    // The writers stop (after the commits), so that the containers hold
    // still while they are compared with their images.
    for id in &ids {
        fs::write(rig.rootfs(id).join("data/c/stop"), b"").unwrap();
    }
    for id in &ids {
        let stopped = rig.rootfs(id).join("data/c/stopped");
        wait_until(Duration::from_secs(30), || stopped.exists())
            .unwrap_or_else(|_| panic!("the writer of {id} did not stop"));
    }
    for (i, id) in ids.iter().enumerate() {
        let rootfs = rig.rootfs(id);
        let image = rig.pull_unpack(&targets[i]);
        // The static part: entry for entry, content, modes, times, xattrs,
        // links; another container's files would be extra entries.
        let diffs = compare_trees(
            &rootfs,
            &image,
            &CompareOptions {
                ignore: vec!["data/c".into()],
                ..CompareOptions::default()
            },
        );
        assert!(
            diffs.is_empty(),
            "image of {id} differs from the container:\n{}",
            diffs.join("\n")
        );
        let mut data: Vec<String> = fs::read_dir(image.join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        data.sort();
        assert_eq!(data, ["c", &format!("own-{i}"), "ready"], "image of {id}");
        let k = check_counter(&image, i);
        let now = fs::read_dir(rootfs.join("data/c")).unwrap().count() as u64;
        assert!(
            k <= now,
            "image of {id}: {k} writer files, the container has {now}"
        );
    }
    eprintln!("images checked at {:?}", t0.elapsed());
    for id in &ids {
        assert_eq!(rig.task_status(id).as_deref(), Some("RUNNING"), "{id}");
    }
}
