//! `POST /v1/ingest`: one HL7v2 message (`application/hl7-v2`) or one FHIR R4 JSON resource or
//! Bundle (`application/fhir+json`), answered once the record is durably stored: 201 with the
//! receipt, 200 with the first receipt for a duplicate, problem+json otherwise.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{problem, ApiState};
use crate::envelope::{now_ms, AckToken, Envelope, FormatHint, Origin, Outcome, RejectKind};
use crate::pipeline::Pipeline;

/// Response header of a 422 for invalid FHIR: where the rejected input is kept (the problem+json
/// answers carry it as `quarantine_id`).
pub const QUARANTINE_ID: &str = "medanchor-quarantine-id";

/// What ingest needs; absent when no token is configured (ingest off).
#[derive(Clone)]
pub struct Ingest {
    pub pipeline: Arc<Pipeline>,
    pub token: Arc<str>,
    pub max_body_bytes: usize,
    /// The body must arrive whole within this long (`http.body_read_timeout_secs`).
    pub body_read_timeout: std::time::Duration,
}

/// Compares without stopping at the first difference, so response time says nothing about how
/// much of a guessed token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn format_of(headers: &HeaderMap) -> Option<FormatHint> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mime = ct.split(';').next()?.trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/hl7-v2" | "x-application/hl7-v2+er7" => Some(FormatHint::Hl7v2),
        "application/fhir+json" | "application/json+fhir" | "application/json" => {
            Some(FormatHint::Fhir)
        }
        _ => None,
    }
}

pub async fn ingest(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(ingest) = s.ingest else {
        return problem(
            StatusCode::NOT_FOUND,
            "ingest is off",
            "set http.ingest_token (MEDANCHOR__HTTP__INGEST_TOKEN) to accept records over HTTP",
        );
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|t| same(t.trim().as_bytes(), ingest.token.as_bytes())) {
        let mut r = problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <http.ingest_token>",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("header"));
        return r;
    }
    let Some(format) = format_of(&headers) else {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported media type",
            "Content-Type must be application/hl7-v2 or application/fhir+json",
        );
    };
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too large",
            &format!(
                "the body is over {} bytes (http.max_body_bytes)",
                ingest.max_body_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > ingest.max_body_bytes) {
        return too_large();
    }
    let read = axum::body::to_bytes(body, ingest.max_body_bytes);
    let Ok(read) = tokio::time::timeout(ingest.body_read_timeout, read).await else {
        let mut r = problem(
            StatusCode::REQUEST_TIMEOUT,
            "body too slow",
            &format!(
                "the body did not arrive within {} s (http.body_read_timeout_secs)",
                ingest.body_read_timeout.as_secs()
            ),
        );
        // The rest of the body is not read: the connection cannot carry another request.
        r.headers_mut()
            .insert(header::CONNECTION, "close".parse().expect("header"));
        return r;
    };
    let payload = match read {
        Ok(b) => b,
        Err(e) => {
            let length_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if length_limit {
                too_large()
            } else {
                problem(
                    StatusCode::BAD_REQUEST,
                    "unreadable body",
                    "the body could not be read",
                )
            };
        }
    };
    if format == FormatHint::Hl7v2 && crate::hl7::batch::is_batch(&payload) {
        return problem(
            StatusCode::BAD_REQUEST,
            "batch not accepted here",
            "POST one message per request; batch files go through `medanchor import` or MLLP",
        );
    }
    let (token, outcome) = AckToken::new();
    ingest
        .pipeline
        .submit(Envelope {
            payload,
            origin: Origin::Http { peer },
            format,
            received_ms: now_ms(),
            token,
        })
        .await;
    match outcome.await {
        Ok(Outcome::Stored { receipt, duplicate }) => {
            let status = if duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, Json(receipt)).into_response()
        }
        Ok(Outcome::Rejected(r)) if r.outcome.is_some() => {
            // Invalid FHIR: the OperationOutcome names every issue's path (never its value).
            let outcome = r.outcome.map(|o| o.to_string()).unwrap_or_default();
            let mut response = (
                StatusCode::UNPROCESSABLE_ENTITY,
                [(header::CONTENT_TYPE, "application/fhir+json")],
                outcome,
            )
                .into_response();
            if let Some(id) = r.quarantine_id.as_deref().and_then(|id| id.parse().ok()) {
                response.headers_mut().insert(QUARANTINE_ID, id);
            }
            response
        }
        Ok(Outcome::Rejected(r)) => {
            let status = match r.kind {
                RejectKind::NotHl7 => StatusCode::BAD_REQUEST,
                RejectKind::Unacceptable => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let body = serde_json::json!({
                "type": "about:blank",
                "title": "not accepted",
                "status": status.as_u16(),
                "detail": r.reason,
                "reason": r.label,
                "quarantine_id": r.quarantine_id,
            });
            (
                status,
                [(header::CONTENT_TYPE, "application/problem+json")],
                body.to_string(),
            )
                .into_response()
        }
        Ok(Outcome::Retry { reason }) => retry(&reason),
        Err(_) => retry("the gateway is stopping; send it again"),
    }
}

fn retry(reason: &str) -> Response {
    let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, "try again", reason);
    r.headers_mut()
        .insert(header::RETRY_AFTER, "1".parse().expect("header"));
    r
}
