//! The hub: connection registry, room and user fan-out, backpressure, coalesced
//! flushing and deadlines.
//!
//! Delivery never writes: frames are queued per connection (a shared `Frame` each)
//! and a later [`Hub::flush`] hands every dirty connection its whole batch at once.
//! The caller learns through [`Hub::take_flush_request`] when a flush must be scheduled
//! and through [`Hub::drain_overflowed`] which connections passed the backpressure limit.

use std::error::Error;
use std::fmt;
use std::mem;

use crate::deadline::{Clocks, Due, Expiry, Timeouts};
use crate::exclude::Exclude;
use crate::frame::Frame;
use crate::history::{self, RoomHistory};
use crate::ids::{ClientId, Handle, RoomId};
use crate::interest::{InterestKind, InterestLog};
use crate::rooms::{ConnRooms, Moved, Rooms};
use crate::users::{UserLink, Users};
use crate::wheel::{Entry, Wheel, TICK_MS};

/// Hub-wide settings. Timeouts are milliseconds; zero disables one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Queued (unflushed) bytes a connection may hold before messages to it are skipped.
    pub backpressure_limit: usize,
    /// Report a connection through [`Hub::drain_overflowed`] the first time a message
    /// to it is skipped.
    pub close_on_backpressure_limit: bool,
    /// Authenticated connections expire this long after their last data frame.
    pub heartbeat_timeout_ms: u64,
    /// Every connection expires this long after it last received anything.
    pub idle_timeout_ms: u64,
    /// Queue a ping at half the idle timeout (needs `idle_timeout_ms > 0`).
    pub send_pings: bool,
    /// Record interest changes for [`Hub::drain_interest`].
    pub track_interest: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backpressure_limit: 1 << 20,
            close_on_backpressure_limit: false,
            heartbeat_timeout_ms: 90_000,
            idle_timeout_ms: 0,
            send_pings: false,
            track_interest: false,
        }
    }
}

/// Every one of the 2^32 connection slots is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubFull;

impl fmt::Display for HubFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("hub is full")
    }
}

impl Error for HubFull {}

/// Counters for monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    pub authenticated: usize,
    pub rooms: usize,
    pub users: usize,
    pub memberships: usize,
    /// Messages skipped for backpressure since the hub was created.
    pub skipped: u64,
    /// Messages queued for a connection (one per recipient) since the hub was created.
    pub delivered: u64,
    /// Frames handed to connections' writers by flushes (pings included).
    pub frames_out: u64,
    /// Bytes handed to connections' writers by flushes.
    pub bytes_out: u64,
    /// Connections marked backpressured now.
    pub backpressured: usize,
    /// Bytes queued and not yet flushed.
    pub pending_bytes: usize,
    /// Wheel entries, stale ones included.
    pub wheel_entries: usize,
}

/// What [`Hub::release_history`] did with a recovering member's held messages.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Queued for a plaintext member (each counted like [`Hub::send`]).
    pub queued: usize,
    /// For an encrypted member, whose messages the caller seals: the frames, in order.
    pub encrypted: Vec<Frame>,
}

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
struct Pending {
    first: Option<Frame>,
    /// Boxed (16 bytes less per connection): most connections never queue a second
    /// frame before a flush; once allocated, the box and its buffer are reused.
    #[allow(clippy::box_collection)]
    rest: Option<Box<Vec<Frame>>>,
    bytes: usize,
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

struct Conn<S> {
    handle: Handle,
    authenticated: bool,
    encrypted: bool,
    backpressured: bool,
    /// Listed in `Outbox::dirty` with frames pending.
    dirty: bool,
    overflow_reported: bool,
    pending: Pending,
    skipped: u64,
    client: ClientId,
    user: Option<UserLink>,
    rooms: ConnRooms,
    clocks: Clocks,
    sink: S,
}

impl<S> Conn<S> {
    /// Receives plaintext fan-out (room, user, broadcast).
    #[inline]
    fn takes_plain(&self, exclude: &Exclude<'_>) -> bool {
        self.authenticated && !self.encrypted && !exclude.contains(&self.client)
    }

    /// Gets encrypted fan-out (through the caller's transformer).
    fn takes_encrypted(&self, exclude: &Exclude<'_>) -> bool {
        self.authenticated && self.encrypted && !exclude.contains(&self.client)
    }
}

/// A free slot keeps the generation its next connection gets; a live one's generation
/// is its connection's handle's (so it is not stored twice).
enum Slot<S> {
    Free { generation: u32 },
    Live(Conn<S>),
}

impl<S> Slot<S> {
    fn generation(&self) -> u32 {
        match self {
            Slot::Free { generation } => *generation,
            Slot::Live(conn) => conn.handle.generation(),
        }
    }

    #[inline]
    fn conn(&self) -> Option<&Conn<S>> {
        match self {
            Slot::Live(conn) => Some(conn),
            Slot::Free { .. } => None,
        }
    }

    #[inline]
    fn conn_mut(&mut self) -> Option<&mut Conn<S>> {
        match self {
            Slot::Live(conn) => Some(conn),
            Slot::Free { .. } => None,
        }
    }
}

fn live<S>(slots: &[Slot<S>], handle: Handle) -> Option<&Conn<S>> {
    let slot = slots.get(handle.slot() as usize)?;
    let conn = slot.conn()?;
    (conn.handle == handle).then_some(conn)
}

fn live_mut<S>(slots: &mut [Slot<S>], handle: Handle) -> Option<&mut Conn<S>> {
    let slot = slots.get_mut(handle.slot() as usize)?;
    let conn = slot.conn_mut()?;
    (conn.handle == handle).then_some(conn)
}

/// Members of rooms and users are always live, so a slot index is enough.
#[inline]
fn member_mut<S>(slots: &mut [Slot<S>], slot: u32) -> Option<&mut Conn<S>> {
    slots.get_mut(slot as usize).and_then(Slot::conn_mut)
}

fn member<S>(slots: &[Slot<S>], slot: u32) -> Option<&Conn<S>> {
    slots.get(slot as usize).and_then(Slot::conn)
}

/// Points a moved room member's room list entry at its new position.
fn fix_moved<S>(slots: &mut [Slot<S>], moved: Moved) {
    if let Some(conn) = member_mut(slots, moved.slot) {
        moved.apply(&mut conn.rooms);
    }
}

/// Queueing state shared by every delivery path.
struct Outbox {
    limit: usize,
    close_on_limit: bool,
    /// Slots with pending frames, in the order they became dirty (may hold stale
    /// slots; `Conn::dirty` is the truth).
    dirty: Vec<u32>,
    overflowed: Vec<Handle>,
    /// A flush is scheduled (or requested) and has not run yet.
    flush_scheduled: bool,
    /// The caller must schedule a flush.
    flush_requested: bool,
    skipped: u64,
    delivered: u64,
    frames_out: u64,
    bytes_out: u64,
    pending_bytes: usize,
}

impl Outbox {
    /// Queues `frame` unless the connection is backpressured; false when skipped.
    #[inline]
    fn offer<S>(&mut self, slot: u32, conn: &mut Conn<S>, frame: &Frame) -> bool {
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
    fn queue<S>(&mut self, slot: u32, conn: &mut Conn<S>, frame: Frame) {
        self.pending_bytes += frame.len();
        conn.pending.push(frame);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(slot);
        }
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            self.flush_requested = true;
        }
    }
}

/// Hands a connection's pending frames to `write` and empties its queue.
fn drain<S>(conn: &mut Conn<S>, out: &mut Outbox, write: &mut impl FnMut(&S, Batch<'_>)) {
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

/// Makes sure the connection's one live wheel entry is no later than its earliest
/// deadline. Deadlines that moved later keep their early entry (lazy re-insert).
fn arm<S>(wheel: &mut Wheel, timeouts: &Timeouts, conn: &mut Conn<S>) {
    let Some(deadline) = conn.clocks.next_deadline(conn.authenticated, timeouts) else {
        return;
    };
    let tick = wheel.effective(deadline.div_ceil(TICK_MS));
    if conn.clocks.wheel_due().is_some_and(|due| due <= tick) {
        return;
    }
    conn.clocks
        .set_wheel_due(Some(wheel.insert(conn.handle, tick)));
}

/// The frame for a fan-out, built on the first recipient only.
struct LazyFrame<'a> {
    payload: &'a [u8],
    frame: Option<Frame>,
}

impl<'a> LazyFrame<'a> {
    fn new(payload: &'a [u8]) -> Self {
        LazyFrame {
            payload,
            frame: None,
        }
    }

    #[inline]
    fn get(&mut self) -> &Frame {
        let payload = self.payload;
        self.frame.get_or_insert_with(|| Frame::text(payload))
    }
}

/// The registry and everything that scales with it. `S` is the caller's per-connection
/// sink, handed back on flush, sweep, overflow and removal.
pub struct Hub<S> {
    timeouts: Timeouts,
    slots: Vec<Slot<S>>,
    free: Vec<u32>,
    len: usize,
    authenticated: usize,
    backpressured: usize,
    rooms: Rooms,
    users: Users,
    out: Outbox,
    wheel: Wheel,
    /// Reused buffer of fired wheel entries.
    fired: Vec<Entry>,
    ping: Frame,
    interest: InterestLog,
}

impl<S> Hub<S> {
    /// A hub whose clock starts at `now` (ms).
    pub fn new(config: Config, now: u64) -> Self {
        Hub {
            timeouts: Timeouts {
                heartbeat_ms: config.heartbeat_timeout_ms,
                idle_ms: config.idle_timeout_ms,
                send_pings: config.send_pings,
            },
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            authenticated: 0,
            backpressured: 0,
            rooms: Rooms::default(),
            users: Users::default(),
            out: Outbox {
                limit: config.backpressure_limit,
                close_on_limit: config.close_on_backpressure_limit,
                dirty: Vec::new(),
                overflowed: Vec::new(),
                flush_scheduled: false,
                flush_requested: false,
                skipped: 0,
                delivered: 0,
                frames_out: 0,
                bytes_out: 0,
                pending_bytes: 0,
            },
            wheel: Wheel::new(now / TICK_MS),
            fired: Vec::new(),
            ping: Frame::ping(),
            interest: InterestLog::new(config.track_interest),
        }
    }

    // -- registry -----------------------------------------------------------------

    /// Registers an unauthenticated connection; its idle deadline (if any) starts now.
    pub fn add(&mut self, client_id: &str, sink: S, now: u64) -> Result<Handle, HubFull> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.slots.len()).map_err(|_| HubFull)?;
                self.slots.push(Slot::Free { generation: 1 });
                slot
            }
        };
        let entry = &mut self.slots[slot as usize];
        let handle = Handle::new(slot, entry.generation());
        let mut conn = Conn {
            handle,
            authenticated: false,
            encrypted: false,
            backpressured: false,
            dirty: false,
            overflow_reported: false,
            pending: Pending::default(),
            skipped: 0,
            client: ClientId::new(client_id),
            user: None,
            rooms: ConnRooms::new(),
            clocks: Clocks::new(now),
            sink,
        };
        arm(&mut self.wheel, &self.timeouts, &mut conn);
        *entry = Slot::Live(conn);
        self.len += 1;
        Ok(handle)
    }

    /// Forgets a connection: rooms, user index, pending frames. Returns its sink so the
    /// caller decides where it is dropped. Its wheel entry is skipped when it fires.
    pub fn remove(&mut self, handle: Handle) -> Option<S> {
        let index = handle.slot();
        let slot = self.slots.get_mut(index as usize)?;
        if slot.conn()?.handle != handle {
            return None;
        }
        let generation = match handle.generation().wrapping_add(1) {
            0 => 1,
            generation => generation,
        };
        let conn = match mem::replace(slot, Slot::Free { generation }) {
            Slot::Live(conn) => conn,
            free @ Slot::Free { .. } => {
                *slot = free;
                return None;
            }
        };
        self.free.push(index);
        self.len -= 1;
        if conn.authenticated {
            self.authenticated -= 1;
        }
        if conn.backpressured {
            self.backpressured -= 1;
        }
        self.out.pending_bytes -= conn.pending.bytes;
        let slots = &mut self.slots;
        self.rooms
            .leave_all(&conn.rooms, &mut self.interest, |moved| {
                fix_moved(slots, moved);
            });
        if let Some(link) = &conn.user {
            self.unlink_user(link);
        }
        if conn.authenticated && self.interest.enabled() {
            self.interest
                .record(InterestKind::Client, conn.client.shared(), false);
        }
        Some(conn.sink)
    }

    /// Removes every connection, returning their sinks.
    pub fn drain_sinks(&mut self) -> Vec<S> {
        let handles: Vec<Handle> = self
            .slots
            .iter()
            .filter_map(|s| s.conn().map(|c| c.handle))
            .collect();
        handles.into_iter().filter_map(|h| self.remove(h)).collect()
    }

    fn unlink_user(&mut self, link: &UserLink) {
        if let Some(moved) = self.users.remove(link, &mut self.interest) {
            if let Some(user) = member_mut(&mut self.slots, moved).and_then(|c| c.user.as_mut()) {
                user.pos = link.pos;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, handle: Handle) -> bool {
        live(&self.slots, handle).is_some()
    }

    pub fn sink(&self, handle: Handle) -> Option<&S> {
        live(&self.slots, handle).map(|c| &c.sink)
    }

    /// Every live connection's sink (for the caller's garbage-collector traversal).
    pub fn sinks(&self) -> impl Iterator<Item = &S> {
        self.slots.iter().filter_map(Slot::conn).map(|c| &c.sink)
    }

    pub fn client_id(&self, handle: Handle) -> Option<&str> {
        live(&self.slots, handle).map(|c| c.client.as_str())
    }

    /// Marks the connection authenticated (eligible for fan-out), indexes it under
    /// `user` (moving it if it was under another), clears the auth deadline and starts
    /// the heartbeat deadline from `now`.
    pub fn authenticate(&mut self, handle: Handle, user: Option<&str>, now: u64) {
        let Some(conn) = live_mut(&mut self.slots, handle) else {
            return;
        };
        if !conn.authenticated {
            conn.authenticated = true;
            self.authenticated += 1;
            if self.interest.enabled() {
                self.interest
                    .record(InterestKind::Client, conn.client.shared(), true);
            }
        }
        conn.clocks.auth_deadline = None;
        conn.clocks.last_activity = now;
        let unchanged = match (&conn.user, user) {
            (Some(link), Some(name)) => &*link.name == name,
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            if let Some(old) = conn.user.take() {
                self.unlink_user(&old);
            }
            let link = user.map(|name| self.users.add(name, handle.slot(), &mut self.interest));
            if let Some(conn) = live_mut(&mut self.slots, handle) {
                conn.user = link;
            }
        }
        if let Some(conn) = live_mut(&mut self.slots, handle) {
            arm(&mut self.wheel, &self.timeouts, conn);
        }
    }

    pub fn is_authenticated(&self, handle: Handle) -> bool {
        live(&self.slots, handle).is_some_and(|c| c.authenticated)
    }

    /// Sets the auth deadline `timeout_ms` from `now`; `None` clears it.
    pub fn set_auth_deadline(&mut self, handle: Handle, timeout_ms: Option<u64>, now: u64) {
        let Some(conn) = live_mut(&mut self.slots, handle) else {
            return;
        };
        conn.clocks.auth_deadline = timeout_ms.map(|t| now.saturating_add(t));
        arm(&mut self.wheel, &self.timeouts, conn);
    }

    /// A data frame arrived. O(1): deadlines only move later, nothing touches the wheel.
    #[inline]
    pub fn touch(&mut self, handle: Handle, now: u64) {
        if let Some(conn) = live_mut(&mut self.slots, handle) {
            conn.clocks.last_activity = now;
            conn.clocks.last_recv = now;
            conn.clocks.ping_sent = false;
        }
    }

    /// A control frame (pong) arrived: it counts against idleness, not the heartbeat.
    #[inline]
    pub fn touch_recv(&mut self, handle: Handle, now: u64) {
        if let Some(conn) = live_mut(&mut self.slots, handle) {
            conn.clocks.last_recv = now;
            conn.clocks.ping_sent = false;
        }
    }

    pub fn set_encrypted(&mut self, handle: Handle, encrypted: bool) {
        if let Some(conn) = live_mut(&mut self.slots, handle) {
            conn.encrypted = encrypted;
        }
    }

    pub fn set_backpressured(&mut self, handle: Handle, backpressured: bool) {
        if let Some(conn) = live_mut(&mut self.slots, handle) {
            if conn.backpressured != backpressured {
                conn.backpressured = backpressured;
                if backpressured {
                    self.backpressured += 1;
                } else {
                    self.backpressured -= 1;
                }
            }
        }
    }

    pub fn is_backpressured(&self, handle: Handle) -> bool {
        live(&self.slots, handle).is_some_and(|c| c.backpressured)
    }

    /// Messages skipped for backpressure on this connection.
    pub fn skipped(&self, handle: Handle) -> u64 {
        live(&self.slots, handle).map_or(0, |c| c.skipped)
    }

    /// Last data frame or authentication, in the hub's clock (ms).
    pub fn last_activity(&self, handle: Handle) -> Option<u64> {
        live(&self.slots, handle).map(|c| c.clocks.last_activity)
    }

    // -- rooms and users ------------------------------------------------------------

    /// True if the connection newly joined `room`.
    pub fn join(&mut self, handle: Handle, room: &str) -> bool {
        let Some(conn) = live_mut(&mut self.slots, handle) else {
            return false;
        };
        let shared = Some(conn.client.shared()).filter(|id| ***id == *room);
        self.rooms.join(
            handle.slot(),
            &mut conn.rooms,
            room,
            shared,
            &mut self.interest,
        )
    }

    /// True if the connection was in `room`; an emptied room is deleted.
    pub fn leave(&mut self, handle: Handle, room: &str) -> bool {
        let Some(conn) = live_mut(&mut self.slots, handle) else {
            return false;
        };
        match self
            .rooms
            .leave(handle.slot(), &mut conn.rooms, room, &mut self.interest)
        {
            None => false,
            Some(moved) => {
                if let Some(moved) = moved {
                    fix_moved(&mut self.slots, moved);
                }
                true
            }
        }
    }

    pub fn rooms_of(&self, handle: Handle) -> impl Iterator<Item = &str> {
        live(&self.slots, handle)
            .into_iter()
            .flat_map(|c| c.rooms.as_slice().iter().map(|e| self.rooms.name(e.room)))
    }

    pub fn in_room(&self, handle: Handle, room: &str) -> bool {
        self.member_room(handle, room).is_some()
    }

    /// The id of `room` when `handle` is a live connection and a member of it.
    fn member_room(&self, handle: Handle, room: &str) -> Option<RoomId> {
        let conn = live(&self.slots, handle)?;
        let id = self.rooms.id(room)?;
        self.rooms
            .contains(handle.slot(), conn.rooms.as_slice(), id)
            .then_some(id)
    }

    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.id(room).is_some()
    }

    /// Client ids of every member, whatever their state.
    pub fn room_members(&self, room: &str) -> impl Iterator<Item = &str> {
        self.rooms
            .id(room)
            .into_iter()
            .flat_map(|id| self.rooms.members(id))
            .filter_map(|m| member(&self.slots, m.slot).map(|c| c.client.as_str()))
    }

    /// Client ids of the user's sessions.
    pub fn user_members(&self, user: &str) -> impl Iterator<Item = &str> {
        self.users
            .sessions(user)
            .iter()
            .filter_map(|&slot| member(&self.slots, slot).map(|c| c.client.as_str()))
    }

    pub fn room_names(&self) -> impl Iterator<Item = &str> {
        self.rooms.names()
    }

    // -- delivery -------------------------------------------------------------------

    /// Queues `payload` as a text frame for one connection, whatever its state; false
    /// if the handle is dead or the message was skipped for backpressure.
    pub fn send(&mut self, handle: Handle, payload: &[u8]) -> bool {
        let Some(conn) = live_mut(&mut self.slots, handle) else {
            return false;
        };
        self.out.offer(handle.slot(), conn, &Frame::text(payload))
    }

    /// Queues one shared frame for every authenticated plaintext member of `room` not
    /// in `exclude` and not backpressured; returns how many got it.
    pub fn send_room(&mut self, room: &str, payload: &[u8], exclude: &Exclude<'_>) -> usize {
        let Some(id) = self.rooms.id(room) else {
            return 0;
        };
        let mut frame = LazyFrame::new(payload);
        let mut queued = 0;
        for &crate::rooms::Member { slot, .. } in self.rooms.members(id) {
            let Some(conn) = member_mut(&mut self.slots, slot) else {
                continue;
            };
            if conn.takes_plain(exclude) && self.out.offer(slot, conn, frame.get()) {
                queued += 1;
            }
        }
        queued
    }

    /// Delivers message `offset` of history room `room` (see `crate::history`): queued for
    /// each authenticated plaintext member not in `exclude` when it is the newest of the
    /// room's `epoch`, except members whose recovery is being read (held for them) and
    /// floored members; `encrypted` is called with each encrypted member that would get it
    /// (the caller seals). Returns how many were queued.
    pub fn send_history(
        &mut self,
        room: &str,
        epoch: &str,
        offset: u64,
        payload: &[u8],
        exclude: &Exclude<'_>,
        mut encrypted: impl FnMut(&S),
    ) -> usize {
        let Some((members, history)) = self
            .rooms
            .id(room)
            .and_then(|id| self.rooms.with_history(id))
        else {
            return 0;
        };
        let newest = history.advance(epoch, offset);
        let mut frame = LazyFrame::new(payload);
        let mut queued = 0;
        if history.is_plain() {
            if !newest {
                return 0;
            }
            for &crate::rooms::Member { slot, .. } in members {
                let Some(conn) = member_mut(&mut self.slots, slot) else {
                    continue;
                };
                if conn.takes_plain(exclude) {
                    if self.out.offer(slot, conn, frame.get()) {
                        queued += 1;
                    }
                } else if conn.takes_encrypted(exclude) {
                    encrypted(&conn.sink);
                }
            }
            return queued;
        }
        history.pass_floors(epoch, offset);
        for &crate::rooms::Member { slot, .. } in members {
            let Some(conn) = member_mut(&mut self.slots, slot) else {
                continue;
            };
            if !conn.authenticated || exclude.contains(&conn.client) {
                continue;
            }
            if history.hold(slot, offset, || frame.get().clone())
                || !newest
                || history.floored(slot)
            {
                continue;
            }
            if conn.encrypted {
                encrypted(&conn.sink);
            } else if self.out.offer(slot, conn, frame.get()) {
                queued += 1;
            }
        }
        queued
    }

    /// The member's history state in `room` (created on demand) when it is a member.
    fn member_history(&mut self, handle: Handle, room: &str) -> Option<&mut RoomHistory> {
        let id = self.member_room(handle, room)?;
        self.rooms.with_history(id).map(|(_, history)| history)
    }

    /// Holds the member's live messages of history room `room` from now on (its recovery is
    /// being read), or with `hold` false stops and drops them. False if not a member.
    pub fn hold_history(&mut self, handle: Handle, room: &str, hold: bool) -> bool {
        let slot = handle.slot();
        let Some(history) = self.member_history(handle, room) else {
            return false;
        };
        if hold {
            history.start(slot);
        } else {
            history.stop(slot);
        }
        true
    }

    /// Offset of the first live message held for the member in `room`.
    pub fn held_first(&self, handle: Handle, room: &str) -> Option<u64> {
        let id = self.member_room(handle, room)?;
        self.rooms.history(id)?.first_held(handle.slot())
    }

    /// Ends the member's recovery in `room` after its replay and `joined` (at `epoch`,
    /// `offset`) were queued: the held messages above `offset`, in offset order, each once,
    /// are queued (plaintext) or handed back (encrypted); live copies up to the highest
    /// offset seen are skipped from now on (its floor).
    pub fn release_history(
        &mut self,
        handle: Handle,
        room: &str,
        epoch: &str,
        offset: u64,
    ) -> Released {
        let slot = handle.slot();
        let Some(history) = self.member_history(handle, room) else {
            return Released::default();
        };
        let (frames, highest) = history::release(history.stop(slot).unwrap_or_default(), offset);
        history.set_floor(slot, epoch, offset.max(highest));
        let Some(conn) = live_mut(&mut self.slots, handle) else {
            return Released::default();
        };
        if conn.encrypted {
            return Released {
                queued: 0,
                encrypted: frames,
            };
        }
        let mut queued = 0;
        for frame in &frames {
            if self.out.offer(slot, conn, frame) {
                queued += 1;
            }
        }
        Released {
            queued,
            encrypted: Vec::new(),
        }
    }

    /// Like [`Hub::send_room`] for the sessions of `user`.
    pub fn send_user(&mut self, user: &str, payload: &[u8]) -> usize {
        let exclude = Exclude::none();
        let mut frame = LazyFrame::new(payload);
        let mut queued = 0;
        for &slot in self.users.sessions(user) {
            let Some(conn) = member_mut(&mut self.slots, slot) else {
                continue;
            };
            if conn.takes_plain(&exclude) && self.out.offer(slot, conn, frame.get()) {
                queued += 1;
            }
        }
        queued
    }

    /// Like [`Hub::send_room`] for every connection.
    pub fn broadcast(&mut self, payload: &[u8], exclude: &Exclude<'_>) -> usize {
        let mut frame = LazyFrame::new(payload);
        let mut queued = 0;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(conn) = slot.conn_mut() else {
                continue;
            };
            if conn.takes_plain(exclude) && self.out.offer(index as u32, conn, frame.get()) {
                queued += 1;
            }
        }
        queued
    }

    /// Calls `f` with every authenticated encrypted connection not in `exclude`: those
    /// in `room` if given, those of `user` if given (both: the user's sessions in the
    /// room), everyone if neither.
    pub fn encrypted_sinks(
        &self,
        room: Option<&str>,
        user: Option<&str>,
        exclude: &Exclude<'_>,
        mut f: impl FnMut(&S),
    ) {
        let mut visit = |slot: u32| {
            if let Some(conn) = member(&self.slots, slot) {
                if conn.takes_encrypted(exclude) {
                    f(&conn.sink);
                }
            }
        };
        match (room.map(|r| self.rooms.id(r)), user) {
            (Some(None), _) => {}
            (Some(Some(id)), None) => self.rooms.members(id).iter().for_each(|m| visit(m.slot)),
            (Some(Some(id)), Some(user)) => self
                .users
                .sessions(user)
                .iter()
                .filter(|&&s| {
                    member(&self.slots, s)
                        .is_some_and(|c| self.rooms.contains(s, c.rooms.as_slice(), id))
                })
                .for_each(|&s| visit(s)),
            (None, Some(user)) => self.users.sessions(user).iter().for_each(|&s| visit(s)),
            (None, None) => {
                for (index, slot) in self.slots.iter().enumerate() {
                    if slot.conn().is_some() {
                        visit(index as u32);
                    }
                }
            }
        }
    }

    /// True once after something was queued with no flush pending: the caller must
    /// arrange for [`Hub::flush`] to run.
    #[inline]
    pub fn take_flush_request(&mut self) -> bool {
        mem::take(&mut self.out.flush_requested)
    }

    /// The caller could not schedule the requested flush; the next queued frame asks
    /// again.
    pub fn cancel_flush(&mut self) {
        self.out.flush_scheduled = false;
        self.out.flush_requested = false;
    }

    /// True if connections overflowed since the last [`Hub::drain_overflowed`].
    #[inline]
    pub fn has_overflowed(&self) -> bool {
        !self.out.overflowed.is_empty()
    }

    /// Calls `f` with each live connection that overflowed (once per connection ever,
    /// only with `close_on_backpressure_limit`).
    pub fn drain_overflowed(&mut self, mut f: impl FnMut(&S)) {
        for handle in self.out.overflowed.drain(..) {
            if let Some(conn) = live(&self.slots, handle) {
                f(&conn.sink);
            }
        }
    }

    /// Hands each dirty connection its pending frames (one batch per connection) and
    /// empties the queues. `write` must not need the hub: collect, then write.
    pub fn flush(&mut self, mut write: impl FnMut(&S, Batch<'_>)) {
        self.out.flush_scheduled = false;
        let mut dirty = mem::take(&mut self.out.dirty);
        for &slot in &dirty {
            if let Some(conn) = member_mut(&mut self.slots, slot) {
                if mem::take(&mut conn.dirty) {
                    drain(conn, &mut self.out, &mut write);
                }
            }
        }
        dirty.clear();
        self.out.dirty = dirty;
    }

    /// Hands one connection its pending frames now (before a close frame, say).
    pub fn flush_one(&mut self, handle: Handle, mut write: impl FnMut(&S, Batch<'_>)) {
        if let Some(conn) = live_mut(&mut self.slots, handle) {
            if mem::take(&mut conn.dirty) {
                drain(conn, &mut self.out, &mut write);
            }
        }
    }

    /// Bytes queued for one connection.
    pub fn pending_bytes(&self, handle: Handle) -> usize {
        live(&self.slots, handle).map_or(0, |c| c.pending.bytes)
    }

    // -- interest -------------------------------------------------------------------

    /// True once after an interest change was recorded with no drain pending: the
    /// caller must arrange for [`Hub::drain_interest`] to run. Always false unless
    /// [`Config::track_interest`] is set.
    #[inline]
    pub fn take_interest_request(&mut self) -> bool {
        self.interest.take_request()
    }

    /// The caller could not schedule the requested drain; the next change asks again.
    pub fn cancel_interest(&mut self) {
        self.interest.cancel();
    }

    /// Interest changes recorded and not yet drained.
    pub fn pending_interest(&self) -> usize {
        self.interest.len()
    }

    /// Calls `f(kind, name, present)` for every change since the last drain, in order:
    /// a room's first join and last leave, a user's first and last local session, a
    /// client's authentication and its removal once authenticated. A name may appear
    /// several times; the last change is the current state.
    pub fn drain_interest(&mut self, f: impl FnMut(InterestKind, &str, bool)) {
        self.interest.drain(f);
    }

    /// The changes since the last drain as their net effect: `add` for each name gained,
    /// then `remove` for each lost (see [`InterestLog::drain_net`]); applying the adds
    /// before the removes equals replaying [`Hub::drain_interest`] in order.
    pub fn drain_interest_net(
        &mut self,
        add: impl FnMut(InterestKind, &str),
        remove: impl FnMut(InterestKind, &str),
    ) {
        self.interest.drain_net(add, remove);
    }

    // -- deadlines ------------------------------------------------------------------

    /// Runs the wheel up to `now`: calls `expired` once per connection whose deadline
    /// passed (auth, then heartbeat, then idle; its deadlines are then disarmed) and
    /// queues due pings. Costs the entries that fire or cascade, not the connections.
    pub fn sweep(&mut self, now: u64, mut expired: impl FnMut(&S, Expiry)) {
        let mut fired = mem::take(&mut self.fired);
        self.wheel.advance(now / TICK_MS, &mut fired);
        for entry in fired.drain(..) {
            let Some(conn) = live_mut(&mut self.slots, entry.handle) else {
                continue;
            };
            if conn.clocks.wheel_due() != Some(entry.due) {
                continue;
            }
            conn.clocks.set_wheel_due(None);
            match conn.clocks.due(conn.authenticated, &self.timeouts, now) {
                Due::Expired(reason) => {
                    conn.clocks.expired = true;
                    expired(&conn.sink, reason);
                    continue;
                }
                Due::Ping => {
                    conn.clocks.ping_sent = true;
                    self.out.queue(entry.handle.slot(), conn, self.ping.clone());
                }
                Due::Nothing => {}
            }
            arm(&mut self.wheel, &self.timeouts, conn);
        }
        self.fired = fired;
    }

    /// Wheel entries fired or cascaded since creation: the sweep's whole workload.
    pub fn wheel_visits(&self) -> u64 {
        self.wheel.visits()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.len,
            authenticated: self.authenticated,
            rooms: self.rooms.len(),
            users: self.users.len(),
            memberships: self.rooms.memberships(),
            skipped: self.out.skipped,
            delivered: self.out.delivered,
            frames_out: self.out.frames_out,
            bytes_out: self.out.bytes_out,
            backpressured: self.backpressured,
            pending_bytes: self.out.pending_bytes,
            wheel_entries: self.wheel.len(),
        }
    }
}

#[cfg(test)]
mod tests {
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
