use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::ack;
use crate::config::MllpConfig;
use crate::envelope::{
    now_ms, AckToken, Envelope, FormatHint, Origin, Outcome, RejectKind, Rejection,
};
use crate::hl7::ack::{hl7_timestamp, wrap_batch};
use crate::hl7::batch::is_batch;
use crate::hl7::mllp::{MllpCodec, MllpError};
use crate::hl7::{split_batch, AckRequest, Message};
use crate::listener::Listener;
use crate::pipeline::Pipeline;

/// Shared state of the listener's connections.
pub struct MllpSource {
    cfg: MllpConfig,
    pipeline: Arc<Pipeline>,
    seq: AtomicU64,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Accepts connections (at most `max_connections` open, see [`crate::listener`]) until
/// `shutdown` turns true, then waits for every connection to finish
/// the messages it has already read.
pub async fn serve(
    listener: TcpListener,
    cfg: MllpConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pipeline: Arc<Pipeline>,
    mut shutdown: watch::Receiver<bool>,
) {
    let source = Arc::new(MllpSource {
        cfg,
        pipeline,
        seq: AtomicU64::new(0),
        tls,
    });
    let mut listener = Listener::new(
        listener,
        "mllp",
        source.cfg.max_connections,
        &source.pipeline.metrics,
    );
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            (stream, peer, slot) = listener.accept() => {
                let _ = stream.set_nodelay(true);
                let source = source.clone();
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    let m = source.pipeline.metrics.clone();
                    m.connections_total.inc();
                    m.connections_open.inc();
                    match &source.tls {
                        None => source.connection(stream, peer, None, shutdown).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => {
                                    let client = crate::tls::client_fingerprint(&tls);
                                    source.connection(tls, peer, client, shutdown).await
                                }
                                _ => {
                                    m.connection_errors.with_label_values(&["tls_handshake"]).inc();
                                }
                            }
                        }
                    }
                    m.connections_open.dec();
                    drop(slot);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Vec<u8>>> + Send>>;

impl MllpSource {
    async fn connection<S>(
        self: &Arc<Self>,
        stream: S,
        peer: SocketAddr,
        tls_client: Option<String>,
        mut shutdown: watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = self.pipeline.metrics.clone();
        let (r, w) = tokio::io::split(stream);
        let mut reader = FramedRead::new(r, MllpCodec::new(self.cfg.max_frame_bytes));
        let mut writer = FramedWrite::new(w, MllpCodec::new(self.cfg.max_frame_bytes));
        let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
        let idle = Duration::from_secs(self.cfg.idle_timeout_secs.max(1));
        let mut last_activity = tokio::time::Instant::now();
        let mut reading = true;
        let origin = Origin::Mllp { peer, tls_client };
        loop {
            if !reading && pending.is_empty() {
                break;
            }
            let can_read = reading && pending.len() < self.cfg.max_in_flight_per_connection;
            tokio::select! {
                biased;
                Some(ack) = pending.next(), if !pending.is_empty() => {
                    last_activity = tokio::time::Instant::now();
                    // ACKs that are already due (a group commit settles many at once) go out in
                    // the same write: one system call and one wakeup of the peer per group
                    // instead of per message. Nothing waits for an ACK that is not due.
                    let mut written = Ok(());
                    let mut next = Some(ack);
                    while let (Ok(()), Some(ack)) = (&written, next) {
                        if let Some(ack) = ack {
                            written = writer.feed(ack).await;
                        }
                        next = pending.next().now_or_never().flatten();
                    }
                    if written.is_err() || SinkExt::<Vec<u8>>::flush(&mut writer).await.is_err() {
                        metrics.connection_errors.with_label_values(&["write"]).inc();
                        break;
                    }
                }
                frame = reader.next(), if can_read => {
                    last_activity = tokio::time::Instant::now();
                    let skipped = reader.decoder_mut().take_skipped();
                    if skipped > 0 {
                        metrics.skipped_bytes.inc_by(skipped);
                    }
                    match frame {
                        Some(Ok(frame)) => pending.push_back(self.clone().handle_frame(frame, origin.clone())),
                        Some(Err(MllpError::FrameTooLarge(limit))) => {
                            metrics.oversize_frames.inc();
                            let rejection = Rejection::new(RejectKind::NotHl7, 100, "frame_too_large", format!("MLLP frame exceeds the limit of {limit} bytes; connection closed"));
                            // The frame is not kept whole (that would defeat the limit): quarantine
                            // records the refusal and its origin with an empty payload.
                            pending.push_back(self.clone().refuse(Bytes::new(), origin.clone(), rejection, AckRequest::fallback()));
                            reading = false;
                        }
                        Some(Err(MllpError::Truncated)) => {
                            metrics.connection_errors.with_label_values(&["truncated_frame"]).inc();
                            reading = false;
                        }
                        Some(Err(MllpError::Io(_))) => {
                            metrics.connection_errors.with_label_values(&["read"]).inc();
                            reading = false;
                        }
                        None => reading = false,
                    }
                }
                _ = tokio::time::sleep_until(last_activity + idle), if pending.is_empty() && reading => {
                    metrics.connection_errors.with_label_values(&["idle_timeout"]).inc();
                    break;
                }
                _ = shutdown.changed(), if reading => {
                    // Stop reading; answer what was read.
                    reading = false;
                }
            }
        }
        let _ = SinkExt::<Vec<u8>>::flush(&mut writer).await;
    }

    fn handle_frame(self: Arc<Self>, frame: Bytes, origin: Origin) -> Pending {
        Box::pin(async move {
            let started = Instant::now();
            let received = now_ms();
            let batch = is_batch(&frame) || has_second_msh(&frame);
            let out = if !batch {
                self.clone().one_message(frame, origin, received).await
            } else {
                match split_batch(&frame) {
                    Err(e) => {
                        let rejection = Rejection::new(
                            RejectKind::NotHl7,
                            100,
                            "bad_batch",
                            format!("batch rejected: {e}"),
                        );
                        self.clone()
                            .refuse(frame, origin, rejection, AckRequest::fallback())
                            .await
                    }
                    Ok(parts) => {
                        let ranges: Vec<(usize, usize)> = parts
                            .iter()
                            .map(|p| {
                                let start = p.as_ptr() as usize - frame.as_ptr() as usize;
                                (start, start + p.len())
                            })
                            .collect();
                        let futs = ranges.into_iter().map(|(s, e)| {
                            self.clone()
                                .one_message(frame.slice(s..e), origin.clone(), received)
                        });
                        let acks: Vec<Vec<u8>> = futures::future::join_all(futs)
                            .await
                            .into_iter()
                            .flatten()
                            .collect();
                        let delims = Message::parse(&frame[..first_line_end(&frame)])
                            .map(|m| *m.delimiters())
                            .unwrap_or_default();
                        Some(wrap_batch(&delims, &hl7_timestamp(received), &acks))
                    }
                }
            };
            self.pipeline
                .metrics
                .ack_seconds
                .observe(started.elapsed().as_secs_f64());
            out
        })
    }

    async fn one_message(
        self: Arc<Self>,
        payload: Bytes,
        origin: Origin,
        received_ms: u64,
    ) -> Option<Vec<u8>> {
        // The ACK needs only MSH: tokenize the first segment here, the whole message in the pool.
        let req = Message::parse(&payload[..first_line_end(&payload)])
            .map(|m| AckRequest::from_message(&m))
            .unwrap_or_else(|_| AckRequest::fallback());
        let (token, rx) = AckToken::new();
        self.pipeline
            .submit(Envelope {
                payload,
                origin,
                format: FormatHint::Hl7v2,
                received_ms,
                token,
            })
            .await;
        let outcome = rx.await.unwrap_or(Outcome::Retry {
            reason: "gateway is shutting down; send the message again".into(),
        });
        self.answer(&req, &outcome)
    }

    fn refuse(
        self: Arc<Self>,
        payload: Bytes,
        origin: Origin,
        rejection: Rejection,
        req: AckRequest,
    ) -> Pending {
        Box::pin(async move {
            let (token, rx) = AckToken::new();
            self.pipeline
                .reject(payload, origin, now_ms(), rejection, token)
                .await;
            let outcome = rx.await.unwrap_or(Outcome::Retry {
                reason: "gateway is shutting down; send the message again".into(),
            });
            self.answer(&req, &outcome)
        })
    }

    fn answer(&self, req: &AckRequest, outcome: &Outcome) -> Option<Vec<u8>> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let code = ack::code_of(outcome);
        self.pipeline
            .metrics
            .acked
            .with_label_values(&["mllp", ack::code_label(req, code)])
            .inc();
        ack::build(req, outcome, self.cfg.receipt_segment, seq)
    }
}

fn first_line_end(b: &[u8]) -> usize {
    memchr::memchr2(b'\r', b'\n', b).unwrap_or(b.len())
}

fn has_second_msh(b: &[u8]) -> bool {
    memchr::memmem::find(b, b"\rMSH").is_some() || memchr::memmem::find(b, b"\nMSH").is_some()
}
