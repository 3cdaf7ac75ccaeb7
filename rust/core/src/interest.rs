//! Local interest: which rooms, users and clients gained their first local member or
//! lost their last one. A caller that subscribes to per-room, per-user and per-client
//! traffic elsewhere (a Redis node subscribing only to the channels it has members
//! for) drains these changes instead of diffing the indices itself.

use std::mem;
use std::rc::Rc;

use rustc_hash::FxHashMap;

/// What a change is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterestKind {
    /// A room gained its first member or lost its last.
    Room,
    /// A user got its first local session or lost its last.
    User,
    /// A client became authenticated, or an authenticated client went away.
    Client,
}

impl InterestKind {
    /// A stable small integer for language bindings.
    pub fn code(self) -> u8 {
        match self {
            InterestKind::Room => 0,
            InterestKind::User => 1,
            InterestKind::Client => 2,
        }
    }
}

/// The changes since the last drain, in the order they happened. Records nothing
/// unless enabled, so a hub without a per-channel subscriber pays one branch.
#[derive(Default)]
pub(crate) struct InterestLog {
    enabled: bool,
    changes: Vec<(InterestKind, Rc<str>, bool)>,
    /// A drain is scheduled (or requested) and has not run yet.
    scheduled: bool,
    /// The caller must schedule a drain.
    requested: bool,
}

impl InterestLog {
    pub fn new(enabled: bool) -> Self {
        InterestLog {
            enabled,
            ..InterestLog::default()
        }
    }

    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    #[inline]
    pub fn record(&mut self, kind: InterestKind, name: &Rc<str>, present: bool) {
        if !self.enabled {
            return;
        }
        self.changes.push((kind, name.clone(), present));
        if !self.scheduled {
            self.scheduled = true;
            self.requested = true;
        }
    }

    pub fn take_request(&mut self) -> bool {
        mem::take(&mut self.requested)
    }

    pub fn cancel(&mut self) {
        self.scheduled = false;
        self.requested = false;
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn drain(&mut self, mut f: impl FnMut(InterestKind, &str, bool)) {
        self.scheduled = false;
        self.requested = false;
        let mut changes = mem::take(&mut self.changes);
        for (kind, name, present) in changes.drain(..) {
            f(kind, &name, present);
        }
        // Keep the allocation unless a callback recorded more in the meantime.
        if self.changes.is_empty() {
            self.changes = changes;
        }
    }

    /// Drains the changes as two batches with the effect of replaying them in order,
    /// when every add is applied before every remove: `add` for each name whose first
    /// change since the last drain gained it, then `remove` for each whose last change lost
    /// it (a name gained and lost again is in both; one lost and regained is in neither:
    /// it is where it was). Each in the order of the names' first changes.
    pub fn drain_net(
        &mut self,
        mut add: impl FnMut(InterestKind, &str),
        mut remove: impl FnMut(InterestKind, &str),
    ) {
        self.scheduled = false;
        self.requested = false;
        let changes = mem::take(&mut self.changes);
        if changes.len() <= 1 {
            for (kind, name, present) in &changes {
                if *present {
                    add(*kind, name);
                } else {
                    remove(*kind, name);
                }
            }
        } else {
            // Changes of one name alternate (gained, lost, gained...): the first and the
            // last tell the net effect.
            let mut last: FxHashMap<(InterestKind, &str), bool> = FxHashMap::default();
            last.reserve(changes.len());
            for (kind, name, present) in &changes {
                last.insert((*kind, name), *present);
            }
            let mut removes = Vec::new();
            for (kind, name, present) in &changes {
                let Some(end) = last.remove(&(*kind, &**name)) else {
                    continue; // not its first change
                };
                if *present {
                    add(*kind, name);
                }
                if !end {
                    removes.push((*kind, &**name));
                }
            }
            for (kind, name) in removes {
                remove(kind, name);
            }
        }
        if self.changes.is_empty() {
            let mut changes = changes;
            changes.clear();
            self.changes = changes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_log_records_nothing_and_requests_nothing() {
        let mut log = InterestLog::new(false);
        log.record(InterestKind::Room, &Rc::from("r"), true);
        assert_eq!(log.len(), 0);
        assert!(!log.take_request());
    }

    #[test]
    fn first_change_after_a_drain_requests_one_drain() {
        let mut log = InterestLog::new(true);
        log.record(InterestKind::Room, &Rc::from("r"), true);
        log.record(InterestKind::User, &Rc::from("u"), true);
        assert!(log.take_request());
        assert!(!log.take_request());
        let mut seen = Vec::new();
        log.drain(|kind, name, present| seen.push((kind, name.to_owned(), present)));
        assert_eq!(
            seen,
            vec![
                (InterestKind::Room, "r".to_owned(), true),
                (InterestKind::User, "u".to_owned(), true)
            ]
        );
        log.record(InterestKind::Client, &Rc::from("c"), false);
        assert!(log.take_request());
    }

    fn net(log: &mut InterestLog) -> (Vec<String>, Vec<String>) {
        let (mut adds, mut removes) = (Vec::new(), Vec::new());
        log.drain_net(
            |_, name| adds.push(name.to_owned()),
            |_, name| removes.push(name.to_owned()),
        );
        (adds, removes)
    }

    #[test]
    fn net_drain_replays_in_order_with_adds_first() {
        let mut log = InterestLog::new(true);
        let [a, b, c, d, e] = ["a", "b", "c", "d", "e"].map(Rc::<str>::from);
        log.record(InterestKind::Room, &a, true); // gained
        log.record(InterestKind::Room, &b, false); // lost
        log.record(InterestKind::Room, &c, true); // gained and lost again: both
        log.record(InterestKind::Room, &c, false);
        log.record(InterestKind::Room, &d, false); // lost and regained: neither
        log.record(InterestKind::Room, &d, true);
        log.record(InterestKind::User, &a, false); // another kind, same name
        log.record(InterestKind::Room, &e, true); // gained, lost, gained: gained
        log.record(InterestKind::Room, &e, false);
        log.record(InterestKind::Room, &e, true);
        assert!(log.take_request());
        let (adds, removes) = net(&mut log);
        assert_eq!(adds, ["a", "c", "e"]);
        assert_eq!(removes, ["b", "c", "a"]);
        assert_eq!(log.len(), 0);
        log.record(InterestKind::Client, &a, false);
        assert!(log.take_request());
        assert_eq!(net(&mut log), (vec![], vec!["a".to_owned()]));
    }
}
