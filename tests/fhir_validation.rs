//! FHIR R4 validation against the HL7 validator test cases (fhir-test-cases, R4 selection) and
//! the R4 specification's examples, the inbound wiring (rejection, HTTP 422 with an
//! OperationOutcome), and hostile input (deep nesting, values in messages).
//! Fixtures: tests/fixtures/fhir-validator (SOURCES.md).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use medanchor::envelope::{FormatHint, Origin, RejectKind};
use medanchor::fhir::validate::{
    operation_outcome, Issue, IssueCode, Options, Validator, MAX_DEPTH,
};
use medanchor::record::AcceptRules;
use serde_json::{json, Value};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fhir-validator")
}

/// The options the upstream manifest (validator/manifest.json) sets for a case; everything
/// else as the reference validator's defaults (no security checks, example URLs allowed,
/// contained resources validated, HTML in markdown allowed, no JSON comments).
fn case_options(name: &str) -> Options {
    let mut o = Options {
        security_checks: false,
        ..Options::default()
    };
    match name {
        "dr-example-org" | "pat-example-extensions" => o.allow_example_urls = false,
        "pat-security-good3" | "pat-security-bad-xhtml" | "pat-security-bad-string" => {
            o.security_checks = true
        }
        "contained-resource-bad-id-ignore" => o.check_contained = false,
        "bad-markdown-no-html" => o.markdown_html = false,
        "json-comments-1-yes" | "json-comments-2-yes" => o.allow_json_comments = true,
        _ => {}
    }
    o
}

/// `Bundle.entry[1].resource/*Measure/x*/.value.ofType(integer)` → `Bundle.entry[1].resource.valueInteger`.
fn normalize_expected(e: &str) -> String {
    let mut s = String::new();
    let mut rest = e;
    while let Some(p) = rest.find("/*") {
        s.push_str(&rest[..p]);
        rest = rest[p..].find("*/").map_or("", |q| &rest[p + q + 2..]);
    }
    s.push_str(rest);
    while let Some(p) = s.find(".ofType(") {
        let end = s[p..].find(')').map_or(s.len(), |q| p + q);
        let t = &s[p + 8..end];
        let mut cap = t[..1].to_ascii_uppercase();
        cap.push_str(&t[1..]);
        s = format!("{}{}{}", &s[..p], cap, &s[end + 1..]);
    }
    s
}

fn path_matches(ours: &str, expected: &str) -> bool {
    ours == expected
        || ours
            .strip_prefix(expected)
            .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
}

struct Case {
    name: String,
    expected_errors: u64,
    issues: Vec<Issue>,
    rejected: bool,
    expected_paths: Vec<String>,
}

fn run_corpus() -> Vec<Case> {
    let dir = fixtures_dir();
    let sel: Value = serde_json::from_slice(
        &std::fs::read(dir.join("validator_r4_selection.json")).expect("selection"),
    )
    .expect("selection json");
    let mut out = Vec::new();
    for c in sel.as_array().expect("list") {
        let name = c["name"].as_str().expect("name").to_string();
        let bytes = std::fs::read(dir.join(c["input"].as_str().expect("input"))).expect("input");
        let v = Validator::with_options(case_options(&name));
        let issues: Vec<Issue> = v.check_bytes(&bytes);
        let rejected = issues.iter().any(|i| i.severity.is_error());
        let mut expected_paths = Vec::new();
        if let Some(oc) = c["expected_outcome"].as_str() {
            let o: Value = serde_json::from_slice(&std::fs::read(dir.join(oc)).expect("outcome"))
                .expect("outcome json");
            for i in o["issue"].as_array().into_iter().flatten() {
                if matches!(i["severity"].as_str(), Some("error" | "fatal")) {
                    let e = i["expression"][0]
                        .as_str()
                        .or(i["location"][0].as_str())
                        .unwrap_or("-");
                    expected_paths.push(normalize_expected(e));
                }
            }
        }
        out.push(Case {
            name,
            expected_errors: c["expected_errors"].as_u64().expect("count"),
            issues,
            rejected,
            expected_paths,
        });
    }
    out
}

/// Invalid cases this validator does not reject at the path the reference validator names,
/// and why. An improvement or a regression changes this set: update it with the docs.
const KNOWN_GAPS: &[(&str, &str)] = &[
    (
        "bundle-id-5",
        "wrong display name for a CVX code: needs a terminology server",
    ),
    (
        "uk-msg",
        "wrong display names and unknown SNOMED CT codes: needs a terminology server",
    ),
    (
        "pat-dob-ext",
        "extension whose definition cannot be found: needs the extension's StructureDefinition",
    ),
    (
        "maiden-name-extension",
        "extension used outside its context: needs the extension's StructureDefinition",
    ),
];

#[test]
fn validator_test_cases_r4() {
    let cases = run_corpus();
    let mut valid_rejected = Vec::new();
    let mut caught = 0;
    let mut gaps = BTreeSet::new();
    let mut table = String::new();
    for c in &cases {
        let first = c
            .issues
            .iter()
            .find(|i| i.severity.is_error())
            .map(|i| i.to_string())
            .unwrap_or_default();
        if c.expected_errors == 0 {
            if c.rejected {
                valid_rejected.push(format!("{}: {}", c.name, first));
            }
            table.push_str(&format!(
                "valid   {:<42} {}\n",
                c.name,
                if c.rejected { "REJECTED" } else { "accepted" }
            ));
            continue;
        }
        let at_path = c.rejected
            && (c.expected_paths.is_empty()
                || c.expected_paths.iter().any(|e| {
                    e == "-"
                        || c.issues
                            .iter()
                            .filter(|i| i.severity.is_error())
                            .any(|i| path_matches(&i.path, e))
                }));
        let verdict = match (c.rejected, at_path) {
            (true, true) => {
                caught += 1;
                "rejected at path"
            }
            (true, false) => {
                gaps.insert(c.name.clone());
                "rejected elsewhere"
            }
            _ => {
                gaps.insert(c.name.clone());
                "ACCEPTED"
            }
        };
        table.push_str(&format!("invalid {:<42} {verdict}  ({first})\n", c.name));
        if !at_path {
            table.push_str(&format!("        expected: {:?}\n", c.expected_paths));
        }
    }
    let valid = cases.iter().filter(|c| c.expected_errors == 0).count();
    let invalid = cases.len() - valid;
    println!("{table}");
    println!(
        "valid accepted {}/{valid}, invalid rejected at the right path {caught}/{invalid}",
        valid - valid_rejected.len()
    );
    assert_eq!((valid, invalid), (31, 55));
    assert!(
        valid_rejected.is_empty(),
        "valid cases rejected: {valid_rejected:#?}"
    );
    let known: BTreeSet<String> = KNOWN_GAPS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        gaps, known,
        "the known gaps changed (update KNOWN_GAPS and docs/fhir-validation.md)"
    );
    assert!(
        caught >= 45,
        "{caught} of 55 invalid cases rejected at the right path"
    );
}

/// Specification examples that are not valid R4 themselves, and why.
const INVALID_EXAMPLES: &[(&str, &str)] = &[(
    "bundle-questionnaire.json",
    "display items without Questionnaire.item.linkId, which R4 requires (1..1)",
)];

#[test]
fn r4_specification_examples_are_accepted() {
    let dir = fixtures_dir().join("r4-examples");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    let v = Validator::shared();
    let mut rejected = Vec::new();
    for p in &names {
        let name = p.file_name().unwrap().to_string_lossy();
        if INVALID_EXAMPLES.iter().any(|(n, _)| *n == name) {
            let issues = v
                .validate_bytes(&std::fs::read(p).expect("example"))
                .unwrap_err();
            assert!(
                issues.iter().all(|i| i.path.contains(".item[")),
                "{issues:?}"
            );
            continue;
        }
        let bytes = std::fs::read(p).expect("example");
        if let Err(issues) = v.validate_bytes(&bytes) {
            let shown: Vec<String> = issues
                .iter()
                .filter(|i| i.severity.is_error())
                .map(|i| i.to_string())
                .collect();
            rejected.push(format!(
                "{}: {shown:?}",
                p.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert_eq!(names.len(), 72);
    assert!(rejected.is_empty(), "{rejected:#?}");
}

/// A Patient whose values all carry a marker, each invalid in its own way.
fn bad_patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "SECRET_1",
        "birthDate": "SECRET-1980",
        "gender": "SECRET",
        "active": "SECRET",
        "name": [{"family": "", "given": ["SECRET <script>x</script>"]}],
        "telecom": [],
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">SECRET &secret;</div>"},
        "photo": [{"data": "SECRET!!", "size": 3}],
        "managingOrganization": {"reference": "SECRET reference"},
        "extension": [{"url": "http://x.org/SECRET|1", "valueString": "SECRET"}],
        "contact": [{}],
        "address": [{"line": ["SECRET\u{0}"], "city": "SECRET\u{1b}[2J", "text": "SECRET\t\r\n"}]
    })
}

#[test]
fn issues_name_paths_and_rules_never_values() {
    let issues = Validator::shared().validate(&bad_patient()).unwrap_err();
    let mut paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    paths.sort();
    for expected in [
        "Patient.active",
        // The spec's rule for every string: no control character but tab, CR and LF.
        "Patient.address[0].city",
        "Patient.address[0].line[0]",
        "Patient.birthDate",
        "Patient.contact[0]",
        "Patient.extension[0].url",
        "Patient.gender",
        "Patient.id",
        "Patient.managingOrganization",
        "Patient.name[0].family",
        "Patient.name[0].given[0]",
        "Patient.photo[0].data",
        "Patient.telecom",
        "Patient.text.div",
    ] {
        assert!(paths.contains(&expected), "{expected} not in {paths:#?}");
    }
    assert!(!paths.contains(&"Patient.address[0].text"), "{paths:#?}");
    for i in &issues {
        let text = format!("{} {}", i.path, i.message);
        assert!(!text.to_lowercase().contains("secret"), "{text}");
    }
    let oo = operation_outcome(&issues);
    assert!(!oo.to_string().to_lowercase().contains("secret"));
    // The OperationOutcome is valid R4 itself, one issue per finding, each with its expression.
    assert!(Validator::shared().validate(&oo).is_ok());
    assert_eq!(oo["issue"].as_array().unwrap().len(), issues.len());
    assert_eq!(oo["issue"][0]["expression"][0], issues[0].path.as_str());
}

#[test]
fn bundle_entries_are_validated_with_their_own_types_and_references_resolve() {
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:6e0f8b8a-3c2b-4f7e-9d55-1a2b3c4d5e6f",
             "resource": {"resourceType": "Patient", "gender": "female"},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:7e0f8b8a-3c2b-4f7e-9d55-1a2b3c4d5e6f",
             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
                          "subject": {"reference": "urn:uuid:6e0f8b8a-3c2b-4f7e-9d55-1a2b3c4d5e6f"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    assert_eq!(Validator::shared().validate(&bundle), Ok(()));

    let mut bad = bundle.clone();
    bad["entry"][1]["resource"]["status"] = json!("done");
    bad["entry"][1]["resource"]["subject"]["reference"] =
        json!("urn:uuid:00000000-3c2b-4f7e-9d55-1a2b3c4d5e6f");
    bad["entry"][0]["fullUrl"] = bad["entry"][1]["fullUrl"].clone();
    bad["entry"][0]["resource"]["birthDate"] = json!("2023-02-30");
    let issues = Validator::shared().validate(&bad).unwrap_err();
    let at = |p: &str| {
        issues
            .iter()
            .find(|i| i.path == p)
            .unwrap_or_else(|| panic!("no issue at {p}: {issues:#?}"))
            .code
    };
    assert_eq!(
        at("Bundle.entry[1].resource.status"),
        IssueCode::CodeInvalid
    );
    assert_eq!(at("Bundle.entry[1].resource.subject"), IssueCode::NotFound);
    assert_eq!(at("Bundle.entry[1].fullUrl"), IssueCode::BusinessRule);
    assert_eq!(at("Bundle.entry[0].resource.birthDate"), IssueCode::Value);
}

/// References between entries resolve by fullUrl (with the referring entry's RESTful base) and
/// version: one match is fine, two are ambiguous, a version the Bundle lacks is named; a link
/// relation given twice is refused; entries sharing an identity are each named once.
#[test]
fn references_resolve_by_identity_and_version_and_link_relations_are_unique() {
    let patient = |v: &str| {
        json!({"fullUrl": "http://s.org/fhir/Patient/1",
               "resource": {"resourceType": "Patient", "id": "1", "meta": {"versionId": v}}})
    };
    let mut entries = vec![patient("1"), patient("2")];
    entries.push(
        json!({"fullUrl": "http://s.org/fhir/Observation/o", "resource": {
        "resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient/1/_history/2"},
        "performer": [{"reference": "Patient/1"}, {"reference": "Patient/1/_history/3"}]}}),
    );
    // One identity shared by many entries: each after the first is a bdl-7 error.
    for i in 0..2_000 {
        entries.push(
            json!({"fullUrl": "urn:uuid:0b6c0f1e-4c3a-4d2b-9a8e-000000000001",
            "resource": {"resourceType": "Basic", "id": format!("b{i}"), "code": {"text": "x"}}}),
        );
    }
    let bundle = json!({"resourceType": "Bundle", "type": "collection",
        "link": [{"relation": "self", "url": "http://s.org/a"}, {"relation": "self", "url": "http://s.org/b"}],
        "entry": entries});
    let issues = Validator::shared().validate(&bundle).unwrap_err();
    let at = |path: &str| -> Vec<&str> {
        issues
            .iter()
            .filter(|i| i.path == path)
            .map(|i| i.message.as_str())
            .collect()
    };
    assert!(
        at("Bundle.entry[2].resource.subject").is_empty(),
        "{issues:#?}"
    );
    assert_eq!(
        at("Bundle.entry[2].resource.performer[0]"),
        ["the reference matches more than one entry of the Bundle"]
    );
    assert_eq!(
        at("Bundle.entry[2].resource.performer[1]"),
        ["the Bundle holds the referenced resource but not the referenced version"]
    );
    assert_eq!(
        at("Bundle.link[1]"),
        ["a link relation type may occur only once in a Bundle"]
    );
    let not_unique = issues
        .iter()
        .filter(|i| i.message.starts_with("bdl-7"))
        .count();
    assert_eq!(not_unique, 1_999);
}

/// Builds `depth` nested extensions iteratively, and takes them apart the same way (a
/// recursive drop of a value this deep would itself overflow a test thread's stack).
fn nested_extensions(depth: usize) -> Value {
    // Not `json!` around `inner`: it would serialize (recursively) what it is given.
    let wrap = |inner: Value| {
        let mut m = serde_json::Map::new();
        m.insert("url".into(), Value::from("http://e.org/x"));
        m.insert("extension".into(), Value::Array(vec![inner]));
        Value::Object(m)
    };
    let mut inner = json!({"url": "http://e.org/x", "valueString": "v"});
    for _ in 0..depth {
        inner = wrap(inner);
    }
    let mut patient = wrap(inner);
    patient["resourceType"] = Value::from("Patient");
    patient.as_object_mut().unwrap().remove("url");
    patient
}

fn take_apart(mut v: Value) {
    let mut stack = vec![v.take()];
    while let Some(mut v) = stack.pop() {
        match &mut v {
            Value::Array(a) => stack.append(a),
            Value::Object(m) => {
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    if let Some(x) = m.remove(&k) {
                        stack.push(x);
                    }
                }
            }
            _ => {}
        }
    }
}

#[test]
fn deep_nesting_neither_overflows_nor_passes() {
    // As bytes: 10,000 nested arrays stop at serde_json's recursion limit.
    let mut doc = b"{\"resourceType\":\"Patient\",\"name\":".to_vec();
    doc.extend(std::iter::repeat_n(b'[', 10_000));
    doc.extend(std::iter::repeat_n(b']', 10_000));
    doc.push(b'}');
    let issues = Validator::shared().validate_bytes(&doc).unwrap_err();
    assert!(issues[0].message.contains("not valid JSON"), "{issues:?}");
    let e = medanchor::fhir::read(&doc).unwrap_err();
    assert_eq!(e.label, "not_json");

    // As a value built in code (the gateway's own Bundles): the walk stops at MAX_DEPTH, on a
    // thread with the stack of a tokio or rayon worker (2 MiB), in a debug build.
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            let v = nested_extensions(10_000);
            let issues = Validator::shared().validate(&v).unwrap_err();
            assert!(
                issues.iter().any(|i| i.code == IssueCode::TooCostly),
                "{issues:?}"
            );
            take_apart(v);
            // Just within the limit (two JSON levels per extension), schema included.
            let ok = nested_extensions(MAX_DEPTH / 2 - 2);
            assert_eq!(Validator::shared().validate(&ok), Ok(()));
        })
        .unwrap()
        .join()
        .expect("no stack overflow on a small stack");
}

#[test]
fn invalid_fhir_is_rejected_with_its_paths_and_an_outcome() {
    let bytes = serde_json::to_vec(&bad_patient()).unwrap();
    let e = medanchor::pipeline::decode(
        &Bytes::from(bytes),
        FormatHint::Fhir,
        &Origin::Local { name: "t".into() },
        0,
        &AcceptRules::default(),
    )
    .unwrap_err();
    assert_eq!(e.label, "invalid_fhir");
    assert_eq!(e.kind, RejectKind::Unacceptable);
    assert!(e.reason.starts_with("invalid FHIR R4 ("), "{}", e.reason);
    assert!(e.reason.contains("Patient."), "{}", e.reason);
    assert!(!e.reason.to_lowercase().contains("secret"), "{}", e.reason);
    let oo = e.outcome.expect("an OperationOutcome");
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(oo["issue"].as_array().unwrap().len() > 10);
}

const TOKEN: &str = "test-token-0123456789";

#[test]
fn http_ingest_answers_422_with_an_operation_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let g = common::Gateway::start(
        &dir.path().join("data"),
        &[("MEDANCHOR__HTTP__INGEST_TOKEN", TOKEN)],
    );
    let auth = format!("Bearer {TOKEN}");
    let post = |body: &[u8]| {
        common::http_request(
            g.http,
            "POST",
            "/v1/ingest",
            &[
                ("Content-Type", "application/fhir+json"),
                ("Authorization", &auth),
            ],
            body,
        )
    };
    let body =
        br#"{"resourceType":"Observation","status":"SECRET","subject":{"reference":"Patient/1"}}"#;
    let (status, head, text) = post(body);
    assert_eq!(status, 422, "{text}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/fhir+json"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("medanchor-quarantine-id:"),
        "{head}"
    );
    let oo: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let mut paths: Vec<&str> = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["Observation.code", "Observation.status"]);
    assert!(!text.contains("SECRET"));

    let good = br#"{"resourceType":"Observation","status":"final","code":{"text":"t"},"subject":{"reference":"Patient/1"}}"#;
    let (status, _, text) = post(good);
    assert_eq!(status, 201, "{text}");
    assert!(g.metric("medanchor_quarantine_entries_total") >= 1.0);
    assert!(g.stop().success());
}

/// The FHIR inputs other tests send through the gateway stay valid R4.
#[test]
fn the_gateway_tests_fhir_fixtures_are_valid() {
    for name in [
        "bundle-lipids.json",
        "observation-example.json",
        "patient-example.json",
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fhir");
        let bytes = std::fs::read(dir.join(name)).expect("fixture");
        if let Err(issues) = Validator::shared().validate_bytes(&bytes) {
            panic!("{name}: {issues:#?}");
        }
    }
}

/// `medanchor import` (like Kafka and NATS) quarantines invalid FHIR under its own reason and
/// stores the rest.
#[test]
fn import_quarantines_invalid_fhir_and_stores_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.ndjson");
    std::fs::write(
        &file,
        "{\"resourceType\":\"Patient\",\"id\":\"ok-1\",\"identifier\":[{\"system\":\"urn:s\",\"value\":\"1\"}]}\n\
         {\"resourceType\":\"Patient\",\"id\":\"bad_id\",\"identifier\":[{\"system\":\"urn:s\",\"value\":\"2\"}]}\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let (ok, out, err) = common::run(&[
        "import",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    let s: Value = serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out}{err}"));
    assert!(!ok, "{s}");
    assert_eq!(s["stored"], 1, "{s}");
    assert_eq!(s["rejected"], 1, "{s}");
    assert_eq!(s["rejected_by_reason"]["invalid_fhir"], 1, "{s}");
    assert!(
        !out.contains("bad_id") && !err.contains("bad_id"),
        "{out}{err}"
    );
}

/// The invariants of the types records are shared in, inbound as the mapper keeps them: each
/// is an error at the object that breaks it, naming the rule, and the guideline con-3 is a
/// warning only.
#[test]
fn sharing_invariants_are_errors_at_the_object() {
    let patient = serde_json::json!({
        "resourceType": "Patient",
        "telecom": [{"value": "555-1234"}],
        "contact": [{"relationship": [{"text": "mother"}]}],
    });
    let issues = Validator::shared().validate(&patient).unwrap_err();
    let at = |path: &str, rule: &str| {
        issues
            .iter()
            .any(|i| i.path == path && i.message.starts_with(rule) && i.severity.is_error())
    };
    assert!(at("Patient.telecom[0]", "cpt-2"), "{issues:#?}");
    assert!(at("Patient.contact[0]", "pat-1"), "{issues:#?}");
    assert!(issues.iter().all(|i| !i.message.contains("555")));

    let obs = serde_json::json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "potassium"},
        "valueQuantity": {"value": 6, "code": "mmol/L"},
        "referenceRange": [{"type": {"text": "x"}}],
        "component": [{"code": {"text": "c"}, "valueRange": {"low": {"value": 5}, "high": {"value": 3}}}],
        "dataAbsentReason": {"text": "error"},
    });
    let issues = Validator::shared().validate(&obs).unwrap_err();
    let rules: Vec<&str> = issues
        .iter()
        .map(|i| i.message.split(':').next().unwrap_or(""))
        .collect();
    for rule in ["qty-3", "rng-2", "obs-3", "obs-6"] {
        assert!(rules.contains(&rule), "{rule}: {issues:#?}");
    }

    let condition = serde_json::json!({
        "resourceType": "Condition",
        "subject": {"reference": "Patient/1"},
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
            "code": "problem-list-item"
        }]}],
    });
    assert_eq!(Validator::shared().validate(&condition), Ok(()));
    let issues = Validator::shared().check(&condition);
    assert!(issues
        .iter()
        .any(|i| i.message.starts_with("con-3") && !i.severity.is_error()));
}

/// A choice element holds one type: `deceasedBoolean` beside `deceasedDateTime` is refused at
/// the second, while a primitive's `_name` beside its own type is one choice.
#[test]
fn a_choice_holds_one_type() {
    let two = json!({
        "resourceType": "Patient",
        "deceasedBoolean": true,
        "deceasedDateTime": "2024-01-01",
    });
    let issues = Validator::shared().validate(&two).unwrap_err();
    assert!(
        issues
            .iter()
            .any(|i| i.path == "Patient.deceasedDateTime" && i.message.contains("choice")),
        "{issues:#?}"
    );
    let one = json!({
        "resourceType": "Patient",
        "deceasedDateTime": "2024-01-01",
        "_deceasedDateTime": {"id": "d"},
        "multipleBirthBoolean": true,
    });
    assert_eq!(Validator::shared().validate(&one), Ok(()));
    // Named like one choice's types, but separate elements of R4 (attack round 8: refused).
    for separate in [
        json!({
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/1"},
            "instantiatesCanonical": ["http://example.org/fhir/PlanDefinition/a"],
            "instantiatesUri": ["http://example.org/protocol"],
        }),
        json!({
            "resourceType": "PaymentReconciliation",
            "status": "active",
            "created": "2024-01-01",
            "paymentDate": "2024-01-01",
            "paymentAmount": {"value": 10, "currency": "USD"},
            "paymentIdentifier": {"value": "P1"},
        }),
        json!({
            "resourceType": "ChargeItem",
            "status": "billable",
            "code": {"text": "visit"},
            "subject": {"reference": "Patient/1"},
            "definitionUri": ["http://example.org/charge"],
            "definitionCanonical": ["http://example.org/fhir/ChargeItemDefinition/a"],
        }),
    ] {
        assert_eq!(
            Validator::shared().validate(&separate),
            Ok(()),
            "{separate}"
        );
    }
}
