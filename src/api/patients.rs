//! Per-patient endpoints: the records a caller may see, the FHIR read API over them, the
//! patient's grants (FHIR Consent), their access log, and erasure.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::access::{
    caller, filter_bundle, find, forbidden, gone, resource_visible, Access, AccessWhat, Caller,
    Found, Standing,
};
use super::{off_runtime, ApiState, Problem};
use crate::consent::{self, fhir, Applicable, GrantBody, Resource, RevokeBody, Role};
use crate::envelope::{now_ms, RecordId};
use crate::ledger::{EventKind, Ledger};
use crate::seal::keyring::PatientIndex;

fn bad_request(title: &'static str, detail: &str) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, title, detail)
}

fn patient_of(pid: &str) -> Result<PatientIndex, Problem> {
    PatientIndex::from_key_id(pid).ok_or_else(|| {
        bad_request(
            "bad patient id",
            "a patient id is p- and 32 lowercase hex characters",
        )
    })
}

/// The request's caller, and the patient `pid` names, who must not be erased.
fn patient_caller(
    s: &ApiState,
    headers: &HeaderMap,
    peer: SocketAddr,
    pid: &str,
    purpose: Option<&str>,
) -> Result<(Access, Caller, PatientIndex), Problem> {
    let (access, caller) = caller(s, headers, peer, purpose)?;
    let patient = patient_of(pid)?;
    not_erased(s, &patient)?;
    Ok((access, caller, patient))
}

/// Fails with 410 when the patient was erased.
fn not_erased(s: &ApiState, patient: &PatientIndex) -> Result<(), Problem> {
    match s.keyring.erased_at(&patient.key_id()) {
        Ok(None) => Ok(()),
        Ok(Some(at)) => Err(gone(at)),
        Err(e) => {
            tracing::error!(error = %e, "keyring");
            Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the key store cannot be read now",
            ))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub purpose: Option<String>,
    /// A resource type the record must show.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Only records received at or after this Unix ms.
    pub since: Option<u64>,
    /// For the FHIR search: the patient id.
    pub patient: Option<String>,
}

/// One of the patient's records as a caller may see it.
struct Seen {
    found: Found,
    /// The derived Bundle (or FHIR record) filtered to what the caller may see; `None` when
    /// the record has no FHIR form.
    fhir: Option<Value>,
    types: Vec<String>,
}

/// Every record of `patient` the caller may see something of, oldest first: O(that patient's
/// records), each opened once.
fn visible_records(
    s: &ApiState,
    access: &Access,
    caller: &Caller,
    patient: &PatientIndex,
    since: Option<u64>,
) -> Result<(Vec<Seen>, &'static str), Problem> {
    let entries = s
        .vault
        .patient_entries(patient, &[medanchor_merkle::LEAF_RECORD_STORED])
        .map_err(|e| {
            tracing::error!(error = %e, "patient index");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                "reading the patient index failed",
            )
        })?;
    let now = now_ms();
    let mut out = Vec::new();
    let mut decision = "deny";
    let mut grants = None;
    for e in entries {
        if since.is_some_and(|t| e.record_id.unix_ms() < t) {
            continue;
        }
        let Some(found) = find(s, &e.record_id)? else {
            continue;
        };
        let standing = access.standing(s, caller, patient, Some(&found.raw.meta.sender))?;
        let applicable;
        let scopes = &caller.scopes;
        let visible: Box<dyn Fn(&Resource<'_>) -> bool> = match &standing {
            Standing::None => continue,
            Standing::Grants(g) => {
                let g = grants.get_or_insert_with(|| g.clone());
                applicable =
                    Applicable::select(g.active(), &caller.requester(), caller.purpose, now);
                if applicable.none() {
                    continue;
                }
                Box::new(|r: &Resource<'_>| scopes.allows(r.kind) && applicable.allows(r))
            }
            _ => Box::new(|r: &Resource<'_>| scopes.allows(r.kind)),
        };
        let record = found.raw_id.to_string();
        let bytes = match &found.derived {
            Some((_, d)) => Some(&d.bundle),
            None if found.raw.meta.format == "fhir" => Some(&found.raw.raw),
            None => None,
        };
        let (fhir, types) = match bytes.and_then(|b| serde_json::from_slice::<Value>(b).ok()) {
            Some(mut v) if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") => {
                let types = filter_bundle(&mut v, &record, &*visible);
                (Some(v), types)
            }
            Some(v) => {
                if resource_visible(&v, &record, &*visible) {
                    let k = v
                        .get("resourceType")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    (Some(v), vec![k])
                } else {
                    (None, Vec::new())
                }
            }
            // No FHIR form: only those who may see the whole record learn of it.
            None => match &standing {
                Standing::Grants(_) => (None, Vec::new()),
                _ if !scopes.allows_everything() => (None, Vec::new()),
                _ => (None, vec!["HL7v2".to_string()]),
            },
        };
        if types.is_empty() {
            continue;
        }
        if decision != "break_glass" {
            decision = standing.decision();
        }
        out.push(Seen { found, fhir, types });
    }
    Ok((out, decision))
}

/// [`visible_records`] on the blocking pool ([`off_runtime`]), and `then` made of them there
/// (the answer's body); the caller comes back with it, for the access event.
async fn visible_off_runtime<T: Send + 'static>(
    s: &ApiState,
    access: &Access,
    caller: Caller,
    patient: PatientIndex,
    since: Option<u64>,
    then: impl FnOnce(&ApiState, Vec<Seen>) -> T + Send + 'static,
) -> Result<(Caller, T, &'static str), Problem> {
    let (s, access) = (s.clone(), access.clone());
    off_runtime(move || {
        let (seen, decision) = visible_records(&s, &access, &caller, &patient, since)?;
        Ok((caller, then(&s, seen), decision))
    })
    .await
}

/// `GET /v1/patients/{pid}/records?type=&since=`.
pub async fn list_records(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(pid): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (access, caller, patient) = patient_caller(&s, &headers, peer, &pid, q.purpose.as_deref())?;
    let kind = q.kind.clone();
    let (caller, listed, decision) =
        visible_off_runtime(&s, &access, caller, patient, q.since, move |_, seen| {
            seen.iter()
                .filter(|r| kind.as_ref().is_none_or(|k| r.types.contains(k)))
                .map(|r| {
                    json!({
                        "record_id": r.found.raw_id.to_string(),
                        "received_ms": r.found.raw.meta.received_ms,
                        "derived_id": r.found.derived.as_ref().map(|(id, _)| id.to_string()),
                        "resource_types": r.types,
                    })
                })
                .collect::<Vec<Value>>()
        })
        .await?;
    let what = AccessWhat {
        what: "records",
        record: None,
        types: Vec::new(),
    };
    access
        .record_access(&s, &caller, &patient, &what, decision)
        .await?;
    Ok(Json(json!({ "patient": pid, "records": listed })).into_response())
}

/// `GET /fhir/Patient/{pid}/$everything` and `GET /fhir/{type}?patient={pid}`: a FHIR R4
/// searchset Bundle of what the caller may see, newest version of each resource.
async fn search(
    s: ApiState,
    peer: SocketAddr,
    headers: HeaderMap,
    pid: String,
    kind: Option<String>,
    q: ListQuery,
) -> Result<Response, Problem> {
    let (access, caller, patient) = patient_caller(&s, &headers, peer, &pid, q.purpose.as_deref())?;
    let wanted = kind.clone();
    let (caller, body, decision) =
        visible_off_runtime(&s, &access, caller, patient, q.since, move |_, seen| {
            searchset(seen, wanted.as_deref())
        })
        .await?;
    let what = AccessWhat {
        what: "fhir",
        record: None,
        types: kind.into_iter().collect(),
    };
    access
        .record_access(&s, &caller, &patient, &what, decision)
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/fhir+json")], body).into_response())
}

/// A FHIR searchset Bundle of the resources in `seen` (of type `kind`, if given), the newest
/// version of each.
fn searchset(seen: Vec<Seen>, kind: Option<&str>) -> Vec<u8> {
    let mut entries: Vec<(String, Value)> = Vec::new();
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in seen {
        let Some(v) = r.fhir else { continue };
        let resources: Vec<(String, Value)> =
            if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
                v.get("entry")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| {
                        Some((
                            e.get("fullUrl")?.as_str()?.to_string(),
                            e.get("resource")?.clone(),
                        ))
                    })
                    .collect()
            } else {
                let url = format!(
                    "{}/{}",
                    v.get("resourceType").and_then(Value::as_str).unwrap_or(""),
                    v.get("id").and_then(Value::as_str).unwrap_or("")
                );
                vec![(url, v)]
            };
        for (url, res) in resources {
            if kind.is_some_and(|k| res.get("resourceType").and_then(Value::as_str) != Some(k)) {
                continue;
            }
            // Records come oldest first: a later version of a resource replaces the earlier.
            match at.get(&url) {
                Some(&i) => entries[i].1 = res,
                None => {
                    at.insert(url.clone(), entries.len());
                    entries.push((url, res));
                }
            }
        }
    }
    let entry: Vec<Value> = entries
        .into_iter()
        .map(|(u, r)| json!({"fullUrl": u, "resource": r, "search": {"mode": "match"}}))
        .collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entry.len(),
        "entry": entry,
    });
    serde_json::to_vec(&bundle).expect("JSON")
}

pub async fn everything(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(pid): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    search(s, peer, headers, pid, None, q).await
}

pub async fn search_type(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(kind): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let Some(pid) = q.patient.clone() else {
        return Err(bad_request(
            "patient required",
            "search with ?patient=<patient id>: this server answers per patient",
        ));
    };
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(bad_request(
            "bad resource type",
            "a FHIR resource type name",
        ));
    }
    search(s, peer, headers, pid, Some(kind), q).await
}

/// `GET /v1/patients/{pid}/charges`: the patient's statement of services billed to them (the
/// ChargeItems mapped from DFT and BAR messages), each with the date, code, quantity, amount,
/// performer and the proof of the record it came from, so a patient can spot a service billed
/// but never received. For the patient themself.
pub async fn charges(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(pid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (access, caller, patient) = patient_caller(&s, &headers, peer, &pid, None)?;
    if !caller.principal.is_patient(&patient) || !caller.scopes.allows("ChargeItem") {
        return refuse_read(&s, &access, &caller, &patient, "charges").await;
    }
    let (caller, out, _) = visible_off_runtime(&s, &access, caller, patient, None, |s, seen| {
        charge_lines(s, &seen)
    })
    .await?;
    let what = AccessWhat {
        what: "charges",
        record: None,
        types: vec!["ChargeItem".into()],
    };
    access
        .record_access(&s, &caller, &patient, &what, "permit")
        .await?;
    Ok(Json(json!({"patient": pid, "charges": out})).into_response())
}

/// The statement's lines: each ChargeItem in `seen` with its performers and the proof of the
/// record it came from (one proof per record).
fn charge_lines(s: &ApiState, seen: &[Seen]) -> Vec<Value> {
    let mut out = Vec::new();
    for r in seen {
        let Some(bundle) = &r.fhir else { continue };
        let entries = bundle
            .get("entry")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let by_url = |u: &str| {
            entries
                .iter()
                .find(|e| e.get("fullUrl").and_then(Value::as_str) == Some(u))
                .and_then(|e| e.get("resource"))
        };
        let proven = r
            .found
            .derived
            .as_ref()
            .map_or(r.found.raw_id, |(id, _)| *id);
        let mut proof = Value::Null;
        for e in &entries {
            let Some(item) = e.get("resource") else {
                continue;
            };
            if item.get("resourceType").and_then(Value::as_str) != Some("ChargeItem") {
                continue;
            }
            if proof.is_null() {
                proof = s
                    .ledger
                    .proof(&proven)
                    .ok()
                    .and_then(|p| serde_json::to_value(p).ok())
                    .unwrap_or(Value::Null);
            }
            let performers: Vec<Value> = item
                .get("performer")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.pointer("/actor/reference").and_then(Value::as_str))
                .filter_map(by_url)
                .map(|who| {
                    json!({
                        "resourceType": who.get("resourceType"),
                        "name": who.pointer("/name/0/text")
                            .or_else(|| who.pointer("/name/0/family"))
                            .or_else(|| who.get("name").filter(|n| n.is_string())),
                    })
                })
                .collect();
            out.push(json!({
                "record_id": r.found.raw_id.to_string(),
                "proven_record_id": proven.to_string(),
                "date": item.get("occurrenceDateTime")
                    .or_else(|| item.pointer("/occurrencePeriod/start")),
                "code": item.get("code"),
                "quantity": item.pointer("/quantity/value"),
                "amount": item.get("priceOverride"),
                "performers": performers,
                "charge_item": item,
                "proof": proof,
            }));
        }
    }
    out
}

/// Refuses a read of the patient's data the caller has no standing or scope for, after writing
/// the refusal into the patient's access log.
async fn refuse_read(
    s: &ApiState,
    access: &Access,
    caller: &Caller,
    patient: &PatientIndex,
    what: &'static str,
) -> Result<Response, Problem> {
    let w = AccessWhat {
        what,
        record: None,
        types: Vec::new(),
    };
    match access.record_access(s, caller, patient, &w, "deny").await {
        Err(r) if r.status != StatusCode::GONE => Err(r),
        _ => Err(forbidden()),
    }
}

/// Whether the caller may manage (or read) this patient's grants and log: the patient, an
/// admin, and for reading also an auditor.
fn manages(caller: &Caller, patient: &PatientIndex, reading: bool) -> bool {
    caller.principal.is_patient(patient)
        || caller.principal.role == Role::Admin
        || (reading && caller.principal.role == Role::Auditor)
}

/// `POST /v1/consents`: JSON `{"patient", "grant", "reason"}` or a FHIR R4 Consent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub patient: Option<String>,
    pub grant: consent::Grant,
    pub reason: Option<String>,
}

fn check_reason(reason: &Option<String>, admin: bool) -> Result<(), Problem> {
    match reason {
        None if admin => Err(bad_request(
            "reason required",
            "an admin acting for a patient gives a reason (field reason, or ?reason=)",
        )),
        Some(r) if r.len() > 512 || r.chars().any(char::is_control) => Err(bad_request(
            "bad reason",
            "a reason is one line of at most 512 bytes",
        )),
        _ => Ok(()),
    }
}

pub async fn post_consent(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let (access, caller) = caller(&s, &headers, peer, None)?;
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return Err(bad_request("bad JSON", "the body is not JSON"));
    };
    let (grant, named, reason) = if v.get("resourceType").is_some() {
        match fhir::from_consent(&v) {
            Ok(p) => (p.grant, p.patient, None),
            Err(e) => return Err(bad_request("bad Consent", &e.to_string())),
        }
    } else {
        match serde_json::from_value::<GrantRequest>(v) {
            Ok(r) => (r.grant, r.patient, r.reason),
            Err(e) => return Err(bad_request("bad grant", &e.to_string())),
        }
    };
    if let Err(e) = grant.check() {
        return Err(bad_request("bad grant", &e.to_string()));
    }
    let pid = match named {
        Some(p) => p,
        None if caller.principal.role == Role::Patient && caller.principal.patients.len() == 1 => {
            caller.principal.patients[0].clone()
        }
        None => {
            return Err(bad_request(
                "patient required",
                "name the patient (field patient, or Consent.patient.identifier with system urn:medanchor:patient)",
            ))
        }
    };
    let patient = patient_of(&pid).and_then(|p| not_erased(&s, &p).map(|()| p))?;
    if !manages(&caller, &patient, false) || !caller.scopes.permits("Consent", b'c') {
        return Err(forbidden());
    }
    let admin = caller.principal.role == Role::Admin && !caller.principal.is_patient(&patient);
    check_reason(&reason, admin)?;
    // Records named by a grant are this patient's, by their raw record's id (what reads compare).
    let mut grant = grant;
    grant.normalize();
    for r in grant.records.iter_mut() {
        let found = RecordId::parse(r).map(|id| find(&s, &id));
        match found {
            Some(Ok(Some(f))) if f.patient == Some(patient) => *r = f.raw_id.to_string(),
            Some(Err(p)) if p.status.is_server_error() => return Err(p),
            // Another patient's record (erased or not) is refused like no record at all.
            _ => {
                return Err(bad_request(
                    "bad grant",
                    "field records: each a record of this patient",
                ))
            }
        }
    }
    match access.principals.get(&grant.grantee) {
        Some(p) if matches!(p.role, Role::Practitioner | Role::Organization) => {}
        _ => {
            return Err(bad_request(
                "bad grant",
                "field grantee: a practitioner or organization principal",
            ))
        }
    }
    let body = GrantBody {
        grant,
        by: caller.principal.id.clone(),
        reason,
    };
    let bytes = serde_json::to_vec(&body).expect("JSON");
    // Loaded before the event is stored, so the new grant is noted in the book, not missed.
    if let Err(consent::BookError::Read(e)) = access.book.grants(&patient, &*s.vault, &s.keyring) {
        tracing::error!(error = %e, "reading grants");
    }
    let id = access
        .store_event(&s, EventKind::ConsentGranted, &patient, bytes)
        .await?;
    let rid = RecordId::parse(&id).expect("receipt id");
    let at_ms = rid.unix_ms();
    let stored = consent::StoredGrant {
        id: rid,
        body,
        at_ms,
        revoked_ms: None,
    };
    access
        .book
        .note(&patient, |g| g.grants.push(stored.clone()));
    let consent = fhir::to_consent(&fhir::Stated {
        id: &id,
        patient: &pid,
        grant: &stored.body.grant,
        by: &stored.body.by,
        at_ms,
        revoked: false,
    });
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/fhir+json".to_string()),
            (header::LOCATION, format!("/v1/consents/{id}")),
        ],
        serde_json::to_vec(&consent).expect("JSON"),
    )
        .into_response())
}

/// `GET /v1/patients/{pid}/consents`: a FHIR searchset Bundle of the patient's Consents,
/// revoked ones `inactive`.
pub async fn list_consents(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(pid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (access, caller, patient) = patient_caller(&s, &headers, peer, &pid, None)?;
    if !manages(&caller, &patient, true) || !caller.scopes.allows("Consent") {
        return refuse_read(&s, &access, &caller, &patient, "consents").await;
    }
    let grants = {
        let (s, access) = (s.clone(), access.clone());
        off_runtime(
            move || match access.book.grants(&patient, &*s.vault, &s.keyring) {
                Ok(g) => Ok(g),
                Err(consent::BookError::Erased(at)) => Err(gone(at)),
                Err(e) => {
                    tracing::error!(error = %e, "reading grants");
                    Err(Problem::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal error",
                        "reading the grants failed",
                    ))
                }
            },
        )
        .await?
    };
    let entry: Vec<Value> = grants
        .grants
        .iter()
        .map(|g| {
            let id = g.id.to_string();
            json!({
                "fullUrl": format!("urn:medanchor:consent:{id}"),
                "resource": fhir::to_consent(&fhir::Stated {
                    id: &id,
                    patient: &pid,
                    grant: &g.body.grant,
                    by: &g.body.by,
                    at_ms: g.at_ms,
                    revoked: g.revoked_ms.is_some(),
                }),
                "search": {"mode": "match"},
            })
        })
        .collect();
    let what = AccessWhat {
        what: "consents",
        record: None,
        types: vec!["Consent".into()],
    };
    access
        .record_access(&s, &caller, &patient, &what, "permit")
        .await?;
    let bundle = json!({"resourceType": "Bundle", "type": "searchset", "total": entry.len(), "entry": entry});
    Ok((
        [(header::CONTENT_TYPE, "application/fhir+json")],
        serde_json::to_vec(&bundle).expect("JSON"),
    )
        .into_response())
}

/// Entries of a long list a page at a time.
#[derive(Debug, Default, Deserialize)]
pub struct Page {
    /// The last entry id of the page before.
    pub after: Option<String>,
    pub limit: Option<usize>,
}

const DEFAULT_PAGE: usize = 500;
const MAX_PAGE: usize = 5_000;

#[derive(Debug, Default, Deserialize)]
pub struct ReasonQuery {
    pub reason: Option<String>,
}

/// `DELETE /v1/consents/{id}?reason=`: the patient (or an admin, with a reason) revokes a grant;
/// the next request already sees it gone.
pub async fn delete_consent(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    Query(q): Query<ReasonQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (access, caller) = caller(&s, &headers, peer, None)?;
    let Some(rid) = RecordId::parse(&id) else {
        return Err(bad_request(
            "bad consent id",
            "a consent id is 32 hex characters",
        ));
    };
    let event = match consent::open_event(&*s.vault, &s.keyring, &rid) {
        Ok(Some((e, _))) if e.kind == EventKind::ConsentGranted => e,
        Ok(_) => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "not found",
                "no such consent",
            ))
        }
        Err(consent::BookError::Erased(at)) => return Err(gone(at)),
        Err(e) => {
            tracing::error!(error = %e, "reading a grant");
            return Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                "reading the grant failed",
            ));
        }
    };
    let Some(patient) = PatientIndex::from_key_id(&event.patient) else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not found",
            "no such consent",
        ));
    };
    if !manages(&caller, &patient, false) || !caller.scopes.permits("Consent", b'd') {
        // The same answer as for an id that is no grant: a stranger learns nothing.
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not found",
            "no such consent",
        ));
    }
    let admin = caller.principal.role == Role::Admin && !caller.principal.is_patient(&patient);
    check_reason(&q.reason, admin)?;
    let grants = match access.book.grants(&patient, &*s.vault, &s.keyring) {
        Ok(g) => g,
        Err(consent::BookError::Erased(at)) => return Err(gone(at)),
        Err(e) => {
            tracing::error!(error = %e, "reading grants");
            return Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                "reading the grants failed",
            ));
        }
    };
    if grants
        .grants
        .iter()
        .any(|g| g.id == rid && g.revoked_ms.is_some())
    {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let body = RevokeBody {
        revokes: id.clone(),
        by: caller.principal.id.clone(),
        reason: q.reason,
    };
    let stored = access
        .store_event(
            &s,
            EventKind::ConsentRevoked,
            &patient,
            serde_json::to_vec(&body).expect("JSON"),
        )
        .await?;
    let at = RecordId::parse(&stored).map_or_else(now_ms, |r| r.unix_ms());
    access.book.note(&patient, |g| {
        if let Some(g) = g.grants.iter_mut().find(|g| g.id == rid) {
            g.revoked_ms.get_or_insert(at);
        }
    });
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/patients/{pid}/access-log`: every event about the patient's data (reads, grants,
/// revocations), oldest first, each with its proof once anchored. Break-the-glass reads are
/// flagged `break_glass: true`.
pub async fn access_log(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(pid): Path<String>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (access, caller, patient) = patient_caller(&s, &headers, peer, &pid, None)?;
    if !manages(&caller, &patient, true) || !caller.scopes.allows("AuditEvent") {
        // A refused look at someone's log is itself a read attempt the patient should see.
        return refuse_read(&s, &access, &caller, &patient, "access_log").await;
    }
    // One page: entries after `after` (an entry id), at most `limit` of them; `next` names the
    // page after it. A log that grows with every read is never answered whole.
    let after = match page.after.as_deref().map(RecordId::parse) {
        None => None,
        Some(Some(id)) => Some(id),
        Some(None) => {
            return Err(bad_request(
                "bad cursor",
                "after is an entry id (32 hex characters)",
            ))
        }
    };
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad_request("bad limit", "limit is 1 to 5000"));
    }
    let (out, next) = {
        let s = s.clone();
        off_runtime(move || log_page(&s, &patient, after, limit)).await?
    };
    let what = AccessWhat {
        what: "access_log",
        record: None,
        types: vec!["AuditEvent".into()],
    };
    access
        .record_access(&s, &caller, &patient, &what, "permit")
        .await?;
    Ok(Json(json!({"patient": pid, "entries": out, "next": next})).into_response())
}

/// One page of the patient's access log (run by [`off_runtime`]): the events after `after`, at
/// most `limit`, each opened and with its proof; and the cursor of the next page.
fn log_page(
    s: &ApiState,
    patient: &PatientIndex,
    after: Option<RecordId>,
    limit: usize,
) -> Result<(Vec<Value>, Option<String>), Problem> {
    let kinds = [
        EventKind::ConsentGranted.byte(),
        EventKind::ConsentRevoked.byte(),
        EventKind::RecordAccessed.byte(),
    ];
    let entries = match s.vault.patient_entries(patient, &kinds) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "patient index");
            return Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                "reading the access log failed",
            ));
        }
    };
    let mut entries: Vec<_> = entries
        .into_iter()
        .filter(|e| after.is_none_or(|a| e.record_id.0 > a.0))
        .take(limit + 1)
        .collect();
    let next = (entries.len() > limit).then(|| entries[limit - 1].record_id.to_string());
    entries.truncate(limit);
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let (event, commitment) = match consent::open_event(&*s.vault, &s.keyring, &e.record_id) {
            Ok(Some(x)) => x,
            Ok(None) => continue,
            Err(consent::BookError::Erased(at)) => return Err(gone(at)),
            Err(err) => {
                tracing::error!(error = %err, "reading an event");
                return Err(Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error",
                    "reading the access log failed",
                ));
            }
        };
        let body: Value = serde_json::from_slice(&event.body).unwrap_or(Value::Null);
        let break_glass = body
            .get("outcomeDesc")
            .and_then(Value::as_str)
            .is_some_and(|d| d == "break_glass");
        let proof = match s.ledger.proof(&e.record_id) {
            Ok(p) => serde_json::to_value(p).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        out.push(json!({
            "id": e.record_id.to_string(),
            "kind": event.kind.name(),
            "at_ms": event.at_ms,
            "commitment": hex::encode(commitment),
            "break_glass": break_glass,
            "event": body,
            "proof": proof,
        }));
    }
    Ok((out, next))
}

/// `DELETE /v1/patients/{pid}?reason=` (admin): destroys the patient's data key, then stores
/// the erasure event (under the gateway key). Repeating it after a failure finishes it.
pub async fn erase(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(pid): Path<String>,
    Query(q): Query<ReasonQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (access, caller) = caller(&s, &headers, peer, None)?;
    super::admin::admin_only(&caller)?;
    let patient = patient_of(&pid)?;
    let Some(reason) = q.reason.clone() else {
        return Err(bad_request("reason required", "erasure needs ?reason="));
    };
    check_reason(&q.reason, true)?;
    let destroyed = match s.keyring.destroy(&patient.key_id(), now_ms()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "destroying a data key");
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the key store could not be written; nothing was erased",
            ));
        }
    };
    access.book.forget(&patient);
    let body = consent::ErasureBody {
        by: caller.principal.id.clone(),
        reason,
        keys_destroyed: u32::from(destroyed),
    };
    let id = access
        .store_event(
            &s,
            EventKind::PatientErased,
            &patient,
            serde_json::to_vec(&body).expect("JSON"),
        )
        .await?;
    tracing::info!(event = %id, "patient erased");
    Ok(
        Json(json!({"patient": pid, "erasure_event": id, "keys_destroyed": u32::from(destroyed)}))
            .into_response(),
    )
}
