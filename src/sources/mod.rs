//! Sources: one folder each. A source turns its protocol into [`Envelope`](crate::envelope::Envelope)s
//! and turns each [`Outcome`](crate::envelope::Outcome) back into its protocol's acknowledgement.

pub mod kafka;
pub mod mllp;
pub mod nats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// A broker source that could not start: configuration the broker refuses, or no broker.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Nats(#[from] nats::NatsError),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
}

/// One `[[sources]]` entry. (The MLLP listener keeps its own `[mllp]` table, so that
/// `MEDANCHOR__MLLP__LISTEN` and the defaults work without a file.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    Nats(nats::NatsConfig),
    Kafka(kafka::KafkaConfig),
}

impl SourceConfig {
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Nats(c) => &c.name,
            SourceConfig::Kafka(c) => &c.name,
        }
    }

    /// Connects and binds the consumer (problems are returned before the gateway says it is
    /// listening), then consumes until `stop`; acknowledgements go out from tasks on `settling`.
    pub async fn start(
        &self,
        pipeline: Arc<Pipeline>,
        metrics: Arc<Metrics>,
        up: Arc<AtomicBool>,
        settling: TaskTracker,
        stop: watch::Receiver<bool>,
    ) -> Result<JoinHandle<()>, SourceError> {
        Ok(match self {
            SourceConfig::Nats(c) => {
                nats::run(c.clone(), pipeline, metrics, up, settling, stop).await?
            }
            SourceConfig::Kafka(c) => {
                kafka::run(c.clone(), pipeline, metrics, up, settling, stop).await?
            }
        })
    }

    /// Checks what the broker cannot check for us; `Err((key, reason))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self {
            SourceConfig::Nats(c) => c.validate(),
            SourceConfig::Kafka(c) => c.validate(),
        }
    }
}

/// Header names of dead letters, the same for every broker (values never carry message content).
/// A dead letter is the original payload with these headers.
pub mod dead_letter {
    /// Why the message was not accepted: names fields, never their content.
    pub const REASON: &str = "Medanchor-Reason";
    /// A fixed, low-cardinality name for the reason (as in the `reason` metric label).
    pub const LABEL: &str = "Medanchor-Reason-Label";
    /// Where the gateway keeps its own sealed copy of the input, for `medanchor quarantine`.
    pub const QUARANTINE_ID: &str = "Medanchor-Quarantine-Id";
    /// Deliveries (NATS) or attempts (Kafka) before the message was given up.
    pub const DELIVERY_COUNT: &str = "Medanchor-Delivery-Count";
    pub const NATS_SUBJECT: &str = "Medanchor-Original-Subject";
    pub const NATS_STREAM: &str = "Medanchor-Original-Stream";
    pub const NATS_SEQUENCE: &str = "Medanchor-Stream-Sequence";
    pub const KAFKA_TOPIC: &str = "Medanchor-Original-Topic";
    pub const KAFKA_PARTITION: &str = "Medanchor-Original-Partition";
    pub const KAFKA_OFFSET: &str = "Medanchor-Original-Offset";
}

/// A source's name and whether it can reach its upstream now.
type SourceUp = (String, Arc<AtomicBool>);

/// Whether each source can currently reach its upstream; `/readyz` is ready only when all can.
#[derive(Clone, Default)]
pub struct Health {
    sources: Arc<Mutex<Vec<SourceUp>>>,
}

impl Health {
    /// Registers a source, not yet connected.
    pub fn register(&self, name: &str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.sources
            .lock()
            .expect("lock")
            .push((name.to_string(), flag.clone()));
        flag
    }

    /// Names of the sources that are down.
    pub fn down(&self) -> Vec<String> {
        self.sources
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, up)| !up.load(Ordering::Relaxed))
            .map(|(name, _)| name.clone())
            .collect()
    }
}
