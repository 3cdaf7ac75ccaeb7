//! `roomcast._core.Hub`: the Python face of `roomcast_core::Hub`.
//!
//! Re-entrancy: `write`, `schedule`, `on_overflow` and `on_interest` may call straight back into the
//! hub (uvloop calls `pause_writing` from inside `write`, which calls
//! `set_backpressured`; an error path may call `remove`). So every call into Python is
//! made with no borrow of the hub outstanding: methods that call out take
//! `slf: &Bound<Self>`, collect what they need under a short `try_borrow_mut`, drop it,
//! then call. Python objects removed from the hub are also dropped after the borrow,
//! since a finalizer may call back in.

use std::mem;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use pyo3::{intern, PyTraverseError};
use roomcast_core::{self as rc, Batch, Exclude, Frame, Handle, InterestKind};
use rustc_hash::FxHashMap;

use crate::direct::{Direct, Sent};
use crate::ring::{Ring, Staged};

/// What the hub keeps per connection on behalf of Python.
struct Sink {
    /// Takes one `bytes` (the transport's `write`).
    write: Py<PyAny>,
    /// Opaque; handed back by `sweep`, `encrypted_owners` and `on_overflow`.
    owner: Py<PyAny>,
    /// Set when batches may go straight to the socket (see `crate::direct`).
    direct: Option<Direct>,
}

/// The core's clock: milliseconds since the hub was created.
struct Clock {
    start: Instant,
    /// Unix time of `start`, in seconds.
    epoch: f64,
}

impl Clock {
    fn new() -> Self {
        Clock {
            start: Instant::now(),
            epoch: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn unix_seconds(&self, ms: u64) -> f64 {
        self.epoch + ms as f64 / 1000.0
    }
}

/// Converts a duration in float seconds to milliseconds.
fn millis(name: &str, seconds: f64) -> PyResult<u64> {
    if seconds.is_nan() || seconds < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a non-negative number of seconds: {seconds}"
        )));
    }
    // Saturates for infinity: a deadline that never comes.
    Ok((seconds * 1000.0).round() as u64)
}

/// Client ids to exclude, kept alive for the `&str`s borrowed from them.
fn exclude_ids<'py>(exclude: Option<&Bound<'py, PyAny>>) -> PyResult<Vec<Bound<'py, PyString>>> {
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

fn as_strs<'a>(ids: &'a [Bound<'_, PyString>]) -> PyResult<Vec<&'a str>> {
    ids.iter().map(|id| id.to_str()).collect()
}

/// Python calls owed after a hub operation, made once the borrow is released.
#[derive(Default)]
struct Followup {
    schedule: Option<Py<PyAny>>,
    overflow: Option<(Py<PyAny>, Vec<Py<PyAny>>)>,
}

impl Followup {
    /// Calls `on_overflow` for each overflowed owner (errors are reported as
    /// unraisable), then `schedule(hub.flush)` (errors propagate; the next queued frame
    /// asks again).
    fn run(self, hub: &Bound<'_, Hub>) -> PyResult<()> {
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

/// Python `bytes` for each flushed batch, built once per frame per flush when the
/// frame is shared, and once per run of identical multi-frame batches.
#[derive(Default)]
struct BytesCache {
    last: Option<(Frame, Py<PyBytes>)>,
    /// Earlier shared frames; holding a clone keeps the address a valid key.
    earlier: FxHashMap<usize, (Frame, Py<PyBytes>)>,
    last_run: Option<(Vec<Frame>, Py<PyBytes>)>,
}

impl BytesCache {
    fn bytes(&mut self, py: Python<'_>, batch: &Batch<'_>) -> Option<Py<PyBytes>> {
        match batch.single() {
            Some(frame) => Some(self.single(py, frame)),
            None => self.concat(py, batch),
        }
    }

    fn single(&mut self, py: Python<'_>, frame: &Frame) -> Py<PyBytes> {
        if let Some((last, bytes)) = &self.last {
            if last.same(frame) {
                return bytes.clone_ref(py);
            }
        }
        if !frame.is_shared() {
            return PyBytes::new(py, frame.as_bytes()).unbind();
        }
        if let Some((_, bytes)) = self.earlier.get(&frame.addr()) {
            return bytes.clone_ref(py);
        }
        let bytes = PyBytes::new(py, frame.as_bytes()).unbind();
        if let Some((old, old_bytes)) = self.last.replace((frame.clone(), bytes.clone_ref(py))) {
            self.earlier.insert(old.addr(), (old, old_bytes));
        }
        bytes
    }

    fn concat(&mut self, py: Python<'_>, batch: &Batch<'_>) -> Option<Py<PyBytes>> {
        if let Some((frames, bytes)) = &self.last_run {
            if frames.len() == batch.len()
                && frames.iter().zip(batch.frames()).all(|(a, b)| a.same(b))
            {
                return Some(bytes.clone_ref(py));
            }
        }
        let bytes = PyBytes::new_with(py, batch.byte_len(), |mut buf| {
            for frame in batch.frames() {
                let (head, tail) = buf.split_at_mut(frame.len());
                head.copy_from_slice(frame.as_bytes());
                buf = tail;
            }
            Ok(())
        })
        // Allocation failure: this connection misses the batch, like a failed write.
        .ok()?
        .unbind();
        if batch.frames().all(Frame::is_shared) {
            self.last_run = Some((batch.frames().cloned().collect(), bytes.clone_ref(py)));
        }
        Some(bytes)
    }
}

/// A flush's direct writes, staged for one submission to the ring: their bytes (one copy
/// per distinct batch in a row: a fan-out's recipients share it) and, per write, its
/// socket and its transport's `write` for what the socket does not take.
#[derive(Default)]
struct Stage {
    arena: Vec<u8>,
    items: Vec<Staged>,
    writes: Vec<Py<PyAny>>,
    results: Vec<i32>,
}

impl Stage {
    fn push(&mut self, fd: i32, data: &[u8], write: Py<PyAny>) {
        let start = match self.items.last() {
            Some(last) if self.arena[last.start..last.start + last.len] == *data => last.start,
            _ => {
                self.arena.extend_from_slice(data);
                self.arena.len() - data.len()
            }
        };
        self.items.push(Staged {
            fd,
            start,
            len: data.len(),
        });
        self.writes.push(write);
    }

    /// Sends what was staged through `ring`; what a socket did not take goes to `writes`
    /// for its transport, as after `Direct::send`. Leaves the stage empty; returns whether
    /// the ring was entered (a few writes go by `send(2)`).
    fn submit(
        &mut self,
        py: Python<'_>,
        ring: &mut Ring,
        writes: &mut Vec<(Py<PyAny>, Py<PyBytes>)>,
        direct_count: &mut u64,
    ) -> bool {
        let used_ring = ring.send_all(&self.arena, &self.items, &mut self.results);
        for ((item, write), &result) in self
            .items
            .iter()
            .zip(self.writes.drain(..))
            .zip(&self.results)
        {
            // A negative result (EAGAIN, or an error uvloop should meet) sent nothing.
            let taken = usize::try_from(result).unwrap_or(0).min(item.len);
            if taken > 0 {
                *direct_count += 1;
            }
            if taken < item.len {
                let rest = &self.arena[item.start + taken..item.start + item.len];
                writes.push((write, PyBytes::new(py, rest).unbind()));
            }
        }
        self.items.clear();
        self.arena.clear();
        used_ring
    }
}

/// Keeps Python's cyclic garbage collector off while alive (restoring its previous state).
struct NoGc {
    was_enabled: bool,
}

impl NoGc {
    fn new(_py: Python<'_>) -> NoGc {
        // SAFETY: the GIL is held (we have `py`); PyGC_Disable only sets the collector's
        // enabled flag and returns the previous one.
        let was_enabled = unsafe { pyo3::ffi::PyGC_Disable() } == 1;
        NoGc { was_enabled }
    }
}

impl Drop for NoGc {
    fn drop(&mut self) {
        if self.was_enabled {
            // SAFETY: dropped within the same GIL hold as `new` (a local of `flush`);
            // PyGC_Enable only sets the collector's enabled flag.
            unsafe { pyo3::ffi::PyGC_Enable() };
        }
    }
}

/// Hands one connection's batch to its socket (when `sink.direct` allows it now: at once,
/// or staged in `stage` for one submission after the flush) or to `writes` for its `write`
/// call; counts batches that went (at least partly) direct.
fn deliver(
    py: Python<'_>,
    sink: &Sink,
    batch: &Batch<'_>,
    cache: &mut BytesCache,
    writes: &mut Vec<(Py<PyAny>, Py<PyBytes>)>,
    direct_count: &mut u64,
    stage: Option<&mut Stage>,
) {
    if let Some(direct) = &sink.direct {
        let joined;
        let data = match batch.single() {
            Some(frame) => frame.as_bytes(),
            None => {
                let Some(bytes) = cache.bytes(py, batch) else {
                    return;
                };
                joined = bytes;
                joined.bind(py).as_bytes()
            }
        };
        if let Some(stage) = stage {
            if direct.ready(py, data) {
                stage.push(direct.fd(), data, sink.write.clone_ref(py));
                return;
            }
        } else {
            match direct.send(py, data) {
                Sent::All => {
                    *direct_count += 1;
                    return;
                }
                Sent::Part(n) => {
                    if n > 0 {
                        *direct_count += 1;
                    }
                    writes.push((
                        sink.write.clone_ref(py),
                        PyBytes::new(py, &data[n..]).unbind(),
                    ));
                    return;
                }
                Sent::Not => {}
            }
        }
    }
    if let Some(bytes) = cache.bytes(py, batch) {
        writes.push((sink.write.clone_ref(py), bytes));
    }
}

/// Calls each `write(bytes)`; a failing write (closed transport) is ignored.
fn call_writes(py: Python<'_>, writes: &mut Vec<(Py<PyAny>, Py<PyBytes>)>) {
    for (write, bytes) in writes.drain(..) {
        let _ = write.bind(py).call1((bytes,));
    }
}

/// Connection registry, room and user indices, fan-out and deadlines.
///
/// ``schedule`` is called with one zero-argument callable (``hub.flush``) the first time
/// data is queued after a flush; pass ``loop.call_soon``. ``on_overflow`` is called with a
/// connection's owner when its queued data passes ``backpressure_limit`` and
/// ``close_on_backpressure_limit`` is set. ``on_interest`` (zero arguments), when given,
/// turns interest tracking on and is called the first time a change is recorded after
/// ``drain_interest``.
#[pyclass(unsendable, module = "roomcast._core")]
pub struct Hub {
    core: rc::Hub<Sink>,
    clock: Clock,
    schedule: Option<Py<PyAny>>,
    on_overflow: Option<Py<PyAny>>,
    on_interest: Option<Py<PyAny>>,
    /// Reused between flushes; empty outside `flush`.
    writes: Vec<(Py<PyAny>, Py<PyBytes>)>,
    /// New connections on plain uvloop TCP transports get direct writes.
    direct_writes: bool,
    /// Batches written (at least partly) straight to a socket.
    direct_count: u64,
    /// One submission per flush for the direct writes, when the kernel allows it.
    ring: Option<Ring>,
    /// Reused between flushes; empty outside `flush`.
    stage: Stage,
    /// Flushes whose direct writes went to the ring.
    ring_submits: u64,
}

impl Hub {
    /// Collects the calls a queueing operation owes (under the borrow).
    fn followup(&mut self, py: Python<'_>) -> Followup {
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
fn queueing<T>(slf: &Bound<'_, Hub>, op: impl FnOnce(&mut Hub) -> T) -> PyResult<T> {
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
fn indexing<T>(slf: &Bound<'_, Hub>, op: impl FnOnce(&mut Hub) -> T) -> PyResult<T> {
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

#[pymethods]
impl Hub {
    #[new]
    #[pyo3(signature = (
        schedule,
        *,
        backpressure_limit = 1_048_576,
        close_on_backpressure_limit = false,
        heartbeat_timeout = 90.0,
        idle_timeout = 0.0,
        send_pings = false,
        on_overflow = None,
        on_interest = None,
        direct_writes = false,
    ))]
    // One parameter per Python keyword argument.
    #[allow(clippy::too_many_arguments)]
    fn new(
        schedule: &Bound<'_, PyAny>,
        backpressure_limit: usize,
        close_on_backpressure_limit: bool,
        heartbeat_timeout: f64,
        idle_timeout: f64,
        send_pings: bool,
        on_overflow: Option<&Bound<'_, PyAny>>,
        on_interest: Option<&Bound<'_, PyAny>>,
        direct_writes: bool,
    ) -> PyResult<Self> {
        if !schedule.is_callable() {
            return Err(PyTypeError::new_err("schedule must be callable"));
        }
        let on_overflow = on_overflow.filter(|cb| !cb.is_none());
        if on_overflow.is_some_and(|cb| !cb.is_callable()) {
            return Err(PyTypeError::new_err("on_overflow must be callable or None"));
        }
        let on_interest = on_interest.filter(|cb| !cb.is_none());
        if on_interest.is_some_and(|cb| !cb.is_callable()) {
            return Err(PyTypeError::new_err("on_interest must be callable or None"));
        }
        let config = rc::Config {
            backpressure_limit,
            close_on_backpressure_limit,
            heartbeat_timeout_ms: millis("heartbeat_timeout", heartbeat_timeout)?,
            idle_timeout_ms: millis("idle_timeout", idle_timeout)?,
            send_pings,
            track_interest: on_interest.is_some(),
        };
        let clock = Clock::new();
        Ok(Hub {
            core: rc::Hub::new(config, clock.now_ms()),
            clock,
            schedule: Some(schedule.clone().unbind()),
            on_overflow: on_overflow.map(|cb| cb.clone().unbind()),
            on_interest: on_interest.map(|cb| cb.clone().unbind()),
            writes: Vec::new(),
            direct_writes,
            direct_count: 0,
            ring: if direct_writes { Ring::new() } else { None },
            stage: Stage::default(),
            ring_submits: 0,
        })
    }

    // -- registry ---------------------------------------------------------------------

    fn add(
        &mut self,
        py: Python<'_>,
        client_id: &str,
        write: Py<PyAny>,
        owner: Py<PyAny>,
    ) -> PyResult<u64> {
        if !write.bind(py).is_callable() {
            return Err(PyTypeError::new_err("write must be callable"));
        }
        let now = self.clock.now_ms();
        let direct = self
            .direct_writes
            .then(|| Direct::of(write.bind(py)))
            .flatten();
        self.core
            .add(
                client_id,
                Sink {
                    write,
                    owner,
                    direct,
                },
                now,
            )
            .map(Handle::raw)
            .map_err(|err| PyRuntimeError::new_err(err.to_string()))
    }

    fn remove(slf: &Bound<'_, Self>, handle: u64) -> PyResult<()> {
        let sink = indexing(slf, |this| this.core.remove(Handle::from_raw(handle)))?;
        // Dropped here, after the borrow: the owner's finalizer may use the hub.
        drop(sink);
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.core.len()
    }

    #[pyo3(signature = (handle, user_id))]
    fn authenticate(slf: &Bound<'_, Self>, handle: u64, user_id: Option<&str>) -> PyResult<()> {
        indexing(slf, |this| {
            let now = this.clock.now_ms();
            this.core
                .authenticate(Handle::from_raw(handle), user_id, now);
        })
    }

    #[pyo3(signature = (handle, timeout))]
    fn set_auth_deadline(&mut self, handle: u64, timeout: Option<f64>) -> PyResult<()> {
        let timeout = timeout.map(|t| millis("timeout", t)).transpose()?;
        let now = self.clock.now_ms();
        self.core
            .set_auth_deadline(Handle::from_raw(handle), timeout, now);
        Ok(())
    }

    fn touch(&mut self, handle: u64) {
        let now = self.clock.now_ms();
        self.core.touch(Handle::from_raw(handle), now);
    }

    fn touch_recv(&mut self, handle: u64) {
        let now = self.clock.now_ms();
        self.core.touch_recv(Handle::from_raw(handle), now);
    }

    fn set_encrypted(&mut self, handle: u64, encrypted: bool) {
        self.core.set_encrypted(Handle::from_raw(handle), encrypted);
    }

    fn set_backpressured(&mut self, handle: u64, backpressured: bool) {
        self.core
            .set_backpressured(Handle::from_raw(handle), backpressured);
    }

    fn is_backpressured(&self, handle: u64) -> bool {
        self.core.is_backpressured(Handle::from_raw(handle))
    }

    fn skipped(&self, handle: u64) -> u64 {
        self.core.skipped(Handle::from_raw(handle))
    }

    /// Unix time (seconds) of the last data frame or authentication; 0.0 if dead.
    fn last_activity(&self, handle: u64) -> f64 {
        self.core
            .last_activity(Handle::from_raw(handle))
            .map_or(0.0, |ms| self.clock.unix_seconds(ms))
    }

    // -- rooms and users --------------------------------------------------------------

    fn join(slf: &Bound<'_, Self>, handle: u64, room: &str) -> PyResult<bool> {
        indexing(slf, |this| this.core.join(Handle::from_raw(handle), room))
    }

    fn leave(slf: &Bound<'_, Self>, handle: u64, room: &str) -> PyResult<bool> {
        indexing(slf, |this| this.core.leave(Handle::from_raw(handle), room))
    }

    /// ``(kind, name, present)`` for every interest change since the last drain, in
    /// order; kind is ``INTEREST_ROOM``, ``INTEREST_USER`` or ``INTEREST_CLIENT``.
    fn drain_interest<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut changes: Vec<(u8, Bound<'py, PyString>, bool)> =
            Vec::with_capacity(self.core.pending_interest());
        self.core.drain_interest(|kind, name, present| {
            changes.push((kind.code(), PyString::new(py, name), present))
        });
        PyList::new(py, changes)
    }

    /// The interest changes since the last drain as two lists of channel names (a
    /// change's name after the prefix of its kind): those gained and those lost. Applying
    /// all of the first, then all of the second, equals replaying ``drain_interest()``.
    fn drain_interest_channels<'py>(
        &mut self,
        py: Python<'py>,
        room_prefix: &str,
        user_prefix: &str,
        client_prefix: &str,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let channel = |kind: InterestKind, name: &str| {
            let prefix = match kind {
                InterestKind::Room => room_prefix,
                InterestKind::User => user_prefix,
                InterestKind::Client => client_prefix,
            };
            let mut channel = String::with_capacity(prefix.len() + name.len());
            channel.push_str(prefix);
            channel.push_str(name);
            PyString::new(py, &channel)
        };
        let (mut adds, mut removes) = (Vec::new(), Vec::new());
        self.core.drain_interest_net(
            |kind, name| adds.push(channel(kind, name)),
            |kind, name| removes.push(channel(kind, name)),
        );
        Ok((PyList::new(py, adds)?, PyList::new(py, removes)?))
    }

    fn rooms_of<'py>(&self, py: Python<'py>, handle: u64) -> PyResult<Bound<'py, PyList>> {
        let names: Vec<&str> = self.core.rooms_of(Handle::from_raw(handle)).collect();
        PyList::new(py, names)
    }

    fn in_room(&self, handle: u64, room: &str) -> bool {
        self.core.in_room(Handle::from_raw(handle), room)
    }

    fn has_room(&self, room: &str) -> bool {
        self.core.has_room(room)
    }

    fn room_members<'py>(&self, py: Python<'py>, room: &str) -> PyResult<Bound<'py, PyList>> {
        let ids: Vec<&str> = self.core.room_members(room).collect();
        PyList::new(py, ids)
    }

    fn user_members<'py>(&self, py: Python<'py>, user_id: &str) -> PyResult<Bound<'py, PyList>> {
        let ids: Vec<&str> = self.core.user_members(user_id).collect();
        PyList::new(py, ids)
    }

    fn room_names<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let names: Vec<&str> = self.core.room_names().collect();
        PyList::new(py, names)
    }

    // -- delivery ---------------------------------------------------------------------

    fn send(slf: &Bound<'_, Self>, handle: u64, payload: &[u8]) -> PyResult<bool> {
        queueing(slf, |this| {
            this.core.send(Handle::from_raw(handle), payload)
        })
    }

    #[pyo3(signature = (room, payload, exclude = None))]
    fn send_room(
        slf: &Bound<'_, Self>,
        room: &str,
        payload: &[u8],
        exclude: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let ids = exclude_ids(exclude)?;
        let exclude = Exclude::new(as_strs(&ids)?);
        queueing(slf, |this| this.core.send_room(room, payload, &exclude))
    }

    /// Message ``offset`` of history room ``room`` to its members, in the room's offset
    /// order (held for recovering members, skipped for floored ones); the owners of the
    /// encrypted members that get it are appended to ``encrypted`` when given.
    #[pyo3(signature = (room, epoch, offset, payload, exclude = None, encrypted = None))]
    fn send_history(
        slf: &Bound<'_, Self>,
        room: &str,
        epoch: &str,
        offset: u64,
        payload: &[u8],
        exclude: Option<&Bound<'_, PyAny>>,
        encrypted: Option<&Bound<'_, PyList>>,
    ) -> PyResult<usize> {
        let py = slf.py();
        let ids = exclude_ids(exclude)?;
        let exclude = Exclude::new(as_strs(&ids)?);
        let mut owners: Vec<Py<PyAny>> = Vec::new();
        let queued = queueing(slf, |this| {
            this.core
                .send_history(room, epoch, offset, payload, &exclude, |sink| {
                    if encrypted.is_some() {
                        owners.push(sink.owner.clone_ref(py));
                    }
                })
        })?;
        if let Some(list) = encrypted {
            for owner in owners {
                list.append(owner)?;
            }
        }
        Ok(queued)
    }

    /// Holds the member's live messages of history room ``room`` from now on (its
    /// recovery is being read); ``hold=False`` stops and drops them. False if not a member.
    #[pyo3(signature = (handle, room, hold = true))]
    fn hold_history(&mut self, handle: u64, room: &str, hold: bool) -> bool {
        self.core.hold_history(Handle::from_raw(handle), room, hold)
    }

    /// Offset of the first live message held for the member in ``room``, if any.
    fn held_first(&self, handle: u64, room: &str) -> Option<u64> {
        self.core.held_first(Handle::from_raw(handle), room)
    }

    /// Ends the member's recovery in ``room`` once its replay and ``joined`` (at ``epoch``,
    /// ``offset``) are queued: queues the held messages above ``offset`` in offset order,
    /// each once, and returns ``[]``; for an encrypted member, returns their payloads for
    /// the caller to seal instead.
    fn release_history<'py>(
        slf: &Bound<'py, Self>,
        handle: u64,
        room: &str,
        epoch: &str,
        offset: u64,
    ) -> PyResult<Bound<'py, PyList>> {
        let py = slf.py();
        let released = queueing(slf, |this| {
            this.core
                .release_history(Handle::from_raw(handle), room, epoch, offset)
        })?;
        let payloads: Vec<Bound<'py, PyBytes>> = released
            .encrypted
            .iter()
            .map(|frame| PyBytes::new(py, frame.text_payload()))
            .collect();
        PyList::new(py, payloads)
    }

    fn send_user(slf: &Bound<'_, Self>, user_id: &str, payload: &[u8]) -> PyResult<usize> {
        queueing(slf, |this| this.core.send_user(user_id, payload))
    }

    #[pyo3(signature = (payload, exclude = None))]
    fn broadcast(
        slf: &Bound<'_, Self>,
        payload: &[u8],
        exclude: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let ids = exclude_ids(exclude)?;
        let exclude = Exclude::new(as_strs(&ids)?);
        queueing(slf, |this| this.core.broadcast(payload, &exclude))
    }

    #[pyo3(signature = (room, user_id, exclude = None))]
    fn encrypted_owners<'py>(
        &self,
        py: Python<'py>,
        room: Option<&str>,
        user_id: Option<&str>,
        exclude: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let ids = exclude_ids(exclude)?;
        let exclude = Exclude::new(as_strs(&ids)?);
        let mut owners = Vec::new();
        self.core.encrypted_sinks(room, user_id, &exclude, |sink| {
            owners.push(sink.owner.clone_ref(py))
        });
        PyList::new(py, owners)
    }

    /// Writes every connection's queued frames, one `write` call per connection.
    fn flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let mut writes = {
            let mut this = slf.try_borrow_mut()?;
            let this = &mut *this;
            let mut writes = mem::take(&mut this.writes);
            let mut cache = BytesCache::default();
            let mut direct = 0;
            let mut stage = this.ring.is_some().then(|| mem::take(&mut this.stage));
            // From a connection's `ready` check to the submission no Python code may run
            // that could close its transport (see `crate::direct`): the flush only calls
            // uvloop's C getters, but an allocation could start a garbage collection, and
            // a finalizer could do anything. So no collection until the writes are sent.
            let _no_gc = stage.is_some().then(|| NoGc::new(py));
            this.core.flush(|sink, batch| {
                let stage = stage.as_mut();
                deliver(
                    py,
                    sink,
                    &batch,
                    &mut cache,
                    &mut writes,
                    &mut direct,
                    stage,
                );
            });
            if let (Some(ring), Some(stage)) = (this.ring.as_mut(), stage.as_mut()) {
                if !stage.items.is_empty() && stage.submit(py, ring, &mut writes, &mut direct) {
                    this.ring_submits += 1;
                }
            }
            if let Some(stage) = stage {
                this.stage = stage;
            }
            this.direct_count += direct;
            writes
        };
        call_writes(py, &mut writes);
        // Keep the buffer for the next flush (a re-entrant flush may have left one).
        if let Ok(mut this) = slf.try_borrow_mut() {
            if this.writes.capacity() < writes.capacity() {
                this.writes = writes;
            }
        }
        Ok(())
    }

    /// Writes one connection's queued frames now (before a close frame, say).
    fn flush_one(slf: &Bound<'_, Self>, handle: u64) -> PyResult<()> {
        let py = slf.py();
        let mut writes = Vec::with_capacity(1);
        {
            let mut this = slf.try_borrow_mut()?;
            let this = &mut *this;
            let mut direct = 0;
            this.core
                .flush_one(Handle::from_raw(handle), |sink, batch| {
                    let mut cache = BytesCache::default();
                    deliver(py, sink, &batch, &mut cache, &mut writes, &mut direct, None);
                });
            this.direct_count += direct;
        }
        call_writes(py, &mut writes);
        Ok(())
    }

    // -- deadlines --------------------------------------------------------------------

    /// Advances the deadline wheel to now; returns ``(owner, reason)`` for each
    /// connection that expired since the last sweep (each is reported once).
    fn sweep<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyList>> {
        let py = slf.py();
        let (expired, followup) = {
            let mut this = slf.try_borrow_mut()?;
            let this = &mut *this;
            let now = this.clock.now_ms();
            let mut expired: Vec<(Py<PyAny>, u8)> = Vec::new();
            this.core.sweep(now, |sink, reason| {
                expired.push((sink.owner.clone_ref(py), reason.code()))
            });
            (expired, this.followup(py))
        };
        let expired = PyList::new(py, expired)?;
        // Expired connections are reported once, so a failing schedule must not lose
        // them; the queued pings go out with the next flush.
        if let Err(err) = followup.run(slf) {
            err.write_unraisable(py, Some(slf.as_any()));
        }
        Ok(expired)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.core.stats();
        let dict = PyDict::new(py);
        dict.set_item(intern!(py, "connections"), s.connections)?;
        dict.set_item(intern!(py, "authenticated"), s.authenticated)?;
        dict.set_item(intern!(py, "rooms"), s.rooms)?;
        dict.set_item(intern!(py, "users"), s.users)?;
        dict.set_item(intern!(py, "memberships"), s.memberships)?;
        dict.set_item(intern!(py, "skipped"), s.skipped)?;
        dict.set_item(intern!(py, "delivered"), s.delivered)?;
        dict.set_item(intern!(py, "frames_out"), s.frames_out)?;
        dict.set_item(intern!(py, "bytes_out"), s.bytes_out)?;
        dict.set_item(intern!(py, "backpressured"), s.backpressured)?;
        dict.set_item(intern!(py, "pending_bytes"), s.pending_bytes)?;
        dict.set_item(intern!(py, "wheel_entries"), s.wheel_entries)?;
        dict.set_item(intern!(py, "direct_writes"), self.direct_count)?;
        dict.set_item(intern!(py, "io_uring"), u64::from(self.ring.is_some()))?;
        dict.set_item(intern!(py, "ring_submits"), self.ring_submits)?;
        Ok(dict)
    }

    // -- garbage collection -----------------------------------------------------------

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.schedule)?;
        visit.call(&self.on_overflow)?;
        visit.call(&self.on_interest)?;
        for sink in self.core.sinks() {
            visit.call(&sink.write)?;
            visit.call(&sink.owner)?;
            if let Some(direct) = &sink.direct {
                direct.traverse(&visit)?;
            }
        }
        for (write, bytes) in &self.writes {
            visit.call(write)?;
            visit.call(bytes)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.schedule = None;
        self.on_overflow = None;
        self.on_interest = None;
        self.writes.clear();
        drop(self.core.drain_sinks());
    }
}
