//! HTTP: metrics, health and readiness (open to all, for probes and scrapers); ingest (its own
//! token); and the read side, where every request is authenticated: records, patients' records
//! and FHIR search, consents, access logs, erasure, proofs and checkpoints, principals.
//! Errors are `application/problem+json` (RFC 9457) and never carry record content.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

pub mod access;
pub mod admin;
pub mod auth;
pub mod ingest;
pub mod jwt;
pub mod log;
pub mod patients;
pub mod server;

use crate::ledger::{EmbeddedLedger, Ledger};
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct ApiState {
    pub metrics: Arc<Metrics>,
    pub ledger: Arc<EmbeddedLedger>,
    /// For readiness: a vault that cannot store, or a keyring that cannot store new data keys,
    /// makes the gateway not ready.
    pub vault: Arc<dyn crate::vault::Vault>,
    pub keyring: Arc<crate::seal::Keyring>,
    /// False until the pipeline runs, and again once shutdown starts.
    pub ready: Arc<AtomicBool>,
    /// Broker sources that cannot reach their broker make the gateway not ready.
    pub health: crate::sources::Health,
    /// `POST /v1/ingest`, when a token is configured.
    pub ingest: Option<ingest::Ingest>,
    /// The read side (principals, grants, events); `None` serves no reads.
    pub access: Option<access::Access>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/v1/ingest", post(ingest::ingest))
        .route("/v1/records/{id}", get(access::get_record))
        .route("/v1/records/{id}/proof", get(log::proof))
        .route("/v1/checkpoint", get(log::latest))
        .route("/v1/checkpoints/latest", get(log::latest))
        .route("/v1/checkpoints/consistency", get(log::consistency))
        .route("/v1/checkpoints/{size}", get(log::at_size))
        .route("/v1/log/public-key", get(log::public_key))
        .route("/v1/patients/{pid}", delete(patients::erase))
        .route("/v1/patients/{pid}/records", get(patients::list_records))
        .route("/v1/patients/{pid}/consents", get(patients::list_consents))
        .route("/v1/patients/{pid}/access-log", get(patients::access_log))
        .route("/v1/patients/{pid}/charges", get(patients::charges))
        .route("/v1/consents", post(patients::post_consent))
        .route("/v1/consents/{id}", delete(patients::delete_consent))
        .route("/fhir/Patient/{pid}/$everything", get(patients::everything))
        .route("/fhir/{kind}", get(patients::search_type))
        .route("/v1/admin/principals", post(admin::add).get(admin::list))
        .route("/v1/admin/principals/{id}", delete(admin::revoke))
        .route("/openapi.yaml", get(openapi))
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not found",
                "no such endpoint; see /openapi.yaml",
            )
        })
        .layer(axum::middleware::map_response(as_problem))
        .with_state(state)
}

/// An RFC 9457 problem as an error value: status, a fixed title and a detail that names no
/// record content. The read side's functions return it; a handler answers with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {title}: {detail}")]
pub struct Problem {
    pub status: StatusCode,
    pub title: &'static str,
    pub detail: String,
    /// `WWW-Authenticate` of a 401 (the scheme to use).
    pub challenge: Option<&'static str>,
    /// `Retry-After` of a 429, in seconds.
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            title,
            detail: detail.into(),
            challenge: None,
            retry_after: None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut r = problem(self.status, self.title, &self.detail);
        if let Some(scheme) = self.challenge {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(scheme),
            );
        }
        if let Some(seconds) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        r
    }
}

/// Runs a read's work (vault and keyring reads, decryption, proofs, the JSON of a patient's
/// every record) on tokio's blocking pool. Done inline, it would hold one of the runtime's few
/// workers, which MLLP and the broker sources share, for as long as a large read or a slow disk
/// takes. At most [`read_slots`] run at once; the others wait for a slot holding no thread. A
/// panic in `work` answers 500.
pub(crate) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    // Never closed, so acquiring fails only if that changes.
    let _slot = read_slots()
        .acquire()
        .await
        .map_err(|_| internal("the read"))?;
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "a read task failed");
        Err(internal("the read"))
    })
}

/// A 500 whose detail names what failed and sends the reader to the log (where the error is),
/// never the error itself.
pub(crate) fn internal(what: &str) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error",
        format!("{what} failed; see the gateway log"),
    )
}

/// Reads on the blocking pool at once: four per core, enough to keep the cores busy and to
/// overlap disk waits, and few enough that reads cannot take the pool's threads from the
/// ledger's batches and the quarantine, which use it too.
fn read_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores * 4)
    })
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = serde_json::json!({ "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// The API's OpenAPI 3.1 description (schemas/openapi.yaml), as built into this binary.
pub const OPENAPI: &str = include_str!("../../schemas/openapi.yaml");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}

/// Answers that axum makes itself (an extractor's rejection: a query that does not parse, a
/// body too large; a method a path does not have) come as text; every error of this API is
/// problem+json. Their text names the parameter, not its value.
async fn as_problem(r: Response) -> Response {
    let status = r.status();
    let is_text = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !is_text {
        return r;
    }
    let allow = r.headers().get(header::ALLOW).cloned();
    let (_, body) = r.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&text);
    let title = status.canonical_reason().unwrap_or("error");
    let mut out = problem(status, title, detail.trim());
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// The stores that cannot do their work right now, each with why (never record content): a
/// ledger or vault down after a storage failure it has not recovered from yet.
fn unhealthy_components(s: &ApiState) -> Vec<(&'static str, String)> {
    let mut down = Vec::new();
    if let Err(why) = s.vault.health() {
        down.push(("vault", why));
    }
    if let Err(why) = s.keyring.health() {
        down.push(("keys", why));
    }
    if let Err(why) = s.ledger.health() {
        down.push(("ledger", why));
    }
    down
}

async fn ready(State(s): State<ApiState>) -> Response {
    let components = unhealthy_components(&s);
    if !components.is_empty() {
        let detail: Vec<String> = components
            .iter()
            .map(|(component, why)| format!("{component}: {why}"))
            .collect();
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready",
            &detail.join("; "),
        );
    }
    let down = s.health.down();
    if !down.is_empty() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready",
            &format!("source(s) cannot reach their broker: {}", down.join(", ")),
        );
    }
    if s.ready.load(Ordering::Relaxed) {
        "ready\n".into_response()
    } else {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready",
            "the gateway is starting or shutting down",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::RecordId;
    use crate::testing::faulty::{Faults, FaultyBackend};
    use http_body_util::BodyExt;

    async fn body(r: Response) -> (StatusCode, String) {
        let status = r.status();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_names_a_ledger_that_is_down_and_recovers_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let faults = Faults::default();
        let f = faults.clone();
        let signer = medanchor_merkle::NoteSigner::new(
            "test.medanchor",
            ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        )
        .unwrap();
        let mut ledger = EmbeddedLedger::open_with_backend(
            move || FaultyBackend::open(&path, f.clone()),
            "test.medanchor",
            signer,
        )
        .unwrap();
        ledger.set_recovery_interval(std::time::Duration::ZERO);
        let ledger = Arc::new(ledger);
        let record = |i: u8| crate::ledger::Leaf::record(RecordId([i; 16]), [i; 32]);
        ledger.append_records(&[record(1)], 1).unwrap();
        let vault = crate::vault::EmbeddedVault::open(
            &dir.path().join("vault.redb"),
            &dir.path().join("segments"),
            1 << 20,
            true,
        )
        .unwrap();
        let keyring = crate::seal::Keyring::open(&dir.path().join("keys"), true).unwrap();
        let state = ApiState {
            metrics: Arc::new(Metrics::new()),
            ledger: ledger.clone(),
            vault: Arc::new(vault),
            keyring: Arc::new(keyring),
            ready: Arc::new(AtomicBool::new(true)),
            health: crate::sources::Health::default(),
            ingest: None,
            access: None,
        };
        assert_eq!(
            body(ready(State(state.clone())).await).await.0,
            StatusCode::OK
        );

        faults.fail_all();
        assert!(ledger.append_records(&[record(2)], 2).is_err());
        let (status, text) = body(ready(State(state.clone())).await).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            text.contains("ledger: ") && text.contains("No space left on device"),
            "{text}"
        );
        let id = RecordId([1; 16]);
        let refused = log::prove(&state, id).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
        assert!(state.metrics.proof_failures.get() > 0);

        faults.clear();
        // A proof brings the ledger back (as would the next append).
        assert!(log::prove(&state, id).await.is_ok());
        assert_eq!(body(ready(State(state)).await).await.0, StatusCode::OK);
    }
}
