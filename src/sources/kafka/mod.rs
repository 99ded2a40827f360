//! Kafka source: a consumer-group member whose offsets are committed only up to the messages
//! whose records are stored.
//!
//! Acknowledgement: `enable.auto.offset.store` is off; per partition, the offset stored for the
//! (auto-)commit is the lowest one still in the pipeline ([`offsets`]), so a crash re-reads
//! everything not yet durable, and what was durable comes back as a duplicate. Before a
//! partition is given up in a rebalance, its in-flight messages are drained and its offset
//! committed synchronously, so the next owner does not read them again. A message that can never
//! be accepted, or still cannot be handled after `max_deliver` attempts, goes to the dead-letter
//! topic through an idempotent producer (`acks=all`) with its reason in headers; only then does
//! its offset count as done. When `max_in_flight` messages of this source are in the pipeline its
//! partitions are paused, and resumed at half.

pub mod offsets;
mod source;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::FormatHint;

pub use source::{run, KafkaError};

/// `[[sources]]` entry with `type = "kafka"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Names the source in metrics, logs and `/readyz`.
    #[serde(default = "default_name")]
    pub name: String,
    /// `bootstrap.servers`: comma-separated `host:port` list.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Topics to consume.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Consumer group; gateways with the same group share the partitions.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Payload format: `hl7v2`, `fhir` (R4 JSON resource or Bundle) or `auto`.
    #[serde(default)]
    pub format: FormatHint,
    /// Where unacceptable messages go, with headers naming the reason (must exist).
    #[serde(default = "default_dead_letter")]
    pub dead_letter_topic: String,
    /// Attempts for a message that fails for a temporary reason before it is dead-lettered.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// Messages of this source in the pipeline at most; beyond it the partitions are paused.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How often stored offsets are committed (`auto.commit.interval.ms`). A crash re-reads at
    /// most this much already-stored work, which is then recognised as duplicates.
    #[serde(default = "default_commit_interval")]
    pub commit_interval_ms: u64,
    /// How long a rebalance or a stop waits for in-flight messages before giving partitions up.
    #[serde(default = "default_drain")]
    pub drain_timeout_secs: u64,
    /// Further librdkafka settings for the consumer and the dead-letter producer: TLS and SASL
    /// (`security.protocol`, `ssl.ca.location`, `sasl.mechanisms`, `sasl.username`, ...),
    /// `client.id`, `session.timeout.ms`, `partition.assignment.strategy`. Settings that the
    /// acknowledgement depends on are refused.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_name() -> String {
    "kafka".into()
}
fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_group() -> String {
    "medanchor".into()
}
fn default_dead_letter() -> String {
    "medanchor.dead".into()
}
fn default_max_deliver() -> u32 {
    5
}
fn default_max_in_flight() -> usize {
    2048
}
fn default_commit_interval() -> u64 {
    1000
}
fn default_drain() -> u64 {
    30
}

/// librdkafka settings the source sets itself: changing them would break the acknowledgement.
const OWNED_OPTIONS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.commit.interval.ms",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "enable.partition.eof",
];

impl KafkaConfig {
    /// Checks what the broker cannot check for us; `Err((key, reason))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.brokers.trim().is_empty() {
            return Err(("brokers", "must list at least one host:port".into()));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(("topics", "must list at least one topic".into()));
        }
        if self.group_id.trim().is_empty() {
            return Err((
                "group_id",
                "must not be empty: offsets are committed per group".into(),
            ));
        }
        if self.dead_letter_topic.trim().is_empty() {
            return Err(("dead_letter_topic", "must not be empty".into()));
        }
        if self.topics.contains(&self.dead_letter_topic) {
            return Err((
                "dead_letter_topic",
                "must not be one of the consumed topics (a dead letter would be read again)".into(),
            ));
        }
        if self.max_deliver < 1 {
            return Err(("max_deliver", "must be at least 1".into()));
        }
        if self.max_in_flight < 1 {
            return Err(("max_in_flight", "must be at least 1".into()));
        }
        if self.commit_interval_ms < 10 {
            return Err(("commit_interval_ms", "must be at least 10".into()));
        }
        if let Some(k) = self
            .options
            .keys()
            .find(|k| OWNED_OPTIONS.contains(&k.as_str()))
        {
            return Err((
                "options",
                format!(
                    "{k:?} is set by medanchor itself (offsets are stored only after the record \
                     is durable); use the source's own keys (brokers, group_id, commit_interval_ms)"
                ),
            ));
        }
        Ok(())
    }
}
