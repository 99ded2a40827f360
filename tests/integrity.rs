//! A failing disk's view, on the real binary: damage in the segments and the indexes is refused
//! or reported by name, never taken for a torn write, and `verify --all` changes nothing.

mod common;

use std::path::Path;

use common::*;
use redb::ReadableTable;
use serde_json::Value;

/// Normalization off: each message is one segment entry, so entry `i` is message `i`. The
/// damage and repair paths do not depend on an entry's kind; derived entries under crashes and
/// failing writes are covered by the vault's fault-injection loops and by tests/derived.rs.
const RAW_ONLY: (&str, &str) = ("MEDANCHOR__NORMALIZE__ENABLED", "false");

/// Bytes before the sealed record in a segment entry (docs/FORMATS.md).
const ENTRY_HEADER: usize = 4 + 4 + 16 + 32 + 32 + 32;

fn message(i: usize) -> String {
    format!(
        "MSH|^~\\&|EHR|HOSP|GW|HOSP|20250101120000||ADT^A01|INT-{i}|P|2.5\rPID|1||{}^^^HOSP^MR||DOE^J{i}\rPV1|1|I\r",
        100_000 + i
    )
}

/// Offsets of the entries of a segment file, in order.
fn entries(segment: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut out = Vec::new();
    while at + ENTRY_HEADER <= segment.len() {
        out.push(at);
        let len = u32::from_be_bytes(segment[at..at + 4].try_into().unwrap()) as usize;
        at += ENTRY_HEADER + len;
    }
    out
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn send(g: &Gateway, range: std::ops::Range<usize>) -> Vec<(String, String)> {
    range
        .map(|i| {
            let ack = mllp_exchange(g.mllp, message(i).as_bytes());
            let (code, ..) = msa(&ack);
            let text = String::from_utf8_lossy(&ack).into_owned();
            let zrc = text
                .split('\r')
                .find(|s| s.starts_with("ZRC|"))
                .map(|s| s.split('|').nth(1).unwrap_or("").to_string())
                .unwrap_or_default();
            (code, zrc)
        })
        .collect()
}

fn verify_json(data: &Path) -> (bool, Value) {
    let (ok, out, err) = run(&[
        "verify",
        "--all",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let report = serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out}{err}"));
    (ok, report)
}

/// The reproduction from the integrity issue: 50 messages acknowledged, a crash before the
/// index was synced, one byte flipped inside entry 10. Recovery once cut the segment there (40
/// acknowledged records gone, re-sends stored under new ids). Now: the start is refused naming
/// segment, offset and record; verify names it and changes nothing; `repair` sets the entry
/// aside and keeps the 49 others, which re-sends find as duplicates.
#[test]
fn a_flipped_byte_in_an_acknowledged_entry_is_refused_and_repaired_without_losing_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No anchoring and no index sync before the crash: every entry is past the durable tail.
    let slow = [
        ("MEDANCHOR__LEDGER__BATCH_MS", "600000"),
        ("MEDANCHOR__LEDGER__BATCH_LEAVES", "100000"),
        RAW_ONLY,
    ];
    let g = Gateway::start(&data, &slow);
    let first = send(&g, 0..50);
    assert!(first.iter().all(|(code, _)| code == "AA"), "{first:?}");
    g.kill();

    let segment = data.join("segments/00000000.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = entries(&bytes);
    assert_eq!(at.len(), 50);
    bytes[at[9] + ENTRY_HEADER + 40] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    let damaged_id = &first[9].1;

    let err = refused_start(None, &data);
    assert!(
        err.contains(&format!("segment 0 at offset {}", at[9])) && err.contains(damaged_id),
        "the refusal names segment, offset and record: {err}"
    );
    assert!(err.contains("medanchor repair"), "{err}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "nothing was cut");

    let before = snapshot(&data);
    let (ok, report) = verify_json(&data);
    assert!(!ok);
    let failures = report["failures"].to_string();
    assert!(
        failures.contains(&format!("offset {}", at[9])),
        "verify names the damage: {report}"
    );
    assert_eq!(snapshot(&data), before, "verify changed the data directory");

    let (ok, out, err) = run(&["repair", "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("1 damaged entries set aside"), "{out}");
    assert!(out.contains("49 records"), "{out}");
    let kept = data.join(format!("segments/damaged/00000000-{:012}.bin", at[9]));
    assert_eq!(
        std::fs::read(kept).unwrap(),
        bytes[at[9]..at[10]],
        "the damaged entry's bytes are kept"
    );

    let g = Gateway::start(&data, &[RAW_ONLY]);
    let again = send(&g, 0..50);
    for (i, ((code, id), (_, was))) in again.iter().zip(&first).enumerate() {
        assert_eq!(code, "AA", "message {i}");
        if i == 9 {
            assert_ne!(
                id, was,
                "the set-aside record is stored again, under a new id"
            );
        } else {
            assert_eq!(
                id, was,
                "message {i}: found as the record stored before the crash"
            );
        }
    }
    assert!(g.stop().success());
    let (ok, report) = verify_json(&data);
    assert_eq!(report["records"], 50, "{report}");
    assert_eq!(report["leaves"], 50, "{report}");
    let failures: Vec<String> = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert!(!ok);
    assert_eq!(failures.len(), 1, "only the set-aside entry: {failures:?}");
    assert!(failures[0].contains("set aside by repair"), "{failures:?}");
}

/// `verify --all` on a stopped directory, clean or after a crash, changes no byte of it (it
/// used to rewrite vault.redb, ledger.redb and keyring.redb on every run).
#[test]
fn verify_changes_no_byte_of_a_stopped_or_crashed_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let g = Gateway::start(&data, &[RAW_ONLY]);
    assert!(send(&g, 0..5).iter().all(|(c, _)| c == "AA"));
    assert!(g.stop().success());
    let before = snapshot(&data);
    let (ok, report) = verify_json(&data);
    assert!(ok, "{report}");
    assert_eq!(report["records"], 5);
    assert_eq!(snapshot(&data), before);

    let g = Gateway::start(
        &data,
        &[
            ("MEDANCHOR__LEDGER__BATCH_MS", "600000"),
            ("MEDANCHOR__LEDGER__BATCH_LEAVES", "100000"),
            RAW_ONLY,
        ],
    );
    assert!(send(&g, 5..9).iter().all(|(c, _)| c == "AA"));
    g.kill();
    let before = snapshot(&data);
    let (ok, report) = verify_json(&data);
    assert!(!ok, "four records are not anchored yet: {report}");
    assert_eq!(report["records"], 9, "{report}");
    assert_eq!(
        snapshot(&data),
        before,
        "verify changed a crashed directory"
    );
    // The next start anchors them; then all verifies.
    let g = Gateway::start(&data, &[RAW_ONLY]);
    assert!(g.stop().success());
    assert_everything_verifies(&data, 9);
}

/// Mounts a tmpfs of `size` at `at` (a real full disk: ENOSPC from the kernel, no mock). `None`
/// where this process may not mount (not root), said on stderr.
fn mount_tmpfs(at: &Path, size: &str) -> Option<Unmount> {
    std::fs::create_dir_all(at).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root): the full-disk test did not run"
        );
        return None;
    }
    Some(Unmount(at.to_path_buf()))
}

struct Unmount(std::path::PathBuf);

impl Unmount {
    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A message of about 40 KB (an ORU with a long text result), `i` making it unique. The text is
/// letters and digits drawn at random, which LZ4 cannot shrink: the vault stores it at full size
/// (records of 4 KiB or more are otherwise stored compressed), so the disk fills as planned.
fn large_message(i: usize) -> String {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
    let text: String = (0..40_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[(state % 36) as usize] as char
        })
        .collect();
    format!(
        "MSH|^~\\&|LAB|HOSP|GW|HOSP|20250101120000||ORU^R01|BIG-{i}|P|2.5\rPID|1||{}^^^HOSP^MR\rOBX|1|TX|NOTE||{text}\r",
        200_000 + i
    )
}

/// The disk fills up under load and then gets space again. Nothing not durable is acknowledged;
/// while full, readiness says why and the log does not flood; once space is back the vault and
/// the log recover by themselves (they once answered 500 on every proof until a restart, with
/// /readyz 200 and 157,110 error lines in 20 s); every acknowledged record is there and proves.
#[test]
fn after_a_full_disk_the_gateway_recovers_by_itself_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(disk) = mount_tmpfs(&data, "6m") else {
        return;
    };
    let g = Gateway::start(&data, &[("MEDANCHOR__LEDGER__BATCH_MS", "20"), RAW_ONLY]);
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut i = 0;
    // Fill the disk: keep sending until twenty messages in a row are refused.
    while refused < 20 {
        assert!(i < 2_000, "the disk never filled");
        let ack = mllp_exchange(g.mllp, large_message(i).as_bytes());
        let text = String::from_utf8_lossy(&ack).into_owned();
        match msa(&ack).0.as_str() {
            "AA" => {
                let id = text
                    .split('\r')
                    .find(|s| s.starts_with("ZRC|"))
                    .and_then(|s| s.split('|').nth(1))
                    .unwrap()
                    .to_string();
                acked.push((i, id));
                refused = 0;
            }
            "AE" => refused += 1,
            other => panic!("message {i}: {other}: {text}"),
        }
        i += 1;
    }
    assert!(acked.len() > 10, "some were stored before the disk filled");
    let (status, body) = g.http_get("/readyz");
    assert_eq!(status, 503, "not ready while the disk is full: {body}");
    assert!(body.contains("vault") || body.contains("ledger"), "{body}");
    let log_lines_full = std::fs::read_to_string(&g.log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .count();

    disk.resize("64m");
    // Space is back: the next messages are stored without a restart.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ack = mllp_exchange(g.mllp, large_message(i).as_bytes());
        let text = String::from_utf8_lossy(&ack).into_owned();
        if msa(&ack).0 == "AA" {
            let id = text
                .split('\r')
                .find(|s| s.starts_with("ZRC|"))
                .and_then(|s| s.split('|').nth(1))
                .unwrap()
                .to_string();
            acked.push((i, id));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recovered: {}",
            g.log_tail(20)
        );
        // Pacing of the retries: each refused message is a new one sent (and quarantined).
        std::thread::sleep(std::time::Duration::from_millis(100));
        i += 1;
    }
    // Every acknowledged record gets a proof once anchored, the earliest and the latest.
    for (_, id) in [acked.first().unwrap(), acked.last().unwrap()] {
        let proof = format!("/v1/records/{id}/proof");
        wait_until(
            std::time::Duration::from_secs(30),
            || format!("a proof of {id}: {:?}", g.http_get(&proof)),
            || {
                let (status, body) = g.http_get(&proof);
                assert_ne!(status, 500, "proof of {id}: {body}");
                status == 200
            },
        );
    }
    let (status, body) = g.http_get("/readyz");
    assert_eq!(status, 200, "{body}");
    let log = std::fs::read_to_string(&g.log).unwrap();
    assert!(
        log_lines_full < 60,
        "{log_lines_full} warning and error lines for a few dozen refused messages"
    );
    assert!(g.stop().success());
    let (ok, report) = verify_json(&data);
    assert!(ok, "{report}\n{}", &log[log.len().saturating_sub(4000)..]);
    assert_eq!(report["records"], acked.len() as u64, "{report}");
    drop(disk);
}

const CONTROLS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("controls");
const BY_RECORD: redb::TableDefinition<&[u8], u64> = redb::TableDefinition::new("by_record");

/// Damage in the vault's index (two control entries) and the log's record index (four
/// entries), made through redb so it is damage redb itself cannot notice. Before: re-sends of
/// the two failed with AE forever (and failed unrelated messages of their group commit), the
/// four records answered 404 "not anchored", and `verify --all` said ok. Now verify names each,
/// only the two damaged messages are refused, and `repair` rebuilds both indexes from the
/// segments and the leaves, after which everything is found again.
#[test]
fn damaged_index_entries_are_named_by_verify_refused_alone_and_rebuilt_by_repair() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let g = Gateway::start(&data, &[RAW_ONLY]);
    let first = send(&g, 0..20);
    assert!(first.iter().all(|(c, _)| c == "AA"));
    assert!(g.stop().success());

    {
        let db = redb::Database::open(data.join("vault.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(CONTROLS).unwrap();
            let keys: Vec<(Vec<u8>, Vec<u8>)> = t
                .iter()
                .unwrap()
                .take(2)
                .map(|e| {
                    let (k, v) = e.unwrap();
                    (k.value().to_vec(), v.value().to_vec())
                })
                .collect();
            // One entry cut short, one naming a record that does not exist.
            let mut short = keys[0].1.clone();
            short.truncate(40);
            t.insert(keys[0].0.as_slice(), short.as_slice()).unwrap();
            let mut elsewhere = keys[1].1.clone();
            elsewhere[40] ^= 0xff;
            t.insert(keys[1].0.as_slice(), elsewhere.as_slice())
                .unwrap();
        }
        w.commit().unwrap();
        let db = redb::Database::open(data.join("ledger.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(BY_RECORD).unwrap();
            for (_, id) in &first[3..7] {
                t.remove(hex::decode(id).unwrap().as_slice()).unwrap();
            }
        }
        w.commit().unwrap();
    }
    let (ok, report) = verify_json(&data);
    assert!(!ok, "{report}");
    let text = report["failures"].to_string();
    assert!(
        text.contains("control entry") && text.contains("is malformed"),
        "{text}"
    );
    assert!(
        text.contains("which is in no segment") || text.contains("does not carry"),
        "{text}"
    );
    for (_, id) in &first[3..7] {
        assert!(
            text.contains(id.as_str()),
            "verify names record {id}: {text}"
        );
    }

    let g = Gateway::start(&data, &[RAW_ONLY]);
    let (status, _) = g.http_get(&format!("/v1/records/{}/proof", first[3].1));
    assert_eq!(status, 404, "the damaged log index hides the record");
    let again = send(&g, 0..20);
    let refused: Vec<usize> = again
        .iter()
        .enumerate()
        .filter(|(_, (c, _))| c != "AA")
        .map(|(i, _)| i)
        .collect();
    assert!(
        !refused.is_empty() && refused.len() <= 2,
        "only the messages of the damaged entries are refused: {refused:?}"
    );
    for (i, ((code, id), (_, was))) in again.iter().zip(&first).enumerate() {
        if code == "AA" {
            assert_eq!(id, was, "message {i} found as the stored record");
        }
    }
    assert!(g.metric("medanchor_vault_index_damaged_total") >= 1.0);
    assert!(g.stop().success());

    let (ok, out, err) = run(&["repair", "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("rebuilt from its 20 leaves"), "{out}");
    let (ok, report) = verify_json(&data);
    assert!(ok, "{report}");
    assert_eq!(report["records"], 20);

    let g = Gateway::start(&data, &[RAW_ONLY]);
    let third = send(&g, 0..20);
    for (i, ((code, id), (_, was))) in third.iter().zip(&first).enumerate() {
        assert_eq!((code.as_str(), id), ("AA", was), "message {i} after repair");
    }
    let (status, body) = g.http_get(&format!("/v1/records/{}/proof", first[3].1));
    assert_eq!(status, 200, "{body}");
    assert!(g.stop().success());
}

/// One character of keys/index.key changed: it once silently became another key, so every
/// re-send was stored as a new record. The check line refuses it by name at start and in verify.
#[test]
fn a_damaged_key_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let g = Gateway::start(&data, &[RAW_ONLY]);
    assert!(send(&g, 0..3).iter().all(|(c, _)| c == "AA"));
    assert!(g.stop().success());
    let path = data.join("keys/index.key");
    let original = std::fs::read(&path).unwrap();
    for at in [0, 17, 63] {
        let mut bytes = original.clone();
        bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
        std::fs::write(&path, &bytes).unwrap();
        let err = refused_start(None, &data);
        assert!(
            err.contains("index.key") && err.contains("damaged"),
            "{err}"
        );
        let (ok, report) = verify_json(&data);
        assert!(!ok);
        assert!(
            report["failures"].to_string().contains("index.key"),
            "{report}"
        );
    }
    std::fs::write(&path, &original).unwrap();
    assert_everything_verifies(&data, 3);
}

/// The last entry of a cleanly stopped directory damaged: it was acknowledged (the index had
/// durably indexed it), so `repair` sets it aside under segments/damaged/ and says so; it once
/// cut it off as "the torn end of a write that was never acknowledged".
#[test]
fn repair_sets_a_damaged_acknowledged_last_entry_aside_not_as_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let g = Gateway::start(&data, &[RAW_ONLY]);
    assert!(send(&g, 0..10).iter().all(|(c, _)| c == "AA"));
    assert!(g.stop().success());
    let segment = data.join("segments/00000000.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let (ok, out, err) = run(&["repair", "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("1 damaged entries set aside"), "{out}");
    assert!(out.contains("9 records"), "{out}");
    assert!(
        !data.join("segments/torn").exists(),
        "taken for a torn write"
    );
    let (ok, report) = verify_json(&data);
    assert!(!ok);
    let failures = report["failures"].to_string();
    assert!(failures.contains("set aside by repair"), "{failures}");
}

/// vault.redb's header damaged: redb cannot open it, so neither could the gateway nor repair.
/// Repair now sets it aside and builds a new index from the segments.
#[test]
fn repair_rebuilds_an_index_that_does_not_open_from_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let g = Gateway::start(&data, &[RAW_ONLY]);
    let first = send(&g, 0..10);
    assert!(first.iter().all(|(c, _)| c == "AA"));
    assert!(g.stop().success());
    let mut index = std::fs::read(data.join("vault.redb")).unwrap();
    index[0] ^= 0x01;
    std::fs::write(data.join("vault.redb"), &index).unwrap();
    let err = refused_start(None, &data);
    assert!(err.contains("vault"), "{err}");
    let (ok, out, err) = run(&["repair", "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("vault.redb did not open"), "{out}");
    assert!(out.contains("10 records"), "{out}");
    let g = Gateway::start(&data, &[RAW_ONLY]);
    let again = send(&g, 0..10);
    for ((code, id), (_, was)) in again.iter().zip(&first) {
        assert_eq!((code.as_str(), id), ("AA", was));
    }
    assert!(g.stop().success());
    assert_everything_verifies(&data, 10);
}

/// A flipped byte inside ledger.redb's record index (a record id key): verify names it, and
/// repair rebuilds the file from the leaves and signed checkpoints, never reading the damaged
/// table (a damaged page there once made the storage engine panic in both; the verifier and
/// repair now also turn such a panic into a reported failure).
#[test]
fn a_damaged_ledger_record_index_is_named_and_the_file_rebuilt_from_its_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let g = Gateway::start(&data, &[RAW_ONLY]);
    let first = send(&g, 0..50);
    assert!(first.iter().all(|(c, _)| c == "AA"));
    assert!(g.stop().success());
    // Its commitment, from the stopped gateway's files (a proof asked over HTTP would add an
    // access event to the log).
    let (ok, out, err) = run(&["proof", &first[10].1, "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let proof: Value = serde_json::from_str(&out).unwrap();
    let commitment = proof["commitment"].as_str().unwrap().to_owned();
    let path = data.join("ledger.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let id = hex::decode(&first[10].1).unwrap();
    let commitment = hex::decode(commitment).unwrap();
    // The id is in the leaf (right after the record's commitment) and as a key of the record
    // index. Telling them apart by the commitment, not by the kind byte before it: a random
    // byte of a neighbouring key is 0x01 one time in 256.
    let key_at: Vec<usize> = memchr::memmem::find_iter(&bytes, &id)
        .filter(|&o| o < 32 || bytes[o - 32..o] != commitment[..])
        .collect();
    // Copy-on-write pages: older copies of the index page may still hold it too.
    assert!(!key_at.is_empty(), "the record index key");
    for at in key_at {
        bytes[at + 3] ^= 0x40;
    }
    std::fs::write(&path, &bytes).unwrap();
    let (ok, report) = verify_json(&data);
    assert!(!ok, "{report}");
    assert!(
        report["failures"].to_string().contains(&first[10].1),
        "{report}"
    );
    let (ok, out, err) = run(&["repair", "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("rebuilt from its 50 leaves"), "{out}");
    let (ok, report) = verify_json(&data);
    assert!(ok, "{report}");
    let g = Gateway::start(&data, &[RAW_ONLY]);
    let (status, body) = g.http_get(&format!("/v1/records/{}/proof", first[10].1));
    assert_eq!(status, 200, "{body}");
    assert!(g.stop().success());
}
