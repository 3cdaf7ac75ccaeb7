//! Kernel cost of one small WebSocket frame to each of N loopback sockets, two ways: one
//! `send(2)` per socket (what roomcast's direct writes do), and one io_uring submission per
//! fan-out (N send requests, one `io_uring_enter`). A reader thread on the other core drains
//! the client ends through epoll, as real clients would, so every segment wakes a reader.
//! Messages arrive one at a time (a pause between fan-outs), the steady regime.
//!
//! `cargo run --release -- [clients] [rounds]` prints the sender's CPU time per delivery.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

const FRAME: [u8; 60] = {
    let mut f = [b'x'; 60];
    f[0] = 0x81;
    f[1] = 58;
    f
};

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it, and
    // sched_setaffinity(0, ..) only reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn reader(fds: Vec<RawFd>, received: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    pin(1);
    // SAFETY: plain epoll syscalls on descriptors this process owns for the reader's life;
    // every buffer passed is a live local array of the stated length.
    unsafe {
        let ep = libc::epoll_create1(0);
        for (i, fd) in fds.iter().enumerate() {
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, *fd, &mut ev);
        }
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut buf = [0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let n = libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 50);
            for ev in events.iter().take(n.max(0) as usize) {
                let fd = fds[ev.u64 as usize];
                loop {
                    let r = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT);
                    if r <= 0 {
                        break;
                    }
                    received.fetch_add(r as u64, Ordering::Relaxed);
                }
            }
        }
        libc::close(ep);
    }
}

fn fan_out_send(fds: &[RawFd]) {
    for fd in fds {
        // SAFETY: FRAME is a static buffer of the given length; fd is an open socket.
        let r = unsafe {
            libc::send(*fd, FRAME.as_ptr().cast(), FRAME.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        assert_eq!(r, FRAME.len() as isize, "partial send");
    }
}

fn fan_out_uring(ring: &mut IoUring, fds: &[RawFd]) {
    let depth = ring.params().sq_entries() as usize;
    for chunk in fds.chunks(depth) {
        {
            let mut sq = ring.submission();
            for (i, fd) in chunk.iter().enumerate() {
                let entry = opcode::Send::new(types::Fd(*fd), FRAME.as_ptr(), FRAME.len() as u32)
                    .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(i as u64);
                // SAFETY: FRAME is static, so the buffer outlives the request.
                unsafe { sq.push(&entry).expect("queue full") };
            }
        }
        ring.submit_and_wait(chunk.len()).expect("io_uring_enter");
        for cqe in ring.completion() {
            assert_eq!(cqe.result(), FRAME.len() as i32, "partial send");
        }
    }
}

/// A socket whose peer never reads: io_uring sends with MSG_DONTWAIT must end in a short
/// count or -EAGAIN at once (never wait for room), like `send(2)`.
fn full_socket_check() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let _peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (s, _) = listener.accept().unwrap();
    let fd = s.as_raw_fd();
    let mut ring = IoUring::new(8).unwrap();
    let big = vec![b'x'; 1 << 20];
    let start = Instant::now();
    for attempt in 0..64 {
        let entry = opcode::Send::new(types::Fd(fd), big.as_ptr(), big.len() as u32)
            .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: `big` lives until the completion is reaped below.
        unsafe { ring.submission().push(&entry).unwrap() };
        ring.submit_and_wait(1).unwrap();
        let result = ring.completion().next().unwrap().result();
        println!("attempt {attempt}: {result}");
        if result < 0 {
            assert_eq!(-result, libc::EAGAIN);
            break;
        }
    }
    println!("full socket: done in {:?}", start.elapsed());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    if args.first() == Some(&0) {
        full_socket_check();
        return;
    }
    let clients = *args.first().unwrap_or(&1000);
    let rounds = *args.get(1).unwrap_or(&200);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client_ends = Vec::new();
    let mut server_ends = Vec::new();
    for _ in 0..clients {
        client_ends.push(TcpStream::connect(addr).unwrap());
        let (s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        server_ends.push(s);
    }
    let fds: Vec<RawFd> = server_ends.iter().map(|s| s.as_raw_fd()).collect();
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader_fds: Vec<RawFd> = client_ends.iter().map(|s| s.as_raw_fd()).collect();
    let handle = {
        let (received, stop) = (received.clone(), stop.clone());
        thread::spawn(move || reader(reader_fds, received, stop))
    };
    pin(0);
    let mut ring = IoUring::new(4096).unwrap();
    let mut sent = 0u64;
    let mut per_mode: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds * 2 {
        let mode = round % 2;
        let start = thread_cpu_ns();
        if mode == 0 {
            fan_out_send(&fds);
        } else {
            fan_out_uring(&mut ring, &fds);
        }
        let cpu = thread_cpu_ns() - start;
        per_mode[mode].push(cpu as f64 / clients as f64);
        sent += (clients * FRAME.len()) as u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        while received.load(Ordering::Relaxed) < sent {
            assert!(Instant::now() < deadline, "reader fell behind");
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    let (send, uring) = (median(per_mode[0].clone()), median(per_mode[1].clone()));
    println!(
        "{{\"clients\": {clients}, \"rounds\": {rounds}, \"send_ns\": {send:.0}, \"uring_ns\": {uring:.0}, \"ratio\": {:.3}}}",
        uring / send
    );
}
