//! A JSON document as the validator walks it. Strings are borrowed from the text wherever
//! they hold no escape, and an object is its members in document order: parsing builds no
//! map and copies no key, which made `serde_json::Value` cost the validator as much as the
//! walk itself. A key given twice in one object is refused while parsing (RFC 8259 leaves its
//! meaning open: one reader takes the first, another the last).
//!
//! The grammar, its error positions and its nesting limit are serde_json's: this module only
//! decides what is built.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The deepest nesting serde_json parses, and the depth below which [`Node::from_value`] cuts.
pub const VALUE_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(Object<'a>),
}

/// A JSON number as serde_json reads it (without `arbitrary_precision`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

/// An object's members in document order, each key once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object<'a>(Vec<(Cow<'a, str>, Node<'a>)>);

impl<'a> Object<'a> {
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node<'a>)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }
}

impl<'a> Node<'a> {
    /// Parses JSON text. Errors are serde_json's, with their line and column.
    pub fn parse(text: &'a str) -> Result<Node<'a>, serde_json::Error> {
        let mut d = serde_json::Deserializer::from_str(text);
        let node = NodeSeed.deserialize(&mut d)?;
        d.end()?;
        Ok(node)
    }

    /// Parses JSON bytes: UTF-8 is checked once for the whole text, not string by string;
    /// text that is not UTF-8 is read by `serde_json::from_slice` for its error's position.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Node<'a>, serde_json::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Node::parse(text),
            Err(_) => Err(serde_json::from_slice::<Value>(bytes)
                .err()
                .unwrap_or_else(|| de::Error::custom("the text is not UTF-8"))),
        }
    }

    /// The same document over a `serde_json::Value` (strings borrowed from it), whose objects
    /// hold each key once already. A value built in code may nest without limit: deeper than
    /// serde_json parses ([`VALUE_DEPTH`]) a subtree becomes `Null`, so neither this conversion
    /// nor the document's drop recurses without bound. The walk stops at half that depth
    /// ([`super::MAX_DEPTH`]) with an error and reads at most a few levels below where it
    /// stopped, so it never meets the cut.
    pub fn from_value(v: &'a Value) -> Node<'a> {
        Node::from_value_at(v, 0)
    }

    fn from_value_at(v: &'a Value, depth: usize) -> Node<'a> {
        if depth > VALUE_DEPTH {
            return Node::Null;
        }
        let inner = |v: &'a Value| Node::from_value_at(v, depth + 1);
        match v {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(if let Some(u) = n.as_u64() {
                Number::Unsigned(u)
            } else if let Some(i) = n.as_i64() {
                Number::Signed(i)
            } else {
                Number::Float(n.as_f64().unwrap_or(f64::NAN))
            }),
            Value::String(s) => Node::String(Cow::Borrowed(s)),
            Value::Array(a) => Node::Array(a.iter().map(inner).collect()),
            Value::Object(o) => Node::Object(Object(
                o.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), inner(v)))
                    .collect(),
            )),
        }
    }

    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Node::Object(o) => Some(o),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Node<'a>]> {
        match self {
            Node::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }
    /// A member of an object (`None` for anything else).
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        self.as_object().and_then(|o| o.get(key))
    }
    pub fn is_null(&self) -> bool {
        matches!(self, Node::Null)
    }
    pub fn is_object(&self) -> bool {
        matches!(self, Node::Object(_))
    }
    pub fn is_string(&self) -> bool {
        matches!(self, Node::String(_))
    }
    pub fn is_number(&self) -> bool {
        matches!(self, Node::Number(_))
    }
    pub fn is_boolean(&self) -> bool {
        matches!(self, Node::Bool(_))
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Node::Number(Number::Unsigned(u)) => i64::try_from(*u).ok(),
            Node::Number(Number::Signed(i)) => Some(*i),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Node::Number(Number::Unsigned(u)) => Some(*u),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Node::Number(Number::Unsigned(u)) => Some(*u as f64),
            Node::Number(Number::Signed(i)) => Some(*i as f64),
            Node::Number(Number::Float(f)) => Some(*f),
            _ => None,
        }
    }
}

/// The parse error of an object that holds a key twice; its position is the object's end.
pub const REPEATED_KEY: &str =
    "an object holds the same key twice (RFC 8259 leaves its meaning open)";

/// Whether a parse error is [`REPEATED_KEY`] rather than malformed JSON.
pub fn is_repeated_key(e: &serde_json::Error) -> bool {
    e.classify() == serde_json::error::Category::Data && e.to_string().starts_with(REPEATED_KEY)
}

/// Whether two members share a key. Objects are small, so pairs are compared; a large one
/// (an attacker's) is sorted instead, so the check stays O(n log n).
fn repeats_a_key(members: &[(Cow<'_, str>, Node<'_>)]) -> bool {
    const PAIRWISE: usize = 16;
    if members.len() <= PAIRWISE {
        return members
            .iter()
            .enumerate()
            .any(|(i, (a, _))| members[i + 1..].iter().any(|(b, _)| a == b));
    }
    let mut keys: Vec<&str> = members.iter().map(|(k, _)| &**k).collect();
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

struct NodeSeed;

impl<'de> DeserializeSeed<'de> for NodeSeed {
    type Value = Node<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(b))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Node<'de>, E> {
        Ok(Node::Number(Number::Unsigned(u)))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Node<'de>, E> {
        Ok(Node::Number(Number::Signed(i)))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Node<'de>, E> {
        Ok(Node::Number(Number::Float(f)))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(NodeSeed)? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value = map.next_value_seed(NodeSeed)?;
            members.push((key, value));
        }
        if repeats_a_key(&members) {
            return Err(de::Error::custom(REPEATED_KEY));
        }
        Ok(Node::Object(Object(members)))
    }
}

/// A key, borrowed unless it holds an escape.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members sorted by key, as a `serde_json::Value` (a BTreeMap) holds them.
    fn in_key_order(n: Node<'_>) -> Node<'_> {
        match n {
            Node::Array(a) => Node::Array(a.into_iter().map(in_key_order).collect()),
            Node::Object(Object(mut m)) => {
                m.sort_by(|a, b| a.0.cmp(&b.0));
                Node::Object(Object(
                    m.into_iter().map(|(k, v)| (k, in_key_order(v))).collect(),
                ))
            }
            other => other,
        }
    }

    /// The document holds what serde_json reads, member for member, and borrows what it can.
    #[test]
    fn parses_what_serde_json_parses() {
        let text = r#"{"a":[1,-2,3.5,true,null,"x\"y"],"b":{"c":"plain","d\u0065":{}},"e":18446744073709551615}"#;
        let node = Node::parse(text).unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(in_key_order(node.clone()), Node::from_value(&value));
        let a = node.get("a").unwrap().as_array().unwrap();
        assert_eq!(a[0].as_u64(), Some(1));
        assert_eq!(a[1].as_i64(), Some(-2));
        assert_eq!(a[2].as_f64(), Some(3.5));
        assert_eq!(a[5].as_str(), Some("x\"y"));
        assert!(matches!(
            node.get("b").unwrap().get("c"),
            Some(Node::String(Cow::Borrowed("plain")))
        ));
        assert!(node.get("b").unwrap().get("de").unwrap().is_object());
        assert_eq!(node.get("e").unwrap().as_i64(), None);
        assert_eq!(node.get("e").unwrap().as_u64(), Some(u64::MAX));
    }

    /// However the repeat is spelled and however large the object, it is refused with the
    /// position serde_json reached.
    #[test]
    fn a_repeated_key_is_refused() {
        let big: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        for text in [
            r#"{"a":1,"a":2}"#.to_string(),
            r#"{"x":[{"id":"a","\u0069d":"b"}]}"#.to_string(),
            format!("{{{big}\"k7\":0}}"),
        ] {
            let e = Node::parse(&text).unwrap_err();
            assert!(is_repeated_key(&e), "{text}: {e}");
            assert!(e.line() > 0, "{text}: the error has a position");
        }
        assert!(Node::parse(&format!("{{{big}\"k40\":0}}")).is_ok());
    }

    /// An attacker's view: mutated documents (bytes flipped, dropped, repeated, quotes and
    /// escapes put in) are accepted exactly when serde_json accepts them, read as the same
    /// document, and a repeated key is the only difference. Nothing panics.
    #[test]
    fn agrees_with_serde_json_on_mutated_documents() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fhir");
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut accepted, mut repeated) = (0, 0);
        for file in [
            "patient-example.json",
            "observation-example.json",
            "bundle-lipids.json",
        ] {
            let original = std::fs::read(dir.join(file)).expect("fixture");
            for round in 0..400 {
                let mut bytes = original.clone();
                for _ in 0..1 + round % 3 {
                    let at = (next() % bytes.len() as u64) as usize;
                    match next() % 5 {
                        0 => bytes[at] = b"\"\\{}[],:0e-u"[(next() % 12) as usize],
                        1 => drop(bytes.remove(at)),
                        2 => {
                            let len = (next() % 40) as usize;
                            let piece = bytes[at..(at + len).min(bytes.len())].to_vec();
                            bytes.splice(at..at, piece);
                        }
                        3 => bytes[at] = (next() % 256) as u8,
                        _ => bytes.insert(at, b"\"\\/"[(next() % 3) as usize]),
                    }
                }
                let theirs = serde_json::from_slice::<Value>(&bytes);
                match (Node::parse_bytes(&bytes), theirs) {
                    (Ok(ours), Ok(value)) => {
                        accepted += 1;
                        assert_eq!(
                            in_key_order(ours),
                            Node::from_value(&value),
                            "{file} round {round}"
                        );
                    }
                    (Err(e), Ok(_)) => {
                        assert!(is_repeated_key(&e), "{file} round {round}: {e}");
                        repeated += 1;
                    }
                    (Ok(_), Err(e)) => panic!("{file} round {round}: accepted, serde_json: {e}"),
                    (Err(_), Err(_)) => {}
                }
            }
        }
        assert!(
            accepted > 100 && repeated > 0,
            "{accepted} accepted, {repeated} repeated keys"
        );
    }

    #[test]
    fn malformed_text_and_trailing_bytes_are_refused() {
        for text in ["", "{", r#"{"a":}"#, "[1,]", "{} {}", "\"\\ud800x\""] {
            assert!(Node::parse(text).is_err(), "{text:?}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(
            Node::parse(&deep).is_err(),
            "serde_json's nesting limit holds"
        );
    }
}
