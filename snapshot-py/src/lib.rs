//! The Python module `seamless_snapshot`: a thin translation of the public API
//! of the Rust library of the same name (crate `seamless-snapshot-core`).
//!
//! Built by maturin (`snapshot-py/pyproject.toml`) into an abi3 wheel for
//! CPython >= 3.9. The Python-facing documentation is in the docstrings (the
//! doc comments on the `#[pyclass]`/`#[pymethods]` items below) and in the
//! type stub `seamless_snapshot.pyi`, which `run-tests.sh` checks against the
//! compiled module.
//!
//! Layout: [`client`] holds the `SeamlessSnapshot` class (blocking calls with
//! the GIL released, asyncio variants, fork handling), [`types`] the
//! immutable result classes, [`errors`] the exception hierarchy derived from
//! `ErrorKind::ALL`.
#![deny(missing_docs)]

mod client;
mod errors;
mod types;

use pyo3::prelude::*;
use seamless_snapshot::Config;

/// Commit running containerd containers to OCI images while they barely notice.
///
/// The entry point is :class:`SeamlessSnapshot`. Errors are subclasses of
/// :class:`SeamlessSnapshotError`, one per error kind of the library.
#[pymodule]
#[pyo3(name = "seamless_snapshot")]
fn seamless_snapshot_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "DEFAULT_CONTAINERD_ADDRESS",
        Config::DEFAULT_CONTAINERD_ADDRESS,
    )?;
    m.add("DEFAULT_NAMESPACE", Config::DEFAULT_NAMESPACE)?;
    m.add("DEFAULT_STATE_DIR", Config::DEFAULT_STATE_DIR)?;
    m.add_class::<client::Client>()?;
    m.add_class::<types::PySnapshotResult>()?;
    m.add_class::<types::PySnapshotStatus>()?;
    m.add_class::<types::PyPhaseTimings>()?;
    m.add_class::<types::PyErrorInfo>()?;
    m.add_class::<types::PyLayerInfo>()?;
    errors::register(m)?;
    Ok(())
}
