//! roomcast-core: the part of roomcast that scales with the number of connections.
//!
//! Pure Rust with no Python in sight: a connection registry, room and user indices,
//! fan-out that frames a message once and queues a shared reference per recipient,
//! per-connection backpressure, and deadlines kept in a hierarchical timer wheel.
//! Time is injected as milliseconds so every behaviour is testable without a clock.
//!
//! The hub is generic over `S`, the per-connection sink the caller stores (the Python
//! binding keeps the transport's `write` and an opaque owner there). The core never
//! calls out: it hands sinks and byte batches to closures and reports what the caller
//! must do next (schedule a flush, close an overflowing connection).
//!
//! History rooms (SPEC §10) keep their offset order, the live messages held while a
//! member's recovery is read, and the floors after it in the room (`history`), so their
//! fan-out stays one pass over the members.
//!
//! [`seal`] seals one message under many AES-256-GCM keys for encrypted fan-out.
//! [`deflate`] compresses and inflates permessage-deflate messages with no state per
//! connection: a fan-out is compressed once for every recipient that negotiated it.
//!
//! Modules:
//! - `hub`: the [`Hub`] (registry, rooms and users, plain fan-out, flushes, interest,
//!   deadlines); its parts `hub::queue` (a connection's record and slot, its pending
//!   frames, the `Outbox` every delivery path queues through, the hand-off of a
//!   [`Batch`], the lazily built fan-out frame) and `hub::history_delivery` (numbered
//!   delivery to history rooms, holding and releasing a recovering member's messages);
//! - `history`: a history room's state (offset order, held messages, floors);
//! - `rooms`, `users`, `ids`, `small`: the indices and the types they are built from;
//! - `deadline`, `wheel`: per-connection deadlines and the timer wheel that fires them;
//! - `interest`: the log of rooms, users and clients gained and lost locally;
//! - `exclude`, [`frame`], [`seal`], [`deflate`]: a fan-out's exclusions, WebSocket
//!   framing, sealing, permessage-deflate.
//!
//! Threading: a [`Hub`] belongs to one thread (frames are `Rc`-shared); [`seal`] is
//! plain data in, data out and may run on any thread.

mod deadline;
pub mod deflate;
mod exclude;
pub mod frame;
mod history;
mod hub;
mod ids;
mod interest;
mod rooms;
pub mod seal;
mod small;
mod users;
mod wheel;

pub use deadline::Expiry;
pub use exclude::Exclude;
pub use frame::Frame;
pub use hub::{
    Batch, Config, Hub, HubFull, Pass, Released, Sent, Stats, DEFAULT_DEFLATE_LEVEL,
    DEFAULT_DEFLATE_THRESHOLD,
};
pub use ids::Handle;
pub use interest::InterestKind;
pub use wheel::TICK_MS;
