//! Small public enums shared by the configuration, the result and the
//! mechanisms that produce them. They live here, at the bottom of the module
//! graph, so that `config` and `result` do not depend on `capture`, `freeze`
//! or `layer`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How file data is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureStrategy {
    /// Every file was cloned with `FICLONE` (XFS, btrfs: same filesystem).
    Reflink,
    /// File data was copied with `copy_file_range` (or read/write).
    CopyFileRange,
    /// Some files were cloned, others copied.
    Mixed,
}

/// How the frozen window brought the copy up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapturePath {
    /// Only the paths changed since the last pre-copy pass were looked at
    /// (reported by fanotify dirty tracking).
    Incremental,
    /// The whole upper dir was compared with its copy: the dirty tracking
    /// could not be trusted (see `fallback_reason`).
    Full,
}

/// Which freezer interface is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreezerKind {
    /// cgroup v2: `cgroup.freeze` + `cgroup.events`.
    V2,
    /// cgroup v1 freezer controller: `freezer.state`.
    V1,
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (flate2, default level): the most widely supported.
    #[default]
    Gzip,
    /// zstd, level 3.
    Zstd,
    /// Uncompressed tar.
    None,
}

impl Compression {
    /// The OCI media type of a layer with this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
        }
    }

    /// The name used in configuration: `gzip`, `zstd` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Compression {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "none" => Ok(Compression::None),
            _ => Err(Error::InvalidArgument(format!(
                "unknown compression {s:?} (expected gzip, zstd or none)"
            ))),
        }
    }
}
