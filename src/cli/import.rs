//! `medanchor import PATH...`: bulk onboarding of archives, offline (gateway stopped), through the
//! same pipeline as live traffic. Files and directories (recursively) of HL7v2 — single
//! messages or batch files, any line endings — and FHIR JSON or NDJSON. Re-running is safe:
//! what is already stored is recognised by the vault's dedup keys and counted as duplicate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;

use super::client::messages_of;
use crate::config::Config;
use crate::envelope::{now_ms, AckToken, Envelope, FormatHint, Origin, Outcome};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Stores};

/// What an import did.
#[derive(Debug, Default, Serialize)]
pub struct ImportSummary {
    pub files: u64,
    pub messages: u64,
    pub stored: u64,
    pub duplicate: u64,
    pub rejected: u64,
    /// Rejections by reason label (the quarantine keeps each input with its full reason).
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Could not be stored now (storage failure): run the import again.
    pub retry: u64,
    /// Files that could not be read (path and error).
    pub unreadable: Vec<String>,
}

fn files_under(paths: &[PathBuf], out: &mut Vec<PathBuf>, unreadable: &mut Vec<String>) {
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(entries) => {
                    let mut children: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                    children.sort();
                    files_under(&children, out, unreadable);
                }
                Err(e) => unreadable.push(format!("{}: {e}", p.display())),
            }
        } else {
            out.push(p.clone());
        }
    }
}

/// The messages of one file with the format each is to be read as.
fn split_file(path: &Path, bytes: &[u8], format: FormatHint) -> Vec<(Bytes, FormatHint)> {
    let json = match format {
        FormatHint::Fhir => true,
        FormatHint::Hl7v2 => false,
        FormatHint::Auto => crate::fhir::looks_like_json(bytes),
    };
    if !json {
        return messages_of(bytes, false)
            .into_iter()
            .map(|m| (Bytes::from(m), FormatHint::Hl7v2))
            .collect();
    }
    let ndjson = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("ndjson"));
    if ndjson {
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| (Bytes::copy_from_slice(l), FormatHint::Fhir))
            .collect()
    } else {
        vec![(Bytes::copy_from_slice(bytes), FormatHint::Fhir)]
    }
}

pub async fn run(
    cfg: &Config,
    paths: &[PathBuf],
    format: FormatHint,
    progress: bool,
) -> Result<ImportSummary> {
    let stores = Stores::open(cfg, true).with_context(|| {
        format!(
            "opening {} (stop the gateway first: it holds the data directory)",
            cfg.data_dir.display()
        )
    })?;
    let (pipeline, running) = Pipeline::start(cfg, &stores, Arc::new(Metrics::new()))?;
    let mut summary = ImportSummary::default();
    let mut files = Vec::new();
    files_under(paths, &mut files, &mut summary.unreadable);
    let bar = if progress {
        indicatif::ProgressBar::new(files.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut pending = FuturesUnordered::new();
    let limit = cfg.pipeline.max_in_flight.max(1);
    for file in &files {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                summary.unreadable.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        summary.files += 1;
        let name = file.display().to_string();
        for (index, (payload, format)) in split_file(file, &bytes, format).into_iter().enumerate() {
            summary.messages += 1;
            let (token, outcome) = AckToken::new();
            submit(&pipeline, payload, format, &name, index as u64, token).await;
            pending.push(outcome);
            while pending.len() >= limit {
                if let Some(o) = pending.next().await {
                    tally(&mut summary, o.ok());
                }
            }
        }
        bar.inc(1);
    }
    while let Some(o) = pending.next().await {
        tally(&mut summary, o.ok());
    }
    bar.finish_and_clear();
    drop(pipeline);
    running.finish().await;
    Ok(summary)
}

async fn submit(
    pipeline: &Arc<Pipeline>,
    payload: Bytes,
    format: FormatHint,
    file: &str,
    index: u64,
    token: AckToken,
) {
    pipeline
        .submit(Envelope {
            payload,
            origin: Origin::Import {
                file: file.to_string(),
                index,
            },
            format,
            received_ms: now_ms(),
            token,
        })
        .await;
}

fn tally(s: &mut ImportSummary, outcome: Option<Outcome>) {
    match outcome {
        Some(Outcome::Stored {
            duplicate: true, ..
        }) => s.duplicate += 1,
        Some(Outcome::Stored { .. }) => s.stored += 1,
        Some(Outcome::Rejected(r)) => {
            s.rejected += 1;
            *s.rejected_by_reason.entry(r.label.to_string()).or_default() += 1;
        }
        Some(Outcome::Retry { .. }) | None => s.retry += 1,
    }
}
