//! Grants as FHIR R4 Consent resources (scope `patient-privacy`, one provision), both ways: the
//! API returns them so, a client may post one, and the sealed grant event holds one, so an
//! auditor reading it needs no medanchor-specific format.

use serde_json::{json, Map, Value};

use super::policy::{Decision, Grant, GrantError, Period};

const PRINCIPAL_SYSTEM: &str = "urn:medanchor:principal";
const PATIENT_SYSTEM: &str = "urn:medanchor:patient";
const RECORD_PREFIX: &str = "urn:medanchor:record:";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const RESOURCE_TYPES: &str = "http://hl7.org/fhir/resource-types";

/// Purposes by plain name and their v3 ActReason codes.
const PURPOSE_CODES: [(&str, &str); 4] = [
    ("treatment", "TREAT"),
    ("payment", "HPAYMT"),
    ("research", "HRESCH"),
    ("emergency", "ETREAT"),
];

/// A grant as it stands: who made it, when, and whether it was revoked.
pub struct Stated<'a> {
    pub id: &'a str,
    pub patient: &'a str,
    pub grant: &'a Grant,
    pub by: &'a str,
    pub at_ms: u64,
    pub revoked: bool,
}

fn instant(ms: u64) -> String {
    let mut s = String::new();
    crate::normalize::value::instant_from_ms(ms, &mut s);
    s
}

/// The grant as a FHIR R4 Consent.
pub fn to_consent(s: &Stated<'_>) -> Value {
    let g = s.grant;
    let mut provision = Map::new();
    provision.insert(
        "type".into(),
        match g.decision {
            Decision::Permit => "permit",
            Decision::Deny => "deny",
        }
        .into(),
    );
    let mut period = Map::new();
    if let Some(ms) = g.period.start_ms {
        period.insert("start".into(), instant(ms).into());
    }
    if let Some(ms) = g.period.end_ms {
        period.insert("end".into(), instant(ms).into());
    }
    if !period.is_empty() {
        provision.insert("period".into(), Value::Object(period));
    }
    provision.insert(
        "actor".into(),
        json!([{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "reference": {"identifier": {"system": PRINCIPAL_SYSTEM, "value": g.grantee}}
        }]),
    );
    provision.insert(
        "action".into(),
        json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}]),
    );
    if !g.labels.is_empty() {
        let labels: Vec<Value> = g
            .labels
            .iter()
            .map(|l| json!({"system": ACT_CODE, "code": l}))
            .collect();
        provision.insert("securityLabel".into(), labels.into());
    }
    if !g.purposes.is_empty() {
        let purposes: Vec<Value> = g
            .purposes
            .iter()
            .map(|p| {
                let code = PURPOSE_CODES
                    .iter()
                    .find(|(name, _)| name == p)
                    .map_or(p.as_str(), |(_, c)| c);
                json!({"system": ACT_REASON, "code": code})
            })
            .collect();
        provision.insert("purpose".into(), purposes.into());
    }
    if !g.resource_types.is_empty() {
        let class: Vec<Value> = g
            .resource_types
            .iter()
            .map(|t| json!({"system": RESOURCE_TYPES, "code": t}))
            .collect();
        provision.insert("class".into(), class.into());
    }
    if !g.records.is_empty() {
        let data: Vec<Value> = g
            .records
            .iter()
            .map(|r| json!({"meaning": "instance", "reference": {"reference": format!("{RECORD_PREFIX}{r}")}}))
            .collect();
        provision.insert("data".into(), data.into());
    }
    json!({
        "resourceType": "Consent",
        "id": s.id,
        "status": if s.revoked { "inactive" } else { "active" },
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": PATIENT_SYSTEM, "value": s.patient}},
        "dateTime": instant(s.at_ms),
        "performer": [{"identifier": {"system": PRINCIPAL_SYSTEM, "value": s.by}}],
        "policyRule": {"coding": [{"system": ACT_CODE, "code": if g.decision == Decision::Permit { "OPTIN" } else { "OPTOUT" }}]},
        "provision": Value::Object(provision),
    })
}

/// What a posted FHIR Consent asks for: the grant and the patient it names (if it names one
/// by our identifier).
pub struct Posted {
    pub grant: Grant,
    pub patient: Option<String>,
}

fn field(name: &'static str, why: &str) -> GrantError {
    GrantError::Field(name, why.to_string())
}

fn codes(v: Option<&Value>, path: &'static str) -> Result<Vec<String>, GrantError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let list = v
        .as_array()
        .ok_or_else(|| field(path, "an array of Coding"))?;
    list.iter()
        .map(|c| {
            c.get("code")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| field(path, "each Coding has a code"))
        })
        .collect()
}

/// Reads a FHIR R4 Consent into a grant. Supported: scope `patient-privacy`, status `active`,
/// one provision (`type`, one `actor` naming a principal by identifier, `securityLabel`,
/// `purpose`, `class`, `data` with `urn:medanchor:record:` references, `period`); nested
/// provisions are refused rather than half-read.
pub fn from_consent(v: &Value) -> Result<Posted, GrantError> {
    if v.get("resourceType").and_then(Value::as_str) != Some("Consent") {
        return Err(field("resourceType", "must be Consent"));
    }
    if v.get("status").and_then(Value::as_str) != Some("active") {
        return Err(field("status", "a new grant is active"));
    }
    let scope = v.pointer("/scope/coding/0/code").and_then(Value::as_str);
    if scope != Some("patient-privacy") {
        return Err(field("scope", "patient-privacy"));
    }
    let p = v
        .get("provision")
        .ok_or_else(|| field("provision", "required"))?;
    if p.get("provision").is_some() {
        return Err(field(
            "provision.provision",
            "nested provisions are not supported: post one Consent per provision",
        ));
    }
    let decision = match p.get("type").and_then(Value::as_str) {
        Some("permit") | None => Decision::Permit,
        Some("deny") => Decision::Deny,
        Some(_) => return Err(field("provision.type", "permit or deny")),
    };
    let actors = p
        .get("actor")
        .and_then(Value::as_array)
        .ok_or_else(|| field("provision.actor", "one actor"))?;
    if actors.len() != 1 {
        return Err(field("provision.actor", "exactly one actor"));
    }
    let grantee = actors[0]
        .pointer("/reference/identifier")
        .filter(|i| i.get("system").and_then(Value::as_str) == Some(PRINCIPAL_SYSTEM))
        .and_then(|i| i.get("value"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            field(
                "provision.actor.reference",
                "an identifier with system urn:medanchor:principal",
            )
        })?
        .to_string();
    let purposes = codes(p.get("purpose"), "provision.purpose")?
        .into_iter()
        .map(|c| {
            PURPOSE_CODES
                .iter()
                .find(|(_, code)| *code == c)
                .map(|(name, _)| name.to_string())
                .ok_or_else(|| {
                    field(
                        "provision.purpose",
                        "TREAT, HPAYMT, HRESCH or ETREAT (v3 ActReason)",
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let records = match p.get("data").and_then(Value::as_array) {
        None => Vec::new(),
        Some(list) => list
            .iter()
            .map(|d| {
                d.pointer("/reference/reference")
                    .and_then(Value::as_str)
                    .and_then(|r| r.strip_prefix(RECORD_PREFIX))
                    .map(str::to_string)
                    .ok_or_else(|| field("provision.data", "references urn:medanchor:record:ID"))
            })
            .collect::<Result<_, _>>()?,
    };
    let period = match p.get("period") {
        None => Period::default(),
        Some(period) => {
            let at = |k: &str| -> Result<Option<u64>, GrantError> {
                match period.get(k) {
                    None => Ok(None),
                    Some(t) => t
                        .as_str()
                        .and_then(crate::fhir::validate::primitive::ms_from_instant)
                        .map(Some)
                        .ok_or_else(|| {
                            field("provision.period", "dates as YYYY-MM-DD or FHIR instants")
                        }),
                }
            };
            Period {
                start_ms: at("start")?,
                end_ms: at("end")?,
            }
        }
    };
    let patient = v
        .pointer("/patient/identifier")
        .filter(|i| i.get("system").and_then(Value::as_str) == Some(PATIENT_SYSTEM))
        .and_then(|i| i.get("value"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Posted {
        grant: Grant {
            grantee,
            decision,
            resource_types: codes(p.get("class"), "provision.class")?,
            labels: codes(p.get("securityLabel"), "provision.securityLabel")?,
            records,
            purposes,
            period,
        },
        patient,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            grantee: "org-h".into(),
            decision: Decision::Deny,
            resource_types: vec!["Condition".into()],
            labels: vec!["PSY".into()],
            records: vec!["0123456789abcdef0123456789abcdef".into()],
            purposes: vec!["treatment".into(), "emergency".into()],
            period: Period {
                start_ms: Some(1_795_996_800_000),
                end_ms: Some(1_796_083_200_000),
            },
        }
    }

    #[test]
    fn a_grant_goes_to_a_valid_r4_consent_and_back() {
        let g = grant();
        let c = to_consent(&Stated {
            id: "abc",
            patient: "p-00112233445566778899aabbccddeeff",
            grant: &g,
            by: "pat-1",
            at_ms: 1_764_460_800_000,
            revoked: false,
        });
        let issues = crate::fhir::validate::Validator::shared().check(&c);
        assert!(issues.iter().all(|i| !i.severity.is_error()), "{issues:?}");
        let back = from_consent(&c).unwrap();
        assert_eq!(back.grant, g);
        assert_eq!(
            back.patient.as_deref(),
            Some("p-00112233445566778899aabbccddeeff")
        );
    }

    #[test]
    fn unsupported_consents_are_refused_by_field() {
        let g = grant();
        let c = to_consent(&Stated {
            id: "abc",
            patient: "p-00112233445566778899aabbccddeeff",
            grant: &g,
            by: "x",
            at_ms: 0,
            revoked: false,
        });
        let with = |ptr: &str, v: Value| {
            let mut c = c.clone();
            *c.pointer_mut(ptr).unwrap() = v;
            match from_consent(&c) {
                Err(GrantError::Field(f, _)) => f,
                Ok(_) => "accepted",
            }
        };
        assert_eq!(with("/status", "draft".into()), "status");
        assert_eq!(with("/scope/coding/0/code", "research".into()), "scope");
        assert_eq!(with("/provision/type", "maybe".into()), "provision.type");
        assert_eq!(
            with("/provision/purpose/0/code", "MARKETING".into()),
            "provision.purpose"
        );
        assert_eq!(with("/provision/actor", json!([])), "provision.actor");
        let mut nested = c.clone();
        nested["provision"]["provision"] = json!([{"type": "permit"}]);
        assert!(matches!(
            from_consent(&nested),
            Err(GrantError::Field("provision.provision", _))
        ));
    }
}
