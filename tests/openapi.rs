//! The API against its OpenAPI 3.1 description (schemas/openapi.yaml, served at /openapi.yaml):
//! schemathesis (PyPI) generates requests from it against the real binary, authenticated as an
//! admin, as a patient, and not at all, and fails on any server error and any response the
//! description does not allow (status, content type, headers, body schema), and on an endpoint
//! that answers without authentication. (Its check that every schema-valid request is accepted
//! is left out: a grant naming a principal that does not exist is schema-valid and refused.)

mod common;

use common::*;
use serde_json::json;

fn schemathesis() -> String {
    std::env::var("SCHEMATHESIS").unwrap_or_else(|_| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/schemathesis");
        assert!(
            p.exists(),
            "schemathesis not found: run the README's test command (scripts/test), which installs it"
        );
        p.display().to_string()
    })
}

#[test]
fn the_served_description_is_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(&dir.path().join("data"), &[]);
    let (status, body) = http_get_as(g.http, "/openapi.yaml", None);
    assert_eq!(status, 200);
    let file =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/openapi.yaml"))
            .unwrap();
    assert_eq!(body, file);
    g.stop();
}

#[test]
fn schemathesis_finds_no_server_error_and_no_response_outside_the_description() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Generated requests fail authentication by the hundred on purpose: no limit here.
    let g = Gateway::start(&data, &[("MEDANCHOR__HTTP__AUTH_FAILURES_PER_MINUTE", "0")]);
    let file = dir.path().join("a01.hl7");
    std::fs::write(&file, "MSH|^~\\&|ADT|HOSP|GW|GW|20261130083000||ADT^A01^ADT_A01|OA0001|P|2.5.1\rPID|1||7^^^HOSP^MR||DOE^JANE||19800101|F\rPV1|1|I|WARD^101^1\rDG1|1||F32.9^Depression^I10||20261130|A\r").unwrap();
    let (ok, out, err) = run(&["send", "--to", &g.mllp.to_string(), file.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let admin = g.admin_token().unwrap();
    let (status, _, body) = http_request(
        g.http,
        "POST",
        "/v1/admin/principals",
        &[
            ("Authorization", &format!("Bearer {admin}")),
            ("Content-Type", "application/json"),
        ],
        json!({"id": "pat-7", "role": "patient", "identifiers": ["7^HOSP^MR"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    let patient: serde_json::Value = serde_json::from_str(&body).unwrap();
    let patient = patient["token"].as_str().unwrap().to_string();
    let url = format!("http://{}/openapi.yaml", g.http);
    for (who, token) in [
        ("admin", Some(&admin)),
        ("patient", Some(&patient)),
        ("nobody", None),
    ] {
        let mut cmd = std::process::Command::new(schemathesis());
        // It keeps a cache where it runs: in the test's directory, not the checkout.
        cmd.current_dir(dir.path());
        cmd.args([
            "run",
            &url,
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "25", "--no-color", "--seed", "7"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis as {who}:\n{text}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            g.log_tail(20)
        );
        assert!(text.contains("generated"), "{text}");
    }
    // Nothing the generated requests did crashed the gateway or broke its stores.
    assert_eq!(g.http_get("/readyz").0, 200);
    g.stop();
    verify_all(&data);
}
