//! `/proc/<pid>/cgroup`: the cgroups of a process, one line per hierarchy
//! (`hierarchy-id:controllers:path`; cgroup v2 is `0::path`).
//!
//! The path is the rest of the line after the second colon (a cgroup name
//! may itself contain colons), relative to the reader's cgroup namespace.

/// One line of `/proc/<pid>/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcCgroupLine<'a> {
    /// The hierarchy id (0 for cgroup v2).
    pub(crate) hierarchy: u32,
    /// The v1 controllers, comma-separated (empty for cgroup v2).
    pub(crate) controllers: &'a str,
    /// The cgroup path.
    pub(crate) path: &'a str,
}

/// The lines of a `/proc/<pid>/cgroup` text; malformed lines are skipped.
pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroupLine<'_>> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.trim().parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(ProcCgroupLine {
                hierarchy,
                controllers,
                path,
            })
        })
        .collect()
}

/// The cgroup v2 path of a process (`0::/path`).
pub(crate) fn v2_path<'a>(lines: &[ProcCgroupLine<'a>]) -> Option<&'a str> {
    lines
        .iter()
        .find(|l| l.hierarchy == 0 && l.controllers.is_empty())
        .map(|l| l.path)
}

/// The v1 freezer-controller path of a process (`N:...freezer...:/path`).
pub(crate) fn v1_freezer_path<'a>(lines: &[ProcCgroupLine<'a>]) -> Option<&'a str> {
    lines
        .iter()
        .find(|l| l.controllers.split(',').any(|c| c == "freezer"))
        .map(|l| l.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_cgroup() {
        let hybrid = "\
12:freezer:/k8s/abc
11:cpu,cpuacct:/k8s/abc
1:name=systemd:/system.slice/containerd.service
0::/k8s/abc
";
        let lines = parse_proc_cgroup(hybrid);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1].hierarchy, 11);
        assert_eq!(lines[1].controllers, "cpu,cpuacct");
        assert_eq!(v1_freezer_path(&lines), Some("/k8s/abc"));
        assert_eq!(v2_path(&lines), Some("/k8s/abc"));
        let lines = parse_proc_cgroup("0::/system.slice/a:b.scope\n");
        assert_eq!(v2_path(&lines), Some("/system.slice/a:b.scope"));
        assert_eq!(v1_freezer_path(&lines), None);
        // A freezer co-mounted with other controllers.
        let lines = parse_proc_cgroup("3:cpuset,freezer:/x\n");
        assert_eq!(v1_freezer_path(&lines), Some("/x"));
        assert!(parse_proc_cgroup("garbage\nx:y:z\n").is_empty());
    }
}
