//! Identifier newtypes.

use std::hash::BuildHasher;
use std::rc::Rc;

use rustc_hash::FxBuildHasher;

/// A connection handle: slot index in the low 32 bits, slot generation in the high 32.
///
/// A handle is dead once its connection is removed; the slot's generation moves on, so
/// a stale handle never reaches the connection that reuses the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle(u64);

impl Handle {
    pub(crate) fn new(slot: u32, generation: u32) -> Self {
        Handle(u64::from(slot) | (u64::from(generation) << 32))
    }

    /// Rebuilds a handle from the integer handed to the caller; unknown values are
    /// simply dead handles.
    pub fn from_raw(raw: u64) -> Self {
        Handle(raw)
    }

    pub fn raw(self) -> u64 {
        self.0
    }

    pub(crate) fn slot(self) -> u32 {
        self.0 as u32
    }

    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// Index of a room in the room slab; only valid while the room has members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct RoomId(pub(crate) u32);

/// A client id with its hash cached, so exclude checks compare integers first. The
/// string is shared with the client's own-id room, when it joins one.
#[derive(Debug)]
pub(crate) struct ClientId {
    name: Rc<str>,
    hash: u64,
}

impl ClientId {
    pub(crate) fn new(name: &str) -> Self {
        ClientId {
            name: name.into(),
            hash: id_hash(name),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.name
    }

    pub(crate) fn shared(&self) -> &Rc<str> {
        &self.name
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }
}

/// The hash used for client ids (deterministic within the process).
pub(crate) fn id_hash(name: &str) -> u64 {
    FxBuildHasher.hash_one(name)
}
