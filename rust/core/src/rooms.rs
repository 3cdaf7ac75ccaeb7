//! The room index: room name -> member slots, with O(1) join and leave.
//!
//! Members sit in a dense `Vec` per room (cache-friendly fan-out); every membership is
//! a link keyed by (slot, room) holding its positions in the room's member list and in
//! the connection's room list, so either side swap-removes in O(1).

use std::rc::Rc;

use rustc_hash::FxHashMap;

use crate::ids::RoomId;
use crate::interest::{InterestKind, InterestLog};

struct Room {
    name: Rc<str>,
    members: Vec<u32>,
}

#[derive(Clone, Copy)]
struct Link {
    room_pos: usize,
    conn_pos: usize,
}

#[derive(Default)]
pub(crate) struct Rooms {
    by_name: FxHashMap<Rc<str>, RoomId>,
    slab: Vec<Option<Room>>,
    free: Vec<usize>,
    links: FxHashMap<(u32, RoomId), Link>,
}

impl Rooms {
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn memberships(&self) -> usize {
        self.links.len()
    }

    pub fn id(&self, name: &str) -> Option<RoomId> {
        self.by_name.get(name).copied()
    }

    fn room(&self, id: RoomId) -> Option<&Room> {
        self.slab.get(id.0).and_then(Option::as_ref)
    }

    pub fn members(&self, id: RoomId) -> &[u32] {
        self.room(id).map_or(&[], |room| &room.members)
    }

    pub fn name(&self, id: RoomId) -> &str {
        self.room(id).map_or("", |room| &room.name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(|name| &**name)
    }

    pub fn contains(&self, slot: u32, id: RoomId) -> bool {
        self.links.contains_key(&(slot, id))
    }

    /// Adds `slot` to `name`, creating the room (logged); false if it already was a
    /// member.
    pub fn join(
        &mut self,
        slot: u32,
        conn_rooms: &mut Vec<RoomId>,
        name: &str,
        log: &mut InterestLog,
    ) -> bool {
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None => self.create(name, log),
        };
        if self.links.contains_key(&(slot, id)) {
            return false;
        }
        let Some(room) = self.slab.get_mut(id.0).and_then(Option::as_mut) else {
            return false;
        };
        let link = Link {
            room_pos: room.members.len(),
            conn_pos: conn_rooms.len(),
        };
        room.members.push(slot);
        conn_rooms.push(id);
        self.links.insert((slot, id), link);
        true
    }

    fn create(&mut self, name: &str, log: &mut InterestLog) -> RoomId {
        let room = Room {
            name: Rc::from(name),
            members: Vec::new(),
        };
        log.record(InterestKind::Room, &room.name, true);
        let key = room.name.clone();
        let id = match self.free.pop() {
            Some(i) => {
                self.slab[i] = Some(room);
                RoomId(i)
            }
            None => {
                self.slab.push(Some(room));
                RoomId(self.slab.len() - 1)
            }
        };
        self.by_name.insert(key, id);
        id
    }

    /// Removes `slot` from `name`; false if it was not a member.
    pub fn leave(
        &mut self,
        slot: u32,
        conn_rooms: &mut Vec<RoomId>,
        name: &str,
        log: &mut InterestLog,
    ) -> bool {
        let Some(id) = self.id(name) else {
            return false;
        };
        let Some(link) = self.unlink_room_side(slot, id, log) else {
            return false;
        };
        if link.conn_pos < conn_rooms.len() {
            conn_rooms.swap_remove(link.conn_pos);
            if let Some(&moved) = conn_rooms.get(link.conn_pos) {
                if let Some(l) = self.links.get_mut(&(slot, moved)) {
                    l.conn_pos = link.conn_pos;
                }
            }
        }
        true
    }

    /// Removes `slot` from every room in `conn_rooms` (the connection is going away).
    pub fn leave_all(&mut self, slot: u32, conn_rooms: &[RoomId], log: &mut InterestLog) {
        for &id in conn_rooms {
            self.unlink_room_side(slot, id, log);
        }
    }

    /// Drops the link and the room-side entry; deletes the room (logged) when it
    /// empties.
    fn unlink_room_side(&mut self, slot: u32, id: RoomId, log: &mut InterestLog) -> Option<Link> {
        let link = self.links.remove(&(slot, id))?;
        let room = self.slab.get_mut(id.0).and_then(Option::as_mut)?;
        if link.room_pos < room.members.len() {
            room.members.swap_remove(link.room_pos);
        }
        if let Some(&moved) = room.members.get(link.room_pos) {
            if let Some(l) = self.links.get_mut(&(moved, id)) {
                l.room_pos = link.room_pos;
            }
        }
        if room.members.is_empty() {
            let name = room.name.clone();
            self.by_name.remove(&*name);
            log.record(InterestKind::Room, &name, false);
            self.slab[id.0] = None;
            self.free.push(id.0);
        }
        Some(link)
    }
}
