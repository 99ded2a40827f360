//! Embedded vault: an index on redb (`<data_dir>/vault.redb`) and the sealed bytes in segment
//! files (`<data_dir>/segments/`, see [`super::segments`]).
//!
//! Tables: `records` (record id → commitment[32] ‖ segment u32 ‖ offset u64 ‖ length u32),
//! `controls` (control key → one or more dedup key[32] ‖ record id[16]), `quarantine` (id → u32
//! metadata length ‖ metadata JSON ‖ sealed input), `meta` (`format` → u32 BE, `segment_tail` →
//! segment u32 ‖ length u64, `anchored_through` → position u64).
//!
//! Per record a commit writes one row keyed by time (`records`, an append at the B-tree's end)
//! and one keyed by hash (`controls`); the records awaiting the log are not listed anywhere but
//! found by scanning the segments after the `anchored_through` watermark.

use std::collections::HashMap;
use std::path::Path;

use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::segments::{Location, SegmentLog, Staged, Tail, ENTRY_HEADER};
use super::{Position, PutRecord, PutResult, QuarantineEntry, StoredRecord, Vault, VaultError};
use crate::envelope::RecordId;
use crate::seal::Sealed;

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const CONTROLS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("controls");
const QUARANTINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("quarantine");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Layout version of the index; 3 = sealed bytes in segment files, dedup under the control key.
const FORMAT: u32 = 3;
const SEGMENT_TAIL: &str = "segment_tail";
const ANCHORED_THROUGH: &str = "anchored_through";
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
/// One record under a control key: dedup key ‖ record id.
const CONTROL_ENTRY: usize = 32 + 16;

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
            w.open_table(CONTROLS).map_err(err)?;
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
            .read(&id, &commitment, at)
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
            let mut controls = w.open_table(CONTROLS).map_err(err)?;
            let mut staged = Staged::default();
            // Records new in this batch: a duplicate of one of them finds its commitment here,
            // as its index row is written only after the segment append.
            let mut fresh: HashMap<RecordId, [u8; 32]> = HashMap::new();
            let mut placed = Vec::with_capacity(puts.len());
            let mut entries = Vec::new();
            for p in puts {
                entries.clear();
                if let Some(v) = controls.get(p.control_key.as_slice()).map_err(err)? {
                    entries.extend_from_slice(v.value());
                }
                if entries.len() % CONTROL_ENTRY != 0 {
                    return Err(VaultError::Corrupt(hex::encode(p.control_key)));
                }
                let first = entries
                    .chunks_exact(CONTROL_ENTRY)
                    .find(|e| e[..32] == p.dedup_key);
                if let Some(e) = first {
                    let id = record_id(&e[32..])?;
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
                let conflict = !entries.is_empty();
                let s = &p.sealed;
                let id = s.record_id;
                entries.extend_from_slice(&p.dedup_key);
                entries.extend_from_slice(&id.0);
                controls
                    .insert(p.control_key.as_slice(), entries.as_slice())
                    .map_err(err)?;
                fresh.insert(id, s.commitment);
                let (offset, len) = SegmentLog::stage(&mut staged, &id, &s.commitment, &s.bytes);
                placed.push((id, s.commitment, offset, len, results.len()));
                // The position is filled in once the append says where the batch went.
                results.push(if conflict {
                    PutResult::StoredConflict { position: 0 }
                } else {
                    PutResult::Stored { position: 0 }
                });
            }
            if !placed.is_empty() {
                // Durable in the segment before the index that points at it commits.
                let (segment, base, new_tail) = self
                    .segments
                    .append(&staged)
                    .map_err(|e| VaultError::Storage(e.to_string()))?;
                for (id, commitment, offset, len, slot) in placed {
                    let at = Location {
                        segment,
                        offset: base + offset,
                        len,
                    };
                    records
                        .insert(id.0.as_slice(), record_row(&commitment, at).as_slice())
                        .map_err(err)?;
                    let end = Tail {
                        segment,
                        len: at.offset + (ENTRY_HEADER as u64) + u64::from(len),
                    };
                    match &mut results[slot] {
                        PutResult::Stored { position } | PutResult::StoredConflict { position } => {
                            *position = end.position()
                        }
                        PutResult::Duplicate { .. } => unreachable!("slot of a stored record"),
                    }
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

    fn unanchored(&self) -> Result<Vec<(RecordId, [u8; 32], Position)>, VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        let meta = r.open_table(META).map_err(err)?;
        let tail = match meta.get(SEGMENT_TAIL).map_err(err)? {
            Some(v) => Tail::from_bytes(v.value())
                .ok_or_else(|| VaultError::Corrupt(SEGMENT_TAIL.into()))?,
            None => return Ok(Vec::new()),
        };
        let from = match meta.get(ANCHORED_THROUGH).map_err(err)? {
            Some(v) => Tail::from_position(u64::from_be_bytes(
                v.value()
                    .try_into()
                    .map_err(|_| VaultError::Corrupt(ANCHORED_THROUGH.into()))?,
            )),
            None => Tail::default(),
        };
        let mut out = Vec::new();
        self.segments
            .scan(from, tail, &mut |id, commitment, end| {
                out.push((id, commitment, end.position()))
            })
            .map_err(|e| VaultError::Corrupt(e.to_string()))?;
        Ok(out)
    }

    fn mark_anchored(&self, through: Position) -> Result<(), VaultError> {
        // Losing this on a crash only means records are offered to the ledger again, which skips
        // the ones it holds; so no fsync is needed here.
        let mut w = self.db.begin_write().map_err(err)?;
        w.set_durability(Durability::None).map_err(err)?;
        {
            let mut meta = w.open_table(META).map_err(err)?;
            let current = meta
                .get(ANCHORED_THROUGH)
                .map_err(err)?
                .and_then(|v| v.value().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0);
            if through > current {
                meta.insert(ANCHORED_THROUGH, through.to_be_bytes().as_slice())
                    .map_err(err)?;
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
