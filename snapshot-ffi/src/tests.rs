//! Unit tests of the boundary: codes and names, NULL and non-UTF-8
//! arguments, the panic guard, the last error, JSON round trips, fork.
//! Nothing here needs containerd: a client is created without contacting it.

use std::ffi::{CStr, CString, c_char};
use std::ptr::{self, NonNull};

use ::seamless_snapshot::{ErrorKind, SnapshotResult, SnapshotState, SnapshotStatus};

use crate::error::PANIC_NEXT_CALL;
use crate::*;

const HEADER: &str = include_str!("../../include/seamless.h");

/// A value no call may write: "untouched" means it is still there.
fn sentinel<T>() -> *mut T {
    NonNull::dangling().as_ptr()
}

fn name_of(code: u32) -> String {
    let p = seamless_result_name(seamless_result_raw(code));
    // SAFETY: seamless_result_name returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
}

fn last_error() -> String {
    // SAFETY: NULL with len 0 writes nothing.
    let n = unsafe { seamless_last_error(ptr::null_mut(), 0) };
    let mut buf = vec![0u8; n + 1];
    // SAFETY: buf is valid for buf.len() bytes.
    let m = unsafe { seamless_last_error(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(m, n);
    CStr::from_bytes_until_nul(&buf)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// Owns a client made with a private state directory.
struct Client {
    ptr: *mut seamless_client,
    _state: tempfile::TempDir,
}

impl Client {
    fn new() -> Client {
        let state = tempfile::tempdir().unwrap();
        let dir = CString::new(state.path().to_str().unwrap()).unwrap();
        let mut ptr = ptr::null_mut();
        // SAFETY: NUL-terminated strings and a valid out pointer.
        let r = unsafe {
            seamless_client_new(
                c"/nonexistent/containerd.sock".as_ptr(),
                c"default".as_ptr(),
                dir.as_ptr(),
                &mut ptr,
            )
        };
        assert_eq!(r, seamless_result::SEAMLESS_OK, "{}", last_error());
        assert!(!ptr.is_null());
        Client { ptr, _state: state }
    }

    fn get_status(&self, id: &CStr) -> (seamless_result, *mut seamless_status) {
        let mut out = sentinel();
        // SAFETY: a live client, a NUL-terminated id, a valid out pointer.
        let r = unsafe { seamless_get_status(self.ptr, id.as_ptr(), &mut out) };
        (r, out)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // SAFETY: made by seamless_client_new, freed once here.
        unsafe { seamless_client_free(self.ptr) };
    }
}

fn sample_result() -> SnapshotResult {
    // Built from JSON: the result is a read-only, non-exhaustive value.
    serde_json::from_value(serde_json::json!({
        "snapshot_id": "20261129T000000-abcdef",
        "container_id": "c1",
        "target_ref": "registry.example/team/img:tag",
        "pause_time": 0.0015,
        "total_time": 0.9,
        "old_upper_dir": "/state/jobs/x/capture",
        "new_upper_dir": "/root/snapshots/2/fs",
        "files_captured": 3,
        "bytes_captured": 4096,
        "capture_strategy": "copy_file_range",
        "freezer": "v2",
        "captured_at": "2026-11-29T00:00:00Z",
        "base_image": "base:latest",
        "manifest_digest": "sha256:00",
        "layer": null
    }))
    .unwrap()
}

/// A status in `state` with `done` of `total` bytes of its phase.
fn sample_status(id: &str, state: &str, done: u64, total: u64) -> SnapshotStatus {
    serde_json::from_value(serde_json::json!({
        "snapshot_id": id,
        "container_id": "c1",
        "target_ref": "r/x:y",
        "state": state,
        "progress": {"done": done, "total": total},
        "timings": {},
        "error": null,
        "manifest_digest": null,
        "layer": null,
        "created_at": "2026-11-29T00:00:00Z",
        "updated_at": "2026-11-29T00:00:00Z"
    }))
    .unwrap()
}

/// Takes an owned string from the library and frees it.
fn take_string(p: *mut c_char) -> String {
    assert!(!p.is_null(), "{}", last_error());
    // SAFETY: a NUL-terminated string the library returned as owned.
    let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string();
    // SAFETY: owned, not freed yet.
    unsafe { seamless_string_free(p) };
    s
}

#[test]
fn every_error_kind_has_its_code_and_name() {
    for kind in ErrorKind::ALL {
        let r = seamless_result::of_kind(kind);
        assert_eq!(r as u32, kind.code(), "{kind}");
        assert_eq!(name_of(kind.code()), kind.as_str());
        // The header spells it SEAMLESS_<KIND> = <code>.
        let line = format!(
            "SEAMLESS_{} = {},",
            kind.as_str().to_uppercase(),
            kind.code()
        );
        assert!(HEADER.contains(&line), "include/seamless.h lacks {line:?}");
    }
    // Nothing else lives in the kinds' range.
    let kinds_in_enum = (1..100)
        .filter(|c| seamless_result::from_code(*c).is_some())
        .count();
    assert_eq!(kinds_in_enum, ErrorKind::ALL.len());
}

#[test]
fn boundary_codes_and_names_are_stable() {
    let fixed = [
        (seamless_result::SEAMLESS_OK, 0, "ok"),
        (
            seamless_result::SEAMLESS_NULL_ARGUMENT,
            100,
            "null_argument",
        ),
        (seamless_result::SEAMLESS_INVALID_UTF8, 101, "invalid_utf8"),
        (seamless_result::SEAMLESS_PANIC, 102, "panic"),
        (seamless_result::SEAMLESS_FORKED_CHILD, 103, "forked_child"),
    ];
    for (r, code, name) in fixed {
        assert_eq!(r as u32, code);
        assert_eq!(name_of(code), name);
        let line = format!("SEAMLESS_{} = {code},", name.to_uppercase());
        assert!(HEADER.contains(&line), "include/seamless.h lacks {line:?}");
        assert!(ErrorKind::from_code(code).is_none(), "{code} collides");
    }
    for unknown in [18, 99, 104, u32::MAX] {
        assert_eq!(name_of(unknown), "unknown");
    }
}

#[test]
fn header_states_the_default_state_dir() {
    let default = ::seamless_snapshot::Config::DEFAULT_STATE_DIR;
    assert!(HEADER.contains(&format!("\"{default}\"")));
}

#[test]
fn null_arguments_are_rejected_and_outputs_untouched() {
    use seamless_result::SEAMLESS_NULL_ARGUMENT as NULL_ARG;
    let client = Client::new();
    let c = client.ptr.cast_const();
    let s = c"x".as_ptr();
    let n: *const c_char = ptr::null();

    let mut out_client = sentinel();
    // SAFETY: every pointer passed below is NULL, a live client, a
    // NUL-terminated string or a valid out pointer.
    unsafe {
        assert_eq!(seamless_client_new(n, s, n, &mut out_client), NULL_ARG);
        assert!(last_error().contains("containerd_address"));
        assert_eq!(seamless_client_new(s, n, n, &mut out_client), NULL_ARG);
        assert!(last_error().contains("namespace_"));
        assert_eq!(seamless_client_new(s, s, n, ptr::null_mut()), NULL_ARG);
        assert_eq!(out_client, sentinel());

        let mut out = sentinel();
        assert_eq!(seamless_commit(ptr::null(), s, s, &mut out), NULL_ARG);
        assert!(last_error().contains("client"));
        assert_eq!(seamless_commit(c, n, s, &mut out), NULL_ARG);
        assert!(last_error().contains("container_id"));
        assert_eq!(seamless_commit(c, s, n, &mut out), NULL_ARG);
        assert!(last_error().contains("target_ref"));
        assert_eq!(seamless_commit(c, s, s, ptr::null_mut()), NULL_ARG);
        assert!(last_error().contains("out"));
        assert_eq!(seamless_commit_with_wait(c, n, s, 1, &mut out), NULL_ARG);
        assert_eq!(
            seamless_commit_with_options(c, s, n, n, 0, &mut out),
            NULL_ARG
        );
        assert_eq!(out, sentinel());

        let mut st = sentinel();
        assert_eq!(seamless_get_status(c, n, &mut st), NULL_ARG);
        assert_eq!(seamless_get_status(c, s, ptr::null_mut()), NULL_ARG);
        assert_eq!(seamless_wait(ptr::null(), s, 1, &mut st), NULL_ARG);
        assert_eq!(st, sentinel());
        assert_eq!(seamless_list(c, ptr::null_mut()), NULL_ARG);

        assert!(seamless_snapshot_id(ptr::null()).is_null());
        assert!(last_error().contains("argument s is NULL"));
        assert!(seamless_snapshot_old_upper_dir(ptr::null()).is_null());
        assert!(seamless_snapshot_new_upper_dir(ptr::null()).is_null());
        assert!(seamless_snapshot_to_json(ptr::null()).is_null());
        assert_eq!(seamless_snapshot_pause_ns(ptr::null()), 0);
        assert_eq!(seamless_snapshot_total_ns(ptr::null()), 0);
        assert_eq!(
            seamless_status_state(ptr::null()),
            seamless_state::SEAMLESS_STATE_INVALID
        );
        assert_eq!(seamless_status_progress(ptr::null()), -1.0);
        assert!(seamless_status_to_json(ptr::null()).is_null());

        // Freeing NULL is a no-op.
        seamless_client_free(ptr::null_mut());
        seamless_snapshot_free(ptr::null_mut());
        seamless_status_free(ptr::null_mut());
        seamless_string_free(ptr::null_mut());
    }
}

#[test]
fn non_utf8_strings_are_rejected() {
    let client = Client::new();
    let bad = c"caf\xe9";
    let ok = c"localhost:5000/x:y";
    let mut out = sentinel();
    // SAFETY: NUL-terminated strings, a live client, valid out pointers.
    unsafe {
        let mut c = sentinel();
        let r = seamless_client_new(ok.as_ptr(), bad.as_ptr(), ptr::null(), &mut c);
        assert_eq!(r, seamless_result::SEAMLESS_INVALID_UTF8);
        assert_eq!(c, sentinel());
        let r = seamless_commit(client.ptr, bad.as_ptr(), ok.as_ptr(), &mut out);
        assert_eq!(r, seamless_result::SEAMLESS_INVALID_UTF8);
        assert!(last_error().contains("container_id is not UTF-8"));
        let r = seamless_commit_with_options(
            client.ptr,
            ok.as_ptr(),
            ok.as_ptr(),
            bad.as_ptr(),
            0,
            &mut out,
        );
        assert_eq!(r, seamless_result::SEAMLESS_INVALID_UTF8);
        assert!(last_error().contains("options_json"));
    }
    assert_eq!(out, sentinel());
}

#[test]
fn core_errors_map_to_their_codes_and_leave_outputs_untouched() {
    let client = Client::new();
    let (r, out) = client.get_status(c"20260101T000000-000000000000");
    assert_eq!(r, seamless_result::SEAMLESS_SNAPSHOT_NOT_FOUND);
    assert_eq!(out, sentinel());
    assert!(last_error().contains("not found"), "{}", last_error());
    let (r, _) = client.get_status(c"../escape");
    assert_eq!(r, seamless_result::SEAMLESS_INVALID_ARGUMENT);

    let mut snap = sentinel();
    // SAFETY: a live client, NUL-terminated strings, a valid out pointer.
    let r = unsafe {
        seamless_commit(
            client.ptr,
            c"c1".as_ptr(),
            c"localhost:5000/x:y".as_ptr(),
            &mut snap,
        )
    };
    // The socket does not exist.
    assert_eq!(r, seamless_result::SEAMLESS_CONTAINERD, "{}", last_error());
    assert_eq!(snap, sentinel());
    // SAFETY: as above.
    let r = unsafe {
        seamless_commit_with_wait(
            client.ptr,
            c"c1".as_ptr(),
            c"not a reference".as_ptr(),
            1000,
            &mut snap,
        )
    };
    assert_eq!(r, seamless_result::SEAMLESS_INVALID_REFERENCE);
    assert_eq!(snap, sentinel());

    let mut list = ptr::null_mut();
    // SAFETY: a live client and a valid out pointer.
    let r = unsafe { seamless_list(client.ptr, &mut list) };
    assert_eq!(r, seamless_result::SEAMLESS_OK);
    assert_eq!(take_string(list), "[]");
}

#[test]
fn a_client_from_config_json() {
    let state = tempfile::tempdir().unwrap();
    let json = serde_json::json!({
        "containerd_address": "/nonexistent/containerd.sock",
        "state_dir": state.path(),
        "max_pause": {"secs": 1, "nanos": 0},
        "defaults": {"compression": "zstd"},
    });
    let json = CString::new(json.to_string()).unwrap();
    let mut client = ptr::null_mut();
    // SAFETY: a NUL-terminated string and a valid out pointer.
    let r = unsafe { seamless_client_new_with_config(json.as_ptr(), &mut client) };
    assert_eq!(r, seamless_result::SEAMLESS_OK, "{}", last_error());
    assert!(state.path().exists());
    // SAFETY: made just above, freed once.
    unsafe { seamless_client_free(client) };

    for bad in [
        c"{\"push_retries\": \"x\"}",
        c"{\"background\": {\"mode\": \"elsewhere\"}}",
    ] {
        let mut out = sentinel();
        // SAFETY: a NUL-terminated string and a valid out pointer.
        let r = unsafe { seamless_client_new_with_config(bad.as_ptr(), &mut out) };
        assert_eq!(r, seamless_result::SEAMLESS_INVALID_ARGUMENT, "{bad:?}");
        assert!(last_error().contains("config_json: "), "{}", last_error());
        assert_eq!(out, sentinel());
    }
}

#[test]
fn options_json_that_does_not_parse_is_invalid_argument() {
    let client = Client::new();
    for json in [c"{", c"{\"compression\": \"lz4\"}", c"{\"labels\": 5}"] {
        let mut out = sentinel();
        // SAFETY: a live client, NUL-terminated strings, a valid out pointer.
        let r = unsafe {
            seamless_commit_with_options(
                client.ptr,
                c"c1".as_ptr(),
                c"localhost:5000/x:y".as_ptr(),
                json.as_ptr(),
                0,
                &mut out,
            )
        };
        assert_eq!(r, seamless_result::SEAMLESS_INVALID_ARGUMENT, "{json:?}");
        assert!(last_error().contains("options_json: "), "{}", last_error());
        assert_eq!(out, sentinel());
    }
}

#[test]
fn a_panic_is_caught_at_the_boundary() {
    let client = Client::new();
    PANIC_NEXT_CALL.with(|p| p.set(true));
    let (r, out) = client.get_status(c"20260101T000000-000000000000");
    assert_eq!(r, seamless_result::SEAMLESS_PANIC);
    assert_eq!(out, sentinel());
    assert_eq!(
        last_error(),
        "panic in seamless_get_status: injected by a unit test"
    );
    // Accessors return their fallback.
    PANIC_NEXT_CALL.with(|p| p.set(true));
    assert_eq!(name_of(0), "unknown");
    // The client is still usable.
    let (r, _) = client.get_status(c"20260101T000000-000000000000");
    assert_eq!(r, seamless_result::SEAMLESS_SNAPSHOT_NOT_FOUND);
}

#[test]
fn last_error_is_cut_at_len_and_reports_the_full_length() {
    let client = Client::new();
    // "ü" is two bytes: a cut inside it must back off to before it.
    let (r, _) = client.get_status(c"\xc3\xbc");
    assert_eq!(r, seamless_result::SEAMLESS_INVALID_ARGUMENT);
    let full = last_error();
    let at = full.find('ü').expect("message names the id");
    let mut buf = [0x55u8; 64];
    // SAFETY: buf is valid for `at + 2` bytes.
    let n = unsafe { seamless_last_error(buf.as_mut_ptr().cast(), at + 2) };
    assert_eq!(n, full.len());
    assert_eq!(&buf[..at], &full.as_bytes()[..at]);
    assert_eq!(buf[at], 0, "cut before the two-byte character");
    assert_eq!(buf[at + 2], 0x55, "nothing written past len");
    // len 0 writes nothing.
    // SAFETY: len 0: nothing is written.
    let n = unsafe { seamless_last_error(buf.as_mut_ptr().cast(), 0) };
    assert_eq!(n, full.len());
    // Each thread has its own.
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "");
}

#[test]
fn snapshot_accessors_and_json_round_trip() {
    let result = sample_result();
    let snap = Box::into_raw(Box::new(seamless_snapshot::new(result.clone()).unwrap()));
    // SAFETY: a live snapshot, freed once at the end; the borrowed strings
    // are read before that.
    unsafe {
        let id = CStr::from_ptr(seamless_snapshot_id(snap));
        assert_eq!(id.to_str().unwrap(), result.snapshot_id);
        let old = CStr::from_ptr(seamless_snapshot_old_upper_dir(snap));
        assert_eq!(old.to_str().unwrap(), "/state/jobs/x/capture");
        let new = CStr::from_ptr(seamless_snapshot_new_upper_dir(snap));
        assert_eq!(new.to_str().unwrap(), "/root/snapshots/2/fs");
        assert_eq!(seamless_snapshot_pause_ns(snap), 1_500_000);
        assert_eq!(seamless_snapshot_total_ns(snap), 900_000_000);
        let json = take_string(seamless_snapshot_to_json(snap));
        let back: SnapshotResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, result);
        seamless_snapshot_free(snap);
    }
}

#[test]
fn status_accessors_and_json_round_trip() {
    let status = sample_status("20261129T000000-abcdef", "pushing", 1, 4);
    let s = Box::into_raw(Box::new(seamless_status::new(status.clone())));
    // SAFETY: a live status, freed once at the end.
    unsafe {
        assert_eq!(
            seamless_status_state(s),
            seamless_state::SEAMLESS_STATE_PUSHING
        );
        assert_eq!(seamless_status_progress(s), 0.25);
        let json = take_string(seamless_status_to_json(s));
        let back: SnapshotStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status);
        seamless_status_free(s);
    }
    let unknown_total = seamless_status::new(sample_status("a", "pending", 0, 0));
    // SAFETY: a live status on the stack.
    assert_eq!(unsafe { seamless_status_progress(&unknown_total) }, 0.0);
}

#[test]
fn every_state_has_its_number() {
    let states = [
        (SnapshotState::Pending, 0),
        (SnapshotState::Capturing, 1),
        (SnapshotState::Captured, 2),
        (SnapshotState::Building, 3),
        (SnapshotState::Pushing, 4),
        (SnapshotState::Completed, 5),
        (SnapshotState::Failed, 6),
    ];
    for (state, n) in states {
        assert_eq!(seamless_state::from(state) as u32, n);
        let line = format!("SEAMLESS_STATE_{} = {n},", state.to_string().to_uppercase());
        assert!(HEADER.contains(&line), "include/seamless.h lacks {line:?}");
    }
}

#[test]
fn a_forked_child_is_refused() {
    let client = Client::new();
    // SAFETY: the child only calls into this library (getpid, a thread-local
    // message, a code) and leaves with _exit, running no destructors.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let (r, out) = client.get_status(c"20260101T000000-000000000000");
        let ok = r == seamless_result::SEAMLESS_FORKED_CHILD
            && out == sentinel()
            && last_error().contains("forked child");
        // Releases nothing in the child (the parent's runtime is not here).
        // SAFETY: the client pointer is the parent's live one, inherited.
        unsafe { seamless_client_free(client.ptr) };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child with a valid status pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child did not see SEAMLESS_FORKED_CHILD (status {status:#x})"
    );
    // The parent's client works on.
    let (r, _) = client.get_status(c"20260101T000000-000000000000");
    assert_eq!(r, seamless_result::SEAMLESS_SNAPSHOT_NOT_FOUND);
}
