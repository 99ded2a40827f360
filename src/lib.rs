//! medanchor: a gateway that seals HL7v2 records, anchors their commitments in a signed Merkle log
//! and lets anyone verify them offline. See README.md and docs/FORMATS.md.

pub mod api;
pub mod cli;
pub mod config;
pub mod consent;
pub mod envelope;
pub mod fhir;
pub mod hl7;
pub mod http1;
pub mod ledger;
pub mod listener;
pub mod metrics;
pub mod normalize;
pub mod pipeline;
pub mod record;
pub mod remap;
pub mod seal;
pub mod serve;
pub mod sources;
pub mod storage;
/// Fault injection for the stores' tests (a redb backend and a segment hook that fail on
/// command); compiled in so the vault and ledger keep one seam, never used outside tests.
#[doc(hidden)]
pub mod testing;
pub mod throttle;
pub mod tls;
pub mod vault;
pub mod verify;
