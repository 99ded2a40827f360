//! Command implementations behind `main.rs` (the CLI edge: errors here are `anyhow`).

pub mod bench;
pub mod bench_api;
pub mod client;
pub mod import;
pub mod mapping;
pub mod principals;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use medanchor_merkle::{NoteVerifier, ProofBundle};

use crate::config::Config;
use crate::envelope::{now_ms, AckToken, Envelope, FormatHint, Origin, Outcome};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Stores};
use crate::vault::Vault;

/// Standard output for a command's results. A reader that leaves early (`| head`) makes the
/// next write fail with [`OutputClosed`] inside its `io::Error`, which `main` takes as the end of
/// the output, not as a failure; any other write error stays what it is.
pub struct Output(std::io::StdoutLock<'static>);

/// The reader of standard output went away.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed by its reader")]
pub struct OutputClosed;

pub fn stdout() -> Output {
    Output(std::io::stdout().lock())
}

impl Output {
    fn closed(e: std::io::Error) -> std::io::Error {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, OutputClosed)
        } else {
            e
        }
    }
}

impl std::io::Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(Output::closed)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(Output::closed)
    }
}

/// `println!` for a command's output, through [`Output`], so that a reader that leaves early
/// ends the command quietly instead of a panic; evaluates to `io::Result<()>`.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!($crate::cli::stdout(), $($arg)*)
    }};
}

/// Whether a command ended because standard output was closed by its reader ([`Output`]).
pub fn output_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<OutputClosed>())
    })
}

/// A progress bar on a terminal, nothing otherwise.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Opens a data directory that no gateway is running on.
pub fn open_offline(cfg: &Config) -> Result<Stores> {
    Stores::open(cfg, false).map_err(|e| {
        let text = e.to_string();
        if text.contains("lock") || text.contains("already open") {
            anyhow::anyhow!(
                "{text}\nthe data directory {} is in use by a running gateway: stop it first (a record's proof is also served by its HTTP API: GET /v1/records/ID/proof)",
                cfg.data_dir.display()
            )
        } else {
            anyhow::anyhow!("opening data directory {}: {text}", cfg.data_dir.display())
        }
    })
}

pub fn verify_bundle(path: &Path, key: Option<&str>, json: bool) -> Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let bundle: ProofBundle = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a proof bundle", path.display()))?;
    let pinned = key
        .map(NoteVerifier::parse)
        .transpose()
        .context("--key is not a verifier key")?;
    let result = bundle.verify(pinned.as_ref());
    let ok = result.is_ok();
    if json {
        let mut v = serde_json::json!({"record_id": bundle.record_id, "leaf_index": bundle.leaf_index, "tree_size": bundle.tree_size, "ok": ok});
        if let Err(e) = &result {
            v["error"] = e.to_string().into();
        }
        crate::outln!("{v}")?;
    } else {
        match &result {
            Ok(cp) => {
                let key = NoteVerifier::parse(&bundle.public_key)
                    .map(|k| k.key_id())
                    .unwrap_or_default();
                crate::outln!(
                    "ok: record {} is leaf {} of {} (tree size {}), checkpoint signed by {}{}",
                    bundle.record_id,
                    bundle.leaf_index,
                    cp.checkpoint.origin,
                    cp.checkpoint.size,
                    key,
                    if pinned.is_some() {
                        " (pinned)"
                    } else {
                        " (key taken from the bundle; pin it with --key)"
                    }
                )?;
            }
            Err(e) => eprintln!("FAILED: record {}: {e}", bundle.record_id),
        }
    }
    Ok(ok)
}

pub fn verify_all(cfg: &Config, json: bool) -> Result<bool> {
    // A damaged page can make the storage engine panic rather than fail: for the verifier that
    // is a finding to report, not a crash.
    let guarded = |what: &str, e: Box<dyn std::any::Any + Send>| {
        let why = e
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| e.downcast_ref::<&str>().copied())
            .unwrap_or("unknown");
        format!("{what}: the storage engine failed on a damaged file ({why}); `medanchor repair` rebuilds the indexes")
    };
    let opened = std::panic::catch_unwind(|| Stores::open_read_only(cfg))
        .unwrap_or_else(|e| Err(crate::pipeline::OpenError::Damaged(guarded("opening", e))));
    let (stores, notes) = match opened {
        Ok(opened) => opened,
        // Damage that stops the stores from opening is the verifier's finding, reported as one.
        Err(e) if cfg.data_dir.is_dir() => {
            let report = crate::verify::Report {
                failures: vec![format!("opening {}: {e}", cfg.data_dir.display())],
                ..Default::default()
            };
            if json {
                crate::outln!("{}", serde_json::to_string(&report)?)?;
            } else {
                eprintln!("FAILED: {}", report.failures[0]);
                crate::outln!("FAILED: the data directory does not open")?;
            }
            return Ok(false);
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", cfg.data_dir.display())),
    };
    let total = stores.vault.record_count().unwrap_or(0) + stores.ledger.size();
    let pb = progress(total, "verifying");
    let mut report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::verify::verify_all(&stores, &|done, _| pb.set_position(done))
    }))
    .unwrap_or_else(|e| crate::verify::Report {
        failures: vec![guarded("verifying", e)],
        ..Default::default()
    });
    report.notes.extend(notes);
    pb.finish_and_clear();
    if json {
        crate::outln!("{}", serde_json::to_string(&report)?)?;
    } else {
        for n in &report.notes {
            eprintln!("note: {n}");
        }
        for f in &report.failures {
            eprintln!("FAILED: {f}");
        }
        crate::outln!(
            "{}: {} records, {} derived, {} events, {} erased, {} leaves, {} checkpoints",
            if report.ok { "ok" } else { "FAILED" },
            report.records,
            report.derived,
            report.events,
            report.erased,
            report.leaves,
            report.checkpoints
        )?;
    }
    Ok(report.ok)
}

pub fn proof(cfg: &Config, record_id: &str, out: Option<&PathBuf>) -> Result<()> {
    let id =
        crate::envelope::RecordId::parse(record_id).context("a record id is 32 hex characters")?;
    let stores = open_offline(cfg)?;
    let bundle = stores.ledger.proof(&id)?;
    let text = serde_json::to_string_pretty(&bundle)? + "\n";
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

pub fn repair(cfg: &Config) -> Result<()> {
    let dir = &cfg.data_dir;
    let r = crate::vault::EmbeddedVault::repair(
        &dir.join("vault.redb"),
        &dir.join("segments"),
        cfg.vault.cache_mb << 20,
    )
    .with_context(|| format!("repairing {}", dir.display()))?;
    if let Some(aside) = &r.replaced_index {
        crate::outln!(
            "vault.redb did not open: moved to {} and rebuilt from the segments; its quarantine entries are lost",
            aside.display()
        )?;
    }
    for s in &r.set_aside {
        crate::outln!(
            "set aside: segment {} offset {} ({} bytes; record {} as its header reads); bytes kept in {}",
            s.segment,
            s.offset,
            s.len,
            s.record,
            s.kept.display()
        )?;
    }
    crate::outln!(
        "{} damaged entries set aside; index rebuilt from the segments: {} records",
        r.set_aside.len(),
        r.reindexed
    )?;
    let seed = crate::seal::keyring::load_secret(&dir.join("keys/log-signing.key"), false)?;
    let signer = medanchor_merkle::NoteSigner::new(
        cfg.origin.clone(),
        ed25519_dalek::SigningKey::from_bytes(&seed),
    )?;
    let (leaves, checkpoints, old) =
        crate::ledger::EmbeddedLedger::repair(&dir.join("ledger.redb"), &cfg.origin, signer)
            .context("rebuilding ledger.redb")?;
    crate::outln!(
        "log: ledger.redb rebuilt from its {leaves} leaves and {checkpoints} signed checkpoints (record index, tile rows and tile roots computed anew); the old file is kept as {}",
        old.display()
    )?;
    if !r.set_aside.is_empty() {
        crate::outln!(
            "the records set aside are lost from this vault: have their senders send them again, and keep segments/damaged/ for inspection"
        )?;
    }
    Ok(())
}

pub fn keys_rotate(cfg: &Config) -> Result<()> {
    let keyring = crate::seal::Keyring::open(&cfg.data_dir.join("keys"), false)?;
    let (id, n) = keyring.rotate_master()?;
    crate::outln!("master key {id} created; {n} data keys re-wrapped under it")?;
    crate::outln!(
        "older master-*.key files are no longer needed once you have a backup of the new one"
    )?;
    Ok(())
}

pub fn quarantine_list(cfg: &Config, json: bool) -> Result<()> {
    let stores = open_offline(cfg)?;
    let entries = stores.vault.quarantine_list()?;
    for e in &entries {
        if json {
            crate::outln!("{}", serde_json::to_string(e)?)?;
        } else {
            crate::outln!(
                "{}  {}  {}  {} bytes  {}",
                e.id,
                crate::hl7::ack::hl7_timestamp(e.received_ms),
                e.origin,
                e.size,
                e.reason
            )?;
        }
    }
    if !json {
        eprintln!("{} quarantined", entries.len());
    }
    Ok(())
}

/// Decrypts a quarantined input and runs it through the pipeline again (offline, in-process),
/// e.g. after an acceptance rule was changed. The quarantine entry stays for the audit trail.
pub async fn quarantine_replay(cfg: &Config, id: &str) -> Result<bool> {
    let stores = open_offline(cfg)?;
    let (entry, sealed) = stores
        .vault
        .quarantine_get(id)?
        .with_context(|| format!("no quarantine entry {id}"))?;
    let rid = crate::envelope::RecordId::parse(&entry.id).context("quarantine id")?;
    let key_id = crate::seal::parse_header(&sealed)?.key_id.to_string();
    let key = match stores.keyring.get(&key_id) {
        Err(crate::seal::KeyringError::Erased(..)) => {
            bail!("quarantine entry {id} was about a patient since erased: its input is gone")
        }
        k => k?,
    };
    let opened = crate::seal::open(&sealed, rid, &key)?;
    if opened.record.raw.is_empty() {
        bail!(
            "quarantine entry {id} kept no payload ({}); ask the sender to resend",
            entry.reason
        );
    }
    let metrics = std::sync::Arc::new(Metrics::new());
    let (pipeline, running) = Pipeline::start(cfg, &stores, metrics)?;
    let (token, rx) = AckToken::new();
    pipeline
        .submit(Envelope {
            payload: opened.record.raw.clone(),
            origin: Origin::Replay {
                quarantine_id: entry.id.clone(),
            },
            // Quarantine does not record what format the input was meant to be.
            format: FormatHint::Auto,
            received_ms: now_ms(),
            token,
        })
        .await;
    let outcome = rx.await.unwrap_or(Outcome::Retry {
        reason: "pipeline stopped".into(),
    });
    drop(pipeline);
    running.finish().await;
    Ok(match outcome {
        Outcome::Stored { receipt, duplicate } => {
            crate::outln!(
                "{} record {} commitment {}",
                if duplicate { "duplicate of" } else { "stored" },
                receipt.record_id,
                receipt.commitment
            )?;
            true
        }
        Outcome::Rejected(r) => {
            crate::outln!(
                "rejected again: {} (new quarantine id {})",
                r.reason,
                r.quarantine_id.unwrap_or_default()
            )?;
            false
        }
        Outcome::Retry { reason } => {
            crate::outln!("not stored: {reason}")?;
            false
        }
    })
}
