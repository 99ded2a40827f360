//! The official FHIR R4 JSON schema (`schemas/fhir/fhir.schema.json`), read once and compiled
//! into a type model that the walker checks in the same pass as the invariants: per type, its
//! properties (unknown ones are refused: `additionalProperties: false`), each property's JSON
//! type, array or not, `pattern`, `enum`/`const`, and the type's `required` list.
//!
//! The schema's root is a `oneOf` over all 146 resource types, and every embedded resource
//! (`contained`, `Bundle.entry.resource`, …) refers to that same `oneOf`: a generic JSON-schema
//! validator tries every resource type at every such place. The walker instead picks each
//! resource's type by its `resourceType`. The schema uses no other keywords, so the walk checks
//! all of it; a test keeps a generic JSON-schema validator (`jsonschema`, built per resource type
//! from the same file) as an oracle and asserts that the walk refuses whatever it refuses, over
//! the corpus and mutations of it.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::primitive::Scan;

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
    /// The JSON type of the value (of each item when `array`).
    pub json: Json,
    /// The schema's `pattern` for a string value: an index into [`Model::patterns`].
    pub pattern: Option<u16>,
    /// The allowed values (`enum`, or `const` as the one value); empty: any.
    pub values: Box<[Box<str>]>,
    /// A required binding the schema does not list, held to the form of its codes.
    pub binding: Option<super::primitive::Binding>,
    /// The choice element it is a type of (`deceasedBoolean` of `deceased[x]`): 1 + the
    /// choice's index within its type (the same for a primitive's `_name`); 0 for none.
    pub choice: u8,
}

/// The JSON type the schema gives a value. Complex types have none in the schema (it names
/// their properties only); the walker requires an object for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Json {
    #[default]
    Any,
    String,
    Number,
    Boolean,
}

impl Json {
    fn from_schema(t: Option<&str>) -> Json {
        match t {
            Some("string") => Json::String,
            Some("number") => Json::Number,
            Some("boolean") => Json::Boolean,
            _ => Json::Any,
        }
    }
    pub fn holds(self, v: &super::doc::Node<'_>) -> bool {
        match self {
            Json::Any => true,
            Json::String => v.is_string(),
            Json::Number => v.is_number(),
            Json::Boolean => v.is_boolean(),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Json::Any => "value",
            Json::String => "string",
            Json::Number => "number",
            Json::Boolean => "boolean",
        }
    }
}

/// A `pattern` of the schema, compiled with the `regex` crate (a search, as JSON Schema's
/// `pattern` is), with the primitive type it belongs to for the issue's wording.
#[derive(Debug)]
pub(crate) struct Pattern {
    pub text: Box<str>,
    pub ty: Box<str>,
    re: regex::Regex,
    fast: Fast,
}

/// The patterns of nearly every string in a Bundle, decided without the regex engine (a test
/// holds each equal to it). `\s` is Unicode's White_Space, as `char::is_whitespace` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fast {
    /// No shortcut: the regex decides.
    Regex,
    /// `string`, `markdown`: `^[ \r\n\t\S]+$`.
    Text,
    /// `uri`, `url`, `canonical`: `^\S*$`.
    NoSpace,
    /// `code`: `^[^\s]+(\s[^\s]+)*$`, words with single spaces between them.
    Code,
    /// `id`: `^[A-Za-z0-9\-\.]{1,64}$`.
    Id,
    /// `date`: a year, a month or a day.
    Date,
    /// `dateTime`: a year, a month, a day, or a day with a time and a zone.
    DateTime,
    /// `instant`: a day with a time and a zone.
    Instant,
    /// `time`: a time without a zone.
    Time,
}

impl Fast {
    fn of(pattern: &str) -> Fast {
        match pattern {
            r"^[ \r\n\t\S]+$" => Fast::Text,
            r"^\S*$" => Fast::NoSpace,
            r"^[^\s]+(\s[^\s]+)*$" => Fast::Code,
            r"^[A-Za-z0-9\-\.]{1,64}$" => Fast::Id,
            DATE => Fast::Date,
            DATE_TIME => Fast::DateTime,
            INSTANT => Fast::Instant,
            TIME => Fast::Time,
            _ => Fast::Regex,
        }
    }
}

/// R4's calendar patterns, as the schema spells them: the mapper writes such a value for nearly
/// every message, and the regex engine was a few per cent of mapping one.
const DATE: &str = "^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$";
const DATE_TIME: &str = r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$";
const INSTANT: &str = r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$";
const TIME: &str = r"^([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?$";

/// Reads what R4's calendar patterns are made of, a byte at a time.
struct Calendar<'a>(&'a [u8]);

impl Calendar<'_> {
    /// Two digits from `lo` to `hi`.
    fn two(&mut self, lo: u8, hi: u8) -> bool {
        match self.0 {
            [a, b, rest @ ..] if a.is_ascii_digit() && b.is_ascii_digit() => {
                let v = (a - b'0') * 10 + (b - b'0');
                self.0 = rest;
                (lo..=hi).contains(&v)
            }
            _ => false,
        }
    }
    fn byte(&mut self, c: u8) -> bool {
        match self.0 {
            [x, rest @ ..] if *x == c => {
                self.0 = rest;
                true
            }
            _ => false,
        }
    }
    /// Four digits, not all zero.
    fn year(&mut self) -> bool {
        match self.0 {
            [a, b, c, d, rest @ ..] if [a, b, c, d].iter().all(|x| x.is_ascii_digit()) => {
                self.0 = rest;
                [a, b, c, d] != [&b'0'; 4]
            }
            _ => false,
        }
    }
    /// `hh:mm:ss` with optional fraction digits.
    fn time(&mut self) -> bool {
        if !(self.two(0, 23) && self.byte(b':') && self.two(0, 59) && self.byte(b':')) {
            return false;
        }
        if !self.two(0, 60) {
            return false;
        }
        if self.byte(b'.') {
            let n = self.0.iter().take_while(|b| b.is_ascii_digit()).count();
            if n == 0 {
                return false;
            }
            self.0 = &self.0[n..];
        }
        true
    }
    /// `Z`, or an offset from `-13:59` to `+14:00` (`+14:xx` only as `14:00`).
    fn zone(&mut self) -> bool {
        if self.byte(b'Z') {
            return true;
        }
        if !(self.byte(b'+') || self.byte(b'-')) {
            return false;
        }
        match self.0 {
            [b'1', b'4', b':', b'0', b'0', rest @ ..] => {
                self.0 = rest;
                true
            }
            _ => self.two(0, 13) && self.byte(b':') && self.two(0, 59),
        }
    }
    fn end(&self) -> bool {
        self.0.is_empty()
    }
}

impl Fast {
    /// The calendar shortcuts (false for the others).
    fn calendar(self, s: &str) -> bool {
        let mut c = Calendar(s.as_bytes());
        match self {
            Fast::Time => c.time() && c.end(),
            Fast::Instant => {
                c.year()
                    && c.byte(b'-')
                    && c.two(1, 12)
                    && c.byte(b'-')
                    && c.two(1, 31)
                    && c.byte(b'T')
                    && c.time()
                    && c.zone()
                    && c.end()
            }
            Fast::Date | Fast::DateTime => {
                c.year()
                    && (c.end()
                        || (c.byte(b'-')
                            && c.two(1, 12)
                            && (c.end()
                                || (c.byte(b'-')
                                    && c.two(1, 31)
                                    && (c.end()
                                        || (self == Fast::DateTime
                                            && c.byte(b'T')
                                            && c.time()
                                            && c.zone()
                                            && c.end()))))))
            }
            _ => false,
        }
    }
}

impl Pattern {
    fn new(text: &str, ty: &str) -> Result<Pattern, String> {
        Ok(Pattern {
            text: text.into(),
            ty: ty.into(),
            re: regex::Regex::new(text).map_err(|e| format!("pattern {text}: {e}"))?,
            fast: Fast::of(text),
        })
    }

    /// Whether `s` matches.
    pub fn is_match(&self, s: &str) -> bool {
        self.is_match_scanned(s, Scan::of(s))
    }

    /// Whether `s`, whose byte classes are `scan`, matches.
    pub fn is_match_scanned(&self, s: &str, scan: Scan) -> bool {
        let ascii = !scan.has(Scan::NON_ASCII);
        match self.fast {
            Fast::Regex => self.re.is_match(s),
            // ASCII without a vertical tab or form feed; else by character.
            Fast::Text if ascii => !s.is_empty() && !scan.has(Scan::VT_FF),
            Fast::Text => {
                !s.is_empty()
                    && s.chars()
                        .all(|c| matches!(c, ' ' | '\r' | '\n' | '\t') || !c.is_whitespace())
            }
            Fast::NoSpace if ascii => !scan.has(Scan::SPACE),
            Fast::NoSpace => !s.chars().any(char::is_whitespace),
            // Without white space, a code is one word.
            Fast::Code if ascii && !scan.has(Scan::SPACE) => !s.is_empty(),
            Fast::Code => {
                // Before the first character counts as a space: no leading space, no two in a
                // row, and the last character is not one (nor is the string empty).
                let mut after_space = true;
                for c in s.chars() {
                    let space = c.is_whitespace();
                    if space && after_space {
                        return false;
                    }
                    after_space = space;
                }
                !after_space
            }
            Fast::Id => super::primitive::is_id(s),
            Fast::Date | Fast::DateTime | Fast::Instant | Fast::Time => self.fast.calendar(s),
        }
    }
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
    /// The schema's `required` list.
    pub schema_required: Box<[Box<str>]>,
    pub kind: Kind,
    /// The type has invariants of `invariant` (decided once per definition).
    pub invariants: bool,
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

/// A constant-time hash of a name: its length and its first and last eight bytes (four, or
/// the first, middle and last byte, for shorter names), mixed by one multiply (FxHash's
/// constant) and finished so that the low bits, which pick the bucket, depend on all of it. Names that agree in all three collide and are told apart by equality.
pub(crate) struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        // Whole-word loads only: copying a short name into a zeroed word went through a
        // `memcpy` call and stalled on reading the word back (a third of a Bundle walk).
        let u64_at =
            |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("eight bytes"));
        let u32_at = |i: usize| {
            u64::from(u32::from_le_bytes(
                bytes[i..i + 4].try_into().expect("four bytes"),
            ))
        };
        let (first, last) = match n {
            8.. => (u64_at(0), u64_at(n - 8)),
            4..=7 => (u32_at(0), u32_at(n - 4)),
            1..=3 => (
                u64::from(bytes[0]) | u64::from(bytes[n / 2]) << 8 | u64::from(bytes[n - 1]) << 16,
                0,
            ),
            0 => (0, 0),
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

/// The schema, read: the types the walker checks.
pub(crate) struct Model {
    /// Every definition, indexed by [`Ty::Def`].
    pub types: Vec<Def>,
    /// Definition index by name.
    names: FastMap<u32>,
    /// The resource types (the schema's discriminator).
    resource_types: FastMap<()>,
    /// Every distinct `pattern` of the schema.
    pub patterns: Vec<Pattern>,
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
        let resource_types: FastMap<()> = mapping
            .keys()
            .map(|k| (Box::from(k.as_str()), ()))
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
        // The JSON type and pattern of each definition, for the properties that refer to it.
        let mut patterns: Vec<Pattern> = Vec::new();
        let mut intern = |text: &str, ty: &str| -> Result<u16, String> {
            if let Some(i) = patterns.iter().position(|p| &*p.text == text) {
                return Ok(i as u16);
            }
            patterns.push(Pattern::new(text, ty)?);
            Ok((patterns.len() - 1) as u16)
        };
        let mut def_checks = Vec::with_capacity(defs_obj.len());
        for (name, d) in defs_obj.iter() {
            let pattern = match d.get("pattern").and_then(Value::as_str) {
                Some(p) => Some(intern(p, name)?),
                None => None,
            };
            def_checks.push((
                Json::from_schema(d.get("type").and_then(Value::as_str)),
                pattern,
            ));
        }
        let def_names: Vec<&str> = defs_obj.keys().map(String::as_str).collect();
        let mut types = Vec::with_capacity(defs_obj.len());
        for (name, d) in defs_obj.iter() {
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
                schema_required: d
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).map(Box::from).collect())
                    .unwrap_or_default(),
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
                invariants: super::invariant::applies(name),
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
                // What the schema says of the value itself: inline, else by its definition.
                let (mut json, mut pattern) = match inner.get("$ref") {
                    Some(_) => match ty {
                        Ty::Def(i) => def_checks[i as usize],
                        _ => (Json::Any, None),
                    },
                    None => (Json::Any, None),
                };
                if let Some(t) = inner.get("type").and_then(Value::as_str) {
                    json = Json::from_schema(Some(t));
                }
                if let Some(text) = inner.get("pattern").and_then(Value::as_str) {
                    let owner = match ty {
                        Ty::Def(i) => def_names[i as usize],
                        _ => "value",
                    };
                    pattern = Some(intern(text, owner)?);
                }
                let values: Box<[Box<str>]> = match (inner.get("enum"), inner.get("const")) {
                    (Some(Value::Array(e)), _) => e
                        .iter()
                        .map(|v| v.as_str().map(Box::from).ok_or("a non-string enum value"))
                        .collect::<Result<_, _>>()?,
                    (_, Some(Value::String(c))) => Box::new([Box::from(c.as_str())]),
                    (None, None) => Box::new([]),
                    _ => {
                        return Err(format!(
                            "{name}.{pname}: an enum or const the walk cannot read"
                        ))
                    }
                };
                def.props.insert(
                    Box::from(pname.as_str()),
                    Prop {
                        ty,
                        array,
                        json,
                        pattern,
                        values,
                        binding: super::primitive::Binding::of(name, pname),
                        choice: 0,
                    },
                );
            }
            // Choice elements: properties named their base and their own type
            // (`deceasedBoolean`, `deceasedDateTime`), two or more of one base.
            let type_name = |t: &Ty| match t {
                Ty::Def(i) => Some(def_names[*i as usize]),
                _ => None,
            };
            let typed: Vec<(Box<str>, &str)> = def
                .props
                .iter()
                .filter_map(|(n, p)| Some((n.clone(), type_name(&p.ty)?)))
                .collect();
            let pairs: Vec<(&str, &str)> = typed.iter().map(|(n, t)| (&**n, *t)).collect();
            for (i, group) in choice_groups(name, &pairs).into_iter().enumerate() {
                let choice = u8::try_from(i + 1).unwrap_or(u8::MAX);
                for at in group {
                    let n = pairs[at].0;
                    for key in [n.to_string(), format!("_{n}")] {
                        if let Some(p) = def.props.get_mut(key.as_str()) {
                            p.choice = choice;
                        }
                    }
                }
            }
            types.push(def);
        }
        Ok(Model {
            types,
            names,
            resource_types,
            patterns,
        })
    }

    /// A definition by name.
    pub fn def(&self, name: &str) -> Option<&Def> {
        self.names.get(name).map(|i| &self.types[*i as usize])
    }

    pub fn is_resource_type(&self, t: &str) -> bool {
        self.resource_types.contains_key(t)
    }

    #[cfg(test)]
    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.resource_types.keys().map(|k| &**k)
    }
}

/// Two defects of the published file, mended in memory (the file stays as published):
/// - it was generated from R4 4.0.0: `fhirVersion` codes lack `4.0.1`, the R4 technical
///   correction everyone sends;
/// - `canonical` elements have no `_name` sibling for their extensions (`_profile`), which
///   every other primitive has.
pub(super) fn patch(defs: &mut Map<String, Value>) {
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

/// Elements R4 names like the types of one choice that are separate elements, each of its own
/// (both may be sent): (owner type, or `*` for any; base).
const NOT_CHOICES: &[(&str, &str)] = &[
    // instantiatesCanonical and instantiatesUri (ServiceRequest, CarePlan, Task, …).
    ("*", "instantiates"),
    ("ChargeItem", "definition"),
    ("PaymentReconciliation", "payment"),
];

/// The base of a choice element's type (`deceasedDateTime` of type `dateTime` → `deceased`)
/// in an object of type `owner`: the name is the base and the type's name with a capital,
/// unless R4 has separate elements of that name ([`NOT_CHOICES`]). The normalizer's model
/// reads choices so too.
fn choice_base<'n>(owner: &str, name: &'n str, type_name: &str) -> Option<&'n str> {
    let base = typed_base(name, type_name)?;
    let separate = NOT_CHOICES
        .iter()
        .any(|(o, b)| *b == base && (*o == "*" || *o == owner));
    (!separate).then_some(base)
}

/// The choice elements among the elements (name, type name) of type `owner`: each a group of
/// two or more of one base, as positions in `elements`. The validator's schema and the
/// normalizer's model number their choices from these.
pub(crate) fn choice_groups(owner: &str, elements: &[(&str, &str)]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (at, (name, ty)) in elements.iter().enumerate() {
        let Some(base) = choice_base(owner, name, ty) else {
            continue;
        };
        match groups.iter_mut().find(|(b, _)| *b == base) {
            Some((_, members)) => members.push(at),
            None => groups.push((base, vec![at])),
        }
    }
    groups
        .into_iter()
        .filter(|(_, members)| members.len() > 1)
        .map(|(_, members)| members)
        .collect()
}

fn typed_base<'n>(name: &'n str, type_name: &str) -> Option<&'n str> {
    let mut t = type_name.chars();
    let first = t.next()?;
    let rest = t.as_str();
    let base = name.strip_suffix(rest)?;
    let base = base.strip_suffix(first.to_ascii_uppercase())?;
    (!base.is_empty() && !base.starts_with('_')).then_some(base)
}

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
pub(super) fn strip_descriptions(v: &mut Value) {
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

    /// The patterns decided without the regex engine decide as it does.
    #[test]
    fn fast_patterns_agree_with_the_regex_engine() {
        let m = Model::get();
        let fast: Vec<&Pattern> = m
            .patterns
            .iter()
            .filter(|p| p.fast != Fast::Regex)
            .collect();
        assert_eq!(
            fast.len(),
            8,
            "string, uri, code, id, date, dateTime, instant and time are decided without the regex"
        );
        let pieces = [
            "",
            " ",
            "a",
            "\t",
            "\r\n",
            "\u{0B}",
            "\u{0C}",
            "\u{85}",
            "\u{A0}",
            "\u{1680}",
            "\u{2000}",
            "\u{200A}",
            "\u{200B}",
            "\u{2028}",
            "\u{2029}",
            "\u{202F}",
            "\u{205F}",
            "\u{3000}",
            "\u{FEFF}",
            "é",
            "日本",
            "\u{1F600}",
            "x y",
            "x  y",
            "A-9.z",
            "_",
            "/",
            &"a".repeat(63),
        ];
        for a in pieces {
            for b in pieces {
                for c in ["", "z", " ", "\u{2003}", "-"] {
                    let s = format!("{a}{b}{c}");
                    for p in &fast {
                        assert_eq!(p.is_match(&s), p.re.is_match(&s), "{} on {s:?}", p.text);
                    }
                }
            }
        }
    }

    /// The calendar shortcuts decide as the regex does, on strings made of pieces that sit on
    /// either side of each limit (months 00/01/12/13, hours 23/24, seconds 60/61, zones
    /// 13:59/14:00/14:01, year 0000, fractions with no digit…), joined at random.
    #[test]
    fn calendar_shortcuts_agree_with_the_regex_engine() {
        let m = Model::get();
        let calendar: Vec<&Pattern> = m
            .patterns
            .iter()
            .filter(|p| {
                matches!(
                    p.fast,
                    Fast::Date | Fast::DateTime | Fast::Instant | Fast::Time
                )
            })
            .collect();
        assert_eq!(calendar.len(), 4);
        let pieces = [
            "2020",
            "0000",
            "0001",
            "1000",
            "0100",
            "0010",
            "9999",
            "202",
            "20201",
            "-",
            "--",
            "01",
            "00",
            "09",
            "10",
            "12",
            "13",
            "19",
            "20",
            "29",
            "30",
            "31",
            "32",
            "59",
            "60",
            "61",
            "1",
            "T",
            "t",
            ":",
            "23",
            "24",
            "14",
            "Z",
            "z",
            "+",
            "+14:00",
            "+14:01",
            "-13:59",
            "+13:60",
            "-00:00",
            ".",
            ".5",
            ".123456789",
            " ",
            "\n",
            "é",
            "٣",
            "12:30:00",
            "23:59:60",
            "24:00:00",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut matched = [0usize; 4];
        let mut cases = vec![
            "2020-02-30".to_string(),
            "2020-01-01T00:00:00Z".into(),
            "2020-01-01T00:00:00.000+14:00".into(),
            "2020-01-01T23:59:60-13:59".into(),
            "12:30:00.5".into(),
        ];
        for _ in 0..200_000 {
            let n = 1 + next(9);
            cases.push((0..n).map(|_| pieces[next(pieces.len())]).collect());
        }
        // Well-formed shapes with each place swept, so that the matches are many too.
        for y in ["0000", "0001", "2024"] {
            for mo in ["00", "01", "12", "13"] {
                for d in ["00", "01", "31", "32"] {
                    for t in [
                        "00:00:00", "23:59:60", "24:00:00", "12:60:00", "12:00:61", "1:00:00",
                    ] {
                        for z in ["", "Z", "+14:00", "+14:01", "-13:59", "+13:60", "+1:00"] {
                            cases.push(format!("{y}-{mo}-{d}T{t}{z}"));
                            cases.push(format!("{y}-{mo}-{d}T{t}.25{z}"));
                        }
                    }
                    cases.push(format!("{y}-{mo}-{d}"));
                }
                cases.push(format!("{y}-{mo}"));
            }
        }
        for s in &cases {
            for (i, p) in calendar.iter().enumerate() {
                let want = p.re.is_match(s);
                assert_eq!(p.is_match(s), want, "{} on {s:?}", p.ty);
                matched[i] += usize::from(want);
            }
        }
        assert!(
            matched.iter().all(|&n| n > 50),
            "too few matching cases: {matched:?}"
        );
    }

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
        let id = m
            .patterns
            .iter()
            .find(|p| &*p.text == r"^[A-Za-z0-9\-\.]{1,64}$");
        assert_eq!(id.map(|p| &*p.ty), Some("id"));
        let gender = &d("Patient").props["gender"];
        assert_eq!(
            &*gender.values,
            ["male", "female", "other", "unknown"].map(Box::from)
        );
        assert_eq!(d("Patient").props["active"].json, Json::Boolean);
        assert_eq!(
            &*d("Signature").schema_required,
            ["type", "who"].map(Box::from)
        );
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
