//! `medanchor serve`: open the stores, start the pipeline and the listeners, stop gracefully.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::pipeline::{OpenError, Pipeline, Stores};
use crate::sources::{mllp, Health};
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
    #[error(transparent)]
    Principals(#[from] crate::consent::PrincipalError),
    #[error("jwt: {0}")]
    Jwt(#[from] crate::api::jwt::JwtError),
}

/// Runs until SIGTERM or SIGINT, then: stop accepting, answer every message already read,
/// commit, and close the open batch with a checkpoint.
pub async fn run(cfg: Config) -> Result<(), ServeError> {
    // Installed before anything is announced: a SIGTERM that arrives right after the
    // "listening" lines must stop the gateway gracefully, not kill it.
    let stop_signal = StopSignal::install().map_err(ServeError::Signal)?;
    let normalizer = Pipeline::normalizer(&cfg)?;
    let stores = Stores::open(&cfg, true)?;
    let principals = Arc::new(crate::consent::Principals::open(&cfg.data_dir)?);
    if let Some(path) = principals.bootstrap_admin(&cfg.data_dir, crate::envelope::now_ms())? {
        tracing::info!(file = %path.display(), "first start: the admin principal's token is in this file (mode 0600)");
    }
    let metrics = Arc::new(Metrics::new());
    let (pipeline, running) = Pipeline::start_with(&cfg, &stores, metrics.clone(), normalizer)?;
    // Each listener's TLS, when its section is set.
    let tls_of = |t: Option<&crate::config::TlsConfig>, section: &'static str| {
        t.map(|t| crate::tls::load_tls(t, section)).transpose()
    };
    let tls = tls_of(cfg.mllp.tls.as_ref(), "mllp.tls")?;
    let http_tls = tls_of(cfg.http.tls.as_ref(), "http.tls")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    // Broker sources bind their consumers before the gateway says it is listening, so a
    // configuration the broker refuses stops the start with the reason.
    let health = Health::default();
    // Broker sources: acknowledgements go out from these tasks, after the records are stored.
    let settling = TaskTracker::new();
    let mut pulling = Vec::new();
    for source in &cfg.sources {
        let up = health.register(source.name());
        let started = source
            .start(
                pipeline.clone(),
                metrics.clone(),
                up,
                settling.clone(),
                stop_rx.clone(),
            )
            .await?;
        pulling.push(started);
    }
    crate::listener::fit_open_files(
        u64::try_from(
            cfg.mllp
                .max_connections
                .saturating_add(cfg.http.max_connections),
        )
        .unwrap_or(u64::MAX),
    );
    let (mllp_listener, mllp_addr) = bind("mllp.listen", cfg.mllp.listen).await?;
    let (http_listener, http_addr) = bind("http.listen", cfg.http.listen).await?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "mllp listening on {mllp_addr}{}",
            if tls.is_some() { " (tls)" } else { "" }
        );
        let _ = writeln!(
            out,
            "http listening on {http_addr}{}",
            if http_tls.is_some() { " (tls)" } else { "" }
        );
        let _ = out.flush();
    }
    tracing::info!(%mllp_addr, %http_addr, data_dir = %cfg.data_dir.display(), key = %stores.ledger.verifier().to_vkey(), "medanchor started");

    let jwt = cfg
        .jwt
        .clone()
        .map(api::jwt::JwtVerifier::new)
        .transpose()?
        .map(Arc::new);
    let ready = Arc::new(AtomicBool::new(true));
    let app = api::router(ApiState {
        metrics: metrics.clone(),
        ledger: stores.ledger.clone(),
        vault: stores.vault.clone(),
        keyring: stores.keyring.clone(),
        ready: ready.clone(),
        health,
        ingest: cfg.http.ingest_token.as_ref().map(|t| api::ingest::Ingest {
            pipeline: pipeline.clone(),
            token: t.as_str().into(),
            max_body_bytes: cfg.http.max_body_bytes,
            body_read_timeout: std::time::Duration::from_secs(cfg.http.body_read_timeout_secs),
        }),
        access: Some(api::access::Access {
            pipeline: pipeline.clone(),
            principals,
            book: Arc::new(crate::consent::Book::default()),
            failures: Arc::new(api::auth::Failures::new(cfg.http.auth_failures_per_minute)),
            budgets: Arc::new(api::auth::Budgets::new(
                cfg.http.requests_per_principal_per_second,
            )),
            jwt,
        }),
    });
    let http = tokio::spawn({
        let cfg = cfg.http.clone();
        let metrics = metrics.clone();
        let stop = stop_rx.clone();
        async move { api::server::serve(http_listener, app, &cfg, http_tls, metrics, stop).await }
    });
    // Quarantine retention: at start, then hourly.
    if cfg.vault.quarantine_retention_days > 0 {
        let vault = stores.vault.clone();
        let keep = std::time::Duration::from_secs(cfg.vault.quarantine_retention_days * 86_400);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                let before = crate::envelope::now_ms().saturating_sub(keep.as_millis() as u64);
                let v = vault.clone();
                match tokio::task::spawn_blocking(move || {
                    crate::vault::Vault::quarantine_expire(&*v, before)
                })
                .await
                {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(
                        removed = n,
                        "quarantine entries past their retention removed"
                    ),
                    Ok(Err(e)) => tracing::warn!(error = %e, "removing old quarantine entries"),
                    Err(_) => {}
                }
            }
        });
    }
    let mllp_task = tokio::spawn(mllp::serve(
        mllp_listener,
        cfg.mllp.clone(),
        tls,
        pipeline.clone(),
        stop_rx,
    ));

    stop_signal.wait().await;
    tracing::info!("shutting down: finishing in-flight messages");
    ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = mllp_task.await;
    for task in pulling {
        let _ = task.await;
    }
    // The HTTP server holds the pipeline for ingest: it must be gone before the writer can end.
    let _ = http.await;
    // Last reference: dropping it closes the writer's queue, which closes the batcher's.
    drop(pipeline);
    running.finish().await;
    // Every token has resolved by now; let the broker acknowledgements go out.
    settling.close();
    if tokio::time::timeout(std::time::Duration::from_secs(10), settling.wait())
        .await
        .is_err()
    {
        tracing::warn!("some broker acknowledgements did not finish; those messages will be redelivered and recognised as duplicates");
    }
    tracing::info!(
        tree_size = stores.ledger.size(),
        "stopped; last batch anchored"
    );
    Ok(())
}

/// Binds `addr` (port 0 picks one) and reports the bound address; errors name the config key.
async fn bind(
    what: &'static str,
    addr: std::net::SocketAddr,
) -> Result<(TcpListener, std::net::SocketAddr), ServeError> {
    let err = |source| ServeError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

/// SIGTERM or SIGINT, caught from the moment it is installed.
struct StopSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignal {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}
