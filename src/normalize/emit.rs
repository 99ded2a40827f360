//! Writes what the engine built as a FHIR R4 transaction Bundle, straight into bytes: which
//! resources are worth sending, which elements survive (empty objects, references to resources
//! not sent and extensions without a value are dropped), security labels from the codings that
//! survive, and the Provenance that binds every resource to the raw record.

use base64::Engine as _;

use super::check;
use super::engine::{Build, Val, NONE};
use super::model::{ElemId, TypeId};
use super::plan::Plan;
use super::value;
use super::{Link, MappedResource};
use crate::fhir::validate::period_ordered;
use crate::fhir::validate::primitive::Scan;

const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// JSON string contents (without quotes), escaped as `serde_json` escapes them, so that text
/// written here and there reads the same byte for byte.
pub fn escape(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if Scan::class(c) & Scan::JSON_ESCAPE == 0 {
            continue;
        }
        out.extend_from_slice(&b[start..i]);
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(c >> 4) as usize]);
                out.push(HEX[(c & 15) as usize]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
}

fn string(out: &mut Vec<u8>, s: &str) {
    string_scanned(out, s, Scan::of(s));
}

/// [`string`] for a value whose byte classes are known: copied as it is when nothing in it
/// needs escaping.
fn string_scanned(out: &mut Vec<u8>, s: &str, scan: Scan) {
    out.push(b'"');
    if scan.has(Scan::JSON_ESCAPE) {
        escape(out, s);
    } else {
        out.extend_from_slice(s.as_bytes());
    }
    out.push(b'"');
}

struct Writer<'a> {
    plan: &'a Plan,
    b: &'a Build,
    live: Vec<bool>,
    emitted: Vec<bool>,
    /// `Ok` while the Bundle written so far is shown valid (`check`), else the first rule
    /// not shown.
    shown: Result<(), &'static str>,
}

/// What [`write`] wrote.
pub struct Written {
    /// Every resource in the Bundle, the Provenance last.
    pub resources: Vec<MappedResource>,
    /// Whether the Bundle is shown valid by construction (`check`), else the rule not shown.
    pub shown_valid: Result<(), &'static str>,
}

/// Writes the Bundle into `out` and returns what is in it. `asked`: `Ok` when the Bundle is to
/// be shown valid as it is written (`Normalizer::check`), else the label to report instead.
pub fn write(
    plan: &Plan,
    b: &mut Build,
    ns: &[u8; 16],
    link: &Link<'_>,
    asked: Result<(), &'static str>,
    out: &mut Vec<u8>,
) -> Written {
    let mut emitted: Vec<bool> = b.insts.iter().map(|i| i.has_data).collect();
    one_type_per_choice(plan, b);
    drop_reversed_ranges(plan, b);
    appointment_times(plan, b, &mut emitted);
    let (mut live, mut incomplete) = liveness(plan, b, &emitted);
    while drop_incomplete(plan, b, &live, &mut emitted) {
        (live, incomplete) = liveness(plan, b, &emitted);
    }
    name_incomplete(plan, b, &incomplete);
    label(plan, b, &live, &emitted);
    let b: &Build = b;
    let model = plan.model;
    let bundle_name = format!("Bundle|{}|{}", link.raw_record_id, plan.version);
    let bundle_id = value::id_of(ns, &bundle_name);
    let prov_name = format!("Provenance|{}|{}", link.raw_record_id, plan.version);
    let prov_id = value::id_of(ns, &prov_name);
    let what = format!("raw record {}", link.raw_record_id);
    let shown = asked.and_then(|()| check::bundle_shown(b, &emitted, link, &what, &prov_id));
    let mut w = Writer {
        plan,
        b,
        live,
        emitted,
        shown,
    };
    out.extend_from_slice(b"{\"resourceType\":\"Bundle\",\"id\":\"");
    out.extend_from_slice(&bundle_id);
    out.extend_from_slice(b"\",\"type\":\"transaction\",\"entry\":[");
    let mut resources = Vec::new();
    for (i, inst) in b.insts.iter().enumerate() {
        if !w.emitted[i] {
            continue;
        }
        let tname = &model.ty(inst.ty).name;
        let id = std::str::from_utf8(&inst.id).unwrap_or_default();
        out.extend_from_slice(b"{\"fullUrl\":\"urn:uuid:");
        out.extend_from_slice(&inst.id);
        out.extend_from_slice(b"\",\"resource\":{\"resourceType\":");
        string(out, tname);
        out.extend_from_slice(b",\"id\":\"");
        out.extend_from_slice(&inst.id);
        out.push(b'"');
        let mut labels = Vec::new();
        if inst.labels != 0 {
            out.extend_from_slice(b",\"meta\":{\"security\":[");
            let mut first = true;
            for (bit, name) in plan.labels.names.iter().enumerate() {
                if inst.labels & (1 << bit) != 0 {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(b"{\"system\":\"");
                    out.extend_from_slice(ACT_CODE.as_bytes());
                    out.extend_from_slice(b"\",\"code\":");
                    string(out, name);
                    out.push(b'}');
                    labels.push(name.clone());
                }
            }
            out.extend_from_slice(b"]}");
        }
        w.children(out, inst.root, true, (inst.ty, true, 0));
        out.extend_from_slice(b"},\"request\":{\"method\":\"PUT\",\"url\":\"");
        escape(out, tname);
        out.push(b'/');
        out.extend_from_slice(&inst.id);
        out.extend_from_slice(b"\"}},");
        resources.push(MappedResource {
            resource_type: tname.clone(),
            id: id.to_string(),
            security: labels,
        });
    }
    provenance(plan, b, &w.emitted, link, &prov_id, &what, out);
    out.extend_from_slice(b"]}");
    resources.push(MappedResource {
        resource_type: "Provenance".into(),
        id: std::str::from_utf8(&prov_id)
            .unwrap_or_default()
            .to_string(),
        security: Vec::new(),
    });
    Written {
        resources,
        shown_valid: w.shown,
    }
}

/// The Provenance entry; `what` is the entity's text.
fn provenance(
    plan: &Plan,
    b: &Build,
    emitted: &[bool],
    link: &Link<'_>,
    id: &[u8; 36],
    what: &str,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"fullUrl\":\"urn:uuid:");
    out.extend_from_slice(id);
    out.extend_from_slice(b"\",\"resource\":{\"resourceType\":\"Provenance\",\"id\":\"");
    out.extend_from_slice(id);
    out.extend_from_slice(b"\",\"target\":[");
    let mut first = true;
    for (i, inst) in b.insts.iter().enumerate() {
        if emitted[i] {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(b"{\"reference\":\"urn:uuid:");
            out.extend_from_slice(&inst.id);
            out.extend_from_slice(b"\"}");
        }
    }
    let mut recorded = String::new();
    value::instant_from_ms(link.mapped_ms, &mut recorded);
    out.extend_from_slice(b"],\"recorded\":\"");
    out.extend_from_slice(recorded.as_bytes());
    out.extend_from_slice(b"\",\"policy\":[\"urn:medanchor:mapping-set:");
    out.extend_from_slice(plan.version.as_bytes());
    out.extend_from_slice(
        b"\"],\"activity\":{\"coding\":[{\"system\":\"http://hl7.org/fhir/uv/v2mappings/CodeSystem/provenance-activity-type-v2-to-fhir\",\"code\":\"v2-fhir-transformation\",\"display\":\"Transformation of an HL7 v2 message into FHIR\"}]},\"agent\":[{\"type\":{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/provenance-participant-type\",\"code\":\"assembler\"}]},\"who\":{\"identifier\":{\"system\":\"urn:medanchor:mapping-set\",\"value\":\"",
    );
    out.extend_from_slice(plan.version.as_bytes());
    out.extend_from_slice(b"\"},\"display\":");
    string(out, &plan.agent_display);
    out.extend_from_slice(b"}}],\"entity\":[{\"role\":\"source\",\"what\":{\"identifier\":{\"system\":\"urn:ietf:rfc:3986\",\"value\":\"urn:medanchor:commitment:");
    out.extend_from_slice(hex::encode(link.raw_commitment).as_bytes());
    out.extend_from_slice(b"\"},\"display\":");
    string(out, what);
    out.extend_from_slice(b"}}]},\"request\":{\"method\":\"PUT\",\"url\":\"Provenance/");
    out.extend_from_slice(id);
    out.extend_from_slice(b"\"}}");
}

/// Which nodes are written: values, references to resources that are sent, and objects with a
/// written child (an Extension needs more than its url) and every child their type requires.
/// Children come after their parents in the arena, so one backward pass settles it. Also the
/// objects left out with live children because they lack what their type requires.
fn liveness(plan: &Plan, b: &Build, emitted: &[bool]) -> (Vec<bool>, Vec<u32>) {
    let k = &plan.known;
    let n = b.nodes.len();
    let mut live = vec![false; n];
    // bit 0: a live child; bit 1: a live child other than an extension's url.
    let mut kids = vec![0u8; n];
    let mut incomplete = Vec::new();
    for i in (0..n).rev() {
        let node = &b.nodes[i];
        if !emitted[node.inst as usize] {
            continue;
        }
        let l = match node.val {
            Val::Obj => {
                if node.parent == NONE {
                    true
                } else if plan.elem_kind[node.elem as usize] & 1 != 0 {
                    kids[i] & 2 != 0
                } else if kids[i] & 1 == 0 {
                    false
                } else {
                    let complete = has_required(b, &live, i, plan.model.elem(node.elem).ty);
                    if !complete {
                        incomplete.push(i as u32);
                    }
                    complete
                }
            }
            Val::Ref(t) => emitted.get(t as usize).copied().unwrap_or(false),
            _ => true,
        };
        live[i] = l;
        if l && node.parent != NONE {
            let p = node.parent as usize;
            kids[p] |= 1;
            if node.elem != k.extension_url {
                kids[p] |= 2;
            }
        }
    }
    (live, incomplete)
}

/// Whether the object node `i` has a live child for every element its type requires (an
/// `Encounter.location` without its `location`, an Appointment without `status`, an
/// Immunization without `occurrence[x]`): an element or resource that would be incomplete is
/// left out, with what it holds, rather than written invalid. Its children come after it in
/// the arena, so their liveness is settled.
fn has_required(b: &Build, live: &[bool], i: usize, ty: TypeId) -> bool {
    let mut c = b.nodes[i].first;
    let kids = std::iter::from_fn(move || {
        while c != NONE {
            let (at, ch) = (c as usize, &b.nodes[c as usize]);
            c = ch.next;
            if live[at] {
                return Some(ch.elem);
            }
        }
        None
    });
    check::meets_required(ty, kids)
}

/// A choice element (`deceased[x]`) holds one type: where rows wrote two of an object's (a
/// valid PID-29 date and PID-30's flag), the one written first stays, as the first write to any
/// element wins; the later one is left out with what it holds.
fn one_type_per_choice(plan: &Plan, b: &mut Build) {
    for i in 0..b.nodes.len() {
        let node = &b.nodes[i];
        if node.parent == NONE || plan.elem_kind[node.elem as usize] & 8 == 0 {
            continue;
        }
        let (elem, choice) = (node.elem, plan.model.elem(node.elem).choice);
        let mut c = b.nodes[node.parent as usize].first;
        let mut taken = false;
        while c != NONE {
            let s = &b.nodes[c as usize];
            if (c as usize) < i
                && s.elem != elem
                && plan.model.elem(s.elem).choice == choice
                && b.holds_value(c)
            {
                taken = true;
                break;
            }
            c = s.next;
        }
        if taken {
            b.empty(i as u32);
        }
    }
}

/// Leaves out each Range whose low is above its high (R4 rng-2: an SN `^5^-^3`), with its
/// units: a low alone would say "at least", which the sender did not say. A warning names the
/// element; the raw message keeps the value.
fn drop_reversed_ranges(plan: &Plan, b: &mut Build) {
    let k = &plan.known;
    for i in 0..b.nodes.len() {
        let node = &b.nodes[i];
        // A resource's root has no element.
        if node.val != Val::Obj
            || node.parent == NONE
            || plan.elem_kind[node.elem as usize] & 4 == 0
        {
            continue;
        }
        let bound = |elem| b.range_bound(k, i as u32, elem).flatten();
        let (Some(low), Some(high)) = (bound(k.range_low), bound(k.range_high)) else {
            continue;
        };
        if low <= high {
            continue;
        }
        // Values made objects without children are not live, nor is what holds only them.
        b.empty(i as u32);
        let owner = &plan.model.ty(b.insts[b.nodes[i].inst as usize].ty).name;
        let elem = &plan.model.elem(b.nodes[i].elem).name;
        b.warn(format_args!(
            "{owner}.{elem}: the range's low is above its high (R4 rng-2): left out"
        ));
    }
}

/// R4 app-2 and app-3 for each Appointment: a start has an end, and only a proposed, cancelled
/// or waitlisted appointment may have neither. An end not sent is the start plus
/// `minutesDuration` (SCH-11 sent as start and duration, the common form). An Appointment that
/// still breaks them (a start alone; booked, with its times sent without a zone, which an
/// instant must have) is left out with a warning, rather than sent for a server to refuse the
/// whole transaction; the raw message keeps it.
fn appointment_times(plan: &Plan, b: &mut Build, emitted: &mut [bool]) {
    let k = &plan.known;
    for (i, sent) in emitted.iter_mut().enumerate() {
        if b.insts[i].ty != k.appointment || !*sent {
            continue;
        }
        let root = b.insts[i].root;
        fn text(b: &Build, root: u32, elem: ElemId) -> Option<&str> {
            b.child_of(root, elem).and_then(|n| b.value_text(n))
        }
        // A start that TQ1-7 replaced after SCH-11 gave both times leaves SCH-11's end behind:
        // that end is not the rescheduled appointment's (it may even come before the new
        // start), unless TQ1-8 replaced it too. An end before its start is no end either.
        let times = (
            b.child_of(root, k.appointment_start),
            b.child_of(root, k.appointment_end),
        );
        if let (Some(s), Some(e)) = times {
            if let (Some(start), Some(end)) = (b.value_text(s), b.value_text(e)) {
                let stale = b.was_overridden(s) && !b.was_overridden(e);
                let reversed = !period_ordered(start, end);
                if stale || reversed {
                    b.nodes[e as usize].val = Val::Obj;
                }
                if reversed && !stale {
                    b.warn(format_args!(
                        "Appointment: its end came before its start: the end is the start plus \
                         the duration, or the Appointment is left out"
                    ));
                }
            }
        }
        let mut end = text(b, root, k.appointment_end).is_some();
        if let (Some(start), false) = (text(b, root, k.appointment_start), end) {
            let minutes = text(b, root, k.appointment_minutes).and_then(|m| m.parse::<u32>().ok());
            if let Some(at) = minutes.and_then(|m| value::add_minutes(start, m)) {
                let (a, e) = (b.text.len() as u32, (b.text.len() + at.len()) as u32);
                b.text.push_str(&at);
                let node = match times.1 {
                    Some(n) => n,
                    None => b.append_child(root, k.appointment_end, i as u32),
                };
                b.nodes[node as usize].val = Val::Text(a, e);
                end = true;
            }
        }
        let start = text(b, root, k.appointment_start).is_some();
        let untimed = matches!(
            text(b, root, k.appointment_status),
            Some("proposed" | "cancelled" | "waitlist")
        );
        if start == end && (start || untimed) {
            continue;
        }
        *sent = false;
        b.left_out.push("Appointment".into());
        b.warn(format_args!(
            "Appointment: left out, its times break R4 app-2 or app-3 (a start without an end, \
             or booked without times; a time sent without a zone is kept only with the setting \
             default_timezone)"
        ));
    }
}

/// Names the elements left out with what they held because they lack what R4 requires of them
/// (`Patient.contact` with only a relationship, pat-1; `Encounter.location` whose PL made no
/// Location; `liveness` finds them): their fields were read, so only this warning says they
/// are not in the Bundle.
fn name_incomplete(plan: &Plan, b: &mut Build, incomplete: &[u32]) {
    for &i in incomplete.iter().rev() {
        let node = &b.nodes[i as usize];
        let owner = &plan.model.ty(b.insts[node.inst as usize].ty).name;
        let elem = &plan.model.elem(node.elem).name;
        b.warn(format_args!(
            "{owner}.{elem}: left out with what it holds, it lacks an element R4 requires"
        ));
    }
}

/// Leaves out the resources that lack an element R4 requires (a Coverage whose IN1 names no
/// payor): they are not sent, references to them are dropped, and a warning names the type.
/// Returns whether one was left out (liveness must then be settled again).
fn drop_incomplete(plan: &Plan, b: &mut Build, live: &[bool], emitted: &mut [bool]) -> bool {
    let mut left_out = Vec::new();
    for (i, inst) in b.insts.iter().enumerate() {
        if emitted[i] && !has_required(b, live, inst.root as usize, inst.ty) {
            emitted[i] = false;
            left_out.push(inst.ty);
        }
    }
    for &ty in &left_out {
        let name = &plan.model.ty(ty).name;
        b.left_out.push(name.clone());
        b.warn(format_args!(
            "{name}: left out, an element R4 requires was not mapped"
        ));
    }
    !left_out.is_empty()
}

/// Security labels from the live codings of each resource, then along the propagation table.
fn label(plan: &Plan, b: &mut Build, live: &[bool], emitted: &[bool]) {
    if plan.labels.is_empty() {
        return;
    }
    let k = &plan.known;
    let (nodes, insts, text) = (&b.nodes, &mut b.insts, &b.text);
    for (node, _) in nodes.iter().zip(live).filter(|(_, l)| **l) {
        if node.parent == NONE || plan.elem_kind[node.elem as usize] & 2 == 0 {
            continue;
        }
        let (mut system, mut code) = ("", "");
        let mut c = node.first;
        while c != NONE {
            let ch = &nodes[c as usize];
            if let Val::Text(s, e) = ch.val {
                let t = &text[s as usize..e as usize];
                if ch.elem == k.coding_system {
                    system = t;
                } else if ch.elem == k.coding_code {
                    code = t;
                }
            }
            c = ch.next;
        }
        if !code.is_empty() {
            insts[node.inst as usize].labels |= plan.labels.lookup(system, code);
        }
    }
    for &(ty, elem) in &plan.propagation {
        for i in 0..b.insts.len() {
            if b.insts[i].ty != ty || !emitted[i] {
                continue;
            }
            let mut add = 0u64;
            let mut c = b.nodes[b.insts[i].root as usize].first;
            while c != NONE {
                let ch = &b.nodes[c as usize];
                if ch.elem == elem {
                    // The references anywhere under the element (`diagnosis.condition`).
                    let mut todo = vec![c];
                    while let Some(n) = todo.pop() {
                        let node = &b.nodes[n as usize];
                        if let Val::Ref(t) = node.val {
                            if emitted.get(t as usize).copied().unwrap_or(false) {
                                add |= b.insts[t as usize].labels;
                            }
                        }
                        let mut k = node.first;
                        while k != NONE {
                            todo.push(k);
                            k = b.nodes[k as usize].next;
                        }
                    }
                }
                c = ch.next;
            }
            b.insts[i].labels |= add;
        }
    }
}

impl Writer<'_> {
    /// The first rule the check did not show, if it is still asking.
    fn fail(&mut self, why: &'static str) {
        if self.shown.is_ok() {
            self.shown = Err(why);
        }
    }

    /// Writes the live children of `node`, an object of type `ty` `depth` elements below its
    /// resource (`root`: the resource itself), as `,"key":value…` (a leading comma when
    /// `comma`), and asks the check about each key and value while the Bundle is still shown
    /// valid. The arena keeps children grouped by element and ordered (see `Build::child`).
    fn children(
        &mut self,
        out: &mut Vec<u8>,
        node: u32,
        mut comma: bool,
        (ty, root, depth): (TypeId, bool, usize),
    ) {
        let mut obj = None;
        if self.shown.is_ok() {
            match check::Object::open(ty, root) {
                Ok(o) => obj = Some(o),
                Err(why) => self.fail(why),
            }
        }
        let nodes = &self.b.nodes;
        let mut c = nodes[node as usize].first;
        while c != NONE {
            if !self.live[c as usize] {
                c = nodes[c as usize].next;
                continue;
            }
            let elem = nodes[c as usize].elem;
            let def = self.plan.model.elem(elem);
            if comma {
                out.push(b',');
            }
            comma = true;
            out.extend_from_slice(def.json_key.as_bytes());
            if let Some(o) = obj.as_mut().filter(|_| self.shown.is_ok()) {
                if let Err(why) = o.key(elem, depth + 1) {
                    self.fail(why);
                }
            }
            if def.array {
                out.push(b'[');
                let mut first = true;
                while c != NONE && nodes[c as usize].elem == elem {
                    if self.live[c as usize] {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        self.value(out, c, obj.as_mut(), depth + 1);
                    }
                    c = nodes[c as usize].next;
                }
                out.push(b']');
            } else {
                self.value(out, c, obj.as_mut(), depth + 1);
                c = nodes[c as usize].next;
            }
        }
        if let Some(o) = obj.filter(|_| self.shown.is_ok()) {
            if let Err(why) = o.close(self.plan, self.b, node) {
                self.fail(why);
            }
        }
    }

    /// Writes the value of node `n`, a child of the object `parent` is checking, `depth`
    /// elements below its resource.
    fn value(
        &mut self,
        out: &mut Vec<u8>,
        n: u32,
        parent: Option<&mut check::Object>,
        depth: usize,
    ) {
        let node = &self.b.nodes[n as usize];
        let text = |a: u32, e: u32| &self.b.text[a as usize..e as usize];
        // One pass over a text finds what both the check and the escaping look for.
        let scan = match node.val {
            Val::Text(a, e) => Some(Scan::of(text(a, e))),
            _ => None,
        };
        if let Some(o) = parent.filter(|_| self.shown.is_ok()) {
            if let Err(why) = o.value(self.plan, self.b, node, scan) {
                self.fail(why);
            }
        }
        match node.val {
            Val::Obj => {
                out.push(b'{');
                let ty = self.plan.model.elem(node.elem).ty;
                self.children(out, n, false, (ty, false, depth));
                out.push(b'}');
            }
            Val::Text(a, e) => {
                let t = text(a, e);
                string_scanned(out, t, scan.unwrap_or_else(|| Scan::of(t)));
            }
            Val::Num(a, e) => out.extend_from_slice(text(a, e).as_bytes()),
            Val::Bool(v) => out.extend_from_slice(if v { b"true" } else { b"false" }),
            Val::Ref(t) => {
                out.extend_from_slice(b"\"urn:uuid:");
                out.extend_from_slice(&self.b.insts[t as usize].id);
                out.push(b'"');
            }
            Val::B64(a, e) => {
                out.push(b'"');
                let mut s = String::new();
                base64::engine::general_purpose::STANDARD.encode_string(text(a, e), &mut s);
                out.extend_from_slice(s.as_bytes());
                out.push(b'"');
            }
        }
    }
}
