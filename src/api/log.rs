//! The log over HTTP: inclusion proofs (to whoever may read the record, and to auditors),
//! checkpoints, consistency proofs and the log's public key (to any principal).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::access::{caller, find, forbidden, Access, AccessWhat, Caller, Standing};
use super::{ApiState, Problem};
use crate::consent::{Applicable, Role};
use crate::envelope::{now_ms, RecordId};
use crate::ledger::{Ledger, LedgerError};
use crate::seal::keyring::PatientIndex;
use crate::throttle::Throttle;

/// Proofs fail together (the ledger's storage is down): logged once per interval with a count.
static PROOF_FAILURES: Throttle = Throttle::new(std::time::Duration::from_secs(10));

fn ledger_error(s: &ApiState, e: LedgerError, what: &str) -> Problem {
    match e {
        LedgerError::NotAnchored(_) | LedgerError::NoCheckpoint(_) => Problem::new(
            StatusCode::NOT_FOUND,
            "not anchored",
            "no such record in the log yet; records are anchored within the batch interval",
        ),
        e @ (LedgerError::Unavailable(_) | LedgerError::Io(_)) => {
            s.metrics.proof_failures.inc();
            if let Some(times) = PROOF_FAILURES.hit() {
                tracing::warn!(error = %e, times, "{what}");
            }
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ledger unavailable",
                "the log's storage failed; it recovers by itself once writes succeed again",
            )
        }
        e => {
            s.metrics.proof_failures.inc();
            if let Some(times) = PROOF_FAILURES.hit() {
                tracing::error!(error = %e, times, "{what}");
            }
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ledger error",
                format!("the {what} could not be built"),
            )
        }
    }
}

/// Whether the caller may have a record's proof: auditors and admins; the patient; anyone who
/// may read some of the record.
fn may_prove(
    s: &ApiState,
    headers: &HeaderMap,
    peer: SocketAddr,
    id: &RecordId,
) -> Result<(Access, Caller, Option<PatientIndex>), Problem> {
    let (access, caller) = caller(s, headers, peer, None)?;
    if caller.scopes.none() {
        return Err(forbidden());
    }
    let patient = match s.vault.get(id) {
        Ok(Some(r)) => crate::seal::parse_header(&r.sealed)
            .ok()
            .and_then(|h| PatientIndex::from_key_id(h.key_id)),
        Ok(None) => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "not found",
                "no such record",
            ))
        }
        Err(e) => {
            tracing::error!(error = %e, "reading a record");
            return Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                "reading the record failed",
            ));
        }
    };
    // Auditors and admins, and the patient (an erased patient's proofs still verify, and they
    // may still have them).
    if matches!(caller.principal.role, Role::Auditor | Role::Admin)
        || patient.is_some_and(|p| caller.principal.is_patient(&p))
    {
        return Ok((access, caller, patient));
    }
    let Some(found) = find(s, id)? else {
        return Err(forbidden());
    };
    let Some(patient) = found.patient else {
        return Err(forbidden());
    };
    let allowed = match access.standing(s, &caller, &patient, Some(&found.raw.meta.sender))? {
        Standing::Own | Standing::Sender | Standing::BreakGlass => true,
        Standing::Grants(g) => {
            !Applicable::select(g.active(), &caller.requester(), caller.purpose, now_ms()).none()
        }
        Standing::None => false,
    };
    if allowed {
        Ok((access, caller, Some(patient)))
    } else {
        Err(forbidden())
    }
}

/// `GET /v1/records/{id}/proof`.
pub async fn proof(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let Some(rid) = RecordId::parse(&id) else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad record id",
            "a record id is 32 hex characters",
        ));
    };
    let (access, caller, patient) = may_prove(&s, &headers, peer, &rid)?;
    let bundle = prove(&s, rid).await?;
    // A proof given is a read about the record's patient: in their access log before it goes.
    if let Some(patient) = patient {
        let what = AccessWhat {
            what: "proof",
            record: Some(&id),
            types: Vec::new(),
        };
        match access
            .record_access(&s, &caller, &patient, &what, "permit")
            .await
        {
            Ok(_) => {}
            // An erased patient's proofs are still given.
            Err(p) if p.status == StatusCode::GONE => {}
            Err(p) => return Err(p),
        }
    }
    Ok(Json(bundle).into_response())
}

/// The proof bundle of `rid` from the ledger (on the blocking pool).
pub(crate) async fn prove(
    s: &ApiState,
    rid: RecordId,
) -> Result<medanchor_merkle::ProofBundle, Problem> {
    let ledger = s.ledger.clone();
    match tokio::task::spawn_blocking(move || ledger.proof(&rid)).await {
        Ok(Ok(bundle)) => Ok(bundle),
        Ok(Err(e)) => Err(ledger_error(s, e, "proof")),
        Err(_) => {
            s.metrics.proof_failures.inc();
            Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ledger error",
                "the proof could not be built",
            ))
        }
    }
}

fn any_principal(s: &ApiState, headers: &HeaderMap, peer: SocketAddr) -> Result<(), Problem> {
    caller(s, headers, peer, None).map(|_| ())
}

fn note(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

/// `GET /v1/checkpoints/latest` (and `/v1/checkpoint`): the signed note.
pub async fn latest(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    any_principal(&s, &headers, peer)?;
    match s.ledger.latest_checkpoint() {
        Ok(Some(cp)) => Ok(note(cp.text)),
        Ok(None) => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "no checkpoint yet",
            "the log is empty",
        )),
        Err(e) => Err(ledger_error(&s, e, "checkpoint")),
    }
}

/// `GET /v1/checkpoints/{size}`: the checkpoint signed at that tree size.
pub async fn at_size(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(size): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    any_principal(&s, &headers, peer)?;
    let Ok(size) = size.parse::<u64>() else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad size",
            "a tree size is a number",
        ));
    };
    match s.ledger.checkpoint_at(size) {
        Ok(Some(text)) => Ok(note(text)),
        Ok(None) => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "no such checkpoint",
            "no checkpoint was signed at this tree size",
        )),
        Err(e) => Err(ledger_error(&s, e, "checkpoint")),
    }
}

#[derive(Debug, Deserialize)]
pub struct Between {
    pub from: u64,
    pub to: u64,
}

/// `GET /v1/checkpoints/consistency?from=&to=`: the RFC 9162 consistency proof between two
/// signed tree sizes, with both checkpoints.
pub async fn consistency(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<Between>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    any_principal(&s, &headers, peer)?;
    if q.from == 0 || q.from > q.to {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad sizes",
            "from must be at least 1 and at most to",
        ));
    }
    let (first, second) = match (s.ledger.checkpoint_at(q.from), s.ledger.checkpoint_at(q.to)) {
        (Ok(Some(a)), Ok(Some(b))) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Err(ledger_error(&s, e, "consistency proof")),
        _ => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "no such checkpoint",
                "both sizes must be sizes a checkpoint was signed at",
            ))
        }
    };
    let ledger = s.ledger.clone();
    let (from, to) = (q.from, q.to);
    match tokio::task::spawn_blocking(move || ledger.consistency(from, to)).await {
        Ok(Ok(path)) => Ok(Json(json!({
            "from": from,
            "to": to,
            "proof": path.iter().map(hex::encode).collect::<Vec<_>>(),
            "from_checkpoint": first,
            "to_checkpoint": second,
            "public_key": s.ledger.verifier().to_vkey(),
        }))
        .into_response()),
        Ok(Err(e)) => Err(ledger_error(&s, e, "consistency proof")),
        Err(_) => Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ledger error",
            "the consistency proof could not be built",
        )),
    }
}

/// `GET /v1/log/public-key`: the note verifier key (`name+hash+base64`) and origin.
pub async fn public_key(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    any_principal(&s, &headers, peer)?;
    Ok(Json(json!({"public_key": s.ledger.verifier().to_vkey()})).into_response())
}
