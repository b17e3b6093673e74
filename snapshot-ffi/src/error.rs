//! Result codes, the thread-local last error, argument checks and the panic
//! boundary that every entry point goes through.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use ::seamless_snapshot::{Error, ErrorKind};

/// What a call returned. `SEAMLESS_OK` (0) is success; 1 to 17 are the
/// library's error kinds with the numbers of the Rust `ErrorKind::code`
/// (the `error.code` of status JSON); 100 and up are errors of the C
/// boundary itself. Numbers are never renumbered or reused; new codes may be
/// added, so treat an unknown one as an error (`seamless_result_name` then
/// returns "unknown").
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum seamless_result {
    /// Success.
    SEAMLESS_OK = 0,
    /// `container_not_found`: no such container in the client's namespace.
    SEAMLESS_CONTAINER_NOT_FOUND = 1,
    /// `container_not_running`: the container has no running task (stopped,
    /// paused, or its cgroup already frozen).
    SEAMLESS_CONTAINER_NOT_RUNNING = 2,
    /// `unsupported`: its root filesystem is not kernel overlayfs (or uses
    /// `redirect_dir`/`metacopy`), or there is no usable freezer cgroup.
    SEAMLESS_UNSUPPORTED = 3,
    /// `invalid_reference`: the target (registry reference, `oci:`,
    /// `oci-archive:` or `containerd:` form) does not parse (nothing was
    /// touched).
    SEAMLESS_INVALID_REFERENCE = 4,
    /// `registry_unauthorized`: the registry refused the credentials.
    SEAMLESS_REGISTRY_UNAUTHORIZED = 5,
    /// `registry_unreachable`: transport errors persisted through the retries.
    SEAMLESS_REGISTRY_UNREACHABLE = 6,
    /// `registry`: any other registry error.
    SEAMLESS_REGISTRY = 7,
    /// `containerd`: containerd unreachable, or an unexpected gRPC error.
    SEAMLESS_CONTAINERD = 8,
    /// `freeze`: freezing or thawing failed, or the frozen window overran its
    /// bound (the container was thawed).
    SEAMLESS_FREEZE = 9,
    /// `io`: a filesystem error; the message names the path.
    SEAMLESS_IO = 10,
    /// `timeout`: a wait ran out; the snapshot goes on under its id.
    SEAMLESS_TIMEOUT = 11,
    /// `snapshot_not_found`: unknown snapshot id.
    SEAMLESS_SNAPSHOT_NOT_FOUND = 12,
    /// `job_failed`: the background build or push failed; the message names
    /// the job's own error kind.
    SEAMLESS_JOB_FAILED = 13,
    /// `invalid_argument`: a bad option, options JSON or id.
    SEAMLESS_INVALID_ARGUMENT = 14,
    /// `invalid_image`: malformed base image data, or the base image is gone.
    SEAMLESS_INVALID_IMAGE = 15,
    /// `internal`: a bug, or the background worker died.
    SEAMLESS_INTERNAL = 16,
    /// `busy`: another commit of the same container is in progress, or a
    /// file lease on one of its files was not released.
    SEAMLESS_BUSY = 17,
    /// `null_argument`: a required pointer argument was NULL. Nothing was done.
    SEAMLESS_NULL_ARGUMENT = 100,
    /// `invalid_utf8`: a string argument is not UTF-8. Nothing was done.
    SEAMLESS_INVALID_UTF8 = 101,
    /// `panic`: the library panicked (a bug); the panic was caught at the
    /// boundary and its message is the last error. The client stays usable.
    SEAMLESS_PANIC = 102,
    /// `forked_child`: the client was created in another process and this is
    /// a child of it after `fork()`. Nothing was done: create a new client in
    /// the child.
    SEAMLESS_FORKED_CHILD = 103,
}

use seamless_result::*;

/// A `seamless_result` as it arrives from C: any 32-bit value. Reading an
/// out-of-range value as the Rust enum would be undefined behaviour, so the
/// one function taking a result takes this instead. The header shows it as
/// `seamless_result` (cbindgen.toml renames it and does not emit it); a C
/// enum of these values is a 32-bit unsigned int, the same ABI.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct seamless_result_raw(pub u32);

impl seamless_result {
    /// Every code, in numeric order.
    const ALL: [seamless_result; 22] = [
        SEAMLESS_OK,
        SEAMLESS_CONTAINER_NOT_FOUND,
        SEAMLESS_CONTAINER_NOT_RUNNING,
        SEAMLESS_UNSUPPORTED,
        SEAMLESS_INVALID_REFERENCE,
        SEAMLESS_REGISTRY_UNAUTHORIZED,
        SEAMLESS_REGISTRY_UNREACHABLE,
        SEAMLESS_REGISTRY,
        SEAMLESS_CONTAINERD,
        SEAMLESS_FREEZE,
        SEAMLESS_IO,
        SEAMLESS_TIMEOUT,
        SEAMLESS_SNAPSHOT_NOT_FOUND,
        SEAMLESS_JOB_FAILED,
        SEAMLESS_INVALID_ARGUMENT,
        SEAMLESS_INVALID_IMAGE,
        SEAMLESS_INTERNAL,
        SEAMLESS_BUSY,
        SEAMLESS_NULL_ARGUMENT,
        SEAMLESS_INVALID_UTF8,
        SEAMLESS_PANIC,
        SEAMLESS_FORKED_CHILD,
    ];

    /// The code with this number, if there is one.
    pub(crate) fn from_code(code: u32) -> Option<seamless_result> {
        Self::ALL.into_iter().find(|r| *r as u32 == code)
    }

    /// The code of an error kind: the same number. A kind this build does
    /// not know (the core's `ErrorKind` is non-exhaustive) reads as
    /// internal; the unit tests fail before such a build ships.
    pub(crate) fn of_kind(kind: ErrorKind) -> seamless_result {
        match Self::from_code(kind.code()) {
            Some(r) if ErrorKind::from_code(r as u32) == Some(kind) => r,
            _ => SEAMLESS_INTERNAL,
        }
    }

    /// The stable snake_case name: the core's `ErrorKind` name for 1..=17.
    pub(crate) fn name(self) -> &'static CStr {
        match self {
            SEAMLESS_OK => c"ok",
            SEAMLESS_NULL_ARGUMENT => c"null_argument",
            SEAMLESS_INVALID_UTF8 => c"invalid_utf8",
            SEAMLESS_PANIC => c"panic",
            SEAMLESS_FORKED_CHILD => c"forked_child",
            kind => kind_name(kind as u32).unwrap_or(c"unknown"),
        }
    }
}

/// The core's kind names as C strings, built once, so that the names have a
/// single source (`ErrorKind::as_str`).
fn kind_name(code: u32) -> Option<&'static CStr> {
    static NAMES: OnceLock<Vec<(u32, CString)>> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        ErrorKind::ALL
            .iter()
            .filter_map(|k| Some((k.code(), CString::new(k.as_str()).ok()?)))
            .collect()
    });
    names
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| n.as_c_str())
}

/// A failed call: the code it returns and the message left for
/// `seamless_last_error`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: seamless_result,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: seamless_result, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn null(arg: &str) -> Failure {
        Failure::new(SEAMLESS_NULL_ARGUMENT, format!("argument {arg} is NULL"))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(seamless_result::of_kind(e.kind()), e.full_message())
    }
}

thread_local! {
    /// The message of the last failed call on this thread.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

#[cfg(test)]
thread_local! {
    /// Set by a unit test: the next guarded call on this thread panics inside
    /// the guard, as a bug in the library would.
    pub(crate) static PANIC_NEXT_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs the body of an entry point. A `Failure` and a panic become the
/// returned code and this thread's last error; nothing unwinds into C.
pub(crate) fn run<T>(
    func: &str,
    body: impl FnOnce() -> Result<T, Failure>,
) -> Result<T, seamless_result> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        #[cfg(test)]
        if PANIC_NEXT_CALL.with(|p| p.replace(false)) {
            panic!("injected by a unit test");
        }
        body()
    }));
    let failure = match outcome {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(f)) => f,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            Failure::new(SEAMLESS_PANIC, format!("panic in {func}: {what}"))
        }
    };
    LAST_ERROR.with_borrow_mut(|m| *m = failure.message);
    Err(failure.code)
}

/// [`run`] for entry points returning a code.
pub(crate) fn guard(func: &str, body: impl FnOnce() -> Result<(), Failure>) -> seamless_result {
    match run(func, body) {
        Ok(()) => SEAMLESS_OK,
        Err(code) => code,
    }
}

/// [`run`] for entry points returning a value: `fallback` on failure.
pub(crate) fn guard_or<T>(func: &str, fallback: T, body: impl FnOnce() -> Result<T, Failure>) -> T {
    run(func, body).unwrap_or(fallback)
}

/// Copies this thread's last error message into `buf`; see
/// `seamless_last_error`.
///
/// # Safety
/// `buf` is NULL or valid for writes of `len` bytes.
pub(crate) unsafe fn copy_last_error(buf: *mut c_char, len: usize) -> usize {
    LAST_ERROR.with_borrow(|message| {
        if !buf.is_null() && len > 0 {
            // Cut at a character boundary so that the copy stays UTF-8.
            let mut n = message.len().min(len - 1);
            while !message.is_char_boundary(n) {
                n -= 1;
            }
            // SAFETY: the caller guarantees `buf` is valid for `len` bytes and
            // n + 1 <= len; `message` is a distinct Rust allocation.
            unsafe {
                std::ptr::copy_nonoverlapping(message.as_ptr(), buf.cast::<u8>(), n);
                buf.add(n).write(0);
            }
        }
        message.len()
    })
}

/// Reads a required string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and
/// unchanged for `'a`.
pub(crate) unsafe fn arg_str<'a>(p: *const c_char, name: &str) -> Result<&'a str, Failure> {
    // SAFETY: forwarded from the caller.
    unsafe { opt_str(p, name) }?.ok_or_else(|| Failure::null(name))
}

/// Reads an optional string argument (NULL: `None`).
///
/// # Safety
/// As [`arg_str`].
pub(crate) unsafe fn opt_str<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL, and the caller guarantees a NUL-terminated string
    // valid for 'a.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map(Some).map_err(|e| {
        Failure::new(
            SEAMLESS_INVALID_UTF8,
            format!("argument {name} is not UTF-8: {e}"),
        )
    })
}

/// Reads a required object argument.
///
/// # Safety
/// `p` is NULL or points to a live `T` that is not freed during `'a`.
pub(crate) unsafe fn arg_ref<'a, T>(p: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller guarantees that a non-NULL `p` points to a live T.
    unsafe { p.as_ref() }.ok_or_else(|| Failure::null(name))
}

/// An output argument: where a call stores what it created. Checked before
/// the call does any work, written only on success.
#[derive(Debug)]
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    /// Checks an output argument.
    pub(crate) fn new(p: *mut T, name: &str) -> Result<Out<T>, Failure> {
        if p.is_null() {
            Err(Failure::null(name))
        } else {
            Ok(Out(p))
        }
    }

    /// Stores `value`. The previous content of `*p` is not read or dropped:
    /// it is the caller's uninitialised variable.
    ///
    /// # Safety
    /// The pointer given to [`Out::new`] is valid for a write of a `T`.
    pub(crate) unsafe fn write(self, value: T) {
        // SAFETY: non-NULL (checked in `new`) and valid by the caller's
        // contract; `write` does not drop the old value.
        unsafe { self.0.write(value) }
    }
}

/// A C string made by this library, for the caller to free with
/// `seamless_string_free`. JSON never contains NUL (serde_json escapes it).
pub(crate) fn owned_c_string(s: String) -> Result<*mut c_char, Failure> {
    CString::new(s)
        .map(CString::into_raw)
        .map_err(|e| Failure::new(SEAMLESS_INTERNAL, format!("string with a NUL byte: {e}")))
}
