//! FHIR R4 JSON input: what medanchor reads out of a resource or Bundle to seal it (type, id,
//! patient identifiers), after validating it against FHIR R4 ([`validate`]). The resource
//! itself is kept byte for byte; normalization of HL7v2 into FHIR is a separate step.

pub mod validate;

use validate::Node;

use crate::envelope::{RejectKind, Rejection};

/// Metadata of a FHIR resource or Bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirMeta {
    pub resource_type: String,
    /// `Bundle.type` for a Bundle, else empty.
    pub kind: String,
    /// `Bundle.identifier.value`, else the resource id; empty when there is neither.
    pub id: String,
    /// `value^system^type-code` of every Patient identifier found (the resource itself when it
    /// is a Patient, or the Patients in a Bundle), then `Patient/<id>` references of the
    /// resource's `subject`/`patient` when there is no Patient.
    pub patient_ids: Vec<String>,
}

fn bad(label: &'static str, reason: impl Into<String>) -> Rejection {
    Rejection::new(RejectKind::NotHl7, 100, label, reason)
}

/// How many issue paths an `invalid_fhir` rejection's reason names.
const REASON_PATHS: usize = 3;

/// The rejection of FHIR that parses but is not valid R4: label `invalid_fhir`, a reason naming
/// the first paths and rules (never values), and the OperationOutcome listing every issue.
pub fn invalid(issues: &[validate::Issue]) -> Rejection {
    let errors: Vec<&validate::Issue> = issues.iter().filter(|i| i.severity.is_error()).collect();
    let mut reason = format!("invalid FHIR R4 ({} error", errors.len());
    if errors.len() != 1 {
        reason.push('s');
    }
    reason.push_str("): ");
    let shown: Vec<String> = errors
        .iter()
        .take(REASON_PATHS)
        .map(|i| i.to_string())
        .collect();
    reason.push_str(&shown.join("; "));
    if errors.len() > REASON_PATHS {
        reason.push_str("; …");
    }
    // HL7 table 0357: 101 required field missing, 103 table value not found, 102 data type error.
    let code = match errors.first().map(|i| i.code) {
        Some(validate::IssueCode::Required) => 101,
        Some(validate::IssueCode::CodeInvalid) => 103,
        _ => 102,
    };
    let mut r = Rejection::new(RejectKind::Unacceptable, code, "invalid_fhir", reason);
    r.outcome = Some(Box::new(validate::operation_outcome(issues)));
    r
}

/// Reads the metadata of a FHIR JSON resource, once it is valid FHIR R4
/// ([`validate::Validator::shared`]). Errors name the problem and its path, never content.
pub fn read(bytes: &[u8]) -> Result<FhirMeta, Rejection> {
    // RFC 8259 §8.1: a UTF-8 byte order mark may be ignored (the raw bytes are kept as sent).
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let v = Node::parse_bytes(bytes).map_err(|e| {
        // serde_json keeps the last of duplicate keys, another reader the first: the same bytes
        // would be two different resources (a Patient to one, a Bundle to the other).
        if validate::doc::is_repeated_key(&e) {
            return bad("not_fhir", validate::doc::REPEATED_KEY);
        }
        bad(
            "not_json",
            format!(
                "not valid JSON at line {} column {} ({})",
                e.line(),
                e.column(),
                validate::why_not_json(&e)
            ),
        )
    })?;
    let Some(obj) = v.as_object() else {
        return Err(bad("not_fhir", "a FHIR resource must be a JSON object"));
    };
    let resource_type = obj
        .get("resourceType")
        .and_then(Node::as_str)
        .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| {
            bad(
                "not_fhir",
                "resourceType is missing or not a FHIR type name",
            )
        })?
        .to_string();
    validate::Validator::shared()
        .validate_doc(&v)
        .map_err(|issues| invalid(&issues))?;
    let text = |v: Option<&Node>| v.and_then(Node::as_str).unwrap_or("").to_string();
    let mut meta = FhirMeta {
        kind: if resource_type == "Bundle" {
            text(obj.get("type"))
        } else {
            String::new()
        },
        id: obj
            .get("identifier")
            .filter(|_| resource_type == "Bundle")
            .and_then(|i| i.get("value"))
            .and_then(Node::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| text(obj.get("id"))),
        resource_type,
        patient_ids: Vec::new(),
    };
    if meta.resource_type == "Bundle" {
        let entries = obj.get("entry").and_then(Node::as_array);
        for resource in entries
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("resource"))
        {
            collect_patient(resource, &mut meta.patient_ids);
        }
        if meta.patient_ids.is_empty() {
            for resource in entries
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("resource"))
            {
                collect_reference(resource, &mut meta.patient_ids);
            }
        }
    } else {
        collect_patient(&v, &mut meta.patient_ids);
        if meta.patient_ids.is_empty() {
            collect_reference(&v, &mut meta.patient_ids);
        }
    }
    meta.patient_ids.dedup();
    Ok(meta)
}

fn collect_patient(resource: &Node, out: &mut Vec<String>) {
    if resource.get("resourceType").and_then(Node::as_str) != Some("Patient") {
        return;
    }
    let identifiers = resource.get("identifier").and_then(Node::as_array);
    for i in identifiers.into_iter().flatten() {
        let value = i.get("value").and_then(Node::as_str).unwrap_or("").trim();
        if value.is_empty() {
            continue;
        }
        let system = i.get("system").and_then(Node::as_str).unwrap_or("").trim();
        let code = i
            .get("type")
            .and_then(|t| t.get("coding"))
            .and_then(Node::as_array)
            .and_then(<[Node]>::first)
            .and_then(|c| c.get("code"))
            .and_then(Node::as_str)
            .unwrap_or("")
            .trim();
        out.push(format!("{value}^{system}^{code}"));
    }
}

fn collect_reference(resource: &Node, out: &mut Vec<String>) {
    for field in ["subject", "patient"] {
        if let Some(r) = resource
            .get(field)
            .and_then(|s| s.get("reference"))
            .and_then(Node::as_str)
            .filter(|r| r.starts_with("Patient/"))
        {
            out.push(format!("{r}^^REF"));
        }
    }
}

/// Whether `bytes` look like FHIR JSON rather than HL7v2 (format `auto`): a JSON object.
pub fn looks_like_json(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read as a Bundle by serde_json (the last key wins) and as a Patient with an identifier
    /// by readers that keep the first: refused, wherever the repeat is, however it is spelled.
    #[test]
    fn an_object_with_a_repeated_key_is_refused() {
        for json in [
            br#"{"resourceType":"Patient","resourceType":"Bundle","id":"X","identifier":[{"value":"S-1"}]}"#.as_slice(),
            br#"{"resourceType":"Patient","identifier":[{"value":"1","value":"2"}]}"#,
            br#"{"resourceType":"Patient","id":"a","\u0069d":"b"}"#,
        ] {
            let e = read(json).unwrap_err();
            assert_eq!(e.label, "not_fhir", "{}", String::from_utf8_lossy(json));
            // The rule, not the value: the reason is the same whatever the document holds.
            assert_eq!(e.reason, validate::doc::REPEATED_KEY);
        }
        assert!(
            read(br#"{"resourceType":"Patient","identifier":[{"value":"1"},{"value":"2"}]}"#)
                .is_ok()
        );
    }

    #[test]
    fn a_patient_gives_its_identifiers() {
        let m = read(br#"{"resourceType":"Patient","id":"p1","identifier":[{"system":"urn:oid:1.2.3","value":"12345","type":{"coding":[{"code":"MR"}]}},{"value":" "}]}"#).unwrap();
        assert_eq!(m.resource_type, "Patient");
        assert_eq!(m.id, "p1");
        assert_eq!(m.patient_ids, ["12345^urn:oid:1.2.3^MR"]);
    }

    #[test]
    fn a_bundle_gives_its_type_identifier_and_patients() {
        let m = read(br#"{"resourceType":"Bundle","type":"transaction","identifier":{"value":"B-9"},
            "entry":[{"resource":{"resourceType":"Observation","status":"final","code":{"text":"t"},"subject":{"reference":"Patient/7"}},
                      "request":{"method":"POST","url":"Observation"}},
                     {"resource":{"resourceType":"Patient","identifier":[{"system":"urn:s","value":"v"}]},
                      "request":{"method":"POST","url":"Patient"}}]}"#).unwrap();
        assert_eq!((m.kind.as_str(), m.id.as_str()), ("transaction", "B-9"));
        assert_eq!(m.patient_ids, ["v^urn:s^"]);
    }

    #[test]
    fn a_resource_without_patient_falls_back_to_its_subject_reference() {
        let m =
            read(br#"{"resourceType":"Observation","status":"final","code":{"text":"t"},"subject":{"reference":"Patient/7"}}"#).unwrap();
        assert_eq!(m.patient_ids, ["Patient/7^^REF"]);
    }

    #[test]
    fn bad_input_is_named_without_content() {
        for (input, label) in [
            (&b"{\"resourceType\":\"Pat"[..], "not_json"),
            (b"[1,2]", "not_fhir"),
            (b"{\"id\":\"secret-123\"}", "not_fhir"),
            (b"{\"resourceType\":\"../etc\"}", "not_fhir"),
        ] {
            let e = read(input).unwrap_err();
            assert_eq!(e.label, label);
            assert!(!e.reason.contains("secret"));
        }
    }

    /// The sender learns what is wrong with its JSON (a number out of range was only a
    /// "Syntax" error), from the parser's fixed texts, never from the input's values.
    #[test]
    fn json_errors_say_what_the_parser_found() {
        let e =
            read(br#"{"resourceType":"Observation","valueQuantity":{"value":1e400}}"#).unwrap_err();
        assert_eq!(e.label, "not_json");
        assert!(e.reason.ends_with("(number out of range)"), "{}", e.reason);
        let e = read(br#"{"resourceType":"Patient","id":"secret-123"#).unwrap_err();
        assert!(
            e.reason.ends_with("(EOF while parsing a string)"),
            "{}",
            e.reason
        );
        assert!(!e.reason.contains("secret"));
    }

    #[test]
    fn auto_detection() {
        assert!(looks_like_json(b"\xEF\xBB\xBF \n{\"a\":1}"));
        assert!(!looks_like_json(b"MSH|^~\\&|"));
    }
}
