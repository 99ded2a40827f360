//! Sealed record bytes in append-only segment files (`<data_dir>/segments/NNNNNNNN.seg`).
//!
//! The vault's index (redb) holds only small rows; the sealed bytes, which are most of what is
//! written, go here as one sequential write and one `fdatasync` per group commit. A B-tree that
//! copies 5 KB values through its pages on every commit spent half the gateway's core on that.
//!
//! Entry layout (see `docs/FORMATS.md`): `u32 BE length of sealed` ‖ `record id[16]` ‖
//! `commitment[32]` ‖ `sealed`. The index row of a record names segment, offset and length; a
//! read checks that the entry there carries the same length, id and commitment, so an index and a
//! file that disagree are reported, never served. The headers alone list the records in commit
//! order, which is how the records not yet anchored are found after a crash.
//!
//! Crash consistency: a commit appends and syncs the segment first and only then commits the
//! index with the new tail (segment number and length). Bytes past the committed tail belong to
//! a commit that never completed, so nothing was acknowledged for them: [`SegmentLog::open`] cuts
//! them off. A file shorter than the committed tail means acknowledged data is gone, which is an
//! error, never silently repaired.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::envelope::RecordId;

/// Bytes before the sealed record in an entry.
pub const ENTRY_HEADER: usize = 4 + 16 + 32;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "segment {segment} holds {actual} bytes but {committed} were committed: acknowledged records are missing"
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

/// The committed end of the log: everything before it is durable and indexed.
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

pub struct SegmentLog {
    dir: PathBuf,
    max_segment_bytes: u64,
    active: Mutex<Active>,
    readers: Mutex<HashMap<u32, std::sync::Arc<File>>>,
}

struct Active {
    tail: Tail,
    file: File,
}

/// Entries staged for one commit: written by [`SegmentLog::append`], made visible by committing
/// the returned tail in the index.
#[derive(Default)]
pub struct Staged {
    buf: Vec<u8>,
}

impl SegmentLog {
    fn path(dir: &Path, segment: u32) -> PathBuf {
        dir.join(format!("{segment:08}.seg"))
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SegmentError + '_ {
        move |source| SegmentError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Opens the log at the committed `tail`, cutting off bytes a crashed commit left behind.
    pub fn open(
        dir: &Path,
        tail: Tail,
        max_segment_bytes: u64,
        create: bool,
    ) -> Result<Self, SegmentError> {
        if create {
            std::fs::create_dir_all(dir).map_err(Self::io(dir))?;
        }
        let path = Self::path(dir, tail.segment);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(&path)
            .map_err(Self::io(&path))?;
        let actual = file.metadata().map_err(Self::io(&path))?.len();
        if actual < tail.len {
            return Err(SegmentError::Truncated {
                segment: tail.segment,
                committed: tail.len,
                actual,
            });
        }
        if actual > tail.len {
            tracing::warn!(
                segment = tail.segment,
                bytes = actual - tail.len,
                "discarding the unacknowledged end of an interrupted commit"
            );
            file.set_len(tail.len).map_err(Self::io(&path))?;
            file.sync_all().map_err(Self::io(&path))?;
        }
        Ok(SegmentLog {
            dir: dir.to_path_buf(),
            max_segment_bytes,
            active: Mutex::new(Active { tail, file }),
            readers: Mutex::new(HashMap::new()),
        })
    }

    /// Adds an entry to `staged` and returns where it will be once `staged` is appended at
    /// `base` (the tail [`SegmentLog::append`] reports).
    pub fn stage(
        staged: &mut Staged,
        id: &RecordId,
        commitment: &[u8; 32],
        sealed: &[u8],
    ) -> (u64, u32) {
        let offset = staged.buf.len() as u64;
        let len =
            u32::try_from(sealed.len()).expect("sealed records are bounded by the frame limit");
        staged.buf.extend_from_slice(&len.to_be_bytes());
        staged.buf.extend_from_slice(&id.0);
        staged.buf.extend_from_slice(commitment);
        staged.buf.extend_from_slice(sealed);
        (offset, len)
    }

    /// Writes `staged` at the end of the log and syncs it. Returns the segment and offset the
    /// staged offsets are relative to, and the tail to commit in the index; until that commit the
    /// bytes are not part of the log (a crash before it discards them on open).
    pub fn append(&self, staged: &Staged) -> Result<(u32, u64, Tail), SegmentError> {
        let mut a = self.active.lock().expect("lock");
        if a.tail.len > 0 && a.tail.len + staged.buf.len() as u64 > self.max_segment_bytes {
            self.roll(&mut a)?;
        }
        let base = a.tail;
        let path = Self::path(&self.dir, base.segment);
        a.file
            .write_all_at(&staged.buf, base.len)
            .map_err(Self::io(&path))?;
        a.file.sync_data().map_err(Self::io(&path))?;
        Ok((
            base.segment,
            base.len,
            Tail {
                segment: base.segment,
                len: base.len + staged.buf.len() as u64,
            },
        ))
    }

    /// Records that the index committed `tail`; the next append starts there.
    pub fn committed(&self, tail: Tail) {
        self.active.lock().expect("lock").tail = tail;
    }

    fn roll(&self, a: &mut Active) -> Result<(), SegmentError> {
        // A failed commit may have left bytes past the committed tail; a finished segment must
        // end at its last committed entry, because scans read it to its end.
        let old = Self::path(&self.dir, a.tail.segment);
        a.file.set_len(a.tail.len).map_err(Self::io(&old))?;
        a.file.sync_all().map_err(Self::io(&old))?;
        let next = a.tail.segment + 1;
        let path = Self::path(&self.dir, next);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(Self::io(&path))?;
        // The new file's name must be durable before the index points into it.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(Self::io(&self.dir))?;
        a.file = file;
        a.tail = Tail {
            segment: next,
            len: 0,
        };
        Ok(())
    }

    fn reader(&self, segment: u32) -> Result<std::sync::Arc<File>, SegmentError> {
        let mut readers = self.readers.lock().expect("lock");
        if let Some(f) = readers.get(&segment) {
            return Ok(f.clone());
        }
        let path = Self::path(&self.dir, segment);
        let f = std::sync::Arc::new(File::open(&path).map_err(Self::io(&path))?);
        readers.insert(segment, f.clone());
        Ok(f)
    }

    /// The sealed bytes at `at`, after checking the entry header against the index.
    pub fn read(
        &self,
        id: &RecordId,
        commitment: &[u8; 32],
        at: Location,
    ) -> Result<Vec<u8>, SegmentError> {
        let file = self.reader(at.segment)?;
        let mut buf = vec![0u8; ENTRY_HEADER + at.len as usize];
        let path = Self::path(&self.dir, at.segment);
        file.read_exact_at(&mut buf, at.offset)
            .map_err(Self::io(&path))?;
        let mismatch = |what| SegmentError::Mismatch {
            segment: at.segment,
            offset: at.offset,
            what,
        };
        if buf[..4] != at.len.to_be_bytes() {
            return Err(mismatch("length"));
        }
        if buf[4..20] != id.0 {
            return Err(mismatch("record id"));
        }
        if buf[20..ENTRY_HEADER] != commitment[..] {
            return Err(mismatch("commitment"));
        }
        buf.drain(..ENTRY_HEADER);
        Ok(buf)
    }

    /// Every entry after `from` up to the committed `to`, in commit order: its id, commitment
    /// and the tail just after it. Reads headers only.
    pub fn scan(
        &self,
        from: Tail,
        to: Tail,
        f: &mut dyn FnMut(RecordId, [u8; 32], Tail),
    ) -> Result<(), SegmentError> {
        for segment in from.segment..=to.segment {
            let path = Self::path(&self.dir, segment);
            let file = self.reader(segment)?;
            let end = if segment == to.segment {
                to.len
            } else {
                file.metadata().map_err(Self::io(&path))?.len()
            };
            let mut at = if segment == from.segment { from.len } else { 0 };
            let mut header = [0u8; ENTRY_HEADER];
            while at < end {
                file.read_exact_at(&mut header, at)
                    .map_err(Self::io(&path))?;
                let len = u32::from_be_bytes(header[..4].try_into().expect("4"));
                let next = at + (ENTRY_HEADER as u64) + u64::from(len);
                if next > end {
                    return Err(SegmentError::Mismatch {
                        segment,
                        offset: at,
                        what: "entry runs past the committed end",
                    });
                }
                f(
                    RecordId(header[4..20].try_into().expect("16")),
                    header[20..].try_into().expect("32"),
                    Tail { segment, len: next },
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

    fn id(n: u8) -> RecordId {
        RecordId([n; 16])
    }

    /// Appends and commits entries `ids`, each `n` bytes of its own id value.
    fn put(log: &SegmentLog, ids: &[u8], n: usize) -> (Vec<Location>, Tail) {
        let mut staged = Staged::default();
        let offs: Vec<(u64, u32)> = ids
            .iter()
            .map(|&i| SegmentLog::stage(&mut staged, &id(i), &[i; 32], &vec![i; n]))
            .collect();
        let (segment, base, tail) = log.append(&staged).unwrap();
        log.committed(tail);
        let at = offs
            .into_iter()
            .map(|(offset, len)| Location {
                segment,
                offset: base + offset,
                len,
            })
            .collect();
        (at, tail)
    }

    #[test]
    fn entries_read_back_after_reopen_and_rolls_start_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), Tail::default(), 1000, true).unwrap();
        let (a, _) = put(&log, &[1, 2, 3], 200);
        let (b, tail) = put(&log, &[4, 5, 6], 200); // 660 + 660 > 1000: a new segment
        assert_eq!(a[0].segment, 0);
        assert_eq!(b[0].segment, 1);
        drop(log);
        let log = SegmentLog::open(dir.path(), tail, 1000, false).unwrap();
        for (i, at) in [1u8, 2, 3, 4, 5, 6].iter().zip(a.iter().chain(&b)) {
            assert_eq!(log.read(&id(*i), &[*i; 32], *at).unwrap(), vec![*i; 200]);
        }
        // The headers list every record in commit order, from any committed point.
        let mut seen = Vec::new();
        log.scan(Tail::default(), tail, &mut |rid, c, t| {
            assert_eq!(c, [rid.0[0]; 32]);
            seen.push((rid.0[0], t));
        })
        .unwrap();
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        let mut rest = Vec::new();
        log.scan(seen[1].1, tail, &mut |rid, _, _| rest.push(rid.0[0]))
            .unwrap();
        assert_eq!(rest, [3, 4, 5, 6]);
        assert_eq!(seen[5].1, tail);
        assert!(Tail::from_position(seen[3].1.position()) == seen[3].1);
        assert!(seen[2].1.position() < seen[3].1.position());
    }

    #[test]
    fn an_interrupted_commit_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), Tail::default(), 1 << 20, true).unwrap();
        let (at, tail) = put(&log, &[1], 100);
        // Appended and synced, but the index never committed the new tail: a crash here.
        let mut staged = Staged::default();
        SegmentLog::stage(&mut staged, &id(2), &[2; 32], &[2; 100]);
        log.append(&staged).unwrap();
        drop(log);
        let path = dir.path().join("00000000.seg");
        assert!(std::fs::metadata(&path).unwrap().len() > tail.len);
        let log = SegmentLog::open(dir.path(), tail, 1 << 20, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), tail.len);
        assert_eq!(log.read(&id(1), &[1; 32], at[0]).unwrap(), vec![1; 100]);
        // The next commit goes where the discarded bytes were.
        let (at2, _) = put(&log, &[3], 10);
        assert_eq!(at2[0].offset, tail.len);
    }

    #[test]
    fn a_failed_commit_before_a_roll_leaves_nothing_behind_in_the_old_segment() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), Tail::default(), 400, true).unwrap();
        let (_, first) = put(&log, &[1], 100);
        // Appended, but the index commit failed: the tail does not move.
        let mut staged = Staged::default();
        SegmentLog::stage(&mut staged, &id(2), &[2; 32], &[2; 100]);
        log.append(&staged).unwrap();
        // Too big for the rest of segment 0: the next commit rolls to segment 1.
        let (at, tail) = put(&log, &[3], 300);
        assert_eq!(at[0].segment, 1);
        let old = dir.path().join("00000000.seg");
        assert_eq!(std::fs::metadata(old).unwrap().len(), first.len);
        let mut seen = Vec::new();
        log.scan(Tail::default(), tail, &mut |rid, _, _| seen.push(rid.0[0]))
            .unwrap();
        assert_eq!(seen, [1, 3], "the uncommitted entry must not be listed");
    }

    #[test]
    fn a_file_shorter_than_the_committed_tail_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), Tail::default(), 1 << 20, true).unwrap();
        let (_, tail) = put(&log, &[1, 2], 100);
        drop(log);
        let path = dir.path().join("00000000.seg");
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(tail.len - 1).unwrap();
        let e = SegmentLog::open(dir.path(), tail, 1 << 20, false)
            .err()
            .expect("missing acknowledged bytes must not open");
        assert!(matches!(e, SegmentError::Truncated { .. }), "{e}");
    }

    #[test]
    fn an_index_that_disagrees_with_the_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), Tail::default(), 1 << 20, true).unwrap();
        let (at, _) = put(&log, &[1, 2], 100);
        assert!(matches!(
            log.read(&id(2), &[1; 32], at[0]),
            Err(SegmentError::Mismatch {
                what: "record id",
                ..
            })
        ));
        assert!(matches!(
            log.read(&id(1), &[2; 32], at[0]),
            Err(SegmentError::Mismatch {
                what: "commitment",
                ..
            })
        ));
        let wrong_len = Location { len: 99, ..at[0] };
        assert!(matches!(
            log.read(&id(1), &[1; 32], wrong_len),
            Err(SegmentError::Mismatch { what: "length", .. })
        ));
        let past_end = Location {
            offset: 10_000,
            ..at[0]
        };
        assert!(matches!(
            log.read(&id(1), &[1; 32], past_end),
            Err(SegmentError::Io { .. })
        ));
    }
}
