//! Consent decisions, pure: what a grant says, and what a request may see under a patient's
//! grants. Nothing here reads storage or the clock; the caller passes both in.
//!
//! A grant has one provision, `permit` or `deny`, for one grantee (a practitioner or an
//! organization principal; a practitioner is also covered by grants to their organization).
//! A provision matches a resource when every filter it sets matches: resource type, security
//! label (any of the resource's labels), record id. It applies to a request when its purpose
//! list is empty or holds the request's purpose, and its period holds the request's time.
//! A resource is visible when an applicable permit matches it and no applicable deny does:
//! deny wins. This is FHIR R4 Consent's provision model with one level of provisions.

use serde::{Deserialize, Serialize};

/// Purposes of use a grant may name (v3 PurposeOfUse, by their plain names).
pub const PURPOSES: [&str; 4] = ["treatment", "payment", "research", "emergency"];

/// How a resource type, label or purpose is allowed to look: short and plain, so a grant can
/// never carry free text that might hold patient data.
fn is_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Permit,
    Deny,
}

/// The period a grant holds for, Unix milliseconds; either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
}

impl Period {
    pub fn holds(&self, now_ms: u64) -> bool {
        self.start_ms.is_none_or(|s| now_ms >= s) && self.end_ms.is_none_or(|e| now_ms < e)
    }
}

/// One grant, as stored (inside its sealed event) and as the JSON API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The principal granted (or denied) access.
    pub grantee: String,
    #[serde(default = "permit")]
    pub decision: Decision,
    /// FHIR resource types; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_types: Vec<String>,
    /// Security label codes (v3 ActCode, as the mapping labelled resources: `PSY`, `HIV`, `ETH`,
    /// `SDV`, `SUD`, …); empty: any resource, labelled or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Record ids (32 hex); empty: all of the patient's records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<String>,
    /// Purposes of use; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purposes: Vec<String>,
    #[serde(default)]
    pub period: Period,
}

fn permit() -> Decision {
    Decision::Permit
}

/// Why a grant is refused; names the field, never a value beyond the codes it allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("field {0}: {1}")]
    Field(&'static str, String),
}

impl Grant {
    /// Checks what JSON syntax cannot: codes that look like codes, known purposes, record
    /// ids, a period that ends after it starts, and sizes that keep a grant small.
    pub fn check(&self) -> Result<(), GrantError> {
        let f = |field, why: &str| Err(GrantError::Field(field, why.to_string()));
        if self.grantee.is_empty() || self.grantee.len() > 128 {
            return f("grantee", "a principal id of 1 to 128 characters");
        }
        for (field, list) in [
            ("resource_types", &self.resource_types),
            ("labels", &self.labels),
            ("purposes", &self.purposes),
            ("records", &self.records),
        ] {
            if list.len() > 256 {
                return f(field, "at most 256 entries");
            }
            if !list.iter().all(|c| is_code(c)) {
                return f(
                    field,
                    "entries are codes (letters, digits, - _ .; up to 64)",
                );
            }
        }
        if let Some(p) = self
            .purposes
            .iter()
            .find(|p| !PURPOSES.contains(&p.as_str()))
        {
            return f(
                "purposes",
                &format!("{p:?} is not one of {}", PURPOSES.join(", ")),
            );
        }
        if !self
            .resource_types
            .iter()
            .all(|t| t.as_bytes()[0].is_ascii_uppercase())
        {
            return f(
                "resource_types",
                "FHIR resource type names (Observation, …)",
            );
        }
        if !self.records.iter().all(|r| r.len() == 32) {
            return f("records", "record ids are 32 hex characters");
        }
        if let (Some(s), Some(e)) = (self.period.start_ms, self.period.end_ms) {
            if e <= s {
                return f("period", "end_ms must be after start_ms");
            }
        }
        Ok(())
    }

    /// The one spelling reads compare against: security label codes in upper case (v3 ActCode
    /// codes are), record ids in lower-case hex. A deny on `psy` must not silently miss `PSY`.
    pub fn normalize(&mut self) {
        for l in &mut self.labels {
            l.make_ascii_uppercase();
        }
        for r in &mut self.records {
            r.make_ascii_lowercase();
        }
    }

    /// Whether this grant's provision applies to `who` asking for `purpose` at `now_ms`.
    fn applies(&self, who: &Requester<'_>, purpose: &str, now_ms: u64) -> bool {
        (self.grantee == who.principal || who.organization.is_some_and(|o| self.grantee == o))
            && (self.purposes.is_empty() || self.purposes.iter().any(|p| p == purpose))
            && self.period.holds(now_ms)
    }

    /// Whether the provision's filters match one resource.
    fn matches(&self, r: &Resource<'_>) -> bool {
        (self.resource_types.is_empty() || self.resource_types.iter().any(|t| t == r.kind))
            && (self.labels.is_empty() || r.labels.iter().any(|l| self.labels.contains(l)))
            && (self.records.is_empty() || self.records.iter().any(|id| id == r.record))
    }

    /// Whether the provision covers a whole record whatever it holds: no type, label or
    /// record filter (or only this record).
    fn covers_whole(&self, record: &str) -> bool {
        self.resource_types.is_empty()
            && self.labels.is_empty()
            && (self.records.is_empty() || self.records.iter().any(|id| id == record))
    }
}

/// Who asks: a principal and, for a practitioner, their organization's principal id.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub principal: &'a str,
    pub organization: Option<&'a str>,
}

/// One resource of a record, as the filter sees it.
#[derive(Debug, Clone)]
pub struct Resource<'a> {
    pub kind: &'a str,
    pub labels: Vec<String>,
    /// The record (32 hex) it is in.
    pub record: &'a str,
}

/// The grants that apply to one request, taken once so each resource is checked against
/// only them.
#[derive(Debug)]
pub struct Applicable<'a> {
    permits: Vec<&'a Grant>,
    denies: Vec<&'a Grant>,
}

impl<'a> Applicable<'a> {
    /// Selects from a patient's active grants those for `who`, `purpose` and `now_ms`:
    /// O(the patient's grants).
    pub fn select(
        grants: impl IntoIterator<Item = &'a Grant>,
        who: &Requester<'_>,
        purpose: &str,
        now_ms: u64,
    ) -> Applicable<'a> {
        let (mut permits, mut denies) = (Vec::new(), Vec::new());
        for g in grants {
            if g.applies(who, purpose, now_ms) {
                match g.decision {
                    Decision::Permit => permits.push(g),
                    Decision::Deny => denies.push(g),
                }
            }
        }
        Applicable { permits, denies }
    }

    /// No permit applies: the request is denied outright.
    pub fn none(&self) -> bool {
        self.permits.is_empty()
    }

    /// Whether one resource is visible: a permit matches it and no deny does.
    pub fn allows(&self, r: &Resource<'_>) -> bool {
        self.permits.iter().any(|g| g.matches(r)) && !self.denies.iter().any(|g| g.matches(r))
    }

    /// Whether the grants cover `record` whole (needed for the original message, which cannot
    /// be filtered): a permit without filters and no deny at all that could touch it.
    pub fn whole(&self, record: &str) -> bool {
        self.permits.iter().any(|g| g.covers_whole(record))
            && !self
                .denies
                .iter()
                .any(|g| g.records.is_empty() || g.records.iter().any(|id| id == record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(grantee: &str, decision: Decision) -> Grant {
        Grant {
            grantee: grantee.into(),
            decision,
            resource_types: vec![],
            labels: vec![],
            records: vec![],
            purposes: vec![],
            period: Period::default(),
        }
    }

    const REC: &str = "0123456789abcdef0123456789abcdef";

    fn res<'a>(kind: &'a str, labels: &[&str]) -> Resource<'a> {
        Resource {
            kind,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            record: REC,
        }
    }

    const DR: Requester<'static> = Requester {
        principal: "dr-a",
        organization: Some("org-h"),
    };

    #[test]
    fn everything_except_mental_health_deny_beats_permit() {
        let grants = [
            grant("org-h", Decision::Permit),
            Grant {
                labels: vec!["PSY".into()],
                ..grant("org-h", Decision::Deny)
            },
        ];
        let a = Applicable::select(&grants, &DR, "treatment", 10);
        assert!(!a.none());
        assert!(a.allows(&res("Observation", &[])));
        assert!(a.allows(&res("Condition", &["HIV"])));
        assert!(!a.allows(&res("Condition", &["PSY"])));
        assert!(!a.allows(&res("Condition", &["HIV", "PSY"])));
        assert!(!a.whole(REC), "a deny may touch it: no original message");
    }

    #[test]
    fn a_grant_to_someone_else_a_wrong_purpose_or_outside_its_period_does_not_apply() {
        let g = Grant {
            purposes: vec!["treatment".into()],
            period: Period {
                start_ms: Some(100),
                end_ms: Some(200),
            },
            ..grant("dr-a", Decision::Permit)
        };
        let gs = [g];
        assert!(!Applicable::select(&gs, &DR, "treatment", 150).none());
        assert!(Applicable::select(&gs, &DR, "research", 150).none());
        assert!(Applicable::select(&gs, &DR, "treatment", 99).none());
        assert!(
            Applicable::select(&gs, &DR, "treatment", 200).none(),
            "end is exclusive"
        );
        let other = Requester {
            principal: "dr-b",
            organization: Some("org-x"),
        };
        assert!(Applicable::select(&gs, &other, "treatment", 150).none());
    }

    #[test]
    fn filters_by_type_label_and_record() {
        let g = Grant {
            resource_types: vec!["Observation".into()],
            labels: vec!["HIV".into()],
            records: vec![REC.into()],
            ..grant("dr-a", Decision::Permit)
        };
        let gs = [g];
        let a = Applicable::select(&gs, &DR, "treatment", 0);
        assert!(a.allows(&res("Observation", &["HIV"])));
        assert!(
            !a.allows(&res("Observation", &[])),
            "label filter: labelled only"
        );
        assert!(!a.allows(&res("Condition", &["HIV"])));
        let elsewhere = Resource {
            record: "ffffffffffffffffffffffffffffffff",
            ..res("Observation", &["HIV"])
        };
        assert!(!a.allows(&elsewhere));
        assert!(!a.whole(REC));
        let all = [grant("dr-a", Decision::Permit)];
        assert!(Applicable::select(&all, &DR, "treatment", 0).whole(REC));
    }

    #[test]
    fn grants_are_checked_field_by_field() {
        let ok = grant("dr-a", Decision::Permit);
        ok.check().unwrap();
        let bad = |g: Grant, field: &str| {
            let e = g.check().unwrap_err().to_string();
            assert!(e.starts_with(&format!("field {field}")), "{e}");
        };
        bad(
            Grant {
                purposes: vec!["marketing".into()],
                ..ok.clone()
            },
            "purposes",
        );
        bad(
            Grant {
                labels: vec!["<script>".into()],
                ..ok.clone()
            },
            "labels",
        );
        bad(
            Grant {
                resource_types: vec!["observation".into()],
                ..ok.clone()
            },
            "resource_types",
        );
        bad(
            Grant {
                records: vec!["abc".into()],
                ..ok.clone()
            },
            "records",
        );
        bad(
            Grant {
                period: Period {
                    start_ms: Some(5),
                    end_ms: Some(5),
                },
                ..ok.clone()
            },
            "period",
        );
        bad(grant("", Decision::Permit), "grantee");
        let json = r#"{"grantee":"dr-a","decision":"permit","extra":1}"#;
        assert!(
            serde_json::from_str::<Grant>(json).is_err(),
            "unknown fields refused"
        );
    }
}
