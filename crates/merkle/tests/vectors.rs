//! medanchor's own JSON test vectors (testdata/vectors.json): one valid inclusion proof, consistency
//! proof and checkpoint, each with named corruptions that must all be rejected. Other
//! implementations of the proof format can run the same file.
//!
//! Regenerate with `MEDANCHOR_REGEN_VECTORS=1 cargo test -p medanchor-merkle --test vectors`.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use ed25519_dalek::SigningKey;
use medanchor_merkle::{
    verify_consistency, verify_inclusion, Checkpoint, Hash, MemoryTree, NoteSigner, NoteVerifier,
    Sha3Hasher, SignedCheckpoint, TreeHasher,
};
use serde_json::{json, Value};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/vectors.json");

fn hx(h: &Hash) -> String {
    hex::encode(h)
}
fn unhx(v: &Value) -> Hash {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}
fn path_of(v: &Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(unhx).collect()
}

fn generate() -> Value {
    let hr = Sha3Hasher;
    let mut tree = MemoryTree::new(hr);
    let entries: Vec<Vec<u8>> = (0..13u8)
        .map(|i| vec![0x01, i, i.wrapping_mul(31)])
        .collect();
    for e in &entries {
        tree.push(hr.leaf(e));
    }
    let (index, size) = (6u64, 13u64);
    let leaf = hr.leaf(&entries[6]);
    let root = tree.root(size).unwrap();
    let path = tree.inclusion_proof(index, size).unwrap();
    let inc = |name: &str, index: u64, size: u64, leaf: Hash, path: &[Hash], root: Hash, valid| {
        json!({"name": name, "valid": valid, "leaf_index": index, "tree_size": size,
               "leaf_hash": hx(&leaf), "path": path.iter().map(hx).collect::<Vec<_>>(), "root": hx(&root)})
    };
    let mut flipped = path.clone();
    flipped[1][7] ^= 0x01;
    let mut extended = path.clone();
    extended.push(path[0]);
    let mut wrong_root = root;
    wrong_root[31] ^= 0x80;
    let inclusion = vec![
        inc("valid", index, size, leaf, &path, root, true),
        inc(
            "wrong_leaf",
            index,
            size,
            hr.leaf(&entries[7]),
            &path,
            root,
            false,
        ),
        inc("wrong_index", index + 1, size, leaf, &path, root, false),
        inc("index_beyond_size", size, size, leaf, &path, root, false),
        inc("wrong_size", index, size + 4, leaf, &path, root, false),
        inc(
            "truncated_path",
            index,
            size,
            leaf,
            &path[..path.len() - 1],
            root,
            false,
        ),
        inc("extra_hash", index, size, leaf, &extended, root, false),
        inc(
            "flipped_path_byte",
            index,
            size,
            leaf,
            &flipped,
            root,
            false,
        ),
        inc("wrong_root", index, size, leaf, &path, wrong_root, false),
        inc("empty_path", index, size, leaf, &[], root, false),
    ];

    let (first, second) = (5u64, 13u64);
    let r1 = tree.root(first).unwrap();
    let cpath = tree.consistency_proof(first, second).unwrap();
    let con = |name: &str, first: u64, second: u64, r1: Hash, r2: Hash, path: &[Hash], valid| {
        json!({"name": name, "valid": valid, "first_size": first, "second_size": second,
               "first_root": hx(&r1), "second_root": hx(&r2), "path": path.iter().map(hx).collect::<Vec<_>>()})
    };
    let mut cext = cpath.clone();
    cext.push(cpath[0]);
    let consistency = vec![
        con("valid", first, second, r1, root, &cpath, true),
        con(
            "truncated_path",
            first,
            second,
            r1,
            root,
            &cpath[..cpath.len() - 1],
            false,
        ),
        con("extra_hash", first, second, r1, root, &cext, false),
        con(
            "wrong_first_root",
            first,
            second,
            wrong_root,
            root,
            &cpath,
            false,
        ),
        con(
            "wrong_second_root",
            first,
            second,
            r1,
            wrong_root,
            &cpath,
            false,
        ),
        con("sizes_swapped", second, first, root, r1, &cpath, false),
        con(
            "wrong_first_size",
            first + 1,
            second,
            r1,
            root,
            &cpath,
            false,
        ),
    ];

    let signer = NoteSigner::new(
        "vectors.medanchor.test/log",
        SigningKey::from_bytes(&[7; 32]),
    )
    .unwrap();
    let cp = Checkpoint {
        origin: "vectors.medanchor.test/log".into(),
        size,
        root,
        timestamp_ms: 1_763_856_000_000,
    };
    let text = signer.sign(&cp).text;
    let other = NoteSigner::new(
        "vectors.medanchor.test/log",
        SigningKey::from_bytes(&[8; 32]),
    )
    .unwrap();
    let sig_line_start = text.rfind('\u{2014}').unwrap();
    let sig_b64 = text[sig_line_start..].split(' ').nth(2).unwrap().trim_end();
    let mut sig = B64.decode(sig_b64).unwrap();
    sig[20] ^= 0x04;
    let bad_sig = text.replace(sig_b64, &B64.encode(&sig));
    let ck = |name: &str, text: String, valid| json!({"name": name, "valid": valid, "text": text});
    let checkpoints = vec![
        ck("valid", text.clone(), true),
        ck("bad_signature", bad_sig, false),
        ck("trailing_bytes", format!("{text}x"), false),
        ck("extra_line_after_signature", format!("{text}\n"), false),
        ck("size_changed", text.replacen("\n13\n", "\n14\n", 1), false),
        ck(
            "root_changed",
            text.replace(&B64.encode(root), &B64.encode(wrong_root)),
            false,
        ),
        ck(
            "timestamp_changed",
            text.replace("1763856000000", "1763856000001"),
            false,
        ),
        ck(
            "origin_changed",
            text.replacen(
                "vectors.medanchor.test/log\n",
                "vectors.medanchor.test/lot\n",
                1,
            ),
            false,
        ),
        ck("signed_by_other_key", other.sign(&cp).text, false),
        ck(
            "missing_final_newline",
            text[..text.len() - 1].to_string(),
            false,
        ),
        ck("no_signature", cp.body() + "\n", false),
    ];
    json!({
        "hash": "RFC 9162 tree hashing with SHA3-256",
        "verifier_key": signer.verifier().to_vkey(),
        "inclusion": inclusion,
        "consistency": consistency,
        "checkpoints": checkpoints,
    })
}

#[test]
fn vectors_verify_and_every_named_corruption_fails() {
    if std::env::var_os("MEDANCHOR_REGEN_VECTORS").is_some() {
        std::fs::write(
            PATH,
            serde_json::to_string_pretty(&generate()).unwrap() + "\n",
        )
        .unwrap();
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let hr = Sha3Hasher;
    let mut checked = 0;
    for c in v["inclusion"].as_array().unwrap() {
        let r = verify_inclusion(
            &hr,
            c["leaf_index"].as_u64().unwrap(),
            c["tree_size"].as_u64().unwrap(),
            &unhx(&c["leaf_hash"]),
            &path_of(&c["path"]),
            &unhx(&c["root"]),
        );
        assert_eq!(
            r.is_ok(),
            c["valid"].as_bool().unwrap(),
            "inclusion {}: {r:?}",
            c["name"]
        );
        checked += 1;
    }
    for c in v["consistency"].as_array().unwrap() {
        let r = verify_consistency(
            &hr,
            c["first_size"].as_u64().unwrap(),
            c["second_size"].as_u64().unwrap(),
            &unhx(&c["first_root"]),
            &unhx(&c["second_root"]),
            &path_of(&c["path"]),
        );
        assert_eq!(
            r.is_ok(),
            c["valid"].as_bool().unwrap(),
            "consistency {}: {r:?}",
            c["name"]
        );
        checked += 1;
    }
    let verifier = NoteVerifier::parse(v["verifier_key"].as_str().unwrap()).unwrap();
    for c in v["checkpoints"].as_array().unwrap() {
        let r = SignedCheckpoint::verify(c["text"].as_str().unwrap(), &verifier);
        assert_eq!(
            r.is_ok(),
            c["valid"].as_bool().unwrap(),
            "checkpoint {}: {r:?}",
            c["name"]
        );
        checked += 1;
    }
    assert_eq!(checked, 28, "every vector in the file was exercised");
}

#[test]
fn verifier_key_round_trips_and_rejects_a_wrong_hash() {
    let signer = NoteSigner::new("a.example/log", SigningKey::from_bytes(&[1; 32])).unwrap();
    let vkey = signer.verifier().to_vkey();
    assert_eq!(NoteVerifier::parse(&vkey).unwrap(), signer.verifier());
    let mut parts: Vec<&str> = vkey.split('+').collect();
    parts[1] = "00000000";
    assert!(NoteVerifier::parse(&parts.join("+")).is_err());
}
