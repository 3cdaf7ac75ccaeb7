//! History rooms (SPEC §10) on the fan-out path: a room's offset order, the live messages
//! held for members whose recovery is being read, and the floors that keep a late live copy
//! of a recovered message from being sent twice.
//!
//! Offsets come from one counter per room (the store's), and one node receives a room's
//! messages in the order they were numbered (Redis pub/sub keeps a channel's order, and the
//! history script numbers and publishes in one step). So the order needs no waiting: a
//! message is delivered live when it is the newest the room has seen in its epoch. A gap (a
//! message lost between the store and this node) is not waited for: later messages go out
//! at once; recovery after a reconnect is what closes it.
//!
//! An offset at or below the newest one under the same epoch is never delivered live. It is
//! a copy of a recent message (the same offset and payload), or one overtaken by a newer one
//! (a recent offset never seen: skipped, as a gap), or the sign that the store went back in
//! time under the same epoch (a restore, a replica promoted before it had caught up): an
//! offset seen with another payload, or one too old to be overtaken. That is
//! [`Order::RolledBack`], on which the caller starts a new epoch so that no client recovers
//! across the two histories.
//!
//! A member whose recovery is being read gets nothing live: its messages are held (in
//! arrival order, with their epoch) and released after its replay and `joined`: those of
//! the `joined` epoch above its offset, in offset order, each once. It then gets a floor in
//! that epoch: live copies at or below it are skipped (the replay came from the store, the
//! live copies from pub/sub, on two connections that race); the first message above the
//! floor, or of another epoch, ends it.
//!
//! Recovering and floored members are kept in one map by slot, so a delivery costs one
//! look-up per member, however many members are being recovered.
//!
//! The hub walks a history room's members and queues through this state in
//! `crate::hub::history_delivery`.

use std::hash::Hasher;
use std::rc::Rc;

use rustc_hash::{FxHashMap, FxHasher};

use crate::frame::Frame;

/// A live message held for a member: its offset and frame (of the epoch it is kept under).
pub type Held = (u64, Frame);

/// Recent (offset, payload hash) pairs a room remembers to tell a copy from a rollback.
const RECENT: usize = 8;
/// Held messages a recovery makes room for at its start (a storm of recoveries then grows
/// no vector message by message).
const HELD_CAPACITY: usize = 16;

/// How a numbered message stands against what its room already delivered live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Newer than everything delivered live in its epoch (or of a new epoch): deliver it.
    Newest,
    /// A copy of a recent message (same offset, same payload), or a recent offset never
    /// seen, overtaken by a newer one: skip it.
    Stale,
    /// At or below the newest offset of its epoch, seen with another payload or too old to
    /// be overtaken: the store went back under the same epoch. Not delivered live; the
    /// caller starts a new epoch.
    RolledBack,
}

/// A recovering or floored member of a history room.
enum Special {
    /// Its recovery is being read: its live messages, in arrival order, with their epoch.
    Holding(Vec<(Rc<str>, u64, Frame)>),
    /// Live copies at or below `offset` in `epoch` are skipped (an empty epoch: any).
    Floor { epoch: Rc<str>, offset: u64 },
}

/// Per history room state; created with the room's first history message or recovery,
/// dropped with the room.
#[derive(Default)]
pub(crate) struct RoomHistory {
    epoch: Rc<str>,
    /// The newest offset delivered live in `epoch` (0: none yet).
    last: u64,
    /// Ring of the newest (offset, payload hash) delivered live in `epoch`.
    recent: [(u64, u64); RECENT],
    special: FxHashMap<u32, Special>,
}

fn payload_hash(payload: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(payload);
    hasher.finish()
}

/// What a member's state says about one live message.
pub(crate) enum Seen {
    /// Nothing special: deliver it if it is the newest.
    Plain,
    /// Held for its recovery.
    Held,
    /// At or below its floor: skip it.
    Floored,
}

impl RoomHistory {
    /// Where (`epoch`, `offset`, `payload`) stands against what this room delivered live;
    /// records it when it is the newest. A new epoch starts the order over.
    pub fn advance(&mut self, epoch: &str, offset: u64, payload: &[u8]) -> Order {
        if *self.epoch != *epoch {
            self.epoch = epoch.into();
            self.last = offset;
            self.recent = [(0, 0); RECENT];
            self.remember(offset, payload);
            return Order::Newest;
        }
        if offset > self.last {
            self.last = offset;
            self.remember(offset, payload);
            return Order::Newest;
        }
        let (seen, hash) = self.recent[(offset % RECENT as u64) as usize];
        if seen == offset {
            if hash == payload_hash(payload) {
                Order::Stale
            } else {
                Order::RolledBack
            }
        } else if self.last - offset < RECENT as u64 {
            Order::Stale
        } else {
            Order::RolledBack
        }
    }

    fn remember(&mut self, offset: u64, payload: &[u8]) {
        self.recent[(offset % RECENT as u64) as usize] = (offset, payload_hash(payload));
    }

    /// The epoch of the newest message delivered live ("" before the first).
    pub fn epoch(&self) -> &Rc<str> {
        &self.epoch
    }

    /// No member is recovering or floored: the fan-out needs no per-member look-up.
    #[inline]
    pub fn is_plain(&self) -> bool {
        self.special.is_empty()
    }

    /// The member's part in the current message (`epoch`, `offset`): held for its recovery
    /// (`frame` is called then), skipped below its floor, or plain; a floor the message
    /// passes (or of another epoch) ends here. One look-up.
    pub fn see(
        &mut self,
        slot: u32,
        epoch: &Rc<str>,
        offset: u64,
        frame: impl FnOnce() -> Frame,
    ) -> Seen {
        let Some(special) = self.special.get_mut(&slot) else {
            return Seen::Plain;
        };
        match special {
            Special::Holding(messages) => {
                messages.push((epoch.clone(), offset, frame()));
                Seen::Held
            }
            Special::Floor {
                epoch: floor_epoch,
                offset: floor,
            } => {
                if (floor_epoch.is_empty() || **floor_epoch == **epoch) && offset <= *floor {
                    Seen::Floored
                } else {
                    self.special.remove(&slot);
                    Seen::Plain
                }
            }
        }
    }

    /// Holds `slot`'s live messages from now on (a recovery starts; an earlier one's held
    /// messages and its floor are dropped).
    pub fn start(&mut self, slot: u32) {
        self.special
            .insert(slot, Special::Holding(Vec::with_capacity(HELD_CAPACITY)));
    }

    /// Stops holding for `slot` (a floor is left as it is); what was held, in arrival order.
    pub fn stop(&mut self, slot: u32) -> Option<Vec<(Rc<str>, u64, Frame)>> {
        match self.special.get(&slot) {
            Some(Special::Holding(_)) => match self.special.remove(&slot) {
                Some(Special::Holding(messages)) => Some(messages),
                _ => None,
            },
            _ => None,
        }
    }

    fn holding(&self, slot: u32) -> Option<&[(Rc<str>, u64, Frame)]> {
        match self.special.get(&slot)? {
            Special::Holding(messages) => Some(messages),
            Special::Floor { .. } => None,
        }
    }

    /// Epoch and offset of the first message held for `slot` (in `epoch`, when given).
    pub fn first_held(&self, slot: u32, epoch: Option<&str>) -> Option<(&str, u64)> {
        let (e, offset, _) = self
            .holding(slot)?
            .iter()
            .find(|(e, _, _)| epoch.is_none_or(|wanted| **e == *wanted))?;
        Some((e, *offset))
    }

    /// Epoch of the last message held for `slot` (the newest epoch it saw live).
    pub fn last_held_epoch(&self, slot: u32) -> Option<&str> {
        let (epoch, _, _) = self.holding(slot)?.last()?;
        Some(epoch)
    }

    /// Bytes held for `slot`.
    pub fn held_bytes(&self, slot: u32) -> usize {
        self.holding(slot)
            .map_or(0, |held| held.iter().map(|(_, _, f)| f.len()).sum())
    }

    /// Takes, while still holding, the messages held for `slot` in `epoch` above `offset`,
    /// in offset order, each once, up to `budget` bytes (at least one message); those of
    /// `epoch` at or below the last one taken are dropped. Empty when none is left.
    pub fn take(&mut self, slot: u32, epoch: &str, offset: u64, budget: usize) -> Vec<Held> {
        let Some(Special::Holding(messages)) = self.special.get_mut(&slot) else {
            return Vec::new();
        };
        let mut wanted: Vec<(u64, usize)> = messages
            .iter()
            .enumerate()
            .filter(|(_, (e, o, _))| **e == *epoch && *o > offset)
            .map(|(i, (_, o, _))| (*o, i))
            .collect();
        wanted.sort_unstable(); // by offset, then arrival: of two copies, the first arrived
        wanted.dedup_by_key(|&mut (o, _)| o);
        let mut taken = Vec::new();
        let mut bytes = 0;
        for &(o, i) in &wanted {
            let frame = &messages[i].2;
            if !taken.is_empty() && bytes + frame.len() > budget {
                break;
            }
            bytes += frame.len();
            taken.push((o, frame.clone()));
        }
        if let Some(&(upto, _)) = taken.last() {
            messages.retain(|(e, o, _)| **e != *epoch || *o > upto);
        }
        taken
    }

    pub fn set_floor(&mut self, slot: u32, epoch: &str, offset: u64) {
        self.special.insert(
            slot,
            Special::Floor {
                epoch: epoch.into(),
                offset,
            },
        );
    }

    /// The member left the room (or went away): nothing more is kept for it.
    pub fn forget(&mut self, slot: u32) {
        self.special.remove(&slot);
    }
}

/// What a recovery releases of its held messages (in arrival order, with their epochs):
/// those of `epoch` above `offset`, in offset order, each once; and the highest offset held
/// in `epoch` (0 if none), for the floor. Messages of another epoch are dropped: the
/// recovery answered for `epoch` (the caller reads again when the room's epoch changed
/// meanwhile). An empty `epoch` (the history was unreadable) stands for the epoch of the
/// first held message; the chosen epoch is returned too.
pub fn release(held: Vec<(Rc<str>, u64, Frame)>, epoch: &str, offset: u64) -> Released {
    let epoch: Rc<str> = match (epoch.is_empty(), held.first()) {
        (true, Some((first, _, _))) => first.clone(),
        _ => epoch.into(),
    };
    let mut kept: Vec<Held> = Vec::new();
    let mut highest = 0;
    for (e, o, frame) in held {
        if e != epoch {
            continue;
        }
        highest = highest.max(o);
        if o > offset {
            kept.push((o, frame));
        }
    }
    kept.sort_by_key(|&(o, _)| o); // stable: of two copies of an offset, the first arrived
    kept.dedup_by_key(|&mut (o, _)| o);
    Released {
        frames: kept.into_iter().map(|(_, frame)| frame).collect(),
        epoch,
        highest,
    }
}

/// The result of [`release`].
pub struct Released {
    pub frames: Vec<Frame>,
    pub epoch: Rc<str>,
    pub highest: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(frames: &[Frame]) -> Vec<u8> {
        frames.iter().map(|f| f.as_bytes()[2]).collect()
    }

    fn msg(epoch: &str, offset: u8) -> (Rc<str>, u64, Frame) {
        (epoch.into(), u64::from(offset), Frame::text(&[offset]))
    }

    #[test]
    fn order_is_per_epoch_and_a_step_back_is_a_copy_or_a_rollback() {
        let mut h = RoomHistory::default();
        assert_eq!(h.advance("e1", 5, b"5"), Order::Newest);
        assert_eq!(h.advance("e1", 6, b"6"), Order::Newest);
        assert_eq!(h.advance("e1", 9, b"9"), Order::Newest); // a gap is not waited for
        assert_eq!(h.advance("e1", 9, b"9"), Order::Stale); // a copy
        assert_eq!(h.advance("e1", 6, b"6"), Order::Stale);
        assert_eq!(h.advance("e1", 7, b"7"), Order::Stale); // overtaken by 9
        assert_eq!(h.advance("e1", 9, b"other"), Order::RolledBack); // 9 again, not 9
        assert_eq!(h.advance("e1", 40, b"40"), Order::Newest);
        assert_eq!(h.advance("e1", 20, b"20"), Order::RolledBack); // too old to be late
        assert_eq!(h.advance("e2", 1, b"1"), Order::Newest); // a new epoch starts over
        assert_eq!(h.advance("e2", 2, b"2"), Order::Newest);
        assert_eq!(&**h.epoch(), "e2");
    }

    #[test]
    fn release_keeps_the_joined_epoch_sorted_once_above_the_offset() {
        let held = vec![
            msg("e", 3),
            msg("e", 5),
            msg("e", 4),
            msg("e", 5),
            msg("e", 2),
            msg("f", 9),
            msg("e", 6),
        ];
        let released = release(held, "e", 3);
        assert_eq!(offsets(&released.frames), vec![4, 5, 6]);
        assert_eq!((&*released.epoch, released.highest), ("e", 6));
        let released = release(Vec::new(), "e", 7);
        assert!(released.frames.is_empty() && released.highest == 0);
    }

    #[test]
    fn release_after_an_epoch_change_keeps_the_new_epochs_first_offsets() {
        // The read answered in the new epoch "f" at 0; "e" was the lost history.
        let held = vec![msg("e", 40), msg("e", 41), msg("f", 1), msg("f", 2)];
        let released = release(held, "f", 0);
        assert_eq!(offsets(&released.frames), vec![1, 2]);
        assert_eq!(released.highest, 2);
        // Unreadable: the epoch of the first held message.
        let released = release(vec![msg("f", 3), msg("f", 4)], "", 2);
        assert_eq!(
            (&*released.epoch, offsets(&released.frames)),
            ("f", vec![3, 4])
        );
    }

    #[test]
    fn holding_is_per_member_and_restarts() {
        let mut h = RoomHistory::default();
        let e: Rc<str> = "e".into();
        h.start(1);
        assert!(matches!(h.see(1, &e, 4, || Frame::text(b"4")), Seen::Held));
        assert!(matches!(h.see(2, &e, 4, || unreachable!()), Seen::Plain));
        assert_eq!(h.first_held(1, None), Some(("e", 4)));
        assert_eq!(h.held_bytes(1), 3);
        h.start(1);
        assert_eq!(h.first_held(1, None), None);
        assert!(matches!(h.see(1, &e, 5, || Frame::text(b"5")), Seen::Held));
        assert_eq!(h.stop(1).map(|m| m.len()), Some(1));
        assert!(h.stop(1).is_none() && h.is_plain());
    }

    #[test]
    fn take_hands_out_the_held_in_order_by_budget_while_holding() {
        let mut h = RoomHistory::default();
        let (e, f): (Rc<str>, Rc<str>) = ("e".into(), "f".into());
        h.start(1);
        for o in [2u8, 4, 3, 4, 5] {
            h.see(1, &e, u64::from(o), || Frame::text(&[o]));
        }
        h.see(1, &f, 1, || Frame::text(&[1]));
        let first = h.take(1, "e", 2, 6); // 3 bytes a frame: two of them
        assert_eq!(
            first.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert!(!h.is_plain(), "still holding");
        let rest = h.take(1, "e", 4, 1); // at least one, however small the budget
        assert_eq!(rest.iter().map(|(o, _)| *o).collect::<Vec<_>>(), vec![5]);
        assert!(h.take(1, "e", 5, 100).is_empty());
        assert_eq!(h.last_held_epoch(1), Some("f"));
    }

    #[test]
    fn floors_end_with_the_first_message_above_or_another_epoch() {
        let mut h = RoomHistory::default();
        let (e, other): (Rc<str>, Rc<str>) = ("e".into(), "other".into());
        let no = || -> Frame { unreachable!() };
        h.set_floor(1, "e", 10);
        h.set_floor(2, "", 10);
        assert!(matches!(h.see(1, &e, 9, no), Seen::Floored));
        assert!(matches!(h.see(2, &e, 9, no), Seen::Floored));
        assert!(matches!(h.see(1, &e, 11, no), Seen::Plain));
        assert!(matches!(h.see(2, &e, 11, no), Seen::Plain));
        assert!(h.is_plain());
        h.set_floor(1, "e", 10);
        h.set_floor(2, "", 10);
        assert!(matches!(h.see(1, &other, 3, no), Seen::Plain));
        assert!(matches!(h.see(2, &other, 3, no), Seen::Floored));
        h.forget(2);
        assert!(h.is_plain());
    }
}
