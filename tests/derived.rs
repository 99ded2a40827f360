//! Derived records on the real binary: every HL7v2 message acknowledged over MLLP is stored
//! with the FHIR Bundle made from it, both anchored; the derived record's proof also proves the
//! raw record it names and verifies offline; a replay appends a newer derived record; with
//! `normalize.on_error = "reject"` a message that cannot be mapped is refused, not stored.

mod common;

use std::path::Path;

use common::*;
use medanchor::envelope::RecordId;
use medanchor::record::{Content, DerivedRecord};
use medanchor::vault::Vault;
use serde_json::Value;

const ADT: &str = "ADT-A01-01.hl7";
const ORU: &str = "ORU-R01-01.hl7";

/// Sends a corpus message and returns its raw record id and commitment from the ZRC segment.
fn send(g: &Gateway, file: &str) -> (RecordId, String) {
    let bytes = std::fs::read(fixtures().join("microsoft").join(file)).unwrap();
    let text = String::from_utf8_lossy(&bytes)
        .replace("\r\n", "\r")
        .replace('\n', "\r");
    let ack = mllp_exchange(g.mllp, text.trim_start_matches('\u{feff}').as_bytes());
    let (code, _, reason) = msa(&ack);
    assert!(code == "AA" || code == "CA", "{file}: {code} {reason}");
    let ack = String::from_utf8_lossy(&ack).into_owned();
    let zrc: Vec<&str> = ack
        .split('\r')
        .find(|s| s.starts_with("ZRC|"))
        .expect("a receipt")
        .split('|')
        .collect();
    (RecordId::parse(zrc[1]).unwrap(), zrc[2].to_string())
}

/// The derived records of `raw`, opened, oldest first.
fn derived_of(data: &Path, raw: &RecordId) -> Vec<(RecordId, DerivedRecord)> {
    let cfg = medanchor::config::Config {
        data_dir: data.into(),
        ..Default::default()
    };
    let stores = medanchor::pipeline::Stores::open(&cfg, false).unwrap();
    stores
        .vault
        .derived_of(raw)
        .unwrap()
        .into_iter()
        .map(|id| {
            let rec = stores.vault.get(&id).unwrap().expect("stored");
            let header = medanchor::seal::parse_header(&rec.sealed).unwrap();
            let key = stores.keyring.get(header.key_id).unwrap();
            match medanchor::seal::open_content(&rec.sealed, id, &key)
                .unwrap()
                .content
            {
                Content::Derived(d) => (id, d),
                Content::Record(_) => panic!("{id} is listed as derived but is a raw record"),
                Content::Event(_) => panic!("{id} is listed as derived but is an event"),
            }
        })
        .collect()
}

#[test]
fn each_message_is_stored_with_its_bundle_and_the_derived_proof_proves_the_raw_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let g = Gateway::start(&data, &[]);
    let (adt, adt_commitment) = send(&g, ADT);
    let (oru, _) = send(&g, ORU);
    g.wait_metric(
        "medanchor_normalize_messages_total{result=\"mapped\"}",
        2.0,
        std::time::Duration::from_secs(30),
    );
    assert!(g.stop().success());

    let report = verify_all(&data);
    assert_eq!(report["records"], 2, "{report}");
    assert_eq!(report["derived"], 2, "{report}");
    assert_eq!(report["leaves"], 4, "{report}");

    let derived = derived_of(&data, &adt);
    assert_eq!(derived.len(), 1);
    let (derived_id, d) = &derived[0];
    assert_eq!(d.raw_id, adt);
    assert_eq!(hex::encode(d.raw_commitment), adt_commitment);
    assert!(!d.mapping_version.is_empty());
    let bundle: Value = serde_json::from_slice(&d.bundle).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "transaction");
    let types: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"Patient"), "{types:?}");
    assert!(types.contains(&"Provenance"), "{types:?}");
    // The Provenance names the raw record it was made from, by commitment.
    assert!(
        String::from_utf8_lossy(&d.bundle).contains(&adt_commitment),
        "the Bundle does not name its raw record's commitment"
    );
    assert_eq!(derived_of(&data, &oru).len(), 1);

    // The derived record's proof bundle proves both leaves, offline.
    let proof = dir.path().join("derived.json");
    let (ok, _, err) = run(&[
        "proof",
        &derived_id.to_string(),
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        proof.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let bundle: Value = serde_json::from_slice(&std::fs::read(&proof).unwrap()).unwrap();
    assert_eq!(bundle["derived_from"]["record_id"], adt.to_string());
    assert_eq!(bundle["derived_from"]["commitment"], adt_commitment);
    let (ok, out, err) = run(&["verify", proof.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    // Another raw commitment in the link: the derived leaf no longer hashes to the tree.
    let mut forged = bundle.clone();
    let other = send_free_commitment(&adt_commitment);
    forged["derived_from"]["commitment"] = Value::String(other);
    let forged_path = dir.path().join("forged.json");
    std::fs::write(&forged_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let (ok, out, err) = run(&["verify", forged_path.to_str().unwrap()]);
    assert!(!ok, "a forged link verified: {out}");
    assert!(err.contains("inclusion"), "{err}");

    // A replay appends a newer derived record; the first stays.
    let (ok, out, err) = run(&["mapping", "replay", "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let after = derived_of(&data, &adt);
    assert_eq!(after.len(), 2);
    assert_eq!(after[0].0, *derived_id);
    assert_eq!(after[1].1.raw_id, adt);
    let report = verify_all(&data);
    assert_eq!(report["records"], 2, "{report}");
    assert_eq!(report["derived"], 4, "{report}");
    assert_eq!(report["leaves"], 6, "{report}");
}

/// The sealed bytes' magic of each derived record of `raw`, oldest first.
fn derived_magic(data: &Path, raw: &RecordId) -> Vec<[u8; 4]> {
    let cfg = medanchor::config::Config {
        data_dir: data.into(),
        ..Default::default()
    };
    let stores = medanchor::pipeline::Stores::open(&cfg, false).unwrap();
    let ids = stores.vault.derived_of(raw).unwrap();
    ids.iter()
        .map(|id| {
            let rec = stores.vault.get(id).unwrap().expect("stored");
            rec.sealed[..4].try_into().unwrap()
        })
        .collect()
}

/// The first four bytes of every quarantined input's sealed record.
fn quarantined_magic(data: &Path) -> Vec<[u8; 4]> {
    let cfg = medanchor::config::Config {
        data_dir: data.into(),
        ..Default::default()
    };
    let stores = medanchor::pipeline::Stores::open(&cfg, false).unwrap();
    let entries = stores.vault.quarantine_list().unwrap();
    entries
        .iter()
        .map(|e| {
            let (_, sealed) = stores.vault.quarantine_get(&e.id).unwrap().expect("kept");
            sealed[..4].try_into().unwrap()
        })
        .collect()
}

/// Sends a refused message (MSH-9 empty) of about 6 KB that LZ4 shrinks to almost nothing.
fn send_a_large_refused_message(g: &Gateway) {
    let msg = format!(
        "MSH|^~\\&|EHR|HOSP|GW|HOSP|20250101120000|||BIG-1|P|2.5\rNTE|1||{}\r",
        "A".repeat(6000)
    );
    let ack = mllp_exchange(g.mllp, msg.as_bytes());
    assert_eq!(msa(&ack).0, "AE", "{}", String::from_utf8_lossy(&ack));
}

/// A Bundle (over 4 KiB of JSON) and a large quarantined input are stored as LZ4 blocks by
/// default; `vault.compress = false` stores them, and what a replay makes, as version 1, whose
/// length follows the record's alone.
#[test]
fn bundles_are_stored_compressed_unless_the_vault_says_not() {
    let dir = tempfile::tempdir().unwrap();
    // A gateway with `env` is sent the ADT and a large refused message, and stopped.
    let stored = |name: &str, env: &[(&str, &str)]| {
        let data = dir.path().join(name);
        let g = Gateway::start(&data, env);
        let (adt, _) = send(&g, ADT);
        send_a_large_refused_message(&g);
        g.wait_metric(
            "medanchor_normalize_messages_total{result=\"mapped\"}",
            1.0,
            std::time::Duration::from_secs(30),
        );
        assert!(g.stop().success());
        (data, adt)
    };
    let (data, adt) = stored("on", &[]);
    assert_eq!(
        derived_magic(&data, &adt),
        [*medanchor::seal::MAGIC_COMPRESSED]
    );
    assert_eq!(
        quarantined_magic(&data),
        [*medanchor::seal::MAGIC_COMPRESSED]
    );

    let (data, adt) = stored("off", &[("MEDANCHOR__VAULT__COMPRESS", "false")]);
    assert_eq!(derived_magic(&data, &adt), [*medanchor::seal::MAGIC]);
    assert_eq!(quarantined_magic(&data), [*medanchor::seal::MAGIC]);
    let out = std::process::Command::new(BIN)
        .args(["mapping", "replay", "--data-dir", data.to_str().unwrap()])
        .env("MEDANCHOR__VAULT__COMPRESS", "false")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        derived_magic(&data, &adt),
        [*medanchor::seal::MAGIC, *medanchor::seal::MAGIC]
    );
    assert_eq!(derived_of(&data, &adt).len(), 2, "both open");
    let report = verify_all(&data);
    assert_eq!(report["derived"], 2, "{report}");
}

/// A commitment that is not `c` (its first hex digit changed).
fn send_free_commitment(c: &str) -> String {
    let first = if c.starts_with('0') { "1" } else { "0" };
    format!("{first}{}", &c[1..])
}

/// A message no mapping makes anything of (only an MSH): by default it is stored, acknowledged
/// and listed by `mapping failures`; with `normalize.on_error = "reject"` it gets AE naming the
/// reason and is kept in quarantine, not stored.
#[test]
fn a_message_that_cannot_be_mapped_is_stored_and_listed_or_with_reject_refused() {
    let only_msh = b"MSH|^~\\&|EHR|HOSP|GW|HOSP|20250101120000||ADT^A01|NOMAP-1|P|2.5\r";
    let dir = tempfile::tempdir().unwrap();

    let data = dir.path().join("store");
    let g = Gateway::start(&data, &[]);
    let ack = mllp_exchange(g.mllp, only_msh);
    assert_eq!(msa(&ack).0, "AA", "{}", String::from_utf8_lossy(&ack));
    g.wait_metric(
        "medanchor_normalize_failures_total{reason=\"no_resources\"}",
        1.0,
        std::time::Duration::from_secs(30),
    );
    assert!(g.stop().success());
    let (ok, out, err) = run(&[
        "mapping",
        "failures",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0]["label"], "no_resources");
    let report = verify_all(&data);
    assert_eq!(
        (report["records"].as_u64(), report["derived"].as_u64()),
        (Some(1), Some(0))
    );
    // A replay of the failed ones tries again (and fails again: nothing changed).
    let (ok, out, err) = run(&[
        "mapping",
        "replay",
        "--failed",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let replayed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (replayed["chosen"].as_u64(), replayed["failed"].as_u64()),
        (Some(1), Some(1))
    );

    let data = dir.path().join("reject");
    let g = Gateway::start(&data, &[("MEDANCHOR__NORMALIZE__ON_ERROR", "reject")]);
    let ack = mllp_exchange(g.mllp, only_msh);
    let (code, _, reason) = msa(&ack);
    assert_eq!(code, "AE", "{}", String::from_utf8_lossy(&ack));
    assert!(reason.contains("could not be mapped"), "{reason}");
    assert!(g.stop().success());
    let report = verify_all(&data);
    assert_eq!(report["records"], 0, "{report}");
    assert_eq!(report["quarantined"], 1, "{report}");
}

/// A reader that leaves early (`medanchor mapping test --json … | head -1`) ends the output
/// quietly: exit 0, no panic and no error line (the tools wrote with `println!`, which panics on
/// a closed pipe, or reported "Broken pipe" as a failure).
#[test]
fn mapping_tools_stop_quietly_when_their_reader_leaves() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batch.hl7");
    let msgs: String = (0..400)
        .map(|i| {
            format!("MSH|^~\\&|S|F|R|RF|20240101||ADT^A01|M{i}|P|2.5.1\rPID|1||{i}^^^H^MR||DOE^J\r")
        })
        .collect();
    std::fs::write(&file, format!("BHS|^~\\&|S\r{msgs}BTS|400\r")).unwrap();
    let mut child = Command::new(common::BIN)
        .args(["mapping", "test", "--json", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("{\"resourceType\":\"Bundle\""), "{first}");
    // The reader is gone; 400 Bundles do not fit a pipe's buffer, so a write fails.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked") && !err.contains("error"), "{err}");
}

/// Attack round 9: a batch whose BTS count disagrees with it was mapped whole as one message
/// and reported as "does not start with an MSH segment". The tools name the count instead.
#[test]
fn mapping_test_names_a_batch_that_does_not_split() {
    let dir = tempfile::tempdir().unwrap();
    let msh = "MSH|^~\\&|S|F|R|RF|20240101||ADT^A01|M1|P|2.5.1\rPID|1||123^^^H^MR||DOE^J\r";
    let file = dir.path().join("batch.hl7");
    std::fs::write(&file, format!("BHS|^~\\&|S\r{msh}{msh}BTS|3\r")).unwrap();
    let (ok, _, err) = run(&["mapping", "test", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("not a batch that splits: segment 6: BTS count 3 does not match the 2 found"),
        "{err}"
    );
    // The other files are still mapped, one line per message with --json (`null` for the
    // file that does not split).
    let good = dir.path().join("good.hl7");
    std::fs::write(&good, format!("BHS|^~\\&|S\r{msh}{msh}BTS|2\r")).unwrap();
    let (ok, out, _) = run(&[
        "mapping",
        "test",
        "--json",
        file.to_str().unwrap(),
        good.to_str().unwrap(),
    ]);
    assert!(!ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], "null");
    assert!(
        lines[1].starts_with("{\"resourceType\":\"Bundle\""),
        "{out}"
    );
}

/// A set that loads with warnings: `mapping lint` names each with its file and line and still
/// says ok, and a gateway that runs the set logs the same warnings when it starts (an engineer
/// who never runs lint reads them there).
#[test]
fn mapping_warnings_are_printed_by_lint_and_logged_by_serve() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("tables")).unwrap();
    std::fs::write(
        site.join("tables/ids.csv"),
        "resource,source,key,same_key\nOrganization,XON,#XON.10,merge\n",
    )
    .unwrap();
    std::fs::create_dir_all(site.join("vocabulary")).unwrap();
    std::fs::write(
        site.join("vocabulary/NoSuchVocabulary.csv"),
        "code,system,target_code,target_display,target_system\nA,L,A,a,http://example.org\n",
    )
    .unwrap();
    let warning =
        "tables/ids.csv:2: key: `#XON.10` compares as a number, and XON.10 is of v2 type ST";
    let (ok, out, err) = run(&["mapping", "lint", "--site", site.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("warning: ") && l.contains(warning)),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("warning: ") && l.contains("NoSuchVocabulary.csv: no row names")),
        "{out}"
    );
    assert!(
        lines.last().unwrap().starts_with("ok: mapping set "),
        "{out}"
    );

    let data = dir.path().join("store");
    let g = Gateway::start(
        &data,
        &[("MEDANCHOR__NORMALIZE__SITE_DIR", site.to_str().unwrap())],
    );
    let logged = g.log_tail(200);
    assert!(g.stop().success());
    let warned: Vec<&str> = logged.lines().filter(|l| l.contains(" WARN ")).collect();
    assert!(warned.iter().any(|l| l.contains(warning)), "{logged}");
    assert!(
        warned
            .iter()
            .any(|l| l.contains("NoSuchVocabulary.csv") && l.contains("changes nothing")),
        "{logged}"
    );
}
