//! SHA3-256 of sixteen records of 2,000–8,600 bytes (mean 5,300, about the bench mix's 5,321)
//! with the `sha3` crate, `medanchor-sha3`'s portable and detected permutations one record at a
//! time, and `Sha3_256::digest_many` (eight at once on AVX-512F, four on AVX2). Interleaved: 300
//! rounds, each hashing the sixteen records three times with each of the four in turn, so a host
//! that changes speed mid-run moves all alike. Prints per-record medians and medians of per-round
//! ratios.

use std::hint::black_box;
use std::time::Instant;

use medanchor_sha3::{Backend, Sha3_256};
use sha3::Digest;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const REPEAT: usize = 3;

fn main() {
    let records: Vec<Vec<u8>> = (0..16u32)
        .map(|r| {
            (0..2000 + r * 440)
                .map(|i| (i * 131 + 17 + r) as u8)
                .collect()
        })
        .collect();
    let parts: Vec<[&[u8]; 1]> = records.iter().map(|r| [&r[..]]).collect();
    let inputs: Vec<&[&[u8]]> = parts.iter().map(|p| &p[..]).collect();
    let n = (records.len() * REPEAT) as f64;
    let detected = Backend::detect();
    let names = [
        "sha3 crate",
        "medanchor portable",
        "medanchor detected",
        "medanchor digest_many",
    ];
    let mut ns: [Vec<f64>; 4] = Default::default();
    for _ in 0..300 {
        for (k, times) in ns.iter_mut().enumerate() {
            let started = Instant::now();
            for _ in 0..REPEAT {
                match k {
                    0 => records.iter().for_each(|r| {
                        black_box::<[u8; 32]>(sha3::Sha3_256::digest(black_box(r)).into());
                    }),
                    1 => records.iter().for_each(|r| {
                        let mut h = Sha3_256::with_backend(Backend::Portable);
                        h.update(black_box(r));
                        black_box(h.finalize());
                    }),
                    2 => records.iter().for_each(|r| {
                        black_box(Sha3_256::digest(black_box(r)));
                    }),
                    _ => {
                        black_box(Sha3_256::digest_many(black_box(&inputs)));
                    }
                }
            }
            times.push(started.elapsed().as_nanos() as f64 / n);
        }
    }
    for (name, times) in names.iter().zip(&ns) {
        println!("{name}: median {:.0} ns per record", median(times.clone()));
    }
    let ratio = |a: usize, b: usize| median(ns[a].iter().zip(&ns[b]).map(|(x, y)| x / y).collect());
    println!(
        "sha3 crate / medanchor {detected:?}: {:.2}x; sha3 crate / medanchor Portable: {:.2}x; \
         medanchor {detected:?} / digest_many: {:.2}x",
        ratio(0, 2),
        ratio(0, 1),
        ratio(2, 3)
    );
}
