//! `seal_messages`: one plaintext sealed under many AES-256-GCM keys, without the GIL.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use roomcast_core::seal;

/// ``plaintext`` sealed once per key, as wire messages
/// ``{"event":"encrypted","data":{"iv":...,"ct":...}}``.
///
/// ``keys`` holds n concatenated 32-byte keys and ``ivs`` n concatenated 12-byte IVs (fresh
/// random ones: an IV must never repeat under a key). The sealing runs with the GIL released.
#[pyfunction]
pub fn seal_messages<'py>(
    py: Python<'py>,
    keys: &[u8],
    ivs: &[u8],
    plaintext: &[u8],
) -> PyResult<Bound<'py, PyList>> {
    let sealed = py
        .detach(|| seal::seal_messages(keys, ivs, plaintext))
        .map_err(|err| PyValueError::new_err(err.to_string()))?;
    PyList::new(py, sealed.iter().map(|m| PyBytes::new(py, m)))
}
