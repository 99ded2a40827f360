//! FHIR R4 validation against the HL7 validator test cases (fhir-test-cases, R4 selection) and
//! the R4 specification's examples. Fixtures: tests/fixtures/fhir-validator (SOURCES.md).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use medanchor::fhir::validate::{operation_outcome, Issue, Options, Validator, MAX_DEPTH};
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
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
    let dir = fixtures();
    let sel: Value = serde_json::from_slice(
        &std::fs::read(dir.join("validator_r4_selection.json")).expect("selection"),
    )
    .expect("selection json");
    let mut out = Vec::new();
    for c in sel.as_array().expect("list") {
        let name = c["name"].as_str().expect("name").to_string();
        let bytes = std::fs::read(dir.join(c["input"].as_str().expect("input"))).expect("input");
        let v = Validator::with_options(case_options(&name));
        let issues: Vec<Issue> = match medanchor::fhir::validate::parse(
            &bytes,
            v.options().allow_json_comments,
        ) {
            Ok(value) => v.check(&value),
            Err(e) => e,
        };
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
            table.push_str(&format!("valid   {:<42} {}\n", c.name, if c.rejected { "REJECTED" } else { "accepted" }));
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
    assert!(valid_rejected.is_empty(), "valid cases rejected: {valid_rejected:#?}");
    let known: BTreeSet<String> = KNOWN_GAPS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(gaps, known, "the known gaps changed (update KNOWN_GAPS and docs/fhir-validation.md)");
    assert!(caught >= 45, "{caught} of 55 invalid cases rejected at the right path");
}

/// Specification examples that are not valid R4 themselves, and why.
const INVALID_EXAMPLES: &[(&str, &str)] = &[(
    "bundle-questionnaire.json",
    "display items without Questionnaire.item.linkId, which R4 requires (1..1)",
)];

#[test]
fn r4_specification_examples_are_accepted() {
    let dir = fixtures().join("r4-examples");
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
            let issues = v.validate_bytes(&std::fs::read(p).expect("example")).unwrap_err();
            assert!(issues.iter().all(|i| i.path.contains(".item[")), "{issues:?}");
            continue;
        }
        let bytes = std::fs::read(p).expect("example");
        if let Err(issues) = v.validate_bytes(&bytes) {
            let shown: Vec<String> = issues.iter().filter(|i| i.severity.is_error()).map(|i| i.to_string()).collect();
            rejected.push(format!("{}: {shown:?}", p.file_name().unwrap().to_string_lossy()));
        }
    }
    assert_eq!(names.len(), 72);
    assert!(rejected.is_empty(), "{rejected:#?}");
}
