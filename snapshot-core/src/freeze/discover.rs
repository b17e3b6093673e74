//! Finding the freezer cgroup of a container's processes: from their
//! `/proc/<pid>/cgroup` lines and this process's mount table to a cgroup
//! directory, v2 or v1, and up to the nearest cgroup that holds them all,
//! but never above the container's own cgroup ([`super::scope`]).
//!
//! Invariants: a root cgroup (the whole host), a cgroup that holds this
//! process (freezing it would freeze the committer) and a cgroup above the
//! container's OCI `cgroupsPath` (it may hold other workloads) are never
//! chosen; a cgroup path with `..` (outside our cgroup namespace) resolves to
//! nothing.

use std::collections::HashSet;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::Freezer;
use super::scope::container_cgroup;
use super::v1::CgroupV1Freezer;
use super::v2::{CgroupV2Freezer, V2_FREEZE};
use crate::error::{Error, IoContext, Result};
use crate::procfs::cgroup::{parse_proc_cgroup, v1_freezer_path, v2_path};
use crate::procfs::mountinfo::{self, Mount};
use crate::procfs::stat::is_live;

/// Whether `path` is `/`, i.e. a hierarchy's root cgroup.
fn is_root_cgroup(path: &str) -> bool {
    Path::new(path)
        .components()
        .all(|c| c == Component::RootDir)
}

/// Whether cgroup `inner` is `outer` or one of its descendants.
fn cgroup_contains(outer: &str, inner: &str) -> bool {
    Path::new(inner).starts_with(Path::new(outer))
}

/// The directory of cgroup `path` under one of `mounts`, if one shows it.
fn resolve_under(mounts: &[&Mount], path: &str) -> Option<PathBuf> {
    let cgroup = Path::new(path);
    // A path with `..` is outside our cgroup namespace: not reachable.
    if cgroup.components().any(|c| c == Component::ParentDir) || !cgroup.is_absolute() {
        return None;
    }
    mounts.iter().find_map(|m| {
        let rel = cgroup.strip_prefix(&m.root).ok()?;
        Some(m.mount_point.join(rel))
    })
}

/// The freezer cgroup directories available for a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FreezerDirs {
    /// The process's cgroup v2 directory, when usable.
    pub(crate) v2: Option<PathBuf>,
    /// The process's v1 freezer cgroup directory, when usable.
    pub(crate) v1: Option<PathBuf>,
    /// The cgroup paths of `v2` and `v1`, as `/proc/<pid>/cgroup` shows them.
    pub(crate) v2_cgroup: Option<String>,
    /// See `v2_cgroup`.
    pub(crate) v1_cgroup: Option<String>,
    /// Why candidates were rejected (for error messages).
    pub(crate) rejected: Vec<String>,
}

/// Resolves the freezer cgroup directories of a process from its
/// `/proc/<pid>/cgroup` (`target`), the caller's own `/proc/self/cgroup`
/// (`own`) and the caller's `/proc/self/mountinfo`. Pure: takes file contents.
///
/// A candidate is rejected when it is a root cgroup (not freezable, and it
/// holds the whole host) or when it contains the caller itself (freezing it
/// would freeze the committer). On a hybrid host where the process is in both
/// a v2 cgroup and a v1 freezer cgroup with different paths, the v2 cgroup is
/// dropped: runtimes always place containers in the v1 freezer, while the v2
/// path may then be a shared service cgroup such as containerd's.
pub(crate) fn freezer_dirs(target: &str, own: &str, mountinfo: &[u8]) -> FreezerDirs {
    let lines = parse_proc_cgroup(target);
    let own_lines = parse_proc_cgroup(own);
    let mounts = mountinfo::cgroup_mounts(mountinfo);
    let mut dirs = FreezerDirs::default();

    let mut pick = |label: &str, path: Option<&str>, own: Option<&str>, v2: bool| {
        let path = path?;
        if is_root_cgroup(path) {
            dirs.rejected
                .push(format!("{label} cgroup {path:?} is the root cgroup"));
            return None;
        }
        if own.is_some_and(|own| cgroup_contains(path, own)) {
            dirs.rejected
                .push(format!("{label} cgroup {path:?} contains this process"));
            return None;
        }
        let candidates: Vec<&Mount> = mounts
            .iter()
            .filter(|m| m.cgroup_version_2() == Some(v2) && (v2 || m.has_super_option("freezer")))
            .collect();
        let dir = resolve_under(&candidates, path);
        if dir.is_none() {
            dirs.rejected.push(format!(
                "{label} cgroup {path:?} is not under a visible mount"
            ));
        }
        dir.map(|d| (path.to_owned(), d))
    };

    let v2 = pick("v2", v2_path(&lines), v2_path(&own_lines), true);
    let v1 = pick(
        "v1 freezer",
        v1_freezer_path(&lines),
        v1_freezer_path(&own_lines),
        false,
    );
    let v2 = match (v2, &v1) {
        (Some((p2, _)), Some((p1, _))) if p2 != *p1 => {
            dirs.rejected.push(format!(
                "v2 cgroup {p2:?} differs from the v1 freezer cgroup {p1:?}; using v1"
            ));
            None
        }
        (v2, _) => v2,
    };
    (dirs.v2_cgroup, dirs.v2) = v2.unzip();
    (dirs.v1_cgroup, dirs.v1) = v1.unzip();
    dirs
}

/// Finds the freezer cgroup of process `pid` on this host, from
/// `/proc/<pid>/cgroup` and `/proc/self/mountinfo` (see [`freezer_dirs`]).
/// Prefers cgroup v2 when its directory has `cgroup.freeze`, else the v1
/// freezer controller. [`Error::Unsupported`] when neither is usable.
#[cfg(test)]
pub(crate) fn freezer_for_pid(pid: u32) -> Result<Box<dyn Freezer>> {
    locate(pid).map(|(freezer, _)| freezer)
}

/// [`freezer_for_pid`], with the process's cgroup path in the chosen
/// freezer's hierarchy.
fn locate(pid: u32) -> Result<(Box<dyn Freezer>, String)> {
    let read = |path: &str| std::fs::read_to_string(path).at("read", path);
    let target = read(&format!("/proc/{pid}/cgroup"))?;
    let own = read("/proc/self/cgroup")?;
    let mountinfo = std::fs::read("/proc/self/mountinfo").at("read", "/proc/self/mountinfo")?;
    let mut dirs = freezer_dirs(&target, &own, &mountinfo);
    if let (Some(dir), Some(cgroup)) = (dirs.v2.take(), dirs.v2_cgroup.take()) {
        if dir.join(V2_FREEZE).exists() {
            let mut freezer = CgroupV2Freezer::new(dir)?;
            if let Some(v1) = &dirs.v1 {
                freezer = freezer.with_v1_sibling(v1);
            }
            return Ok((Box::new(freezer), cgroup));
        }
        dirs.rejected
            .push(format!("{} has no {V2_FREEZE}", dir.display()));
    }
    if let (Some(dir), Some(cgroup)) = (dirs.v1.take(), dirs.v1_cgroup.take()) {
        return Ok((Box::new(CgroupV1Freezer::new(dir)?), cgroup));
    }
    Err(Error::Unsupported(format!(
        "no usable cgroup freezer for pid {pid}: {}",
        if dirs.rejected.is_empty() {
            "neither a cgroup v2 nor a v1 freezer cgroup".to_owned()
        } else {
            dirs.rejected.join("; ")
        }
    )))
}

/// The freezer cgroup that holds every one of `pids` (the container's
/// processes): `init`'s own cgroup, or its nearest ancestor holding them all
/// when some processes live in sibling cgroups (systemd inside a container
/// moves itself to `<container>/init.scope`). Freezing is hierarchical, so the
/// whole container stops. Never above the container's own cgroup, given by
/// its OCI `cgroups_path` (see [`container_cgroup`]; without one, never above
/// init's cgroup), and never a cgroup that holds this process:
/// [`Error::Unsupported`] instead, with nothing frozen.
pub(crate) fn freezer_for_pids(
    init: u32,
    pids: &[u32],
    cgroups_path: Option<&str>,
) -> Result<Box<dyn Freezer>> {
    let (mut freezer, init_cgroup) = locate(init)?;
    let top = container_cgroup(cgroups_path, &init_cgroup).map_err(|why| {
        Error::Unsupported(format!(
            "refusing to freeze the cgroup of container process {init}: {why}"
        ))
    })?;
    // How far up the container's cgroup is: the only levels we may climb.
    let depth = |p: &str| Path::new(p).components().count();
    let mut climbs_left = depth(&init_cgroup).saturating_sub(depth(&top));
    let me = std::process::id();
    loop {
        let inside = pids_below(freezer.path())?;
        let missing: Vec<u32> = pids
            .iter()
            .copied()
            // A process that exited meanwhile (gone, or a zombie not yet
            // reaped: it has left its cgroup already) is no concern.
            .filter(|p| !inside.contains(p) && is_live(*p))
            .collect();
        if missing.is_empty() {
            return Ok(freezer);
        }
        let unsupported = |why: String| {
            Error::Unsupported(format!(
                "container processes {missing:?} are outside cgroup {}: {why}",
                freezer.path().display()
            ))
        };
        if climbs_left == 0 {
            return Err(unsupported(match cgroups_path.filter(|p| !p.is_empty()) {
                Some(raw) => format!(
                    "that is the container's own cgroup (OCI cgroupsPath {raw:?}); \
                     a cgroup above it may hold other workloads"
                ),
                None => "the container has no OCI cgroupsPath, so no cgroup above its \
                         init's may be frozen"
                    .to_owned(),
            }));
        }
        let Some(parent) = freezer.path().parent().map(Path::to_path_buf) else {
            return Err(unsupported("no parent cgroup".into()));
        };
        if pids_below(&parent)?.contains(&me) {
            return Err(unsupported(format!(
                "their common cgroup {} also holds this process",
                parent.display()
            )));
        }
        freezer = freezer
            .parent()
            .map_err(|e| unsupported(e.to_string()))?
            .ok_or_else(|| unsupported("no parent cgroup".into()))?;
        climbs_left -= 1;
    }
}

/// Every pid in the cgroup `dir` and its descendants.
pub(crate) fn pids_below(dir: &Path) -> Result<HashSet<u32>> {
    let mut out = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let procs = d.join("cgroup.procs");
        match std::fs::read_to_string(&procs) {
            Ok(text) => out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
            // Removed while we walk: its processes are gone or moved.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read", procs, e)),
        }
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read directory", d, e)),
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str = "\
12:freezer:/k8s/abc
11:cpu,cpuacct:/k8s/abc
1:name=systemd:/system.slice/containerd.service
0::/k8s/abc
";
    const HYBRID_MOUNTINFO: &[u8] = b"\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime shared:14 - cgroup cgroup rw,freezer
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
";
    const V2_MOUNTINFO: &[u8] = b"\
29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn resolves_hybrid_and_pure_v2() {
        let own_root = "12:freezer:/\n0::/\n";
        let d = freezer_dirs(HYBRID_CGROUP, own_root, HYBRID_MOUNTINFO);
        assert_eq!(
            d.v2.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified/k8s/abc"))
        );
        assert_eq!(
            d.v1.as_deref(),
            Some(Path::new("/sys/fs/cgroup/freezer/k8s/abc"))
        );

        let d = freezer_dirs("0::/ns/ctr\n", "0::/user.slice\n", V2_MOUNTINFO);
        assert_eq!(d.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/ns/ctr")));
        assert_eq!(d.v1, None);

        // The v2 cgroup is the root: only v1.
        let d = freezer_dirs("6:freezer:/ns/c\n0::/\n", own_root, HYBRID_MOUNTINFO);
        assert_eq!(d.v2, None);
        assert_eq!(
            d.v1.as_deref(),
            Some(Path::new("/sys/fs/cgroup/freezer/ns/c"))
        );

        // Hybrid with a shared v2 service cgroup: v1 wins.
        let target = "6:freezer:/ns/c\n0::/system.slice/containerd.service\n";
        let d = freezer_dirs(target, own_root, HYBRID_MOUNTINFO);
        assert_eq!(d.v2, None);
        assert!(d.v1.is_some());

        // A cgroup that contains the caller is refused.
        let d = freezer_dirs("0::/a\n", "0::/a/b\n", V2_MOUNTINFO);
        assert_eq!(d.v2, None);
        assert!(
            d.rejected[0].contains("contains this process"),
            "{:?}",
            d.rejected
        );

        // Mount root other than "/", and paths outside the namespace.
        let mi = b"1 2 0:1 /sub /mnt/cg rw - cgroup2 none rw\n";
        let d = freezer_dirs("0::/sub/x\n", "", mi);
        assert_eq!(d.v2.as_deref(), Some(Path::new("/mnt/cg/x")));
        assert_eq!(freezer_dirs("0::/other/x\n", "", mi).v2, None);
        assert_eq!(freezer_dirs("0::/../x\n", "", V2_MOUNTINFO).v2, None);
    }
}
