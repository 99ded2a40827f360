//! medanchor: a gateway that seals HL7v2 records, anchors their commitments in a signed Merkle log
//! and lets anyone verify them offline. See README.md and docs/FORMATS.md.

pub mod api;
pub mod cli;
pub mod config;
pub mod envelope;
pub mod fhir;
pub mod hl7;
pub mod ledger;
pub mod metrics;
pub mod pipeline;
pub mod record;
pub mod seal;
pub mod serve;
pub mod sources;
#[cfg(any(test, feature = "fault-injection"))]
pub mod testing;
pub mod throttle;
pub mod vault;
pub mod verify;
