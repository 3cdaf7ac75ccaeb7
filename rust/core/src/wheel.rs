//! A hierarchical timer wheel (Varghese & Lauck; the classic Linux layout).
//!
//! Level 0 has 256 slots of one tick; each upper level has 64 slots, each spanning a
//! whole rotation of the level below. An entry is placed relative to the next tick to
//! run; when level 0 wraps, the matching upper slot is cascaded down. Advancing costs
//! the entries that fire or cascade plus one step per 256-tick block crossed, never a
//! scan of every entry. Entries beyond the top level are clamped to its horizon; the
//! caller re-inserts them when they fire early (deadlines are lazy anyway).

use crate::ids::Handle;

/// Length of one tick in milliseconds: the precision of every deadline.
pub const TICK_MS: u64 = 10;

const L0_BITS: u32 = 8;
const L0_SLOTS: usize = 1 << L0_BITS;
const L0_MASK: u64 = (L0_SLOTS as u64) - 1;
const UP_BITS: u32 = 6;
const UP_SLOTS: usize = 1 << UP_BITS;
const UP_MASK: u64 = (UP_SLOTS as u64) - 1;
const UP_LEVELS: usize = 4;
/// Ticks covered by all levels together (2^32 ticks, about 497 days).
const HORIZON: u64 = 1 << (L0_BITS + UP_BITS * UP_LEVELS as u32);

/// One scheduled wake-up. `due` is the entry's identity together with `handle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub handle: Handle,
    pub due: u64,
}

pub(crate) struct Wheel {
    /// The next tick to run; every earlier tick has been run.
    next_tick: u64,
    level0: Vec<Vec<Entry>>,
    /// One bit per non-empty level-0 slot.
    occupied: [u64; L0_SLOTS / 64],
    upper: Vec<Vec<Vec<Entry>>>,
    len: usize,
    /// Entries fired or cascaded so far: the wheel's whole workload.
    visits: u64,
}

impl Wheel {
    pub fn new(start_tick: u64) -> Self {
        Wheel {
            next_tick: start_tick,
            level0: (0..L0_SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; L0_SLOTS / 64],
            upper: (0..UP_LEVELS)
                .map(|_| (0..UP_SLOTS).map(|_| Vec::new()).collect())
                .collect(),
            len: 0,
            visits: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn visits(&self) -> u64 {
        self.visits
    }

    /// The tick an entry asked for `due` will actually carry (never in the past, never
    /// past the horizon).
    pub fn effective(&self, due: u64) -> u64 {
        due.clamp(self.next_tick, self.next_tick.saturating_add(HORIZON - 1))
    }

    /// Schedules `handle` at tick `due` (see [`Wheel::effective`]); returns the tick used.
    pub fn insert(&mut self, handle: Handle, due: u64) -> u64 {
        let due = self.effective(due);
        self.place(Entry { handle, due });
        self.len += 1;
        due
    }

    fn place(&mut self, entry: Entry) {
        // Entries are never behind `next_tick` (see `effective` and `cascade`); placing
        // by the later of the two keeps a stray one firing at the next tick.
        let at = entry.due.max(self.next_tick);
        let delta = at - self.next_tick;
        if delta < L0_SLOTS as u64 {
            let i = (at & L0_MASK) as usize;
            self.level0[i].push(entry);
            self.occupied[i / 64] |= 1 << (i % 64);
            return;
        }
        let mut shift = L0_BITS;
        for level in self.upper.iter_mut() {
            if delta < 1 << (shift + UP_BITS)
                || shift + UP_BITS >= L0_BITS + UP_BITS * UP_LEVELS as u32
            {
                level[((at >> shift) & UP_MASK) as usize].push(entry);
                return;
            }
            shift += UP_BITS;
        }
    }

    /// Runs every tick up to and including `now_tick`, moving due entries to `out` in
    /// tick order.
    pub fn advance(&mut self, now_tick: u64, out: &mut Vec<Entry>) {
        while self.next_tick <= now_tick {
            if self.len == 0 {
                self.next_tick = now_tick + 1;
                return;
            }
            let tick = self.next_tick;
            let pos = (tick & L0_MASK) as usize;
            if pos == 0 {
                self.cascade(tick);
            }
            let end = (tick | L0_MASK).min(now_tick);
            match self.next_occupied(pos, (end & L0_MASK) as usize) {
                Some(i) => {
                    self.next_tick = (tick & !L0_MASK) + i as u64 + 1;
                    let slot = &mut self.level0[i];
                    self.len -= slot.len();
                    self.visits += slot.len() as u64;
                    out.append(slot);
                    self.occupied[i / 64] &= !(1 << (i % 64));
                }
                None => self.next_tick = end + 1,
            }
        }
    }

    /// At a level-0 wrap, moves the upper slots whose span starts at `tick` down.
    fn cascade(&mut self, tick: u64) {
        let mut shift = L0_BITS;
        for level in 0..UP_LEVELS {
            let idx = ((tick >> shift) & UP_MASK) as usize;
            let mut batch = std::mem::take(&mut self.upper[level][idx]);
            self.visits += batch.len() as u64;
            for entry in batch.drain(..) {
                self.place(entry);
            }
            // Keep the slot's allocation (nothing re-enters the slot being cascaded).
            if self.upper[level][idx].is_empty() {
                self.upper[level][idx] = batch;
            }
            if idx != 0 {
                break;
            }
            shift += UP_BITS;
        }
    }

    /// First occupied level-0 slot in `from..=to`.
    fn next_occupied(&self, from: usize, to: usize) -> Option<usize> {
        let mut word = from / 64;
        let mut bits = self.occupied[word] & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                let i = word * 64 + bits.trailing_zeros() as usize;
                return (i <= to).then_some(i);
            }
            word += 1;
            if word > to / 64 {
                return None;
            }
            bits = self.occupied[word];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u32) -> Handle {
        Handle::new(n, 1)
    }

    fn fire(wheel: &mut Wheel, now_tick: u64) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        wheel.advance(now_tick, &mut out);
        out.iter().map(|e| (e.handle.slot(), e.due)).collect()
    }

    #[test]
    fn fires_at_due_tick_not_before() {
        let mut w = Wheel::new(0);
        w.insert(h(1), 5);
        assert!(fire(&mut w, 4).is_empty());
        assert_eq!(fire(&mut w, 5), vec![(1, 5)]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn past_due_fires_at_next_tick() {
        let mut w = Wheel::new(0);
        assert!(fire(&mut w, 100).is_empty());
        assert_eq!(w.insert(h(1), 3), 101);
        assert_eq!(fire(&mut w, 101), vec![(1, 101)]);
    }

    #[test]
    fn every_level_fires_exactly_on_time() {
        // Dues spread over every level and across many block boundaries, inserted from
        // assorted positions; each must fire at its own tick, in order.
        let mut w = Wheel::new(0);
        let mut expected = Vec::new();
        let dues: Vec<u64> = (0..2000u64)
            .map(|i| (i * i * 7919 + i * 31) % 30_000_000 + 1)
            .collect();
        for (n, &due) in dues.iter().enumerate() {
            w.insert(h(n as u32), due);
            expected.push(due);
        }
        expected.sort_unstable();
        let mut fired = Vec::new();
        let mut now = 0;
        while now < 30_000_001 {
            // Irregular steps, some tiny, some across several rotations.
            let previous = now;
            now += 1 + (now * 13 % 1024);
            for (_, due) in fire(&mut w, now) {
                assert!(due <= now, "fired early: due {due} at {now}");
                assert!(due > previous, "fired late: due {due} at {now}");
                fired.push(due);
            }
        }
        fired.extend(fire(&mut w, 40_000_000).into_iter().map(|(_, d)| d));
        assert_eq!(fired, expected);
    }

    #[test]
    fn exact_firing_tick_by_tick() {
        let mut w = Wheel::new(7);
        let dues = [
            7,
            8,
            255,
            256,
            257,
            16_383,
            16_384,
            16_385,
            1 << 20,
            (1 << 20) + 5,
        ];
        for (n, &d) in dues.iter().enumerate() {
            w.insert(h(n as u32), d);
        }
        let mut fired = Vec::new();
        for t in 7..=(1 << 20) + 10 {
            for (_, due) in fire(&mut w, t) {
                assert_eq!(due, t);
                fired.push(due);
            }
        }
        assert_eq!(fired, dues);
    }

    #[test]
    fn beyond_horizon_is_clamped() {
        let mut w = Wheel::new(0);
        let due = w.insert(h(1), u64::MAX);
        assert_eq!(due, HORIZON - 1);
        assert_eq!(fire(&mut w, HORIZON - 1), vec![(1, HORIZON - 1)]);
    }

    #[test]
    fn empty_wheel_jumps_without_work() {
        let mut w = Wheel::new(0);
        assert!(fire(&mut w, u64::MAX / 2).is_empty());
        assert_eq!(w.visits(), 0);
        w.insert(h(1), u64::MAX / 2 + 3);
        assert_eq!(fire(&mut w, u64::MAX / 2 + 3).len(), 1);
    }
}
