//! Immutable Python views of the library's result values.
//!
//! Each class wraps the library's owned, serde-serializable value unchanged
//! and exposes its fields as read-only attributes. `to_dict()` is the value's
//! JSON form (the same as the CLI's `--json`: durations in float seconds,
//! timestamps as RFC 3339 strings), `from_dict()` its inverse, and pickling
//! goes through the pair, so a pickle holds plain data and no Rust layout.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pyo3::prelude::*;
use pyo3::types::PyType;
use seamless_snapshot::{
    Error, ErrorInfo, LayerInfo, PhaseTimings, SnapshotResult, SnapshotState, SnapshotStatus,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::errors::IntoPyResult;

/// The value as a Python dict, through its JSON form.
fn to_dict<'py, T: Serialize>(py: Python<'py>, value: &T) -> PyResult<Bound<'py, PyAny>> {
    let json = serde_json::to_string(value)
        .map_err(|e| Error::Internal(format!("serialize to JSON: {e}")))
        .py_err(py)?;
    py.import("json")?.call_method1("loads", (json,))
}

/// The value from a dict shaped like [`to_dict`]'s.
fn from_dict<T: DeserializeOwned>(data: &Bound<'_, PyAny>) -> PyResult<T> {
    let py = data.py();
    let json: String = py
        .import("json")?
        .call_method1("dumps", (data,))?
        .extract()?;
    serde_json::from_str(&json)
        .map_err(|e| Error::InvalidArgument(format!("not a valid dict for this type: {e}")))
        .py_err(py)
}

/// `(cls.from_dict, (self.to_dict(),))`: what `__reduce__` returns.
fn reduce<'py, T: Serialize>(
    slf: &Bound<'py, PyAny>,
    value: &T,
) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyAny>,))> {
    let py = slf.py();
    let from_dict = slf.get_type().getattr("from_dict")?;
    Ok((from_dict, (to_dict(py, value)?,)))
}

/// Defines a frozen pyclass `$name` (Python name `$py_name`) wrapping `$inner`,
/// with `From<$inner>`, value equality, and the methods every value class
/// has (`to_dict`, `from_dict`, `__reduce__`) next to its own `$methods`.
macro_rules! value_class {
    (
        $(#[$doc:meta])*
        $name:ident($inner:ty) as $py_name:literal;
        $($methods:tt)*
    ) => {
        $(#[$doc])*
        #[pyclass(name = $py_name, module = "seamless_snapshot", frozen, eq)]
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            inner: $inner,
        }

        impl From<$inner> for $name {
            fn from(inner: $inner) -> Self {
                $name { inner }
            }
        }

        #[pymethods]
        impl $name {
            $($methods)*

            /// This value as a JSON-compatible dict, the same as the CLI's
            /// ``--json`` (durations in seconds, timestamps RFC 3339 strings).
            fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                to_dict(py, &self.inner)
            }

            /// Builds a value from a dict shaped like :meth:`to_dict`'s.
            #[classmethod]
            fn from_dict(_cls: &Bound<'_, PyType>, data: &Bound<'_, PyAny>) -> PyResult<Self> {
                from_dict(data).map(|inner| $name { inner })
            }

            fn __reduce__<'py>(
                slf: &Bound<'py, Self>,
            ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyAny>,))> {
                reduce(slf.as_any(), &slf.get().inner)
            }
        }
    };
}

/// The repr shared by all classes: `Name(field=value, ...)` of a few fields.
fn repr(name: &str, fields: &[(&str, String)]) -> String {
    let inner: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}({})", inner.join(", "))
}

/// A Python-style quoted string for reprs.
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn state_name(state: SnapshotState) -> String {
    state.to_string()
}

value_class! {
    /// What a commit returned: the capture, and with ``commit_with_wait`` the
    /// pushed image too. Immutable; picklable; compares by value.
    PySnapshotResult(SnapshotResult) as "SnapshotResult";
    /// The snapshot's id, for ``get_status`` and ``wait``.
    #[getter]
    fn snapshot_id(&self) -> &str {
        &self.inner.snapshot_id
    }

    /// The container committed.
    #[getter]
    fn container_id(&self) -> &str {
        &self.inner.container_id
    }

    /// The image reference pushed to.
    #[getter]
    fn target_ref(&self) -> &str {
        &self.inner.target_ref
    }

    /// The pause the container felt (``datetime.timedelta``): from the instant
    /// the freeze was requested to the instant the thaw completed.
    #[getter]
    fn pause_time(&self) -> Duration {
        self.inner.pause_time
    }

    /// The whole call (``datetime.timedelta``); with ``commit_with_wait`` it
    /// includes the build and push.
    #[getter]
    fn total_time(&self) -> Duration {
        self.inner.total_time
    }

    /// The frozen point-in-time copy of the writable layer that gets packed
    /// (removed once the image is pushed).
    #[getter]
    fn old_upper_dir(&self) -> &std::ffi::OsStr {
        self.inner.old_upper_dir.as_os_str()
    }

    /// The live upper dir the container keeps writing to.
    #[getter]
    fn new_upper_dir(&self) -> &std::ffi::OsStr {
        self.inner.new_upper_dir.as_os_str()
    }

    /// Non-directory entries captured.
    #[getter]
    fn files_captured(&self) -> u64 {
        self.inner.files_captured
    }

    /// Bytes of regular-file content captured.
    #[getter]
    fn bytes_captured(&self) -> u64 {
        self.inner.bytes_captured
    }

    /// How file data was copied: ``"reflink"``, ``"copy_file_range"`` or ``"mixed"``.
    #[getter]
    fn capture_strategy(&self, py: Python<'_>) -> PyResult<String> {
        json_name(py, &self.inner.capture_strategy)
    }

    /// The cgroup freezer interface used: ``"v2"`` or ``"v1"``.
    #[getter]
    fn freezer(&self, py: Python<'_>) -> PyResult<String> {
        json_name(py, &self.inner.freezer)
    }

    /// The instant of the freeze (an aware ``datetime.datetime`` in UTC).
    #[getter]
    fn captured_at(&self) -> DateTime<Utc> {
        self.inner.captured_at
    }

    /// The base image the new layer is stacked on.
    #[getter]
    fn base_image(&self) -> &str {
        &self.inner.base_image
    }

    /// The pushed manifest's digest (only after ``commit_with_wait``).
    #[getter]
    fn manifest_digest(&self) -> Option<&str> {
        self.inner.manifest_digest.as_deref()
    }

    /// The new layer (only after ``commit_with_wait``).
    #[getter]
    fn layer(&self) -> Option<PyLayerInfo> {
        self.inner.layer.clone().map(PyLayerInfo::from)
    }

    /// The frozen window taken apart, as a dict: ``freeze``,
    /// ``frozen_work``, ``sync``, ``thaw`` (seconds), ``entries_checked``,
    /// ``files_copied``, ``bytes_copied``, ``entries_removed``,
    /// ``capture_path`` (``"incremental"`` or ``"full"``),
    /// ``fallback_reason``, ``precopy_passes``, ``verified``.
    #[getter]
    fn pause_breakdown<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_dict(py, &self.inner.pause_breakdown)
    }




    fn __repr__(&self) -> String {
        let r = &self.inner;
        repr(
            "SnapshotResult",
            &[
                ("snapshot_id", quoted(&r.snapshot_id)),
                ("container_id", quoted(&r.container_id)),
                ("target_ref", quoted(&r.target_ref)),
                ("pause_time", format!("{:?}", r.pause_time)),
                (
                    "manifest_digest",
                    r.manifest_digest.as_deref().map_or("None".into(), quoted),
                ),
            ],
        )
    }
}

/// The serde (snake_case) name of a unit enum variant.
fn json_name<T: Serialize>(py: Python<'_>, value: &T) -> PyResult<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        other => Err(Error::Internal(format!("not a named variant: {other:?}"))).py_err(py),
    }
}

value_class! {
    /// The status of a snapshot, as ``get_status`` and ``wait`` return it.
    /// Immutable; picklable; compares by value.
    PySnapshotStatus(SnapshotStatus) as "SnapshotStatus";
    /// The snapshot id.
    #[getter]
    fn snapshot_id(&self) -> &str {
        &self.inner.snapshot_id
    }

    /// The container it was taken from.
    #[getter]
    fn container_id(&self) -> &str {
        &self.inner.container_id
    }

    /// Where the image goes.
    #[getter]
    fn target_ref(&self) -> &str {
        &self.inner.target_ref
    }

    /// ``"pending"``, ``"capturing"``, ``"captured"``, ``"building"``,
    /// ``"pushing"``, ``"completed"`` or ``"failed"``.
    #[getter]
    fn state(&self) -> String {
        state_name(self.inner.state)
    }

    /// Whether the state is final (``"completed"`` or ``"failed"``).
    #[getter]
    fn is_terminal(&self) -> bool {
        self.inner.state.is_terminal()
    }

    /// Progress of the current phase, 0.0 to 1.0: bytes done over bytes in
    /// all (0.0 while the total is not known yet).
    #[getter]
    fn progress(&self) -> f64 {
        let p = self.inner.progress;
        if p.total == 0 {
            0.0
        } else {
            (p.done as f64 / p.total as f64).clamp(0.0, 1.0)
        }
    }

    /// Bytes done in the current phase.
    #[getter]
    fn done_bytes(&self) -> u64 {
        self.inner.progress.done
    }

    /// Bytes the current phase has in all (0 when not known yet).
    #[getter]
    fn total_bytes(&self) -> u64 {
        self.inner.progress.total
    }

    /// How long each phase took so far.
    #[getter]
    fn timings(&self) -> PyPhaseTimings {
        PyPhaseTimings::from(self.inner.timings.clone())
    }

    /// Why the snapshot failed, when ``state`` is ``"failed"``.
    #[getter]
    fn error(&self) -> Option<PyErrorInfo> {
        self.inner.error.clone().map(PyErrorInfo::from)
    }

    /// The pushed manifest's digest, when ``state`` is ``"completed"``.
    #[getter]
    fn manifest_digest(&self) -> Option<&str> {
        self.inner.manifest_digest.as_deref()
    }

    /// The new layer, once built.
    #[getter]
    fn layer(&self) -> Option<PyLayerInfo> {
        self.inner.layer.clone().map(PyLayerInfo::from)
    }

    /// When the snapshot was requested (aware ``datetime.datetime``, UTC).
    #[getter]
    fn created_at(&self) -> DateTime<Utc> {
        self.inner.created_at
    }

    /// When this status was last written (aware ``datetime.datetime``, UTC).
    #[getter]
    fn updated_at(&self) -> DateTime<Utc> {
        self.inner.updated_at
    }




    fn __repr__(&self) -> String {
        let s = &self.inner;
        repr(
            "SnapshotStatus",
            &[
                ("snapshot_id", quoted(&s.snapshot_id)),
                ("state", quoted(&state_name(s.state))),
                ("progress", format!("{:.3}", self.progress())),
            ],
        )
    }
}

value_class! {
    /// How long each phase of a snapshot took (``datetime.timedelta``, or
    /// ``None`` for a phase not run yet). Immutable; picklable.
    PyPhaseTimings(PhaseTimings) as "PhaseTimings";
    /// The whole capture, pre-copy through thaw.
    #[getter]
    fn capture(&self) -> Option<Duration> {
        self.inner.capture
    }

    /// The pause felt by the container: freeze requested to thaw completed.
    #[getter]
    fn pause(&self) -> Option<Duration> {
        self.inner.pause
    }

    /// Packing the layer, config and manifest.
    #[getter]
    fn build(&self) -> Option<Duration> {
        self.inner.build
    }

    /// Uploading blobs and manifest.
    #[getter]
    fn push(&self) -> Option<Duration> {
        self.inner.push
    }




    fn __repr__(&self) -> String {
        let t = &self.inner;
        let show = |d: Option<Duration>| d.map_or("None".into(), |d| format!("{d:?}"));
        repr(
            "PhaseTimings",
            &[
                ("capture", show(t.capture)),
                ("pause", show(t.pause)),
                ("build", show(t.build)),
                ("push", show(t.push)),
            ],
        )
    }
}

value_class! {
    /// Why a snapshot failed: the error's ``kind``, stable ``code`` and
    /// ``message``. Immutable; picklable.
    PyErrorInfo(ErrorInfo) as "ErrorInfo";
    /// The error kind's snake_case name (e.g. ``"registry_unauthorized"``).
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind.as_str()
    }

    /// The kind's stable numeric code.
    #[getter]
    fn code(&self) -> u32 {
        self.inner.code
    }

    /// The error message.
    #[getter]
    fn message(&self) -> &str {
        &self.inner.message
    }




    fn __repr__(&self) -> String {
        let e = &self.inner;
        repr(
            "ErrorInfo",
            &[
                ("kind", quoted(e.kind.as_str())),
                ("code", e.code.to_string()),
                ("message", quoted(&e.message)),
            ],
        )
    }
}

value_class! {
    /// The new layer of a snapshot, once built. Immutable; picklable.
    PyLayerInfo(LayerInfo) as "LayerInfo";
    /// Digest of the compressed blob.
    #[getter]
    fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// Digest of the uncompressed tar.
    #[getter]
    fn diff_id(&self) -> &str {
        &self.inner.diff_id
    }

    /// Size of the compressed blob in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.inner.size
    }

    /// The layer's OCI media type.
    #[getter]
    fn media_type(&self) -> &str {
        &self.inner.media_type
    }




    fn __repr__(&self) -> String {
        let l = &self.inner;
        repr(
            "LayerInfo",
            &[
                ("digest", quoted(&l.digest)),
                ("size", l.size.to_string()),
                ("media_type", quoted(&l.media_type)),
            ],
        )
    }
}
