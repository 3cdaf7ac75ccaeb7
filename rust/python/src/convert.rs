//! Python's terms to the core's and back: the hub's millisecond clock against Unix
//! seconds, durations in float seconds, and the client ids a fan-out excludes.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

/// The core's clock: milliseconds since the hub was created.
pub(crate) struct Clock {
    start: Instant,
    /// Unix time of `start`, in seconds.
    epoch: f64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            start: Instant::now(),
            epoch: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn unix_seconds(&self, ms: u64) -> f64 {
        self.epoch + ms as f64 / 1000.0
    }
}

/// Converts a duration in float seconds to milliseconds.
pub(crate) fn millis(name: &str, seconds: f64) -> PyResult<u64> {
    if seconds.is_nan() || seconds < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a non-negative number of seconds: {seconds}"
        )));
    }
    // Saturates for infinity: a deadline that never comes.
    Ok((seconds * 1000.0).round() as u64)
}

/// Client ids to exclude, kept alive for the `&str`s borrowed from them.
pub(crate) fn exclude_ids<'py>(
    exclude: Option<&Bound<'py, PyAny>>,
) -> PyResult<Vec<Bound<'py, PyString>>> {
    let Some(obj) = exclude.filter(|obj| !obj.is_none()) else {
        return Ok(Vec::new());
    };
    if let Ok(list) = obj.cast::<PyList>() {
        let mut ids = Vec::with_capacity(list.len());
        for item in list.iter() {
            ids.push(item.cast_into::<PyString>()?);
        }
        return Ok(ids);
    }
    obj.try_iter()?
        .map(|item| Ok(item?.cast_into::<PyString>()?))
        .collect()
}

pub(crate) fn as_strs<'a>(ids: &'a [Bound<'_, PyString>]) -> PyResult<Vec<&'a str>> {
    ids.iter().map(|id| id.to_str()).collect()
}
