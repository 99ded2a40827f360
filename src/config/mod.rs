//! Typed configuration: a TOML file (`--config FILE`) layered under environment variables
//! `MEDANCHOR__SECTION__KEY` (e.g. `MEDANCHOR__MLLP__LISTEN=127.0.0.1:0`). Unknown keys and bad
//! values are errors that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::AcceptRules;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration key {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("configuration key sources[{index}].{key}: {reason}")]
    InvalidSource {
        index: usize,
        key: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the vault, the ledger and the keys live.
    pub data_dir: PathBuf,
    /// Log origin: the first line of every checkpoint and the signing key's name.
    pub origin: String,
    pub mllp: MllpConfig,
    pub http: HttpConfig,
    pub vault: VaultConfig,
    pub ledger: LedgerConfig,
    pub accept: AcceptRules,
    pub pipeline: PipelineConfig,
    pub normalize: NormalizeConfig,
    /// Sources besides the MLLP listener (`[[sources]]` with a `type`).
    pub sources: Vec<crate::sources::SourceConfig>,
    /// JWT access tokens from an identity provider, besides principals' own tokens.
    pub jwt: Option<crate::api::jwt::JwtConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MllpConfig {
    pub listen: SocketAddr,
    /// Open connections at most. At the limit the listener stops accepting: new connections
    /// wait in the kernel's backlog until one closes (see `crate::listener`).
    pub max_connections: usize,
    /// Largest frame payload accepted; a larger frame gets an AR and the connection is closed.
    /// Also the most a connection buffers of a frame still arriving (bytes outside a frame are
    /// dropped as they arrive), so partial frames hold at most about
    /// `max_connections × max_frame_bytes`, twice that at worst as read buffers grow by doubling.
    pub max_frame_bytes: usize,
    /// A connection is closed when, for this long, no whole frame has arrived and no ACK was
    /// due: an idle connection, or one that sent part of a frame and stalled (a frame must arrive
    /// whole within this time).
    pub idle_timeout_secs: u64,
    /// Add the ZRC segment (record id and commitment) to ACKs.
    pub receipt_segment: bool,
    /// Messages read ahead per connection while earlier ones are still being stored.
    pub max_in_flight_per_connection: usize,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Bearer token for `POST /v1/ingest`; unset: ingest is off. Prefer the environment
    /// (`MEDANCHOR__HTTP__INGEST_TOKEN`) to a file.
    pub ingest_token: Option<String>,
    /// Largest ingest body; a larger one gets 413.
    pub max_body_bytes: usize,
    /// An ingest body must arrive whole within this many seconds of the request's head;
    /// else 408 and the connection is closed.
    pub body_read_timeout_secs: u64,
    /// Open connections at most. At the limit the listener stops accepting: new connections
    /// wait in the kernel's backlog until one closes (see `crate::listener`).
    pub max_connections: usize,
    /// A request's head (request line and headers) must arrive whole within this many seconds
    /// of the connection being accepted or, on a kept-alive connection, of the request's first
    /// byte; else the connection is closed. Bytes trickling in do not extend it.
    pub header_read_timeout_secs: u64,
    /// A kept-alive connection with no request in flight and no byte read or written for this
    /// many seconds is closed.
    pub idle_timeout_secs: u64,
    /// Largest request head, and the read buffer a connection holds; a larger head gets 431.
    /// At least 8192.
    pub max_header_bytes: usize,
    /// Failed authentications one source address may have in a minute before its requests get
    /// 429 until the minute is over (0: no limit). Behind a proxy every client shares its
    /// address: raise it there.
    pub auth_failures_per_minute: u32,
    /// Requests one authenticated principal may make a second, with a burst of one second's
    /// worth; beyond, 429 with `Retry-After` (0: no limit). Every read is anchored as an
    /// access event, so this bounds what one leaked or runaway credential adds to the log.
    pub requests_per_principal_per_second: u32,
    /// TLS on the HTTP listener; with `client_ca`, mutual TLS (a client certificate mapped to a
    /// principal authenticates a request that sends no token).
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Most records in one group commit.
    pub max_batch: usize,
    /// redb page cache.
    pub cache_mb: usize,
    /// Quarantine entries older than this many days are removed (checked hourly; 0: kept
    /// forever). Input that names no patient is sealed under the gateway key, which erasure
    /// does not destroy: this is how it ends.
    pub quarantine_retention_days: u64,
    /// Seal encodings of 4 KiB or more (a derived record's Bundle) as LZ4 blocks where that
    /// saves an eighth. `false`: every stored length follows the record's length alone, not
    /// how repetitive its content is (docs/FORMATS.md, sealed record v2), at about 2.6 times
    /// the segment bytes for a typical message.
    pub compress: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Close a checkpoint after this many leaves…
    pub batch_leaves: usize,
    /// …or this long after the first waiting leaf.
    pub batch_ms: u64,
}

/// HL7v2 → FHIR R4 normalization (`[normalize]`, see docs/normalization.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NormalizeConfig {
    /// Map every accepted HL7v2 message to a FHIR R4 Bundle stored beside it (a derived record).
    pub enabled: bool,
    /// What a message that cannot be mapped gets: `store` (the raw message is stored and
    /// acknowledged, the failure kept for `medanchor mapping replay`) or `reject` (AE / dead
    /// letter, nothing stored).
    pub on_error: OnMapError,
    /// The mapping files; unset: the defaults built into the binary (the repository's
    /// `adapters/`).
    pub adapters_dir: Option<PathBuf>,
    /// A site's overrides, applied over the mapping files: a file here replaces rows of the file
    /// of the same name (see docs/normalization.md).
    pub site_dir: Option<PathBuf>,
    /// The UUID namespace that resource ids are made in (UUIDv5 of business identifiers). Two
    /// gateways that must give one patient one id share it.
    pub id_namespace: String,
    /// Check every Bundle made against the FHIR R4 schema before it is stored; one that fails
    /// is a mapping failure (`invalid_output`).
    pub validate_output: bool,
    /// How: `construction` (a Bundle shown valid by how it was built is not parsed back; any
    /// other is walked) or `walk` (every Bundle parsed and walked, as inbound FHIR is).
    pub output_check: OutputCheck,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutputCheck {
    #[default]
    Construction,
    Walk,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnMapError {
    #[default]
    Store,
    Reject,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Decode/seal threads (0: one per core).
    pub workers: usize,
    /// Messages inside the gateway at once; beyond it, sources stop reading.
    pub max_in_flight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./medanchor-data"),
            origin: "medanchor.local/log".into(),
            mllp: MllpConfig::default(),
            http: HttpConfig::default(),
            vault: VaultConfig::default(),
            ledger: LedgerConfig::default(),
            accept: AcceptRules::default(),
            pipeline: PipelineConfig::default(),
            normalize: NormalizeConfig::default(),
            sources: Vec::new(),
            jwt: None,
        }
    }
}
impl Default for MllpConfig {
    fn default() -> Self {
        MllpConfig {
            listen: "127.0.0.1:2575".parse().expect("address"),
            max_connections: 1024,
            max_frame_bytes: 1024 * 1024,
            idle_timeout_secs: 300,
            receipt_segment: true,
            max_in_flight_per_connection: 64,
            tls: None,
        }
    }
}
impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".parse().expect("address"),
            ingest_token: None,
            max_body_bytes: 1 << 20,
            body_read_timeout_secs: 30,
            max_connections: 1024,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_header_bytes: 16 * 1024,
            auth_failures_per_minute: 20,
            requests_per_principal_per_second: 0,
            tls: None,
        }
    }
}
impl VaultConfig {
    /// How records are sealed under `compress`.
    pub fn compression(&self) -> crate::seal::Compress {
        if self.compress {
            crate::seal::Compress::Lz4
        } else {
            crate::seal::Compress::Never
        }
    }
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            max_batch: 1024,
            cache_mb: 64,
            quarantine_retention_days: 30,
            compress: true,
        }
    }
}
impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            batch_leaves: 1000,
            batch_ms: 200,
        }
    }
}
impl Default for NormalizeConfig {
    fn default() -> Self {
        NormalizeConfig {
            enabled: true,
            on_error: OnMapError::Store,
            adapters_dir: None,
            site_dir: None,
            // One value chosen for medanchor, so ids agree across installs that keep it.
            id_namespace: "0a3c2d4e-6f1b-5a7c-9d2e-4b6f8a1c3e5d".into(),
            validate_output: true,
            output_check: OutputCheck::Construction,
        }
    }
}
impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            workers: 0,
            max_in_flight: 4096,
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then `MEDANCHOR__…` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Load(format!(
                    "file {} does not exist",
                    f.display()
                )));
            }
            b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
        }
        b = b.add_source(
            config::Environment::with_prefix("MEDANCHOR")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let raw = b.build().map_err(|e| ConfigError::Load(e.to_string()))?;
        let cfg: Config = raw
            .try_deserialize()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        };
        if self.origin.is_empty()
            || self.origin.contains(char::is_whitespace)
            || self.origin.contains('+')
        {
            return bad("origin", "must be non-empty, without spaces or '+'");
        }
        if self.mllp.max_frame_bytes < 64 {
            return bad("mllp.max_frame_bytes", "must be at least 64");
        }
        if self.mllp.max_connections == 0 {
            return bad("mllp.max_connections", "must be at least 1");
        }
        if self.mllp.idle_timeout_secs == 0 {
            return bad("mllp.idle_timeout_secs", "must be at least 1");
        }
        if self.http.max_connections == 0 {
            return bad("http.max_connections", "must be at least 1");
        }
        for (key, secs) in [
            (
                "http.header_read_timeout_secs",
                self.http.header_read_timeout_secs,
            ),
            ("http.idle_timeout_secs", self.http.idle_timeout_secs),
            (
                "http.body_read_timeout_secs",
                self.http.body_read_timeout_secs,
            ),
        ] {
            if secs == 0 {
                return bad(key, "must be at least 1");
            }
        }
        if self.http.max_header_bytes < 8192 {
            return bad("http.max_header_bytes", "must be at least 8192");
        }
        if self.mllp.max_in_flight_per_connection == 0 {
            return bad("mllp.max_in_flight_per_connection", "must be at least 1");
        }
        if self
            .http
            .ingest_token
            .as_deref()
            .is_some_and(|t| t.len() < 16)
        {
            return bad("http.ingest_token", "must be at least 16 characters");
        }
        if self.vault.max_batch == 0 {
            return bad("vault.max_batch", "must be at least 1");
        }
        if self.ledger.batch_leaves == 0 {
            return bad("ledger.batch_leaves", "must be at least 1");
        }
        if self.pipeline.max_in_flight == 0 {
            return bad("pipeline.max_in_flight", "must be at least 1");
        }
        if !is_uuid(&self.normalize.id_namespace) {
            return bad(
                "normalize.id_namespace",
                "must be a UUID (8-4-4-4-12 hex digits)",
            );
        }
        let mut names = std::collections::HashSet::new();
        for (index, source) in self.sources.iter().enumerate() {
            let invalid = |(key, reason)| ConfigError::InvalidSource { index, key, reason };
            source.validate().map_err(invalid)?;
            if !names.insert(source.name()) {
                return Err(invalid(("name", "another source has this name".into())));
            }
        }
        Ok(())
    }
}

/// 8-4-4-4-12 hex digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}
