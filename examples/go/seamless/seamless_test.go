package seamless

import (
	"errors"
	"testing"
)

// These need the library but no containerd: a client does not contact it
// until a commit.

func TestFailedCallIsAnErrorWithItsCode(t *testing.T) {
	_, err := NewClient("/nonexistent/containerd.sock", "ns\xff", t.TempDir())
	var e *Error
	if !errors.As(err, &e) || e.Code != InvalidUTF8 {
		t.Fatalf("want an *Error with code InvalidUTF8, got %#v", err)
	}
	if e.Message == "" {
		t.Fatal("the error has no message")
	}
}

func TestStatusOfAnUnknownSnapshot(t *testing.T) {
	c, err := NewClient("/nonexistent/containerd.sock", "default", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Status("20260101T000000-000000000000")
	var e *Error
	if !errors.As(err, &e) || e.Code != SnapshotNotFound {
		t.Fatalf("want SnapshotNotFound, got %v", err)
	}
}

func TestCodeNames(t *testing.T) {
	for code, name := range map[Code]string{
		OK: "ok", ContainerNotFound: "container_not_found", Timeout: "timeout",
		Busy: "busy", NullArgument: "null_argument", ForkedChild: "forked_child",
		Code(9999): "unknown",
	} {
		if code.String() != name {
			t.Errorf("%d: %q, want %q", uint32(code), code.String(), name)
		}
	}
}
