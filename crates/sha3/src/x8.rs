//! Eight SHA3-256 computations at once on AVX-512F: lane `i` of the eight states sits in one
//! 512-bit register, so every step of Keccak-f[1600] is one instruction for all eight, with the
//! same three-input logic (`vpternlogq`) and rotate (`vprolq`) as the one-message permutation in
//! 128-bit registers. The slots and their refilling are [`Batch`]'s, shared with the four-way
//! path.
//!
//! Batches only: a single message stays on the 128-bit permutation, which some Intel CPUs run
//! without lowering their clock for wide AVX-512 work; a batch does eight times the work per
//! instruction, which outweighs that.

use super::batch::Batch;
use super::{RATE, RC};
use std::arch::x86_64::*;

/// SHA3-256 of each input (the concatenation of its parts). The caller has checked that the CPU
/// has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) fn digest_many(inputs: &[&[&[u8]]]) -> Vec<[u8; 32]> {
    let mut batch = Batch::<8>::new(inputs);
    let mut state = [_mm512_setzero_si512(); 25];
    let mut lanes = [[0u64; 8]; RATE / 8];
    while batch.busy() {
        let last = batch.next_blocks(&mut lanes);
        for (reg, lane) in state.iter_mut().zip(&lanes) {
            let l = lane.map(|w| w as i64);
            let block = _mm512_setr_epi64(l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]);
            *reg = _mm512_xor_si512(*reg, block);
        }
        for rc in RC {
            round(&mut state, rc);
        }
        for s in (0..8).filter(|&s| last[s]) {
            let only = 1u8 << s;
            // No instruction reads an element chosen at run time: compress moves slot `s`'s
            // element to element 0, which is read.
            let word = |reg: __m512i| {
                _mm_cvtsi128_si64(_mm512_castsi512_si128(_mm512_maskz_compress_epi64(
                    only, reg,
                ))) as u64
            };
            batch.finish(s, std::array::from_fn(|l| word(state[l])));
            // The slot starts over with a zero state for the next message.
            for reg in state.iter_mut() {
                *reg = _mm512_maskz_mov_epi64(!only, *reg);
            }
        }
    }
    batch.digests()
}

#[target_feature(enable = "avx512f")]
#[inline]
fn round(a: &mut [__m512i; 25], rc: u64) {
    // Theta: column parities (0x96: three-way XOR), then each column's correction.
    let mut c = [_mm512_setzero_si512(); 5];
    for x in 0..5 {
        c[x] = _mm512_ternarylogic_epi64::<0x96>(
            _mm512_ternarylogic_epi64::<0x96>(a[x], a[x + 5], a[x + 10]),
            a[x + 15],
            a[x + 20],
        );
    }
    let mut d = [_mm512_setzero_si512(); 5];
    for x in 0..5 {
        d[x] = _mm512_xor_si512(c[(x + 4) % 5], _mm512_rol_epi64::<1>(c[(x + 1) % 5]));
    }
    let mut b = [_mm512_setzero_si512(); 25];
    b[0] = _mm512_xor_si512(a[0], d[0]);
    macro_rules! step {
        ($from:literal, $to:literal, $rot:literal) => {
            b[$to] = _mm512_rol_epi64::<$rot>(_mm512_xor_si512(a[$from], d[$from % 5]));
        };
    }
    for_each_rho_pi!(step);
    // Chi: a ^ (!b & c) is truth table 0xd2.
    for y in 0..5 {
        for x in 0..5 {
            a[x + 5 * y] = _mm512_ternarylogic_epi64::<0xd2>(
                b[x + 5 * y],
                b[(x + 1) % 5 + 5 * y],
                b[(x + 2) % 5 + 5 * y],
            );
        }
    }
    // Iota.
    a[0] = _mm512_xor_si512(a[0], _mm512_set1_epi64(rc as i64));
}
