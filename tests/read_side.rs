//! The read side through the real binary and real HTTP requests: authentication, grants and
//! revocations, filtering by security label, break-the-glass, the access log with proofs, and
//! erasure. Each security property the issue names is one request here.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// An ADT^A01 for patient 7 (HOSP, MR) from sender ADT|HOSP, with a depression diagnosis (the
/// mapping labels its Condition and the Encounter PSY) and an asthma one (no label). The family
/// name is a marker that must never reach the log.
const A01: &str = "MSH|^~\\&|ADT|HOSP|GW|GW|20261130083000||ADT^A01^ADT_A01|RS0001|P|2.5.1\rEVN|A01|20261130083000\rPID|1||7^^^HOSP^MR||ZZMARKERDOE^JANE||19800101|F\rPV1|1|I|WARD^101^1\rDG1|1||F32.9^Major depressive disorder^I10||20261130|A\rDG1|2||J45.909^Asthma^I10||20261130|A\r";
/// Another patient's message.
const OTHER: &str = "MSH|^~\\&|ADT|HOSP|GW|GW|20261130083000||ADT^A01^ADT_A01|RS0002|P|2.5.1\rEVN|A01|20261130083000\rPID|1||8^^^HOSP^MR||ROE^RICHARD||19700101|M\rPV1|1|I|WARD^102^1\r";

struct Api<'a> {
    g: &'a Gateway,
}

impl Api<'_> {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, String, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        let (status, head, text) = http_request(self.g.http, method, path, &headers, &bytes);
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, head, v)
    }

    fn get(&self, path: &str, token: &str) -> (u16, String, Value) {
        self.call("GET", path, Some(token), None)
    }

    fn add(&self, admin: &str, principal: Value) -> String {
        let (status, _, v) = self.call(
            "POST",
            "/v1/admin/principals",
            Some(admin),
            Some(&principal),
        );
        assert_eq!(status, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }
}

fn send(g: &Gateway, dir: &std::path::Path, name: &str, msg: &str) -> String {
    let file = dir.join(name);
    std::fs::write(&file, msg).unwrap();
    let to = g.mllp.to_string();
    let (_, out, err) = run(&["send", "--json", "--to", &to, file.to_str().unwrap()]);
    let ack: Value = serde_json::from_str(out.lines().next().unwrap_or(""))
        .unwrap_or_else(|_| panic!("{out}{err}"));
    assert_eq!(ack["code"], "AA", "{ack}");
    ack["record_id"].as_str().unwrap().to_string()
}

fn types(bundle: &Value) -> Vec<String> {
    let mut t: Vec<String> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string())
        .collect();
    t.sort();
    t
}

#[test]
fn grants_revocations_labels_break_glass_access_log_and_erasure_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("medanchor.toml");
    std::fs::write(&cfg, "[accept]\nmessage_types = [\"ADT\"]\n").unwrap();
    let g = Gateway::start(
        &data,
        &[
            ("MEDANCHOR__LEDGER__BATCH_MS", "50"),
            ("MEDANCHOR_CONFIG", cfg.to_str().unwrap()),
        ],
    );
    let api = Api { g: &g };
    let admin = g.admin_token().expect("admin.token written at first start");
    let meta = std::fs::metadata(data.join("admin.token")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );

    let rec = send(&g, dir.path(), "a01.hl7", A01);
    let other = send(&g, dir.path(), "other.hl7", OTHER);
    // A message of a type this gateway refuses: kept in quarantine under patient 7's key.
    let refused = dir.path().join("refused.hl7");
    std::fs::write(
        &refused,
        A01.replace("ADT^A01^ADT_A01|RS0001", "ORU^R01^ORU_R01|RS0009"),
    )
    .unwrap();
    let (_, out, _) = run(&[
        "send",
        "--json",
        "--to",
        &g.mllp.to_string(),
        refused.to_str().unwrap(),
    ]);
    assert!(out.contains("\"AE\""), "{out}");

    // Principals: the patient (by identifier), another patient, a practitioner of another
    // organization, the sending organization, an auditor.
    let (status, _, v) = api.call(
        "POST",
        "/v1/admin/principals",
        Some(&admin),
        Some(&json!({"id": "pat-7", "role": "patient", "identifiers": ["7^HOSP^MR"]})),
    );
    assert_eq!(status, 201, "{v}");
    let pat = v["token"].as_str().unwrap().to_string();
    let pid = v["principal"]["patients"][0].as_str().unwrap().to_string();
    assert!(pid.starts_with("p-") && pid.len() == 34);
    let pat8 = api.add(
        &admin,
        json!({"id": "pat-8", "role": "patient", "identifiers": ["8^HOSP^MR"]}),
    );
    api.add(
        &admin,
        json!({"id": "org-b", "role": "organization", "senders": ["|OTHERHOSP"]}),
    );
    let dr = api.add(
        &admin,
        json!({"id": "dr-a", "role": "practitioner", "organization": "org-b"}),
    );
    let org_h = api.add(
        &admin,
        json!({"id": "org-h", "role": "organization", "senders": ["|HOSP"]}),
    );
    let aud = api.add(&admin, json!({"id": "aud", "role": "auditor"}));
    // Only admins manage principals.
    let (status, _, _) = api.call(
        "POST",
        "/v1/admin/principals",
        Some(&dr),
        Some(&json!({"id": "x", "role": "admin"})),
    );
    assert_eq!(status, 403);

    let record = format!("/v1/records/{rec}");
    // No token, a bad token: 401 with problem+json.
    let (status, head, v) = api.call("GET", &record, None, None);
    assert_eq!(status, 401, "{v}");
    assert!(
        head.contains("application/problem+json") && head.contains("www-authenticate: bearer"),
        "{head}"
    );
    assert_eq!(api.get(&record, "mat_not-a-token").0, 401);
    assert_eq!(api.get(&record, "").0, 401);

    // Patient 8 on patient 7's record: 403, naming no patient data, and logged for patient 7.
    let (status, head, v) = api.get(&record, &pat8);
    assert_eq!(status, 403, "{v}");
    assert!(head.contains("application/problem+json"));
    assert!(
        !v.to_string().contains("ZZMARKER") && !v.to_string().contains(&pid),
        "{v}"
    );
    // The practitioner without a grant: 403.
    assert_eq!(api.get(&record, &dr).0, 403);

    // The patient reads their own record: the whole derived Bundle.
    let (status, head, own) = api.get(&record, &pat);
    assert_eq!(status, 200, "{own}");
    assert!(head.contains("application/fhir+json"));
    assert!(types(&own).contains(&"Condition".to_string()));
    // The sending organization reads it without a grant.
    assert_eq!(api.get(&record, &org_h).0, 200);

    // Grant: everything to the practitioner's organization, except mental health.
    let (status, _, c1) = api.call(
        "POST",
        "/v1/consents",
        Some(&pat),
        Some(&json!({"grant": {"grantee": "org-b", "decision": "permit", "purposes": ["treatment"]}})),
    );
    assert_eq!(status, 201, "{c1}");
    assert_eq!(c1["resourceType"], "Consent");
    let (status, _, c2) = api.call(
        "POST",
        "/v1/consents",
        Some(&pat),
        Some(&json!({"grant": {"grantee": "org-b", "decision": "deny", "labels": ["PSY"]}})),
    );
    assert_eq!(status, 201, "{c2}");
    let (status, _, seen) = api.get(&record, &dr);
    assert_eq!(status, 200, "{seen}");
    let seen_types = types(&seen);
    // The PSY Condition and Encounter are gone, the asthma Condition stays; no count says so.
    assert_eq!(
        seen_types.iter().filter(|t| *t == "Condition").count(),
        1,
        "{seen_types:?}"
    );
    assert!(
        !seen_types.contains(&"Encounter".to_string()),
        "{seen_types:?}"
    );
    assert!(seen.get("total").is_none());
    assert!(
        !seen.to_string().contains("F32.9"),
        "the PSY diagnosis is filtered out"
    );
    let kept: Vec<&str> = seen["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["fullUrl"].as_str().unwrap())
        .collect();
    for e in seen["entry"].as_array().unwrap() {
        if e["resource"]["resourceType"] == "Provenance" {
            for t in e["resource"]["target"].as_array().unwrap() {
                assert!(
                    kept.contains(&t["reference"].as_str().unwrap()),
                    "a Provenance target names a filtered resource"
                );
            }
        }
    }
    // The original message needs a grant of the whole record: the deny keeps it back.
    let (status, _, _) = http_request_accept(&g, &record, &dr, "application/hl7-v2");
    assert_eq!(status, 403);
    let (status, body) = {
        let (s, _, b) = http_request_accept(&g, &record, &pat, "application/hl7-v2");
        (s, b)
    };
    assert_eq!(status, 200);
    assert!(body.starts_with("MSH|"));
    // A purpose the grant does not name: 403.
    assert_eq!(api.get(&format!("{record}?purpose=research"), &dr).0, 403);
    assert_eq!(api.get(&format!("{record}?purpose=marketing"), &dr).0, 400);

    // The patient's list and the FHIR API show the same filtering.
    let (status, _, list) = api.get(&format!("/v1/patients/{pid}/records"), &dr);
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["records"].as_array().unwrap().len(), 1);
    assert_eq!(list["records"][0]["record_id"], rec.as_str());
    let (status, _, everything) = api.get(&format!("/fhir/Patient/{pid}/$everything"), &dr);
    assert_eq!(status, 200, "{everything}");
    assert_eq!(everything["type"], "searchset");
    assert!(!everything.to_string().contains("F32.9"));
    let (status, _, conds) = api.get(&format!("/fhir/Condition?patient={pid}"), &dr);
    assert_eq!(status, 200);
    assert_eq!(conds["total"], 1, "{conds}");
    // Another patient's records are not listed to them.
    let (_, _, mine8) = api.get(&format!("/v1/patients/{pid}/records"), &pat8);
    assert_eq!(mine8["records"].as_array().unwrap().len(), 0, "{mine8}");

    // Revocation holds for the very next request.
    let c1_id = c1["id"].as_str().unwrap();
    let (status, _, _) = api.call("DELETE", &format!("/v1/consents/{c1_id}"), Some(&pat), None);
    assert_eq!(status, 204);
    assert_eq!(api.get(&record, &dr).0, 403);
    // Another patient cannot revoke (or learn of) it.
    let c2_id = c2["id"].as_str().unwrap();
    assert_eq!(
        api.call(
            "DELETE",
            &format!("/v1/consents/{c2_id}"),
            Some(&pat8),
            None
        )
        .0,
        404
    );

    // An expired grant does not apply.
    let (status, _, _) = api.call(
        "POST",
        "/v1/consents",
        Some(&pat),
        Some(&json!({"grant": {"grantee": "dr-a", "period": {"start_ms": 1, "end_ms": 2}}})),
    );
    assert_eq!(status, 201);
    assert_eq!(api.get(&record, &dr).0, 403);

    // A grant may name only this patient's records; a derived record's id stands for its raw
    // record, and label codes are compared in upper case.
    let theirs = json!({"grant": {"grantee": "dr-a", "records": [other]}});
    assert_eq!(
        api.call("POST", "/v1/consents", Some(&pat), Some(&theirs))
            .0,
        400
    );
    let derived = list["records"][0]["derived_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _, by_derived) = api.call(
        "POST",
        "/v1/consents",
        Some(&pat),
        Some(&json!({"grant": {"grantee": "dr-a", "records": [derived.to_uppercase()], "labels": ["psy"], "decision": "deny"}})),
    );
    assert_eq!(status, 201, "{by_derived}");
    assert_eq!(
        by_derived["provision"]["data"][0]["reference"]["reference"],
        format!("urn:medanchor:record:{rec}")
    );
    assert_eq!(by_derived["provision"]["securityLabel"][0]["code"], "PSY");
    // Reads about a patient the gateway holds nothing of write no event (and make no key).
    let events = |g: &Gateway| g.metric("medanchor_api_events_total{kind=\"record_accessed\"}");
    let before = events(&g);
    let nobody = format!("p-{}", "ab".repeat(16));
    assert_eq!(
        api.get(&format!("/v1/patients/{nobody}/access-log"), &dr).0,
        403
    );
    assert_eq!(
        api.get(&format!("/v1/patients/{nobody}/records"), &dr).2["records"],
        json!([])
    );
    assert_eq!(events(&g), before);

    // A FHIR Consent is accepted too, and the list returns FHIR Consents.
    let consent = json!({
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": "urn:medanchor:patient", "value": pid}},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"type": "permit",
            "actor": [{"reference": {"identifier": {"system": "urn:medanchor:principal", "value": "dr-a"}}}],
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Patient"}]}
    });
    let (status, _, v) = api.call("POST", "/v1/consents", Some(&pat), Some(&consent));
    assert_eq!(status, 201, "{v}");
    let (status, _, only_patient) = api.get(&record, &dr);
    assert_eq!(status, 200);
    assert_eq!(types(&only_patient), ["Patient"]);
    let (status, _, consents) = api.get(&format!("/v1/patients/{pid}/consents"), &pat);
    assert_eq!(status, 200);
    assert_eq!(consents["total"], 5, "{consents}");
    let statuses: Vec<&str> = consents["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == "inactive").count(), 1);
    assert_eq!(api.get(&format!("/v1/patients/{pid}/consents"), &dr).0, 403);

    // Break-the-glass: allowed, and flagged in the patient's access log.
    let (status, _, bg) = api.get(&format!("{record}?purpose=emergency"), &dr);
    assert_eq!(status, 200, "{bg}");
    assert!(types(&bg).contains(&"Encounter".to_string()));

    // The access log: every read (allowed or denied) and grant, each with its proof once
    // anchored; the auditor may read it, another patient may not.
    let log_path = format!("/v1/patients/{pid}/access-log");
    let mut log = Value::Null;
    wait_until(
        Duration::from_secs(20),
        || "every access event anchored".into(),
        || {
            let (_, _, v) = api.get(&log_path, &aud);
            // The auditor's own earlier looks may still be in the open batch.
            let ok = v["entries"].as_array().is_some_and(|e| {
                e.iter()
                    .filter(|x| x["event"]["agent"][0]["who"]["identifier"]["value"] != "aud")
                    .all(|x| !x["proof"].is_null())
            });
            log = v;
            ok
        },
    );
    let entries = log["entries"].as_array().unwrap();
    let denied = entries
        .iter()
        .filter(|e| e["kind"] == "record_accessed" && e["event"]["outcome"] == "4")
        .count();
    assert!(
        denied >= 3,
        "pat-8, dr-a without a grant, after revocation: {denied}"
    );
    let by_pat8 = entries
        .iter()
        .any(|e| e["event"]["agent"][0]["who"]["identifier"]["value"] == "pat-8");
    assert!(by_pat8, "patient 8's refused read is in patient 7's log");
    assert!(entries.iter().any(|e| e["break_glass"] == true));
    assert!(entries.iter().any(|e| e["kind"] == "consent_granted"));
    assert!(entries.iter().any(|e| e["kind"] == "consent_revoked"));
    let proven = entries.iter().find(|e| !e["proof"].is_null()).unwrap();
    let bundle: medanchor_merkle::ProofBundle =
        serde_json::from_value(proven["proof"].clone()).unwrap();
    bundle.verify(None).unwrap();
    assert!(bundle.event.is_some());
    assert_eq!(api.get(&log_path, &pat8).0, 403);
    // A page at a time: the second page starts right after the first.
    let (_, _, first) = api.get(&format!("{log_path}?limit=2"), &aud);
    assert_eq!(first["entries"].as_array().unwrap().len(), 2);
    let next = first["next"].as_str().expect("more pages").to_string();
    assert_eq!(first["entries"][1]["id"], next.as_str());
    let (_, _, second) = api.get(&format!("{log_path}?limit=2&after={next}"), &aud);
    assert_eq!(second["entries"][0]["id"], entries[2]["id"], "{second}");
    assert_eq!(api.get(&format!("{log_path}?after=zz"), &aud).0, 400);

    // Proofs and checkpoints over HTTP.
    let (status, _, proof) = api.get(&format!("{record}/proof"), &pat);
    assert_eq!(status, 200, "{proof}");
    assert_eq!(api.get(&format!("{record}/proof"), &pat8).0, 403);
    let (status, _, key) = api.get("/v1/log/public-key", &aud);
    assert_eq!(status, 200);
    assert_eq!(key["public_key"], proof["public_key"]);
    let size = proof["tree_size"].as_u64().unwrap();
    let (status, _, _) = api.get(&format!("/v1/checkpoints/{size}"), &aud);
    assert_eq!(status, 200);
    let (status, _, _) = api.get("/v1/checkpoints/latest", &aud);
    assert_eq!(status, 200);

    // Erasure: admin only, with a reason; then 410, and the proof still verifies.
    assert_eq!(
        api.call(
            "DELETE",
            &format!("/v1/patients/{pid}?reason=request"),
            Some(&pat),
            None
        )
        .0,
        403
    );
    assert_eq!(
        api.call("DELETE", &format!("/v1/patients/{pid}"), Some(&admin), None)
            .0,
        400
    );
    let (status, _, erased) = api.call(
        "DELETE",
        &format!("/v1/patients/{pid}?reason=patient%20request%2042"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["keys_destroyed"], 1);
    assert_eq!(api.get(&record, &pat).0, 410);
    assert_eq!(api.get(&record, &org_h).0, 410);
    assert_eq!(api.get(&format!("/v1/patients/{pid}/records"), &pat).0, 410);
    let (status, _, after) = api.get(&format!("{record}/proof"), &pat);
    assert_eq!(status, 200, "{after}");
    let bundle: medanchor_merkle::ProofBundle = serde_json::from_value(after).unwrap();
    bundle.verify(None).unwrap();
    // New messages about the erased patient are refused, not stored.
    let file = dir.path().join("again.hl7");
    std::fs::write(&file, A01.replace("RS0001", "RS0003")).unwrap();
    let (_, out, _) = run(&[
        "send",
        "--json",
        "--to",
        &g.mllp.to_string(),
        file.to_str().unwrap(),
    ]);
    assert!(out.contains("\"AE\""), "{out}");
    // The other patient is untouched.
    assert_eq!(api.get(&format!("/v1/records/{other}"), &pat8).0, 200);

    // Revoking a principal holds for its next request.
    assert_eq!(
        api.call("DELETE", "/v1/admin/principals/pat-8", Some(&admin), None)
            .0,
        204
    );
    assert_eq!(api.get(&format!("/v1/records/{other}"), &pat8).0, 401);

    // The marker never reached the gateway's log.
    let logged = std::fs::read_to_string(&g.log).unwrap();
    assert!(!logged.contains("ZZMARKER"), "patient data in the log");
    assert!(!logged.contains(&admin), "a token in the log");
    g.stop();

    // Offline, everything verifies. The erased patient's raw and derived record and their
    // events (grants, reads) count as erased, not as damage; patient 8's record, its derived
    // record, and the events not under patient 7's key (patient 8's reads, the erasure) open.
    let report = verify_all(&data);
    let n = |k: &str| report[k].as_u64().unwrap();
    assert_eq!((n("records"), n("derived")), (1, 1), "{report}");
    assert!(n("events") >= 2, "{report}");
    assert!(n("erased") >= 2 + 20, "{report}");
    assert_eq!(
        (n("quarantined"), n("quarantined_erased")),
        (1, 1),
        "{report}"
    );
    assert_eq!(
        n("leaves"),
        n("records") + n("derived") + n("events") + n("erased"),
        "every record and event has its leaf: {report}"
    );
}

/// Failed authentications are limited per address: after 20 in a minute, 429.
#[test]
fn guessing_tokens_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(&dir.path().join("data"), &[]);
    let api = Api { g: &g };
    let statuses: Vec<u16> = (0..25)
        .map(|i| {
            api.get("/v1/checkpoints/latest", &format!("mat_guess{i}"))
                .0
        })
        .collect();
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    // The right token still gets in from that address (a proxy's other clients are not locked
    // out); more guesses are still refused.
    let admin = g.admin_token().unwrap();
    assert_eq!(api.get("/v1/log/public-key", &admin).0, 200);
    assert_eq!(api.get("/v1/log/public-key", "mat_guess-again").0, 429);
    assert_eq!(api.get("/v1/log/public-key", "").0, 429);
    g.stop();
}

/// A principal over `http.requests_per_principal_per_second` gets 429 problem+json with
/// `Retry-After`, counted; another principal is not held back; after the wait it gets in again.
#[test]
fn a_principal_over_its_request_rate_gets_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(
        &dir.path().join("data"),
        &[("MEDANCHOR__HTTP__REQUESTS_PER_PRINCIPAL_PER_SECOND", "1")],
    );
    let api = Api { g: &g };
    let admin = g.admin_token().unwrap();
    let other = api.add(
        &admin,
        serde_json::json!({"id": "auditor-1", "role": "auditor"}),
    );
    // One a second, the request above spent it: sent until the first 429 (the next one, unless
    // a second passed), which is the answer looked at.
    let mut answers = Vec::new();
    let (status, head, problem) = loop {
        let answer = api.get("/v1/log/public-key", &admin);
        if answer.0 != 200 || answers.len() == 50 {
            break answer;
        }
        answers.push(answer.0);
    };
    assert_eq!(status, 429, "{problem}");
    assert!(answers.len() < 50, "{answers:?}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("application/problem+json"), "{head}");
    let retry = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(retry.is_some_and(|s| (1..=2).contains(&s)), "{head}");
    assert_eq!(problem["title"], "too many requests", "{problem}");
    assert_eq!(
        api.get("/v1/log/public-key", &other).0,
        200,
        "per principal"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        api.get("/v1/log/public-key", &admin).0,
        200,
        "after the wait"
    );
    let (_, _, metrics) = http_request(g.http, "GET", "/metrics", &[], b"");
    let limited = metrics
        .lines()
        .find_map(|l| l.strip_prefix("medanchor_api_rate_limited_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(limited >= 1, "{limited}");
    g.stop();
}

fn http_request_accept(
    g: &Gateway,
    path: &str,
    token: &str,
    accept: &str,
) -> (u16, String, String) {
    let auth = format!("Bearer {token}");
    http_request(
        g.http,
        "GET",
        path,
        &[("Authorization", &auth), ("Accept", accept)],
        b"",
    )
}

/// `medanchor principals`: through a running gateway's admin API (its admin.token), then on the
/// stopped gateway's data directory; tokens from both work.
#[test]
fn principals_cli_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let g = Gateway::start(&data, &[]);
    let run_env = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .env("MEDANCHOR__HTTP__LISTEN", g.http.to_string())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run_env(&[
        "principals",
        "add",
        "pat-1",
        "--role",
        "patient",
        "--identifier",
        "1^HOSP^MR",
        "--data-dir",
        d,
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("patient id: p-"), "{out}");
    let token = out.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("mat_"));
    let api = Api { g: &g };
    assert_eq!(api.get("/v1/log/public-key", &token).0, 200);
    let (ok, out, err) = run_env(&[
        "principals",
        "add",
        "x",
        "--role",
        "wizard",
        "--data-dir",
        d,
    ]);
    assert!(!ok && err.contains("--role"), "{out}{err}");
    let (ok, _, err) = run_env(&[
        "principals",
        "add",
        "pat-1",
        "--role",
        "auditor",
        "--data-dir",
        d,
    ]);
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, out, _) = run_env(&["principals", "list", "--data-dir", d]);
    assert!(
        ok && out.contains("pat-1\tpatient") && out.contains("admin\tadmin"),
        "{out}"
    );
    g.stop();

    // Stopped: the same commands on the data directory.
    let (ok, out, err) = run(&[
        "principals",
        "add",
        "aud",
        "--role",
        "auditor",
        "--data-dir",
        d,
    ]);
    assert!(ok, "{out}{err}");
    let auditor = out.lines().last().unwrap().trim().to_string();
    let (ok, out, _) = run(&["principals", "revoke", "pat-1", "--data-dir", d]);
    assert!(ok, "{out}");
    let g = Gateway::start(&data, &[]);
    let api = Api { g: &g };
    assert_eq!(api.get("/v1/log/public-key", &auditor).0, 200);
    assert_eq!(
        api.get("/v1/log/public-key", &token).0,
        401,
        "revoked offline"
    );
    g.stop();
}

/// The patient's statement of services: the ChargeItems of a DFT^P03, each with its amount,
/// code, performer and a proof that verifies; only for the patient.
#[test]
fn a_patient_reads_their_charges_with_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let g = Gateway::start(&data, &[("MEDANCHOR__LEDGER__BATCH_MS", "50")]);
    let api = Api { g: &g };
    let admin = g.admin_token().unwrap();
    let dft = std::fs::read_to_string(fixtures().join("../v2fhir/ms/DFT-P03-01.hl7")).unwrap();
    send(&g, dir.path(), "dft.hl7", &dft);
    // PID-3's MR repetition, as the record's key identity reads it (CX.1 ^ CX.4.1 ^ CX.5).
    let (status, _, v) = api.call(
        "POST",
        "/v1/admin/principals",
        Some(&admin),
        Some(&json!({"id": "adam", "role": "patient", "identifiers": ["PATID1234^test1^MR"]})),
    );
    assert_eq!(status, 201, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let pid = v["principal"]["patients"][0].as_str().unwrap().to_string();
    let path = format!("/v1/patients/{pid}/charges");
    let mut charges = Value::Null;
    wait_until(
        Duration::from_secs(20),
        || "charges with proofs".into(),
        || {
            charges = api.get(&path, &token).2;
            charges["charges"]
                .as_array()
                .is_some_and(|c| !c.is_empty() && c.iter().all(|x| !x["proof"].is_null()))
        },
    );
    let list = charges["charges"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{charges}");
    let xray = list
        .iter()
        .find(|c| c["code"]["coding"][0]["code"] == "71045")
        .expect("the x-ray");
    assert_eq!(xray["amount"]["value"], 100);
    assert_eq!(xray["amount"]["currency"], "USD");
    assert_eq!(xray["quantity"], 2);
    assert_eq!(xray["date"], "2019-11-22");
    assert!(!xray["performers"].as_array().unwrap().is_empty(), "{xray}");
    let proof: medanchor_merkle::ProofBundle =
        serde_json::from_value(xray["proof"].clone()).unwrap();
    proof.verify(None).unwrap();
    assert!(
        proof.derived_from.is_some(),
        "the charge's Bundle is proven with its raw message"
    );
    assert_eq!(api.get(&path, &admin).0, 403);
    g.stop();
}

/// JWT access tokens from an identity provider (ES256, a JWKS file): a valid one reads within
/// its SMART scopes; an expired one, one for an unknown principal, or one signed by another
/// key gets 401.
#[test]
fn jwt_access_tokens_are_checked_and_their_scopes_narrow_what_is_read() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    let rng = SystemRandom::new();
    let keypair = |rng: &SystemRandom| {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), rng).unwrap()
    };
    let idp = keypair(&rng);
    let p = idp.public_key().as_ref();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "idp-1", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])}]})
        .to_string(),
    )
    .unwrap();
    let mint = |key: &EcdsaKeyPair, claims: Value| {
        let h = URL_SAFE_NO_PAD
            .encode(json!({"alg": "ES256", "kid": "idp-1", "typ": "JWT"}).to_string());
        let signed = format!("{h}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = key.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |sub: &str, exp: u64, scope: &str| json!({"iss": "https://idp.hospital.test", "aud": "medanchor", "sub": sub, "exp": exp, "scope": scope});

    let data = dir.path().join("data");
    let g = Gateway::start(
        &data,
        &[
            ("MEDANCHOR__JWT__ISSUER", "https://idp.hospital.test"),
            ("MEDANCHOR__JWT__AUDIENCE", "medanchor"),
            ("MEDANCHOR__JWT__JWKS_FILE", jwks.to_str().unwrap()),
        ],
    );
    let api = Api { g: &g };
    let admin = g.admin_token().unwrap();
    let rec = send(&g, dir.path(), "a01.hl7", A01);
    let pat = api.add(
        &admin,
        json!({"id": "pat-7", "role": "patient", "identifiers": ["7^HOSP^MR"]}),
    );
    api.add(&admin, json!({"id": "dr-a", "role": "practitioner"}));
    let (status, _, _) = api.call(
        "POST",
        "/v1/consents",
        Some(&pat),
        Some(&json!({"grant": {"grantee": "dr-a"}})),
    );
    assert_eq!(status, 201);
    let record = format!("/v1/records/{rec}");

    // Everything the grant allows, narrowed by the token to Patient and Condition.
    let scoped = mint(
        &idp,
        claims(
            "dr-a",
            now + 300,
            "openid user/Patient.rs user/Condition.read",
        ),
    );
    let (status, _, v) = api.get(&record, &scoped);
    assert_eq!(status, 200, "{v}");
    let mut seen = types(&v);
    seen.dedup();
    assert_eq!(seen, ["Condition", "Patient"]);
    // The original message needs scopes that cover everything.
    assert_eq!(
        http_request_accept(&g, &record, &scoped, "application/hl7-v2").0,
        403
    );
    let all = mint(&idp, claims("dr-a", now + 300, "user/*.rs"));
    assert_eq!(
        http_request_accept(&g, &record, &all, "application/hl7-v2").0,
        200
    );
    // No read scope: nothing.
    let none = mint(&idp, claims("dr-a", now + 300, "openid launch"));
    assert_eq!(api.get(&record, &none).0, 403);

    // Expired, unknown principal, another key, tampered: 401.
    assert_eq!(
        api.get(
            &record,
            &mint(&idp, claims("dr-a", now - 3600, "user/*.rs"))
        )
        .0,
        401
    );
    assert_eq!(
        api.get(
            &record,
            &mint(&idp, claims("nobody", now + 300, "user/*.rs"))
        )
        .0,
        401
    );
    let other = keypair(&rng);
    assert_eq!(
        api.get(
            &record,
            &mint(&other, claims("dr-a", now + 300, "user/*.rs"))
        )
        .0,
        401
    );
    let mut parts: Vec<String> = all.split('.').map(str::to_string).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(claims("admin", now + 300, "user/*.rs").to_string());
    assert_eq!(api.get("/v1/admin/principals", &parts.join(".")).0, 401);
    // Scopes narrow management too: a patient app with read scopes cannot grant; one with
    // Consent.c can; a JWT never does admin work, whatever its subject.
    let grant = json!({"grant": {"grantee": "dr-a"}});
    let reader = mint(&idp, claims("pat-7", now + 300, "patient/*.rs"));
    assert_eq!(
        api.call("POST", "/v1/consents", Some(&reader), Some(&grant))
            .0,
        403
    );
    let writer = mint(&idp, claims("pat-7", now + 300, "patient/Consent.cud"));
    assert_eq!(
        api.call("POST", "/v1/consents", Some(&writer), Some(&grant))
            .0,
        201
    );
    let admin_jwt = mint(&idp, claims("admin", now + 300, "system/*.cruds"));
    assert_eq!(api.get("/v1/admin/principals", &admin_jwt).0, 403);
    assert_eq!(api.get("/v1/admin/principals", &admin).0, 200);
    // Revoking the principal stops its JWTs too.
    assert_eq!(
        api.call("DELETE", "/v1/admin/principals/dr-a", Some(&admin), None)
            .0,
        204
    );
    assert_eq!(api.get(&record, &all).0, 401);
    g.stop();
}
