//! Segment recovery on arbitrary segment files: `SegmentLog::open_read_only` (the survey every
//! start and the verifier run), `scan` up to the tail it finds, `read` of every entry it reported,
//! and `SegmentLog::repair` on a copy followed by another `open_read_only`.
//!
//! Input: the first byte selects the layout. Even: the rest is segment `00000000.seg`. Odd: the
//! rest is cut in two at the offset given by the next two bytes (big-endian, modulo the length),
//! the first part `00000000.seg` and the second `00000001.seg`, so the "finished segment" paths
//! are reached too.
//!
//! Checks: no panics; nothing but an error for a bad log; `open_read_only` changes no byte; every
//! entry the survey reports reads back (`read` checks length, id, commitment and checksum) and
//! `scan` lists the same entries; on a log that opened, `repair` sets nothing aside and changes
//! nothing; after a `repair` that returned Ok, the log opens (repair is the way past `Damaged`).
//!
//! Files live in `$MEDANCHOR_FUZZ_TMP` (scripts/fuzz makes one under /dev/shm and removes it),
//! else in /dev/shm/medanchor-fuzz-segment-<pid>; rewritten for every input.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use medanchor::vault::segments::{EntryHeader, Location, SegmentError, SegmentLog, Tail};

fn base() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root = std::env::var_os("MEDANCHOR_FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(format!(
                    "/dev/shm/medanchor-fuzz-segment-{}",
                    std::process::id()
                ))
            });
        let (a, b) = (root.join("survey"), root.join("repair"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        (a, b)
    })
}

const NAMES: [&str; 2] = ["00000000.seg", "00000001.seg"];

/// Makes `dir` hold exactly the given segments (and nothing set aside by an earlier repair).
fn write(dir: &Path, parts: &[&[u8]]) {
    for (i, name) in NAMES.iter().enumerate() {
        let path = dir.join(name);
        match parts.get(i) {
            Some(p) => std::fs::write(&path, p).unwrap(),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    for aside in ["damaged", "torn"] {
        let p = dir.join(aside);
        if p.exists() {
            std::fs::remove_dir_all(&p).unwrap();
        }
    }
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    NAMES
        .iter()
        .map_while(|n| std::fs::read(dir.join(n)).ok())
        .collect()
}

type Seen = Vec<(EntryHeader, Location)>;

fn survey(dir: &Path) -> Result<(SegmentLog, Seen, Tail), SegmentError> {
    let mut seen = Vec::new();
    let (log, _finding) =
        SegmentLog::open_read_only(dir, Tail::default(), &mut |h, at| seen.push((*h, at)))?;
    let tail = log.tail();
    Ok((log, seen, tail))
}

/// Every surveyed entry reads back and `scan` lists the same ones up to the tail.
fn check_open(log: &SegmentLog, seen: &Seen, tail: Tail) {
    for (h, at) in seen {
        log.read(&h.record_id, &h.commitment, *at)
            .expect("a surveyed entry reads back");
        assert!(at.end().position() <= tail.position());
    }
    let mut scanned = Vec::new();
    log.scan(Tail::default(), tail, &mut |h, end| scanned.push((*h, end)))
        .expect("scan up to the surveyed tail");
    assert_eq!(scanned.len(), seen.len(), "scan and survey disagree");
    for ((h, end), (sh, at)) in scanned.iter().zip(seen) {
        assert_eq!(h, sh);
        assert_eq!(*end, at.end());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let parts: Vec<&[u8]> = if mode & 1 == 0 {
        vec![rest]
    } else {
        let Some((cut, rest)) = rest.split_first_chunk::<2>() else {
            return;
        };
        let at = usize::from(u16::from_be_bytes(*cut)) % (rest.len() + 1);
        let (a, b) = rest.split_at(at);
        vec![a, b]
    };
    let (a, b) = base();
    write(a, &parts);
    let opened = survey(a).map(|(log, seen, tail)| {
        check_open(&log, &seen, tail);
        seen
    });
    assert!(
        files(a).iter().map(Vec::as_slice).eq(parts.iter().copied()),
        "open_read_only changed the files"
    );

    write(b, &parts);
    let repaired = SegmentLog::repair(b, Tail::default());
    match (&opened, &repaired) {
        (Ok(_), Ok(set_aside)) => {
            assert!(
                set_aside.is_empty(),
                "repair set aside entries of a log that opened"
            );
            assert!(
                files(b).iter().map(Vec::as_slice).eq(parts.iter().copied()),
                "repair changed a log that opened"
            );
        }
        (Ok(_), Err(e)) => panic!("repair failed on a log that opened: {e}"),
        _ => {}
    }
    if repaired.is_ok() {
        match survey(b) {
            Ok((log, seen, tail)) => {
                check_open(&log, &seen, tail);
                if let Ok(before) = &opened {
                    assert_eq!(before.len(), seen.len());
                }
            }
            Err(e) => panic!("the log does not open after repair: {e}"),
        }
    }
});
