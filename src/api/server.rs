//! Serving the router over HTTP/1.1 with limits: at most `http.max_connections` open (see
//! [`crate::listener`]), a read buffer of `http.max_header_bytes`, and two timeouts that close a
//! connection, the way Go's `net/http` server defines them:
//!
//! - **header read** (`http.header_read_timeout_secs`): a request's head (request line and
//!   headers) must arrive whole within this long of the connection being accepted or, on a
//!   kept-alive connection, of the first byte of the request. Bytes trickling in do not extend it.
//! - **idle** (`http.idle_timeout_secs`): a kept-alive connection with no request in flight is
//!   closed after this long without a byte read or written.
//!
//! While a request is in flight neither applies (ingest answers once the record is durable and
//! bounds the time its body may take with `http.body_read_timeout_secs`).
//!
//! hyper's own `header_read_timeout` is not used: since hyper 1.4 it also runs while a
//! kept-alive connection waits for its next request, so it would cut every idle connection at
//! the header timeout and leave no room for a longer idle timeout.
//!
//! On shutdown the listener stops accepting; idle connections close at once, a request in
//! flight is answered first (and its connection then closed), and a head being read still has
//! its header-read deadline, so shutdown is never held up by a slow client for longer than that.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::config::HttpConfig;
use crate::listener::{Listener, Slot};
use crate::metrics::Metrics;

/// The per-connection limits, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

impl From<&HttpConfig> for ConnLimits {
    fn from(c: &HttpConfig) -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(c.header_read_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs.max(1)),
            // hyper refuses (panics on) a read buffer under 8 KiB; the configuration checks it.
            max_header_bytes: c.max_header_bytes.max(8192),
        }
    }
}

/// The request header that carries a TLS client's certificate fingerprint to the handlers. The
/// server removes any such header a client sends and sets it only from the TLS handshake, so a
/// handler can trust it.
pub const CLIENT_CERT: &str = "medanchor-internal-client-cert";

/// How long a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` (over TLS with `tls`) until `stop` turns true, then waits for the
/// open connections to finish (see the module documentation).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: &HttpConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut listener = Listener::new(listener, "http", cfg.max_connections, &metrics);
    let limits = ConnLimits::from(cfg);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer, slot) = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let _ = stream.set_nodelay(true);
        let (app, metrics, stop) = (app.clone(), metrics.clone(), stop.clone());
        match &tls {
            None => {
                connections.spawn(connection(
                    stream, peer, None, slot, app, limits, metrics, stop,
                ));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let client = crate::tls::client_fingerprint(&tls);
                            connection(tls, peer, client, slot, app, limits, metrics, stop).await
                        }
                        _ => metrics
                            .http_connection_errors
                            .with_label_values(&["tls_handshake"])
                            .inc(),
                    }
                });
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

#[allow(clippy::too_many_arguments)] // one call site each for plain and TLS streams
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    client_cert: Option<String>,
    _slot: Slot,
    app: Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = Arc::new(Clock::new(Instant::now()));
    let io = TokioIo::new(Watched {
        inner: stream,
        clock: clock.clone(),
    });
    let in_request = clock.clone();
    let client_cert = client_cert.and_then(|c| axum::http::HeaderValue::from_str(&c).ok());
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        // Only the handshake may say who the client is.
        req.headers_mut().remove(CLIENT_CERT);
        if let Some(c) = &client_cert {
            req.headers_mut().insert(CLIENT_CERT, c.clone());
        }
        let guard = InRequest::start(in_request.clone());
        let response = app.clone().call(req);
        async move {
            let response: Result<_, Infallible> = response.await;
            drop(guard);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    let ended: Option<&'static str> = loop {
        let deadline = clock.deadline(&limits);
        let changed = clock.changed.notified();
        tokio::select! {
            result = conn.as_mut() => break result.err().map(|e| error_kind(&e)),
            () = changed => {}
            () = sleep_until(deadline.map(|(at, _)| at)) => {
                // The phase may have moved on since the deadline was read.
                if let Some((at, kind)) = clock.deadline(&limits) {
                    if at <= Instant::now() {
                        break Some(kind);
                    }
                }
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Some(kind) = ended {
        metrics
            .http_connection_errors
            .with_label_values(&[kind])
            .inc();
    }
    // Returning drops the connection (closing the socket) and then `_slot`, a parameter, which
    // lets the listener take the next connection.
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn error_kind(e: &hyper::Error) -> &'static str {
    if e.is_parse() || e.is_parse_too_large() {
        "bad_request"
    } else {
        "io"
    }
}

/// Where a connection is, for its timeouts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Waiting for a request's head to be complete, since this instant (accept, or the request's
    /// first byte on a kept-alive connection).
    Head { since: Instant },
    /// Requests handed to the router and not yet answered.
    Busy { requests: usize },
    /// Kept alive between requests.
    Idle,
}

#[derive(Debug)]
struct ClockState {
    phase: Phase,
    /// Last byte read or written.
    last_io: Instant,
}

/// A connection's phase and last activity, updated by its I/O and its requests, read by its
/// task; `changed` wakes the task when the phase changes (a deadline may have come closer).
#[derive(Debug)]
struct Clock {
    state: Mutex<ClockState>,
    changed: Notify,
}

impl Clock {
    fn new(now: Instant) -> Self {
        Clock {
            state: Mutex::new(ClockState {
                phase: Phase::Head { since: now },
                last_io: now,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        // Nothing panics while holding it; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self, now: Instant) {
        let mut s = self.lock();
        s.last_io = now;
        if s.phase == Phase::Idle {
            s.phase = Phase::Head { since: now };
            drop(s);
            self.changed.notify_one();
        }
    }

    fn wrote(&self, now: Instant) {
        self.lock().last_io = now;
    }

    fn request_started(&self) {
        let mut s = self.lock();
        s.phase = match s.phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            Phase::Head { .. } | Phase::Idle => Phase::Busy { requests: 1 },
        };
        drop(s);
        self.changed.notify_one();
    }

    fn request_done(&self, now: Instant) {
        let mut s = self.lock();
        if let Phase::Busy { requests } = s.phase {
            s.phase = if requests > 1 {
                Phase::Busy {
                    requests: requests - 1,
                }
            } else {
                s.last_io = now;
                Phase::Idle
            };
        }
        drop(s);
        self.changed.notify_one();
    }

    /// When the connection is to be closed if nothing changes, and why.
    fn deadline(&self, limits: &ConnLimits) -> Option<(Instant, &'static str)> {
        let s = self.lock();
        match s.phase {
            Phase::Head { since } => Some((since + limits.header_read_timeout, "header_timeout")),
            Phase::Busy { .. } => None,
            Phase::Idle => Some((s.last_io + limits.idle_timeout, "idle_timeout")),
        }
    }
}

/// Marks a request in flight until dropped (answered, or abandoned with its connection).
struct InRequest(Arc<Clock>);

impl InRequest {
    fn start(clock: Arc<Clock>) -> Self {
        clock.request_started();
        InRequest(clock)
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.request_done(Instant::now());
    }
}

/// The connection's stream, reporting reads and writes to its [`Clock`].
struct Watched<S> {
    inner: S,
    clock: Arc<Clock>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read(Instant::now());
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote(Instant::now());
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote(Instant::now());
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnLimits = ConnLimits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_header_bytes: 16384,
    };

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn a_new_connection_has_the_header_deadline_from_accept_and_bytes_do_not_extend_it() {
        let t0 = Instant::now();
        let c = Clock::new(t0);
        assert_eq!(c.deadline(&LIMITS), Some((secs(t0, 10), "header_timeout")));
        c.read(secs(t0, 3));
        c.read(secs(t0, 9));
        assert_eq!(c.deadline(&LIMITS), Some((secs(t0, 10), "header_timeout")));
    }

    #[test]
    fn no_deadline_while_a_request_is_in_flight_then_idle_from_the_last_byte() {
        let t0 = Instant::now();
        let c = Clock::new(t0);
        c.read(secs(t0, 1));
        c.request_started();
        assert_eq!(c.deadline(&LIMITS), None);
        // A body and a slow handler: still no deadline.
        c.read(secs(t0, 500));
        assert_eq!(c.deadline(&LIMITS), None);
        c.request_done(secs(t0, 900));
        assert_eq!(c.deadline(&LIMITS), Some((secs(t0, 960), "idle_timeout")));
        // Writing the response keeps it alive.
        c.wrote(secs(t0, 905));
        assert_eq!(c.deadline(&LIMITS), Some((secs(t0, 965), "idle_timeout")));
    }

    #[test]
    fn a_kept_alive_connection_waits_the_idle_timeout_then_the_header_timeout_from_the_first_byte()
    {
        let t0 = Instant::now();
        let c = Clock::new(t0);
        c.request_started();
        c.request_done(secs(t0, 1));
        // Idle longer than the header timeout: not closed for that.
        assert_eq!(c.deadline(&LIMITS), Some((secs(t0, 61), "idle_timeout")));
        // The next request's first byte at 50 s: its head is due by 60 s.
        c.read(secs(t0, 50));
        assert_eq!(c.deadline(&LIMITS), Some((secs(t0, 60), "header_timeout")));
        c.read(secs(t0, 55));
        assert_eq!(c.deadline(&LIMITS), Some((secs(t0, 60), "header_timeout")));
        c.request_started();
        assert_eq!(c.deadline(&LIMITS), None);
    }

    #[test]
    fn overlapping_requests_keep_the_connection_busy_until_the_last_is_answered() {
        let t0 = Instant::now();
        let c = Clock::new(t0);
        c.request_started();
        c.request_started();
        c.request_done(secs(t0, 2));
        assert_eq!(c.deadline(&LIMITS), None);
        c.request_done(secs(t0, 3));
        assert_eq!(c.deadline(&LIMITS), Some((secs(t0, 63), "idle_timeout")));
    }
}
