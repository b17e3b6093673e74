//! The opaque result and status objects handed to C, and their accessors.

use std::ffi::{CString, c_char};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

use ::seamless_snapshot::{SnapshotResult, SnapshotState, SnapshotStatus};

use crate::error::{Failure, arg_ref, guard_or, owned_c_string, seamless_result};

/// What a commit returned (the Rust `SnapshotResult`). Opaque; created by
/// the commit functions, freed with `seamless_snapshot_free`. Immutable:
/// any number of threads may read one at once.
#[derive(Debug)]
pub struct seamless_snapshot {
    result: SnapshotResult,
    // The strings the accessors lend out, made once so that their pointers
    // live as long as the object.
    snapshot_id: CString,
    old_upper_dir: CString,
    new_upper_dir: CString,
}

impl seamless_snapshot {
    pub(crate) fn new(result: SnapshotResult) -> Result<seamless_snapshot, Failure> {
        Ok(seamless_snapshot {
            snapshot_id: c_string(result.snapshot_id.as_bytes())?,
            old_upper_dir: path_c_string(&result.old_upper_dir)?,
            new_upper_dir: path_c_string(&result.new_upper_dir)?,
            result,
        })
    }
}

/// A snapshot's status (the Rust `SnapshotStatus`). Opaque; created by
/// `seamless_get_status` and `seamless_wait`, freed with
/// `seamless_status_free`. Immutable: any number of threads may read one.
#[derive(Debug)]
pub struct seamless_status {
    status: SnapshotStatus,
}

impl seamless_status {
    pub(crate) fn new(status: SnapshotStatus) -> seamless_status {
        seamless_status { status }
    }
}

/// Where a snapshot is in its life cycle (the Rust `SnapshotState`):
/// pending -> capturing -> captured -> building -> pushing -> completed or failed.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum seamless_state {
    /// Accepted, nothing done yet.
    SEAMLESS_STATE_PENDING = 0,
    /// Copying the writable layer (pre-copy, freeze, sync, thaw).
    SEAMLESS_STATE_CAPTURING = 1,
    /// The point-in-time copy exists; the container runs on.
    SEAMLESS_STATE_CAPTURED = 2,
    /// Packing the layer, building config and manifest.
    SEAMLESS_STATE_BUILDING = 3,
    /// Uploading blobs and the manifest.
    SEAMLESS_STATE_PUSHING = 4,
    /// The manifest is in the registry under the target reference.
    SEAMLESS_STATE_COMPLETED = 5,
    /// The snapshot failed; the status JSON has `error`.
    SEAMLESS_STATE_FAILED = 6,
    /// Not a state: returned by `seamless_status_state` for a NULL status.
    SEAMLESS_STATE_INVALID = 100,
}

impl From<SnapshotState> for seamless_state {
    fn from(s: SnapshotState) -> seamless_state {
        match s {
            SnapshotState::Pending => seamless_state::SEAMLESS_STATE_PENDING,
            SnapshotState::Capturing => seamless_state::SEAMLESS_STATE_CAPTURING,
            SnapshotState::Captured => seamless_state::SEAMLESS_STATE_CAPTURED,
            SnapshotState::Building => seamless_state::SEAMLESS_STATE_BUILDING,
            SnapshotState::Pushing => seamless_state::SEAMLESS_STATE_PUSHING,
            SnapshotState::Completed => seamless_state::SEAMLESS_STATE_COMPLETED,
            SnapshotState::Failed => seamless_state::SEAMLESS_STATE_FAILED,
        }
    }
}

fn c_string(bytes: &[u8]) -> Result<CString, Failure> {
    CString::new(bytes).map_err(|e| {
        Failure::new(
            seamless_result::SEAMLESS_INTERNAL,
            format!("string with a NUL byte: {e}"),
        )
    })
}

/// A path as the bytes the kernel knows it by (it need not be UTF-8).
fn path_c_string(p: &Path) -> Result<CString, Failure> {
    c_string(p.as_os_str().as_bytes())
}

/// A value's JSON as a C string the caller frees with `seamless_string_free`.
pub(crate) fn to_json(value: &impl serde::Serialize) -> Result<*mut c_char, Failure> {
    let json = serde_json::to_string(value).map_err(|e| {
        Failure::new(
            seamless_result::SEAMLESS_INTERNAL,
            format!("serialize to JSON: {e}"),
        )
    })?;
    owned_c_string(json)
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs an accessor on an object: `fallback`, and the last error, for NULL
/// or a failure.
///
/// # Safety
/// `p` is NULL or a live object from this library.
unsafe fn read<T, R>(
    func: &str,
    p: *const T,
    fallback: R,
    f: impl FnOnce(&T) -> Result<R, Failure>,
) -> R {
    guard_or(func, fallback, || {
        // SAFETY: the caller guarantees NULL or live.
        let obj = unsafe { arg_ref(p, "s") }?;
        f(obj)
    })
}

/// Frees an object this library boxed; NULL is a no-op.
///
/// # Safety
/// `p` is NULL or came from `Box::into_raw` in this library and is not
/// freed yet.
unsafe fn free_box<T>(func: &str, p: *mut T) {
    guard_or(func, (), || {
        if !p.is_null() {
            // SAFETY: the caller's contract.
            drop(unsafe { Box::from_raw(p) });
        }
        Ok(())
    })
}

/// The snapshot's id, for `seamless_get_status` and `seamless_wait`.
///
/// Ownership: the string belongs to `s` and lives until
/// `seamless_snapshot_free(s)`; do not free it.
/// Thread safety: any thread, concurrently with other readers of `s`.
/// On error (`s` NULL): returns NULL and sets the last error.
///
/// # Safety
/// `s` is NULL or a live `seamless_snapshot` from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_snapshot_id(s: *const seamless_snapshot) -> *const c_char {
    // SAFETY: the caller guarantees `s` is NULL or live.
    unsafe {
        read("seamless_snapshot_id", s, ptr::null(), |s| {
            Ok(s.snapshot_id.as_ptr())
        })
    }
}

/// The pause the container felt, in nanoseconds: from the instant the
/// freeze was requested to the instant the thaw completed.
///
/// Thread safety: any thread, concurrently with other readers of `s`.
/// On error (`s` NULL): returns 0 and sets the last error.
///
/// # Safety
/// `s` is NULL or a live `seamless_snapshot` from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_snapshot_pause_ns(s: *const seamless_snapshot) -> u64 {
    // SAFETY: the caller guarantees `s` is NULL or live.
    unsafe {
        read("seamless_snapshot_pause_ns", s, 0, |s| {
            Ok(nanos(s.result.pause_time))
        })
    }
}

/// The whole call in nanoseconds: resolve, pre-copy, pause, and after a
/// wait the build and push too.
///
/// Thread safety: any thread, concurrently with other readers of `s`.
/// On error (`s` NULL): returns 0 and sets the last error.
///
/// # Safety
/// `s` is NULL or a live `seamless_snapshot` from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_snapshot_total_ns(s: *const seamless_snapshot) -> u64 {
    // SAFETY: the caller guarantees `s` is NULL or live.
    unsafe {
        read("seamless_snapshot_total_ns", s, 0, |s| {
            Ok(nanos(s.result.total_time))
        })
    }
}

/// The frozen point-in-time copy of the writable layer that is packed into
/// the image (removed once the image is pushed). The path's bytes as the
/// kernel has them: not necessarily UTF-8.
///
/// Ownership: the string belongs to `s` and lives until
/// `seamless_snapshot_free(s)`; do not free it.
/// Thread safety: any thread, concurrently with other readers of `s`.
/// On error (`s` NULL): returns NULL and sets the last error.
///
/// # Safety
/// `s` is NULL or a live `seamless_snapshot` from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_snapshot_old_upper_dir(
    s: *const seamless_snapshot,
) -> *const c_char {
    // SAFETY: the caller guarantees `s` is NULL or live.
    unsafe {
        read("seamless_snapshot_old_upper_dir", s, ptr::null(), |s| {
            Ok(s.old_upper_dir.as_ptr())
        })
    }
}

/// The live upper dir the container keeps writing to. Not necessarily
/// UTF-8.
///
/// Ownership: the string belongs to `s` and lives until
/// `seamless_snapshot_free(s)`; do not free it.
/// Thread safety: any thread, concurrently with other readers of `s`.
/// On error (`s` NULL): returns NULL and sets the last error.
///
/// # Safety
/// `s` is NULL or a live `seamless_snapshot` from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_snapshot_new_upper_dir(
    s: *const seamless_snapshot,
) -> *const c_char {
    // SAFETY: the caller guarantees `s` is NULL or live.
    unsafe {
        read("seamless_snapshot_new_upper_dir", s, ptr::null(), |s| {
            Ok(s.new_upper_dir.as_ptr())
        })
    }
}

/// The whole result as JSON (the serde form of the Rust `SnapshotResult`:
/// `snapshot_id`, `container_id`, `target_ref`, `pause_time` and
/// `total_time` in seconds, `old_upper_dir`, `new_upper_dir`,
/// `files_captured`, `bytes_captured`, `capture_strategy`, `freezer`,
/// `captured_at`, `base_image`, `manifest_digest` and `layer` after a wait,
/// `pause_breakdown`: `freeze`, `frozen_work`, `sync`, `thaw` in seconds,
/// `entries_checked`, `files_copied`, `bytes_copied`, `entries_removed`,
/// `capture_path` (`incremental` or `full`), `fallback_reason`,
/// `precopy_passes`, `verified`).
///
/// Ownership: the caller owns the returned string; free it with
/// `seamless_string_free`.
/// Thread safety: any thread, concurrently with other readers of `s`.
/// On error (`s` NULL, or a path that is not UTF-8 and so has no JSON
/// form): returns NULL and sets the last error.
///
/// # Safety
/// `s` is NULL or a live `seamless_snapshot` from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_snapshot_to_json(s: *const seamless_snapshot) -> *mut c_char {
    // SAFETY: the caller guarantees `s` is NULL or live.
    unsafe {
        read("seamless_snapshot_to_json", s, ptr::null_mut(), |s| {
            to_json(&s.result)
        })
    }
}

/// Frees a result. NULL is a no-op.
///
/// Ownership: takes `s` back; `s` and every string borrowed from it are
/// invalid afterwards.
/// Thread safety: no other thread may use `s` during or after the call.
///
/// # Safety
/// `s` is NULL or a `seamless_snapshot` from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_snapshot_free(s: *mut seamless_snapshot) {
    // SAFETY: the caller guarantees `s` is NULL or not yet freed.
    unsafe { free_box("seamless_snapshot_free", s) }
}

/// The snapshot's state.
///
/// Thread safety: any thread, concurrently with other readers of `s`.
/// On error (`s` NULL): returns `SEAMLESS_STATE_INVALID` and sets the last
/// error.
///
/// # Safety
/// `s` is NULL or a live `seamless_status` from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_status_state(s: *const seamless_status) -> seamless_state {
    // SAFETY: the caller guarantees `s` is NULL or live.
    unsafe {
        read(
            "seamless_status_state",
            s,
            seamless_state::SEAMLESS_STATE_INVALID,
            |s| Ok(s.status.state.into()),
        )
    }
}

/// Progress of the current phase, 0.0 ..= 1.0 (bytes done / bytes in
/// all); 0.0 while the phase's total is not known yet.
///
/// Thread safety: any thread, concurrently with other readers of `s`.
/// On error (`s` NULL): returns -1.0 and sets the last error.
///
/// # Safety
/// `s` is NULL or a live `seamless_status` from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_status_progress(s: *const seamless_status) -> f64 {
    // SAFETY: the caller guarantees `s` is NULL or live.
    unsafe {
        read("seamless_status_progress", s, -1.0, |s| {
            let p = s.status.progress;
            Ok(if p.total == 0 {
                0.0
            } else {
                (p.done as f64 / p.total as f64).clamp(0.0, 1.0)
            })
        })
    }
}

/// The whole status as JSON (the serde form of the Rust `SnapshotStatus`:
/// `snapshot_id`, `container_id`, `target_ref`, `state`, `progress`,
/// `timings`, `error` with `kind`/`code`/`message` when failed,
/// `manifest_digest` and `layer` when built, `created_at`, `updated_at`,
/// `worker`).
///
/// Ownership: the caller owns the returned string; free it with
/// `seamless_string_free`.
/// Thread safety: any thread, concurrently with other readers of `s`.
/// On error (`s` NULL): returns NULL and sets the last error.
///
/// # Safety
/// `s` is NULL or a live `seamless_status` from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_status_to_json(s: *const seamless_status) -> *mut c_char {
    // SAFETY: the caller guarantees `s` is NULL or live.
    unsafe {
        read("seamless_status_to_json", s, ptr::null_mut(), |s| {
            to_json(&s.status)
        })
    }
}

/// Frees a status. NULL is a no-op.
///
/// Ownership: takes `s` back; it is invalid afterwards.
/// Thread safety: no other thread may use `s` during or after the call.
///
/// # Safety
/// `s` is NULL or a `seamless_status` from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_status_free(s: *mut seamless_status) {
    // SAFETY: the caller guarantees `s` is NULL or not yet freed.
    unsafe { free_box("seamless_status_free", s) }
}

/// Frees a string this library returned (`seamless_snapshot_to_json`,
/// `seamless_status_to_json`, `seamless_list`). NULL is a no-op. Never pass
/// the strings borrowed from a `seamless_snapshot` (`seamless_snapshot_id`
/// and the upper dirs), nor memory from elsewhere.
///
/// Ownership: takes `s` back; it is invalid afterwards.
/// Thread safety: any thread; no other thread may use `s`.
///
/// # Safety
/// `s` is NULL or a string returned as owned by this library, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_string_free(s: *mut c_char) {
    guard_or("seamless_string_free", (), || {
        if !s.is_null() {
            // SAFETY: made by CString::into_raw in this library and not freed
            // yet (the caller's contract).
            drop(unsafe { CString::from_raw(s) });
        }
        Ok(())
    })
}
