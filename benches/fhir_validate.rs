//! FHIR R4 validation on the hot path: a Patient, an ADT-size transaction Bundle (8 resources)
//! and an ORU-size Bundle (DiagnosticReport + 10 Observations + Patient + Specimen +
//! Provenance), each validated from its JSON bytes as the gateway does (inbound FHIR, and the
//! Bundle a mapping wrote), and the two parts of that: parsing and the walk.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use medanchor::fhir::validate::{Node, Validator};
use serde_json::{json, Value};

/// The gateway's allocator (src/main.rs), so the figures are the gateway's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "2b1f4b1e-7c0e-5d7a-9f3c-1a2b3c4d5e6f",
        "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Jane <b>DOE</b>, born 1980-01-01</p></div>"},
        "identifier": [
            {"use": "usual", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
             "system": "urn:oid:2.16.840.1.113883.19.5", "value": "123456"},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]},
             "system": "http://hl7.org/fhir/sid/us-ssn", "value": "987654321"}
        ],
        "active": true,
        "name": [{"use": "official", "family": "Doe", "given": ["Jane", "Q"], "prefix": ["Ms"]}],
        "telecom": [
            {"system": "phone", "value": "+1 555 0100", "use": "home"},
            {"system": "email", "value": "jane@example.org"}
        ],
        "gender": "female",
        "birthDate": "1980-01-01",
        "address": [{"use": "home", "line": ["1 Main St", "Apt 2"], "city": "Springfield",
                     "state": "IL", "postalCode": "62701", "country": "USA",
                     "period": {"start": "2001-01-01"}}],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]},
        "contact": [{"relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
                     "name": {"family": "Doe", "given": ["John"]},
                     "telecom": [{"system": "phone", "value": "+1 555 0101"}]}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}, "preferred": true}]
    })
}

fn entry(n: u32, resource: Value) -> Value {
    let ty = resource["resourceType"].as_str().unwrap().to_string();
    json!({
        "fullUrl": format!("urn:uuid:00000000-0000-5000-8000-{n:012}"),
        "resource": resource,
        "request": {"method": "PUT", "url": format!("{ty}?identifier=urn:oid:1.2.3|{n}")}
    })
}

fn uuid(n: u32) -> String {
    format!("urn:uuid:00000000-0000-5000-8000-{n:012}")
}

fn provenance(targets: u32) -> Value {
    json!({
        "resourceType": "Provenance",
        "target": (1..=targets).map(|n| json!({"reference": uuid(n)})).collect::<Vec<_>>(),
        "recorded": "2024-01-01T10:00:00.123Z",
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "v2-fhir-transformation"}]},
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "assembler"}]},
                   "who": {"display": "medanchor mapping set 3f2a"}}],
        "entity": [{"role": "source", "what": {"identifier": {"system": "urn:medanchor:commitment", "value": "52fcd591677b93e8301bcf9bd49bcd99e34d8a509af2089b796209d7b639ce13"}}}]
    })
}

/// ADT^A01: Patient, Encounter, 2 Practitioners, Organization, Location, RelatedPerson,
/// Provenance.
fn adt_bundle() -> Value {
    let mut p = patient();
    p.as_object_mut().unwrap().remove("id");
    let entries = vec![
        entry(1, p),
        entry(
            2,
            json!({
                "resourceType": "Encounter", "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "identifier": [{"system": "urn:oid:1.2.3.4", "value": "V-1001"}],
                "subject": {"reference": uuid(1)},
                "participant": [{"type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND"}]}],
                                 "individual": {"reference": uuid(3)}},
                                {"type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "REF"}]}],
                                 "individual": {"reference": uuid(4)}}],
                "period": {"start": "2024-01-01T09:30:00+01:00"},
                "location": [{"location": {"reference": uuid(6)}}],
                "serviceProvider": {"reference": uuid(5)}
            }),
        ),
        entry(
            3,
            json!({"resourceType": "Practitioner", "identifier": [{"system": "urn:oid:1.2.3.5", "value": "D-1"}],
                        "name": [{"family": "House", "given": ["Gregory"], "prefix": ["Dr"]}]}),
        ),
        entry(
            4,
            json!({"resourceType": "Practitioner", "identifier": [{"system": "urn:oid:1.2.3.5", "value": "D-2"}],
                        "name": [{"family": "Wilson", "given": ["James"]}]}),
        ),
        entry(
            5,
            json!({"resourceType": "Organization", "identifier": [{"system": "urn:oid:1.2.3.6", "value": "GENHOSP"}],
                        "name": "General Hospital", "active": true}),
        ),
        entry(
            6,
            json!({"resourceType": "Location", "identifier": [{"system": "urn:oid:1.2.3.7", "value": "W-101-1"}],
                        "name": "Ward 101 bed 1", "status": "active", "managingOrganization": {"reference": uuid(5)}}),
        ),
        entry(
            7,
            json!({"resourceType": "RelatedPerson", "patient": {"reference": uuid(1)},
                        "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0063", "code": "SPO"}]}],
                        "name": [{"family": "Doe", "given": ["John"]}],
                        "telecom": [{"system": "phone", "value": "+1 555 0101"}]}),
        ),
        entry(8, provenance(7)),
    ];
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// ORU^R01: Patient, Specimen, DiagnosticReport, 10 Observations, Provenance.
fn oru_bundle() -> Value {
    let mut p = patient();
    p.as_object_mut().unwrap().remove("id");
    let mut entries = vec![
        entry(1, p),
        entry(
            2,
            json!({"resourceType": "Specimen", "identifier": [{"system": "urn:oid:1.2.3.8", "value": "S-77"}],
                        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0487", "code": "BLD"}]},
                        "subject": {"reference": uuid(1)},
                        "collection": {"collectedDateTime": "2024-01-01T08:00:00Z"}}),
        ),
        entry(
            3,
            json!({
                "resourceType": "DiagnosticReport", "status": "final",
                "identifier": [{"system": "urn:oid:1.2.3.9", "value": "F-9001"}],
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8", "display": "Comprehensive metabolic panel"}]},
                "subject": {"reference": uuid(1)},
                "effectiveDateTime": "2024-01-01T08:00:00Z",
                "issued": "2024-01-01T11:00:00.000Z",
                "specimen": [{"reference": uuid(2)}],
                "result": (0..10).map(|i| json!({"reference": uuid(10 + i)})).collect::<Vec<_>>()
            }),
        ),
    ];
    for i in 0..10 {
        entries.push(entry(10 + i, json!({
            "resourceType": "Observation", "status": "final",
            "identifier": [{"system": "urn:oid:1.2.3.10", "value": format!("F-9001-{i}")}],
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose [Mass/volume] in Serum or Plasma"}], "text": "Glucose"},
            "subject": {"reference": uuid(1)},
            "effectiveDateTime": "2024-01-01T08:00:00Z",
            "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
            "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N"}]}],
            "referenceRange": [{"low": {"value": 3.9, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
                                "high": {"value": 5.5, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}}],
            "specimen": {"reference": uuid(2)}
        })));
    }
    entries.push(entry(30, provenance(3)));
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn bench(c: &mut Criterion) {
    let v = Validator::shared();
    let (p, adt, oru) = (patient(), adt_bundle(), oru_bundle());
    for (name, x) in [("patient", &p), ("adt", &adt), ("oru", &oru)] {
        // Compiles the validators it needs, and proves the inputs valid.
        if let Err(issues) = v.validate(x) {
            panic!("{name} is not valid: {issues:#?}");
        }
    }
    // How the gateway validates: from bytes (inbound FHIR, and the Bundle a mapping wrote).
    let mut g = c.benchmark_group("fhir_validate");
    for (name, x) in [("patient", &p), ("adt", &adt), ("oru", &oru)] {
        let bytes = serde_json::to_vec(x).unwrap();
        g.bench_function(format!("{name}_from_bytes"), |b| {
            b.iter(|| v.validate_bytes(black_box(&bytes)))
        });
    }
    g.finish();
    // Where the time goes: parsing the JSON into the validator's document, and the one walk
    // that checks it (schema and invariants). `_parse_value` is the same text into a
    // `serde_json::Value`, what the walk read before it had its own document, for scale.
    let mut g = c.benchmark_group("fhir_validate_parts");
    for (name, x) in [("patient", &p), ("adt", &adt), ("oru", &oru)] {
        let bytes = serde_json::to_vec(x).unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        let doc = Node::parse(text).unwrap();
        g.bench_function(format!("{name}_parse"), |b| {
            b.iter(|| Node::parse(black_box(text)).unwrap())
        });
        g.bench_function(format!("{name}_parse_value"), |b| {
            b.iter(|| serde_json::from_str::<Value>(black_box(text)).unwrap())
        });
        g.bench_function(format!("{name}_walk"), |b| {
            b.iter(|| v.bench_walk(black_box(&doc)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
