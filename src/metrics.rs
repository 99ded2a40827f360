//! Internal metrics, named `medanchor_<component>_<what>_<unit>`. Labels are fixed,
//! low-cardinality names: never addresses, control ids or anything from a message body, except the
//! message type, which is capped (see [`Metrics::type_label`]).

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

const MAX_TYPE_LABELS: usize = 64;
const MAX_ITEM_LABELS: usize = 256;

/// The events every broker source counts for each message, resolved by [`Metrics::source`].
/// Events of one source type (`nak`, `commit_failed`, `offset_reset`) are rare and looked up
/// where they happen.
#[derive(Clone)]
pub struct SourceMetrics {
    pub consumed: IntCounter,
    pub stored: IntCounter,
    pub duplicate: IntCounter,
    pub rejected: IntCounter,
    pub dead_lettered: IntCounter,
    pub redelivered: IntCounter,
    pub in_flight: IntGauge,
    pub to_stored_seconds: Histogram,
}

impl SourceMetrics {
    /// A message's record is stored (or was already): counted, with the time since the broker's
    /// timestamp of the message when it has one (clock skew below zero counts as zero).
    pub fn stored(&self, duplicate: bool, since_broker_seconds: Option<f64>) {
        if duplicate {
            &self.duplicate
        } else {
            &self.stored
        }
        .inc();
        if let Some(age) = since_broker_seconds {
            self.to_stored_seconds.observe(age.max(0.0));
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub received: IntCounterVec,
    pub received_bytes: IntCounterVec,
    pub acked: IntCounterVec,
    pub rejected: IntCounterVec,
    pub skipped_bytes: IntCounter,
    pub oversize_frames: IntCounter,
    pub duplicates: IntCounter,
    pub control_id_conflicts: IntCounter,
    pub quarantined: IntCounter,
    pub store_failures: IntCounter,
    pub index_damage: IntCounter,
    pub anchor_failures: IntCounter,
    /// Proofs the API could not build (not those of records not anchored yet).
    pub proof_failures: IntCounter,
    pub connections_open: IntGauge,
    pub connections_total: IntCounter,
    pub connection_errors: IntCounterVec,
    /// Per listener (`mllp`, `http`): see [`crate::listener`].
    pub listener_connections: IntGaugeVec,
    pub listener_max_connections: IntGaugeVec,
    pub listener_accepted: IntCounterVec,
    pub listener_accept_errors: IntCounterVec,
    pub listener_limit_reached: IntCounterVec,
    /// HTTP connections the gateway closed, by kind (`header_timeout`, `idle_timeout`,
    /// `bad_request`, `io`).
    pub http_connection_errors: IntCounterVec,
    pub parse_seconds: Histogram,
    pub seal_seconds: Histogram,
    pub store_seconds: Histogram,
    pub anchor_seconds: Histogram,
    pub ack_seconds: Histogram,
    pub time_to_anchor_seconds: Histogram,
    pub vault_batch_size: Histogram,
    pub checkpoint_leaves: Histogram,
    pub checkpoints: IntCounter,
    pub log_size: IntGauge,
    /// Per broker source (label `source` = its configured name): `event` is consumed, stored,
    /// duplicate, rejected, dead_lettered, redelivered (NATS: delivered again by the server; Kafka:
    /// submitted again after a temporary failure) or nak.
    pub source_messages: IntCounterVec,
    pub source_in_flight: IntGaugeVec,
    /// Messages the broker still holds for this consumer (JetStream pending).
    pub source_pending: IntGaugeVec,
    /// Kafka consumer lag per partition: the partition's end offset minus the committed one.
    pub source_partition_lag: IntGaugeVec,
    /// Kafka partitions this gateway owns now (how a consumer group spread the work).
    pub source_partitions: IntGaugeVec,
    /// From the broker's timestamp of a message to its record being stored.
    pub source_to_stored_seconds: HistogramVec,
    /// HL7v2 messages normalized, by `result`: `mapped` or `failed`.
    pub normalized: IntCounterVec,
    /// Mappings that failed, by `reason` (a fixed label such as `invalid_output`).
    pub mapping_failures: IntCounterVec,
    /// Segments and fields that held data no mapping used, by `item` (`ZPI`, `PID-10`; capped,
    /// see [`Metrics::item_label`]).
    pub unmapped: IntCounterVec,
    /// `medanchor_normalize_left_out_total{type}`: resources left out of a Bundle for lack of an
    /// element R4 requires (resource type names: a closed set).
    pub left_out: IntCounterVec,
    /// `medanchor_normalize_output_walks_total{reason}`: Bundles the mapper could not show valid
    /// as it built them, so parsed back and walked, by the rule not shown (a closed set).
    pub output_walks: IntCounterVec,
    pub normalize_seconds: Histogram,
    /// `medanchor_api_auth_failures_total{reason}`: `missing`, `invalid` or `limited`.
    pub auth_failures: IntCounterVec,
    /// `medanchor_api_rate_limited_total`: authenticated requests refused with 429 because
    /// their principal was over `http.requests_per_principal_per_second`.
    pub rate_limited: IntCounter,
    /// `medanchor_api_reads_total{what,decision}`: reads of patient data by what was read
    /// (`record`, `records`, `fhir`, `consents`, `access_log`, `proof`) and the decision
    /// (`permit`, `deny`, `break_glass`, `gone`).
    pub reads: IntCounterVec,
    /// `medanchor_api_events_total{kind}`: events stored (consent_granted, consent_revoked,
    /// record_accessed, patient_erased).
    pub events: IntCounterVec,
    seen_types: Mutex<HashSet<String>>,
    seen_items: Mutex<HashSet<String>>,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}
fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}
fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}
fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}
fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let secs = || exponential_buckets(0.000_05, 2.0, 18).expect("buckets");
        let sizes = || exponential_buckets(1.0, 2.0, 14).expect("buckets");
        Metrics {
            received: counter_vec(
                &r,
                "medanchor_messages_received_total",
                "Messages received, by source and message type",
                &["source", "type"],
            ),
            received_bytes: counter_vec(
                &r,
                "medanchor_received_bytes_total",
                "Payload bytes received, by source",
                &["source"],
            ),
            acked: counter_vec(
                &r,
                "medanchor_messages_acked_total",
                "Acknowledgements sent, by source and code (AA, AE, AR, CA, CE, CR)",
                &["source", "code"],
            ),
            rejected: counter_vec(
                &r,
                "medanchor_messages_rejected_total",
                "Messages rejected, by source and reason",
                &["source", "reason"],
            ),
            skipped_bytes: counter(
                &r,
                "medanchor_mllp_skipped_bytes_total",
                "Bytes outside MLLP frames that were skipped",
            ),
            oversize_frames: counter(
                &r,
                "medanchor_mllp_oversize_frames_total",
                "MLLP frames over the size limit",
            ),
            duplicates: counter(
                &r,
                "medanchor_vault_duplicates_total",
                "Messages already stored (same sender, control id and bytes)",
            ),
            control_id_conflicts: counter(
                &r,
                "medanchor_vault_control_id_conflicts_total",
                "New bytes under a control id the sender already used",
            ),
            quarantined: counter(
                &r,
                "medanchor_quarantine_entries_total",
                "Inputs kept in quarantine",
            ),
            store_failures: counter(
                &r,
                "medanchor_vault_commit_failures_total",
                "Vault transactions that failed",
            ),
            index_damage: counter(
                &r,
                "medanchor_vault_index_damaged_total",
                "Messages answered Retry because the index entries they need are damaged (run `medanchor verify --all`, then `medanchor repair`)",
            ),
            anchor_failures: counter(
                &r,
                "medanchor_ledger_append_failures_total",
                "Log appends that failed",
            ),
            auth_failures: counter_vec(
                &r,
                "medanchor_api_auth_failures_total",
                "API requests refused for authentication, by reason",
                &["reason"],
            ),
            rate_limited: counter(
                &r,
                "medanchor_api_rate_limited_total",
                "Authenticated API requests refused for their principal's request rate",
            ),
            reads: counter_vec(
                &r,
                "medanchor_api_reads_total",
                "Reads of patient data through the API, by what was read and the decision",
                &["what", "decision"],
            ),
            events: counter_vec(
                &r,
                "medanchor_api_events_total",
                "Events about patients' data stored and anchored, by kind",
                &["kind"],
            ),
            proof_failures: counter(
                &r,
                "medanchor_ledger_proof_failures_total",
                "Inclusion proofs that could not be built (ledger storage errors), not counting records not anchored yet",
            ),
            connections_open: gauge(
                &r,
                "medanchor_mllp_connections_open",
                "Open MLLP connections",
            ),
            connections_total: counter(
                &r,
                "medanchor_mllp_connections_total",
                "MLLP connections accepted",
            ),
            connection_errors: counter_vec(
                &r,
                "medanchor_mllp_connection_errors_total",
                "MLLP connections ended by an error, by kind",
                &["kind"],
            ),
            listener_connections: gauge_vec(
                &r,
                "medanchor_listener_connections",
                "Open connections, by listener",
                &["listener"],
            ),
            listener_max_connections: gauge_vec(
                &r,
                "medanchor_listener_max_connections",
                "Configured connection limit, by listener",
                &["listener"],
            ),
            listener_accepted: counter_vec(
                &r,
                "medanchor_listener_accepted_total",
                "Connections accepted, by listener",
                &["listener"],
            ),
            listener_accept_errors: counter_vec(
                &r,
                "medanchor_listener_accept_errors_total",
                "Failed accepts (e.g. out of file descriptors), by listener",
                &["listener"],
            ),
            listener_limit_reached: counter_vec(
                &r,
                "medanchor_listener_limit_reached_total",
                "Times a listener stopped accepting because its connections were at the limit",
                &["listener"],
            ),
            http_connection_errors: counter_vec(
                &r,
                "medanchor_http_connection_errors_total",
                "HTTP connections ended by a timeout or an error, by kind",
                &["kind"],
            ),
            parse_seconds: histogram(
                &r,
                "medanchor_parse_seconds",
                "Time to tokenize a message and read its metadata",
                secs(),
            ),
            seal_seconds: histogram(
                &r,
                "medanchor_seal_seconds",
                "Time to commit to and encrypt a record (records sealed together: each its share of the batch)",
                secs(),
            ),
            store_seconds: histogram(
                &r,
                "medanchor_vault_commit_seconds",
                "Time of one vault group commit",
                secs(),
            ),
            anchor_seconds: histogram(
                &r,
                "medanchor_ledger_append_seconds",
                "Time to append a batch and sign its checkpoint",
                secs(),
            ),
            ack_seconds: histogram(
                &r,
                "medanchor_ack_seconds",
                "Time from a frame's arrival to its ACK",
                secs(),
            ),
            time_to_anchor_seconds: histogram(
                &r,
                "medanchor_time_to_anchor_seconds",
                "Time from durable storage to a signed checkpoint",
                secs(),
            ),
            vault_batch_size: histogram(
                &r,
                "medanchor_vault_commit_batch_size",
                "Records per vault group commit",
                sizes(),
            ),
            checkpoint_leaves: histogram(
                &r,
                "medanchor_ledger_batch_leaves",
                "Leaves per checkpoint",
                sizes(),
            ),
            checkpoints: counter(
                &r,
                "medanchor_ledger_checkpoints_total",
                "Checkpoints signed",
            ),
            log_size: gauge(&r, "medanchor_ledger_tree_size", "Leaves in the log"),
            source_messages: counter_vec(
                &r,
                "medanchor_source_messages_total",
                "Broker messages by source and what happened to them",
                &["source", "event"],
            ),
            source_in_flight: gauge_vec(
                &r,
                "medanchor_source_in_flight",
                "Broker messages handed to the pipeline and not yet acknowledged",
                &["source"],
            ),
            source_pending: gauge_vec(
                &r,
                "medanchor_source_pending",
                "Messages the broker still holds for this consumer",
                &["source"],
            ),
            source_partition_lag: gauge_vec(
                &r,
                "medanchor_source_partition_lag",
                "Messages in a Kafka partition past this group's committed offset",
                &["source", "topic", "partition"],
            ),
            source_partitions: gauge_vec(
                &r,
                "medanchor_source_partitions_assigned",
                "Kafka partitions assigned to this gateway",
                &["source"],
            ),
            source_to_stored_seconds: histogram_vec(
                &r,
                "medanchor_source_to_stored_seconds",
                "From the broker's timestamp of a message to its record stored",
                &["source"],
                exponential_buckets(0.001, 2.0, 18).expect("buckets"),
            ),
            normalized: counter_vec(
                &r,
                "medanchor_normalize_messages_total",
                "HL7v2 messages normalized to FHIR, by result (mapped, failed)",
                &["result"],
            ),
            mapping_failures: counter_vec(
                &r,
                "medanchor_normalize_failures_total",
                "Mappings that failed, by reason",
                &["reason"],
            ),
            unmapped: counter_vec(
                &r,
                "medanchor_normalize_unmapped_total",
                "Segments and fields holding data no mapping used, by segment or field name",
                &["item"],
            ),
            left_out: counter_vec(
                &r,
                "medanchor_normalize_left_out_total",
                "Resources left out of a Bundle for lack of an element R4 requires, by resource type",
                &["type"],
            ),
            output_walks: counter_vec(
                &r,
                "medanchor_normalize_output_walks_total",
                "Mapped Bundles parsed back and walked because construction did not show them valid, by rule",
                &["reason"],
            ),
            normalize_seconds: histogram(
                &r,
                "medanchor_normalize_seconds",
                "Time to map a message to a FHIR Bundle and seal it (checking the Bundle included)",
                secs(),
            ),
            seen_types: Mutex::new(HashSet::new()),
            seen_items: Mutex::new(HashSet::new()),
            registry: r,
        }
    }

    /// `source`'s per-message metrics with their labels resolved once: a label lookup hashes
    /// and locks, and a broker source counts several events per message. Resolving them also
    /// exports each at 0 from the start, so rates and alerts see the series before the first
    /// event.
    pub fn source(&self, source: &str) -> SourceMetrics {
        let event = |e: &str| self.source_messages.with_label_values(&[source, e]);
        SourceMetrics {
            consumed: event("consumed"),
            stored: event("stored"),
            duplicate: event("duplicate"),
            rejected: event("rejected"),
            dead_lettered: event("dead_lettered"),
            redelivered: event("redelivered"),
            in_flight: self.source_in_flight.with_label_values(&[source]),
            to_stored_seconds: self.source_to_stored_seconds.with_label_values(&[source]),
        }
    }

    /// A message type as a label: three upper-case letters or digits, and only the first
    /// 64 distinct values; anything else is `other`, so a sender cannot blow up cardinality.
    pub fn type_label(&self, message_type: &str) -> String {
        let valid = message_type.len() == 3
            && message_type
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !valid {
            return "other".into();
        }
        let mut seen = self.seen_types.lock().expect("lock");
        if seen.contains(message_type) || seen.len() < MAX_TYPE_LABELS {
            seen.insert(message_type.to_string());
            message_type.to_string()
        } else {
            "other".into()
        }
    }

    /// A segment or field name as a label (`ZPI`, `PID-10`, `OBX-5.2`): a segment id of three
    /// upper-case letters or digits, then at most `-field[.component]`; only the first 256
    /// distinct values, anything else `other`. Senders choose Z-segment names: capped so that
    /// they cannot blow up cardinality.
    pub fn item_label(&self, item: &str) -> String {
        // Bytes, not str slicing: a name a sender made up may hold any character.
        let (segment, rest) = item.as_bytes().split_at(item.len().min(3));
        let valid = segment.len() == 3
            && segment
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && rest.len() <= 9
            && (rest.is_empty()
                || rest[0] == b'-' && rest[1..].iter().all(|b| b.is_ascii_digit() || *b == b'.'));
        if !valid {
            return "other".into();
        }
        let mut seen = self.seen_items.lock().expect("lock");
        if seen.contains(item) || seen.len() < MAX_ITEM_LABELS {
            seen.insert(item.to_string());
            item.to_string()
        } else {
            "other".into()
        }
    }

    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segment and field names become labels; anything else, and names past the cap, `other`.
    #[test]
    fn item_labels_are_names_and_capped() {
        let m = Metrics::new();
        for ok in ["ZPI", "PID-10", "OBX-5.2", "IN1-3"] {
            assert_eq!(m.item_label(ok), ok);
        }
        for bad in [
            "",
            "PI",
            "pid-3",
            "PID3",
            "PID-3a",
            "PID-1234567890",
            "ÄB",
            "ZÄÄ-1",
            "Z\u{1F600}",
        ] {
            assert_eq!(m.item_label(bad), "other", "{bad:?}");
        }
        let m = Metrics::new();
        for i in 0..MAX_ITEM_LABELS {
            assert_eq!(
                m.item_label(&format!("Z{:02}", i % 100)),
                format!("Z{:02}", i % 100)
            );
            let name = format!("ZZ{}-{i}", i % 10);
            m.item_label(&name);
        }
        assert_eq!(m.item_label("QQQ-1"), "other", "past the cap");
        assert_eq!(
            m.item_label("Z01"),
            "Z01",
            "a name seen before keeps its label"
        );
    }
}
