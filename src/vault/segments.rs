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
}

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

impl EntryHeader {
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
}

struct Active {
    tail: Tail,
    file: File,
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
    Ok(at)
}

fn checksum(header_rest: &[u8], sealed: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(header_rest);
    c.update(sealed);
    c.finalize()
}

impl SegmentLog {
    /// Finds the true end of the log after `indexed` (the index's durable tail): every complete
    /// entry past it is handed to `f` to be indexed again, and the torn end of an unfinished
    /// write, if any, is cut off. The log is then opened at that end.
    ///
    /// Entries before `indexed` must all be there: a file shorter than that means acknowledged
    /// records are gone, which is an error, never silently repaired.
    pub fn recover(
        dir: &Path,
        indexed: Tail,
        max_segment_bytes: u64,
        create: bool,
        f: &mut dyn FnMut(&EntryHeader, Location),
    ) -> Result<Self, SegmentError> {
        if create {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut segment = indexed.segment;
        let mut from = indexed.len;
        loop {
            let path = path_of(dir, segment);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(create || segment > indexed.segment)
                .truncate(false)
                .open(&path)
                .map_err(io(&path))?;
            let actual = file.metadata().map_err(io(&path))?.len();
            if actual < from {
                return Err(SegmentError::Truncated {
                    segment,
                    committed: from,
                    actual,
                });
            }
            let good = scan_file(&file, &path, from, f, segment)?;
            let next = path_of(dir, segment + 1);
            // A later segment exists only if this one was finished, so it ends at `good`.
            if good == actual && next.exists() {
                segment += 1;
                from = 0;
                continue;
            }
            if good < actual {
                tracing::warn!(
                    segment,
                    bytes = actual - good,
                    "discarding the torn end of a write that was never acknowledged"
                );
                file.set_len(good).map_err(io(&path))?;
                file.sync_all().map_err(io(&path))?;
            }
            return Ok(SegmentLog {
                dir: dir.to_path_buf(),
                max_segment_bytes,
                active: Mutex::new(Active {
                    tail: Tail { segment, len: good },
                    file,
                }),
                readers: Mutex::new(HashMap::new()),
            });
        }
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
        if a.tail.len > 0 && a.tail.len + staged.buf.len() as u64 > self.max_segment_bytes {
            self.roll(&mut a)?;
        }
        let base = a.tail;
        let path = path_of(&self.dir, base.segment);
        let written = a
            .file
            .write_all_at(&staged.buf, base.len)
            .and_then(|()| a.file.sync_data());
        if let Err(e) = written {
            // Nothing of this commit may stay: cut the file back so no later entry follows it.
            let _ = a.file.set_len(base.len);
            return Err(io(&path)(e));
        }
        a.tail.len += staged.buf.len() as u64;
        Ok((base.segment, base.len))
    }

    /// Takes back the last append (its index commit failed, so its senders were told to resend).
    pub fn undo(&self, segment: u32, base: u64) -> Result<(), SegmentError> {
        let mut a = self.active.lock().expect("lock");
        if a.tail.segment == segment {
            let path = path_of(&self.dir, segment);
            a.file.set_len(base).map_err(io(&path))?;
            a.file.sync_data().map_err(io(&path))?;
            a.tail.len = base;
        }
        Ok(())
    }

    /// The end of everything appended.
    pub fn tail(&self) -> Tail {
        self.active.lock().expect("lock").tail
    }

    fn roll(&self, a: &mut Active) -> Result<(), SegmentError> {
        let next = a.tail.segment + 1;
        let path = path_of(&self.dir, next);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io(&path))?;
        // The new file's name must be durable before anything in it is acknowledged.
        File::open(&self.dir)
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

    /// Every entry after `from` up to `to`, in commit order, with the tail just after it.
    /// Reads headers only (the entries were checked when they were recovered or written).
    pub fn scan(
        &self,
        from: Tail,
        to: Tail,
        f: &mut dyn FnMut(&EntryHeader, Tail),
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
                f(&h, Tail { segment, len: next });
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

    /// Appends entries `ids`, each `n` bytes of its own id value.
    fn put(log: &SegmentLog, ids: &[u8], n: usize) -> Vec<Location> {
        let mut staged = Staged::default();
        let offs: Vec<(u64, u32)> = ids
            .iter()
            .map(|&i| SegmentLog::stage(&mut staged, &header(i), &vec![i; n]))
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
                vec![*i; 200]
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
        // A write cut short: a whole header but half the body, then one with a bad checksum.
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

    #[test]
    fn undo_takes_back_the_last_append() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), Tail::default(), 1 << 20);
        let a = put(&log, &[1], 100);
        let b = put(&log, &[2], 100);
        log.undo(b[0].segment, b[0].offset).unwrap();
        assert_eq!(log.tail(), a[0].end());
        drop(log);
        let (_, seen) = open(dir.path(), Tail::default(), 1 << 20);
        assert_eq!(seen, vec![(1, a[0])]);
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
