//! The gateway writes its log with [`LogHasher`] (`medanchor-sha3`); auditors verify it with
//! `medanchor-merkle`'s [`Sha3Hasher`] (RustCrypto's `sha3`). These tests show the two give the
//! same leaf hashes, node hashes, roots and proofs: on the merkle crate's published vectors
//! (`crates/merkle/testdata/vectors.json`) and on random inputs of every length up to 1000 bytes,
//! which crosses the SHA3-256 rate (136 bytes) seven times.

use medanchor::ledger::LogHasher;
use medanchor_merkle::{
    verify_consistency, verify_inclusion, Hash, MemoryTree, NoteVerifier, Sha3Hasher,
    SignedCheckpoint, TreeHasher,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::Value;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crates/merkle/testdata/vectors.json"
);

/// SHA3-256's rate in bytes.
const RATE: usize = 136;

fn unhx(v: &Value) -> Hash {
    hex::decode(v.as_str().expect("hex string"))
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

fn path_of(v: &Value) -> Vec<Hash> {
    v.as_array().expect("path array").iter().map(unhx).collect()
}

/// The 13 entries `vectors.json` was generated from (`crates/merkle/tests/vectors.rs`).
fn vector_entries() -> Vec<Vec<u8>> {
    (0..13u8)
        .map(|i| vec![0x01, i, i.wrapping_mul(31)])
        .collect()
}

fn tree_of<H: TreeHasher>(hasher: H, entries: &[Vec<u8>]) -> MemoryTree<H> {
    let mut tree = MemoryTree::new(hasher);
    for e in entries {
        tree.push(hasher.leaf(e));
    }
    tree
}

/// Every root, inclusion proof and consistency proof of the two trees is the same, and each
/// hasher accepts the other's proofs.
fn assert_trees_agree(gateway: &MemoryTree<LogHasher>, reference: &MemoryTree<Sha3Hasher>) {
    let n = gateway.size();
    assert_eq!(n, reference.size());
    for size in 1..=n {
        let root = gateway.root(size).unwrap();
        assert_eq!(root, reference.root(size).unwrap(), "root of size {size}");
        for index in 0..size {
            let path = gateway.inclusion_proof(index, size).unwrap();
            assert_eq!(
                path,
                reference.inclusion_proof(index, size).unwrap(),
                "inclusion proof of {index} in {size}"
            );
            let leaf = gateway.leaf(index).unwrap();
            verify_inclusion(&Sha3Hasher, index, size, leaf, &path, &root)
                .unwrap_or_else(|e| panic!("reference rejects {index} in {size}: {e}"));
            verify_inclusion(&LogHasher, index, size, leaf, &path, &root)
                .unwrap_or_else(|e| panic!("gateway rejects {index} in {size}: {e}"));
        }
        for first in 1..size {
            let path = gateway.consistency_proof(first, size).unwrap();
            assert_eq!(
                path,
                reference.consistency_proof(first, size).unwrap(),
                "consistency proof {first} -> {size}"
            );
            let first_root = gateway.root(first).unwrap();
            verify_consistency(&Sha3Hasher, first, size, &first_root, &root, &path)
                .unwrap_or_else(|e| panic!("reference rejects {first} -> {size}: {e}"));
        }
    }
}

#[test]
fn gateway_and_reference_hashers_agree_on_every_merkle_vector() {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    let entries = vector_entries();

    assert_eq!(LogHasher.empty(), Sha3Hasher.empty(), "empty tree");
    let leaves: Vec<Hash> = entries.iter().map(|e| LogHasher.leaf(e)).collect();
    for (e, leaf) in entries.iter().zip(&leaves) {
        assert_eq!(*leaf, Sha3Hasher.leaf(e), "leaf of {e:?}");
    }
    for l in &leaves {
        for r in &leaves {
            assert_eq!(LogHasher.node(l, r), Sha3Hasher.node(l, r), "node");
        }
    }
    let gateway = tree_of(LogHasher, &entries);
    let reference = tree_of(Sha3Hasher, &entries);
    assert_trees_agree(&gateway, &reference);

    // The file's hashes are the ones the gateway's tree gives, and every vector, valid or
    // corrupted, gets the same answer from both hashers and the answer the file names.
    let mut checked = 0;
    for c in v["inclusion"].as_array().unwrap() {
        let (index, size) = (
            c["leaf_index"].as_u64().unwrap(),
            c["tree_size"].as_u64().unwrap(),
        );
        let (leaf, path, root) = (unhx(&c["leaf_hash"]), path_of(&c["path"]), unhx(&c["root"]));
        if c["name"] == "valid" {
            assert_eq!(leaf, leaves[index as usize], "valid inclusion: leaf hash");
            assert_eq!(root, gateway.root(size).unwrap(), "valid inclusion: root");
            assert_eq!(
                path,
                gateway.inclusion_proof(index, size).unwrap(),
                "valid inclusion: path"
            );
        }
        let by_gateway = verify_inclusion(&LogHasher, index, size, &leaf, &path, &root);
        let by_reference = verify_inclusion(&Sha3Hasher, index, size, &leaf, &path, &root);
        assert_eq!(by_gateway, by_reference, "inclusion {}", c["name"]);
        assert_eq!(
            by_reference.is_ok(),
            c["valid"].as_bool().unwrap(),
            "inclusion {}: {by_reference:?}",
            c["name"]
        );
        checked += 1;
    }
    for c in v["consistency"].as_array().unwrap() {
        let (first, second) = (
            c["first_size"].as_u64().unwrap(),
            c["second_size"].as_u64().unwrap(),
        );
        let (r1, r2, path) = (
            unhx(&c["first_root"]),
            unhx(&c["second_root"]),
            path_of(&c["path"]),
        );
        if c["name"] == "valid" {
            assert_eq!(
                r1,
                gateway.root(first).unwrap(),
                "valid consistency: first root"
            );
            assert_eq!(
                r2,
                gateway.root(second).unwrap(),
                "valid consistency: second root"
            );
            assert_eq!(
                path,
                gateway.consistency_proof(first, second).unwrap(),
                "valid consistency: path"
            );
        }
        let by_gateway = verify_consistency(&LogHasher, first, second, &r1, &r2, &path);
        let by_reference = verify_consistency(&Sha3Hasher, first, second, &r1, &r2, &path);
        assert_eq!(by_gateway, by_reference, "consistency {}", c["name"]);
        assert_eq!(
            by_reference.is_ok(),
            c["valid"].as_bool().unwrap(),
            "consistency {}: {by_reference:?}",
            c["name"]
        );
        checked += 1;
    }
    // The signed checkpoint's root is the root of the gateway's tree over the same entries.
    let verifier = NoteVerifier::parse(v["verifier_key"].as_str().unwrap()).unwrap();
    let valid = v["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "valid")
        .expect("a valid checkpoint");
    let cp = SignedCheckpoint::verify(valid["text"].as_str().unwrap(), &verifier).unwrap();
    assert_eq!(
        cp.checkpoint.root,
        gateway.root(cp.checkpoint.size).unwrap(),
        "checkpoint root"
    );
    assert_eq!(
        checked, 17,
        "every inclusion and consistency vector was compared"
    );
}

#[test]
fn gateway_and_reference_hashers_agree_on_random_inputs_of_every_length() {
    let mut rng = StdRng::seed_from_u64(9162);
    let mut entries = Vec::new();
    for len in 0..=1000usize {
        let mut entry = vec![0u8; len];
        rng.fill(&mut entry[..]);
        // The raw SHA3-256, then the leaf hash (whose input is one byte longer: lengths 135,
        // 271, ... put the leaf's input on a block boundary, 136, 272, ... the hash's own).
        let reference: [u8; 32] = <sha3::Sha3_256 as sha3::Digest>::digest(&entry).into();
        assert_eq!(
            medanchor_sha3::Sha3_256::digest(&entry),
            reference,
            "SHA3-256 of {len} bytes"
        );
        let leaf = LogHasher.leaf(&entry);
        assert_eq!(leaf, Sha3Hasher.leaf(&entry), "leaf of {len} bytes");
        let mut other = [0u8; 32];
        rng.fill(&mut other);
        assert_eq!(
            LogHasher.node(&leaf, &other),
            Sha3Hasher.node(&leaf, &other),
            "node over the leaf of {len} bytes"
        );
        if len.is_multiple_of(8) || len % RATE < 2 || len % RATE == RATE - 1 {
            entries.push(entry);
        }
    }
    // A tree over a sample of those entries (block boundaries included): same roots and proofs.
    assert!(entries.iter().any(|e| e.len() == RATE));
    assert!(entries.iter().any(|e| e.len() == RATE - 1));
    let gateway = tree_of(LogHasher, &entries[..40]);
    let reference = tree_of(Sha3Hasher, &entries[..40]);
    assert_trees_agree(&gateway, &reference);
}

#[test]
fn a_hasher_that_differs_is_caught() {
    // The comparisons above can fail: a hasher without the leaf/node domain separation gives
    // another root, and the reference rejects the gateway-style proof built with it.
    #[derive(Clone, Copy)]
    struct NoPrefix;
    impl TreeHasher for NoPrefix {
        fn empty(&self) -> Hash {
            medanchor_sha3::Sha3_256::digest(b"")
        }
        fn leaf(&self, entry: &[u8]) -> Hash {
            medanchor_sha3::Sha3_256::digest(entry)
        }
        fn node(&self, left: &Hash, right: &Hash) -> Hash {
            medanchor_sha3::Sha3_256::digest_parts(&[left, right])
        }
    }
    let entries = vector_entries();
    let wrong = tree_of(NoPrefix, &entries);
    let reference = tree_of(Sha3Hasher, &entries);
    assert_ne!(wrong.root(13).unwrap(), reference.root(13).unwrap());
    let path = wrong.inclusion_proof(6, 13).unwrap();
    assert!(verify_inclusion(
        &Sha3Hasher,
        6,
        13,
        &NoPrefix.leaf(&entries[6]),
        &path,
        &wrong.root(13).unwrap()
    )
    .is_err());
}
