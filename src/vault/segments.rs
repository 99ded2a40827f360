//! Sealed records in append-only segment files (`<data_dir>/segments/NNNNNNNN.seg`): the vault's
//! durable truth.
//!
//! A group commit is one sequential write and one `fdatasync` here; when that returns, every
//! record in it is durable and may be acknowledged. The index (redb) is written after it without
//! waiting for the disk, and made durable only now and then: after a crash, the entries past the
//! index's durable tail are read back from here and indexed again ([`SegmentLog::recover`]). Two
//! fsyncs per commit cost a third of the throughput and twice the latency; a B-tree holding the
//! 5 KB values themselves cost half the core.
//!
//! Entry layout (see `docs/FORMATS.md`), integers big-endian:
//! `len u32` ‖ `crc32 u32` ‖ `record id[16]` ‖ `commitment[32]` ‖ `dedup key[32]` ‖
//! `control key[32]` ‖ `sealed[len]`, where the CRC-32 (IEEE) covers everything after itself.
//! The header carries what the index needs, so the index can be rebuilt from the entries; the
//! checksum tells a complete entry from the torn end of a write that never finished (which no
//! sender was acknowledged for, because acknowledgement waits for the sync).
//!
//! A read checks the entry against the index row (length, id, commitment) and its checksum, so a
//! damaged file or an index that disagrees with it is reported, never served.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::envelope::RecordId;
use crate::ledger::EventKind;
use crate::seal::keyring::PatientIndex;

/// Bytes before the sealed record in an entry.
pub const ENTRY_HEADER: usize = 4 + 4 + 16 + 32 + 32 + 32;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "segment {segment} holds {actual} bytes but {committed} were indexed: acknowledged records are missing"
    )]
    Truncated {
        segment: u32,
        committed: u64,
        actual: u64,
    },
    #[error("segment {segment} at {offset}: entry does not match the index ({what})")]
    Mismatch {
        segment: u32,
        offset: u64,
        what: &'static str,
    },
    /// A damaged entry with intact entries after it: not the torn end of an unacknowledged
    /// write but acknowledged data, which nothing may cut off.
    #[error(
        "segment {segment} at offset {offset}: the entry (record {record} as its header reads) \
         fails its checksum, and intact entries follow it at offset {next_valid} of segment \
         {next_segment}, so it is not the torn end of an unacknowledged write. Nothing was \
         changed. Stop here and keep a copy of the data directory; `medanchor repair` sets the \
         damaged entry aside (its bytes kept under segments/damaged/) and keeps every entry \
         after it"
    )]
    Damaged {
        segment: u32,
        offset: u64,
        record: RecordId,
        next_segment: u32,
        next_valid: u64,
    },
    #[error("segment {segment}: {what}")]
    Layout { segment: u32, what: &'static str },
}

/// What a survey of the log found past the point it started from, besides intact entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Bytes after the last intact entry of the last segment, with no intact entry after them:
    /// the torn end of a group commit whose sync never returned, so no sender was acknowledged
    /// for it.
    TornTail { segment: u32, offset: u64, len: u64 },
}

/// An entry that `repair` replaced with padding, its bytes kept in `kept`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub segment: u32,
    pub offset: u64,
    pub len: u64,
    /// The record id as the damaged header reads (it may itself be damaged).
    pub record: RecordId,
    pub kept: PathBuf,
}

/// The record id of padding entries: `repair` writes one in place of a damaged entry so that
/// every entry after it keeps its offset. Record ids start with a millisecond timestamp, so no
/// record has this one.
pub const PADDING_ID: RecordId = RecordId([0; 16]);

/// Where a record's entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u32,
    pub offset: u64,
    /// Length of the sealed bytes (without the entry header).
    pub len: u32,
}

impl Location {
    /// The tail just after this entry.
    pub fn end(&self) -> Tail {
        Tail {
            segment: self.segment,
            len: self.offset + ENTRY_HEADER as u64 + u64::from(self.len),
        }
    }
}

/// The end of a prefix of the log: segment number and length in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tail {
    pub segment: u32,
    pub len: u64,
}

impl Tail {
    /// The tail as one number that grows with commit order (segment in the top 24 bits; a
    /// segment is far smaller than the 2^40 bytes left for the offset).
    pub fn position(self) -> u64 {
        (u64::from(self.segment) << 40) | self.len
    }
    pub fn from_position(p: u64) -> Tail {
        Tail {
            segment: (p >> 40) as u32,
            len: p & ((1 << 40) - 1),
        }
    }
    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.segment.to_be_bytes());
        b[4..].copy_from_slice(&self.len.to_be_bytes());
        b
    }
    pub fn from_bytes(b: &[u8]) -> Option<Tail> {
        let b: &[u8; 12] = b.try_into().ok()?;
        Some(Tail {
            segment: u32::from_be_bytes(b[..4].try_into().ok()?),
            len: u64::from_be_bytes(b[4..].try_into().ok()?),
        })
    }
}

/// What an entry header says, apart from the lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub record_id: RecordId,
    pub commitment: [u8; 32],
    pub dedup_key: [u8; 32],
    pub control_key: [u8; 32],
}

/// The first 16 bytes of a derived record's control-key field. A raw record's control key is a
/// keyed hash, which starts with these bytes with probability 2^-128.
pub const DERIVED_MARK: &[u8; 16] = b"medanchor/derive";

/// The first 16 bytes of an event's control-key field (see [`EntryHeader::event`]).
pub const EVENT_MARK: &[u8; 16] = b"medanchor/events";

impl EntryHeader {
    /// The header of a derived record's entry: it has no dedup or control key (it is stored
    /// only with, or after, its raw record), so those fields name the raw record instead:
    /// dedup key = raw commitment, control key = [`DERIVED_MARK`] ‖ raw record id.
    pub fn derived(
        record_id: RecordId,
        commitment: [u8; 32],
        raw_id: RecordId,
        raw_commitment: [u8; 32],
    ) -> EntryHeader {
        let mut control_key = [0u8; 32];
        control_key[..16].copy_from_slice(DERIVED_MARK);
        control_key[16..].copy_from_slice(&raw_id.0);
        EntryHeader {
            record_id,
            commitment,
            dedup_key: raw_commitment,
            control_key,
        }
    }

    /// For a derived record's entry, the raw record's id and commitment.
    pub fn derived_from(&self) -> Option<(RecordId, [u8; 32])> {
        (self.control_key[..16] == DERIVED_MARK[..]).then(|| {
            (
                RecordId(self.control_key[16..].try_into().expect("16")),
                self.dedup_key,
            )
        })
    }

    /// The header of an event's entry: no dedup or control key either, so the dedup key field
    /// holds the patient it concerns (16 bytes, then zeros) and the control key field is
    /// [`EVENT_MARK`] ‖ the event's kind byte ‖ zeros.
    pub fn for_event(
        kind: EventKind,
        record_id: RecordId,
        commitment: [u8; 32],
        patient: &PatientIndex,
    ) -> EntryHeader {
        let mut control_key = [0u8; 32];
        control_key[..16].copy_from_slice(EVENT_MARK);
        control_key[16] = kind.byte();
        let mut dedup_key = [0u8; 32];
        dedup_key[..16].copy_from_slice(&patient.0);
        EntryHeader {
            record_id,
            commitment,
            dedup_key,
            control_key,
        }
    }

    /// For an event's entry, its kind and the patient it concerns. An entry with the mark and
    /// a kind byte that is no event's is not an event (and not a raw record either: the
    /// verifier names it).
    pub fn event(&self) -> Option<(EventKind, PatientIndex)> {
        if self.control_key[..16] != EVENT_MARK[..] {
            return None;
        }
        let kind = EventKind::from_byte(self.control_key[16])?;
        Some((
            kind,
            PatientIndex(self.dedup_key[..16].try_into().expect("16")),
        ))
    }

    /// Whether this is a raw record's entry (neither derived nor an event), which has a
    /// control entry in the index.
    pub fn is_raw(&self) -> bool {
        self.control_key[..16] != DERIVED_MARK[..] && self.control_key[..16] != EVENT_MARK[..]
    }

    /// The log leaf that anchors this entry's record.
    pub fn leaf(&self) -> crate::ledger::Leaf {
        crate::ledger::Leaf {
            record_id: self.record_id,
            commitment: self.commitment,
            derived_from: self.derived_from(),
            event: self.event().map(|(kind, _)| kind),
        }
    }

    fn parse(h: &[u8; ENTRY_HEADER]) -> (u32, u32, EntryHeader) {
        let field = |from: usize| -> [u8; 32] { h[from..from + 32].try_into().expect("32") };
        (
            u32::from_be_bytes(h[..4].try_into().expect("4")),
            u32::from_be_bytes(h[4..8].try_into().expect("4")),
            EntryHeader {
                record_id: RecordId(h[8..24].try_into().expect("16")),
                commitment: field(24),
                dedup_key: field(56),
                control_key: field(88),
            },
        )
    }
}

pub struct SegmentLog {
    dir: PathBuf,
    max_segment_bytes: u64,
    active: Mutex<Active>,
    readers: Mutex<HashMap<u32, Arc<File>>>,
    faults: Option<FaultHook>,
}

/// The seam where a test fails the log's writes: called before every write, sync, truncation
/// and file creation of a running log; an error from it is what the operation returns (a
/// failed write first writes half its bytes: a short write).
pub type FaultHook = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

struct Active {
    tail: Tail,
    file: File,
    /// Bytes of a failed append may still lie past `tail` (cutting them off failed too): the
    /// next append cuts them first, so no stale entry can follow a new one.
    dirty: bool,
}

/// Entries staged for one commit. The vault keeps one and reuses it: a fresh buffer per commit
/// (megabytes at full load) grew by doubling, copying what it held at every step, and went back
/// to the allocator after each commit.
#[derive(Default)]
pub struct Staged {
    buf: Vec<u8>,
}

/// The most a reused `Staged` keeps between commits; a burst of large records can need more
/// for one commit, but the memory goes back afterwards.
const STAGED_KEEP: usize = 32 << 20;

impl Staged {
    /// Empties the buffer for the next commit.
    pub fn clear(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > STAGED_KEEP {
            self.buf.shrink_to(STAGED_KEEP);
        }
    }
}

fn path_of(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:08}.seg"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads the complete entries of one segment from `from` on, stopping at the end of the file or
/// at the first entry that is cut short or fails its checksum. Returns where the good entries end.
fn scan_file(
    file: &File,
    path: &Path,
    from: u64,
    f: &mut dyn FnMut(&EntryHeader, Location),
    segment: u32,
) -> Result<u64, SegmentError> {
    let end = file.metadata().map_err(io(path))?.len();
    let mut at = from;
    let mut header = [0u8; ENTRY_HEADER];
    let mut body = Vec::new();
    while at + ENTRY_HEADER as u64 <= end {
        file.read_exact_at(&mut header, at).map_err(io(path))?;
        let (len, crc, h) = EntryHeader::parse(&header);
        let next = at + ENTRY_HEADER as u64 + u64::from(len);
        if next > end {
            break;
        }
        body.resize(len as usize, 0);
        file.read_exact_at(&mut body, at + ENTRY_HEADER as u64)
            .map_err(io(path))?;
        if checksum(&header[8..], &body) != crc {
            break;
        }
        if h.record_id != PADDING_ID {
            f(
                &h,
                Location {
                    segment,
                    offset: at,
                    len,
                },
            );
        }
        at = next;
    }
    Ok(at)
}

/// The offset of the first intact entry that starts after `from` (exclusive) in the file, if
/// any. Entries are found by the sealed-record magic at the start of their body and confirmed by
/// length and checksum, so a damaged length field does not hide what follows it.
fn next_intact(file: &File, path: &Path, from: u64) -> Result<Option<u64>, SegmentError> {
    let end = file.metadata().map_err(io(path))?.len();
    let start = from + 1;
    if start >= end {
        return Ok(None);
    }
    // Only on a damaged log, so reading the rest of one segment (at most its size) is fine.
    let mut rest = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut rest, start).map_err(io(path))?;
    // "MAS", the magic both versions of a sealed record begin with; the checksum confirms.
    for pos in memchr::memmem::find_iter(&rest, &crate::seal::MAGIC[..3]) {
        let Some(at) = pos.checked_sub(ENTRY_HEADER) else {
            continue;
        };
        let header: &[u8; ENTRY_HEADER] = rest[at..pos].try_into().expect("sized");
        let (len, crc, _) = EntryHeader::parse(header);
        let Some(body) = rest.get(pos..pos + len as usize) else {
            continue;
        };
        if checksum(&header[8..], body) == crc {
            return Ok(Some(start + at as u64));
        }
    }
    Ok(None)
}

/// Where the intact prefix of the log from `from` on ends, and what lies after it. Reads only.
struct Survey {
    tail: Tail,
    finding: Option<Finding>,
}

/// Walks the segments from `from`, handing every intact entry to `f`. Damage followed by an
/// intact entry (in the same segment or a later one) is an error: only the end of the last
/// segment can be torn.
fn survey(
    dir: &Path,
    from: Tail,
    f: &mut dyn FnMut(&EntryHeader, Location),
) -> Result<Survey, SegmentError> {
    let mut segment = from.segment;
    let mut at = from.len;
    loop {
        let path = path_of(dir, segment);
        let file = File::open(&path).map_err(io(&path))?;
        let actual = file.metadata().map_err(io(&path))?.len();
        if actual < at {
            return Err(SegmentError::Truncated {
                segment,
                committed: at,
                actual,
            });
        }
        let good = scan_file(&file, &path, at, f, segment)?;
        let later = path_of(dir, segment + 1).exists();
        if good < actual {
            // Either intact entries follow in this file, or a later file exists (this one was
            // finished before it was started): acknowledged data either way.
            let next = match next_intact(&file, &path, good)? {
                Some(o) => Some((segment, o)),
                None if later => Some((segment + 1, 0)),
                None => None,
            };
            if let Some((next_segment, next_valid)) = next {
                let mut header = [0u8; ENTRY_HEADER];
                let n = (actual - good).min(ENTRY_HEADER as u64) as usize;
                file.read_exact_at(&mut header[..n], good)
                    .map_err(io(&path))?;
                return Err(SegmentError::Damaged {
                    segment,
                    offset: good,
                    record: EntryHeader::parse(&header).2.record_id,
                    next_segment,
                    next_valid,
                });
            }
            return Ok(Survey {
                tail: Tail { segment, len: good },
                finding: Some(Finding::TornTail {
                    segment,
                    offset: good,
                    len: actual - good,
                }),
            });
        }
        if !later {
            return Ok(Survey {
                tail: Tail { segment, len: good },
                finding: None,
            });
        }
        segment += 1;
        at = 0;
    }
}

/// Copies `len` bytes at `offset` of a segment to a new file under `segments/<what>/` and syncs
/// it, so that what recovery or repair removes from a segment is kept for inspection.
fn keep_aside(
    dir: &Path,
    what: &str,
    file: &File,
    segment: u32,
    offset: u64,
    len: u64,
) -> Result<PathBuf, SegmentError> {
    let aside = dir.join(what);
    std::fs::create_dir_all(&aside).map_err(io(&aside))?;
    let path = aside.join(format!("{segment:08}-{offset:012}.bin"));
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, offset)
        .map_err(io(&path_of(dir, segment)))?;
    std::fs::write(&path, &bytes).map_err(io(&path))?;
    File::open(&path)
        .and_then(|f| f.sync_all())
        .and_then(|()| File::open(&aside))
        .and_then(|d| d.sync_all())
        .map_err(io(&path))?;
    Ok(path)
}

fn checksum(header_rest: &[u8], sealed: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(header_rest);
    c.update(sealed);
    c.finalize()
}

impl SegmentLog {
    /// Finds the true end of the log after `indexed` (the index's durable tail): every intact
    /// entry past it is handed to `f` to be indexed again, and the torn end of an unfinished
    /// write, if any, is moved to `segments/torn/` and cut off. The log is then opened at that
    /// end.
    ///
    /// Entries before `indexed` must all be there: a file shorter than that means acknowledged
    /// records are gone, which is an error, never silently repaired. So is a damaged entry with
    /// intact ones after it ([`SegmentError::Damaged`]): it is no torn end, and `repair` is the
    /// explicit way past it.
    pub fn recover(
        dir: &Path,
        indexed: Tail,
        max_segment_bytes: u64,
        create: bool,
        f: &mut dyn FnMut(&EntryHeader, Location),
    ) -> Result<Self, SegmentError> {
        if create {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let first = path_of(dir, indexed.segment);
            if !first.exists() {
                File::create(&first).map_err(io(&first))?;
            }
        }
        let survey = survey(dir, indexed, f)?;
        let tail = survey.tail;
        let path = path_of(dir, tail.segment);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        if let Some(Finding::TornTail {
            segment,
            offset,
            len,
        }) = survey.finding
        {
            let kept = keep_aside(dir, "torn", &file, segment, offset, len)?;
            tracing::warn!(
                segment,
                offset,
                bytes = len,
                kept = %kept.display(),
                "cut off the torn end of a write that was never acknowledged"
            );
            file.set_len(offset).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        Ok(SegmentLog {
            dir: dir.to_path_buf(),
            max_segment_bytes,
            active: Mutex::new(Active {
                tail,
                file,
                dirty: false,
            }),
            readers: Mutex::new(HashMap::new()),
            faults: None,
        })
    }

    /// Opens the log for reading only, changing nothing: the intact entries past `indexed` go to
    /// `f` (what the next start would index again) and the finding says what it would cut off.
    pub fn open_read_only(
        dir: &Path,
        indexed: Tail,
        f: &mut dyn FnMut(&EntryHeader, Location),
    ) -> Result<(Self, Option<Finding>), SegmentError> {
        let survey = survey(dir, indexed, f)?;
        let path = path_of(dir, survey.tail.segment);
        let file = File::open(&path).map_err(io(&path))?;
        Ok((
            SegmentLog {
                dir: dir.to_path_buf(),
                max_segment_bytes: 0,
                active: Mutex::new(Active {
                    tail: survey.tail,
                    file,
                    dirty: false,
                }),
                readers: Mutex::new(HashMap::new()),
                faults: None,
            },
            survey.finding,
        ))
    }

    /// Replaces every damaged entry in every segment with a padding entry of the same size,
    /// after copying its bytes to `segments/damaged/`, so that the entries after it keep their
    /// offsets and the log opens again. A damaged end of the last segment with nothing intact
    /// after it is left to `recover` (a torn write), unless it starts before `acknowledged` (what
    /// the index had durably indexed): that is acknowledged data and is set aside too. For a
    /// stopped gateway only.
    pub fn repair(dir: &Path, acknowledged: Tail) -> Result<Vec<SetAside>, SegmentError> {
        let mut done = Vec::new();
        let mut segment = 0;
        loop {
            let path = path_of(dir, segment);
            if !path.exists() {
                break;
            }
            let later = path_of(dir, segment + 1).exists();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            let end = file.metadata().map_err(io(&path))?.len();
            let mut at = 0;
            loop {
                at = scan_file(&file, &path, at, &mut |_, _| {}, segment)?;
                if at >= end {
                    break;
                }
                let next = match next_intact(&file, &path, at)? {
                    Some(n) => n,
                    None if later => end,
                    None if (Tail { segment, len: at }).position() < acknowledged.position() => end,
                    None => break,
                };
                let len = next - at;
                if len < ENTRY_HEADER as u64 {
                    return Err(SegmentError::Layout {
                        segment,
                        what: "a damaged span is shorter than an entry header",
                    });
                }
                let mut header = [0u8; ENTRY_HEADER];
                file.read_exact_at(&mut header, at).map_err(io(&path))?;
                let record = EntryHeader::parse(&header).2.record_id;
                let kept = keep_aside(dir, "damaged", &file, segment, at, len)?;
                let mut staged = Staged::default();
                let body = vec![0u8; (len - ENTRY_HEADER as u64) as usize];
                let padding = EntryHeader {
                    record_id: PADDING_ID,
                    commitment: [0; 32],
                    dedup_key: [0; 32],
                    control_key: [0; 32],
                };
                SegmentLog::stage(&mut staged, &padding, &body);
                file.write_all_at(&staged.buf, at).map_err(io(&path))?;
                file.sync_data().map_err(io(&path))?;
                tracing::warn!(segment, offset = at, bytes = len, kept = %kept.display(), "damaged entry set aside");
                done.push(SetAside {
                    segment,
                    offset: at,
                    len,
                    record,
                    kept,
                });
                at = next;
            }
            segment += 1;
        }
        Ok(done)
    }

    /// Adds an entry to `staged`; returns its offset within `staged` and the sealed length.
    pub fn stage(staged: &mut Staged, h: &EntryHeader, sealed: &[u8]) -> (u64, u32) {
        let offset = staged.buf.len() as u64;
        let len =
            u32::try_from(sealed.len()).expect("sealed records are bounded by the frame limit");
        let start = staged.buf.len();
        staged.buf.extend_from_slice(&len.to_be_bytes());
        staged.buf.extend_from_slice(&[0; 4]);
        staged.buf.extend_from_slice(&h.record_id.0);
        staged.buf.extend_from_slice(&h.commitment);
        staged.buf.extend_from_slice(&h.dedup_key);
        staged.buf.extend_from_slice(&h.control_key);
        staged.buf.extend_from_slice(sealed);
        let crc = checksum(&staged.buf[start + 8..start + ENTRY_HEADER], sealed);
        staged.buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
        (offset, len)
    }

    /// Writes `staged` at the end of the log and syncs it: when this returns, the entries are
    /// durable. Returns the segment and offset the staged offsets are relative to.
    pub fn append(&self, staged: &Staged) -> Result<(u32, u64), SegmentError> {
        let mut a = self.active.lock().expect("lock");
        if a.dirty {
            let path = path_of(&self.dir, a.tail.segment);
            self.set_len(&a.file, a.tail.len).map_err(io(&path))?;
            a.dirty = false;
        }
        if a.tail.len > 0 && a.tail.len + staged.buf.len() as u64 > self.max_segment_bytes {
            self.roll(&mut a)?;
        }
        let base = a.tail;
        let path = path_of(&self.dir, base.segment);
        let written = self
            .write_at(&a.file, &staged.buf, base.len)
            .and_then(|()| self.sync(&a.file));
        if let Err(e) = written {
            // Nothing of this commit may stay: cut the file back so no later entry follows it.
            a.dirty = self.set_len(&a.file, base.len).is_err();
            return Err(io(&path)(e));
        }
        a.tail.len += staged.buf.len() as u64;
        Ok((base.segment, base.len))
    }

    /// Fails this log's writes from now on as `hook` says (tests only).
    #[doc(hidden)]
    pub fn set_faults(&mut self, hook: FaultHook) {
        self.faults = Some(hook);
    }

    fn fault(&self) -> std::io::Result<()> {
        self.faults.as_ref().map_or(Ok(()), |f| f())
    }

    fn write_at(&self, file: &File, buf: &[u8], at: u64) -> std::io::Result<()> {
        if let Err(e) = self.fault() {
            let _ = file.write_all_at(&buf[..buf.len() / 2], at);
            return Err(e);
        }
        file.write_all_at(buf, at)
    }

    fn sync(&self, file: &File) -> std::io::Result<()> {
        self.fault()?;
        file.sync_data()
    }

    /// Cuts the file and makes the cut durable.
    fn set_len(&self, file: &File, len: u64) -> std::io::Result<()> {
        self.fault()?;
        file.set_len(len)?;
        self.sync(file)
    }

    /// The end of everything appended.
    pub fn tail(&self) -> Tail {
        self.active.lock().expect("lock").tail
    }

    fn roll(&self, a: &mut Active) -> Result<(), SegmentError> {
        let next = a.tail.segment + 1;
        let path = path_of(&self.dir, next);
        self.fault().map_err(io(&path))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io(&path))?;
        // The new file's name must be durable before anything in it is acknowledged.
        self.fault()
            .and_then(|()| File::open(&self.dir))
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        a.file = file;
        a.tail = Tail {
            segment: next,
            len: 0,
        };
        Ok(())
    }

    fn reader(&self, segment: u32) -> Result<Arc<File>, SegmentError> {
        let mut readers = self.readers.lock().expect("lock");
        if let Some(f) = readers.get(&segment) {
            return Ok(f.clone());
        }
        let path = path_of(&self.dir, segment);
        let f = Arc::new(File::open(&path).map_err(io(&path))?);
        readers.insert(segment, f.clone());
        Ok(f)
    }

    /// The sealed bytes at `at`, after checking the entry against the index and its checksum.
    pub fn read(
        &self,
        id: &RecordId,
        commitment: &[u8; 32],
        at: Location,
    ) -> Result<Vec<u8>, SegmentError> {
        let file = self.reader(at.segment)?;
        let mut buf = vec![0u8; ENTRY_HEADER + at.len as usize];
        let path = path_of(&self.dir, at.segment);
        file.read_exact_at(&mut buf, at.offset).map_err(io(&path))?;
        let mismatch = |what| SegmentError::Mismatch {
            segment: at.segment,
            offset: at.offset,
            what,
        };
        let header: &[u8; ENTRY_HEADER] = buf[..ENTRY_HEADER].try_into().expect("sized above");
        let (len, crc, h) = EntryHeader::parse(header);
        if len != at.len {
            return Err(mismatch("length"));
        }
        if h.record_id != *id {
            return Err(mismatch("record id"));
        }
        if h.commitment != *commitment {
            return Err(mismatch("commitment"));
        }
        if checksum(&buf[8..ENTRY_HEADER], &buf[ENTRY_HEADER..]) != crc {
            return Err(mismatch("checksum"));
        }
        buf.drain(..ENTRY_HEADER);
        Ok(buf)
    }

    /// Every entry from the start of the log up to `to`, padding included (flagged), with the
    /// tail just after it: for checks that must see every entry.
    pub fn scan_all(
        &self,
        to: Tail,
        f: &mut dyn FnMut(&EntryHeader, Tail, bool),
    ) -> Result<(), SegmentError> {
        self.walk(Tail::default(), to, &mut |h, at| {
            f(h, at.end(), h.record_id == PADDING_ID)
        })
    }

    /// Every record entry after `from` up to `to`, in commit order, with where it is.
    pub fn scan_entries(
        &self,
        from: Tail,
        to: Tail,
        f: &mut dyn FnMut(&EntryHeader, Location),
    ) -> Result<(), SegmentError> {
        self.walk(from, to, &mut |h, at| {
            if h.record_id != PADDING_ID {
                f(h, at)
            }
        })
    }

    /// Every entry after `from` up to `to`, in commit order, with the tail just after it.
    /// Reads headers only (the entries were checked when they were recovered or written).
    pub fn scan(
        &self,
        from: Tail,
        to: Tail,
        f: &mut dyn FnMut(&EntryHeader, Tail),
    ) -> Result<(), SegmentError> {
        self.scan_entries(from, to, &mut |h, at| f(h, at.end()))
    }

    fn walk(
        &self,
        from: Tail,
        to: Tail,
        f: &mut dyn FnMut(&EntryHeader, Location),
    ) -> Result<(), SegmentError> {
        for segment in from.segment..=to.segment {
            let path = path_of(&self.dir, segment);
            let file = self.reader(segment)?;
            let end = if segment == to.segment {
                to.len
            } else {
                file.metadata().map_err(io(&path))?.len()
            };
            let mut at = if segment == from.segment { from.len } else { 0 };
            let mut header = [0u8; ENTRY_HEADER];
            while at < end {
                file.read_exact_at(&mut header, at).map_err(io(&path))?;
                let (len, _, h) = EntryHeader::parse(&header);
                let next = at + (ENTRY_HEADER as u64) + u64::from(len);
                if next > end {
                    return Err(SegmentError::Mismatch {
                        segment,
                        offset: at,
                        what: "entry runs past the end",
                    });
                }
                f(
                    &h,
                    Location {
                        segment,
                        offset: at,
                        len,
                    },
                );
                at = next;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(n: u8) -> EntryHeader {
        EntryHeader {
            record_id: RecordId([n; 16]),
            commitment: [n; 32],
            dedup_key: [n ^ 0x55; 32],
            control_key: [n ^ 0xAA; 32],
        }
    }

    fn open(dir: &Path, indexed: Tail, max: u64) -> (SegmentLog, Vec<(u8, Location)>) {
        let mut seen = Vec::new();
        let log = SegmentLog::recover(dir, indexed, max, true, &mut |h, at| {
            assert_eq!(*h, header(h.record_id.0[0]));
            seen.push((h.record_id.0[0], at))
        })
        .unwrap();
        (log, seen)
    }

    /// A sealed record's stand-in: the sealed-record magic, then its id value up to `n` bytes.
    fn body(i: u8, n: usize) -> Vec<u8> {
        let mut b = crate::seal::MAGIC.to_vec();
        b.resize(n, i);
        b
    }

    /// Appends entries `ids`, each [`body`] of `n` bytes.
    fn put(log: &SegmentLog, ids: &[u8], n: usize) -> Vec<Location> {
        let mut staged = Staged::default();
        let offs: Vec<(u64, u32)> = ids
            .iter()
            .map(|&i| SegmentLog::stage(&mut staged, &header(i), &body(i, n)))
            .collect();
        let (segment, base) = log.append(&staged).unwrap();
        offs.into_iter()
            .map(|(offset, len)| Location {
                segment,
                offset: base + offset,
                len,
            })
            .collect()
    }

    #[test]
    fn entries_read_back_after_reopen_and_rolls_start_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), Tail::default(), 1000);
        let a = put(&log, &[1, 2, 3], 200);
        let b = put(&log, &[4, 5, 6], 200); // 3·320 + 3·320 > 1000: a new segment
        assert_eq!(a[0].segment, 0);
        assert_eq!(b[0].segment, 1);
        let tail = log.tail();
        assert_eq!(tail, b[2].end());
        drop(log);
        // Reopened from an index that had everything: nothing to recover.
        let (log, seen) = open(dir.path(), tail, 1000);
        assert!(seen.is_empty());
        for (i, at) in [1u8, 2, 3, 4, 5, 6].iter().zip(a.iter().chain(&b)) {
            assert_eq!(
                log.read(&RecordId([*i; 16]), &[*i; 32], *at).unwrap(),
                body(*i, 200)
            );
        }
        // The headers list every record in commit order, from any point.
        let mut seen = Vec::new();
        log.scan(Tail::default(), tail, &mut |h, t| {
            seen.push((h.record_id.0[0], t))
        })
        .unwrap();
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        let mut rest = Vec::new();
        log.scan(seen[1].1, tail, &mut |h, _| rest.push(h.record_id.0[0]))
            .unwrap();
        assert_eq!(rest, [3, 4, 5, 6]);
        assert_eq!(Tail::from_position(seen[3].1.position()), seen[3].1);
        assert!(seen[2].1.position() < seen[3].1.position());
    }

    #[test]
    fn entries_past_the_indexed_tail_are_recovered_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), Tail::default(), 1000);
        let a = put(&log, &[1, 2], 200);
        let b = put(&log, &[3, 4, 5], 200);
        let c = put(&log, &[6], 200);
        let tail = log.tail();
        drop(log);
        // The index durably knew only the first commit.
        let (log, seen) = open(dir.path(), a[1].end(), 1000);
        assert_eq!(
            seen,
            vec![(3, b[0]), (4, b[1]), (5, b[2]), (6, c[0])],
            "everything after the indexed tail, in order, across the roll"
        );
        assert_eq!(log.tail(), tail);
    }

    #[test]
    fn a_torn_write_is_cut_off_and_never_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), Tail::default(), 1 << 20);
        let a = put(&log, &[1, 2], 100);
        drop(log);
        let path = dir.path().join("00000000.seg");
        let good = std::fs::metadata(&path).unwrap().len();
        // The end of a write that never finished: a first entry with a bad checksum and bytes
        // after it that hold no intact sealed entry (no sealed-record magic to resync on).
        let mut staged = Staged::default();
        SegmentLog::stage(&mut staged, &header(3), &[3; 100]);
        SegmentLog::stage(&mut staged, &header(4), &[4; 100]);
        let mut bytes = std::fs::read(&path).unwrap();
        let mut torn = staged.buf.clone();
        torn[ENTRY_HEADER + 50] ^= 1; // first entry damaged
        bytes.extend_from_slice(&torn);
        std::fs::write(&path, &bytes).unwrap();
        let (log, seen) = open(dir.path(), a[1].end(), 1 << 20);
        assert!(
            seen.is_empty(),
            "a damaged entry and what follows it are not records"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        let kept = dir.path().join(format!("torn/00000000-{good:012}.bin"));
        assert_eq!(
            std::fs::read(kept).unwrap(),
            torn,
            "the torn bytes are kept aside"
        );
        // The next append goes where the torn bytes were.
        let b = put(&log, &[5], 10);
        assert_eq!(b[0].offset, good);
        // A body cut short.
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&staged.buf[..ENTRY_HEADER + 10]);
        std::fs::write(&path, &bytes).unwrap();
        let (_, seen) = open(dir.path(), b[0].end(), 1 << 20);
        assert!(seen.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), b[0].end().len);
    }

    /// Fifty acknowledged entries, a crash before the index knew any, one byte flipped inside
    /// entry 10: recovery once took it for a torn end and cut off entries 10 to 49. Now it
    /// refuses, changing nothing, naming segment, offset and record; `repair` sets the one
    /// entry aside and keeps the 49 others.
    #[test]
    fn a_damaged_entry_with_intact_ones_after_it_is_refused_then_repaired() {
        for flip in [ENTRY_HEADER + 30, 2 /* in the length field */] {
            let dir = tempfile::tempdir().unwrap();
            let (log, _) = open(dir.path(), Tail::default(), 1 << 20);
            let at: Vec<Location> = (1..=50u8).flat_map(|i| put(&log, &[i], 200)).collect();
            drop(log);
            let path = dir.path().join("00000000.seg");
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[at[9].offset as usize + flip] ^= 0x04;
            std::fs::write(&path, &bytes).unwrap();
            let e =
                SegmentLog::recover(dir.path(), Tail::default(), 1 << 20, false, &mut |_, _| {})
                    .err()
                    .expect("acknowledged entries follow the damage");
            match &e {
                SegmentError::Damaged {
                    segment,
                    offset,
                    record,
                    next_valid,
                    ..
                } => {
                    assert_eq!((*segment, *offset), (0, at[9].offset));
                    assert_eq!(*next_valid, at[10].offset, "found past a bad length too");
                    if flip > 24 {
                        assert_eq!(*record, RecordId([10; 16]));
                    }
                }
                other => panic!("{other}"),
            }
            assert!(e.to_string().contains("medanchor repair"), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing changed");
            // The read-only open refuses the same way.
            assert!(matches!(
                SegmentLog::open_read_only(dir.path(), Tail::default(), &mut |_, _| {}),
                Err(SegmentError::Damaged { .. })
            ));

            let aside = SegmentLog::repair(dir.path(), Tail::default()).unwrap();
            assert_eq!(aside.len(), 1);
            assert_eq!(
                (aside[0].offset, aside[0].len),
                (at[9].offset, at[10].offset - at[9].offset)
            );
            assert_eq!(
                std::fs::read(&aside[0].kept).unwrap(),
                bytes[at[9].offset as usize..at[10].offset as usize],
                "the damaged bytes are kept"
            );
            let (log, seen) = open_any(dir.path());
            let ids: Vec<u8> = seen.iter().map(|s| s.0).collect();
            let expected: Vec<u8> = (1..=50).filter(|&i| i != 10).collect();
            assert_eq!(ids, expected, "every other entry, at its old offset");
            for (i, loc) in &seen {
                assert_eq!(*loc, at[*i as usize - 1]);
            }
            assert_eq!(log.tail(), at[49].end());
            let mut scanned = Vec::new();
            log.scan(Tail::default(), log.tail(), &mut |h, _| {
                scanned.push(h.record_id.0[0])
            })
            .unwrap();
            assert_eq!(scanned, expected, "padding is not a record");
            assert!(
                SegmentLog::repair(dir.path(), Tail::default())
                    .unwrap()
                    .is_empty(),
                "idempotent"
            );
        }
    }

    /// A segment is finished before the next one starts: damage at its end is never a torn
    /// write, even with nothing intact after it in the same file.
    #[test]
    fn damage_at_the_end_of_a_finished_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), Tail::default(), 1000);
        let a = put(&log, &[1, 2, 3], 200);
        let b = put(&log, &[4], 200);
        assert_eq!(b[0].segment, 1);
        drop(log);
        let path = dir.path().join("00000000.seg");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[a[2].offset as usize + ENTRY_HEADER + 1] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = SegmentLog::recover(dir.path(), Tail::default(), 1000, false, &mut |_, _| {})
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                SegmentError::Damaged {
                    next_segment: 1,
                    next_valid: 0,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            SegmentLog::repair(dir.path(), Tail::default())
                .unwrap()
                .len(),
            1
        );
        let (_, seen) = open_any(dir.path());
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 4]);
    }

    fn open_any(dir: &Path) -> (SegmentLog, Vec<(u8, Location)>) {
        let mut seen = Vec::new();
        let log = SegmentLog::recover(dir, Tail::default(), 1 << 20, false, &mut |h, at| {
            seen.push((h.record_id.0[0], at))
        })
        .unwrap();
        (log, seen)
    }

    #[test]
    fn a_file_shorter_than_the_indexed_tail_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), Tail::default(), 1 << 20);
        put(&log, &[1, 2], 100);
        let tail = log.tail();
        drop(log);
        let path = dir.path().join("00000000.seg");
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(tail.len - 1).unwrap();
        let e = SegmentLog::recover(dir.path(), tail, 1 << 20, false, &mut |_, _| {})
            .err()
            .expect("missing acknowledged bytes must not open");
        assert!(matches!(e, SegmentError::Truncated { .. }), "{e}");
    }

    #[test]
    fn an_index_that_disagrees_with_the_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), Tail::default(), 1 << 20);
        let at = put(&log, &[1, 2], 100);
        let id = |n| RecordId([n; 16]);
        let what = |r: Result<Vec<u8>, SegmentError>| match r {
            Err(SegmentError::Mismatch { what, .. }) => what,
            other => panic!("{other:?}"),
        };
        assert_eq!(what(log.read(&id(2), &[1; 32], at[0])), "record id");
        assert_eq!(what(log.read(&id(1), &[2; 32], at[0])), "commitment");
        assert_eq!(
            what(log.read(&id(1), &[1; 32], Location { len: 99, ..at[0] })),
            "length"
        );
        let past_end = Location {
            offset: 10_000,
            ..at[0]
        };
        assert!(matches!(
            log.read(&id(1), &[1; 32], past_end),
            Err(SegmentError::Io { .. })
        ));
        // A flipped byte in the body.
        drop(log);
        let path = dir.path().join("00000000.seg");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at[0].offset as usize + ENTRY_HEADER + 7] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let log =
            SegmentLog::recover(dir.path(), at[1].end(), 1 << 20, false, &mut |_, _| {}).unwrap();
        assert_eq!(what(log.read(&id(1), &[1; 32], at[0])), "checksum");
    }
}
