//! Who may read what: principals ([`principal`]), grants and the decision ([`policy`]), grants
//! as FHIR Consent ([`fhir`]), and the book of every patient's grants kept in memory.
//!
//! A grant or a revocation is an event (`record::Event`) sealed under the patient's key,
//! stored in the vault and anchored as its own leaf, so a patient can prove what they granted
//! and when. The book is a cache of those events per patient, loaded on first use (cost: that
//! patient's grants) and updated in place once a new event is durable, so a revocation holds
//! for the very next request.

pub mod fhir;
pub mod policy;
pub mod principal;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::envelope::RecordId;
use crate::ledger::EventKind;
use crate::record::{Content, Event};
use crate::seal::keyring::PatientIndex;
use crate::seal::{Keyring, KeyringError};
use crate::vault::Vault;
pub use policy::{Applicable, Decision, Grant, GrantError, Period, Requester, Resource};
pub use principal::{NewPrincipal, Principal, PrincipalError, Principals, Role};

/// The body of a consent-granted event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    pub grant: Grant,
    /// The principal who made it: the patient, or an admin acting for them.
    pub by: String,
    /// An admin's reason (required of admins). Kept sealed with the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The body of a consent-revoked event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// The grant's id (its event's record id, 32 hex).
    pub revokes: String,
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The body of a patient-erased event (sealed under the gateway key: the patient's is gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureBody {
    pub by: String,
    pub reason: String,
    /// Data keys destroyed (0 when the patient had none yet).
    pub keys_destroyed: u32,
}

/// One grant as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGrant {
    pub id: RecordId,
    pub body: GrantBody,
    pub at_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

/// A patient's grants, oldest first.
#[derive(Debug, Clone, Default)]
pub struct PatientGrants {
    pub grants: Vec<StoredGrant>,
}

impl PatientGrants {
    /// The grants in force (not revoked). Periods are the decision's to check.
    pub fn active(&self) -> impl Iterator<Item = &Grant> {
        self.grants
            .iter()
            .filter(|g| g.revoked_ms.is_none())
            .map(|g| &g.body.grant)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BookError {
    /// The patient was erased: their grants can no longer be read.
    #[error("the patient was erased")]
    Erased(u64),
    #[error("reading grants: {0}")]
    Read(String),
}

/// Opens one stored event of a patient.
pub fn open_event(
    vault: &dyn Vault,
    keyring: &Keyring,
    id: &RecordId,
) -> Result<Option<(Event, [u8; 32])>, BookError> {
    let Some(stored) = vault.get(id).map_err(|e| BookError::Read(e.to_string()))? else {
        return Ok(None);
    };
    let header =
        crate::seal::parse_header(&stored.sealed).map_err(|e| BookError::Read(e.to_string()))?;
    let key = keyring.get(header.key_id).map_err(|e| match e {
        KeyringError::Erased(_, at) => BookError::Erased(at),
        other => BookError::Read(other.to_string()),
    })?;
    let content = crate::seal::decrypt_content(&stored.sealed, *id, &key)
        .map_err(|e| BookError::Read(e.to_string()))?;
    match content {
        Content::Event(e) => Ok(Some((e, stored.commitment))),
        _ => Ok(None),
    }
}

/// Every patient's grants, loaded on first use.
#[derive(Default)]
pub struct Book {
    patients: RwLock<HashMap<PatientIndex, Arc<PatientGrants>>>,
}

impl Book {
    /// A patient's grants: from memory, or read from their events (O(their events)).
    pub fn grants(
        &self,
        patient: &PatientIndex,
        vault: &dyn Vault,
        keyring: &Keyring,
    ) -> Result<Arc<PatientGrants>, BookError> {
        if let Some(g) = self.patients.read().expect("lock").get(patient) {
            return Ok(g.clone());
        }
        let loaded = Arc::new(load(patient, vault, keyring)?);
        let mut all = self.patients.write().expect("lock");
        // A grant recorded meanwhile went into the entry another loader made: keep that one.
        Ok(all.entry(*patient).or_insert(loaded).clone())
    }

    /// Notes a grant or revocation that is durable now. A patient not loaded yet is left to
    /// be loaded from the vault, which holds it already.
    pub fn note(&self, patient: &PatientIndex, f: impl FnOnce(&mut PatientGrants)) {
        let mut all = self.patients.write().expect("lock");
        if let Some(g) = all.get_mut(patient) {
            // Copies only when a reader still holds the old list.
            f(Arc::make_mut(g));
        }
    }

    /// Forgets an erased patient's grants.
    pub fn forget(&self, patient: &PatientIndex) {
        self.patients.write().expect("lock").remove(patient);
    }

    /// How many patients' grants are held in memory.
    pub fn loaded(&self) -> usize {
        self.patients.read().expect("lock").len()
    }
}

fn load(
    patient: &PatientIndex,
    vault: &dyn Vault,
    keyring: &Keyring,
) -> Result<PatientGrants, BookError> {
    let kinds = [
        EventKind::ConsentGranted.byte(),
        EventKind::ConsentRevoked.byte(),
    ];
    let entries = vault
        .patient_entries(patient, &kinds)
        .map_err(|e| BookError::Read(e.to_string()))?;
    let mut out = PatientGrants::default();
    let mut revocations = Vec::new();
    for entry in entries {
        let Some((event, _)) = open_event(vault, keyring, &entry.record_id)? else {
            continue;
        };
        if event.patient != patient.key_id() {
            return Err(BookError::Read(format!(
                "event {} is indexed under another patient than it names",
                entry.record_id
            )));
        }
        let bad = |what: &str| BookError::Read(format!("event {}: {what}", entry.record_id));
        match event.kind {
            EventKind::ConsentGranted => {
                let body: GrantBody =
                    serde_json::from_slice(&event.body).map_err(|_| bad("not a grant"))?;
                out.grants.push(StoredGrant {
                    id: entry.record_id,
                    body,
                    at_ms: event.at_ms,
                    revoked_ms: None,
                });
            }
            EventKind::ConsentRevoked => {
                let body: RevokeBody =
                    serde_json::from_slice(&event.body).map_err(|_| bad("not a revocation"))?;
                revocations.push((body.revokes, event.at_ms));
            }
            _ => {}
        }
    }
    for (id, at) in revocations {
        if let Some(g) = out.grants.iter_mut().find(|g| g.id.to_string() == id) {
            g.revoked_ms.get_or_insert(at);
        }
    }
    Ok(out)
}
