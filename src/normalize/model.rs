//! The FHIR R4 element table mapping paths are compiled against: which elements a type has, their
//! types, which repeat, and the codes a required binding allows. Derived from the official R4
//! JSON schema by `scripts/fhir-r4-model.py` (r4-elements.tsv); knowing it at load is what lets
//! the engine write arrays, numbers and booleans correctly and lets `mapping lint` name a path
//! that does not exist.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::fhir::validate::choice_groups;
use crate::fhir::validate::primitive::Binding;

const TABLE: &str = include_str!("r4-elements.tsv");

pub type TypeId = u16;
pub type ElemId = u32;

/// FHIR primitive types: how a value is written and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prim {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

impl Prim {
    fn parse(name: &str) -> Option<Prim> {
        Some(match name {
            "base64Binary" => Prim::Base64Binary,
            "boolean" => Prim::Boolean,
            "canonical" => Prim::Canonical,
            "code" => Prim::Code,
            "date" => Prim::Date,
            "dateTime" => Prim::DateTime,
            "decimal" => Prim::Decimal,
            "id" => Prim::Id,
            "instant" => Prim::Instant,
            "integer" => Prim::Integer,
            "markdown" => Prim::Markdown,
            "oid" => Prim::Oid,
            "positiveInt" => Prim::PositiveInt,
            "string" => Prim::String,
            "time" => Prim::Time,
            "unsignedInt" => Prim::UnsignedInt,
            "uri" => Prim::Uri,
            "url" => Prim::Url,
            "uuid" => Prim::Uuid,
            "xhtml" => Prim::Xhtml,
            _ => return None,
        })
    }
}

#[derive(Debug)]
pub struct TypeDef {
    pub name: String,
    pub prim: Option<Prim>,
    pub resource: bool,
    elems: HashMap<String, ElemId>,
}

#[derive(Debug)]
pub struct ElemDef {
    /// The JSON key.
    pub name: String,
    /// `"name":`, as the writer puts it.
    pub json_key: String,
    pub ty: TypeId,
    pub array: bool,
    /// Codes of an inline required binding (e.g. `Patient.gender`), else empty.
    pub codes: Vec<String>,
    /// A required binding the schema does not list (`Money.currency`), by the form of its codes.
    pub binding: Option<Binding>,
    /// The choice element it is a type of (`deceasedBoolean`, and `_deceasedBoolean`, of
    /// `Patient.deceased[x]`): one number per choice of the table; 0 for none.
    pub choice: u32,
}

/// Why a code element cannot hold a code ([`ElemDef::refuses_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeRefused {
    Control,
    NotInValueSet,
    Form(Binding),
}

impl CodeRefused {
    pub fn problem(self) -> &'static str {
        match self {
            CodeRefused::Control => "a control character in a code",
            CodeRefused::NotInValueSet => "code not in the FHIR value set of its element",
            CodeRefused::Form(b) => b.problem(),
        }
    }
}

impl ElemDef {
    /// Why `code`, normalized as the mapper writes it (`value::normalize_code`), cannot be this
    /// element's value, after folding it to its code system's spelling (`usd` is USD). The
    /// mapper asks it of every code it writes, and lint of every constant code.
    pub fn refuses_code(&self, code: &mut str) -> Option<CodeRefused> {
        // Normalized, the code's only white space is single spaces: any byte below a space
        // left is a control character, and so is a C1 one (read by character only where the
        // code is not ASCII).
        let control = if code.is_ascii() {
            code.bytes().any(|c| c < b' ')
        } else {
            code.chars().any(super::value::is_refused_control)
        };
        if control {
            return Some(CodeRefused::Control);
        }
        if !self.codes.is_empty() && !self.codes.iter().any(|c| c == code) {
            return Some(CodeRefused::NotInValueSet);
        }
        let form = self.binding?;
        form.fold(code);
        (!form.holds(code)).then_some(CodeRefused::Form(form))
    }
}

#[derive(Debug)]
pub struct Model {
    types: Vec<TypeDef>,
    by_name: HashMap<String, TypeId>,
    elems: Vec<ElemDef>,
}

impl Model {
    /// The table built into the binary, parsed once per process.
    pub fn r4() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| Model::parse(TABLE))
    }

    fn parse(text: &str) -> Model {
        let mut m = Model {
            types: Vec::new(),
            by_name: HashMap::new(),
            elems: Vec::new(),
        };
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let mut cols = line.split('\t');
            let head = cols.next().unwrap_or_default();
            if head == "@resources" {
                for r in cols.next().unwrap_or_default().split(' ') {
                    let t = m.type_id_or_add(r);
                    m.types[t as usize].resource = true;
                }
                continue;
            }
            let Some((owner, name)) = head.split_once('.') else {
                continue;
            };
            let ty_name = cols.next().unwrap_or_default();
            let flags = cols.next().unwrap_or_default();
            let codes: Vec<String> = cols
                .next()
                .filter(|c| !c.is_empty())
                .map(|c| c.split('|').map(str::to_string).collect())
                .unwrap_or_default();
            let owner = m.type_id_or_add(owner);
            let ty = m.type_id_or_add(ty_name);
            let array = flags.contains('*');
            // The flag `!` (the schema requires the element) is not read here: what an object
            // requires, required primitives and choices too, is the check's to say
            // (`check::meets_required`).
            m.add_elem(owner, name, ty, array, codes);
            if m.types[ty as usize].prim.is_some() {
                // `_birthDate`: where a primitive's own extensions go in JSON.
                let element = m.type_id_or_add("Element");
                m.add_elem(owner, &format!("_{name}"), element, array, Vec::new());
            }
        }
        m.number_choices();
        m
    }

    /// Gives the types of each choice element their choice's number: elements named their
    /// base and their type (`deceasedDateTime`), two or more of one base in a type, as the
    /// validator reads the schema (`choice_groups`).
    fn number_choices(&mut self) {
        let mut next = 0u32;
        for t in 0..self.types.len() {
            let ty = &self.types[t];
            let elems: Vec<ElemId> = ty.elems.values().copied().collect();
            let pairs: Vec<(&str, &str)> = elems
                .iter()
                .map(|&e| {
                    let d = &self.elems[e as usize];
                    (d.name.as_str(), self.types[d.ty as usize].name.as_str())
                })
                .collect();
            let mut numbered = Vec::new();
            for group in choice_groups(&ty.name, &pairs) {
                next += 1;
                for at in group {
                    numbered.push((elems[at], next));
                    if let Some(&u) = ty.elems.get(&format!("_{}", pairs[at].0)) {
                        numbered.push((u, next));
                    }
                }
            }
            for (e, choice) in numbered {
                self.elems[e as usize].choice = choice;
            }
        }
    }

    fn add_elem(
        &mut self,
        owner: TypeId,
        name: &str,
        ty: TypeId,
        array: bool,
        codes: Vec<String>,
    ) -> ElemId {
        let id = self.elems.len() as ElemId;
        let binding = Binding::of(&self.types[owner as usize].name, name);
        self.elems.push(ElemDef {
            name: name.to_string(),
            json_key: format!("\"{name}\":"),
            ty,
            array,
            codes,
            binding,
            choice: 0,
        });
        self.types[owner as usize]
            .elems
            .insert(name.to_string(), id);
        id
    }

    fn type_id_or_add(&mut self, name: &str) -> TypeId {
        if let Some(&t) = self.by_name.get(name) {
            return t;
        }
        let id = self.types.len() as TypeId;
        self.types.push(TypeDef {
            name: name.to_string(),
            prim: Prim::parse(name),
            resource: false,
            elems: HashMap::new(),
        });
        self.by_name.insert(name.to_string(), id);
        id
    }

    pub fn type_id(&self, name: &str) -> Option<TypeId> {
        self.by_name.get(name).copied()
    }

    pub fn ty(&self, t: TypeId) -> &TypeDef {
        &self.types[t as usize]
    }

    pub fn elem(&self, e: ElemId) -> &ElemDef {
        &self.elems[e as usize]
    }

    /// The element `name` of type `owner`.
    pub fn child(&self, owner: TypeId, name: &str) -> Option<ElemId> {
        self.types[owner as usize].elems.get(name).copied()
    }

    /// 1 for elements of type `ext`, 2 for elements of type `coding`, 4 for elements of type
    /// `range`, 8 for a type of a choice element, else 0; indexed by ElemId.
    pub fn elem_kinds(&self, ext: TypeId, coding: TypeId, range: TypeId) -> Vec<u8> {
        self.elems
            .iter()
            .map(|e| {
                u8::from(e.ty == ext)
                    | (u8::from(e.ty == coding) << 1)
                    | (u8::from(e.ty == range) << 2)
                    | (u8::from(e.choice != 0) << 3)
            })
            .collect()
    }

    /// How many types the table has (type ids run below it).
    pub fn type_count(&self) -> usize {
        self.types.len()
    }

    /// How many elements the table has (element ids run below it).
    pub fn elem_count(&self) -> usize {
        self.elems.len()
    }

    /// The elements of `t`, in no particular order.
    pub fn elems_of(&self, t: TypeId) -> impl Iterator<Item = ElemId> + '_ {
        self.types[t as usize].elems.values().copied()
    }

    pub fn is_resource(&self, t: TypeId) -> bool {
        self.types[t as usize].resource
    }

    /// Whether `t` is a primitive type (a JSON string, number or boolean).
    pub fn prim(&self, t: TypeId) -> Option<Prim> {
        self.types[t as usize].prim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_patient_elements_their_types_and_arrays() {
        let m = Model::r4();
        let p = m.type_id("Patient").unwrap();
        assert!(m.is_resource(p));
        let name = m.elem(m.child(p, "name").unwrap());
        assert!(name.array);
        assert_eq!(m.ty(name.ty).name, "HumanName");
        let gender = m.elem(m.child(p, "gender").unwrap());
        assert_eq!(m.prim(gender.ty), Some(Prim::Code));
        assert!(gender.codes.contains(&"female".to_string()));
        let birth = m.elem(m.child(p, "_birthDate").unwrap());
        assert_eq!(m.ty(birth.ty).name, "Element");
        let hn = m.type_id("HumanName").unwrap();
        assert!(m.elem(m.child(hn, "given").unwrap()).array);
        assert!(!m.elem(m.child(hn, "family").unwrap()).array);
        let ext = m.type_id("Extension").unwrap();
        let vd = m.elem(m.child(ext, "valueDecimal").unwrap());
        assert_eq!(m.prim(vd.ty), Some(Prim::Decimal));
        let choice = |n: &str| m.elem(m.child(p, n).unwrap()).choice;
        assert_ne!(choice("deceasedBoolean"), 0);
        assert_eq!(choice("deceasedBoolean"), choice("deceasedDateTime"));
        assert_eq!(choice("deceasedBoolean"), choice("_deceasedDateTime"));
        assert_ne!(choice("deceasedBoolean"), choice("multipleBirthBoolean"));
        assert_eq!(choice("gender"), 0);
        assert_eq!(choice("birthDate"), 0);
        // Separate elements R4 names like one choice's types.
        let sr = m.type_id("ServiceRequest").unwrap();
        assert_eq!(m.elem(m.child(sr, "instantiatesUri").unwrap()).choice, 0);
        assert_ne!(m.elem(m.child(sr, "occurrenceDateTime").unwrap()).choice, 0);
    }
}
