//! Offline verification of a whole data directory (`medanchor verify --all`).
//!
//! Opens everything read-only ([`Stores::open_read_only`]): no byte of the data directory
//! changes. Every index is checked against what it points to: the vault's records, controls,
//! durable tail and anchored watermark against the segments; each record's keyed dedup and
//! control keys and its data key id against the decrypted record (which is how a damaged
//! `index.key` shows); the log's leaves, tiles, record index and checkpoints against the leaves;
//! quarantine entries are opened too.

use std::collections::{HashMap, HashSet};

use medanchor_merkle::{verify_consistency, Sha3Hasher, SignedCheckpoint};
use serde::Serialize;

use crate::envelope::RecordId;
use crate::ledger::Ledger;
use crate::pipeline::Stores;
use crate::record::Content;
use crate::seal::{self, OpenedContent};
use crate::vault::{Vault, VaultError};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Records as received (HL7v2, FHIR).
    pub records: u64,
    /// Records derived from them (FHIR Bundles normalization made); each has its own leaf.
    pub derived: u64,
    /// Events about patients' data (consents granted and revoked, reads, erasures); each has
    /// its own leaf.
    pub events: u64,
    /// Records and events whose data key was destroyed (an erasure): their content cannot be
    /// opened any more, on purpose; their commitments are still checked against the log.
    pub erased: u64,
    pub leaves: u64,
    pub checkpoints: u64,
    pub quarantined: u64,
    /// Quarantine entries kept under a patient's key that was since destroyed.
    pub quarantined_erased: u64,
    pub ok: bool,
    pub failures: Vec<String>,
    /// What the verifier saw that is not damage (a crash's unindexed entries, key files from
    /// before check lines, a repaired copy read instead of a file not closed cleanly).
    pub notes: Vec<String>,
}

const MAX_REPORTED: usize = 100;

impl Report {
    fn fail(&mut self, what: String) {
        if self.failures.len() < MAX_REPORTED {
            self.failures.push(what);
        }
        self.ok = false;
    }
}

/// Re-hashes every record, checks every index against what it points to, every leaf against its
/// record and every checkpoint's signature, root and consistency with the one before. `progress`
/// is told each step.
pub fn verify_all(stores: &Stores, progress: &dyn Fn(u64, u64)) -> Report {
    let mut report = Report {
        ok: true,
        ..Default::default()
    };
    let mut failures = Vec::new();
    let headers = stores
        .vault
        .check_index(&mut |f| failures.push(f))
        .unwrap_or_else(|e| {
            failures.push(format!("vault index: {e}"));
            Default::default()
        });
    if let Err(e) = stores
        .ledger
        .check_against_leaves(&mut |f| failures.push(f))
    {
        failures.push(format!("ledger: {e}"));
    }
    for f in failures {
        report.fail(f);
    }
    // Leaves first: record id → (index, commitment in the leaf, raw record a derived leaf
    // names). parse_leaf admits only the two kinds and their lengths.
    type InLog = (
        u64,
        [u8; 32],
        Option<(RecordId, [u8; 32])>,
        Option<crate::ledger::EventKind>,
    );
    let mut by_record: HashMap<RecordId, InLog> = HashMap::new();
    let leaves = stores.ledger.for_each_leaf(&mut |leaf| {
        report.leaves += 1;
        let c: [u8; 32] = leaf.commitment().try_into().expect("32-byte commitment");
        let raw = leaf
            .derived_from
            .map(|id| (id, leaf.entry[33..65].try_into().expect("65-byte entry")));
        if by_record
            .insert(leaf.record_id, (leaf.index, c, raw, leaf.event()))
            .is_some()
        {
            report.fail(format!(
                "leaf {}: record {} is in the log twice",
                leaf.index, leaf.record_id
            ));
        }
        Ok(())
    });
    if let Err(e) = leaves {
        report.fail(format!("ledger: {e}"));
    }
    // A derived leaf names a raw record: its leaf must be a record leaf earlier in the log with
    // the commitment the derived leaf binds.
    for (id, (index, _, raw, _)) in &by_record {
        let Some((raw_id, raw_commitment)) = raw else {
            continue;
        };
        match by_record.get(raw_id) {
            Some((raw_index, c, None, None)) if raw_index < index && c == raw_commitment => {}
            _ => report.fail(format!(
                "leaf {index}: derived record {id} names record {raw_id}, which is not a record leaf before it with that commitment"
            )),
        }
    }
    let total = stores.vault.record_count().unwrap_or(0) + report.leaves;
    let mut done = 0u64;
    let mut seen: HashSet<RecordId> = HashSet::with_capacity(by_record.len());
    let records = stores.vault.for_each_record(&mut |id, rec| {
        done += 1;
        if done.is_multiple_of(256) {
            progress(done, total);
        }
        seen.insert(id);
        let rec = match rec {
            Ok(rec) => rec,
            Err(e) => {
                report.fail(format!("record {id}: {e}"));
                return Ok(());
            }
        };
        // A destroyed key (an erasure) is not damage: the content is gone on purpose.
        let mut erased = false;
        let opened = seal::parse_header(&rec.sealed)
            .map_err(|e| e.to_string())
            .and_then(|h| {
                stores.keyring.get(h.key_id).map_err(|e| {
                    erased = matches!(e, seal::KeyringError::Erased(..));
                    e.to_string()
                })
            })
            .and_then(|key| seal::open_content(&rec.sealed, id, &key).map_err(|e| e.to_string()));
        let header = headers.get(&id);
        let in_log = by_record.get(&id);
        let leaf_event = in_log.and_then(|(_, _, _, e)| *e);
        match &opened {
            Ok(OpenedContent {
                content: Content::Derived(_),
                ..
            }) => report.derived += 1,
            Ok(OpenedContent {
                content: Content::Event(_),
                ..
            }) => report.events += 1,
            Err(_) if erased => report.erased += 1,
            _ => report.records += 1,
        }
        match opened {
            Err(e) if !erased => report.fail(format!("record {id}: {e}")),
            Ok(o) if o.commitment != rec.commitment => report.fail(format!(
                "record {id}: stored commitment does not match the re-hashed record"
            )),
            Ok(OpenedContent {
                content: Content::Record(record),
                ..
            }) if !keys_match(stores, &record, header, &rec.sealed) || leaf_event.is_some() => {
                report.fail(format!(
                    "record {id}: its dedup/control keys or data key id do not follow from the \
                     record under keys/index.key (the entry header or index.key was altered), \
                     or its leaf is an event's"
                ))
            }
            Ok(OpenedContent {
                content: Content::Derived(d),
                ..
            }) if header.and_then(|h| h.derived_from()) != Some((d.raw_id, d.raw_commitment))
                || in_log.is_some_and(|(_, _, raw, event)| {
                    *raw != Some((d.raw_id, d.raw_commitment)) || event.is_some()
                }) =>
            {
                report.fail(format!(
                    "record {id}: derived from record {} by its content, which its segment entry \
                     or its leaf does not say",
                    d.raw_id
                ))
            }
            Ok(OpenedContent {
                content: Content::Event(e),
                ..
            }) if header.and_then(|h| h.event())
                != seal::keyring::PatientIndex::from_key_id(&e.patient).map(|p| (e.kind, p))
                || in_log.is_some_and(|(_, _, _, event)| *event != Some(e.kind)) =>
            {
                report.fail(format!(
                    "event {id}: a {} about its patient by its content, which its segment entry \
                     or its leaf does not say",
                    e.kind.name()
                ))
            }
            // Opened and consistent, or erased: its commitment must be the one in the log.
            Ok(_) | Err(_) => match in_log {
                None => report.fail(format!(
                    "record {id}: not in the log (start the gateway once to anchor it)"
                )),
                Some((index, c, _, _)) if *c != rec.commitment => report.fail(format!(
                    "leaf {index}: commitment does not match record {id}"
                )),
                Some(_) => {}
            },
        }
        Ok::<(), VaultError>(())
    });
    if let Err(e) = records {
        report.fail(format!("vault: {e}"));
    }
    for (id, (index, _, _, _)) in &by_record {
        if !seen.contains(id) {
            report.fail(format!("leaf {index}: record {id} is not in the vault"));
        }
    }

    if let Err(e) = check_quarantine(stores, &mut report) {
        report.fail(format!("vault quarantine: {e}"));
    }

    let verifier = stores.ledger.verifier();
    let checkpoints = match stores.ledger.checkpoints() {
        Ok(c) => c,
        Err(e) => {
            report.fail(format!("ledger checkpoints: {e}"));
            Vec::new()
        }
    };
    let mut previous: Option<SignedCheckpoint> = None;
    stores.ledger.with_tree(|tree, tiles| {
        for (size, text) in &checkpoints {
            report.checkpoints += 1;
            done += 1;
            let cp = match SignedCheckpoint::verify(text, &verifier) {
                Ok(cp) => cp,
                Err(e) => {
                    report.fail(format!("checkpoint {size}: {e}"));
                    continue;
                }
            };
            let c = &cp.checkpoint;
            if c.size != *size {
                report.fail(format!(
                    "checkpoint {size}: signed size {} differs from its index",
                    c.size
                ));
                continue;
            }
            match tree.root(c.size, tiles) {
                Ok(root) if root == c.root => {}
                Ok(_) => report.fail(format!(
                    "checkpoint {size}: root does not match the stored leaves"
                )),
                Err(e) => report.fail(format!("checkpoint {size}: {e}")),
            }
            if let Some(prev) = &previous {
                let p = &prev.checkpoint;
                if c.timestamp_ms < p.timestamp_ms {
                    report.fail(format!(
                        "checkpoint {size}: timestamp earlier than checkpoint {}",
                        p.size
                    ));
                }
                // Checked with the reference SHA3-256 (`medanchor-merkle`'s), not the hasher the
                // tree was written with: a wrong hash in the writer then fails here instead of
                // agreeing with itself.
                let proof = tree.consistency_proof(p.size, c.size, tiles);
                let consistent = proof.map_err(|e| e.to_string()).and_then(|path| {
                    verify_consistency(&Sha3Hasher, p.size, c.size, &p.root, &c.root, &path)
                        .map_err(|e| e.to_string())
                });
                if let Err(e) = consistent {
                    report.fail(format!(
                        "checkpoint {size}: not consistent with checkpoint {}: {e}",
                        p.size
                    ));
                }
            }
            previous = Some(cp);
        }
        if let Some(last) = &previous {
            if last.checkpoint.size != tree.size() {
                report.fail(format!(
                    "log: {} leaves but the latest checkpoint covers {}",
                    tree.size(),
                    last.checkpoint.size
                ));
            }
        } else if tree.size() > 0 {
            report.fail("log: leaves but no checkpoint".into());
        }
    });
    progress(total, total);
    report
}

/// Whether the keys stored with a record follow from it: the dedup and control keys in its
/// segment entry, and the data key id in its sealed header.
fn keys_match(
    stores: &Stores,
    record: &crate::record::Record,
    header: Option<&crate::vault::segments::EntryHeader>,
    sealed: &[u8],
) -> bool {
    let (dedup, control) = stores.keyring.dedup_keys(record);
    let key_id = stores.keyring.key_id_for(record.patient_key_identity());
    let sealed_key = seal::parse_header(sealed).map(|h| h.key_id == key_id);
    header.is_some_and(|h| h.dedup_key == dedup && h.control_key == control)
        && sealed_key.unwrap_or(false)
}

/// Every quarantine entry's metadata parses and its kept input opens under its key (the
/// patient's, when the input named one, else the gateway's); an erased patient's is counted as
/// erased.
fn check_quarantine(stores: &Stores, report: &mut Report) -> Result<(), VaultError> {
    for entry in stores.vault.quarantine_list()? {
        report.quarantined += 1;
        let Some(id) = RecordId::parse(&entry.id) else {
            report.fail(format!(
                "quarantine entry {}: id is not a record id",
                entry.id
            ));
            continue;
        };
        let Some((_, sealed)) = stores.vault.quarantine_get(&entry.id)? else {
            report.fail(format!("quarantine entry {}: entry vanished", entry.id));
            continue;
        };
        let key = match seal::parse_header(&sealed).map(|h| stores.keyring.get(h.key_id)) {
            Ok(Ok(k)) => k,
            Ok(Err(seal::KeyringError::Erased(..))) => {
                report.quarantined_erased += 1;
                continue;
            }
            Ok(Err(e)) => {
                report.fail(format!("quarantine entry {}: {e}", entry.id));
                continue;
            }
            Err(e) => {
                report.fail(format!("quarantine entry {}: {e}", entry.id));
                continue;
            }
        };
        if let Err(e) = seal::open(&sealed, id, &key) {
            report.fail(format!("quarantine entry {}: {e}", entry.id));
        }
    }
    Ok(())
}
