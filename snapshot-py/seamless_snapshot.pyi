"""Commit running containerd containers to OCI images while they barely notice.

Type stub of the compiled module (``snapshot-py/src``); ``run-tests.sh``
checks that it names exactly what the module defines.
"""

import builtins
import datetime
import os
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Union

__version__: str
DEFAULT_CONTAINERD_ADDRESS: str
DEFAULT_NAMESPACE: str
DEFAULT_STATE_DIR: str

_Seconds = Union[float, int, datetime.timedelta]
_Path = Union[str, "os.PathLike[str]"]

class LayerInfo:
    """The new layer of a snapshot, once built. Immutable; picklable."""

    @property
    def digest(self) -> str: ...
    @property
    def diff_id(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def media_type(self) -> str: ...
    def to_dict(self) -> Dict[str, Any]: ...
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LayerInfo": ...

class ErrorInfo:
    """Why a snapshot failed. Immutable; picklable."""

    @property
    def kind(self) -> str: ...
    @property
    def code(self) -> int: ...
    @property
    def message(self) -> str: ...
    def to_dict(self) -> Dict[str, Any]: ...
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ErrorInfo": ...

class PhaseTimings:
    """How long each phase took (``None``: not run yet). Immutable; picklable."""

    @property
    def capture(self) -> Optional[datetime.timedelta]: ...
    @property
    def pause(self) -> Optional[datetime.timedelta]: ...
    @property
    def build(self) -> Optional[datetime.timedelta]: ...
    @property
    def push(self) -> Optional[datetime.timedelta]: ...
    def to_dict(self) -> Dict[str, Any]: ...
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PhaseTimings": ...

class SnapshotResult:
    """What a commit returned. Immutable; picklable; compares by value."""

    @property
    def snapshot_id(self) -> str: ...
    @property
    def container_id(self) -> str: ...
    @property
    def target_ref(self) -> str: ...
    @property
    def pause_time(self) -> datetime.timedelta: ...
    @property
    def total_time(self) -> datetime.timedelta: ...
    @property
    def old_upper_dir(self) -> str: ...
    @property
    def new_upper_dir(self) -> str: ...
    @property
    def files_captured(self) -> int: ...
    @property
    def bytes_captured(self) -> int: ...
    @property
    def capture_strategy(self) -> str:
        """``"reflink"``, ``"copy_file_range"`` or ``"mixed"``."""
    @property
    def freezer(self) -> str:
        """``"v2"`` or ``"v1"``."""
    @property
    def captured_at(self) -> datetime.datetime: ...
    @property
    def base_image(self) -> str: ...
    @property
    def manifest_digest(self) -> Optional[str]: ...
    @property
    def layer(self) -> Optional[LayerInfo]: ...
    @property
    def pause_breakdown(self) -> Dict[str, Any]:
        """The frozen window taken apart: ``freeze``, ``frozen_work``,
        ``sync``, ``thaw`` (seconds), ``entries_checked``, ``files_copied``,
        ``bytes_copied``, ``entries_removed``, ``capture_path``
        (``"incremental"`` or ``"full"``), ``fallback_reason``,
        ``precopy_passes``, ``verified``."""
    def to_dict(self) -> Dict[str, Any]:
        """JSON-compatible dict (durations in seconds), as the CLI's ``--json``."""
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SnapshotResult": ...

class SnapshotStatus:
    """The status of a snapshot. Immutable; picklable; compares by value."""

    @property
    def snapshot_id(self) -> str: ...
    @property
    def container_id(self) -> str: ...
    @property
    def target_ref(self) -> str: ...
    @property
    def state(self) -> str:
        """``"pending"``, ``"capturing"``, ``"captured"``, ``"building"``,
        ``"pushing"``, ``"completed"`` or ``"failed"``."""
    @property
    def is_terminal(self) -> bool: ...
    @property
    def progress(self) -> float:
        """Progress of the current phase, 0.0 to 1.0 (0.0 while the total is unknown)."""
    @property
    def done_bytes(self) -> int: ...
    @property
    def total_bytes(self) -> int: ...
    @property
    def timings(self) -> PhaseTimings: ...
    @property
    def error(self) -> Optional[ErrorInfo]: ...
    @property
    def manifest_digest(self) -> Optional[str]: ...
    @property
    def layer(self) -> Optional[LayerInfo]: ...
    @property
    def created_at(self) -> datetime.datetime: ...
    @property
    def updated_at(self) -> datetime.datetime: ...
    def to_dict(self) -> Dict[str, Any]: ...
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SnapshotStatus": ...

class SeamlessSnapshot:
    """Commits running containers of one containerd namespace to OCI images.

    Blocking calls release the GIL; one client may be shared by threads.
    Keep it alive until its background jobs are done. After ``os.fork()``
    the child's first call creates a fresh snapshotter.
    """

    def __init__(
        self,
        address: str = "/run/containerd/containerd.sock",
        namespace: str = "default",
        state_dir: Optional[_Path] = None,
        *,
        docker_config: Optional[_Path] = None,
        capture_root: Optional[_Path] = None,
        freeze_timeout: Optional[_Seconds] = None,
        max_pause: Optional[_Seconds] = None,
        push_retries: Optional[int] = None,
        keep_failed: Optional[bool] = None,
        push_retry_budget: Optional[_Seconds] = None,
        push_stall_timeout: Optional[_Seconds] = None,
        push_connect_timeout: Optional[_Seconds] = None,
        push_chunk_size: Optional[int] = None,
        push_concurrency: Optional[int] = None,
        registry_ca: Optional[Sequence[_Path]] = None,
        registry_certs_dirs: Optional[Sequence[_Path]] = None,
    ) -> None: ...
    @property
    def address(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def state_dir(self) -> str: ...
    def commit(
        self,
        container_id: str,
        target_ref: str,
        *,
        compression: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        annotations: Optional[Mapping[str, str]] = None,
        message: Optional[str] = None,
        author: Optional[str] = None,
        insecure_registries: Optional[Sequence[str]] = None,
        extra_xattrs: Optional[Sequence[str]] = None,
        compression_level: Optional[int] = None,
        compression_threads: Optional[int] = None,
        max_sparse_expansion: Optional[int] = None,
    ) -> SnapshotResult:
        """Captures the container and returns right after the thaw.

        ``target_ref``: a registry reference (``registry/repo:tag``),
        ``oci:PATH[:TAG]``, ``oci-archive:FILE[:TAG]`` or ``containerd:NAME``.
        """
    def commit_with_wait(
        self,
        container_id: str,
        target_ref: str,
        timeout: Optional[_Seconds] = None,
        *,
        compression: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        annotations: Optional[Mapping[str, str]] = None,
        message: Optional[str] = None,
        author: Optional[str] = None,
        insecure_registries: Optional[Sequence[str]] = None,
        extra_xattrs: Optional[Sequence[str]] = None,
        compression_level: Optional[int] = None,
        compression_threads: Optional[int] = None,
        max_sparse_expansion: Optional[int] = None,
    ) -> SnapshotResult:
        """Like ``commit``, then waits for the push (default timeout 1800 s)."""
    def get_status(self, snapshot_id: str) -> SnapshotStatus: ...
    def wait(self, snapshot_id: str, timeout: Optional[_Seconds] = None) -> SnapshotStatus: ...
    def list(self) -> List[SnapshotStatus]: ...
    async def commit_async(
        self,
        container_id: str,
        target_ref: str,
        *,
        compression: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        annotations: Optional[Mapping[str, str]] = None,
        message: Optional[str] = None,
        author: Optional[str] = None,
        insecure_registries: Optional[Sequence[str]] = None,
        extra_xattrs: Optional[Sequence[str]] = None,
        compression_level: Optional[int] = None,
        compression_threads: Optional[int] = None,
        max_sparse_expansion: Optional[int] = None,
    ) -> SnapshotResult: ...
    async def commit_with_wait_async(
        self,
        container_id: str,
        target_ref: str,
        timeout: Optional[_Seconds] = None,
        *,
        compression: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        annotations: Optional[Mapping[str, str]] = None,
        message: Optional[str] = None,
        author: Optional[str] = None,
        insecure_registries: Optional[Sequence[str]] = None,
        extra_xattrs: Optional[Sequence[str]] = None,
        compression_level: Optional[int] = None,
        compression_threads: Optional[int] = None,
        max_sparse_expansion: Optional[int] = None,
    ) -> SnapshotResult: ...
    async def wait_async(
        self, snapshot_id: str, timeout: Optional[_Seconds] = None
    ) -> SnapshotStatus: ...

class SeamlessSnapshotError(Exception):
    """Base class of every error of the module. Raised instances carry the
    library's stable ``code`` and the kind's snake_case name ``kind``."""

    code: ClassVar[int]
    kind: ClassVar[str]

class ContainerNotFoundError(SeamlessSnapshotError): ...
class ContainerNotRunningError(SeamlessSnapshotError): ...
class UnsupportedError(SeamlessSnapshotError): ...
class InvalidReferenceError(SeamlessSnapshotError): ...
class RegistryUnauthorizedError(SeamlessSnapshotError): ...
class RegistryUnreachableError(SeamlessSnapshotError): ...
class RegistryError(SeamlessSnapshotError): ...
class ContainerdError(SeamlessSnapshotError): ...
class FreezeError(SeamlessSnapshotError): ...
class IoError(SeamlessSnapshotError): ...

class TimeoutError(SeamlessSnapshotError, builtins.TimeoutError):
    """A wait ran out; the snapshot goes on in the background."""

    snapshot_id: str
    timeout: datetime.timedelta
    result: Optional[SnapshotResult]

class SnapshotNotFoundError(SeamlessSnapshotError):
    snapshot_id: str

class JobFailedError(SeamlessSnapshotError):
    snapshot_id: str
    job_kind: str
    job_code: int

class InvalidArgumentError(SeamlessSnapshotError): ...
class InvalidImageError(SeamlessSnapshotError): ...
class InternalError(SeamlessSnapshotError): ...
class BusyError(SeamlessSnapshotError): ...
