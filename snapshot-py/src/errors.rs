//! The exception hierarchy: `SeamlessSnapshotError` and one subclass per
//! [`ErrorKind`], generated from [`ErrorKind::ALL`] so that a kind added to
//! the library gets its class without an edit here.
//!
//! Naming: the kind's snake_case name in CamelCase plus `Error`, with no
//! exceptions to the rule (`io` -> `IoError`, `job_failed` ->
//! `JobFailedError`, `timeout` -> `TimeoutError`). `TimeoutError` is also a
//! subclass of the builtin `TimeoutError` (so `except TimeoutError:` catches
//! it under either name); `from seamless_snapshot import *` shadows the
//! builtin with it, like `from asyncio import *` did before Python 3.11.

use pyo3::exceptions::{PyException, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use seamless_snapshot::{Error, ErrorKind};

use crate::types::PySnapshotResult;

pyo3::create_exception!(
    seamless_snapshot,
    SeamlessSnapshotError,
    PyException,
    "Base class of every error raised by seamless_snapshot.\n\n\
     Instances of the subclasses carry ``code`` (the library's stable numeric\n\
     error code) and ``kind`` (its snake_case name). The message includes the\n\
     whole chain of causes."
);

/// The generated classes, in the order of [`ErrorKind::ALL`].
static KIND_TYPES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

/// `container_not_found` -> `ContainerNotFoundError`.
pub(crate) fn class_name(kind: ErrorKind) -> String {
    let mut name = String::new();
    for word in kind.as_str().split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name.push_str("Error");
    name
}

fn kind_types(py: Python<'_>) -> PyResult<&Vec<Py<PyType>>> {
    KIND_TYPES.get_or_try_init(py, || {
        let base = py.get_type::<SeamlessSnapshotError>();
        let type_type = py.get_type::<PyType>();
        ErrorKind::ALL
            .iter()
            .map(|&kind| {
                let name = class_name(kind);
                let bases = if kind == ErrorKind::Timeout {
                    PyTuple::new(py, [base.clone(), py.get_type::<PyTimeoutError>()])?
                } else {
                    PyTuple::new(py, [base.clone()])?
                };
                let dict = PyDict::new(py);
                dict.set_item("__module__", "seamless_snapshot")?;
                dict.set_item("__doc__", class_doc(kind))?;
                dict.set_item("code", kind.code())?;
                dict.set_item("kind", kind.as_str())?;
                // type(name, bases, dict): the only way to get two bases (the
                // C API's PyErr_NewException takes them, pyo3's wrapper not).
                Ok(type_type
                    .call1((name, bases, dict))?
                    .cast_into::<PyType>()?
                    .unbind())
            })
            .collect()
    })
}

fn class_doc(kind: ErrorKind) -> String {
    let extra = match kind {
        ErrorKind::Timeout => {
            "\n\nAlso a builtin ``TimeoutError``. The snapshot goes on in the background:\n\
             ``snapshot_id`` names it, ``timeout`` is how long was waited (a\n\
             ``datetime.timedelta``), and ``result`` is the capture's\n\
             :class:`SnapshotResult` when the wait followed a commit, else ``None``."
        }
        ErrorKind::JobFailed => {
            "\n\n``snapshot_id`` names the failed snapshot; ``job_kind`` and ``job_code``\n\
             are the kind and code of the error that failed its background job."
        }
        ErrorKind::SnapshotNotFound => "\n\n``snapshot_id`` is the id that was asked for.",
        _ => "",
    };
    format!(
        "The library's ``{}`` error (code {}).{extra}",
        kind.as_str(),
        kind.code()
    )
}

/// Adds the base class and every kind's class to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add(
        "SeamlessSnapshotError",
        py.get_type::<SeamlessSnapshotError>(),
    )?;
    for (kind, ty) in ErrorKind::ALL.iter().zip(kind_types(py)?) {
        m.add(class_name(*kind), ty.bind(py))?;
    }
    Ok(())
}

/// Converts a library error into an instance of its kind's class.
pub(crate) fn to_pyerr(py: Python<'_>, e: Error) -> PyErr {
    build(py, e).unwrap_or_else(|failed| failed)
}

fn build(py: Python<'_>, e: Error) -> Result<PyErr, PyErr> {
    let kind = e.kind();
    let index = ErrorKind::ALL
        .iter()
        .position(|k| *k == kind)
        .ok_or_else(|| SeamlessSnapshotError::new_err(e.full_message()))?;
    let class = kind_types(py)?[index].bind(py);
    let exc = class.call1((e.full_message(),))?;
    match e {
        Error::Timeout {
            snapshot_id,
            timeout,
            capture,
        } => {
            exc.setattr("snapshot_id", snapshot_id)?;
            exc.setattr("timeout", timeout)?;
            let result = capture.map(|c| PySnapshotResult::from(*c));
            exc.setattr("result", result)?;
        }
        Error::JobFailed { id, kind, .. } => {
            exc.setattr("snapshot_id", id)?;
            exc.setattr("job_kind", kind.as_str())?;
            exc.setattr("job_code", kind.code())?;
        }
        Error::SnapshotNotFound(id) => exc.setattr("snapshot_id", id)?,
        _ => {}
    }
    Ok(PyErr::from_value(exc))
}

/// Extension converting `Result<T, seamless_snapshot::Error>` to `PyResult`.
pub(crate) trait IntoPyResult<T> {
    /// Maps the error to its Python class.
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_pyerr(py, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names() {
        assert_eq!(
            class_name(ErrorKind::ContainerNotFound),
            "ContainerNotFoundError"
        );
        assert_eq!(class_name(ErrorKind::Io), "IoError");
        assert_eq!(class_name(ErrorKind::JobFailed), "JobFailedError");
        assert_eq!(class_name(ErrorKind::Timeout), "TimeoutError");
        let mut names: Vec<String> = ErrorKind::ALL.iter().map(|k| class_name(*k)).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }
}
