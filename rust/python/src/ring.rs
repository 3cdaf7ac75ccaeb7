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
//!
//! No request outlives `send_all`: each call returns only once every request the kernel took
//! has completed and its completion has been read, so the next flush never meets a stale
//! completion or a request reading an arena that was cleared. If the ring misbehaves (an
//! `io_uring_enter` fails other than with `EINTR`, makes no progress, or a push fails), the
//! call reads the completions of what the kernel took, tears the ring down (which discards
//! the entries it never took: without `SQPOLL` the kernel reads the queue only inside
//! `io_uring_enter`), sends the rest by `send(2)` and reports the ring gone; the hub then
//! writes by `send(2)` for good. Tests make those failures happen with `Fault`
//! (`ROOMCAST_IO_URING_FAULT`, a switch for tests only).

use std::io;

use io_uring::{opcode, types, EnterFlags, IoUring, Probe};

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

impl Staged {
    fn bytes<'a>(&self, arena: &'a [u8]) -> &'a [u8] {
        &arena[self.start..self.start + self.len]
    }
}

pub struct Ring {
    /// None once torn down after a failure (see the module comment).
    ring: Option<IoUring>,
    /// A failure to make happen: tests only (`Fault`).
    fault: Option<Fault>,
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
        let mut ring = Ring {
            ring: Some(ring),
            fault: Fault::from_env(),
        };
        ring.sends_without_waiting().then_some(ring)
    }

    /// Whether the ring is still in use: false once a failure tore it down, after which
    /// `send_all` sends by `send(2)` only.
    pub fn is_up(&self) -> bool {
        self.ring.is_some()
    }

    /// Sends every staged batch; `results[i]` is what `send(2)` would have returned for
    /// `staged[i]` (bytes taken, or a negative errno). Returns whether the ring was used.
    /// Every request handed to the kernel has completed, and been read, when this returns.
    pub fn send_all(&mut self, arena: &[u8], staged: &[Staged], results: &mut Vec<i32>) -> bool {
        results.clear();
        let Some(ring) = self.ring.as_mut().filter(|_| staged.len() >= RING_MIN) else {
            results.extend(
                staged
                    .iter()
                    .map(|item| send_now(item.fd, item.bytes(arena))),
            );
            return false;
        };
        results.resize(staged.len(), -libc::EAGAIN);
        let mut done = 0;
        for chunk in staged.chunks(DEPTH as usize) {
            match send_chunk(ring, &mut self.fault, arena, chunk, done, results) {
                Ok(()) => done += chunk.len(),
                Err(taken) => {
                    done += taken;
                    // Every request the kernel took has completed and been read
                    // (`send_chunk`); the entries it never took go with the ring.
                    self.ring = None;
                    break;
                }
            }
        }
        for (item, slot) in staged[done..].iter().zip(&mut results[done..]) {
            *slot = send_now(item.fd, item.bytes(arena));
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
        let Some(ring) = self.ring.as_mut() else {
            return false;
        };
        // SAFETY: PROBE is static, so it outlives the request even if it never completes
        // (then `new` drops the ring, which cancels it).
        let pushed = unsafe { ring.submission().push(&entry) }.is_ok();
        let inline = pushed
            && ring.submit().is_ok()
            && ring
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

/// Sends `chunk` (at most DEPTH writes, `results[base..]` theirs) through `ring`, whose
/// queues are empty. `Ok` when every write completed; `Err(n)` when the ring failed: the
/// kernel took the first `n` (their results are set), the rest it never took and never
/// will if the ring is dropped before its next `io_uring_enter`. Either way, nothing the
/// kernel took is still in flight or unread.
fn send_chunk(
    ring: &mut IoUring,
    fault: &mut Option<Fault>,
    arena: &[u8],
    chunk: &[Staged],
    base: usize,
    results: &mut [i32],
) -> Result<(), usize> {
    let mut pushed = 0;
    {
        let mut sq = ring.submission();
        for (i, item) in chunk.iter().enumerate().take(Fault::pushes(fault)) {
            let entry = send_entry(item.fd, item.bytes(arena)).user_data((base + i) as u64);
            // SAFETY: the request reads a slice of `arena`, which the caller borrows for
            // this whole call and cannot change or free meanwhile. Nothing reads the
            // pointer after this call returns: the kernel reads entries only inside
            // `io_uring_enter`, which is called only here and in `settle`, and this
            // function returns only once every entry the kernel took has completed and
            // been read (the loop below, `settle`); an entry it did not take is dropped
            // with the ring (`send_all` on `Err`) before any other `io_uring_enter`.
            if unsafe { sq.push(&entry) }.is_err() {
                break;
            }
            pushed += 1;
        }
    }
    if pushed < chunk.len() {
        // The queue is empty at the start of every chunk and holds DEPTH entries, so a
        // push cannot fail; if one does, nothing was taken yet: the rest go by send(2).
        return Err(settle(ring, 0, 0, base, results));
    }
    let mut reaped = 0;
    while reaped < pushed {
        let entered = Fault::enter(fault, ring, pushed - reaped);
        let before = reaped;
        reaped += reap(ring, base, results);
        match entered {
            Ok(_) if reaped > before => {}
            Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
            // Another error (ENOMEM, EBUSY...), or a successful enter with no completion.
            _ => {
                let taken = pushed - ring.submission().len();
                return Err(settle(ring, taken, reaped, base, results));
            }
        }
    }
    Ok(())
}

/// Reads completions into `results` until those of the chunk's first `taken` requests (the
/// ones the kernel took; `reaped` of them read already) have all been read; returns `taken`.
/// It does not give up: until a request completes, the kernel may still read its bytes.
fn settle(
    ring: &mut IoUring,
    taken: usize,
    mut reaped: usize,
    base: usize,
    results: &mut [i32],
) -> usize {
    while reaped < taken {
        // Sends with MSG_DONTWAIT complete inside the enter that took them (`new`
        // checked), so their completions are normally here already; otherwise wait.
        // SAFETY: submits nothing (`to_submit` 0): entries the kernel has not taken stay
        // untaken, for `send_all` to drop with the ring; this only waits.
        let waited = unsafe {
            ring.submitter().enter::<libc::sigset_t>(
                0,
                (taken - reaped) as u32,
                EnterFlags::GETEVENTS.bits(),
                None,
            )
        };
        if waited.is_err() {
            // The kernel posts completions to the shared queue without any call from us
            // (the queue holds twice DEPTH, more than can be in flight: no overflow).
            std::thread::yield_now();
        }
        reaped += reap(ring, base, results);
    }
    taken
}

/// Reads the completions that are there into `results[user_data]` (all of them from the
/// chunk that starts at `base`); returns how many.
fn reap(ring: &mut IoUring, base: usize, results: &mut [i32]) -> usize {
    let mut count = 0;
    for cqe in ring.completion() {
        let index = (cqe.user_data() as usize).wrapping_sub(base);
        debug_assert!(index < DEPTH as usize, "a completion from another chunk");
        if let Some(slot) = results.get_mut(cqe.user_data() as usize) {
            *slot = cqe.result();
        }
        count += 1;
    }
    count
}

/// A failure to inject, for tests only (this module's, and `ROOMCAST_IO_URING_FAULT` for the
/// Python ones, read once by `Ring::new`); never set otherwise. Checked once per chunk, not
/// per write.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// After `skip` enters that go as usual, one enter hands the kernel at most `taken` of
    /// the queued entries (a real submission: they are sent) and then fails with `errno`,
    /// as an enter that stops part-way does. `enter:SKIP:TAKEN:ERRNO`.
    Enter { skip: u32, taken: u32, errno: i32 },
    /// The push of a chunk's entry `at` fails, as on a full queue. `push:AT`.
    Push { at: usize },
}

impl Fault {
    /// The fault `ROOMCAST_IO_URING_FAULT` names, if any.
    fn from_env() -> Option<Fault> {
        Fault::parse(&std::env::var("ROOMCAST_IO_URING_FAULT").ok()?)
    }

    fn parse(spec: &str) -> Option<Fault> {
        match spec.split(':').collect::<Vec<_>>().as_slice() {
            ["enter", skip, taken, errno] => Some(Fault::Enter {
                skip: skip.parse().ok()?,
                taken: taken.parse().ok()?,
                errno: errno.parse().ok()?,
            }),
            ["push", at] => Some(Fault::Push {
                at: at.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// How many of a chunk's entries may be pushed (all, unless a push is to fail).
    fn pushes(fault: &mut Option<Fault>) -> usize {
        match *fault {
            Some(Fault::Push { at }) => {
                *fault = None;
                at
            }
            _ => usize::MAX,
        }
    }

    /// `ring.submit_and_wait(want)`, or the enter fault when it is due.
    fn enter(fault: &mut Option<Fault>, ring: &mut IoUring, want: usize) -> io::Result<usize> {
        let Some(Fault::Enter { skip, taken, errno }) = *fault else {
            return ring.submit_and_wait(want);
        };
        if skip > 0 {
            *fault = Some(Fault::Enter {
                skip: skip - 1,
                taken,
                errno,
            });
            return ring.submit_and_wait(want);
        }
        *fault = None;
        let queued = ring.submission().len() as u32;
        if taken > 0 {
            // SAFETY: submits entries `send_chunk` queued, under its guarantees.
            unsafe {
                ring.submitter()
                    .enter::<libc::sigset_t>(taken.min(queued), 0, 0, None)
            }?;
        }
        Err(io::Error::from_raw_os_error(errno))
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

    /// `count` writes, each to its own socket, of distinct lengths (`i + 1` bytes), the one
    /// at `full` to a socket whose send buffer is full.
    struct Writes {
        pairs: Vec<(TcpStream, TcpStream)>,
        arena: Vec<u8>,
        staged: Vec<Staged>,
        full: usize,
    }

    impl Writes {
        fn new(count: usize, full: usize) -> Writes {
            let pairs: Vec<_> = (0..count).map(|_| pair()).collect();
            fill(&pairs[full].0);
            let mut arena = Vec::new();
            let mut staged = Vec::new();
            for (i, (sock, _)) in pairs.iter().enumerate() {
                let start = arena.len();
                arena.extend((0..=i).map(|j| (i * 7 + j) as u8));
                staged.push(Staged {
                    fd: sock.as_raw_fd(),
                    start,
                    len: i + 1,
                });
            }
            Writes {
                pairs,
                arena,
                staged,
                full,
            }
        }

        /// Every result is this write's own (its length, or -EAGAIN for the full socket)
        /// and every peer received its bytes exactly once.
        fn check(&self, results: &[i32]) {
            assert_eq!(results.len(), self.staged.len());
            for (i, ((_, peer), item)) in self.pairs.iter().zip(&self.staged).enumerate() {
                if i == self.full {
                    assert_eq!(results[i], -libc::EAGAIN, "write {i}");
                    continue;
                }
                assert_eq!(results[i], item.len as i32, "write {i}");
                let mut got = vec![0u8; item.len];
                (&*peer).read_exact(&mut got).unwrap();
                assert_eq!(got, item.bytes(&self.arena), "write {i}");
                peer.set_nonblocking(true).unwrap();
                let mut more = [0u8; 1];
                let extra = (&*peer).read(&mut more);
                assert!(
                    matches!(&extra, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                    "write {i} arrived more than once: {extra:?}"
                );
                peer.set_nonblocking(false).unwrap();
            }
        }
    }

    fn fill(sock: &TcpStream) {
        sock.set_nonblocking(true).unwrap();
        let big = vec![7u8; 1 << 20];
        // SAFETY: `big` is a live buffer; the socket is ours and open.
        while unsafe {
            libc::send(
                sock.as_raw_fd(),
                big.as_ptr().cast(),
                big.len(),
                libc::MSG_DONTWAIT,
            )
        } > 0
        {}
    }

    /// Sends `writes` after injecting `fault`; checks the fault happened and every
    /// write's result and delivery; returns whether the ring is still up.
    fn send_with(ring: &mut Ring, writes: &Writes, fault: Fault) -> bool {
        ring.fault = Some(fault);
        let mut results = Vec::new();
        assert!(ring.send_all(&writes.arena, &writes.staged, &mut results));
        assert_eq!(ring.fault, None, "the fault was not met: {fault:?}");
        writes.check(&results);
        ring.is_up()
    }

    /// After a failure: the next flush goes by send(2), with every result its own.
    fn falls_back_for_good(ring: &mut Ring) {
        let writes = Writes::new(RING_MIN + 4, 2);
        let mut results = Vec::new();
        assert!(!ring.send_all(&writes.arena, &writes.staged, &mut results));
        writes.check(&results);
    }

    #[test]
    fn an_enter_failing_before_the_kernel_took_anything_sends_all_by_send() {
        let Some(mut ring) = Ring::new() else {
            return;
        };
        let writes = Writes::new(24, 1);
        let fault = Fault::Enter {
            skip: 0,
            taken: 0,
            errno: libc::ENOMEM,
        };
        assert!(!send_with(&mut ring, &writes, fault));
        falls_back_for_good(&mut ring);
    }

    #[test]
    fn an_enter_failing_part_way_reads_what_was_sent_and_sends_the_rest_once() {
        let Some(mut ring) = Ring::new() else {
            return;
        };
        // The full socket among those the kernel took, then among the rest.
        for full in [3, 15] {
            let Some(mut ring) = Ring::new() else {
                return;
            };
            let writes = Writes::new(24, full);
            let fault = Fault::Enter {
                skip: 0,
                taken: 7,
                errno: libc::EBUSY,
            };
            assert!(!send_with(&mut ring, &writes, fault));
        }
        // Also in a later chunk, after a whole one went through the ring.
        let writes = Writes::new(DEPTH as usize + 40, DEPTH as usize + 2);
        let fault = Fault::Enter {
            skip: 1,
            taken: 10,
            errno: libc::EAGAIN,
        };
        assert!(!send_with(&mut ring, &writes, fault));
        falls_back_for_good(&mut ring);
    }

    #[test]
    fn an_interrupted_enter_goes_on_with_the_ring() {
        let Some(mut ring) = Ring::new() else {
            return;
        };
        for taken in [0, 5] {
            let writes = Writes::new(24, 20);
            let fault = Fault::Enter {
                skip: 0,
                taken,
                errno: libc::EINTR,
            };
            assert!(send_with(&mut ring, &writes, fault));
        }
        // Nothing of those is left in the ring to be mistaken for this flush's.
        let writes = Writes::new(RING_MIN + 1, 0);
        let mut results = Vec::new();
        assert!(ring.send_all(&writes.arena, &writes.staged, &mut results));
        writes.check(&results);
    }

    #[test]
    fn the_environment_names_a_fault_or_none() {
        let enter = Fault::Enter {
            skip: 1,
            taken: 7,
            errno: libc::EBUSY,
        };
        assert_eq!(Fault::parse("enter:1:7:16"), Some(enter));
        assert_eq!(Fault::parse("push:3"), Some(Fault::Push { at: 3 }));
        for junk in ["", "enter:1:7", "push:x", "enter:-1:0:4", "pull:3"] {
            assert_eq!(Fault::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn a_failed_push_sends_all_by_send() {
        let Some(mut ring) = Ring::new() else {
            return;
        };
        let writes = Writes::new(24, 5);
        assert!(!send_with(&mut ring, &writes, Fault::Push { at: 3 }));
        falls_back_for_good(&mut ring);
    }
}
