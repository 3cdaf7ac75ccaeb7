//! Bounded flush passes (`Hub::flush_pass`): exact order per connection across partial
//! passes, every connection served within one whole pass, no connection always last.

use std::collections::HashMap;

use roomcast_core::frame::text_frame;
use roomcast_core::{Config, Exclude, Handle, Hub, Pass};

fn authed_hub(n: u32) -> (Hub<u32>, Vec<Handle>) {
    let mut hub = Hub::new(Config::default(), 0);
    let handles = (0..n)
        .map(|id| {
            let h = hub.add(&format!("c{id}"), id, 0).unwrap();
            hub.authenticate(h, None, 0);
            h
        })
        .collect();
    (hub, handles)
}

fn sockets(n: usize) -> Pass {
    Pass {
        sockets: n,
        bytes: usize::MAX,
    }
}

/// One bounded pass: (more left, the sinks served in order), appending each sink's bytes
/// to `got`.
fn pass(hub: &mut Hub<u32>, bound: Pass, got: &mut HashMap<u32, Vec<u8>>) -> (bool, Vec<u32>) {
    let mut served = Vec::new();
    let more = hub.flush_pass(bound, |&sink, batch| {
        served.push(sink);
        let bytes = got.entry(sink).or_default();
        for frame in batch.frames() {
            bytes.extend_from_slice(frame.as_bytes());
        }
    });
    (more, served)
}

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn order_per_connection_is_exact_across_partial_passes() {
    let none = Exclude::new(Vec::new());
    for seed in 1..=20u64 {
        let (mut hub, handles) = authed_hub(40);
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut expected: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut got: HashMap<u32, Vec<u8>> = HashMap::new();
        for step in 0..400u32 {
            match rng.below(4) {
                0 => {
                    let payload = format!("b{step}");
                    hub.broadcast(payload.as_bytes(), &none);
                    for id in 0..40 {
                        expected
                            .entry(id)
                            .or_default()
                            .extend(text_frame(payload.as_bytes()));
                    }
                }
                1 => {
                    let id = rng.below(40) as u32;
                    let payload = format!("s{step}-{id}");
                    assert!(hub.send(handles[id as usize], payload.as_bytes()));
                    expected
                        .entry(id)
                        .or_default()
                        .extend(text_frame(payload.as_bytes()));
                }
                _ => {
                    let bound = Pass {
                        sockets: 1 + rng.below(12) as usize,
                        bytes: 1 + rng.below(400) as usize,
                    };
                    pass(&mut hub, bound, &mut got);
                }
            }
        }
        while pass(&mut hub, sockets(7), &mut got).0 {}
        assert_eq!(got, expected, "seed {seed}");
        assert_eq!(hub.stats().pending_bytes, 0);
    }
}

#[test]
fn a_partial_pass_keeps_the_flush_scheduled_until_the_last_part() {
    let none = Exclude::new(Vec::new());
    let (mut hub, _) = authed_hub(10);
    let mut got = HashMap::new();
    hub.broadcast(b"m0", &none);
    assert!(hub.take_flush_request());
    let (more, served) = pass(&mut hub, sockets(4), &mut got);
    assert!(more);
    assert_eq!(served.len(), 4);
    // Still scheduled: the caller resumes it; new frames do not ask for another flush.
    hub.broadcast(b"m1", &none);
    assert!(!hub.take_flush_request());
    let (more, second) = pass(&mut hub, sockets(4), &mut got);
    assert!(more);
    // The connections left come first, before those that became dirty since.
    assert!(
        second.iter().all(|id| !served.contains(id)),
        "{served:?} {second:?}"
    );
    while pass(&mut hub, sockets(4), &mut got).0 {}
    for id in 0..10 {
        assert_eq!(got[&id], [text_frame(b"m0"), text_frame(b"m1")].concat());
    }
    hub.broadcast(b"m2", &none);
    assert!(
        hub.take_flush_request(),
        "after the last part a new flush is asked for"
    );
}

#[test]
fn every_connection_is_served_within_one_whole_pass_under_constant_load() {
    // A broadcast between every two passes: the dirty list never empties.
    let none = Exclude::new(Vec::new());
    let n = 50u32;
    let bound = 8;
    let (mut hub, _) = authed_hub(n);
    let mut got = HashMap::new();
    let mut waiting_since: HashMap<u32, usize> = HashMap::new();
    let passes_per_round = (n as usize).div_ceil(bound);
    for i in 0..500 {
        hub.broadcast(format!("m{i}").as_bytes(), &none);
        for id in 0..n {
            waiting_since.entry(id).or_insert(i);
        }
        let (more, served) = pass(&mut hub, sockets(bound), &mut got);
        assert!(more);
        for id in served {
            let since = waiting_since.remove(&id).unwrap();
            assert!(
                i - since < passes_per_round,
                "{id} waited {} passes",
                i - since
            );
        }
    }
}

#[test]
fn no_connection_is_always_in_the_last_part() {
    // Each broadcast is fully written before the next: the split starts at a moving
    // point, so every connection is sometimes in the first part.
    let none = Exclude::new(Vec::new());
    let n = 30u32;
    let (mut hub, _) = authed_hub(n);
    let mut got = HashMap::new();
    let mut first_part = vec![0u32; n as usize];
    let mut last_part = vec![0u32; n as usize];
    for i in 0..30 {
        hub.broadcast(format!("m{i}").as_bytes(), &none);
        let mut parts = Vec::new();
        loop {
            let (more, served) = pass(&mut hub, sockets(7), &mut got);
            parts.push(served);
            if !more {
                break;
            }
        }
        assert_eq!(parts.len(), 5);
        for &id in &parts[0] {
            first_part[id as usize] += 1;
        }
        for &id in parts.last().unwrap() {
            last_part[id as usize] += 1;
        }
    }
    assert!(first_part.iter().all(|&c| c > 0), "{first_part:?}");
    assert!(last_part.iter().all(|&c| c < 30), "{last_part:?}");
}

#[test]
fn the_byte_bound_stops_after_the_connection_that_reaches_it() {
    let (mut hub, handles) = authed_hub(6);
    let mut got = HashMap::new();
    let frame_len = text_frame(&[b'x'; 100]).len();
    for &h in &handles {
        assert!(hub.send(h, &[b'x'; 100]));
    }
    let bound = Pass {
        sockets: usize::MAX,
        bytes: 2 * frame_len + 1,
    };
    let (more, served) = pass(&mut hub, bound, &mut got);
    assert!(more);
    assert_eq!(
        served.len(),
        3,
        "two bring it to the bound's edge, the third passes it"
    );
    // A bound below one batch still writes one connection per pass.
    let tiny = Pass {
        sockets: 0,
        bytes: 0,
    };
    assert_eq!(pass(&mut hub, tiny, &mut got).1.len(), 1);
    let (more, served) = pass(&mut hub, Pass::WHOLE, &mut got);
    assert!(!more);
    assert_eq!(served.len(), 2);
}

#[test]
fn a_connection_removed_while_left_for_the_next_part_is_skipped() {
    let none = Exclude::new(Vec::new());
    let (mut hub, handles) = authed_hub(8);
    let mut got = HashMap::new();
    hub.broadcast(b"m0", &none);
    let (more, served) = pass(&mut hub, sockets(3), &mut got);
    assert!(more);
    let left: Vec<usize> = (0..8)
        .filter(|id| !served.contains(&(*id as u32)))
        .collect();
    assert_eq!(hub.remove(handles[left[0]]), Some(left[0] as u32));
    // Its slot goes to a new connection with a frame of its own.
    let fresh = hub.add("fresh", 100, 0).unwrap();
    hub.authenticate(fresh, None, 0);
    assert!(hub.send(fresh, b"hello"));
    while pass(&mut hub, sockets(3), &mut got).0 {}
    assert!(!got.contains_key(&(left[0] as u32)));
    assert_eq!(got[&100], text_frame(b"hello"));
    for &id in &left[1..] {
        assert_eq!(got[&(id as u32)], text_frame(b"m0"));
    }
    assert_eq!(hub.stats().pending_bytes, 0);
}
