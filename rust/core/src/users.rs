//! The user index: user id -> the slots of its sessions.

use std::rc::Rc;

use rustc_hash::FxHashMap;

use crate::interest::{InterestKind, InterestLog};

/// Where a connection sits in its user's session list.
#[derive(Clone, Debug)]
pub(crate) struct UserLink {
    pub name: Rc<str>,
    pub pos: usize,
}

struct User {
    name: Rc<str>,
    slots: Vec<u32>,
}

#[derive(Default)]
pub(crate) struct Users {
    by_name: FxHashMap<Rc<str>, User>,
}

impl Users {
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn sessions(&self, name: &str) -> &[u32] {
        self.by_name.get(name).map_or(&[], |user| &user.slots)
    }

    /// Indexes a session; a user's first session is logged.
    pub fn add(&mut self, name: &str, slot: u32, log: &mut InterestLog) -> UserLink {
        if let Some(user) = self.by_name.get_mut(name) {
            user.slots.push(slot);
            return UserLink {
                name: user.name.clone(),
                pos: user.slots.len() - 1,
            };
        }
        let name: Rc<str> = Rc::from(name);
        log.record(InterestKind::User, &name, true);
        let user = User {
            name: name.clone(),
            slots: vec![slot],
        };
        self.by_name.insert(name.clone(), user);
        UserLink { name, pos: 0 }
    }

    /// Removes the session at `link`; returns the slot that moved into its place, whose
    /// link position the caller must update. Deletes (and logs) users left without
    /// sessions.
    pub fn remove(&mut self, link: &UserLink, log: &mut InterestLog) -> Option<u32> {
        let user = self.by_name.get_mut(&*link.name)?;
        if link.pos >= user.slots.len() {
            return None;
        }
        user.slots.swap_remove(link.pos);
        if user.slots.is_empty() {
            self.by_name.remove(&*link.name);
            log.record(InterestKind::User, &link.name, false);
            return None;
        }
        user.slots.get(link.pos).copied()
    }
}
