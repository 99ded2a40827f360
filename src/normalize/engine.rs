//! Runs a compiled plan over one message: places each segment in the message structure, applies
//! the rows of its segment map (and the data-type maps they name) to the resources it makes or adds
//! to, and records which fields no rule used. The result is an arena of element nodes per
//! resource that `emit` writes as JSON.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use super::cond::{Cond, Env, Ref, MAX_GUARDS};
use super::model::{CodeRefused, ElemId, Model, Prim, TypeId};
use super::plan::{
    Action, CMap, IdRule, KeyPart, Known, Member, MessageMap, Path, Plan, Rest, Role, Row, Src,
    TableMap, Xform,
};
use super::value::{self, Converted, IntKind, TimeKind};
use super::{Link, MapError};
use crate::fhir::validate::period_ordered;
use crate::fhir::validate::primitive::{Binding as CodeForm, Scan};
use crate::hl7::{Charset, Delimiters, Field, Formatting, Message, Segment};

pub const NONE: u32 = u32::MAX;

/// Bytes of text one mapping may hold (values and gathered lines): far above what a message
/// of the largest frame makes, and far below where the arena's u32 offsets would wrap.
const MAX_TEXT: usize = 64 << 20;

/// Where a child goes among its siblings ([`Build::place`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// It exists: this node.
    Existing(u32),
    /// It is new: linked in after this sibling (first when `NONE`).
    After(u32),
}

/// A value held by a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Val {
    /// An object (its children hold the values).
    Obj,
    /// A JSON string: `text[a..b]`.
    Text(u32, u32),
    /// A JSON number, already in canonical form: `text[a..b]`.
    Num(u32, u32),
    Bool(bool),
    /// A reference to another resource of the Bundle (`urn:uuid:…`).
    Ref(u32),
    /// Text to be written as base64 (a document's lines gathered first, encoded once).
    B64(u32, u32),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub elem: ElemId,
    pub slot: u16,
    pub sub: u16,
    pub rep: u32,
    pub parent: u32,
    pub first: u32,
    pub last: u32,
    pub next: u32,
    pub inst: u32,
    pub val: Val,
}

#[derive(Debug, Clone)]
pub struct Inst {
    pub ty: TypeId,
    pub root: u32,
    pub id: [u8; 36],
    /// The id of its key without a `|#n` suffix (`id` unless a `distinct` key was taken): what
    /// a later segment naming the same thing would get.
    key_id: [u8; 36],
    /// The segment that names it by its own key when it maps into it (`until OBR` in
    /// tables/ids.csv: a report begun at its ORC), until then.
    until: Option<[u8; 3]>,
    /// Where in the message the value that filled it lies (`Field::span`, level), so that the
    /// same value named again costs a comparison, not a second map.
    filled_from: Option<((u32, u32), Level)>,
    /// Something from the message was written (constants and references alone do not make a
    /// resource worth sending).
    pub has_data: bool,
    pub labels: u64,
    /// The group instance it belongs to (label scope) and that group's definition.
    pub scope: u32,
    pub group: usize,
    /// The resource of the same type made before it (`NONE`: the first), a list that
    /// [`Build::latest`] walks from `Build::type_heads`.
    prev_of_type: u32,
    /// Its latest entry in `Build::once_into` (`NONE`: none).
    once_head: u32,
}

/// What a second segment where one belongs says of the resource the first one made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// The same resource by its key; or the segment names no resource of the type by a key
    /// (a second PV2), or is a second PID without identifiers.
    Same,
    /// Another resource: its key differs.
    Other,
    /// The segment names resources of the type but sends no key.
    Unnamed,
}

struct Binding {
    inst: u32,
    scope: u32,
    group: usize,
    /// The binding of the same label made before it (`NONE`: the first), and the one that was
    /// the label's open head then ([`Build::open_head`]).
    prev: u32,
    prev_open: u32,
}

#[derive(Clone, Copy)]
struct Frame {
    group: usize,
    /// Member index, or `usize::MAX` before the first.
    pos: usize,
    inst: u32,
    /// Members that do not repeat, mapped in this instance (bit = member index, the first 64).
    mapped_once: u64,
}

/// Where a row's path starts: a node, or an element (not made yet) of a parent node.
#[derive(Debug, Clone, Copy)]
enum Anchor {
    Node(u32),
    Elem {
        parent: u32,
        elem: ElemId,
        slot: u16,
        rep: u32,
        sub: u16,
    },
}

/// How far a value has been split: a field repetition splits into components, a component
/// into subcomponents, a subcomponent no further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Rep,
    Comp,
    Sub,
}

impl Level {
    fn down(self) -> Level {
        match self {
            Level::Rep => Level::Comp,
            _ => Level::Sub,
        }
    }
}

/// The read-only side while rows run: the message, the segments seen, the open groups.
struct Walk<'m> {
    msg: &'m Message<'m>,
    /// The segments seen, each with its group instance and the one seen before it with its
    /// id (`NONE` for none).
    segs: Vec<(Segment<'m>, u32, u32)>,
    /// Per segment id, the latest seen whose group may still be open: those in groups that
    /// closed are passed for good as lookups find them ([`Walk::segment`]). A group that
    /// closes never opens again, so a lookup costs what it passes, not a scan of every segment
    /// seen (150,000 NTE that each asked for an ORC took 12 s). Seeded per process: segment
    /// ids are the sender's to choose.
    by_id: RefCell<HashMap<[u8; 3], u32, foldhash::fast::RandomState>>,
    stack: Vec<Frame>,
    /// The scope of the segment being mapped: what a repeating segment makes belongs to it
    /// alone (each AL1 its own AllergyIntolerance), open only while that segment is mapped.
    seg_scope: u32,
    /// Per scope id (group instances and segment scopes, numbered as made): the scope it was
    /// made in and its group's definition (`usize::MAX` for a segment's own scope).
    scopes: Vec<(u32, usize)>,
    /// ASCII bytes are their own text in this message's character set.
    ascii_fast: bool,
    escape: Option<u8>,
    /// Scratch for [`Mapper::place`]: the groups down to a segment's member.
    path: Vec<(usize, usize)>,
}

impl<'m> Walk<'m> {
    fn is_open(&self, scope: u32) -> bool {
        scope == self.seg_scope || self.stack.iter().any(|f| f.inst == scope)
    }

    /// Whether a resource made in (scope, group) can be referred to from here: its group is
    /// still open, or it was made in another branch of the message (the PATIENT group's Patient
    /// from an ORDER_OBSERVATION). What was made in or under an earlier instance of a group
    /// that is open again cannot: the previous order's ServiceRequest, the previous
    /// PATIENT_RESULT's Encounter (another patient's, seen from this one's orders).
    fn visible(&self, scope: u32, group: usize) -> bool {
        if self.is_open(scope) {
            return true;
        }
        if self.stack.iter().any(|f| f.group == group) {
            return false;
        }
        let mut at = scope;
        while let Some(&(parent, g)) = self.scopes.get(at as usize) {
            if self.stack.iter().any(|f| f.group == g && f.inst != at) {
                return false;
            }
            if parent == NONE {
                break;
            }
            at = parent;
        }
        true
    }

    /// A new scope, made in the innermost open group (its id is the next number).
    fn new_scope(&mut self, next: &mut u32, group: usize) -> u32 {
        let parent = self.stack.last().map_or(NONE, |f| f.inst);
        debug_assert_eq!(self.scopes.len(), *next as usize);
        self.scopes.push((parent, group));
        *next += 1;
        *next - 1
    }

    /// The latest segment `id` in an open group (for conditions that look at another segment).
    fn segment(&self, id: &[u8; 3]) -> Option<Segment<'m>> {
        let mut by_id = self.by_id.borrow_mut();
        let latest = by_id.get_mut(id)?;
        while *latest != NONE {
            let (s, g, before) = self.segs[*latest as usize];
            if self.is_open(g) {
                return Some(s);
            }
            *latest = before;
        }
        None
    }

    /// The raw bytes when they are their own text.
    fn plain(&self, f: Field<'m>) -> Option<&'m [u8]> {
        let raw = f.raw();
        if raw == b"\"\"" {
            return None;
        }
        self.as_is(raw).map(str::as_bytes)
    }

    /// `raw` as text when it is its own text: ASCII without the escape character, in a
    /// character set that reads ASCII as itself. One pass over the bytes (most values are
    /// short), and no second one to validate UTF-8.
    fn as_is<'r>(&self, raw: &'r [u8]) -> Option<&'r str> {
        let esc = self.escape.unwrap_or(0x80);
        if !(self.ascii_fast && raw.iter().all(|&c| c < 0x80 && c != esc)) {
            return None;
        }
        // SAFETY: every byte of `raw` was just seen below 0x80, and a sequence of ASCII bytes
        // is valid UTF-8 (each is a one-byte scalar value).
        Some(unsafe { std::str::from_utf8_unchecked(raw) })
    }

    /// A value's text without the empty components and subcomponents left at its end when its
    /// bytes were sent as they are (`12&` is `12`, as a key reads it; `98^` is the number 98);
    /// an `&` the sender did not escape inside a text component stays text (`Smith & Jones`).
    fn whole(&self, f: Field<'m>) -> Cow<'m, str> {
        match self.text(f) {
            Cow::Borrowed(t) => Cow::Borrowed(without_empty_tail(t, self.msg.delimiters(), || {
                self.plain(f).is_some()
            })),
            owned => owned,
        }
    }

    /// Decoded text. Most values are ASCII without escapes: those are the bytes themselves in
    /// every character set the tokenizer reads in place, with no decoding pass.
    fn text(&self, f: Field<'m>) -> Cow<'m, str> {
        let raw = f.raw();
        if raw == b"\"\"" {
            // HL7's explicit null ("delete the value") holds nothing to map.
            return Cow::Borrowed("");
        }
        if let Some(t) = self.as_is(raw) {
            return Cow::Borrowed(t);
        }
        // Highlighting and FT formatting commands as plain text: a FHIR string has no markup.
        self.msg
            .text_as(raw, Formatting::Plain)
            .unwrap_or(Cow::Borrowed(""))
    }
}

/// The answers of conditions several rows of a map share (`Row::shared_cond`), asked once per
/// map call and value: by condition, the field the row iterates and its repetition (a reference
/// to that field reads the current repetition).
#[derive(Default)]
struct Asked(Vec<(u16, (u16, u32), bool)>);

impl Asked {
    fn eval(&mut self, shared: Option<u16>, at: (u16, u32), c: &Cond, env: &dyn Env) -> bool {
        let Some(id) = shared else {
            return c.eval(env);
        };
        if let Some(&(_, _, v)) = self.0.iter().find(|(i, a, _)| *i == id && *a == at) {
            return v;
        }
        let v = c.eval(env);
        self.0.push((id, at, v));
        v
    }
}

/// Where a map call's guards stand (`cond::Guard`): asked once, before its rows.
fn guard_values(map: &CMap, env: &dyn Env) -> [u8; MAX_GUARDS] {
    let mut values = [0; MAX_GUARDS];
    for (v, g) in values.iter_mut().zip(&map.guards) {
        *v = g.value(env);
    }
    values
}

/// The first repetition of `f` whose first component holds a value, else the first that holds
/// any, else its first (an empty field's). `PID-3` sent as `^^^H^MR~123^^^H^MR` is patient 123:
/// read from its first repetition, it was a patient without an identifier, a new one per message.
fn first_valued(f: Field<'_>) -> Option<Field<'_>> {
    let mut reps = f.repetitions();
    let first = reps.next()?;
    if valued(first_part(first, Level::Rep)) {
        return Some(first);
    }
    let mut any = valued(first).then_some(first);
    for r in reps {
        if valued(first_part(r, Level::Rep)) {
            return Some(r);
        }
        if any.is_none() && valued(r) {
            any = Some(r);
        }
    }
    Some(any.unwrap_or(first))
}

/// Whether a part holds a value: something other than blanks and delimiters (`^^^^` is a value
/// of empty components: `IF IN1-4 NOT VALUED` holds for it), and not HL7's `""` null.
fn valued(f: Field<'_>) -> bool {
    f.raw() != b"\"\"" && f.holds_data()
}

/// One segment's fields, by number (`fields[n-1]` is SEG-n).
struct SegView<'w, 'm> {
    walk: &'w Walk<'m>,
    id: [u8; 3],
    fields: &'w [Field<'m>],
    /// The field a row iterates and its current repetition.
    cur: Option<(u16, Field<'m>)>,
}

fn nth_part<'m>(mut it: impl Iterator<Item = Field<'m>>, n: usize) -> Option<Field<'m>> {
    it.nth(n.saturating_sub(1))
}

impl<'m> SegView<'_, 'm> {
    fn field(&self, n: u16) -> Option<Field<'m>> {
        self.fields.get(n as usize - 1).copied()
    }

    fn resolve(&self, r: &Ref) -> Option<Field<'m>> {
        let Ref::Field {
            seg,
            field,
            comp,
            sub,
        } = *r
        else {
            return None;
        };
        // A field read whole (not the one a row iterates) reads its first repetition with a
        // first component ([`first_valued`]): `PID-3` sent as `~E123^^^H^MR` or
        // `^^^H^MR~E123^^^H^MR` is patient E123, not a patient without an identifier.
        let rep = match seg {
            Some(s) if s != self.id => {
                let other = self.walk.segment(&s)?;
                first_valued(other.field(field as usize))?
            }
            _ => match self.cur {
                Some((f, rep)) if f == field => rep,
                _ => first_valued(self.field(field)?)?,
            },
        };
        let c = if comp > 0 {
            nth_part(rep.components(), comp as usize)?
        } else {
            return Some(rep);
        };
        if sub > 0 {
            nth_part(c.subcomponents(), sub as usize)
        } else {
            Some(c)
        }
    }
}

impl Env for SegView<'_, '_> {
    fn text(&self, r: &Ref) -> Cow<'_, str> {
        match self.resolve(r) {
            Some(f) => self.walk.text(f),
            None => Cow::Borrowed(""),
        }
    }

    fn valued(&self, r: &Ref) -> bool {
        self.resolve(r).is_some_and(valued)
    }

    fn plain(&self, r: &Ref) -> Option<&[u8]> {
        self.walk.plain(self.resolve(r)?)
    }

    fn field(&self, r: &Ref) -> Option<Field<'_>> {
        self.resolve(r)
    }

    fn whole(&self, r: &Ref) -> Cow<'_, str> {
        match self.resolve(r) {
            Some(f) => self.walk.whole(f),
            None => Cow::Borrowed(""),
        }
    }

    fn count(&self, r: &Ref) -> usize {
        match *r {
            Ref::Segment(id) => usize::from(id == self.id || self.walk.segment(&id).is_some()),
            Ref::Field { seg, field, .. } => {
                let f = match seg {
                    Some(s) if s != self.id => {
                        self.walk.segment(&s).map(|x| x.field(field as usize))
                    }
                    _ => self.field(field),
                };
                f.map(|f| f.repetitions().filter(|r| !r.is_empty()).count())
                    .unwrap_or(0)
            }
            Ref::Comp { .. } => 0,
        }
    }
}

/// Parts kept split for a data-type value; parts past them are found by walking. Values rarely
/// have more (a sender leaves trailing empty components off), and the view is filled and
/// copied once per data-type map call, so twelve cost less than room for every component of
/// XAD or XCN would.
const SPLIT: usize = 12;

struct DtView<'w, 'm> {
    walk: &'w Walk<'m>,
    value: Field<'m>,
    level: Level,
    /// How many parts `value` splits into at this level.
    parts: usize,
    /// The first `SPLIT` of them (`None` past `parts`: an array of nulls is cheaper to start
    /// than one of copies).
    split: [Option<Field<'m>>; SPLIT],
}

impl<'w, 'm> DtView<'w, 'm> {
    // Inlined: returned from a call, the view (about 300 bytes) is copied to its caller.
    #[inline(always)]
    fn new(walk: &'w Walk<'m>, value: Field<'m>, level: Level) -> Self {
        let mut split = [None; SPLIT];
        let mut parts = 0;
        let mut put = |f: Field<'m>| {
            if parts < SPLIT {
                split[parts] = Some(f);
            }
            parts += 1;
        };
        match level {
            Level::Rep => value.components().for_each(&mut put),
            Level::Comp => value.subcomponents().for_each(&mut put),
            Level::Sub => put(value),
        }
        DtView {
            walk,
            value,
            level,
            parts,
            split,
        }
    }

    /// Component `comp` (optionally its subcomponent `sub`).
    fn comp(&self, comp: u16, sub: u16) -> Option<(Field<'m>, Level)> {
        let comp = comp as usize;
        if comp == 0 || comp > self.parts {
            return None;
        }
        let c = if comp <= SPLIT {
            self.split[comp - 1]?
        } else {
            match self.level {
                Level::Rep => nth_part(self.value.components(), comp)?,
                Level::Comp => nth_part(self.value.subcomponents(), comp)?,
                Level::Sub => self.value,
            }
        };
        let lvl = self.level.down();
        if sub == 0 {
            return Some((c, lvl));
        }
        if lvl != Level::Comp {
            return None;
        }
        nth_part(c.subcomponents(), sub as usize).map(|s| (s, Level::Sub))
    }
}

impl Env for DtView<'_, '_> {
    fn text(&self, r: &Ref) -> Cow<'_, str> {
        match *r {
            Ref::Comp { comp, sub } => match self.comp(comp, sub) {
                Some((f, _)) => self.walk.text(f),
                None => Cow::Borrowed(""),
            },
            _ => Cow::Borrowed(""),
        }
    }
    fn count(&self, r: &Ref) -> usize {
        usize::from(self.valued(r))
    }

    fn valued(&self, r: &Ref) -> bool {
        match *r {
            Ref::Comp { comp, sub } => self.comp(comp, sub).is_some_and(|(f, _)| valued(f)),
            _ => false,
        }
    }

    fn plain(&self, r: &Ref) -> Option<&[u8]> {
        match *r {
            Ref::Comp { comp, sub } => self.walk.plain(self.comp(comp, sub)?.0),
            _ => None,
        }
    }

    fn field(&self, r: &Ref) -> Option<Field<'_>> {
        match *r {
            Ref::Comp { comp, sub } => self.comp(comp, sub).map(|(f, _)| f),
            _ => None,
        }
    }

    fn whole(&self, r: &Ref) -> Cow<'_, str> {
        match self.field(r) {
            Some(f) => self.walk.whole(f),
            None => Cow::Borrowed(""),
        }
    }
}

/// What the mapping produced, before it is written.
pub struct Build {
    pub nodes: Vec<Node>,
    pub text: String,
    pub insts: Vec<Inst>,
    /// `insts` by id, so that making a resource does not compare its id with every other.
    by_id: TableMap<[u8; 36], u32>,
    /// The last `|#n` a `distinct` key took, by key: the next resource with that key starts
    /// there (n resources with one key cost n tries, not n²/2).
    suffixes: TableMap<[u8; 36], u32>,
    bindings: Vec<Binding>,
    /// Per label, its latest binding (the others by `Binding::prev`), so that a lookup reads
    /// its own label's alone: scanning them all, 95,000 NK1 took 11 s.
    head: Vec<u32>,
    /// Per label, the latest binding whose scope may still be open (the others by
    /// `Binding::prev_open`): one found closed is passed for good, since a closed group
    /// instance never opens again.
    open_head: Vec<u32>,
    pub warnings: Vec<String>,
    pub unmapped: Vec<String>,
    /// `unmapped` as keys (segment id, field number; 0 for a whole segment), to find repeats
    /// without comparing strings or decoding the field again.
    /// (A set: a frame of 46,000 distinct Z-segment ids made the list's scan cost 0.5 s.
    /// Seeded per process, as the ids are the sender's to choose.)
    unmapped_keys: HashSet<([u8; 3], usize), foldhash::fast::RandomState>,
    /// Resources left out for lack of an element R4 requires, by type name, one per resource.
    pub left_out: Vec<String>,
    /// The segment field rows are reading now (`PID`, 7), named in warnings.
    cur_field: ([u8; 3], u16),
    too_many: bool,
    /// (segment id, segment number, the resource's entry before) for segments that occur once
    /// where they belong (OBR in an order): a second such segment mapping into the same
    /// resource is found here. Each resource's own entries are chained from `Inst::once_head`:
    /// one list of all of them made a flood of such segments cost resources × segments, and
    /// a resource gets segments of the few ids its message map sends into it.
    once_into: Vec<([u8; 3], u32, u32)>,
    /// Per type, the latest resource made (the others by `Inst::prev_of_type`): the latest
    /// one of a type that the segment can see (`@Patient` in a key, a `Link`) is found among
    /// its own type's, not by scanning every resource the message made. A message names a few
    /// of the model's hundreds of types, so a short list, not a table indexed by type (whose
    /// growth cost more than it saved) nor a map with a vector per type.
    type_heads: Vec<(TypeId, u32)>,
    /// Values not written because the element held another one (first write wins): counted,
    /// so that a later mention of a merged resource can tell that it lost something.
    lost: u32,
    /// Fields of the segment being mapped that the key of a resource it names was read from.
    keyed: Vec<u16>,
    /// Per resource, the group instances in which a second segment where one belongs named
    /// another resource than it, so what follows that segment there (the NTE and OBX of a
    /// second OBR) is not mapped into it, nor linked to it.
    closed: TableMap<u32, Vec<u32>>,
    /// Nodes an `override` row has written: they are not overridden again.
    overridden: Vec<u32>,
}

pub struct Mapper<'p> {
    plan: &'p Plan,
    mm: &'p MessageMap,
    ns: [u8; 16],
    link: &'p Link<'p>,
}

/// The text a primitive takes from a value: a field repetition's first component (whole, so an
/// unescaped `&` in text survives), a component's first subcomponent, a subcomponent itself.
fn first_part(v: Field<'_>, level: Level) -> Field<'_> {
    match level {
        Level::Rep => v.components().next().unwrap_or(v),
        Level::Comp => v.subcomponents().next().unwrap_or(v),
        Level::Sub => v,
    }
}

/// `t` (trimmed) without the empty components and subcomponents a sender left at its end
/// (`H&&` is `H`), when its bytes were sent as they are (`plain`, asked only then); a separator
/// decoded from an escape (`H\\T\\` is `H&`) is text and stays.
fn without_empty_tail<'t>(t: &'t str, d: &Delimiters, plain: impl FnOnce() -> bool) -> &'t str {
    let empty = [
        char::from(d.component),
        char::from(d.subcomponent.unwrap_or(d.component)),
    ];
    let t = value::trim(t);
    if t.ends_with(empty) && plain() {
        value::trim(t.trim_end_matches(empty))
    } else {
        t
    }
}

/// A key part of a value whose decoded text holds a separator character, read piece by piece
/// as the sender split it: each component and subcomponent decoded, a separator character in
/// one (decoded from an escape) marked as a key marks `|`, `\\` and `#`, and the empty pieces
/// at its end left off (`H&` is `H`). Pushed to `key`; whether it held anything.
fn key_text(walk: &Walk<'_>, f: Field<'_>, key: &mut String) -> bool {
    let d = walk.msg.delimiters();
    let (comp, sub) = (d.component, d.subcomponent.unwrap_or(d.component));
    let start = key.len();
    let mut kept = start;
    for (ci, c) in f.components().enumerate() {
        for (si, s) in c.subcomponents().enumerate() {
            if si > 0 {
                key.push(char::from(sub));
            } else if ci > 0 {
                key.push(char::from(comp));
            }
            let t = walk.text(s);
            let t = if ci == 0 && si == 0 {
                t.trim_start()
            } else {
                &t
            };
            for ch in t.chars() {
                if matches!(ch, '|' | '\\' | '#')
                    || u8::try_from(ch).is_ok_and(|b| b == comp || b == sub)
                {
                    key.push('\\');
                }
                key.push(ch);
            }
            if !t.trim().is_empty() {
                kept = key.len();
            }
        }
    }
    key.truncate(kept);
    let end = key.trim_end().len();
    key.truncate(end);
    key.len() > start
}

/// Whether a part after the first of `v` holds something (which a primitive taking
/// [`first_part`] loses).
fn later_parts_valued(v: Field<'_>, level: Level) -> bool {
    match level {
        Level::Rep => v.components().skip(1).any(valued),
        Level::Comp => v.subcomponents().skip(1).any(valued),
        Level::Sub => false,
    }
}

impl<'p> Mapper<'p> {
    pub fn new(plan: &'p Plan, mm: &'p MessageMap, ns: [u8; 16], link: &'p Link<'p>) -> Self {
        Mapper { plan, mm, ns, link }
    }

    pub fn run(&self, msg: &Message<'_>) -> Result<Build, MapError> {
        let mut walk = Walk {
            msg,
            segs: Vec::with_capacity(msg.segment_count()),
            by_id: RefCell::new(HashMap::default()),
            stack: vec![Frame {
                group: 0,
                pos: usize::MAX,
                inst: 0,
                mapped_once: 0,
            }],
            seg_scope: u32::MAX,
            scopes: vec![(NONE, 0)],
            ascii_fast: match msg.charset() {
                Charset::Ascii | Charset::Latin1 | Charset::Utf8 => true,
                Charset::Other(e) => e.is_ascii_compatible(),
            },
            escape: msg.delimiters().escape,
            path: Vec::with_capacity(8),
        };
        let mut b = Build {
            nodes: Vec::with_capacity(64 + msg.bytes().len() / 2),
            text: String::with_capacity(256 + msg.bytes().len() * 2),
            insts: Vec::with_capacity(16),
            by_id: TableMap::with_capacity_and_hasher(32, Default::default()),
            suffixes: TableMap::default(),
            bindings: Vec::new(),
            head: Vec::new(),
            open_head: Vec::new(),
            warnings: Vec::new(),
            unmapped: Vec::new(),
            unmapped_keys: HashSet::default(),
            cur_field: (*b"MSH", 0),
            left_out: Vec::new(),
            too_many: false,
            once_into: Vec::new(),
            type_heads: Vec::new(),
            lost: 0,
            keyed: Vec::new(),
            closed: TableMap::default(),
            overridden: Vec::new(),
        };
        if !msg.charset().holds(msg.bytes()) {
            // Named once: which field holds such bytes would take a decode per field.
            b.warn(format_args!(
                "the message holds bytes that are not text in its character set (MSH-18): \
                 each such sequence is written as U+FFFD"
            ));
        } else if msg.charset() == Charset::Ascii && std::str::from_utf8(msg.bytes()).is_err() {
            // No set named (or ASCII, `ISO IR6`, which such senders name just as often), and
            // not UTF-8: a value that is not UTF-8 is read as ISO 8859-1 (as windows-1252, its
            // superset: the common case of such senders), which may not be what the sender
            // meant.
            b.warn(format_args!(
                "MSH-18 is empty or ASCII (ISO IR6) and the message is not UTF-8: values that \
                 are not UTF-8 were read as ISO 8859-1 (windows-1252; set MSH-18 to say which)"
            ));
        }
        let mut next_group = 1u32;
        let mut fields: Vec<Field<'_>> = Vec::with_capacity(64);
        let mut used: Vec<bool> = Vec::with_capacity(64);
        let max_fields = self.plan.settings.max_fields;
        for (seg_index, seg) in msg.segments().enumerate() {
            let id: [u8; 3] = seg.id().try_into().unwrap_or(*b"???");
            fields.clear();
            if id == *b"MSH" {
                // MSH-1 is the separator itself; fields() starts at MSH-2.
                fields.push(seg.field(1));
            }
            let mut overflow = false;
            for f in seg.fields() {
                if fields.len() == max_fields {
                    overflow = true;
                    break;
                }
                fields.push(f);
            }
            if overflow {
                b.warn(format_args!(
                    "{}: fields beyond {max_fields} not read",
                    String::from_utf8_lossy(&id)
                ));
            }
            let member = self.place(&mut walk, id, &mut next_group);
            let scope = walk.stack.last().map(|f| f.inst).unwrap_or(0);
            // A segment that holds nothing (`PID` alone, `ORC|`, `PV1|||`) places its group
            // but is not there, for conditions (`IF ORC VALUED`) as for its rows: mapped, it
            // made the resource a later segment of its kind had to be (an empty PID, then the
            // real one, read as two patients); seen, it made an OBR map an order whose ORC
            // row, which gives it its patient, did not run.
            let holds = id == *b"MSH" || fields.iter().any(|f| valued(*f));
            if holds {
                let at = walk.segs.len() as u32;
                let before = walk.by_id.get_mut().insert(id, at).unwrap_or(NONE);
                walk.segs.push((seg, scope, before));
            }
            walk.seg_scope = walk.new_scope(&mut next_group, usize::MAX);
            // MSH is the envelope: its fields go into the record's metadata and the Provenance.
            if id == *b"MSH" {
                continue;
            }
            let Some((g, m, stray)) = member else {
                if fields.iter().any(|f| !f.is_empty()) {
                    b.unmapped_segment(&id);
                }
                continue;
            };
            if !holds {
                continue;
            }
            let Member::Seg { rows, repeats, .. } = &self.mm.groups[g].members[m] else {
                continue;
            };
            let mut again = false;
            let (scope, group) = if *repeats {
                (walk.seg_scope, g)
            } else {
                let bit = 1u64.checked_shl(m as u32).unwrap_or(0);
                let frame = walk
                    .stack
                    .last_mut()
                    .filter(|f| f.inst == scope && f.group == g);
                again = frame.is_some_and(|f| {
                    let seen = f.mapped_once & bit != 0;
                    f.mapped_once |= bit;
                    seen
                });
                if again {
                    // A second PID or PV1 where one belongs: it maps into the resources the
                    // first made, whose values stand; what loses is listed as unmapped.
                    b.warn(format_args!(
                        "{}: a second one in its group adds to what the first made; values \
                         the first set are kept",
                        String::from_utf8_lossy(&id)
                    ));
                }
                (scope, g)
            };
            used.clear();
            used.resize(fields.len() + 1, false);
            b.keyed.clear();
            // Resources a segment that belongs once found an earlier one of its kind mapped
            // into: an OBR after the OBR of its order (no ORC of its own) is another order.
            let mut second_into: Option<u32> = None;
            // A row skipped for naming another resource: the key fields it read are lost too.
            let mut other_identity = false;
            let mut after_other = false;
            // Nodes made before this segment: what an earlier segment wrote.
            let seg_mark = b.nodes.len();
            // A resource an earlier segment of this kind named by the same key, when it made
            // this one's elements (its name, its address) into another's.
            let mut spliced_into: Option<u32> = None;
            for &ri in rows {
                let row = &self.mm.rows[ri];
                let view = SegView {
                    walk: &walk,
                    id,
                    fields: &fields,
                    cur: None,
                };
                if let Some(c) = &row.cond {
                    if !c.eval(&view) {
                        continue;
                    }
                }
                let Some(label) = row.label else { continue };
                let inst = if stray {
                    match self.open_instance(&walk, &mut b, label) {
                        Some(i) => i,
                        None => continue,
                    }
                } else {
                    match self.instance_for(&walk, &mut b, label, &view, scope, group) {
                        Some(i) => i,
                        None => continue,
                    }
                };
                if b.is_closed(&walk, inst) {
                    if !after_other && !other_identity {
                        after_other = true;
                        let name = &self.plan.model.ty(b.insts[inst as usize].ty).name;
                        b.warn(format_args!(
                            "{}: follows a segment that named another {name} where one \
                             belongs: not mapped into the first one's",
                            String::from_utf8_lossy(&id)
                        ));
                    }
                    continue;
                }
                if b.insts[inst as usize].until == Some(id) {
                    self.rekey(&walk, &mut b, inst, &view);
                }
                let mut again = again;
                // An earlier segment of this kind named this resource by its own key (a second
                // PATIENT group of a BAR^P02 naming the same patient): when a value of this one
                // differs from that one's, what this one writes inside the elements that one
                // made is taken back below (a fuller mention of the same values adds to them).
                let mut named_again = again;
                if !*repeats && !again {
                    let n = seg_index as u32;
                    if let Some(k) = b.once_into_of(inst, id) {
                        named_again = k != n;
                        // Only where the segment names resources that stay apart (`distinct`):
                        // a second IN1 or PV1 naming the same Coverage or Encounter (`merge`),
                        // or AIS adding participants to the Appointment, is as it should be.
                        again = k != n && self.names_distinct(b.insts[inst as usize].ty, &id);
                    } else {
                        let head = &mut b.insts[inst as usize].once_head;
                        b.once_into.push((id, n, *head));
                        *head = b.once_into.len() as u32 - 1;
                    }
                    if again && second_into != Some(inst) {
                        second_into = Some(inst);
                        b.warn(format_args!(
                            "{}: a second one where one belongs adds to what the first made; \
                             values the first set are kept",
                            String::from_utf8_lossy(&id)
                        ));
                    }
                }
                let identity = match again {
                    true => self.same_identity(&walk, &mut b, inst, &view),
                    false => Identity::Same,
                };
                if identity != Identity::Same {
                    let ty = b.insts[inst as usize].ty;
                    let name = &self.plan.model.ty(ty).name;
                    if ty == self.plan.known.patient {
                        // What follows (an AL1, an OBX) would go to either patient.
                        return Err(MapError {
                            label: "conflicting_segment",
                            detail: format!(
                                "a second {} in its group names another Patient than the \
                                 first (its identifier differs)",
                                String::from_utf8_lossy(&id)
                            ),
                        });
                    }
                    let names = match identity {
                        Identity::Unnamed => "names no",
                        _ => "names another",
                    };
                    b.warn(format_args!(
                        "{}: a second one in its group {names} {name}: not mapped into the \
                         first one's",
                        String::from_utf8_lossy(&id)
                    ));
                    other_identity = true;
                    b.closed.entry(inst).or_default().push(scope);
                    continue;
                }
                if b.too_many {
                    return Err(self.too_many());
                }
                if let Some(map) = row.map {
                    let lost = b.lost;
                    let root = b.insts[inst as usize].root;
                    let anchor = match &row.at {
                        None => Anchor::Node(root),
                        // One element per segment (each NK1 its own contact, each AIP its own
                        // participant): the segment's position is the repetition.
                        Some(p) => leaf_anchor(
                            self.plan.model,
                            &mut b,
                            Anchor::Node(root),
                            p,
                            seg_index as u32,
                        ),
                    };
                    self.segmap(&walk, &mut b, map, anchor, inst, id, &fields, &mut used);
                    if named_again
                        && b.lost > lost
                        && spliced_into != Some(inst)
                        && self.segment_rule(b.insts[inst as usize].ty, &id).is_some()
                        && b.keep_first_elements(inst, seg_mark)
                    {
                        spliced_into = Some(inst);
                        let name = &self.plan.model.ty(b.insts[inst as usize].ty).name;
                        let seg = String::from_utf8_lossy(&id);
                        b.warn(format_args!(
                            "{seg}: names the {name} an earlier {seg} named (same key) with \
                             other values inside the elements it made; the first one's are kept"
                        ));
                    }
                }
                for rr in &row.refs {
                    self.link_ref(&walk, &mut b, rr.from, &rr.path, rr.to);
                }
            }
            if !other_identity {
                for &f in &b.keyed {
                    if let Some(u) = used.get_mut(f as usize) {
                        *u = true;
                    }
                }
            }
            for (i, f) in fields.iter().enumerate() {
                if !used[i + 1] && valued(*f) {
                    b.unmapped_field(&id, i + 1, &walk, *f);
                }
            }
        }
        // Asked before each row, the cap is crossed by the rows of the last segment (a PV1-7
        // of a hundred doctors): the message is refused all the same.
        if b.too_many {
            return Err(self.too_many());
        }
        Ok(b)
    }

    fn too_many(&self) -> MapError {
        MapError {
            label: "too_many_resources",
            detail: format!(
                "more than {} resources from one message",
                self.plan.settings.max_resources
            ),
        }
    }

    /// Finds the member for segment `id` and moves the open groups accordingly. The flag says
    /// the segment is out of place: it may add to resources already open, not make new ones.
    fn place(
        &self,
        walk: &mut Walk<'_>,
        id: [u8; 3],
        next: &mut u32,
    ) -> Option<(usize, usize, bool)> {
        let groups = &self.mm.groups;
        // The path found, reused from segment to segment (a segment sits a few groups deep).
        let mut p = std::mem::take(&mut walk.path);
        let placed = self.place_in(walk, id, next, groups, &mut p);
        walk.path = p;
        placed
    }

    fn place_in(
        &self,
        walk: &mut Walk<'_>,
        id: [u8; 3],
        next: &mut u32,
        groups: &[super::plan::Group],
        p: &mut Vec<(usize, usize)>,
    ) -> Option<(usize, usize, bool)> {
        let anywhere = |stray: bool, p: &mut Vec<(usize, usize)>| {
            p.clear();
            find(groups, 0, 0, &id, false, p).then(|| {
                let (g, m) = *p.last().expect("path");
                (g, m, stray)
            })
        };
        if id[0] == b'Z' {
            // Z-segments may sit anywhere: they change no group.
            return anywhere(false, p);
        }
        for d in (0..walk.stack.len()).rev() {
            let f = walk.stack[d];
            let members = &groups[f.group].members;
            if f.pos != usize::MAX {
                match &members[f.pos] {
                    Member::Seg { id: s, repeats, .. } if *s == id && *repeats => {
                        walk.stack.truncate(d + 1);
                        return Some((f.group, f.pos, false));
                    }
                    Member::Group(c) => {
                        p.clear();
                        if find(groups, *c, 0, &id, true, p) {
                            walk.stack.truncate(d + 1);
                            let (g, m) = self.enter(walk, p, next);
                            return Some((g, m, false));
                        }
                    }
                    _ => {}
                }
            }
            let start = if f.pos == usize::MAX { 0 } else { f.pos + 1 };
            p.clear();
            if find(groups, f.group, start, &id, false, p) {
                walk.stack.truncate(d + 1);
                walk.stack[d].pos = p[0].1;
                let (g, m) = self.enter(walk, &p[1..], next);
                return Some((g, m, false));
            }
            // An optional segment of this group seen again after later ones (NTE then PRT where
            // the structure lists PRT first): senders do that; it stays in this group rather
            // than opening a new one somewhere else.
            let back = members[..start.min(members.len())].iter().position(
                |m| matches!(m, Member::Seg { id: s, optional, .. } if *s == id && *optional),
            );
            if let Some(i) = back.filter(|&i| i > 0) {
                walk.stack.truncate(d + 1);
                walk.stack[d].pos = i;
                return Some((f.group, i, false));
            }
        }
        // Out of order: handled where it is, without moving the groups. A segment of the
        // message's top level may still make its resources (senders reorder DG1 and GT1); one
        // that belongs in a group only adds to resources already open.
        anywhere(true, p).map(|(g, m, _)| (g, m, g != 0))
    }

    /// Opens new instances of the groups on `path` (each `(group, member)`).
    fn enter(
        &self,
        walk: &mut Walk<'_>,
        path: &[(usize, usize)],
        next: &mut u32,
    ) -> (usize, usize) {
        let mut last = None;
        for &(g, m) in path {
            let inst = walk.new_scope(next, g);
            walk.stack.push(Frame {
                group: g,
                pos: m,
                inst,
                mapped_once: 0,
            });
            last = Some((g, m));
        }
        last.unwrap_or_else(|| {
            let f = walk.stack.last().expect("root");
            (f.group, f.pos)
        })
    }

    /// The instance of `label` open in this scope, if any.
    fn open_instance(&self, walk: &Walk<'_>, b: &mut Build, label: usize) -> Option<u32> {
        let mut at = *b.open_head.get(label)?;
        while at != NONE {
            let bd = &b.bindings[at as usize];
            if walk.is_open(bd.scope) {
                b.open_head[label] = at;
                return Some(bd.inst);
            }
            at = bd.prev_open;
        }
        b.open_head[label] = NONE;
        None
    }

    /// The instance a message row's label refers to: the one open in this scope, else a new one.
    /// `None` when the new one's key is that of a resource made for a label the message map
    /// links this one to (an A40 whose MRG-1 names the surviving patient itself): the two
    /// would be one resource, and the row's data (`active: false` for the patient merged away)
    /// would land on the other; the row is not mapped and a warning says so.
    #[allow(clippy::too_many_arguments)]
    fn instance_for(
        &self,
        walk: &Walk<'_>,
        b: &mut Build,
        label: usize,
        view: &SegView<'_, '_>,
        scope: u32,
        group: usize,
    ) -> Option<u32> {
        if let Some(i) = self.open_instance(walk, b, label) {
            return Some(i);
        }
        let def = &self.mm.labels[label];
        let v2 = std::str::from_utf8(&view.id).unwrap_or("");
        let rule = self.rule(def.ty, v2);
        let key = rule.and_then(|r| self.key_by(r, b, walk, def.ty, v2, view));
        let until = rule.and_then(|r| r.until);
        let made = b.insts.len();
        let inst = self.create(b, def.ty, key, &def.name, scope, group, until);
        // A resource made now is no other label's.
        let merged = b.insts.len() == made;
        // Labels the message map links to each other (`Patient[2].link.other=Patient[1]`)
        // are two resources by design; others may share one (the same IN1 in two groups).
        let mut other = None;
        for &(a, z) in self.mm.links.iter().filter(|_| merged) {
            let l = match (a == label, z == label) {
                (true, false) => z,
                (false, true) => a,
                _ => continue,
            };
            if self.open_instance(walk, b, l) == Some(inst) {
                other = Some(l);
                break;
            }
        }
        if let Some(other) = other {
            b.warn(format_args!(
                "{v2}: {} has the id of {}: one resource, so {v2}'s rows for {} are not mapped",
                def.name, self.mm.labels[other].name, def.name
            ));
            return None;
        }
        b.bind(label, inst, scope, group);
        Some(inst)
    }

    /// Whether a second segment where one belongs (a second PID, PV1) names the resource the
    /// first made (`inst`). Another PID-3 or PV1-19 mapped into the first one's resource would
    /// give it the other's values: a second patient fails the mapping (what follows, an AL1,
    /// would go to either; the raw record keeps all), a second encounter is not mapped into
    /// the first. A segment that names resources of the type but sends no key (a second PV1
    /// without PV1-19, a second OBR without numbers) is not taken for the first one's either:
    /// its discharge time or results would be the first visit's or order's, a claim nothing
    /// in the message makes. Only a second PID without identifiers still adds to the first
    /// patient (two patients cannot be told apart there; the message is not refused for it).
    /// A segment that names no resource of the type (a second PV2) adds to the first one's.
    fn same_identity(
        &self,
        walk: &Walk<'_>,
        b: &mut Build,
        inst: u32,
        view: &SegView<'_, '_>,
    ) -> Identity {
        let (ty, key_id) = (b.insts[inst as usize].ty, b.insts[inst as usize].key_id);
        let v2 = std::str::from_utf8(&view.id).unwrap_or("");
        let Some(rule) = self.rule(ty, v2) else {
            return Identity::Same;
        };
        // Against the id of its key without a `|#n` suffix, which a `distinct` one may carry.
        match self.key_by(rule, b, walk, ty, v2, view) {
            Some((key, _)) if value::id_of(&self.ns, &key) == key_id => Identity::Same,
            Some(_) => Identity::Other,
            None if ty == self.plan.known.patient => Identity::Same,
            None => Identity::Unnamed,
        }
    }

    /// Whether segment `id` names resources of type `ty` by a `distinct` key (OBR, an order).
    fn names_distinct(&self, ty: TypeId, id: &[u8; 3]) -> bool {
        self.segment_rule(ty, id).is_some_and(|r| !r.merge)
    }

    /// [`Self::rule`] for a segment id.
    fn segment_rule(&self, ty: TypeId, id: &[u8; 3]) -> Option<&'p IdRule> {
        self.rule(ty, std::str::from_utf8(id).unwrap_or(""))
    }

    /// The id rule for resources of type `ty` that segment or data type `v2` makes.
    fn rule(&self, ty: TypeId, v2: &str) -> Option<&'p IdRule> {
        self.plan
            .ids
            .get(v2)?
            .iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, r)| r)
    }

    /// Gives `inst`, made by another segment whose rule says `until` this one, the id of this
    /// segment's key, if it has one (else it keeps the id it has). Nothing has read its id yet:
    /// references are written by instance, and keys that name it (`@DiagnosticReport`) are
    /// read from the segments after this one.
    fn rekey(&self, walk: &Walk<'_>, b: &mut Build, inst: u32, view: &SegView<'_, '_>) {
        let found = &mut b.insts[inst as usize];
        found.until = None;
        let (ty, old) = (found.ty, found.id);
        let v2 = std::str::from_utf8(&view.id).unwrap_or("");
        let Some((key, _)) = self.key(b, walk, ty, v2, view) else {
            return;
        };
        if b.by_id.get(&old) == Some(&inst) {
            b.by_id.remove(&old);
        }
        // Claimed as `distinct` (two instances cannot become one), so it is never `Err`.
        let Ok((id, base)) = self.claim_id(b, key, false, ty) else {
            return;
        };
        b.by_id.insert(id, inst);
        let found = &mut b.insts[inst as usize];
        found.id = id;
        found.key_id = base.unwrap_or(id);
    }

    /// The business key of a new resource, by the id rule for (type, v2 source). The fields of
    /// the segment a key was read from are noted (`Build::keyed`): what identifies a resource
    /// the message names is what its id carries, so they are not listed as unmapped.
    fn key(
        &self,
        b: &mut Build,
        walk: &Walk<'_>,
        ty: TypeId,
        v2: &str,
        env: &dyn Env,
    ) -> Option<(String, bool)> {
        self.key_by(self.rule(ty, v2)?, b, walk, ty, v2, env)
    }

    /// [`Self::key`] by a rule already looked up.
    #[allow(clippy::too_many_arguments)]
    fn key_by(
        &self,
        rule: &IdRule,
        b: &mut Build,
        walk: &Walk<'_>,
        ty: TypeId,
        v2: &str,
        env: &dyn Env,
    ) -> Option<(String, bool)> {
        let mut key = String::with_capacity(96);
        // The first alternative (`… OR …`) with an identifying part valued is the key; a later
        // one is marked, so that it never equals an earlier one's key.
        'alternatives: for (alt, parts) in rule
            .parts
            .split(|(p, _)| matches!(p, KeyPart::Or))
            .enumerate()
        {
            key.clear();
            key.push_str(&self.plan.model.ty(ty).name);
            match parts.first() {
                Some((KeyPart::Label(label), _)) => {
                    key.push_str("|#[");
                    key.push_str(label);
                    key.push(']');
                }
                _ if alt > 0 => {
                    key.push_str("|#or");
                    value::push_int(&mut key, alt as i64);
                }
                _ => {}
            }
            let mut identified = false;
            for (p, role) in parts {
                if matches!(p, KeyPart::Label(_)) {
                    continue;
                }
                key.push('|');
                let valued = match p {
                    KeyPart::Ref(r) | KeyPart::Number(r) => {
                        let t = env.text(r);
                        let d = walk.msg.delimiters();
                        let sep = [d.component, d.subcomponent.unwrap_or(d.component)];
                        if let Some(f) = env.field(r).filter(|_| {
                            t.bytes().any(|c| sep.contains(&c)) && env.plain(r).is_none()
                        }) {
                            // A separator decoded from an escape is text, one the sender
                            // sent is structure: `H\\T\\X` is not `H&X`.
                            key_text(walk, f, &mut key)
                        } else {
                            // Trailing empty components and subcomponents are the same value
                            // (`H`, `H&`, `H&&`: one assigning authority, one patient).
                            // Only bytes sent as they are: `AT\\T\\` is the authority `AT&`, not `AT`.
                            let mut t = without_empty_tail(&t, d, || env.plain(r).is_some());
                            if matches!(p, KeyPart::Number(_))
                                && t.bytes().all(|b| b.is_ascii_digit())
                            {
                                // `01` is `1`; `0` and `00` are `0`.
                                let digits = t.trim_start_matches('0');
                                t = if digits.is_empty() && !t.is_empty() {
                                    "0"
                                } else {
                                    digits
                                };
                            }
                            // Escaped, so that no text (an identifier sent as `A\F\B`, or `#2`)
                            // can end one part and start the next, or read as a suffix or marker:
                            // the parts of two keys stay apart.
                            if t.bytes().any(|b| matches!(b, b'|' | b'\\' | b'#')) {
                                for c in t.chars() {
                                    if matches!(c, '|' | '\\' | '#') {
                                        key.push('\\');
                                    }
                                    key.push(c);
                                }
                            } else {
                                key.push_str(t);
                            }
                            !t.is_empty()
                        }
                    }
                    KeyPart::Empty | KeyPart::Or | KeyPart::Label(_) => false,
                    // A resource of the type not there fails the alternative, not the key:
                    // an OBX's report, else its immunization, else its order.
                    KeyPart::Context(t) => {
                        let Some(found) = b.latest(walk, *t) else {
                            continue 'alternatives;
                        };
                        let found = &b.insts[found as usize];
                        key.push_str(std::str::from_utf8(&found.id).unwrap_or(""));
                        true
                    }
                };
                identified |= valued && *role == Role::Identifies;
            }
            if identified {
                let seg = v2.as_bytes();
                for (p, _) in parts {
                    if let KeyPart::Ref(Ref::Field { seg: s, field, .. })
                    | KeyPart::Number(Ref::Field { seg: s, field, .. }) = p
                    {
                        if s.is_none_or(|s| s == seg) {
                            b.keyed.push(*field);
                        }
                    }
                }
                return Some((key, rule.merge));
            }
        }
        None
    }

    /// Makes a resource (or finds the one with the same id when its rule merges).
    #[allow(clippy::too_many_arguments)]
    fn create(
        &self,
        b: &mut Build,
        ty: TypeId,
        key: Option<(String, bool)>,
        what: &str,
        scope: u32,
        group: usize,
        until: Option<[u8; 3]>,
    ) -> u32 {
        let (name, merge) = match key {
            Some((k, merge)) => (k, merge),
            // No business identifier: an id only this message's resource can have.
            None => {
                let mut k = String::with_capacity(96);
                k.push_str(&self.plan.model.ty(ty).name);
                k.push_str("|raw|");
                k.push_str(self.link.raw_record_id);
                k.push('|');
                k.push_str(what);
                k.push('|');
                value::push_int(&mut k, b.insts.len() as i64);
                (k, false)
            }
        };
        let (id, base) = match self.claim_id(b, name, merge, ty) {
            Ok(ids) => ids,
            Err(merged) => return merged,
        };
        if b.insts.len() >= self.plan.settings.max_resources {
            b.too_many = true;
        }
        let root = b.nodes.len() as u32;
        let inst = b.insts.len() as u32;
        b.nodes.push(Node {
            elem: ElemId::MAX,
            slot: 1,
            sub: 1,
            rep: 0,
            parent: NONE,
            first: NONE,
            last: NONE,
            next: NONE,
            inst,
            val: Val::Obj,
        });
        b.by_id.insert(id, inst);
        let prev_of_type = match b.type_heads.iter_mut().find(|(t, _)| *t == ty) {
            Some((_, head)) => std::mem::replace(head, inst),
            None => {
                b.type_heads.push((ty, inst));
                NONE
            }
        };
        b.insts.push(Inst {
            ty,
            root,
            id,
            key_id: base.unwrap_or(id),
            until,
            filled_from: None,
            has_data: false,
            labels: 0,
            scope,
            group,
            prev_of_type,
            once_head: NONE,
        });
        inst
    }

    /// The id for key `name`: its UUIDv5, or with `|#n` added where another resource of this
    /// Bundle has it (and the key is `distinct`), with the id of the key without a suffix when
    /// one was added. `Err` is the resource of type `ty` that a `merge` key names already.
    fn claim_id(
        &self,
        b: &mut Build,
        mut name: String,
        merge: bool,
        ty: TypeId,
    ) -> Result<([u8; 36], Option<[u8; 36]>), u32> {
        let base_len = name.len();
        let mut n = 1;
        // The id of the key without a suffix: the suffixes it took are counted under it (an
        // id, not the sender's text, so no key of the sender's choosing picks the hash).
        let mut base = None;
        let id = loop {
            let id = value::id_of(&self.ns, &name);
            match b.by_id.get(&id) {
                None => break id,
                Some(&i) if merge && b.insts[i as usize].ty == ty => return Err(i),
                Some(_) => {
                    if base.is_none() {
                        n = b.suffixes.get(&id).copied().unwrap_or(1);
                        base = Some(id);
                    }
                    n += 1;
                    name.truncate(base_len);
                    let _ = write!(name, "|#{n}");
                }
            }
        };
        if let Some(base) = base {
            b.suffixes.insert(base, n);
        }
        Ok((id, base))
    }

    /// Points `from.path` at `to` (both the latest instances of their labels).
    fn link_ref(&self, walk: &Walk<'_>, b: &mut Build, from: usize, path: &Path, to: usize) {
        let latest = |label: usize| {
            let mut at = *b.head.get(label)?;
            while at != NONE {
                let x = &b.bindings[at as usize];
                if walk.visible(x.scope, x.group) {
                    return Some(x.inst);
                }
                at = x.prev;
            }
            None
        };
        let (Some(f), Some(t)) = (latest(from), latest(to)) else {
            return;
        };
        if f == t || b.is_closed(walk, f) || b.is_closed(walk, t) {
            return;
        }
        let root = b.insts[f as usize].root;
        // `link[1].other`: that one element. `result`: one entry per target, in creation order
        // (the target's index is the repetition).
        let rep = if path.steps.iter().any(|s| s.array && s.explicit) {
            0
        } else {
            t
        };
        self.point_at(b, Anchor::Node(root), path, rep, f, t);
    }

    /// Makes the Reference at `path` (from `anchor`, in resource `inst`) point at resource
    /// `target`, unless it already holds something: the first write wins, as for values.
    fn point_at(
        &self,
        b: &mut Build,
        anchor: Anchor,
        path: &Path,
        rep: u32,
        inst: u32,
        target: u32,
    ) {
        let model = self.plan.model;
        let node = {
            let a = leaf_anchor(model, b, anchor, path, rep);
            materialize(model, b, a)
        };
        let r = b.child(
            node,
            self.plan.known.reference_reference,
            1,
            0,
            1,
            false,
            inst,
        );
        let n = &mut b.nodes[r as usize];
        if n.val == Val::Obj && n.first == NONE {
            n.val = Val::Ref(target);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn segmap<'m>(
        &self,
        walk: &Walk<'m>,
        b: &mut Build,
        map: usize,
        anchor: Anchor,
        inst: u32,
        id: [u8; 3],
        fields: &[Field<'m>],
        used: &mut [bool],
    ) {
        let max_reps = self.plan.settings.max_repetitions;
        let map = &self.plan.maps[map];
        let guards = guard_values(
            map,
            &SegView {
                walk,
                id,
                fields,
                cur: None,
            },
        );
        let mut asked = Asked::default();
        for row in &map.rows {
            if row.guard.is_some_and(|g| !g.admits(&guards)) {
                continue;
            }
            match row.src {
                Src::Whole | Src::Comp { .. } => {
                    let view = SegView {
                        walk,
                        id,
                        fields,
                        cur: None,
                    };
                    if row
                        .cond
                        .as_ref()
                        .is_none_or(|c| asked.eval(row.shared_cond, (0, 0), c, &view))
                    {
                        b.cur_field = (id, 0);
                        self.action_at(walk, b, row, None, 0, anchor, inst, &view, 0, true);
                    }
                }
                Src::Field { field, comp, sub } => {
                    let Some(f) = fields.get(field as usize - 1).copied() else {
                        continue;
                    };
                    if f.is_empty() {
                        continue;
                    }
                    // Lines gathered into one text (a report's TX repetitions) make no element
                    // each: MAX_TEXT bounds them, and a long narrative is not cut at a count.
                    let gathers = matches!(
                        row.action,
                        Action::Copy {
                            xform: Xform::Lines,
                            ..
                        }
                    );
                    for (r, rep) in f.repetitions().enumerate() {
                        if r == max_reps && !gathers {
                            b.warn(format_args!(
                                "{}-{field}: repetitions beyond {max_reps} not mapped",
                                String::from_utf8_lossy(&id)
                            ));
                            break;
                        }
                        // HL7's `""` (delete the value) and a repetition of empty components
                        // hold nothing: no row fires on them, not even one that assigns a
                        // constant (`primarySource` false for an RXA-9 of `""`, a telecom `use`
                        // without a number).
                        if !valued(rep) {
                            continue;
                        }
                        let view = SegView {
                            walk,
                            id,
                            fields,
                            cur: Some((field, rep)),
                        };
                        let value = if comp == 0 {
                            Some((rep, Level::Rep))
                        } else {
                            nth_part(rep.components(), comp as usize).and_then(|c| {
                                if sub == 0 {
                                    Some((c, Level::Comp))
                                } else {
                                    nth_part(c.subcomponents(), sub as usize)
                                        .map(|s| (s, Level::Sub))
                                }
                            })
                        };
                        let valued = value.is_some_and(|(v, _)| valued(v));
                        if !valued && matches!(row.action, Action::Copy { .. } | Action::Ignore) {
                            continue;
                        }
                        let fire = match &row.cond {
                            Some(c) => asked.eval(row.shared_cond, (field, r as u32), c, &view),
                            None => valued,
                        };
                        if !fire {
                            continue;
                        }
                        if r > 0 && !row.repeats {
                            // A constant no repetition decided (an extension's url) loses
                            // nothing: the row that writes the value names the repetitions
                            // left. One whose condition reads the repetition (RXA-9's source
                            // code) does.
                            let constant = matches!(&row.action, Action::Assign { expr, .. } if !expr.reads_message());
                            if constant
                                && !row.cond.as_ref().is_some_and(|c| c.reads_field(id, field))
                            {
                                break;
                            }
                            b.warn(format_args!(
                                "{}-{field}: only the first repetition maps to {}",
                                String::from_utf8_lossy(&id),
                                self.plan.at(row.loc)
                            ));
                            break;
                        }
                        b.cur_field = (id, field);
                        let value = value.filter(|_| valued);
                        // An assignment counts when it wrote what it read from the message
                        // (`"<>"+OBX-5.2`): `action_at` says so.
                        if self
                            .action_at(walk, b, row, value, r as u32, anchor, inst, &view, 0, true)
                            && matches!(
                                row.action,
                                Action::Copy { .. } | Action::Ignore | Action::Assign { .. }
                            )
                        {
                            if let Some(u) = used.get_mut(field as usize) {
                                *u = true;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Applies a data-type map to `v` at `anchor`. Returns whether a row wrote something from
    /// the value (a value whose every part lost to what was there is then reported unmapped).
    #[allow(clippy::too_many_arguments)]
    fn dtmap<'m>(
        &self,
        walk: &Walk<'m>,
        b: &mut Build,
        map: usize,
        anchor: Anchor,
        inst: u32,
        v: Field<'m>,
        level: Level,
        depth: usize,
        typed: bool,
    ) -> bool {
        if depth > 8 {
            return false;
        }
        let mut wrote = false;
        let view = DtView::new(walk, v, level);
        let mut element = None;
        let map = &self.plan.maps[map];
        let guards = guard_values(map, &view);
        let mut asked = Asked::default();
        for row in &map.rows {
            if row.guard.is_some_and(|g| !g.admits(&guards)) {
                continue;
            }
            let value = match row.src {
                Src::Whole => Some((v, level)),
                Src::Comp { comp, sub } => view.comp(comp, sub),
                Src::Field { .. } => None,
            };
            let valued = value.is_some_and(|(f, _)| valued(f));
            if !valued && matches!(row.action, Action::Copy { .. }) {
                // Nothing to copy: the condition need not be asked.
                continue;
            }
            let fire = match &row.cond {
                Some(c) => asked.eval(row.shared_cond, (0, 0), c, &view),
                None => valued,
            };
            if !fire {
                continue;
            }
            let anchor = match anchor {
                // The element the map fills is made once for all its rows (not looked up among
                // its parent's children per row); left empty, the writer drops it.
                Anchor::Elem { .. } if row.path.sub == 1 => Anchor::Node(match element {
                    Some(n) => n,
                    None => {
                        let n = materialize(self.plan.model, b, anchor);
                        element = Some(n);
                        n
                    }
                }),
                Anchor::Elem {
                    parent,
                    elem,
                    slot,
                    rep,
                    ..
                } => Anchor::Elem {
                    parent,
                    elem,
                    slot,
                    rep,
                    sub: row.path.sub,
                },
                a => a,
            };
            wrote |= self.action_at(
                walk,
                b,
                row,
                value.filter(|_| valued),
                0,
                anchor,
                inst,
                &view,
                depth + 1,
                typed,
            );
        }
        wrote
    }

    /// Does what a row says with a value. Returns whether it wrote something from the message.
    #[allow(clippy::too_many_arguments)]
    fn action_at<'m>(
        &self,
        walk: &Walk<'m>,
        b: &mut Build,
        row: &Row,
        value: Option<(Field<'m>, Level)>,
        rep: u32,
        anchor: Anchor,
        inst: u32,
        env: &dyn Env,
        depth: usize,
        typed: bool,
    ) -> bool {
        let model = self.plan.model;
        let path = &row.path;
        match &row.action {
            Action::Assign { expr: x, decided } => {
                let Some(text) = x.eval(env) else {
                    return false;
                };
                let Some(prim) = model.prim(path.leaf) else {
                    return false;
                };
                let node = {
                    let a = leaf_anchor(model, b, anchor, path, rep);
                    materialize(model, b, a)
                };
                // A constant alone does not make a resource worth sending; a value read from
                // the message and written, or a constant its own value decided, counts as the
                // field mapped.
                self.write_prim(b, node, prim, &text, Xform::None, false)
                    && (x.reads_message() || *decided)
            }
            Action::Ignore => true,
            Action::Link(t) => {
                let Some(target) = b.latest(walk, *t) else {
                    return false;
                };
                if target == inst {
                    return false;
                }
                self.point_at(b, anchor, path, rep, inst, target);
                false
            }
            Action::Copy {
                map,
                vocab,
                xform,
                rest,
                fits,
            } => {
                // Inside a data-type map applied to a value of another type (ORC-4 sent as
                // EIP, whose first component is an EI of subcomponents), the component types
                // say nothing: each part is read as the map reads it.
                let rest = if typed { rest } else { &Rest::Chosen };
                let typed = typed && *fits;
                let Some((v, level)) = value else {
                    return false;
                };
                if let Some(t) = path.creates {
                    let Some(map) = *map else { return false };
                    let cm = self.plan.map(map);
                    let dv = DtView::new(walk, v, level);
                    let key = self.key(b, walk, t, &cm.id_source, &dv);
                    let (scope, group) = (
                        walk.seg_scope,
                        walk.stack.last().map(|f| f.group).unwrap_or(0),
                    );
                    let known = b.insts.len();
                    let new = self.create(b, t, key, &cm.name, scope, group, None);
                    let root = b.insts[new as usize].root;
                    let again = b.insts[new as usize]
                        .filled_from
                        .is_some_and(|((s, e), l)| {
                            l == level
                                && walk.msg.bytes().get(s as usize..e as usize) == Some(v.raw())
                        });
                    // The same practitioner or location named twice (PV1-7 and PV1-17) is one
                    // resource with one key, filled the first time: the same value again adds
                    // nothing; another (999999 for two doctors) adds what the first lacked and
                    // is named in a warning and listed as unmapped where it differs.
                    let fresh = new as usize >= known;
                    let used = if !fresh && again {
                        true
                    } else {
                        let lost = b.lost;
                        let mark = b.nodes.len();
                        let filled = self.dtmap(
                            walk,
                            b,
                            map,
                            Anchor::Node(root),
                            new,
                            v,
                            level,
                            depth,
                            typed,
                        );
                        if !b.insts[new as usize].has_data {
                            // A value whose parts the map does not read (a PPN with only its
                            // time, an XCN with only its assigning facility) made an empty
                            // resource, which is left out: the field is unmapped, not used,
                            // and the same value named again is no other value.
                            return false;
                        }
                        if fresh {
                            b.insts[new as usize].filled_from = Some((v.span(), level));
                        } else if b.lost > lost {
                            // Another value for it that differs where both have a value
                            // (`7^Roe^Bob^Q` after `7^Doc^Ann`) adds whole elements the first
                            // lacked, never parts of the first's: a name of two people is
                            // neither's. One that only adds (an NPI's system) adds. The loss
                            // already counted makes the field unmapped and warned.
                            b.keep_first_elements(new, mark);
                        }
                        fresh || (filled && b.lost == lost)
                    };
                    if !used {
                        b.warn(format_args!(
                            "{}: names the {} an earlier field named (same key) with other \
                             values; the first mention's are kept",
                            b.field_name(),
                            self.plan.model.ty(t).name
                        ));
                    }
                    // What the referenced resource holds came from this row's field: the
                    // resource that points at it carries that data too (an IN1 naming only its
                    // payor is a Coverage of that payor, not nothing).
                    if b.insts[new as usize].has_data {
                        b.insts[inst as usize].has_data = true;
                    }
                    self.point_at(b, anchor, path, rep, inst, new);
                    return used;
                }
                // Lines gather into one text, the repetitions of a field as its lines (in an
                // element that repeats, one element per repetition split a document and
                // left the later parts without the content type of the first).
                let rep = if *xform == Xform::Lines { 0 } else { rep };
                let leaf = leaf_anchor(model, b, anchor, path, rep);
                // A text component is read whole: an `&` the sender did not escape in it
                // (`Smith & Jones` in XON.1, `12&34` in CX.1) is text, as it is in a text
                // field, and what the resource's key already read. So is a code looked up.
                let whole = (*rest == Rest::Text && level == Level::Comp).then(|| walk.whole(v));
                if let Some(vi) = vocab {
                    let (code, system) = match &whole {
                        Some(t) => (t.clone(), Cow::Borrowed("")),
                        None => code_and_system(walk, v, level),
                    };
                    if let Some(t) =
                        self.plan.vocabs[*vi].lookup(value::trim(&code), value::trim(&system))
                    {
                        if let Some(prim) = model.prim(path.leaf) {
                            let node = materialize(model, b, leaf);
                            let text = if t.code.is_empty() { t.system } else { t.code };
                            return self.write_prim(b, node, prim, &text, *xform, true);
                        }
                        let k = &self.plan.known;
                        let mut node = materialize(model, b, leaf);
                        if path.leaf == k.codeable_concept {
                            node = b.child(node, k.cc_coding, 1, 0, 1, true, inst);
                        }
                        if path.leaf == k.codeable_concept || path.leaf == k.coding {
                            if !t.system.is_empty() {
                                let s = b.child(node, k.coding_system, 1, 0, 1, false, inst);
                                self.write_prim(b, s, Prim::Uri, &t.system, Xform::None, true);
                            }
                            let c = b.child(node, k.coding_code, 1, 0, 1, false, inst);
                            let wrote =
                                self.write_prim(b, c, Prim::Code, &t.code, Xform::None, true);
                            if !t.display.is_empty() {
                                let d = b.child(node, k.coding_display, 1, 0, 1, false, inst);
                                self.write_prim(b, d, Prim::String, t.display, Xform::None, true);
                            }
                            return wrote;
                        }
                    }
                }
                if let Some(m) = map {
                    return self.dtmap(walk, b, *m, leaf, inst, v, level, depth, typed);
                }
                if vocab.is_some_and(|vi| self.plan.vocabs[vi].drop_unknown) {
                    return false;
                }
                let Some(prim) = model.prim(path.leaf) else {
                    return false;
                };
                let (text, lost) = match whole {
                    Some(t) => (t, false),
                    // Without the empty parts a sender left at its end, as a condition read it:
                    // an NM `98&` that `IS NUMERIC` found to be 98 is written as 98.
                    None => (
                        walk.whole(first_part(v, level)),
                        (*xform == Xform::Lines || *rest == Rest::Named)
                            && later_parts_valued(v, level),
                    ),
                };
                if value::trim(&text).is_empty() {
                    return false;
                }
                if lost {
                    // Free text read as a field (mapped as lines), a code, an identifier or
                    // a number has no parts: a `^` or `&` in it is one the sender did not
                    // escape (`See note^call lab`), and what follows it is lost. (A row taking
                    // a composite's first part, PID-20's number without its state or
                    // OBR-32.1's CNN id, does so on purpose: `Rest::Chosen`.)
                    b.warn(format_args!(
                        "{}: what follows its first part (an unescaped ^ or &?) is not mapped",
                        b.field_name()
                    ));
                }
                let node = materialize(model, b, leaf);
                self.write_prim(b, node, prim, &text, *xform, true)
            }
        }
    }

    /// Writes a primitive; the first write to an element wins (default rows go last), except
    /// `lines`, which appends, and `override`, which replaces a value once: a TQ1's times
    /// replace SCH-11's, a second TQ1's do not replace the first one's (an Appointment has one
    /// start), and a value the element cannot take replaces nothing.
    fn write_prim(
        &self,
        b: &mut Build,
        node: u32,
        prim: Prim,
        text: &str,
        xform: Xform,
        data: bool,
    ) -> bool {
        let n = &b.nodes[node as usize];
        if xform == Xform::Override && n.first == NONE && !b.overridden.contains(&node) {
            let before = n.val;
            b.nodes[node as usize].val = Val::Obj;
            if self.write_value(b, node, prim, text, xform, data) {
                b.overridden.push(node);
                return true;
            }
            let n = &mut b.nodes[node as usize];
            if n.val == Val::Obj && n.first == NONE {
                n.val = before;
            }
            return false;
        }
        self.write_value(b, node, prim, text, xform, data)
    }

    fn write_value(
        &self,
        b: &mut Build,
        node: u32,
        prim: Prim,
        text: &str,
        xform: Xform,
        data: bool,
    ) -> bool {
        let n = &b.nodes[node as usize];
        let inst = n.inst;
        if n.val != Val::Obj || n.first != NONE {
            if xform == Xform::Lines {
                if let Val::Text(a, e) | Val::B64(a, e) = n.val {
                    let line = text.trim_end();
                    // A gathered text grows at the end of the arena: in place when it is the
                    // last thing written (a line costs its own length), else moved there once.
                    // Copied on every line, 8,000 lines of a 1 MB document took gigabytes.
                    let moved = if e as usize == b.text.len() { 0 } else { e - a };
                    if b.text.len() + moved as usize + line.len() + 1 > MAX_TEXT {
                        b.warn(format_args!(
                            "{}: lines beyond {MAX_TEXT} bytes of text not mapped",
                            b.field_name()
                        ));
                        return false;
                    }
                    let start = if moved == 0 {
                        a
                    } else {
                        let old = b.text[a as usize..e as usize].to_string();
                        let start = b.text.len() as u32;
                        b.text.push_str(&old);
                        start
                    };
                    let joint = b.text.len();
                    b.text.push('\n');
                    let b64 = matches!(n.val, Val::B64(..));
                    // Base64 is written from bytes: the text as it is.
                    let replaced = if b64 {
                        b.text.push_str(line);
                        false
                    } else {
                        value::push_text(line, &mut b.text)
                    };
                    // The line as written (white space normalized), with the tag the line
                    // before left open (`<details open` then `ontoggle=…>`): markup the check
                    // would refuse is left out here, not the whole Bundle. Reading back one
                    // line keeps a document of many lines linear.
                    if !b64 {
                        let prev = b.text[start as usize..joint]
                            .rfind('\n')
                            .map_or(start as usize, |i| start as usize + i + 1);
                        let open = b.text[prev..joint]
                            .rfind('<')
                            .filter(|&i| !b.text[prev + i..joint].contains('>'))
                            .map_or(joint, |i| prev + i);
                        if active_text(prim, &b.text[open..]) {
                            b.text.truncate(joint);
                            b.warn(format_args!(
                                "{}: a line a browser would run or load as HTML: not mapped",
                                b.field_name()
                            ));
                            return false;
                        }
                    }
                    let end = b.text.len() as u32;
                    b.nodes[node as usize].val = if b64 {
                        Val::B64(start, end)
                    } else {
                        Val::Text(start, end)
                    };
                    if replaced {
                        b.warn(format_args!(
                            "{}: control characters replaced with U+FFFD",
                            b.field_name()
                        ));
                    }
                    return true;
                }
            }
            // The same value again (PV1-7 and PV1-17 naming one doctor) is no value lost.
            if let Val::Text(a, e) = n.val {
                if b.text[a as usize..e as usize] == *value::trim(text) {
                    return true;
                }
            }
            b.lost += 1;
            return false;
        }
        let elem = self.plan.model.elem(n.elem);
        let start = b.text.len();
        let t = value::trim(text);
        let zone = self.plan.settings.default_timezone.as_ref();
        let res: Result<Val, &'static str> = match prim {
            Prim::Boolean => value::parse_bool(t)
                .map(Val::Bool)
                .ok_or("not a yes/no value"),
            Prim::Integer | Prim::PositiveInt | Prim::UnsignedInt => {
                let k = match prim {
                    Prim::Integer => IntKind::Integer,
                    Prim::PositiveInt => IntKind::Positive,
                    _ => IntKind::Unsigned,
                };
                value::write_integer(t, k, &mut b.text).map(|_| Val::Num(0, 0))
            }
            Prim::Decimal => value::write_decimal(t, &mut b.text).map(|_| Val::Num(0, 0)),
            Prim::Date | Prim::DateTime | Prim::Instant => {
                let k = match prim {
                    Prim::Date => TimeKind::Date,
                    Prim::DateTime => TimeKind::DateTime,
                    _ => TimeKind::Instant,
                };
                match value::write_time(t, k, zone, &mut b.text) {
                    Ok(Converted::TimeDropped) => {
                        b.warn(format_args!(
                            "{}: time of day dropped (no time zone given or configured)",
                            b.field_name()
                        ));
                        Ok(Val::Text(0, 0))
                    }
                    Ok(Converted::TimeAmbiguous) => {
                        b.warn(format_args!(
                            "{}: time of day dropped (the configured zone gives it no one offset \
                             in minutes: its clocks skip or repeat it, or its offset then had \
                             seconds)",
                            b.field_name()
                        ));
                        Ok(Val::Text(0, 0))
                    }
                    Ok(_) => Ok(Val::Text(0, 0)),
                    Err(e) => Err(e),
                }
            }
            Prim::Time => value::write_tm(t, &mut b.text).map(|_| Val::Text(0, 0)),
            Prim::Code => {
                value::normalize_code(t, &mut b.text);
                match elem.refuses_code(&mut b.text[start..]) {
                    None => Ok(Val::Text(0, 0)),
                    Some(refused @ CodeRefused::Form(CodeForm::MediaType)) => {
                        // Said to be bytes of no known type, not left out: an Attachment with
                        // data needs a type (att-1), and the Bundle would fail without one.
                        b.text.truncate(start);
                        b.text.push_str("application/octet-stream");
                        b.warn(format_args!(
                            "{}: {}: written as application/octet-stream",
                            b.field_name(),
                            refused.problem()
                        ));
                        Ok(Val::Text(0, 0))
                    }
                    Some(refused) => Err(refused.problem()),
                }
            }
            Prim::Id => {
                if !t.is_empty()
                    && t.len() <= 64
                    && t.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
                {
                    b.text.push_str(t);
                    Ok(Val::Text(0, 0))
                } else {
                    Err("not a FHIR id")
                }
            }
            Prim::Base64Binary => match xform {
                Xform::Base64 | Xform::Lines => {
                    b.text.push_str(text.trim_end());
                    Ok(Val::B64(0, 0))
                }
                Xform::HexBase64 => match hex::decode(t) {
                    Ok(bytes) => {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut b.text);
                        Ok(Val::Text(0, 0))
                    }
                    Err(_) => Err("not hexadecimal"),
                },
                Xform::None | Xform::Override => {
                    // The validator's reading (padding only at the end: `AB==AB==` is not
                    // base64), so that what is written here the check accepts.
                    if !t.is_empty() && crate::fhir::validate::primitive::base64_len(t).is_some() {
                        b.text
                            .extend(t.chars().filter(|c| !c.is_ascii_whitespace()));
                        Ok(Val::Text(0, 0))
                    } else {
                        Err("not base64")
                    }
                }
            },
            // Narrative: what the output check refuses (not a `div` in the XHTML namespace,
            // scripts, elements outside R4's txt-1) is left out, and the Narrative with it
            // (its div is required), rather than costing the message its whole Bundle.
            Prim::Xhtml => match crate::fhir::validate::check_xhtml(t) {
                Ok(()) => {
                    b.text.push_str(t);
                    Ok(Val::Text(0, 0))
                }
                Err(_) => Err("not narrative XHTML (a div in the XHTML namespace, FHIR R4 txt-1)"),
            },
            Prim::Uri | Prim::Url | Prim::Canonical | Prim::Oid | Prim::Uuid => {
                match value::uri_problem(t) {
                    None => {
                        b.text.push_str(t);
                        Ok(Val::Text(0, 0))
                    }
                    Some(e) => Err(e),
                }
            }
            _ => {
                let t = if xform == Xform::Lines {
                    text.trim_end()
                } else {
                    t
                };
                let (replaced, scan) = value::push_text_scanned(t, &mut b.text);
                // What the output check refuses is left out here, with a warning, rather
                // than costing the message its whole Bundle: text a browser would run as HTML
                // (`<img src=x>`, an event handler), an HTML tag in markdown.
                if scan.has(Scan::MARKUP) && active_text(prim, &b.text[start..]) {
                    Err("text a browser would run or load as HTML")
                } else {
                    if replaced {
                        b.warn(format_args!(
                            "{}: control characters replaced with U+FFFD",
                            b.field_name()
                        ));
                    }
                    Ok(Val::Text(0, 0))
                }
            }
        };
        let end = b.text.len() as u32;
        match res {
            Ok(v) => {
                if end as usize == start && !matches!(v, Val::Bool(_)) {
                    return false;
                }
                if let Some(why) = self.out_of_order(b, node, prim, start) {
                    b.text.truncate(start);
                    b.warn(format_args!("{}: {why}: not mapped", b.field_name()));
                    return false;
                }
                let s = start as u32;
                b.nodes[node as usize].val = match v {
                    Val::Text(..) => Val::Text(s, end),
                    Val::Num(..) => Val::Num(s, end),
                    Val::B64(..) => Val::B64(s, end),
                    other => other,
                };
                if data {
                    b.insts[inst as usize].has_data = true;
                }
                true
            }
            Err(e) => {
                b.text.truncate(start);
                b.warn(format_args!("{}: {e}", b.field_name()));
                false
            }
        }
    }
}

impl Mapper<'_> {
    /// Whether the value just written at `b.text[from..]` for `node`, a Period's start or end,
    /// would put that period out of order (R4 per-1: a discharge before the admission; a date
    /// and a time of that same day, which cannot be ordered), against the other one, written
    /// earlier by another field. Such a Bundle failed its check, and the message got no FHIR. (A Range's order, rng-2, is
    /// settled when the Bundle is written: both of its bounds come from one value.)
    fn out_of_order(&self, b: &Build, node: u32, prim: Prim, from: usize) -> Option<&'static str> {
        if !matches!(prim, Prim::Date | Prim::DateTime | Prim::Instant) {
            return None;
        }
        let k = &self.plan.known;
        let n = &b.nodes[node as usize];
        let (is_start, other) = if n.elem == k.period_start {
            (true, k.period_end)
        } else if n.elem == k.period_end {
            (false, k.period_start)
        } else {
            return None;
        };
        if n.parent == NONE {
            return None;
        }
        let that = b.value_text(b.child_of(n.parent, other)?)?;
        let this = &b.text[from..];
        // The walk's reading of per-1, so that what is written here is what the check shows.
        let ordered = if is_start {
            period_ordered(this, that)
        } else {
            period_ordered(that, this)
        };
        (!ordered).then_some("the period would end before it starts (R4 per-1)")
    }
}

/// CWE-like code and coding system (components 1 and 3) of a value.
fn code_and_system<'m>(
    walk: &Walk<'m>,
    v: Field<'m>,
    level: Level,
) -> (Cow<'m, str>, Cow<'m, str>) {
    match level {
        Level::Sub => (walk.text(v), Cow::Borrowed("")),
        Level::Rep => {
            let mut it = v.components();
            let c1 = it.next().map(|f| walk.text(f)).unwrap_or_default();
            let c3 = it.nth(1).map(|f| walk.text(f)).unwrap_or_default();
            (c1, c3)
        }
        Level::Comp => {
            let mut it = v.subcomponents();
            let c1 = it.next().map(|f| walk.text(f)).unwrap_or_default();
            let c3 = it.nth(1).map(|f| walk.text(f)).unwrap_or_default();
            (c1, c3)
        }
    }
}

/// Pushes `[(group, member)]` from `g` (starting at member `start`) down to the member for `id`
/// onto `path`, and says whether it found one (`path` is as it was when not). A group is only
/// entered at a segment that may begin it: one preceded by optional members only (a ROL cannot
/// open a PROCEDURE group whose PR1 is required).
fn find(
    groups: &[super::plan::Group],
    g: usize,
    start: usize,
    id: &[u8; 3],
    entering: bool,
    path: &mut Vec<(usize, usize)>,
) -> bool {
    for (i, m) in groups[g].members.iter().enumerate().skip(start) {
        match m {
            Member::Seg { id: s, .. } if s == id => {
                path.push((g, i));
                return true;
            }
            Member::Seg { optional, .. } => {
                if entering && !optional {
                    return false;
                }
            }
            Member::Group(c) => {
                path.push((g, i));
                if find(groups, *c, 0, id, true, path) {
                    return true;
                }
                path.pop();
            }
        }
    }
    false
}

/// Whether text for a string or markdown element is what the output check refuses (as
/// `fhir::validate::element` reads it): markup a browser would run or load in a string, an HTML
/// tag in markdown. Both need a `<` or a `:` (`Scan::MARKUP`), which most values lack.
fn active_text(prim: Prim, s: &str) -> bool {
    use crate::fhir::validate::primitive::{has_html_tag, looks_like_active_html};
    match prim {
        Prim::String => looks_like_active_html(s),
        Prim::Markdown => has_html_tag(s),
        _ => false,
    }
}

/// The anchor of a path's leaf: every step but the last made, the last as an element to make.
/// The first repeating step takes repetition `rep` (one element per source repetition).
fn leaf_anchor(model: &Model, b: &mut Build, anchor: Anchor, path: &Path, rep: u32) -> Anchor {
    let (mut cur, mut rep_pending) = match anchor {
        Anchor::Node(n) => (n, true),
        Anchor::Elem { .. } if path.steps.is_empty() => {
            return match anchor {
                Anchor::Elem {
                    parent,
                    elem,
                    slot,
                    rep: r,
                    ..
                } => Anchor::Elem {
                    parent,
                    elem,
                    slot,
                    rep: r,
                    sub: path.sub,
                },
                a => a,
            }
        }
        a @ Anchor::Elem { .. } => (materialize(model, b, a), false),
    };
    let Some((last, init)) = path.steps.split_last() else {
        return Anchor::Node(cur);
    };
    let inst = b.nodes[cur as usize].inst;
    for s in init {
        let r = if s.array && rep_pending {
            rep_pending = false;
            rep
        } else {
            0
        };
        cur = b.child(cur, s.elem, s.slot, r, 1, s.array, inst);
    }
    let r = if last.array && rep_pending { rep } else { 0 };
    Anchor::Elem {
        parent: cur,
        elem: last.elem,
        slot: last.slot,
        rep: r,
        sub: 1,
    }
}

/// The node an anchor stands for, made when missing (in the resource of its parent).
fn materialize(model: &Model, b: &mut Build, a: Anchor) -> u32 {
    match a {
        Anchor::Node(n) => n,
        Anchor::Elem {
            parent,
            elem,
            slot,
            rep,
            sub,
        } => {
            let array = model.elem(elem).array;
            let inst = b.nodes[parent as usize].inst;
            b.child(parent, elem, slot, rep, sub, array, inst)
        }
    }
}

impl Build {
    /// Takes back what was written, since node `mark`, inside the elements resource `inst`
    /// already had (a middle name added to another value's name): each such node is left
    /// without a value, so it is not written. Whole elements added beside them stay. Returns
    /// whether anything was taken back.
    fn keep_first_elements(&mut self, inst: u32, mark: usize) -> bool {
        let root = self.insts[inst as usize].root;
        let mut taken = false;
        for c in mark..self.nodes.len() {
            let n = &self.nodes[c];
            let p = n.parent;
            if n.inst != inst || p == NONE || p == root || p as usize >= mark {
                continue;
            }
            // An element the first left empty is the second's to fill.
            if !self.held_before(p, mark) {
                continue;
            }
            taken |= self.holds_value(c as u32);
            self.empty(c as u32);
        }
        taken
    }

    /// Whether node `n` or a node under it made before node `mark` holds a value.
    fn held_before(&self, n: u32, mark: usize) -> bool {
        let mut todo = vec![n];
        while let Some(c) = todo.pop() {
            let node = &self.nodes[c as usize];
            if node.val != Val::Obj {
                return true;
            }
            let mut k = node.first;
            while k != NONE {
                if (k as usize) < mark {
                    todo.push(k);
                }
                k = self.nodes[k as usize].next;
            }
        }
        false
    }

    /// Whether node `n` or a node under it holds a value.
    pub fn holds_value(&self, n: u32) -> bool {
        self.held_before(n, self.nodes.len())
    }

    /// Makes node `n` and what is under it objects without values: not live, so not written.
    pub fn empty(&mut self, n: u32) {
        self.nodes[n as usize].val = Val::Obj;
        let mut todo = vec![self.nodes[n as usize].first];
        while let Some(c) = todo.pop() {
            if c == NONE {
                continue;
            }
            let node = &mut self.nodes[c as usize];
            node.val = Val::Obj;
            todo.push(node.first);
            todo.push(node.next);
        }
    }

    /// Records that `label` stands for `inst` in `scope`.
    fn bind(&mut self, label: usize, inst: u32, scope: u32, group: usize) {
        if self.head.len() <= label {
            self.head.resize(label + 1, NONE);
            self.open_head.resize(label + 1, NONE);
        }
        let at = self.bindings.len() as u32;
        self.bindings.push(Binding {
            inst,
            scope,
            group,
            prev: self.head[label],
            prev_open: self.open_head[label],
        });
        self.head[label] = at;
        self.open_head[label] = at;
    }

    /// The number of the segment with id `id` that first mapped into `inst` where one belongs.
    fn once_into_of(&self, inst: u32, id: [u8; 3]) -> Option<u32> {
        let mut at = self.insts[inst as usize].once_head;
        while at != NONE {
            let (s, n, prev) = self.once_into[at as usize];
            if s == id {
                return Some(n);
            }
            at = prev;
        }
        None
    }

    /// The latest resource of type `ty` the segment being mapped can see.
    fn latest(&self, walk: &Walk<'_>, ty: TypeId) -> Option<u32> {
        let mut at = self.type_heads.iter().find(|(t, _)| *t == ty)?.1;
        while at != NONE {
            let x = &self.insts[at as usize];
            if walk.visible(x.scope, x.group) {
                return Some(at);
            }
            at = x.prev_of_type;
        }
        None
    }

    /// Whether `inst` is closed to the segment being mapped ([`Build::closed`]).
    fn is_closed(&self, walk: &Walk<'_>, inst: u32) -> bool {
        self.closed
            .get(&inst)
            .is_some_and(|scopes| scopes.iter().any(|&s| walk.is_open(s)))
    }

    /// Adds a warning, once.
    pub(super) fn warn(&mut self, args: std::fmt::Arguments<'_>) {
        let s = args.to_string();
        if !self.warnings.contains(&s) {
            self.warnings.push(s);
        }
    }

    fn field_name(&self) -> String {
        let (id, f) = self.cur_field;
        if f == 0 {
            String::from_utf8_lossy(&id).into_owned()
        } else {
            format!("{}-{f}", String::from_utf8_lossy(&id))
        }
    }

    /// The first child of `parent` that is an `elem`.
    pub fn child_of(&self, parent: u32, elem: ElemId) -> Option<u32> {
        let mut c = self.nodes[parent as usize].first;
        while c != NONE {
            let n = &self.nodes[c as usize];
            if n.elem == elem {
                return Some(c);
            }
            c = n.next;
        }
        None
    }

    /// A new last child of `parent`, an object until its value is set (for what the writer
    /// adds after the rows ran: an Appointment's end from its start and duration).
    pub fn append_child(&mut self, parent: u32, elem: ElemId, inst: u32) -> u32 {
        let last = self.nodes[parent as usize].last;
        self.push_child(parent, last, elem, (0, 0, 0), inst)
    }

    /// Whether an `override` row wrote node `n` (a TQ1's time that replaced SCH-11's).
    pub fn was_overridden(&self, n: u32) -> bool {
        self.overridden.contains(&n)
    }

    /// The value of bound `elem` (`range_low`, `range_high`) of the Range node `range`: `None`
    /// when it has none, `Some(None)` when its value is no number.
    pub fn range_bound(&self, k: &Known, range: u32, elem: ElemId) -> Option<Option<f64>> {
        let v = self.child_of(self.child_of(range, elem)?, k.quantity_value)?;
        Some(self.value_text(v).and_then(|t| t.parse::<f64>().ok()))
    }

    /// The text of a node holding a string or number.
    pub fn value_text(&self, node: u32) -> Option<&str> {
        match self.nodes[node as usize].val {
            Val::Text(a, e) | Val::Num(a, e) => Some(&self.text[a as usize..e as usize]),
            _ => None,
        }
    }

    fn unmapped_segment(&mut self, id: &[u8; 3]) {
        // A segment id is three ASCII letters or digits (the tokenizer refuses others).
        if self.unmapped_keys.insert((*id, 0)) {
            self.unmapped.push(String::from_utf8_lossy(id).into_owned());
        }
    }

    /// Lists field `n` of segment `id`, a [`valued`] field no row used (`""`, HL7's explicit
    /// null, says "delete", which is data, but there is nothing to map), unless its text is
    /// blank once decoded.
    fn unmapped_field(&mut self, id: &[u8; 3], n: usize, walk: &Walk<'_>, f: Field<'_>) {
        if self.unmapped_keys.contains(&(*id, n)) {
            return;
        }
        if value::trim(&walk.text(f)).is_empty() {
            return;
        }
        self.unmapped_keys.insert((*id, n));
        let mut s = String::with_capacity(8);
        s.extend(id.iter().map(|&c| c as char));
        s.push('-');
        value::push_int(&mut s, n as i64);
        self.unmapped.push(s);
    }

    /// The child of `parent` for (elem, slot, rep, sub), made when missing. Elements that do not
    /// repeat have one child whatever the slot.
    #[allow(clippy::too_many_arguments)]
    fn child(
        &mut self,
        parent: u32,
        elem: ElemId,
        slot: u16,
        rep: u32,
        sub: u16,
        array: bool,
        inst: u32,
    ) -> u32 {
        let (slot, rep, sub) = if array { (slot, rep, sub) } else { (1, 0, 1) };
        let key = (slot, rep, sub);
        let fast = self.place_at_end(parent, elem, key);
        debug_assert!(fast.is_none_or(|p| p == self.place(parent, elem, key)));
        match fast.unwrap_or_else(|| self.place(parent, elem, key)) {
            Place::Existing(c) => c,
            Place::After(after) => self.push_child(parent, after, elem, key, inst),
        }
    }

    /// Where the child (elem, key) of `parent` is, or goes. Children stay in the order they are
    /// written: elements in order of first appearance, the entries of one element by slot,
    /// source repetition and instance. Keeping that order on insertion spares the writer a sort
    /// per object.
    fn place(&self, parent: u32, elem: ElemId, key: (u16, u32, u16)) -> Place {
        let mut prev = NONE;
        let mut before_group = NONE;
        let mut seen = false;
        let mut last_less = NONE;
        let mut c = self.nodes[parent as usize].first;
        while c != NONE {
            let n = &self.nodes[c as usize];
            if n.elem == elem {
                let k = (n.slot, n.rep, n.sub);
                if k == key {
                    return Place::Existing(c);
                }
                if !seen {
                    seen = true;
                    before_group = prev;
                }
                if k < key {
                    last_less = c;
                }
            }
            prev = c;
            c = n.next;
        }
        Place::After(if last_less != NONE {
            last_less
        } else if seen {
            before_group
        } else {
            self.nodes[parent as usize].last
        })
    }

    /// [`Build::place`] without a scan when the last child settles it. An element's entries are
    /// contiguous and ascending by key, so when the last child is of this element, the same key
    /// is that child and a greater one goes after it (most writes: repetitions and components
    /// in order). `None`: scan.
    fn place_at_end(&self, parent: u32, elem: ElemId, key: (u16, u32, u16)) -> Option<Place> {
        let last = self.nodes[parent as usize].last;
        let n = self.nodes.get(last as usize).filter(|n| n.elem == elem)?;
        match (n.slot, n.rep, n.sub).cmp(&key) {
            std::cmp::Ordering::Equal => Some(Place::Existing(last)),
            std::cmp::Ordering::Less => Some(Place::After(last)),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// A new child of `parent` for (elem, key), linked in after the child `after` (first when
    /// `NONE`).
    fn push_child(
        &mut self,
        parent: u32,
        after: u32,
        elem: ElemId,
        (slot, rep, sub): (u16, u32, u16),
        inst: u32,
    ) -> u32 {
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            elem,
            slot,
            sub,
            rep,
            parent,
            first: NONE,
            last: NONE,
            next: NONE,
            inst,
            val: Val::Obj,
        });
        if after == NONE {
            let p = &mut self.nodes[parent as usize];
            let old = p.first;
            p.first = id;
            if p.last == NONE {
                p.last = id;
            }
            self.nodes[id as usize].next = old;
        } else {
            let next = self.nodes[after as usize].next;
            self.nodes[after as usize].next = id;
            self.nodes[id as usize].next = next;
            let p = &mut self.nodes[parent as usize];
            if p.last == after {
                p.last = id;
            }
        }
        id
    }
}
