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
    Def(u32),
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

/// Rules of particular data types, decided once per definition (not per value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Kind {
    #[default]
    Plain,
    Reference,
    Attachment,
    Coding,
    Period,
    Extension,
    RiskPrediction,
    BundleEntry,
}

/// What a primitive is, for the walker's checks (decided once per definition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Prim {
    /// A complex type or backbone element.
    #[default]
    Complex,
    Date,
    Base64,
    String,
    Markdown,
    Canonical,
    Uri,
    Integer,
    PositiveInt,
    UnsignedInt,
    /// A primitive without checks beyond the schema's.
    Other,
}

#[derive(Debug, Default)]
pub(crate) struct Def {
    pub name: Box<str>,
    pub prim: Prim,
    pub props: FastMap<Prop>,
    /// Elements of minimum cardinality 1 the schema cannot require (`walk::REQUIRED`).
    pub required: &'static [&'static str],
    pub kind: Kind,
}

/// Maps keyed by element or type names, hashed with a fast non-cryptographic hash: the keys
/// are the schema's, and a lookup of a hostile key only costs its hashing.
pub(crate) type FastMap<V> = HashMap<Box<str>, V, FastHash>;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastHash;

impl std::hash::BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

/// A constant-time hash of a name: its length and its first and last eight bytes, mixed by
/// one multiply (FxHash's constant) and finished so that the low bits, which pick the bucket,
/// depend on all of it. Names that agree in all three collide and are told apart by equality.
pub(crate) struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        let load = |b: &[u8]| {
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        let (first, last) = if n >= 8 {
            (load(&bytes[..8]), load(&bytes[n - 8..]))
        } else {
            (load(bytes), 0)
        };
        self.0 = (self.0 ^ first ^ last.rotate_left(29) ^ (n as u64).rotate_left(58))
            .wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_u8(&mut self, b: u8) {
        self.0 ^= u64::from(b);
    }
    fn finish(&self) -> u64 {
        let h = self.0;
        h ^ (h >> 31) ^ (h >> 47)
    }
}

/// The schema, read: types for the walker, validators per resource type.
pub(crate) struct Model {
    /// Every definition, indexed by [`Ty::Def`].
    pub types: Vec<Def>,
    /// Definition index by name.
    names: FastMap<u32>,
    /// The resource types (the schema's discriminator), each with its validator once built.
    validators: FastMap<OnceLock<Result<jsonschema::Validator, String>>>,
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
        let names: FastMap<u32> = defs_obj
            .keys()
            .enumerate()
            .map(|(i, n)| (Box::from(n.as_str()), i as u32))
            .collect();
        let index = |n: &str| {
            names
                .get(n)
                .copied()
                .ok_or_else(|| format!("no definition {n}"))
        };
        let mut types = Vec::with_capacity(defs_obj.len());
        let mut patterns = HashMap::new();
        for (name, d) in defs_obj.iter() {
            if let Some(p) = d.get("pattern").and_then(Value::as_str) {
                patterns.insert(Box::from(p), Box::from(name.as_str()));
            }
            let mut def = Def {
                name: Box::from(name.as_str()),
                prim: match name.as_str() {
                    "date" | "dateTime" | "instant" => Prim::Date,
                    "base64Binary" => Prim::Base64,
                    "string" => Prim::String,
                    "markdown" => Prim::Markdown,
                    "canonical" => Prim::Canonical,
                    "uri" | "url" => Prim::Uri,
                    "integer" => Prim::Integer,
                    "positiveInt" => Prim::PositiveInt,
                    "unsignedInt" => Prim::UnsignedInt,
                    n if n.starts_with(|c: char| c.is_ascii_lowercase()) => Prim::Other,
                    _ => Prim::Complex,
                },
                required: super::walk::REQUIRED
                    .iter()
                    .find(|(t, _)| t == name)
                    .map_or(&[], |(_, r)| *r),
                kind: match name.as_str() {
                    "Reference" => Kind::Reference,
                    "Attachment" => Kind::Attachment,
                    "Coding" => Kind::Coding,
                    "Period" => Kind::Period,
                    "Extension" => Kind::Extension,
                    "RiskAssessment_Prediction" => Kind::RiskPrediction,
                    "Bundle_Entry" => Kind::BundleEntry,
                    _ => Kind::Plain,
                },
                ..Def::default()
            };
            let no_props = Map::new();
            let props = d
                .get("properties")
                .and_then(Value::as_object)
                .unwrap_or(&no_props);
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
                    Some(r) => Ty::Def(index(
                        r.strip_prefix("#/definitions/")
                            .ok_or_else(|| format!("unexpected $ref {r}"))?,
                    )?),
                    None if inner.get("enum").is_some() || inner.get("const").is_some() => Ty::Code,
                    // Choice elements (`valueDateTime`) hold their primitive inline: the type
                    // is the name's suffix.
                    None => {
                        Ty::Def(index(primitive_of(pname).ok_or_else(|| {
                            format!("{name}.{pname}: property without a type")
                        })?)?)
                    }
                };
                def.props
                    .insert(Box::from(pname.as_str()), Prop { ty, array });
            }
            types.push(def);
        }
        // Embedded resources are validated one by one with their own type's validator.
        defs_obj.insert(
            "ResourceList".into(),
            serde_json::json!({"type": "object", "required": ["resourceType"]}),
        );
        Ok(Model {
            types,
            names,
            validators,
            definitions,
            patterns,
            pattern_cache: jsonschema::PatternCache::new(),
        })
    }

    /// A definition by name.
    pub fn def(&self, name: &str) -> Option<&Def> {
        self.names.get(name).map(|i| &self.types[*i as usize])
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
        let d = |n: &str| m.def(n).unwrap_or_else(|| panic!("{n}"));
        assert_eq!(d("Observation").required, ["status"]);
        assert_eq!(d("Reference").kind, Kind::Reference);
        assert_eq!(d("dateTime").prim, Prim::Date);
        for (t, _) in super::super::walk::REQUIRED {
            assert!(m.def(t).is_some(), "{t} is not a type of the schema");
        }
        let named = |t: &Ty| match t {
            Ty::Def(i) => m.types[*i as usize].name.to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(m.resource_types().count(), 146);
        assert!(m.is_resource_type("Patient") && !m.is_resource_type("HumanName"));
        let entry = &d("Bundle_Entry").props;
        assert_eq!(entry["resource"].ty, Ty::Resource);
        assert!(!entry["resource"].array);
        let given = &d("HumanName").props["given"];
        assert_eq!((named(&given.ty), given.array), ("string".into(), true));
        assert_eq!(d("Narrative").props["div"].ty, Ty::Xhtml);
        assert_eq!(d("Patient").props["gender"].ty, Ty::Code);
        assert_eq!(&*m.patterns[r"^[A-Za-z0-9\-\.]{1,64}$"], "id");
        let t = |t: &str, p: &str| named(&d(t).props[p].ty);
        assert_eq!(t("Observation", "valueDateTime"), "dateTime");
        assert_eq!(t("Extension", "valueUuid"), "uuid");
        assert_eq!(t("Extension", "valueTime"), "time");
    }

    /// Where the schema embeds a resource: the walker validates each of these with its own type.
    #[test]
    fn embedded_resources_are_where_the_walker_expects_them() {
        let m = Model::get();
        let mut places: Vec<String> = m
            .types
            .iter()
            .flat_map(|def| {
                def.props
                    .iter()
                    .filter(|(_, p)| p.ty == Ty::Resource)
                    .map(move |(n, _)| format!("{}.{n}", def.name))
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
