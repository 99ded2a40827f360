//! The NIST CAVP SHA3-256 vectors (byte-oriented ShortMsg, LongMsg and Monte Carlo;
//! `testdata/SOURCES.md`) through every code path of the crate, each forced:
//!
//! - the portable permutation and the AVX-512 one, one message at a time through the incremental
//!   API, whole and split into parts ([`Sha3_256::with_backend`]), and as batches
//!   ([`Sha3_256::digest_many_on`]);
//! - the four-way AVX2 and eight-way AVX-512 permutations, the vectors batched in groups of 1 to
//!   17 of mixed lengths, each message split into parts ([`Sha3_256::digest_many_on`] with
//!   [`Path::Avx2x4`] and [`Path::Avx512x8`]);
//! - the dispatching API the gateway calls (`digest`, `digest_parts`, `new`/`update`,
//!   `digest_many`), whichever path it picks on this CPU.
//!
//! A path this CPU cannot run is skipped with a line on stderr saying so (`--nocapture` shows it).

use medanchor_sha3::{Backend, Path, Sha3_256};

/// SHA3-256's rate in bytes.
const RATE: usize = 136;

fn testdata(name: &str) -> String {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn unhex32(s: &str) -> [u8; 32] {
    let v = hex::decode(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
    v.try_into().expect("a 32-byte digest")
}

/// One known answer: SHA3-256 of `msg` is `md`.
#[derive(Clone)]
struct Kat {
    msg: Vec<u8>,
    md: [u8; 32],
}

/// The `key = value` lines of an .rsp file, comments and blank lines dropped; checks the file is
/// for SHA3-256 (`[L = 256]`).
fn fields(text: &str) -> Vec<(&str, &str)> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    assert_eq!(lines.next(), Some("[L = 256]"), "a SHA3-256 file");
    lines
        .map(|l| {
            l.split_once(" = ")
                .unwrap_or_else(|| panic!("not `key = value`: {l:?}"))
        })
        .collect()
}

/// A ShortMsg or LongMsg file: `Len` (bits), `Msg` (hex; `00` for the empty message), `MD`.
fn parse_kats(text: &str) -> Vec<Kat> {
    let f = fields(text);
    assert_eq!(f.len() % 3, 0, "Len, Msg, MD triples");
    f.chunks_exact(3)
        .map(|c| {
            let [("Len", len), ("Msg", msg), ("MD", md)] = c else {
                panic!("expected Len, Msg, MD: {c:?}");
            };
            let bits: usize = len.parse().expect("Len");
            assert_eq!(bits % 8, 0, "byte-oriented vectors");
            let mut msg = hex::decode(msg).expect("Msg");
            if bits == 0 {
                assert_eq!(msg, [0], "the empty message is written 00");
                msg.clear();
            }
            assert_eq!(msg.len() * 8, bits, "Msg is Len bits");
            Kat {
                msg,
                md: unhex32(md),
            }
        })
        .collect()
}

/// The Monte Carlo file: the seed and the digest after each `COUNT`'s 1,000 chained hashes.
fn parse_monte(text: &str) -> ([u8; 32], Vec<[u8; 32]>) {
    let f = fields(text);
    let [("Seed", seed), rest @ ..] = f.as_slice() else {
        panic!("the Monte Carlo file starts with its seed");
    };
    assert_eq!(rest.len() % 2, 0, "COUNT, MD pairs");
    let checkpoints = rest
        .chunks_exact(2)
        .enumerate()
        .map(|(j, c)| {
            let [("COUNT", count), ("MD", md)] = c else {
                panic!("expected COUNT, MD: {c:?}");
            };
            assert_eq!(count.parse::<usize>().expect("COUNT"), j, "COUNTs in order");
            unhex32(md)
        })
        .collect();
    (unhex32(seed), checkpoints)
}

fn short_msg() -> Vec<Kat> {
    parse_kats(&testdata("SHA3_256ShortMsg.rsp"))
}

fn long_msg() -> Vec<Kat> {
    parse_kats(&testdata("SHA3_256LongMsg.rsp"))
}

fn monte() -> ([u8; 32], Vec<[u8; 32]>) {
    parse_monte(&testdata("SHA3_256Monte.rsp"))
}

/// Ways of cutting a message into parts: whole, in two at odd places, around block boundaries
/// (with empty parts), and in runs of 7 bytes.
fn splits(msg: &[u8]) -> Vec<Vec<&[u8]>> {
    let len = msg.len();
    let cut = |points: &[usize]| {
        let mut points: Vec<usize> = points.iter().map(|&p| p.min(len)).collect();
        points.sort_unstable();
        let mut parts = Vec::new();
        let mut start = 0;
        for p in points {
            parts.push(&msg[start..p]);
            start = p;
        }
        parts.push(&msg[start..]);
        parts
    };
    vec![
        vec![msg],
        cut(&[len / 3]),
        cut(&[len / 3, 2 * len / 3]),
        cut(&[0, 1, RATE - 1, RATE, RATE, RATE + 1, 2 * RATE + 3]),
        msg.chunks(7).collect(),
    ]
}

fn hash_incremental(backend: Backend, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha3_256::with_backend(backend);
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Messages hashed together: each one's index in the vectors and its parts.
type Batch<'a> = Vec<(usize, Vec<&'a [u8]>)>;

/// Batches of 1, 2, ..., 17, 1, 2, ... messages taken from `kats` in a scrambled order (so each
/// batch mixes lengths), each message cut into parts in one of the ways of [`splits`].
fn batches(kats: &[Kat]) -> Vec<Batch<'_>> {
    let n = kats.len();
    // A stride coprime with n visits every vector once, far apart in length.
    let stride = (37..).find(|s| gcd(*s, n) == 1).expect("a coprime stride");
    let order: Vec<usize> = (0..n).map(|i| i * stride % n).collect();
    let mut out = Vec::new();
    let mut at = 0;
    let mut size = 1;
    while at < n {
        let batch = order[at..(at + size).min(n)]
            .iter()
            .map(|&k| {
                let mut ways = splits(&kats[k].msg);
                let way = (k + size) % ways.len();
                (k, ways.swap_remove(way))
            })
            .collect();
        out.push(batch);
        at += size;
        // Up to 17: batches larger than the eight-way path's slots, so slots are refilled.
        size = size % 17 + 1;
    }
    out
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Every way `path` is checked against `kats`; returns one line per wrong digest.
fn kat_failures(path: Path, kats: &[Kat]) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(backend) = path.backend() {
        for (k, kat) in kats.iter().enumerate() {
            for parts in splits(&kat.msg) {
                let got = hash_incremental(backend, &parts);
                if got != kat.md {
                    failures.push(format!(
                        "{path:?}: vector {k} ({} bytes) in {} parts: {} != {}",
                        kat.msg.len(),
                        parts.len(),
                        hex::encode(got),
                        hex::encode(kat.md)
                    ));
                }
            }
        }
    }
    for batch in batches(kats) {
        let inputs: Vec<&[&[u8]]> = batch.iter().map(|(_, parts)| parts.as_slice()).collect();
        let got = Sha3_256::digest_many_on(path, &inputs).expect("an available path");
        assert_eq!(got.len(), batch.len());
        for ((k, parts), got) in batch.iter().zip(got) {
            if got != kats[*k].md {
                failures.push(format!(
                    "{path:?}: vector {k} ({} bytes, {} parts) in a batch of {}: {} != {}",
                    kats[*k].msg.len(),
                    parts.len(),
                    batch.len(),
                    hex::encode(got),
                    hex::encode(kats[*k].md)
                ));
            }
        }
    }
    failures
}

/// The same through the API the gateway calls, on whatever path this CPU dispatches to.
fn dispatch_failures(kats: &[Kat]) -> Vec<String> {
    let mut failures = Vec::new();
    let mut check = |what: String, got: [u8; 32], want: [u8; 32]| {
        if got != want {
            failures.push(format!(
                "{what}: {} != {}",
                hex::encode(got),
                hex::encode(want)
            ));
        }
    };
    for (k, kat) in kats.iter().enumerate() {
        check(
            format!("digest of vector {k}"),
            Sha3_256::digest(&kat.msg),
            kat.md,
        );
        for parts in splits(&kat.msg) {
            let n = parts.len();
            check(
                format!("digest_parts of vector {k} in {n} parts"),
                Sha3_256::digest_parts(&parts),
                kat.md,
            );
            let mut h = Sha3_256::new();
            for p in &parts {
                h.update(p);
            }
            check(
                format!("new/update of vector {k} in {n} parts"),
                h.finalize(),
                kat.md,
            );
        }
    }
    for batch in batches(kats) {
        let inputs: Vec<&[&[u8]]> = batch.iter().map(|(_, parts)| parts.as_slice()).collect();
        for ((k, _), got) in batch.iter().zip(Sha3_256::digest_many(&inputs)) {
            check(
                format!("digest_many of vector {k} in a batch of {}", batch.len()),
                got,
                kats[*k].md,
            );
        }
    }
    failures
}

/// The SHA3VS Monte Carlo test on `path`: MD_0 = seed; for each checkpoint j, 1,000 times
/// MD_i = SHA3-256(MD_{i-1}), output MD_1000 and start the next checkpoint from it. Each hash goes
/// through the path in a varying way (the single-message paths alternate whole and split
/// messages; the four- and eight-way paths put the chain in a varying slot of batches of 1 to 8,
/// the other slots holding earlier digests). Returns one line per wrong checkpoint.
fn monte_failures(path: Path, seed: [u8; 32], checkpoints: &[[u8; 32]]) -> Vec<String> {
    let mut failures = Vec::new();
    let mut md = seed;
    let mut earlier = [seed; 7];
    let mut i = 0usize;
    for (j, want) in checkpoints.iter().enumerate() {
        for _ in 0..1000 {
            let next = match path.backend() {
                Some(backend) if i.is_multiple_of(2) => hash_incremental(backend, &[&md]),
                Some(backend) => {
                    let (a, b) = md.split_at(i % 33);
                    hash_incremental(backend, &[a, b])
                }
                None => {
                    let size = 1 + i % 8;
                    let slot = (i / 8) % size;
                    let mut inputs: Vec<[&[u8]; 1]> =
                        earlier[..size - 1].iter().map(|e| [e.as_slice()]).collect();
                    inputs.insert(slot, [md.as_slice()]);
                    let refs: Vec<&[&[u8]]> = inputs.iter().map(|p| p.as_slice()).collect();
                    Sha3_256::digest_many_on(path, &refs).expect("an available path")[slot]
                }
            };
            earlier.rotate_right(1);
            earlier[0] = md;
            md = next;
            i += 1;
        }
        if md != *want {
            failures.push(format!(
                "{path:?}: Monte Carlo COUNT = {j}: {} != {}",
                hex::encode(md),
                hex::encode(want)
            ));
            // Later checkpoints chain from the expected value, so one wrong step is one line.
            md = *want;
        }
    }
    failures
}

/// The paths this CPU runs; prints the ones it skips.
fn available_paths(what: &str) -> Vec<Path> {
    #[cfg(target_arch = "x86_64")]
    {
        // The skips below are the CPU's, not a mistake in the availability checks.
        assert_eq!(
            Path::Avx2x4.is_available(),
            std::arch::is_x86_feature_detected!("avx2")
        );
        assert_eq!(
            Path::Avx512x8.is_available(),
            std::arch::is_x86_feature_detected!("avx512f")
        );
        assert_eq!(
            Path::Avx512.is_available(),
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
        );
    }
    Path::ALL
        .iter()
        .copied()
        .filter(|p| {
            let ok = p.is_available();
            if !ok {
                eprintln!("{what}: SKIPPED {p:?}: this CPU does not have its instructions");
            }
            ok
        })
        .collect()
}

fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} wrong digests:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_files_hold_what_nist_published() {
    let short = short_msg();
    assert_eq!(short.len(), 137, "ShortMsg: every length 0..=136 bytes");
    for (len, kat) in short.iter().enumerate() {
        assert_eq!(kat.msg.len(), len);
    }
    assert_eq!(
        hex::encode(short[0].md),
        "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
    );
    let long = long_msg();
    assert_eq!(long.len(), 100);
    for (k, kat) in long.iter().enumerate() {
        assert_eq!(kat.msg.len(), 273 + 137 * k, "LongMsg lengths");
    }
    let (seed, checkpoints) = monte();
    assert_eq!(
        hex::encode(seed),
        "aa64f7245e2177c654eb4de360da8761a516fdc7578c3498c5e582e096b8730c"
    );
    assert_eq!(checkpoints.len(), 100);
    assert_eq!(
        hex::encode(checkpoints[99]),
        "456f2ed7f5433bb4e56d7780a21a953e95d6a5eb53bb4c974c57a90e677f3197"
    );
}

#[test]
fn short_msg_on_every_path() {
    let kats = short_msg();
    for path in available_paths("ShortMsg") {
        assert_no_failures(kat_failures(path, &kats));
        eprintln!("ShortMsg: {path:?}: {} vectors passed", kats.len());
    }
}

#[test]
fn long_msg_on_every_path() {
    let kats = long_msg();
    for path in available_paths("LongMsg") {
        assert_no_failures(kat_failures(path, &kats));
        eprintln!("LongMsg: {path:?}: {} vectors passed", kats.len());
    }
}

#[test]
fn monte_carlo_on_every_path() {
    let (seed, checkpoints) = monte();
    for path in available_paths("Monte") {
        assert_no_failures(monte_failures(path, seed, &checkpoints));
        eprintln!(
            "Monte: {path:?}: {} checkpoints ({} hashes) passed",
            checkpoints.len(),
            checkpoints.len() * 1000
        );
    }
}

#[test]
fn short_and_long_msg_through_the_dispatching_api() {
    let mut kats = short_msg();
    kats.extend(long_msg());
    assert_no_failures(dispatch_failures(&kats));
    eprintln!(
        "dispatching API (single messages on {:?}; digest_many eight-way on CPUs with AVX-512F, \
         four-way on CPUs with AVX2 only): {} vectors passed",
        Backend::detect(),
        kats.len()
    );
}

#[test]
fn monte_carlo_through_the_dispatching_api() {
    let (seed, checkpoints) = monte();
    let mut md = seed;
    let mut failures = Vec::new();
    for (j, want) in checkpoints.iter().enumerate() {
        for i in 0..1000u32 {
            md = if i.is_multiple_of(2) {
                Sha3_256::digest(&md)
            } else {
                // digest_many with the chain among other inputs (eight- or four-way).
                let other = [0x5a; 40];
                Sha3_256::digest_many(&[&[&other], &[&md[..5], &md[5..]], &[&other[..j % 40]]])[1]
            };
        }
        if md != *want {
            failures.push(format!("Monte COUNT = {j}: {}", hex::encode(md)));
            md = *want;
        }
    }
    assert_no_failures(failures);
}

/// The checks above report a wrong digest: one corrupted vector of each kind gives a failure on
/// every path (so a test that passes is not one that cannot fail).
#[test]
fn a_wrong_expected_digest_is_reported_on_every_path() {
    let mut kats: Vec<Kat> = short_msg().into_iter().step_by(17).collect();
    kats.extend(long_msg().into_iter().take(2));
    let bad = kats.len() - 1;
    kats[bad].md[31] ^= 1;
    let (seed, mut checkpoints) = monte();
    // The last checkpoint: after a wrong one the check goes on from the (here wrong) expected value.
    checkpoints.truncate(2);
    checkpoints[1][0] ^= 0x80;
    for path in available_paths("corrupted vectors") {
        let failures = kat_failures(path, &kats);
        assert!(!failures.is_empty(), "{path:?}");
        assert!(
            failures
                .iter()
                .all(|f| f.contains(&format!("vector {bad} "))),
            "{path:?}: only the corrupted vector fails: {failures:?}"
        );
        let failures = monte_failures(path, seed, &checkpoints);
        assert_eq!(failures.len(), 1, "{path:?}: {failures:?}");
        assert!(failures[0].contains("COUNT = 1:"), "{failures:?}");
    }
    assert!(!dispatch_failures(&kats).is_empty());
}
