//! Re-mapping stored records after an adapter change (`medanchor mapping replay`): each raw
//! HL7v2 record chosen is decrypted, mapped with the mapping set in use, and its new derived
//! record sealed under the same patient key, stored (append-only: earlier derived records stay,
//! the newest is current) and anchored. A failure is recorded for `medanchor mapping failures`.
//! For a stopped gateway: the data directory is locked while it runs.

use crate::config::NormalizeConfig;
use crate::envelope::{now_ms, RecordId};
use crate::ledger::{Leaf, Ledger};
use crate::normalize::Normalizer;
use crate::pipeline::{derive_record, failure, Stores};
use crate::record::Content;
use crate::seal;
use crate::vault::{Derivation, Rederive, Vault, VaultError};

/// Which stored records to map again.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records received at or after this Unix time (ms).
    pub since_ms: Option<u64>,
    /// Only this message type (MSH-9.1), e.g. `ADT`.
    pub message_type: Option<String>,
    /// Only records whose last mapping failed.
    pub only_failed: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Raw HL7v2 records the filter chose.
    pub chosen: u64,
    pub mapped: u64,
    pub failed: u64,
    /// Records that could not be read (each named in `problems`).
    pub unreadable: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RemapError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
}

/// Records mapped again per vault commit and log append.
const BATCH: usize = 256;

/// Maps the chosen records again and stores and anchors what it made.
pub fn remap(
    stores: &Stores,
    normalizer: &Normalizer,
    cfg: &NormalizeConfig,
    filter: &Filter,
    compress: seal::Compress,
    progress: &mut dyn FnMut(&Report),
) -> Result<Report, RemapError> {
    let failed: std::collections::HashSet<RecordId> = if filter.only_failed {
        stores
            .vault
            .mapping_failures()?
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    } else {
        Default::default()
    };
    // Ids first: the records are read again one batch at a time while their derivations are
    // written.
    let mut ids = Vec::new();
    stores.vault.for_each_record(&mut |id, _| {
        if filter.since_ms.is_none_or(|t| id.unix_ms() >= t)
            && (!filter.only_failed || failed.contains(&id))
        {
            ids.push(id);
        }
        Ok(())
    })?;
    let mut report = Report::default();
    for chunk in ids.chunks(BATCH) {
        let mut items = Vec::with_capacity(chunk.len());
        for id in chunk {
            match remap_one(stores, normalizer, cfg, filter, compress, id) {
                Ok(None) => {}
                Ok(Some(item)) => {
                    report.chosen += 1;
                    match &item.derived {
                        Derivation::Mapped(_) => report.mapped += 1,
                        _ => report.failed += 1,
                    }
                    items.push(item);
                }
                Err(e) => {
                    report.unreadable += 1;
                    report.problems.push(format!("record {id}: {e}"));
                }
            }
        }
        let positions = stores.vault.commit_derivations(&items)?;
        let leaves: Vec<Leaf> = items
            .iter()
            .zip(&positions)
            .filter_map(|(item, at)| match (&item.derived, at) {
                (Derivation::Mapped(d), Some(_)) => Some(Leaf {
                    record_id: d.record_id,
                    commitment: d.commitment,
                    derived_from: Some((item.raw_id, item.raw_commitment)),
                    event: None,
                }),
                _ => None,
            })
            .collect();
        // Without the watermark: records a crash left unanchored before these are offered again
        // at the next start (the log skips what it holds).
        stores.ledger.append_records(&leaves, now_ms())?;
        progress(&report);
    }
    Ok(report)
}

/// The new derivation of one record, or `None` when the filter does not choose it (a derived
/// record, FHIR input, quarantine, another message type).
fn remap_one(
    stores: &Stores,
    normalizer: &Normalizer,
    cfg: &NormalizeConfig,
    filter: &Filter,
    compress: seal::Compress,
    id: &RecordId,
) -> Result<Option<Rederive>, String> {
    let stored = stores
        .vault
        .get(id)
        .map_err(|e| e.to_string())?
        .ok_or("vanished from the vault")?;
    let header = seal::parse_header(&stored.sealed).map_err(|e| e.to_string())?;
    let key = stores
        .keyring
        .get(header.key_id)
        .map_err(|e| e.to_string())?;
    let opened = seal::open_content(&stored.sealed, *id, &key).map_err(|e| e.to_string())?;
    let Content::Record(record) = opened.content else {
        return Ok(None);
    };
    if record.meta.format != "hl7v2"
        || filter
            .message_type
            .as_deref()
            .is_some_and(|t| t != record.meta.message_type)
    {
        return Ok(None);
    }
    let mapped_ms = now_ms();
    let raw = (*id, stored.commitment);
    let derived = match derive_record(normalizer, cfg, &record.raw, raw, mapped_ms) {
        Ok((d, _)) => {
            let sealed =
                seal::seal_derived_many(&[(&d, RecordId::generate(mapped_ms), &key)], compress)
                    .pop()
                    .expect("one result per record");
            match sealed {
                Ok(s) => Derivation::Mapped(s),
                Err(e) => {
                    Derivation::Failed(failure(normalizer, "too_large", e.to_string(), mapped_ms))
                }
            }
        }
        Err(e) => Derivation::Failed(failure(normalizer, e.label, e.detail, mapped_ms)),
    };
    Ok(Some(Rederive {
        raw_id: *id,
        raw_commitment: stored.commitment,
        derived,
    }))
}
