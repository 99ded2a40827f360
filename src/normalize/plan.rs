//! Compiles the merged mapping files into a plan: message structures with their rows, segment and
//! data-type maps as rows with compiled conditions and paths resolved against the FHIR R4 model,
//! vocabularies as hash tables. Nothing is parsed per message; every error names file, line and
//! the column it is about.

use std::collections::{HashMap, HashSet};

/// The plan's lookup tables (vocabularies, label code lists, id rules): keyed by codes and
/// coding-system URIs from trusted files and probed with message values per row, hashed with
/// foldhash's fixed-seed hash. SipHash's cost showed in profiles, and so did FNV-1a's
/// byte-at-a-time loop on URIs (security labels look every coding's system up); foldhash reads
/// whole words. Flooding resistance buys nothing here: no key from a message is ever inserted,
/// and the fixed seed keeps every run's plan the same.
pub type TableMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

use super::cond::{self, Cond, Expr, Guard, Ref, RowGuard, Scope};
use super::csv::Record;
use super::files::{Files, MergedFile};
use super::model::{CodeRefused, ElemId, Model, Prim, TypeId};
use super::value::Zone;
use super::LoadError;

/// Where a compiled row came from (for errors at load and in lint output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub file: u16,
    pub line: u32,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Zone for v2 times that carry none; `None`: such times keep their date only.
    pub default_timezone: Option<Zone>,
    /// Repetitions of one field that are mapped; more are a warning.
    pub max_repetitions: usize,
    /// Fields of one segment that are read; more are a warning.
    pub max_fields: usize,
    /// Resources one message may produce; more is a mapping failure (`too_many_resources`).
    pub max_resources: usize,
    /// `Provenance.agent.who.display`.
    pub gateway_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_timezone: None,
            max_repetitions: 100,
            max_fields: 300,
            max_resources: 5000,
            gateway_name: "medanchor".into(),
        }
    }
}

/// One step of a FHIR path: an element and its slot (`identifier[2]`: slot 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub elem: ElemId,
    pub slot: u16,
    pub array: bool,
    /// The slot was written (`link[1]`): references to it fill that one element.
    pub explicit: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// `[2].given` in a data-type map: the second instance of the element the map is applied to.
    pub sub: u16,
    pub steps: Vec<Step>,
    /// Type of what the path reaches (the anchor's type when there are no steps).
    pub leaf: TypeId,
    /// `individual(Practitioner)`: the path is a Reference to a new resource of this type.
    pub creates: Option<TypeId>,
}

/// A data-type map or built-in transform named in the datatype_map column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Xform {
    None,
    /// Text → base64 of its UTF-8 bytes.
    Base64,
    /// Hex digits → base64 of the bytes.
    HexBase64,
    /// Repetitions and repeated writes joined with line breaks.
    Lines,
    /// Replaces a value an earlier row wrote (a newer field that supersedes an older one
    /// earlier in the message: TQ1-7 over SCH-11).
    Override,
}

/// What a copy into a primitive does with a value's parts after the first, by the v2 data type
/// of what the row reads (`v2types`, the guide's types): there, a separator is one the sender
/// did not escape, or the map reads the first part of a composite on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rest {
    /// A composite (HD, CWE), a date or time (TS before v2.6 had a second part, its
    /// precision: `20240101^D`), or a type not known: its first part is what the map reads.
    Chosen,
    /// A text component (CX.1, XON.1: ST): an `&` in it is text (`Smith & Jones`), as it is
    /// in a text field; the component is copied whole.
    Text,
    /// A code, identifier or number (ID, IS, NM, SI), or text read as a field (a `^` ends its
    /// only component): what follows the first part is lost, and named in a warning.
    Named,
}

impl Rest {
    /// For a row of map `v2` (`CX`, `PID`) reading `src`: a field whole, or a component
    /// (`PID-3.1` through the field's type, `CX.1`). A subcomponent is one part already, and
    /// a component of a field whose type the table does not know (a Z-segment's) or that has
    /// none (`PID-7.1` of a DTM) is taken as the map reads it.
    ///
    /// `into_text`: the row writes a FHIR string or markdown (a name, an identifier's value);
    /// a text component written as a code (CWE.1 as `Coding.code`) is a code, and an `&` in
    /// it a subcomponent the sender meant (`30955-9&30957-5`, the CDC's immunization
    /// convention): its first part is the code, and the rest is named.
    fn of(v2: &str, src: Src, into_text: bool) -> Rest {
        use super::v2types::{NAMED, TEXT};
        let whole_field = matches!(src, Src::Field { comp: 0, .. });
        let r = match src {
            Src::Field { sub: 0, .. } | Src::Comp { sub: 0, .. } => src.reads(),
            _ => None,
        };
        let Some(r) = r else {
            return Rest::Chosen;
        };
        match v2_type(v2, &r) {
            Some(t) if TEXT.contains(&t) && !whole_field && into_text => Rest::Text,
            Some(t) if TEXT.contains(&t) || NAMED.contains(&t) => Rest::Named,
            _ => Rest::Chosen,
        }
    }
}

/// Whether data-type map `map` (`CX[Identifier]`) reads what a row of map `v2` reading `src`
/// reads as its own type: the same type, one of the same layout (a CNE read with a CWE map:
/// no component where the two types differ, text counting as one), or a type not known (a
/// Z-segment, a site's own). An NDL read with a CNN map is not: its first component is the CNN.
fn map_fits(v2: &str, src: Src, map: &str) -> bool {
    let own = split_map_name(map).map_or(map, |(t, _)| t);
    let sent = match src.reads() {
        Some(r) => v2_type(v2, &r),
        None => Some(v2).filter(|t| !t.is_empty()),
    };
    let Some(sent) = sent.filter(|t| *t != own) else {
        return true;
    };
    let kind = |t: &'static str| {
        if super::v2types::TEXT.contains(&t) {
            "text"
        } else {
            t
        }
    };
    // Components beyond 30 are not in any type the maps read.
    (1..=30u16).all(|n| {
        let part = |t: &str| v2_type(t, &Ref::Comp { comp: n, sub: 0 });
        match (part(sent), part(own)) {
            (Some(a), Some(b)) => kind(a) == kind(b),
            _ => true,
        }
    })
}

/// The v2 data type of what `r` reads in a map or id rule about `v2` (`PID`, `CX`), as the
/// guide gives it (`v2types`, v2.9); `None` where the table does not know it (a Z-segment, a
/// site's own data type).
fn v2_type(v2: &str, r: &Ref) -> Option<&'static str> {
    use super::v2types::TYPES;
    let find = |part: String| {
        TYPES
            .binary_search_by(|(p, _)| (*p).cmp(part.as_str()))
            .ok()
            .map(|i| TYPES[i].1)
    };
    let (mut ty, parts) = match *r {
        Ref::Field {
            seg,
            field,
            comp,
            sub,
        } => {
            let seg = match seg {
                Some(s) => String::from_utf8_lossy(&s).into_owned(),
                None => v2.to_string(),
            };
            (find(format!("{seg}-{field}"))?, [comp, sub])
        }
        Ref::Comp { comp, sub } => (find(format!("{v2}.{comp}"))?, [sub, 0]),
        Ref::Segment(_) => return None,
    };
    for p in parts.into_iter().take_while(|&p| p > 0) {
        ty = find(format!("{ty}.{p}"))?;
    }
    Some(ty)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Copy {
        map: Option<usize>,
        vocab: Option<usize>,
        xform: Xform,
        rest: Rest,
        /// The data-type map (`map`) is of the type of what the row reads (`PID-3` is a CX,
        /// read with `CX[Identifier]`), or the type is not known: the map's component types
        /// hold for the value (`Rest`). Not so for ORC-4 read with `EI[Identifier]` where the
        /// guide's type is EIP.
        fits: bool,
    },
    /// `decided`: the row's condition compares the very field or component the row is about
    /// (`RXA-21,IF RXA-21 EQUALS "D",status,"entered-in-error"`), so the constant it writes
    /// stands for that value, and the field counts as mapped.
    Assign { expr: Expr, decided: bool },
    /// `@Patient`: a reference to the nearest resource of that type.
    Link(TypeId),
    /// A segment row with no FHIR path: the field is read and deliberately not mapped (a set
    /// id), so it is not listed as unmapped.
    Ignore,
}

/// Where a row reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    /// The whole segment or the whole data-type value.
    Whole,
    /// Segment maps: field (repetitions iterated), optionally one component/subcomponent of each.
    Field { field: u16, comp: u16, sub: u16 },
    /// Data-type maps: a component, optionally one subcomponent.
    Comp { comp: u16, sub: u16 },
}

impl Src {
    /// What the row reads, as a condition names it (its own segment or value); `None` for
    /// the whole.
    fn reads(self) -> Option<Ref> {
        match self {
            Src::Whole => None,
            Src::Field { field, comp, sub } => Some(Ref::Field {
                seg: None,
                field,
                comp,
                sub,
            }),
            Src::Comp { comp, sub } => Some(Ref::Comp { comp, sub }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub loc: Loc,
    /// A segment row whose field repetitions each get their own element (the path repeats, or
    /// the value is gathered as lines); otherwise only the first repetition maps.
    pub repeats: bool,
    pub src: Src,
    pub cond: Option<Cond>,
    /// The part of the condition asked once per map call (`CMap::guards`), not per row.
    pub guard: Option<RowGuard>,
    /// Set when another row of the map has the same condition (what remains after the guard):
    /// the map call asks it once per value and reuses the answer (`OBX[Observation]`'s ten SN
    /// text rows share one long condition).
    pub shared_cond: Option<u16>,
    pub path: Path,
    pub action: Action,
}

/// A segment or data-type map compiled for one target type.
#[derive(Debug)]
pub struct CMap {
    pub name: String,
    /// Which id rules apply to resources it makes: the map's own name when a rule names it
    /// (`PL[Location-Room]`), else its v2 data type or segment id (`XCN`, `PID`). Settled once
    /// the id rules are read.
    pub id_source: String,
    pub rows: Vec<Row>,
    pub guards: Vec<Guard>,
}

#[derive(Debug)]
pub struct VRow {
    pub system: String,
    pub target_code: Target,
    pub target_display: String,
    pub target_system: Target,
}

/// A vocabulary target: text in which `{}` stands for the code looked up (or what follows a
/// prefix row's prefix).
#[derive(Debug)]
pub struct Target {
    text: String,
    /// Whether `text` has a `{}`, settled once when the file is read.
    fills: bool,
}

impl Target {
    fn new(text: &str) -> Target {
        Target {
            fills: text.contains("{}"),
            text: text.to_string(),
        }
    }

    /// The target for `value`: borrowed unless `{}` sits inside other text.
    fn fill<'a>(&'a self, value: &'a str) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        if !self.fills {
            Cow::Borrowed(&self.text)
        } else if self.text == "{}" {
            Cow::Borrowed(value)
        } else {
            Cow::Owned(self.text.replace("{}", value))
        }
    }
}

/// `code` in ASCII upper case without allocating for codes of up to 64 bytes (in `buf`; a
/// longer one in `long`): lookups that fold case run on many codes a message.
fn upper_case<'a>(code: &'a str, buf: &'a mut [u8; 64], long: &'a mut String) -> &'a str {
    if !code.bytes().any(|c| c.is_ascii_lowercase()) {
        return code;
    }
    match buf.get_mut(..code.len()) {
        Some(b) => {
            b.copy_from_slice(code.as_bytes());
            b.make_ascii_uppercase();
            // ASCII case changes keep UTF-8 valid (only bytes below 0x80 change).
            std::str::from_utf8(b).unwrap_or(code)
        }
        None => {
            *long = code.to_ascii_uppercase();
            long
        }
    }
}

#[derive(Debug, Default)]
pub struct Vocab {
    pub rows: Vec<VRow>,
    exact: TableMap<String, Vec<usize>>,
    /// `exact` by code upper-cased, for codes no other code of the file folds to: a sender's
    /// `BOOKED` is table 0278's `Booked` (asked only when the code as sent is not listed).
    folded: TableMap<String, Vec<usize>>,
    prefixes: Vec<(String, usize)>,
    default: Option<usize>,
    /// A `*` row without a target: codes not listed give no value (rather than being copied as
    /// they are); a data-type map on the row still applies.
    pub drop_unknown: bool,
}

/// A vocabulary hit: the target with `{}` filled in.
#[derive(Debug, PartialEq, Eq)]
pub struct Translated<'a> {
    pub code: std::borrow::Cow<'a, str>,
    pub display: &'a str,
    pub system: std::borrow::Cow<'a, str>,
}

impl Vocab {
    /// Looks `code` up; a row's system must match unless the row or the value has none.
    pub fn lookup<'a>(&'a self, code: &'a str, system: &str) -> Option<Translated<'a>> {
        let sys_ok = |r: &VRow| r.system.is_empty() || system.is_empty() || r.system == system;
        let fill = |r: &'a VRow, rest: &'a str| Translated {
            code: r.target_code.fill(rest),
            display: &r.target_display,
            system: r.target_system.fill(rest),
        };
        if let Some(ix) = self.exact.get(code) {
            if let Some(&i) = ix.iter().find(|&&i| sys_ok(&self.rows[i])) {
                return Some(fill(&self.rows[i], code));
            }
        }
        if !self.folded.is_empty() {
            let mut buf = [0u8; 64];
            let mut long = String::new();
            let upper = upper_case(code, &mut buf, &mut long);
            if let Some(ix) = self.folded.get(upper) {
                if let Some(&i) = ix.iter().find(|&&i| sys_ok(&self.rows[i])) {
                    return Some(fill(&self.rows[i], code));
                }
            }
        }
        for (p, i) in &self.prefixes {
            if let Some(rest) = code.strip_prefix(p.as_str()) {
                if !rest.is_empty() && sys_ok(&self.rows[*i]) {
                    return Some(fill(&self.rows[*i], rest));
                }
            }
        }
        self.default.map(|i| fill(&self.rows[i], code))
    }
}

/// How a resource's id is made: UUIDv5 of its type and these parts. The key counts only when
/// a part that identifies is valued; a qualifying part (`(PID-3.4)`, an assigning authority)
/// is in the key but makes none alone, or every patient an authority names would be one.
#[derive(Debug, Clone)]
pub struct IdRule {
    pub parts: Vec<(KeyPart, Role)>,
    /// Same key in one Bundle: the same resource (master data), or two that must stay apart.
    pub merge: bool,
    /// `until OBR`: the key stands until that segment, mapping into the resource, names it by
    /// its own rule. A report begun at its ORC is the report its OBR (filler number, code)
    /// names; two reports under one order number must not share the order's key, or the
    /// second one's correction, sent alone, would take the first one's id.
    pub until: Option<[u8; 3]>,
}

#[derive(Debug, Clone)]
pub enum KeyPart {
    Ref(Ref),
    /// `#OBX-1`: a number (a set id), compared as one: `01` and `1` are one key part. Only
    /// where the field is a number by definition: an identifier's leading zeros are its own
    /// (`0042` and `42` are two patients).
    Number(Ref),
    /// `-`: a part left empty on purpose (a room's key is its Location's key without the bed).
    Empty,
    /// `@DiagnosticReport`: the id of the nearest open resource of that type.
    Context(TypeId),
    /// `OR`: what follows is the key when nothing before it identifies (an order by its placer
    /// number, else by its filler number).
    Or,
    /// `[placer]` first in an alternative: what its key stands for. Alternatives with the same
    /// label read the same number from different fields (a placer number in OBR-2 or in
    /// ORC-2), so the same values make the same key; without one, an alternative after the
    /// first is marked by its position, so that it never equals another's key.
    Label(Box<str>),
}

/// What a key part does for a key ([`IdRule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Valued, it makes the key (an id, a placer number, the resource a key is made in).
    Identifies,
    /// Written in parentheses: it tells apart keys that have an identifying part (a namespace,
    /// a set id, a code), and makes none alone.
    Qualifies,
}

/// Messages' group structure: members in order, a member either a segment or a group.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub members: Vec<Member>,
}

#[derive(Debug)]
pub enum Member {
    Seg {
        id: [u8; 3],
        repeats: bool,
        /// `[PD1]`: a group can begin after it when it is missing; a required one (`PID`)
        /// must be there for a group to be entered past it.
        optional: bool,
        rows: Vec<usize>,
    },
    Group(usize),
}

#[derive(Debug)]
pub struct LabelDef {
    pub name: String,
    pub ty: TypeId,
}

#[derive(Debug)]
pub struct RefRule {
    pub from: usize,
    pub path: Path,
    pub to: usize,
}

#[derive(Debug)]
pub struct MsgRow {
    pub cond: Option<Cond>,
    /// The resource instance (label) the row makes or adds to; `None`: structure only.
    pub label: Option<usize>,
    /// `Observation[2].note`: the map applies at this element of the resource.
    pub at: Option<Path>,
    pub map: Option<usize>,
    pub refs: Vec<RefRule>,
}

#[derive(Debug)]
pub struct MessageMap {
    pub name: String,
    /// `groups[0]` is the message itself.
    pub groups: Vec<Group>,
    pub labels: Vec<LabelDef>,
    pub rows: Vec<MsgRow>,
    /// The pairs of labels a row's references link (`Patient[2].link.other=Patient[1]`): two
    /// resources by design, whatever their keys.
    pub links: Vec<(usize, usize)>,
}

#[derive(Debug, Default)]
pub struct Labels {
    /// Label codes (v3 ActCode), index = bit.
    pub names: Vec<String>,
    /// code (upper-cased) → (system, bits): looked up by the code without allocating.
    exact: TableMap<String, Vec<(String, u64)>>,
    /// system → (code prefix, upper-cased; bits); the empty system applies to every coding.
    prefixes: TableMap<String, Vec<(String, u64)>>,
}

impl Labels {
    /// Label bits for a coding. Codes compare without regard to ASCII case (kept upper-cased):
    /// a sender's `f32.9` is ICD-10's F32.9, and a label missed costs more than one too many.
    /// Upper-cased on the stack: many codes the mapper writes are lower case (`final`).
    pub fn lookup(&self, system: &str, code: &str) -> u64 {
        let mut bits = 0;
        let mut buf = [0u8; 64];
        let mut long = String::new();
        let code = upper_case(code, &mut buf, &mut long);
        if let Some(v) = self.exact.get(code) {
            for (s, b) in v {
                if s.is_empty() || s == system {
                    bits |= b;
                }
            }
        }
        for s in [system, ""] {
            if let Some(v) = self.prefixes.get(s) {
                for (p, b) in v {
                    if code.starts_with(p.as_str()) {
                        bits |= b;
                    }
                }
            }
            if system.is_empty() {
                break;
            }
        }
        bits
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Types and elements the engine itself needs.
#[derive(Debug)]
pub struct Known {
    pub reference_reference: ElemId,
    pub coding: TypeId,
    pub coding_system: ElemId,
    pub coding_code: ElemId,
    pub coding_display: ElemId,
    pub codeable_concept: TypeId,
    pub cc_coding: ElemId,
    pub extension: TypeId,
    pub extension_url: ElemId,
    pub patient: TypeId,
    pub period_start: ElemId,
    pub period_end: ElemId,
    pub range: TypeId,
    pub range_low: ElemId,
    pub range_high: ElemId,
    pub quantity_value: ElemId,
    pub appointment: TypeId,
    pub appointment_status: ElemId,
    pub appointment_start: ElemId,
    pub appointment_end: ElemId,
    pub appointment_minutes: ElemId,
}

/// The v3 ActCode codes under `_InformationSensitivityPolicy` (act, entity and role
/// sensitivity policies): what a security label written under the ActCode system may be.
const SENSITIVITY_CODES: &[&str] = &[
    "HIV", "PSY", "ETH", "SDV", "SUD", "STD", "BH", "COGN", "DVD", "EMOTDIS", "ETHUD", "GDIS",
    "MH", "MST", "OPIOIDUD", "PSYTHPN", "SCA", "SEX", "SICKLE", "SPI", "TBOO", "DEMO", "DOB",
    "GENDER", "LIVARG", "MARST", "PATLOC", "RACE", "REL", "B", "EMPL", "LOCIS", "SSP", "ADOL",
    "CEL", "DIA", "DRGIS", "EMP", "PDS", "PHY", "PRS",
];

/// Why a site file changes nothing (`mapping lint` warns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unused {
    /// A map or vocabulary that no row names (a misspelt name, a segment map no message map
    /// uses).
    NotNamed,
    /// An override of one of the set's files with no rows: empty, or a header alone.
    NoRows,
}

impl std::fmt::Display for Unused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unused::NotNamed => {
                "no row names this map or vocabulary, so it changes nothing (is its name that \
                 of the file it should override?)"
            }
            Unused::NoRows => {
                "it has no rows and overrides a file of the set (overrides merge row by row), \
                 so it changes nothing"
            }
        })
    }
}

#[derive(Debug)]
pub struct Plan {
    pub model: &'static Model,
    /// Shown names of the files rows came from (`Loc::file`).
    pub files: Vec<String>,
    /// Site files that change nothing, and why.
    pub unused: Vec<(String, Unused)>,
    /// Rows lint warns of (file, line, why) that the set still loads with.
    pub warnings: Vec<LoadError>,
    pub version: String,
    pub settings: Settings,
    /// The Provenance agent's text: the gateway, its version and the mapping set's.
    pub agent_display: String,
    pub messages: Vec<MessageMap>,
    /// `ADT^A04` → message map.
    pub by_type: HashMap<String, usize>,
    /// `ADT_A01` (file name, MSH-9.3) → message map.
    pub by_name: HashMap<String, usize>,
    pub default_message: Option<usize>,
    pub maps: Vec<CMap>,
    pub vocabs: Vec<Vocab>,
    /// v2 source (`PID`, `XCN`) → the rules of the resource types it makes.
    pub ids: TableMap<String, Vec<(TypeId, IdRule)>>,
    pub labels: Labels,
    /// Labels of resources referenced from `element` flow into the referencing resource.
    pub propagation: Vec<(TypeId, ElemId)>,
    pub known: Known,
    /// Per element: 1 when it is an Extension, 2 when a Coding, 4 when a Range (the writer's
    /// checks, dense so they cost a byte load per node).
    pub elem_kind: Vec<u8>,
}

struct Compiler<'a> {
    model: &'static Model,
    files: &'a Files,
    errors: Vec<LoadError>,
    /// What `mapping lint` warns of without refusing the set (a choice that may be the
    /// site's on purpose).
    warnings: Vec<LoadError>,
    maps: Vec<CMap>,
    map_cache: HashMap<(String, TypeId), usize>,
    in_progress: HashSet<(String, TypeId)>,
    vocab_index: HashMap<String, usize>,
    /// Maps and vocabularies a row names (`PID[Patient]`, `AdministrativeSex`).
    used: HashSet<String>,
    /// `max_fields` of settings.csv: a row about a field beyond it would never run.
    max_fields: usize,
}

/// Extensions the rows write whose definitions allow one per element (0..1). A server that
/// knows the definition refuses a second one, and the check knows only R4's own
/// cardinalities, so a repeated field (PID-6, an OBX-5 of several ED) maps its first
/// repetition into such an extension, with the warning any element that holds one value gives.
const SINGLE_EXTENSIONS: &[&str] = &[
    "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
    "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
    "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
    "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
    "http://hl7.org/fhir/StructureDefinition/patient-congregation",
    "http://hl7.org/fhir/StructureDefinition/patient-animal",
    "http://hl7.org/fhir/StructureDefinition/observation-v2-subid",
    "http://hl7.org/fhir/StructureDefinition/identifier-checkDigit",
    "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix",
    "http://hl7.org/fhir/StructureDefinition/humanname-own-name",
    "http://hl7.org/fhir/StructureDefinition/humanname-partner-prefix",
    "http://hl7.org/fhir/StructureDefinition/humanname-partner-name",
    "http://hl7.org/fhir/StructureDefinition/encounter-modeOfArrival",
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Observation.value",
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedStartDate",
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedEndDate",
];

/// Rows into an extension of [`SINGLE_EXTENSIONS`] (its `url` row a constant of the list) whose
/// first repeating element is that extension: one element, the field's first repetition.
fn one_per_extension(model: &Model, rows: &mut [Row]) {
    let mut singles: Vec<Vec<(ElemId, u16)>> = Vec::new();
    for row in rows.iter() {
        let (Action::Assign { expr, .. }, [.., ext, url]) =
            (&row.action, row.path.steps.as_slice())
        else {
            continue;
        };
        let single = matches!(expr.0.as_slice(), [cond::Term::Lit(u)] if SINGLE_EXTENSIONS.contains(&u.as_str()));
        if single
            && ext.array
            && model.elem(ext.elem).name == "extension"
            && model.elem(url.elem).name == "url"
        {
            let n = row.path.steps.len() - 1;
            singles.push(
                row.path.steps[..n]
                    .iter()
                    .map(|s| (s.elem, s.slot))
                    .collect(),
            );
        }
    }
    for row in rows.iter_mut() {
        let steps = &row.path.steps;
        let into_single = singles.iter().any(|p| {
            steps.len() >= p.len()
                && steps
                    .iter()
                    .zip(p)
                    .all(|(s, (e, slot))| s.elem == *e && s.slot == *slot)
                && steps.iter().position(|s| s.array) == Some(p.len() - 1)
        });
        if into_single {
            row.repeats = false;
        }
    }
}

/// Numbers the conditions that more than one row of a map has (what remains after the guard;
/// `Const(true)` is no condition to ask).
fn share_conditions(rows: &mut [Row]) {
    let mut seen: Vec<(usize, Option<u16>)> = Vec::new();
    let mut next = 0u16;
    for i in 0..rows.len() {
        let Some(c) = rows[i].cond.as_ref().filter(|c| **c != Cond::Const(true)) else {
            continue;
        };
        match seen
            .iter_mut()
            .find(|(j, _)| rows[*j].cond.as_ref() == Some(c))
        {
            Some((j, id)) => {
                let id = *id.get_or_insert_with(|| {
                    next += 1;
                    next - 1
                });
                let j = *j;
                rows[j].shared_cond = Some(id);
                rows[i].shared_cond = Some(id);
            }
            None => seen.push((i, None)),
        }
    }
}

/// Builds the plan, or every problem found.
pub fn compile(files: &Files) -> Result<Plan, Vec<LoadError>> {
    let model = Model::r4();
    let mut c = Compiler {
        model,
        files,
        errors: Vec::new(),
        warnings: Vec::new(),
        maps: Vec::new(),
        map_cache: HashMap::new(),
        in_progress: HashSet::new(),
        vocab_index: HashMap::new(),
        used: HashSet::new(),
        max_fields: Settings::default().max_fields,
    };
    let settings = c.settings();
    c.max_fields = settings.max_fields;
    let vocabs = c.vocabs();
    let ids = c.ids();
    let (labels, propagation) = c.labels();
    // Every segment and data-type map whose target type can be told from its name is compiled
    // here, used or not, so lint checks every row.
    for (name, f) in &files.merged {
        let (dir, map_name) = match name.split_once('/') {
            Some((d, n)) => (d, n.trim_end_matches(".csv")),
            None => continue,
        };
        if dir != "segments" && dir != "datatypes" {
            continue;
        }
        match c.target_of(map_name) {
            Some(t) => {
                c.map(map_name, t, None);
            }
            None => {
                if let Some((src, r)) = f.records.first() {
                    c.err_at(
                        *src,
                        r.line,
                        format!(
                            "the map name `{map_name}` does not say its FHIR target type in brackets (e.g. PID[Patient])"
                        ),
                    );
                }
            }
        }
    }
    let mut messages = Vec::new();
    let mut by_name = HashMap::new();
    for (name, f) in &files.merged {
        if let Some(n) = name.strip_prefix("messages/") {
            let n = n.trim_end_matches(".csv").to_string();
            let m = c.message(&n, f);
            by_name.insert(n, messages.len());
            messages.push(m);
        }
    }
    let by_type = c.message_types(&by_name);
    let default_message = by_name.get("_default").copied();
    let known = known(model);
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    for m in &mut c.maps {
        if ids.contains_key(&m.name) {
            m.id_source = m.name.clone();
        }
    }
    // A map or vocabulary file only the site has, which no row names, changes nothing: most
    // often its name is misspelt (`AdminstrativeSex.csv`), or no message map uses a new
    // segment map. Nor does an override without rows (empty, or a header alone: a file saved
    // before its rows were written): overrides merge row by row. Lint says so. A site-only
    // file without rows is not one of these: an empty vocabulary or datatype map that a row
    // names still decides what that row does.
    let unused = files
        .sources
        .iter()
        .filter(|s| s.site)
        .filter_map(|s| {
            if files.sources.iter().any(|b| !b.site && b.name == s.name) {
                let rowless = super::csv::parse(&s.text).is_ok_and(|records| records.len() <= 1);
                return rowless.then(|| (s.shown.clone(), Unused::NoRows));
            }
            let (dir, name) = s.name.split_once('/')?;
            (matches!(dir, "segments" | "datatypes" | "vocabulary")
                && !c.used.contains(name.trim_end_matches(".csv")))
            .then(|| (s.shown.clone(), Unused::NotNamed))
        })
        .collect();
    let version = match &settings.default_timezone {
        // Times sent without a zone map by a named zone's rules too, which are not in the
        // files but in the binary's zone database: they are part of the set.
        Some(zone @ Zone::Named(_)) => {
            let mut h = blake3::Hasher::new();
            h.update(b"medanchor mapping set and zone v1\0");
            h.update(files.version.as_bytes());
            zone.rules_hash(&mut h);
            h.finalize().to_hex().to_string()
        }
        _ => files.version.clone(),
    };
    Ok(Plan {
        model,
        unused,
        warnings: c.warnings,
        files: files.sources.iter().map(|s| s.shown.clone()).collect(),
        agent_display: format!(
            "{} {} (mapping set {})",
            settings.gateway_name,
            env!("CARGO_PKG_VERSION"),
            &version[..version.len().min(12)]
        ),
        version,
        settings,
        messages,
        by_type,
        by_name,
        default_message,
        maps: c.maps,
        vocabs,
        ids,
        labels,
        propagation,
        elem_kind: model.elem_kinds(known.extension, known.coding, known.range),
        known,
    })
}

fn known(m: &Model) -> Known {
    let t = |n: &str| m.type_id(n).expect("R4 type");
    let e = |ty: TypeId, n: &str| m.child(ty, n).expect("R4 element");
    let reference = t("Reference");
    let coding = t("Coding");
    let codeable_concept = t("CodeableConcept");
    let extension = t("Extension");
    let period = t("Period");
    let range = t("Range");
    let appointment = t("Appointment");
    Known {
        reference_reference: e(reference, "reference"),
        coding,
        coding_system: e(coding, "system"),
        coding_code: e(coding, "code"),
        coding_display: e(coding, "display"),
        codeable_concept,
        cc_coding: e(codeable_concept, "coding"),
        extension,
        extension_url: e(extension, "url"),
        patient: t("Patient"),
        period_start: e(period, "start"),
        period_end: e(period, "end"),
        range,
        range_low: e(range, "low"),
        range_high: e(range, "high"),
        quantity_value: e(t("Quantity"), "value"),
        appointment,
        appointment_status: e(appointment, "status"),
        appointment_start: e(appointment, "start"),
        appointment_end: e(appointment, "end"),
        appointment_minutes: e(appointment, "minutesDuration"),
    }
}

/// `PID[Patient]` → (`PID`, `Patient`).
fn split_map_name(name: &str) -> Option<(&str, &str)> {
    let (v2, rest) = name.split_once('[')?;
    let target = rest.strip_suffix(']')?;
    Some((v2.trim(), target.trim()))
}

fn header_is(f: &MergedFile, want: &[&str]) -> bool {
    f.header.len() >= want.len() && f.header.iter().zip(want).all(|(a, b)| a == b)
}

const MAP_HEADER_SEG: [&str; 6] = [
    "field",
    "condition",
    "fhir_path",
    "datatype_map",
    "vocabulary_map",
    "assignment",
];
const MAP_HEADER_DT: [&str; 6] = [
    "component",
    "condition",
    "fhir_path",
    "datatype_map",
    "vocabulary_map",
    "assignment",
];

impl Compiler<'_> {
    /// A field number no row can reach: the mapper reads `max_fields` fields of a segment.
    fn within_fields(&self, field: u16) -> Result<(), String> {
        if usize::from(field) > self.max_fields {
            return Err(format!(
                "field {field} is beyond max_fields ({}, settings.csv): the mapper never reads it",
                self.max_fields
            ));
        }
        Ok(())
    }

    fn cond_within_fields(&self, c: Cond) -> Result<Cond, String> {
        let mut beyond = Ok(());
        c.refs(&mut |r| {
            if let Ref::Field { field, .. } = r {
                if beyond.is_ok() {
                    beyond = self.within_fields(*field);
                }
            }
        });
        beyond.map(|()| c)
    }

    fn err_at(&mut self, src: usize, line: usize, reason: String) {
        let e = self.at_row(src, line, reason);
        self.errors.push(e);
    }

    fn warn_at(&mut self, src: usize, line: usize, reason: String) {
        let w = self.at_row(src, line, reason);
        self.warnings.push(w);
    }

    fn at_row(&self, src: usize, line: usize, reason: String) -> LoadError {
        let file = self
            .files
            .sources
            .get(src)
            .map(|s| s.shown.clone())
            .unwrap_or_default();
        LoadError::Invalid { file, line, reason }
    }

    fn err_file(&mut self, name: &str, reason: String) {
        let file = self
            .files
            .sources
            .iter()
            .rev()
            .find(|s| s.name == name)
            .map(|s| s.shown.clone())
            .unwrap_or_else(|| name.to_string());
        self.errors.push(LoadError::Invalid {
            file,
            line: 1,
            reason,
        });
    }

    /// The FHIR type a map name targets: `PID[Patient]` → Patient, `XPN[String]` → string,
    /// `CX[RelatedPerson-Mother]` → RelatedPerson.
    fn target_of(&self, map_name: &str) -> Option<TypeId> {
        let (_, target) = split_map_name(map_name)?;
        let base = target.split('-').next().unwrap_or(target);
        if let Some(t) = self.model.type_id(base) {
            return Some(t);
        }
        let mut lower = base.to_string();
        if let Some(first) = lower.get_mut(..1) {
            first.make_ascii_lowercase();
        }
        self.model.type_id(&lower)
    }

    fn settings(&mut self) -> Settings {
        let mut s = Settings::default();
        let Some(f) = self.files.merged.get("settings.csv") else {
            return s;
        };
        for (src, r) in &f.records {
            let (k, v) = (r.get(0), r.get(1));
            let num = |v: &str| v.parse::<usize>().ok().filter(|n| *n > 0);
            let bad = match k {
                "default_timezone" => {
                    if v.is_empty() {
                        s.default_timezone = None;
                        None
                    } else {
                        match Zone::parse(v) {
                            Some(o) => {
                                s.default_timezone = Some(o);
                                None
                            }
                            None => Some("value: a zone is `Z`, `+hh:mm` / `-hh:mm`, an IANA zone name (`America/New_York`), or empty".to_string()),
                        }
                    }
                }
                "max_repetitions" | "max_fields" | "max_resources" => match num(v) {
                    Some(n) => {
                        match k {
                            "max_repetitions" => s.max_repetitions = n,
                            "max_fields" => s.max_fields = n,
                            _ => s.max_resources = n,
                        }
                        None
                    }
                    None => Some("value: a positive number".into()),
                },
                "gateway_name" => {
                    s.gateway_name = v.to_string();
                    None
                }
                _ => Some(format!("key: unknown setting `{k}` (default_timezone, max_repetitions, max_fields, max_resources, gateway_name)")),
            };
            if let Some(b) = bad {
                self.err_at(*src, r.line, b);
            }
        }
        s
    }

    fn vocabs(&mut self) -> Vec<Vocab> {
        let mut out = Vec::new();
        let header = [
            "code",
            "system",
            "target_code",
            "target_display",
            "target_system",
        ];
        for (name, f) in &self.files.merged {
            let Some(n) = name.strip_prefix("vocabulary/") else {
                continue;
            };
            let n = n.trim_end_matches(".csv").to_string();
            if !header_is(f, &header) {
                self.err_file(name, format!("header: expected {}", header.join(",")));
                continue;
            }
            let mut v = Vocab::default();
            for (src, r) in &f.records {
                let code = r.get(0).to_string();
                if code.is_empty() {
                    self.err_at(
                        *src,
                        r.line,
                        "code: empty (use * for \"any other code\")".into(),
                    );
                    continue;
                }
                if r.get(2).is_empty() && r.get(4).is_empty() {
                    if code == "*" {
                        v.drop_unknown = true;
                    } else {
                        self.err_at(
                            *src,
                            r.line,
                            "target_code: empty (only the * row may have no target)".into(),
                        );
                    }
                    continue;
                }
                let i = v.rows.len();
                v.rows.push(VRow {
                    system: r.get(1).to_string(),
                    target_code: Target::new(r.get(2)),
                    target_display: r.get(3).to_string(),
                    target_system: Target::new(r.get(4)),
                });
                if code == "*" {
                    v.default.get_or_insert(i);
                } else if let Some(p) = code.strip_suffix('*') {
                    v.prefixes.push((p.to_string(), i));
                } else {
                    v.exact.entry(code).or_default().push(i);
                }
            }
            // Longest prefix first.
            v.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
            // Codes that differ only in case (`M` and `m` in a table of units) stay exact.
            let mut folds: TableMap<String, Vec<&String>> = TableMap::default();
            for code in v.exact.keys() {
                folds
                    .entry(code.to_ascii_uppercase())
                    .or_default()
                    .push(code);
            }
            v.folded = folds
                .into_iter()
                .filter(|(_, codes)| codes.len() == 1)
                .map(|(upper, codes)| (upper, v.exact[codes[0]].clone()))
                .collect();
            self.vocab_index.insert(n, out.len());
            out.push(v);
        }
        out
    }

    fn ids(&mut self) -> TableMap<String, Vec<(TypeId, IdRule)>> {
        let mut out = TableMap::default();
        let Some(f) = self.files.merged.get("tables/ids.csv") else {
            return out;
        };
        if !header_is(f, &["resource", "source", "key", "same_key"]) {
            self.err_file(
                "tables/ids.csv",
                "header: expected resource,source,key,same_key".into(),
            );
            return out;
        }
        // `until SEG` rules, checked once all rules are read: SEG needs a rule of its own.
        let mut pending = Vec::new();
        for (src, r) in &f.records {
            let Some(ty) = self
                .model
                .type_id(r.get(0))
                .filter(|t| self.model.is_resource(*t))
            else {
                self.err_at(
                    *src,
                    r.line,
                    format!("resource: `{}` is not a FHIR R4 resource type", r.get(0)),
                );
                continue;
            };
            let source = r.get(1).to_string();
            if source.is_empty() {
                self.err_at(
                    *src,
                    r.line,
                    "source: empty (a segment id or a v2 data type)".into(),
                );
                continue;
            }
            let mut parts = Vec::new();
            // The type the rule's parts belong to (`PL` of `PL[Location-Room]`).
            let v2 = split_map_name(&source).map_or(source.as_str(), |(v, _)| v);
            for tok in r.get(2).split_whitespace() {
                if tok == "OR" {
                    parts.push((KeyPart::Or, Role::Qualifies));
                    continue;
                }
                if let Some(label) = tok.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                    let first = parts.last().is_none_or(|(p, _)| matches!(p, KeyPart::Or));
                    if first
                        && !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    {
                        parts.push((KeyPart::Label(label.into()), Role::Qualifies));
                    } else {
                        self.err_at(
                            *src,
                            r.line,
                            "key: a label (`[placer]`: letters, digits, `-`) goes first in its \
                             alternative, once"
                                .into(),
                        );
                    }
                    continue;
                }
                let (tok, role) = match tok.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
                    Some(inner) => (inner, Role::Qualifies),
                    None => (tok, Role::Identifies),
                };
                if tok == "-" {
                    parts.push((KeyPart::Empty, role));
                    continue;
                }
                if let Some(t) = tok.strip_prefix('@') {
                    match self.model.type_id(t).filter(|t| self.model.is_resource(*t)) {
                        Some(t) => parts.push((KeyPart::Context(t), role)),
                        None => {
                            self.err_at(*src, r.line, format!("key: `@{t}` is not a resource type"))
                        }
                    }
                    continue;
                }
                let (tok, number) = match tok.strip_prefix('#') {
                    Some(t) => (t, true),
                    None => (tok, false),
                };
                let scope = if tok.contains('-') {
                    Scope::Segment
                } else {
                    Scope::Datatype
                };
                match cond::parse_ref(tok, scope) {
                    Ok(rf) if number => {
                        // Compared as a number, `01` is `1`: right for a set id, wrong for an
                        // identifier (`0042` is not `42`). A warning, not a refusal: a field's
                        // type moved between v2 versions (OBX-4 was ST), and the site may mean it.
                        if let Some(t) = v2_type(v2, &rf).filter(|t| !matches!(*t, "SI" | "NM")) {
                            self.warn_at(
                                *src,
                                r.line,
                                format!(
                                    "key: `#{tok}` compares as a number, and {tok} is of v2 \
                                     type {t} (`#` is for set ids, SI, and numbers, NM: \
                                     `0042` and `42` would be one)"
                                ),
                            );
                        }
                        parts.push((KeyPart::Number(rf), role));
                    }
                    Ok(rf) => parts.push((KeyPart::Ref(rf), role)),
                    Err(e) => self.err_at(*src, r.line, format!("key: {e}")),
                }
            }
            if !parts.is_empty()
                && parts
                    .split(|(p, _)| matches!(p, KeyPart::Or))
                    .any(|alt| alt.iter().all(|(_, role)| *role == Role::Qualifies))
            {
                self.err_at(
                    *src,
                    r.line,
                    "key: an alternative (before, between or after OR) has no part outside \
                     parentheses, so it never makes a key"
                        .into(),
                );
            }
            let (same, until) = match r.get(3).split_once(" until ") {
                Some((same, seg)) => (same.trim(), Some(seg.trim())),
                None => (r.get(3).trim(), None),
            };
            let merge = match same {
                "merge" => true,
                "distinct" | "" => false,
                other => {
                    self.err_at(
                        *src,
                        r.line,
                        format!("same_key: `{other}` is not merge or distinct"),
                    );
                    false
                }
            };
            let until = match until.map(|s| <[u8; 3]>::try_from(s.as_bytes())) {
                None => None,
                Some(Ok(seg))
                    if seg
                        .iter()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                        && seg != *source.as_bytes() =>
                {
                    Some(seg)
                }
                Some(_) => {
                    self.err_at(
                        *src,
                        r.line,
                        format!(
                            "same_key: `{}` after `until` is not a segment id other than {source}",
                            until.unwrap_or_default()
                        ),
                    );
                    None
                }
            };
            if let Some(seg) = until {
                pending.push((*src, r.line, ty, seg));
            }
            let rules: &mut Vec<(TypeId, IdRule)> = out.entry(source).or_default();
            rules.retain(|(t, _)| *t != ty);
            rules.push((
                ty,
                IdRule {
                    parts,
                    merge,
                    until,
                },
            ));
        }
        for (src, line, ty, seg) in pending {
            let v2 = String::from_utf8_lossy(&seg);
            if !out
                .get(v2.as_ref())
                .is_some_and(|rules| rules.iter().any(|(t, _)| *t == ty))
            {
                self.err_at(
                    src,
                    line,
                    format!(
                        "same_key: `until {v2}`, but no rule makes a {} from {v2}",
                        self.model.ty(ty).name
                    ),
                );
            }
        }
        out
    }

    fn labels(&mut self) -> (Labels, Vec<(TypeId, ElemId)>) {
        let mut labels = Labels::default();
        if let Some(f) = self.files.merged.get("tables/security-labels.csv") {
            if !header_is(f, &["system", "code", "label"]) {
                self.err_file(
                    "tables/security-labels.csv",
                    "header: expected system,code,label".into(),
                );
            } else {
                for (src, r) in &f.records {
                    let (system, code, label) = (r.get(0), r.get(1), r.get(2));
                    if code.is_empty() || label.is_empty() {
                        self.err_at(*src, r.line, "code and label must be given".into());
                        continue;
                    }
                    // Labels are read from the Bundle's codings, whose systems are URIs: a v2
                    // name (`LOCALLAB`) would never match, and the label never appear.
                    if !system.is_empty() && !crate::fhir::validate::primitive::has_scheme(system) {
                        self.err_at(
                            *src,
                            r.line,
                            format!(
                                "system: `{system}` is not a URI (the FHIR coding system, as \
                                 vocabulary/CodeSystem.csv maps v2 names to them)"
                            ),
                        );
                        continue;
                    }
                    // Written as v3 ActCode codes, which grants name: a label the code system
                    // does not hold (a typo, a local name) is one no patient can grant or
                    // revoke by. Warned, not refused: the list below is ActCode's sensitivity
                    // policies, and a site may know a newer code.
                    if !SENSITIVITY_CODES.contains(&label.to_ascii_uppercase().as_str()) {
                        self.warn_at(
                            *src,
                            r.line,
                            format!(
                                "label: `{label}` is not a v3 ActCode sensitivity code ({}, …): \
                                 grants and revocations by category will not name it",
                                SENSITIVITY_CODES[..6].join(", ")
                            ),
                        );
                    }
                    let bit = match labels.names.iter().position(|n| n == label) {
                        Some(i) => i,
                        None => {
                            if labels.names.len() == 64 {
                                self.err_at(
                                    *src,
                                    r.line,
                                    "label: at most 64 different labels".into(),
                                );
                                continue;
                            }
                            labels.names.push(label.to_string());
                            labels.names.len() - 1
                        }
                    };
                    let b = 1u64 << bit;
                    match code.strip_suffix('*') {
                        Some(p) => labels
                            .prefixes
                            .entry(system.to_string())
                            .or_default()
                            .push((p.to_ascii_uppercase(), b)),
                        None => labels
                            .exact
                            .entry(code.to_ascii_uppercase())
                            .or_default()
                            .push((system.to_string(), b)),
                    }
                }
            }
        }
        let mut prop = Vec::new();
        if let Some(f) = self.files.merged.get("tables/security-propagation.csv") {
            for (src, r) in &f.records {
                let Some(t) = self
                    .model
                    .type_id(r.get(0))
                    .filter(|t| self.model.is_resource(*t))
                else {
                    self.err_at(
                        *src,
                        r.line,
                        format!("resource: `{}` is not a resource type", r.get(0)),
                    );
                    continue;
                };
                match self.model.child(t, r.get(1)) {
                    Some(e) => prop.push((t, e)),
                    None => self.err_at(
                        *src,
                        r.line,
                        format!("element: `{}` is not an element of {}", r.get(1), r.get(0)),
                    ),
                }
            }
        }
        (labels, prop)
    }

    fn message_types(&mut self, by_name: &HashMap<String, usize>) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        let Some(f) = self.files.merged.get("tables/message-types.csv") else {
            return out;
        };
        for (src, r) in &f.records {
            match by_name.get(r.get(1)) {
                Some(&i) => {
                    out.insert(r.get(0).to_string(), i);
                }
                None => self.err_at(
                    *src,
                    r.line,
                    format!("message_map: no file messages/{}.csv", r.get(1)),
                ),
            }
        }
        out
    }

    /// Compiles (or returns the compiled) map `name` for target type `ty`.
    fn map(&mut self, name: &str, ty: TypeId, from: Option<(usize, usize)>) -> Option<usize> {
        if from.is_some() {
            self.used.insert(name.to_string());
        }
        let key = (name.to_string(), ty);
        if let Some(&i) = self.map_cache.get(&key) {
            return Some(i);
        }
        let seg = format!("segments/{name}.csv");
        let dt = format!("datatypes/{name}.csv");
        let (file_name, scope) = if self.files.merged.contains_key(&seg) {
            (seg, Scope::Segment)
        } else if self.files.merged.contains_key(&dt) {
            (dt, Scope::Datatype)
        } else {
            if let Some((src, line)) = from {
                self.err_at(
                    src,
                    line,
                    format!("map `{name}`: no file segments/{name}.csv or datatypes/{name}.csv"),
                );
            }
            return None;
        };
        if !self.in_progress.insert(key.clone()) {
            if let Some((src, line)) = from {
                self.err_at(src, line, format!("map `{name}` refers back to itself"));
            }
            return None;
        }
        let files = self.files;
        let f = &files.merged[&file_name];
        let want = if scope == Scope::Segment {
            &MAP_HEADER_SEG
        } else {
            &MAP_HEADER_DT
        };
        let v2 = split_map_name(name)
            .map(|(v, _)| v.to_string())
            .unwrap_or_default();
        let mut rows = Vec::new();
        if !header_is(f, want) {
            self.err_file(&file_name, format!("header: expected {}", want.join(",")));
        } else {
            for (src, r) in &f.records {
                if let Some(row) = self.row(src, r, scope, &v2, ty) {
                    rows.push(row);
                }
            }
        }
        let own = <[u8; 3]>::try_from(v2.as_bytes()).ok();
        let guards = cond::split_guards(
            &mut rows,
            |r| &mut r.cond,
            |r| &mut r.guard,
            |row, r| match (scope, *r) {
                // A data-type map's view is the same value for all its rows.
                (Scope::Datatype, Ref::Comp { .. }) => true,
                // Any field but the one the row iterates (whose current repetition a condition
                // sees) reads the same for every row of a segment.
                (Scope::Segment, Ref::Field { seg, field, .. }) => match row.src {
                    Src::Field { field: f, .. } => f != field || !(seg.is_none() || seg == own),
                    Src::Whole | Src::Comp { .. } => true,
                },
                _ => false,
            },
        );
        share_conditions(&mut rows);
        one_per_extension(self.model, &mut rows);
        self.in_progress.remove(&key);
        let i = self.maps.len();
        self.maps.push(CMap {
            name: name.to_string(),
            id_source: v2,
            rows,
            guards,
        });
        self.map_cache.insert(key, i);
        Some(i)
    }

    fn row(
        &mut self,
        src: &usize,
        r: &Record,
        scope: Scope,
        v2: &str,
        target: TypeId,
    ) -> Option<Row> {
        let src = *src;
        let line = r.line;
        let source = r.get(0);
        let s = match parse_src(source, scope, v2).and_then(|s| match s {
            Src::Field { field, .. } => self.within_fields(field).map(|()| s),
            _ => Ok(s),
        }) {
            Ok(s) => s,
            Err(e) => {
                self.err_at(
                    src,
                    line,
                    format!(
                        "{}: {e}",
                        if scope == Scope::Segment {
                            "field"
                        } else {
                            "component"
                        }
                    ),
                );
                return None;
            }
        };
        let cond = match r.get(1) {
            "" => None,
            c => match cond::parse_cond(c, scope).and_then(|c| self.cond_within_fields(c)) {
                Ok(c) => Some(c),
                Err(e) => {
                    self.err_at(src, line, format!("condition: {e}"));
                    return None;
                }
            },
        };
        if scope == Scope::Segment
            && r.get(2).is_empty()
            && r.get(3).is_empty()
            && r.get(4).is_empty()
            && r.get(5).is_empty()
        {
            if !matches!(s, Src::Field { .. }) {
                self.err_at(src, line, "fhir_path: empty (a row without a path only marks a field as deliberately not mapped)".into());
                return None;
            }
            return Some(Row {
                loc: Loc {
                    file: src as u16,
                    line: line as u32,
                },
                repeats: true,
                src: s,
                cond,
                guard: None,
                shared_cond: None,
                path: Path {
                    sub: 1,
                    steps: Vec::new(),
                    leaf: target,
                    creates: None,
                },
                action: Action::Ignore,
            });
        }
        let path = match self.path(r.get(2), target, scope == Scope::Datatype) {
            Ok(p) => p,
            Err(e) => {
                self.err_at(src, line, format!("fhir_path: {e}"));
                return None;
            }
        };
        let leaf_prim = self.model.prim(path.leaf);
        let assignment = r.get(5);
        let action = if !assignment.is_empty() {
            if !r.get(3).is_empty() || !r.get(4).is_empty() {
                self.err_at(src, line, "assignment: a row assigns a value or maps one, not both (datatype_map and vocabulary_map must be empty)".into());
                return None;
            }
            if let Some(t) = assignment.strip_prefix('@') {
                let Some(t) = self.model.type_id(t).filter(|t| self.model.is_resource(*t)) else {
                    self.err_at(src, line, format!("assignment: `{assignment}`: @ must name a resource type (e.g. @Patient)"));
                    return None;
                };
                if self.model.ty(path.leaf).name != "Reference" || path.creates.is_some() {
                    self.err_at(
                        src,
                        line,
                        format!("assignment: `{}` is not a Reference element", r.get(2)),
                    );
                    return None;
                }
                return Some(Row {
                    loc: Loc {
                        file: src as u16,
                        line: line as u32,
                    },
                    repeats: path.steps.iter().any(|s| s.array),
                    src: s,
                    cond,
                    guard: None,
                    shared_cond: None,
                    path,
                    action: Action::Link(t),
                });
            }
            if leaf_prim.is_none() {
                self.err_at(
                    src,
                    line,
                    format!("assignment: `{}` is not a primitive element", r.get(2)),
                );
                return None;
            }
            let parsed = cond::parse_expr(assignment, scope).and_then(|x| {
                x.0.iter().try_for_each(|t| match t {
                    cond::Term::Ref(Ref::Field { field, .. }) => self.within_fields(*field),
                    _ => Ok(()),
                })?;
                Ok(x)
            });
            // A constant the mapper would leave out of every message (a narrative without the
            // XHTML namespace, the usual slip; a currency that is no ISO 4217 code; a code
            // outside its element's value set) is said now.
            let constant = parsed.as_ref().ok().and_then(|e| e.literal());
            if let (Some(lit), Some(prim), Some(step)) = (constant, leaf_prim, path.steps.last()) {
                let problem = match prim {
                    Prim::Xhtml => crate::fhir::validate::check_xhtml(lit).err().map(|e| {
                        format!(
                            "is narrative XHTML, and this is not: {} (it needs <div \
                             xmlns='http://www.w3.org/1999/xhtml'>…</div>)",
                            e.message
                        )
                    }),
                    Prim::Code => {
                        let elem = self.model.elem(step.elem);
                        let mut code = String::new();
                        super::value::normalize_code(lit, &mut code);
                        elem.refuses_code(&mut code).map(|refused| match refused {
                            CodeRefused::NotInValueSet => format!(
                                "is bound to a FHIR value set without `{code}` (one of: {})",
                                elem.codes.join(", ")
                            ),
                            CodeRefused::Form(_) => {
                                format!("is bound: `{code}` is {}", refused.problem())
                            }
                            CodeRefused::Control => {
                                format!("cannot hold `{code}`: {}", refused.problem())
                            }
                        })
                    }
                    _ => None,
                };
                if let Some(problem) = problem {
                    self.err_at(src, line, format!("assignment: `{}` {problem}", r.get(2)));
                    return None;
                }
            }
            match parsed {
                Ok(expr) => Action::Assign {
                    expr,
                    decided: cond.as_ref().is_some_and(|c| {
                        c.compares(&|r| match (r, s) {
                            (Ref::Field { seg, field, .. }, Src::Field { field: own, .. }) => {
                                *field == own && seg.is_none_or(|g| g.as_slice() == v2.as_bytes())
                            }
                            (Ref::Comp { comp, .. }, Src::Comp { comp: own, .. }) => *comp == own,
                            _ => false,
                        })
                    }),
                },
                Err(e) => {
                    self.err_at(src, line, format!("assignment: {e}"));
                    return None;
                }
            }
        } else {
            if matches!(s, Src::Whole) && scope == Scope::Segment {
                self.err_at(src, line, "field: a whole segment can only be assigned to, not copied (name a field, e.g. PID-3)".into());
                return None;
            }
            let vocab = match r.get(4) {
                "" => None,
                v => match self.vocab_index.get(v) {
                    Some(&i) => {
                        self.used.insert(v.to_string());
                        Some(i)
                    }
                    None => {
                        self.err_at(
                            src,
                            line,
                            format!("vocabulary_map: no file vocabulary/{v}.csv"),
                        );
                        return None;
                    }
                },
            };
            let dt_name = r.get(3);
            let (map, xform) = match dt_name {
                "" => (None, Xform::None),
                "base64" => (None, Xform::Base64),
                "hex-base64" => (None, Xform::HexBase64),
                "lines" => (None, Xform::Lines),
                "override" => (None, Xform::Override),
                n => {
                    let map_target = path.creates.unwrap_or(path.leaf);
                    let exists = self
                        .files
                        .merged
                        .contains_key(&format!("datatypes/{n}.csv"))
                        || self.files.merged.contains_key(&format!("segments/{n}.csv"));
                    if !exists && leaf_prim.is_some() && path.creates.is_none() {
                        // `ID[String]`, `XPN[String]`: a map into a primitive that needs no rows
                        // of its own (the first component is copied).
                        (None, Xform::None)
                    } else {
                        match self.map(n, map_target, Some((src, line))) {
                            Some(i) => (Some(i), Xform::None),
                            None => return None,
                        }
                    }
                }
            };
            if leaf_prim.is_none() && map.is_none() {
                let coded = path.leaf == self.model.type_id("Coding").unwrap_or(u16::MAX)
                    || path.leaf == self.model.type_id("CodeableConcept").unwrap_or(u16::MAX);
                if !(coded && vocab.is_some()) {
                    self.err_at(src, line, format!(
                        "datatype_map: `{}` is a {} and needs a data-type map (e.g. CWE[CodeableConcept])",
                        r.get(2),
                        self.model.ty(path.leaf).name
                    ));
                    return None;
                }
            }
            if path.creates.is_some() && map.is_none() {
                self.err_at(src, line, "datatype_map: a path that makes a resource needs the map that fills it (e.g. XCN[Practitioner])".into());
                return None;
            }
            // Lines are joined with line feeds, which only text and bytes can hold: a code, a
            // date or a narrative of two lines is no longer one (and its Bundle would fail).
            if xform == Xform::Lines
                && !matches!(
                    leaf_prim,
                    Some(Prim::String | Prim::Markdown | Prim::Base64Binary)
                )
            {
                self.err_at(
                    src,
                    line,
                    format!(
                        "datatype_map: `lines` gathers text, and `{}` is a {} (lines go into a \
                         string, markdown or base64Binary element)",
                        r.get(2),
                        self.model.ty(path.leaf).name
                    ),
                );
                return None;
            }
            Action::Copy {
                map,
                vocab,
                xform,
                rest: Rest::of(
                    v2,
                    s,
                    matches!(leaf_prim, Some(Prim::String | Prim::Markdown)),
                ),
                fits: map.is_none() || map_fits(v2, s, dt_name),
            }
        };
        let repeats = path.steps.iter().any(|s| s.array)
            || matches!(
                action,
                Action::Copy {
                    xform: Xform::Lines,
                    ..
                }
            );
        Some(Row {
            loc: Loc {
                file: src as u16,
                line: line as u32,
            },
            repeats,
            src: s,
            cond,
            guard: None,
            shared_cond: None,
            path,
            action,
        })
    }

    /// Resolves a FHIR path against `target`.
    fn path(&self, text: &str, target: TypeId, allow_sub: bool) -> Result<Path, String> {
        let m = self.model;
        let mut text = text.trim();
        if text == "$this" {
            text = "";
        }
        let mut sub = 1u16;
        if let Some(rest) = text.strip_prefix('[') {
            if !allow_sub {
                return Err("a leading [n] is only meaningful in data-type maps".into());
            }
            let end = rest.find(']').ok_or("`[` without `]`")?;
            sub = rest[..end]
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or("[n] needs a number from 1")?;
            text = rest[end + 1..].trim_start_matches('.');
        }
        let mut creates = None;
        if let Some(open) = text.rfind('(') {
            let inner = text[open + 1..]
                .strip_suffix(')')
                .ok_or("`(` without a closing `)` at the end")?;
            let t = m
                .type_id(inner)
                .filter(|t| m.is_resource(*t))
                .ok_or_else(|| format!("`({inner})` is not a FHIR R4 resource type"))?;
            creates = Some(t);
            text = &text[..open];
        }
        let mut steps: Vec<Step> = Vec::new();
        let mut ty = target;
        if !text.is_empty() {
            for part in text.split('.') {
                let (name, slot, explicit) = match part.split_once('[') {
                    Some((n, rest)) => {
                        let s = rest
                            .strip_suffix(']')
                            .and_then(|s| s.parse::<u16>().ok())
                            .filter(|n| *n >= 1)
                            .ok_or_else(|| format!("`{part}`: [n] needs a number from 1"))?;
                        (n, s, true)
                    }
                    None => (part, 1, false),
                };
                if name.is_empty() {
                    return Err(format!("empty step in `{text}`"));
                }
                // The writer puts a resource's `id` (from tables/ids.csv) and `meta` (its
                // security labels) itself: a row writing either made every Bundle invalid.
                if steps.is_empty() && m.is_resource(target) && matches!(name, "id" | "meta") {
                    return Err(format!(
                        "`{name}` of a resource is the gateway's to write (ids: tables/ids.csv; \
                         meta: its security labels)"
                    ));
                }
                let elem = match m.child(ty, name) {
                    Some(e) => e,
                    None if m.prim(ty).is_some() && (name == "extension" || name == "id") => {
                        // `birthDate.extension`: JSON puts a primitive's extensions in `_birthDate`.
                        let last = steps.pop().ok_or("extension of the target itself")?;
                        if last.array {
                            return Err(
                                "an extension on a repeating primitive is not supported".into()
                            );
                        }
                        let under = m.elem(last.elem).name.clone();
                        let owner = if let Some(prev) = steps.last() {
                            m.elem(prev.elem).ty
                        } else {
                            target
                        };
                        let u = m
                            .child(owner, &format!("_{under}"))
                            .ok_or_else(|| format!("`{under}` cannot carry extensions"))?;
                        steps.push(Step {
                            elem: u,
                            slot: 1,
                            array: false,
                            explicit: false,
                        });
                        ty = m.elem(u).ty;
                        m.child(ty, name).ok_or("Element has no such child")?
                    }
                    None => {
                        return Err(format!(
                            "`{name}` is not an element of {} in FHIR R4",
                            m.ty(ty).name
                        ))
                    }
                };
                let def = m.elem(elem);
                if !def.array && slot > 1 {
                    return Err(format!(
                        "`{part}`: {name} does not repeat, so it has no [{slot}]"
                    ));
                }
                steps.push(Step {
                    elem,
                    slot,
                    array: def.array,
                    explicit,
                });
                ty = def.ty;
            }
        }
        if creates.is_some() && m.ty(ty).name != "Reference" {
            return Err("`(Type)` must follow a Reference element".into());
        }
        if m.is_resource(ty) && !steps.is_empty() {
            return Err("a path cannot go into a contained resource".into());
        }
        Ok(Path {
            sub,
            steps,
            leaf: ty,
            creates,
        })
    }

    fn message(&mut self, name: &str, f: &MergedFile) -> MessageMap {
        let header = [
            "segment",
            "syntax",
            "condition",
            "resource",
            "segment_map",
            "references",
        ];
        let mut mm = MessageMap {
            name: name.to_string(),
            groups: vec![Group {
                name: String::new(),
                members: Vec::new(),
            }],
            labels: Vec::new(),
            rows: Vec::new(),
            links: Vec::new(),
        };
        if !header_is(f, &header) {
            self.err_file(&f.name, format!("header: expected {}", header.join(",")));
            return mm;
        }
        let records = f.records.clone();
        let mut pending_refs: Vec<(usize, usize, String, usize)> = Vec::new();
        for (src, r) in &records {
            let (src, line) = (*src, r.line);
            let segpath = r.get(0);
            let (groups, seg) = match segpath.rsplit_once('.') {
                Some((g, s)) => (g.split('.').collect::<Vec<_>>(), s),
                None => (Vec::new(), segpath),
            };
            let b = seg.as_bytes();
            if b.len() != 3
                || !b
                    .iter()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            {
                self.err_at(src, line, format!("segment: `{seg}` is not a segment id"));
                continue;
            }
            let id = [b[0], b[1], b[2]];
            // Find or make the group path.
            let mut g = 0usize;
            for gname in groups {
                let found = mm.groups[g].members.iter().find_map(|mem| match mem {
                    Member::Group(i) if mm.groups[*i].name == gname => Some(*i),
                    _ => None,
                });
                g = match found {
                    Some(i) => i,
                    None => {
                        let i = mm.groups.len();
                        mm.groups.push(Group {
                            name: gname.to_string(),
                            members: Vec::new(),
                        });
                        mm.groups[g].members.push(Member::Group(i));
                        i
                    }
                };
            }
            let syntax: String = r.get(1).split_whitespace().collect();
            let seg_text = std::str::from_utf8(&id).unwrap_or_default();
            // As in the guide: `X`, `[X]` optional, `{X}` repeating, `[{X}]` (or `{[X]}`) both; anything
            // else (`[ZPI` without its bracket) would be read as one of them silently.
            let forms = [
                (seg_text.to_string(), (false, false)),
                (format!("[{seg_text}]"), (true, false)),
                (format!("{{{seg_text}}}"), (false, true)),
                (format!("[{{{seg_text}}}]"), (true, true)),
                (format!("{{[{seg_text}]}}"), (true, true)),
            ];
            let Some(&(_, (optional, repeats))) = forms.iter().find(|(f, _)| *f == syntax) else {
                self.err_at(
                    src,
                    line,
                    format!(
                        "syntax: `{}` is not {seg_text}, [{seg_text}], {{{seg_text}}} or \
                         [{{{seg_text}}}]",
                        r.get(1)
                    ),
                );
                continue;
            };
            let cond = match r.get(2) {
                "" => None,
                c => match cond::parse_cond(c, Scope::Segment)
                    .and_then(|c| self.cond_within_fields(c))
                {
                    Ok(c) => Some(c),
                    Err(e) => {
                        self.err_at(src, line, format!("condition: {e}"));
                        continue;
                    }
                },
            };
            let row_index = mm.rows.len();
            let mut row = MsgRow {
                cond,
                label: None,
                at: None,
                map: None,
                refs: Vec::new(),
            };
            let resource = r.get(3);
            if !resource.is_empty() {
                let (label_text, at) = split_label(resource);
                let ty_name = label_text.split('[').next().unwrap_or(label_text);
                let Some(ty) = self
                    .model
                    .type_id(ty_name)
                    .filter(|t| self.model.is_resource(*t))
                else {
                    self.err_at(
                        src,
                        line,
                        format!("resource: `{ty_name}` is not a FHIR R4 resource type"),
                    );
                    continue;
                };
                let label = match mm.labels.iter().position(|l| l.name == label_text) {
                    Some(i) => i,
                    None => {
                        mm.labels.push(LabelDef {
                            name: label_text.to_string(),
                            ty,
                        });
                        mm.labels.len() - 1
                    }
                };
                row.label = Some(label);
                let mut map_target = ty;
                if let Some(at) = at {
                    match self.path(at, ty, false) {
                        Ok(p) if p.creates.is_none() => {
                            map_target = p.leaf;
                            row.at = Some(p);
                        }
                        Ok(_) => {
                            self.err_at(src, line, "resource: a (Type) is not allowed here".into());
                            continue;
                        }
                        Err(e) => {
                            self.err_at(src, line, format!("resource: {e}"));
                            continue;
                        }
                    }
                }
                let map_name = r.get(4);
                if !map_name.is_empty() {
                    if split_map_name(map_name).map(|(v, _)| v.as_bytes()) != Some(&id[..]) {
                        self.err_at(src, line, format!("segment_map: `{map_name}` is not a map of {seg} (e.g. {seg}[{ty_name}])"));
                        continue;
                    }
                    match self.map(map_name, map_target, Some((src, line))) {
                        Some(i) => row.map = Some(i),
                        None => continue,
                    }
                }
            } else if !r.get(4).is_empty() {
                self.err_at(
                    src,
                    line,
                    "resource: a segment map needs the resource it fills".into(),
                );
                continue;
            }
            for item in r.get(5).split([';', '\n']) {
                let item = item.trim();
                if !item.is_empty() {
                    pending_refs.push((src, line, item.to_string(), row_index));
                }
            }
            mm.rows.push(row);
            // Consecutive rows about one segment are one member; the same segment further on
            // in a group is another position in the structure (PRT after ORC and after OBR).
            let members = &mut mm.groups[g].members;
            let existing = match members.last_mut() {
                Some(Member::Seg {
                    id: i,
                    repeats: rp,
                    rows,
                    ..
                }) if *i == id => Some((rp, rows)),
                _ => None,
            };
            match existing {
                Some((rp, rows)) => {
                    *rp |= repeats;
                    rows.push(row_index);
                }
                None => members.push(Member::Seg {
                    id,
                    repeats,
                    optional,
                    rows: vec![row_index],
                }),
            }
        }
        for (src, line, item, row_index) in pending_refs {
            match self.ref_rule(&mm, &item) {
                Ok(rr) => mm.rows[row_index].refs.push(rr),
                Err(e) => self.err_at(src, line, format!("references: `{item}`: {e}")),
            }
        }
        let mut links: Vec<(usize, usize)> = mm
            .rows
            .iter()
            .flat_map(|r| {
                r.refs
                    .iter()
                    .map(|rr| (rr.from.min(rr.to), rr.from.max(rr.to)))
            })
            .collect();
        links.sort_unstable();
        links.dedup();
        mm.links = links;
        mm
    }

    /// `Observation[2].subject=Patient[1]` (a trailing `.reference` and `.id` are accepted, as
    /// the guide writes them).
    fn ref_rule(&self, mm: &MessageMap, item: &str) -> Result<RefRule, String> {
        let (left, right) = item.split_once('=').ok_or("expected Label.path=Label")?;
        let right = right.trim().trim_end_matches(".id");
        let left = left.trim().trim_end_matches(".reference");
        let (from_label, path) = split_label(left);
        let path = path.ok_or("the left side needs a path (e.g. Observation[2].subject)")?;
        let from = mm
            .labels
            .iter()
            .position(|l| l.name == from_label)
            .ok_or_else(|| format!("`{from_label}` is not a resource of this message map"))?;
        let to = mm
            .labels
            .iter()
            .position(|l| l.name == right)
            .ok_or_else(|| format!("`{right}` is not a resource of this message map"))?;
        let p = self.path(path, mm.labels[from].ty, false)?;
        if self.model.ty(p.leaf).name != "Reference" || p.creates.is_some() {
            return Err(format!("`{path}` is not a Reference element"));
        }
        Ok(RefRule { from, path: p, to })
    }
}

/// `Observation[2].note` → (`Observation[2]`, Some(`note`)).
fn split_label(s: &str) -> (&str, Option<&str>) {
    let end = match s.find(']') {
        Some(i) => i + 1,
        None => s.find('.').unwrap_or(s.len()),
    };
    let (label, rest) = s.split_at(end);
    (
        label.trim(),
        rest.strip_prefix('.')
            .map(str::trim)
            .filter(|p| !p.is_empty()),
    )
}

fn parse_src(s: &str, scope: Scope, v2: &str) -> Result<Src, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if s == v2 {
        return Ok(Src::Whole);
    }
    match cond::parse_ref(s, scope)? {
        Ref::Field {
            seg,
            field,
            comp,
            sub,
        } => {
            if seg.map(|b| b.to_vec()) != Some(v2.as_bytes().to_vec()) {
                return Err(format!("`{s}` is not a field of {v2}"));
            }
            Ok(Src::Field { field, comp, sub })
        }
        Ref::Comp { comp, sub } => Ok(Src::Comp { comp, sub }),
        Ref::Segment(_) => Err(format!("`{s}` is not a field of {v2}")),
    }
}

impl Plan {
    pub fn map(&self, i: usize) -> &CMap {
        &self.maps[i]
    }

    /// `file:line` of a row, for messages.
    pub fn at(&self, loc: Loc) -> String {
        format!(
            "{}:{}",
            self.files
                .get(loc.file as usize)
                .map(String::as_str)
                .unwrap_or("?"),
            loc.line
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{map_fits, Ref, Rest, Src, Target};
    use std::borrow::Cow;
    use std::collections::HashMap;

    /// A second part means what the v2 type of the copied field or component says (text: `&`
    /// is text; an identifier or date: lost and named; a composite: read on purpose), looked up
    /// by binary search in the generated table, which must therefore stay sorted.
    #[test]
    fn a_second_part_means_what_the_v2_type_says() {
        let types = super::super::v2types::TYPES;
        assert!(
            types.windows(2).all(|w| w[0].0 < w[1].0),
            "v2types::TYPES unsorted"
        );
        let comp = |comp| Src::Comp { comp, sub: 0 };
        let field = |field, comp| Src::Field {
            field,
            comp,
            sub: 0,
        };
        assert_eq!(Rest::of("CX", comp(1), true), Rest::Text);
        // Written as a code, a text component is a code: an `&` in it ends it.
        assert_eq!(Rest::of("CWE", comp(1), false), Rest::Named);
        assert_eq!(Rest::of("XON", comp(1), true), Rest::Text);
        assert_eq!(Rest::of("CX", comp(5), true), Rest::Named);
        // A date may carry a v2.5 TS's precision as a second part (`20240101^D`).
        assert_eq!(Rest::of("CX", comp(7), true), Rest::Chosen);
        assert_eq!(Rest::of("PID", field(7, 0), true), Rest::Chosen);
        // A primitive field has no typed components; sheets that disagree (OBX-4: OG in v2.9,
        // ST before) settle on the composite.
        assert_eq!(Rest::of("PID", field(7, 1), true), Rest::Chosen);
        assert_eq!(Rest::of("OBX", field(4, 0), true), Rest::Chosen);
        assert_eq!(Rest::of("CX", comp(4), true), Rest::Chosen);
        assert_eq!(Rest::of("ZZ", comp(1), true), Rest::Chosen);
        // A subcomponent is one part already.
        let sub = Src::Comp { comp: 1, sub: 2 };
        assert_eq!(Rest::of("CX", sub, true), Rest::Chosen);
        // A text field's `^` cannot be kept: named. A field read through its type's component.
        assert_eq!(Rest::of("PID", field(19, 0), true), Rest::Named);
        assert_eq!(Rest::of("PID", field(3, 1), true), Rest::Text);
        assert_eq!(Rest::of("PID", field(3, 4), true), Rest::Chosen);
        assert_eq!(Rest::of("PID", field(3, 0), true), Rest::Chosen);
        // A map of the value's type, or of one of its layout, or of a type not known, reads
        // it by its own component types; a map of the type of its first component does not.
        assert!(map_fits("PID", field(3, 0), "CX[Identifier]"));
        assert!(
            map_fits("PR1", field(3, 0), "CWE[CodeableConcept]"),
            "CNE as CWE"
        );
        assert!(map_fits("ZPI", field(2, 0), "CX[Identifier]"));
        assert!(map_fits("CX", comp(4), "HD[uri]"));
        assert!(
            !map_fits("OBR", field(32, 0), "CNN[Practitioner]"),
            "NDL as CNN"
        );
        assert!(map_fits("OBR", field(32, 1), "CNN[Practitioner]"));
        assert!(!map_fits("ORC", field(4, 0), "EI[Identifier]"), "EIP as EI");
        assert!(map_fits("ORC", field(4, 1), "EI[Identifier]"));
    }

    /// In the shipped set, no row's guard reads the field the row iterates (whose current
    /// repetition its condition sees, and which differs from one repetition to the next), and
    /// the OBX value rows do share one guard on OBX-2.
    #[test]
    fn guards_never_read_the_field_a_row_iterates() {
        let n = super::super::Normalizer::load(&Default::default()).unwrap();
        let plan = &n.plan;
        let mut guarded = 0;
        for map in &plan.maps {
            for row in &map.rows {
                let Some(g) = row.guard else { continue };
                guarded += 1;
                let r = map.guards[g.guard as usize].r;
                if let (Src::Field { field, .. }, Ref::Field { seg, field: f, .. }) = (row.src, r) {
                    let id = map.name.split('[').next().unwrap_or_default();
                    let own = seg.is_none_or(|s| id.as_bytes() == s);
                    assert!(
                        !(own && f == field),
                        "{}: {:?} guards its own field",
                        map.name,
                        r
                    );
                }
            }
            if map.name == "RXA[Immunization]" {
                // `IF RXA-9.1 EQUALS "00"` on RXA-9 rows: per repetition, never a guard.
                assert!(map
                    .rows
                    .iter()
                    .all(|r| r.guard.is_none() || !matches!(r.src, Src::Field { field: 9, .. })));
            }
        }
        let obx = plan
            .maps
            .iter()
            .find(|m| m.name == "OBX[Observation]")
            .unwrap();
        assert_eq!(obx.guards.len(), 1, "{:?}", obx.guards);
        // The SN text rows share one condition, asked once per OBX-5 value; no condition is
        // shared by rows whose conditions differ.
        let mut by_id: HashMap<u16, Vec<&super::Row>> = HashMap::new();
        for r in &obx.rows {
            if let Some(id) = r.shared_cond {
                by_id.entry(id).or_default().push(r);
            }
        }
        assert!(
            by_id.values().any(|rows| rows.len() >= 10),
            "{}",
            by_id.len()
        );
        for rows in by_id.values() {
            assert!(rows.len() >= 2);
            assert!(rows.iter().all(|r| r.cond == rows[0].cond));
        }
        assert!(obx.rows.iter().filter(|r| r.guard.is_some()).count() >= 15);
        assert!(guarded > 20, "{guarded} guarded rows");
    }

    #[test]
    fn a_vocabulary_target_takes_the_code_where_it_says_so() {
        let fill = |t: &str, v: &str| Target::new(t).fill(v).into_owned();
        assert_eq!(fill("urn:oid:{}", "1.2.3"), "urn:oid:1.2.3");
        assert_eq!(fill("{x}-{}", "7"), "{x}-7");
        assert_eq!(fill("{}{}", "a"), "aa");
        assert_eq!(fill("{}", "F20.9"), "F20.9");
        assert_eq!(fill("{", "1"), "{");
        assert_eq!(fill("}{", "1"), "}{");
        let fixed = Target::new("http://loinc.org");
        assert!(matches!(fixed.fill("1"), Cow::Borrowed("http://loinc.org")));
        let whole = Target::new("{}");
        assert!(matches!(whole.fill("A"), Cow::Borrowed("A")));
    }
}
