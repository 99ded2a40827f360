//! Sources: one folder each. A source turns its protocol into [`Envelope`](crate::envelope::Envelope)s
//! and turns each [`Outcome`](crate::envelope::Outcome) back into its protocol's acknowledgement.

pub mod mllp;
pub mod nats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One `[[sources]]` entry. (The MLLP listener keeps its own `[mllp]` table, so that
/// `MEDANCHOR__MLLP__LISTEN` and the defaults work without a file.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    Nats(nats::NatsConfig),
}

impl SourceConfig {
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Nats(c) => &c.name,
        }
    }
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
