//! Local interest: which rooms, users and clients gained their first local member or
//! lost their last one. A caller that subscribes to per-room, per-user and per-client
//! traffic elsewhere (a Redis node subscribing only to the channels it has members
//! for) drains these changes instead of diffing the indices itself.

use std::mem;
use std::rc::Rc;

/// What a change is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}
