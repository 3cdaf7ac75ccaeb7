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
//!
//! Threading: a [`Hub`] belongs to one thread (frames are `Rc`-shared); [`seal`] is
//! plain data in, data out and may run on any thread.

mod deadline;
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
pub use hub::{Batch, Config, Hub, HubFull, Released, Stats};
pub use ids::Handle;
pub use interest::InterestKind;
pub use wheel::TICK_MS;
