//! `ProofBundle::verify`, for raw records and for derived records (`derived_from`): the valid
//! bundle and named corruptions, each with the exact error. The gateway-written vectors of the
//! same cases are in the workspace's `testdata/formats/vectors.json` (`bundles`).

use ed25519_dalek::SigningKey;
use medanchor_merkle::{
    derived_leaf, record_leaf, BundleError, Checkpoint, DerivedFrom, Hash, MemoryTree, NoteSigner,
    ProofBundle, ProofError, Sha3Hasher, TreeHasher, BUNDLE_FORMAT, LEAF_DERIVED_STORED,
    LEAF_RECORD_STORED,
};
use serde_json::Value;

const ORIGIN: &str = "bundle.medanchor.test/log";

/// Commitment `i` of the test log.
fn commitment(i: u8) -> Hash {
    std::array::from_fn(|j| i.wrapping_mul(37).wrapping_add(j as u8))
}

/// A log of 11 leaves: raw records 0..=7 (commitments 0..=7), then derived records 8 (from raw
/// record 2), 9 (from raw record 5) and 10 (from raw record 2 again, a newer mapping).
struct Log {
    tree: MemoryTree<Sha3Hasher>,
    signer: NoteSigner,
    checkpoint: String,
}

/// (leaf index, raw leaf index) of the derived records.
const DERIVED: [(u64, u64); 3] = [(8, 2), (9, 5), (10, 2)];
const SIZE: u64 = 11;

fn log() -> Log {
    let mut tree = MemoryTree::new(Sha3Hasher);
    for i in 0..8u8 {
        tree.push(Sha3Hasher.leaf(&record_leaf(&commitment(i))));
    }
    for (index, raw) in DERIVED {
        let e = derived_leaf(&commitment(index as u8), &commitment(raw as u8));
        tree.push(Sha3Hasher.leaf(&e));
    }
    let signer = NoteSigner::new(ORIGIN, SigningKey::from_bytes(&[9; 32])).unwrap();
    let checkpoint = signer
        .sign(&Checkpoint {
            origin: ORIGIN.into(),
            size: SIZE,
            root: tree.root(SIZE).unwrap(),
            timestamp_ms: 1_763_856_000_000,
        })
        .text;
    Log {
        tree,
        signer,
        checkpoint,
    }
}

fn hexes(path: &[Hash]) -> Vec<String> {
    path.iter().map(hex::encode).collect()
}

impl Log {
    fn raw_bundle(&self, index: u64) -> ProofBundle {
        ProofBundle {
            format: BUNDLE_FORMAT.into(),
            record_id: format!("{index:032x}"),
            commitment: hex::encode(commitment(index as u8)),
            leaf_index: index,
            tree_size: SIZE,
            inclusion: hexes(&self.tree.inclusion_proof(index, SIZE).unwrap()),
            checkpoint: self.checkpoint.clone(),
            public_key: self.signer.verifier().to_vkey(),
            derived_from: None,
            event: None,
        }
    }

    fn derived_from(&self, raw: u64) -> DerivedFrom {
        DerivedFrom {
            record_id: format!("{raw:032x}"),
            commitment: hex::encode(commitment(raw as u8)),
            leaf_index: raw,
            inclusion: hexes(&self.tree.inclusion_proof(raw, SIZE).unwrap()),
        }
    }

    /// The bundle the ledger writes for derived record `n` of [`DERIVED`].
    fn derived_bundle(&self, n: usize) -> ProofBundle {
        let (index, raw) = DERIVED[n];
        ProofBundle {
            derived_from: Some(self.derived_from(raw)),
            ..self.raw_bundle(index)
        }
    }

    fn verify(&self, b: &ProofBundle) -> Result<(), BundleError> {
        b.verify(Some(&self.signer.verifier())).map(|_| ())
    }
}

#[test]
fn leaf_entries_are_typed_by_their_first_byte() {
    let (c, r) = (commitment(1), commitment(2));
    let e = record_leaf(&c);
    assert_eq!((e[0], &e[1..]), (LEAF_RECORD_STORED, &c[..]));
    let d = derived_leaf(&c, &r);
    assert_eq!(d.len(), 65);
    assert_eq!(
        (d[0], &d[1..33], &d[33..]),
        (LEAF_DERIVED_STORED, &c[..], &r[..])
    );
    // Same commitment, other kind: another leaf hash.
    assert_ne!(Sha3Hasher.leaf(&e), Sha3Hasher.leaf(&d));
}

#[test]
fn raw_and_derived_bundles_verify() {
    let log = log();
    for i in 0..8 {
        log.verify(&log.raw_bundle(i)).unwrap();
    }
    for n in 0..DERIVED.len() {
        log.verify(&log.derived_bundle(n)).unwrap();
    }
    // Unpinned: the bundle's own key.
    log.derived_bundle(0).verify(None).unwrap();
}

#[test]
fn every_named_corruption_of_a_derived_bundle_fails_with_its_error() {
    use ProofError::*;
    let log = log();
    let valid = log.derived_bundle(0);
    let edit = |f: &dyn Fn(&mut ProofBundle)| {
        let mut b = valid.clone();
        f(&mut b);
        b
    };
    let raw = |f: &dyn Fn(&mut DerivedFrom)| edit(&|b| f(b.derived_from.as_mut().unwrap()));
    let cases: Vec<(&str, ProofBundle, Result<(), BundleError>)> = vec![
        (
            "raw record id changed (bound by no leaf)",
            raw(&|d| d.record_id = "0".repeat(32)),
            Ok(()),
        ),
        (
            "wrong leaf: another derived record's commitment",
            edit(&|b| b.commitment = hex::encode(commitment(9))),
            Err(BundleError::Inclusion(RootMismatch)),
        ),
        (
            "wrong raw commitment under the raw leaf's index and path (checked first)",
            raw(&|d| d.commitment = hex::encode(commitment(3))),
            Err(BundleError::RawInclusion(RootMismatch)),
        ),
        (
            "another raw record in the log, with its own index and path",
            edit(&|b| b.derived_from = Some(log.derived_from(5))),
            Err(BundleError::Inclusion(RootMismatch)),
        ),
        (
            "truncated raw inclusion path",
            raw(&|d| {
                d.inclusion.pop();
            }),
            Err(BundleError::RawInclusion(PathTooShort)),
        ),
        (
            "extra raw inclusion hash",
            raw(&|d| d.inclusion.push(d.inclusion[0].clone())),
            Err(BundleError::RawInclusion(PathTooLong)),
        ),
        (
            "raw leaf index off by one",
            raw(&|d| d.leaf_index += 1),
            Err(BundleError::RawInclusion(RootMismatch)),
        ),
        (
            "raw leaf index beyond the tree",
            raw(&|d| d.leaf_index = SIZE),
            Err(BundleError::RawInclusion(IndexOutOfRange {
                index: SIZE,
                size: SIZE,
            })),
        ),
        (
            "truncated inclusion path of the derived leaf",
            edit(&|b| {
                b.inclusion.pop();
            }),
            Err(BundleError::Inclusion(PathTooShort)),
        ),
        (
            "derived_from names a derived leaf (kind 0x02), not a record leaf",
            raw(&|d| {
                d.commitment = hex::encode(commitment(10));
                d.leaf_index = 10;
                d.inclusion = hexes(&log.tree.inclusion_proof(10, SIZE).unwrap());
            }),
            Err(BundleError::RawInclusion(RootMismatch)),
        ),
        (
            "derived_from removed: verified as a record leaf, which it is not",
            edit(&|b| b.derived_from = None),
            Err(BundleError::Inclusion(RootMismatch)),
        ),
        (
            "raw commitment not hex",
            raw(&|d| d.commitment = "zz".into()),
            Err(BundleError::Hex("derived_from.commitment")),
        ),
        (
            "raw commitment 31 bytes",
            raw(&|d| d.commitment.truncate(62)),
            Err(BundleError::Hex("derived_from.commitment")),
        ),
        (
            "raw inclusion hash not hex",
            raw(&|d| d.inclusion[1] = "00".into()),
            Err(BundleError::Hex("derived_from.inclusion")),
        ),
        (
            "the bundle's own commitment not hex is found before derived_from's",
            edit(&|b| {
                b.commitment = "zz".into();
                b.derived_from.as_mut().unwrap().commitment = "zz".into();
            }),
            Err(BundleError::Hex("commitment")),
        ),
    ];
    for (name, bundle, want) in cases {
        assert_eq!(log.verify(&bundle), want, "{name}");
    }
    // A raw record's bundle given a derived_from: its leaf is then taken as a derived leaf.
    let mut b = log.raw_bundle(2);
    b.derived_from = Some(log.derived_from(2));
    assert_eq!(log.verify(&b), Err(BundleError::Inclusion(RootMismatch)));
}

#[test]
fn derived_from_is_absent_from_raw_bundles_and_strict_in_derived_ones() {
    let log = log();
    let raw = serde_json::to_string_pretty(&log.raw_bundle(0)).unwrap();
    assert!(!raw.contains("derived_from"), "raw bundles are as before");
    let derived = serde_json::to_value(log.derived_bundle(0)).unwrap();
    let keys: Vec<&str> = derived["derived_from"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["commitment", "inclusion", "leaf_index", "record_id"]
    );

    let parse = |v: &Value| serde_json::from_value::<ProofBundle>(v.clone());
    let mut unknown = derived.clone();
    unknown["derived_from"]["note"] = "extra".into();
    assert!(
        parse(&unknown).is_err(),
        "unknown field inside derived_from"
    );
    let mut missing = derived.clone();
    missing["derived_from"]
        .as_object_mut()
        .unwrap()
        .remove("leaf_index");
    assert!(
        parse(&missing).is_err(),
        "missing field inside derived_from"
    );
    let mut not_object = derived.clone();
    not_object["derived_from"] = "0".into();
    assert!(parse(&not_object).is_err(), "derived_from not an object");
    // null is read as absent (what the formats document; writers never write it).
    let mut null = serde_json::to_value(log.raw_bundle(0)).unwrap();
    null["derived_from"] = Value::Null;
    let b = parse(&null).unwrap();
    assert_eq!(b.derived_from, None);
    log.verify(&b).unwrap();
    // And a derived bundle read back is the one written.
    assert_eq!(parse(&derived).unwrap(), log.derived_bundle(0));
}
