//! An XFS filesystem with reflink on a loop file, and a second rig (its own
//! containerd and registry) whose directory is on it: containerd's root, so
//! the container's upper dir, and the library's state dir, so its capture
//! dir, are on XFS, and the capture clones files (`FICLONE`).
//!
//! Made under the host rig's directory (`<rig>/xfs/`) and removed again when
//! dropped: the rig stopped (`tests/rig/stop.sh`), the filesystem unmounted
//! (the loop device goes with it), the image file deleted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use seamless_snapshot_tests::{RigEnv, check_cmd};

pub struct XfsRig {
    img: PathBuf,
    mnt: PathBuf,
    rig_dir: PathBuf,
    pub env: RigEnv,
}

fn rig_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rig").join(name)
}

fn is_mountpoint(p: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = p.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_ref()))
}

/// Whether `cmd` ran and succeeded; never panics (it runs from `Drop`,
/// possibly while unwinding).
fn quietly(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Stops a rig at `rig_dir` and unmounts `mnt`, whatever is left of them.
fn tear_down(rig_dir: &Path, mnt: &Path) {
    if rig_dir.exists() {
        quietly(Command::new(rig_script("stop.sh")).arg(rig_dir));
    }
    if is_mountpoint(mnt) && !quietly(Command::new("umount").arg(mnt)) {
        quietly(Command::new("umount").arg("-l").arg(mnt));
    }
}

impl XfsRig {
    pub fn start(host: &RigEnv, size_gib: u64) -> XfsRig {
        let base = host.dir.join("xfs");
        let img = base.join("xfs.img");
        let mnt = base.join("mnt");
        let rig_dir = mnt.join("rig");
        // A run that was killed may have left its rig up.
        tear_down(&rig_dir, &mnt);
        fs::create_dir_all(&mnt).expect("create the XFS mount point");
        let _ = fs::remove_file(&img);
        fs::File::create(&img)
            .and_then(|f| f.set_len(size_gib << 30))
            .expect("create the sparse XFS image");
        check_cmd(
            Command::new("mkfs.xfs")
                .args(["-q", "-f", "-m", "reflink=1"])
                .arg(&img),
        );
        check_cmd(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt),
        );
        eprintln!("xfs: {} mounted at {}", img.display(), mnt.display());
        let mut guard = XfsRig {
            img,
            mnt,
            rig_dir: rig_dir.clone(),
            env: host.clone(),
        };
        check_cmd(Command::new(rig_script("start.sh")).arg(&rig_dir));
        guard.env = RigEnv::from_env_file(&rig_dir.join("env")).unwrap_or_else(|e| panic!("{e}"));
        guard
    }
}

impl Drop for XfsRig {
    fn drop(&mut self) {
        tear_down(&self.rig_dir, &self.mnt);
        let _ = fs::remove_file(&self.img);
        eprintln!(
            "xfs: rig stopped, {} unmounted and removed",
            self.mnt.display()
        );
    }
}
