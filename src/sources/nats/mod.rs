//! NATS JetStream source: a durable pull consumer whose messages are acknowledged only after
//! their records are stored.
//!
//! Acknowledgement: a stored (or already stored) record is double-acked, i.e. the server confirms
//! the ack; while the pipeline works, `+WPI` (in progress) keeps the message from being
//! redelivered; a message that can never be accepted goes to the dead-letter subject with its
//! reason in headers and is then terminated, as is one that still cannot be handled after
//! `max_deliver` deliveries; anything else is nak'ed with a delay and comes back. Core NATS
//! (without JetStream) has no acknowledgement and is refused.

mod source;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::envelope::FormatHint;

pub use source::{run, NatsError};

/// `[[sources]]` entry with `type = "nats"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Names the source in metrics, logs and `/readyz`.
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default = "default_url")]
    pub url: String,
    /// JetStream stream to consume (required: core NATS subjects cannot be acknowledged).
    pub stream: Option<String>,
    /// Durable consumer name; several gateways with the same name share the work.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Only messages on these subjects (default: the whole stream).
    #[serde(default)]
    pub filter_subject: Option<String>,
    /// Payload format: `hl7v2`, `fhir` (R4 JSON resource or Bundle) or `auto` (FHIR when the
    /// payload is a JSON object).
    #[serde(default)]
    pub format: FormatHint,
    /// How long the server waits for an ack before redelivering; in-progress acks are sent at
    /// half this interval while a message is in the pipeline.
    #[serde(default = "default_ack_wait")]
    pub ack_wait_secs: u64,
    /// Unacknowledged messages the server hands this consumer at most: the backpressure bound.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: i64,
    /// Deliveries after which a message that still cannot be handled is dead-lettered.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: i64,
    /// Where unacceptable messages go, with headers naming the reason. It must be captured by a
    /// stream, so a dead letter is itself acknowledged before the original is terminated.
    #[serde(default = "default_dead_letter")]
    pub dead_letter_subject: String,
}

fn default_name() -> String {
    "nats".into()
}
fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_consumer() -> String {
    "medanchor".into()
}
fn default_ack_wait() -> u64 {
    30
}
fn default_max_ack_pending() -> i64 {
    1024
}
fn default_max_deliver() -> i64 {
    5
}
fn default_dead_letter() -> String {
    "medanchor.dead".into()
}

impl NatsConfig {
    /// Checks what the server cannot check for us; `Err((key, reason))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.stream.as_deref().is_none_or(str::is_empty) {
            return Err((
                "stream",
                "required: medanchor consumes NATS only through JetStream, because core NATS \
                 has no acknowledgement and a message lost between delivery and storage could \
                 not be sent again"
                    .into(),
            ));
        }
        if self.ack_wait_secs < 2 {
            return Err(("ack_wait_secs", "must be at least 2".into()));
        }
        if self.max_ack_pending < 1 {
            return Err(("max_ack_pending", "must be at least 1".into()));
        }
        if self.max_deliver < 1 {
            return Err(("max_deliver", "must be at least 1".into()));
        }
        if self.consumer.is_empty() || self.consumer.contains(['.', '*', '>', ' ']) {
            return Err((
                "consumer",
                "must be a name without '.', '*', '>' or spaces".into(),
            ));
        }
        if self.dead_letter_subject.is_empty() {
            return Err(("dead_letter_subject", "must not be empty".into()));
        }
        Ok(())
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }
}
