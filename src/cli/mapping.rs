//! `medanchor mapping …`: tools for integration engineers who edit adapters/ (docs/normalization.md).
//!
//! These run offline on files: nothing is stored, no gateway is needed. The Link a Bundle is
//! bound to is a stand-in made from the message's own hash (there is no raw record yet), so the
//! same file always gives the same Bundle.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::config::NormalizeConfig;
use crate::hl7::Message;
use crate::normalize::{Link, Mapped, Normalizer};

/// Where the mapping files come from: the configuration's `[normalize]`, overridden by flags.
pub fn config(
    base: &NormalizeConfig,
    adapters: Option<PathBuf>,
    site: Option<PathBuf>,
) -> NormalizeConfig {
    let mut c = base.clone();
    if adapters.is_some() {
        c.adapters_dir = adapters;
    }
    if site.is_some() {
        c.site_dir = site;
    }
    c
}

fn load(cfg: &NormalizeConfig) -> Result<Normalizer> {
    Normalizer::lint(cfg).map_err(|errors| {
        let mut s = String::from("the mapping set does not load:");
        for e in &errors {
            s.push_str("\n  ");
            s.push_str(&e.to_string());
        }
        anyhow::anyhow!(s)
    })
}

/// A stand-in for the raw record a message would be stored as: its id and commitment from the
/// message's BLAKE3 hash, the time fixed so output is reproducible.
struct StandIn {
    id: String,
    commitment: [u8; 32],
}

impl StandIn {
    fn of(bytes: &[u8]) -> StandIn {
        let h = blake3::hash(bytes);
        StandIn {
            id: hex::encode(&h.as_bytes()[..16]),
            commitment: *h.as_bytes(),
        }
    }
    fn link(&self, mapped_ms: u64) -> Link<'_> {
        Link {
            raw_record_id: &self.id,
            raw_commitment: &self.commitment,
            mapped_ms,
        }
    }
}

fn messages(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // A batch that does not split (a BTS count the batch disagrees with) is named as such,
    // not mapped whole as one "message" that does not start with MSH.
    if crate::hl7::batch::is_batch(&bytes) {
        return crate::cli::client::split_messages(&bytes, false)
            .map_err(|e| anyhow::anyhow!("{}: not a batch that splits: {e}", path.display()));
    }
    Ok(crate::cli::client::messages_of(&bytes, false))
}

/// Maps one message as the gateway does, the check of the Bundle made included: a Bundle the
/// gateway would refuse (`invalid_output`) fails here too, rather than being shown as if it
/// would be stored.
fn map_one(
    cfg: &NormalizeConfig,
    n: &Normalizer,
    bytes: &[u8],
    mapped_ms: u64,
) -> Result<Mapped, String> {
    let msg = Message::parse(bytes).map_err(|e| format!("not HL7v2: {e}"))?;
    let stand_in = StandIn::of(bytes);
    let failed = |e: crate::normalize::MapError| format!("mapping failed ({}): {e}", e.label);
    let m = n.map(&msg, &stand_in.link(mapped_ms)).map_err(failed)?;
    crate::pipeline::check_output(cfg, &m).map_err(failed)?;
    Ok(m)
}

/// `mapping test`: the Bundle each message produces. With `json`, exactly one line per message
/// on stdout (the Bundle, or `null` when it failed) and everything else on stderr.
pub fn test(cfg: &NormalizeConfig, files: &[PathBuf], json: bool) -> Result<bool> {
    let n = load(cfg)?;
    let now = crate::envelope::now_ms();
    let mut out = super::stdout();
    let mut all_ok = true;
    for f in files {
        // A file that cannot be read or split fails alone (one `null` line with --json); the
        // other files are still mapped.
        let msgs = match messages(f) {
            Ok(m) => m,
            Err(e) => {
                all_ok = false;
                if json {
                    out.write_all(b"null\n")?;
                }
                eprintln!("{e:#}");
                continue;
            }
        };
        for (i, bytes) in msgs.iter().enumerate() {
            let name = if msgs.len() > 1 {
                format!("{} #{}", f.display(), i + 1)
            } else {
                f.display().to_string()
            };
            match map_one(cfg, &n, bytes, now) {
                Ok(m) => {
                    if json {
                        out.write_all(&m.bundle)?;
                        out.write_all(b"\n")?;
                        for u in &m.unmapped {
                            eprintln!("{name}: unmapped {u}");
                        }
                        for w in &m.warnings {
                            eprintln!("{name}: warning: {w}");
                        }
                    } else {
                        writeln!(
                            out,
                            "{name}: message map {}, {}",
                            m.message_map,
                            summary(&m)
                        )?;
                        if !m.unmapped.is_empty() {
                            writeln!(out, "  unmapped: {}", m.unmapped.join(", "))?;
                        }
                        for w in &m.warnings {
                            writeln!(out, "  warning: {w}")?;
                        }
                        let v: Value = serde_json::from_slice(&m.bundle)?;
                        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                    }
                }
                Err(e) => {
                    all_ok = false;
                    if json {
                        out.write_all(b"null\n")?;
                    }
                    eprintln!("{name}: {e}");
                }
            }
        }
    }
    Ok(all_ok)
}

/// `Patient 1, Encounter 1, Observation 10 …` in Bundle order.
fn summary(m: &Mapped) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for r in &m.resources {
        match counts.iter_mut().find(|(t, _)| *t == r.resource_type) {
            Some((_, n)) => *n += 1,
            None => counts.push((&r.resource_type, 1)),
        }
    }
    let mut s = format!("{} resources:", m.resources.len());
    for (i, (t, n)) in counts.iter().enumerate() {
        s.push_str(if i == 0 { " " } else { ", " });
        s.push_str(&format!("{t} {n}"));
    }
    let labelled: Vec<String> = m
        .resources
        .iter()
        .filter(|r| !r.security.is_empty())
        .map(|r| format!("{} {}", r.resource_type, r.security.join("+")))
        .collect();
    if !labelled.is_empty() {
        s.push_str(&format!("; labelled: {}", labelled.join(", ")));
    }
    s
}

/// `mapping lint`: every problem of every file, or a summary of the set.
pub fn lint(cfg: &NormalizeConfig) -> Result<bool> {
    // Written, not printed: a reader that stops early (`| head`) ends the command, not a panic.
    let mut out = super::stdout();
    match Normalizer::lint(cfg) {
        Ok(n) => {
            for (f, why) in n.unused_site_files() {
                writeln!(out, "warning: {f}: {why}")?;
            }
            for w in n.lint_warnings() {
                writeln!(out, "warning: {w}")?;
            }
            writeln!(
                out,
                "ok: mapping set {} ({} files; message maps: {})",
                n.version(),
                n.file_count(),
                n.message_maps().join(", ")
            )?;
            Ok(true)
        }
        Err(errors) => {
            for e in &errors {
                writeln!(out, "{e}")?;
            }
            eprintln!(
                "{} {}",
                errors.len(),
                if errors.len() == 1 {
                    "problem"
                } else {
                    "problems"
                }
            );
            Ok(false)
        }
    }
}

/// `mapping diff`: what the site overrides change for the messages of a file — each message
/// mapped with and without `site_dir`, the JSON paths that differ (resources matched by type and
/// id; the Provenance, which names the mapping set, left out).
pub fn diff(cfg: &NormalizeConfig, file: &Path) -> Result<bool> {
    let Some(site) = &cfg.site_dir else {
        anyhow::bail!("no site directory: give --site DIR or set normalize.site_dir");
    };
    let with = load(cfg)?;
    let mut base_cfg = cfg.clone();
    base_cfg.site_dir = None;
    let without = load(&base_cfg)?;
    let mut out = super::stdout();
    writeln!(
        out,
        "site {}: mapping set {} (without it {})",
        site.display(),
        &with.version()[..12],
        &without.version()[..12]
    )?;
    let mut same = true;
    for (i, bytes) in messages(file)?.iter().enumerate() {
        let a = map_one(&base_cfg, &without, bytes, 0);
        let b = map_one(cfg, &with, bytes, 0);
        writeln!(out, "{} #{}:", file.display(), i + 1)?;
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                writeln!(
                    out,
                    "  without site: {}",
                    a.map(|_| "mapped".to_string()).unwrap_or_else(|e| e)
                )?;
                writeln!(
                    out,
                    "  with site:    {}",
                    b.map(|_| "mapped".to_string()).unwrap_or_else(|e| e)
                )?;
                same = false;
                continue;
            }
        };
        let va: Value = serde_json::from_slice(&a.bundle)?;
        let vb: Value = serde_json::from_slice(&b.bundle)?;
        let mut lines = Vec::new();
        diff_bundles(&va, &vb, &mut lines);
        for u in &b.unmapped {
            if !a.unmapped.contains(u) {
                lines.push(format!("  unmapped now: {u}"));
            }
        }
        for u in &a.unmapped {
            if !b.unmapped.contains(u) {
                lines.push(format!("  mapped now: {u}"));
            }
        }
        if lines.is_empty() {
            writeln!(out, "  no difference")?;
        } else {
            same = false;
            for l in lines {
                writeln!(out, "{l}")?;
            }
        }
    }
    Ok(same)
}

fn resources_by_key(b: &Value) -> Vec<(String, &Value)> {
    b["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| &e["resource"])
                .filter(|r| r["resourceType"] != "Provenance")
                .map(|r| {
                    (
                        format!(
                            "{}/{}",
                            r["resourceType"].as_str().unwrap_or("?"),
                            r["id"].as_str().unwrap_or("?")
                        ),
                        r,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn diff_bundles(a: &Value, b: &Value, out: &mut Vec<String>) {
    let ra = resources_by_key(a);
    let rb = resources_by_key(b);
    for (k, va) in &ra {
        match rb.iter().find(|(kb, _)| kb == k) {
            Some((_, vb)) => diff_values(k, va, vb, out),
            None => out.push(format!("  - {k} (only without the site)")),
        }
    }
    for (k, _) in &rb {
        if !ra.iter().any(|(ka, _)| ka == k) {
            out.push(format!("  + {k} (only with the site)"));
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    Some(vb) => diff_values(&p, va, vb, out),
                    None => out.push(format!("  {p}: {} → (absent)", short(va))),
                }
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    out.push(format!("  {path}.{k}: (absent) → {}", short(vb)));
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let p = format!("{path}[{i}]");
                match (x.get(i), y.get(i)) {
                    (Some(va), Some(vb)) => diff_values(&p, va, vb, out),
                    (Some(va), None) => out.push(format!("  {p}: {} → (absent)", short(va))),
                    (None, Some(vb)) => out.push(format!("  {p}: (absent) → {}", short(vb))),
                    (None, None) => {}
                }
            }
        }
        _ if a != b => out.push(format!("  {path}: {} → {}", short(a), short(b))),
        _ => {}
    }
}

/// `medanchor mapping replay`: maps the chosen stored records again with the mapping set in
/// use (gateway stopped); prints what it did. False when a record could not be read.
pub fn replay(
    cfg: &crate::config::Config,
    ncfg: &NormalizeConfig,
    filter: &crate::remap::Filter,
    json: bool,
) -> Result<bool> {
    let normalizer = load(ncfg)?;
    let stores = super::open_offline(cfg)?;
    let compress = cfg.vault.compression();
    let report = crate::remap::remap(&stores, &normalizer, ncfg, filter, compress, &mut |r| {
        if !json {
            eprint!("\r{} mapped, {} failed", r.mapped, r.failed);
        }
    })?;
    let mut out = super::stdout();
    if json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        eprintln!();
        for p in &report.problems {
            eprintln!("FAILED: {p}");
        }
        writeln!(
            out,
            "{} records mapped again with mapping set {}: {} mapped, {} failed (`medanchor mapping failures` lists them), {} unreadable",
            report.chosen,
            normalizer.version(),
            report.mapped,
            report.failed,
            report.unreadable
        )?;
    }
    Ok(report.unreadable == 0)
}

/// `medanchor mapping failures`: the raw records whose last mapping failed, with why (names of
/// segments and fields, never values).
pub fn failures(cfg: &crate::config::Config, json: bool) -> Result<bool> {
    let stores = super::open_offline(cfg)?;
    use crate::vault::Vault;
    let failures = stores.vault.mapping_failures()?;
    // Written, not printed: a reader that leaves early (`| head`) ends the listing quietly
    // (`super::Output`) where `println!` would panic.
    let mut out = super::stdout();
    for (id, f) in &failures {
        if json {
            let mut v = serde_json::to_value(f)?;
            v["record_id"] = Value::String(id.to_string());
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "{id}  {}  {}  mapping set {}: {}",
                crate::hl7::ack::hl7_timestamp(f.at_ms),
                f.label,
                if f.mapping_version.is_empty() {
                    "-"
                } else {
                    &f.mapping_version
                },
                f.detail
            )?;
        }
    }
    if !json {
        eprintln!("{} records whose last mapping failed", failures.len());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_changed_added_and_removed_paths() {
        let a: Value = serde_json::json!({"entry":[{"resource":{"resourceType":"Patient","id":"1","gender":"male","name":[{"family":"A"}]}},{"resource":{"resourceType":"Provenance","id":"p"}}]});
        let b: Value = serde_json::json!({"entry":[{"resource":{"resourceType":"Patient","id":"1","gender":"female","name":[{"family":"A"},{"family":"B"}],"active":true}},{"resource":{"resourceType":"Encounter","id":"2"}}]});
        let mut out = Vec::new();
        diff_bundles(&a, &b, &mut out);
        assert_eq!(
            out,
            vec![
                "  Patient/1.gender: \"male\" → \"female\"",
                "  Patient/1.name[1]: (absent) → {\"family\":\"B\"}",
                "  Patient/1.active: (absent) → true",
                "  + Encounter/2 (only with the site)",
            ]
        );
    }
}
