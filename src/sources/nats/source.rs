use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::NatsConfig;
use crate::envelope::{now_ms, AckToken, Envelope, Origin, Outcome};
use crate::metrics::{Metrics, SourceMetrics};
use crate::pipeline::Pipeline;
use crate::sources::dead_letter;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("source {source_name}: cannot connect to {url}: {reason}")]
    Connect {
        source_name: String,
        url: String,
        reason: String,
    },
    #[error(
        "source {source_name}: JetStream stream {stream:?} is not available ({reason}); medanchor needs JetStream because core NATS has no acknowledgement: create the stream, or enable JetStream on the server"
    )]
    Stream {
        source_name: String,
        stream: String,
        reason: String,
    },
    #[error("source {source_name}: consumer {consumer:?}: {reason}")]
    Consumer {
        source_name: String,
        consumer: String,
        reason: String,
    },
}

/// Connects, binds the durable consumer and consumes until `stop`. Configuration problems (no
/// such stream, JetStream off) are returned at once; a broker that goes away later is waited for,
/// with `up` false meanwhile.
pub async fn run(
    cfg: NatsConfig,
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    up: Arc<AtomicBool>,
    settling: TaskTracker,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, NatsError> {
    let name = cfg.name.clone();
    let flag = up.clone();
    let client = async_nats::ConnectOptions::new()
        .name(format!("medanchor source {name}"))
        .event_callback(move |event| {
            let flag = flag.clone();
            async move {
                match event {
                    async_nats::Event::Connected => flag.store(true, Ordering::Relaxed),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        flag.store(false, Ordering::Relaxed)
                    }
                    _ => {}
                }
            }
        })
        .connect(&cfg.url)
        .await
        .map_err(|e| NatsError::Connect {
            source_name: name.clone(),
            url: cfg.url.clone(),
            reason: e.to_string(),
        })?;
    up.store(true, Ordering::Relaxed);
    let js = jetstream::new(client.clone());
    let stream_name = cfg.stream.clone().unwrap_or_default();
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| NatsError::Stream {
            source_name: name.clone(),
            stream: stream_name.clone(),
            reason: e.to_string(),
        })?;
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            &cfg.consumer,
            pull::Config {
                durable_name: Some(cfg.consumer.clone()),
                filter_subject: cfg.filter_subject.clone().unwrap_or_default(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: cfg.ack_wait(),
                max_ack_pending: cfg.max_ack_pending,
                // Redelivery is bounded by us (dead letter after max_deliver), not by the server,
                // which would otherwise stop delivering without telling anyone.
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| NatsError::Consumer {
            source_name: name.clone(),
            consumer: cfg.consumer.clone(),
            reason: e.to_string(),
        })?;
    tracing::info!(source = %name, stream = %stream_name, consumer = %cfg.consumer, "nats source consuming");

    let cfg = Arc::new(cfg);
    let link = Arc::new(Link { js, client });
    let metrics = Arc::new(NatsMetrics {
        each: metrics.source(&name),
        pending: metrics.source_pending.with_label_values(&[&name]),
        nak: metrics.source_messages.with_label_values(&[&name, "nak"]),
    });
    Ok(tokio::spawn(async move {
        loop {
            if *stop.borrow() {
                break;
            }
            let mut messages = match consumer.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(source = %cfg.name, error = %e, "cannot pull; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    m = messages.next() => m,
                    _ = stop.wait_for(|s| *s) => None,
                };
                match next {
                    Some(Ok(msg)) => accept(&cfg, &link, &pipeline, &metrics, &settling, msg).await,
                    Some(Err(e)) => {
                        // Missed heartbeats and the like: the stream is rebuilt, nothing is lost
                        // (unacknowledged messages come back after ack_wait).
                        tracing::warn!(source = %cfg.name, error = %e, "pull interrupted; resubscribing");
                        break;
                    }
                    None => break,
                }
            }
        }
        tracing::info!(source = %cfg.name, "nats source stopped pulling");
    }))
}

/// The connection, shared by every message's settling task (one reference count each, where
/// cloning the JetStream context and then its client per message cloned a handful).
struct Link {
    js: jetstream::Context,
    /// Acks are requests on the plain client (`Settle::ack`).
    client: async_nats::Client,
}

/// This source's metrics, labels resolved once.
struct NatsMetrics {
    each: SourceMetrics,
    pending: prometheus::IntGauge,
    nak: prometheus::IntCounter,
}

/// Hands one message to the pipeline (waiting while it is full) and settles it in the background.
async fn accept(
    cfg: &Arc<NatsConfig>,
    link: &Arc<Link>,
    pipeline: &Arc<Pipeline>,
    metrics: &Arc<NatsMetrics>,
    settling: &TaskTracker,
    msg: jetstream::Message,
) {
    let name = cfg.name.as_str();
    let (stream, sequence, delivered, published_ns) = match msg.info() {
        Ok(i) => {
            metrics.pending.set(i.pending as i64);
            (
                i.stream.to_string(),
                i.stream_sequence,
                i.delivered,
                i.published.unix_timestamp_nanos(),
            )
        }
        Err(_) => {
            // Not a JetStream delivery: nothing to acknowledge it with.
            tracing::warn!(source = %name, "message without JetStream metadata ignored");
            return;
        }
    };
    metrics.each.consumed.inc();
    if delivered > 1 {
        metrics.each.redelivered.inc();
    }
    let (token, outcome) = AckToken::new();
    let env = Envelope {
        payload: msg.payload.clone(),
        origin: Origin::Nats {
            stream: stream.clone(),
            subject: msg.subject.to_string(),
            sequence,
        },
        format: cfg.format,
        received_ms: now_ms(),
        token,
    };
    pipeline.submit(env).await;
    metrics.each.in_flight.inc();
    let (cfg, link, metrics) = (cfg.clone(), link.clone(), metrics.clone());
    settling.spawn(async move {
        let settled = Settle {
            cfg: &cfg,
            link: &link,
            metrics: &metrics,
            msg: &msg,
            stream: &stream,
            sequence,
            delivered,
        };
        settled.run(outcome, published_ns).await;
        metrics.each.in_flight.dec();
    });
}

/// The acknowledgement body JetStream expects (`AckKind::Ack`).
const ACK: &[u8] = b"+ACK";

struct Settle<'a> {
    cfg: &'a NatsConfig,
    link: &'a Link,
    metrics: &'a NatsMetrics,
    msg: &'a jetstream::Message,
    stream: &'a str,
    sequence: u64,
    delivered: i64,
}

impl Settle<'_> {
    async fn run(&self, mut outcome: tokio::sync::oneshot::Receiver<Outcome>, published_ns: i128) {
        // Keep the server from redelivering while the pipeline works on it.
        let mut progress = tokio::time::interval(self.cfg.ack_wait() / 2);
        progress.tick().await;
        let outcome = loop {
            tokio::select! {
                o = &mut outcome => break o.ok(),
                _ = progress.tick() => {
                    let _ = self.msg.ack_with(AckKind::Progress).await;
                }
            }
        };
        match outcome {
            Some(Outcome::Stored { duplicate, .. }) => {
                let age = (now_ms() as i128 * 1_000_000 - published_ns) as f64 / 1e9;
                self.metrics.each.stored(duplicate, Some(age));
                self.ack().await;
            }
            Some(Outcome::Rejected(rejection)) => {
                self.metrics.each.rejected.inc();
                self.dead_letter(
                    &rejection.reason,
                    rejection.label,
                    rejection.quarantine_id.as_deref(),
                )
                .await;
            }
            Some(Outcome::Retry { reason }) => self.retry(&reason).await,
            None => {
                self.retry("the gateway stopped before the message was stored")
                    .await
            }
        }
    }

    /// Double ack: the server confirms it, so a stored message is not delivered again. If even
    /// that fails, it comes back after ack_wait and is recognised as a duplicate.
    ///
    /// Sent as a request through the client's one shared reply subscription: async-nats's own
    /// `double_ack` subscribes a fresh inbox for every ack and unsubscribes it afterwards, three
    /// protocol operations and a server-side subscription per message where this is one publish.
    async fn ack(&self) {
        let Some(reply) = self.msg.reply.clone() else {
            return; // not a JetStream delivery; `accept` does not let these through
        };
        for attempt in 0..3 {
            let confirmed = self
                .link
                .client
                .request(reply.clone(), Bytes::from_static(ACK))
                .await;
            match confirmed {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(source = %self.cfg.name, sequence = self.sequence, attempt, error = %e, "ack not confirmed");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    async fn retry(&self, reason: &str) {
        if self.delivered >= self.cfg.max_deliver {
            self.dead_letter(
                &format!(
                    "still failing after {} deliveries: {reason}",
                    self.delivered
                ),
                "max_deliver",
                None,
            )
            .await;
            return;
        }
        self.metrics.nak.inc();
        let delay = Duration::from_millis(500u64 << self.delivered.clamp(0, 6));
        let _ = self.msg.ack_with(AckKind::Nak(Some(delay))).await;
    }

    /// Publishes the message to the dead-letter subject and, once the server has stored it,
    /// terminates the original. If the dead letter cannot be stored, the original is nak'ed so
    /// nothing is lost.
    async fn dead_letter(&self, reason: &str, label: &str, quarantine_id: Option<&str>) {
        let mut headers = HeaderMap::new();
        headers.insert(dead_letter::REASON, reason);
        headers.insert(dead_letter::LABEL, label);
        headers.insert(dead_letter::NATS_SUBJECT, self.msg.subject.as_str());
        headers.insert(dead_letter::NATS_STREAM, self.stream);
        headers.insert(
            dead_letter::NATS_SEQUENCE,
            self.sequence.to_string().as_str(),
        );
        headers.insert(
            dead_letter::DELIVERY_COUNT,
            self.delivered.to_string().as_str(),
        );
        if let Some(q) = quarantine_id {
            headers.insert(dead_letter::QUARANTINE_ID, q);
        }
        let published = match self
            .link
            .js
            .publish_with_headers(
                self.cfg.dead_letter_subject.clone(),
                headers,
                self.msg.payload.clone(),
            )
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match published {
            Ok(()) => {
                self.metrics.each.dead_lettered.inc();
                let _ = self.msg.ack_with(AckKind::Term).await;
            }
            Err(e) => {
                tracing::error!(source = %self.cfg.name, subject = %self.cfg.dead_letter_subject, error = %e, "dead letter not stored; the message stays in the stream");
                let _ = self
                    .msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
            }
        }
    }
}
