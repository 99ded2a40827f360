//! Changing any byte of a stored sealed record, of a leaf or of a checkpoint, in the storage files
//! themselves, makes `verify --all` fail and name what failed.

mod common;

use std::path::Path;

use common::*;
use medanchor::config::Config;
use medanchor::ledger::Ledger;
use medanchor::pipeline::Stores;
use medanchor::vault::Vault;

fn config(data: &Path) -> Config {
    Config {
        data_dir: data.to_path_buf(),
        ..Config::default()
    }
}

fn occurrences(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    memchr::memmem::find_iter(hay, needle).collect()
}

/// Flips byte `i` of `needle` wherever it occurs in `file`, runs the verifier, restores the file.
fn check_every_byte(
    data: &Path,
    file: &str,
    needle: &[u8],
    what: &str,
    expect_in_failure: &[&str],
) {
    let path = data.join(file);
    let original = std::fs::read(&path).unwrap();
    let at = occurrences(&original, needle);
    assert!(!at.is_empty(), "{what} not found in {file}");
    for i in 0..needle.len() {
        let mut bytes = original.clone();
        for &o in &at {
            bytes[o + i] ^= 0x01;
        }
        std::fs::write(&path, &bytes).unwrap();
        let text = match Stores::open_read_only(&config(data)) {
            Ok((stores, _)) => {
                let report = medanchor::verify::verify_all(&stores, &|_, _| {});
                assert!(!report.ok, "{what}: flipping byte {i} went unnoticed");
                report.failures.join("\n")
            }
            // The damage stops the stores from opening: the error must still name what failed.
            Err(e) => e.to_string(),
        };
        assert!(
            expect_in_failure.iter().any(|e| text.contains(e)),
            "{what}: byte {i}: failure does not name the damaged part:\n{text}"
        );
        std::fs::write(&path, &original).unwrap();
    }
    let (stores, _) = Stores::open_read_only(&config(data)).unwrap();
    let report = medanchor::verify::verify_all(&stores, &|_, _| {});
    assert!(
        report.ok,
        "restored file verifies again: {:?}",
        report.failures
    );
}

#[test]
fn every_byte_of_a_record_a_leaf_and_a_checkpoint_is_protected() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let g = Gateway::start(&data, &[]);
    let msg = b"MSH|^~\\&|LAB|H|GW|H|20240101||ORU^R01|T1|P|2.5\rPID|1||12345^^^H^MR||Doe^Jane\rOBX|1|NM|GLU||5.4|mmol/L\r";
    assert_eq!(msa(&mllp_exchange(g.mllp, msg)).0, "AA");
    assert!(g.stop().success());

    let (record, leaf_value, checkpoint) = {
        let stores = Stores::open(&config(&data), false).unwrap();
        assert!(medanchor::verify::verify_all(&stores, &|_, _| {}).ok);
        let mut rec = None;
        stores
            .vault
            .for_each_record(&mut |_, r| {
                rec = Some(r.unwrap());
                Ok(())
            })
            .unwrap();
        let rec = rec.unwrap();
        let mut leaf = None;
        stores
            .ledger
            .for_each_leaf(&mut |l| {
                leaf = Some(l);
                Ok(())
            })
            .unwrap();
        let leaf = leaf.unwrap();
        let mut leaf_value = leaf.entry.clone();
        leaf_value.extend_from_slice(&leaf.record_id.0);
        let cp = stores.ledger.latest_checkpoint().unwrap().unwrap();
        (rec, leaf_value, cp.text)
    };
    // In the segment file: the sealed bytes, and the entry header's record id and commitment
    // (its checksum covers the rest); in the vault's index: the commitment.
    let segment = "segments/00000000.seg";
    check_every_byte(
        &data,
        segment,
        &record.sealed,
        "sealed record",
        &["record "],
    );
    let mut header = record.record_id.0.to_vec();
    header.extend_from_slice(&record.commitment);
    check_every_byte(&data, segment, &header, "entry header", &["record "]);
    check_every_byte(
        &data,
        "vault.redb",
        &record.commitment,
        "record commitment",
        &["record "],
    );
    check_every_byte(
        &data,
        "ledger.redb",
        &leaf_value,
        "leaf",
        &["leaf ", "record ", "checkpoint "],
    );
    check_every_byte(
        &data,
        "ledger.redb",
        checkpoint.as_bytes(),
        "checkpoint",
        &["checkpoint "],
    );

    // And through the binary: exit status and the failure on stderr.
    let path = data.join(segment);
    let mut bytes = std::fs::read(&path).unwrap();
    let o = occurrences(&bytes, &record.sealed)[0];
    bytes[o + record.sealed.len() - 1] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    let (ok, out, err) = run(&["verify", "--all", "--data-dir", data.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("FAILED: record") && out.starts_with("FAILED"),
        "{out}{err}"
    );
}
