//! FHIR R4 JSON validation: the official R4 JSON schema (one compiled validator per resource
//! type) plus the invariants that matter for sharing records, which a JSON schema cannot
//! express. Used for inbound FHIR ([`crate::fhir::read`]) and for every Bundle the gateway
//! builds. What is checked, the corpus score and the known gaps: `docs/fhir-validation.md`.
//!
//! Issues name the rule and the element's path, never the element's value: the value may be
//! patient data, and issues go back to senders and into logs.

mod bundle;
pub mod doc;
pub(crate) mod element;
pub(crate) mod invariant;
#[cfg(test)]
mod oracle;
pub(crate) mod primitive;
mod schema;
mod walk;
/// Which elements are the types of one choice (`deceasedDateTime`), for the mapper's model.
pub(crate) use schema::choice_groups;
/// `per-1` as the walk reads it, for the mapper to keep a Period it writes ordered.
pub(crate) use walk::period_ordered;
mod xhtml;
/// Narrative XHTML as the walk reads it, for the mapper to leave out a `div` the check refuses
/// (and lint to refuse a constant one).
pub(crate) use xhtml::check as check_xhtml;

use std::sync::OnceLock;

use serde_json::{json, Value};

pub use doc::Node;

pub use walk::{MAX_DEPTH, MAX_STRING_BYTES};

/// How bad an issue is (OperationOutcome.issue.severity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
    /// Whether the issue makes the resource invalid.
    pub fn is_error(self) -> bool {
        matches!(self, Severity::Fatal | Severity::Error)
    }
}

/// FHIR issue-type codes (http://hl7.org/fhir/issue-type) used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    TooLong,
    CodeInvalid,
    BusinessRule,
    NotFound,
    TooCostly,
    Exception,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Invariant => "invariant",
            IssueCode::Security => "security",
            IssueCode::TooLong => "too-long",
            IssueCode::CodeInvalid => "code-invalid",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::NotFound => "not-found",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Exception => "exception",
        }
    }
}

/// One finding: where (a FHIRPath-like expression such as `Bundle.entry[3].resource.status`),
/// which rule, and how bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    pub path: String,
    /// Names the rule; never holds the offending value.
    pub message: String,
}

impl Issue {
    pub fn new(severity: Severity, code: IssueCode, path: &str, message: String) -> Issue {
        Issue {
            severity,
            code,
            path: path.to_string(),
            message,
        }
    }
    pub(crate) fn error(code: IssueCode, path: String, message: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Error,
            code,
            path,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Switches of the checks that are a matter of policy. The defaults are the gateway's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Accept `//` and `/* */` comments in JSON (JSON5-style input; off: RFC 8259 only).
    pub allow_json_comments: bool,
    /// Refuse plain-text strings holding active HTML (`<script>`, `<img …>`, `javascript:`),
    /// which a receiving system might render unescaped. On by default.
    pub security_checks: bool,
    /// Accept URLs on the example domains (example.org, acme.com, …) in attachments and
    /// extension URLs. On by default (the specification's own examples use them).
    pub allow_example_urls: bool,
    /// Validate contained resources (their schema, ids, `dom-*` rules). On by default.
    pub check_contained: bool,
    /// Accept HTML tags inside markdown. On by default (markdown allows them).
    pub markdown_html: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            allow_json_comments: false,
            security_checks: true,
            allow_example_urls: true,
            check_contained: true,
            markdown_html: true,
        }
    }
}

/// Validates FHIR R4 JSON. The schema is read once per process and each resource type's
/// validator is compiled on first use and then shared, whichever [`Validator`] asks.
#[derive(Debug, Clone, Default)]
pub struct Validator {
    options: Options,
}

impl Validator {
    /// The gateway's validator (default [`Options`]).
    pub fn shared() -> &'static Validator {
        static SHARED: OnceLock<Validator> = OnceLock::new();
        SHARED.get_or_init(Validator::default)
    }

    pub fn with_options(options: Options) -> Validator {
        Validator { options }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Reads and compiles the schema now instead of on first use (the first validation in a
    /// process costs that: tens of milliseconds).
    pub fn warm_up(&self) {
        schema::Model::get();
    }

    /// Validates a resource or Bundle. `Err` holds every issue (warnings too) when at least
    /// one is an error; warnings alone give `Ok`.
    pub fn validate(&self, resource: &Value) -> Result<(), Vec<Issue>> {
        self.validate_doc(&Node::from_value(resource))
    }

    /// [`Validator::validate`] of a parsed document.
    pub fn validate_doc(&self, doc: &Node<'_>) -> Result<(), Vec<Issue>> {
        let issues = self.check_doc(doc);
        if issues.iter().any(|i| i.severity.is_error()) {
            Err(issues)
        } else {
            Ok(())
        }
    }

    /// Every issue found, warnings included, errors first in document order.
    pub fn check(&self, resource: &Value) -> Vec<Issue> {
        self.check_doc(&Node::from_value(resource))
    }

    /// [`Validator::check`] of a parsed document.
    pub fn check_doc(&self, doc: &Node<'_>) -> Vec<Issue> {
        let mut w = walk::Walker::new(schema::Model::get(), &self.options);
        let mut path = String::with_capacity(256);
        w.resource(doc, &mut path, 0, walk::Place::Root);
        let mut issues = std::mem::take(&mut w.issues);
        if issues.is_empty() {
            return issues;
        }
        // One error per path and code: the more specific check comes first (a calendar date
        // before the schema's pattern for the same value).
        let mut seen = std::collections::HashSet::new();
        issues.retain(|i| !i.severity.is_error() || seen.insert((i.path.clone(), i.code)));
        issues.sort_by_key(|i| i.severity);
        issues
    }

    /// The walk alone, without issue sorting (the benchmark's).
    #[doc(hidden)]
    pub fn bench_walk(&self, doc: &Node<'_>) -> usize {
        let mut w = walk::Walker::new(schema::Model::get(), &self.options);
        w.resource(doc, &mut String::with_capacity(256), 0, walk::Place::Root);
        w.issues.len() + w.resources.len()
    }

    /// Parses and validates JSON bytes. Malformed JSON is one fatal issue whose path is the
    /// element the parser had reached (`Patient.name[0]`), without content.
    pub fn validate_bytes(&self, bytes: &[u8]) -> Result<(), Vec<Issue>> {
        parse(bytes, self.options.allow_json_comments, |doc| {
            self.validate_doc(doc)
        })?
    }

    /// Every issue of JSON bytes: the parse error, or what [`Validator::check`] finds.
    pub fn check_bytes(&self, bytes: &[u8]) -> Vec<Issue> {
        parse(bytes, self.options.allow_json_comments, |doc| {
            self.check_doc(doc)
        })
        .unwrap_or_else(|issues| issues)
    }
}

/// Parses FHIR JSON (optionally with comments) and hands the document to `then`. On error: a
/// fatal `structure` issue naming the line, column and the element path reached.
pub fn parse<R>(
    bytes: &[u8],
    allow_comments: bool,
    then: impl FnOnce(&Node<'_>) -> R,
) -> Result<R, Vec<Issue>> {
    // RFC 8259 §8.1: a parser may ignore a UTF-8 byte order mark.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let stripped;
    let input = if allow_comments {
        stripped = strip_comments(bytes);
        &stripped[..]
    } else {
        bytes
    };
    match Node::parse_bytes(input) {
        Ok(doc) => Ok(then(&doc)),
        Err(e) => {
            let at = json_path_at(input, e.line(), e.column());
            let message = if doc::is_repeated_key(&e) {
                format!(
                    "{} (line {} column {})",
                    doc::REPEATED_KEY,
                    e.line(),
                    e.column()
                )
            } else {
                format!(
                    "not valid JSON at line {} column {} ({}){}",
                    e.line(),
                    e.column(),
                    why_not_json(&e),
                    if !allow_comments && has_comment(bytes) {
                        ": comments are not allowed in JSON"
                    } else {
                        ""
                    }
                )
            };
            Err(vec![Issue::new(
                Severity::Fatal,
                IssueCode::Structure,
                &at,
                message,
            )])
        }
    }
}

/// What the parser found wrong, said without echoing the input: a syntax error's own text
/// (`number out of range`, `EOF while parsing a string`: fixed texts that name no value), and
/// only the category for anything else.
pub(crate) fn why_not_json(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => {
            let text = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            text.strip_suffix(&suffix).unwrap_or(&text).to_string()
        }
        other => format!("{other:?} error"),
    }
}

fn has_comment(bytes: &[u8]) -> bool {
    strip_comments(bytes) != bytes
}

/// Replaces `//…` and `/*…*/` outside strings with spaces (so positions stay) — returns a
/// shorter buffer only if a comment is unterminated.
fn strip_comments(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut in_str = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_str {
            out.push(b);
            if b == b'\\' && i + 1 < bytes.len() {
                out.push(bytes[i + 1]);
                i += 2;
                continue;
            }
            in_str = b != b'"';
            i += 1;
            continue;
        }
        match (b, bytes.get(i + 1)) {
            (b'"', _) => {
                in_str = true;
                out.push(b);
                i += 1;
            }
            (b'/', Some(b'/')) => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    out.push(b' ');
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                let end = bytes[i + 2..].windows(2).position(|w| w == b"*/");
                let Some(end) = end else {
                    return out; // unterminated: leave it to the parser to fail
                };
                for &c in &bytes[i..i + 2 + end + 2] {
                    out.push(if c == b'\n' { b'\n' } else { b' ' });
                }
                i += end + 4;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The FHIRPath-like path of the element a JSON parser had reached at (line, column): a
/// single forward scan with a heap stack, tolerant of the very errors it is asked about.
fn json_path_at(bytes: &[u8], line: usize, column: usize) -> String {
    // Byte offset of (line, column); serde_json counts columns in bytes, from 1.
    let mut offset = bytes.len();
    let mut l = 1;
    for (i, b) in bytes.iter().enumerate() {
        if l == line {
            offset = (i + column.saturating_sub(1)).min(bytes.len());
            break;
        }
        if *b == b'\n' {
            l += 1;
        }
    }
    enum Frame {
        Object(Option<String>),
        Array(usize),
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut root_type: Option<String> = None;
    let mut i = 0;
    let mut last_string: Option<(usize, usize)> = None;
    while i < offset {
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                last_string = Some((start, j.min(bytes.len())));
                i = j + 1;
                continue;
            }
            b':' => {
                if let (Some(Frame::Object(key)), Some((s, e))) = (stack.last_mut(), last_string) {
                    *key = Some(String::from_utf8_lossy(&bytes[s..e]).into_owned());
                }
                if stack.len() == 1 {
                    if let Some(Frame::Object(Some(k))) = stack.last() {
                        if k == "resourceType" {
                            // The value follows: read it.
                            let rest = &bytes[i + 1..];
                            if let Some(q) = rest.iter().position(|b| *b == b'"') {
                                let v = &rest[q + 1..];
                                if let Some(end) = v.iter().position(|b| *b == b'"') {
                                    root_type =
                                        Some(String::from_utf8_lossy(&v[..end]).into_owned());
                                }
                            }
                        }
                    }
                }
            }
            b'{' => stack.push(Frame::Object(None)),
            b'[' => stack.push(Frame::Array(0)),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array(n)) => *n += 1,
                Some(Frame::Object(k)) => *k = None,
                None => {}
            },
            _ => {}
        }
        i += 1;
    }
    if root_type.is_none() {
        root_type = root_type_ahead(&bytes[offset.min(bytes.len())..]);
    }
    let mut path = root_type
        .filter(|t| t.bytes().all(|b| b.is_ascii_alphanumeric()) && !t.is_empty())
        .unwrap_or_else(|| "(document)".to_string());
    // Every open container down to the value the parser stopped in; in an object between two
    // members, the member that follows.
    let last = stack.len().saturating_sub(1);
    for (n, f) in stack.iter().enumerate() {
        match f {
            Frame::Object(Some(k)) => {
                path.push('.');
                schema::push_name(&mut path, k);
            }
            Frame::Object(None) if n == last => {
                if let Some(k) = next_key(&bytes[offset.min(bytes.len())..]) {
                    path.push('.');
                    schema::push_name(&mut path, &k);
                }
            }
            Frame::Array(i) if n > 0 => {
                use std::fmt::Write;
                let _ = write!(path, "[{i}]");
            }
            _ => {}
        }
    }
    path
}

/// The first `"resourceType": "X"` in the rest of a document (the parser failed before it).
fn root_type_ahead(rest: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(&rest[..rest.len().min(4096)]).ok()?;
    // Quoted or not (the error may be the missing quotes).
    let at = text.find("resourceType")? + 12;
    let after = text[at..].strip_prefix('"').unwrap_or(&text[at..]);
    let value = after
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    Some(value[..value.find('"')?].to_string())
}

/// The next member name (`"name" :`) in the rest of a document, if one comes soon.
fn next_key(rest: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(&rest[..rest.len().min(1024)]).ok()?;
    let start = text.find('"')? + 1;
    let end = start + text[start..].find('"')?;
    text[end + 1..]
        .trim_start()
        .starts_with(':')
        .then(|| text[start..end].to_string())
}

/// An R4 OperationOutcome listing the issues (each with `expression`). An empty list gives
/// one `information` issue saying so (an OperationOutcome needs at least one issue).
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let list: Vec<Value> = if issues.is_empty() {
        vec![json!({
            "severity": "information",
            "code": "informational",
            "details": {"text": "no issues"}
        })]
    } else {
        issues
            .iter()
            .map(|i| {
                json!({
                    "severity": i.severity.as_str(),
                    "code": i.code.as_str(),
                    "details": {"text": i.message},
                    "expression": [i.path],
                })
            })
            .collect()
    };
    json!({"resourceType": "OperationOutcome", "issue": list})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_element() {
        let e = parse(
            b"{\"resourceType\":\"Patient\",\"name\":[{\"given\":[\"a\" \"b\"]}]}",
            false,
            |_| (),
        )
        .unwrap_err();
        assert_eq!(e[0].path, "Patient.name[0].given[0]");
        let e = parse(
            b"{\"resourceType\":\"Patient\", // c\n \"id\":\"x\"}",
            false,
            |_| (),
        )
        .unwrap_err();
        assert!(e[0].message.contains("comments"), "{}", e[0].message);
        assert!(parse(
            b"{\"resourceType\":\"Patient\", // c\n \"id\":\"x\" /* d */}",
            true,
            |_| ()
        )
        .is_ok());
        assert!(parse(b"{\"a\":\"//not a comment\"}", true, |_| ()).is_ok());
        // A number no reader can hold is said to be one (it was only a "Syntax error").
        let e = parse(
            b"{\"resourceType\":\"Observation\",\"valueQuantity\":{\"value\":1e400}}",
            false,
            |_| (),
        )
        .unwrap_err();
        assert_eq!(e[0].path, "Observation.valueQuantity.value", "{e:?}");
        assert_eq!(
            e[0].message,
            "not valid JSON at line 1 column 60 (number out of range)"
        );
        let e = parse(b"{\"resourceType\":\"Patient\",\"id\":\"ab", false, |_| ()).unwrap_err();
        assert!(
            e[0].message.ends_with("(EOF while parsing a string)"),
            "{e:?}"
        );
        // The same bytes would be two different resources to readers that keep the first or
        // the last of a repeated key: refused where the parser found it.
        let e = Validator::shared()
            .validate_bytes(b"{\"resourceType\":\"Patient\",\"id\":\"a\",\n\"id\":\"b\"}")
            .unwrap_err();
        assert_eq!(e[0].severity, Severity::Fatal);
        assert!(
            e[0].message.contains("same key twice (") && e[0].message.contains("line 2"),
            "{}",
            e[0].message
        );
    }

    /// R4 JSON: `given` and `_given` line up (attack round 9: one value and three extension
    /// entries were accepted).
    #[test]
    fn a_primitive_array_and_its_extensions_have_one_length() {
        let v = Validator::shared();
        let patient = |given: &str, ext: &str| {
            format!(
                "{{\"resourceType\":\"Patient\",\"name\":[{{\"given\":{given},\"_given\":{ext}}}]}}"
            )
        };
        let x = "{\"extension\":[{\"url\":\"http://example.org/x\",\"valueString\":\"y\"}]}";
        let e = v
            .validate_bytes(patient("[\"Ann\"]", &format!("[{x},{x},{x}]")).as_bytes())
            .unwrap_err();
        assert_eq!(e[0].path, "Patient.name[0].given", "{e:?}");
        assert!(e[0].message.contains("the same length"), "{e:?}");
        assert!(v
            .validate_bytes(patient("[\"Ann\",\"Bea\"]", &format!("[null,{x}]")).as_bytes())
            .is_ok());
    }

    #[test]
    fn outcome_is_an_operation_outcome() {
        let oo = operation_outcome(&[Issue::error(IssueCode::Required, "Patient.x".into(), "m")]);
        assert_eq!(oo["issue"][0]["expression"][0], "Patient.x");
        assert!(Validator::shared().validate(&oo).is_ok());
        assert!(Validator::shared()
            .validate(&operation_outcome(&[]))
            .is_ok());
    }
}
