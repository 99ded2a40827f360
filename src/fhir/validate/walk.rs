//! The walker: one pass over a resource, typed by the schema's model, that checks what the R4
//! JSON schema says (unknown elements, JSON types, patterns, codes, required elements) and what
//! a JSON schema cannot say (calendar dates, base64 and attachment sizes, references,
//! narratives, extensions, required primitives, empty elements, `per-1`, …).
//!
//! Recursion is bounded by [`MAX_DEPTH`] JSON levels, whoever built the value.

use super::doc::{Node, Object};

use super::primitive as p;
use super::schema::{push_name, Def, Kind, Model, Prim, Prop, Ty};
use super::{bundle, invariant, xhtml, Issue, IssueCode, Options, Severity};

/// Deepest JSON nesting walked (objects and arrays). FHIR content nests far less (a Bundle
/// entry's resource's contained resource's nested extensions are about 12 levels); serde_json
/// refuses to parse more than 128.
pub const MAX_DEPTH: usize = 64;

/// Largest primitive value (FHIR R4: "no more than 1MB").
pub const MAX_STRING_BYTES: usize = 1024 * 1024;

/// R4 elements of minimum cardinality 1 that the JSON schema cannot require: primitives (whose
/// value may stand in `_name` alone) and choices (`name[x]`). Per type, including backbone
/// elements (`Type_Part`).
pub(crate) const REQUIRED: &[(&str, &[&str])] = &[
    ("Account", &["status"]),
    ("ActivityDefinition", &["status"]),
    ("AdverseEvent", &["actuality"]),
    ("Appointment", &["status"]),
    ("Appointment_Participant", &["status"]),
    ("AppointmentResponse", &["participantStatus"]),
    ("AuditEvent", &["recorded"]),
    ("AuditEvent_Agent", &["requestor"]),
    ("Binary", &["contentType"]),
    ("Bundle", &["type"]),
    ("Bundle_Link", &["relation", "url"]),
    ("Bundle_Request", &["method", "url"]),
    ("Bundle_Response", &["status"]),
    (
        "CapabilityStatement",
        &["status", "date", "kind", "fhirVersion", "format"],
    ),
    ("CarePlan", &["status", "intent"]),
    ("ChargeItem", &["status"]),
    ("Claim", &["status", "use", "created"]),
    ("ClaimResponse", &["status", "use", "created", "outcome"]),
    ("ClinicalImpression", &["status"]),
    ("CodeSystem", &["status", "content"]),
    ("Communication", &["status"]),
    ("CommunicationRequest", &["status"]),
    ("Composition", &["status", "date", "title"]),
    ("Composition_Attester", &["mode"]),
    ("ConceptMap", &["status"]),
    ("Consent", &["status"]),
    ("Coverage", &["status"]),
    (
        "CoverageEligibilityRequest",
        &["status", "purpose", "created"],
    ),
    (
        "CoverageEligibilityResponse",
        &["status", "purpose", "created", "outcome"],
    ),
    ("DetectedIssue", &["status"]),
    ("DeviceRequest", &["intent"]),
    ("DiagnosticReport", &["status"]),
    ("DocumentManifest", &["status"]),
    ("DocumentReference", &["status"]),
    ("DocumentReference_RelatesTo", &["code"]),
    ("Encounter", &["status"]),
    ("Encounter_StatusHistory", &["status"]),
    ("Endpoint", &["status", "address"]),
    ("EpisodeOfCare", &["status"]),
    (
        "ExplanationOfBenefit",
        &["status", "use", "created", "outcome"],
    ),
    ("FamilyMemberHistory", &["status"]),
    ("Flag", &["status"]),
    ("Goal", &["lifecycleStatus"]),
    ("Group", &["type", "actual"]),
    ("GuidanceResponse", &["status", "module[x]"]),
    ("ImagingStudy", &["status"]),
    ("Immunization", &["status", "occurrence[x]"]),
    ("Invoice", &["status"]),
    ("Library", &["status"]),
    ("List", &["status", "mode"]),
    ("Measure", &["status"]),
    ("MeasureReport", &["status", "type"]),
    ("Media", &["status"]),
    (
        "MedicationAdministration",
        &["status", "medication[x]", "effective[x]"],
    ),
    ("MedicationDispense", &["status", "medication[x]"]),
    ("MedicationRequest", &["status", "intent", "medication[x]"]),
    ("MedicationStatement", &["status", "medication[x]"]),
    ("MessageDefinition", &["status", "date", "event[x]"]),
    ("MessageHeader", &["event[x]"]),
    ("NamingSystem", &["name", "status", "kind", "date"]),
    ("NamingSystem_UniqueId", &["type", "value"]),
    ("NutritionOrder", &["status", "intent", "dateTime"]),
    ("Observation", &["status"]),
    (
        "OperationDefinition",
        &[
            "name", "status", "kind", "code", "system", "type", "instance",
        ],
    ),
    ("OperationOutcome_Issue", &["severity", "code"]),
    ("Parameters_Parameter", &["name"]),
    ("Patient_Link", &["type"]),
    ("PaymentNotice", &["status", "created"]),
    ("PaymentReconciliation", &["status", "created"]),
    ("PlanDefinition", &["status"]),
    ("Procedure", &["status"]),
    ("Provenance", &["recorded"]),
    ("Questionnaire", &["status"]),
    ("Questionnaire_Item", &["linkId", "type"]),
    ("QuestionnaireResponse", &["status"]),
    ("QuestionnaireResponse_Item", &["linkId"]),
    ("RequestGroup", &["status", "intent"]),
    ("ResearchStudy", &["status"]),
    ("ResearchSubject", &["status"]),
    ("RiskAssessment", &["status"]),
    (
        "SearchParameter",
        &[
            "url",
            "name",
            "status",
            "description",
            "code",
            "base",
            "type",
        ],
    ),
    ("ServiceRequest", &["status", "intent"]),
    ("Slot", &["status", "start", "end"]),
    (
        "StructureDefinition",
        &["url", "name", "status", "kind", "abstract", "type"],
    ),
    ("StructureMap", &["url", "name", "status"]),
    ("Subscription", &["status", "reason", "criteria"]),
    ("Subscription_Channel", &["type"]),
    ("Task", &["status", "intent"]),
    ("TestScript", &["url", "name", "status"]),
    ("ValueSet", &["status"]),
    ("VisionPrescription", &["status", "created", "dateWritten"]),
];

/// What one resource holds that is checked once the resource is walked.
#[derive(Default)]
pub(crate) struct Res<'v> {
    /// `Reference.reference` values with the path of their Reference.
    pub refs: Vec<(String, &'v str)>,
    /// `uri`/`url`/`canonical` values that are local (`#…`): they count as references to
    /// contained resources (`dom-3`).
    pub local_uris: Vec<&'v str>,
    /// Ids of contained resources, with their paths.
    pub contained: Vec<(String, Option<&'v str>)>,
    /// Resources embedded here that stand on their own (Bundle entries, Parameters resources).
    pub embedded: Vec<Embedded<'v>>,
}

/// A resource embedded in a Bundle entry or Parameters parameter.
pub(crate) struct Embedded<'v> {
    /// The Bundle entry index for `Bundle.entry[i].resource`, else `None`.
    pub entry: Option<usize>,
    pub resource_type: &'v str,
    pub id: Option<&'v str>,
    pub res: Res<'v>,
}

/// Where a resource sits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Root,
    Contained,
    /// Contained in a contained resource (`dom-2`).
    NestedContained,
    Embedded,
}

pub(crate) struct Walker<'v, 'o> {
    pub model: &'static Model,
    pub opts: &'o Options,
    pub issues: Vec<Issue>,
    /// Every resource met, with its path and type (the benchmark's and the oracle test's).
    pub resources: Vec<(String, &'v str, &'v Node<'v>)>,
    pub too_deep: bool,
}

impl<'v, 'o> Walker<'v, 'o> {
    pub fn new(model: &'static Model, opts: &'o Options) -> Self {
        Walker {
            model,
            opts,
            issues: Vec::new(),
            resources: Vec::new(),
            too_deep: false,
        }
    }

    pub fn error(&mut self, code: IssueCode, path: &str, message: impl Into<String>) {
        self.issues
            .push(Issue::error(code, path.to_string(), message));
    }

    #[inline]
    fn deep(&mut self, depth: usize, path: &str) -> bool {
        if depth <= MAX_DEPTH {
            return false;
        }
        if !self.too_deep {
            self.too_deep = true;
            self.error(
                IssueCode::TooCostly,
                path,
                format!("nested more than {MAX_DEPTH} levels deep: not walked further"),
            );
        }
        true
    }

    /// Walks one resource. `path` is its path (empty for the root: it becomes the type name).
    /// Returns what the resource holds for its container's checks.
    pub fn resource(
        &mut self,
        v: &'v Node<'v>,
        path: &mut String,
        depth: usize,
        place: Place,
    ) -> Option<(&'v str, Res<'v>)> {
        if self.deep(depth, path) {
            return None;
        }
        let Some(obj) = v.as_object() else {
            let at = if path.is_empty() { "Resource" } else { path };
            self.error(IssueCode::Structure, at, "a resource must be a JSON object");
            return None;
        };
        let rt = match obj.get("resourceType").and_then(Node::as_str) {
            Some(t) if self.model.is_resource_type(t) => t,
            _ => {
                let at = if path.is_empty() { "Resource" } else { path };
                self.error(
                    IssueCode::Structure,
                    at,
                    "resourceType is missing or not a FHIR R4 resource type",
                );
                return None;
            }
        };
        if path.is_empty() {
            path.push_str(rt);
        }
        self.resources.push((path.clone(), rt, v));
        match place {
            Place::Contained | Place::NestedContained => {
                if place == Place::NestedContained {
                    self.error(
                        IssueCode::Invariant,
                        path,
                        "dom-2: a contained resource must not contain resources",
                    );
                }
                if obj.get("id").is_none() {
                    self.error(
                        IssueCode::Required,
                        path,
                        "a contained resource must have an id",
                    );
                }
                if obj.get("text").is_some() {
                    // dom-6 is a best-practice warning in R4.
                    self.issues.push(Issue::new(
                        Severity::Warning,
                        IssueCode::Invariant,
                        path,
                        "dom-5/6: a contained resource should not have a narrative".into(),
                    ));
                }
                if let Some(meta) = obj.get("meta") {
                    if meta.get("versionId").is_some() || meta.get("lastUpdated").is_some() {
                        self.error(
                            IssueCode::Invariant,
                            path,
                            "dom-4: a contained resource must not have meta.versionId or meta.lastUpdated",
                        );
                    }
                    if meta.get("security").is_some() {
                        self.error(
                            IssueCode::Invariant,
                            path,
                            "dom-5: a contained resource must not have a security label",
                        );
                    }
                }
            }
            Place::Root | Place::Embedded => {}
        }
        let mut res = Res::default();
        let inner = match place {
            Place::Contained | Place::NestedContained => Place::NestedContained,
            _ => Place::Contained,
        };
        if let Some(def) = self.model.def(rt) {
            self.object(obj, def, path, depth, &mut res, inner, None);
        }
        if matches!(place, Place::Root | Place::Embedded) {
            self.local_references(path, &res);
        }
        match rt {
            "Bundle" => bundle::check_bundle(self, obj, path, &res),
            "Parameters" => bundle::check_parameters(self, &res),
            _ => {}
        }
        Some((rt, res))
    }

    /// `ref-1` and `dom-3`: local references point at contained resources, and each contained
    /// resource is referenced from the resource (or refers to it with `#`).
    fn local_references(&mut self, path: &str, res: &Res<'v>) {
        for (at, r) in &res.refs {
            if let Some(id) = r.strip_prefix('#') {
                if !id.is_empty() && !res.contained.iter().any(|(_, c)| *c == Some(id)) {
                    self.error(
                        IssueCode::Invariant,
                        at,
                        "ref-1: a local reference (#id) must point to a contained resource",
                    );
                }
            }
        }
        if !self.opts.check_contained {
            return;
        }
        let container_referenced =
            res.refs.iter().any(|(_, r)| *r == "#") || res.local_uris.contains(&"#");
        for (at, id) in &res.contained {
            let Some(id) = id else { continue };
            let referenced = res
                .refs
                .iter()
                .map(|(_, r)| *r)
                .chain(res.local_uris.iter().copied())
                .any(|r| r.strip_prefix('#') == Some(id));
            if !referenced && !container_referenced {
                self.error(
                    IssueCode::Invariant,
                    at,
                    format!(
                        "dom-3: the contained resource is not referenced from elsewhere in {}",
                        type_of(path)
                    ),
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn object(
        &mut self,
        obj: &'v Object<'v>,
        def: &Def,
        path: &mut String,
        depth: usize,
        res: &mut Res<'v>,
        contained_place: Place,
        index: Option<usize>,
    ) {
        if obj.is_empty() {
            self.error(
                IssueCode::Invalid,
                path,
                "ele-1: an element must have a value or children (empty object)",
            );
            return;
        }
        // The choices one of whose types was seen (bit per choice, the first 64).
        let mut chosen = 0u64;
        for (k, v) in obj.iter() {
            let len = path.len();
            path.push('.');
            let Some(prop) = def.props.get(k) else {
                push_name(path, k);
                self.error(
                    IssueCode::Structure,
                    path,
                    "unknown element: not part of this type in FHIR R4",
                );
                path.truncate(len);
                continue;
            };
            if prop.choice != 0 && prop.choice <= 64 {
                let bit = 1u64 << (prop.choice - 1);
                let name = k.strip_prefix('_').unwrap_or(k);
                // Seen before (rare): the first key of the choice says which type it took
                // (`_name` beside `name` is one type).
                let other = chosen & bit != 0
                    && obj
                        .keys()
                        .find(|o| def.props.get(*o).is_some_and(|p| p.choice == prop.choice))
                        .is_some_and(|first| first.strip_prefix('_').unwrap_or(first) != name);
                if other {
                    // A property of the type: its name is the schema's, never data.
                    let p = format!("{path}{name}");
                    self.error(
                        IssueCode::Structure,
                        &p,
                        "a choice element (name[x]) holds one type: another of its types is here too",
                    );
                }
                chosen |= bit;
            }
            // FHIRPath names a primitive's extensions under the primitive (`birthDate.extension`).
            path.push_str(k.strip_prefix('_').unwrap_or(k));
            if prop.array {
                let Some(items) = v.as_array() else {
                    self.error(
                        IssueCode::Structure,
                        path,
                        "wrong JSON type: FHIR R4 has a JSON array here",
                    );
                    path.truncate(len);
                    continue;
                };
                // R4 JSON: a repeating primitive's values and their `_` array line up, with
                // null where one has nothing.
                let misaligned = k
                    .strip_prefix('_')
                    .and_then(|name| obj.get(name))
                    .and_then(|p| p.as_array())
                    .is_some_and(|p| p.len() != items.len());
                if items.is_empty() {
                    self.error(
                        IssueCode::Invalid,
                        path,
                        "an array must not be empty: leave the element out instead",
                    );
                } else if misaligned {
                    self.error(
                        IssueCode::Structure,
                        path,
                        "a primitive's values and its `_` array (ids and extensions) must have \
                         the same length, null where one has nothing",
                    );
                } else if !self.deep(depth + 1, path) {
                    for (i, item) in items.iter().enumerate() {
                        if item.is_null() && k.starts_with('_') {
                            continue;
                        }
                        let l = path.len();
                        push_index(path, i);
                        self.value(
                            item,
                            &prop.ty,
                            k,
                            path,
                            depth + 2,
                            res,
                            Some(i),
                            contained_place,
                        );
                        self.schema_value(item, prop, path);
                        path.truncate(l);
                    }
                }
            } else {
                // A Bundle entry's resource knows the entry's index.
                let index = if def.kind == Kind::BundleEntry {
                    index
                } else {
                    None
                };
                self.value(v, &prop.ty, k, path, depth + 1, res, index, contained_place);
                self.schema_value(v, prop, path);
            }
            path.truncate(len);
        }
        for name in def.schema_required.iter() {
            if !obj.contains_key(name) {
                let p = format!("{path}.{name}");
                self.error(
                    IssueCode::Required,
                    &p,
                    "required element is missing (minimum cardinality 1)",
                );
            }
        }
        {
            for name in def.required {
                let present = match name.strip_suffix("[x]") {
                    Some(prefix) => obj.keys().any(|k| {
                        k.strip_prefix(prefix)
                            .or_else(|| k.strip_prefix('_').and_then(|k| k.strip_prefix(prefix)))
                            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
                    }),
                    None => {
                        obj.contains_key(name)
                            || obj.keys().any(|k| k.strip_prefix('_') == Some(name))
                    }
                };
                if !present {
                    let p = format!("{path}.{name}");
                    self.error(
                        IssueCode::Required,
                        &p,
                        "required element is missing (minimum cardinality 1)",
                    );
                }
            }
        }
        if def.kind != Kind::Plain {
            self.type_rules(obj, def, path, res);
        }
        if def.invariants {
            for (message, error) in invariant::broken(&def.name, obj) {
                let severity = if error {
                    Severity::Error
                } else {
                    Severity::Warning
                };
                let issue = Issue::new(severity, IssueCode::Invariant, path, message.into());
                self.issues.push(issue);
            }
        }
    }

    /// What the schema says of one value (an array's item, or the property's value): its JSON
    /// type, its pattern and its allowed codes. A complex type must be an object.
    fn schema_value(&mut self, v: &Node<'_>, prop: &Prop, path: &str) {
        if !prop.json.holds(v) {
            self.error(
                IssueCode::Structure,
                path,
                format!(
                    "wrong JSON type: FHIR R4 has a JSON {} here",
                    prop.json.name()
                ),
            );
            return;
        }
        if let Ty::Def(d) = prop.ty {
            if self.model.types[d as usize].prim == Prim::Complex && !v.is_object() {
                self.error(
                    IssueCode::Structure,
                    path,
                    "wrong JSON type: FHIR R4 has a JSON object here",
                );
                return;
            }
        }
        if let (Some(i), Some(s)) = (prop.pattern, v.as_str()) {
            let pattern = &self.model.patterns[usize::from(i)];
            if !pattern.is_match(s) {
                let ty = &pattern.ty;
                self.error(
                    IssueCode::Value,
                    path,
                    format!("not a valid FHIR {ty} (schema pattern of {ty})"),
                );
            }
        }
        if !prop.values.is_empty()
            && !v
                .as_str()
                .is_some_and(|s| prop.values.iter().any(|c| &**c == s))
        {
            self.error(
                IssueCode::CodeInvalid,
                path,
                "code is not in the value set this element is bound to (required binding)",
            );
        }
        if let (Some(b), Some(s)) = (prop.binding, v.as_str()) {
            if !b.holds(s) {
                self.error(
                    IssueCode::CodeInvalid,
                    path,
                    format!("required binding: {}", b.problem()),
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn value(
        &mut self,
        v: &'v Node<'v>,
        ty: &Ty,
        name: &str,
        path: &mut String,
        depth: usize,
        res: &mut Res<'v>,
        index: Option<usize>,
        contained_place: Place,
    ) {
        if self.deep(depth, path) {
            return;
        }
        match ty {
            Ty::Resource => {
                if name == "contained" {
                    if !self.opts.check_contained {
                        return;
                    }
                    if let Some((_, inner)) = self.resource(v, path, depth, contained_place) {
                        res.contained
                            .push((path.clone(), v.get("id").and_then(Node::as_str)));
                        res.refs.extend(inner.refs);
                        res.local_uris.extend(inner.local_uris);
                        res.embedded.extend(inner.embedded);
                    }
                } else if let Some((rt, inner)) = self.resource(v, path, depth, Place::Embedded) {
                    res.embedded.push(Embedded {
                        entry: index,
                        resource_type: rt,
                        id: v.get("id").and_then(Node::as_str),
                        res: inner,
                    });
                }
            }
            Ty::Code => self.string_value(v, path, true),
            Ty::Xhtml => {
                if let Some(s) = v.as_str() {
                    if let Err(e) = xhtml::check(s) {
                        let code = if e.invariant {
                            IssueCode::Invariant
                        } else {
                            IssueCode::Invalid
                        };
                        self.error(code, path, e.message);
                    }
                }
            }
            Ty::Def(d) => {
                let model = self.model;
                let def = &model.types[*d as usize];
                if def.prim != Prim::Complex {
                    self.primitive(v, def, path, res);
                } else if let Some(obj) = v.as_object() {
                    self.object(obj, def, path, depth, res, contained_place, index);
                }
            }
        }
    }

    /// `bounded`: R4's 1 MB applies (`string` and what derives from it, not base64Binary,
    /// whose size R4 leaves to the systems: the frame or body limit of the source bounds it).
    fn string_value(&mut self, v: &Node<'_>, path: &str, bounded: bool) {
        if let Some(s) = v.as_str() {
            if s.is_empty() {
                self.error(
                    IssueCode::Invalid,
                    path,
                    "a primitive value must not be an empty string: leave the element out instead",
                );
            } else if bounded && s.len() > MAX_STRING_BYTES {
                self.error(
                    IssueCode::TooLong,
                    path,
                    "value is longer than 1 MB (1048576 bytes)",
                );
            } else if p::Scan::of(s).has(p::Scan::CONTROL) {
                self.error(
                    IssueCode::Value,
                    path,
                    "a string holds a control character (only tab, CR and LF are allowed)",
                );
            }
        }
    }

    fn primitive(&mut self, v: &'v Node<'v>, def: &Def, path: &str, res: &mut Res<'v>) {
        let ty = &*def.name;
        match v {
            Node::String(s) => {
                self.string_value(v, path, def.prim != Prim::Base64);
                if s.is_empty() {
                    return;
                }
                match def.prim {
                    Prim::Date if p::calendar_ok(s) == Some(false) => {
                        self.error(
                            IssueCode::Value,
                            path,
                            format!("not a valid {ty}: no such day in the calendar"),
                        );
                    }
                    Prim::Base64 if p::base64_len(s).is_none() => {
                        self.error(
                            IssueCode::Value,
                            path,
                            "not valid base64 (RFC 4648 alphabet and padding)",
                        );
                    }
                    Prim::String if self.opts.security_checks && p::looks_like_active_html(s) => {
                        self.error(
                            IssueCode::Security,
                            path,
                            "the text holds HTML markup that a browser would run or load (security check)",
                        );
                    }
                    Prim::Markdown if !self.opts.markdown_html && p::has_html_tag(s) => {
                        self.error(
                            IssueCode::Invalid,
                            path,
                            "the markdown holds an HTML tag, which this validator is set to refuse",
                        );
                    }
                    Prim::Canonical | Prim::Uri if s.starts_with('#') => res.local_uris.push(s),
                    // The specification's own examples use relative canonicals.
                    Prim::Canonical if !p::has_scheme(s) => self.issues.push(Issue::new(
                        Severity::Warning,
                        IssueCode::Invalid,
                        path,
                        "a canonical URL should be absolute unless it is a fragment (#id)".into(),
                    )),
                    _ => {}
                }
            }
            Node::Number(_) => {
                let (min, name) = match def.prim {
                    Prim::Integer => (i64::from(i32::MIN), "integer"),
                    Prim::PositiveInt => (1, "positiveInt"),
                    Prim::UnsignedInt => (0, "unsignedInt"),
                    _ => return,
                };
                let ok = v
                    .as_i64()
                    .is_some_and(|i| i >= min && i <= i64::from(i32::MAX));
                if !ok {
                    self.error(
                        IssueCode::Value,
                        path,
                        format!("not a valid {name} (a whole number in its 32-bit range)"),
                    );
                }
            }
            _ => {}
        }
    }

    /// Rules of particular data types.
    fn type_rules(&mut self, obj: &'v Object<'v>, def: &Def, path: &str, res: &mut Res<'v>) {
        let s = |k: &str| obj.get(k).and_then(Node::as_str);
        match def.kind {
            Kind::Reference => {
                if let Some(r) = s("reference") {
                    res.refs.push((path.to_string(), r));
                    if !r.is_empty() && !reference_syntax_ok(self.model, r) {
                        self.error(
                            IssueCode::Invalid,
                            path,
                            "a relative reference must be [ResourceType]/[id] (or a conditional [ResourceType]?query)",
                        );
                    }
                }
            }
            Kind::Attachment => {
                if let (Some(data), Some(size)) =
                    (s("data"), obj.get("size").and_then(Node::as_u64))
                {
                    if let Some(len) = p::base64_len(data) {
                        if len as u64 != size {
                            self.error(
                                IssueCode::Structure,
                                path,
                                "Attachment.size does not match the size of the decoded data",
                            );
                        }
                    }
                }
                if !self.opts.allow_example_urls && s("url").is_some_and(p::is_example_url) {
                    let p = format!("{path}.url");
                    self.error(
                        IssueCode::Invalid,
                        &p,
                        "example URLs (example.org, acme.com …) are not allowed here",
                    );
                }
            }
            Kind::Coding => {
                if let Some(sys) = s("system") {
                    if !sys.is_empty() && !p::has_scheme(sys) {
                        let p = format!("{path}.system");
                        self.error(
                            IssueCode::Invalid,
                            &p,
                            "Coding.system must be an absolute URI, not a local reference",
                        );
                    }
                }
            }
            Kind::Period => {
                if let (Some(a), Some(b)) = (s("start"), s("end")) {
                    if !period_ordered(a, b) {
                        self.error(
                            IssueCode::Invariant,
                            path,
                            "per-1: if present, start shall have a lower value than end",
                        );
                    }
                }
            }
            Kind::Extension => {
                match s("url") {
                    None => {
                        let p = format!("{path}.url");
                        self.error(IssueCode::Required, &p, "Extension.url is required");
                    }
                    Some(u) => {
                        let p = format!("{path}.url");
                        if u.contains('|') {
                            self.error(
                                IssueCode::Invalid,
                                &p,
                                "an extension URL must not carry a version (|version)",
                            );
                        } else if !p::has_scheme(u)
                            && !u.is_empty()
                            && path.matches(".extension").count() < 2
                        {
                            self.error(IssueCode::Invalid, &p, "an extension URL must be absolute");
                        }
                        if !self.opts.allow_example_urls && p::is_example_url(u) {
                            self.error(
                                IssueCode::Invalid,
                                &p,
                                "example URLs (example.org, acme.com …) are not allowed here",
                            );
                        }
                    }
                }
                if let Some((_, want)) =
                    s("url").and_then(|u| CORE_EXTENSIONS.iter().find(|(c, _)| *c == u))
                {
                    if let Some(k) = obj.keys().find(|k| k.starts_with("value")) {
                        if k != *want {
                            let p = format!("{path}.{}", k);
                            self.error(
                                IssueCode::Structure,
                                &p,
                                "this core extension's definition allows another value type here",
                            );
                        }
                    }
                }
                let has_value = obj.keys().any(|k| k.starts_with("value"));
                let has_ext = obj.contains_key("extension");
                if has_value == has_ext {
                    self.error(
                        IssueCode::Invariant,
                        path,
                        "ext-1: an extension must have either extensions or a value[x], not both",
                    );
                }
            }
            Kind::RiskPrediction => {
                if let Some(pr) = obj.get("probabilityDecimal").and_then(Node::as_f64) {
                    if pr > 100.0 {
                        self.error(
                            IssueCode::Invariant,
                            path,
                            "ras-2: probability must be <= 100",
                        );
                    }
                }
                if let Some(r) = obj.get("probabilityRange") {
                    for end in ["low", "high"] {
                        if r.get(end)
                            .and_then(|e| e.get("value"))
                            .and_then(Node::as_f64)
                            .is_some_and(|v| v > 100.0)
                        {
                            self.error(
                                IssueCode::Invariant,
                                path,
                                "ras-2: probability must be <= 100",
                            );
                        }
                    }
                }
            }
            Kind::Plain | Kind::BundleEntry => {}
        }
    }
}

/// Appends `[i]` without the formatting machinery (it runs for every array item).
fn push_index(path: &mut String, i: usize) {
    path.push('[');
    // An index fits: a slice holds at most isize::MAX elements.
    crate::normalize::value::push_int(path, i as i64);
    path.push(']');
}

/// Core extensions (hl7.org/fhir/StructureDefinition) and the one value[x] their R4
/// definitions allow.
pub(crate) const CORE_EXTENSIONS: &[(&str, &str)] = &[
    (
        "http://hl7.org/fhir/StructureDefinition/narrativeLink",
        "valueUrl",
    ),
    (
        "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
        "valueCode",
    ),
    (
        "http://hl7.org/fhir/StructureDefinition/originalText",
        "valueString",
    ),
    (
        "http://hl7.org/fhir/StructureDefinition/rendered-value",
        "valueString",
    ),
    (
        "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
        "valueString",
    ),
    (
        "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
        "valueAddress",
    ),
    (
        "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
        "valueDateTime",
    ),
    (
        "http://hl7.org/fhir/StructureDefinition/iso21090-nullFlavor",
        "valueCode",
    ),
];

/// `per-1` as the reference validator reads it: with both times, instants compare; otherwise
/// the dates compare at the precision they share, and equal dates of different precision
/// (`2023-06-21` against `2023-06-21T06:20:00Z`) cannot be ordered and fail.
pub(crate) fn period_ordered(start: &str, end: &str) -> bool {
    if let (Some((a, true)), Some((b, true))) = (p::sort_key(start), p::sort_key(end)) {
        return a <= b;
    }
    let date = |s: &str| -> usize { s.find('T').unwrap_or(s.len()).min(10) };
    let (da, db) = (&start[..date(start)], &end[..date(end)]);
    let n = da.len().min(db.len());
    match da[..n].cmp(&db[..n]) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => start.len() == end.len() && start <= end,
    }
}

/// `Type/id`, `Type/id/_history/vid`, `Type?query`, an absolute URI or a local `#id`.
pub(crate) fn reference_syntax_ok(model: &Model, r: &str) -> bool {
    if r.starts_with('#') || p::has_scheme(r) {
        return true;
    }
    if let Some((t, _query)) = r.split_once('?') {
        return model.is_resource_type(t);
    }
    let parts: Vec<&str> = r.split('/').collect();
    // A server-relative reference may have a base path before Type/id: take the last parts.
    let tail = match parts.len() {
        n if n >= 4 && parts[n - 2] == "_history" => &parts[n - 4..n - 2],
        n if n >= 2 => &parts[n - 2..],
        _ => return false,
    };
    model.is_resource_type(tail[0]) && p::is_id(tail[1])
}

fn type_of(path: &str) -> &str {
    path.split(['.', '[']).next().unwrap_or(path)
}
