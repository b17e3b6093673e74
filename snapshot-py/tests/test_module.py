"""The module's surface without containerd: exceptions, value classes, arguments."""

import builtins
import datetime
import pickle

import pytest

import seamless_snapshot as ss

# The library's error kinds and their stable codes (README, "Error kinds").
KINDS = {
    "container_not_found": 1,
    "container_not_running": 2,
    "unsupported": 3,
    "invalid_reference": 4,
    "registry_unauthorized": 5,
    "registry_unreachable": 6,
    "registry": 7,
    "containerd": 8,
    "freeze": 9,
    "io": 10,
    "timeout": 11,
    "snapshot_not_found": 12,
    "job_failed": 13,
    "invalid_argument": 14,
    "invalid_image": 15,
    "internal": 16,
    "busy": 17,
}


def class_name(kind: str) -> str:
    return "".join(w.capitalize() for w in kind.split("_")) + "Error"


def test_every_kind_has_its_class_and_code():
    for kind, code in KINDS.items():
        cls = getattr(ss, class_name(kind))
        assert issubclass(cls, ss.SeamlessSnapshotError)
        assert cls.code == code and cls.kind == kind
        assert cls.__module__ == "seamless_snapshot"
        assert cls.__doc__
    # And no class for a kind this test does not know.
    subclasses = {n for n in dir(ss)
                  if isinstance(getattr(ss, n), type)
                  and issubclass(getattr(ss, n), ss.SeamlessSnapshotError)
                  and getattr(ss, n) is not ss.SeamlessSnapshotError}
    assert subclasses == {class_name(k) for k in KINDS}
    assert issubclass(ss.SeamlessSnapshotError, Exception)


def test_timeout_is_also_the_builtin_timeout():
    assert issubclass(ss.TimeoutError, builtins.TimeoutError)
    assert ss.TimeoutError is not builtins.TimeoutError
    with pytest.raises(builtins.TimeoutError):
        raise ss.TimeoutError("waited")


def test_exceptions_pickle():
    e = ss.BusyError("busy: x")
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is ss.BusyError and str(e2) == "busy: x" and e2.code == 17


RESULT = {
    "snapshot_id": "20261129-abc",
    "container_id": "dev",
    "target_ref": "127.0.0.1:5000/x/dev:1",
    "pause_time": 0.0187,
    "total_time": 1.5,
    "old_upper_dir": "/state/jobs/20261129-abc/capture",
    "new_upper_dir": "/root/snapshots/7/fs",
    "files_captured": 3,
    "bytes_captured": 12,
    "capture_strategy": "copy_file_range",
    "freezer": "v2",
    "captured_at": "2026-11-29T12:00:00.123456Z",
    "base_image": "seamless.test/base:latest",
    "manifest_digest": "sha256:" + "a" * 64,
    "layer": {"digest": "sha256:" + "b" * 64, "diff_id": "sha256:" + "c" * 64,
              "size": 99, "media_type": "application/vnd.oci.image.layer.v1.tar+gzip"},
    "pause_breakdown": {"freeze": 0.5, "frozen_work": 0.25, "sync": 0.125, "thaw": 0.0625,
                        "entries_checked": 4, "files_copied": 1, "bytes_copied": 12,
                        "entries_removed": 0, "capture_path": "incremental",
                        "fallback_reason": None, "precopy_passes": 2, "verified": False},
}


def status_dict(state: str, done: int, total: int) -> dict:
    return {
        "snapshot_id": "s1", "container_id": "dev", "target_ref": "r/x:y",
        "state": state, "progress": {"done": done, "total": total},
        "timings": {"capture": 0.5, "pause": 0.00007, "build": None, "push": None},
        "error": {"kind": "registry", "code": 7, "message": "boom"} if state == "failed" else None,
        "manifest_digest": None, "layer": None,
        "created_at": "2026-11-29T12:00:00Z", "updated_at": "2026-11-29T12:00:01Z",
        "worker": None,
    }


def test_result_fields_dict_and_pickle():
    r = ss.SnapshotResult.from_dict(RESULT)
    assert r.snapshot_id == "20261129-abc"
    assert r.pause_time == datetime.timedelta(microseconds=18700)
    assert isinstance(r.total_time, datetime.timedelta)
    assert r.captured_at == datetime.datetime(2026, 11, 29, 12, 0, 0, 123456,
                                              tzinfo=datetime.timezone.utc)
    assert r.capture_strategy == "copy_file_range" and r.freezer == "v2"
    assert r.layer is not None and r.layer.size == 99
    assert r.pause_breakdown["capture_path"] == "incremental"
    assert r.pause_breakdown["precopy_passes"] == 2
    assert r.to_dict() == RESULT
    assert pickle.loads(pickle.dumps(r)) == r
    assert pickle.loads(pickle.dumps(r.layer)) == r.layer
    assert "20261129-abc" in repr(r)


def test_results_are_immutable():
    r = ss.SnapshotResult.from_dict(RESULT)
    with pytest.raises(AttributeError):
        r.snapshot_id = "other"  # type: ignore[misc]
    s = ss.SnapshotStatus.from_dict(status_dict("pushing", 1, 2))
    with pytest.raises(AttributeError):
        s.state = "completed"  # type: ignore[misc]


def test_status_progress_and_error():
    s = ss.SnapshotStatus.from_dict(status_dict("pushing", 5, 10))
    assert s.state == "pushing" and not s.is_terminal
    assert s.progress == 0.5 and (s.done_bytes, s.total_bytes) == (5, 10)
    assert ss.SnapshotStatus.from_dict(status_dict("building", 0, 0)).progress == 0.0
    assert s.timings.pause == datetime.timedelta(microseconds=70)
    assert s.timings.build is None
    f = ss.SnapshotStatus.from_dict(status_dict("failed", 0, 0))
    assert f.is_terminal and f.error is not None
    assert (f.error.kind, f.error.code, f.error.message) == ("registry", 7, "boom")
    for v in (s, f, f.error, s.timings):
        assert pickle.loads(pickle.dumps(v)) == v


def test_from_dict_rejects_bad_data():
    with pytest.raises(ss.InvalidArgumentError):
        ss.SnapshotResult.from_dict({"snapshot_id": 3})


def test_bad_arguments(tmp_path):
    c = ss.SeamlessSnapshot(address=str(tmp_path / "no.sock"), namespace="x",
                            state_dir=tmp_path / "state")
    assert c.namespace == "x" and c.state_dir == str(tmp_path / "state")
    with pytest.raises(ss.InvalidArgumentError) as e:
        c.commit("c", "127.0.0.1:1/x:y", compression="lz4")
    assert e.value.code == 14 and "lz4" in str(e.value)
    with pytest.raises(ss.InvalidArgumentError):
        c.wait("s1", timeout=-1)
    with pytest.raises(ss.InvalidArgumentError):
        c.get_status("../etc")
    with pytest.raises(ss.SnapshotNotFoundError) as e:
        c.get_status("no-such-snapshot")
    assert e.value.snapshot_id == "no-such-snapshot"
    with pytest.raises(TypeError):
        c.commit("c", "127.0.0.1:1/x:y", labels=["not", "a", "dict"])
    with pytest.raises(ss.ContainerdError) as e:
        c.commit("c", "127.0.0.1:1/x:y")
    assert "no.sock" in str(e.value)
    assert c.list() == []


def test_registry_tls_options(tmp_path):
    c = ss.SeamlessSnapshot(address=str(tmp_path / "no.sock"), namespace="x",
                            state_dir=tmp_path / "state",
                            registry_ca=[tmp_path / "ca.pem"],
                            registry_certs_dirs=[str(tmp_path / "certs.d")])
    assert c.namespace == "x"
    with pytest.raises(TypeError):
        ss.SeamlessSnapshot(address=str(tmp_path / "no.sock"),
                            state_dir=tmp_path / "state", registry_ca="ca.pem")


def test_defaults():
    assert ss.DEFAULT_CONTAINERD_ADDRESS == "/run/containerd/containerd.sock"
    assert ss.DEFAULT_NAMESPACE == "default"
    assert ss.DEFAULT_STATE_DIR
    assert ss.__version__


def test_everything_public_has_a_docstring():
    assert ss.__doc__
    missing = []
    for name in ss.__all__:
        obj = getattr(ss, name)
        if not isinstance(obj, type):
            continue
        if not obj.__doc__:
            missing.append(name)
        if issubclass(obj, BaseException):
            continue
        for attr, value in vars(obj).items():
            if not attr.startswith("_") and not getattr(value, "__doc__", None):
                missing.append(f"{name}.{attr}")
    assert not missing, missing
