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
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::segments::{EntryHeader, Location, SegmentLog, Staged, Tail};
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
    /// When an index commit was last made durable.
    last_sync: Mutex<Instant>,
    /// The segment bytes of the commit being made (commits are serialised by redb's write lock).
    staged: Mutex<Staged>,
}

/// How often the index is made durable: it bounds what a restart after a crash re-indexes
/// from the segments (about this many seconds of records).
const INDEX_SYNC_INTERVAL: Duration = Duration::from_secs(5);

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

type Controls<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

/// The (dedup key ‖ record id) entries stored under a control key, into `entries`.
fn read_controls(
    controls: &Controls<'_>,
    key: &[u8; 32],
    entries: &mut Vec<u8>,
) -> Result<(), VaultError> {
    entries.clear();
    if let Some(v) = controls.get(key.as_slice()).map_err(err)? {
        entries.extend_from_slice(v.value());
    }
    Ok(())
}

/// Adds a record to the `entries` read for its control key and stores them.
fn add_control(
    controls: &mut Controls<'_>,
    h: &EntryHeader,
    entries: &mut Vec<u8>,
) -> Result<(), VaultError> {
    entries.extend_from_slice(&h.dedup_key);
    entries.extend_from_slice(&h.record_id.0);
    controls
        .insert(h.control_key.as_slice(), entries.as_slice())
        .map_err(err)?;
    Ok(())
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
        // Index commits are not synced one by one: what a crash took from the index is read back
        // from the segments, which were synced before anything was acknowledged.
        let mut lost = Vec::new();
        let segments =
            SegmentLog::recover(segments, tail, MAX_SEGMENT_BYTES, create, &mut |h, at| {
                lost.push((*h, at))
            })
            .map_err(|e| VaultError::Storage(e.to_string()))?;
        let mut w = db.begin_write().map_err(err)?;
        w.set_durability(Durability::Immediate).map_err(err)?;
        {
            let mut records = w.open_table(RECORDS).map_err(err)?;
            let mut controls = w.open_table(CONTROLS).map_err(err)?;
            let mut entries = Vec::new();
            for (h, at) in &lost {
                read_controls(&controls, &h.control_key, &mut entries)?;
                let known = entries
                    .chunks_exact(CONTROL_ENTRY)
                    .any(|e| e[32..] == h.record_id.0);
                if !known {
                    add_control(&mut controls, h, &mut entries)?;
                }
                records
                    .insert(
                        h.record_id.0.as_slice(),
                        record_row(&h.commitment, *at).as_slice(),
                    )
                    .map_err(err)?;
            }
            w.open_table(META)
                .map_err(err)?
                .insert(SEGMENT_TAIL, segments.tail().to_bytes().as_slice())
                .map_err(err)?;
        }
        w.commit().map_err(err)?;
        if !lost.is_empty() {
            tracing::info!(
                records = lost.len(),
                "re-indexed records the last run stored after its last index sync"
            );
        }
        Ok(EmbeddedVault {
            db,
            segments,
            last_sync: Mutex::new(Instant::now()),
            staged: Mutex::new(Staged::default()),
        })
    }

    fn read(&self, id: RecordId, row: &[u8]) -> Result<StoredRecord, VaultError> {
        let (commitment, at) = parse_row(id, row)?;
        let sealed = self
            .segments
            .read(&id, &commitment, at)
            .map_err(|e| VaultError::Unreadable(e.to_string()))?;
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
        // Records are durable in their segment before this commit; the index is synced only
        // every INDEX_SYNC_INTERVAL (a crash loses nothing: the segments are re-read). Quarantine
        // entries live only in the index, so a commit holding one is synced at once.
        let sync = !quarantine.is_empty()
            || self.last_sync.lock().expect("lock").elapsed() >= INDEX_SYNC_INTERVAL;
        w.set_durability(if sync {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(err)?;
        let mut appended = None;
        let result = (|| {
            let mut results = Vec::with_capacity(puts.len());
            let mut records = w.open_table(RECORDS).map_err(err)?;
            let mut controls = w.open_table(CONTROLS).map_err(err)?;
            let mut staged = self.staged.lock().expect("lock");
            staged.clear();
            // Records new in this batch: a duplicate of one of them finds its commitment here,
            // as its index row is written only after the segment append.
            let mut fresh: HashMap<RecordId, [u8; 32]> = HashMap::new();
            let mut placed = Vec::with_capacity(puts.len());
            let mut entries = Vec::new();
            for p in puts {
                read_controls(&controls, &p.control_key, &mut entries)?;
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
                let header = EntryHeader {
                    record_id: id,
                    commitment: s.commitment,
                    dedup_key: p.dedup_key,
                    control_key: p.control_key,
                };
                add_control(&mut controls, &header, &mut entries)?;
                fresh.insert(id, s.commitment);
                let (offset, len) = SegmentLog::stage(&mut staged, &header, &s.bytes);
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
                let (segment, base) = self
                    .segments
                    .append(&staged)
                    .map_err(|e| VaultError::Storage(e.to_string()))?;
                appended = Some((segment, base));
                for (id, commitment, offset, len, slot) in placed {
                    let at = Location {
                        segment,
                        offset: base + offset,
                        len,
                    };
                    records
                        .insert(id.0.as_slice(), record_row(&commitment, at).as_slice())
                        .map_err(err)?;
                    match &mut results[slot] {
                        PutResult::Stored { position } | PutResult::StoredConflict { position } => {
                            *position = at.end().position()
                        }
                        PutResult::Duplicate { .. } => unreachable!("slot of a stored record"),
                    }
                }
                w.open_table(META)
                    .map_err(err)?
                    .insert(SEGMENT_TAIL, self.segments.tail().to_bytes().as_slice())
                    .map_err(err)?;
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
            Ok(results)
        })();
        let committed = result.and_then(|results| {
            w.commit().map_err(err)?;
            Ok(results)
        });
        match (&committed, appended) {
            (Ok(_), _) if sync => *self.last_sync.lock().expect("lock") = Instant::now(),
            // The senders are told to resend, so the appended entries must not come back as
            // records at the next start.
            (Err(_), Some((segment, base))) => {
                if let Err(e) = self.segments.undo(segment, base) {
                    tracing::error!(error = %e, "could not take back a failed commit's entries");
                }
            }
            _ => {}
        }
        committed
    }

    fn sync(&self) -> Result<(), VaultError> {
        let mut w = self.db.begin_write().map_err(err)?;
        w.set_durability(Durability::Immediate).map_err(err)?;
        w.commit().map_err(err)?;
        *self.last_sync.lock().expect("lock") = Instant::now();
        Ok(())
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
        f: &mut dyn FnMut(RecordId, Result<StoredRecord, VaultError>) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(RECORDS).map_err(err)?;
        for e in t.iter().map_err(err)? {
            let (k, v) = e.map_err(err)?;
            let id = record_id(k.value())?;
            f(id, self.read(id, v.value()))?;
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
        let tail = self.segments.tail();
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
            .scan(from, tail, &mut |h, end| {
                out.push((h.record_id, h.commitment, end.position()))
            })
            .map_err(|e| VaultError::Corrupt(e.to_string()))?;
        Ok(out)
    }

    fn mark_anchored(&self, through: Position) -> Result<(), VaultError> {
        // Durable with the anchoring it records: left to the periodic index sync, every restart
        // after a short run re-offered every record to the log (271,803 in one case) and re-read
        // them all from the segments. One sync per anchored batch, not per record.
        let mut w = self.db.begin_write().map_err(err)?;
        w.set_durability(Durability::Immediate).map_err(err)?;
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
        w.commit().map_err(err)?;
        // The sync made every earlier index commit durable too.
        *self.last_sync.lock().expect("lock") = Instant::now();
        Ok(())
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
