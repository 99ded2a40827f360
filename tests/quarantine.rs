//! `medanchor quarantine list` and `quarantine replay` on the real binary: a message refused by
//! an acceptance rule is listed by id and reason (never its content), stored by a replay once
//! the rule changed (once: a second replay finds the record), refused again while the rule
//! holds, and a replay of an unknown id or next to a running gateway is refused with the reason.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// Patient data in the refused message: it must not show in what `quarantine` prints.
const MARKER: &str = "ZQXQUARANTINEMARKER";

fn adt() -> String {
    format!(
        "MSH|^~\\&|EHR|HOSP|GW|HOSP|20250101120000||ADT^A01|Q-ADT-1|P|2.5\r\
         PID|1||{MARKER}^^^HOSP^MR||{MARKER}^Jane\rPV1|1|I\r"
    )
}

fn oru() -> String {
    "MSH|^~\\&|LAB|HOSP|GW|HOSP|20250101120000||ORU^R01|Q-ORU-1|P|2.5\r\
     PID|1||4711^^^HOSP^MR\rOBX|1|NM|GLU||5.5|mmol/L\r"
        .to_string()
}

/// A configuration that accepts ORU messages only (`[accept] message_types`).
fn oru_only(dir: &Path) -> PathBuf {
    let path = dir.join("oru-only.toml");
    std::fs::write(&path, "[accept]\nmessage_types = [\"ORU\"]\n").unwrap();
    path
}

/// `medanchor [--config FILE] quarantine ARGS --data-dir DATA`: (success, stdout, stderr).
fn quarantine(config: Option<&Path>, data: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = Vec::new();
    if let Some(c) = config {
        all.extend(["--config", c.to_str().unwrap()]);
    }
    all.push("quarantine");
    all.extend(args);
    all.extend(["--data-dir", data.to_str().unwrap()]);
    run(&all)
}

/// `quarantine list --json`: one entry per line.
fn listed(data: &Path) -> Vec<Value> {
    let (ok, out, err) = quarantine(None, data, &["list", "--json"]);
    assert!(ok, "{out}{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A gateway that accepts ORU only is sent an ORU (stored) and an ADT (refused), then stopped.
/// Returns the data directory and the ADT's quarantine id, as its ACK said.
fn a_refused_adt(dir: &Path) -> (PathBuf, String) {
    let data = dir.join("data");
    let config = oru_only(dir);
    let g = Gateway::start(&data, &[("MEDANCHOR_CONFIG", config.to_str().unwrap())]);
    assert_eq!(msa(&mllp_exchange(g.mllp, oru().as_bytes())).0, "AA");
    let ack = mllp_exchange(g.mllp, adt().as_bytes());
    let (code, control_id, text) = msa(&ack);
    assert!(
        code == "AE" || code == "AR",
        "the ADT was not refused: {text}"
    );
    assert_eq!(control_id, "Q-ADT-1");
    assert!(text.contains("accept.message_types"), "{text}");
    let id = text
        .split_once("(quarantine id ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no quarantine id in the ACK: {text}"))
        .to_string();
    assert!(g.stop().success());
    (data, id)
}

/// The record id in replay's "stored record ID commitment C" / "duplicate of record ID ..".
fn replayed_record_id(out: &str, prefix: &str) -> String {
    let rest = out
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected {prefix:?}…, got {out:?}"));
    let id = rest
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(id.len(), 32, "a record id: {out}");
    assert!(rest.contains(" commitment "), "{out}");
    id
}

#[test]
fn a_message_refused_by_a_rule_is_listed_without_content_and_stored_by_replay_once_the_rule_changes(
) {
    let dir = tempfile::tempdir().unwrap();
    let (data, id) = a_refused_adt(dir.path());

    // Listed: its id and a reason naming the field and the rule, never the content.
    let entries = listed(&data);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e["id"], id.as_str(), "{e}");
    assert_eq!(e["label"], "type_not_accepted", "{e}");
    let reason = e["reason"].as_str().unwrap();
    assert!(
        reason.contains("MSH-9") && reason.contains("accept.message_types"),
        "{reason}"
    );
    assert_eq!(e["size"], adt().len(), "{e}");
    let (ok, text, _) = quarantine(None, &data, &["list"]);
    assert!(ok);
    assert!(
        text.contains(&id) && text.contains("accept.message_types"),
        "{text}"
    );
    for out in [text, serde_json::to_string(&entries).unwrap()] {
        assert!(!out.contains(MARKER), "content in `quarantine list`: {out}");
    }

    // The rule changed (every type accepted): the replay stores it and prints its record id.
    let (ok, out, err) = quarantine(None, &data, &["replay", &id]);
    assert!(ok, "{out}{err}");
    let record = replayed_record_id(&out, "stored record ");
    assert!(!out.contains(MARKER) && !err.contains(MARKER), "{out}{err}");
    assert_everything_verifies(&data, 2);
    let mut ids = control_ids(&data);
    ids.sort();
    assert_eq!(ids, ["Q-ADT-1", "Q-ORU-1"]);
    // The entry stays for the audit trail; nothing new was quarantined.
    assert_eq!(listed(&data).len(), 1);

    // Again: the same record, found as a duplicate, nothing stored twice.
    let (ok, out, err) = quarantine(None, &data, &["replay", &id]);
    assert!(ok, "{out}{err}");
    assert_eq!(replayed_record_id(&out, "duplicate of record "), record);
    assert_everything_verifies(&data, 2);
}

#[test]
fn a_replay_that_is_still_refused_says_rejected_again_and_leaves_a_new_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (data, id) = a_refused_adt(dir.path());
    let config = oru_only(dir.path());

    let (ok, out, err) = quarantine(Some(&config), &data, &["replay", &id]);
    assert!(!ok, "a replay refused again must fail: {out}{err}");
    let new_id = out
        .trim()
        .strip_prefix("rejected again: ")
        .and_then(|rest| rest.split_once("(new quarantine id "))
        .and_then(|(reason, rest)| {
            assert!(reason.contains("accept.message_types"), "{out}");
            rest.strip_suffix(')')
        })
        .unwrap_or_else(|| {
            panic!("expected \"rejected again: … (new quarantine id …)\": {out}{err}")
        })
        .to_string();
    assert_ne!(new_id, id);
    assert!(!out.contains(MARKER), "{out}");

    // The first entry stays; the new one says where it came from.
    let entries = listed(&data);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let new = entries
        .iter()
        .find(|e| e["id"] == new_id.as_str())
        .unwrap_or_else(|| panic!("{new_id} not listed: {entries:?}"));
    assert!(
        entries.iter().any(|e| e["id"] == id.as_str()),
        "{entries:?}"
    );
    assert_eq!(new["label"], "type_not_accepted", "{new}");
    assert_eq!(new["origin"], format!("replay {id}"), "{new}");
    // Nothing stored by the refused replay: only the ORU.
    assert_everything_verifies(&data, 1);
}

#[test]
fn a_replay_of_an_unknown_id_fails_naming_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = a_refused_adt(dir.path());
    for unknown in ["0123456789abcdef0123456789abcdef", "not-an-id"] {
        let (ok, out, err) = quarantine(None, &data, &["replay", unknown]);
        assert!(!ok, "{unknown}: {out}{err}");
        assert!(
            err.contains(&format!("no quarantine entry {unknown}")),
            "{unknown}: {err}"
        );
    }
    assert_eq!(listed(&data).len(), 1);
    assert_everything_verifies(&data, 1);
}

#[test]
fn a_replay_while_the_gateway_runs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, id) = a_refused_adt(dir.path());
    let g = Gateway::start(&data, &[]);
    let (ok, out, err) = quarantine(None, &data, &["replay", &id]);
    assert!(!ok, "{out}{err}");
    assert!(err.contains("in use by a running gateway"), "{err}");
    assert!(g.stop().success());
    // The entry is still there to replay once the gateway is stopped.
    let (ok, out, err) = quarantine(None, &data, &["replay", &id]);
    assert!(ok, "{out}{err}");
    replayed_record_id(&out, "stored record ");
}
