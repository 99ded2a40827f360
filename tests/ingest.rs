//! `POST /v1/ingest` on the real binary over real TCP: HL7v2 and FHIR JSON in, receipts out,
//! problem+json for everything refused.

mod common;

use common::*;
use serde_json::Value;

const TOKEN: &str = "test-token-0123456789";

fn post(g: &Gateway, content_type: &str, token: Option<&str>, body: &[u8]) -> (u16, String, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", content_type)];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let (status, head, body) = http_request(g.http, "POST", "/v1/ingest", &headers, body);
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, head, json)
}

fn gateway(dir: &tempfile::TempDir) -> Gateway {
    Gateway::start(
        &dir.path().join("data"),
        &[
            ("MEDANCHOR__HTTP__INGEST_TOKEN", TOKEN),
            ("MEDANCHOR__HTTP__MAX_BODY_BYTES", "65536"),
        ],
    )
}

#[test]
fn hl7_and_fhir_are_stored_with_receipts_and_duplicates_get_the_first_one() {
    let dir = tempfile::tempdir().unwrap();
    let g = gateway(&dir);
    let hl7 = std::fs::read(fixtures().join("microsoft/ADT-A01-01.hl7")).unwrap();
    let (status, _, first) = post(&g, "application/hl7-v2", Some(TOKEN), &hl7);
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["record_id"].as_str().unwrap().len(), 32);
    let (status, _, again) = post(&g, "application/hl7-v2", Some(TOKEN), &hl7);
    assert_eq!(status, 200);
    assert_eq!(again, first, "a duplicate gets the first receipt");

    let patient = br#"{"resourceType":"Patient","id":"p-1","identifier":[{"system":"urn:oid:2.16.840.1.113883.19.5","value":"12345","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]}}],"name":[{"family":"Doe"}]}"#;
    let (status, _, r) = post(
        &g,
        "application/fhir+json; fhirVersion=4.0",
        Some(TOKEN),
        patient,
    );
    assert_eq!(status, 201, "{r}");
    let bundle = br#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p-1"}},"request":{"method":"POST","url":"Observation"}}]}"#;
    let (status, _, r) = post(&g, "application/fhir+json", Some(TOKEN), bundle);
    assert_eq!(status, 201, "{r}");
    let (status, _, _) = post(&g, "application/fhir+json", Some(TOKEN), bundle);
    assert_eq!(
        status, 200,
        "a Bundle without identifier is still recognised by its bytes"
    );
    assert!(g.stop().success());

    let report = verify_all(&dir.path().join("data"));
    assert_eq!(report["records"], 3);
}

#[test]
fn refusals_are_problem_json_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let g = gateway(&dir);
    let hl7 = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X1|P|2.5\rPID|1||7^^^H^MR\r";

    let (status, head, body) = post(&g, "application/hl7-v2", None, hl7);
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer"));
    assert!(head.contains("application/problem+json"), "{head}");
    assert_eq!(body["status"], 401);
    let (status, _, _) = post(&g, "application/hl7-v2", Some("test-token-0123456788"), hl7);
    assert_eq!(status, 401);

    let (status, _, body) = post(&g, "text/plain", Some(TOKEN), hl7);
    assert_eq!(status, 415, "{body}");

    let (status, _, body) = post(&g, "application/hl7-v2", Some(TOKEN), b"not hl7 at all");
    assert_eq!(status, 400);
    assert_eq!(body["reason"], "not_hl7");
    assert!(
        body["quarantine_id"].is_string(),
        "kept for inspection: {body}"
    );

    let no_control_id = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01||P|2.5\rPID|1||7^^^H^MR\r";
    let (status, _, body) = post(&g, "application/hl7-v2", Some(TOKEN), no_control_id);
    assert_eq!(status, 422);
    assert_eq!(body["reason"], "missing_msh10");

    let (status, _, body) = post(
        &g,
        "application/fhir+json",
        Some(TOKEN),
        b"{\"resourceType\": 7}",
    );
    assert_eq!(status, 400);
    assert_eq!(body["reason"], "not_fhir");
    let (status, _, body) = post(
        &g,
        "application/fhir+json",
        Some(TOKEN),
        b"{\"resourceType\":\"Pat",
    );
    assert_eq!(status, 400);
    assert_eq!(body["reason"], "not_json");

    let big = vec![b'x'; 70_000];
    let (status, _, body) = post(&g, "application/hl7-v2", Some(TOKEN), &big);
    assert_eq!(status, 413, "{body}");

    assert!(g.metric("medanchor_quarantine_entries_total") >= 4.0);
    assert!(g.stop().success());
}

#[test]
fn without_a_token_ingest_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(&dir.path().join("data"), &[]);
    let (status, _, body) = post(&g, "application/hl7-v2", Some(TOKEN), b"MSH|^~\\&|");
    assert_eq!(status, 404);
    assert!(body["detail"].as_str().unwrap().contains("ingest_token"));
}

/// A FHIR Patient with one identifier more than the record encoding's u16 count holds was
/// answered 201 and could then never be opened: now 422 with a reason, nothing stored.
#[test]
fn more_patient_identifiers_than_the_encoding_holds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(
        &dir.path().join("data"),
        &[
            ("MEDANCHOR__HTTP__INGEST_TOKEN", TOKEN),
            ("MEDANCHOR__HTTP__MAX_BODY_BYTES", "4194304"),
        ],
    );
    let patient = |n: usize| {
        let ids: Vec<String> = (0..n)
            .map(|i| format!("{{\"system\":\"s\",\"value\":\"{i}\"}}"))
            .collect();
        format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"p{n}\",\"identifier\":[{}]}}",
            ids.join(",")
        )
    };
    let (status, _, body) = post(
        &g,
        "application/fhir+json",
        Some(TOKEN),
        patient(65_536).as_bytes(),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["reason"], "too_many_patient_ids");
    assert!(body["quarantine_id"].is_string(), "{body}");
    let (status, _, body) = post(
        &g,
        "application/fhir+json",
        Some(TOKEN),
        patient(65_535).as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    assert!(g.stop().success());
    assert_everything_verifies(&dir.path().join("data"), 1);
}
