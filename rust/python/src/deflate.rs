//! `Inflater`: inbound permessage-deflate messages inflated with a bound, from a fresh
//! window each (client_no_context_takeover), by one object per server.

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use roomcast_core::deflate::{self, InflateError};

create_exception!(
    _core,
    InflatedTooBig,
    PyValueError,
    "The message inflates to more than the limit (inflation stopped there)."
);
create_exception!(
    _core,
    InvalidDeflate,
    PyValueError,
    "The message is not valid deflate data."
);

/// Inflates compressed messages (RFC 7692 payloads) to at most ``limit`` bytes each.
/// Nothing past the limit is kept: the buffer stops one byte after it.
#[pyclass(unsendable, module = "roomcast._core")]
pub struct Inflater {
    core: deflate::Inflater,
}

fn raise(err: InflateError) -> PyErr {
    match err {
        InflateError::TooBig => InflatedTooBig::new_err(err.to_string()),
        InflateError::Invalid => InvalidDeflate::new_err(err.to_string()),
    }
}

#[pymethods]
impl Inflater {
    #[new]
    fn new() -> Self {
        Inflater {
            core: deflate::Inflater::new(),
        }
    }

    /// The message whose compressed payload is ``payload`` (a frame's, or its fragments joined).
    fn inflate<'py>(
        &mut self,
        py: Python<'py>,
        payload: &[u8],
        limit: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self
            .core
            .inflate(&[payload], limit)
            .map(|out| PyBytes::new(py, out));
        self.core.trim(); // after an error too: a large limit's buffer does not linger
        bytes.map_err(raise)
    }
}
