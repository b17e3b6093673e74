//! The layer built on several cores (parallel gzip blocks), pushed to the
//! rig's registry and read back by independent tools: skopeo + umoci give
//! back the files, `gzip` accepts the blob and its tar hashes to the diff id.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use seamless_snapshot::{CommitOptions, Compression, ContainerdSnapshotter};
use seamless_snapshot_tests::{Rig, check_cmd, noise};

const PUSH_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
#[ignore = "needs root and the test rig (tests/run.sh)"]
fn multi_threaded_gzip_layer_pushed_and_pulled_back() {
    let rig = Rig::new();
    rig.run_container("mtgz", "sleep 100000");
    let data = rig.rootfs("mtgz").join("data");
    fs::create_dir_all(data.join("small")).unwrap();
    fs::write(data.join("noise.bin"), noise(3_000_000, 11)).unwrap();
    let text: String = (0..60_000)
        .map(|i| format!("line {i} of some text\n"))
        .collect();
    fs::write(data.join("text.txt"), &text).unwrap();
    for i in 0..300 {
        fs::write(data.join(format!("small/{i}")), format!("{i}\n").repeat(i)).unwrap();
    }
    let sparse = File::create(data.join("sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    sparse.write_all_at(b"start", 0).unwrap();
    sparse.write_all_at(&noise(100_000, 5), 30 << 20).unwrap();
    sparse.write_all_at(b"end", (64 << 20) - 3).unwrap();
    drop(sparse);

    let snap = ContainerdSnapshotter::new(rig.config()).unwrap();
    let target = rig.target("mtgz", "1");
    let opts = CommitOptions {
        compression: Compression::Gzip,
        compression_level: Some(6),
        compression_threads: Some(3),
        ..CommitOptions::default()
    };
    let r = snap
        .commit_with("mtgz", &target, &opts, Some(PUSH_TIMEOUT))
        .unwrap();
    let layer = r.layer.expect("layer info");
    assert_eq!(layer.media_type, Compression::Gzip.media_type());

    let rootfs = rig.pull_unpack(&target);
    for rel in [
        "noise.bin",
        "text.txt",
        "sparse.img",
        "small/0",
        "small/299",
    ] {
        let want = fs::read(data.join(rel)).unwrap();
        let got = fs::read(rootfs.join("data").join(rel)).unwrap();
        assert!(want == got, "data/{rel} differs after the round trip");
    }
    assert_eq!(
        fs::read_dir(rootfs.join("data/small")).unwrap().count(),
        300
    );

    // The blob as the registry serves it: one valid gzip stream whose tar
    // is the diff id, which the image config lists last.
    let layout = rootfs.parent().unwrap().parent().unwrap().join("oci");
    let hex = layer.digest.strip_prefix("sha256:").unwrap();
    let blob = layout.join("blobs/sha256").join(hex);
    check_cmd(Command::new("gzip").arg("-t").arg(&blob));
    let sum = check_cmd(
        Command::new("sh")
            .arg("-c")
            .arg("gzip -dc \"$1\" | sha256sum")
            .arg("sh")
            .arg(&blob),
    );
    assert_eq!(
        format!("sha256:{}", sum.split_whitespace().next().unwrap()),
        layer.diff_id
    );
    let manifest = rig.inspect_raw(&target);
    let config_hex = manifest["config"]["digest"].as_str().unwrap();
    let config: serde_json::Value = serde_json::from_slice(
        &fs::read(
            layout
                .join("blobs/sha256")
                .join(config_hex.strip_prefix("sha256:").unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.last().unwrap(), layer.diff_id.as_str());
}
