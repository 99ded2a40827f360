//! The medanchor command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use medanchor::config::Config;

/// Records are allocated on the sealing threads and freed on the vault writer's: glibc's malloc
/// spent about a tenth of the gateway's core on that traffic (arena locks, consolidation; perf
/// under the NATS bench), mimalloc's thread-local free lists much less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "medanchor",
    version,
    about = "Seal HL7v2 records, anchor them in a signed Merkle log, verify them offline.",
    long_about = "medanchor sits beside an EHR: it takes HL7v2 over MLLP, seals each message (SHA3-256 commitment, \
AES-256-GCM under a per-patient key) into an embedded vault, anchors the commitments in an append-only \
Merkle log with Ed25519-signed checkpoints, and lets anyone verify a record offline with a proof.\n\n\
Configuration: --config FILE (TOML) layered under MEDANCHOR__SECTION__KEY environment variables, \
e.g. MEDANCHOR__MLLP__LISTEN=127.0.0.1:0."
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "MEDANCHOR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (MLLP and HTTP listeners) on the configured or default settings.
    Serve,
    /// Send HL7v2 files (single messages or batches) to an MLLP listener and print each ACK.
    Send {
        /// MLLP address of the gateway.
        #[arg(long, default_value = "127.0.0.1:2575")]
        to: SocketAddr,
        /// Print one JSON line per message: file, control id, ACK code, record id, commitment.
        #[arg(long)]
        json: bool,
        /// Send bytes as they are (default: segment terminators normalized to CR).
        #[arg(long)]
        raw: bool,
        /// Seconds to wait for each ACK.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Verify offline: one proof bundle, or (--all) a whole data directory.
    Verify {
        /// Proof bundle written by `medanchor proof` or GET /v1/records/ID/proof.
        proof: Option<PathBuf>,
        /// Check every record, leaf and checkpoint in the data directory (gateway stopped).
        #[arg(long, conflicts_with = "proof")]
        all: bool,
        /// Data directory (overrides data_dir from the configuration).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Trust only this log key (`name+hash+base64`, printed at start-up) for a bundle.
        #[arg(long)]
        key: Option<String>,
        /// One JSON line as output.
        #[arg(long)]
        json: bool,
    },
    /// Repair a data directory that does not open (gateway stopped): set damaged segment entries
    /// aside (their bytes kept under segments/damaged/) and rebuild the vault's index from the
    /// segments. Run `verify --all` first and keep a copy of the directory.
    Repair {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Write the proof bundle of a record (data directory of a stopped gateway).
    Proof {
        record_id: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Output file (default: standard output).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Manage keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// Manage who may call the API: add (prints the token once), list, revoke. Works on a
    /// stopped gateway's data directory, or through a running one's admin API.
    Principals {
        #[command(subcommand)]
        command: PrincipalsCommand,
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        /// An admin token for a running gateway (default: the data directory's admin.token).
        #[arg(long, global = true, env = "MEDANCHOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Inspect and replay refused input.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// Bulk-load files and directories of HL7v2 (messages, batch files) and FHIR JSON/NDJSON
    /// through the pipeline (gateway stopped). Safe to re-run: stored messages count as duplicates.
    Import {
        paths: Vec<PathBuf>,
        /// hl7v2, fhir, or auto (JSON object = FHIR).
        #[arg(long, default_value = "auto")]
        format: String,
        /// One JSON summary line instead of text.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Tools for the mapping files under adapters/ (HL7v2 → FHIR R4; docs/normalization.md).
    Mapping {
        #[command(subcommand)]
        command: MappingCommand,
        /// Mapping files instead of the built-in defaults (normalize.adapters_dir).
        #[arg(long, global = true)]
        adapters: Option<PathBuf>,
        /// A site's overrides (normalize.site_dir).
        #[arg(long, global = true)]
        site: Option<PathBuf>,
    },
    /// Load generators.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum PrincipalsCommand {
    /// Add a principal and print its bearer token (shown once).
    Add {
        /// 1-128 of letters, digits, - _ . @
        id: String,
        /// patient, practitioner, organization, auditor or admin.
        #[arg(long)]
        role: String,
        /// For a patient: an identifier as records carry it (PID-3 id^authority^type, e.g.
        /// 12345^HOSP^MR); repeatable.
        #[arg(long = "identifier")]
        identifiers: Vec<String>,
        /// For a patient: a patient id (p- and 32 hex); repeatable.
        #[arg(long = "patient")]
        patients: Vec<String>,
        /// For a practitioner: their organization's principal id.
        #[arg(long)]
        organization: Option<String>,
        /// For an organization: a sender whose records it sent (MSH-3|MSH-4, or |MSH-4 for
        /// every application of a facility); repeatable.
        #[arg(long = "sender")]
        senders: Vec<String>,
        /// A TLS client certificate that authenticates as it (sha3-256:HEX of the DER
        /// certificate, as the gateway logs it); repeatable.
        #[arg(long = "certificate")]
        certificates: Vec<String>,
    },
    /// List principals.
    List,
    /// Revoke a principal: its token stops working at once.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a new master key and re-wrap every data key under it (gateway stopped).
    Rotate,
}

#[derive(Subcommand)]
enum MappingCommand {
    /// Map HL7v2 files (messages or batches) and print each Bundle, with what was left
    /// unmapped and why anything was mapped with less than full fidelity.
    Test {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Exactly one line per message on stdout: the Bundle (null when mapping failed);
        /// unmapped fields and warnings on stderr.
        #[arg(long)]
        json: bool,
    },
    /// Check the mapping files: every problem with its file, line and field.
    Lint,
    /// Show what the site overrides change for the messages of a file: the JSON paths that
    /// differ between mapping with and without the site directory.
    Diff { file: PathBuf },
    /// Map stored HL7v2 records again with the mapping files in use (gateway stopped): each
    /// gets a new derived record, stored and anchored; earlier ones stay, the newest is current.
    Replay {
        /// Only records received at or after this time (Unix milliseconds).
        #[arg(long)]
        since: Option<u64>,
        /// Only this message type (MSH-9.1), e.g. ADT.
        #[arg(long = "type")]
        message_type: Option<String>,
        /// Only records whose last mapping failed (`mapping failures`).
        #[arg(long)]
        failed: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// List stored records whose last mapping failed, with the reason (gateway stopped).
    Failures {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// List quarantined input: id, time, origin, size and reason (never content).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Run a quarantined input through the pipeline again (gateway stopped).
    Replay { id: String },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Publish to a JetStream stream the gateway consumes and wait until every message is
    /// stored and acknowledged; report msgs/s (and the broker's publish rate beside it),
    /// broker-to-stored latency p50/p99 from the gateway's metrics, and its peak RSS.
    Nats {
        #[command(flatten)]
        load: medanchor::cli::bench::NatsBench,
        #[arg(long)]
        json: bool,
    },
    /// Produce to a Kafka topic the gateway consumes (or to a mock cluster hosted by the bench)
    /// and wait until every message is stored; report msgs/s (and the broker's produce rate
    /// beside it), broker-to-stored latency p50/p99 from the gateway's metrics, and its peak RSS.
    Kafka {
        #[command(flatten)]
        load: medanchor::cli::bench::KafkaBench,
        #[arg(long)]
        json: bool,
    },
    /// Consent-checked reads of a 2 KB record, each with its access event sealed, stored and
    /// anchored: requests/s and latency p50/p99; with --patients N, again with N other
    /// patients' grants loaded, side by side.
    Api {
        /// The gateway's HTTP listener.
        #[arg(long)]
        http: SocketAddr,
        /// The gateway's MLLP listener (the bench sends its record there).
        #[arg(long)]
        mllp: SocketAddr,
        /// An admin token (default: MEDANCHOR_TOKEN).
        #[arg(long, env = "MEDANCHOR_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 50_000)]
        count: u64,
        /// Other patients to grant for before the second measurement (0: one measurement).
        #[arg(long, default_value_t = 0)]
        patients: u64,
        /// Add a deny (label PSY) beside the grant, so every read is filtered rather than
        /// served whole.
        #[arg(long)]
        filtered: bool,
        #[arg(long)]
        json: bool,
    },
    /// Drive an MLLP listener and report msgs/s, ACK latency and the gateway's peak RSS.
    Mllp {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Frames in flight per connection (1: wait for each ACK before sending the next).
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// Total messages per second to pace at (default: as fast as ACKs return).
        #[arg(long)]
        rate: Option<f64>,
        /// Gateway process id for peak RSS (default: the process listening on --to's port).
        #[arg(long)]
        pid: Option<u32>,
        /// The messages sent: `corpus` (six dense Microsoft samples, a stress mix) or `typical`
        /// (a 1.3 KB ADT^A01 and an ORU^R01 with 10 OBX).
        #[arg(long, value_enum, default_value_t = medanchor::cli::bench::Mix::Corpus)]
        mix: medanchor::cli::bench::Mix,
        #[arg(long)]
        json: bool,
    },
}

fn load(config: Option<&PathBuf>, data_dir: Option<PathBuf>) -> Result<Config> {
    let mut cfg = Config::load(config.map(|p| p.as_path()))?;
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    Ok(cfg)
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let cfg_path = cli.config.as_ref();
    match cli.command {
        Command::Serve => {
            let cfg = load(cfg_path, None)?;
            medanchor::serve::run(cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            to,
            json,
            raw,
            timeout,
            files,
        } => {
            let ok = medanchor::cli::client::send_files(
                to,
                &files,
                json,
                raw,
                Duration::from_secs(timeout),
            )
            .await?;
            if !ok && !json {
                eprintln!("some messages were not accepted (see the ACK codes above)");
            }
            Ok(exit(ok))
        }
        Command::Verify {
            proof,
            all,
            data_dir,
            key,
            json,
        } => {
            if all {
                let cfg = load(cfg_path, data_dir)?;
                Ok(exit(medanchor::cli::verify_all(&cfg, json)?))
            } else {
                let proof = proof.context("give a proof bundle file, or --all with --data-dir")?;
                Ok(exit(medanchor::cli::verify_bundle(
                    &proof,
                    key.as_deref(),
                    json,
                )?))
            }
        }
        Command::Repair { data_dir } => {
            medanchor::cli::repair(&load(cfg_path, data_dir)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Proof {
            record_id,
            data_dir,
            out,
        } => {
            let cfg = load(cfg_path, data_dir)?;
            medanchor::cli::proof(&cfg, &record_id, out.as_ref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            command: KeysCommand::Rotate,
            data_dir,
        } => {
            medanchor::cli::keys_rotate(&load(cfg_path, data_dir)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Principals {
            command,
            data_dir,
            token,
        } => {
            use medanchor::cli::principals::{self, Action};
            let cfg = load(cfg_path, data_dir)?;
            let action = match command {
                PrincipalsCommand::Add {
                    id,
                    role,
                    identifiers,
                    patients,
                    organization,
                    senders,
                    certificates,
                } => Action::Add(medanchor::api::admin::AddPrincipal {
                    id,
                    role: Some(medanchor::consent::Role::parse(&role).with_context(|| {
                        format!("--role {role:?}: one of patient, practitioner, organization, auditor, admin")
                    })?),
                    patients,
                    identifiers,
                    organization,
                    senders,
                    certificates,
                }),
                PrincipalsCommand::List => Action::List,
                PrincipalsCommand::Revoke { id } => Action::Revoke(id),
            };
            principals::run(&cfg, action, token)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Quarantine { command, data_dir } => {
            let cfg = load(cfg_path, data_dir)?;
            match command {
                QuarantineCommand::List { json } => {
                    medanchor::cli::quarantine_list(&cfg, json)?;
                    Ok(ExitCode::SUCCESS)
                }
                QuarantineCommand::Replay { id } => {
                    Ok(exit(medanchor::cli::quarantine_replay(&cfg, &id).await?))
                }
            }
        }
        Command::Import {
            paths,
            format,
            json,
            data_dir,
        } => {
            let cfg = load(cfg_path, data_dir)?;
            let format = medanchor::envelope::FormatHint::parse(&format)
                .with_context(|| format!("--format {format:?}: use hl7v2, fhir or auto"))?;
            let progress = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let s = medanchor::cli::import::run(&cfg, &paths, format, progress).await?;
            if json {
                medanchor::outln!("{}", serde_json::to_string(&s)?)?;
            } else {
                medanchor::outln!(
                    "{} files, {} messages: {} stored, {} duplicate, {} rejected, {} to retry",
                    s.files,
                    s.messages,
                    s.stored,
                    s.duplicate,
                    s.rejected,
                    s.retry
                )?;
                for (reason, n) in &s.rejected_by_reason {
                    medanchor::outln!(
                        "  rejected {reason}: {n} (see `medanchor quarantine list`)"
                    )?;
                }
                for u in &s.unreadable {
                    medanchor::outln!("  unreadable: {u}")?;
                }
            }
            let clean = s.retry == 0 && s.unreadable.is_empty() && s.rejected == 0;
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Mapping {
            command,
            adapters,
            site,
        } => {
            let data_dir = match &command {
                MappingCommand::Replay { data_dir, .. }
                | MappingCommand::Failures { data_dir, .. } => data_dir.clone(),
                _ => None,
            };
            let cfg = load(cfg_path, data_dir)?;
            let ncfg = medanchor::cli::mapping::config(&cfg.normalize, adapters, site);
            let ok = match command {
                MappingCommand::Replay {
                    since,
                    message_type,
                    failed,
                    json,
                    ..
                } => {
                    let filter = medanchor::remap::Filter {
                        since_ms: since,
                        message_type,
                        only_failed: failed,
                    };
                    medanchor::cli::mapping::replay(&cfg, &ncfg, &filter, json)?
                }
                MappingCommand::Failures { json, .. } => {
                    medanchor::cli::mapping::failures(&cfg, json)?
                }
                MappingCommand::Test { files, json } => {
                    medanchor::cli::mapping::test(&ncfg, &files, json)?
                }
                MappingCommand::Lint => medanchor::cli::mapping::lint(&ncfg)?,
                MappingCommand::Diff { file } => medanchor::cli::mapping::diff(&ncfg, &file)?,
            };
            Ok(exit(ok))
        }
        Command::Bench {
            command: BenchCommand::Nats { load, json },
        } => print_broker_bench(medanchor::cli::bench::nats(&load).await?, json),
        Command::Bench {
            command: BenchCommand::Kafka { load, json },
        } => print_broker_bench(medanchor::cli::bench::kafka(&load).await?, json),
        Command::Bench {
            command:
                BenchCommand::Api {
                    http,
                    mllp,
                    token,
                    connections,
                    count,
                    patients,
                    filtered,
                    json,
                },
        } => {
            let reports = medanchor::cli::bench_api::run(
                http,
                mllp,
                &token,
                connections.max(1),
                count,
                patients,
                filtered,
            )
            .await?;
            for r in reports {
                if json {
                    medanchor::outln!("{}", serde_json::to_string(&r)?)?;
                } else {
                    medanchor::outln!(
                        "patients with grants loaded: {}; {} reads ({} not 200) of a {} B record in {:.0} req/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                        r.patients_loaded, r.requests, r.errors, r.record_bytes, r.requests_per_s, r.p50_ms, r.p99_ms, r.max_ms
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Mllp {
                    to,
                    connections,
                    count,
                    window,
                    rate,
                    pid,
                    mix,
                    json,
                },
        } => {
            let r = medanchor::cli::bench::run(
                to,
                connections.max(1),
                count,
                window.max(1),
                rate,
                pid,
                mix,
            )
            .await?;
            if json {
                medanchor::outln!("{}", serde_json::to_string(&r)?)?;
            } else {
                medanchor::outln!(
                    "{} messages ({} not AA) in {:.0} msgs/s; ACK latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; gateway peak RSS {}",
                    r.messages,
                    r.errors,
                    r.msgs_per_s,
                    r.p50_ms,
                    r.p99_ms,
                    r.max_ms,
                    r.peak_rss_mb.map(|m| format!("{m:.1} MB")).unwrap_or_else(|| "unknown".into())
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Panics are reported by place, and with their message only when it is a literal of the
/// source: a formatted one can quote what it failed on (std's slicing panics quote the
/// string), and in a gateway that is a patient's record.
fn redacting_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_else(|| "an unknown place".into());
        let what = info
            .payload()
            .downcast_ref::<&'static str>()
            .copied()
            .unwrap_or("(message withheld: it may quote data)");
        let thread = std::thread::current();
        eprintln!(
            "panic in thread {} at {place}: {what}",
            thread.name().unwrap_or("unnamed")
        );
    }));
}

fn main() -> ExitCode {
    redacting_panic_hook();
    let cli = Cli::parse();
    // Logs go to stderr; stdout carries the listening addresses and command output. Colours
    // only on a terminal: escape codes in a log file or journald hinder grep.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEDANCHOR_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        // The reader of our output went away (`medanchor mapping failures | head`): what it
        // wanted was written; ending quietly is what a pipeline expects.
        Err(e) if medanchor::cli::output_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Prints a broker bench report as text or (`--json`) one JSON line.
fn print_broker_bench(r: medanchor::cli::bench::BrokerBenchReport, json: bool) -> Result<ExitCode> {
    if json {
        medanchor::outln!("{}", serde_json::to_string(&r)?)?;
    } else {
        medanchor::outln!(
            "{} messages stored in {:.0} msgs/s (broker took the publishes at {:.0} msgs/s); broker-to-stored p50 {} ms, p99 {} ms; gateway peak RSS {}",
            r.messages,
            r.msgs_per_s,
            r.publish_msgs_per_s,
            r.p50_ms.map_or("?".into(), |v| format!("{v:.1}")),
            r.p99_ms.map_or("?".into(), |v| format!("{v:.1}")),
            r.peak_rss_mb.map_or("?".into(), |v| format!("{v:.0} MB")),
        )?;
        if let Some(read) = r.broker_read_msgs_per_s {
            medanchor::outln!(
                "the broker served the same messages to a plain consumer at {read:.0} msgs/s: the gateway reached {:.0}% of that",
                100.0 * r.msgs_per_s / read
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
