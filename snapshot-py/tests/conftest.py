"""pytest support: a private containerd namespace on the test rig.

The rig (``tests/rig/start.sh RIG_DIR``; ``. RIG_DIR/env``) is a private
containerd, runc and a plain-HTTP registry. Like the Rust tests' ``Rig``
(``tests/src/lib.rs``), each test that asks for the ``rig`` fixture gets its
own containerd namespace with the base image imported, and everything it
created is removed afterwards. Without the rig (or without root) those tests
fail with the reason: they never pass without having run.
"""

import itertools
import json
import os
import pathlib
import subprocess
import time
from typing import Callable, List, Optional

import pytest

import seamless_snapshot as ss

BASE_IMAGE = "seamless.test/base:latest"

# Keeps /data/counter going every 5 ms: a container that is visibly running.
# Only shell builtins in the loop (`read -t` on a fifo nobody writes is the
# sleep), so that these tests of the binding do not depend on process churn
# (short-lived children are the core's tests' concern: a child exiting
# during a commit once made it fail, see tests/tests/consistency.rs).
WRITER = ("mkfifo /tmp/tick; exec 3<>/tmp/tick; i=0; "
          "while true; do i=$((i+1)); echo $i > /data/counter; read -t 0.005 x <&3; done")

_namespaces = itertools.count()
_exec_ids = itertools.count()


def wait_until(what: str, timeout: float, cond: Callable[[], bool]) -> None:
    """Polls ``cond`` every 20 ms; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def run(args: List[str], check: bool = True) -> subprocess.CompletedProcess:
    """Runs a command, capturing its output; fails the test if it fails and ``check``."""
    p = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check and p.returncode != 0:
        pytest.fail(f"{args} failed ({p.returncode}):\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


class Cgroup:
    """The freezer files of a process's cgroup (v1 freezer and/or v2)."""

    def __init__(self, pid: int):
        self.files: List[pathlib.Path] = []
        for line in pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            path = path.lstrip("/")
            if "freezer" in controllers.split(","):
                self.files.append(pathlib.Path("/sys/fs/cgroup/freezer", path, "freezer.state"))
            elif controllers == "":
                for base in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
                    d = pathlib.Path(base, path)
                    if (d / "cgroup.freeze").exists():
                        self.files.append(d / "cgroup.freeze")
                        break

    def is_frozen(self) -> bool:
        for f in self.files:
            try:
                text = f.read_text().strip()
            except OSError:
                continue
            if f.name == "freezer.state" and text != "THAWED":
                return True
            if f.name == "cgroup.freeze" and text == "1":
                return True
        return False


class Rig:
    """One test's containerd namespace on the rig."""

    def __init__(self, tmp: pathlib.Path):
        self.containerd = os.environ["SEAMLESS_TEST_CONTAINERD"]
        self.registry = os.environ["SEAMLESS_TEST_REGISTRY"]
        self.state = pathlib.Path(os.environ["SEAMLESS_TEST_CONTAINERD_STATE"])
        self.ns = f"seamless-py-{os.getpid()}-{next(_namespaces)}"
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.ctr("images", "import", "--base-name", "seamless.test/base",
                 os.environ["SEAMLESS_TEST_BASE_TAR"])

    def ctr(self, *args: str, check: bool = True) -> str:
        """``ctr -a SOCK -n NS args...``; returns stdout."""
        return run(["ctr", "-a", self.containerd, "-n", self.ns, *args], check=check).stdout

    def client(self, **kwargs) -> ss.SeamlessSnapshot:
        """A client for this namespace and a private state directory."""
        return ss.SeamlessSnapshot(address=self.containerd, namespace=self.ns,
                                   state_dir=str(self.state_dir), **kwargs)

    def target(self, name: str, tag: str) -> str:
        """``REGISTRY/NS/name:tag`` in the rig's registry."""
        return f"{self.registry}/{self.ns}/{name}:{tag}"

    def tasks(self) -> List[tuple]:
        """``(id, pid, status)`` of every task in the namespace."""
        out = self.ctr("task", "ls", check=False)
        rows = []
        for line in out.splitlines()[1:]:
            f = line.split()
            if len(f) >= 3:
                rows.append((f[0], int(f[1]), f[2]))
        return rows

    def task_status(self, cid: str) -> Optional[str]:
        return next((s for t, _, s in self.tasks() if t == cid), None)

    def counter(self, cid: str) -> int:
        """The number the writer keeps in the container's /data/counter (0 if unreadable)."""
        p = self.state / "io.containerd.runtime.v2.task" / self.ns / cid / "rootfs/data/counter"
        try:
            return int(p.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def run_container(self, cid: str, script: str = WRITER) -> None:
        """Starts ``sh -c script`` from the base image; with the default
        writer, returns once it has visibly been running."""
        self.ctr("run", "-d", "--null-io", "--snapshotter", "overlayfs",
                 BASE_IMAGE, cid, "sh", "-c", script)
        wait_until(f"container {cid} to start", 20,
                   lambda: self.task_status(cid) in ("RUNNING", "STOPPED"))
        if WRITER in script:
            wait_until(f"container {cid} to write", 20, lambda: self.counter(cid) > 10)

    def cgroup(self, cid: str) -> Cgroup:
        pid = next(p for t, p, _ in self.tasks() if t == cid)
        return Cgroup(pid)

    def inspect(self, ref: str) -> dict:
        """``skopeo inspect`` of an image in the registry (config labels, layers, digest)."""
        out = run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"]).stdout
        return json.loads(out)

    def run_pulled(self, ref: str, *cmd: str) -> str:
        """Pulls ``ref`` back into containerd over plain HTTP and runs ``cmd``
        in a container of it; returns its output."""
        self.ctr("images", "pull", "--plain-http", ref)
        cid = f"pulled-{next(_exec_ids)}"
        return self.ctr("run", "--rm", "--snapshotter", "overlayfs", ref, cid, *cmd)

    def cleanup(self) -> None:
        for cid, pid, _ in self.tasks():
            # A task frozen under the v1 freezer does not die from SIGKILL.
            if pid > 0 and pathlib.Path(f"/proc/{pid}").exists():
                for f in Cgroup(pid).files:
                    try:
                        f.write_text("THAWED" if f.name == "freezer.state" else "0")
                    except OSError:
                        pass
            self.ctr("task", "kill", "-a", "-s", "SIGKILL", cid, check=False)
        for cid, _, _ in self.tasks():
            deadline = time.monotonic() + 10
            while self.task_status(cid) in ("RUNNING", "PAUSED", "PAUSING") and time.monotonic() < deadline:
                time.sleep(0.05)
            self.ctr("task", "delete", "-f", cid, check=False)
        for kind, rm in (("containers", ["containers", "rm"]),
                         ("images", ["images", "rm", "--sync"]),
                         ("leases", ["leases", "rm", "--sync"]),
                         ("content", ["content", "rm"])):
            for item in self.ctr(kind, "ls", "-q", check=False).split():
                self.ctr(*rm, item, check=False)
        run(["ctr", "-a", self.containerd, "namespaces", "rm", self.ns], check=False)
        # runc leaves the namespace's parent cgroups behind.
        for ctl in ("freezer", "unified", "cpu", "cpuacct", "cpuset", "memory", "pids",
                    "blkio", "devices", "systemd"):
            try:
                os.rmdir(f"/sys/fs/cgroup/{ctl}/{self.ns}")
            except OSError:
                pass


def rig_unavailable() -> Optional[str]:
    """Why the rig cannot be used, or None."""
    missing = [k for k in ("SEAMLESS_TEST_CONTAINERD", "SEAMLESS_TEST_REGISTRY",
                           "SEAMLESS_TEST_CONTAINERD_STATE", "SEAMLESS_TEST_BASE_TAR")
               if not os.environ.get(k)]
    if missing:
        return ("the test rig is not running (missing " + ", ".join(missing)
                + "): run tests/rig/start.sh RIG_DIR and source RIG_DIR/env")
    if os.geteuid() != 0:
        return "the rig tests need root"
    if not os.path.exists(os.environ["SEAMLESS_TEST_CONTAINERD"]):
        return f"no containerd socket {os.environ['SEAMLESS_TEST_CONTAINERD']}"
    return None


@pytest.fixture
def rig(tmp_path: pathlib.Path):
    """A fresh containerd namespace with the base image; removed afterwards."""
    why = rig_unavailable()
    if why:
        pytest.fail(why)
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.cleanup()
