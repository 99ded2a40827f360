//! The vault: sealed records, durably. The [`Vault`] trait is what the pipeline needs; the
//! embedded redb implementation is the default. The group-commit [`writer`] turns many producers'
//! puts into one transaction (one fsync) and only then resolves their tokens.

mod embedded;
pub mod segments;
pub mod writer;

pub use embedded::EmbeddedVault;

use crate::envelope::RecordId;
use crate::ledger::{EventKind, Leaf};
use crate::seal::keyring::PatientIndex;
use crate::seal::Sealed;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("vault storage: {0}")]
    Storage(String),
    #[error("vault entry {0} is malformed")]
    Corrupt(String),
    /// A record's stored bytes could not be read back intact (the reason names where).
    #[error("{0}")]
    Unreadable(String),
}

/// A record to store, with its keyed dedup keys (see `docs/FORMATS.md`).
#[derive(Debug)]
pub struct PutRecord {
    pub sealed: Sealed,
    /// Keyed hash of (sender, control id, raw bytes).
    pub dedup_key: [u8; 32],
    /// Keyed hash of (sender, control id).
    pub control_key: [u8; 32],
    /// What normalization made of it, stored in the same commit when the record is stored (a
    /// duplicate's first copy has its own).
    pub derived: Derivation,
}

/// What normalization made of a raw record.
#[derive(Debug, Clone)]
pub enum Derivation {
    /// Not normalized (FHIR input, normalization off, or input kept in quarantine).
    None,
    /// A derived record (the FHIR Bundle), sealed under the raw record's patient key.
    Mapped(Sealed),
    /// Mapping failed: the raw record is stored all the same and the failure kept for replay.
    Failed(MappingFailure),
}

/// Why a raw record has no current derived record. Names segments and fields, never values, so
/// it is kept in the index unsealed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MappingFailure {
    /// Fixed reason (metrics label), e.g. `invalid_output`.
    pub label: String,
    pub detail: String,
    pub mapping_version: String,
    pub at_ms: u64,
}

/// An event to store (a consent granted or revoked, a read, an erasure), sealed.
#[derive(Debug, Clone)]
pub struct EventPut {
    pub kind: EventKind,
    pub patient: PatientIndex,
    pub sealed: Sealed,
}

/// What the patient index holds of one entry: its kind (the leaf kind byte: 1 raw, 2 derived,
/// 3..=6 an event) and record id, in store order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatientEntry {
    pub kind: u8,
    pub record_id: RecordId,
}

/// A derivation of a record already stored (`medanchor mapping replay`).
#[derive(Debug, Clone)]
pub struct Rederive {
    pub raw_id: RecordId,
    pub raw_commitment: [u8; 32],
    pub derived: Derivation,
}

/// A record's place in the vault's commit order: a later commit has a larger position. The
/// ledger anchors records in this order, so one watermark says which are anchored.
pub type Position = u64;

/// What happened to a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutResult {
    Stored {
        position: Position,
        /// Where its derived record went (stored right after it), if it has one.
        derived_at: Option<Position>,
    },
    /// Same sender, control id and bytes as an earlier record: its id and commitment.
    Duplicate {
        record_id: RecordId,
        commitment: [u8; 32],
    },
    /// New bytes under a control id this sender already used; stored as a new record.
    StoredConflict {
        position: Position,
        derived_at: Option<Position>,
    },
    /// The index entries this message needs are damaged: it is neither stored nor known as a
    /// duplicate until `medanchor repair` rebuilds the index (the rest of the commit is not
    /// affected). `medanchor verify --all` names the damage.
    IndexDamaged,
}

/// Input kept for inspection with the reason it was refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuarantineEntry {
    pub id: String,
    pub reason: String,
    pub label: String,
    pub received_ms: u64,
    pub origin: String,
    pub size: usize,
}

/// A stored record as read back.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub record_id: RecordId,
    pub commitment: [u8; 32],
    pub sealed: Vec<u8>,
}

pub trait Vault: Send + Sync + 'static {
    /// Stores records and quarantine entries in one durable transaction.
    fn commit(
        &self,
        puts: &[PutRecord],
        quarantine: &[(QuarantineEntry, Sealed)],
    ) -> Result<Vec<PutResult>, VaultError>;
    /// Stores new derivations of stored records in one durable commit: a mapped one appends a
    /// derived record (the newest is current; earlier ones stay) and clears the raw record's
    /// failure, a failed one records the failure. Returns the position of each derived record
    /// stored (`None` for a failure).
    fn commit_derivations(&self, items: &[Rederive]) -> Result<Vec<Option<Position>>, VaultError>;
    /// Stores events in one durable commit; returns each one's position in commit order.
    fn commit_events(&self, events: &[EventPut]) -> Result<Vec<Position>, VaultError>;
    /// Everything stored about one patient of the given kinds (leaf kind bytes), in id order
    /// (ids sort by time): the read side's index, which costs what that patient has, not
    /// what the vault holds.
    fn patient_entries(
        &self,
        patient: &PatientIndex,
        kinds: &[u8],
    ) -> Result<Vec<PatientEntry>, VaultError>;
    /// The derived records made from a raw record, oldest first (the last is current).
    fn derived_of(&self, raw: &RecordId) -> Result<Vec<RecordId>, VaultError>;
    /// Raw records whose last mapping failed, with why.
    fn mapping_failures(&self) -> Result<Vec<(RecordId, MappingFailure)>, VaultError>;
    /// Makes everything committed so far durable in the index too (at shutdown, so the next
    /// start has nothing to re-index).
    fn sync(&self) -> Result<(), VaultError>;
    fn get(&self, id: &RecordId) -> Result<Option<StoredRecord>, VaultError>;
    /// Every stored record, in id order. A record that cannot be read is handed over as its
    /// error, so one damaged record does not hide the others.
    fn for_each_record(
        &self,
        f: &mut dyn FnMut(RecordId, Result<StoredRecord, VaultError>) -> Result<(), VaultError>,
    ) -> Result<(), VaultError>;
    fn record_count(&self) -> Result<u64, VaultError>;
    /// Records stored after the anchored watermark and after `at_least` (the watermark the log
    /// itself keeps, durable with each anchoring), in commit order.
    fn unanchored(&self, at_least: Position) -> Result<Vec<(Leaf, Position)>, VaultError>;
    /// Moves the vault's copy of the watermark: every record up to `through` is in the log. Not
    /// synced at once (the log's copy is durable; this one is for `verify` and `repair`).
    fn mark_anchored(&self, through: Position) -> Result<(), VaultError>;
    fn quarantine_list(&self) -> Result<Vec<QuarantineEntry>, VaultError>;
    /// Removes the quarantine entries received before `before_ms` (their ids sort by time);
    /// returns how many. The retention that makes input no patient could be found for
    /// erasable too.
    fn quarantine_expire(&self, before_ms: u64) -> Result<usize, VaultError>;
    /// Whether the vault can store now: `Err` names the storage failure it has not recovered
    /// from yet (no record content). Readiness reports it.
    fn health(&self) -> Result<(), String>;
    fn quarantine_get(&self, id: &str) -> Result<Option<(QuarantineEntry, Vec<u8>)>, VaultError>;
}
