//! How a failure on the source side is classified: a race with the running
//! container ([`Fail::Race`]: the entry is left for the frozen sync) or a real
//! error ([`Fail::Fatal`]).
//!
//! Invariant: only errnos a concurrent change of the source can cause
//! ([`is_race`]) are races, and only on the source side; every capture-side
//! error is fatal (it converts through `From<Error>`).

use std::path::PathBuf;

use nix::errno::Errno;

use crate::error::Error;

/// A failure while copying one entry.
pub(super) enum Fail {
    Race(Error),
    Fatal(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Fatal(e)
    }
}

impl Fail {
    /// The error, race or not (the frozen sync has no races to tolerate).
    pub(super) fn into_error(self) -> Error {
        match self {
            Fail::Race(e) | Fail::Fatal(e) => e,
        }
    }
}

pub(super) type FResult<T> = std::result::Result<T, Fail>;

/// Errnos a concurrent change of the source can cause.
pub(super) fn is_race(e: Errno) -> bool {
    matches!(
        e,
        Errno::ENOENT
            | Errno::ENOTDIR
            | Errno::ELOOP
            | Errno::ESTALE
            | Errno::EINVAL
            | Errno::ENODATA
            | Errno::ENXIO
    )
}

/// Classifies errors of source-side operations.
pub(super) trait SrcExt<T> {
    fn src(self, op: &'static str, path: impl FnOnce() -> PathBuf) -> FResult<T>;
}

impl<T> SrcExt<T> for nix::Result<T> {
    fn src(self, op: &'static str, path: impl FnOnce() -> PathBuf) -> FResult<T> {
        self.map_err(|e| {
            let err = Error::errno(op, path(), e);
            if is_race(e) {
                Fail::Race(err)
            } else {
                Fail::Fatal(err)
            }
        })
    }
}

impl<T> SrcExt<T> for std::io::Result<T> {
    fn src(self, op: &'static str, path: impl FnOnce() -> PathBuf) -> FResult<T> {
        self.map_err(|e| match e.raw_os_error() {
            Some(n) => match Err::<(), _>(Errno::from_raw(n)).src(op, path) {
                Err(f) => f,
                Ok(()) => Fail::Fatal(Error::Internal("unreachable".into())),
            },
            None => Fail::Fatal(Error::io(op, path(), e)),
        })
    }
}

/// The source changed under us without an errno (other inode, short read).
pub(super) fn changed(op: &'static str, path: PathBuf) -> Fail {
    Fail::Race(Error::io(
        op,
        path,
        std::io::Error::other("changed while being copied"),
    ))
}
