//! History rooms' delivery (SPEC §10): the hub's side of `crate::history`. A numbered
//! message goes out in the room's offset order (held for members whose recovery is being
//! read, skipped for floored ones), and a member's recovery is held and then released
//! into its queue once its replay and `joined` are queued.
//!
//! The room state (offset order, held messages, floors) is `crate::history::RoomHistory`;
//! this module walks the members and queues through the hub's `Outbox`, so a history
//! room's fan-out stays one pass over its members.

use super::queue::{live_mut, member_mut, LazyFrame};
use super::Hub;
use crate::exclude::Exclude;
use crate::frame::Frame;
use crate::history::{self, Held, Order, RoomHistory, Seen};
use crate::ids::Handle;

/// What [`Hub::release_history`] did with a recovering member's held messages.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Queued for a plaintext member (each counted like [`Hub::send`]).
    pub queued: usize,
    /// For an encrypted member, whose messages the caller seals: the frames, in order.
    pub encrypted: Vec<Frame>,
}

/// What [`Hub::send_history`] did with a numbered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Queued for this many members (held ones and encrypted ones not counted).
    Queued(usize),
    /// Not delivered live: the room's offset went back under the same epoch (see
    /// `crate::history::Order::RolledBack`); the caller starts a new epoch.
    RolledBack,
}

impl Sent {
    /// How many members it was queued for (0 when rolled back).
    pub fn queued(self) -> usize {
        match self {
            Sent::Queued(n) => n,
            Sent::RolledBack => 0,
        }
    }
}

impl<S> Hub<S> {
    /// Delivers message `offset` of history room `room` (see `crate::history`): queued for
    /// each authenticated plaintext member not in `exclude` when it is the newest of the
    /// room's `epoch`, except members whose recovery is being read (held for them) and
    /// floored members; `encrypted` is called with each encrypted member that would get it
    /// (the caller seals). A copy or an overtaken message goes to no one; a rolled-back
    /// offset goes to no one and says so.
    pub fn send_history(
        &mut self,
        room: &str,
        epoch: &str,
        offset: u64,
        payload: &[u8],
        exclude: &Exclude<'_>,
        mut encrypted: impl FnMut(&S),
    ) -> Sent {
        let Some((members, history)) = self
            .rooms
            .id(room)
            .and_then(|id| self.rooms.with_history(id))
        else {
            return Sent::Queued(0);
        };
        match history.advance(epoch, offset, payload) {
            Order::Newest => {}
            Order::Stale => return Sent::Queued(0),
            Order::RolledBack => return Sent::RolledBack,
        }
        let mut frame = LazyFrame::new(payload);
        let mut queued = 0;
        if history.is_plain() {
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
            return Sent::Queued(queued);
        }
        // Some members are recovering or floored: one look-up per member.
        let epoch = history.epoch().clone();
        for &crate::rooms::Member { slot, .. } in members {
            let Some(conn) = member_mut(&mut self.slots, slot) else {
                continue;
            };
            if !conn.authenticated || exclude.contains(&conn.client) {
                continue;
            }
            match history.see(slot, &epoch, offset, || frame.get().clone()) {
                Seen::Held | Seen::Floored => continue,
                Seen::Plain => {}
            }
            if conn.encrypted {
                encrypted(&conn.sink);
            } else if self.out.offer(slot, conn, frame.get()) {
                queued += 1;
            }
        }
        Sent::Queued(queued)
    }

    /// The member's history state in `room` (created on demand) when it is a member.
    fn member_history(&mut self, handle: Handle, room: &str) -> Option<&mut RoomHistory> {
        let id = self.member_room(handle, room)?;
        self.rooms.with_history(id).map(|(_, history)| history)
    }

    fn member_history_ref(&self, handle: Handle, room: &str) -> Option<&RoomHistory> {
        let id = self.member_room(handle, room)?;
        self.rooms.history(id)
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

    /// Epoch and offset of the first live message held for the member in `room` (of
    /// `epoch`, when given).
    pub fn held_first(
        &self,
        handle: Handle,
        room: &str,
        epoch: Option<&str>,
    ) -> Option<(&str, u64)> {
        self.member_history_ref(handle, room)?
            .first_held(handle.slot(), epoch)
    }

    /// Epoch of the last live message held for the member in `room`: the room's epoch as
    /// this node last saw it during the recovery.
    pub fn held_epoch(&self, handle: Handle, room: &str) -> Option<&str> {
        self.member_history_ref(handle, room)?
            .last_held_epoch(handle.slot())
    }

    /// Bytes held for the member in `room` (0 when not recovering).
    pub fn held_bytes(&self, handle: Handle, room: &str) -> usize {
        self.member_history_ref(handle, room)
            .map_or(0, |history| history.held_bytes(handle.slot()))
    }

    /// Takes, without queueing them and while still holding, the messages held for the
    /// member in `room` of `epoch` above `offset`, in offset order, each once, up to
    /// `budget` bytes (at least one): the caller queues them at its client's pace, then
    /// takes again with the last offset, until none is left and it calls
    /// [`Hub::release_history`]. Empty when nothing is left (or not recovering).
    pub fn take_held(
        &mut self,
        handle: Handle,
        room: &str,
        epoch: &str,
        offset: u64,
        budget: usize,
    ) -> Vec<Held> {
        let slot = handle.slot();
        match self.member_history(handle, room) {
            Some(history) => history.take(slot, epoch, offset, budget),
            None => Vec::new(),
        }
    }

    /// Ends the member's recovery in `room` after its replay and `joined` (at `epoch`,
    /// `offset`) were queued: the held messages of `epoch` above `offset`, in offset order,
    /// each once, are queued (plaintext) or handed back (encrypted); those of another epoch
    /// are dropped; live copies in `epoch` up to the highest offset seen are skipped from
    /// now on (its floor). An empty `epoch` (unreadable history) stands for the epoch of
    /// the first held message.
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
        let released = history::release(history.stop(slot).unwrap_or_default(), epoch, offset);
        history.set_floor(slot, &released.epoch, offset.max(released.highest));
        let frames = released.frames;
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
}
