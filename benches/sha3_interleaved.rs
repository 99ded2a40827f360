//! SHA3-256 of one 5,321-byte record (the bench mix's mean) with `medanchor-sha3` (the detected
//! permutation and the portable one) and with the `sha3` crate, interleaved: 300 rounds of 50
//! hashes each, rotating the three, so a host that changes speed mid-run moves all three alike.
//! Prints per-implementation medians and the median of the per-round ratios.

use std::hint::black_box;
use std::time::Instant;

use medanchor_sha3::{Backend, Sha3_256};
use sha3::Digest;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let record: Vec<u8> = (0..5321u32).map(|i| (i * 131 + 17) as u8).collect();
    let detected = Backend::detect();
    let names = ["sha3 crate", "medanchor portable", "medanchor detected"];
    let mut ns: [Vec<f64>; 3] = Default::default();
    for _ in 0..300 {
        for (k, times) in ns.iter_mut().enumerate() {
            let started = Instant::now();
            for _ in 0..50 {
                let digest: [u8; 32] = match k {
                    0 => sha3::Sha3_256::digest(black_box(&record)).into(),
                    1 => {
                        let mut h = Sha3_256::with_backend(Backend::Portable);
                        h.update(black_box(&record));
                        h.finalize()
                    }
                    _ => Sha3_256::digest(black_box(&record)),
                };
                black_box(digest);
            }
            times.push(started.elapsed().as_nanos() as f64 / 50.0);
        }
    }
    for (name, times) in names.iter().zip(&ns) {
        println!("{name}: median {:.0} ns", median(times.clone()));
    }
    let ratio = |a: usize, b: usize| median(ns[a].iter().zip(&ns[b]).map(|(x, y)| x / y).collect());
    println!(
        "sha3 crate / medanchor {detected:?}: {:.2}x; sha3 crate / medanchor Portable: {:.2}x",
        ratio(0, 2),
        ratio(0, 1)
    );
}
