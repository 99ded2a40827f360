//! `Record::decode` on arbitrary bytes. The record encoding is canonical (src/record.rs): whatever
//! decodes is the one encoding of the record it decodes to, so re-encoding gives the input back
//! byte for byte. Two byte strings for one record would be two commitments for one record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medanchor::record::Record;

fuzz_target!(|data: &[u8]| {
    let Some(r) = Record::decode(data) else {
        return;
    };
    let origin_json = serde_json::to_vec(&r.meta.origin).expect("origin serializes");
    assert_eq!(r.encoded_len(&origin_json), Ok(data.len()), "encoded_len");
    let mut out = Vec::with_capacity(data.len());
    r.encode_into(&origin_json, &mut out)
        .expect("a decoded record encodes");
    assert!(out == data, "re-encoding differs from the input");
    // Whatever a sealed record may carry must also pass the pipeline's encodability check.
    assert!(r.check_encodable().is_ok());
});
