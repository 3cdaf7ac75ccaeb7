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
    let n = seal::batch_len(keys, ivs).map_err(|err| PyValueError::new_err(err.to_string()))?;
    let len = seal::message_len(plaintext.len());
    let mut scratch = Vec::with_capacity(plaintext.len() + seal::TAG_LEN);
    let list = PyList::empty(py);
    for i in 0..n {
        let (key, iv) = seal::batch_item(keys, ivs, i);
        // Sealed straight into the new bytes object, which nothing else can see yet, so the
        // GIL can be released while it is filled.
        let message = PyBytes::new_with(py, len, |out| {
            py.detach(|| seal::Sealer::new(key).message_into(iv, plaintext, &mut scratch, out));
            Ok(())
        })?;
        list.append(message)?;
    }
    Ok(list)
}
