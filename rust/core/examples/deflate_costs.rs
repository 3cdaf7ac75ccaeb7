//! What compressing one message costs, by size and zlib level, for the backend this build
//! uses (default features: zlib-rs; `--no-default-features`: miniz_oxide). The figures behind
//! the hub's defaults (benches/README.md, "permessage-deflate").
//!
//! cargo run --release -p roomcast-core --example deflate_costs [--no-default-features]

use std::hint::black_box;
use std::time::Instant;

use roomcast_core::deflate::{Deflater, Inflater};

/// A scoreboard message of about `size` bytes, varied by `seed` (as benches/loadgen.py).
fn message(size: usize, seed: usize) -> Vec<u8> {
    let mut s = String::from("{\"event\":\"bench\",\"data\":{\"t\":12345.678,\"board\":[");
    let mut i = 0;
    while s.len() < size {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{},\"name\":\"player-{}\",\"score\":{},\"online\":{}}}",
            seed * 1000 + i,
            (seed * 7 + i * 13) % 997,
            (seed * 7919 + i * 104_729) % 100_000,
            !(seed + i).is_multiple_of(3)
        ));
        i += 1;
    }
    s.push_str("]}}");
    s.into_bytes()
}

/// Base64 of pseudo-random bytes inside a JSON envelope: what a sealed message looks like.
fn sealed(size: usize) -> Vec<u8> {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out =
        b"{\"event\":\"encrypted\",\"data\":{\"iv\":\"AAAAAAAAAAAAAAAA\",\"ct\":\"".to_vec();
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(B64[(x % 64) as usize]);
    }
    out.extend_from_slice(b"\"}}");
    out
}

fn time_per_op(mut f: impl FnMut()) -> f64 {
    for _ in 0..200 {
        f();
    }
    let mut n = 0u32;
    let start = Instant::now();
    while start.elapsed().as_millis() < 300 {
        f();
        n += 1;
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let backend = if cfg!(feature = "zlib-rs") {
        "zlib-rs"
    } else {
        "miniz_oxide"
    };
    println!("backend {backend}");
    println!(
        "{:>6} {:>5} {:>10} {:>8} {:>10}",
        "bytes", "level", "ns/msg", "ratio", "inflate ns"
    );
    for size in [64, 128, 256, 512, 1500, 4000, 16000] {
        let messages: Vec<Vec<u8>> = (0..16).map(|seed| message(size, seed)).collect();
        for level in [1, 6, 9] {
            let mut deflater = Deflater::new(level);
            let mut i = 0;
            let ns = time_per_op(|| {
                black_box(deflater.compress(black_box(&messages[i % 16])));
                i += 1;
            });
            let compressed: Vec<Vec<u8>> = messages
                .iter()
                .map(|m| {
                    deflater
                        .compress(m)
                        .map_or_else(|| m.clone(), <[u8]>::to_vec)
                })
                .collect();
            let ratio = compressed.iter().map(Vec::len).sum::<usize>() as f64
                / messages.iter().map(Vec::len).sum::<usize>() as f64;
            let mut inflater = Inflater::new();
            let mut j = 0;
            let inflate_ns = time_per_op(|| {
                let _ = black_box(inflater.inflate(&[&compressed[j % 16]], 1 << 20));
                j += 1;
            });
            println!("{size:>6} {level:>5} {ns:>10.0} {ratio:>8.3} {inflate_ns:>10.0}");
        }
    }
    for size in [300, 1500, 4000] {
        let message = sealed(size);
        let mut deflater = Deflater::new(6);
        let ns = time_per_op(|| {
            black_box(deflater.compress(black_box(&message)));
        });
        let len = deflater
            .compress(&message)
            .map_or(message.len(), <[u8]>::len);
        let ratio = len as f64 / message.len() as f64;
        println!("sealed {size:>6} level 6: {ns:.0} ns/msg, ratio {ratio:.3}");
    }
}
