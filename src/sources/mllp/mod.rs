//! MLLP listener: HL7v2 over TCP (optionally TLS / mutual TLS).
//!
//! Per connection, frames are read ahead (up to `max_in_flight_per_connection`) and processed
//! concurrently, and ACKs are written back in the order the frames arrived, so both one-at-a-time
//! senders and pipelining senders get correct answers. AA (or CA) is written only after the record
//! is durably in the vault.

mod ack;
mod source;

pub use crate::tls::{load_tls, TlsError};
pub use source::{serve, MllpSource};
