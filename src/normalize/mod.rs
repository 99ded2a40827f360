//! HL7v2 → FHIR R4 normalization: the mapping engine that reads `adapters/` and turns a parsed
//! message into a FHIR R4 transaction Bundle with a Provenance that names the raw record.
//!
//! Pure: the output is a function of (message, mapping set, [`Link`]) only, so a replay with the
//! same mapping set gives the same bytes.
//!
//! The mapping files are data shaped like the HL7 v2-to-FHIR implementation guide (message maps →
//! segment maps → data-type maps → vocabulary maps; docs/normalization.md). [`Normalizer::load`]
//! compiles them once into a plan; [`Normalizer::map`] runs that plan over a message and writes
//! the Bundle's JSON directly, without an intermediate value tree.

mod check;
mod cond;
pub mod csv;
mod defaults;
mod emit;
mod engine;
mod files;
mod model;
mod plan;
mod v2types;
pub use plan::Unused;
pub(crate) mod value;

use crate::config::{NormalizeConfig, OutputCheck};
use crate::hl7::Message;

pub use emit::escape as escape_json;
pub use files::SourceFile;

/// Why a mapping set could not be loaded. Names the file, line and field.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}:{line}: {reason}")]
    Invalid {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What the derived record is linked to: the raw record it was made from.
#[derive(Debug, Clone, Copy)]
pub struct Link<'a> {
    /// The raw record's id, 32 hex characters.
    pub raw_record_id: &'a str,
    /// The raw record's commitment.
    pub raw_commitment: &'a [u8; 32],
    /// When the mapping ran (Unix ms): `Provenance.recorded`.
    pub mapped_ms: u64,
}

/// One resource of a mapped Bundle, as the read side filters by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedResource {
    pub resource_type: String,
    pub id: String,
    /// `meta.security` codes (v3 ActCode, e.g. `HIV`, `PSY`).
    pub security: Vec<String>,
}

/// A message mapped.
#[derive(Debug, Clone)]
pub struct Mapped {
    /// The FHIR R4 Bundle (type `transaction`), compact JSON.
    pub bundle: Vec<u8>,
    /// Segments and fields that carried data no mapping took, as `ZPI` or `PID-10` (names,
    /// never values), in message order without repeats.
    pub unmapped: Vec<String>,
    /// What was mapped with less than full fidelity (a value that is not a valid date, a time
    /// without a zone, a code outside its value set…): field names and reasons, never values.
    pub warnings: Vec<String>,
    /// Resources the mapping made but left out of the Bundle because an element R4 requires was
    /// not in the message (a Coverage without a payor), by type name, one entry per resource.
    pub left_out: Vec<String>,
    /// Every resource in the Bundle (the Provenance last), in Bundle order.
    pub resources: Vec<MappedResource>,
    /// The message map used (`ADT_A01`, `_default`…).
    pub message_map: String,
    /// `Ok` when the Bundle is shown valid FHIR R4 by how it was built, without parsing it
    /// back (the full check would accept it); else the rule that was not shown, a fixed label
    /// (`configured` when the configuration turned this off). The pipeline runs the full check
    /// on the latter (`normalize.output_check`).
    pub shown_valid: Result<(), &'static str>,
}

/// A message that could not be mapped. `label` is a fixed reason for metrics; `detail` names
/// segments and fields, never their content.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct MapError {
    pub label: &'static str,
    pub detail: String,
}

/// A compiled mapping set.
#[derive(Debug)]
pub struct Normalizer {
    plan: plan::Plan,
    ns: [u8; 16],
    /// `Ok` when [`Normalizer::map`] shows each Bundle valid as it builds it
    /// ([`Mapped::shown_valid`]): the configuration asks for it and what the plan itself writes
    /// (the Provenance's text, label codes) is shown once, here. Else every Bundle's label.
    check: Result<(), &'static str>,
    /// The segment ids the set's message maps name: what an unmapped item may be labelled by in
    /// metrics (a sender's made-up id, three letters of clinical text after a stray CR, is not).
    segments: std::collections::HashSet<[u8; 3]>,
}

impl Normalizer {
    /// Loads the mapping files (the built-in defaults or `adapters_dir`) and the site overrides.
    /// The first problem found is the error; [`Normalizer::lint`] gives them all.
    pub fn load(cfg: &NormalizeConfig) -> Result<Normalizer, LoadError> {
        Self::lint(cfg).map_err(|mut v| v.swap_remove(0))
    }

    /// Like [`Normalizer::load`], with every problem of every file.
    pub fn lint(cfg: &NormalizeConfig) -> Result<Normalizer, Vec<LoadError>> {
        let mut not_text = Vec::new();
        let mut read = |dir: &std::path::Path, site| -> Result<_, Vec<LoadError>> {
            let r = files::read_dir(dir, site)?;
            not_text.extend(r.not_text);
            Ok(r.files)
        };
        let base = match &cfg.adapters_dir {
            Some(d) => read(d, false)?,
            None => defaults::files(),
        };
        let site = match &cfg.site_dir {
            Some(d) => read(d, true)?,
            None => Vec::new(),
        };
        // By file and line, as an editor would walk them.
        let sorted = |mut errors: Vec<LoadError>| {
            errors.sort_by_cached_key(|e| match e {
                LoadError::Invalid { file, line, .. } => (file.clone(), *line),
                LoadError::Io { path, .. } => (path.display().to_string(), 0),
            });
            errors
        };
        if !not_text.is_empty() {
            // The set is not whole, so it is not compiled (a file left out would show as
            // names that nothing defines); the other files' own problems are still named.
            not_text.extend(files::load(base, site).err().unwrap_or_default());
            return Err(sorted(not_text));
        }
        let mut n = Self::from_files(base, site, &cfg.id_namespace).map_err(sorted)?;
        if !cfg.validate_output || cfg.output_check == OutputCheck::Walk {
            n.check = Err("configured");
        }
        Ok(n)
    }

    /// Compiles a mapping set given as files (tools and tests).
    pub fn from_files(
        base: Vec<SourceFile>,
        site: Vec<SourceFile>,
        id_namespace: &str,
    ) -> Result<Normalizer, Vec<LoadError>> {
        let ns = value::parse_uuid(id_namespace).ok_or_else(|| {
            vec![LoadError::Invalid {
                file: "configuration".into(),
                line: 0,
                reason: "normalize.id_namespace is not a UUID".into(),
            }]
        })?;
        let files = files::load(base, site)?;
        let plan = plan::compile(&files)?;
        let check = check::plan_shown(&plan);
        let segments = plan
            .messages
            .iter()
            .flat_map(|m| &m.groups)
            .flat_map(|g| &g.members)
            .filter_map(|m| match m {
                plan::Member::Seg { id, .. } => Some(*id),
                plan::Member::Group(_) => None,
            })
            .collect();
        Ok(Normalizer {
            plan,
            ns,
            check,
            segments,
        })
    }

    /// The built-in mapping files (what `adapters_dir` unset means).
    pub fn default_files() -> Vec<SourceFile> {
        defaults::files()
    }

    /// Whether an unmapped item (`PID-10`, `ZPI`) names a segment the set knows or a Z-segment,
    /// so that it may be a metric label; else it is counted as `other`.
    pub fn names_segment(&self, item: &str) -> bool {
        match item.as_bytes() {
            [b'Z', ..] => true,
            [a, b, c, ..] => self.segments.contains(&[*a, *b, *c]),
            _ => false,
        }
    }

    /// The mapping-set version: a hash of the files in use (also in every Provenance).
    pub fn version(&self) -> &str {
        &self.plan.version
    }

    /// Site files that change nothing: maps and vocabularies no row names (a misspelt name),
    /// and overrides without rows.
    pub fn unused_site_files(&self) -> &[(String, Unused)] {
        &self.plan.unused
    }

    /// Rows the set loads with that lint warns of (`file:line: why`): a key part compared as a
    /// number whose v2 type is no number.
    pub fn lint_warnings(&self) -> &[LoadError] {
        &self.plan.warnings
    }

    /// How many mapping files are in use (defaults and site).
    pub fn file_count(&self) -> usize {
        self.plan.files.len()
    }

    /// The message maps of the set, by name.
    pub fn message_maps(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.plan.messages.iter().map(|m| m.name.as_str()).collect();
        v.sort_unstable();
        v
    }

    /// The message map a message would be mapped with.
    pub fn message_map_for(&self, msg: &Message<'_>) -> Option<&str> {
        self.choose(msg)
            .map(|i| self.plan.messages[i].name.as_str())
    }

    fn choose(&self, msg: &Message<'_>) -> Option<usize> {
        let msh9 = msg.msh().field(9);
        let part = |n: usize| -> String {
            msg.text(msh9.component(n).raw())
                .map(|t| t.trim().to_string())
                .unwrap_or_default()
        };
        let (code, event, structure) = (part(1), part(2), part(3));
        let p = &self.plan;
        p.by_type
            .get(&format!("{code}^{event}"))
            .or_else(|| p.by_name.get(&structure))
            .or_else(|| p.by_name.get(&format!("{code}_{event}")))
            .copied()
            .or(p.default_message)
    }

    /// Maps one message.
    pub fn map(&self, msg: &Message<'_>, link: &Link<'_>) -> Result<Mapped, MapError> {
        // A defect met on one message fails that message (its raw record stays, its failure is
        // listed and replayable) instead of the thread that seals it. The map reads the plan
        // and writes only its own Build, so nothing shared is left half-changed.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.map_message(msg, link)))
            .unwrap_or_else(|_| {
                Err(MapError {
                    label: "internal",
                    detail: "the mapper failed on this message (a defect; the gateway log \
                             names where)"
                        .into(),
                })
            })
    }

    fn map_message(&self, msg: &Message<'_>, link: &Link<'_>) -> Result<Mapped, MapError> {
        let Some(mi) = self.choose(msg) else {
            return Err(MapError {
                label: "no_message_map",
                detail: "no message map for MSH-9 and no _default map".into(),
            });
        };
        let mm = &self.plan.messages[mi];
        let mapper = engine::Mapper::new(&self.plan, mm, self.ns, link);
        let mut build = mapper.run(msg)?;
        if !build.insts.iter().any(|i| i.has_data) {
            return Err(MapError {
                label: "no_resources",
                detail: format!("message map {} made no resource from this message", mm.name),
            });
        }
        let mut bundle = Vec::with_capacity(msg.bytes().len() * 10 + 2048);
        let written = emit::write(
            &self.plan,
            &mut build,
            &self.ns,
            link,
            self.check,
            &mut bundle,
        );
        if written.resources.len() <= 1 {
            // Only the Provenance: every resource lacked an element R4 requires (a
            // ServiceRequest without its patient), and a Provenance with no target is invalid.
            return Err(MapError {
                label: "no_resources",
                detail: format!(
                    "message map {} made no resource R4 can hold from this message ({})",
                    mm.name,
                    build.left_out.join(", ")
                ),
            });
        }
        Ok(Mapped {
            bundle,
            shown_valid: written.shown_valid,
            unmapped: build.unmapped,
            warnings: build.warnings,
            left_out: build.left_out,
            resources: written.resources,
            message_map: mm.name.clone(),
        })
    }
}
