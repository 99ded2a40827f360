//! The ledger: one append-only Merkle log per gateway (RFC 9162 hashing with SHA3-256), closed into
//! Ed25519-signed checkpoints. The tree math lives in `medanchor-merkle`, shared with auditors; the
//! hash the log is written with ([`LogHasher`], `medanchor-sha3`) is not the one they verify with.

pub mod batcher;
mod embedded;
mod hasher;

pub use embedded::{EmbeddedLedger, LeafCheck};
pub use hasher::LogHasher;

pub use medanchor_merkle::EventKind;
use medanchor_merkle::{NoteVerifier, ProofBundle, SignedCheckpoint};

use crate::envelope::RecordId;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger storage: {0}")]
    Storage(String),
    /// The storage's I/O failed (a full disk, a device error): the ledger reopens its storage
    /// and rebuilds its tree from it before the next append or proof.
    #[error("ledger storage I/O: {0}")]
    Io(String),
    /// The ledger is down after a storage failure and could not recover yet.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    #[error("the ledger was opened read-only")]
    ReadOnly,
    #[error("ledger file {} is open in another process (is the gateway running?)", .0.display())]
    InUse(std::path::PathBuf),
    #[error("record {0} is not in the log yet")]
    NotAnchored(String),
    #[error("no checkpoint covers leaf {0} yet")]
    NoCheckpoint(u64),
    #[error("ledger entry {0} is malformed")]
    Corrupt(String),
    #[error("tree: {0}")]
    Tree(#[from] medanchor_merkle::TreeError),
}

/// One leaf to append: the record it anchors and, for a derived record, the raw record it was
/// made from (the leaf entry binds both commitments; see docs/FORMATS.md, "Merkle log").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    pub record_id: RecordId,
    pub commitment: [u8; 32],
    pub derived_from: Option<(RecordId, [u8; 32])>,
    /// For an event (consent granted or revoked, record accessed, patient erased): its kind.
    /// Never together with `derived_from`.
    pub event: Option<EventKind>,
}

impl Leaf {
    /// A record stored as received.
    pub fn record(record_id: RecordId, commitment: [u8; 32]) -> Leaf {
        Leaf {
            record_id,
            commitment,
            derived_from: None,
            event: None,
        }
    }

    /// A derived record made from the raw record `raw` (id, commitment).
    pub fn derived(record_id: RecordId, commitment: [u8; 32], raw: (RecordId, [u8; 32])) -> Leaf {
        Leaf {
            record_id,
            commitment,
            derived_from: Some(raw),
            event: None,
        }
    }

    /// An event about a patient's data.
    pub fn event(kind: EventKind, record_id: RecordId, commitment: [u8; 32]) -> Leaf {
        Leaf {
            record_id,
            commitment,
            derived_from: None,
            event: Some(kind),
        }
    }

    /// The entry hashed into the tree: `0x01 || commitment`,
    /// `0x02 || commitment || raw commitment`, or `kind || commitment` for an event.
    pub fn entry(&self) -> Vec<u8> {
        match (&self.derived_from, self.event) {
            (_, Some(kind)) => medanchor_merkle::event_leaf(kind, &self.commitment).to_vec(),
            (None, None) => medanchor_merkle::record_leaf(&self.commitment).to_vec(),
            (Some((_, raw)), None) => {
                medanchor_merkle::derived_leaf(&self.commitment, raw).to_vec()
            }
        }
    }
}

/// One leaf as stored: its index, entry bytes and the record it anchors (and, for a derived
/// record, the raw record's id).
#[derive(Debug, Clone)]
pub struct StoredLeaf {
    pub index: u64,
    pub entry: Vec<u8>,
    pub record_id: RecordId,
    pub derived_from: Option<RecordId>,
}

impl StoredLeaf {
    /// The event this leaf anchors, if it is an event leaf.
    pub fn event(&self) -> Option<EventKind> {
        EventKind::from_byte(self.entry[0])
    }

    /// The commitment the leaf anchors (the record's own, not the raw one it names).
    pub fn commitment(&self) -> &[u8] {
        &self.entry[1..33]
    }
}

pub trait Ledger: Send + Sync + 'static {
    /// Appends the records not already in the log and signs a checkpoint over the new size.
    /// Returns the checkpoint, or `None` when every record was already present.
    fn append_records(
        &self,
        records: &[Leaf],
        now_ms: u64,
    ) -> Result<Option<SignedCheckpoint>, LedgerError>;
    /// [`append_records`](Self::append_records) that also records, in the same durable
    /// transaction, that the vault's records up to position `through` (its commit order) are
    /// in the log: the anchored watermark, durable with the anchoring at no extra sync. The
    /// ledger keeps the largest it was given and knows nothing else of it.
    fn append_through(
        &self,
        records: &[Leaf],
        now_ms: u64,
        through: u64,
    ) -> Result<Option<SignedCheckpoint>, LedgerError>;
    /// The largest `through` recorded by [`append_through`](Self::append_through) (0: none).
    fn anchored_through(&self) -> Result<u64, LedgerError>;
    fn size(&self) -> u64;
    fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, LedgerError>;
    /// Inclusion proof of a record against the latest checkpoint.
    fn proof(&self, id: &RecordId) -> Result<ProofBundle, LedgerError>;
    fn verifier(&self) -> NoteVerifier;
    /// `Err(why)` while the ledger cannot append or prove (after a storage failure it has not
    /// recovered from yet). The reason names no record or patient.
    fn health(&self) -> Result<(), String>;
}
