//! `/v1/admin/principals`: admins add, list and revoke principals while the gateway runs (the
//! `medanchor principals` commands do the same on a stopped gateway's data directory).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::access::{caller, forbidden};
use super::{ApiState, Problem};
use crate::consent::{NewPrincipal, PrincipalError, Role};
use crate::envelope::now_ms;
use crate::seal::Keyring;

/// A principal to add. A patient is named by `patients` (ids) or by `identifiers` (PID-3 as
/// the records carry it, `id^authority^type`, e.g. `12345^HOSP^MR`), which the gateway turns
/// into patient ids with its index key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPrincipal {
    pub id: String,
    pub role: Option<Role>,
    #[serde(default)]
    pub patients: Vec<String>,
    #[serde(default)]
    pub identifiers: Vec<String>,
    pub organization: Option<String>,
    #[serde(default)]
    pub senders: Vec<String>,
    /// TLS client certificate fingerprints (`sha3-256:` + hex).
    #[serde(default)]
    pub certificates: Vec<String>,
}

impl AddPrincipal {
    /// The principal to store, identifiers turned into patient ids.
    pub fn resolve(self, keyring: &Keyring) -> Result<NewPrincipal, PrincipalError> {
        if self.identifiers.len() > 64
            || self
                .identifiers
                .iter()
                .any(|i| i.is_empty() || i.len() > 512 || i.chars().any(char::is_control))
        {
            return Err(PrincipalError::Field(
                "identifiers",
                "up to 64 of id^authority^type".into(),
            ));
        }
        let mut patients = self.patients;
        for i in &self.identifiers {
            let p = keyring.patient(i).key_id();
            if !patients.contains(&p) {
                patients.push(p);
            }
        }
        Ok(NewPrincipal {
            id: self.id,
            role: self.role,
            patients,
            organization: self.organization,
            senders: self.senders,
            certificates: self.certificates,
        })
    }
}

/// Admin work: an admin principal, with its own token or certificate (never a JWT, whose
/// scopes speak of FHIR resources, not of managing the gateway).
pub fn admin_only(caller: &super::access::Caller) -> Result<(), Problem> {
    if caller.principal.role != Role::Admin {
        return Err(forbidden());
    }
    if !caller.scopes.is_full() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "admin work needs the admin's own token or client certificate, not a JWT",
        ));
    }
    Ok(())
}

fn refused(e: PrincipalError) -> Problem {
    match e {
        PrincipalError::LastAdmin(_) => {
            Problem::new(StatusCode::CONFLICT, "last admin", e.to_string())
        }
        PrincipalError::Exists(_) => Problem::new(StatusCode::CONFLICT, "exists", e.to_string()),
        PrincipalError::Unknown(_) => {
            Problem::new(StatusCode::NOT_FOUND, "not found", e.to_string())
        }
        PrincipalError::Field(..) => {
            Problem::new(StatusCode::BAD_REQUEST, "bad principal", e.to_string())
        }
        other => {
            tracing::error!(error = %other, "principals");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the principal store could not be written",
            )
        }
    }
}

/// `POST /v1/admin/principals`: 201 with the principal and its token (shown this once).
pub async fn add(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let (access, caller) = caller(&s, &headers, peer, None)?;
    admin_only(&caller)?;
    let req: AddPrincipal = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad principal",
                e.to_string(),
            ))
        }
    };
    let added = req
        .resolve(&s.keyring)
        .and_then(|n| access.principals.add(&n, now_ms()));
    match added {
        Ok((p, token)) => {
            tracing::info!(principal = %p.id, role = p.role.name(), by = %caller.principal.id, "principal added");
            Ok((
                StatusCode::CREATED,
                Json(json!({"principal": p, "token": token})),
            )
                .into_response())
        }
        Err(e) => Err(refused(e)),
    }
}

/// `GET /v1/admin/principals`.
pub async fn list(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (access, caller) = caller(&s, &headers, peer, None)?;
    admin_only(&caller)?;
    Ok(Json(json!({"principals": access.principals.list()})).into_response())
}

/// `DELETE /v1/admin/principals/{id}`: revoked at once.
pub async fn revoke(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (access, caller) = caller(&s, &headers, peer, None)?;
    admin_only(&caller)?;
    match access.principals.revoke(&id, now_ms()) {
        Ok(p) => {
            tracing::info!(principal = %p.id, by = %caller.principal.id, "principal revoked");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(e) => Err(refused(e)),
    }
}
