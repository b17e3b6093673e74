//! `/proc/<pid>/mountinfo`: the mount table as a process's mount namespace
//! sees it (proc(5)).
//!
//! A line is `id parent maj:min root mount-point options [optional...] -
//! fstype source super-options`, fields separated by single spaces. The kernel
//! escapes space, tab, newline and backslash as `\ooo` (and, inside the
//! super options, also `,` and `=`), so a field never holds a raw space and a
//! super option never a raw comma: fields are split before they are decoded.
//! Paths are kept as bytes (a mount point need not be UTF-8).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::unescape_octal;

/// One mount of a mountinfo file, its fields decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The directory of the filesystem shown at the mount point (for a
    /// cgroup mount, the cgroup path).
    pub(crate) root: PathBuf,
    /// Where it is mounted.
    pub(crate) mount_point: PathBuf,
    /// The filesystem type (`overlay`, `cgroup2`, ...).
    pub(crate) fs_type: String,
    /// The super-block options, in order, each decoded.
    pub(crate) super_options: Vec<Vec<u8>>,
}

impl Mount {
    /// Whether `opt` (a flag such as `freezer`, or `key=value`) is one of the
    /// super-block options.
    pub(crate) fn has_super_option(&self, opt: &str) -> bool {
        self.super_options.iter().any(|o| o == opt.as_bytes())
    }

    /// The values of the `key=value` super-block options named `key`.
    pub(crate) fn super_option_values<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Iterator<Item = &'a [u8]> {
        self.super_options
            .iter()
            .filter_map(move |o| o.strip_prefix(key.as_bytes())?.strip_prefix(b"="))
    }

    /// The super-block options as one comma-separated text, for messages.
    pub(crate) fn super_options_text(&self) -> String {
        String::from_utf8_lossy(&self.super_options.join(&b',')).into_owned()
    }

    /// A `cgroup2` mount (true) or a v1 `cgroup` mount (false); `None` for
    /// any other filesystem.
    pub(crate) fn cgroup_version_2(&self) -> Option<bool> {
        match self.fs_type.as_str() {
            "cgroup2" => Some(true),
            "cgroup" => Some(false),
            _ => None,
        }
    }
}

/// The mounts of a mountinfo file's text, in the file's order (a later mount
/// on the same point covers an earlier one). Malformed lines are skipped.
pub(crate) fn parse(text: &[u8]) -> impl Iterator<Item = Mount> + '_ {
    text.split(|&b| b == b'\n').filter_map(parse_line)
}

/// The cgroup filesystem mounts (`cgroup2` and v1 `cgroup`) of a mountinfo
/// file's text.
pub(crate) fn cgroup_mounts(text: &[u8]) -> Vec<Mount> {
    parse(text)
        .filter(|m| m.cgroup_version_2().is_some())
        .collect()
}

fn parse_line(line: &[u8]) -> Option<Mount> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    // The optional fields end with a lone "-"; six fields come before them.
    let sep = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
    let path = |f: &[u8]| PathBuf::from(OsStr::from_bytes(&unescape_octal(f, |_| true)));
    let text = |f: &[u8]| String::from_utf8_lossy(&unescape_octal(f, |_| true)).into_owned();
    Some(Mount {
        root: path(fields.get(3)?),
        mount_point: path(fields.get(4)?),
        fs_type: text(fields.get(sep + 1)?),
        super_options: fields
            .get(sep + 3)
            .filter(|f| !f.is_empty())
            .map(|f| {
                f.split(|&b| b == b',')
                    .map(|o| unescape_octal(o, |_| true))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime shared:14 - cgroup cgroup rw,freezer
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn parses_cgroup_mounts() {
        let mounts = cgroup_mounts(HYBRID.as_bytes());
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[1].cgroup_version_2(), Some(false));
        assert_eq!(mounts[1].mount_point, Path::new("/sys/fs/cgroup/freezer"));
        assert_eq!(mounts[1].super_options_text(), "rw,freezer");
        assert!(mounts[1].has_super_option("freezer"));
        assert!(!mounts[0].has_super_option("freezer"));
        assert_eq!(mounts[2].cgroup_version_2(), Some(true));
        assert_eq!(mounts[2].mount_point, Path::new("/sys/fs/cgroup/unified"));
        let m = cgroup_mounts(b"1 2 0:1 /sub /mnt/my\\040cg rw - cgroup2 none rw\n");
        assert_eq!(m[0].mount_point, Path::new("/mnt/my cg"));
        assert_eq!(m[0].root, Path::new("/sub"));
        assert!(cgroup_mounts(b"garbage\n\n1 2 3\n").is_empty());
    }

    #[test]
    fn parses_fields_and_options() {
        let text = b"2000 1900 0:99 / / rw,relatime shared:1 master:2 - overlay overlay \
rw,lowerdir=/l1:/l2,upperdir=/var/lib/my\\054dir\\040x/fs,workdir=/w\n";
        let m: Vec<Mount> = parse(text).collect();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, Path::new("/"));
        assert_eq!(m[0].fs_type, "overlay");
        // An escaped comma is part of the value, not an option separator.
        let upper: Vec<&[u8]> = m[0].super_option_values("upperdir").collect();
        assert_eq!(upper, [&b"/var/lib/my,dir x/fs"[..]]);
        assert_eq!(m[0].super_option_values("upper").count(), 0);
        assert!(m[0].has_super_option("rw"));

        // Non-UTF-8 mount points survive byte for byte; \4xx stays literal.
        let m: Vec<Mount> = parse(b"1 0 0:1 / /mnt/\\377\\400 rw - ext4 /dev/vda rw\n").collect();
        assert_eq!(m[0].mount_point.as_os_str().as_bytes(), b"/mnt/\xff\\400");

        // No super options at all.
        let m: Vec<Mount> = parse(b"1 0 0:1 / /x rw - tmpfs none\n").collect();
        assert!(m[0].super_options.is_empty());
    }
}
