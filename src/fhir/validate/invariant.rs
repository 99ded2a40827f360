//! R4 invariants of the types records are shared in (Patient, Observation, Appointment,
//! AllergyIntolerance, Condition, ServiceRequest and the data types they hold), which a JSON
//! schema cannot say. Most ask only which elements an object holds ([`PRESENCE`], [`ONE_OF`]):
//! the walk reads them from the keys as sent, and the mapper's check from the keys it writes,
//! so both apply the same table. The rest compare values ([`values`]); the mapper's check
//! leaves those to the walk when the elements they read are there ([`WALK_DECIDES`]).
//!
//! An element exists as FHIRPath reads it: its key, or for a primitive its `_name` alone (an
//! element with extensions and no value), or for a choice `name[x]` any of its types.

use super::doc::{Node, Object};

/// What a [`PRESENCE`] rule asks of its two elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holds {
    /// With the first, the second is there too (`data.empty() or contentType.exists()`).
    Requires,
    /// Not both (`dataAbsentReason.empty() or value.empty()`).
    Excludes,
    /// Both or neither (`start.exists() = end.exists()`).
    Same,
}

/// One invariant on which elements an object of a type holds.
pub(crate) struct Presence {
    pub ty: &'static str,
    pub first: &'static str,
    pub holds: Holds,
    pub second: &'static str,
    /// The rule's key and its text, as issues name it.
    pub message: &'static str,
}

const fn rule(
    ty: &'static str,
    first: &'static str,
    holds: Holds,
    second: &'static str,
    message: &'static str,
) -> Presence {
    Presence {
        ty,
        first,
        holds,
        second,
        message,
    }
}

const QTY_3: &str = "qty-3: if a code for the unit is present, the system shall also be present";

pub(crate) const PRESENCE: &[Presence] = &[
    rule(
        "Attachment",
        "data",
        Holds::Requires,
        "contentType",
        "att-1: if the Attachment has data, it shall have a contentType",
    ),
    rule(
        "ContactPoint",
        "value",
        Holds::Requires,
        "system",
        "cpt-2: a system is required if a value is provided",
    ),
    rule("Quantity", "code", Holds::Requires, "system", QTY_3),
    rule("Age", "code", Holds::Requires, "system", QTY_3),
    rule("Count", "code", Holds::Requires, "system", QTY_3),
    rule("Distance", "code", Holds::Requires, "system", QTY_3),
    rule("Duration", "code", Holds::Requires, "system", QTY_3),
    rule(
        "ServiceRequest",
        "orderDetail",
        Holds::Requires,
        "code",
        "prr-1: orderDetail shall only be present if code is present",
    ),
    rule(
        "Observation",
        "dataAbsentReason",
        Holds::Excludes,
        "value[x]",
        "obs-6: dataAbsentReason shall only be present if Observation.value[x] is not present",
    ),
    rule(
        "Appointment",
        "start",
        Holds::Same,
        "end",
        "app-2: either start and end are specified, or neither",
    ),
];

/// Invariants that ask for at least one of some elements: the mapper holds them as one more
/// requirement of the type (it leaves out an object that meets none), the walk as an error.
pub(crate) const ONE_OF: &[(&str, &[&str], &str)] = &[
    (
        "Patient_Contact",
        &["name", "telecom", "address", "organization"],
        "pat-1: a contact shall at least contain a contact's details or a reference to an organization",
    ),
    (
        "Organization",
        &["identifier", "name"],
        "org-1: the organization shall at least have a name or an identifier",
    ),
    (
        "Observation_ReferenceRange",
        &["low", "high", "text"],
        "obs-3: a reference range must have at least a low or a high or text",
    ),
    (
        "Appointment_Participant",
        &["type", "actor"],
        "app-1: either the type or actor on the participant shall be specified",
    ),
];

/// When the mapper's check, which knows the keys it writes but not the codes, leaves an object
/// to the walk for an invariant of [`values`].
pub(crate) enum Decides {
    /// When every element named is there (the rule then reads their codes).
    If(&'static [&'static str]),
    /// Unless every element named is there (the rule holds whatever the codes once they are).
    Unless(&'static [&'static str]),
}

/// Per type, when [`values`]' invariants leave the object to the walk. `Range` is not here:
/// the check compares its bounds itself.
pub(crate) const WALK_DECIDES: &[(&str, Decides)] = &[
    // app-4 reads the status; app-3 holds for any status once start and end are there.
    ("Appointment", Decides::If(&["cancelationReason"])),
    ("Appointment", Decides::Unless(&["start", "end"])),
    // ait-2 reads the verification status; ait-1 holds once clinicalStatus is there.
    ("AllergyIntolerance", Decides::If(&["verificationStatus"])),
    ("AllergyIntolerance", Decides::Unless(&["clinicalStatus"])),
    // con-5 and con-4 read the statuses (con-3 is a guideline: a warning only).
    ("Condition", Decides::If(&["verificationStatus"])),
    ("Condition", Decides::If(&["abatement[x]"])),
    // obs-7 compares the codes.
    ("Observation", Decides::If(&["value[x]", "component"])),
];

/// Whether any type named here has an invariant of this module.
pub(crate) fn applies(ty: &str) -> bool {
    ty == "Range"
        || PRESENCE.iter().any(|r| r.ty == ty)
        || ONE_OF.iter().any(|(t, _, _)| *t == ty)
        || WALK_DECIDES.iter().any(|(t, _)| *t == ty)
}

/// Whether `key` (as sent, or as the mapper names an element) is the element `want` (`status`,
/// `value[x]`) as FHIRPath's `exists()` reads it: `_name` counts, a choice by any of its types.
pub(crate) fn names(key: &str, want: &str) -> bool {
    let key = key.strip_prefix('_').unwrap_or(key);
    match want.strip_suffix("[x]") {
        Some(prefix) => key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())),
        None => key == want,
    }
}

fn exists(obj: &Object<'_>, want: &str) -> bool {
    obj.keys().any(|k| names(k, want))
}

/// Whether the presence rule holds, given which of its two elements exist.
pub(crate) fn holds(h: Holds, first: bool, second: bool) -> bool {
    match h {
        Holds::Requires => !first || second,
        Holds::Excludes => !(first && second),
        Holds::Same => first == second,
    }
}

/// The invariants of type `ty` that `obj` breaks: (message, whether an error; a guideline is a
/// warning).
pub(crate) fn broken(ty: &str, obj: &Object<'_>) -> Vec<(&'static str, bool)> {
    let mut out = Vec::new();
    for r in PRESENCE.iter().filter(|r| r.ty == ty) {
        if !holds(r.holds, exists(obj, r.first), exists(obj, r.second)) {
            out.push((r.message, true));
        }
    }
    for (_, names, message) in ONE_OF.iter().filter(|(t, _, _)| *t == ty) {
        if !names.iter().any(|n| exists(obj, n)) {
            out.push((*message, true));
        }
    }
    values(ty, obj, &mut out);
    out
}

const ALLERGY_VERIFICATION: &str =
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification";
const CONDITION_VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
const CONDITION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";

/// Whether the CodeableConcept `cc` has a coding of `system` whose code is one of `codes`.
fn coded(cc: Option<&Node<'_>>, system: &str, codes: &[&str]) -> bool {
    let codings = cc.and_then(|c| c.get("coding")).and_then(Node::as_array);
    codings.into_iter().flatten().any(|c| {
        c.get("system").and_then(Node::as_str) == Some(system)
            && c.get("code")
                .and_then(Node::as_str)
                .is_some_and(|code| codes.contains(&code))
    })
}

/// Whether the verification status (of code system `verification`) says entered in error, and
/// whether there is a clinical status.
fn statuses(obj: &Object<'_>, verification: &str) -> (bool, bool) {
    let voided = coded(
        obj.get("verificationStatus"),
        verification,
        &["entered-in-error"],
    );
    (voided, exists(obj, "clinicalStatus"))
}

/// The invariants that read values.
fn values(ty: &str, obj: &Object<'_>, out: &mut Vec<(&'static str, bool)>) {
    let s = |k: &str| obj.get(k).and_then(Node::as_str);
    match ty {
        "Range" => {
            let bound = |k: &str| obj.get(k).filter(|q| q.is_object());
            if let (Some(low), Some(high)) = (bound("low"), bound("high")) {
                // FHIRPath compares quantities of the same unit; of different units it has no
                // answer, and the invariant holds.
                fn unit<'a>(
                    q: &'a Node<'_>,
                ) -> (Option<&'a str>, Option<&'a str>, Option<&'a str>) {
                    let s = |k| q.get(k).and_then(Node::as_str);
                    (s("system"), s("code"), s("unit"))
                }
                let value = |q: &Node<'_>| q.get("value").and_then(Node::as_f64);
                let same_unit = {
                    let (a, b) = (unit(low), unit(high));
                    if a.1.is_some() || b.1.is_some() {
                        (a.0, a.1) == (b.0, b.1)
                    } else {
                        a.2 == b.2
                    }
                };
                if let (Some(l), Some(h), true) = (value(low), value(high), same_unit) {
                    if l > h {
                        out.push((
                            "rng-2: if present, low shall have a lower value than high",
                            true,
                        ));
                    }
                }
            }
        }
        "Appointment" => {
            let status = s("status");
            let timed = exists(obj, "start") && exists(obj, "end");
            if !timed && !matches!(status, Some("proposed" | "cancelled" | "waitlist")) {
                out.push((
                    "app-3: only proposed or cancelled appointments can be missing start/end dates",
                    true,
                ));
            }
            // R4's expression says `no-show`, its code is `noshow`: either is a no-show.
            if exists(obj, "cancelationReason")
                && !matches!(status, Some("noshow" | "no-show" | "cancelled"))
            {
                out.push((
                    "app-4: cancelation reason is only used for appointments that have been cancelled, or no-show",
                    true,
                ));
            }
        }
        "AllergyIntolerance" => {
            let (voided, clinical) = statuses(obj, ALLERGY_VERIFICATION);
            if !voided && !clinical {
                out.push((
                    "ait-1: clinicalStatus shall be present if verificationStatus is not entered-in-error",
                    true,
                ));
            }
            if voided && clinical {
                out.push((
                    "ait-2: clinicalStatus shall not be present if verificationStatus is entered-in-error",
                    true,
                ));
            }
        }
        "Condition" => {
            let (voided, clinical) = statuses(obj, CONDITION_VERIFICATION);
            if voided && clinical {
                out.push((
                    "con-5: clinicalStatus shall not be present if verificationStatus is entered-in-error",
                    true,
                ));
            }
            if exists(obj, "abatement[x]")
                && !coded(
                    obj.get("clinicalStatus"),
                    CONDITION_CLINICAL,
                    &["inactive", "resolved", "remission"],
                )
            {
                out.push((
                    "con-4: if condition is abated, then clinicalStatus must be either inactive, resolved, or remission",
                    true,
                ));
            }
            let problem = obj
                .get("category")
                .and_then(Node::as_array)
                .into_iter()
                .flatten()
                .any(|c| coded(Some(c), CONDITION_CATEGORY, &["problem-list-item"]));
            if problem && !voided && !clinical {
                out.push((
                    "con-3: clinicalStatus should be present if verificationStatus is not entered-in-error and category is problem-list-item",
                    false,
                ));
            }
        }
        "Observation" => {
            // obs-7: a component with the Observation's own code carries the value, not both.
            // FHIRPath's `intersect` compares whole Codings (a display that differs makes
            // another Coding).
            fn codings<'a, 'v>(n: Option<&'a Node<'v>>) -> &'a [Node<'v>] {
                n.and_then(|c| c.get("coding"))
                    .and_then(Node::as_array)
                    .unwrap_or(&[])
            }
            if exists(obj, "value[x]") {
                let own = codings(obj.get("code"));
                let clash = obj
                    .get("component")
                    .and_then(Node::as_array)
                    .into_iter()
                    .flatten()
                    .any(|comp| codings(comp.get("code")).iter().any(|c| own.contains(c)));
                if clash {
                    out.push((
                        "obs-7: if Observation.code is the same as an Observation.component.code then the value element associated with the code shall not be present",
                        true,
                    ));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(json: &str) -> Object<'static> {
        let v: &'static str = Box::leak(json.to_string().into_boxed_str());
        match Node::parse(v).unwrap() {
            Node::Object(o) => o,
            _ => panic!("not an object"),
        }
    }

    fn rules(ty: &str, json: &str) -> Vec<&'static str> {
        broken(ty, &obj(json))
            .into_iter()
            .map(|(m, _)| m.split(':').next().unwrap())
            .collect()
    }

    #[test]
    fn presence_rules_read_keys_underscores_and_choices() {
        assert_eq!(rules("ContactPoint", r#"{"value":"1"}"#), ["cpt-2"]);
        assert!(rules("ContactPoint", r#"{"value":"1","_system":{"id":"a"}}"#).is_empty());
        assert_eq!(rules("Attachment", r#"{"data":"AA=="}"#), ["att-1"]);
        assert_eq!(rules("Quantity", r#"{"value":1,"code":"mg"}"#), ["qty-3"]);
        assert_eq!(
            rules(
                "Observation",
                r#"{"status":"final","valueString":"x","dataAbsentReason":{"text":"y"}}"#
            ),
            ["obs-6"]
        );
        assert_eq!(
            rules(
                "Appointment",
                r#"{"status":"booked","start":"2024-01-01T00:00:00Z"}"#
            ),
            ["app-2", "app-3"]
        );
        assert!(rules("Appointment", r#"{"status":"proposed"}"#).is_empty());
        assert_eq!(
            rules("ServiceRequest", r#"{"orderDetail":[{"text":"x"}]}"#),
            ["prr-1"]
        );
        assert_eq!(
            rules("Patient_Contact", r#"{"relationship":[{"text":"x"}]}"#),
            ["pat-1"]
        );
        assert_eq!(rules("Organization", r#"{"active":true}"#), ["org-1"]);
        assert_eq!(
            rules(
                "Observation_ReferenceRange",
                r#"{"age":{"low":{"value":1}}}"#
            ),
            ["obs-3"]
        );
    }

    #[test]
    fn value_rules() {
        assert_eq!(
            rules("Range", r#"{"low":{"value":5},"high":{"value":3}}"#),
            ["rng-2"]
        );
        // Different units: FHIRPath has no answer, and the invariant holds.
        assert!(rules("Range", r#"{"low":{"value":5,"system":"http://unitsofmeasure.org","code":"g"},"high":{"value":3,"system":"http://unitsofmeasure.org","code":"kg"}}"#).is_empty());
        assert!(rules("Range", r#"{"low":{"value":3},"high":{"value":5}}"#).is_empty());
        assert_eq!(
            rules(
                "Appointment",
                r#"{"status":"booked","start":"a","end":"b","cancelationReason":{"text":"x"}}"#
            ),
            ["app-4"]
        );
        assert_eq!(rules("AllergyIntolerance", r#"{"patient":{}}"#), ["ait-1"]);
        let voided = r#"{"verificationStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/allergyintolerance-verification","code":"entered-in-error"}]}"#;
        assert!(rules("AllergyIntolerance", &format!("{voided}}}")).is_empty());
        assert_eq!(
            rules(
                "AllergyIntolerance",
                &format!(r#"{voided},"clinicalStatus":{{"text":"a"}}}}"#)
            ),
            ["ait-2"]
        );
        assert_eq!(
            rules(
                "Condition",
                r#"{"abatementString":"gone","clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]}}"#
            ),
            ["con-4"]
        );
        let problem = r#"{"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-category","code":"problem-list-item"}]}]}"#;
        let guideline = broken("Condition", &obj(problem));
        assert_eq!(guideline.len(), 1, "{guideline:?}");
        assert!(guideline[0].0.starts_with("con-3") && !guideline[0].1);
        assert_eq!(
            rules(
                "Observation",
                r#"{"code":{"coding":[{"system":"s","code":"c"}]},"valueString":"x","component":[{"code":{"coding":[{"system":"s","code":"c"}]}}]}"#
            ),
            ["obs-7"]
        );
        // Whole Codings compare: another display is another Coding (attack round 8).
        assert!(rules(
            "Observation",
            r#"{"code":{"coding":[{"system":"s","code":"c","display":"a"}]},"valueString":"x","component":[{"code":{"coding":[{"system":"s","code":"c","display":"b"}]}}]}"#
        )
        .is_empty());
        assert!(rules(
            "Appointment",
            r#"{"status":"noshow","start":"a","end":"b","cancelationReason":{"text":"x"}}"#
        )
        .is_empty());
    }
}
