//! `frame_text`: one unmasked, final server-to-client text frame.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use roomcast_core::frame::{encode_text, text_frame_len};

/// One unmasked, final server-to-client text frame carrying ``payload``.
#[pyfunction]
pub fn frame_text<'py>(py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, text_frame_len(payload.len()), |buf| {
        encode_text(payload, buf);
        Ok(())
    })
}
