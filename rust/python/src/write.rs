//! The write engine of a flush: each connection's batch goes straight to its socket
//! (`crate::direct`: at once, or staged for one io_uring submission, `crate::ring`) or
//! becomes a Python `bytes` (one per shared frame per flush, `BytesCache`) for its
//! transport's `write`. The `write` calls are made by `call_writes` once the hub's borrow
//! is released (the re-entrancy rules at the top of `crate::hub`); while writes are staged,
//! `NoGc` keeps the garbage collector (and so any finalizer) from running.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use roomcast_core::{Batch, Frame};
use rustc_hash::FxHashMap;

use crate::direct::Sent;
use crate::hub::Sink;
use crate::ring::{Ring, Staged};

/// Python `bytes` for each flushed batch, built once per frame per flush when the
/// frame is shared, and once per run of identical multi-frame batches.
#[derive(Default)]
pub(crate) struct BytesCache {
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
pub(crate) struct Stage {
    arena: Vec<u8>,
    items: Vec<Staged>,
    writes: Vec<Py<PyAny>>,
    results: Vec<i32>,
}

impl Stage {
    /// Nothing staged.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

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
    pub(crate) fn submit(
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
pub(crate) struct NoGc {
    was_enabled: bool,
}

impl NoGc {
    pub(crate) fn new(_py: Python<'_>) -> NoGc {
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
pub(crate) fn deliver(
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
pub(crate) fn call_writes(py: Python<'_>, writes: &mut Vec<(Py<PyAny>, Py<PyBytes>)>) {
    for (write, bytes) in writes.drain(..) {
        let _ = write.bind(py).call1((bytes,));
    }
}
