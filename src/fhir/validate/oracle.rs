//! The oracle: a generic JSON-schema validator (`jsonschema`, Draft 6, the `regex` engine),
//! built per resource type from the same schema file, with `ResourceList` as "an object with a
//! `resourceType`" as the walk treats it. The tests assert that the walk refuses whatever the
//! oracle refuses, over the fixtures and thousands of mutations of them; the walk may refuse
//! more (it also checks what a JSON schema cannot say).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::{Map, Value};

use super::schema::{self, SCHEMA_JSON};

pub(crate) struct Oracle {
    definitions: Value,
    validators: Mutex<HashMap<String, &'static jsonschema::Validator>>,
}

impl Oracle {
    pub fn get() -> &'static Oracle {
        static ORACLE: OnceLock<Oracle> = OnceLock::new();
        ORACLE.get_or_init(|| {
            let mut root: Value = serde_json::from_str(SCHEMA_JSON).expect("schema");
            schema::strip_descriptions(&mut root);
            let mut definitions = root["definitions"].take();
            let defs = definitions.as_object_mut().expect("definitions");
            schema::patch(defs);
            defs.insert(
                "ResourceList".into(),
                serde_json::json!({"type": "object", "required": ["resourceType"]}),
            );
            Oracle {
                definitions,
                validators: Mutex::new(HashMap::new()),
            }
        })
    }

    fn validator(&self, resource_type: &str) -> &'static jsonschema::Validator {
        let mut cache = self.validators.lock().expect("lock");
        cache.entry(resource_type.to_string()).or_insert_with(|| {
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
            let v = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft6)
                .with_pattern_options(jsonschema::PatternOptions::regex())
                .should_validate_formats(false)
                .build(&Value::Object(schema))
                .expect("compiles");
            Box::leak(Box::new(v))
        })
    }

    /// The schema's errors for one resource (not what it embeds), as instance paths.
    pub fn errors(&self, resource_type: &str, v: &Value) -> Vec<String> {
        let validator = self.validator(resource_type);
        if validator.is_valid(v) {
            return Vec::new();
        }
        validator
            .iter_errors(v)
            .map(|e| format!("{} ({})", e.instance_path(), e.kind().keyword()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value;

    use super::Oracle;
    use crate::fhir::validate::doc::{Node, Number};
    use crate::fhir::validate::{schema::Model, walk, Options, Validator};

    /// Every JSON file under the directories the validator is tested on.
    fn fixtures() -> Vec<(String, Value)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut out = Vec::new();
        let mut dirs = vec![root.join("fhir-validator"), root.join("fhir")];
        while let Some(d) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "json") {
                    let Ok(bytes) = std::fs::read(&p) else {
                        continue;
                    };
                    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                        if v.get("resourceType").is_some() {
                            out.push((p.display().to_string(), v));
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Bundles the built-in mapping makes of the HL7v2 fixtures.
    fn mapped() -> Vec<(String, Value)> {
        use crate::normalize::{Link, Normalizer};
        let n = Normalizer::load(&crate::config::NormalizeConfig::default()).expect("loads");
        let commitment = [7u8; 32];
        let link = Link {
            raw_record_id: "0123456789abcdef0123456789abcdef",
            raw_commitment: &commitment,
            mapped_ms: 1_700_000_000_000,
        };
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hl7/microsoft");
        let mut out = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(dir).expect("dir").flatten().collect();
        files.sort_by_key(|e| e.path());
        for e in files {
            let raw: Vec<u8> = std::fs::read(e.path())
                .expect("read")
                .into_iter()
                .map(|b| if b == b'\n' { b'\r' } else { b })
                .collect();
            let mapped = crate::pipeline::with_message(&raw, |m| n.map(m, &link).ok());
            if let Ok(Some(m)) = mapped {
                let v = serde_json::from_slice(&m.bundle).expect("JSON");
                out.push((e.path().display().to_string(), v));
            }
        }
        out
    }

    /// The oracle's verdict on a whole document: each resource the walk finds, with its type's
    /// validator (as the schema's `oneOf` would, without trying the other 145 types).
    fn oracle_errors(v: &Value) -> Vec<String> {
        let opts = Options::default();
        let mut w = walk::Walker::new(Model::get(), &opts);
        let doc = Node::from_value(v);
        w.resource(&doc, &mut String::new(), 0, walk::Place::Root);
        let oracle = Oracle::get();
        w.resources
            .iter()
            .flat_map(|(path, ty, r)| {
                oracle
                    .errors(ty, &to_value(r))
                    .into_iter()
                    .map(move |e| format!("{path}: {e}"))
            })
            .collect()
    }

    /// The document back as the oracle reads it.
    fn to_value(n: &Node<'_>) -> Value {
        match n {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Number(Number::Unsigned(u)) => Value::from(*u),
            Node::Number(Number::Signed(i)) => Value::from(*i),
            Node::Number(Number::Float(f)) => Value::from(*f),
            Node::String(s) => Value::from(&**s),
            Node::Array(a) => Value::Array(a.iter().map(to_value).collect()),
            Node::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (k.to_string(), to_value(v)))
                    .collect(),
            ),
        }
    }

    /// A small deterministic generator (xorshift): the mutations are the same on every run.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n.max(1) as u64) as usize
        }
    }

    /// Every node of a value, as JSON pointers.
    fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                    out.push(p.clone());
                    pointers(x, p, out);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let p = format!("{at}/{i}");
                    out.push(p.clone());
                    pointers(x, p, out);
                }
            }
            _ => {}
        }
    }

    const STRINGS: &[&str] = &[
        "",
        " ",
        "a  b",
        " lead",
        "trail ",
        "x\u{A0}y",
        "x\u{2028}y",
        "tab\there",
        "line\nbreak",
        "2020-13-01",
        "2020-02-30",
        "2020-01-01T10:00:00",
        "2020-01-01T25:00:00Z",
        "20200101",
        "10:61:00",
        "1.5",
        "-0",
        "urn:uuid:ABC",
        "urn:oid:1.02",
        "http://x y",
        "final",
        "male",
        "bad id!",
        "QUJD",
        "QUJ",
        "a",
    ];

    /// One random change: a string, number, boolean, null, object or array put in place of a
    /// node, an unknown element added, an element removed, a scalar wrapped in an array.
    fn mutate(v: &mut Value, rng: &mut Rng) {
        let mut ps = Vec::new();
        pointers(v, String::new(), &mut ps);
        if ps.is_empty() {
            return;
        }
        let p = ps[rng.below(ps.len())].clone();
        let (parent, last) = p.rsplit_once('/').expect("pointer");
        let op = rng.below(9);
        let replacement = match op {
            0..=2 => Value::from(STRINGS[rng.below(STRINGS.len())]),
            3 => serde_json::json!(1.5),
            4 => serde_json::json!(true),
            5 => Value::Null,
            6 => serde_json::json!({"x": 1}),
            _ => Value::Null,
        };
        match op {
            7 => {
                if let Some(Value::Object(m)) = v.pointer_mut(parent) {
                    m.remove(&last.replace("~1", "/").replace("~0", "~"));
                }
            }
            8 => {
                if let Some(Value::Object(m)) = v.pointer_mut(parent) {
                    m.insert("madeUp".into(), Value::from("x"));
                } else if let Some(x) = v.pointer_mut(&p) {
                    let inner = x.take();
                    *x = Value::Array(vec![inner]);
                }
            }
            _ => {
                if let Some(x) = v.pointer_mut(&p) {
                    *x = replacement;
                }
            }
        }
    }

    #[test]
    fn the_walk_refuses_whatever_the_schema_refuses() {
        let validator = Validator::default();
        let mut docs = fixtures();
        docs.extend(mapped());
        assert!(docs.len() > 150, "only {} documents found", docs.len());
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut compared, mut schema_refused, mut walk_stricter) = (0usize, 0usize, 0usize);
        let mut missed = Vec::new();
        for (name, doc) in &docs {
            for m in 0..12 {
                let mut v = doc.clone();
                if m > 0 {
                    for _ in 0..=rng.below(2) {
                        mutate(&mut v, &mut rng);
                    }
                }
                let oracle = oracle_errors(&v);
                let walk_refuses = validator.validate(&v).is_err();
                compared += 1;
                if !oracle.is_empty() {
                    schema_refused += 1;
                    if !walk_refuses {
                        missed.push(format!("{name} (mutant {m}): {oracle:?}"));
                    }
                } else if walk_refuses {
                    walk_stricter += 1;
                }
            }
        }
        eprintln!(
            "{compared} documents: the schema refused {schema_refused}, the walk refused all of \
             those but {}, and {walk_stricter} more",
            missed.len()
        );
        assert!(
            schema_refused > compared / 4,
            "the mutations should break the schema often"
        );
        assert!(
            missed.is_empty(),
            "the walk accepted what the schema refuses:\n{}",
            missed.join("\n")
        );
    }
}
