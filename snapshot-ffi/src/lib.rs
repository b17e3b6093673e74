//! # libseamless: the C ABI of seamless-snapshot
//!
//! Builds `libseamless.so` (SONAME `libseamless.so.0`) and `libseamless.a`
//! with the functions declared in `include/seamless.h`, which cbindgen
//! generates from this crate (`snapshot-ffi/check-header.sh`). It is a thin
//! translation of the public Rust API of `seamless_snapshot`
//! (`SeamlessSnapshot`, `ContainerdSnapshotter`, the option, result, status
//! and error types): no logic of its own beyond the boundary's checks.
//!
//! Every entry point runs inside [`error::run`]: arguments are checked
//! (NULL, UTF-8) before anything is done, a Rust error becomes its
//! `seamless_result` code plus a thread-local message, and a panic is caught
//! and reported as `SEAMLESS_PANIC` instead of unwinding into C.
#![deny(missing_docs)]
// The Rust names are the C names (`seamless_client`, `SEAMLESS_OK`), so that
// the header reads exactly like the code it is generated from.
#![allow(non_camel_case_types)]

mod client;
mod error;
mod objects;

use std::ffi::c_char;

pub use client::{
    seamless_client, seamless_client_free, seamless_client_new, seamless_client_new_with_config,
    seamless_commit, seamless_commit_with_options, seamless_commit_with_wait, seamless_get_status,
    seamless_list, seamless_wait,
};
pub use error::{seamless_result, seamless_result_raw};
pub use objects::{
    seamless_snapshot, seamless_snapshot_free, seamless_snapshot_id,
    seamless_snapshot_new_upper_dir, seamless_snapshot_old_upper_dir, seamless_snapshot_pause_ns,
    seamless_snapshot_to_json, seamless_snapshot_total_ns, seamless_state, seamless_status,
    seamless_status_free, seamless_status_progress, seamless_status_state, seamless_status_to_json,
    seamless_string_free,
};

/// Copies the message of this thread's last failed call into `buf`,
/// NUL-terminated and cut to `len` bytes (the NUL included; cut at a UTF-8
/// character boundary). With `buf` NULL or `len` 0 nothing is written.
/// Returns the message's full length without the NUL: when it is `>= len`
/// the copy was cut, and a buffer of the returned length + 1 holds all of
/// it. Returns 0 when no call on this thread has failed yet.
///
/// The message is the whole cause chain of the error. Calls that succeed
/// leave it unchanged (like `errno`): read it right after the failed call,
/// on the same thread (Go: with the goroutine locked to its OS thread).
///
/// Ownership: `buf` stays the caller's.
/// Thread safety: any thread; each thread has its own last error.
///
/// # Safety
/// `buf` is NULL or valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_last_error(buf: *mut c_char, len: usize) -> usize {
    error::guard_or("seamless_last_error", 0, || {
        // SAFETY: the caller guarantees `buf` is NULL or valid for `len` bytes.
        Ok(unsafe { error::copy_last_error(buf, len) })
    })
}

/// The stable snake_case name of a result code: "ok", the Rust error kind's
/// name for 1 to 17 (e.g. "container_not_found", the `error.kind` of status
/// JSON), "null_argument", "invalid_utf8", "panic", "forked_child", and
/// "unknown" for a number that is no code.
///
/// Ownership: a static string; do not free it.
/// Thread safety: any thread.
#[unsafe(no_mangle)]
pub extern "C" fn seamless_result_name(r: seamless_result_raw) -> *const c_char {
    error::guard_or("seamless_result_name", c"unknown".as_ptr(), || {
        Ok(seamless_result::from_code(r.0)
            .map_or(c"unknown", seamless_result::name)
            .as_ptr())
    })
}

#[cfg(test)]
mod tests;
