//! HTTP: metrics, health, readiness, and read-only log endpoints (proofs, latest checkpoint).
//! Errors are `application/problem+json` and never carry record content.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

pub mod ingest;
pub mod server;

use crate::envelope::RecordId;
use crate::ledger::{EmbeddedLedger, Ledger, LedgerError};
use crate::metrics::Metrics;
use crate::throttle::Throttle;

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
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/v1/checkpoint", get(checkpoint))
        .route("/v1/records/{id}/proof", get(proof))
        .route("/v1/ingest", post(ingest::ingest))
        .with_state(state)
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

async fn checkpoint(State(s): State<ApiState>) -> Response {
    match s.ledger.latest_checkpoint() {
        Ok(Some(cp)) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            cp.text,
        )
            .into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "no checkpoint yet",
            "the log is empty",
        ),
        Err(e) => {
            tracing::error!(error = %e, "reading checkpoint");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ledger error",
                "the ledger could not be read",
            )
        }
    }
}

async fn proof(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let Some(rid) = RecordId::parse(&id) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad record id",
            "a record id is 32 hex characters",
        );
    };
    let ledger = s.ledger.clone();
    match tokio::task::spawn_blocking(move || ledger.proof(&rid)).await {
        Ok(Ok(bundle)) => Json(bundle).into_response(),
        Ok(Err(LedgerError::NotAnchored(_))) | Ok(Err(LedgerError::NoCheckpoint(_))) => problem(
            StatusCode::NOT_FOUND,
            "not anchored",
            "no such record in the log yet; records are anchored within the batch interval",
        ),
        Ok(Err(e @ (LedgerError::Unavailable(_) | LedgerError::Io(_)))) => {
            s.metrics.proof_failures.inc();
            if let Some(times) = PROOF_FAILURES.hit() {
                tracing::warn!(error = %e, times, "building proof");
            }
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "ledger unavailable",
                "the log's storage failed; it recovers by itself once writes succeed again",
            )
        }
        Ok(Err(e)) => {
            s.metrics.proof_failures.inc();
            if let Some(times) = PROOF_FAILURES.hit() {
                tracing::error!(error = %e, times, "building proof");
            }
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ledger error",
                "the proof could not be built",
            )
        }
        Err(_) => {
            s.metrics.proof_failures.inc();
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ledger error",
                "the proof could not be built",
            )
        }
    }
}

/// Proofs fail together (the ledger's storage is down): logged once per interval with a count.
static PROOF_FAILURES: Throttle = Throttle::new(std::time::Duration::from_secs(10));

#[cfg(test)]
mod tests {
    use super::*;
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
        let id = RecordId([1; 16]).to_string();
        let (status, text) = body(proof(State(state.clone()), Path(id.clone())).await).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert!(state.metrics.proof_failures.get() > 0);

        faults.clear();
        // A proof brings the ledger back (as would the next append).
        let (status, text) = body(proof(State(state.clone()), Path(id)).await).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(body(ready(State(state)).await).await.0, StatusCode::OK);
    }
}
