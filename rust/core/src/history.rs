//! History rooms (SPEC §10) on the fan-out path: a room's offset order, the live messages
//! held for members whose recovery is being read, and the floors that keep a late live copy
//! of a recovered message from being sent twice.
//!
//! Offsets come from one counter per room (the store's), and one node receives a room's
//! messages in the order they were numbered (Redis pub/sub keeps a channel's order, and the
//! history script numbers and publishes in one step). So the order needs no waiting: a
//! message is delivered live when it is the newest the room has seen in its epoch; one at
//! or below that (a duplicate, or one overtaken) is not delivered live, since it would come
//! after a later one. A gap (a message lost between the store and this node) is not waited
//! for: later messages go out at once; recovery after a reconnect is what closes it.
//!
//! A member whose recovery is being read gets nothing live: its messages are held (in
//! arrival order) and released after its replay and `joined`, those above its `joined`
//! offset, in offset order, each once. It then gets a floor: live copies at or below it
//! are skipped (the replay came from the store, the live copies from pub/sub, on two
//! connections that race); the first message above the floor ends it (nothing older follows).
//!
//! The hub walks a history room's members and queues through this state in
//! `crate::hub::history_delivery`.

use crate::frame::Frame;

/// A live message held for a member: its offset and frame.
pub type Held = (u64, Frame);

struct Holding {
    slot: u32,
    messages: Vec<Held>,
}

struct Floor {
    slot: u32,
    /// Empty: set after an unreadable history, applies whatever the epoch.
    epoch: Box<str>,
    offset: u64,
}

/// Per history room state; created with the room's first history message or recovery,
/// dropped with the room.
#[derive(Default)]
pub(crate) struct RoomHistory {
    epoch: Box<str>,
    /// The newest offset delivered live in `epoch` (0: none yet).
    last: u64,
    holding: Vec<Holding>,
    floors: Vec<Floor>,
}

impl RoomHistory {
    /// True when (`epoch`, `offset`) is newer than everything this room delivered live, and
    /// records it; a new epoch starts the order over.
    pub fn advance(&mut self, epoch: &str, offset: u64) -> bool {
        if *self.epoch != *epoch {
            self.epoch = epoch.into();
            self.last = offset;
            return true;
        }
        if offset > self.last {
            self.last = offset;
            return true;
        }
        false
    }

    /// No member is recovering or floored: the fan-out needs no per-member look-up.
    #[inline]
    pub fn is_plain(&self) -> bool {
        self.holding.is_empty() && self.floors.is_empty()
    }

    /// Ends the floors this message passes (or that belong to another epoch).
    pub fn pass_floors(&mut self, epoch: &str, offset: u64) {
        self.floors.retain(|floor| {
            (floor.epoch.is_empty() || *floor.epoch == *epoch) && offset <= floor.offset
        });
    }

    /// The member is floored for the current message (after [`RoomHistory::pass_floors`]).
    pub fn floored(&self, slot: u32) -> bool {
        self.floors.iter().any(|floor| floor.slot == slot)
    }

    /// Holds the message for `slot` if its recovery is being read; true if held.
    pub fn hold(&mut self, slot: u32, offset: u64, frame: impl FnOnce() -> Frame) -> bool {
        match self.holding.iter_mut().find(|h| h.slot == slot) {
            Some(holding) => {
                holding.messages.push((offset, frame()));
                true
            }
            None => false,
        }
    }

    /// Holds `slot`'s live messages from now on (a recovery starts; an earlier one's held
    /// messages are dropped).
    pub fn start(&mut self, slot: u32) {
        match self.holding.iter_mut().find(|h| h.slot == slot) {
            Some(holding) => holding.messages.clear(),
            None => self.holding.push(Holding {
                slot,
                messages: Vec::new(),
            }),
        }
    }

    /// Stops holding for `slot`; what was held, in arrival order.
    pub fn stop(&mut self, slot: u32) -> Option<Vec<Held>> {
        let index = self.holding.iter().position(|h| h.slot == slot)?;
        Some(self.holding.swap_remove(index).messages)
    }

    /// Offset of the first message held for `slot`.
    pub fn first_held(&self, slot: u32) -> Option<u64> {
        self.holding
            .iter()
            .find(|h| h.slot == slot)
            .and_then(|h| h.messages.first())
            .map(|&(offset, _)| offset)
    }

    pub fn set_floor(&mut self, slot: u32, epoch: &str, offset: u64) {
        self.floors.retain(|floor| floor.slot != slot);
        self.floors.push(Floor {
            slot,
            epoch: epoch.into(),
            offset,
        });
    }

    /// The member left the room (or went away): nothing more is kept for it.
    pub fn forget(&mut self, slot: u32) {
        self.holding.retain(|h| h.slot != slot);
        self.floors.retain(|floor| floor.slot != slot);
    }
}

/// What a recovery releases of its held messages: those above `offset`, in offset order,
/// each once; and the highest offset held (0 if none), for the floor.
pub fn release(mut held: Vec<Held>, offset: u64) -> (Vec<Frame>, u64) {
    let highest = held.iter().map(|&(o, _)| o).max().unwrap_or(0);
    held.retain(|&(o, _)| o > offset);
    held.sort_by_key(|&(o, _)| o); // stable: of two copies of an offset, the first arrived
    held.dedup_by_key(|&mut (o, _)| o);
    (held.into_iter().map(|(_, frame)| frame).collect(), highest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(frames: &[Frame]) -> Vec<u8> {
        frames.iter().map(|f| f.as_bytes()[2]).collect()
    }

    fn msg(offset: u8) -> Held {
        (u64::from(offset), Frame::text(&[offset]))
    }

    #[test]
    fn order_is_per_epoch() {
        let mut h = RoomHistory::default();
        assert!(h.advance("e1", 5));
        assert!(h.advance("e1", 6));
        assert!(h.advance("e1", 9)); // a gap is not waited for
        assert!(!h.advance("e1", 7)); // overtaken
        assert!(!h.advance("e1", 9)); // a duplicate
        assert!(h.advance("e2", 1)); // a new epoch starts over
        assert!(h.advance("e2", 2));
    }

    #[test]
    fn release_sorts_dedups_and_drops_the_replayed() {
        let held = vec![msg(3), msg(5), msg(4), msg(5), msg(2), msg(6)];
        let (frames, highest) = release(held, 3);
        assert_eq!(offsets(&frames), vec![4, 5, 6]);
        assert_eq!(highest, 6);
        assert_eq!(release(Vec::new(), 7), (Vec::new(), 0));
    }

    #[test]
    fn holding_is_per_member_and_restarts() {
        let mut h = RoomHistory::default();
        h.start(1);
        assert!(h.hold(1, 4, || Frame::text(b"4")));
        assert!(!h.hold(2, 4, || unreachable!()));
        assert_eq!(h.first_held(1), Some(4));
        h.start(1);
        assert_eq!(h.first_held(1), None);
        assert!(h.hold(1, 5, || Frame::text(b"5")));
        assert_eq!(h.stop(1).map(|m| m.len()), Some(1));
        assert!(h.stop(1).is_none() && h.is_plain());
    }

    #[test]
    fn floors_end_with_the_first_message_above_or_another_epoch() {
        let mut h = RoomHistory::default();
        h.set_floor(1, "e", 10);
        h.set_floor(2, "", 10);
        h.pass_floors("e", 9);
        assert!(h.floored(1) && h.floored(2));
        h.pass_floors("e", 11);
        assert!(!h.floored(1) && !h.floored(2) && h.is_plain());
        h.set_floor(1, "e", 10);
        h.set_floor(2, "", 10);
        h.pass_floors("other", 3);
        assert!(!h.floored(1) && h.floored(2));
        h.forget(2);
        assert!(h.is_plain());
    }
}
