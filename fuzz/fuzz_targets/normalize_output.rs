//! Any bytes that parse as an HL7v2 message through the default mapping set: mapping never
//! panics, and a Bundle the mapper shows valid as it builds it (`Mapped::shown_valid`) is one
//! the full check (parse back, walk against the R4 schema) accepts. The construction check may
//! decline anything it does not cover; it may never vouch for a Bundle the walk refuses.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use medanchor::config::NormalizeConfig;
use medanchor::fhir::validate::Validator;
use medanchor::hl7::Message;
use medanchor::normalize::{Link, Normalizer};

fn normalizer() -> &'static Normalizer {
    static N: OnceLock<Normalizer> = OnceLock::new();
    N.get_or_init(|| Normalizer::load(&NormalizeConfig::default()).expect("default set"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::parse(data) else {
        return;
    };
    let link = Link {
        raw_record_id: "0123456789abcdef0123456789abcdef",
        raw_commitment: &[7; 32],
        mapped_ms: 1_700_000_000_000,
    };
    let Ok(m) = normalizer().map(&msg, &link) else {
        return;
    };
    if m.shown_valid.is_ok() {
        if let Err(issues) = Validator::shared().validate_bytes(&m.bundle) {
            panic!("shown valid by construction, refused by the walk: {issues:?}");
        }
    }
});
