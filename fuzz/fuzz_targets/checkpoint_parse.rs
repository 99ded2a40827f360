//! Signed checkpoints (C2SP signed note): `SignedCheckpoint::verify` and `NoteVerifier::parse`
//! on arbitrary text, and a structured mode that signs a checkpoint made from the input, damages
//! the text as the input says and verifies it again.
//!
//! Input: first byte 0x00 selects the structured mode; anything else is text (UTF-8 as is, other
//! bytes converted lossily), verified under the test-vector key (crates/merkle/testdata) and
//! under this target's own key, and parsed as a verifier key.
//!
//! Structured mode, after the 0x00: `size` u64, `timestamp` u64, `root` [32], `n` (1 byte, at
//! most 8 edits), `n` edits of 4 bytes `op, pos_hi, pos_lo, value`, then the origin (lossy
//! UTF-8). Ops (op % 4) on the signed text's bytes: 0 xor `value` (0 taken as 1) at pos,
//! 1 truncate to pos, 2 insert `value` at pos, 3 append a line signed by another witness.
//!
//! Checks: no panics; a checkpoint that verifies reads back to the exact body that was signed
//! (`Checkpoint::body` of the result is the text up to the blank line); a checkpoint this target
//! signed verifies exactly when its origin is a valid origin line; after edits, whatever still
//! verifies says what was signed.
#![no_main]

use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use medanchor_merkle::{Checkpoint, NoteSigner, NoteVerifier, SignedCheckpoint};

/// `verifier_key` of crates/merkle/testdata/vectors.json.
const VECTOR_KEY: &str =
    "vectors.medanchor.test/log+74257927+AepKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs";

struct Keys {
    vectors: NoteVerifier,
    signer: NoteSigner,
    ours: NoteVerifier,
    witness: NoteSigner,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let signer = NoteSigner::new(
            "fuzz.medanchor.test/log",
            SigningKey::from_bytes(&[0x42; 32]),
        )
        .unwrap();
        let witness =
            NoteSigner::new("witness.example", SigningKey::from_bytes(&[0x17; 32])).unwrap();
        Keys {
            vectors: NoteVerifier::parse(VECTOR_KEY).unwrap(),
            ours: signer.verifier(),
            signer,
            witness,
        }
    })
}

/// What a successful verify promises about `text`.
fn check_verified(text: &str, cp: &SignedCheckpoint) {
    let split = text.find("\n\n").expect("a verified note has a blank line");
    assert_eq!(
        cp.checkpoint.body(),
        text[..split + 1],
        "body is not canonical"
    );
    assert_eq!(cp.text, text);
}

fn arbitrary(text: &str) {
    let k = keys();
    for v in [&k.vectors, &k.ours] {
        if let Ok(cp) = SignedCheckpoint::verify(text, v) {
            check_verified(text, &cp);
        }
    }
    if let Ok(v) = NoteVerifier::parse(text) {
        // A parsed key prints as the key it was parsed from (up to surrounding space).
        assert_eq!(v.to_vkey(), text.trim());
        assert_eq!(NoteVerifier::parse(&v.to_vkey()).as_ref(), Ok(&v));
    }
}

/// An origin line `Checkpoint::parse_body` accepts.
fn valid_origin(o: &str) -> bool {
    !o.is_empty() && !o.contains('\n') && o.trim() == o
}

fn structured(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<48>() else {
        return;
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let n = usize::from(n % 9);
    if rest.len() < 4 * n {
        return;
    }
    let (edits, origin) = rest.split_at(4 * n);
    let cp = Checkpoint {
        origin: String::from_utf8_lossy(origin).into_owned(),
        size: u64::from_be_bytes(head[..8].try_into().unwrap()),
        timestamp_ms: u64::from_be_bytes(head[8..16].try_into().unwrap()),
        root: head[16..].try_into().unwrap(),
    };
    let k = keys();
    let signed = k.signer.sign(&cp);
    let verified = SignedCheckpoint::verify(&signed.text, &k.ours);
    assert_eq!(
        verified.is_ok(),
        valid_origin(&cp.origin),
        "{:?}",
        verified.as_ref().err()
    );
    if let Ok(v) = &verified {
        assert_eq!(v.checkpoint, cp);
        check_verified(&signed.text, v);
    }
    if n == 0 {
        return;
    }
    let mut bytes = signed.text.clone().into_bytes();
    for e in edits.chunks_exact(4) {
        let pos = usize::from(u16::from_be_bytes([e[1], e[2]]));
        let v = e[3];
        match e[0] % 4 {
            0 if !bytes.is_empty() => {
                let i = pos % bytes.len();
                bytes[i] ^= v.max(1);
            }
            1 => bytes.truncate(pos % (bytes.len() + 1)),
            2 => bytes.insert(pos % (bytes.len() + 1), v),
            3 => {
                // Another witness's signature line over the same body is not ours to judge.
                let other = k.witness.sign(&cp).text;
                let line = &other[other.rfind("\n\u{2014} ").map_or(0, |i| i + 1)..];
                bytes.extend_from_slice(line.as_bytes());
            }
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    if let Ok(v) = SignedCheckpoint::verify(&text, &k.ours) {
        check_verified(&text, &v);
        assert_eq!(
            v.checkpoint, cp,
            "an edited note verified as another checkpoint"
        );
    }
    let _ = SignedCheckpoint::verify(&text, &k.vectors);
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, rest)) => structured(rest),
        _ => arbitrary(&String::from_utf8_lossy(data)),
    }
});
