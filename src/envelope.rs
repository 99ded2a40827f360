//! What sources hand to the pipeline, and what the pipeline hands back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Where a message came from. Kept in the sealed record's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Origin {
    Mllp {
        peer: SocketAddr,
        /// Subject of the client certificate under mutual TLS.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls_client: Option<String>,
    },
    /// A NATS JetStream message: the stream sequence identifies it within the stream.
    Nats {
        stream: String,
        subject: String,
        sequence: u64,
    },
    /// A Kafka message: topic, partition and offset identify it.
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// `POST /v1/ingest`.
    Http { peer: SocketAddr },
    /// `medanchor import`: the file and the message's position in it.
    Import { file: String, index: u64 },
    /// Re-submitted from quarantine by an operator.
    Replay { quarantine_id: String },
    /// Anything a test or tool injects directly.
    Local { name: String },
}

impl Origin {
    /// Short label for metrics (never includes addresses or content).
    pub fn kind(&self) -> &'static str {
        match self {
            Origin::Mllp { .. } => "mllp",
            Origin::Nats { .. } => "nats",
            Origin::Kafka { .. } => "kafka",
            Origin::Http { .. } => "http",
            Origin::Import { .. } => "import",
            Origin::Replay { .. } => "replay",
            Origin::Local { .. } => "local",
        }
    }
}

/// What the payload is expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FormatHint {
    #[default]
    Hl7v2,
    /// FHIR R4 JSON: one resource or a Bundle.
    Fhir,
    /// FHIR when the payload is a JSON object, else HL7v2.
    Auto,
}

impl FormatHint {
    /// From a source's `format` setting.
    pub fn parse(s: &str) -> Option<FormatHint> {
        match s {
            "hl7v2" => Some(FormatHint::Hl7v2),
            "fhir" => Some(FormatHint::Fhir),
            "auto" => Some(FormatHint::Auto),
            _ => None,
        }
    }
}

/// A record id: 16 bytes, the first six a millisecond timestamp so ids sort by arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(pub [u8; 16]);

impl RecordId {
    pub fn generate(unix_ms: u64) -> RecordId {
        let mut id = [0u8; 16];
        id[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        id[6..].copy_from_slice(&crate::seal::random::<10>());
        RecordId(id)
    }
    /// The time (Unix ms) the id was made for: when the record was received.
    pub fn unix_ms(&self) -> u64 {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(b)
    }
    pub fn parse(s: &str) -> Option<RecordId> {
        let v = hex::decode(s).ok()?;
        Some(RecordId(v.try_into().ok()?))
    }
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// What a sender gets back once its record is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub record_id: String,
    /// Hex SHA3-256 commitment.
    pub commitment: String,
    /// Leaf index in the log, once anchored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_index: Option<u64>,
}

/// How a message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Durably stored (or already stored: `duplicate`).
    Stored { receipt: Receipt, duplicate: bool },
    /// Not accepted; the input is kept in quarantine under `quarantine_id`.
    Rejected(Rejection),
    /// Could not be handled now; the sender should send it again.
    Retry { reason: String },
}

/// A rejection: the ACK code class, an HL7 table 0357 error code, and a reason that names fields,
/// never their content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectKind,
    pub code: u16,
    pub reason: String,
    /// Metric label: a fixed, low-cardinality name for the reason.
    pub label: &'static str,
    pub quarantine_id: Option<String>,
    /// For invalid FHIR: the OperationOutcome listing every issue with its path (what HTTP
    /// ingest answers with). `None` for everything else.
    pub outcome: Option<Box<serde_json::Value>>,
}

impl Rejection {
    /// A rejection not yet quarantined (the vault writer fills in the quarantine id).
    pub fn new(
        kind: RejectKind,
        code: u16,
        label: &'static str,
        reason: impl Into<String>,
    ) -> Rejection {
        Rejection {
            kind,
            code,
            reason: reason.into(),
            label,
            quarantine_id: None,
            outcome: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// The bytes are not a readable HL7 message (AR).
    NotHl7,
    /// A readable message that cannot be accepted (AE).
    Unacceptable,
}

/// Resolves exactly once with the message's [`Outcome`]. Dropping it unresolved tells the source
/// to have the message sent again.
///
/// A source that may give a message up before it is stored (a Kafka partition handed to another
/// gateway) makes the token [`withdrawable`](AckToken::withdrawable): once the source raises the
/// flag, a message that has not yet started sealing is not stored but answered
/// [`WITHDRAWN`](AckToken::WITHDRAWN), and its next reader stores it instead.
#[derive(Debug)]
pub struct AckToken {
    tx: Option<oneshot::Sender<Outcome>>,
    withdrawn: Option<Arc<AtomicBool>>,
}

impl AckToken {
    /// The [`Outcome::Retry`] reason of a withdrawn message.
    pub const WITHDRAWN: &'static str = "withdrawn by its source before it was sealed";

    pub fn new() -> (AckToken, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        (
            AckToken {
                tx: Some(tx),
                withdrawn: None,
            },
            rx,
        )
    }

    /// A token whose message is withdrawn once `flag` is raised.
    pub fn withdrawable(flag: Arc<AtomicBool>) -> (AckToken, oneshot::Receiver<Outcome>) {
        let (mut token, rx) = AckToken::new();
        token.withdrawn = Some(flag);
        (token, rx)
    }

    /// The source gave the message up: it must not be stored from here on.
    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    pub fn resolve(mut self, outcome: Outcome) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(outcome);
        }
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Outcome::Retry {
                reason: "message was dropped inside the gateway before it was stored".into(),
            });
        }
    }
}

/// One message on its way in.
#[derive(Debug)]
pub struct Envelope {
    pub payload: Bytes,
    pub origin: Origin,
    pub format: FormatHint,
    pub received_ms: u64,
    pub token: AckToken,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
