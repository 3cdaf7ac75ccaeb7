//! The io_uring writer's stand-in where there is no io_uring (every target but Linux):
//! `Ring` has no values, `Ring::new` always answers None, and the hub then writes each
//! direct batch with one `send(2)` (`crate::direct`), as on a Linux kernel without the ring.
//! Same items and signatures as `ring.rs`, so the write engine compiles unchanged.

/// A batch staged for the ring: its socket and its bytes in the flush's arena.
pub struct Staged {
    /// Read only by a ring, and there is none here.
    #[allow(dead_code)]
    pub fd: i32,
    pub start: usize,
    pub len: usize,
}

/// No ring on this platform: an enum without variants, so no `Ring` can exist and the
/// methods below can never run.
pub enum Ring {}

impl Ring {
    /// Always None: there is no io_uring here.
    pub fn new() -> Option<Ring> {
        None
    }

    pub fn is_up(&self) -> bool {
        match *self {}
    }

    pub fn send_all(&mut self, _arena: &[u8], _staged: &[Staged], _results: &mut Vec<i32>) -> bool {
        match *self {}
    }
}
