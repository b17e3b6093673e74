"""The module against real containerd, runc and a registry (the ``rig`` fixture)."""

import asyncio
import builtins
import datetime
import os
import pickle
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

import seamless_snapshot as ss
from conftest import WRITER, wait_until

PUSH_TIMEOUT = 300.0


def test_commit_then_status_to_completed_and_pull_back(rig):
    rig.run_container("dev", "echo hello-from-py > /data/hello; " + WRITER)
    client = rig.client()
    r = client.commit("dev", rig.target("dev", "1"))
    assert isinstance(r, ss.SnapshotResult)
    assert r.container_id == "dev" and r.target_ref == rig.target("dev", "1")
    assert isinstance(r.pause_time, datetime.timedelta)
    assert datetime.timedelta(0) < r.pause_time < datetime.timedelta(seconds=5)
    assert r.total_time >= r.pause_time
    assert os.path.isdir(r.new_upper_dir) and r.old_upper_dir != r.new_upper_dir
    assert r.manifest_digest is None, "commit returns before the push"

    seen = []
    deadline = time.monotonic() + PUSH_TIMEOUT
    while True:
        s = client.get_status(r.snapshot_id)
        assert 0.0 <= s.progress <= 1.0
        seen.append(s.state)
        if s.is_terminal or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert s.state == "completed", s.error
    assert s.manifest_digest and s.manifest_digest.startswith("sha256:")
    assert s.layer is not None and s.timings.pause is not None
    assert set(seen) <= {"captured", "building", "pushing", "completed"}

    # The image is in the registry, and holds what the container wrote (the
    # counter file may be caught empty: the writer truncates, then writes).
    assert rig.inspect(r.target_ref)["Digest"] == s.manifest_digest
    out = rig.run_pulled(r.target_ref, "sh", "-c", "cat /data/hello; test -f /data/counter && echo counter")
    assert out.split() == ["hello-from-py", "counter"]
    assert pickle.loads(pickle.dumps(s)) == s
    assert [x.snapshot_id for x in client.list()] == [r.snapshot_id]


def test_commit_with_wait_and_options(rig):
    rig.run_container("opts")
    client = rig.client()
    r = client.commit_with_wait(
        "opts", rig.target("opts", "zstd"), timeout=PUSH_TIMEOUT,
        compression="zstd", labels={"team": "py"}, annotations={"note": "hi"},
        message="from python", author="pytest", insecure_registries=[],
        extra_xattrs=["trusted."],
    )
    assert r.manifest_digest and r.layer is not None
    assert r.layer.media_type.endswith("tar+zstd")
    info = rig.inspect(r.target_ref)
    assert info["Digest"] == r.manifest_digest
    assert info["Labels"]["team"] == "py"
    d = r.to_dict()
    assert d["manifest_digest"] == r.manifest_digest
    assert d["pause_time"] == pytest.approx(r.pause_time.total_seconds(), abs=1e-6)
    assert pickle.loads(pickle.dumps(r)) == r
    assert client.get_status(r.snapshot_id).state == "completed"


def test_each_error_from_bad_input(rig):
    rig.run_container("stopped", "exit 0")
    wait_until("the task to stop", 20, lambda: rig.task_status("stopped") == "STOPPED")
    rig.run_container("alive")
    client = rig.client()
    target = rig.target("err", "1")

    with pytest.raises(ss.ContainerNotFoundError) as e:
        client.commit("no-such-container", target)
    assert e.value.code == 1 and e.value.kind == "container_not_found"
    assert "no-such-container" in str(e.value) and rig.ns in str(e.value)

    with pytest.raises(ss.ContainerNotRunningError) as e:
        client.commit("stopped", target)
    assert e.value.code == 2

    with pytest.raises(ss.InvalidReferenceError) as e:
        client.commit("alive", "Not A Reference!")
    assert e.value.code == 4

    with pytest.raises(ss.SnapshotNotFoundError) as e:
        client.get_status("20990101-nothing")
    assert e.value.code == 12 and e.value.snapshot_id == "20990101-nothing"

    for err in (ss.ContainerNotFoundError, ss.InvalidReferenceError):
        assert issubclass(err, ss.SeamlessSnapshotError)


HOLDER = """
import sys, seamless_snapshot as ss
address, namespace, state_dir, container, target = sys.argv[1:]
c = ss.SeamlessSnapshot(address=address, namespace=namespace, state_dir=state_dir)
r = c.commit(container, target)
print(r.snapshot_id)
"""


def test_overlapping_commit_is_busy(rig):
    # The fault hook (read by debug builds only) keeps the first commit in its
    # frozen window for 3 s: run-tests.sh builds the wheel in debug.
    rig.run_container("guarded")
    cgroup = rig.cgroup("guarded")
    env = dict(os.environ, SEAMLESS_FAULT_HOLD_FROZEN_MS="3000")
    first = subprocess.Popen(
        [sys.executable, "-c", HOLDER, rig.containerd, rig.ns, str(rig.state_dir),
         "guarded", rig.target("guarded", "1")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until("the first commit to freeze the container", 60,
                   lambda: cgroup.is_frozen() or first.poll() is not None)
        assert first.poll() is None, "the first commit ended before freezing (not a debug build?)"
        with pytest.raises(ss.BusyError) as e:
            rig.client().commit("guarded", rig.target("guarded", "2"))
        assert e.value.code == 17 and "guarded" in str(e.value)
    finally:
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert not cgroup.is_frozen()


def test_four_threads_four_containers(rig):
    ids = [f"t{i}" for i in range(4)]
    for cid in ids:
        rig.run_container(cid)
    client = rig.client()

    # A ticker that needs the GIL every 10 ms: blocking calls that held it
    # would stall the ticker for as long as they run (seconds here).
    stop = threading.Event()
    gaps = []

    def tick():
        last = time.monotonic()
        while not stop.is_set():
            time.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(
                lambda cid: client.commit_with_wait(cid, rig.target(cid, "1"), timeout=PUSH_TIMEOUT),
                ids))
    finally:
        stop.set()
        ticker.join()
    assert [r.container_id for r in results] == ids
    assert len({r.snapshot_id for r in results}) == 4
    assert all(r.manifest_digest for r in results)
    for r in results:
        assert rig.inspect(r.target_ref)["Digest"] == r.manifest_digest
    assert max(gaps) < 1.0, f"Python threads stalled {max(gaps):.2f} s during the commits"


def test_asyncio_two_concurrent_commits(rig):
    rig.run_container("a1")
    rig.run_container("a2")
    client = rig.client()

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        results = await asyncio.gather(
            client.commit_with_wait_async("a1", rig.target("a1", "1"), timeout=PUSH_TIMEOUT),
            client.commit_with_wait_async("a2", rig.target("a2", "1"), timeout=PUSH_TIMEOUT),
        )
        quick = await client.commit_async("a1", rig.target("a1", "2"))
        status = await client.wait_async(quick.snapshot_id, timeout=PUSH_TIMEOUT)
        t.cancel()
        return results, status, ticks

    (r1, r2), status, ticks = asyncio.run(main())
    assert r1.container_id == "a1" and r2.container_id == "a2"
    assert r1.manifest_digest and r2.manifest_digest
    assert status.state == "completed"
    assert ticks > 10, "the event loop was blocked during the commits"


def test_timeout_then_completion(rig):
    rig.run_container("slow")
    client = rig.client()
    with pytest.raises(ss.TimeoutError) as e:
        client.commit_with_wait("slow", rig.target("slow", "1"), timeout=0.001)
    err = e.value
    assert isinstance(err, builtins.TimeoutError) and isinstance(err, ss.SeamlessSnapshotError)
    assert err.code == 11 and err.kind == "timeout"
    assert err.snapshot_id and err.result is not None
    assert err.result.snapshot_id == err.snapshot_id
    assert isinstance(err.timeout, datetime.timedelta)
    assert err.snapshot_id in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is ss.TimeoutError and again.result == err.result
    # The job goes on.
    final = client.wait(err.snapshot_id, timeout=datetime.timedelta(seconds=PUSH_TIMEOUT))
    assert final.state == "completed"
    assert client.get_status(err.snapshot_id).manifest_digest == final.manifest_digest


def test_client_works_after_fork(rig):
    rig.run_container("parent")
    rig.run_container("child")
    client = rig.client()
    first = client.commit_with_wait("parent", rig.target("parent", "1"), timeout=PUSH_TIMEOUT)
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process with threads (ours).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            assert client.get_status(first.snapshot_id).state == "completed"
            r = client.commit_with_wait("child", rig.target("child", "1"), timeout=PUSH_TIMEOUT)
            code = 0 if r.manifest_digest else 2
        except BaseException as exc:  # reported through the exit code
            print(f"child: {exc!r}", file=sys.stderr)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's client is unaffected.
    r = client.commit_with_wait("parent", rig.target("parent", "2"), timeout=PUSH_TIMEOUT)
    assert r.manifest_digest
    assert {s.container_id for s in client.list()} == {"parent", "child"}


EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python", "commit.py")


def test_example_commits_and_prints_the_result(rig):
    rig.run_container("ex")
    target = rig.target("ex", "1")
    p = subprocess.run(
        [sys.executable, EXAMPLE, "ex", target, "--address", rig.containerd,
         "--namespace", rig.ns, "--state-dir", str(rig.state_dir), "--timeout", str(PUSH_TIMEOUT)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PUSH_TIMEOUT + 60,
    )
    assert p.returncode == 0, p.stderr
    assert "completed" in p.stderr, "no progress line"
    digest = rig.inspect(target)["Digest"]
    assert f"pushed {target}@{digest}" in p.stdout
