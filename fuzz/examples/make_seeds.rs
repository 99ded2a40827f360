//! Writes the seed corpora under fuzz/seeds/<target>/ (committed; small). Run from anywhere:
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds` (scripts/fuzz --seeds).
//! Seeds are made from tests/fixtures/ and crates/merkle/testdata/vectors.json and from real
//! encodings the gateway's own code writes (records, sealed records, segments, proof bundles).
//! Sealing draws a fresh salt and nonce, so regenerated seeds differ byte for byte; each file is
//! only written when missing (delete a target's folder to make it anew).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use medanchor::envelope::{FormatHint, Origin, RecordId};
use medanchor::record::Record;
use medanchor::seal::{self, DataKey};
use medanchor::vault::segments::{EntryHeader, SegmentLog, Tail};
use medanchor_merkle::{
    record_leaf, Checkpoint, MemoryTree, NoteSigner, ProofBundle, Sha3Hasher, TreeHasher,
    BUNDLE_FORMAT,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(root().join("..").join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    if !path.exists() {
        std::fs::write(&path, bytes).unwrap();
    }
}

const HL7: &[&str] = &[
    "tests/fixtures/hl7/microsoft/ADT-A01-01.hl7",
    "tests/fixtures/hl7/microsoft/ORU-R01-01.hl7",
    "tests/fixtures/hl7/microsoft/VXU.hl7",
    "tests/fixtures/hl7/python-hl7/non_ascii_cp1252.hl7",
    "tests/fixtures/hl7/python-hl7/nonstandard_separators.hl7",
    "tests/fixtures/hl7/python-hl7/sample_batch.hl7",
];
/// One message per family of the default mapping set.
const V2FHIR: &[&str] = &[
    "tests/fixtures/v2fhir/local/adt-a01.hl7",
    "tests/fixtures/v2fhir/local/oru-r01-lipids.hl7",
    "tests/fixtures/v2fhir/ms/ADT-A40-01.hl7",
    "tests/fixtures/v2fhir/ms/BAR-P01-01.hl7",
    "tests/fixtures/v2fhir/ms/DFT-P03-01.hl7",
    "tests/fixtures/v2fhir/ms/MDM-T02-01.hl7",
    "tests/fixtures/v2fhir/ms/OML-O21-01.hl7",
    "tests/fixtures/v2fhir/ms/ORM-O01-01.hl7",
    "tests/fixtures/v2fhir/ms/SIU-S12-01.hl7",
    "tests/fixtures/v2fhir/ms/VXU-V04-01.hl7",
];
const FHIR: &[&str] = &[
    "tests/fixtures/fhir/patient-example.json",
    "tests/fixtures/fhir/observation-example.json",
    "tests/fixtures/fhir/bundle-lipids.json",
];

fn name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap()
}

/// Records the pipeline makes from the fixtures, with a few origins; the raw messages cut to
/// 1500 bytes so that records and sealed records stay under the targets' 4096-byte -max_len.
fn records() -> Vec<Record> {
    let origins = [
        Origin::Local {
            name: "seed".into(),
        },
        Origin::Mllp {
            peer: "[2001:db8::1]:2575".parse().unwrap(),
            tls_client: Some("CN=lab".into()),
        },
        Origin::Kafka {
            topic: "hl7".into(),
            partition: -1,
            offset: 42,
        },
    ];
    let mut out = Vec::new();
    for (i, rel) in HL7[..3].iter().chain(&FHIR[..2]).enumerate() {
        let payload = Bytes::from(fixture(rel));
        let origin = &origins[i % origins.len()];
        let r = medanchor::pipeline::decode(
            &payload,
            FormatHint::Auto,
            origin,
            1_700_000_000_000 + i as u64,
            &Default::default(),
        )
        .unwrap_or_else(|e| panic!("{rel}: {e:?}"));
        let r = Record {
            raw: r.raw.slice(..r.raw.len().min(1500)),
            ..r
        };
        out.push(r);
    }
    out
}

fn encode(r: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    r.encode_into(&serde_json::to_vec(&r.meta.origin).unwrap(), &mut out)
        .unwrap();
    out
}

fn signer() -> NoteSigner {
    NoteSigner::new(
        "fuzz.medanchor.test/log",
        SigningKey::from_bytes(&[0x42; 32]),
    )
    .unwrap()
}

fn main() {
    // mllp_codec: cut size, then a stream (frames of at most 64 bytes).
    let small = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\r";
    let mut stream = vec![7u8];
    for _ in 0..2 {
        stream.push(0x0b);
        stream.extend_from_slice(small);
        stream.extend_from_slice(b"\x1c\x0d");
    }
    put("mllp_codec", "two-frames", &stream);
    let mut long = vec![200u8, 0x0b];
    long.extend_from_slice(&[b'x'; 100]);
    long.extend_from_slice(b"\x1c\x0d\x0bMSH|\x1c\x0d");
    put("mllp_codec", "oversized-then-small", &long);

    // hl7_message: messages, and a FHIR resource for the `auto` and `fhir` formats.
    for rel in HL7.iter().chain(&FHIR[..1]) {
        put("hl7_message", name(rel), &fixture(rel));
    }

    // normalize_output: messages of every family the default mappings cover, as the gateway
    // gets them (CR segment ends).
    for rel in HL7.iter().chain(V2FHIR) {
        let cr: Vec<u8> = fixture(rel)
            .iter()
            .map(|&b| if b == b'\n' { b'\r' } else { b })
            .collect();
        put("normalize_output", name(rel), &cr);
    }

    // sha3_differential: cut step, then the message.
    put("sha3_differential", "empty", &[0]);
    put("sha3_differential", "abc", b"\x01abc");
    let mut rate = vec![136u8];
    rate.extend((0..400).map(|i| i as u8));
    put("sha3_differential", "rate-boundaries", &rate);

    // fhir_read.
    for rel in FHIR {
        put("fhir_read", name(rel), &fixture(rel));
    }

    // record_decode.
    let records = records();
    for (i, r) in records.iter().enumerate() {
        put("record_decode", &format!("record-{i}"), &encode(r));
    }

    // sealed_open: sealed records that open under the target's key and record id, and the
    // structured mode (0x00, edit count, edits, raw message).
    let key = DataKey::new("p-x", [7; 32]);
    let id = RecordId([0x11; 16]);
    for (i, r) in records.iter().take(3).enumerate() {
        put(
            "sealed_open",
            &format!("sealed-{i}"),
            &seal::seal(r, id, &key, seal::Compress::Lz4).unwrap().bytes,
        );
    }
    put(
        "sealed_open",
        "structured-intact",
        b"\x00\x00MSH|^~\\&|A|B|C|D",
    );
    put(
        "sealed_open",
        "structured-edits",
        b"\x00\x02\x00\x00\x30\x01\x01\x00\x50\x00MSH|^~\\&|A|B|C|D",
    );

    // segment_recovery: layout byte, then segment files made by SegmentLog itself.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = SegmentLog::recover(dir, Tail::default(), 1 << 20, true, &mut |_, _| {}).unwrap();
    let mut staged = Default::default();
    let mut ends = Vec::new();
    for (i, r) in records.iter().take(3).enumerate() {
        // Small records keep the seeds small: the metadata, with a short raw message.
        let r = Record {
            raw: r.raw.slice(..r.raw.len().min(300)),
            ..r.clone()
        };
        let rid = RecordId([i as u8 + 1; 16]);
        let s = seal::seal(&r, rid, &key, seal::Compress::Lz4).unwrap();
        let (off, len) = SegmentLog::stage(
            &mut staged,
            &EntryHeader {
                record_id: rid,
                commitment: s.commitment,
                dedup_key: [i as u8 ^ 0x55; 32],
                control_key: [i as u8 ^ 0xaa; 32],
            },
            &s.bytes,
        );
        ends.push(off as usize + medanchor::vault::segments::ENTRY_HEADER + len as usize);
    }
    log.append(&staged).unwrap();
    drop(log);
    let seg = std::fs::read(dir.join("00000000.seg")).unwrap();
    let with = |layout: &[u8], body: &[u8]| [layout, body].concat();
    put("segment_recovery", "three-entries", &with(&[0], &seg));
    let cut = (ends[0] as u16).to_be_bytes();
    put(
        "segment_recovery",
        "two-segments",
        &with(&[1, cut[0], cut[1]], &seg),
    );
    let mut torn = seg.clone();
    torn.truncate(ends[1] + 50);
    put("segment_recovery", "torn-tail", &with(&[0], &torn));
    let mut damaged = seg.clone();
    damaged[ends[0] + 200] ^= 0x40;
    put("segment_recovery", "damaged-middle", &with(&[0], &damaged));
    std::fs::write(dir.join("00000000.seg"), &damaged).unwrap();
    SegmentLog::repair(dir, Tail::default()).unwrap();
    let repaired = std::fs::read(dir.join("00000000.seg")).unwrap();
    put(
        "segment_recovery",
        "repaired-padding",
        &with(&[0], &repaired),
    );

    // checkpoint_parse: the test vectors, the verifier key, and the structured mode (0x00,
    // size u64, timestamp u64, root[32], edit count, edits, origin).
    let vectors: serde_json::Value =
        serde_json::from_slice(&fixture("crates/merkle/testdata/vectors.json")).unwrap();
    for cp in vectors["checkpoints"].as_array().unwrap() {
        put(
            "checkpoint_parse",
            &format!("vector-{}", cp["name"].as_str().unwrap()),
            cp["text"].as_str().unwrap().as_bytes(),
        );
    }
    put(
        "checkpoint_parse",
        "verifier-key",
        vectors["verifier_key"].as_str().unwrap().as_bytes(),
    );
    let mut structured = vec![0u8];
    structured.extend_from_slice(&13u64.to_be_bytes());
    structured.extend_from_slice(&1_763_856_000_000u64.to_be_bytes());
    structured.extend_from_slice(&[0xab; 32]);
    let mut intact = structured.clone();
    intact.push(0);
    intact.extend_from_slice(b"fuzz.medanchor.test/log");
    put("checkpoint_parse", "structured-intact", &intact);
    structured.extend_from_slice(&[2, 3, 0, 0, 0, 0, 0, 5, 1]);
    structured.extend_from_slice(b"fuzz.medanchor.test/log");
    put("checkpoint_parse", "structured-edits", &structured);

    // proof_bundle: bundles for a 13-leaf log signed by the target's pinned key.
    let hasher = Sha3Hasher;
    let mut tree = MemoryTree::new(hasher);
    let commitments: Vec<[u8; 32]> = (0u8..13).map(|i| [i.wrapping_mul(37); 32]).collect();
    for c in &commitments {
        tree.push(hasher.leaf(&record_leaf(c)));
    }
    let signer = signer();
    let cp = signer.sign(&Checkpoint {
        origin: "fuzz.medanchor.test/log".into(),
        size: 13,
        root: tree.root(13).unwrap(),
        timestamp_ms: 1_763_856_000_000,
    });
    for index in [0u64, 6, 12] {
        let bundle = ProofBundle {
            format: BUNDLE_FORMAT.into(),
            record_id: hex::encode([index as u8 + 1; 16]),
            commitment: hex::encode(commitments[index as usize]),
            leaf_index: index,
            tree_size: 13,
            inclusion: tree
                .inclusion_proof(index, 13)
                .unwrap()
                .iter()
                .map(hex::encode)
                .collect(),
            checkpoint: cp.text.clone(),
            public_key: signer.verifier().to_vkey(),
            derived_from: None,
            event: None,
        };
        bundle.verify(Some(&signer.verifier())).unwrap();
        put(
            "proof_bundle",
            &format!("bundle-{index}"),
            &serde_json::to_vec_pretty(&bundle).unwrap(),
        );
    }
    put(
        "proof_bundle",
        "verifier-key",
        signer.verifier().to_vkey().as_bytes(),
    );
    let total: u64 = walk(&root().join("seeds"));
    println!("seeds: {total} bytes under fuzz/seeds/");
}

fn walk(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}
