//! `roomcast._core.Hub`: the Python face of `roomcast_core::Hub`.
//!
//! Re-entrancy: `write`, `schedule`, `on_overflow` and `on_interest` may call straight back into the
//! hub (uvloop calls `pause_writing` from inside `write`, which calls
//! `set_backpressured`; an error path may call `remove`). So every call into Python is
//! made with no borrow of the hub outstanding: methods that call out take
//! `slf: &Bound<Self>`, collect what they need under a short `try_borrow_mut`, drop it,
//! then call. Python objects removed from the hub are also dropped after the borrow,
//! since a finalizer may call back in.
//!
//! This file is the class and its methods. The calls an operation owes are collected and
//! made by `crate::followup` (`queueing`, `indexing`), a flush's batches are written by
//! `crate::write`, and arguments are converted by `crate::convert`.

use std::mem;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use pyo3::{intern, PyTraverseError};
use roomcast_core::{self as rc, Exclude, Handle, InterestKind, Sent};

use crate::convert::{as_strs, exclude_ids, millis, Clock};
use crate::direct::Direct;
use crate::followup::{indexing, queueing};
use crate::ring::Ring;
use crate::write::{call_writes, deliver, BytesCache, NoGc, Stage};

/// What the hub keeps per connection on behalf of Python.
pub(crate) struct Sink {
    /// Takes one `bytes` (the transport's `write`).
    pub(crate) write: Py<PyAny>,
    /// Opaque; handed back by `sweep`, `encrypted_owners` and `on_overflow`.
    pub(crate) owner: Py<PyAny>,
    /// Set when batches may go straight to the socket (see `crate::direct`).
    pub(crate) direct: Option<Direct>,
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
    pub(crate) core: rc::Hub<Sink>,
    clock: Clock,
    pub(crate) schedule: Option<Py<PyAny>>,
    pub(crate) on_overflow: Option<Py<PyAny>>,
    pub(crate) on_interest: Option<Py<PyAny>>,
    /// Reused between flushes; empty outside `flush`.
    writes: Vec<(Py<PyAny>, Py<PyBytes>)>,
    /// New connections on plain uvloop TCP transports get direct writes.
    direct_writes: bool,
    /// Batches written (at least partly) straight to a socket.
    direct_count: u64,
    /// One submission per flush for the direct writes, when the kernel allows it; None
    /// otherwise, and for good once the ring failed (then direct writes go by `send(2)`).
    ring: Option<Ring>,
    /// Reused between flushes; empty outside `flush`.
    stage: Stage,
    /// Flushes whose direct writes went to the ring.
    ring_submits: u64,
    /// The bound of one scheduled flush's pass (`rc::Hub::flush_pass`).
    pass: rc::Pass,
    /// Schedules the rest of a flush that stopped at `pass` (None: `schedule`).
    resume: Option<Py<PyAny>>,
    /// Flushes that stopped at `pass` and scheduled the rest.
    passes_split: u64,
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
        // A scheduled flush writes at most 256 connections before it lets the loop run
        // (then resumes): at 3-6 us of CPU per send on loopback, about 1-1.5 ms. Or 4 MiB
        // (a client that fell behind takes more per send). Chosen with `python -m benches
        // stall` (256 against 1,024 and 4,096: benches/README.md). Literals: the Python
        // signature shows them.
        pass_sockets = 256,
        pass_bytes = 4_194_304,
        resume = None,
        deflate_threshold = rc::DEFAULT_DEFLATE_THRESHOLD,
        deflate_level = rc::DEFAULT_DEFLATE_LEVEL,
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
        pass_sockets: usize,
        pass_bytes: usize,
        resume: Option<&Bound<'_, PyAny>>,
        deflate_threshold: usize,
        deflate_level: u32,
    ) -> PyResult<Self> {
        if deflate_level > 9 {
            return Err(PyValueError::new_err(format!(
                "deflate_level must be 0-9: {deflate_level}"
            )));
        }
        if !schedule.is_callable() {
            return Err(PyTypeError::new_err("schedule must be callable"));
        }
        let on_overflow = on_overflow.filter(|cb| !cb.is_none());
        if on_overflow.is_some_and(|cb| !cb.is_callable()) {
            return Err(PyTypeError::new_err("on_overflow must be callable or None"));
        }
        let resume = resume.filter(|cb| !cb.is_none());
        if resume.is_some_and(|cb| !cb.is_callable()) {
            return Err(PyTypeError::new_err("resume must be callable or None"));
        }
        if pass_sockets == 0 {
            return Err(PyValueError::new_err("pass_sockets must be positive: 0"));
        }
        if pass_bytes == 0 {
            return Err(PyValueError::new_err("pass_bytes must be positive: 0"));
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
            deflate_threshold,
            deflate_level,
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
            pass: rc::Pass {
                sockets: pass_sockets,
                bytes: pass_bytes,
            },
            resume: resume.map(|cb| cb.clone().unbind()),
            passes_split: 0,
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

    /// The connection negotiated permessage-deflate with server window ``window_bits``
    /// (8-15), or with None did not: its messages of at least ``deflate_threshold`` bytes
    /// are compressed from now on, once per message for every such recipient.
    #[pyo3(signature = (handle, window_bits))]
    fn set_deflate(&mut self, handle: u64, window_bits: Option<u8>) {
        self.core.set_deflate(Handle::from_raw(handle), window_bits);
    }

    fn is_deflate(&self, handle: u64) -> bool {
        self.core.is_deflate(Handle::from_raw(handle))
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

    fn room_count(&self, handle: u64) -> usize {
        self.core.room_count(Handle::from_raw(handle))
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
    /// encrypted members that get it are appended to ``encrypted`` when given. Returns how
    /// many it was queued for, or -1 when the room's offset went back under the same epoch
    /// (delivered to no one: the caller starts a new epoch).
    #[pyo3(signature = (room, epoch, offset, payload, exclude = None, encrypted = None))]
    fn send_history(
        slf: &Bound<'_, Self>,
        room: &str,
        epoch: &str,
        offset: u64,
        payload: &[u8],
        exclude: Option<&Bound<'_, PyAny>>,
        encrypted: Option<&Bound<'_, PyList>>,
    ) -> PyResult<i64> {
        let py = slf.py();
        let ids = exclude_ids(exclude)?;
        let exclude = Exclude::new(as_strs(&ids)?);
        let mut owners: Vec<Py<PyAny>> = Vec::new();
        let sent = queueing(slf, |this| {
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
        Ok(match sent {
            Sent::Queued(n) => i64::try_from(n).unwrap_or(i64::MAX),
            Sent::RolledBack => -1,
        })
    }

    /// Holds the member's live messages of history room ``room`` from now on (its
    /// recovery is being read); ``hold=False`` stops and drops them. False if not a member.
    #[pyo3(signature = (handle, room, hold = true))]
    fn hold_history(&mut self, handle: u64, room: &str, hold: bool) -> bool {
        self.core.hold_history(Handle::from_raw(handle), room, hold)
    }

    /// ``(epoch, offset)`` of the first live message held for the member in ``room`` (of
    /// ``epoch``, when given).
    #[pyo3(signature = (handle, room, epoch = None))]
    fn held_first(&self, handle: u64, room: &str, epoch: Option<&str>) -> Option<(String, u64)> {
        self.core
            .held_first(Handle::from_raw(handle), room, epoch)
            .map(|(epoch, offset)| (epoch.to_owned(), offset))
    }

    /// Epoch of the last live message held for the member in ``room``.
    fn held_epoch(&self, handle: u64, room: &str) -> Option<String> {
        self.core
            .held_epoch(Handle::from_raw(handle), room)
            .map(str::to_owned)
    }

    /// Bytes held for the member in ``room`` (0 when not recovering).
    fn held_bytes(&self, handle: u64, room: &str) -> usize {
        self.core.held_bytes(Handle::from_raw(handle), room)
    }

    /// ``[(offset, payload), ...]``: the messages held for the member in ``room`` of
    /// ``epoch`` above ``offset``, in offset order, each once, up to ``budget`` bytes (at
    /// least one), taken while still holding; ``[]`` when none is left.
    fn take_held<'py>(
        &mut self,
        py: Python<'py>,
        handle: u64,
        room: &str,
        epoch: &str,
        offset: u64,
        budget: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let taken = self
            .core
            .take_held(Handle::from_raw(handle), room, epoch, offset, budget);
        let items: Vec<(u64, Bound<'py, PyBytes>)> = taken
            .iter()
            .map(|(offset, frame)| (*offset, PyBytes::new(py, frame.text_payload())))
            .collect();
        PyList::new(py, items)
    }

    /// Ends the member's recovery in ``room`` once its replay and ``joined`` (at ``epoch``,
    /// ``offset``) are queued: queues the held messages of ``epoch`` above ``offset`` in
    /// offset order, each once, and returns ``[]``; for an encrypted member, returns their
    /// payloads for the caller to seal instead. An empty ``epoch`` (unreadable history)
    /// stands for the epoch of the first held message.
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

    /// Writes the connections' queued frames, one `write` call per connection: all of
    /// them when `whole`, else (a scheduled flush) up to the hub's pass bound, scheduling
    /// the rest through `resume` so the loop runs in between.
    #[pyo3(signature = (whole = false))]
    fn flush(slf: &Bound<'_, Self>, whole: bool) -> PyResult<()> {
        let py = slf.py();
        let (mut writes, resume) = {
            let mut this = slf.try_borrow_mut()?;
            let this = &mut *this;
            let mut writes = mem::take(&mut this.writes);
            let mut cache = BytesCache::default();
            let mut direct = 0;
            let mut stage = this.ring.is_some().then(|| mem::take(&mut this.stage));
            let pass = if whole { rc::Pass::WHOLE } else { this.pass };
            // From a connection's `ready` check to the submission no Python code may run
            // that could close its transport (see `crate::direct`): the flush only calls
            // uvloop's C getters, but an allocation could start a garbage collection, and
            // a finalizer could do anything. So no collection until the writes are sent.
            let _no_gc = stage.is_some().then(|| NoGc::new(py));
            let more = this.core.flush_pass(pass, |sink, batch| {
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
                if !stage.is_empty() && stage.submit(py, ring, &mut writes, &mut direct) {
                    this.ring_submits += 1;
                }
                if !ring.is_up() {
                    // It failed and was torn down (`crate::ring`): send(2) from now on.
                    this.ring = None;
                }
            }
            if let Some(stage) = stage {
                this.stage = stage;
            }
            this.direct_count += direct;
            let resume = if more {
                this.passes_split += 1;
                let resume = this.resume.as_ref().or(this.schedule.as_ref());
                let resume = resume.map(|cb| cb.clone_ref(py));
                if resume.is_none() {
                    this.core.cancel_flush();
                }
                resume
            } else {
                None
            };
            (writes, resume)
        };
        call_writes(py, &mut writes);
        // Keep the buffer for the next flush (a re-entrant flush may have left one).
        if let Ok(mut this) = slf.try_borrow_mut() {
            if this.writes.capacity() < writes.capacity() {
                this.writes = writes;
            }
        }
        if let Some(resume) = resume {
            let resumed = slf
                .getattr(intern!(py, "flush"))
                .and_then(|flush| resume.bind(py).call1((flush,)));
            if let Err(err) = resumed {
                // The next queued frame asks for a flush again.
                if let Ok(mut this) = slf.try_borrow_mut() {
                    this.core.cancel_flush();
                }
                return Err(err);
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
        dict.set_item(intern!(py, "deflated"), s.deflated)?;
        dict.set_item(intern!(py, "backpressured"), s.backpressured)?;
        dict.set_item(intern!(py, "pending_bytes"), s.pending_bytes)?;
        dict.set_item(intern!(py, "wheel_entries"), s.wheel_entries)?;
        dict.set_item(intern!(py, "direct_writes"), self.direct_count)?;
        dict.set_item(intern!(py, "io_uring"), u64::from(self.ring.is_some()))?;
        dict.set_item(intern!(py, "ring_submits"), self.ring_submits)?;
        dict.set_item(intern!(py, "passes_split"), self.passes_split)?;
        Ok(dict)
    }

    // -- garbage collection -----------------------------------------------------------

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.schedule)?;
        visit.call(&self.on_overflow)?;
        visit.call(&self.on_interest)?;
        visit.call(&self.resume)?;
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
        self.resume = None;
        self.writes.clear();
        drop(self.core.drain_sinks());
    }
}
