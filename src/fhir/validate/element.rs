//! The rules of one element, resolved against the schema once, for a writer that knows which
//! element it writes (the mapper: `normalize::check`). It asks only what depends on the value;
//! names, nesting and JSON types were settled when the element was resolved. Every answer is
//! the walk's own rule (the same pattern, calendar, HTML and range checks, under the gateway's
//! [`Options`]), asked without parsing a document; where a rule needs more than a value
//! (local references, attachment sizes) the answer is "not shown", never "valid".

use super::primitive as p;
use super::schema::{Def, Json, Model, Prim, Prop, Ty};
use super::walk::{period_ordered, CORE_EXTENSIONS, MAX_STRING_BYTES};
use super::{Options, Validator};

/// What an element holds, for the writer's choice of value.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A complex type or backbone element: an object.
    Object,
    /// A primitive (string, number or boolean by the schema's JSON type).
    Primitive(&'static Def),
    /// A code with its allowed values inline in the schema.
    Code,
}

/// Rules of particular object types, as the walk has them.
pub(crate) use super::schema::Kind as ObjectKind;

/// One element of one type (`HumanName.family`), resolved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Element {
    prop: &'static Prop,
    shape: Shape,
}

/// A complex type, resolved: its rules and the element names it requires.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ObjectType {
    def: &'static Def,
}

/// The element rules of the schema under the gateway's options (those of
/// [`Validator::shared`], whose full check this stands in for).
#[derive(Clone, Copy)]
pub(crate) struct Rules {
    model: &'static Model,
    opts: &'static Options,
}

impl Rules {
    pub fn shared() -> Rules {
        Rules {
            model: Model::get(),
            opts: Validator::shared().options(),
        }
    }

    /// The complex type `name` (`HumanName`, `Encounter_Location`, `Patient`).
    pub fn object_type(&self, name: &str) -> Option<ObjectType> {
        let def = self.model.def(name)?;
        (def.prim == Prim::Complex).then_some(ObjectType { def })
    }

    /// Whether `name` is a resource type whose rules are all per element, so that showing its
    /// elements shows it: not a Bundle or Parameters, which the walk checks as a whole
    /// (`walk::Walker::resource`).
    pub fn is_plain_resource_type(&self, name: &str) -> bool {
        self.model.is_resource_type(name) && !matches!(name, "Bundle" | "Parameters")
    }

    /// The element `name` of `owner`, if the schema has it with that arity. Resources
    /// (`contained`, `entry.resource`) and narrative XHTML are not resolved: a writer of those
    /// needs the full check.
    pub fn element(&self, owner: ObjectType, name: &str, array: bool) -> Option<Element> {
        let prop = owner.def.props.get(name)?;
        if prop.array != array {
            return None;
        }
        let shape = match prop.ty {
            Ty::Def(d) => {
                let def = &self.model.types[d as usize];
                if def.prim == Prim::Complex {
                    Shape::Object
                } else {
                    Shape::Primitive(def)
                }
            }
            Ty::Code => Shape::Code,
            Ty::Xhtml | Ty::Resource => return None,
        };
        Some(Element { prop, shape })
    }

    /// Whether the element holds objects.
    pub fn is_object(&self, e: Element) -> bool {
        matches!(e.shape, Shape::Object) && e.prop.json == Json::Any
    }

    /// Whether `raw_len` bytes, written as base64, are a valid value of the element: a
    /// base64Binary string, which R4 does not bound (its 1 MB is `string`'s).
    pub fn base64_ok(&self, e: Element, raw_len: usize) -> bool {
        matches!(e.shape, Shape::Primitive(d) if d.prim == Prim::Base64)
            && e.prop.json == Json::String
            && raw_len > 0
    }

    /// Whether the element is a boolean.
    pub fn is_boolean(&self, e: Element) -> bool {
        !matches!(e.shape, Shape::Object) && e.prop.json == Json::Boolean
    }

    /// Whether `s` is a valid JSON string value of the element: the walk's string rules
    /// (not empty, at most 1 MB, no control character but tab, LF and CR), the schema's
    /// pattern and codes, and the rules of its primitive type (calendar dates, base64, active
    /// HTML in plain text).
    pub fn text_ok(&self, e: Element, s: &str) -> bool {
        self.text_ok_scanned(e, s, p::Scan::of(s))
    }

    /// [`Rules::text_ok`] for a value whose byte classes are `scan` (a writer that escapes
    /// the value scans it once for both).
    pub fn text_ok_scanned(&self, e: Element, s: &str, scan: p::Scan) -> bool {
        if s.is_empty() || scan.has(p::Scan::CONTROL) {
            return false;
        }
        // An inline code list (`Patient.gender`) has no JSON type in the schema: its values are
        // strings.
        let prim = match (e.shape, e.prop.json) {
            (Shape::Primitive(d), Json::String) => d.prim,
            (Shape::Code, Json::String | Json::Any) if !e.prop.values.is_empty() => Prim::Other,
            _ => return false,
        };
        if s.len() > MAX_STRING_BYTES && prim != Prim::Base64 {
            return false;
        }
        if let Some(i) = e.prop.pattern {
            if !self.model.patterns[usize::from(i)].is_match_scanned(s, scan) {
                return false;
            }
        }
        if !e.prop.values.is_empty() && !e.prop.values.iter().any(|c| &**c == s) {
            return false;
        }
        if e.prop.binding.is_some_and(|b| !b.holds(s)) {
            return false;
        }
        match prim {
            Prim::Date => p::calendar_ok(s) != Some(false),
            Prim::Base64 => p::base64_len(s).is_some(),
            Prim::String => {
                !(self.opts.security_checks
                    && scan.has(p::Scan::MARKUP)
                    && p::looks_like_active_html(s))
            }
            Prim::Markdown => self.opts.markdown_html || !p::has_html_tag(s),
            // A local `#id` counts as a reference to a contained resource (dom-3, ref-1).
            Prim::Canonical | Prim::Uri => !s.starts_with('#'),
            Prim::Integer | Prim::PositiveInt | Prim::UnsignedInt | Prim::Complex => false,
            Prim::Other => true,
        }
    }

    /// Whether `s`, written as it is, is a JSON number the element accepts: an integer in its
    /// 32-bit range, or a decimal without exponent whose integer part a parser holds.
    pub fn number_ok(&self, e: Element, s: &str) -> bool {
        let Shape::Primitive(d) = e.shape else {
            return false;
        };
        if e.prop.json != Json::Number {
            return false;
        }
        let digits = s.strip_prefix('-').unwrap_or(s);
        let (int, frac) = match digits.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (digits, None),
        };
        // RFC 8259: no leading zeros, digits on both sides of the point.
        let grammar = !int.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit())
            && (int == "0" || !int.starts_with('0'))
            && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
        if !grammar {
            return false;
        }
        let min = match d.prim {
            Prim::Integer => i64::from(i32::MIN),
            Prim::PositiveInt => 1,
            Prim::UnsignedInt => 0,
            // A decimal: f64 holds an integer part of up to 308 digits.
            _ => return int.len() <= 300 && s.len() <= 1024,
        };
        // `-0` reads as a float, which the walk's integer check refuses.
        frac.is_none()
            && s != "-0"
            && s.parse::<i64>()
                .is_ok_and(|v| v >= min && v <= i64::from(i32::MAX))
    }

    /// Whether the element's name is a choice of `value[x]` (for `ext-1`).
    pub fn is_value_choice(name: &str) -> bool {
        name.starts_with("value")
    }

    pub fn kind(&self, t: ObjectType) -> ObjectKind {
        t.def.kind
    }

    /// The element names `t` requires, with whether a primitive's `_name` alone meets the
    /// requirement: the schema's `required` list wants the key itself (`false`); the walk's
    /// own list (`walk::REQUIRED`, which may name a choice `name[x]`) takes `_name` too (`true`).
    pub fn required(&self, t: ObjectType) -> impl Iterator<Item = (&'static str, bool)> {
        t.def
            .schema_required
            .iter()
            .map(|s| (&**s, false))
            .chain(t.def.required.iter().map(|s| (*s, true)))
    }

    /// `per-1`: with both, the start comes before the end.
    pub fn period_ok(&self, start: &str, end: &str) -> bool {
        period_ordered(start, end)
    }

    /// `Coding.system`: an absolute URI.
    pub fn coding_system_ok(&self, system: &str) -> bool {
        p::has_scheme(system)
    }

    /// `Attachment.url`: an example domain only where the options allow it.
    pub fn attachment_url_ok(&self, url: &str) -> bool {
        self.opts.allow_example_urls || !p::is_example_url(url)
    }

    /// An Extension: an absolute, unversioned `url` (relative allowed for a part of a complex
    /// extension, `in_extension`: at `….extension[i].extension[j]`); a value or nested
    /// extensions, not both (`ext-1`); a core extension's one allowed value type. `value` is
    /// the name of the one `value[x]` element written, if any.
    pub fn extension_ok(
        &self,
        url: Option<&str>,
        value: Option<&str>,
        nested: bool,
        in_extension: bool,
    ) -> bool {
        let Some(url) = url else { return false };
        if url.contains('|') || !(in_extension || p::has_scheme(url)) {
            return false;
        }
        if !self.opts.allow_example_urls && p::is_example_url(url) {
            return false;
        }
        if let (Some((_, want)), Some(v)) = (CORE_EXTENSIONS.iter().find(|(c, _)| *c == url), value)
        {
            if v != *want {
                return false;
            }
        }
        value.is_some() != nested
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(owner: &str, name: &str, array: bool) -> Element {
        let r = Rules::shared();
        r.element(r.object_type(owner).unwrap(), name, array)
            .unwrap()
    }

    #[test]
    fn elements_resolve_with_their_arity_and_shape() {
        let r = Rules::shared();
        let patient = r.object_type("Patient").unwrap();
        assert!(r.element(patient, "name", true).is_some());
        assert!(
            r.element(patient, "name", false).is_none(),
            "arity must agree"
        );
        assert!(r.element(patient, "nickname", false).is_none());
        assert!(
            r.element(patient, "contained", true).is_none(),
            "resources need the walk"
        );
        assert!(r.is_object(el("Patient", "name", true)));
        assert!(r.is_boolean(el("Patient", "active", false)));
        let data = el("Attachment", "data", false);
        // R4 bounds strings at 1 MB, not base64Binary.
        assert!(r.base64_ok(data, 786_433), "beyond 1 MB encoded");
        assert!(
            !r.base64_ok(el("Attachment", "url", false), 3),
            "not base64Binary"
        );
        assert!(!r.base64_ok(data, 0));
        assert!(r.object_type("string").is_none());
        assert_eq!(r.kind(r.object_type("Period").unwrap()), ObjectKind::Period);
        let loc = r.object_type("Encounter_Location").unwrap();
        assert!(r.required(loc).any(|n| n == ("location", false)));
        let obs = r.object_type("Observation").unwrap();
        assert!(r.required(obs).any(|n| n == ("status", true)));
        assert!(!r.is_plain_resource_type("Bundle"));
        assert!(r.is_plain_resource_type("Observation"));
    }

    #[test]
    fn text_rules_are_the_walks() {
        let r = Rules::shared();
        let gender = el("Patient", "gender", false);
        assert!(r.text_ok(gender, "female"));
        assert!(!r.text_ok(gender, "woman"), "required binding");
        let birth = el("Patient", "birthDate", false);
        assert!(r.text_ok(birth, "2024-02-29"));
        assert!(!r.text_ok(birth, "2023-02-29"), "calendar");
        assert!(!r.text_ok(birth, "2023-2-1"), "pattern");
        let family = el("HumanName", "family", false);
        assert!(!r.text_ok(family, ""), "empty");
        assert!(
            !r.text_ok(family, "a\u{b}b"),
            "vertical tab is not in string's pattern"
        );
        assert!(!r.text_ok(family, "<script>x</script>"), "active HTML");
        assert!(
            r.text_ok(family, "O'Brien <b>"),
            "text that is not active HTML"
        );
        assert!(!r.text_ok(el("Attachment", "url", false), "#local"));
        assert!(
            !r.text_ok(el("Patient", "active", false), "true"),
            "JSON type"
        );
        assert!(!r.text_ok(el("Attachment", "data", false), "a"), "base64");
        let long = "x".repeat(MAX_STRING_BYTES + 1);
        assert!(!r.text_ok(family, &long));
    }

    #[test]
    fn numbers_are_json_and_in_range() {
        let r = Rules::shared();
        let dec = el("Quantity", "value", false);
        for ok in ["0", "-0", "1.50", "12345678901234567890.1", "-0.001"] {
            assert!(r.number_ok(dec, ok), "{ok}");
        }
        for bad in ["", "-", "01", "1.", ".5", "1e5", "+1", "1.2.3", "NaN", " 1"] {
            assert!(!r.number_ok(dec, bad), "{bad}");
        }
        assert!(!r.number_ok(dec, &"9".repeat(301)), "beyond f64");
        let pos = el("Attachment", "size", false);
        assert!(r.number_ok(pos, "0"), "Attachment.size is an unsignedInt");
        assert!(!r.number_ok(pos, "-1"));
        let seq = el("Observation_Component", "valueInteger", false);
        assert!(r.number_ok(seq, "-5"));
        assert!(!r.number_ok(seq, "-0"), "a float to the parser");
        assert!(r.number_ok(dec, "-0"));
        assert!(!r.number_ok(seq, "2147483648"));
        assert!(!r.number_ok(seq, "1.0"));
        assert!(!r.number_ok(el("HumanName", "family", false), "1"));
    }

    #[test]
    fn extensions_follow_ext_1_and_the_core_definitions() {
        let r = Rules::shared();
        let u = "http://example.net/ext";
        assert!(r.extension_ok(Some(u), Some("valueString"), false, false));
        assert!(r.extension_ok(Some(u), None, true, false));
        assert!(!r.extension_ok(Some(u), None, false, false), "neither");
        assert!(
            !r.extension_ok(Some(u), Some("valueString"), true, false),
            "both"
        );
        assert!(!r.extension_ok(None, Some("valueString"), false, false));
        assert!(!r.extension_ok(Some("code"), Some("valueString"), false, false));
        assert!(r.extension_ok(Some("code"), Some("valueString"), false, true));
        assert!(!r.extension_ok(Some("http://x/e|1.0"), Some("valueString"), false, false));
        let dar = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";
        assert!(r.extension_ok(Some(dar), Some("valueCode"), false, false));
        assert!(!r.extension_ok(Some(dar), Some("valueString"), false, false));
    }
}
