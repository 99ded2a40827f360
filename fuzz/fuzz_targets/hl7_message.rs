//! Any bytes through everything the gateway does with a message before sealing: batch split,
//! tokenizer, full walk, text decoding (charsets and escapes), metadata (`pipeline::decode` under
//! each format hint, with the record's encoding read back) and the ACK builder.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use medanchor::envelope::{FormatHint, Origin};
use medanchor::hl7::{split_batch, AckCode, AckRequest, Message};
use medanchor::record::Record;

/// `pipeline::decode` under every format hint; what it accepts must encode and decode back to
/// itself (a record that reads back differently must be refused before it is acknowledged).
fn decode_all(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    let origin = Origin::Local {
        name: "fuzz".into(),
    };
    for format in [FormatHint::Hl7v2, FormatHint::Fhir, FormatHint::Auto] {
        let Ok(r) = medanchor::pipeline::decode(&payload, format, &origin, 0, &Default::default())
        else {
            continue;
        };
        let origin_json = serde_json::to_vec(&r.meta.origin).expect("origin serializes");
        let mut out = Vec::new();
        r.encode_into(&origin_json, &mut out)
            .expect("decode checked that the record encodes");
        assert_eq!(Record::decode(&out).as_ref(), Some(&r), "{format:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    decode_all(data);
    if let Ok(parts) = split_batch(data) {
        for p in parts {
            let _ = Message::parse(p);
        }
    }
    let Ok(m) = Message::parse(data) else { return };
    for s in m.segments() {
        for f in s.fields() {
            for r in f.repetitions() {
                for c in r.components() {
                    for sc in c.subcomponents() {
                        let _ = m.text(sc.raw());
                    }
                }
            }
        }
    }
    let req = AckRequest::from_message(&m);
    let ack = req.build(
        AckCode::Error,
        "X",
        "20240101",
        Some((100, "reason | with ^ delimiters")),
        Some(("id", "c")),
    );
    // Our own ACK must always be a message we can read back.
    Message::parse(&ack).expect("ACK parses");
});
