//! Embedded vault on redb (`<data_dir>/vault.redb`).
//!
//! Tables: `records` (record id → commitment[32] || sealed bytes), `dedup` (dedup key → record
//! id), `control_ids` (control key → ()), `unanchored` (record id → commitment), `quarantine`
//! (id → u32 metadata length || metadata JSON || sealed input).

use std::path::Path;

use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{PutRecord, PutResult, QuarantineEntry, StoredRecord, Vault, VaultError};
use crate::envelope::RecordId;
use crate::seal::Sealed;

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const DEDUP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dedup");
const CONTROL_IDS: TableDefinition<&[u8], ()> = TableDefinition::new("control_ids");
const UNANCHORED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("unanchored");
const QUARANTINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("quarantine");

fn err(e: impl std::fmt::Display) -> VaultError {
    VaultError::Storage(e.to_string())
}

pub struct EmbeddedVault {
    db: redb::Database,
}

fn record_id(bytes: &[u8]) -> Result<RecordId, VaultError> {
    Ok(RecordId(
        bytes
            .try_into()
            .map_err(|_| VaultError::Corrupt(hex::encode(bytes)))?,
    ))
}

fn split_record(id: RecordId, v: &[u8]) -> Result<StoredRecord, VaultError> {
    if v.len() < 32 {
        return Err(VaultError::Corrupt(id.to_string()));
    }
    Ok(StoredRecord {
        record_id: id,
        commitment: v[..32].try_into().expect("32"),
        sealed: v[32..].to_vec(),
    })
}

impl EmbeddedVault {
    pub fn open(path: &Path, cache_bytes: usize, create: bool) -> Result<Self, VaultError> {
        let mut b = redb::Builder::new();
        b.set_cache_size(cache_bytes);
        let db = if create { b.create(path) } else { b.open(path) }.map_err(err)?;
        let w = db.begin_write().map_err(err)?;
        w.open_table(RECORDS).map_err(err)?;
        w.open_table(DEDUP).map_err(err)?;
        w.open_table(CONTROL_IDS).map_err(err)?;
        w.open_table(UNANCHORED).map_err(err)?;
        w.open_table(QUARANTINE).map_err(err)?;
        w.commit().map_err(err)?;
        Ok(EmbeddedVault { db })
    }
}

impl Vault for EmbeddedVault {
    fn commit(
        &self,
        puts: &[PutRecord],
        quarantine: &[(QuarantineEntry, Sealed)],
    ) -> Result<Vec<PutResult>, VaultError> {
        let mut w = self.db.begin_write().map_err(err)?;
        w.set_durability(Durability::Immediate).map_err(err)?;
        let mut results = Vec::with_capacity(puts.len());
        {
            let mut records = w.open_table(RECORDS).map_err(err)?;
            let mut dedup = w.open_table(DEDUP).map_err(err)?;
            let mut controls = w.open_table(CONTROL_IDS).map_err(err)?;
            let mut unanchored = w.open_table(UNANCHORED).map_err(err)?;
            let mut value = Vec::new();
            for p in puts {
                if let Some(first) = dedup.get(p.dedup_key.as_slice()).map_err(err)? {
                    let id = record_id(first.value())?;
                    let stored = records
                        .get(id.0.as_slice())
                        .map_err(err)?
                        .ok_or_else(|| VaultError::Corrupt(id.to_string()))?;
                    let rec = split_record(id, stored.value())?;
                    results.push(PutResult::Duplicate {
                        record_id: id,
                        commitment: rec.commitment,
                    });
                    continue;
                }
                let conflict = controls
                    .insert(p.control_key.as_slice(), ())
                    .map_err(err)?
                    .is_some();
                let id = p.sealed.record_id.0;
                value.clear();
                value.extend_from_slice(&p.sealed.commitment);
                value.extend_from_slice(&p.sealed.bytes);
                records
                    .insert(id.as_slice(), value.as_slice())
                    .map_err(err)?;
                dedup
                    .insert(p.dedup_key.as_slice(), id.as_slice())
                    .map_err(err)?;
                unanchored
                    .insert(id.as_slice(), p.sealed.commitment.as_slice())
                    .map_err(err)?;
                results.push(if conflict {
                    PutResult::StoredConflict
                } else {
                    PutResult::Stored
                });
            }
            let mut q = w.open_table(QUARANTINE).map_err(err)?;
            for (entry, sealed) in quarantine {
                let meta = serde_json::to_vec(entry).map_err(err)?;
                value.clear();
                value.extend_from_slice(&(meta.len() as u32).to_be_bytes());
                value.extend_from_slice(&meta);
                value.extend_from_slice(&sealed.bytes);
                q.insert(sealed.record_id.0.as_slice(), value.as_slice())
                    .map_err(err)?;
            }
        }
        w.commit().map_err(err)?;
        Ok(results)
    }

    fn get(&self, id: &RecordId) -> Result<Option<StoredRecord>, VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(RECORDS).map_err(err)?;
        t.get(id.0.as_slice())
            .map_err(err)?
            .map(|v| split_record(*id, v.value()))
            .transpose()
    }

    fn for_each_record(
        &self,
        f: &mut dyn FnMut(StoredRecord) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(RECORDS).map_err(err)?;
        for e in t.iter().map_err(err)? {
            let (k, v) = e.map_err(err)?;
            f(split_record(record_id(k.value())?, v.value())?)?;
        }
        Ok(())
    }

    fn record_count(&self) -> Result<u64, VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        r.open_table(RECORDS).map_err(err)?.len().map_err(err)
    }

    fn unanchored(&self) -> Result<Vec<(RecordId, [u8; 32])>, VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(UNANCHORED).map_err(err)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(err)? {
            let (k, v) = e.map_err(err)?;
            let id = record_id(k.value())?;
            let c: [u8; 32] = v
                .value()
                .try_into()
                .map_err(|_| VaultError::Corrupt(id.to_string()))?;
            out.push((id, c));
        }
        Ok(out)
    }

    fn mark_anchored(&self, ids: &[RecordId]) -> Result<(), VaultError> {
        // Losing this on a crash only means the ids are offered to the ledger again, which skips
        // ids it already holds; so no fsync is needed here.
        let mut w = self.db.begin_write().map_err(err)?;
        w.set_durability(Durability::None).map_err(err)?;
        {
            let mut t = w.open_table(UNANCHORED).map_err(err)?;
            for id in ids {
                t.remove(id.0.as_slice()).map_err(err)?;
            }
        }
        w.commit().map_err(err)
    }

    fn quarantine_list(&self) -> Result<Vec<QuarantineEntry>, VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(QUARANTINE).map_err(err)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(err)? {
            let (k, v) = e.map_err(err)?;
            out.push(parse_quarantine(k.value(), v.value())?.0);
        }
        Ok(out)
    }

    fn quarantine_get(&self, id: &str) -> Result<Option<(QuarantineEntry, Vec<u8>)>, VaultError> {
        let Some(key) = RecordId::parse(id) else {
            return Ok(None);
        };
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(QUARANTINE).map_err(err)?;
        t.get(key.0.as_slice())
            .map_err(err)?
            .map(|v| parse_quarantine(&key.0, v.value()))
            .transpose()
    }
}

fn parse_quarantine(k: &[u8], v: &[u8]) -> Result<(QuarantineEntry, Vec<u8>), VaultError> {
    let bad = || VaultError::Corrupt(hex::encode(k));
    let n = u32::from_be_bytes(v.get(..4).ok_or_else(bad)?.try_into().expect("4")) as usize;
    let meta = v.get(4..4 + n).ok_or_else(bad)?;
    let entry: QuarantineEntry = serde_json::from_slice(meta).map_err(|_| bad())?;
    Ok((entry, v[4 + n..].to_vec()))
}
