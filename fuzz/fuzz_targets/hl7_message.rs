//! Any bytes through everything the gateway does with a message before sealing: batch split,
//! tokenizer, full walk, text decoding (charsets and escapes), metadata and the ACK builder.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use medanchor::envelope::Origin;
use medanchor::hl7::{split_batch, AckCode, AckRequest, Message};

fuzz_target!(|data: &[u8]| {
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
    let payload = Bytes::copy_from_slice(data);
    let origin = Origin::Local {
        name: "fuzz".into(),
    };
    let _ = medanchor::pipeline::decode(&payload, &origin, 0, &Default::default());
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
