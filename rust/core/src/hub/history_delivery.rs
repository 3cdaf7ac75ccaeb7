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
use crate::history::{self, RoomHistory};
use crate::ids::Handle;

/// What [`Hub::release_history`] did with a recovering member's held messages.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Queued for a plaintext member (each counted like [`Hub::send`]).
    pub queued: usize,
    /// For an encrypted member, whose messages the caller seals: the frames, in order.
    pub encrypted: Vec<Frame>,
}

impl<S> Hub<S> {
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
}
