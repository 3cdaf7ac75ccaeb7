//! A connection's record and its outgoing queue: the slots of the registry, the frames
//! queued per connection, the queueing state every delivery path shares (backpressure,
//! dirty list, flush request, counters) and the hand-off of a connection's whole batch
//! to the caller's writer.
//!
//! Nothing here writes: `Outbox::offer` queues a shared `Frame` (or counts a skip) and
//! `drain` hands the caller one [`Batch`] per connection when the hub flushes.

use std::collections::VecDeque;

use crate::deadline::Clocks;
use crate::deflate::Outgoing;
use crate::exclude::Exclude;
use crate::frame::Frame;
use crate::ids::{ClientId, Handle};
use crate::rooms::ConnRooms;
use crate::users::UserLink;

/// The frames a flush writes to one connection, in queue order.
pub struct Batch<'a> {
    first: &'a Frame,
    rest: &'a [Frame],
    bytes: usize,
}

impl<'a> Batch<'a> {
    /// The frame, when the batch is exactly one.
    pub fn single(&self) -> Option<&'a Frame> {
        self.rest.is_empty().then_some(self.first)
    }

    pub fn frames(&self) -> impl Iterator<Item = &'a Frame> + use<'a> {
        std::iter::once(self.first).chain(self.rest)
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        1 + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Total bytes of all frames.
    pub fn byte_len(&self) -> usize {
        self.bytes
    }
}

/// Frames queued for one connection. `rest` keeps its allocation across flushes and
/// the common single-frame case needs none.
#[derive(Default)]
pub(super) struct Pending {
    first: Option<Frame>,
    /// Boxed (16 bytes less per connection): most connections never queue a second
    /// frame before a flush; once allocated, the box and its buffer are reused.
    #[allow(clippy::box_collection)]
    rest: Option<Box<Vec<Frame>>>,
    pub(super) bytes: usize,
}

impl Pending {
    fn push(&mut self, frame: Frame) {
        self.bytes += frame.len();
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.rest.get_or_insert_default().push(frame);
        }
    }
}

pub(super) struct Conn<S> {
    pub(super) handle: Handle,
    pub(super) authenticated: bool,
    pub(super) encrypted: bool,
    pub(super) backpressured: bool,
    /// Listed in `Outbox::dirty` with frames pending.
    pub(super) dirty: bool,
    pub(super) overflow_reported: bool,
    /// The server window (`server_max_window_bits`) of a connection that negotiated
    /// permessage-deflate; 0 when it did not.
    pub(super) deflate_window: u8,
    pub(super) pending: Pending,
    pub(super) skipped: u64,
    pub(super) client: ClientId,
    pub(super) user: Option<UserLink>,
    pub(super) rooms: ConnRooms,
    pub(super) clocks: Clocks,
    pub(super) sink: S,
}

impl<S> Conn<S> {
    /// Receives plaintext fan-out (room, user, broadcast).
    #[inline]
    pub(super) fn takes_plain(&self, exclude: &Exclude<'_>) -> bool {
        self.authenticated && !self.encrypted && !exclude.contains(&self.client)
    }

    /// Gets encrypted fan-out (through the caller's transformer).
    pub(super) fn takes_encrypted(&self, exclude: &Exclude<'_>) -> bool {
        self.authenticated && self.encrypted && !exclude.contains(&self.client)
    }
}

/// A free slot keeps the generation its next connection gets; a live one's generation
/// is its connection's handle's (so it is not stored twice).
pub(super) enum Slot<S> {
    Free { generation: u32 },
    Live(Conn<S>),
}

impl<S> Slot<S> {
    pub(super) fn generation(&self) -> u32 {
        match self {
            Slot::Free { generation } => *generation,
            Slot::Live(conn) => conn.handle.generation(),
        }
    }

    #[inline]
    pub(super) fn conn(&self) -> Option<&Conn<S>> {
        match self {
            Slot::Live(conn) => Some(conn),
            Slot::Free { .. } => None,
        }
    }

    #[inline]
    pub(super) fn conn_mut(&mut self) -> Option<&mut Conn<S>> {
        match self {
            Slot::Live(conn) => Some(conn),
            Slot::Free { .. } => None,
        }
    }
}

pub(super) fn live<S>(slots: &[Slot<S>], handle: Handle) -> Option<&Conn<S>> {
    let slot = slots.get(handle.slot() as usize)?;
    let conn = slot.conn()?;
    (conn.handle == handle).then_some(conn)
}

pub(super) fn live_mut<S>(slots: &mut [Slot<S>], handle: Handle) -> Option<&mut Conn<S>> {
    let slot = slots.get_mut(handle.slot() as usize)?;
    let conn = slot.conn_mut()?;
    (conn.handle == handle).then_some(conn)
}

/// Members of rooms and users are always live, so a slot index is enough.
#[inline]
pub(super) fn member_mut<S>(slots: &mut [Slot<S>], slot: u32) -> Option<&mut Conn<S>> {
    slots.get_mut(slot as usize).and_then(Slot::conn_mut)
}

pub(super) fn member<S>(slots: &[Slot<S>], slot: u32) -> Option<&Conn<S>> {
    slots.get(slot as usize).and_then(Slot::conn)
}

/// Queueing state shared by every delivery path.
pub(super) struct Outbox {
    limit: usize,
    close_on_limit: bool,
    /// Slots with pending frames, in the order they became dirty (may hold stale
    /// slots; `Conn::dirty` is the truth). A bounded pass takes from the front and leaves
    /// the rest for the next, behind nothing newer.
    pub(super) dirty: VecDeque<u32>,
    /// A bounded pass stopped with connections left; the next pass resumes there.
    pub(super) resuming: bool,
    /// Where the next pass split by its bound starts in a fresh dirty list (advanced by
    /// each such pass), so no connection of a large room is always in the last part.
    pub(super) start: usize,
    pub(super) overflowed: Vec<Handle>,
    /// A flush is scheduled (or requested) and has not run yet.
    pub(super) flush_scheduled: bool,
    /// The caller must schedule a flush.
    pub(super) flush_requested: bool,
    pub(super) skipped: u64,
    pub(super) delivered: u64,
    pub(super) frames_out: u64,
    pub(super) bytes_out: u64,
    pub(super) pending_bytes: usize,
}

impl Outbox {
    /// Empty, skipping messages that would take a connection's queue past `limit` bytes
    /// (and reporting the connection once when `close_on_limit`).
    pub(super) fn new(limit: usize, close_on_limit: bool) -> Self {
        Outbox {
            limit,
            close_on_limit,
            dirty: VecDeque::new(),
            resuming: false,
            start: 0,
            overflowed: Vec::new(),
            flush_scheduled: false,
            flush_requested: false,
            skipped: 0,
            delivered: 0,
            frames_out: 0,
            bytes_out: 0,
            pending_bytes: 0,
        }
    }

    /// Queues `frame` unless the connection is backpressured; false when skipped.
    #[inline]
    pub(super) fn offer<S>(&mut self, slot: u32, conn: &mut Conn<S>, frame: &Frame) -> bool {
        if conn.backpressured || conn.pending.bytes.saturating_add(frame.len()) > self.limit {
            conn.skipped += 1;
            self.skipped += 1;
            if self.close_on_limit && !conn.overflow_reported {
                conn.overflow_reported = true;
                self.overflowed.push(conn.handle);
            }
            return false;
        }
        self.delivered += 1;
        self.queue(slot, conn, frame.clone());
        true
    }

    #[inline]
    pub(super) fn queue<S>(&mut self, slot: u32, conn: &mut Conn<S>, frame: Frame) {
        self.pending_bytes += frame.len();
        conn.pending.push(frame);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push_back(slot);
        }
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            self.flush_requested = true;
        }
    }
}

/// Hands a connection's pending frames to `write` and empties its queue.
pub(super) fn drain<S>(
    conn: &mut Conn<S>,
    out: &mut Outbox,
    write: &mut impl FnMut(&S, Batch<'_>),
) {
    let Some(first) = conn.pending.first.take() else {
        return;
    };
    let bytes = conn.pending.bytes;
    let batch = Batch {
        first: &first,
        rest: conn.pending.rest.as_deref().map_or(&[], Vec::as_slice),
        bytes,
    };
    out.frames_out += batch.len() as u64;
    write(&conn.sink, batch);
    if let Some(rest) = &mut conn.pending.rest {
        rest.clear();
    }
    conn.pending.bytes = 0;
    out.pending_bytes -= bytes;
    out.bytes_out += bytes as u64;
}

/// The frames for a fan-out, each built on the first recipient that needs it: the plain
/// one, and the compressed one for connections that negotiated permessage-deflate.
pub(super) struct LazyFrame<'a> {
    payload: &'a [u8],
    frame: Option<Frame>,
    /// The frame the connections that negotiated compression get: compressed, or the
    /// plain one when compressing does not shorten the message.
    deflated: Option<Frame>,
}

impl<'a> LazyFrame<'a> {
    pub(super) fn new(payload: &'a [u8]) -> Self {
        LazyFrame {
            payload,
            frame: None,
            deflated: None,
        }
    }

    /// The plain frame.
    #[inline]
    pub(super) fn get(&mut self) -> &Frame {
        let payload = self.payload;
        self.frame.get_or_insert_with(|| Frame::text(payload))
    }

    /// The frame for a connection with server window `window_bits` (0: plain only):
    /// compressed at most once per fan-out.
    #[inline]
    pub(super) fn for_window(&mut self, window_bits: u8, out: &mut Outgoing) -> &Frame {
        if !out.wanted(self.payload.len(), window_bits) {
            return self.get();
        }
        let frame = match self.deflated.take() {
            Some(frame) => frame,
            None => match out.frame(self.payload) {
                Some(frame) => frame,
                None => self.get().clone(),
            },
        };
        self.deflated.insert(frame)
    }
}

#[cfg(test)]
mod tests {
    use std::mem;

    use super::*;

    /// Per-connection footprint: keep `Slot` small (every slot is paid for whether or
    /// not it is in use). The sink here is two pointers, like the Python binding's.
    #[test]
    fn per_connection_structs_stay_small() {
        type Sink = (Box<u8>, Box<u8>);
        let sizes = [
            ("Slot", mem::size_of::<Slot<Sink>>()),
            ("Conn", mem::size_of::<Conn<Sink>>()),
            ("Pending", mem::size_of::<Pending>()),
            ("Clocks", mem::size_of::<crate::deadline::Clocks>()),
            ("ConnRooms", mem::size_of::<ConnRooms>()),
            ("Option<UserLink>", mem::size_of::<Option<UserLink>>()),
            ("ClientId", mem::size_of::<ClientId>()),
        ];
        println!("{sizes:?}");
        assert!(mem::size_of::<Slot<Sink>>() <= 256);
    }
}
