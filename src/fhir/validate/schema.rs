//! The official FHIR R4 JSON schema (`schemas/fhir/fhir.schema.json`), read once: a type model
//! for the invariant walker, and one compiled JSON-schema validator per resource type, built on
//! first use and kept.
//!
//! The schema's root is a `oneOf` over all 146 resource types, and every embedded resource
//! (`contained`, `Bundle.entry.resource`, `Parameters.parameter.resource`, …) refers to that same
//! `oneOf` (`#/definitions/ResourceList`): a validator built from the root tries every resource
//! type at every such place. Here `ResourceList` is replaced by "a JSON object", each resource
//! type gets a validator of its own (`{"$ref": "#/definitions/<Type>"}`), and the walker validates
//! each embedded resource with the validator of the type it names.

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use serde_json::{Map, Value};

use super::{Issue, IssueCode, Severity};

/// The file, embedded: the gateway needs no file system to validate.
pub(crate) const SCHEMA_JSON: &str = include_str!("../../../schemas/fhir/fhir.schema.json");

/// What a property of a FHIR type holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ty {
    /// A named definition: a primitive (`date`, `string`, …) or a complex type / backbone
    /// element (`Reference`, `Bundle_Entry`, …).
    Def(Box<str>),
    /// A code with its allowed values in the schema (`enum`) or a fixed value (`const`).
    Code,
    /// Narrative XHTML (`Narrative.div`).
    Xhtml,
    /// Any resource (`ResourceList`): validated with the validator of the type it names.
    Resource,
}

#[derive(Debug, Clone)]
pub(crate) struct Prop {
    pub ty: Ty,
    pub array: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Def {
    pub props: HashMap<Box<str>, Prop>,
}

/// The schema, read: types for the walker, validators per resource type.
pub(crate) struct Model {
    pub defs: HashMap<Box<str>, Def>,
    /// The resource types (the schema's discriminator), each with its validator once built.
    validators: HashMap<Box<str>, OnceLock<Result<jsonschema::Validator, String>>>,
    /// `definitions` without descriptions and with `ResourceList` as "an object".
    definitions: Value,
    /// Primitive type of each `pattern` in the schema, to name a failed pattern by its type.
    patterns: HashMap<Box<str>, Box<str>>,
    pattern_cache: jsonschema::PatternCache,
}

impl Model {
    pub fn get() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| Model::load(SCHEMA_JSON).expect("the embedded FHIR R4 schema reads"))
    }

    pub fn load(text: &str) -> Result<Model, String> {
        let mut root: Value =
            serde_json::from_str(text).map_err(|e| format!("schema is not JSON: {e}"))?;
        strip_descriptions(&mut root);
        let mapping = root
            .pointer("/discriminator/mapping")
            .and_then(Value::as_object)
            .ok_or("schema has no discriminator mapping")?;
        let validators = mapping
            .keys()
            .map(|k| (Box::from(k.as_str()), OnceLock::new()))
            .collect();
        let mut definitions = root
            .get_mut("definitions")
            .map(Value::take)
            .ok_or("schema has no definitions")?;
        let defs_obj = definitions
            .as_object_mut()
            .ok_or("definitions is not an object")?;
        patch(defs_obj);
        let mut defs = HashMap::new();
        let mut patterns = HashMap::new();
        for (name, d) in defs_obj.iter() {
            if let Some(p) = d.get("pattern").and_then(Value::as_str) {
                patterns.insert(Box::from(p), Box::from(name.as_str()));
            }
            let Some(props) = d.get("properties").and_then(Value::as_object) else {
                continue;
            };
            let mut def = Def::default();
            for (pname, p) in props {
                let (array, inner) = match p.get("items") {
                    Some(items) if p.get("type").and_then(Value::as_str) == Some("array") => {
                        (true, items)
                    }
                    _ => (false, p),
                };
                let ty = match inner.get("$ref").and_then(Value::as_str) {
                    Some("#/definitions/ResourceList") => Ty::Resource,
                    Some("#/definitions/xhtml") => Ty::Xhtml,
                    Some(r) => Ty::Def(Box::from(
                        r.strip_prefix("#/definitions/")
                            .ok_or_else(|| format!("unexpected $ref {r}"))?,
                    )),
                    None if inner.get("enum").is_some() || inner.get("const").is_some() => Ty::Code,
                    // Choice elements (`valueDateTime`) hold their primitive inline: the type
                    // is the name's suffix.
                    None => {
                        Ty::Def(Box::from(primitive_of(pname).ok_or_else(|| {
                            format!("{name}.{pname}: property without a type")
                        })?))
                    }
                };
                def.props
                    .insert(Box::from(pname.as_str()), Prop { ty, array });
            }
            defs.insert(Box::from(name.as_str()), def);
        }
        // Embedded resources are validated one by one with their own type's validator.
        defs_obj.insert(
            "ResourceList".into(),
            serde_json::json!({"type": "object", "required": ["resourceType"]}),
        );
        Ok(Model {
            defs,
            validators,
            definitions,
            patterns,
            pattern_cache: jsonschema::PatternCache::new(),
        })
    }

    pub fn is_resource_type(&self, t: &str) -> bool {
        self.validators.contains_key(t)
    }

    #[cfg(test)]
    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.validators.keys().map(|k| &**k)
    }

    /// The compiled validator of one resource type (built on first use).
    fn validator(&self, resource_type: &str) -> Option<&Result<jsonschema::Validator, String>> {
        let cell = self.validators.get(resource_type)?;
        Some(cell.get_or_init(|| {
            let mut schema = Map::new();
            schema.insert(
                "$schema".into(),
                Value::from("http://json-schema.org/draft-06/schema#"),
            );
            schema.insert(
                "$ref".into(),
                Value::from(format!("#/definitions/{resource_type}")),
            );
            schema.insert("definitions".into(), self.definitions.clone());
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft6)
                .with_pattern_options(jsonschema::PatternOptions::regex())
                .with_pattern_cache(self.pattern_cache.clone())
                .should_validate_formats(false)
                .build(&Value::Object(schema))
                .map_err(|e| format!("schema for {resource_type} does not compile: {e}"))
        }))
    }

    /// Validates one resource (not what it embeds) against its type's schema; issues get paths
    /// under `base` (the resource's own path, e.g. `Bundle.entry[2].resource`).
    pub fn check(&self, resource_type: &str, v: &Value, base: &str, out: &mut Vec<Issue>) {
        let validator = match self.validator(resource_type) {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                out.push(Issue::new(
                    Severity::Fatal,
                    IssueCode::Exception,
                    base,
                    e.clone(),
                ));
                return;
            }
            None => return,
        };
        if validator.is_valid(v) {
            return;
        }
        for e in validator.iter_errors(v) {
            let mut path = String::from(base);
            for seg in e.instance_path().segments() {
                match seg {
                    LocationSegment::Property(p) => {
                        path.push('.');
                        push_name(&mut path, p.strip_prefix('_').unwrap_or(&p));
                    }
                    LocationSegment::Index(i) => {
                        use std::fmt::Write;
                        let _ = write!(path, "[{i}]");
                    }
                }
            }
            match e.kind() {
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    for name in unexpected {
                        let mut p = path.clone();
                        p.push('.');
                        push_name(&mut p, name);
                        out.push(Issue::error(
                            IssueCode::Structure,
                            p,
                            "unknown element: not part of this type in FHIR R4",
                        ));
                    }
                }
                ValidationErrorKind::Required { property } => {
                    if let Some(name) = property.as_str() {
                        path.push('.');
                        push_name(&mut path, name);
                    }
                    out.push(Issue::error(
                        IssueCode::Required,
                        path,
                        "required element is missing (minimum cardinality 1)",
                    ));
                }
                ValidationErrorKind::Type { kind } => {
                    let expected = match kind {
                        jsonschema::error::TypeKind::Single(t) => t.to_string(),
                        jsonschema::error::TypeKind::Multiple(ts) => ts
                            .iter()
                            .map(|t| t.to_string())
                            .collect::<Vec<_>>()
                            .join(" or "),
                    };
                    out.push(Issue::error(
                        IssueCode::Structure,
                        path,
                        format!("wrong JSON type: FHIR R4 has a JSON {expected} here"),
                    ));
                }
                ValidationErrorKind::Enum { .. } => out.push(Issue::error(
                    IssueCode::CodeInvalid,
                    path,
                    "code is not in the value set this element is bound to (required binding)",
                )),
                ValidationErrorKind::Constant { .. } => out.push(Issue::error(
                    IssueCode::Value,
                    path,
                    "value differs from the one this element is fixed to",
                )),
                ValidationErrorKind::Pattern { pattern } => {
                    let ty = self.patterns.get(pattern.as_str()).map_or("value", |t| t);
                    out.push(Issue::error(
                        IssueCode::Value,
                        path,
                        format!("not a valid FHIR {ty} (schema pattern of {ty})"),
                    ));
                }
                other => out.push(Issue::error(
                    IssueCode::Structure,
                    path,
                    format!(
                        "does not conform to the FHIR R4 JSON schema ({})",
                        other.keyword()
                    ),
                )),
            }
        }
    }
}

/// Two defects of the published file, mended in memory (the file stays as published):
/// - it was generated from R4 4.0.0: `fhirVersion` codes lack `4.0.1`, the R4 technical
///   correction everyone sends;
/// - `canonical` elements have no `_name` sibling for their extensions (`_profile`), which
///   every other primitive has.
fn patch(defs: &mut Map<String, Value>) {
    let mut stack: Vec<&mut Value> = defs.values_mut().collect();
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(e)) = m.get_mut("enum") {
                    if e.iter().any(|c| c == "4.0.0") && !e.iter().any(|c| c == "4.0.1") {
                        e.push(Value::from("4.0.1"));
                    }
                }
                stack.extend(m.values_mut());
            }
            Value::Array(a) => stack.extend(a.iter_mut()),
            _ => {}
        }
    }
    for d in defs.values_mut() {
        let Some(props) = d.get_mut("properties").and_then(Value::as_object_mut) else {
            continue;
        };
        let missing: Vec<(String, bool)> = props
            .iter()
            .filter(|(name, p)| {
                let inner = p.get("items").unwrap_or(p);
                inner.get("$ref").and_then(Value::as_str) == Some("#/definitions/canonical")
                    && !props.contains_key(&format!("_{name}"))
            })
            .map(|(name, p)| (format!("_{name}"), p.get("items").is_some()))
            .collect();
        for (name, array) in missing {
            let element = serde_json::json!({"$ref": "#/definitions/Element"});
            let prop = if array {
                serde_json::json!({"type": "array", "items": element})
            } else {
                element
            };
            props.insert(name, prop);
        }
    }
}

/// The FHIR primitive types, as choice-element suffixes (longest first where one ends another).
const PRIMITIVES: &[(&str, &str)] = &[
    ("Base64Binary", "base64Binary"),
    ("Boolean", "boolean"),
    ("Canonical", "canonical"),
    ("Code", "code"),
    ("DateTime", "dateTime"),
    ("Date", "date"),
    ("Decimal", "decimal"),
    ("Instant", "instant"),
    ("Integer", "integer"),
    ("Markdown", "markdown"),
    ("Oid", "oid"),
    ("PositiveInt", "positiveInt"),
    ("UnsignedInt", "unsignedInt"),
    ("String", "string"),
    ("Time", "time"),
    ("Uri", "uri"),
    ("Url", "url"),
    ("Uuid", "uuid"),
    ("Id", "id"),
];

/// The primitive type of an inline choice property (`valueDateTime` → `dateTime`).
fn primitive_of(property: &str) -> Option<&'static str> {
    PRIMITIVES
        .iter()
        .find(|(suffix, _)| property.ends_with(suffix))
        .map(|(_, t)| *t)
}

/// Appends a property name to a path: FHIR element names as they are, anything else (a name
/// that could carry data) replaced by `?`.
pub(crate) fn push_name(path: &mut String, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        path.push_str(name);
    } else {
        path.push('?');
    }
}

/// Drops every `description` (two thirds of the file) so that each per-type build copies less.
fn strip_descriptions(v: &mut Value) {
    // Iterative: the schema is shallow, but no walker here recurses on input it does not own.
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                if m.get("description").is_some_and(Value::is_string) {
                    m.remove("description");
                }
                stack.extend(m.values_mut());
            }
            Value::Array(a) => stack.extend(a.iter_mut()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_knows_the_types() {
        let m = Model::get();
        assert_eq!(m.resource_types().count(), 146);
        assert!(m.is_resource_type("Patient") && !m.is_resource_type("HumanName"));
        let entry = &m.defs["Bundle_Entry"].props;
        assert_eq!(entry["resource"].ty, Ty::Resource);
        assert!(!entry["resource"].array);
        let given = &m.defs["HumanName"].props["given"];
        assert_eq!(
            (given.ty.clone(), given.array),
            (Ty::Def("string".into()), true)
        );
        assert_eq!(m.defs["Narrative"].props["div"].ty, Ty::Xhtml);
        assert_eq!(m.defs["Patient"].props["gender"].ty, Ty::Code);
        assert_eq!(&*m.patterns[r"^[A-Za-z0-9\-\.]{1,64}$"], "id");
        let t = |d: &str, p: &str| m.defs[d].props[p].ty.clone();
        assert_eq!(
            t("Observation", "valueDateTime"),
            Ty::Def("dateTime".into())
        );
        assert_eq!(t("Extension", "valueUuid"), Ty::Def("uuid".into()));
        assert_eq!(t("Extension", "valueTime"), Ty::Def("time".into()));
    }

    /// Where the schema embeds a resource: the walker validates each of these with its own type.
    #[test]
    fn embedded_resources_are_where_the_walker_expects_them() {
        let m = Model::get();
        let mut places: Vec<String> = m
            .defs
            .iter()
            .flat_map(|(d, def)| {
                def.props
                    .iter()
                    .filter(|(_, p)| p.ty == Ty::Resource)
                    .map(move |(n, _)| format!("{d}.{n}"))
            })
            .filter(|p| !p.ends_with(".contained"))
            .collect();
        places.sort();
        assert_eq!(
            places,
            [
                "Bundle_Entry.resource",
                "Bundle_Response.outcome",
                "Parameters_Parameter.resource"
            ]
        );
    }
}
