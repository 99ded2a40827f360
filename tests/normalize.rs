//! The HL7v2 → FHIR R4 mapping engine on corpus messages (tests/fixtures/v2fhir, see SOURCES.md).

use std::path::Path;

use medanchor::config::NormalizeConfig;
use medanchor::hl7::Message;
use medanchor::normalize::{Link, Mapped, Normalizer};
use serde_json::Value;

fn fixture(p: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/v2fhir")
            .join(p),
    )
    .unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn normalizer() -> Normalizer {
    Normalizer::load(&NormalizeConfig::default()).expect("default mapping set")
}

const COMMITMENT: [u8; 32] = [7u8; 32];

fn link() -> Link<'static> {
    Link {
        raw_record_id: "0123456789abcdef0123456789abcdef",
        raw_commitment: &COMMITMENT,
        mapped_ms: 1_700_000_000_000,
    }
}

fn map_bytes(n: &Normalizer, bytes: &[u8]) -> (Mapped, Value) {
    let msg = Message::parse(bytes).expect("parses");
    let m = n.map(&msg, &link()).expect("maps");
    let v: Value = serde_json::from_slice(&m.bundle).expect("bundle is JSON");
    (m, v)
}

fn map_file(n: &Normalizer, p: &str) -> (Mapped, Value) {
    map_bytes(n, &fixture(p))
}

fn resources<'a>(b: &'a Value, ty: &str) -> Vec<&'a Value> {
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == ty)
        .collect()
}

#[test]
fn smoke_adt_a01() {
    let n = normalizer();
    let (m, b) = map_file(&n, "ms/ADT-A01-02.hl7");
    println!("{}", serde_json::to_string_pretty(&b).unwrap());
    println!("unmapped {:?}\nwarnings {:?}", m.unmapped, m.warnings);
    assert!(!resources(&b, "Patient").is_empty());
}

#[test]
fn default_mapping_set_lints_clean() {
    match Normalizer::lint(&NormalizeConfig::default()) {
        Ok(n) => assert_eq!(n.version().len(), 64),
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            panic!("{} problems in the default mapping set", errors.len());
        }
    }
}
