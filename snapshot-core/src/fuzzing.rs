//! Entry points for the `cargo fuzz` targets in `fuzz/`, compiled only with
//! `--cfg fuzzing` (which cargo-fuzz sets): thin wrappers over the crate's
//! private parsers of outside input and over the layer writer, returning
//! plain std types, so the targets reach them without any of it becoming
//! API. No logic of its own: a wrapper calls the real code path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::types::Compression;

/// An image reference, parsed and validated: its full form, or why not.
pub fn parse_reference(s: &str) -> Result<String, String> {
    crate::registry::parse_reference(s)
        .map(|r| r.whole())
        .map_err(|e| e.to_string())
}

/// Which of `registries` are reached over plain HTTP, given `insecure`.
pub fn plain_http_registries(insecure: &[String], registries: &[&str]) -> Vec<String> {
    crate::registry::plain_http_registries(insecure, registries)
}

/// An overlay mount's options as containerd reports them: `(upper,
/// lowers, work, userxattr)`, or why they are refused.
#[allow(clippy::type_complexity)] // a plain tuple keeps the module free of types
pub fn parse_overlay_options(
    options: &[String],
) -> Result<(PathBuf, Vec<PathBuf>, Option<PathBuf>, bool), String> {
    crate::containerd::parse_overlay_options(options)
        .map(|m| (m.upper, m.lowers, m.work, m.userxattr))
        .map_err(|e| e.to_string())
}

/// The mountinfo cross-check of a container's root against `upper`.
pub fn check_mountinfo_text(text: &[u8], upper: &Path) -> Result<(), String> {
    crate::containerd::check_mountinfo_text(text, upper).map_err(|e| e.to_string())
}

/// One parsed mountinfo line: `(root, mount point, fs type, super options)`.
pub type MountFields = (PathBuf, PathBuf, String, Vec<Vec<u8>>);

/// Every mount of a mountinfo text, and how many of them are cgroup mounts.
pub fn mountinfo(text: &[u8]) -> (Vec<MountFields>, usize) {
    use crate::procfs::mountinfo;
    let all = mountinfo::parse(text)
        .map(|m| {
            // Exercise the accessors the callers use.
            let _ = m.super_options_text();
            let _ = m.has_super_option("freezer");
            let _ = m.super_option_values("upperdir").count();
            (m.root, m.mount_point, m.fs_type, m.super_options)
        })
        .collect();
    (all, mountinfo::cgroup_mounts(text).len())
}

/// The freezer directories of a process from its `/proc/<pid>/cgroup`, the
/// caller's own and the caller's mountinfo: `(v2, v1, v2 cgroup, v1 cgroup,
/// rejections)`.
#[allow(clippy::type_complexity)]
pub fn freezer_dirs(
    target: &str,
    own: &str,
    mountinfo: &[u8],
) -> (
    Option<PathBuf>,
    Option<PathBuf>,
    Option<String>,
    Option<String>,
    Vec<String>,
) {
    let d = crate::freeze::freezer_dirs(target, own, mountinfo);
    (d.v2, d.v1, d.v2_cgroup, d.v1_cgroup, d.rejected)
}

/// A `/proc/<pid>/cgroup` text: its lines `(hierarchy, controllers, path)`,
/// the v2 path and the v1 freezer path.
#[allow(clippy::type_complexity)]
pub fn proc_cgroup(text: &str) -> (Vec<(u32, String, String)>, Option<String>, Option<String>) {
    use crate::procfs::cgroup;
    let lines = cgroup::parse_proc_cgroup(text);
    let v2 = cgroup::v2_path(&lines).map(str::to_owned);
    let v1 = cgroup::v1_freezer_path(&lines).map(str::to_owned);
    let lines = lines
        .into_iter()
        .map(|l| (l.hierarchy, l.controllers.to_owned(), l.path.to_owned()))
        .collect();
    (lines, v2, v1)
}

/// The container's own cgroup from its OCI `cgroupsPath` and init's cgroup.
pub fn container_cgroup(raw: Option<&str>, init_cg: &str) -> Result<String, String> {
    crate::freeze::container_cgroup(raw, init_cg)
}

/// `linux.cgroupsPath` of an OCI runtime spec's JSON.
pub fn spec_cgroups_path(json: &[u8]) -> Result<Option<String>, String> {
    crate::containerd::spec_cgroups_path(json).map_err(|e| e.to_string())
}

/// The `frozen` value of a `cgroup.events` text.
pub fn cgroup_events_frozen(text: &[u8]) -> Option<bool> {
    crate::freeze::parse_events_frozen(text)
}

/// A v1 `freezer.state` text, as the state's name.
pub fn freezer_state(text: &[u8]) -> Option<String> {
    crate::freeze::parse_v1_state(text).map(|s| format!("{s:?}"))
}

/// The shared-writable file mappings of a `/proc/<pid>/maps` text:
/// `(dev, ino, path)`.
pub fn maps(text: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
    crate::procfs::maps::parse_maps(text)
        .map(|m| (m.dev, m.ino, m.path))
        .collect()
}

/// A `/proc/<pid>/stat` line: `(start ticks, state, field n)`.
pub fn stat(text: &str, n: usize) -> (Option<u64>, Option<char>, Option<u64>) {
    use crate::procfs::stat;
    (
        stat::parse_start_ticks(text),
        stat::parse_state(text),
        stat::numeric_field(text, n),
    )
}

/// A job's `job.json`, deserialized as the job runner does; when it parses,
/// its serialization and that of its re-parse (which must be equal).
pub fn job_spec(json: &[u8]) -> Option<(String, String)> {
    let spec: crate::job::JobSpec = serde_json::from_slice(json).ok()?;
    let once = serde_json::to_string(&spec).ok()?;
    let again: crate::job::JobSpec = serde_json::from_str(&once).ok()?;
    Some((once, serde_json::to_string(&again).ok()?))
}

/// Runs every reader of base-image JSON over `json` (as a manifest, an
/// index and a config), and `assemble` with it as both manifest and config.
pub fn image_json(media_type: &str, json: &[u8]) {
    use crate::image;
    let _ = image::is_index(media_type, json);
    let _ = image::index_manifests(json);
    let _ = image::manifest_config_digest(json);
    if let Ok(ids) = image::config_diff_ids(json) {
        let _ = image::chain_id(&ids);
    }
    let digest = image::sha256_digest(json);
    let layer = image::Descriptor {
        media_type: Compression::Gzip.media_type().to_string(),
        digest: digest.clone(),
        size: json.len() as u64,
    };
    let history = image::History {
        created: chrono::DateTime::UNIX_EPOCH,
        created_by: "fuzz".into(),
        comment: None,
        author: None,
    };
    let _ = image::assemble(
        json,
        json,
        &layer,
        &digest,
        &history,
        &BTreeMap::new(),
        &BTreeMap::new(),
    );
}

/// A tar entry for [`encode_tar_header`]; `kind` picks the type (0 regular,
/// 1 hard link, 2 symlink, 3 char, 4 block, 5 dir, else fifo).
#[derive(Debug, Clone, Default)]
pub struct TarEntry {
    pub path: Vec<u8>,
    pub kind: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub link: Vec<u8>,
    pub dev_major: u64,
    pub dev_minor: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The header block(s) the layer writer emits for `e`.
pub fn encode_tar_header(e: &TarEntry) -> Vec<u8> {
    use crate::layer::{Entry, Kind};
    let kind = match e.kind {
        0 => Kind::Regular,
        1 => Kind::HardLink,
        2 => Kind::Symlink,
        3 => Kind::Char,
        4 => Kind::Block,
        5 => Kind::Dir,
        _ => Kind::Fifo,
    };
    let mut entry = Entry::new(e.path.clone(), kind);
    entry.mode = e.mode;
    entry.uid = e.uid;
    entry.gid = e.gid;
    entry.size = e.size;
    entry.mtime = e.mtime;
    entry.mtime_nsec = e.mtime_nsec;
    entry.link = e.link.clone();
    entry.dev_major = e.dev_major;
    entry.dev_minor = e.dev_minor;
    entry.xattrs = e.xattrs.clone();
    crate::layer::encode_header(&entry)
}

/// Builds the uncompressed layer of `capture_dir` into the new file `out`
/// (overlay's namespace `user.overlay.` when `userxattr`, carrying the
/// `extra` xattrs too); the number of entries, or the error.
pub fn build_layer_tar(
    capture_dir: &Path,
    out: &Path,
    userxattr: bool,
    extra: Vec<String>,
) -> Result<u64, String> {
    let policy = crate::layer::XattrPolicy { userxattr, extra };
    let opts = crate::layer::BuildOptions {
        compression: Compression::None,
        level: None,
        threads: 1,
        max_sparse_expansion: crate::CommitOptions::DEFAULT_MAX_SPARSE_EXPANSION,
    };
    crate::layer::build_layer(capture_dir, out, &opts, &policy, None, &mut |_| {})
        .map(|b| b.entries)
        .map_err(|e| e.to_string())
}

/// `/proc/<pid>/uid_map` (or `gid_map`): the ID an outside ID maps to
/// inside, for each of `probes`, or the parse error's text.
pub fn id_map(text: &[u8], probes: &[u32]) -> Result<Vec<Option<u32>>, String> {
    let map = crate::procfs::idmap::IdMap::parse(text).map_err(|e| e.to_string())?;
    Ok(probes.iter().map(|&id| map.to_inside(id)).collect())
}
