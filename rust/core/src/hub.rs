//! The hub: connection registry, room and user fan-out, backpressure, coalesced
//! flushing and deadlines.
//!
//! Delivery never writes: frames are queued per connection (a shared `Frame` each)
//! and a later [`Hub::flush`] hands every dirty connection its whole batch at once
//! ([`Hub::flush_pass`]: part of them, resuming where it stopped on the next call).
//! The caller learns through [`Hub::take_flush_request`] when a flush must be scheduled
//! and through [`Hub::drain_overflowed`] which connections passed the backpressure limit.
//!
//! Parts: `queue` holds a connection's record and its queue (`Slot`, `Conn`, `Pending`,
//! the shared `Outbox`, `drain`, `LazyFrame`); `history_delivery` is the hub's side of
//! history rooms (`send_history`, `hold_history`, `held_first`, `take_held`, `release_history`).

use std::error::Error;
use std::fmt;
use std::mem;

mod history_delivery;
mod queue;

pub use history_delivery::{Released, Sent};
pub use queue::Batch;

use crate::deadline::{Clocks, Due, Expiry, Timeouts};
use crate::deflate::{Outgoing, MAX_WINDOW_BITS, MIN_WINDOW_BITS};
use crate::exclude::Exclude;
use crate::frame::Frame;
use crate::ids::{ClientId, Handle, RoomId};
use crate::interest::{InterestKind, InterestLog};
use crate::rooms::{ConnRooms, Moved, Rooms};
use crate::users::{UserLink, Users};
use crate::wheel::{Entry, Wheel, TICK_MS};
use queue::{drain, live, live_mut, member, member_mut, Conn, LazyFrame, Outbox, Pending, Slot};

/// The bound of one [`Hub::flush_pass`]: it stops after the connection that brings it
/// to `sockets` connections or `bytes` bytes written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    pub sockets: usize,
    pub bytes: usize,
}

impl Pass {
    /// No bound: every dirty connection.
    pub const WHOLE: Pass = Pass {
        sockets: usize::MAX,
        bytes: usize::MAX,
    };
}

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
    /// Messages shorter than this go uncompressed to connections that negotiated
    /// permessage-deflate (see [`Hub::set_deflate`]).
    pub deflate_threshold: usize,
    /// zlib level (0-9) of the outgoing compression.
    pub deflate_level: u32,
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
            deflate_threshold: DEFAULT_DEFLATE_THRESHOLD,
            deflate_level: DEFAULT_DEFLATE_LEVEL,
        }
    }
}

/// Messages shorter than this are not worth compressing (benches/README.md).
pub const DEFAULT_DEFLATE_THRESHOLD: usize = 256;
/// zlib's level for outgoing messages (benches/README.md).
pub const DEFAULT_DEFLATE_LEVEL: u32 = 6;

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
    /// Messages compressed for permessage-deflate (once per message, not per recipient).
    pub deflated: u64,
    /// Connections marked backpressured now.
    pub backpressured: usize,
    /// Bytes queued and not yet flushed.
    pub pending_bytes: usize,
    /// Wheel entries, stale ones included.
    pub wheel_entries: usize,
}

/// Points a moved room member's room list entry at its new position.
fn fix_moved<S>(slots: &mut [Slot<S>], moved: Moved) {
    if let Some(conn) = member_mut(slots, moved.slot) {
        moved.apply(&mut conn.rooms);
    }
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
    deflate: Outgoing,
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
            out: Outbox::new(
                config.backpressure_limit,
                config.close_on_backpressure_limit,
            ),
            wheel: Wheel::new(now / TICK_MS),
            fired: Vec::new(),
            ping: Frame::ping(),
            interest: InterestLog::new(config.track_interest),
            deflate: Outgoing::new(config.deflate_threshold, config.deflate_level),
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
            deflate_window: 0,
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

    /// The connection negotiated permessage-deflate with a `window_bits` server window
    /// (8-15; clamped), or with None did not: its messages of at least the threshold are
    /// compressed from now on (once per message, shared with every such recipient).
    pub fn set_deflate(&mut self, handle: Handle, window_bits: Option<u8>) {
        if let Some(conn) = live_mut(&mut self.slots, handle) {
            conn.deflate_window =
                window_bits.map_or(0, |bits| bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS));
        }
    }

    pub fn is_deflate(&self, handle: Handle) -> bool {
        live(&self.slots, handle).is_some_and(|c| c.deflate_window != 0)
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

    /// How many rooms `handle` is in (0 for a dead handle), without naming them.
    pub fn room_count(&self, handle: Handle) -> usize {
        live(&self.slots, handle).map_or(0, |c| c.rooms.as_slice().len())
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

    /// Queues `payload` as a text frame for one connection, whatever its state (compressed
    /// when it negotiated permessage-deflate, unless it is encrypted: a sealed message is
    /// unique per recipient and compresses poorly); false if the handle is dead or the
    /// message was skipped for backpressure.
    pub fn send(&mut self, handle: Handle, payload: &[u8]) -> bool {
        let Some(conn) = live_mut(&mut self.slots, handle) else {
            return false;
        };
        let window = if conn.encrypted {
            0
        } else {
            conn.deflate_window
        };
        let frame = LazyFrame::new(payload)
            .for_window(window, &mut self.deflate)
            .clone();
        self.out.offer(handle.slot(), conn, &frame)
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
            if conn.takes_plain(exclude)
                && self.out.offer(
                    slot,
                    conn,
                    frame.for_window(conn.deflate_window, &mut self.deflate),
                )
            {
                queued += 1;
            }
        }
        queued
    }

    pub fn send_user(&mut self, user: &str, payload: &[u8]) -> usize {
        let exclude = Exclude::none();
        let mut frame = LazyFrame::new(payload);
        let mut queued = 0;
        for &slot in self.users.sessions(user) {
            let Some(conn) = member_mut(&mut self.slots, slot) else {
                continue;
            };
            if conn.takes_plain(&exclude)
                && self.out.offer(
                    slot,
                    conn,
                    frame.for_window(conn.deflate_window, &mut self.deflate),
                )
            {
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
            if conn.takes_plain(exclude)
                && self.out.offer(
                    index as u32,
                    conn,
                    frame.for_window(conn.deflate_window, &mut self.deflate),
                )
            {
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
    pub fn flush(&mut self, write: impl FnMut(&S, Batch<'_>)) {
        self.flush_pass(Pass::WHOLE, write);
    }

    /// Like [`Hub::flush`], but stops once `pass` is spent (after the connection that
    /// reached it; at least one connection is served); returns true when connections are left, and then a flush stays
    /// scheduled: the caller must call this again soon (after letting other work run).
    /// The next call starts with the connections left, before any that became dirty
    /// since, so every connection is served within one whole pass of its first frame.
    /// A connection's frames stay in its queue until its turn, so its order is exact;
    /// frames queued meanwhile join its batch.
    pub fn flush_pass(&mut self, pass: Pass, mut write: impl FnMut(&S, Batch<'_>)) -> bool {
        let out = &mut self.out;
        let dirty_len = out.dirty.len();
        if !out.resuming && dirty_len > pass.sockets {
            // A fresh list that this pass will split: start at a moving point.
            out.dirty.rotate_left(out.start % dirty_len);
            out.start = out.start.wrapping_add(pass.sockets);
        }
        let (mut sockets, mut bytes) = (0, 0);
        // At least one connection per pass, whatever the bound.
        while sockets == 0 || (sockets < pass.sockets && bytes < pass.bytes) {
            let Some(slot) = out.dirty.pop_front() else {
                break;
            };
            if let Some(conn) = member_mut(&mut self.slots, slot) {
                if mem::take(&mut conn.dirty) {
                    sockets += 1;
                    bytes += conn.pending.bytes;
                    drain(conn, out, &mut write);
                }
            }
        }
        out.resuming = !out.dirty.is_empty();
        out.flush_scheduled = out.resuming;
        out.resuming
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
            deflated: self.deflate.compressed,
            backpressured: self.backpressured,
            pending_bytes: self.out.pending_bytes,
            wheel_entries: self.wheel.len(),
        }
    }
}
