//! `medanchor import`: files and directories of HL7v2 (messages, batch files, any line endings)
//! and FHIR JSON/NDJSON, summarised; a second run stores nothing twice.

mod common;

use common::*;
use serde_json::Value;

fn import(data: &std::path::Path, paths: &[&std::path::Path]) -> (bool, Value) {
    let mut args = vec!["import", "--json", "--data-dir", data.to_str().unwrap()];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let (ok, out, err) = run(&args);
    let summary = serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out}{err}"));
    (ok, summary)
}

#[test]
fn an_archive_is_imported_once_with_a_summary_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(archive.join("hl7/nested")).unwrap();
    std::fs::create_dir_all(archive.join("fhir")).unwrap();
    let ms = fixtures().join("microsoft");
    for (i, name) in ["ADT-A01-01.hl7", "ORU-R01-01.hl7", "VXU-V04-01.hl7"]
        .iter()
        .enumerate()
    {
        let mut bytes = std::fs::read(ms.join(name)).unwrap();
        if i == 1 {
            // CRLF line endings, as exported from Windows tools.
            bytes = String::from_utf8(bytes)
                .unwrap()
                .replace("\r\n", "\n")
                .replace(['\r', '\n'], "\r\n")
                .into_bytes();
        }
        std::fs::write(archive.join("hl7/nested").join(name), bytes).unwrap();
    }
    // A batch file (FHS/BHS … BTS/FTS) of three messages, LF-separated.
    let mut batch = b"FHS|^~\\&|LAB|H\nBHS|^~\\&|LAB|H\n".to_vec();
    for name in ["ORM-O01-01.hl7", "SIU-S12-01.hl7", "MDM-T02-01.hl7"] {
        let m = String::from_utf8(std::fs::read(ms.join(name)).unwrap()).unwrap();
        let m = m.trim_start_matches('\u{feff}');
        batch.extend_from_slice(
            m.replace("\r\n", "\n")
                .replace('\r', "\n")
                .trim_end()
                .as_bytes(),
        );
        batch.push(b'\n');
    }
    batch.extend_from_slice(b"BTS|3\nFTS|1\n");
    let batch_messages = medanchor::cli::client::messages_of(&batch, false).len();
    assert_eq!(batch_messages, 3);
    std::fs::write(archive.join("hl7/batch.hl7"), &batch).unwrap();
    // FHIR: two single resources, a Bundle, and NDJSON with two lines.
    let fhir = fixtures().parent().unwrap().join("fhir");
    for name in [
        "patient-example.json",
        "observation-example.json",
        "bundle-lipids.json",
    ] {
        std::fs::copy(fhir.join(name), archive.join("fhir").join(name)).unwrap();
    }
    std::fs::write(
        archive.join("fhir/export.ndjson"),
        "{\"resourceType\":\"Patient\",\"id\":\"n1\",\"identifier\":[{\"system\":\"s\",\"value\":\"1\"}]}\n\n{\"resourceType\":\"Patient\",\"id\":\"n2\"}\n",
    )
    .unwrap();
    // Something that is neither.
    std::fs::write(archive.join("notes.txt"), "not a message").unwrap();

    let data = dir.path().join("data");
    let (ok, s) = import(&data, &[&archive]);
    let expected = 3 + batch_messages as u64 + 3 + 2;
    assert!(!ok, "a rejected file makes the exit status non-zero: {s}");
    assert_eq!(s["files"], 9, "{s}");
    assert_eq!(s["stored"], expected, "{s}");
    assert_eq!(s["rejected"], 1, "{s}");
    assert_eq!(s["rejected_by_reason"]["not_hl7"], 1, "{s}");
    assert_eq!(s["retry"], 0);

    // Resumable: the second run stores nothing new.
    let (_, again) = import(&data, &[&archive]);
    assert_eq!(again["stored"], 0, "{again}");
    assert_eq!(again["duplicate"], expected, "{again}");

    assert_everything_verifies(&data, expected);
}

/// `medanchor import` refuses what the record encoding cannot hold (it once exited 0 having
/// stored a record that could never be opened), names the reason and stores the rest.
#[test]
fn a_message_beyond_the_record_encoding_is_a_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let mut pid3 = String::from("MRN");
    for i in 1..65_536 {
        pid3.push_str(&format!("~{}", i % 10));
    }
    let file = dir.path().join("many.hl7");
    std::fs::write(
        &file,
        format!("MSH|^~\\&|APP|FAC|GW|GW|20250101000000||ADT^A01|C1|P|2.5\rPID|1||{pid3}\r"),
    )
    .unwrap();
    let ok_file = dir.path().join("ok.hl7");
    std::fs::copy(fixtures().join("microsoft/ADT-A01-01.hl7"), &ok_file).unwrap();
    let data = dir.path().join("data");
    let (ok, s) = import(&data, &[&file, &ok_file]);
    assert!(!ok, "{s}");
    assert_eq!(s["stored"], 1, "{s}");
    assert_eq!(s["rejected"], 1, "{s}");
    assert_eq!(s["rejected_by_reason"]["too_many_patient_ids"], 1, "{s}");
    assert_everything_verifies(&data, 1);
}
