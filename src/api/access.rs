//! The read side: a request's principal and purpose, the decision for one patient's data, the
//! access event every read writes, and the record reads themselves.
//!
//! A read is: authenticate → find the record (or the patient's records through the patient
//! index) → decide (deny beats permit; break-the-glass allowed and flagged) → decrypt → filter
//! to what the grants cover → store the access event (an AuditEvent, sealed under the patient's
//! key and anchored) → answer. A read whose access event cannot be stored is not answered.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{auth, internal, ApiState, Problem};
use crate::consent::{self, Applicable, Book, Principal, Principals, Requester, Resource, Role};
use crate::envelope::{now_ms, RecordId};
use crate::ledger::EventKind;
use crate::pipeline::{EventError, Pipeline};
use crate::record::{Content, DerivedRecord, Record};
use crate::seal::keyring::PatientIndex;
use crate::seal::KeyringError;

/// What the read side needs besides the stores.
#[derive(Clone)]
pub struct Access {
    pub pipeline: Arc<Pipeline>,
    pub principals: Arc<Principals>,
    pub book: Arc<Book>,
    pub failures: Arc<auth::Failures>,
    /// Requests per principal (`http.requests_per_principal_per_second`).
    pub budgets: Arc<auth::Budgets>,
    /// JWT access tokens from an identity provider, when configured.
    pub jwt: Option<Arc<super::jwt::JwtVerifier>>,
}

/// An authenticated request.
pub struct Caller {
    pub principal: Arc<Principal>,
    /// For a practitioner, their organization's principal (if it exists and is not revoked).
    pub organization: Option<Arc<Principal>>,
    /// Purpose of use (`treatment` unless the request says otherwise).
    pub purpose: &'static str,
    /// What the token's scopes let it read (a JWT's SMART scopes; everything for a principal's
    /// own token). They only narrow what the principal's standing allows.
    pub scopes: super::jwt::Scopes,
}

impl Caller {
    pub fn requester(&self) -> Requester<'_> {
        Requester {
            principal: &self.principal.id,
            organization: self.organization.as_deref().map(|o| o.id.as_str()),
        }
    }

    fn role(&self) -> Role {
        self.principal.role
    }
}

/// `?purpose=` on any read.
#[derive(Debug, Default, Deserialize)]
pub struct PurposeQuery {
    pub purpose: Option<String>,
}

/// The read side's state and the request's caller, or the refusal.
pub fn caller(
    s: &ApiState,
    headers: &HeaderMap,
    peer: SocketAddr,
    purpose: Option<&str>,
) -> Result<(Access, Caller), Problem> {
    let Some(access) = s.access.clone() else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "read side is off",
            "this gateway serves no reads",
        ));
    };
    let (principal, scopes) = auth::authenticate(
        &access.principals,
        access.jwt.as_deref(),
        &access.failures,
        headers,
        peer.ip(),
        &s.metrics,
    )?;
    if let Err(seconds) = access
        .budgets
        .take(&principal.id, std::time::Instant::now())
    {
        s.metrics.rate_limited.inc();
        return Err(Problem {
            retry_after: Some(seconds),
            ..Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests",
                "this principal's requests are over http.requests_per_principal_per_second",
            )
        });
    }
    let purpose = match purpose {
        None => "treatment",
        Some(p) => consent::policy::PURPOSES
            .iter()
            .copied()
            .find(|known| *known == p)
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "bad purpose",
                    format!("purpose is one of {}", consent::policy::PURPOSES.join(", ")),
                )
            })?,
    };
    let organization = principal
        .organization
        .as_deref()
        .and_then(|o| access.principals.get(o))
        .filter(|o| o.revoked_ms.is_none() && o.role == Role::Organization);
    Ok((
        access,
        Caller {
            principal,
            organization,
            purpose,
            scopes,
        },
    ))
}

/// Where a caller stands with one patient's record.
pub enum Standing {
    /// The patient themself.
    Own,
    /// The organization that sent the record (or one of its practitioners).
    Sender,
    /// A practitioner reading with purpose `emergency`: allowed, flagged.
    BreakGlass,
    /// A grantee: what the patient's grants allow (possibly nothing).
    Grants(Arc<consent::PatientGrants>),
    /// No standing at all (another patient, an auditor or admin asking for content).
    None,
}

impl Standing {
    pub fn decision(&self) -> &'static str {
        match self {
            Standing::BreakGlass => "break_glass",
            Standing::None => "deny",
            _ => "permit",
        }
    }
}

fn unavailable(detail: &str) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
}

pub fn gone(at_ms: u64) -> Problem {
    let mut at = String::new();
    crate::normalize::value::instant_from_ms(at_ms, &mut at);
    Problem::new(
        StatusCode::GONE,
        "erased",
        format!("the patient's data was erased at {at}; proofs still verify, content is gone"),
    )
}

pub fn forbidden() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "no grant of the patient covers this request",
    )
}

fn not_found(what: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not found",
        format!("no such {what}"),
    )
}

impl Access {
    /// The caller's standing with `patient` for a record from `sender`.
    pub fn standing(
        &self,
        s: &ApiState,
        caller: &Caller,
        patient: &PatientIndex,
        sender: Option<&str>,
    ) -> Result<Standing, Problem> {
        let p = &caller.principal;
        if p.is_patient(patient) {
            return Ok(Standing::Own);
        }
        let sent = |o: &Principal| sender.is_some_and(|s| o.sent(s));
        match p.role {
            Role::Organization if sent(p) => return Ok(Standing::Sender),
            Role::Practitioner if caller.organization.as_deref().is_some_and(sent) => {
                return Ok(Standing::Sender)
            }
            Role::Practitioner if caller.purpose == "emergency" => return Ok(Standing::BreakGlass),
            Role::Practitioner | Role::Organization => {}
            _ => return Ok(Standing::None),
        }
        match self.book.grants(patient, &*s.vault, &s.keyring) {
            Ok(g) => Ok(Standing::Grants(g)),
            Err(consent::BookError::Erased(at)) => Err(gone(at)),
            Err(e) => {
                tracing::error!(error = %e, "reading grants");
                Err(internal("reading the patient's grants"))
            }
        }
    }

    /// Stores the access event of a read (allowed or denied) and waits until it is durable,
    /// then counts the read. A read is answered only after this succeeds.
    pub async fn record_access(
        &self,
        s: &ApiState,
        caller: &Caller,
        patient: &PatientIndex,
        what: &AccessWhat<'_>,
        decision: &'static str,
    ) -> Result<String, Problem> {
        let body = audit_event(caller, what, decision, now_ms());
        let id = match self
            .pipeline
            .record_event(EventKind::RecordAccessed, patient, body)
            .await
        {
            // Nothing of this patient is stored, so nothing was read: no event to keep.
            Err(EventError::NoPatient) => return Ok(String::new()),
            stored => self.stored(s, EventKind::RecordAccessed, stored)?,
        };
        s.metrics
            .reads
            .with_label_values(&[what.what, decision])
            .inc();
        Ok(id)
    }

    /// Stores an event, answering the failures the way every handler does.
    pub async fn store_event(
        &self,
        s: &ApiState,
        kind: EventKind,
        patient: &PatientIndex,
        body: Vec<u8>,
    ) -> Result<String, Problem> {
        let stored = self.pipeline.record_event(kind, patient, body).await;
        self.stored(s, kind, stored)
    }

    /// Answers an event's storage the way every handler does.
    fn stored(
        &self,
        s: &ApiState,
        kind: EventKind,
        stored: Result<crate::envelope::Receipt, EventError>,
    ) -> Result<String, Problem> {
        match stored {
            Ok(receipt) => {
                s.metrics.events.with_label_values(&[kind.name()]).inc();
                Ok(receipt.record_id)
            }
            Err(EventError::Erased(at)) => Err(gone(at)),
            // Only a read of a patient with no key gets here; it reads nothing (record_access).
            Err(EventError::NoPatient) => Err(Problem::new(
                StatusCode::NOT_FOUND,
                "no such patient",
                "the gateway holds nothing of this patient",
            )),
            Err(EventError::TooLarge(_)) => Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too large",
                "the event does not fit a record",
            )),
            Err(EventError::Unavailable(why)) => {
                tracing::warn!(reason = %why, "event not stored");
                Err(unavailable(
                    "the access log cannot be written now; nothing was read. Try again",
                ))
            }
        }
    }
}

/// What an access event says was read.
pub struct AccessWhat<'a> {
    /// `record`, `records`, `fhir`, `consents`, `access_log`, `proof`.
    pub what: &'static str,
    /// The record read, if one.
    pub record: Option<&'a str>,
    /// The resource types returned.
    pub types: Vec<String>,
}

/// The AuditEvent an access event holds (FHIR R4; names principals and record ids, which is
/// what the patient needs to see, and is sealed under the patient's key).
pub fn audit_event(caller: &Caller, what: &AccessWhat<'_>, decision: &str, at_ms: u64) -> Vec<u8> {
    let mut recorded = String::new();
    crate::normalize::value::instant_from_ms(at_ms, &mut recorded);
    let reason = |code: &str| json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": code}]});
    let mut purposes = vec![reason(match caller.purpose {
        "payment" => "HPAYMT",
        "research" => "HRESCH",
        "emergency" => "ETREAT",
        _ => "TREAT",
    })];
    if decision == "break_glass" {
        purposes.push(reason("BTG"));
    }
    let mut entity = json!({
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
        "name": what.what,
    });
    if let Some(r) = what.record {
        entity["what"] = json!({"identifier": {"system": "urn:medanchor:record", "value": r}});
    }
    if !what.types.is_empty() {
        entity["detail"] = json!([{"type": "resourceTypes", "valueString": what.types.join(",")}]);
    }
    let v = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
        "action": "R",
        "recorded": recorded,
        "outcome": if decision == "deny" { "4" } else { "0" },
        "outcomeDesc": decision,
        "purposeOfEvent": purposes,
        "agent": [{
            "who": {"identifier": {"system": "urn:medanchor:principal", "value": caller.principal.id}},
            "role": [{"text": caller.principal.role.name()}],
            "requestor": true
        }],
        "source": {"observer": {"display": "medanchor"}},
        "entity": [entity],
    });
    serde_json::to_vec(&v).expect("JSON")
}

/// A record as a read finds it: its patient, the raw record and, when it has one, the current
/// derived record (or the one asked for by id).
pub struct Found {
    pub patient: Option<PatientIndex>,
    pub raw_id: RecordId,
    pub raw: Record,
    pub derived: Option<(RecordId, DerivedRecord)>,
}

/// Opens one stored record's content under its key. `Ok(None)`: no such record.
fn open(s: &ApiState, id: &RecordId) -> Result<Option<(Option<PatientIndex>, Content)>, Problem> {
    let stored = match s.vault.get(id) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::error!(error = %e, "reading a record");
            return Err(internal("reading the record"));
        }
    };
    let header = crate::seal::parse_header(&stored.sealed).map_err(|e| {
        tracing::error!(error = %e, "a stored record's header");
        internal("reading the record")
    })?;
    let patient = PatientIndex::from_key_id(header.key_id);
    let key = match s.keyring.get(header.key_id) {
        Ok(k) => k,
        Err(KeyringError::Erased(_, at)) => return Err(gone(at)),
        Err(e) => {
            tracing::error!(error = %e, "data key");
            return Err(internal("reading the record's key"));
        }
    };
    let content = crate::seal::decrypt_content(&stored.sealed, *id, &key).map_err(|e| {
        tracing::error!(error = %e, "opening a record");
        internal("opening the record")
    })?;
    Ok(Some((patient, content)))
}

/// Finds a raw or derived record by id: `Ok(None)` when there is none (events are not
/// records to read).
pub fn find(s: &ApiState, id: &RecordId) -> Result<Option<Found>, Problem> {
    let Some((patient, content)) = open(s, id)? else {
        return Ok(None);
    };
    match content {
        Content::Record(raw) => {
            let current = match s.vault.derived_of(id) {
                Ok(list) => list.last().copied(),
                Err(e) => {
                    tracing::error!(error = %e, "derived records");
                    return Err(internal("reading the record"));
                }
            };
            let derived = match current {
                None => None,
                Some(did) => match open(s, &did)? {
                    Some((_, Content::Derived(d))) => Some((did, d)),
                    _ => None,
                },
            };
            Ok(Some(Found {
                patient,
                raw_id: *id,
                raw,
                derived,
            }))
        }
        Content::Derived(d) => {
            let raw_id = d.raw_id;
            let Some((_, Content::Record(raw))) = open(s, &raw_id)? else {
                tracing::error!("a derived record's raw record is missing");
                return Err(internal("reading the record"));
            };
            Ok(Some(Found {
                patient,
                raw_id,
                raw,
                derived: Some((*id, d)),
            }))
        }
        Content::Event(_) => Ok(None),
    }
}

/// The security label codes of a resource (`meta.security[].code`), in upper case as grants
/// store them (a FHIR record sent with `psy` is still denied by a deny on `PSY`).
fn labels(resource: &Value) -> Vec<String> {
    resource
        .pointer("/meta/security")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|c| c.get("code").and_then(Value::as_str))
                .map(str::to_ascii_uppercase)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a resource may be shown under `visible`: itself and every resource it contains
/// (`contained`, whose labels are their own). A Bundle inside a record is only ever served
/// whole: filtering does not look inside it, so it is never shown when filtering.
pub fn resource_visible(r: &Value, record: &str, visible: &dyn Fn(&Resource<'_>) -> bool) -> bool {
    let kind = r.get("resourceType").and_then(Value::as_str).unwrap_or("");
    kind != "Bundle"
        && visible(&Resource {
            kind,
            labels: labels(r),
            record,
        })
        && r.get("contained")
            .and_then(Value::as_array)
            .is_none_or(|c| c.iter().all(|c| resource_visible(c, record, visible)))
}

/// [`filter_bundle`] on a Bundle's bytes, without building a tree of it: the entries are found as
/// raw JSON, each resource's type, labels and whether it contains others are read from it, and
/// the kept entries are copied out as they are. An entry that needs more (a resource with
/// `contained`, a kept Provenance whose targets are trimmed) is parsed alone. `None` when the
/// bytes are not a Bundle this can handle (then [`filter_bundle`] does it on the tree).
pub fn filter_bundle_bytes(
    bytes: &[u8],
    record: &str,
    visible: &dyn Fn(&Resource<'_>) -> bool,
) -> Option<(Vec<u8>, Vec<String>)> {
    use serde::de::IgnoredAny;
    use serde_json::value::RawValue;
    use std::borrow::Cow;

    #[derive(Deserialize)]
    struct Top<'a> {
        #[serde(rename = "resourceType")]
        kind: Cow<'a, str>,
        #[serde(borrow, default)]
        entry: Vec<&'a RawValue>,
        total: Option<IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct Entry<'a> {
        #[serde(rename = "fullUrl", borrow)]
        full_url: Option<Cow<'a, str>>,
        #[serde(borrow)]
        resource: Option<Res<'a>>,
    }
    #[derive(Deserialize)]
    struct Coding<'a> {
        #[serde(borrow)]
        code: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Meta<'a> {
        #[serde(borrow, default)]
        security: Vec<Coding<'a>>,
    }
    #[derive(Deserialize)]
    struct Res<'a> {
        #[serde(rename = "resourceType", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow)]
        meta: Option<Meta<'a>>,
        contained: Option<IgnoredAny>,
    }

    let top: Top<'_> = serde_json::from_slice(bytes).ok()?;
    if top.kind != "Bundle" || top.total.is_some() {
        return None;
    }
    let at = |raw: &RawValue| raw.get().as_ptr() as usize - bytes.as_ptr() as usize;
    // Which entries stay, and the urls they carry (for Provenance targets).
    let mut kept: Vec<(&RawValue, Option<String>)> = Vec::new();
    let mut kept_urls: Vec<String> = Vec::new();
    let mut types: Vec<String> = Vec::new();
    for raw in &top.entry {
        // One pass over the entry reads its url and what the rules need of its resource.
        let e: Entry<'_> = serde_json::from_str(raw.get()).ok()?;
        let Some(r) = e.resource else {
            continue;
        };
        let keep = if r.contained.is_some() {
            let v: Value = serde_json::from_str(raw.get()).ok()?;
            resource_visible(v.get("resource")?, record, visible)
        } else {
            let labels = r
                .meta
                .map(|m| {
                    m.security
                        .into_iter()
                        .filter_map(|c| c.code.map(|c| c.to_ascii_uppercase()))
                        .collect()
                })
                .unwrap_or_default();
            r.kind != "Bundle"
                && visible(&Resource {
                    kind: &r.kind,
                    labels,
                    record,
                })
        };
        if !keep {
            continue;
        }
        if let Some(u) = e.full_url {
            kept_urls.push(u.into_owned());
        }
        if !types.iter().any(|t| *t == r.kind) {
            types.push(r.kind.to_string());
        }
        kept.push((raw, (r.kind == "Provenance").then(String::new)));
    }
    // The entries are written back as they were, between the text before the first entry and
    // the text after the last.
    let (Some(first), Some(last)) = (top.entry.first(), top.entry.last()) else {
        return Some((bytes.to_vec(), types));
    };
    let (start, end) = (at(first), at(last) + last.get().len());
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..start]);
    for (n, (raw, provenance)) in kept.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        match provenance {
            None => out.extend_from_slice(raw.get().as_bytes()),
            Some(_) => {
                let mut v: Value = serde_json::from_str(raw.get()).ok()?;
                if let Some(targets) = v
                    .pointer_mut("/resource/target")
                    .and_then(Value::as_array_mut)
                {
                    targets.retain(|t| {
                        t.get("reference")
                            .and_then(Value::as_str)
                            .is_some_and(|u| kept_urls.iter().any(|k| k == u))
                    });
                }
                serde_json::to_writer(&mut out, &v).ok()?;
            }
        }
    }
    out.extend_from_slice(&bytes[end..]);
    Some((out, types))
}

/// Keeps the entries of a Bundle that `visible` allows, and trims a kept Provenance's targets to
/// the entries kept, so neither a count nor a reference says what was left out. Returns the
/// resource types kept.
pub fn filter_bundle(
    bundle: &mut Value,
    record: &str,
    visible: &dyn Fn(&Resource<'_>) -> bool,
) -> Vec<String> {
    let mut kept_urls = Vec::new();
    let mut types = Vec::new();
    if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
        entries.retain(|e| {
            let Some(r) = e.get("resource") else {
                return false;
            };
            let kind = r.get("resourceType").and_then(Value::as_str).unwrap_or("");
            let keep = resource_visible(r, record, visible);
            if keep {
                if let Some(u) = e.get("fullUrl").and_then(Value::as_str) {
                    kept_urls.push(u.to_string());
                }
                if !types.iter().any(|t| t == kind) {
                    types.push(kind.to_string());
                }
            }
            keep
        });
        for e in entries.iter_mut() {
            let Some(r) = e.get_mut("resource") else {
                continue;
            };
            if r.get("resourceType").and_then(Value::as_str) == Some("Provenance") {
                if let Some(targets) = r.get_mut("target").and_then(Value::as_array_mut) {
                    targets.retain(|t| {
                        t.get("reference")
                            .and_then(Value::as_str)
                            .is_some_and(|u| kept_urls.iter().any(|k| k == u))
                    });
                }
            }
        }
    }
    if let Some(o) = bundle.as_object_mut() {
        o.remove("total");
    }
    types
}

/// `GET /v1/records/{id}`.
pub async fn get_record(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    Query(q): Query<PurposeQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (access, caller) = caller(&s, &headers, peer, q.purpose.as_deref())?;
    let Some(rid) = RecordId::parse(&id) else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad record id",
            "a record id is 32 hex characters",
        ));
    };
    // One record is bounded work (a read, a decryption, a filter), done on the worker: handed
    // to the blocking pool it cost 15% of reads/s on one core, 23% filtered (docs/read-side.md).
    let found = match find(&s, &rid) {
        Ok(Some(f)) => f,
        Ok(None) => return Err(not_found("record")),
        Err(r) => {
            if r.status == StatusCode::GONE {
                s.metrics.reads.with_label_values(&["record", "gone"]).inc();
            }
            return Err(r);
        }
    };
    let want_v2 = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/hl7-v2"));
    // A record with no patient (sealed under the gateway key) is its sender's alone.
    let Some(patient) = found.patient else {
        let sender_ok = match caller.role() {
            Role::Organization => caller.principal.sent(&found.raw.meta.sender),
            Role::Practitioner => caller
                .organization
                .as_deref()
                .is_some_and(|o| o.sent(&found.raw.meta.sender)),
            _ => false,
        };
        if !sender_ok {
            s.metrics.reads.with_label_values(&["record", "deny"]).inc();
            return Err(forbidden());
        }
        return Ok(respond_record(&found, want_v2, None).0);
    };
    let standing = access.standing(&s, &caller, &patient, Some(&found.raw.meta.sender))?;
    let record_hex = found.raw_id.to_string();
    let now = now_ms();
    let applicable = match &standing {
        Standing::Grants(g) => Some(Applicable::select(
            g.active(),
            &caller.requester(),
            caller.purpose,
            now,
        )),
        _ => None,
    };
    let denied = match (&standing, &applicable) {
        (Standing::None, _) => true,
        (Standing::Grants(_), Some(a)) => a.none() || (want_v2 && !a.whole(&record_hex)),
        _ => false,
    } || caller.scopes.none()
        || (want_v2 && !caller.scopes.allows_everything());
    let decision = if denied { "deny" } else { standing.decision() };
    let visible = |r: &Resource<'_>| {
        caller.scopes.allows(r.kind)
            && match &applicable {
                Some(a) => a.allows(r),
                None => true,
            }
    };
    // Nothing to filter out (the patient, the sender, break-the-glass, or a grant without
    // filters or denies, under scopes that cover everything): the stored bytes are the answer.
    let whole = caller.scopes.allows_everything()
        && match (&standing, &applicable) {
            (Standing::Grants(_), Some(a)) => a.whole(&record_hex),
            (Standing::None | Standing::Grants(_), _) => false,
            _ => true,
        };
    let (response, types) = if denied {
        (forbidden().into_response(), Vec::new())
    } else if whole {
        respond_record(&found, want_v2, None)
    } else {
        respond_record(&found, want_v2, Some(&visible))
    };
    // A FHIR resource as received that the grants do not cover is refused whole.
    let decision = if response.status() == StatusCode::FORBIDDEN {
        "deny"
    } else {
        decision
    };
    let what = AccessWhat {
        what: "record",
        record: Some(&record_hex),
        types,
    };
    let event = access
        .record_access(&s, &caller, &patient, &what, decision)
        .await?;
    let mut response = response;
    if let Some(v) = (!event.is_empty())
        .then(|| HeaderValue::from_str(&event).ok())
        .flatten()
    {
        response.headers_mut().insert("medanchor-access-event", v);
    }
    Ok(response)
}

/// The answer to a record read and the resource types it holds (`*`: all, served whole): the
/// current derived Bundle (or a FHIR record as received) filtered by `visible` (`None`: served
/// as stored), or the original message when asked for and allowed.
fn respond_record(
    found: &Found,
    want_v2: bool,
    visible: Option<&dyn Fn(&Resource<'_>) -> bool>,
) -> (Response, Vec<String>) {
    let record = found.raw_id.to_string();
    if want_v2 {
        if found.raw.meta.format != "hl7v2" {
            return (
                Problem::new(
                    StatusCode::NOT_ACCEPTABLE,
                    "not acceptable",
                    "this record arrived as FHIR; ask for application/fhir+json",
                )
                .into_response(),
                Vec::new(),
            );
        }
        return (
            (
                [(header::CONTENT_TYPE, "application/hl7-v2")],
                found.raw.raw.clone(),
            )
                .into_response(),
            vec!["HL7v2".to_string()],
        );
    }
    let (bytes, served) = match &found.derived {
        Some((did, d)) => (&d.bundle, did.to_string()),
        None if found.raw.meta.format == "fhir" => (&found.raw.raw, record.clone()),
        None => {
            return (
                Problem::new(
                    StatusCode::NOT_FOUND,
                    "no FHIR form",
                    "this message has no derived FHIR Bundle (its mapping failed or normalization was off); ask for application/hl7-v2",
                ).into_response(),
                Vec::new(),
            )
        }
    };
    let Some(visible) = visible else {
        let mut r = (
            [(header::CONTENT_TYPE, "application/fhir+json")],
            bytes.clone(),
        )
            .into_response();
        if let Ok(h) = HeaderValue::from_str(&served) {
            r.headers_mut().insert("medanchor-record-id", h);
        }
        return (r, vec!["*".to_string()]);
    };
    if let Some((filtered, types)) = filter_bundle_bytes(bytes, &record, visible) {
        let mut r = ([(header::CONTENT_TYPE, "application/fhir+json")], filtered).into_response();
        if let Ok(h) = HeaderValue::from_str(&served) {
            r.headers_mut().insert("medanchor-record-id", h);
        }
        return (r, types);
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(bytes) else {
        tracing::error!("a stored FHIR record is not JSON");
        return (internal("reading the record").into_response(), Vec::new());
    };
    let types = if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        filter_bundle(&mut v, &record, visible)
    } else {
        let kind = v
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !resource_visible(&v, &record, visible) {
            return (forbidden().into_response(), Vec::new());
        }
        vec![kind]
    };
    let mut r = (
        [(header::CONTENT_TYPE, "application/fhir+json")],
        serde_json::to_vec(&v).expect("JSON"),
    )
        .into_response();
    if let Ok(h) = HeaderValue::from_str(&served) {
        r.headers_mut().insert("medanchor-record-id", h);
    }
    (r, types)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a deny on PSY lets through: nothing labelled PSY, also when contained in an
    /// unlabelled resource, and no Bundle inside a record; a kept Provenance names only what was
    /// kept, and no total is left.
    #[test]
    fn filtering_looks_into_contained_resources_and_leaves_no_trace_of_what_it_dropped() {
        let allow = |r: &Resource<'_>| !r.labels.iter().any(|l| l == "PSY");
        let psy = json!({"code": "PSY"});
        let contained = json!({"resourceType": "Observation",
            "contained": [{"resourceType": "Condition", "meta": {"security": [psy]}}]});
        assert!(!resource_visible(&contained, "r", &allow));
        let plain =
            json!({"resourceType": "Observation", "contained": [{"resourceType": "Condition"}]});
        assert!(resource_visible(&plain, "r", &allow));
        assert!(!resource_visible(
            &json!({"resourceType": "Bundle"}),
            "r",
            &|_| true
        ));
        let lower = json!({"resourceType": "Condition", "meta": {"security": [{"code": "psy"}]}});
        assert!(
            !resource_visible(&lower, "r", &allow),
            "codes compared in upper case"
        );
        let mut bundle = json!({"resourceType": "Bundle", "total": 3, "entry": [
            {"fullUrl": "urn:uuid:a", "resource": {"resourceType": "Patient"}},
            {"fullUrl": "urn:uuid:b", "resource": {"resourceType": "Condition", "meta": {"security": [psy]}}},
            {"fullUrl": "urn:uuid:c", "resource": {"resourceType": "Provenance",
                "target": [{"reference": "urn:uuid:a"}, {"reference": "urn:uuid:b"}]}},
        ]});
        let types = filter_bundle(&mut bundle, "r", &allow);
        assert_eq!(types, ["Patient", "Provenance"]);
        assert!(bundle.get("total").is_none());
        assert_eq!(bundle["entry"].as_array().unwrap().len(), 2);
        assert_eq!(
            bundle["entry"][1]["resource"]["target"],
            json!([{"reference": "urn:uuid:a"}])
        );
    }

    /// The bytes path and the tree path keep the same entries, in the same order, with the same
    /// Provenance targets, on the corpus's Bundles and under several rules.
    #[test]
    fn filtering_the_bytes_gives_what_filtering_the_tree_gives() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hl7/microsoft");
        let normalizer =
            crate::normalize::Normalizer::load(&crate::config::NormalizeConfig::default()).unwrap();
        let rules: [&dyn Fn(&Resource<'_>) -> bool; 4] = [
            &|_| true,
            &|_| false,
            &|r| r.kind != "Observation" && r.kind != "Encounter",
            &|r| r.labels.is_empty() && r.kind != "Patient",
        ];
        let link = crate::normalize::Link {
            raw_record_id: "0123456789abcdef0123456789abcdef",
            raw_commitment: &[7; 32],
            mapped_ms: 1,
        };
        let mut bundles = 0;
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|f| f.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let raw = std::fs::read(f).unwrap();
            let mapped = crate::pipeline::with_message(&raw, |m| normalizer.map(m, &link).ok());
            let Ok(Some(mapped)) = mapped else { continue };
            bundles += 1;
            for rule in rules {
                let (bytes, types) =
                    filter_bundle_bytes(&mapped.bundle, "r", rule).expect("a Bundle");
                let mut tree: Value = serde_json::from_slice(&mapped.bundle).unwrap();
                let tree_types = filter_bundle(&mut tree, "r", rule);
                assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), tree);
                assert_eq!(types, tree_types);
            }
        }
        assert!(bundles >= 100, "{bundles}");
    }

    /// A read side in-process: a pipeline on `stores`, one HL7v2 message of patient `8^HOSP^MR`
    /// stored, a patient principal for them, and the API router over the vault `api_vault`
    /// makes of the pipeline's.
    struct OnePatient {
        app: axum::Router,
        record_id: String,
        pid: String,
        token: String,
        _running: crate::pipeline::Running,
    }

    async fn one_patient(
        dir: &std::path::Path,
        cfg: &crate::config::Config,
        stores: crate::pipeline::Stores,
        api_vault: impl FnOnce(Arc<dyn crate::vault::Vault>) -> Arc<dyn crate::vault::Vault>,
    ) -> OnePatient {
        use crate::envelope::{AckToken, Envelope, FormatHint, Origin, Outcome};
        use std::sync::atomic::AtomicBool;

        let metrics = Arc::new(crate::metrics::Metrics::new());
        let (pipeline, running) =
            crate::pipeline::Pipeline::start(cfg, &stores, metrics.clone()).unwrap();
        let (token, rx) = AckToken::new();
        pipeline
            .submit(Envelope {
                payload: bytes::Bytes::from_static(
                    b"MSH|^~\\&|ADT|HOSP|GW|GW|20261130083000||ADT^A01^ADT_A01|F1|P|2.5.1\rPID|1||8^^^HOSP^MR||ROE^RAY||19800101|M\r",
                ),
                origin: Origin::Local { name: "t".into() },
                format: FormatHint::Hl7v2,
                received_ms: now_ms(),
                token,
            })
            .await;
        let Ok(Outcome::Stored { receipt, .. }) = rx.await else {
            panic!("stored")
        };
        let principals = Arc::new(crate::consent::Principals::open(dir).unwrap());
        let pid = stores.keyring.patient("8^HOSP^MR").key_id();
        let (_, token) = principals
            .add(
                &crate::consent::NewPrincipal {
                    id: "pat-8".into(),
                    role: Some(Role::Patient),
                    patients: vec![pid.clone()],
                    ..Default::default()
                },
                1,
            )
            .unwrap();
        let state = ApiState {
            metrics,
            ledger: stores.ledger.clone(),
            vault: api_vault(stores.vault.clone()),
            keyring: stores.keyring.clone(),
            ready: Arc::new(AtomicBool::new(true)),
            health: crate::sources::Health::default(),
            ingest: None,
            access: Some(Access {
                pipeline: pipeline.clone(),
                principals,
                book: Arc::new(Book::default()),
                failures: Arc::new(auth::Failures::new(20)),
                budgets: Arc::new(auth::Budgets::new(0)),
                jwt: None,
            }),
        };
        OnePatient {
            app: super::super::router(state),
            record_id: receipt.record_id,
            pid,
            token,
            _running: running,
        }
    }

    /// `GET path` as the patient: status and body.
    async fn get_as(one: &mut OnePatient, path: &str) -> (StatusCode, String) {
        use axum::body::Body;
        use http_body_util::BodyExt;
        use tower_service::Service;
        let mut req = axum::http::Request::get(path)
            .header("authorization", format!("Bearer {}", one.token))
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
        let r = one.app.call(req).await.unwrap();
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// A failing disk's view of a read: while the vault cannot store the access event, the read
    /// is not answered (503, nothing of the record in the answer); once storage works again the
    /// same read succeeds and its event is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_whose_access_event_cannot_be_stored_is_not_answered() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config {
            data_dir: dir.path().join("data"),
            ..crate::config::Config::default()
        };
        let faults = crate::testing::faulty::Faults::default();
        let mut stores = crate::pipeline::Stores::open(&cfg, true).unwrap();
        stores.vault = Arc::new(
            crate::vault::EmbeddedVault::open_with_faults(
                &dir.path().join("faulty.redb"),
                &dir.path().join("faulty-segments"),
                1 << 20,
                true,
                Some(faults.clone()),
            )
            .unwrap(),
        );
        let mut one = one_patient(dir.path(), &cfg, stores, |v| v).await;
        let path = format!("/v1/records/{}", one.record_id);
        faults.fail_all();
        let (status, body) = get_as(&mut one, &path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("access log cannot be written"), "{body}");
        assert!(!body.contains("ROE"), "nothing of the record: {body}");
        faults.clear();
        let (status, body) = get_as(&mut one, &path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("\"resourceType\":\"Bundle\""), "{body}");
    }

    /// A vault whose record reads wait at a gate once armed: what a slow disk looks like to
    /// the read side.
    struct Gated {
        inner: Arc<dyn crate::vault::Vault>,
        armed: std::sync::atomic::AtomicBool,
        entered: std::sync::mpsc::SyncSender<()>,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
        /// The gate gave up waiting for its release.
        expired: std::sync::atomic::AtomicBool,
    }

    impl crate::vault::Vault for Gated {
        fn commit(
            &self,
            puts: &[crate::vault::PutRecord],
            quarantine: &[(crate::vault::QuarantineEntry, crate::seal::Sealed)],
        ) -> Result<Vec<crate::vault::PutResult>, crate::vault::VaultError> {
            self.inner.commit(puts, quarantine)
        }
        fn commit_derivations(
            &self,
            items: &[crate::vault::Rederive],
        ) -> Result<Vec<Option<u64>>, crate::vault::VaultError> {
            self.inner.commit_derivations(items)
        }
        fn commit_events(
            &self,
            events: &[crate::vault::EventPut],
        ) -> Result<Vec<u64>, crate::vault::VaultError> {
            self.inner.commit_events(events)
        }
        fn patient_entries(
            &self,
            patient: &PatientIndex,
            kinds: &[u8],
        ) -> Result<Vec<crate::vault::PatientEntry>, crate::vault::VaultError> {
            self.inner.patient_entries(patient, kinds)
        }
        fn derived_of(&self, raw: &RecordId) -> Result<Vec<RecordId>, crate::vault::VaultError> {
            self.inner.derived_of(raw)
        }
        fn mapping_failures(
            &self,
        ) -> Result<Vec<(RecordId, crate::vault::MappingFailure)>, crate::vault::VaultError>
        {
            self.inner.mapping_failures()
        }
        fn sync(&self) -> Result<(), crate::vault::VaultError> {
            self.inner.sync()
        }
        fn get(
            &self,
            id: &RecordId,
        ) -> Result<Option<crate::vault::StoredRecord>, crate::vault::VaultError> {
            use std::sync::atomic::Ordering;
            if self.armed.swap(false, Ordering::SeqCst) {
                let _ = self.entered.try_send(());
                let release = self.release.lock().unwrap();
                if release
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .is_err()
                {
                    self.expired.store(true, Ordering::SeqCst);
                }
            }
            self.inner.get(id)
        }
        fn for_each_record(
            &self,
            f: &mut dyn FnMut(
                RecordId,
                Result<crate::vault::StoredRecord, crate::vault::VaultError>,
            ) -> Result<(), crate::vault::VaultError>,
        ) -> Result<(), crate::vault::VaultError> {
            self.inner.for_each_record(f)
        }
        fn record_count(&self) -> Result<u64, crate::vault::VaultError> {
            self.inner.record_count()
        }
        fn unanchored(
            &self,
            at_least: u64,
        ) -> Result<Vec<(crate::ledger::Leaf, u64)>, crate::vault::VaultError> {
            self.inner.unanchored(at_least)
        }
        fn mark_anchored(&self, through: u64) -> Result<(), crate::vault::VaultError> {
            self.inner.mark_anchored(through)
        }
        fn quarantine_list(
            &self,
        ) -> Result<Vec<crate::vault::QuarantineEntry>, crate::vault::VaultError> {
            self.inner.quarantine_list()
        }
        fn quarantine_expire(&self, before_ms: u64) -> Result<usize, crate::vault::VaultError> {
            self.inner.quarantine_expire(before_ms)
        }
        fn health(&self) -> Result<(), String> {
            self.inner.health()
        }
        fn quarantine_get(
            &self,
            id: &str,
        ) -> Result<Option<(crate::vault::QuarantineEntry, Vec<u8>)>, crate::vault::VaultError>
        {
            self.inner.quarantine_get(id)
        }
    }

    /// A slow disk under a read that grows with the patient holds no runtime worker: on a
    /// runtime of one thread, such a read whose vault read is stuck leaves that thread free
    /// (here, for the task that then frees the disk), instead of stalling every listener the
    /// runtime serves.
    #[tokio::test(flavor = "current_thread")]
    async fn reads_waiting_on_the_disk_hold_no_runtime_worker() {
        use std::sync::atomic::{AtomicBool, Ordering};

        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config {
            data_dir: dir.path().join("data"),
            ..crate::config::Config::default()
        };
        let stores = crate::pipeline::Stores::open(&cfg, true).unwrap();
        let (entered_tx, entered) = std::sync::mpsc::sync_channel(1);
        let (release, release_rx) = std::sync::mpsc::channel();
        let mut gated = None;
        let mut one = one_patient(dir.path(), &cfg, stores, |inner| {
            let g = Arc::new(Gated {
                inner,
                armed: AtomicBool::new(false),
                entered: entered_tx,
                release: std::sync::Mutex::new(release_rx),
                expired: AtomicBool::new(false),
            });
            gated = Some(g.clone());
            g
        })
        .await;
        let gated = gated.unwrap();
        let pid = one.pid.clone();
        // Each read that grows with the patient; the access log last, once the reads before
        // it have put events in it.
        for path in [
            format!("/v1/patients/{pid}/records"),
            format!("/fhir/Patient/{pid}/$everything"),
            format!("/v1/patients/{pid}/charges"),
            format!("/v1/patients/{pid}/access-log"),
        ] {
            gated.armed.store(true, Ordering::SeqCst);
            let asked = path.clone();
            let read = tokio::spawn(async move {
                let answer = get_as(&mut one, &asked).await;
                (one, answer)
            });
            // This task runs only if the read yields the runtime's one thread while its vault
            // read waits; a read done inline would hold the thread until the gate gives up.
            let mut seen = false;
            for _ in 0..20_000 {
                if entered.try_recv().is_ok() {
                    seen = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert!(seen, "{path}: the read never reached the vault");
            release.send(()).unwrap();
            let (back, (status, body)) = read.await.unwrap();
            one = back;
            assert!(
                !gated.expired.load(Ordering::SeqCst),
                "{path}: the read held the runtime while waiting on the disk"
            );
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            if path.ends_with("/records") {
                assert!(body.contains(&one.record_id), "{body}");
            }
        }
    }
}
