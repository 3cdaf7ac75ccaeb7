//! The Python calls a hub operation owes (`schedule(hub.flush)`, `on_overflow(owner)`,
//! `on_interest()`): collected under a short borrow of the hub and made once it is
//! released, as the re-entrancy rules at the top of `crate::hub` require. Queueing
//! operations go through `queueing`, index operations (registry, rooms, users) through
//! `indexing`.

use pyo3::intern;
use pyo3::prelude::*;

use crate::hub::Hub;

/// Python calls owed after a hub operation, made once the borrow is released.
#[derive(Default)]
pub(crate) struct Followup {
    schedule: Option<Py<PyAny>>,
    overflow: Option<(Py<PyAny>, Vec<Py<PyAny>>)>,
}

impl Followup {
    /// Calls `on_overflow` for each overflowed owner (errors are reported as
    /// unraisable), then `schedule(hub.flush)` (errors propagate; the next queued frame
    /// asks again).
    pub(crate) fn run(self, hub: &Bound<'_, Hub>) -> PyResult<()> {
        let py = hub.py();
        if let Some((callback, owners)) = self.overflow {
            let callback = callback.bind(py);
            for owner in owners {
                if let Err(err) = callback.call1((owner,)) {
                    err.write_unraisable(py, Some(callback));
                }
            }
        }
        if let Some(schedule) = self.schedule {
            let scheduled = hub
                .getattr(intern!(py, "flush"))
                .and_then(|flush| schedule.bind(py).call1((flush,)));
            if let Err(err) = scheduled {
                if let Ok(mut this) = hub.try_borrow_mut() {
                    this.core.cancel_flush();
                }
                return Err(err);
            }
        }
        Ok(())
    }
}

impl Hub {
    /// Collects the calls a queueing operation owes (under the borrow).
    pub(crate) fn followup(&mut self, py: Python<'_>) -> Followup {
        let mut followup = Followup::default();
        if self.core.has_overflowed() {
            let mut owners = Vec::new();
            self.core
                .drain_overflowed(|sink| owners.push(sink.owner.clone_ref(py)));
            followup.overflow = self
                .on_overflow
                .as_ref()
                .map(|cb| (cb.clone_ref(py), owners));
        }
        if self.core.take_flush_request() {
            match &self.schedule {
                Some(schedule) => followup.schedule = Some(schedule.clone_ref(py)),
                None => self.core.cancel_flush(),
            }
        }
        followup
    }

    /// The `on_interest` call a change owes (under the borrow), if any.
    fn interest_followup(&mut self, py: Python<'_>) -> Option<Py<PyAny>> {
        if !self.core.take_interest_request() {
            return None;
        }
        match &self.on_interest {
            Some(callback) => Some(callback.clone_ref(py)),
            None => {
                self.core.cancel_interest();
                None
            }
        }
    }
}

/// Runs a queueing operation under a short borrow of the hub, then the Python calls it
/// owes (`on_overflow`, `schedule`) with no borrow outstanding.
pub(crate) fn queueing<T>(slf: &Bound<'_, Hub>, op: impl FnOnce(&mut Hub) -> T) -> PyResult<T> {
    let (out, followup) = {
        let mut this = slf.try_borrow_mut()?;
        let out = op(&mut this);
        (out, this.followup(slf.py()))
    };
    followup.run(slf)?;
    Ok(out)
}

/// Runs an index operation (registry, rooms, users) under a short borrow of the hub, then
/// `on_interest()` if the operation changed what the node is interested in. What the
/// operation returns is dropped by the caller, after the borrow.
pub(crate) fn indexing<T>(slf: &Bound<'_, Hub>, op: impl FnOnce(&mut Hub) -> T) -> PyResult<T> {
    let (out, interest) = {
        let mut this = slf.try_borrow_mut()?;
        let out = op(&mut this);
        (out, this.interest_followup(slf.py()))
    };
    run_interest(slf, interest)?;
    Ok(out)
}

/// Calls `on_interest()` with no borrow outstanding; on failure the next change asks
/// again and the error propagates.
fn run_interest(slf: &Bound<'_, Hub>, callback: Option<Py<PyAny>>) -> PyResult<()> {
    let Some(callback) = callback else {
        return Ok(());
    };
    if let Err(err) = callback.bind(slf.py()).call0() {
        if let Ok(mut this) = slf.try_borrow_mut() {
            this.core.cancel_interest();
        }
        return Err(err);
    }
    Ok(())
}
