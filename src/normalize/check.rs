//! Shows a Bundle the writer builds to be valid FHIR R4 without parsing it back: what the full
//! check (parse, then walk against the R4 schema) would look up per value is settled here once
//! per process, per element of the model; what depends on the message is asked of the
//! validator's own rules, key by key and value by value, as `emit` writes them (no second pass
//! over the arena).
//!
//! The answer is one-sided. `Ok` means the full check would accept these bytes; `Err` names
//! the first rule not shown, and the caller then runs the full check, which decides (and names
//! paths). So a case this module does not cover costs time, never validity. A differential
//! test (`tests/normalize.rs`) and a fuzz target hold `Ok` to that promise.
//!
//! What the writer guarantees by its form, and so is not asked per message: keys come from the
//! model (a test holds every element of it to the schema's name and arity), strings are
//! escaped, `fullUrl` and `request.url` are made from the resource's own type and id, ids are
//! UUIDs by their form (`value::format_uuid` writes every one; a test holds its output to the
//! rule), and a reference is written only to a resource that is sent (`emit::liveness`).

use std::sync::OnceLock;

use crate::fhir::validate::element::{Element, ObjectKind, Rules};
use crate::fhir::validate::invariant::{self, Decides, Holds};
use crate::fhir::validate::primitive::Scan;
use crate::fhir::validate::MAX_DEPTH;

use super::engine::{Build, Node, Val, NONE};
use super::model::{ElemId, Model, TypeId};
use super::plan::Plan;
use super::Link;

/// What the model's types and elements are to the schema, resolved once per process.
struct Table {
    /// Per element id: its rules, or `None` where the schema has no such element with that
    /// arity, or where only the full walk checks it (resources, XHTML).
    elems: Vec<Option<Element>>,
    /// Per element id: the type it belongs to (a child must be an element of its parent's type).
    owner: Vec<TypeId>,
    /// Per element id: what the object rules need of its name and arity, as bits (`WRITER_KEY`…),
    /// so the pass reads a byte, not the element's definition.
    flags: Vec<u8>,
    /// Per element id: its place among its type's elements (by id), the bit [`Object`] sets
    /// when its key is written.
    rank: Vec<u16>,
    /// Per type id: the complex type with its rules, or `None` for primitives.
    types: Vec<Option<TypeFacts>>,
    /// Elements whose values the object rules read.
    period_start: ElemId,
    period_end: ElemId,
    attachment_data: ElemId,
    attachment_size: ElemId,
    attachment_url: ElemId,
    extension_extension: ElemId,
    /// `Reference.display`, where the writer puts the Provenance's own text.
    reference_display: Option<Element>,
}

struct TypeFacts {
    kind: ObjectKind,
    resource: bool,
    /// Per element the type requires: the ranks of the elements that meet it (`status`,
    /// `_status`; for a choice, every `valueX`). An empty group is never met, so such objects
    /// go to the walk.
    required: Vec<Vec<u16>>,
    /// More elements than an [`Object`]'s bits hold: its objects go to the walk.
    wide: bool,
    /// The type's invariants as key bits (`invariant`).
    invariants: Vec<Invariant>,
    /// Per choice element of the type (`deceased[x]`), the key bits of all its types, and of
    /// each (a type's `name` and `_name`): the keys written of the choice are one type's.
    choices: Vec<(KeyBits, Vec<KeyBits>)>,
}

/// An invariant of `fhir::validate::invariant` as the check reads it, by element ranks.
enum Invariant {
    /// A [`invariant::PRESENCE`] rule: the ranks that are its first and its second element.
    Presence(Holds, Vec<u16>, Vec<u16>),
    /// Shown by the walk alone when every group has an element written (rules on values).
    WalkIf(Vec<Vec<u16>>),
    /// Shown by the walk alone unless every group has an element written (`app-3` holds for
    /// any status once start and end are there; `ait-1` once clinicalStatus is).
    WalkUnless(Vec<Vec<u16>>),
    /// `rng-2`, compared on the values written.
    RangeOrder,
}

/// Words of an [`Object`]'s key bits: types of up to 512 elements (R4's largest,
/// ElementDefinition, has fewer than 350 with the primitives' `_name` elements).
const WRITTEN_WORDS: usize = 8;

/// Key bits of an object's elements, by their rank in the type.
type KeyBits = [u64; WRITTEN_WORDS];

/// Named like a key the writer puts on every resource itself (`id`, `meta`, `resourceType`).
const WRITER_KEY: u8 = 2;
/// A `value[x]` choice (for `ext-1`).
const VALUE_CHOICE: u8 = 4;
/// Named `extension` (whatever type owns it).
const EXTENSION: u8 = 8;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| build_table(Model::r4(), Rules::shared()))
}

fn build_table(m: &Model, rules: Rules) -> Table {
    let mut elems = vec![None; m.elem_count()];
    let mut owner = vec![TypeId::MAX; m.elem_count()];
    let mut flags = vec![0u8; m.elem_count()];
    let mut rank = vec![u16::MAX; m.elem_count()];
    let mut types = Vec::with_capacity(m.type_count());
    for t in 0..m.type_count() as TypeId {
        let def = m.ty(t);
        let Some(ty) = rules.object_type(&def.name) else {
            types.push(None);
            continue;
        };
        let mut own: Vec<ElemId> = m.elems_of(t).collect();
        own.sort_unstable();
        let wide = own.len() > WRITTEN_WORDS * 64;
        for (r, &e) in own.iter().enumerate() {
            rank[e as usize] = u16::try_from(r).unwrap_or(u16::MAX);
        }
        for e in m.elems_of(t) {
            let d = m.elem(e);
            elems[e as usize] = rules.element(ty, &d.name, d.array);
            owner[e as usize] = t;
            let bit = |on: bool, bit: u8| if on { bit } else { 0 };
            flags[e as usize] = bit(
                matches!(d.name.as_str(), "id" | "meta" | "resourceType"),
                WRITER_KEY,
            ) | bit(Rules::is_value_choice(&d.name), VALUE_CHOICE)
                | bit(d.name == "extension", EXTENSION);
        }
        let mut required: Vec<Vec<u16>> = rules
            .required(ty)
            // The writer puts a resource's type itself.
            .filter(|(name, _)| *name != "resourceType")
            .map(|(name, underscore)| {
                m.elems_of(t)
                    .filter(|&e| meets(&m.elem(e).name, name, underscore))
                    .map(|e| rank[e as usize])
                    .collect()
            })
            .collect();
        for (_, names, _) in invariant::ONE_OF
            .iter()
            .filter(|(owner, _, _)| *owner == def.name)
        {
            required.push(
                m.elems_of(t)
                    .filter(|&e| names.contains(&m.elem(e).name.as_str()))
                    .map(|e| rank[e as usize])
                    .collect(),
            );
        }
        let ranks = |want: &str| -> Vec<u16> {
            m.elems_of(t)
                .filter(|&e| invariant::names(&m.elem(e).name, want))
                .map(|e| rank[e as usize])
                .collect()
        };
        let groups = |names: &[&str]| names.iter().map(|n| ranks(n)).collect::<Vec<_>>();
        let mut invariants: Vec<Invariant> = invariant::PRESENCE
            .iter()
            .filter(|r| r.ty == def.name)
            .map(|r| Invariant::Presence(r.holds, ranks(r.first), ranks(r.second)))
            .collect();
        invariants.extend(
            invariant::WALK_DECIDES
                .iter()
                .filter(|(owner, _)| *owner == def.name)
                .map(|(_, d)| match d {
                    Decides::If(names) => Invariant::WalkIf(groups(names)),
                    Decides::Unless(names) => Invariant::WalkUnless(groups(names)),
                }),
        );
        if def.name == "Range" {
            invariants.push(Invariant::RangeOrder);
        }
        // Per choice, per type (its name without `_`), the key bits.
        let mut choices: Vec<(u32, Vec<(&str, KeyBits)>)> = Vec::new();
        for e in m.elems_of(t).filter(|&e| m.elem(e).choice != 0) {
            let (c, name) = (m.elem(e).choice, m.elem(e).name.trim_start_matches('_'));
            let at = match choices.iter().position(|(k, _)| *k == c) {
                Some(at) => at,
                None => {
                    choices.push((c, Vec::new()));
                    choices.len() - 1
                }
            };
            let types = &mut choices[at].1;
            let ty_at = match types.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    types.push((name, [0; WRITTEN_WORDS]));
                    types.len() - 1
                }
            };
            let (word, bit) = key_bit(rank[e as usize]);
            if let Some(w) = types[ty_at].1.get_mut(word) {
                *w |= bit;
            }
        }
        types.push(Some(TypeFacts {
            kind: rules.kind(ty),
            resource: m.is_resource(t) && rules.is_plain_resource_type(&def.name),
            required,
            wide,
            invariants,
            choices: choices
                .into_iter()
                .map(|(_, types)| {
                    let mut all = [0; WRITTEN_WORDS];
                    for (_, mask) in &types {
                        all.iter_mut().zip(mask).for_each(|(a, m)| *a |= m);
                    }
                    (all, types.into_iter().map(|(_, mask)| mask).collect())
                })
                .collect(),
        }));
    }
    let id = |t: &str, e: &str| {
        m.type_id(t)
            .and_then(|t| m.child(t, e))
            .unwrap_or(ElemId::MAX)
    };
    Table {
        elems,
        owner,
        flags,
        rank,
        types,
        period_start: id("Period", "start"),
        period_end: id("Period", "end"),
        attachment_data: id("Attachment", "data"),
        attachment_size: id("Attachment", "size"),
        attachment_url: id("Attachment", "url"),
        extension_extension: id("Extension", "extension"),
        reference_display: rules
            .object_type("Reference")
            .and_then(|r| rules.element(r, "display", false)),
    }
}

/// Whether an object of type `ty` whose children's elements are `kids` meets every element R4
/// requires of it, as the check and the walk read them: a primitive by its `_name` too, a
/// choice by any of its types. The mapper leaves out what does not, so that it never writes
/// what the check refuses. Types the check does not know (primitives) require nothing. The
/// children are read only for the few types that require something, once, as the key bits an
/// [`Object`] keeps (no type is wider than they are: a test holds the model to that).
pub fn meets_required(ty: TypeId, kids: impl Iterator<Item = ElemId>) -> bool {
    let t = table();
    let Some(Some(facts)) = t.types.get(ty as usize) else {
        return true;
    };
    if facts.required.is_empty() {
        return true;
    }
    let mut written = [0u64; WRITTEN_WORDS];
    for e in kids {
        let (word, bit) = key_bit(t.rank[e as usize]);
        if let Some(w) = written.get_mut(word) {
            *w |= bit;
        }
    }
    let has = |rank: u16| {
        let (word, bit) = key_bit(rank);
        written.get(word).is_some_and(|w| w & bit != 0)
    };
    facts.required.iter().all(|g| g.iter().any(|&r| has(r)))
}

/// Whether an element named `have` meets the requirement `want` (`status`, `value[x]`), as
/// the walk reads its required lists: the primitive's `_name` counts too where `underscore`.
fn meets(have: &str, want: &str, underscore: bool) -> bool {
    let have = match have.strip_prefix('_') {
        Some(h) if underscore => h,
        Some(_) => return false,
        None => have,
    };
    match want.strip_suffix("[x]") {
        Some(prefix) => have
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())),
        None => have == want,
    }
}

/// JSON levels above a resource's own object: the Bundle, `entry`, the entry, `resource`.
const LEVELS_ABOVE_RESOURCE: usize = 4;

/// What every Bundle of `plan` holds that the plan alone writes: the Provenance agent's text,
/// the mapping-set version, the security label codes. Shown once, when the plan is loaded;
/// `Err` sends every Bundle of the plan to the walk.
pub fn plan_shown(plan: &Plan) -> Result<(), &'static str> {
    let t = table();
    let rules = Rules::shared();
    let display = t.reference_display.ok_or("model")?;
    if !rules.text_ok(display, &plan.agent_display)
        || plan.version.is_empty()
        || !plan.version.bytes().all(|c| c.is_ascii_alphanumeric())
    {
        return Err("provenance_text");
    }
    let code = t.elems[plan.known.coding_code as usize].ok_or("model")?;
    if !plan
        .labels
        .names
        .iter()
        .all(|name| rules.text_ok(code, name))
    {
        return Err("security_label");
    }
    Ok(())
}

/// Whether the per-message parts of the Bundle are valid, given [`plan_shown`]: what the
/// writer adds itself (the Provenance entity's text `what`, the mapping time as an R4 instant
/// with a four digit year) and the resources sent (plain resource types, ids unique with the
/// Provenance's). `Err` names the rule not shown (a fixed label, for metrics).
pub fn bundle_shown(
    b: &Build,
    emitted: &[bool],
    link: &Link<'_>,
    what: &str,
    provenance: &[u8; 36],
) -> Result<(), &'static str> {
    let t = table();
    let rules = Rules::shared();
    let display = t.reference_display.ok_or("model")?;
    if !rules.text_ok(display, what) {
        return Err("provenance_text");
    }
    if link.mapped_ms >= 253_402_300_800_000 {
        return Err("provenance_time");
    }
    let mut ids: Vec<&[u8; 36]> = Vec::with_capacity(b.insts.len() + 1);
    for (inst, _) in b.insts.iter().zip(emitted).filter(|(_, e)| **e) {
        let facts = t.types[inst.ty as usize].as_ref().ok_or("resource_type")?;
        if !facts.resource {
            return Err("resource_type");
        }
        ids.push(&inst.id);
    }
    if ids.is_empty() {
        // Provenance.target would be an empty array.
        return Err("no_resources");
    }
    ids.push(provenance);
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err("duplicate_id");
    }
    Ok(())
}

/// Where the key of the element of `rank` in its type is among an [`Object`]'s bits: the word
/// and the bit in it.
fn key_bit(rank: u16) -> (usize, u64) {
    (usize::from(rank) / 64, 1 << (rank % 64))
}

/// The rules of one object, asked as the writer writes it (`emit::Writer::children`): each
/// key once and of the object's own type, not empty, every element its type requires, the
/// rules of its kind, and each value by its element's rules. The writer groups an element's
/// nodes under one key; a second group, or a second value of a single element, would repeat
/// the key, and that is what [`Object::key`] refuses.
pub struct Object {
    ty: TypeId,
    kind: ObjectKind,
    root: bool,
    /// Keys written, by the element's rank within its type.
    written: KeyBits,
    /// What the kind's rules read (an Extension's url and value, a Coding's system…).
    url: Option<(u32, u32)>,
    value: Option<ElemId>,
    nested: bool,
    system: Option<(u32, u32)>,
    start: Option<(u32, u32)>,
    end: Option<(u32, u32)>,
    data: bool,
    size: bool,
}

impl Object {
    /// An object of type `ty` (`root`: a resource, whose `resourceType`, `id` and `meta` the
    /// writer puts itself). `Err` for the kinds the walk alone checks.
    pub fn open(ty: TypeId, root: bool) -> Result<Object, &'static str> {
        let facts = table().types[ty as usize].as_ref().ok_or("object_type")?;
        // Rules the check does not show (risk predictions, Bundle entries).
        if matches!(
            facts.kind,
            ObjectKind::RiskPrediction | ObjectKind::BundleEntry
        ) {
            return Err("object_kind");
        }
        // More elements than `written` holds (no R4 type today: a test says so).
        if facts.wide {
            return Err("wide_type");
        }
        Ok(Object {
            ty,
            kind: facts.kind,
            root,
            written: [0; WRITTEN_WORDS],
            url: None,
            value: None,
            nested: false,
            system: None,
            start: None,
            end: None,
            data: false,
            size: false,
        })
    }

    /// A key the writer puts in this object, for element `elem`, `depth` elements below the
    /// resource.
    pub fn key(&mut self, elem: ElemId, depth: usize) -> Result<(), &'static str> {
        let t = table();
        // An object or array level per element, at most.
        if LEVELS_ABOVE_RESOURCE + 2 * depth + 1 > MAX_DEPTH {
            return Err("depth");
        }
        if t.owner[elem as usize] != self.ty {
            return Err("element_owner");
        }
        let flags = t.flags[elem as usize];
        if self.root && flags & WRITER_KEY != 0 {
            // The writer puts these itself.
            return Err("repeated_key");
        }
        let (word, bit) = key_bit(t.rank[elem as usize]);
        if self.written[word] & bit != 0 {
            return Err("repeated_key");
        }
        self.written[word] |= bit;
        Ok(())
    }

    /// A value the writer puts under the key of `node`'s element (an object's own rules are
    /// its [`Object`]'s); `scan`: a text value's byte classes, as the writer found them.
    pub fn value(
        &mut self,
        plan: &Plan,
        b: &Build,
        node: &Node,
        scan: Option<Scan>,
    ) -> Result<(), &'static str> {
        let (t, rules) = (table(), Rules::shared());
        let e = t.elems[node.elem as usize].ok_or("element")?;
        let text = |a: u32, z: u32| &b.text[a as usize..z as usize];
        let ok = match node.val {
            Val::Obj => rules.is_object(e),
            Val::Text(a, z) => {
                let s = text(a, z);
                rules.text_ok_scanned(e, s, scan.unwrap_or_else(|| Scan::of(s)))
            }
            Val::Num(a, z) => rules.number_ok(e, text(a, z)),
            Val::Bool(_) => rules.is_boolean(e),
            // `urn:uuid:` of a resource that is sent: written only where a Reference's
            // reference is, and resolved by its fullUrl.
            Val::Ref(_) => node.elem == plan.known.reference_reference,
            // Encoded by the writer: a base64 string of the text's length.
            Val::B64(a, z) => rules.base64_ok(e, z.saturating_sub(a) as usize),
        };
        if !ok {
            return Err(if matches!(node.val, Val::Obj) {
                "object"
            } else {
                "value"
            });
        }
        if self.kind == ObjectKind::Plain {
            return Ok(());
        }
        let (k, elem) = (&plan.known, node.elem);
        let s = match node.val {
            Val::Text(a, z) => Some((a, z)),
            _ => None,
        };
        match self.kind {
            ObjectKind::Extension => {
                if elem == t.extension_extension {
                    self.nested = true;
                } else if t.flags[elem as usize] & VALUE_CHOICE != 0 {
                    if self.value.is_some() {
                        return Err("extension");
                    }
                    self.value = Some(elem);
                } else if elem == k.extension_url {
                    self.url = s;
                }
            }
            ObjectKind::Coding if elem == k.coding_system => {
                self.system = Some(s.ok_or("coding")?);
            }
            ObjectKind::Period if elem == t.period_start => self.start = s,
            ObjectKind::Period if elem == t.period_end => self.end = s,
            ObjectKind::Attachment if elem == t.attachment_data => self.data = true,
            ObjectKind::Attachment if elem == t.attachment_size => self.size = true,
            ObjectKind::Attachment
                if elem == t.attachment_url
                    && !s.is_some_and(|(a, z)| rules.attachment_url_ok(text(a, z))) =>
            {
                return Err("attachment");
            }
            // A reference the writer did not make (`Val::Ref`) is resolved by the walk.
            ObjectKind::Reference
                if elem == k.reference_reference && !matches!(node.val, Val::Ref(_)) =>
            {
                return Err("reference");
            }
            _ => {}
        }
        Ok(())
    }

    /// The type's invariants (`fhir::validate::invariant`) on the keys written, and `rng-2` on
    /// the values.
    fn invariants_shown(&self, plan: &Plan, b: &Build, node: u32) -> Result<(), &'static str> {
        let Some(facts) = table().types[self.ty as usize].as_ref() else {
            return Ok(());
        };
        let written = |mask: &KeyBits| -> u32 {
            mask.iter()
                .zip(&self.written)
                .map(|(m, w)| (m & w).count_ones())
                .sum()
        };
        for (all, types) in &facts.choices {
            // One key is one type; more may be one type's `name` and `_name`.
            if written(all) > 1 && types.iter().filter(|m| written(m) > 0).count() > 1 {
                return Err("choice");
            }
        }
        let has = |ranks: &[u16]| {
            ranks.iter().any(|&r| {
                let (word, bit) = key_bit(r);
                self.written[word] & bit != 0
            })
        };
        for inv in &facts.invariants {
            let shown = match inv {
                Invariant::Presence(h, first, second) => {
                    invariant::holds(*h, has(first), has(second))
                }
                Invariant::WalkIf(groups) => !groups.iter().all(|g| has(g)),
                Invariant::WalkUnless(groups) => groups.iter().all(|g| has(g)),
                Invariant::RangeOrder => {
                    let k = &plan.known;
                    let bound = |elem| b.range_bound(k, node, elem);
                    match (bound(k.range_low), bound(k.range_high)) {
                        (Some(Some(low)), Some(Some(high))) => low <= high,
                        (Some(None), _) | (_, Some(None)) => false,
                        _ => true,
                    }
                }
            };
            if !shown {
                return Err("invariant");
            }
        }
        Ok(())
    }

    /// Whether a key was written for every element the type requires.
    fn required_met(&self) -> bool {
        let has = |rank: u16| {
            let (word, bit) = key_bit(rank);
            self.written[word] & bit != 0
        };
        table().types[self.ty as usize]
            .as_ref()
            .is_some_and(|f| f.required.iter().all(|g| g.iter().any(|&r| has(r))))
    }

    /// The object's own rules, once all its keys and values are written; `node` is its node.
    pub fn close(&self, plan: &Plan, b: &Build, node: u32) -> Result<(), &'static str> {
        let (t, rules) = (table(), Rules::shared());
        if !self.root && self.written.iter().all(|&w| w == 0) {
            return Err("empty_object");
        }
        if !self.required_met() {
            return Err("required");
        }
        self.invariants_shown(plan, b, node)?;
        let text = |(a, z): (u32, u32)| &b.text[a as usize..z as usize];
        let ok = match self.kind {
            ObjectKind::Extension => {
                // The walk lets an extension's extension (`….extension[i].extension[j]`) have
                // a relative url, as complex extensions name their parts (`code`).
                let n = &b.nodes[node as usize];
                let in_extension = n.elem == t.extension_extension
                    && n.parent != NONE
                    && t.flags[b.nodes[n.parent as usize].elem as usize] & EXTENSION != 0;
                let value = self.value.map(|v| plan.model.elem(v).name.as_str());
                rules.extension_ok(self.url.map(text), value, self.nested, in_extension)
            }
            ObjectKind::Coding => self.system.is_none_or(|s| rules.coding_system_ok(text(s))),
            ObjectKind::Period => match (self.start, self.end) {
                (Some(a), Some(z)) => rules.period_ok(text(a), text(z)),
                _ => true,
            },
            // The walk compares the size with the decoded data.
            ObjectKind::Attachment => !(self.data && self.size),
            ObjectKind::Plain
            | ObjectKind::Reference
            | ObjectKind::RiskPrediction
            | ObjectKind::BundleEntry => true,
        };
        if ok {
            Ok(())
        } else {
            Err("object_rule")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element of the model is one the schema has with the same arity, except those
    /// only the walk checks (resources, narrative XHTML): a model that drifts from the schema
    /// shows here, not as Bundles quietly walked.
    #[test]
    fn the_model_agrees_with_the_schema() {
        let m = Model::r4();
        let t = table();
        let mut unresolved = Vec::new();
        for ty in 0..m.type_count() as TypeId {
            if t.types[ty as usize].is_none() {
                continue;
            }
            for e in m.elems_of(ty) {
                if t.elems[e as usize].is_none() {
                    unresolved.push(format!("{}.{}", m.ty(ty).name, m.elem(e).name));
                }
            }
        }
        unresolved.sort();
        // Resources and XHTML are the walk's; the schema has no `_id` (an element id has no
        // extensions of its own).
        let walk_only = [
            ".contained",
            ".resource",
            ".outcome",
            ".div",
            "._div",
            "._id",
        ];
        unresolved.retain(|n| !walk_only.iter().any(|w| n.ends_with(w)));
        assert_eq!(unresolved, Vec::<String>::new());
        assert!(t.types[m.type_id("Patient").unwrap() as usize]
            .as_ref()
            .is_some_and(|f| f.resource));
    }

    /// Every id the engine gives a resource is `format_uuid`'s output, which writes 32 hex
    /// digits and four hyphens at fixed places whatever the bytes: the walk's rule for an
    /// entry's id and fullUrl accepts it at the ends of the byte range and in between.
    #[test]
    fn resource_ids_are_uuids_by_their_form() {
        use super::super::value::{format_uuid, uuid_v5};
        use crate::fhir::validate::primitive::is_uuid;
        for fill in [0u8, 0x0f, 0x5a, 0xa5, 0xf0, 0xff] {
            let id = format_uuid(&[fill; 16]);
            assert!(is_uuid(std::str::from_utf8(&id).unwrap()), "{fill:#x}");
        }
        let mut u = [0u8; 16];
        for (i, b) in u.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37);
        }
        let id = format_uuid(&uuid_v5(&u, b"Patient|555001"));
        assert!(is_uuid(std::str::from_utf8(&id).unwrap()));
    }

    /// The key bits: each key once, of the object's own type, not one the writer puts on a
    /// resource itself, within the walk's depth; required elements met by either of their
    /// JSON names.
    #[test]
    fn an_objects_keys_are_held_to_its_type() {
        let m = Model::r4();
        let ty = |n: &str| m.type_id(n).unwrap();
        let el = |t: &str, e: &str| m.child(ty(t), e).unwrap();
        let mut p = Object::open(ty("Patient"), true).unwrap();
        assert_eq!(p.key(el("Patient", "name"), 1), Ok(()));
        assert_eq!(p.key(el("Patient", "gender"), 1), Ok(()));
        assert_eq!(p.key(el("Patient", "name"), 1), Err("repeated_key"));
        assert_eq!(p.key(el("Patient", "id"), 1), Err("repeated_key"));
        assert_eq!(p.key(el("HumanName", "family"), 1), Err("element_owner"));
        assert_eq!(p.key(el("Patient", "active"), 40), Err("depth"));
        assert!(p.required_met());

        let mut link = Object::open(ty("Patient_Link"), false).unwrap();
        assert_eq!(link.key(el("Patient_Link", "other"), 1), Ok(()));
        assert!(!link.required_met(), "type is required");
        assert_eq!(link.key(el("Patient_Link", "_type"), 1), Ok(()));
        assert!(link.required_met(), "_type meets type");

        // Every type of the model fits the bits (a wider one would be walked, not refused).
        let t = table();
        let wide: Vec<&str> = (0..m.type_count() as TypeId)
            .filter(|&i| t.types[i as usize].as_ref().is_some_and(|f| f.wide))
            .map(|i| m.ty(i).name.as_str())
            .collect();
        assert_eq!(wide, Vec::<&str>::new());
    }

    /// What the mapper leaves out as incomplete is what the check refuses: required
    /// primitives (`Appointment.status`, by `_status` too) and choices
    /// (`Immunization.occurrence[x]`), not only the schema's `required` lists.
    #[test]
    fn what_an_object_requires_counts_primitives_and_choices() {
        let m = Model::r4();
        let ty = |n: &str| m.type_id(n).unwrap();
        let el = |t: &str, e: &str| m.child(ty(t), e).unwrap();
        let meets = |t: &str, kids: &[&str]| meets_required(ty(t), kids.iter().map(|k| el(t, k)));
        assert!(!meets("Appointment", &["participant"]));
        assert!(meets("Appointment", &["participant", "status"]));
        assert!(meets("Appointment", &["participant", "_status"]));
        assert!(
            !meets("Appointment", &["status"]),
            "participant is required"
        );
        assert!(!meets(
            "Immunization",
            &["status", "vaccineCode", "patient"]
        ));
        assert!(meets(
            "Immunization",
            &["status", "vaccineCode", "patient", "occurrenceString"]
        ));
        assert!(!meets("Patient_Contact", &["relationship"]), "pat-1");
        assert!(meets("Patient_Contact", &["relationship", "telecom"]));
        assert!(!meets("Patient_Link", &["other"]));
        assert!(meets("Patient_Link", &["other", "type"]));
        assert!(meets("HumanName", &[]));
    }

    #[test]
    fn requirements_read_like_the_walk() {
        assert!(meets("status", "status", true));
        assert!(meets("_status", "status", true));
        assert!(
            !meets("_measure", "measure", false),
            "the schema's list wants the key"
        );
        assert!(meets("measure", "measure", false));
        assert!(!meets("statusReason", "status", true));
        assert!(meets("valueQuantity", "value[x]", true));
        assert!(meets("_valueString", "value[x]", true));
        assert!(!meets("value", "value[x]", true));
        assert!(!meets("valueset", "value[x]", true));
    }
}
