//! Accepting connections on the gateway's own listeners (MLLP and HTTP): a limit on open
//! connections per listener, a backoff when accepting fails, and failures logged at most once per
//! interval.
//!
//! **At the limit the listener stops accepting**; it does not accept and close. New connections
//! wait in the kernel's backlog (the TCP handshake completes there, nothing is read) and are taken,
//! oldest first, as open ones close. That is the design's rule for a full queue: slow the sender
//! down, do not drop. An MLLP sender's connect succeeds and its message waits for its ACK instead
//! of meeting a reset it would turn into a reconnect loop, and a connection that is not served
//! costs the process no file descriptor, so one full listener cannot use up the descriptors the
//! other one needs. Once the backlog (`net.core.somaxconn`) is full too, the kernel drops new
//! handshakes and clients retry them.
//!
//! Accept errors that concern one connection (reset or aborted before it was taken) are counted
//! and the next one is accepted at once. Any other error (out of file descriptors, out of buffer
//! memory …) backs off: 10 ms, doubling up to 1 s, back to 10 ms after a success. The warning
//! for them is logged at most once per 10 s and says how many were not logged since the last one;
//! `medanchor_listener_accept_errors_total` counts every one.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// First wait after a failed accept.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest wait between failed accepts.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one accept-failure warning (and one at-the-limit warning) per listener this often.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What a [`Listener`] accepts from: a [`TcpListener`], or a scripted source in tests.
pub trait Accept {
    type Io;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, SocketAddr)>>;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        TcpListener::poll_accept(self, cx)
    }
}

/// A listener with a connection limit; see the module documentation.
pub struct Listener<A = TcpListener> {
    inner: A,
    name: &'static str,
    max_connections: usize,
    slots: Arc<Semaphore>,
    metrics: ListenerMetrics,
    backoff: Backoff,
    error_log: LogLimiter,
    full_log: LogLimiter,
}

#[derive(Clone)]
struct ListenerMetrics {
    connections: IntGauge,
    accepted: IntCounter,
    accept_errors: IntCounter,
    limit_reached: IntCounter,
}

/// One of a listener's connection slots, held for as long as the connection is open; dropping it
/// lets the listener accept the next connection.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<A: Accept> Listener<A> {
    /// `name` is the metric label (`mllp`, `http`); `max_connections` is at least 1.
    pub fn new(inner: A, name: &'static str, max_connections: usize, metrics: &Metrics) -> Self {
        let max_connections = max_connections.max(1);
        let label = [name];
        metrics
            .listener_max_connections
            .with_label_values(&label)
            .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
        Listener {
            inner,
            name,
            max_connections,
            slots: Arc::new(Semaphore::new(max_connections)),
            metrics: ListenerMetrics {
                connections: metrics.listener_connections.with_label_values(&label),
                accepted: metrics.listener_accepted.with_label_values(&label),
                accept_errors: metrics.listener_accept_errors.with_label_values(&label),
                limit_reached: metrics.listener_limit_reached.with_label_values(&label),
            },
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            error_log: LogLimiter::new(LOG_INTERVAL),
            full_log: LogLimiter::new(LOG_INTERVAL),
        }
    }

    pub fn get_ref(&self) -> &A {
        &self.inner
    }

    /// Waits for a free slot, then for a connection. Cancel-safe: a connection is either
    /// returned or left in the backlog.
    pub async fn accept(&mut self) -> (A::Io, SocketAddr, Slot) {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.metrics.limit_reached.inc();
                if let Some(suppressed) = self.full_log.admit(Instant::now()) {
                    tracing::warn!(
                        listener = self.name,
                        max_connections = self.max_connections,
                        suppressed,
                        "listener at its connection limit; new connections wait in the backlog"
                    );
                }
                self.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        loop {
            match poll_fn(|cx| self.inner.poll_accept(cx)).await {
                Ok((io, peer)) => {
                    self.backoff.reset();
                    self.metrics.accepted.inc();
                    self.metrics.connections.inc();
                    let slot = Slot {
                        _permit: permit,
                        open: self.metrics.connections.clone(),
                    };
                    return (io, peer, slot);
                }
                Err(e) => {
                    self.metrics.accept_errors.inc();
                    if concerns_one_connection(&e) {
                        tracing::debug!(listener = self.name, error = %e, "connection gone before it was accepted");
                        continue;
                    }
                    let delay = self.backoff.fail();
                    if let Some(suppressed) = self.error_log.admit(Instant::now()) {
                        tracing::warn!(
                            listener = self.name,
                            error = %e,
                            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                            suppressed,
                            "accept failed"
                        );
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// File descriptors kept for everything besides the listeners' connections: vault and log
/// files, broker connections, the listening sockets, TLS material.
const FD_HEADROOM: u64 = 256;

/// Makes room for `connections` (the listeners' limits added up) under the process's limit on
/// open files: raises the soft limit as far as needed, up to the hard limit, and warns when the
/// connection limits still do not fit. Past the limit accepting fails (EMFILE) on every listener
/// and the vault cannot open files, so the per-listener limits only keep the listeners apart if
/// they fit under it.
pub fn fit_open_files(connections: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let wanted = connections.saturating_add(FD_HEADROOM);
    let limit = getrlimit(Resource::Nofile);
    let (raise_to, mut fits) = plan_open_files(limit.current, limit.maximum, wanted);
    let mut have = limit.current;
    if let Some(to) = raise_to {
        let raised = rustix::process::Rlimit {
            current: Some(to),
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(from = ?limit.current, to, "raised the open-file limit for the listeners");
                have = Some(to);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not raise the open-file limit");
                fits = false;
            }
        }
    }
    if !fits {
        tracing::warn!(
            open_file_limit = ?have,
            wanted,
            "mllp.max_connections + http.max_connections (+{FD_HEADROOM} for files) exceed the \
             open-file limit: lower them or raise the limit (ulimit -n, systemd LimitNOFILE=)"
        );
    }
}

/// (the soft limit to set, if any; whether `wanted` then fits). `None` is unlimited.
fn plan_open_files(soft: Option<u64>, hard: Option<u64>, wanted: u64) -> (Option<u64>, bool) {
    match (soft, hard) {
        (None, _) => (None, true),
        (Some(s), _) if s >= wanted => (None, true),
        (Some(_), None) => (Some(wanted), true),
        (Some(_), Some(h)) if h >= wanted => (Some(wanted), true),
        (Some(s), Some(h)) if h > s => (Some(h), false),
        (Some(_), Some(_)) => (None, false),
    }
}

/// Errors about the one connection being accepted, not about the listener or the process.
fn concerns_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Exponential backoff: `min`, doubling to `max`; [`Backoff::reset`] starts over.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The wait after one more failure.
    fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        d
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Lets one event through per interval and counts the ones it holds back.
#[derive(Debug)]
struct LogLimiter {
    interval: Duration,
    next_at: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            next_at: None,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log this event, saying `n` were held back since the last one logged.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.next_at {
            Some(t) if now < t => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next_at = Some(now + self.interval);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// Hands out the scripted results in order, then waits forever.
    struct Script(VecDeque<io::Result<u32>>);

    impl Accept for Script {
        type Io = u32;
        fn poll_accept(&mut self, _: &mut Context<'_>) -> Poll<io::Result<(u32, SocketAddr)>> {
            match self.0.pop_front() {
                Some(r) => Poll::Ready(r.map(|n| (n, "127.0.0.1:1".parse().unwrap()))),
                None => Poll::Pending,
            }
        }
    }

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(24)
    }

    fn counts(m: &Metrics, name: &str) -> (u64, u64, u64, i64) {
        (
            m.listener_accepted.with_label_values(&[name]).get(),
            m.listener_accept_errors.with_label_values(&[name]).get(),
            m.listener_limit_reached.with_label_values(&[name]).get(),
            m.listener_connections.with_label_values(&[name]).get(),
        )
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_starts_over_after_reset() {
        let mut b = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let waits: Vec<u64> = (0..10).map(|_| b.fail().as_millis() as u64).collect();
        assert_eq!(
            waits,
            [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000],
            "10 ms doubling, capped at 1 s"
        );
        b.reset();
        assert_eq!(b.fail(), BACKOFF_MIN);
    }

    #[test]
    fn the_limiter_lets_one_event_through_per_interval_and_counts_the_rest() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(l.admit(at(0)), Some(0));
        // 99 more within the interval: held back.
        for i in 1..100 {
            assert_eq!(l.admit(at(i * 50)), None);
        }
        // The first after the interval goes through and reports them.
        assert_eq!(l.admit(at(10_000)), Some(99));
        assert_eq!(l.admit(at(10_001)), None);
        assert_eq!(l.admit(at(20_000)), Some(1));
    }

    #[test]
    fn the_open_file_limit_is_raised_only_as_far_as_needed_and_never_past_the_hard_limit() {
        // Enough already (or unlimited): left alone.
        assert_eq!(plan_open_files(Some(4096), Some(4096), 2304), (None, true));
        assert_eq!(plan_open_files(None, None, 2304), (None, true));
        // Raised to what is needed, not to the hard limit.
        assert_eq!(
            plan_open_files(Some(1024), Some(524_288), 2304),
            (Some(2304), true)
        );
        assert_eq!(plan_open_files(Some(1024), None, 2304), (Some(2304), true));
        // The hard limit is lower: as far as it goes, and it does not fit.
        assert_eq!(
            plan_open_files(Some(1024), Some(2048), 2304),
            (Some(2048), false)
        );
        assert_eq!(plan_open_files(Some(1024), Some(1024), 2304), (None, false));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_and_a_success_resets_the_backoff() {
        let m = Metrics::new();
        let mut script: VecDeque<io::Result<u32>> = (0..5).map(|_| Err(emfile())).collect();
        script.push_back(Ok(1));
        script.push_back(Err(emfile()));
        script.push_back(Ok(2));
        let mut l = Listener::new(Script(script), "t", 10, &m);
        let t0 = Instant::now();
        let (io, _, _a) = l.accept().await;
        assert_eq!(io, 1);
        // (Time is paused: it advances exactly by the sleeps.)
        assert_eq!(t0.elapsed(), Duration::from_millis(10 + 20 + 40 + 80 + 160));
        let t1 = Instant::now();
        let (io, _, _b) = l.accept().await;
        assert_eq!(io, 2);
        assert_eq!(t1.elapsed(), BACKOFF_MIN, "the success reset the backoff");
        assert_eq!(counts(&m, "t"), (2, 6, 0, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_about_one_connection_do_not_back_off() {
        let m = Metrics::new();
        let script = VecDeque::from([
            Err(io::ErrorKind::ConnectionAborted.into()),
            Err(io::ErrorKind::ConnectionReset.into()),
            Ok(7),
        ]);
        let mut l = Listener::new(Script(script), "t", 10, &m);
        let t0 = Instant::now();
        let (io, _, _slot) = l.accept().await;
        assert_eq!(io, 7);
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(counts(&m, "t"), (1, 2, 0, 1));
    }

    /// Collects what the code under test logs.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_of_accept_errors_is_logged_once_per_interval_and_counted_in_full() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let m = Metrics::new();
        // 30 failures: 10+20+…+640 ms, then 1 s each: about 24.3 s in all.
        let mut script: VecDeque<io::Result<u32>> = (0..30).map(|_| Err(emfile())).collect();
        script.push_back(Ok(1));
        let mut l = Listener::new(Script(script), "t", 10, &m);
        let _open = l.accept().await;
        assert_eq!(counts(&m, "t"), (1, 30, 0, 1));
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("accept failed"))
            .collect();
        // Failures at 0, 10, 30, …, 1270 ms, then every second: logged at 0 s, at the first
        // failure ≥ 10 s (the 17th, 10.27 s) and at the first ≥ 20 s (the 27th, 20.27 s), each
        // line with the number held back since the one before.
        assert_eq!(lines.len(), 3, "{text}");
        let held_back: Vec<u64> = lines
            .iter()
            .map(|l| {
                let v = l.split("suppressed=").nth(1).unwrap();
                v.split_whitespace().next().unwrap().parse().unwrap()
            })
            .collect();
        assert_eq!(held_back, [0, 15, 9], "{text}");
        assert!(lines[0].contains("retry_in_ms=10 "), "{}", lines[0]);
        assert!(lines[2].contains("retry_in_ms=1000 "), "{}", lines[2]);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_nothing_is_accepted_until_a_slot_is_released() {
        let m = Metrics::new();
        let script = VecDeque::from([Ok(1), Ok(2), Ok(3)]);
        let mut l = Listener::new(Script(script), "t", 2, &m);
        let (_, _, a) = l.accept().await;
        let (_, _, _b) = l.accept().await;
        {
            let third = l.accept();
            tokio::pin!(third);
            assert!(
                futures::poll!(third.as_mut()).is_pending(),
                "no third connection while two are open"
            );
            assert_eq!(counts(&m, "t"), (2, 0, 1, 2));
            drop(a);
            assert_eq!(counts(&m, "t"), (2, 0, 1, 1));
            let (io, _, _c) = third.await;
            assert_eq!(io, 3);
            assert_eq!(counts(&m, "t"), (3, 0, 1, 2));
        }
        assert!(l.get_ref().0.is_empty());
    }
}
