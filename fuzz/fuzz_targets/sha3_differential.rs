//! `medanchor-sha3` against RustCrypto's `sha3` on arbitrary input: the one-shot `digest`, the
//! input cut into parts (`digest_parts` and incremental `update`s), `digest_many` on a batch made
//! from the input, and every code path this CPU runs forced (portable, AVX-512, AVX2 four-way, AVX-512 eight-way).
//! Any difference is a crash.
//!
//! The first byte chooses the cuts: the rest of the input is the message, cut every `step` bytes
//! (`step` = first byte, 0 meaning no cut), and the batch holds the message and each prefix of it
//! at the cut points (so `digest_many` sees several inputs of different lengths).
#![no_main]

use libfuzzer_sys::fuzz_target;
use medanchor_sha3::{Path, Sha3_256};
use sha3::Digest;

fn reference(data: &[u8]) -> [u8; 32] {
    sha3::Sha3_256::digest(data).into()
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, msg)) = data.split_first() else {
        return;
    };
    let want = reference(msg);
    assert_eq!(Sha3_256::digest(msg), want, "digest");

    let parts: Vec<&[u8]> = if step == 0 {
        vec![msg]
    } else {
        msg.chunks(usize::from(step)).collect()
    };
    assert_eq!(Sha3_256::digest_parts(&parts), want, "digest_parts");
    let mut h = Sha3_256::new();
    for p in &parts {
        h.update(p);
    }
    assert_eq!(h.finalize(), want, "update");

    // The batch: the whole message in parts, then every prefix ending at a cut (at most 17, so
    // the eight-way path refills its slots).
    let mut inputs: Vec<&[&[u8]]> = vec![parts.as_slice()];
    let prefixes: Vec<usize> = (1..parts.len()).take(16).collect();
    for &n in &prefixes {
        inputs.push(&parts[..n]);
    }
    let wants: Vec<[u8; 32]> = inputs.iter().map(|p| reference(&p.concat())).collect();
    assert_eq!(Sha3_256::digest_many(&inputs), wants, "digest_many");

    for &path in Path::ALL {
        if let Some(got) = Sha3_256::digest_many_on(path, &inputs) {
            assert_eq!(got, wants, "{path:?}");
        }
        if let Some(backend) = path.backend().filter(|_| path.is_available()) {
            let mut h = Sha3_256::with_backend(backend);
            for p in &parts {
                h.update(p);
            }
            assert_eq!(h.finalize(), want, "{path:?} update");
        }
    }
});
