//! Writing a flushed batch straight to the socket, skipping `transport.write`.
//!
//! Only for plain uvloop TCP transports (`uvloop.loop.TCPTransport`; never a TLS one, whose
//! socket carries ciphertext). A batch goes to the socket with one `send(2)` when, right
//! now, uvloop still owns that fd (its pseudo-socket's `fileno()` is the fd we recorded:
//! uvloop sets it to -1 before it closes the fd, so a closed and reused number is never
//! written to) and uvloop holds nothing unsent for it (`get_write_buffer_size() == 0`, so
//! nothing we send can overtake bytes picows or uvloop queued earlier). Whatever `send`
//! does not take (a partial write, `EAGAIN`) or any error is handed to `transport.write`
//! as before, so uvloop buffers it, pauses the protocol at its high-water mark (our
//! backpressure) and reports errors its own way.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use pyo3::{intern, PyResult};

/// The two uvloop getters `clear` calls for every connection of every flush, taken once from
/// their types: calling a type's method descriptor with the instance skips the attribute
/// lookup of a method call (`_PyObject_GetMethod` was 2–4 % of a large fan-out's CPU).
struct Getters {
    transport_type: Py<PyType>,
    write_buffer_size: Py<PyAny>,
    sock_type: Py<PyType>,
    fileno: Py<PyAny>,
}

impl Getters {
    fn of(transport: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>) -> Option<Getters> {
        let py = transport.py();
        let transport_type = transport.get_type();
        let sock_type = sock.get_type();
        Some(Getters {
            write_buffer_size: transport_type
                .getattr(intern!(py, "get_write_buffer_size"))
                .ok()?
                .unbind(),
            fileno: sock_type.getattr(intern!(py, "fileno")).ok()?.unbind(),
            transport_type: transport_type.unbind(),
            sock_type: sock_type.unbind(),
        })
    }

    /// Whether these two objects are of the types whose getters were taken: those of the
    /// first transport seen (there is one uvloop per process).
    fn fit(py: Python<'_>, transport: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>) -> bool {
        GETTERS
            .get_or_init(py, || Getters::of(transport, sock))
            .as_ref()
            .is_some_and(|getters| {
                transport.get_type().is(getters.transport_type.bind(py))
                    && sock.get_type().is(getters.sock_type.bind(py))
            })
    }
}

static GETTERS: PyOnceLock<Option<Getters>> = PyOnceLock::new();

/// What a connection needs for direct writes.
pub struct Direct {
    transport: Py<PyAny>,
    /// uvloop's cached pseudo-socket: `fileno()` is -1 once the transport closed its fd.
    sock: Py<PyAny>,
    fd: i32,
}

/// How much of a batch `send` took.
pub enum Sent {
    /// All of it.
    All,
    /// The first `n` bytes (maybe 0); the rest must go through the transport.
    Part(usize),
    /// None: the direct path does not apply now (or failed); use the transport.
    Not,
}

impl Direct {
    /// The direct-write handle of `write`'s transport when it is a plain uvloop TCP
    /// transport with an open socket, else None.
    pub fn of(write: &Bound<'_, PyAny>) -> Option<Direct> {
        let py = write.py();
        let transport = write.getattr(intern!(py, "__self__")).ok()?;
        let kind = transport.get_type();
        let module = kind.module().ok()?;
        if kind.name().ok()?.to_str().ok()? != "TCPTransport"
            || module.to_str().ok()? != "uvloop.loop"
        {
            return None;
        }
        let sock = transport
            .call_method1(intern!(py, "get_extra_info"), (intern!(py, "socket"),))
            .ok()?;
        let fd: i32 = sock
            .call_method0(intern!(py, "fileno"))
            .ok()?
            .extract()
            .ok()?;
        if !Getters::fit(py, &transport, &sock) {
            return None;
        }
        (fd >= 0).then(|| Direct {
            transport: transport.unbind(),
            sock: sock.unbind(),
            fd,
        })
    }

    /// uvloop still owns our fd and has nothing queued for it.
    fn clear(&self, py: Python<'_>) -> PyResult<bool> {
        // Set before any `Direct` was made (`Getters::fit`).
        let Some(getters) = GETTERS.get(py).and_then(Option::as_ref) else {
            return Ok(false);
        };
        let fd: i32 = getters.fileno.bind(py).call1((&self.sock,))?.extract()?;
        if fd != self.fd {
            return Ok(false);
        }
        let queued: usize = getters
            .write_buffer_size
            .bind(py)
            .call1((&self.transport,))?
            .extract()?;
        Ok(queued == 0)
    }

    /// The socket's fd (to be written only after `ready` said so, under the same GIL hold).
    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Whether `data` may go to the socket now (see the module comment).
    pub fn ready(&self, py: Python<'_>, data: &[u8]) -> bool {
        !data.is_empty() && self.clear(py).unwrap_or(false)
    }

    /// Sends `data` now if the transport allows it (see the module comment).
    pub fn send(&self, py: Python<'_>, data: &[u8]) -> Sent {
        if !self.ready(py, data) {
            return Sent::Not;
        }
        // That `fd` is still this connection's socket is what `clear` established just
        // above, with the GIL held throughout, so uvloop (which closes fds on this thread,
        // under the GIL) cannot close it in between.
        match send_now(self.fd, data) {
            n if n >= 0 => {
                let n = n as usize;
                if n == data.len() {
                    Sent::All
                } else {
                    Sent::Part(n)
                }
            }
            n if n == -libc::EAGAIN => Sent::Part(0),
            // EPIPE, ECONNRESET...: let uvloop meet the error and close the transport.
            _ => Sent::Not,
        }
    }

    pub fn traverse(&self, visit: &pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.transport)?;
        visit.call(&self.sock)
    }
}

/// `send(2)` of `data` to `fd` now, without waiting (`MSG_DONTWAIT`): the bytes taken, or a
/// negative errno (`-EAGAIN` for a full socket). The caller has checked that `fd` is still
/// the connection's socket (`Direct::ready`), under the same GIL hold.
pub fn send_now(fd: i32, data: &[u8]) -> i32 {
    loop {
        // SAFETY: `data` is a live, initialised slice for the whole call and `send` only
        // reads `data.len()` bytes from it without keeping the pointer. The fd is a plain
        // integer to the kernel (a bad one is EBADF, not memory unsafety).
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return i32::try_from(n).unwrap_or(i32::MAX);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(errno) => return -errno,
            None => return -libc::EIO,
        }
    }
}
