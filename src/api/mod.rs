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

#[derive(Clone)]
pub struct ApiState {
    pub metrics: Arc<Metrics>,
    pub ledger: Arc<EmbeddedLedger>,
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

async fn ready(State(s): State<ApiState>) -> Response {
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
        Ok(Err(e)) => {
            tracing::error!(error = %e, "building proof");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ledger error",
                "the proof could not be built",
            )
        }
        Err(_) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ledger error",
            "the proof could not be built",
        ),
    }
}
