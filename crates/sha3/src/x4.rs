//! Four SHA3-256 computations at once on AVX2: lane `i` of the four states sits in one 256-bit
//! register, so every step of Keccak-f[1600] is the same instruction for all four (no shuffles).
//! The slots and their refilling are [`Batch`]'s, shared with the eight-way path.

use super::batch::Batch;
use super::{RATE, RC};
use std::arch::x86_64::*;

/// SHA3-256 of each input (the concatenation of its parts). The caller has checked that the CPU
/// has AVX2.
#[target_feature(enable = "avx2")]
pub(super) fn digest_many(inputs: &[&[&[u8]]]) -> Vec<[u8; 32]> {
    let mut batch = Batch::<4>::new(inputs);
    let mut state = [_mm256_setzero_si256(); 25];
    let mut lanes = [[0u64; 4]; RATE / 8];
    while batch.busy() {
        let last = batch.next_blocks(&mut lanes);
        for (reg, lane) in state.iter_mut().zip(&lanes) {
            let l = lane.map(|w| w as i64);
            *reg = _mm256_xor_si256(*reg, _mm256_setr_epi64x(l[0], l[1], l[2], l[3]));
        }
        for rc in RC {
            round(&mut state, rc);
        }
        for s in (0..4).filter(|&s| last[s]) {
            let word = |reg: __m256i| {
                (match s {
                    0 => _mm256_extract_epi64::<0>(reg),
                    1 => _mm256_extract_epi64::<1>(reg),
                    2 => _mm256_extract_epi64::<2>(reg),
                    _ => _mm256_extract_epi64::<3>(reg),
                }) as u64
            };
            batch.finish(s, std::array::from_fn(|l| word(state[l])));
            // The slot starts over with a zero state for the next message.
            let done =
                _mm256_cmpeq_epi64(_mm256_setr_epi64x(0, 1, 2, 3), _mm256_set1_epi64x(s as i64));
            for reg in state.iter_mut() {
                *reg = _mm256_andnot_si256(done, *reg);
            }
        }
    }
    batch.digests()
}

/// Rotates each 64-bit lane left by a constant.
macro_rules! rol {
    ($v:expr, $n:literal) => {
        _mm256_or_si256(
            _mm256_slli_epi64::<$n>($v),
            _mm256_srli_epi64::<{ 64 - $n }>($v),
        )
    };
}

#[target_feature(enable = "avx2")]
#[inline]
fn round(a: &mut [__m256i; 25], rc: u64) {
    let x = _mm256_xor_si256;
    let mut c = [_mm256_setzero_si256(); 5];
    for i in 0..5 {
        c[i] = x(x(x(a[i], a[i + 5]), x(a[i + 10], a[i + 15])), a[i + 20]);
    }
    let mut d = [_mm256_setzero_si256(); 5];
    for i in 0..5 {
        d[i] = x(c[(i + 4) % 5], rol!(c[(i + 1) % 5], 1));
    }
    let mut b = [_mm256_setzero_si256(); 25];
    b[0] = x(a[0], d[0]);
    macro_rules! step {
        ($from:literal, $to:literal, $rot:literal) => {
            b[$to] = rol!(x(a[$from], d[$from % 5]), $rot);
        };
    }
    for_each_rho_pi!(step);
    // Chi: a = b ^ (!b[x+1] & b[x+2]).
    for y in 0..5 {
        for i in 0..5 {
            a[i + 5 * y] = x(
                b[i + 5 * y],
                _mm256_andnot_si256(b[(i + 1) % 5 + 5 * y], b[(i + 2) % 5 + 5 * y]),
            );
        }
    }
    a[0] = x(a[0], _mm256_set1_epi64x(rc as i64));
}
