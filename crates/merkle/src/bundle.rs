//! The proof bundle: everything needed to check one record offline.

use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointError, NoteVerifier, SignedCheckpoint};
use crate::hasher::{Hash, Sha3Hasher, TreeHasher};
use crate::proof::{verify_inclusion, ProofError};

pub const BUNDLE_FORMAT: &str = "medanchor-proof/1";

/// Leaf kinds: every ledger event is a typed leaf starting with its kind byte.
/// `0x01 || commitment`: a record stored as received.
pub const LEAF_RECORD_STORED: u8 = 0x01;
/// `0x02 || commitment || raw commitment`: a record derived from a stored one (a FHIR Bundle
/// mapped from an HL7v2 message); the leaf itself binds the two commitments.
pub const LEAF_DERIVED_STORED: u8 = 0x02;

/// `0x03 || commitment`: a patient granted access (the sealed event is a FHIR Consent).
pub const LEAF_CONSENT_GRANTED: u8 = 0x03;
/// `0x04 || commitment`: a patient (or an admin for them) revoked a grant.
pub const LEAF_CONSENT_REVOKED: u8 = 0x04;
/// `0x05 || commitment`: a read of a patient's data, allowed or denied (a FHIR AuditEvent).
pub const LEAF_RECORD_ACCESSED: u8 = 0x05;
/// `0x06 || commitment`: a patient's data keys were destroyed.
pub const LEAF_PATIENT_ERASED: u8 = 0x06;

/// The kinds of event leaf: things that happened to a patient's data rather than records
/// stored. Each is `kind || commitment[32]`, the commitment being over the sealed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    ConsentGranted,
    ConsentRevoked,
    RecordAccessed,
    PatientErased,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::ConsentGranted,
        EventKind::ConsentRevoked,
        EventKind::RecordAccessed,
        EventKind::PatientErased,
    ];

    /// The leaf's kind byte.
    pub fn byte(self) -> u8 {
        match self {
            EventKind::ConsentGranted => LEAF_CONSENT_GRANTED,
            EventKind::ConsentRevoked => LEAF_CONSENT_REVOKED,
            EventKind::RecordAccessed => LEAF_RECORD_ACCESSED,
            EventKind::PatientErased => LEAF_PATIENT_ERASED,
        }
    }

    pub fn from_byte(b: u8) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.byte() == b)
    }

    /// The name a proof bundle's `event` field carries.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::ConsentGranted => "consent_granted",
            EventKind::ConsentRevoked => "consent_revoked",
            EventKind::RecordAccessed => "record_accessed",
            EventKind::PatientErased => "patient_erased",
        }
    }

    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The leaf entry for an event.
pub fn event_leaf(kind: EventKind, commitment: &Hash) -> [u8; 33] {
    let mut e = [0u8; 33];
    e[0] = kind.byte();
    e[1..].copy_from_slice(commitment);
    e
}

/// The leaf entry for a stored record.
pub fn record_leaf(commitment: &Hash) -> [u8; 33] {
    let mut e = [0u8; 33];
    e[0] = LEAF_RECORD_STORED;
    e[1..].copy_from_slice(commitment);
    e
}

/// The leaf entry for a derived record made from the record committed to by `raw`.
pub fn derived_leaf(commitment: &Hash, raw: &Hash) -> [u8; 65] {
    let mut e = [0u8; 65];
    e[0] = LEAF_DERIVED_STORED;
    e[1..33].copy_from_slice(commitment);
    e[33..].copy_from_slice(raw);
    e
}

/// In the bundle of a derived record: the raw record it was made from, proven in the same tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedFrom {
    pub record_id: String,
    /// Hex commitment of the raw record; the derived leaf binds it.
    pub commitment: String,
    pub leaf_index: u64,
    /// Hex hashes, leaf to root, in the bundle's tree.
    pub inclusion: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofBundle {
    pub format: String,
    pub record_id: String,
    /// Hex SHA3-256 record commitment.
    pub commitment: String,
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Hex hashes, leaf to root.
    pub inclusion: Vec<String>,
    /// Signed checkpoint text (C2SP signed note).
    pub checkpoint: String,
    /// Verifier key of the log (`name+hash+base64`).
    pub public_key: String,
    /// Only for a derived record: its leaf is `0x02 || commitment || derived_from.commitment`,
    /// and the raw record's own leaf is proven too. Absent (not null) for a raw record, so raw
    /// bundles are byte for byte what they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<DerivedFrom>,
    /// Only for an event (a consent granted or revoked, a record accessed, a patient erased):
    /// its kind's name, and the leaf is `kind || commitment`. Absent for records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("unknown proof format {0:?}")]
    Format(String),
    #[error("field {0} is not valid hex of 32 bytes")]
    Hex(&'static str),
    #[error("public key: {0}")]
    Key(CheckpointError),
    #[error("public key {0} is not the pinned key {1}")]
    UnpinnedKey(String, String),
    #[error("checkpoint: {0}")]
    Checkpoint(CheckpointError),
    #[error("tree size {0} in the bundle is not the checkpoint's {1}")]
    SizeMismatch(u64, u64),
    #[error("inclusion proof: {0}")]
    Inclusion(ProofError),
    /// The raw record a derived record names is not proven in the bundle's tree.
    #[error("inclusion proof of the raw record: {0}")]
    RawInclusion(ProofError),
    #[error("unknown event kind {0:?}")]
    Event(String),
    /// An event is not derived from a record: a bundle with both is not one this log writes.
    #[error("a bundle names both an event and a raw record")]
    EventDerived,
}

fn hash_hex(s: &str, field: &'static str) -> Result<Hash, BundleError> {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(BundleError::Hex(field))
}

impl ProofBundle {
    /// Checks the checkpoint signature and the inclusion of the record's leaf. With `pinned`, the
    /// bundle's own key must be that key; without it, the bundle's key is trusted as given and
    /// the caller should show which key that was.
    pub fn verify(&self, pinned: Option<&NoteVerifier>) -> Result<SignedCheckpoint, BundleError> {
        if self.format != BUNDLE_FORMAT {
            return Err(BundleError::Format(self.format.clone()));
        }
        let key = NoteVerifier::parse(&self.public_key).map_err(BundleError::Key)?;
        if let Some(p) = pinned {
            if p != &key {
                return Err(BundleError::UnpinnedKey(key.key_id(), p.key_id()));
            }
        }
        let cp =
            SignedCheckpoint::verify(&self.checkpoint, &key).map_err(BundleError::Checkpoint)?;
        if cp.checkpoint.size != self.tree_size {
            return Err(BundleError::SizeMismatch(
                self.tree_size,
                cp.checkpoint.size,
            ));
        }
        let commitment = hash_hex(&self.commitment, "commitment")?;
        let path = self
            .inclusion
            .iter()
            .map(|h| hash_hex(h, "inclusion"))
            .collect::<Result<Vec<_>, _>>()?;
        let hasher = Sha3Hasher;
        let event = match &self.event {
            None => None,
            Some(name) => {
                Some(EventKind::from_name(name).ok_or_else(|| BundleError::Event(name.clone()))?)
            }
        };
        let leaf = match (&self.derived_from, event) {
            (Some(_), Some(_)) => return Err(BundleError::EventDerived),
            (None, Some(kind)) => hasher.leaf(&event_leaf(kind, &commitment)),
            (None, None) => hasher.leaf(&record_leaf(&commitment)),
            (Some(raw), None) => {
                let raw_commitment = hash_hex(&raw.commitment, "derived_from.commitment")?;
                let raw_path = raw
                    .inclusion
                    .iter()
                    .map(|h| hash_hex(h, "derived_from.inclusion"))
                    .collect::<Result<Vec<_>, _>>()?;
                verify_inclusion(
                    &hasher,
                    raw.leaf_index,
                    self.tree_size,
                    &hasher.leaf(&record_leaf(&raw_commitment)),
                    &raw_path,
                    &cp.checkpoint.root,
                )
                .map_err(BundleError::RawInclusion)?;
                hasher.leaf(&derived_leaf(&commitment, &raw_commitment))
            }
        };
        verify_inclusion(
            &hasher,
            self.leaf_index,
            self.tree_size,
            &leaf,
            &path,
            &cp.checkpoint.root,
        )
        .map_err(BundleError::Inclusion)?;
        Ok(cp)
    }
}
