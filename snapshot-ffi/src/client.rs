//! The client (a `ContainerdSnapshotter`) and the calls that go through it.

use std::ffi::c_char;
use std::time::Duration;

use ::seamless_snapshot::{
    CommitOptions, Config, ContainerdSnapshotter, Error, SeamlessSnapshot, SnapshotResult,
    SnapshotStatus,
};

use crate::error::{Failure, Out, arg_ref, arg_str, guard, guard_or, opt_str, seamless_result};
use crate::objects::{seamless_snapshot, seamless_status, to_json};

/// How long `seamless_client_free` waits for the runtime's threads: long
/// enough for idle threads to notice the shutdown, short enough not to hang
/// a caller behind an uninterruptible layer build.
const FREE_WAIT: Duration = Duration::from_secs(5);

/// A connection to one containerd namespace and the library's own runtime
/// (the Rust `ContainerdSnapshotter`). Opaque; created by
/// `seamless_client_new`, freed with `seamless_client_free`. Thread-safe:
/// any number of threads may call through one client at once.
#[derive(Debug)]
pub struct seamless_client {
    snapshotter: ContainerdSnapshotter,
    /// The process that created the client. Its runtime's threads exist only
    /// there: a child after `fork()` has the memory but not the threads, so
    /// every call in a child is refused instead of hanging on them.
    pid: u32,
}

impl seamless_client {
    fn snapshotter(&self) -> Result<&ContainerdSnapshotter, Failure> {
        let pid = std::process::id();
        if pid == self.pid {
            Ok(&self.snapshotter)
        } else {
            Err(Failure::new(
                seamless_result::SEAMLESS_FORKED_CHILD,
                format!(
                    "this client was created in process {} and cannot be used in its forked \
                     child {pid}: create a new client in the child",
                    self.pid
                ),
            ))
        }
    }
}

/// Reads the client argument of a call and refuses it in a forked child.
///
/// # Safety
/// `client` is NULL or a live `seamless_client` for `'a`.
unsafe fn client_arg<'a>(
    client: *const seamless_client,
) -> Result<&'a ContainerdSnapshotter, Failure> {
    // SAFETY: forwarded from the caller.
    unsafe { arg_ref(client, "client") }?.snapshotter()
}

/// Hands a commit's outcome to C: `*out` on success, and on a timeout after
/// the capture too (the snapshot exists and goes on); nothing otherwise.
///
/// # Safety
/// `out` came from [`Out::new`] on a pointer valid for a write.
unsafe fn deliver(
    outcome: Result<SnapshotResult, Error>,
    out: Out<*mut seamless_snapshot>,
) -> Result<(), Failure> {
    let store = |result: SnapshotResult| -> Result<(), Failure> {
        let snapshot = Box::new(seamless_snapshot::new(result)?);
        // SAFETY: the caller's contract on `out`.
        unsafe { out.write(Box::into_raw(snapshot)) };
        Ok(())
    };
    match outcome {
        Ok(result) => store(result),
        Err(Error::Timeout {
            snapshot_id,
            timeout,
            capture,
        }) => {
            let e = Error::Timeout {
                snapshot_id,
                timeout,
                capture: None,
            };
            if let Some(result) = capture {
                store(*result)?;
            }
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Checks the arguments every commit function takes (before any work), runs
/// `commit` with them and hands its outcome to C (see [`deliver`]).
///
/// # Safety
/// As the commit functions: `client` is NULL or live, the strings NULL or
/// NUL-terminated, `out` NULL or valid for a write of a pointer.
unsafe fn commit_call(
    client: *const seamless_client,
    container_id: *const c_char,
    target_ref: *const c_char,
    out: *mut *mut seamless_snapshot,
    commit: impl FnOnce(&ContainerdSnapshotter, &str, &str) -> Result<SnapshotResult, Error>,
) -> Result<(), Failure> {
    // SAFETY: the caller guarantees NULL or live.
    let snap = unsafe { client_arg(client) }?;
    // SAFETY: the caller guarantees NULL or NUL-terminated.
    let container_id = unsafe { arg_str(container_id, "container_id") }?;
    // SAFETY: as above.
    let target_ref = unsafe { arg_str(target_ref, "target_ref") }?;
    let out = Out::new(out, "out")?;
    // SAFETY: `out` is valid for a write (the caller's contract).
    unsafe { deliver(commit(snap, container_id, target_ref), out) }
}

/// Checks the arguments of a status function (before any work), runs
/// `read` with them and stores the status in `*out` on success.
///
/// # Safety
/// `client` is NULL or live, `snapshot_id` NULL or NUL-terminated, `out`
/// NULL or valid for a write of a pointer.
unsafe fn status_call(
    client: *const seamless_client,
    snapshot_id: *const c_char,
    out: *mut *mut seamless_status,
    read: impl FnOnce(&ContainerdSnapshotter, &str) -> Result<SnapshotStatus, Error>,
) -> Result<(), Failure> {
    // SAFETY: the caller guarantees NULL or live.
    let snap = unsafe { client_arg(client) }?;
    // SAFETY: the caller guarantees NULL or NUL-terminated.
    let snapshot_id = unsafe { arg_str(snapshot_id, "snapshot_id") }?;
    let out = Out::new(out, "out")?;
    let status = Box::new(seamless_status::new(read(snap, snapshot_id)?));
    // SAFETY: `out` is valid for a write (the caller's contract).
    unsafe { out.write(Box::into_raw(status)) };
    Ok(())
}

/// Creates a client for the containers of one containerd namespace. Creates
/// the state directory (job records, capture copies, layer blobs) and the
/// client's runtime; does not contact containerd yet. Background builds and
/// pushes run on the client's runtime: keep the client until the snapshots
/// you started are completed.
///
/// `containerd_address`: containerd's socket, e.g.
/// "/run/containerd/containerd.sock". `namespace_`: the containerd namespace,
/// e.g. "default". `state_dir`: NULL for the default,
/// "/var/lib/seamless-snapshot".
///
/// Ownership: the strings are only read during the call. On success `*out`
/// is a new client owned by the caller: free it with `seamless_client_free`.
/// Thread safety: any thread.
/// On error: returns the code, sets the last error, leaves `*out` untouched.
///
/// # Safety
/// The string arguments are NULL or NUL-terminated strings; `out` is NULL
/// or valid for a write of a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_client_new(
    containerd_address: *const c_char,
    namespace_: *const c_char,
    state_dir: *const c_char,
    out: *mut *mut seamless_client,
) -> seamless_result {
    guard("seamless_client_new", || {
        // SAFETY: the caller guarantees NULL or NUL-terminated.
        let address = unsafe { arg_str(containerd_address, "containerd_address") }?;
        // SAFETY: as above.
        let namespace = unsafe { arg_str(namespace_, "namespace_") }?;
        // SAFETY: as above.
        let state_dir = unsafe { opt_str(state_dir, "state_dir") }?;
        let out = Out::new(out, "out")?;
        let mut config = Config {
            containerd_address: address.to_string(),
            namespace: namespace.to_string(),
            ..Config::default()
        };
        if let Some(dir) = state_dir {
            config.state_dir = dir.into();
        }
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { create(config, out) }
    })
}

/// Like `seamless_client_new`, with the whole configuration as the JSON of
/// the Rust `Config`; every field is optional and defaults as in Rust:
/// `{"containerd_address": "...", "namespace": "...", "state_dir": "...",
/// "capture_root": null, "freeze_timeout": {"secs": 2, "nanos": 0},
/// "max_pause": {"secs": 10, "nanos": 0}, "docker_config": null,
/// "registry_ca": ["/path/ca.pem"], "registry_certs_dirs":
/// ["/etc/containerd/certs.d", "/etc/docker/certs.d"],
/// "push_retries": 100, "push_retry_budget": {"secs": 300, "nanos": 0},
/// "push_stall_timeout": {"secs": 60, "nanos": 0}, "push_connect_timeout":
/// {"secs": 30, "nanos": 0}, "push_chunk_size": 33554432,
/// "push_concurrency": 3, "keep_failed": true, "background": {"mode":
/// "in_process"}, "defaults": {...options as in
/// seamless_commit_with_options...}}`.
///
/// Ownership: `config_json` is only read during the call. On success `*out`
/// is a new client owned by the caller: free it with `seamless_client_free`.
/// Thread safety: any thread.
/// On error: returns the code (`SEAMLESS_INVALID_ARGUMENT` for JSON that
/// does not parse), sets the last error, leaves `*out` untouched.
///
/// # Safety
/// `config_json` is NULL or a NUL-terminated string; `out` is NULL or valid
/// for a write of a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_client_new_with_config(
    config_json: *const c_char,
    out: *mut *mut seamless_client,
) -> seamless_result {
    guard("seamless_client_new_with_config", || {
        // SAFETY: the caller guarantees NULL or NUL-terminated.
        let json = unsafe { arg_str(config_json, "config_json") }?;
        let out = Out::new(out, "out")?;
        let config: Config = serde_json::from_str(json)
            .map_err(|e| Error::InvalidArgument(format!("config_json: {e}")))?;
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { create(config, out) }
    })
}

/// Creates the client of `config` in `*out`.
///
/// # Safety
/// `out` came from [`Out::new`] on a pointer valid for a write.
unsafe fn create(config: Config, out: Out<*mut seamless_client>) -> Result<(), Failure> {
    let client = Box::new(seamless_client {
        snapshotter: ContainerdSnapshotter::new(config)?,
        pid: std::process::id(),
    });
    // SAFETY: the caller's contract on `out`.
    unsafe { out.write(Box::into_raw(client)) };
    Ok(())
}

/// Frees a client. NULL is a no-op. Snapshots of this client whose
/// background build or push has not finished are stopped and marked failed.
/// Waits up to 5 seconds for the client's runtime threads to exit, so that
/// after the call no thread runs library code (the library may then be
/// unloaded); a layer build in progress is not interrupted, and past that
/// bound it is left to end in the background.
///
/// In a child after `fork()` this releases nothing: the client's memory is
/// left as it is (its runtime's threads and jobs belong to the parent, which
/// must not see them marked failed by the child).
///
/// Ownership: takes `client` back; it is invalid afterwards.
/// Thread safety: no other thread may use `client` during or after the call.
///
/// # Safety
/// `client` is NULL or a `seamless_client` from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_client_free(client: *mut seamless_client) {
    guard_or("seamless_client_free", (), || {
        if client.is_null() {
            return Ok(());
        }
        // SAFETY: made by Box::into_raw in this library and not freed yet
        // (the caller's contract).
        let client = unsafe { Box::from_raw(client) };
        if client.pid != std::process::id() {
            std::mem::forget(client);
        } else {
            client.snapshotter.shutdown(FREE_WAIT);
        }
        Ok(())
    })
}

/// Commits a running container: captures its writable layer at one instant
/// and returns as soon as the container is thawed. The image is built and
/// pushed to `target_ref` (a registry reference, `oci:PATH[:TAG]`,
/// `oci-archive:FILE[:TAG]` or `containerd:NAME`) in the background on the
/// client's runtime; follow it with `seamless_get_status` or
/// `seamless_wait`. Blocks the calling thread for the capture.
///
/// Ownership: the strings are only read during the call. On success `*out`
/// is a new result owned by the caller: free it with `seamless_snapshot_free`.
/// Thread safety: any thread; many threads may commit through one client at
/// once (a second commit of the same container meanwhile is `SEAMLESS_BUSY`).
/// On error: returns the code, sets the last error, leaves `*out` untouched.
///
/// # Safety
/// `client` is NULL or a live client; the strings are NULL or
/// NUL-terminated; `out` is NULL or valid for a write of a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_commit(
    client: *const seamless_client,
    container_id: *const c_char,
    target_ref: *const c_char,
    out: *mut *mut seamless_snapshot,
) -> seamless_result {
    guard("seamless_commit", || {
        // SAFETY: the caller's contract is commit_call's.
        unsafe {
            commit_call(client, container_id, target_ref, out, |snap, c, t| {
                snap.commit(c, t)
            })
        }
    })
}

/// Like `seamless_commit`, then waits up to `timeout_ms` milliseconds (from
/// the start of the call) until the image is pushed; the result then has
/// `manifest_digest` and `layer`.
///
/// When the wait runs out: returns `SEAMLESS_TIMEOUT` and still writes
/// `*out` with the capture's result, because the snapshot exists and its
/// background job goes on under `seamless_snapshot_id(*out)`. When the job
/// fails: `SEAMLESS_JOB_FAILED` (the message names the job's own error kind).
///
/// Ownership: the strings are only read during the call. `*out`, when
/// written, is owned by the caller: free it with `seamless_snapshot_free`.
/// Thread safety: any thread; many threads may commit through one client at
/// once.
/// On error: returns the code and sets the last error; `*out` is written
/// for `SEAMLESS_TIMEOUT` only and left untouched on every other failure.
///
/// # Safety
/// `client` is NULL or a live client; the strings are NULL or
/// NUL-terminated; `out` is NULL or valid for a write of a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_commit_with_wait(
    client: *const seamless_client,
    container_id: *const c_char,
    target_ref: *const c_char,
    timeout_ms: u64,
    out: *mut *mut seamless_snapshot,
) -> seamless_result {
    guard("seamless_commit_with_wait", || {
        let timeout = Duration::from_millis(timeout_ms);
        // SAFETY: the caller's contract is commit_call's.
        unsafe {
            commit_call(client, container_id, target_ref, out, |snap, c, t| {
                snap.commit_with_wait(c, t, timeout)
            })
        }
    })
}

/// Commits with per-commit options. `options_json` is the JSON form of the
/// Rust `CommitOptions` (NULL: all defaults); every field is optional:
/// `{"compression": "gzip"|"zstd"|"none", "compression_level": 6,
/// "compression_threads": 0, "max_sparse_expansion": 17179869184,
/// "labels": {"k": "v"}, "annotations": {"k": "v"}, "message": "...",
/// "author": "...", "insecure_registries": ["host:port"], "extra_xattrs":
/// ["trusted.", "security.selinux"]}` (`compression_level`: gzip 0-9,
/// default 6, zstd 1-22, default 3; `compression_threads`: 0 or null is
/// one per core; `max_sparse_expansion`: the most bytes of holes one sparse
/// file may expand to, default 16 GiB). `timeout_ms` 0 returns after
/// the thaw like `seamless_commit`; otherwise waits like
/// `seamless_commit_with_wait`, including what it writes on a timeout.
///
/// Ownership: the strings are only read during the call. `*out`, when
/// written, is owned by the caller: free it with `seamless_snapshot_free`.
/// Thread safety: any thread; many threads may commit through one client at
/// once.
/// On error: returns the code (`SEAMLESS_INVALID_ARGUMENT` for options JSON
/// that does not parse) and sets the last error; `*out` is written for
/// `SEAMLESS_TIMEOUT` only and left untouched on every other failure.
///
/// # Safety
/// `client` is NULL or a live client; the strings are NULL or
/// NUL-terminated; `out` is NULL or valid for a write of a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_commit_with_options(
    client: *const seamless_client,
    container_id: *const c_char,
    target_ref: *const c_char,
    options_json: *const c_char,
    timeout_ms: u64,
    out: *mut *mut seamless_snapshot,
) -> seamless_result {
    guard("seamless_commit_with_options", || {
        // SAFETY: the caller guarantees NULL or NUL-terminated.
        let options_json = unsafe { opt_str(options_json, "options_json") }?;
        let wait = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
        // SAFETY: the caller's contract is commit_call's.
        unsafe {
            commit_call(client, container_id, target_ref, out, |snap, c, t| {
                let options: CommitOptions = match options_json {
                    None => CommitOptions::default(),
                    Some(json) => serde_json::from_str(json)
                        .map_err(|e| Error::InvalidArgument(format!("options_json: {e}")))?,
                };
                snap.commit_with(c, t, &options, wait)
            })
        }
    })
}

/// Reads the status of a snapshot, from this or any other process sharing
/// the state directory.
///
/// Ownership: `snapshot_id` is only read during the call. On success `*out`
/// is a new status owned by the caller: free it with `seamless_status_free`.
/// Thread safety: any thread, concurrently with any other call.
/// On error: returns the code (`SEAMLESS_SNAPSHOT_NOT_FOUND` for an unknown
/// id), sets the last error, leaves `*out` untouched.
///
/// # Safety
/// `client` is NULL or a live client; `snapshot_id` is NULL or
/// NUL-terminated; `out` is NULL or valid for a write of a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_get_status(
    client: *const seamless_client,
    snapshot_id: *const c_char,
    out: *mut *mut seamless_status,
) -> seamless_result {
    guard("seamless_get_status", || {
        // SAFETY: the caller's contract is status_call's.
        unsafe { status_call(client, snapshot_id, out, |snap, id| snap.get_status(id)) }
    })
}

/// Waits up to `timeout_ms` milliseconds until a snapshot is completed and
/// returns its final status. Blocks the calling thread.
///
/// Ownership: `snapshot_id` is only read during the call. On success `*out`
/// is a new status owned by the caller: free it with `seamless_status_free`.
/// Thread safety: any thread, concurrently with any other call.
/// On error: returns the code (`SEAMLESS_TIMEOUT` when the time ran out:
/// the job goes on; `SEAMLESS_JOB_FAILED` when it failed), sets the last
/// error, leaves `*out` untouched.
///
/// # Safety
/// `client` is NULL or a live client; `snapshot_id` is NULL or
/// NUL-terminated; `out` is NULL or valid for a write of a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_wait(
    client: *const seamless_client,
    snapshot_id: *const c_char,
    timeout_ms: u64,
    out: *mut *mut seamless_status,
) -> seamless_result {
    guard("seamless_wait", || {
        let timeout = Duration::from_millis(timeout_ms);
        // SAFETY: the caller's contract is status_call's.
        unsafe { status_call(client, snapshot_id, out, |snap, id| snap.wait(id, timeout)) }
    })
}

/// Every snapshot in the client's state directory, oldest first, as a JSON
/// array of statuses (the form of `seamless_status_to_json`).
///
/// Ownership: on success `*out_json` is a new string owned by the caller:
/// free it with `seamless_string_free`.
/// Thread safety: any thread, concurrently with any other call.
/// On error: returns the code, sets the last error, leaves `*out_json`
/// untouched.
///
/// # Safety
/// `client` is NULL or a live client; `out_json` is NULL or valid for a
/// write of a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_list(
    client: *const seamless_client,
    out_json: *mut *mut c_char,
) -> seamless_result {
    guard("seamless_list", || {
        // SAFETY: the caller guarantees NULL or live.
        let snap = unsafe { client_arg(client) }?;
        let out = Out::new(out_json, "out_json")?;
        let s = to_json(&snap.list()?)?;
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { out.write(s) };
        Ok(())
    })
}
