//! Event leaves (consent granted / revoked, record accessed, patient erased): their entries, and
//! `ProofBundle::verify` on a bundle with `event`, valid and with named corruptions.

use ed25519_dalek::SigningKey;
use medanchor_merkle::{
    event_leaf, record_leaf, BundleError, Checkpoint, EventKind, Hash, MemoryTree, NoteSigner,
    ProofBundle, ProofError, Sha3Hasher, TreeHasher, BUNDLE_FORMAT,
};

const ORIGIN: &str = "events.medanchor.test/log";

fn commitment(i: u8) -> Hash {
    std::array::from_fn(|j| i.wrapping_mul(53).wrapping_add(j as u8))
}

/// Leaves 0..=3 are records, 4..=7 one event of each kind (in `EventKind::ALL` order).
const SIZE: u64 = 8;

struct Log {
    tree: MemoryTree<Sha3Hasher>,
    signer: NoteSigner,
    checkpoint: String,
}

fn log() -> Log {
    let mut tree = MemoryTree::new(Sha3Hasher);
    for i in 0..4u8 {
        tree.push(Sha3Hasher.leaf(&record_leaf(&commitment(i))));
    }
    for (n, kind) in EventKind::ALL.into_iter().enumerate() {
        tree.push(Sha3Hasher.leaf(&event_leaf(kind, &commitment(4 + n as u8))));
    }
    let signer = NoteSigner::new(ORIGIN, SigningKey::from_bytes(&[5; 32])).unwrap();
    let checkpoint = signer
        .sign(&Checkpoint {
            origin: ORIGIN.into(),
            size: SIZE,
            root: tree.root(SIZE).unwrap(),
            timestamp_ms: 1_764_460_800_000,
        })
        .text;
    Log {
        tree,
        signer,
        checkpoint,
    }
}

impl Log {
    fn bundle(&self, index: u64, event: Option<EventKind>) -> ProofBundle {
        ProofBundle {
            format: BUNDLE_FORMAT.into(),
            record_id: format!("{index:032x}"),
            commitment: hex::encode(commitment(index as u8)),
            leaf_index: index,
            tree_size: SIZE,
            inclusion: self
                .tree
                .inclusion_proof(index, SIZE)
                .unwrap()
                .iter()
                .map(hex::encode)
                .collect(),
            checkpoint: self.checkpoint.clone(),
            public_key: self.signer.verifier().to_vkey(),
            derived_from: None,
            event: event.map(|k| k.name().to_string()),
        }
    }

    fn verify(&self, b: &ProofBundle) -> Result<(), BundleError> {
        b.verify(Some(&self.signer.verifier())).map(|_| ())
    }
}

#[test]
fn event_kinds_have_distinct_bytes_and_names_that_round_trip() {
    let bytes: Vec<u8> = EventKind::ALL.iter().map(|k| k.byte()).collect();
    assert_eq!(bytes, [0x03, 0x04, 0x05, 0x06]);
    for k in EventKind::ALL {
        assert_eq!(EventKind::from_byte(k.byte()), Some(k));
        assert_eq!(EventKind::from_name(k.name()), Some(k));
        let e = event_leaf(k, &commitment(1));
        assert_eq!((e[0], &e[1..]), (k.byte(), &commitment(1)[..]));
        // Same commitment as a record: another leaf hash.
        assert_ne!(
            Sha3Hasher.leaf(&e),
            Sha3Hasher.leaf(&record_leaf(&commitment(1)))
        );
    }
    for b in [0x00, 0x01, 0x02, 0x07, 0xff] {
        assert_eq!(EventKind::from_byte(b), None, "{b:#04x}");
    }
}

#[test]
fn event_bundles_verify_and_each_named_corruption_fails() {
    let log = log();
    for (n, kind) in EventKind::ALL.into_iter().enumerate() {
        log.verify(&log.bundle(4 + n as u64, Some(kind))).unwrap();
    }
    let valid = log.bundle(6, Some(EventKind::RecordAccessed));
    let edit = |f: &dyn Fn(&mut ProofBundle)| {
        let mut b = valid.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(&str, ProofBundle, Result<(), BundleError>)> = vec![
        (
            "another event kind: a grant shown as an access",
            edit(&|b| b.event = Some("consent_granted".into())),
            Err(BundleError::Inclusion(ProofError::RootMismatch)),
        ),
        (
            "event removed: verified as a record leaf, which it is not",
            edit(&|b| b.event = None),
            Err(BundleError::Inclusion(ProofError::RootMismatch)),
        ),
        (
            "unknown event name",
            edit(&|b| b.event = Some("record_deleted".into())),
            Err(BundleError::Event("record_deleted".into())),
        ),
        (
            "wrong leaf: another event's commitment",
            edit(&|b| b.commitment = hex::encode(commitment(7))),
            Err(BundleError::Inclusion(ProofError::RootMismatch)),
        ),
        (
            "truncated inclusion path",
            edit(&|b| {
                b.inclusion.pop();
            }),
            Err(BundleError::Inclusion(ProofError::PathTooShort)),
        ),
        (
            "an event with a derived_from",
            edit(&|b| {
                b.derived_from = Some(medanchor_merkle::DerivedFrom {
                    record_id: "0".repeat(32),
                    commitment: hex::encode(commitment(0)),
                    leaf_index: 0,
                    inclusion: vec![],
                })
            }),
            Err(BundleError::EventDerived),
        ),
    ];
    for (name, bundle, want) in cases {
        assert_eq!(log.verify(&bundle), want, "{name}");
    }
    // A record's bundle claiming to be an event.
    let b = log.bundle(1, Some(EventKind::PatientErased));
    assert_eq!(
        log.verify(&b),
        Err(BundleError::Inclusion(ProofError::RootMismatch))
    );
}

#[test]
fn event_is_absent_from_record_bundles_and_trailing_fields_are_refused() {
    let log = log();
    let raw = serde_json::to_string(&log.bundle(0, None)).unwrap();
    assert!(!raw.contains("\"event\""), "record bundles are as before");
    let mut v = serde_json::to_value(log.bundle(5, Some(EventKind::ConsentRevoked))).unwrap();
    assert_eq!(v["event"], "consent_revoked");
    v["extra"] = 1.into();
    assert!(serde_json::from_value::<ProofBundle>(v).is_err());
}
