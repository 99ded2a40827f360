//! Bundle rules (R4 `bdl-*` invariants, fullUrl syntax, duplicate entries, search sets) and
//! the resolution of references inside a Bundle and a Parameters resource.

use std::collections::{HashMap, HashSet};

use super::doc::{Node, Object};

use super::primitive as p;
use super::walk::{Res, Walker};
use super::{IssueCode, Severity};

/// One entry, as the checks see it.
struct Entry<'v, 'p> {
    /// The Bundle's path and the entry's index: the entry's path is made only for an issue.
    bundle: &'p str,
    index: usize,
    full_url: Option<&'v str>,
    resource_type: Option<&'v str>,
    id: Option<&'v str>,
    version: Option<&'v str>,
}

impl Entry<'_, '_> {
    fn path(&self) -> String {
        format!("{}.entry[{}]", self.bundle, self.index)
    }
}

const HISTORY: &str = "/_history/";

/// Where `/_history/` starts in a URL (a byte scan: this runs for every reference).
fn history_at(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    memchr::memchr_iter(b'_', b)
        .find(|&i| i > 0 && b[i - 1..].starts_with(HISTORY.as_bytes()))
        .map(|i| i - 1)
}

/// `http://server/base/Type/id` → (`http://server/base/`, Type, id), for a known resource type.
fn restful<'a>(w: &Walker, url: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return None;
    }
    let url = match history_at(url) {
        Some(h) => &url[..h],
        None => url,
    };
    let (rest, id) = url.rsplit_once('/')?;
    let (base, ty) = rest.rsplit_once('/')?;
    (w.model.is_resource_type(ty) && p::is_id(id)).then(|| (&url[..base.len() + 1], ty, id))
}

pub(crate) fn check_bundle<'v>(
    w: &mut Walker<'v, '_>,
    obj: &'v Object<'v>,
    path: &str,
    res: &Res<'v>,
) {
    let btype = obj.get("type").and_then(Node::as_str).unwrap_or("");
    let history = btype == "history";
    let searchset = btype == "searchset";
    let raw_entries: &[Node<'v>] = obj.get("entry").and_then(Node::as_array).unwrap_or(&[]);

    if obj.get("total").is_some() && !(searchset || history) {
        w.error(
            IssueCode::Invariant,
            &format!("{path}.total"),
            "bdl-1: total only when a search or history",
        );
    }
    // Link relations occur once each.
    if let Some(links) = obj.get("link").and_then(Node::as_array) {
        // A set, not a list: a hostile Bundle may carry tens of thousands of links.
        let mut seen: HashSet<&str> = HashSet::new();
        for (j, l) in links.iter().enumerate() {
            if let Some(rel) = l.get("relation").and_then(Node::as_str) {
                if !seen.insert(rel) {
                    w.error(
                        IssueCode::Invalid,
                        &format!("{path}.link[{j}]"),
                        "a link relation type may occur only once in a Bundle",
                    );
                }
            }
        }
    }

    let mut entries = Vec::with_capacity(raw_entries.len());
    for (i, e) in raw_entries.iter().enumerate() {
        let resource = e.get("resource");
        let entry = Entry {
            full_url: e.get("fullUrl").and_then(Node::as_str),
            resource_type: resource
                .and_then(|r| r.get("resourceType"))
                .and_then(Node::as_str),
            id: resource.and_then(|r| r.get("id")).and_then(Node::as_str),
            version: resource
                .and_then(|r| r.get("meta"))
                .and_then(|m| m.get("versionId"))
                .and_then(Node::as_str),
            bundle: path,
            index: i,
        };
        entry_rules(w, e, &entry, btype, i);
        entries.push(entry);
    }

    match btype {
        "document" | "message" => {
            let first = if btype == "document" {
                "Composition"
            } else {
                "MessageHeader"
            };
            if entries.first().and_then(|e| e.resource_type) != Some(first) {
                let rule = if btype == "document" {
                    "bdl-11"
                } else {
                    "bdl-12"
                };
                w.error(
                    IssueCode::Invariant,
                    path,
                    format!("{rule}: a {btype} must have a {first} as its first resource"),
                );
            }
        }
        _ => {}
    }

    if !history {
        duplicates(w, &entries);
    }
    if !(searchset || history) {
        resolve(w, btype, &entries, res);
    }
}

fn entry_rules(w: &mut Walker, e: &Node<'_>, entry: &Entry, btype: &str, i: usize) {
    let epath = || entry.path();
    let fpath = || format!("{}.fullUrl", entry.path());
    if let Some(f) = entry.full_url {
        if !p::has_scheme(f) {
            w.error(
                IssueCode::Invalid,
                &fpath(),
                "fullUrl must be an absolute URL (a relative fullUrl cannot identify the entry)",
            );
        } else if f.starts_with("urn:uuid:") && !p::is_urn_uuid(f) {
            w.error(IssueCode::Invalid, &fpath(), "not a valid urn:uuid");
        } else if f.starts_with("urn:oid:") && !p::is_urn_oid(f) {
            w.error(IssueCode::Invalid, &fpath(), "not a valid urn:oid");
        } else if history_at(f).is_some() {
            w.error(
                IssueCode::Invariant,
                &fpath(),
                "bdl-8: fullUrl cannot be a version specific reference",
            );
        } else if let (Some((_, t, id)), Some(rt), Some(rid)) =
            (restful(w, f), entry.resource_type, entry.id)
        {
            if t != rt || id != rid {
                w.error(
                    IssueCode::Invalid,
                    &fpath(),
                    "a RESTful fullUrl must end with the type and id of the entry's resource",
                );
            }
        }
    }
    let has = |k: &str| e.get(k).is_some();
    if !(has("resource") || has("request") || has("response")) {
        w.error(
            IssueCode::Invariant,
            &epath(),
            "bdl-5: an entry must have a resource, a request or a response",
        );
    }
    let needs_request = matches!(btype, "batch" | "transaction" | "history");
    if has("request") != needs_request {
        let msg = if needs_request {
            "bdl-3: entry.request is required in a batch, transaction or history"
        } else {
            "bdl-3: entry.request is only allowed in a batch, transaction or history"
        };
        w.error(IssueCode::Invariant, &epath(), msg);
    }
    let needs_response = matches!(btype, "batch-response" | "transaction-response" | "history");
    if has("response") != needs_response {
        let msg = if needs_response {
            "bdl-4: entry.response is required in a batch-response, transaction-response or history"
        } else {
            "bdl-4: entry.response is only allowed in a batch-response, transaction-response or history"
        };
        w.error(IssueCode::Invariant, &epath(), msg);
    }
    if has("search") && btype != "searchset" {
        w.error(
            IssueCode::Invariant,
            &epath(),
            "bdl-2: entry.search only when a search set",
        );
    }
    if btype == "searchset" {
        let mode = e
            .get("search")
            .and_then(|x| x.get("mode"))
            .and_then(Node::as_str);
        let outcome = entry.resource_type == Some("OperationOutcome");
        let rpath = || format!("{}.resource", entry.path());
        if mode == Some("outcome") && !outcome && entry.resource_type.is_some() {
            w.error(
                IssueCode::Invalid,
                &rpath(),
                "an entry of search mode 'outcome' must be an OperationOutcome",
            );
        } else if mode != Some("outcome")
            && !(mode.is_none() && outcome)
            && entry.resource_type.is_some()
            && entry.id.is_none()
        {
            w.error(IssueCode::Invalid, &rpath(), "search results must have ids");
        }
    }
    let _ = i;
}

/// `bdl-7` and duplicate resource identities: one entry per fullUrl (per version), one per
/// resource type and id where there is no fullUrl.
fn duplicates(w: &mut Walker, entries: &[Entry]) {
    // Key: (fullUrl, "", version) or ("", "Type", id, version) — borrowed, no allocation.
    type Key<'a> = (&'a str, &'a str, &'a str, Option<&'a str>);
    let mut seen: HashMap<Key, usize> = HashMap::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let key = match (e.full_url, e.resource_type, e.id) {
            (Some(f), _, _) => (f, "", "", e.version),
            (None, Some(t), Some(id)) => ("", t, id, e.version),
            _ => continue,
        };
        if let Some(first) = seen.insert(key, i) {
            let msg = if e.full_url.is_some() {
                format!(
                    "bdl-7: fullUrl is not unique in the Bundle (entry[{first}] has the same fullUrl and version)"
                )
            } else {
                format!("duplicate resource identity: entry[{first}] holds a resource of the same type and id")
            };
            let at = if e.full_url.is_some() {
                format!("{}.fullUrl", e.path())
            } else {
                format!("{}.resource.id", e.path())
            };
            w.error(IssueCode::BusinessRule, &at, msg);
        }
    }
}

/// How many entries share one identity (a fullUrl, or a type and id): in all, and per
/// `meta.versionId`.
#[derive(Default)]
struct Matching<'v> {
    all: usize,
    by_version: HashMap<&'v str, usize>,
}

impl<'v> Matching<'v> {
    fn add(&mut self, e: &Entry<'v, '_>) {
        self.all += 1;
        if let Some(v) = e.version {
            *self.by_version.entry(v).or_default() += 1;
        }
    }
}

/// References from entries to entries: each must match at most one entry, versions must
/// exist, and `urn:uuid:` references (and, in documents, relative ones) must resolve.
fn resolve(w: &mut Walker, btype: &str, entries: &[Entry], res: &Res) {
    // How many entries have each fullUrl, and each type and id (entries with no fullUrl or a
    // RESTful one), in all and per version: a reference is resolved in constant time, however many
    // entries a hostile Bundle holds and however many of them share an identity.
    let mut by_url: HashMap<&str, Matching> = HashMap::new();
    let mut by_type_id: HashMap<(&str, &str), Matching> = HashMap::new();
    for e in entries {
        if let Some(f) = e.full_url {
            by_url.entry(f).or_default().add(e);
        }
        if let (Some(t), Some(id)) = (e.resource_type, e.id) {
            if e.full_url.is_none_or(|f| restful(w, f).is_some()) {
                by_type_id.entry((t, id)).or_default().add(e);
            }
        }
    }
    let none = Matching::default();
    for emb in &res.embedded {
        let Some(i) = emb.entry else { continue };
        let Some(entry) = entries.get(i) else {
            continue;
        };
        let base = entry
            .full_url
            .and_then(|f| restful(w, f))
            .map(|(b, _, _)| b);
        for (at, r) in &emb.res.refs {
            if r.is_empty() || r.starts_with('#') || r.contains('?') {
                continue;
            }
            let (target, version) = match history_at(r) {
                Some(h) => (&r[..h], Some(&r[h + HISTORY.len()..])),
                None => (*r, None),
            };
            let absolute = p::has_scheme(target);
            let mut matching = &none;
            if absolute {
                matching = by_url.get(target).unwrap_or(&none);
            } else if let Some((t, id)) = target.rsplit_once('/') {
                let t = t.rsplit('/').next().unwrap_or(t);
                if let Some(b) = base {
                    matching = by_url.get(format!("{b}{t}/{id}").as_str()).unwrap_or(&none);
                }
                if matching.all == 0 {
                    matching = by_type_id.get(&(t, id)).unwrap_or(&none);
                }
            }
            let found_any = matching.all > 0;
            let n = match version {
                None => matching.all,
                Some(v) => matching.by_version.get(v).copied().unwrap_or(0),
            };
            match n {
                1 => {}
                0 if found_any => w.error(
                    IssueCode::NotFound,
                    at,
                    "the Bundle holds the referenced resource but not the referenced version",
                ),
                0 => {
                    let uuid = target.starts_with("urn:uuid:") || target.starts_with("urn:oid:");
                    let severity = match btype {
                        "transaction"
                        | "batch"
                        | "document"
                        | "message"
                        | "transaction-response"
                        | "batch-response"
                            if uuid =>
                        {
                            Some(Severity::Error)
                        }
                        "document" if !absolute => Some(Severity::Error),
                        _ if uuid => Some(Severity::Warning),
                        _ => None,
                    };
                    if let Some(severity) = severity {
                        w.issues.push(super::Issue::new(
                            severity,
                            IssueCode::NotFound,
                            at,
                            format!(
                                "the reference does not resolve to an entry of this {btype} Bundle"
                            ),
                        ));
                    }
                }
                _ => w.error(
                    IssueCode::Invalid,
                    at,
                    "the reference matches more than one entry of the Bundle",
                ),
            }
        }
    }
}

/// Relative references between the resources of a Parameters resource resolve among them.
pub(crate) fn check_parameters(w: &mut Walker, res: &Res) {
    let resources: Vec<(&str, Option<&str>)> = res
        .embedded
        .iter()
        .map(|e| (e.resource_type, e.id))
        .collect();
    for emb in &res.embedded {
        for (at, r) in &emb.res.refs {
            if r.is_empty() || r.starts_with('#') || r.contains('?') || p::has_scheme(r) {
                continue;
            }
            let target = history_at(r).map_or(*r, |h| &r[..h]);
            let Some((t, id)) = target.rsplit_once('/') else {
                continue;
            };
            if !resources
                .iter()
                .any(|(rt, rid)| *rt == t && *rid == Some(id))
            {
                w.error(
                    IssueCode::NotFound,
                    at,
                    "the reference does not resolve to a resource of this Parameters",
                );
            }
        }
    }
}
