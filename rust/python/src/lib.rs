//! `roomcast._core`: the PyO3 binding of `roomcast-core`. This file only registers.
//!
//! Modules:
//! - `hub`: the `Hub` class and its methods, with the binding's re-entrancy rules (no
//!   borrow of the hub outstanding while Python runs) at its top;
//! - `followup`: the Python calls a hub operation owes (`schedule`, `on_overflow`,
//!   `on_interest`), made after the borrow;
//! - `write`: a flush's write engine (`deliver`, the `bytes` cache, the ring's stage,
//!   `call_writes`, the garbage collector held off while writes are staged);
//! - `direct`, `ring`: writing a batch straight to a uvloop socket, and one io_uring
//!   submission for all of a flush's direct writes (Linux; `ring_none` elsewhere: no ring);
//! - `convert`: the hub's clock and arguments in Python's terms;
//! - `frame`, `seal`: the `frame_text` and `seal_messages` functions;
//! - `deflate`: the `Inflater` of inbound permessage-deflate messages.

use pyo3::prelude::*;
use roomcast_core::{Expiry, InterestKind};

mod convert;
mod deflate;
mod direct;
mod followup;
mod frame;
mod hub;
// io_uring is Linux's; elsewhere a stand-in without a ring (every direct write by send(2)).
#[cfg_attr(not(target_os = "linux"), path = "ring_none.rs")]
mod ring;
mod seal;
mod write;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<hub::Hub>()?;
    m.add_class::<deflate::Inflater>()?;
    m.add(
        "InflatedTooBig",
        m.py().get_type::<deflate::InflatedTooBig>(),
    )?;
    m.add(
        "InvalidDeflate",
        m.py().get_type::<deflate::InvalidDeflate>(),
    )?;
    m.add(
        "DEFAULT_DEFLATE_THRESHOLD",
        roomcast_core::DEFAULT_DEFLATE_THRESHOLD,
    )?;
    m.add(
        "DEFAULT_DEFLATE_LEVEL",
        roomcast_core::DEFAULT_DEFLATE_LEVEL,
    )?;
    m.add_function(wrap_pyfunction!(frame::frame_text, m)?)?;
    m.add_function(wrap_pyfunction!(seal::seal_messages, m)?)?;
    m.add("EXPIRED_AUTH", Expiry::Auth.code())?;
    m.add("EXPIRED_HEARTBEAT", Expiry::Heartbeat.code())?;
    m.add("EXPIRED_IDLE", Expiry::Idle.code())?;
    m.add("INTEREST_ROOM", InterestKind::Room.code())?;
    m.add("INTEREST_USER", InterestKind::User.code())?;
    m.add("INTEREST_CLIENT", InterestKind::Client.code())?;
    Ok(())
}
