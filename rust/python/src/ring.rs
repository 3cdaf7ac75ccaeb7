//! One system call for all of a flush's direct writes (Linux io_uring).
//!
//! `crate::direct` decides, per connection, that a batch may go straight to its socket; this
//! module lets the hub stage those batches during a flush and hand them to the kernel in one
//! `io_uring_enter` instead of one `send(2)` each. Each request is a `send` with
//! `MSG_DONTWAIT`, so the kernel runs it inline and a full socket answers `-EAGAIN` at once,
//! exactly like `send(2)`: the results are what `Direct::send` would have returned, and the
//! hub treats them the same way (the rest goes to `transport.write`).
//!
//! The ring is used only when the kernel has it, supports `IORING_OP_SEND`, and passes a
//! self-test showing that a send to a full socket completes at once; otherwise (an old
//! kernel, a seccomp profile that forbids io_uring, `ROOMCAST_IO_URING=0`) the hub keeps
//! one `send(2)` per batch.

use io_uring::{opcode, types, IoUring, Probe};

use crate::direct::send_now;

/// Entries per submission; a flush with more staged writes submits in chunks. Not more:
/// on loopback each send also runs the receiving socket's stack in softirq context, and
/// with 1,024 sends per `io_uring_enter` the kernel handed part of that work to
/// `ksoftirqd` on the server's core (160–260 ns per delivery at steady arrival, time the
/// process is not charged for but the core spends, and latency while it waits its turn);
/// with 32–256 per submission almost none (5–50 ns), at 1/128 of the system calls of
/// one `send(2)` each. (`python -m benches steady`, which counts ksoftirqd's time.)
const DEPTH: u32 = 128;

/// Fewer staged writes than this go by `send(2)` one at a time: for a few sends (a reply, a
/// sweep's pings, a small room) the ring costs the kernel more than it saves
/// (`benches/uring-probe`: 8–11 % more CPU per send than `send(2)` for 1–8 sockets, 2–4 % more
/// for 16, level at 32–128, 3 % less at 1,000).
const RING_MIN: usize = 16;

/// A batch staged for the ring: its socket and its bytes in the flush's arena.
pub struct Staged {
    pub fd: i32,
    pub start: usize,
    pub len: usize,
}

pub struct Ring {
    ring: IoUring,
}

impl Ring {
    /// A ring when this kernel supports inline, non-waiting sends through io_uring.
    pub fn new() -> Option<Ring> {
        if std::env::var("ROOMCAST_IO_URING").is_ok_and(|v| v == "0") {
            return None;
        }
        let ring = IoUring::new(DEPTH).ok()?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe).ok()?;
        if !probe.is_supported(opcode::Send::CODE) {
            return None;
        }
        let mut ring = Ring { ring };
        ring.sends_without_waiting().then_some(ring)
    }

    /// Sends every staged batch; `results[i]` is what `send(2)` would have returned for
    /// `staged[i]` (bytes taken, or a negative errno). Returns whether the ring was used.
    pub fn send_all(&mut self, arena: &[u8], staged: &[Staged], results: &mut Vec<i32>) -> bool {
        results.clear();
        if staged.len() < RING_MIN {
            results.extend(
                staged
                    .iter()
                    .map(|item| send_now(item.fd, &arena[item.start..item.start + item.len])),
            );
            return false;
        }
        results.resize(staged.len(), -libc::EAGAIN);
        for (chunk_index, chunk) in staged.chunks(DEPTH as usize).enumerate() {
            let base = chunk_index * DEPTH as usize;
            {
                let mut sq = self.ring.submission();
                for (i, item) in chunk.iter().enumerate() {
                    let data = &arena[item.start..item.start + item.len];
                    let entry = send_entry(item.fd, data).user_data((base + i) as u64);
                    // SAFETY: the request reads `data`, a slice of `arena`, which the caller
                    // borrows for this whole call and cannot change or free meanwhile; this
                    // call returns only after every request of the chunk has completed
                    // (`submit_and_wait` below, and sends with MSG_DONTWAIT complete inline,
                    // which `new` checked). The queue has room: it holds DEPTH entries and
                    // the previous chunk's were all consumed by the kernel.
                    if unsafe { sq.push(&entry) }.is_err() {
                        break;
                    }
                }
            }
            let mut pending = chunk.len();
            while pending > 0 {
                match self.ring.submit_and_wait(pending) {
                    Ok(_) => {}
                    Err(err) if err.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(_) => return true, // left as -EAGAIN: the transport writes them
                }
                for cqe in self.ring.completion() {
                    if let Some(slot) = results.get_mut(cqe.user_data() as usize) {
                        *slot = cqe.result();
                    }
                    pending -= 1;
                }
            }
        }
        true
    }

    /// Whether a send to a full socket completes at once with `-EAGAIN` (kernels that
    /// honour MSG_DONTWAIT in io_uring) rather than waiting for room.
    fn sends_without_waiting(&mut self) -> bool {
        static PROBE: [u8; 1] = [0];
        let mut fds = [0i32; 2];
        // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return false;
        }
        let filler = [0u8; 4096];
        // SAFETY: `filler` is a live buffer of its length; fds[0] is our open socket.
        while unsafe {
            libc::send(
                fds[0],
                filler.as_ptr().cast(),
                filler.len(),
                libc::MSG_DONTWAIT,
            )
        } > 0
        {}
        let entry = send_entry(fds[0], &PROBE).user_data(0);
        // SAFETY: PROBE is static, so it outlives the request even if it never completes
        // (dropping the ring cancels it).
        let pushed = unsafe { self.ring.submission().push(&entry) }.is_ok();
        let inline = pushed
            && self.ring.submit().is_ok()
            && self
                .ring
                .completion()
                .next()
                .is_some_and(|cqe| cqe.result() == -libc::EAGAIN);
        // SAFETY: closing the two descriptors socketpair gave us, once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        inline
    }
}

fn send_entry(fd: i32, data: &[u8]) -> io_uring::squeue::Entry {
    opcode::Send::new(types::Fd(fd), data.as_ptr(), data.len() as u32)
        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    #[test]
    fn sends_reach_each_socket_and_a_full_one_answers_eagain() {
        let Some(mut ring) = Ring::new() else {
            eprintln!("io_uring unavailable here: nothing to test");
            return;
        };
        // Three writes go by send(2), RING_MIN and more through the ring: the same results.
        for extra in [0, RING_MIN] {
            full_socket_case(&mut ring, extra);
        }
    }

    fn full_socket_case(ring: &mut Ring, extra: usize) {
        let (a, mut a_peer) = pair();
        let (b, _b_peer) = pair();
        b.set_nonblocking(true).unwrap();
        let big = vec![7u8; 1 << 20];
        let mut filled = 0;
        // SAFETY: `big` is a live buffer; b is our open socket.
        while unsafe {
            libc::send(
                b.as_raw_fd(),
                big.as_ptr().cast(),
                big.len(),
                libc::MSG_DONTWAIT,
            )
        } > 0
        {
            filled += 1;
        }
        assert!(filled > 0);
        let mut arena = b"hello world".to_vec();
        let mut staged = vec![
            Staged {
                fd: a.as_raw_fd(),
                start: 0,
                len: 5,
            },
            Staged {
                fd: b.as_raw_fd(),
                start: 0,
                len: 11,
            },
            Staged {
                fd: a.as_raw_fd(),
                start: 5,
                len: 6,
            },
        ];
        for i in 0..extra {
            arena.push(b'!');
            staged.push(Staged {
                fd: a.as_raw_fd(),
                start: 11 + i,
                len: 1,
            });
        }
        let mut results = Vec::new();
        let used_ring = ring.send_all(&arena, &staged, &mut results);
        assert_eq!(used_ring, staged.len() >= RING_MIN);
        let mut want = vec![5, -libc::EAGAIN, 6];
        want.extend(std::iter::repeat_n(1, extra));
        assert_eq!(results, want);
        let mut got = vec![0u8; 11 + extra];
        a_peer.read_exact(&mut got).unwrap();
        assert_eq!(got, [&b"hello world"[..], &vec![b'!'; extra]].concat());
    }

    #[test]
    fn more_writes_than_the_queue_holds_go_in_chunks() {
        let Some(mut ring) = Ring::new() else {
            return;
        };
        let (a, mut a_peer) = pair();
        let count = DEPTH as usize * 2 + 3;
        let arena: Vec<u8> = (0..count).map(|i| (i % 251) as u8).collect();
        let staged: Vec<Staged> = (0..count)
            .map(|i| Staged {
                fd: a.as_raw_fd(),
                start: i,
                len: 1,
            })
            .collect();
        let mut results = Vec::new();
        assert!(ring.send_all(&arena, &staged, &mut results));
        assert!(results.iter().all(|&r| r == 1));
        let mut got = vec![0u8; count];
        a_peer.read_exact(&mut got).unwrap();
        // (The hub never stages two writes to one socket in a flush; order is not asserted.)
        got.sort_unstable();
        let mut want = arena.clone();
        want.sort_unstable();
        assert_eq!(got, want);
    }
}
