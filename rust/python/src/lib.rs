//! `roomcast._core`: the PyO3 binding of `roomcast-core`. This file only registers.

use pyo3::prelude::*;
use roomcast_core::{Expiry, InterestKind};

mod direct;
mod frame;
mod hub;
mod ring;
mod seal;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<hub::Hub>()?;
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
