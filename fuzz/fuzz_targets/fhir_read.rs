//! The FHIR reader (`fhir::read`) and the `auto` format sniffer (`fhir::looks_like_json`) on
//! arbitrary bytes, and `pipeline::decode` with format `fhir` on the same bytes.
//!
//! Checks: no panics; whatever `read` accepts is a JSON object that `looks_like_json` routes to
//! FHIR under `format = "auto"` (else an accepted FHIR payload would be read as HL7v2); its
//! `resourceType` is a non-empty ASCII type name; and a record the pipeline accepts encodes and
//! decodes back to itself.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use medanchor::envelope::{FormatHint, Origin};
use medanchor::record::Record;

fuzz_target!(|data: &[u8]| {
    let sniffed = medanchor::fhir::looks_like_json(data);
    let Ok(meta) = medanchor::fhir::read(data) else {
        return;
    };
    assert!(
        sniffed,
        "read accepted what looks_like_json does not route to FHIR"
    );
    assert!(!meta.resource_type.is_empty());
    assert!(meta
        .resource_type
        .bytes()
        .all(|b| b.is_ascii_alphanumeric()));
    if meta.resource_type != "Bundle" {
        assert!(meta.kind.is_empty(), "kind is Bundle.type only");
    }

    let payload = Bytes::copy_from_slice(data);
    let origin = Origin::Local {
        name: "fuzz".into(),
    };
    let Ok(r) =
        medanchor::pipeline::decode(&payload, FormatHint::Fhir, &origin, 7, &Default::default())
    else {
        return;
    };
    assert_eq!(r.meta.message_type, meta.resource_type);
    assert_eq!(r.meta.patient_ids, meta.patient_ids);
    assert_eq!(r.raw, payload, "the resource is kept byte for byte");
    let origin_json = serde_json::to_vec(&r.meta.origin).expect("origin serializes");
    let mut out = Vec::new();
    r.encode_into(&origin_json, &mut out)
        .expect("decode checked that the record encodes");
    assert_eq!(Record::decode(&out), Some(r));
});
