//! Four SHA3-256 computations at once on AVX2: lane `i` of the four states sits in one 256-bit
//! register, so every step of Keccak-f[1600] is the same instruction for all four (no shuffles).
//! A slot whose message is done takes the next message of the batch, so slots stay busy over
//! messages of different lengths until the batch's last few.

use super::{pad, RATE, RC};
use std::arch::x86_64::*;

/// Where one message of the batch is read from.
struct Slot<'a> {
    /// Its index in the batch (where its digest goes).
    index: usize,
    parts: &'a [&'a [u8]],
    part: usize,
    offset: usize,
}

impl Slot<'_> {
    /// Copies the next up-to-`RATE` bytes into `block`; returns how many.
    fn fill(&mut self, block: &mut [u8; RATE]) -> usize {
        let mut n = 0;
        while n < RATE && self.part < self.parts.len() {
            let part = self.parts[self.part];
            let take = (part.len() - self.offset).min(RATE - n);
            block[n..n + take].copy_from_slice(&part[self.offset..self.offset + take]);
            n += take;
            self.offset += take;
            if self.offset == part.len() {
                self.part += 1;
                self.offset = 0;
            }
        }
        n
    }
}

/// SHA3-256 of each input (the concatenation of its parts). The caller has checked that the CPU
/// has AVX2.
#[target_feature(enable = "avx2")]
pub(super) fn digest_many(inputs: &[&[&[u8]]]) -> Vec<[u8; 32]> {
    let mut out = vec![[0u8; 32]; inputs.len()];
    let mut state = [_mm256_setzero_si256(); 25];
    let mut queued = inputs.iter().enumerate();
    let mut slots: [Option<Slot>; 4] = std::array::from_fn(|_| {
        queued.next().map(|(index, parts)| Slot {
            index,
            parts,
            part: 0,
            offset: 0,
        })
    });
    let mut block = [0u8; RATE];
    while slots.iter().any(Option::is_some) {
        let mut lanes = [[0u64; 4]; 17];
        let mut last = [false; 4];
        for (s, slot) in slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            let n = slot.fill(&mut block);
            if n < RATE {
                pad(&mut block, n);
                last[s] = true;
            }
            for (lane, bytes) in lanes.iter_mut().zip(block.chunks_exact(8)) {
                lane[s] = u64::from_le_bytes(bytes.try_into().expect("8-byte chunk"));
            }
        }
        for (reg, lane) in state.iter_mut().zip(&lanes) {
            let l = lane.map(|w| w as i64);
            *reg = _mm256_xor_si256(*reg, _mm256_setr_epi64x(l[0], l[1], l[2], l[3]));
        }
        for rc in RC {
            round(&mut state, rc);
        }
        for (s, slot) in slots.iter_mut().enumerate() {
            if !last[s] {
                continue;
            }
            let index = slot.as_ref().expect("a slot that absorbed").index;
            for (bytes, reg) in out[index].chunks_exact_mut(8).zip(&state) {
                let word = match s {
                    0 => _mm256_extract_epi64::<0>(*reg),
                    1 => _mm256_extract_epi64::<1>(*reg),
                    2 => _mm256_extract_epi64::<2>(*reg),
                    _ => _mm256_extract_epi64::<3>(*reg),
                };
                bytes.copy_from_slice(&word.to_le_bytes());
            }
            // The slot starts over with a zero state for the next message.
            let keep =
                _mm256_cmpeq_epi64(_mm256_setr_epi64x(0, 1, 2, 3), _mm256_set1_epi64x(s as i64));
            for reg in state.iter_mut() {
                *reg = _mm256_andnot_si256(keep, *reg);
            }
            *slot = queued.next().map(|(index, parts)| Slot {
                index,
                parts,
                part: 0,
                offset: 0,
            });
        }
    }
    out
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
