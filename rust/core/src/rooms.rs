//! The room index: room name -> member slots, with O(1) join and leave.
//!
//! Members sit in a dense list per room (cache-friendly fan-out). Every membership is
//! stored twice, each side holding its position in the other: a room's member is
//! (slot, index in the connection's room list) and a connection's room is (room, index
//! in the room's member list). Either side swap-removes in O(1) and fixes the back
//! pointer of the entry that moved; there is no per-membership hash entry. Finding a
//! membership scans the shorter of the two lists.

use std::rc::Rc;

use rustc_hash::FxHashMap;

use crate::history::RoomHistory;
use crate::ids::RoomId;
use crate::interest::{InterestKind, InterestLog};
use crate::small::SmallVec;

/// A room's member: the slot and where the room sits in that connection's room list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Member {
    pub slot: u32,
    pub conn_pos: u32,
}

/// A connection's room: the room and where the connection sits in its member list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConnRoom {
    pub room: RoomId,
    pub room_pos: u32,
}

/// A connection's rooms; a few are kept inline.
pub(crate) type ConnRooms = SmallVec<ConnRoom, 4>;

/// A room's members; a single member (a client's own-id room) is kept inline.
type Members = SmallVec<Member, 1>;

struct Room {
    name: Rc<str>,
    members: Members,
    /// A history room's order, held messages and floors (see `crate::history`).
    history: Option<Box<RoomHistory>>,
}

/// A member of another connection moved inside a room's member list: its connection's
/// room list entry `conn_pos` must now say `room_pos`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Moved {
    pub slot: u32,
    pub conn_pos: u32,
    pub room_pos: u32,
}

impl Moved {
    /// Applies the fix-up to the moved member's room list.
    pub fn apply(self, conn_rooms: &mut ConnRooms) {
        if let Some(entry) = conn_rooms.as_mut_slice().get_mut(self.conn_pos as usize) {
            entry.room_pos = self.room_pos;
        }
    }
}

#[derive(Default)]
pub(crate) struct Rooms {
    by_name: FxHashMap<Rc<str>, RoomId>,
    slab: Vec<Option<Room>>,
    free: Vec<u32>,
    memberships: usize,
}

impl Rooms {
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn memberships(&self) -> usize {
        self.memberships
    }

    pub fn id(&self, name: &str) -> Option<RoomId> {
        self.by_name.get(name).copied()
    }

    fn room(&self, id: RoomId) -> Option<&Room> {
        self.slab.get(id.0 as usize).and_then(Option::as_ref)
    }

    fn room_mut(&mut self, id: RoomId) -> Option<&mut Room> {
        self.slab.get_mut(id.0 as usize).and_then(Option::as_mut)
    }

    #[inline]
    pub fn members(&self, id: RoomId) -> &[Member] {
        self.room(id).map_or(&[], |room| room.members.as_slice())
    }

    /// The room's members and its history state (created on first use).
    pub fn with_history(&mut self, id: RoomId) -> Option<(&[Member], &mut RoomHistory)> {
        let room = self.room_mut(id)?;
        let history = room.history.get_or_insert_with(Box::default);
        Some((room.members.as_slice(), history))
    }

    /// The room's history state, if it has one.
    pub fn history(&self, id: RoomId) -> Option<&RoomHistory> {
        self.room(id)?.history.as_deref()
    }

    pub fn name(&self, id: RoomId) -> &str {
        self.room(id).map_or("", |room| &room.name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(|name| &**name)
    }

    /// Position of room `id` in `conn_rooms` if `slot` is a member, scanning the
    /// shorter side.
    fn position(&self, slot: u32, conn_rooms: &[ConnRoom], id: RoomId) -> Option<usize> {
        let members = self.members(id);
        if conn_rooms.len() <= members.len() {
            conn_rooms.iter().position(|entry| entry.room == id)
        } else {
            members
                .iter()
                .find(|member| member.slot == slot)
                .map(|member| member.conn_pos as usize)
        }
    }

    pub fn contains(&self, slot: u32, conn_rooms: &[ConnRoom], id: RoomId) -> bool {
        self.position(slot, conn_rooms, id).is_some()
    }

    /// Adds `slot` to `name`, creating the room (logged); false if it already was a
    /// member. `shared` is an allocation of `name` the new room may reuse.
    pub fn join(
        &mut self,
        slot: u32,
        conn_rooms: &mut ConnRooms,
        name: &str,
        shared: Option<&Rc<str>>,
        log: &mut InterestLog,
    ) -> bool {
        let id = match self.by_name.get(name) {
            Some(&id) => {
                if self.position(slot, conn_rooms.as_slice(), id).is_some() {
                    return false;
                }
                id
            }
            None => match self.create(name, shared, log) {
                Some(id) => id,
                None => return false,
            },
        };
        let (Ok(conn_pos), Some(room)) = (u32::try_from(conn_rooms.len()), self.room_mut(id))
        else {
            return false;
        };
        let Ok(room_pos) = u32::try_from(room.members.len()) else {
            return false;
        };
        room.members.push(Member { slot, conn_pos });
        conn_rooms.push(ConnRoom { room: id, room_pos });
        self.memberships += 1;
        true
    }

    fn create(
        &mut self,
        name: &str,
        shared: Option<&Rc<str>>,
        log: &mut InterestLog,
    ) -> Option<RoomId> {
        let name = match shared {
            Some(rc) if **rc == *name => rc.clone(),
            _ => Rc::from(name),
        };
        let id = match self.free.pop() {
            Some(i) => RoomId(i),
            None => RoomId(u32::try_from(self.slab.len()).ok()?),
        };
        log.record(InterestKind::Room, &name, true);
        let room = Room {
            name: name.clone(),
            members: Members::new(),
            history: None,
        };
        if id.0 as usize == self.slab.len() {
            self.slab.push(Some(room));
        } else {
            self.slab[id.0 as usize] = Some(room);
        }
        self.by_name.insert(name, id);
        Some(id)
    }

    /// Removes `slot` from `name`; `None` if it was not a member, else the member of
    /// another connection that moved (its room list needs the fix-up).
    pub fn leave(
        &mut self,
        slot: u32,
        conn_rooms: &mut ConnRooms,
        name: &str,
        log: &mut InterestLog,
    ) -> Option<Option<Moved>> {
        let id = self.id(name)?;
        let conn_pos = self.position(slot, conn_rooms.as_slice(), id)?;
        let entry = conn_rooms.swap_remove(conn_pos);
        if let Some(&moved) = conn_rooms.as_slice().get(conn_pos) {
            if let Some(member) = self
                .room_mut(moved.room)
                .and_then(|room| room.members.as_mut_slice().get_mut(moved.room_pos as usize))
            {
                member.conn_pos = conn_pos as u32;
            }
        }
        Some(self.unlink_room_side(entry, log))
    }

    /// Removes the connection behind `conn_rooms` (it is going away) from every room;
    /// `fix` receives each member of another connection that moved.
    pub fn leave_all(
        &mut self,
        conn_rooms: &ConnRooms,
        log: &mut InterestLog,
        mut fix: impl FnMut(Moved),
    ) {
        for &entry in conn_rooms.as_slice() {
            if let Some(moved) = self.unlink_room_side(entry, log) {
                fix(moved);
            }
        }
    }

    /// Drops the room-side entry; deletes the room (logged) when it empties.
    fn unlink_room_side(&mut self, entry: ConnRoom, log: &mut InterestLog) -> Option<Moved> {
        let room = self
            .slab
            .get_mut(entry.room.0 as usize)
            .and_then(Option::as_mut)?;
        let pos = entry.room_pos as usize;
        if pos >= room.members.len() {
            return None;
        }
        let left = room.members.swap_remove(pos);
        if let Some(history) = &mut room.history {
            history.forget(left.slot);
        }
        self.memberships -= 1;
        let moved = room.members.as_slice().get(pos).map(|member| Moved {
            slot: member.slot,
            conn_pos: member.conn_pos,
            room_pos: entry.room_pos,
        });
        if room.members.is_empty() {
            let name = room.name.clone();
            self.by_name.remove(&*name);
            log.record(InterestKind::Room, &name, false);
            self.slab[entry.room.0 as usize] = None;
            self.free.push(entry.room.0);
        }
        moved
    }
}
