//! SHA3-256 (FIPS 202) for medanchor's record commitments and Merkle log, with Keccak-f[1600] on
//! AVX-512 where the CPU has it.
//!
//! ```
//! let digest = medanchor_sha3::Sha3_256::digest(b"abc");
//! assert_eq!(digest[..4], [0x3a, 0x98, 0x5d, 0xa7]);
//! ```
//!
//! The commitment hashes every byte of every record, and with the portable permutation
//! (RustCrypto's `keccak`, which the `sha3` crate uses) that was about a quarter of the gateway's
//! core at full load. AVX-512 has a three-input logic instruction (`vpternlogq`) and a 64-bit
//! rotate (`vprolq`): with one lane per 128-bit register, theta's column parities take two
//! instructions per column instead of four, chi one per lane instead of three, and the 25 lanes
//! stay in registers (there are 32). A single message uses only 128-bit registers, which do not
//! lower the clock of the CPUs that throttle on wide AVX-512 work (batches use 512-bit ones, see
//! below). Other CPUs get the portable permutation.
//! The sponge (absorb, pad, squeeze) is shared; tests check both permutations against the
//! `sha3` crate and FIPS 202 vectors.
//!
//! Callers with many inputs at once (a batch of records to commit to) use
//! [`Sha3_256::digest_many`]: it runs eight permutations in one set of 512-bit registers on CPUs
//! with AVX-512F (4.45× the throughput of one at a time on the 128-bit permutation for 16 records
//! of 2–8.6 KB, on an AMD EPYC with AVX-512), and four in 256-bit registers on CPUs with AVX2 only
//! (2.7× one at a time on an AMD EPYC without AVX-512). Both share one batch sponge (`batch`).
//! Whether the eight-way path's 512-bit work lowers the clock of Intel CPUs that throttle on it,
//! and by how much that offsets its gain, is not measured.
//!
//! # Which tests cover which path
//!
//! The crate has four code paths: the portable permutation (RustCrypto's `keccak`, the one the
//! `sha3` crate uses too, under this crate's own sponge), the AVX-512 permutation (`avx512`), and
//! the four-way AVX2 (`x4`) and eight-way AVX-512 (`x8`) permutations with their batch sponge.
//! Tests force each one with [`Sha3_256::with_backend`] and the test-only
//! `Sha3_256::digest_many_on`, and skip (saying so on stderr) the ones the CPU cannot run:
//!
//! - `tests/cavp.rs`: the NIST CAVP SHA3-256 vectors (`testdata/`: 137 ShortMsg, 100 LongMsg,
//!   the 100 Monte Carlo checkpoints of 1,000 chained hashes) on every path, whole, split into
//!   parts and in batches of 1 to 17 messages of mixed lengths; and through the dispatching API
//!   (`digest`, `digest_parts`, `new`/`update`, `digest_many`) on whatever path this CPU picks.
//! - the unit tests here: FIPS 202 examples and every length up to three blocks against the `sha3`
//!   crate on both one-message permutations; `digest_many` on batches of 1 to 17 against it.
//! - `fuzz/fuzz_targets/sha3_differential.rs` (cargo-fuzz, in the repository's `fuzz/`):
//!   arbitrary input through `digest`, `digest_parts`, incremental updates, `digest_many` and
//!   every forced path, compared with the `sha3` crate.
//!
//! The gateway's log hash is checked against the reference one in the gateway's
//! `tests/hash_agreement.rs`.

/// SHA3-256's rate: 1600 - 2 × 256 bits.
const RATE: usize = 136;

/// Round constants of Keccak-f[1600] (FIPS 202, 3.2.5).
const RC: [u64; 24] = [
    0x0000000000000001,
    0x0000000000008082,
    0x800000000000808a,
    0x8000000080008000,
    0x000000000000808b,
    0x0000000080000001,
    0x8000000080008081,
    0x8000000000008009,
    0x000000000000008a,
    0x0000000000000088,
    0x0000000080008009,
    0x000000008000000a,
    0x000000008000808b,
    0x800000000000008b,
    0x8000000000008089,
    0x8000000000008003,
    0x8000000000008002,
    0x8000000000000080,
    0x000000000000800a,
    0x800000008000000a,
    0x8000000080008081,
    0x8000000000008080,
    0x0000000080000001,
    0x8000000080008008,
];

/// Which permutation absorbs blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// RustCrypto's portable Keccak-f[1600].
    Portable,
    /// One lane per 128-bit register with AVX-512F/VL instructions.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Backend {
    /// The fastest permutation this CPU runs.
    pub fn detect() -> Backend {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return Backend::Avx512;
        }
        Backend::Portable
    }

    /// XORs each whole block of `blocks` into the state and permutes.
    fn absorb(self, state: &mut [u64; 25], blocks: &[u8]) {
        debug_assert_eq!(blocks.len() % RATE, 0);
        match self {
            Backend::Portable => {
                let keccak = keccak::Keccak::new();
                for block in blocks.chunks_exact(RATE) {
                    xor_block(state, block);
                    keccak.with_f1600(|f1600| f1600(state));
                }
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `avx512::absorb` is safe code whose only requirement is that the CPU
            // executes AVX-512F and AVX-512VL instructions. A hasher holds this variant only from
            // `new`, which takes it from `detect` after `is_x86_feature_detected!` found both
            // (which also checks that the operating system saves the AVX-512 registers), or from
            // `with_backend`, which asserts the same.
            Backend::Avx512 => unsafe { avx512::absorb(state, blocks) },
        }
    }
}

fn xor_block(state: &mut [u64; 25], block: &[u8]) {
    for (lane, bytes) in state.iter_mut().zip(block.chunks_exact(8)) {
        *lane ^= u64::from_le_bytes(bytes.try_into().expect("8-byte chunk"));
    }
}

/// A SHA3-256 computation.
#[derive(Clone)]
pub struct Sha3_256 {
    backend: Backend,
    state: [u64; 25],
    /// The part of a block not yet absorbed.
    pending: [u8; RATE],
    pending_len: usize,
}

impl Default for Sha3_256 {
    fn default() -> Self {
        Sha3_256::new()
    }
}

impl Sha3_256 {
    pub fn new() -> Sha3_256 {
        static BACKEND: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
        Sha3_256::unchecked(*BACKEND.get_or_init(Backend::detect))
    }

    /// With a given permutation (tests compare them). Panics if this CPU cannot run it.
    pub fn with_backend(backend: Backend) -> Sha3_256 {
        #[cfg(target_arch = "x86_64")]
        if backend == Backend::Avx512 {
            assert_eq!(
                Backend::detect(),
                Backend::Avx512,
                "this CPU has no AVX-512F/VL"
            );
        }
        Sha3_256::unchecked(backend)
    }

    /// `backend` must be one `detect` returned: `new` checks once per process, not per hash.
    fn unchecked(backend: Backend) -> Sha3_256 {
        Sha3_256 {
            backend,
            state: [0; 25],
            pending: [0; RATE],
            pending_len: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        if self.pending_len > 0 {
            let take = data.len().min(RATE - self.pending_len);
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < RATE {
                return;
            }
            self.backend.absorb(&mut self.state, &self.pending);
            self.pending_len = 0;
        }
        let whole = data.len() - data.len() % RATE;
        if whole > 0 {
            self.backend.absorb(&mut self.state, &data[..whole]);
        }
        let rest = &data[whole..];
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    pub fn finalize(mut self) -> [u8; 32] {
        pad(&mut self.pending, self.pending_len);
        self.backend.absorb(&mut self.state, &self.pending);
        let mut out = [0u8; 32];
        for (bytes, lane) in out.chunks_exact_mut(8).zip(self.state) {
            bytes.copy_from_slice(&lane.to_le_bytes());
        }
        out
    }

    pub fn digest(data: &[u8]) -> [u8; 32] {
        Self::digest_parts(&[data])
    }

    /// The digest of the concatenation of `parts`.
    pub fn digest_parts(parts: &[&[u8]]) -> [u8; 32] {
        let mut h = Sha3_256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize()
    }

    /// The digest of each input, an input being the concatenation of its parts. A batch is hashed
    /// eight at a time on CPUs with AVX-512F ([`x8`](crate::x8)), four at a time on CPUs with AVX2
    /// only ([`x4`](crate::x4)), and one after another elsewhere, or where one input is most of
    /// the batch's bytes ([`worth_batching`]).
    ///
    /// ```
    /// use medanchor_sha3::Sha3_256;
    /// let d = Sha3_256::digest_many(&[&[b"a", b"bc"], &[b"abc"], &[]]);
    /// assert_eq!(d[0], Sha3_256::digest(b"abc"));
    /// assert_eq!(d[1], d[0]);
    /// assert_eq!(d[2], Sha3_256::digest(b""));
    /// ```
    pub fn digest_many(inputs: &[&[&[u8]]]) -> Vec<[u8; 32]> {
        #[cfg(target_arch = "x86_64")]
        {
            static MANY: std::sync::OnceLock<Option<Path>> = std::sync::OnceLock::new();
            let many = *MANY.get_or_init(|| {
                [Path::Avx512x8, Path::Avx2x4]
                    .into_iter()
                    .find(|p| p.is_available())
            });
            if let (Some(path), true) = (many, worth_batching(inputs)) {
                return Self::digest_many_on(path, inputs).expect("an available path");
            }
        }
        Self::digest_each(inputs)
    }

    /// `digest_many` one input at a time.
    fn digest_each(inputs: &[&[&[u8]]]) -> Vec<[u8; 32]> {
        inputs
            .iter()
            .map(|parts| Self::digest_parts(parts))
            .collect()
    }

    /// [`Self::digest_many`] on one given code path rather than the one the CPU
    /// detection picks, for tests that check every path (`tests/cavp.rs`). `None` if this CPU
    /// cannot run `path`. The four- and eight-way paths are used for every batch, also of one
    /// input, where `digest_many` would hash inputs one at a time.
    #[doc(hidden)]
    pub fn digest_many_on(path: Path, inputs: &[&[&[u8]]]) -> Option<Vec<[u8; 32]>> {
        if !path.is_available() {
            return None;
        }
        Some(match path {
            Path::Portable => Self::digest_each_with(Backend::Portable, inputs),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => Self::digest_each_with(Backend::Avx512, inputs),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `x4::digest_many` is safe code whose only requirement is that the CPU
            // executes AVX2 instructions; `is_available` above found them with
            // `is_x86_feature_detected!`.
            Path::Avx2x4 => unsafe { x4::digest_many(inputs) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, with AVX-512F, which `is_available` found.
            Path::Avx512x8 => unsafe { x8::digest_many(inputs) },
        })
    }

    fn digest_each_with(backend: Backend, inputs: &[&[&[u8]]]) -> Vec<[u8; 32]> {
        inputs
            .iter()
            .map(|parts| {
                let mut h = Sha3_256::with_backend(backend);
                for p in *parts {
                    h.update(p);
                }
                h.finalize()
            })
            .collect()
    }
}

/// Whether hashing `inputs` together beats hashing them one at a time. A batch runs as many
/// blocks as its longest input, and on an AMD EPYC one eight-way block costs about 1.25 blocks of
/// the 128-bit permutation: so a batch pays once the other inputs add at least half of the
/// longest one's length (two inputs of 1.3 and 15 KB: 0.89× one at a time; 1.3 and 1.3 KB: 1.6×;
/// 15 and 17 KB: 1.5×; four of 13–17 KB: 2.7×).
#[cfg(target_arch = "x86_64")]
fn worth_batching(inputs: &[&[&[u8]]]) -> bool {
    let (sum, longest) = inputs
        .iter()
        .map(|parts| parts.iter().map(|p| p.len()).sum::<usize>())
        .fold((0usize, 0usize), |(sum, longest), len| {
            (sum.saturating_add(len), longest.max(len))
        });
    inputs.len() > 1 && sum.saturating_mul(2) >= longest.saturating_mul(3)
}

/// A code path of this crate, for tests that force each one:
/// [`Sha3_256::digest_many_on`] runs a batch on it, and [`Sha3_256::with_backend`] the two
/// one-message permutations with the incremental API.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// One message at a time with the portable permutation ([`Backend::Portable`]).
    Portable,
    /// One message at a time with the AVX-512F/VL permutation ([`Backend::Avx512`]).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// Four messages at once in 256-bit AVX2 registers (`digest_many`'s batches on CPUs with AVX2
    /// but not AVX-512F).
    #[cfg(target_arch = "x86_64")]
    Avx2x4,
    /// Eight messages at once in 512-bit AVX-512F registers (`digest_many`'s batches on CPUs with
    /// AVX-512F).
    #[cfg(target_arch = "x86_64")]
    Avx512x8,
}

impl Path {
    /// Every path this crate has on this architecture, whether or not this CPU runs it.
    pub const ALL: &'static [Path] = &[
        Path::Portable,
        #[cfg(target_arch = "x86_64")]
        Path::Avx512,
        #[cfg(target_arch = "x86_64")]
        Path::Avx2x4,
        #[cfg(target_arch = "x86_64")]
        Path::Avx512x8,
    ];

    /// Whether this CPU runs the path (the checks the dispatch makes).
    pub fn is_available(self) -> bool {
        match self {
            Path::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => Backend::detect() == Backend::Avx512,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x4 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512x8 => std::arch::is_x86_feature_detected!("avx512f"),
        }
    }

    /// The one-message permutation of the path, or `None` for the four- and eight-way ones.
    pub fn backend(self) -> Option<Backend> {
        match self {
            Path::Portable => Some(Backend::Portable),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => Some(Backend::Avx512),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x4 | Path::Avx512x8 => None,
        }
    }
}

/// Pads the last block, whose first `len` bytes are message: SHA-3's domain bits 01, then
/// pad10*1 (FIPS 202, B.2).
fn pad(block: &mut [u8; RATE], len: usize) {
    block[len..].fill(0);
    block[len] ^= 0x06;
    block[RATE - 1] ^= 0x80;
}

/// Rho and pi of FIPS 202 3.2.2–3.2.3 in one table: lane `x + 5y` goes to lane
/// `y + 5((2x + 3y) mod 5)` rotated left by its rho offset. Calls `$step!(from, to, rotation)`
/// for every lane but lane 0, which stays in place unrotated. One table for both vector
/// permutations.
#[cfg(target_arch = "x86_64")]
macro_rules! for_each_rho_pi {
    ($step:ident) => {
        $step!(1, 10, 1);
        $step!(2, 20, 62);
        $step!(3, 5, 28);
        $step!(4, 15, 27);
        $step!(5, 16, 36);
        $step!(6, 1, 44);
        $step!(7, 11, 6);
        $step!(8, 21, 55);
        $step!(9, 6, 20);
        $step!(10, 7, 3);
        $step!(11, 17, 10);
        $step!(12, 2, 43);
        $step!(13, 12, 25);
        $step!(14, 22, 39);
        $step!(15, 23, 41);
        $step!(16, 8, 45);
        $step!(17, 18, 15);
        $step!(18, 3, 21);
        $step!(19, 13, 8);
        $step!(20, 14, 18);
        $step!(21, 24, 2);
        $step!(22, 9, 61);
        $step!(23, 19, 56);
        $step!(24, 4, 14);
    };
}

#[cfg(target_arch = "x86_64")]
mod batch;
#[cfg(target_arch = "x86_64")]
mod x4;
#[cfg(target_arch = "x86_64")]
mod x8;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{RATE, RC};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512vl")]
    pub(super) fn absorb(state: &mut [u64; 25], blocks: &[u8]) {
        let mut a = [_mm_setzero_si128(); 25];
        for (reg, lane) in a.iter_mut().zip(state.iter()) {
            *reg = _mm_cvtsi64_si128(*lane as i64);
        }
        for block in blocks.chunks_exact(RATE) {
            for (reg, bytes) in a.iter_mut().zip(block.chunks_exact(8)) {
                let lane = i64::from_le_bytes(bytes.try_into().expect("8-byte chunk"));
                *reg = _mm_xor_si128(*reg, _mm_cvtsi64_si128(lane));
            }
            for rc in RC {
                round(&mut a, rc);
            }
        }
        for (lane, reg) in state.iter_mut().zip(a) {
            *lane = _mm_cvtsi128_si64(reg) as u64;
        }
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    fn round(a: &mut [__m128i; 25], rc: u64) {
        // Theta: column parities (0x96: three-way XOR), then each column's correction.
        let mut c = [_mm_setzero_si128(); 5];
        for x in 0..5 {
            c[x] = _mm_ternarylogic_epi64::<0x96>(
                _mm_ternarylogic_epi64::<0x96>(a[x], a[x + 5], a[x + 10]),
                a[x + 15],
                a[x + 20],
            );
        }
        let mut d = [_mm_setzero_si128(); 5];
        for x in 0..5 {
            d[x] = _mm_xor_si128(c[(x + 4) % 5], _mm_rol_epi64::<1>(c[(x + 1) % 5]));
        }
        let mut b = [_mm_setzero_si128(); 25];
        b[0] = _mm_xor_si128(a[0], d[0]);
        macro_rules! step {
            ($from:literal, $to:literal, $rot:literal) => {
                b[$to] = _mm_rol_epi64::<$rot>(_mm_xor_si128(a[$from], d[$from % 5]));
            };
        }
        for_each_rho_pi!(step);
        // Chi: a ^ (!b & c) is truth table 0xd2.
        for y in 0..5 {
            for x in 0..5 {
                a[x + 5 * y] = _mm_ternarylogic_epi64::<0xd2>(
                    b[x + 5 * y],
                    b[(x + 1) % 5 + 5 * y],
                    b[(x + 2) % 5 + 5 * y],
                );
            }
        }
        // Iota.
        a[0] = _mm_xor_si128(a[0], _mm_cvtsi64_si128(rc as i64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::sha3::Digest;

    fn backends() -> Vec<Backend> {
        let mut all = vec![Backend::Portable];
        if Backend::detect() != Backend::Portable {
            all.push(Backend::detect());
        } else {
            eprintln!("this CPU has only the portable permutation; AVX-512 not tested here");
        }
        all
    }

    fn hash(backend: Backend, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = Sha3_256::with_backend(backend);
        for p in parts {
            h.update(p);
        }
        h.finalize()
    }

    #[test]
    fn fips_202_vectors() {
        let million_a = vec![b'a'; 1_000_000];
        let vectors: [(&[u8], &str); 4] = [
            (
                b"",
                "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a",
            ),
            (
                b"abc",
                "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532",
            ),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "41c0dba2a9d6240849100376a8235e2c82e1b9998a999e21db32dd97496d3376",
            ),
            (
                &million_a,
                "5c8875ae474a3634ba4fd55ec85bffd661f32aca75c6d699d0cdcb6c115891c1",
            ),
        ];
        for backend in backends() {
            for (input, expected) in vectors {
                assert_eq!(
                    hex::encode(hash(backend, &[input])),
                    expected,
                    "{backend:?}, {} bytes",
                    input.len()
                );
            }
        }
    }

    #[test]
    fn every_length_and_split_matches_the_sha3_crate() {
        let data: Vec<u8> = (0..3 * RATE as u32 + 7)
            .map(|i| (i.wrapping_mul(131) + 17) as u8)
            .collect();
        for backend in backends() {
            for len in 0..data.len() {
                let input = &data[..len];
                let expected: [u8; 32] = ::sha3::Sha3_256::digest(input).into();
                assert_eq!(
                    hash(backend, &[input]),
                    expected,
                    "{backend:?}, {len} bytes"
                );
                // Splits around the block boundaries exercise the pending buffer.
                for split in [1, RATE - 1, RATE, RATE + 1, len / 2] {
                    let split = split.min(len);
                    let (head, tail) = input.split_at(split);
                    assert_eq!(
                        hash(backend, &[head, tail]),
                        expected,
                        "{backend:?}, {len} bytes split at {split}"
                    );
                }
            }
        }
    }

    /// Batches of every size up to 17 with lengths around the block boundaries, split into parts
    /// at odd places: each digest equals the `sha3` crate's.
    #[test]
    fn digest_many_matches_one_at_a_time() {
        let data: Vec<u8> = (0..2100u32).map(|i| (i * 31 % 251) as u8).collect();
        let lengths = [0, 1, 135, 136, 137, 271, 272, 273, 1000, 1999, 5, 408];
        for batch in 1..=17 {
            for shift in 0..lengths.len() {
                let inputs: Vec<Vec<&[u8]>> = (0..batch)
                    .map(|i| {
                        let len = lengths[(i + shift) % lengths.len()];
                        let msg = &data[i..i + len];
                        let cut = (len * (i + 1) / 7).min(len);
                        vec![&msg[..cut], &[][..], &msg[cut..]]
                    })
                    .collect();
                let refs: Vec<&[&[u8]]> = inputs.iter().map(Vec::as_slice).collect();
                let got = Sha3_256::digest_many(&refs);
                assert_eq!(got, Sha3_256::digest_each(&refs));
                for (parts, d) in inputs.iter().zip(&got) {
                    let want: [u8; 32] = ::sha3::Sha3_256::digest(parts.concat()).into();
                    assert_eq!(*d, want, "batch {batch}, shift {shift}");
                }
            }
        }
    }

    #[test]
    fn byte_at_a_time_matches_one_call() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for backend in backends() {
            let mut h = Sha3_256::with_backend(backend);
            for b in &data {
                h.update(std::slice::from_ref(b));
            }
            assert_eq!(h.finalize(), hash(backend, &[&data]), "{backend:?}");
        }
    }

    /// One input that is most of the batch's bytes is hashed alone; inputs of like length
    /// together (the measured cases in `worth_batching`'s comment).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn batches_only_where_they_pay() {
        let (short, long) = (vec![1u8; 1300], vec![2u8; 15000]);
        let batch = |lens: &[&Vec<u8>]| -> bool {
            let parts: Vec<[&[u8]; 1]> = lens.iter().map(|v| [v.as_slice()]).collect();
            let inputs: Vec<&[&[u8]]> = parts.iter().map(|p| &p[..]).collect();
            worth_batching(&inputs)
        };
        assert!(!batch(&[&short]));
        assert!(!batch(&[&short, &long]));
        assert!(batch(&[&short, &short]));
        assert!(batch(&[&long, &long, &short]));
        assert!(batch(
            &[&short; 15]
                .iter()
                .copied()
                .chain([&long])
                .collect::<Vec<_>>()
        ));
    }
}
