//! The user index: user id -> the slots of its sessions.

use std::rc::Rc;

use rustc_hash::FxHashMap;

use crate::interest::{InterestKind, InterestLog};
use crate::small::SmallVec;

/// Where a connection sits in its user's session list.
#[derive(Clone, Debug)]
pub(crate) struct UserLink {
    pub name: Rc<str>,
    pub pos: u32,
}

/// A user's session slots; the common single session is kept inline.
type Sessions = SmallVec<u32, 3>;

#[derive(Default)]
pub(crate) struct Users {
    by_name: FxHashMap<Rc<str>, Sessions>,
}

impl Users {
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn sessions(&self, name: &str) -> &[u32] {
        self.by_name.get(name).map_or(&[], |slots| slots.as_slice())
    }

    /// Indexes a session; a user's first session is logged.
    pub fn add(&mut self, name: &str, slot: u32, log: &mut InterestLog) -> UserLink {
        if let Some((key, slots)) = self.by_name.get_key_value(name) {
            let key = key.clone();
            let pos = slots.len() as u32;
            if let Some(slots) = self.by_name.get_mut(name) {
                slots.push(slot);
            }
            return UserLink { name: key, pos };
        }
        let name: Rc<str> = Rc::from(name);
        log.record(InterestKind::User, &name, true);
        self.by_name.insert(name.clone(), Sessions::one(slot));
        UserLink { name, pos: 0 }
    }

    /// Removes the session at `link`; returns the slot that moved into its place, whose
    /// link position the caller must update. Deletes (and logs) users left without
    /// sessions.
    pub fn remove(&mut self, link: &UserLink, log: &mut InterestLog) -> Option<u32> {
        let slots = self.by_name.get_mut(&*link.name)?;
        let pos = link.pos as usize;
        if pos >= slots.len() {
            return None;
        }
        slots.swap_remove(pos);
        if slots.is_empty() {
            self.by_name.remove(&*link.name);
            log.record(InterestKind::User, &link.name, false);
            return None;
        }
        slots.as_slice().get(pos).copied()
    }
}
