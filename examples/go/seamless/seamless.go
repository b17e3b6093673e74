// Package seamless binds libseamless, the C ABI of seamless-snapshot
// (include/seamless.h), with cgo. It is a thin translation: every function
// calls its C counterpart, copies what it returned into Go values, frees the
// C objects, and turns a failed call into an *Error carrying its code.
//
// Build with the library installed where pkg-config finds seamless.pc
// (snapshot-ffi/install.sh; PKG_CONFIG_PATH for another prefix).
package seamless

/*
#cgo pkg-config: seamless
#include <stdlib.h>
#include <seamless.h>
*/
import "C"

import (
	"fmt"
	"runtime"
	"time"
	"unsafe"
)

// Code is a seamless_result: 1 to 17 are the library's error kinds, 100 and
// up errors of the C boundary. The numbers are stable.
type Code uint32

// The codes of include/seamless.h.
const (
	OK                   Code = C.SEAMLESS_OK
	ContainerNotFound    Code = C.SEAMLESS_CONTAINER_NOT_FOUND
	ContainerNotRunning  Code = C.SEAMLESS_CONTAINER_NOT_RUNNING
	Unsupported          Code = C.SEAMLESS_UNSUPPORTED
	InvalidReference     Code = C.SEAMLESS_INVALID_REFERENCE
	RegistryUnauthorized Code = C.SEAMLESS_REGISTRY_UNAUTHORIZED
	RegistryUnreachable  Code = C.SEAMLESS_REGISTRY_UNREACHABLE
	Registry             Code = C.SEAMLESS_REGISTRY
	Containerd           Code = C.SEAMLESS_CONTAINERD
	Freeze               Code = C.SEAMLESS_FREEZE
	IO                   Code = C.SEAMLESS_IO
	Timeout              Code = C.SEAMLESS_TIMEOUT
	SnapshotNotFound     Code = C.SEAMLESS_SNAPSHOT_NOT_FOUND
	JobFailed            Code = C.SEAMLESS_JOB_FAILED
	InvalidArgument      Code = C.SEAMLESS_INVALID_ARGUMENT
	InvalidImage         Code = C.SEAMLESS_INVALID_IMAGE
	Internal             Code = C.SEAMLESS_INTERNAL
	Busy                 Code = C.SEAMLESS_BUSY
	NullArgument         Code = C.SEAMLESS_NULL_ARGUMENT
	InvalidUTF8          Code = C.SEAMLESS_INVALID_UTF8
	Panic                Code = C.SEAMLESS_PANIC
	ForkedChild          Code = C.SEAMLESS_FORKED_CHILD
)

// String is the code's stable name, e.g. "container_not_found".
func (c Code) String() string {
	return C.GoString(C.seamless_result_name(C.seamless_result(c)))
}

// Error is a failed call: its code and the library's message (the whole
// cause chain). Test the code with errors.As:
//
//	var e *seamless.Error
//	if errors.As(err, &e) && e.Code == seamless.Timeout { ... }
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("seamless: %s (%d): %s", e.Code, uint32(e.Code), e.Message)
}

// call runs one C call and, when it fails, reads the thread-local last error.
// The goroutine stays on one OS thread for both, or the message could be
// another thread's.
func call(f func() C.enum_seamless_result) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r := f()
	if r == C.SEAMLESS_OK {
		return nil
	}
	n := C.seamless_last_error(nil, 0)
	buf := make([]byte, n+1)
	C.seamless_last_error((*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
	return &Error{Code: Code(r), Message: string(buf[:n])}
}

// cString is a C copy of s for the duration of a call; "" is NULL when
// nullable.
func cString(s string, nullable bool) *C.char {
	if nullable && s == "" {
		return nil
	}
	return C.CString(s)
}

// takeString copies a string the library handed over, then frees it.
func takeString(p *C.char) string {
	defer C.seamless_string_free(p)
	return C.GoString(p)
}

// Client commits the containers of one containerd namespace. Safe for
// concurrent use by many goroutines. Close it when done; do not use it in a
// child process after fork.
type Client struct {
	c *C.seamless_client
}

// NewClient creates a client. stateDir "" is the library's default
// (/var/lib/seamless-snapshot). containerd is not contacted yet.
func NewClient(containerdAddress, namespace, stateDir string) (*Client, error) {
	address, ns, dir := cString(containerdAddress, false), cString(namespace, false), cString(stateDir, true)
	defer C.free(unsafe.Pointer(address))
	defer C.free(unsafe.Pointer(ns))
	defer C.free(unsafe.Pointer(dir))
	var c *C.seamless_client
	err := call(func() C.enum_seamless_result { return C.seamless_client_new(address, ns, dir, &c) })
	if err != nil {
		return nil, err
	}
	return &Client{c: c}, nil
}

// Close frees the client. Background jobs it started that have not finished
// are stopped and marked failed.
func (cl *Client) Close() {
	C.seamless_client_free(cl.c)
	cl.c = nil
}

// Snapshot is what a commit returned (seamless_snapshot).
type Snapshot struct {
	ID          string
	Pause       time.Duration // what the container felt: freeze requested to thaw completed
	Total       time.Duration
	OldUpperDir string // the point-in-time copy that is packed
	NewUpperDir string // the live upper dir
	JSON        string // the whole result, as seamless_snapshot_to_json
}

func takeSnapshot(s *C.seamless_snapshot) *Snapshot {
	if s == nil {
		return nil
	}
	defer C.seamless_snapshot_free(s)
	return &Snapshot{
		ID:          C.GoString(C.seamless_snapshot_id(s)),
		Pause:       time.Duration(C.seamless_snapshot_pause_ns(s)),
		Total:       time.Duration(C.seamless_snapshot_total_ns(s)),
		OldUpperDir: C.GoString(C.seamless_snapshot_old_upper_dir(s)),
		NewUpperDir: C.GoString(C.seamless_snapshot_new_upper_dir(s)),
		JSON:        takeString(C.seamless_snapshot_to_json(s)),
	}
}

// State is where a snapshot is in its life cycle (seamless_state).
type State int

// The states of include/seamless.h.
const (
	Pending   State = C.SEAMLESS_STATE_PENDING
	Capturing State = C.SEAMLESS_STATE_CAPTURING
	Captured  State = C.SEAMLESS_STATE_CAPTURED
	Building  State = C.SEAMLESS_STATE_BUILDING
	Pushing   State = C.SEAMLESS_STATE_PUSHING
	Completed State = C.SEAMLESS_STATE_COMPLETED
	Failed    State = C.SEAMLESS_STATE_FAILED
)

// Status is a snapshot's status (seamless_status).
type Status struct {
	State    State
	Progress float64 // 0..1 of the current phase
	JSON     string  // the whole status, as seamless_status_to_json
}

func takeStatus(s *C.seamless_status) *Status {
	defer C.seamless_status_free(s)
	return &Status{
		State:    State(C.seamless_status_state(s)),
		Progress: float64(C.seamless_status_progress(s)),
		JSON:     takeString(C.seamless_status_to_json(s)),
	}
}

func millis(d time.Duration) C.uint64_t {
	if d < 0 {
		return 0
	}
	return C.uint64_t(d.Milliseconds())
}

// commit runs one of the commit calls with its string arguments converted.
func (cl *Client) commit(container, target string, f func(c, t *C.char, out **C.seamless_snapshot) C.enum_seamless_result) (*Snapshot, error) {
	c, t := C.CString(container), C.CString(target)
	defer C.free(unsafe.Pointer(c))
	defer C.free(unsafe.Pointer(t))
	var out *C.seamless_snapshot
	err := call(func() C.enum_seamless_result { return f(c, t, &out) })
	// out is set on success, and on a timeout after the capture.
	return takeSnapshot(out), err
}

// Commit captures the container's writable layer at one instant and returns
// once it is thawed; the image is built and pushed in the background.
func (cl *Client) Commit(container, target string) (*Snapshot, error) {
	return cl.commit(container, target, func(c, t *C.char, out **C.seamless_snapshot) C.enum_seamless_result {
		return C.seamless_commit(cl.c, c, t, out)
	})
}

// CommitWithWait commits, then waits until the image is pushed. When the
// wait runs out it returns the snapshot (which goes on) and an *Error with
// Code Timeout.
func (cl *Client) CommitWithWait(container, target string, timeout time.Duration) (*Snapshot, error) {
	return cl.commit(container, target, func(c, t *C.char, out **C.seamless_snapshot) C.enum_seamless_result {
		return C.seamless_commit_with_wait(cl.c, c, t, millis(timeout), out)
	})
}

// CommitWithOptions commits with per-commit options, the JSON of the Rust
// CommitOptions ("" for defaults); timeout 0 does not wait.
func (cl *Client) CommitWithOptions(container, target, optionsJSON string, timeout time.Duration) (*Snapshot, error) {
	opts := cString(optionsJSON, true)
	defer C.free(unsafe.Pointer(opts))
	return cl.commit(container, target, func(c, t *C.char, out **C.seamless_snapshot) C.enum_seamless_result {
		return C.seamless_commit_with_options(cl.c, c, t, opts, millis(timeout), out)
	})
}

// Status reads a snapshot's status.
func (cl *Client) Status(snapshotID string) (*Status, error) {
	id := C.CString(snapshotID)
	defer C.free(unsafe.Pointer(id))
	var out *C.seamless_status
	if err := call(func() C.enum_seamless_result { return C.seamless_get_status(cl.c, id, &out) }); err != nil {
		return nil, err
	}
	return takeStatus(out), nil
}

// Wait waits until a snapshot is completed and returns its final status.
func (cl *Client) Wait(snapshotID string, timeout time.Duration) (*Status, error) {
	id := C.CString(snapshotID)
	defer C.free(unsafe.Pointer(id))
	var out *C.seamless_status
	if err := call(func() C.enum_seamless_result { return C.seamless_wait(cl.c, id, millis(timeout), &out) }); err != nil {
		return nil, err
	}
	return takeStatus(out), nil
}
