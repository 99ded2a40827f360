//! I/O fault injection in the style of redb's: the vault's segment writes and its index's redb
//! writes go through one [`Faults`] switch, and the tests loop over every write call of a run,
//! failing exactly that one (a full disk for a moment, a failed fsync, a short write), failing
//! every call from it on (the disk stays full, then space comes back), or crashing there (every
//! later call fails, then the vault is opened again from the files as they are). After each:
//! nothing answered `Stored` is lost or altered, nothing is stored twice, every message is stored
//! once the fault clears, and the index agrees with the segments.

use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::envelope::{Origin, RecordId};
use crate::record::{Record, RecordMeta};
use crate::seal::{self, DataKey};
use crate::testing::faulty::Faults;

/// One message: its put and the sealed bytes it must read back as.
pub(super) struct Message {
    pub(super) put: PutRecord,
}

/// The data key the test records are sealed under: a patient's, so the patient index is
/// written, re-indexed after crashes and checked with the rest.
pub(super) const PATIENT_KEY: &str = "p-0123456789abcdef0123456789abcdef";

pub(super) fn message(i: usize) -> Message {
    let record = Record {
        meta: RecordMeta {
            sender: "A|B".into(),
            message_type: "ADT".into(),
            trigger: "A01".into(),
            control_id: format!("c{i}"),
            patient_ids: vec![format!("{i}^H^MR")],
            received_ms: 1,
            origin: Origin::Local { name: "t".into() },
            format: "hl7v2".into(),
        },
        raw: bytes::Bytes::from(vec![b'x'; 300 + i * 37]),
    };
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    let sealed = seal::seal(
        &record,
        RecordId(id),
        &DataKey::new(PATIENT_KEY, [5; 32]),
        seal::Compress::Lz4,
    )
    .unwrap();
    let mut dedup = [0u8; 32];
    dedup[..8].copy_from_slice(&(i as u64).to_be_bytes());
    let mut control = [0u8; 32];
    control[..8].copy_from_slice(&(i as u64).to_be_bytes());
    let mut m = Message {
        put: PutRecord {
            sealed,
            dedup_key: dedup,
            control_key: control,
            derived: Derivation::None,
        },
    };
    // Every third message carries a derived record, stored in the same commit.
    if i.is_multiple_of(3) {
        let derived = derived_of(&m, 0);
        m.put.derived = Derivation::Mapped(derived);
    }
    m
}

/// A derived record of `m`'s raw record (`n` tells several apart).
pub(super) fn derived_of(m: &Message, n: u8) -> Sealed {
    let d = crate::record::DerivedRecord {
        raw_id: m.put.sealed.record_id,
        raw_commitment: m.put.sealed.commitment,
        mapping_version: "v1".into(),
        mapped_ms: 2,
        outcome: bytes::Bytes::new(),
        bundle: bytes::Bytes::from(format!("{{\"resourceType\":\"Bundle\",\"n\":{n}}}")),
    };
    let mut id = m.put.sealed.record_id.0;
    id[15] = 0xd0 + n;
    seal::seal_derived_many(
        &[(&d, RecordId(id), &DataKey::new(PATIENT_KEY, [5; 32]))],
        seal::Compress::Lz4,
    )
    .pop()
    .expect("one")
    .expect("encodable")
}

pub(super) fn put_of(m: &Message) -> PutRecord {
    PutRecord {
        sealed: m.put.sealed.clone(),
        dedup_key: m.put.dedup_key,
        control_key: m.put.control_key,
        derived: m.put.derived.clone(),
    }
}

const MESSAGES: usize = 24;
/// Batches of the run: later ones repeat earlier messages (duplicates must be recognised).
fn batches() -> Vec<Vec<usize>> {
    vec![
        (0..5).collect(),
        (5..9).collect(),
        vec![9, 2, 10],
        (11..18).collect(),
        vec![18, 18, 19, 5],
        (20..24).collect(),
    ]
}

fn open(dir: &Path, faults: Option<&Faults>, create: bool) -> EmbeddedVault {
    EmbeddedVault::open_with_faults(
        &dir.join("vault.redb"),
        &dir.join("segments"),
        1 << 20,
        create,
        faults.cloned(),
    )
    .unwrap()
}

/// What the run was told: record id of every message answered Stored or Duplicate.
type Acked = HashMap<usize, RecordId>;

/// Commits the batches from `from` on; a failed commit is retried (up to `tries` times) and
/// each result checked: a message is stored once, later answers name that record.
fn run_batches(
    v: &EmbeddedVault,
    msgs: &[Message],
    from: usize,
    acked: &mut Acked,
    tries: usize,
) -> usize {
    let all = batches();
    for (n, batch) in all.iter().enumerate().skip(from) {
        let puts: Vec<PutRecord> = batch.iter().map(|&i| put_of(&msgs[i])).collect();
        let mut attempt = 0;
        let results = loop {
            match v.commit(&puts, &[]) {
                Ok(r) => break r,
                Err(_) if attempt + 1 < tries => attempt += 1,
                Err(_) => return n,
            }
        };
        for (&i, r) in batch.iter().zip(results) {
            let id = match r {
                PutResult::Stored { .. } | PutResult::StoredConflict { .. } => {
                    msgs[i].put.sealed.record_id
                }
                PutResult::Duplicate { record_id, .. } => record_id,
                PutResult::IndexDamaged => panic!("message {i}: index damaged by a fault"),
            };
            if let Some(earlier) = acked.insert(i, id) {
                assert_eq!(earlier, id, "message {i} answered with two records");
            }
        }
    }
    all.len()
}

/// Every acknowledged message reads back exactly as sealed, each message is stored once, and the
/// index agrees with the segments.
fn check(dir: &Path, msgs: &[Message], acked: &Acked, context: &str) {
    let v = open(dir, None, false);
    let failures: HashMap<RecordId, crate::vault::MappingFailure> =
        v.mapping_failures().unwrap().into_iter().collect();
    for (i, id) in acked {
        let rec = v
            .get(id)
            .unwrap_or_else(|e| panic!("{context}: message {i}: {e}"))
            .unwrap_or_else(|| panic!("{context}: acknowledged message {i} lost"));
        assert_eq!(
            rec.sealed, msgs[*i].put.sealed.bytes,
            "{context}: message {i} altered"
        );
        // Its derived record was acknowledged with it; or, when a crash cut the derived entry
        // off before any ACK and the re-sent copy was a duplicate, the gap is noted for replay.
        let derived = v.derived_of(id).unwrap();
        match &msgs[*i].put.derived {
            Derivation::Mapped(_) if derived.is_empty() => assert!(
                failures.get(id).is_some_and(|f| f.label == "not_derived"),
                "{context}: message {i} lost its derived record unnoted"
            ),
            Derivation::Mapped(d) => {
                assert_eq!(
                    derived,
                    vec![d.record_id],
                    "{context}: message {i}'s derived record"
                );
                let rec = v.get(&d.record_id).unwrap().expect("derived record stored");
                assert_eq!(
                    rec.sealed, d.bytes,
                    "{context}: message {i}'s derived record altered"
                );
            }
            _ => assert!(derived.is_empty(), "{context}: message {i}"),
        }
    }
    let mut problems = Vec::new();
    v.check_index(&mut |p| problems.push(p)).unwrap();
    assert!(problems.is_empty(), "{context}: {problems:?}");
    let with_derived = msgs
        .iter()
        .filter(|m| matches!(m.put.derived, Derivation::Mapped(_)))
        .count();
    assert!(
        v.record_count().unwrap() as usize <= MESSAGES + with_derived,
        "{context}: a message stored twice"
    );
}

fn calls_of_a_clean_run(msgs: &[Message]) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let v = open(dir.path(), Some(&faults), true);
    let start = faults.calls();
    let mut acked = Acked::new();
    assert_eq!(run_batches(&v, msgs, 0, &mut acked, 1), batches().len());
    assert_eq!(acked.len(), MESSAGES);
    faults.calls() - start
}

/// One write call fails (a moment of a full disk, a failed fsync, a short write); the commit
/// it belongs to fails and is retried.
#[test]
fn a_single_failed_write_at_every_point_loses_nothing_and_heals() {
    let msgs: Vec<Message> = (0..MESSAGES).map(message).collect();
    let n = calls_of_a_clean_run(&msgs);
    assert!(n > 10, "the run makes write calls ({n})");
    for k in 0..n {
        for errno in [crate::testing::faulty::ENOSPC, 5] {
            let dir = tempfile::tempdir().unwrap();
            let faults = Faults::default();
            faults.set_errno(errno);
            let v = open(dir.path(), Some(&faults), true);
            faults.fail_after(k);
            let mut acked = Acked::new();
            let done = run_batches(&v, &msgs, 0, &mut acked, 3);
            let context = format!("write call {k} failed with errno {errno}");
            assert_eq!(done, batches().len(), "{context}: not healed");
            assert_eq!(faults.injected(), 1, "{context}");
            assert!(v.health().is_ok(), "{context}: still unhealthy");
            assert_eq!(acked.len(), MESSAGES, "{context}");
            drop(v);
            check(dir.path(), &msgs, &acked, &context);
        }
    }
}

/// The disk stays full from write call k on: every commit fails and the vault says it is
/// unhealthy; when space is back the next commit heals it and the rest is stored.
#[test]
fn a_disk_full_from_every_point_on_recovers_when_space_returns() {
    let msgs: Vec<Message> = (0..MESSAGES).map(message).collect();
    let n = calls_of_a_clean_run(&msgs);
    for k in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        let v = open(dir.path(), Some(&faults), true);
        let start = faults.calls();
        let mut acked = Acked::new();
        let mut stopped = batches().len();
        // Fail every call from k on, as a disk that filled up.
        let all = batches();
        for (b, batch) in all.iter().enumerate() {
            if faults.calls() - start >= k {
                faults.fail_all();
            }
            let puts: Vec<PutRecord> = batch.iter().map(|&i| put_of(&msgs[i])).collect();
            match v.commit(&puts, &[]) {
                Ok(results) => {
                    for (&i, r) in batch.iter().zip(results) {
                        let id = match r {
                            PutResult::Duplicate { record_id, .. } => record_id,
                            _ => msgs[i].put.sealed.record_id,
                        };
                        acked.insert(i, id);
                    }
                }
                Err(_) => {
                    stopped = b;
                    break;
                }
            }
        }
        let context = format!("disk full from write call {k}");
        if stopped < all.len() {
            assert!(v.health().is_err(), "{context}: unhealthy while failing");
            assert!(v.commit(&[put_of(&msgs[0])], &[]).is_err(), "{context}");
        }
        faults.clear();
        assert_eq!(
            run_batches(&v, &msgs, stopped, &mut acked, 2),
            all.len(),
            "{context}"
        );
        assert!(v.health().is_ok(), "{context}");
        drop(v);
        check(dir.path(), &msgs, &acked, &context);
    }
}

/// A crash at write call k: every later call fails (the process is gone), then the vault is
/// opened again from the files as they are and the run continues.
#[test]
fn a_crash_after_any_write_loses_nothing_acknowledged() {
    let msgs: Vec<Message> = (0..MESSAGES).map(message).collect();
    let n = calls_of_a_clean_run(&msgs);
    for k in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        let v = open(dir.path(), Some(&faults), true);
        let start = faults.calls();
        let mut acked = Acked::new();
        let all = batches();
        let mut stopped = all.len();
        for (b, batch) in all.iter().enumerate() {
            if faults.calls() - start >= k {
                faults.fail_all();
            }
            let puts: Vec<PutRecord> = batch.iter().map(|&i| put_of(&msgs[i])).collect();
            match v.commit(&puts, &[]) {
                Ok(results) => {
                    for (&i, r) in batch.iter().zip(results) {
                        let id = match r {
                            PutResult::Duplicate { record_id, .. } => record_id,
                            _ => msgs[i].put.sealed.record_id,
                        };
                        acked.insert(i, id);
                    }
                }
                Err(_) => {
                    stopped = b;
                    break;
                }
            }
        }
        // The crash: the process and its handles are gone; the files stay as written.
        drop(v);
        let context = format!("crash at write call {k}");
        check(dir.path(), &msgs, &acked, &context);
        let v = open(dir.path(), None, false);
        assert_eq!(
            run_batches(&v, &msgs, stopped, &mut acked, 1),
            all.len(),
            "{context}"
        );
        assert_eq!(acked.len(), MESSAGES, "{context}");
        drop(v);
        check(dir.path(), &msgs, &acked, &context);
    }
}

/// As [`a_single_failed_write_at_every_point_loses_nothing_and_heals`], but every index commit
/// is a durable one (one falls due every five seconds under load, and every commit holding a
/// quarantine entry is one): a commit whose final sync fails can still have landed, and its
/// rows then point at segment entries the failed commit took back.
#[test]
fn a_single_failed_write_in_durable_index_commits_loses_nothing() {
    let msgs: Vec<Message> = (0..MESSAGES).map(message).collect();
    let n = calls_of_a_clean_run(&msgs) * 2;
    for k in 0..n {
        for errno in [crate::testing::faulty::ENOSPC, 5] {
            let dir = tempfile::tempdir().unwrap();
            let faults = Faults::default();
            faults.set_errno(errno);
            let v = open(dir.path(), Some(&faults), true);
            faults.fail_after(k);
            let mut acked = Acked::new();
            let all = batches();
            let context = format!("durable commits: write call {k} failed with errno {errno}");
            for batch in &all {
                let puts: Vec<PutRecord> = batch.iter().map(|&i| put_of(&msgs[i])).collect();
                let mut results = None;
                for _ in 0..3 {
                    // Every commit is due for a sync.
                    *v.last_sync.lock().unwrap() = Instant::now() - Duration::from_secs(60);
                    if let Ok(r) = v.commit(&puts, &[]) {
                        results = Some(r);
                        break;
                    }
                }
                let results = results.unwrap_or_else(|| panic!("{context}: not healed"));
                for (&i, r) in batch.iter().zip(results) {
                    let id = match r {
                        PutResult::Stored { .. } | PutResult::StoredConflict { .. } => {
                            msgs[i].put.sealed.record_id
                        }
                        PutResult::Duplicate { record_id, .. } => record_id,
                        PutResult::IndexDamaged => panic!("{context}: message {i}: index damaged"),
                    };
                    acked.insert(i, id);
                }
            }
            // Read back through the running vault, too: a duplicate answer must name a record
            // that is there.
            for (i, id) in &acked {
                let rec = v
                    .get(id)
                    .unwrap_or_else(|e| panic!("{context}: message {i}: {e}"));
                assert!(rec.is_some(), "{context}: acknowledged message {i} lost");
            }
            drop(v);
            check(dir.path(), &msgs, &acked, &context);
        }
    }
}

/// The same landed-but-failed durable commit, then the process ends before the next commit
/// heals the index: the next start must open, and lose nothing acknowledged.
#[test]
fn a_landed_failed_durable_commit_then_a_restart_opens() {
    let msgs: Vec<Message> = (0..MESSAGES).map(message).collect();
    let n = calls_of_a_clean_run(&msgs) * 2;
    for k in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        faults.set_errno(5);
        let v = open(dir.path(), Some(&faults), true);
        faults.fail_after(k);
        let mut acked = Acked::new();
        for batch in batches() {
            let puts: Vec<PutRecord> = batch.iter().map(|&i| put_of(&msgs[i])).collect();
            *v.last_sync.lock().unwrap() = Instant::now() - Duration::from_secs(60);
            match v.commit(&puts, &[]) {
                Ok(results) => {
                    for (&i, r) in batch.iter().zip(results) {
                        if let PutResult::Duplicate { record_id, .. } = r {
                            acked.insert(i, record_id);
                        } else {
                            acked.insert(i, msgs[i].put.sealed.record_id);
                        }
                    }
                }
                Err(_) => break,
            }
        }
        drop(v);
        let context = format!("durable commit failing at write call {k}, then a restart");
        let v = EmbeddedVault::open(
            &dir.path().join("vault.redb"),
            &dir.path().join("segments"),
            1 << 20,
            false,
        )
        .unwrap_or_else(|e| panic!("{context}: {e}"));
        drop(v);
        check(dir.path(), &msgs, &acked, &context);
    }
}
