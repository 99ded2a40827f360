//! Embedded vault: an index on redb (`<data_dir>/vault.redb`) and the sealed bytes in segment
//! files (`<data_dir>/segments/`, see [`super::segments`]).
//!
//! Tables: `records` (record id → commitment[32] ‖ segment u32 ‖ offset u64 ‖ length u32),
//! `dedup` (dedup key → record id), `control_ids` (control key → ()), `unanchored` (record id →
//! commitment), `quarantine` (id → u32 metadata length ‖ metadata JSON ‖ sealed input), `meta`
//! (`format` → u32, `segment_tail` → segment u32 ‖ length u64).

use std::collections::HashMap;
use std::path::Path;

use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::segments::{Location, SegmentLog, Staged, Tail};
use super::{PutRecord, PutResult, QuarantineEntry, StoredRecord, Vault, VaultError};
use crate::envelope::RecordId;
use crate::seal::Sealed;

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const DEDUP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dedup");
const CONTROL_IDS: TableDefinition<&[u8], ()> = TableDefinition::new("control_ids");
const UNANCHORED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("unanchored");
const QUARANTINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("quarantine");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Layout version of the index; 2 = sealed bytes in segment files.
const FORMAT: u32 = 2;
const SEGMENT_TAIL: &str = "segment_tail";
/// A new segment file starts once the current one would pass this size.
const MAX_SEGMENT_BYTES: u64 = 256 << 20;

fn err(e: impl std::fmt::Display) -> VaultError {
    VaultError::Storage(e.to_string())
}

pub struct EmbeddedVault {
    db: redb::Database,
    segments: SegmentLog,
}

fn record_id(bytes: &[u8]) -> Result<RecordId, VaultError> {
    Ok(RecordId(
        bytes
            .try_into()
            .map_err(|_| VaultError::Corrupt(hex::encode(bytes)))?,
    ))
}

const ROW: usize = 32 + 4 + 8 + 4;

fn record_row(commitment: &[u8; 32], at: Location) -> [u8; ROW] {
    let mut row = [0u8; ROW];
    row[..32].copy_from_slice(commitment);
    row[32..36].copy_from_slice(&at.segment.to_be_bytes());
    row[36..44].copy_from_slice(&at.offset.to_be_bytes());
    row[44..].copy_from_slice(&at.len.to_be_bytes());
    row
}

fn parse_row(id: RecordId, v: &[u8]) -> Result<([u8; 32], Location), VaultError> {
    let v: &[u8; ROW] = v
        .try_into()
        .map_err(|_| VaultError::Corrupt(id.to_string()))?;
    let (commitment, at) = v.split_at(32);
    Ok((
        commitment.try_into().expect("32"),
        Location {
            segment: u32::from_be_bytes(at[..4].try_into().expect("4")),
            offset: u64::from_be_bytes(at[4..12].try_into().expect("8")),
            len: u32::from_be_bytes(at[12..].try_into().expect("4")),
        },
    ))
}

impl EmbeddedVault {
    /// Opens (or with `create`, creates) the index at `path` and the segments in `segments`.
    pub fn open(
        path: &Path,
        segments: &Path,
        cache_bytes: usize,
        create: bool,
    ) -> Result<Self, VaultError> {
        let mut b = redb::Builder::new();
        b.set_cache_size(cache_bytes);
        let db = if create { b.create(path) } else { b.open(path) }.map_err(err)?;
        let w = db.begin_write().map_err(err)?;
        let tail = {
            let records = w.open_table(RECORDS).map_err(err)?;
            w.open_table(DEDUP).map_err(err)?;
            w.open_table(CONTROL_IDS).map_err(err)?;
            w.open_table(UNANCHORED).map_err(err)?;
            w.open_table(QUARANTINE).map_err(err)?;
            let mut meta = w.open_table(META).map_err(err)?;
            let format = meta.get("format").map_err(err)?.map(|v| v.value().to_vec());
            match format {
                Some(v) if v == FORMAT.to_be_bytes() => {}
                Some(v) => {
                    return Err(VaultError::Storage(format!(
                        "vault format {} is not supported by this build (expects {FORMAT})",
                        hex::encode(v)
                    )))
                }
                None if records.is_empty().map_err(err)? => {
                    meta.insert("format", FORMAT.to_be_bytes().as_slice())
                        .map_err(err)?;
                }
                None => {
                    return Err(VaultError::Storage(
                        "vault.redb was written by a development build that kept sealed bytes \
                         inside it; this build cannot read it"
                            .into(),
                    ))
                }
            }
            let tail = match meta.get(SEGMENT_TAIL).map_err(err)? {
                Some(v) => Tail::from_bytes(v.value())
                    .ok_or_else(|| VaultError::Corrupt(SEGMENT_TAIL.into()))?,
                None => Tail::default(),
            };
            tail
        };
        w.commit().map_err(err)?;
        let segments = SegmentLog::open(segments, tail, MAX_SEGMENT_BYTES, create)
            .map_err(|e| VaultError::Storage(e.to_string()))?;
        Ok(EmbeddedVault { db, segments })
    }

    fn read(&self, id: RecordId, row: &[u8]) -> Result<StoredRecord, VaultError> {
        let (commitment, at) = parse_row(id, row)?;
        let sealed = self
            .segments
            .read(&id, at)
            .map_err(|e| VaultError::Corrupt(format!("{id}: {e}")))?;
        Ok(StoredRecord {
            record_id: id,
            commitment,
            sealed,
        })
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
        let mut tail = None;
        {
            let mut records = w.open_table(RECORDS).map_err(err)?;
            let mut dedup = w.open_table(DEDUP).map_err(err)?;
            let mut controls = w.open_table(CONTROL_IDS).map_err(err)?;
            let mut unanchored = w.open_table(UNANCHORED).map_err(err)?;
            let mut staged = Staged::default();
            // Records new in this batch: a duplicate of one of them finds its commitment here,
            // as its index row is written only after the segment append.
            let mut fresh: HashMap<RecordId, [u8; 32]> = HashMap::new();
            let mut placed = Vec::with_capacity(puts.len());
            for p in puts {
                if let Some(first) = dedup.get(p.dedup_key.as_slice()).map_err(err)? {
                    let id = record_id(first.value())?;
                    let commitment = match fresh.get(&id) {
                        Some(c) => *c,
                        None => {
                            let row = records
                                .get(id.0.as_slice())
                                .map_err(err)?
                                .ok_or_else(|| VaultError::Corrupt(id.to_string()))?;
                            parse_row(id, row.value())?.0
                        }
                    };
                    results.push(PutResult::Duplicate {
                        record_id: id,
                        commitment,
                    });
                    continue;
                }
                let conflict = controls
                    .insert(p.control_key.as_slice(), ())
                    .map_err(err)?
                    .is_some();
                let s = &p.sealed;
                let id = s.record_id;
                dedup
                    .insert(p.dedup_key.as_slice(), id.0.as_slice())
                    .map_err(err)?;
                unanchored
                    .insert(id.0.as_slice(), s.commitment.as_slice())
                    .map_err(err)?;
                fresh.insert(id, s.commitment);
                placed.push((
                    id,
                    s.commitment,
                    SegmentLog::stage(&mut staged, &id, &s.bytes),
                ));
                results.push(if conflict {
                    PutResult::StoredConflict
                } else {
                    PutResult::Stored
                });
            }
            if !placed.is_empty() {
                // Durable in the segment before the index that points at it commits.
                let (segment, base, new_tail) = self
                    .segments
                    .append(&staged)
                    .map_err(|e| VaultError::Storage(e.to_string()))?;
                for (id, commitment, (offset, len)) in placed {
                    let at = Location {
                        segment,
                        offset: base + offset,
                        len,
                    };
                    records
                        .insert(id.0.as_slice(), record_row(&commitment, at).as_slice())
                        .map_err(err)?;
                }
                w.open_table(META)
                    .map_err(err)?
                    .insert(SEGMENT_TAIL, new_tail.to_bytes().as_slice())
                    .map_err(err)?;
                tail = Some(new_tail);
            }
            let mut q = w.open_table(QUARANTINE).map_err(err)?;
            let mut value = Vec::new();
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
        if let Some(tail) = tail {
            self.segments.committed(tail);
        }
        Ok(results)
    }

    fn get(&self, id: &RecordId) -> Result<Option<StoredRecord>, VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(RECORDS).map_err(err)?;
        t.get(id.0.as_slice())
            .map_err(err)?
            .map(|v| self.read(*id, v.value()))
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
            f(self.read(record_id(k.value())?, v.value())?)?;
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
