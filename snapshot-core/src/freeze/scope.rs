//! The container's own cgroup, from its OCI runtime spec's
//! `linux.cgroupsPath`: the highest cgroup a commit may freeze. Above it sit
//! slices that hold other workloads.
//!
//! The runtime's cgroup driver decides how `cgroupsPath` reads (runc):
//! - `/a/b` (cgroupfs driver): that cgroup, from the hierarchy's root;
//! - `slice:prefix:name` (systemd driver): the scope `prefix-name.scope` (or
//!   the slice `name` when it ends in `.slice`) in the slice `slice`
//!   (default `system.slice`), whose name expands to its ancestors
//!   (`a-b.slice` is `a.slice/a-b.slice`); rooted at pid 1's cgroup, so it is
//!   matched as the trailing part of a path;
//! - `a/b` (relative): relative to a place the runtime chooses; matched as
//!   the trailing part of a path too.
//!
//! Invariant: pure (takes strings, reads nothing); an init process whose
//! cgroup is not at or below the container's cgroup is an error, never a
//! reason to look higher.

use std::path::{Component, Path, PathBuf};

/// The container's cgroup path (in the notation of `/proc/<pid>/cgroup`),
/// given its OCI `cgroupsPath` (`raw`) and `init_cg`, the cgroup of its init
/// process in the hierarchy being frozen. Without a `cgroupsPath`, init's
/// own cgroup: nothing above it may be frozen. `Err` says why not.
pub(crate) fn container_cgroup(raw: Option<&str>, init_cg: &str) -> Result<String, String> {
    let init = Path::new(init_cg);
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(init_cg.to_owned());
    };
    let (expected, rooted) = if raw.starts_with('/') {
        (PathBuf::from(raw), true)
    } else if raw.matches(':').count() == 2 {
        (systemd_path(raw)?, false)
    } else {
        (PathBuf::from(raw), false)
    };
    if expected
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!("cgroupsPath {raw:?} is not a plain path"));
    }
    let outside = || {
        format!(
            "its init process is in cgroup {init_cg}, outside the container's own cgroup \
             (OCI cgroupsPath {raw:?})"
        )
    };
    if rooted {
        return if init.starts_with(&expected) {
            Ok(expected.to_string_lossy().into_owned())
        } else {
            Err(outside())
        };
    }
    let tail: Vec<Component> = expected
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    if tail.is_empty() {
        return Err(format!("cgroupsPath {raw:?} names no cgroup"));
    }
    // The deepest ancestor-or-self of init's cgroup that ends with `tail`.
    init.ancestors()
        .find(|a| {
            let parts: Vec<Component> = a.components().collect();
            parts.len() >= tail.len() && parts[parts.len() - tail.len()..] == tail[..]
        })
        .map(|a| a.to_string_lossy().into_owned())
        .ok_or_else(outside)
}

/// The cgroup path of a systemd-driver `slice:prefix:name`, relative to the
/// systemd root (runc's `ExpandSlice` and unit naming).
fn systemd_path(raw: &str) -> Result<PathBuf, String> {
    let mut parts = raw.splitn(3, ':');
    let (slice, prefix, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(p), Some(n)) => (s, p, n),
        _ => return Err(format!("cgroupsPath {raw:?} is not slice:prefix:name")),
    };
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let mut path = expand_slice(slice)
        .ok_or_else(|| format!("invalid slice {slice:?} in cgroupsPath {raw:?}"))?;
    if name.is_empty() || name.contains('/') {
        return Err(format!("invalid unit name {name:?} in cgroupsPath {raw:?}"));
    }
    if name.ends_with(".slice") {
        path.push(name);
    } else {
        path.push(format!("{prefix}-{name}.scope"));
    }
    Ok(path)
}

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
/// `None` for a name that is not a valid slice.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice")?;
    if stem.is_empty() || slice.contains('/') {
        return None;
    }
    let mut path = PathBuf::new();
    if stem == "-" {
        return Some(path);
    }
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return None;
        }
        path.push(format!("{prefix}{part}.slice"));
        prefix.push_str(part);
        prefix.push('-');
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(raw: &str, init: &str) -> Result<String, String> {
        container_cgroup(Some(raw), init)
    }

    #[test]
    fn expands_slices() {
        assert_eq!(
            expand_slice("kubepods-burstable-pod1.slice"),
            Some(PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
            ))
        );
        assert_eq!(expand_slice("-.slice"), Some(PathBuf::new()));
        for bad in ["a--b.slice", "-a.slice", ".slice", "a.scope", "a/b.slice"] {
            assert_eq!(expand_slice(bad), None, "{bad}");
        }
    }

    #[test]
    fn cgroupfs_paths_are_exact() {
        assert_eq!(c("/ns/c1", "/ns/c1").as_deref(), Ok("/ns/c1"));
        // systemd inside the container: init in a child cgroup.
        assert_eq!(c("/ns/c1", "/ns/c1/init.scope").as_deref(), Ok("/ns/c1"));
        // Init moved out, even next door, or to a cgroup ending the same way.
        for init in ["/ns", "/ns/c10", "/ns/other", "/x/ns/c1", "/"] {
            let e = c("/ns/c1", init).unwrap_err();
            assert!(e.contains("outside the container's own cgroup"), "{e}");
        }
        assert!(c("/ns/../c1", "/ns/c1").is_err());
    }

    #[test]
    fn systemd_and_relative_paths_match_the_tail() {
        let scope = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope";
        let raw = "kubepods-burstable-pod1.slice:cri-containerd:abc";
        assert_eq!(c(raw, scope).as_deref(), Ok(scope));
        assert_eq!(c(raw, &format!("{scope}/init.scope")).as_deref(), Ok(scope));
        // Rooted below pid 1's own cgroup (systemd in a container).
        assert_eq!(
            c(raw, &format!("/outer{scope}")),
            Ok(format!("/outer{scope}"))
        );
        assert!(c(raw, "/kubepods.slice/kubepods-burstable.slice").is_err());
        // The default slice; a slice as the unit.
        assert_eq!(
            c(":docker:abc", "/system.slice/docker-abc.scope").as_deref(),
            Ok("/system.slice/docker-abc.scope")
        );
        assert_eq!(
            c("machine.slice::my.slice", "/machine.slice/my.slice/x").as_deref(),
            Ok("/machine.slice/my.slice")
        );
        assert!(c("bad:docker:abc", "/system.slice/docker-abc.scope").is_err());
        // Relative cgroupfs paths.
        assert_eq!(
            c("ns/c1", "/runtime/ns/c1/sub").as_deref(),
            Ok("/runtime/ns/c1")
        );
        assert!(c("ns/c1", "/runtime/ns/c2").is_err());
    }

    #[test]
    fn without_a_cgroups_path_only_init_s_own_cgroup() {
        assert_eq!(container_cgroup(None, "/a/b").as_deref(), Ok("/a/b"));
        assert_eq!(container_cgroup(Some(""), "/a/b").as_deref(), Ok("/a/b"));
    }
}
