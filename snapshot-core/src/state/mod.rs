//! Job state on disk: the status store, and reading and waiting on it.
//!
//! Everything here works across processes: a status written by a worker
//! process is read by the committer, `wait`, or a later process, through
//! the files of `<state>/jobs/<id>/` only. [`private`] keeps the
//! directories captures live in out of reach of anyone but root.

mod private;
mod store;
mod wait;

pub(crate) use private::{PRIVATE_SUBDIR, check_trusted_path, private_root_in, private_subdir};
#[cfg(test)]
pub(crate) use store::validate_id;
pub(crate) use store::{
    StatusStore, ensure_private_dir, lock_dir, lock_file, try_lock_dir, write_atomic,
};
pub(crate) use wait::{dead_worker, effective_status, wait_for};
