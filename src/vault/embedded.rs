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

use super::segments::{EntryHeader, Finding, Location, SegmentLog, SetAside, Staged, Tail};
use super::{
    Derivation, EventPut, MappingFailure, PatientEntry, Position, PutRecord, PutResult,
    QuarantineEntry, Rederive, StoredRecord, Vault, VaultError,
};
use crate::envelope::RecordId;
use crate::ledger::Leaf;
use crate::seal::keyring::PatientIndex;
use crate::seal::Sealed;
use crate::storage::{Db, Healing, Opener};
use crate::testing::faulty::{Faults, FaultyBackend};

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const CONTROLS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("controls");
const QUARANTINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("quarantine");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// raw record id → the ids of the records derived from it, oldest first.
const DERIVED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("derived");
/// raw record id → JSON [`MappingFailure`] of its last mapping, when that failed.
const FAILURES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mapping_failures");
/// patient[16] ‖ kind u8 ‖ record id[16] → nothing: what is stored about each patient (the
/// read side's index). Rebuilt from the segments like the rest.
const PATIENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("patients");
/// `meta` key present once `patients` covers every entry (a vault from before it gets it built
/// at its next writable open).
const PATIENTS_BUILT: &str = "patients_built";

/// Layout version of the index; 3 = sealed bytes in segment files, dedup under the control key;
/// 4 = also derived records (their segment entries name their raw record) and the tables
/// `derived` and `mapping_failures`; 5 = also sealed records of version 2 (compressed, `seal`).
/// A writable open upgrades 3 and 4 to 5 (nothing to convert), so a build that knows only an
/// earlier one refuses a vault that may hold what it cannot read.
const FORMAT: u32 = 5;
const FORMAT_BEFORE_DERIVED: u32 = 3;
const FORMAT_BEFORE_COMPRESSED: u32 = 4;

/// An index table that a vault written before it existed lacks: read as empty.
type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

fn optional(
    r: &redb::ReadTransaction,
    table: TableDefinition<'static, &'static [u8], &'static [u8]>,
) -> Result<Option<ReadTable>, VaultError> {
    match r.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(err(e)),
    }
}
const SEGMENT_TAIL: &str = "segment_tail";
const ANCHORED_THROUGH: &str = "anchored_through";
/// A new segment file starts once the current one would pass this size.
const MAX_SEGMENT_BYTES: u64 = 256 << 20;

fn err(e: impl std::fmt::Display) -> VaultError {
    VaultError::Storage(e.to_string())
}

/// What a read-only open saw that a writable open would have acted on.
#[derive(Debug, Default)]
pub struct ReadOnlyOpen {
    /// Intact entries past the index's durable tail (the next start indexes them).
    pub unindexed: usize,
    /// Bytes the next start would cut off as the torn end of an unacknowledged write.
    pub torn_tail: Option<Finding>,
    /// vault.redb was not closed cleanly: a repaired copy was read.
    pub repaired_copy: bool,
}

/// What `repair` did.
#[derive(Debug, Default)]
pub struct Repaired {
    /// Damaged segment entries replaced with padding, their bytes kept.
    pub set_aside: Vec<SetAside>,
    /// Records indexed again from the segments.
    pub reindexed: usize,
    /// Where an index that redb could not open was moved (a new one was built).
    pub replaced_index: Option<std::path::PathBuf>,
}

pub struct EmbeddedVault {
    /// The index; reopened by the next write after a storage failure.
    db: Healing,
    /// Read-only opens only: intact entries past the index's durable tail, which the next start
    /// indexes again (a read-only open cannot), served from here meanwhile.
    pending: HashMap<RecordId, (EntryHeader, Location)>,
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

/// Lists `derived` under its raw record (once: a re-index may meet an entry already listed).
fn add_derived(
    table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    raw: &RecordId,
    derived: &RecordId,
) -> Result<(), VaultError> {
    let mut ids = table
        .get(raw.0.as_slice())
        .map_err(err)?
        .map(|v| v.value().to_vec())
        .unwrap_or_default();
    if ids.chunks(16).any(|c| c == derived.0) {
        return Ok(());
    }
    ids.extend_from_slice(&derived.0);
    table
        .insert(raw.0.as_slice(), ids.as_slice())
        .map_err(err)?;
    Ok(())
}

/// Opens (with `create`, creates) vault.redb, checks its format and returns it with the durable
/// segment tail it has indexed through.
/// Notes that `id` (of leaf kind `kind`) concerns `patient`.
fn add_patient(
    patients: &mut Table<'_>,
    patient: &PatientIndex,
    kind: u8,
    id: &RecordId,
) -> Result<(), VaultError> {
    let mut key = [0u8; 33];
    key[..16].copy_from_slice(&patient.0);
    key[16] = kind;
    key[17..].copy_from_slice(&id.0);
    patients
        .insert(key.as_slice(), [].as_slice())
        .map_err(err)?;
    Ok(())
}

/// The patient an entry concerns and its leaf kind byte: an event's header names them; a
/// record's sealed header names its data key (none for the gateway key). Reads the entry.
fn patient_of_entry(
    segments: &SegmentLog,
    h: &EntryHeader,
    at: Location,
) -> Result<Option<(PatientIndex, u8)>, VaultError> {
    if let Some((kind, patient)) = h.event() {
        return Ok(Some((patient, kind.byte())));
    }
    let kind = if h.derived_from().is_some() {
        medanchor_merkle::LEAF_DERIVED_STORED
    } else {
        medanchor_merkle::LEAF_RECORD_STORED
    };
    let sealed = segments
        .read(&h.record_id, &h.commitment, at)
        .map_err(|e| VaultError::Unreadable(e.to_string()))?;
    let header =
        crate::seal::parse_header(&sealed).map_err(|e| VaultError::Corrupt(e.to_string()))?;
    Ok(PatientIndex::from_key_id(header.key_id).map(|p| (p, kind)))
}

fn open_index(
    path: &Path,
    cache_bytes: usize,
    create: bool,
    faults: Option<&Faults>,
) -> Result<(redb::Database, Tail), VaultError> {
    let mut b = redb::Builder::new();
    b.set_cache_size(cache_bytes);
    let db = match faults {
        None if create => b.create(path),
        None => b.open(path),
        Some(_) if !create && !path.exists() => {
            return Err(VaultError::Storage(format!(
                "{} does not exist",
                path.display()
            )))
        }
        Some(f) => b.create_with_backend(FaultyBackend::open(path, f.clone()).map_err(err)?),
    }
    .map_err(err)?;
    let w = db.begin_write().map_err(err)?;
    let tail = {
        let records = w.open_table(RECORDS).map_err(err)?;
        w.open_table(CONTROLS).map_err(err)?;
        w.open_table(QUARANTINE).map_err(err)?;
        w.open_table(DERIVED).map_err(err)?;
        w.open_table(FAILURES).map_err(err)?;
        w.open_table(PATIENTS).map_err(err)?;
        let mut meta = w.open_table(META).map_err(err)?;
        let format = meta.get("format").map_err(err)?.map(|v| v.value().to_vec());
        match format {
            Some(v) if v == FORMAT.to_be_bytes() => {}
            Some(v)
                if v == FORMAT_BEFORE_DERIVED.to_be_bytes()
                    || v == FORMAT_BEFORE_COMPRESSED.to_be_bytes() =>
            {
                meta.insert("format", FORMAT.to_be_bytes().as_slice())
                    .map_err(err)?;
            }
            Some(v) => {
                return Err(VaultError::Storage(format!(
                    "vault format {} is not supported by this build (expects {FORMAT})",
                    hex::encode(v)
                )))
            }
            None if records.is_empty().map_err(err)? => {
                meta.insert("format", FORMAT.to_be_bytes().as_slice())
                    .map_err(err)?;
                meta.insert(PATIENTS_BUILT, [].as_slice()).map_err(err)?;
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
    Ok((db, tail))
}

/// The segment tail the index has durably indexed through.
fn durable_tail(r: &redb::ReadTransaction) -> Result<Tail, VaultError> {
    let meta = r.open_table(META).map_err(err)?;
    let tail = match meta.get(SEGMENT_TAIL).map_err(err)? {
        Some(v) => {
            Tail::from_bytes(v.value()).ok_or_else(|| VaultError::Corrupt(SEGMENT_TAIL.into()))?
        }
        None => Tail::default(),
    };
    Ok(tail)
}

/// Indexes `entries` (intact segment entries the index lacks) and records `tail` as indexed
/// through, durably.
fn reindex(
    db: &redb::Database,
    segments: &SegmentLog,
    entries: &[(EntryHeader, Location)],
    tail: Tail,
) -> Result<(), VaultError> {
    let mut w = db.begin_write().map_err(err)?;
    w.set_durability(Durability::Immediate).map_err(err)?;
    {
        let mut records = w.open_table(RECORDS).map_err(err)?;
        let mut controls = w.open_table(CONTROLS).map_err(err)?;
        let mut derived = w.open_table(DERIVED).map_err(err)?;
        let mut patients = w.open_table(PATIENTS).map_err(err)?;
        let mut listed = Vec::new();
        for (h, at) in entries {
            records
                .insert(
                    h.record_id.0.as_slice(),
                    record_row(&h.commitment, *at).as_slice(),
                )
                .map_err(err)?;
            if let Some((patient, kind)) = patient_of_entry(segments, h, *at)? {
                add_patient(&mut patients, &patient, kind, &h.record_id)?;
            }
            if let Some((raw_id, _)) = h.derived_from() {
                add_derived(&mut derived, &raw_id, &h.record_id)?;
                continue;
            }
            if h.event().is_some() {
                continue;
            }
            read_controls(&controls, &h.control_key, &mut listed)?;
            let known = listed
                .chunks_exact(CONTROL_ENTRY)
                .any(|e| e[32..] == h.record_id.0);
            if !known {
                add_control(&mut controls, h, &mut listed)?;
            }
        }
        w.open_table(META)
            .map_err(err)?
            .insert(SEGMENT_TAIL, tail.to_bytes().as_slice())
            .map_err(err)?;
    }
    w.commit().map_err(err)
}

/// Builds `patients` from every entry when the vault was written before it existed.
fn build_patients(db: &redb::Database, segments: &SegmentLog) -> Result<(), VaultError> {
    let built = {
        let r = db.begin_read().map_err(err)?;
        let meta = r.open_table(META).map_err(err)?;
        meta.get(PATIENTS_BUILT).map_err(err)?.is_some()
    };
    if built {
        return Ok(());
    }
    let mut entries = Vec::new();
    segments
        .scan_entries(Tail::default(), segments.tail(), &mut |h, at| {
            entries.push((*h, at))
        })
        .map_err(|e| VaultError::Storage(e.to_string()))?;
    let w = db.begin_write().map_err(err)?;
    {
        let mut patients = w.open_table(PATIENTS).map_err(err)?;
        for (h, at) in &entries {
            if let Some((patient, kind)) = patient_of_entry(segments, h, *at)? {
                add_patient(&mut patients, &patient, kind, &h.record_id)?;
            }
        }
        w.open_table(META)
            .map_err(err)?
            .insert(PATIENTS_BUILT, [].as_slice())
            .map_err(err)?;
    }
    w.commit().map_err(err)?;
    tracing::info!(
        entries = entries.len(),
        "built the patient index of a vault written before it"
    );
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
        if create && !path.exists() && segments.join("00000000.seg").exists() {
            tracing::warn!(
                "vault.redb is missing but segments exist: building a new index from them (quarantine entries, kept only in the index, are gone)"
            );
        }
        Self::open_with_faults(path, segments, cache_bytes, create, None)
    }

    /// [`open`](Self::open) with every write of the index and the segments going through
    /// `faults` (fault-injection tests).
    #[doc(hidden)]
    pub fn open_with_faults(
        path: &Path,
        segments: &Path,
        cache_bytes: usize,
        create: bool,
        faults: Option<Faults>,
    ) -> Result<Self, VaultError> {
        let (db, tail) = open_index(path, cache_bytes, create, faults.as_ref())?;
        // Index commits are not synced one by one: what a crash took from the index is read back
        // from the segments, which were synced before anything was acknowledged.
        let mut lost = Vec::new();
        let mut segments =
            SegmentLog::recover(segments, tail, MAX_SEGMENT_BYTES, create, &mut |h, at| {
                lost.push((*h, at))
            })
            .map_err(|e| VaultError::Storage(e.to_string()))?;
        if let Some(f) = &faults {
            segments.set_faults(f.hook());
        }
        reindex(&db, &segments, &lost, segments.tail())?;
        build_patients(&db, &segments)?;
        if !lost.is_empty() {
            tracing::info!(
                records = lost.len(),
                "re-indexed records the last run stored after its last index sync"
            );
        }
        let reopen_path = path.to_path_buf();
        let opener: Opener = Box::new(move || {
            open_index(&reopen_path, cache_bytes, false, faults.as_ref())
                .map(|(db, _)| db)
                .map_err(|e| e.to_string())
        });
        Ok(EmbeddedVault {
            db: Healing::new(db, opener),
            pending: HashMap::new(),
            segments,
            last_sync: Mutex::new(Instant::now()),
            staged: Mutex::new(Staged::default()),
        })
    }

    /// Opens the vault for reading only: no byte of vault.redb or the segments changes (a file
    /// not closed cleanly is read through a repaired copy). Damage that a writable open refuses
    /// is refused here too.
    pub fn open_read_only(
        path: &Path,
        segments: &Path,
        cache_bytes: usize,
    ) -> Result<(Self, ReadOnlyOpen), VaultError> {
        let db = Db::open_read_only(path, cache_bytes).map_err(err)?;
        let tail = {
            let r = db.begin_read().map_err(err)?;
            let meta = r.open_table(META).map_err(err)?;
            match meta.get("format").map_err(err)? {
                Some(v)
                    if v.value() == FORMAT.to_be_bytes()
                        || v.value() == FORMAT_BEFORE_COMPRESSED.to_be_bytes()
                        || v.value() == FORMAT_BEFORE_DERIVED.to_be_bytes() => {}
                _ => {
                    return Err(VaultError::Storage(
                        "vault.redb: unknown or missing format".into(),
                    ))
                }
            }
            durable_tail(&r)?
        };
        let mut pending = HashMap::new();
        let (segments, torn_tail) = SegmentLog::open_read_only(segments, tail, &mut |h, at| {
            pending.insert(h.record_id, (*h, at));
        })
        .map_err(|e| VaultError::Storage(e.to_string()))?;
        let opened = ReadOnlyOpen {
            unindexed: pending.len(),
            torn_tail,
            repaired_copy: db.is_repaired_copy(),
        };
        Ok((
            EmbeddedVault {
                db: Healing::read_only(db),
                pending,
                segments,
                last_sync: Mutex::new(Instant::now()),
                staged: Mutex::new(Staged::default()),
            },
            opened,
        ))
    }

    /// For a stopped gateway: sets damaged segment entries aside (see [`SegmentLog::repair`])
    /// and rebuilds the index's records and controls from the segments, which hold everything
    /// the index does (quarantine entries, kept only in the index, stay as they are). The
    /// anchored watermark starts again from zero: the next start offers every record to the
    /// log, which skips the ones it holds.
    pub fn repair(
        path: &Path,
        segments: &Path,
        cache_bytes: usize,
    ) -> Result<Repaired, VaultError> {
        let mut b = redb::Builder::new();
        b.set_cache_size(cache_bytes);
        // The index first: it is locked by a running gateway, whose appends a segment repair
        // could otherwise take for damage and overwrite.
        let mut replaced_index = None;
        let db = match b.open(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(VaultError::Storage(format!(
                    "{} is in use by a running gateway: stop it first",
                    path.display()
                )))
            }
            // An index redb cannot open at all: set it aside and build a new one from the
            // segments (its quarantine entries, kept only there, are lost with it).
            Err(e) if path.exists() => {
                let aside =
                    path.with_extension(format!("redb.damaged-{}", crate::envelope::now_ms()));
                std::fs::rename(path, &aside).map_err(err)?;
                tracing::warn!(error = %e, kept = %aside.display(), "vault.redb does not open; set aside");
                replaced_index = Some(aside);
                b.create(path).map_err(err)?
            }
            Err(e) => return Err(err(e)),
        };
        // What the index had durably indexed was acknowledged: damage there is set aside, never
        // taken for a torn write, even at the very end of the log.
        let acknowledged = db
            .begin_read()
            .ok()
            .and_then(|r| durable_tail(&r).ok())
            .unwrap_or_default();
        let set_aside = SegmentLog::repair(segments, acknowledged)
            .map_err(|e| VaultError::Storage(e.to_string()))?;
        {
            let mut w = db.begin_write().map_err(err)?;
            w.set_durability(Durability::Immediate).map_err(err)?;
            w.delete_table(RECORDS).map_err(err)?;
            w.delete_table(CONTROLS).map_err(err)?;
            w.delete_table(DERIVED).map_err(err)?;
            w.delete_table(PATIENTS).map_err(err)?;
            {
                let mut meta = w.open_table(META).map_err(err)?;
                meta.remove(SEGMENT_TAIL).map_err(err)?;
                meta.remove(ANCHORED_THROUGH).map_err(err)?;
            }
            w.commit().map_err(err)?;
        }
        drop(db);
        let vault = EmbeddedVault::open(path, segments, cache_bytes, false)?;
        Ok(Repaired {
            set_aside,
            reindexed: vault.record_count()? as usize,
            replaced_index,
        })
    }

    /// Checks every index entry against the segments, which are the truth: each record row
    /// points at an intact entry of that id and commitment; every entry is indexed; every
    /// control entry names a record whose entry carries that control and dedup key, and every
    /// record is under its control key; the durable tail and the anchored watermark lie on
    /// entry boundaries within the log. Each problem goes to `fail`, named by where it is.
    /// Returns every record's entry header (for the caller to check the keys against the
    /// decrypted records).
    pub fn check_index(
        &self,
        fail: &mut dyn FnMut(String),
    ) -> Result<HashMap<RecordId, EntryHeader>, VaultError> {
        let tail = self.segments.tail();
        let mut entries: HashMap<RecordId, (EntryHeader, Tail)> = HashMap::new();
        let mut ends = std::collections::HashSet::from([
            0u64,
            Tail {
                segment: tail.segment,
                len: 0,
            }
            .position(),
        ]);
        let mut padding = Vec::new();
        self.segments
            .scan_all(tail, &mut |h, end, is_padding| {
                ends.insert(end.position());
                if is_padding {
                    padding.push(end);
                } else if entries.insert(h.record_id, (*h, end)).is_some() {
                    fail(format!(
                        "segment {} before offset {}: record {} has a second entry",
                        end.segment, end.len, h.record_id
                    ));
                }
            })
            .map_err(|e| VaultError::Storage(e.to_string()))?;
        for end in padding {
            fail(format!(
                "segment {} before offset {}: a damaged entry was set aside by repair (its bytes are under segments/damaged/)",
                end.segment, end.len
            ));
        }
        let r = self.db.begin_read().map_err(err)?;
        let records = r.open_table(RECORDS).map_err(err)?;
        let mut indexed = std::collections::HashSet::with_capacity(entries.len());
        for row in records.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let Ok(id) = record_id(k.value()) else {
                fail(format!(
                    "index: records key {} is not a record id",
                    hex::encode(k.value())
                ));
                continue;
            };
            indexed.insert(id);
            let Ok((commitment, at)) = parse_row(id, v.value()) else {
                fail(format!("index: record {id}: row is malformed"));
                continue;
            };
            match entries.get(&id) {
                None => fail(format!(
                    "index: record {id} points to segment {} offset {}, where no entry of it is",
                    at.segment, at.offset
                )),
                Some((h, end)) if *end != at.end() || h.commitment != commitment => fail(format!(
                    "index: record {id}: row (segment {} offset {}) disagrees with its entry in segment {} before offset {}",
                    at.segment, at.offset, end.segment, end.len
                )),
                Some(_) => {}
            }
        }
        for (id, (_, end)) in &entries {
            if !indexed.contains(id) && !self.pending.contains_key(id) {
                fail(format!(
                    "index: record {id} (segment {} before offset {}) is not indexed",
                    end.segment, end.len
                ));
            }
        }
        let controls = r.open_table(CONTROLS).map_err(err)?;
        let mut under_control = std::collections::HashSet::with_capacity(entries.len());
        for row in controls.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let key = hex::encode(k.value());
            if v.value().len() % CONTROL_ENTRY != 0 || v.value().is_empty() {
                fail(format!("index: control entry {key} is malformed"));
            }
            for e in v.value().chunks_exact(CONTROL_ENTRY) {
                let id = record_id(&e[32..])?;
                match entries.get(&id) {
                    Some((h, _)) if h.control_key[..] == *k.value() && h.dedup_key[..] == e[..32] => {
                        under_control.insert(id);
                    }
                    Some(_) => fail(format!(
                        "index: control entry {key} lists record {id} with keys its entry does not carry"
                    )),
                    None => fail(format!(
                        "index: control entry {key} lists record {id}, which is in no segment"
                    )),
                }
            }
        }
        // A derived record is under its raw record in `derived` instead, in store order.
        let derived = optional(&r, DERIVED)?;
        let rows = match &derived {
            Some(t) => Some(t.iter().map_err(err)?),
            None => None,
        };
        let mut listed_derived = std::collections::HashSet::new();
        for row in rows.into_iter().flatten() {
            let (k, v) = row.map_err(err)?;
            let raw = hex::encode(k.value());
            if v.value().len() % 16 != 0 || v.value().is_empty() {
                fail(format!("index: derived entry of record {raw} is malformed"));
                continue;
            }
            let mut last_end = None;
            for c in v.value().chunks_exact(16) {
                let id = record_id(c)?;
                match entries.get(&id) {
                    Some((h, end)) if h.derived_from().is_some_and(|(r, _)| r.0[..] == *k.value()) => {
                        if last_end.is_some_and(|e: Tail| e.position() > end.position()) {
                            fail(format!("index: derived records of {raw} are not in store order"));
                        }
                        last_end = Some(*end);
                        listed_derived.insert(id);
                    }
                    Some(_) => fail(format!(
                        "index: record {raw} lists {id} as derived from it, which its entry does not say"
                    )),
                    None => fail(format!(
                        "index: record {raw} lists derived record {id}, which is in no segment"
                    )),
                }
            }
        }
        for (id, (h, _)) in &entries {
            if h.derived_from().is_some()
                && !listed_derived.contains(id)
                && !self.pending.contains_key(id)
            {
                fail(format!(
                    "index: derived record {id} is not listed under its raw record"
                ));
            }
        }
        for (id, (h, _)) in &entries {
            if !h.is_raw() {
                continue;
            }
            if !under_control.contains(id) && !self.pending.contains_key(id) {
                fail(format!(
                    "index: record {id} is under no control entry (a re-send would be stored again)"
                ));
            }
        }
        self.check_patients(&r, &entries, fail)?;
        let meta = r.open_table(META).map_err(err)?;
        for name in [SEGMENT_TAIL, ANCHORED_THROUGH] {
            let Some(v) = meta.get(name).map_err(err)? else {
                continue;
            };
            let position = match name {
                SEGMENT_TAIL => Tail::from_bytes(v.value()).map(Tail::position),
                _ => v.value().try_into().ok().map(u64::from_be_bytes),
            };
            match position {
                Some(p) if p <= tail.position() && ends.contains(&p) => {}
                Some(p) => fail(format!(
                    "index: {name} (segment {} offset {}) is not the end of an entry in the log",
                    Tail::from_position(p).segment,
                    Tail::from_position(p).len
                )),
                None => fail(format!("index: {name} is malformed")),
            }
        }
        Ok(entries.into_iter().map(|(id, (h, _))| (id, h)).collect())
    }

    /// The patient index against the entries: each row names an entry of that kind about that
    /// patient, and each entry about a patient (an event's header names them, a record's sealed
    /// header its data key) has its row. Reads every record's sealed header.
    fn check_patients(
        &self,
        r: &redb::ReadTransaction,
        entries: &HashMap<RecordId, (EntryHeader, Tail)>,
        fail: &mut dyn FnMut(String),
    ) -> Result<(), VaultError> {
        let Some(patients) = optional(r, PATIENTS)? else {
            return Ok(());
        };
        let records = r.open_table(RECORDS).map_err(err)?;
        // What each indexed entry is about, from the entry itself.
        let mut about: HashMap<RecordId, Option<(PatientIndex, u8)>> = HashMap::new();
        for (id, (h, _)) in entries {
            let Some(row) = records.get(id.0.as_slice()).map_err(err)? else {
                continue; // not indexed: named above
            };
            let Ok((_, at)) = parse_row(*id, row.value()) else {
                continue;
            };
            match patient_of_entry(&self.segments, h, at) {
                Ok(p) => {
                    about.insert(*id, p);
                }
                Err(e) => fail(format!("index: record {id}: {e}")),
            }
        }
        let mut listed = std::collections::HashSet::new();
        for row in patients.iter().map_err(err)? {
            let (k, _) = row.map_err(err)?;
            let k = k.value();
            if k.len() != 33 {
                fail(format!(
                    "index: patients key {} is malformed",
                    hex::encode(k)
                ));
                continue;
            }
            let patient = PatientIndex(k[..16].try_into().expect("16"));
            let id = record_id(&k[17..])?;
            match about.get(&id) {
                Some(Some(found)) if *found == (patient, k[16]) => {
                    listed.insert(id);
                }
                Some(_) => fail(format!(
                    "index: patients lists record {id} under a patient or kind its entry does not name"
                )),
                None if self.pending.contains_key(&id) => {}
                None => fail(format!(
                    "index: patients lists record {id}, which is in no segment or not indexed"
                )),
            }
        }
        for (id, p) in &about {
            if p.is_some() && !listed.contains(id) {
                fail(format!(
                    "index: record {id} is missing from the patient index"
                ));
            }
        }
        Ok(())
    }

    /// The anchored watermark: records at or before it are in the log.
    pub fn anchored_through(&self) -> Result<Position, VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        let meta = r.open_table(META).map_err(err)?;
        Ok(match meta.get(ANCHORED_THROUGH).map_err(err)? {
            Some(v) => u64::from_be_bytes(
                v.value()
                    .try_into()
                    .map_err(|_| VaultError::Corrupt(ANCHORED_THROUGH.into()))?,
            ),
            None => 0,
        })
    }

    /// A write transaction on the index. After a storage failure the index is reopened first
    /// (redb recovers it to its last durable commit) and what that commit lacks is indexed
    /// again from the segments; until that succeeds, commits fail (their senders are asked to
    /// resend) and the vault reports itself unhealthy.
    fn begin_write(&self) -> Result<redb::WriteTransaction, VaultError> {
        let reindex_since_durable = |db: &redb::Database| -> Result<(), String> {
            let tail = db
                .begin_read()
                .map_err(|e| e.to_string())
                .and_then(|r| durable_tail(&r).map_err(|e| e.to_string()))?;
            let mut lost = Vec::new();
            self.segments
                .scan_entries(tail, self.segments.tail(), &mut |h, at| lost.push((*h, at)))
                .map_err(|e| e.to_string())?;
            reindex(db, &self.segments, &lost, self.segments.tail()).map_err(|e| e.to_string())?;
            *self.last_sync.lock().expect("lock") = Instant::now();
            tracing::info!(
                reindexed = lost.len(),
                "vault index reopened after a storage failure"
            );
            Ok(())
        };
        self.db
            .begin_write(&reindex_since_durable)
            .map_err(VaultError::Storage)
    }

    /// Commits an index transaction whose work gave `result`, synced or not. Whatever failed
    /// (a full disk, an I/O error), the next commit reopens the index first (redb refuses every
    /// operation after a failed write until then) and indexes the entries this commit appended,
    /// which stay: they are durable in their segment, and a commit whose final sync failed may
    /// have landed anyway, so cutting them off could leave index rows pointing past the end.
    /// Their senders were told to resend; a re-send finds the record and gets its receipt.
    fn finish<T>(
        &self,
        mut w: redb::WriteTransaction,
        result: Result<T, VaultError>,
        sync: bool,
    ) -> Result<T, VaultError> {
        let committed = result.and_then(|r| {
            w.set_durability(if sync {
                Durability::Immediate
            } else {
                Durability::None
            })
            .map_err(err)?;
            w.commit().map_err(err)?;
            Ok(r)
        });
        match &committed {
            Err(e) => {
                self.db.failed(e);
            }
            Ok(_) if sync => *self.last_sync.lock().expect("lock") = Instant::now(),
            Ok(_) => {}
        }
        committed
    }

    /// Notes a storage failure of the index: the next write reopens it first.
    fn failed(&self, e: impl std::fmt::Display) -> VaultError {
        VaultError::Storage(self.db.failed(e))
    }

    fn read(&self, id: RecordId, row: &[u8]) -> Result<StoredRecord, VaultError> {
        let (commitment, at) = parse_row(id, row)?;
        self.read_at(id, &commitment, at)
    }

    fn read_at(
        &self,
        id: RecordId,
        commitment: &[u8; 32],
        at: Location,
    ) -> Result<StoredRecord, VaultError> {
        let commitment = *commitment;
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

/// An entry staged in a commit, to be indexed once the append says where the batch went.
struct Placed {
    id: RecordId,
    commitment: [u8; 32],
    offset: u64,
    len: u32,
    /// The result slot of the put it belongs to.
    slot: usize,
    /// For a derived record, its raw record.
    derived_from: Option<RecordId>,
    /// The patient whose data key sealed it.
    patient: Option<PatientIndex>,
}

type Table<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

fn put_failure(
    failures: &mut Table<'_>,
    raw: &RecordId,
    f: &MappingFailure,
) -> Result<(), VaultError> {
    let json = serde_json::to_vec(f).map_err(err)?;
    failures
        .insert(raw.0.as_slice(), json.as_slice())
        .map_err(err)?;
    Ok(())
}

impl Vault for EmbeddedVault {
    fn commit(
        &self,
        puts: &[PutRecord],
        quarantine: &[(QuarantineEntry, Sealed)],
    ) -> Result<Vec<PutResult>, VaultError> {
        let w = self.begin_write()?;
        // Records are durable in their segment before this commit; the index is synced only
        // every INDEX_SYNC_INTERVAL (a crash loses nothing: the segments are re-read). Quarantine
        // entries live only in the index, so a commit holding one is synced at once.
        let sync = !quarantine.is_empty()
            || puts
                .iter()
                .any(|p| matches!(p.derived, Derivation::Failed(_)))
            || self.last_sync.lock().expect("lock").elapsed() >= INDEX_SYNC_INTERVAL;
        let result: Result<(Vec<PutResult>, bool), VaultError> = (|| {
            let mut results = Vec::with_capacity(puts.len());
            let mut records = w.open_table(RECORDS).map_err(err)?;
            let mut controls = w.open_table(CONTROLS).map_err(err)?;
            let mut derived = w.open_table(DERIVED).map_err(err)?;
            let mut failures = w.open_table(FAILURES).map_err(err)?;
            let mut patients = w.open_table(PATIENTS).map_err(err)?;
            let mut staged = self.staged.lock().expect("lock");
            staged.clear();
            // Records new in this batch: a duplicate of one of them finds its commitment here,
            // as its index row is written only after the segment append.
            let mut fresh: HashMap<RecordId, [u8; 32]> = HashMap::new();
            let mut noted_failure = false;
            // Raw records given a derived record in this batch (its list is written after the
            // append), for a duplicate of one in the same batch.
            let mut with_derived = std::collections::HashSet::new();
            let mut placed = Vec::with_capacity(puts.len());
            let mut entries = Vec::new();
            for p in puts {
                read_controls(&controls, &p.control_key, &mut entries)?;
                // A damaged index entry answers its own message, never the rest of the commit
                // (one bad control entry once failed 276 of 720 unrelated messages).
                if entries.len() % CONTROL_ENTRY != 0 {
                    results.push(PutResult::IndexDamaged);
                    continue;
                }
                let first = entries
                    .chunks_exact(CONTROL_ENTRY)
                    .find(|e| e[..32] == p.dedup_key);
                if let Some(e) = first {
                    let id = RecordId(e[32..].try_into().expect("48-byte chunk"));
                    let commitment = match fresh.get(&id) {
                        Some(c) => Some(*c),
                        None => records
                            .get(id.0.as_slice())
                            .map_err(err)?
                            .and_then(|row| parse_row(id, row.value()).ok())
                            .map(|(c, _)| c),
                    };
                    let Some(commitment) = commitment else {
                        results.push(PutResult::IndexDamaged);
                        continue;
                    };
                    // The put's derivation was made from this re-sent copy (its own id and
                    // commitment), so it cannot stand for the first copy. A first copy without a
                    // derived record (a crash tore its derived entry off before anyone was
                    // acknowledged, or it was stored with normalization off) is noted as a
                    // mapping failure, which `medanchor mapping replay --failed` maps.
                    if !matches!(p.derived, Derivation::None)
                        && !with_derived.contains(&id)
                        && derived.get(id.0.as_slice()).map_err(err)?.is_none()
                        && failures.get(id.0.as_slice()).map_err(err)?.is_none()
                    {
                        let (mapping_version, at_ms) = match &p.derived {
                            Derivation::Failed(f) => (f.mapping_version.clone(), f.at_ms),
                            _ => (String::new(), crate::envelope::now_ms()),
                        };
                        put_failure(
                            &mut failures,
                            &id,
                            &MappingFailure {
                                label: "not_derived".into(),
                                detail: "stored without a derived record (normalization was off, or a crash cut the derived entry off before the message was acknowledged); map it with `medanchor mapping replay --failed`".into(),
                                mapping_version,
                                at_ms,
                            },
                        )?;
                        noted_failure = true;
                    }
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
                placed.push(Placed {
                    id,
                    commitment: s.commitment,
                    offset,
                    len,
                    slot: results.len(),
                    derived_from: None,
                    patient: PatientIndex::from_key_id(&s.key_id),
                });
                match &p.derived {
                    Derivation::None => {}
                    Derivation::Mapped(d) => {
                        with_derived.insert(id);
                        let header =
                            EntryHeader::derived(d.record_id, d.commitment, id, s.commitment);
                        let (offset, len) = SegmentLog::stage(&mut staged, &header, &d.bytes);
                        placed.push(Placed {
                            id: d.record_id,
                            commitment: d.commitment,
                            offset,
                            len,
                            slot: results.len(),
                            derived_from: Some(id),
                            patient: PatientIndex::from_key_id(&d.key_id),
                        });
                    }
                    Derivation::Failed(f) => put_failure(&mut failures, &id, f)?,
                }
                // The position is filled in once the append says where the batch went.
                results.push(if conflict {
                    PutResult::StoredConflict {
                        position: 0,
                        derived_at: None,
                    }
                } else {
                    PutResult::Stored {
                        position: 0,
                        derived_at: None,
                    }
                });
            }
            if !placed.is_empty() {
                // Durable in the segment before the index that points at it commits.
                let (segment, base) = self
                    .segments
                    .append(&staged)
                    .map_err(|e| VaultError::Storage(e.to_string()))?;
                for p in placed {
                    let at = Location {
                        segment,
                        offset: base + p.offset,
                        len: p.len,
                    };
                    records
                        .insert(p.id.0.as_slice(), record_row(&p.commitment, at).as_slice())
                        .map_err(err)?;
                    if let Some(raw) = &p.derived_from {
                        add_derived(&mut derived, raw, &p.id)?;
                    }
                    if let Some(patient) = &p.patient {
                        let kind = match p.derived_from {
                            None => medanchor_merkle::LEAF_RECORD_STORED,
                            Some(_) => medanchor_merkle::LEAF_DERIVED_STORED,
                        };
                        add_patient(&mut patients, patient, kind, &p.id)?;
                    }
                    match (&mut results[p.slot], p.derived_from) {
                        (
                            PutResult::Stored { position, .. }
                            | PutResult::StoredConflict { position, .. },
                            None,
                        ) => *position = at.end().position(),
                        (
                            PutResult::Stored { derived_at, .. }
                            | PutResult::StoredConflict { derived_at, .. },
                            Some(_),
                        ) => *derived_at = Some(at.end().position()),
                        (PutResult::Duplicate { .. } | PutResult::IndexDamaged, _) => {
                            unreachable!("slot of a stored record")
                        }
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
            Ok((results, noted_failure))
        })();
        // A failure noted lives only in the index: synced like a quarantine entry.
        let sync = sync || result.as_ref().is_ok_and(|(_, noted)| *noted);
        self.finish(w, result.map(|(results, _)| results), sync)
    }

    fn commit_derivations(&self, items: &[Rederive]) -> Result<Vec<Option<Position>>, VaultError> {
        let mut w = self.begin_write()?;
        w.set_durability(Durability::Immediate).map_err(err)?;
        let result: Result<Vec<Option<Position>>, VaultError> = (|| {
            let mut records = w.open_table(RECORDS).map_err(err)?;
            let mut derived = w.open_table(DERIVED).map_err(err)?;
            let mut failures = w.open_table(FAILURES).map_err(err)?;
            let mut staged = self.staged.lock().expect("lock");
            staged.clear();
            let mut placed = Vec::new();
            for (slot, item) in items.iter().enumerate() {
                match &item.derived {
                    Derivation::None => {}
                    Derivation::Failed(f) => put_failure(&mut failures, &item.raw_id, f)?,
                    Derivation::Mapped(d) => {
                        failures.remove(item.raw_id.0.as_slice()).map_err(err)?;
                        let header = EntryHeader::derived(
                            d.record_id,
                            d.commitment,
                            item.raw_id,
                            item.raw_commitment,
                        );
                        let (offset, len) = SegmentLog::stage(&mut staged, &header, &d.bytes);
                        placed.push((slot, d, offset, len));
                    }
                }
            }
            let mut positions = vec![None; items.len()];
            if !placed.is_empty() {
                let (segment, base) = self
                    .segments
                    .append(&staged)
                    .map_err(|e| VaultError::Storage(e.to_string()))?;
                let mut patients = w.open_table(PATIENTS).map_err(err)?;
                for (slot, d, offset, len) in placed {
                    let at = Location {
                        segment,
                        offset: base + offset,
                        len,
                    };
                    let id = d.record_id;
                    records
                        .insert(id.0.as_slice(), record_row(&d.commitment, at).as_slice())
                        .map_err(err)?;
                    add_derived(&mut derived, &items[slot].raw_id, &id)?;
                    if let Some(patient) = PatientIndex::from_key_id(&d.key_id) {
                        let kind = medanchor_merkle::LEAF_DERIVED_STORED;
                        add_patient(&mut patients, &patient, kind, &id)?;
                    }
                    positions[slot] = Some(at.end().position());
                }
                w.open_table(META)
                    .map_err(err)?
                    .insert(SEGMENT_TAIL, self.segments.tail().to_bytes().as_slice())
                    .map_err(err)?;
            }
            Ok(positions)
        })();
        let committed = result.and_then(|positions| {
            w.commit().map_err(err)?;
            Ok(positions)
        });
        if let Err(e) = &committed {
            self.db.failed(e);
        }
        committed
    }

    fn commit_events(&self, events: &[EventPut]) -> Result<Vec<Position>, VaultError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let w = self.begin_write()?;
        // Like records: durable in the segment before the index, which a crash rebuilds.
        let sync = self.last_sync.lock().expect("lock").elapsed() >= INDEX_SYNC_INTERVAL;
        let result: Result<Vec<Position>, VaultError> = (|| {
            let mut records = w.open_table(RECORDS).map_err(err)?;
            let mut patients = w.open_table(PATIENTS).map_err(err)?;
            let mut staged = self.staged.lock().expect("lock");
            staged.clear();
            let mut placed = Vec::with_capacity(events.len());
            for e in events {
                let s = &e.sealed;
                let header = EntryHeader::for_event(e.kind, s.record_id, s.commitment, &e.patient);
                placed.push(SegmentLog::stage(&mut staged, &header, &s.bytes));
            }
            let (segment, base) = self
                .segments
                .append(&staged)
                .map_err(|e| VaultError::Storage(e.to_string()))?;
            let mut positions = Vec::with_capacity(events.len());
            for (e, (offset, len)) in events.iter().zip(placed) {
                let at = Location {
                    segment,
                    offset: base + offset,
                    len,
                };
                let s = &e.sealed;
                records
                    .insert(
                        s.record_id.0.as_slice(),
                        record_row(&s.commitment, at).as_slice(),
                    )
                    .map_err(err)?;
                add_patient(&mut patients, &e.patient, e.kind.byte(), &s.record_id)?;
                positions.push(at.end().position());
            }
            w.open_table(META)
                .map_err(err)?
                .insert(SEGMENT_TAIL, self.segments.tail().to_bytes().as_slice())
                .map_err(err)?;
            Ok(positions)
        })();
        self.finish(w, result, sync)
    }

    fn patient_entries(
        &self,
        patient: &PatientIndex,
        kinds: &[u8],
    ) -> Result<Vec<PatientEntry>, VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        let Some(t) = optional(&r, PATIENTS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for &kind in kinds {
            let mut from = [0u8; 33];
            from[..16].copy_from_slice(&patient.0);
            from[16] = kind;
            let mut to = from;
            to[17..].fill(0xff);
            for row in t.range(from.as_slice()..=to.as_slice()).map_err(err)? {
                let (k, _) = row.map_err(err)?;
                let id = record_id(&k.value()[17..])?;
                out.push(PatientEntry {
                    kind,
                    record_id: id,
                });
            }
        }
        // Entries past the durable tail (a read-only open after a crash).
        for (id, (h, at)) in self.pending.iter() {
            let Some((p, kind)) = patient_of_entry(&self.segments, h, *at)? else {
                continue;
            };
            if p == *patient && kinds.contains(&kind) && !out.iter().any(|e| e.record_id == *id) {
                out.push(PatientEntry {
                    kind,
                    record_id: *id,
                });
            }
        }
        out.sort_by_key(|e| e.record_id.0);
        Ok(out)
    }

    fn derived_of(&self, raw: &RecordId) -> Result<Vec<RecordId>, VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        let listed = match optional(&r, DERIVED)? {
            Some(t) => t.get(raw.0.as_slice()).map_err(err)?,
            None => None,
        };
        let mut ids: Vec<RecordId> = match listed {
            Some(v) if v.value().len() % 16 == 0 => v
                .value()
                .chunks_exact(16)
                .map(|c| RecordId(c.try_into().expect("16")))
                .collect(),
            Some(_) => return Err(VaultError::Corrupt(format!("derived entry of {raw}"))),
            None => Vec::new(),
        };
        // Entries past the durable tail that a crash left to be re-indexed at the next start.
        for (id, (h, _)) in self.pending.iter() {
            if h.derived_from().is_some_and(|(r, _)| r == *raw) && !ids.contains(id) {
                ids.push(*id);
            }
        }
        Ok(ids)
    }

    fn mapping_failures(&self) -> Result<Vec<(RecordId, MappingFailure)>, VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        let Some(t) = optional(&r, FAILURES)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in t.iter().map_err(err)? {
            let (k, v) = e.map_err(err)?;
            let id = record_id(k.value())?;
            let f = serde_json::from_slice(v.value())
                .map_err(|_| VaultError::Corrupt(format!("mapping failure of {id}")))?;
            out.push((id, f));
        }
        Ok(out)
    }

    fn sync(&self) -> Result<(), VaultError> {
        let mut w = self.begin_write()?;
        w.set_durability(Durability::Immediate).map_err(err)?;
        w.commit().map_err(|e| self.failed(e))?;
        *self.last_sync.lock().expect("lock") = Instant::now();
        Ok(())
    }

    fn get(&self, id: &RecordId) -> Result<Option<StoredRecord>, VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(RECORDS).map_err(err)?;
        if let Some(v) = t.get(id.0.as_slice()).map_err(err)? {
            return self.read(*id, v.value()).map(Some);
        }
        self.pending
            .get(id)
            .map(|(h, at)| self.read_at(*id, &h.commitment, *at))
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
        let mut pending: Vec<_> = self.pending.iter().collect();
        pending.sort_by_key(|(id, _)| **id);
        for (id, (h, at)) in pending {
            if t.get(id.0.as_slice()).map_err(err)?.is_none() {
                f(*id, self.read_at(*id, &h.commitment, *at))?;
            }
        }
        Ok(())
    }

    fn record_count(&self) -> Result<u64, VaultError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(RECORDS).map_err(err)?;
        let mut n = t.len().map_err(err)?;
        for id in self.pending.keys() {
            if t.get(id.0.as_slice()).map_err(err)?.is_none() {
                n += 1;
            }
        }
        Ok(n)
    }

    fn unanchored(&self, at_least: Position) -> Result<Vec<(Leaf, Position)>, VaultError> {
        let tail = self.segments.tail();
        let mut from = self.anchored_through()?;
        // The log's watermark, if it lies within the log (a data directory whose segments lost
        // records is for `verify` to name, not for this to skip past).
        if at_least > from && at_least <= tail.position() {
            from = at_least;
        }
        let from = Tail::from_position(from);
        let mut out = Vec::new();
        self.segments
            .scan(from, tail, &mut |h, end| {
                out.push((h.leaf(), end.position()))
            })
            .map_err(|e| VaultError::Corrupt(e.to_string()))?;
        Ok(out)
    }

    fn mark_anchored(&self, through: Position) -> Result<(), VaultError> {
        // Not synced: the log keeps the watermark durable in its own commit (an fsync here per
        // anchored batch held the writer's commits behind it: 6% of MLLP throughput, p99 +6 ms).
        let mut w = self.begin_write()?;
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
        w.commit().map_err(|e| self.failed(e))
    }

    fn health(&self) -> Result<(), String> {
        self.db.health()
    }

    fn quarantine_expire(&self, before_ms: u64) -> Result<usize, VaultError> {
        // Ids start with their 48-bit receive time: everything below this id is older.
        let mut end = [0u8; 16];
        end[..6].copy_from_slice(&before_ms.to_be_bytes()[2..]);
        let mut w = self.begin_write()?;
        w.set_durability(Durability::Immediate).map_err(err)?;
        let removed = (|| {
            let mut q = w.open_table(QUARANTINE).map_err(err)?;
            let old: Vec<Vec<u8>> = q
                .range([0u8; 16].as_slice()..end.as_slice())
                .map_err(err)?
                .map(|e| e.map(|(k, _)| k.value().to_vec()))
                .collect::<Result<_, _>>()
                .map_err(err)?;
            for k in &old {
                q.remove(k.as_slice()).map_err(err)?;
            }
            Ok::<usize, VaultError>(old.len())
        })();
        let committed = removed.and_then(|n| {
            w.commit().map_err(err)?;
            Ok(n)
        });
        if let Err(e) = &committed {
            self.db.failed(e);
        }
        committed
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

#[cfg(test)]
#[path = "fault_tests.rs"]
mod fault_tests;

#[cfg(test)]
mod tests {
    use super::fault_tests::{derived_of, message, put_of};
    use super::*;

    /// A vault in `dir` (index `vault.redb`, segments under `segments`), synced commits.
    fn open_in(dir: &Path) -> EmbeddedVault {
        EmbeddedVault::open(
            &dir.join("vault.redb"),
            &dir.join("segments"),
            1 << 20,
            true,
        )
        .unwrap()
    }

    /// A seal batch reaches the writer as one unit and commits together, but never as more than
    /// `vault.max_batch` records: the part past it starts the next commit, which takes what else
    /// is waiting, and every token is answered.
    #[test]
    fn a_unit_past_max_batch_carries_over_and_every_record_is_answered() {
        use crate::envelope::{AckToken, Outcome};
        use crate::vault::writer::{self, WriteOp};
        let dir = tempfile::tempdir().unwrap();
        let vault: std::sync::Arc<dyn Vault> = std::sync::Arc::new(open_in(dir.path()));
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let (atx, mut arx) = tokio::sync::mpsc::channel(64);
        let mut answers = Vec::new();
        let mut unit = |records: std::ops::Range<usize>| -> Vec<WriteOp> {
            records
                .map(|i| {
                    let (token, answer) = AckToken::new();
                    answers.push(answer);
                    WriteOp::Put {
                        put: put_of(&message(i)),
                        token,
                    }
                })
                .collect()
        };
        // Both wait before the writer starts: ten records, then two.
        let (first, second) = (unit(0..10), unit(10..12));
        tx.blocking_send(first).unwrap();
        tx.blocking_send(second).unwrap();
        drop(tx);
        writer::spawn(vault, 4, rx, atx, metrics.clone())
            .join()
            .unwrap();
        for (i, a) in answers.into_iter().enumerate() {
            let outcome = a.blocking_recv().unwrap();
            assert!(
                matches!(
                    outcome,
                    Outcome::Stored {
                        duplicate: false,
                        ..
                    }
                ),
                "record {i}: {outcome:?}"
            );
        }
        let sizes = &metrics.vault_batch_size;
        assert_eq!(
            (sizes.get_sample_count(), sizes.get_sample_sum()),
            (3, 12.0),
            "twelve records in commits of 4, 4 and 4 (the first unit's last two go with the second)"
        );
        let mut positions = Vec::new();
        while let Ok((_, position, _)) = arx.try_recv() {
            positions.push(position);
        }
        assert_eq!(
            positions.len(),
            12 + 4,
            "twelve raw records and four derived (0, 3, 6, 9)"
        );
        assert!(
            positions.is_sorted(),
            "anchored in commit order: {positions:?}"
        );
        assert_eq!(writer::queue_units(1024, 16), 128);
    }

    /// The patient index is checked against the entries: a row lost, or one naming another
    /// patient, is named by `check_index` (so by `verify --all`).
    #[test]
    fn a_patient_index_row_lost_or_altered_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let vault = open_in(dir.path());
        let msgs: Vec<_> = (0..4).map(message).collect();
        let puts: Vec<_> = msgs.iter().map(put_of).collect();
        vault.commit(&puts, &[]).unwrap();
        let problems = |v: &EmbeddedVault| {
            let mut p = Vec::new();
            v.check_index(&mut |f| p.push(f)).unwrap();
            p
        };
        assert!(problems(&vault).is_empty(), "{:?}", problems(&vault));
        let patient = PatientIndex::from_key_id(super::fault_tests::PATIENT_KEY).unwrap();
        let listed = vault.patient_entries(&patient, &[1, 2]).unwrap();
        assert_eq!(
            listed.len(),
            4 + 2,
            "four raw records and two derived (messages 0 and 3)"
        );
        let first = listed[0].record_id;
        let w = vault.begin_write().unwrap();
        {
            let mut t = w.open_table(PATIENTS).unwrap();
            let mut key = [0u8; 33];
            key[..16].copy_from_slice(&patient.0);
            key[16] = listed[0].kind;
            key[17..].copy_from_slice(&first.0);
            t.remove(key.as_slice()).unwrap();
            key[..16].copy_from_slice(&[9; 16]);
            t.insert(key.as_slice(), [].as_slice()).unwrap();
        }
        w.commit().unwrap();
        let found = problems(&vault);
        assert!(
            found
                .iter()
                .any(|p| p.contains("missing from the patient index")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.contains("under a patient or kind")),
            "{found:?}"
        );
    }

    #[test]
    fn quarantine_entries_past_their_retention_are_removed_and_newer_kept() {
        let dir = tempfile::tempdir().unwrap();
        let vault = open_in(dir.path());
        let key = crate::seal::DataKey::new("gateway", [3; 32]);
        let entry = |ms: u64| {
            let id = RecordId::generate(ms);
            let record = crate::record::Record {
                meta: crate::record::RecordMeta {
                    sender: String::new(),
                    message_type: String::new(),
                    trigger: String::new(),
                    control_id: String::new(),
                    patient_ids: vec![],
                    received_ms: ms,
                    origin: crate::envelope::Origin::Local { name: "t".into() },
                    format: "quarantine".into(),
                },
                raw: bytes::Bytes::from_static(b"not hl7"),
            };
            let sealed = crate::seal::seal(&record, id, &key, crate::seal::Compress::Lz4).unwrap();
            let e = QuarantineEntry {
                id: id.to_string(),
                reason: "r".into(),
                label: "not_hl7".into(),
                received_ms: ms,
                origin: "local".into(),
                size: 7,
            };
            (e, sealed)
        };
        let q: Vec<_> = [1_000, 2_000, 3_000, 4_000]
            .into_iter()
            .map(entry)
            .collect();
        vault.commit(&[], &q).unwrap();
        assert_eq!(vault.quarantine_expire(2_500).unwrap(), 2);
        let left: Vec<u64> = vault
            .quarantine_list()
            .unwrap()
            .iter()
            .map(|e| e.received_ms)
            .collect();
        assert_eq!(left, [3_000, 4_000]);
        assert_eq!(vault.quarantine_expire(2_500).unwrap(), 0);
        assert_eq!(vault.quarantine_expire(u64::MAX >> 16).unwrap(), 2);
        assert!(vault.quarantine_list().unwrap().is_empty());
    }

    /// One bad control entry once failed a whole group commit (276 of 720 unrelated messages).
    #[test]
    fn a_damaged_index_entry_fails_only_its_own_message_in_a_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let open = || open_in(dir.path());
        let msgs: Vec<_> = (0..12).map(message).collect();
        let v = open();
        let first: Vec<PutRecord> = msgs[..6].iter().map(put_of).collect();
        v.commit(&first, &[]).unwrap();
        {
            let w = v.db.begin_write(&|_| Ok(())).unwrap();
            {
                let mut t = w.open_table(CONTROLS).unwrap();
                let key = msgs[2].put.control_key;
                let value = t.get(key.as_slice()).unwrap().unwrap().value().to_vec();
                t.insert(key.as_slice(), &value[..47]).unwrap();
            }
            w.commit().unwrap();
        }
        // Re-sends of the six and six new ones, in one commit.
        let batch: Vec<PutRecord> = msgs.iter().map(put_of).collect();
        let results = v.commit(&batch, &[]).unwrap();
        for (i, r) in results.iter().enumerate() {
            match (i, r) {
                (2, PutResult::IndexDamaged) => {}
                (0..=5, PutResult::Duplicate { record_id, .. }) if i != 2 => {
                    assert_eq!(*record_id, msgs[i].put.sealed.record_id)
                }
                (6.., PutResult::Stored { .. }) => {}
                other => panic!("{other:?}"),
            }
        }
        let mut problems = Vec::new();
        v.check_index(&mut |p| problems.push(p)).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("is malformed"), "{problems:?}");
        drop(v);
        let repaired = EmbeddedVault::repair(
            &dir.path().join("vault.redb"),
            &dir.path().join("segments"),
            1 << 20,
        )
        .unwrap();
        // Twelve messages, four of them (every third) with a derived record.
        assert_eq!(repaired.reindexed, 16);
        let v = open();
        let results = v.commit(&batch, &[]).unwrap();
        assert!(results
            .iter()
            .all(|r| matches!(r, PutResult::Duplicate { .. })));
        let mut problems = Vec::new();
        v.check_index(&mut |p| problems.push(p)).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
    }

    /// A derived record is stored with its raw record, only when that is new, listed under it,
    /// offered to the log as a derived leaf, re-indexed after a crash and rebuilt by repair;
    /// replays append newer ones and clear the failure they replace.
    #[test]
    fn derived_records_follow_their_raw_record_through_commit_crash_replay_and_repair() {
        let dir = tempfile::tempdir().unwrap();
        let (index, segments) = (dir.path().join("vault.redb"), dir.path().join("segments"));
        let open = || open_in(dir.path());
        let msgs: Vec<_> = (0..4).map(message).collect();
        let v = open();
        let mut puts: Vec<PutRecord> = msgs.iter().map(put_of).collect();
        for p in &mut puts {
            p.derived = Derivation::None;
        }
        let first = derived_of(&msgs[0], 0);
        puts[0].derived = Derivation::Mapped(first.clone());
        let failure = MappingFailure {
            label: "unknown_segment".into(),
            detail: "ZZZ".into(),
            mapping_version: "v1".into(),
            at_ms: 3,
        };
        puts[1].derived = Derivation::Failed(failure.clone());
        let results = v.commit(&puts, &[]).unwrap();
        let PutResult::Stored {
            position,
            derived_at: Some(derived_at),
        } = results[0]
        else {
            panic!("{:?}", results[0])
        };
        assert!(derived_at > position);
        assert!(matches!(
            results[1],
            PutResult::Stored {
                derived_at: None,
                ..
            }
        ));
        let raw0 = msgs[0].put.sealed.record_id;
        assert_eq!(v.derived_of(&raw0).unwrap(), vec![first.record_id]);
        assert_eq!(
            v.mapping_failures().unwrap(),
            vec![(msgs[1].put.sealed.record_id, failure)]
        );
        // A re-send is a duplicate: its derivation is not stored a second time.
        let mut again = put_of(&msgs[0]);
        again.derived = Derivation::Mapped(derived_of(&msgs[0], 9));
        assert!(matches!(
            v.commit(&[again], &[]).unwrap()[0],
            PutResult::Duplicate { .. }
        ));
        assert_eq!(v.derived_of(&raw0).unwrap().len(), 1);
        // A re-send of a record stored without a derived record: the derivation made from the
        // re-sent copy names that copy, so it is not filed under the first; the gap is noted.
        let mut resent = put_of(&msgs[2]);
        resent.derived = Derivation::Mapped(derived_of(&msgs[2], 5));
        assert!(matches!(
            v.commit(&[resent], &[]).unwrap()[0],
            PutResult::Duplicate { .. }
        ));
        let raw2 = msgs[2].put.sealed.record_id;
        assert!(v.derived_of(&raw2).unwrap().is_empty());
        let noted = v.mapping_failures().unwrap();
        assert!(
            noted
                .iter()
                .any(|(id, f)| *id == raw2 && f.label == "not_derived"),
            "{noted:?}"
        );
        // The log is offered the derived leaf after its raw one, naming it.
        let leaves = v.unanchored(0).unwrap();
        assert_eq!(leaves.len(), 5);
        assert_eq!(leaves[1].0.record_id, first.record_id);
        assert_eq!(
            leaves[1].0.derived_from,
            Some((raw0, msgs[0].put.sealed.commitment))
        );
        assert_eq!(leaves[1].1, derived_at);
        // A replay: a newer derivation of record 1 clears its failure; record 0 gets a second.
        let replayed = derived_of(&msgs[1], 1);
        let second = derived_of(&msgs[0], 2);
        let positions = v
            .commit_derivations(&[
                Rederive {
                    raw_id: msgs[1].put.sealed.record_id,
                    raw_commitment: msgs[1].put.sealed.commitment,
                    derived: Derivation::Mapped(replayed.clone()),
                },
                Rederive {
                    raw_id: raw0,
                    raw_commitment: msgs[0].put.sealed.commitment,
                    derived: Derivation::Mapped(second.clone()),
                },
            ])
            .unwrap();
        assert!(positions.iter().all(Option::is_some));
        let left: Vec<RecordId> = v
            .mapping_failures()
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            left,
            vec![raw2],
            "record 1's failure is cleared by its replay"
        );
        assert_eq!(
            v.derived_of(&raw0).unwrap(),
            vec![first.record_id, second.record_id]
        );
        let got = v.get(&second.record_id).unwrap().unwrap();
        assert_eq!(got.sealed, second.bytes);
        let check = |v: &EmbeddedVault| {
            let mut problems = Vec::new();
            v.check_index(&mut |p| problems.push(p)).unwrap();
            problems
        };
        assert!(check(&v).is_empty(), "{:?}", check(&v));
        // A derived entry missing from its list is named.
        {
            let w = v.db.begin_write(&|_| Ok(())).unwrap();
            w.open_table(DERIVED)
                .unwrap()
                .insert(raw0.0.as_slice(), first.record_id.0.as_slice())
                .unwrap();
            w.commit().unwrap();
        }
        let problems = check(&v);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("not listed under its raw record"),
            "{problems:?}"
        );
        drop(v);
        // Repair rebuilds the lists from the segments, in store order.
        EmbeddedVault::repair(&index, &segments, 1 << 20).unwrap();
        let v = open();
        assert_eq!(
            v.derived_of(&raw0).unwrap(),
            vec![first.record_id, second.record_id]
        );
        assert!(check(&v).is_empty(), "{:?}", check(&v));
    }
}
