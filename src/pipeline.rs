//! Wiring: decode → seal on a CPU pool, then the vault's group commit, then the ledger's batcher.
//! This is the only module that knows all the parts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, NormalizeConfig, OnMapError};
use crate::envelope::{AckToken, Envelope, FormatHint, Origin, Outcome, RecordId, Rejection};
use crate::hl7::Message;
use crate::ledger::{batcher, EmbeddedLedger, Ledger};
use crate::metrics::Metrics;
use crate::normalize::{Link, MapError, Normalizer};
use crate::record::DerivedRecord;
use crate::record::{parse_rejection, AcceptRules, Record, RecordMeta};
use crate::seal::{self, keyring::GATEWAY_KEY_ID, Keyring};
use crate::vault::writer::{self, WriteOp};
use crate::vault::{Derivation, EmbeddedVault, MappingFailure, PutRecord, QuarantineEntry, Vault};

/// Everything that stays open while the gateway runs.
pub struct Stores {
    pub keyring: Arc<Keyring>,
    pub vault: Arc<EmbeddedVault>,
    pub ledger: Arc<EmbeddedLedger>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Keys(#[from] seal::KeyringError),
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("signing key: {0}")]
    Signing(String),
    /// Its detail is in its text and not its source, so that the error chain `serve` prints
    /// names each problem once.
    #[error("mapping files: {0}")]
    Mapping(crate::normalize::LoadError),
    /// The storage engine failed on a damaged file instead of returning an error.
    #[error("{0}")]
    Damaged(String),
    #[error("data directory {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl Stores {
    /// Opens (or with `create`, initializes) the data directory.
    pub fn open(cfg: &Config, create: bool) -> Result<Stores, OpenError> {
        let dir = &cfg.data_dir;
        if create {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
                path: dir.clone(),
                source,
            })?;
        } else if !dir.is_dir() {
            return Err(OpenError::Dir {
                path: dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such data directory"),
            });
        }
        let keys_dir = dir.join("keys");
        let keyring = Arc::new(Keyring::open(&keys_dir, create)?);
        let seed = seal::keyring::load_secret(&keys_dir.join("log-signing.key"), create)?;
        let signer = medanchor_merkle::NoteSigner::new(
            cfg.origin.clone(),
            ed25519_dalek::SigningKey::from_bytes(&seed),
        )
        .map_err(|e| OpenError::Signing(e.to_string()))?;
        let vault = Arc::new(EmbeddedVault::open(
            &dir.join("vault.redb"),
            &dir.join("segments"),
            cfg.vault.cache_mb << 20,
            create,
        )?);
        let ledger = Arc::new(EmbeddedLedger::open(
            &dir.join("ledger.redb"),
            &cfg.origin,
            signer,
            create,
        )?);
        Ok(Stores {
            keyring,
            vault,
            ledger,
        })
    }

    /// Opens the data directory for reading only (`verify --all`): no file is created, written or
    /// cut. Returns notes on what a writable open would have done (re-index entries a crash left
    /// past the index's durable tail, cut a torn write, repair a file not closed cleanly).
    pub fn open_read_only(cfg: &Config) -> Result<(Stores, Vec<String>), OpenError> {
        let dir = &cfg.data_dir;
        if !dir.is_dir() {
            return Err(OpenError::Dir {
                path: dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such data directory"),
            });
        }
        let mut notes = Vec::new();
        let keys_dir = dir.join("keys");
        let (keyring, unchecked) = Keyring::open_read_only(&keys_dir)?;
        for path in unchecked {
            notes.push(format!(
                "{}: no check line yet (written by an earlier version; the gateway adds one at its next start)",
                path.display()
            ));
        }
        let seed = seal::keyring::read_key_file(&keys_dir.join("log-signing.key"))?.secret;
        let signer = medanchor_merkle::NoteSigner::new(
            cfg.origin.clone(),
            ed25519_dalek::SigningKey::from_bytes(&seed),
        )
        .map_err(|e| OpenError::Signing(e.to_string()))?;
        let (vault, opened) = EmbeddedVault::open_read_only(
            &dir.join("vault.redb"),
            &dir.join("segments"),
            cfg.vault.cache_mb << 20,
        )?;
        if opened.repaired_copy {
            notes.push(
                "vault.redb was not closed cleanly (a crash): a repaired private copy was read"
                    .into(),
            );
        }
        if opened.unindexed > 0 {
            notes.push(format!(
                "{} records are past the index's durable tail (a crash before the index synced): read from the segments; the next start indexes them",
                opened.unindexed
            ));
        }
        if let Some(crate::vault::segments::Finding::TornTail {
            segment,
            offset,
            len,
        }) = opened.torn_tail
        {
            notes.push(format!(
                "segment {segment}: {len} bytes after offset {offset} are the torn end of a write no sender was acknowledged for; the next start moves them to segments/torn/"
            ));
        }
        let ledger = EmbeddedLedger::open_read_only(
            &dir.join("ledger.redb"),
            &cfg.origin,
            signer.verifier(),
        )?;
        Ok((
            Stores {
                keyring: Arc::new(keyring),
                vault: Arc::new(vault),
                ledger: Arc::new(ledger),
            },
            notes,
        ))
    }
}

/// Why an event could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The patient was erased (at this Unix ms): nothing more is sealed under their key.
    #[error("the patient was erased")]
    Erased(u64),
    #[error("event storage unavailable: {0}")]
    Unavailable(String),
    #[error("event too large: {0}")]
    TooLarge(String),
    /// A read of a patient the gateway holds nothing of: no event is stored.
    #[error("no such patient")]
    NoPatient,
}

/// The running pipeline that sources submit to.
pub struct Pipeline {
    keyring: Arc<Keyring>,
    writer: mpsc::Sender<writer::Unit>,
    pool: rayon::ThreadPool,
    rules: AcceptRules,
    pub metrics: Arc<Metrics>,
    in_flight: Arc<Semaphore>,
    /// Envelopes waiting for a sealing job, each with its place in `in_flight`.
    queued: Mutex<VecDeque<(Envelope, OwnedSemaphorePermit)>>,
    /// Sealing jobs on the pool, at most `workers`.
    jobs: AtomicUsize,
    workers: usize,
    /// A key store that cannot be read or written fails every message: said once per interval.
    key_failures: crate::throttle::Throttle,
    /// HL7v2 → FHIR normalization; `None` when `normalize.enabled` is off.
    normalizer: Option<Arc<Normalizer>>,
    normalize: NormalizeConfig,
    /// `vault.compress`.
    compress: seal::Compress,
}

/// What decoding made of an envelope.
enum Decoded {
    Record(ToSeal),
    /// Its write (a quarantine entry), or none: its token was answered already.
    Settled(Option<WriteOp>),
}

/// What normalization made of one sealed record.
enum Derived {
    /// Not an HL7v2 record, or normalization is off.
    None,
    Sealed(seal::Sealed),
    Failed(MappingFailure),
    /// Mapping failed and `normalize.on_error = "reject"`.
    Refused(Rejection),
}

/// A decoded record and its patient's key, to be sealed.
struct ToSeal {
    record: Record,
    key: Arc<seal::DataKey>,
    token: AckToken,
    received_ms: u64,
}

/// Most envelopes one sealing job takes at a time: their commitments are hashed together, eight
/// at a time on AVX-512F and four on AVX2 (`seal::seal_many`), and so are their derived records'.
/// Public for the floor benchmark, which works jobs of this size.
#[doc(hidden)]
pub const SEAL_BATCH: usize = 16;

/// Handles to wait on at shutdown, in order.
pub struct Running {
    pub writer_thread: std::thread::JoinHandle<()>,
    pub batcher: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits for the vault writer, then the batcher, to end; they do once the last handle on the
    /// [`Pipeline`] is dropped. False when either panicked.
    pub async fn finish(self) -> bool {
        let writer = self.writer_thread;
        let wrote = matches!(
            tokio::task::spawn_blocking(move || writer.join()).await,
            Ok(Ok(()))
        );
        let anchored = self.batcher.await.is_ok();
        wrote && anchored
    }
}

impl Pipeline {
    /// Anchors whatever a crash left stored but not logged, then starts the writer and batcher.
    pub fn start(
        cfg: &Config,
        stores: &Stores,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<Pipeline>, Running), OpenError> {
        Self::start_with(cfg, stores, metrics, Self::normalizer(cfg)?)
    }

    /// The normalizer `cfg` asks for (`None` when normalization is off). `serve` loads it
    /// before it opens the data directory, so that mapping files that do not load stop the
    /// start before it creates anything (keys, the admin token).
    pub fn normalizer(cfg: &Config) -> Result<Option<Arc<Normalizer>>, OpenError> {
        if !cfg.normalize.enabled {
            return Ok(None);
        }
        let n = Normalizer::load(&cfg.normalize).map_err(OpenError::Mapping)?;
        // What `mapping lint` warns of, in the log of a gateway that runs the set anyway.
        for (file, why) in n.unused_site_files() {
            tracing::warn!(%file, "site mapping file: {why}");
        }
        for w in n.lint_warnings() {
            tracing::warn!("mapping set: {w}");
        }
        Ok(Some(Arc::new(n)))
    }

    /// [`Pipeline::start`] with the normalizer loaded already ([`Pipeline::normalizer`]).
    pub fn start_with(
        cfg: &Config,
        stores: &Stores,
        metrics: Arc<Metrics>,
        normalizer: Option<Arc<Normalizer>>,
    ) -> Result<(Arc<Pipeline>, Running), OpenError> {
        let pending = stores.vault.unanchored(stores.ledger.anchored_through()?)?;
        if !pending.is_empty() {
            let records: Vec<_> = pending.iter().map(|(leaf, _)| *leaf).collect();
            let through = pending.iter().map(|(_, p)| *p).max().unwrap_or(0);
            stores
                .ledger
                .append_through(&records, crate::envelope::now_ms(), through)?;
            stores.vault.mark_anchored(through)?;
            tracing::info!(
                records = pending.len(),
                "anchored records left unanchored by the last run"
            );
        }
        metrics.log_size.set(stores.ledger.size() as i64);
        let (wtx, wrx) = mpsc::channel(writer::queue_units(cfg.vault.max_batch, SEAL_BATCH));
        let (atx, arx) = mpsc::channel(cfg.ledger.batch_leaves.max(1024) * 4);
        let vault: Arc<dyn Vault> = stores.vault.clone();
        let ledger: Arc<dyn Ledger> = stores.ledger.clone();
        let writer_thread = writer::spawn(
            vault.clone(),
            cfg.vault.max_batch,
            wrx,
            atx,
            metrics.clone(),
        );
        let batcher = tokio::spawn(batcher::run(
            ledger,
            vault,
            arx,
            cfg.ledger.batch_leaves,
            cfg.ledger.batch_ms,
            metrics.clone(),
        ));
        let workers = if cfg.pipeline.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            cfg.pipeline.workers
        };
        // The FHIR schema is read and compiled here rather than on the first message that needs
        // it (inbound FHIR, or a Bundle to check), which would otherwise wait for it.
        crate::fhir::validate::Validator::shared().warm_up();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("seal-{i}"))
            .build()
            .expect("build CPU pool");
        let pipeline = Arc::new(Pipeline {
            keyring: stores.keyring.clone(),
            writer: wtx,
            pool,
            rules: cfg.accept.clone(),
            metrics,
            in_flight: Arc::new(Semaphore::new(cfg.pipeline.max_in_flight)),
            queued: Mutex::new(VecDeque::new()),
            jobs: AtomicUsize::new(0),
            workers,
            key_failures: crate::throttle::Throttle::new(std::time::Duration::from_secs(10)),
            normalizer,
            normalize: cfg.normalize.clone(),
            compress: cfg.vault.compression(),
        });
        Ok((
            pipeline,
            Running {
                writer_thread,
                batcher,
            },
        ))
    }

    /// Seals an event about a patient's data (a consent granted or revoked, a read, an
    /// erasure) under their data key (an erasure under the gateway key: theirs is gone), stores
    /// it in the vault's group commit and returns its receipt once durable; the batcher
    /// anchors it like a record. `body` is the event's JSON (never logged).
    pub async fn record_event(
        &self,
        kind: crate::ledger::EventKind,
        patient: &seal::keyring::PatientIndex,
        body: Vec<u8>,
    ) -> Result<crate::envelope::Receipt, EventError> {
        let key = match kind {
            crate::ledger::EventKind::PatientErased => self.keyring.get_or_create(GATEWAY_KEY_ID),
            // A read of a patient with no key read nothing of theirs: no key is made for it
            // (anyone could otherwise fill the keyring by naming made-up patients).
            crate::ledger::EventKind::RecordAccessed => self.keyring.get(&patient.key_id()),
            _ => self.keyring.get_or_create(&patient.key_id()),
        }
        .map_err(|e| match e {
            seal::KeyringError::Erased(_, at) => EventError::Erased(at),
            seal::KeyringError::UnknownKey(_) => EventError::NoPatient,
            other => EventError::Unavailable(other.to_string()),
        })?;
        let at_ms = crate::envelope::now_ms();
        let event = crate::record::Event {
            kind,
            patient: patient.key_id(),
            at_ms,
            body: body.into(),
        };
        let id = RecordId::generate(at_ms);
        let sealed = seal::seal_events(&[(&event, id, &key)], self.compress)
            .pop()
            .expect("one result")
            .map_err(|e| EventError::TooLarge(e.to_string()))?;
        let (token, rx) = AckToken::new();
        let op = WriteOp::Event {
            put: crate::vault::EventPut {
                kind,
                patient: *patient,
                sealed,
            },
            token,
        };
        if self.writer.send(vec![op]).await.is_err() {
            return Err(EventError::Unavailable(
                "the gateway is shutting down".into(),
            ));
        }
        match rx.await {
            Ok(Outcome::Stored { receipt, .. }) => Ok(receipt),
            Ok(Outcome::Retry { reason }) => Err(EventError::Unavailable(reason)),
            Ok(Outcome::Rejected(r)) => Err(EventError::Unavailable(r.reason)),
            Err(_) => Err(EventError::Unavailable("the vault writer stopped".into())),
        }
    }

    /// The keyring (the read side opens records with it).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// Hands one message to the pipeline. Waits (backpressure) while the pipeline is full; the
    /// outcome arrives on the envelope's token.
    pub async fn submit(self: &Arc<Self>, env: Envelope) {
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return; // closed: the token's drop asks for a resend
        };
        self.queue().push_back((env, permit));
        if self.take_job_slot() {
            let this = self.clone();
            self.pool.spawn(move || this.seal_queued());
        }
    }

    /// Answers the queued envelopes whose source withdrew them now, instead of when a sealing
    /// job reaches them behind everything queued before: a source giving a partition up waits
    /// for its messages to end. What stays queued keeps its order.
    pub fn sweep_withdrawn(&self) {
        let mut withdrawn = Vec::new();
        {
            let mut q = self.queue();
            let queued = std::mem::take(&mut *q);
            *q = set_withdrawn_aside(queued.into_iter(), &mut withdrawn);
        }
        answer_withdrawn(withdrawn);
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<(Envelope, OwnedSemaphorePermit)>> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more sealing job unless `workers` run already (they will see what was queued:
    /// a job ends only after finding the queue empty).
    fn take_job_slot(&self) -> bool {
        let mut jobs = self.jobs.load(Ordering::SeqCst);
        while jobs < self.workers {
            match self
                .jobs
                .compare_exchange(jobs, jobs + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => jobs = now,
            }
        }
        false
    }

    /// A sealing job: seals what is queued, a batch at a time, until the queue is empty. Under
    /// load a pool thread is woken once for many messages instead of once per message.
    fn seal_queued(&self) {
        loop {
            let mut withdrawn = Vec::new();
            let (taken, batch): (usize, Vec<(Envelope, OwnedSemaphorePermit)>) = {
                let mut q = self.queue();
                let taken = q.len().min(SEAL_BATCH);
                // Checked under the queue's lock, which hands envelopes out in the order they
                // came: once a source withdraws a partition's messages, none taken after that
                // is stored, and every one taken before it is. The stored ones are then a
                // prefix of what the source submitted, which is what a Kafka offset commit
                // can express.
                let batch = set_withdrawn_aside(q.drain(..taken), &mut withdrawn);
                (taken, batch)
            };
            answer_withdrawn(withdrawn);
            if taken == 0 {
                self.jobs.fetch_sub(1, Ordering::SeqCst);
                // Something queued since the take above may have found every job slot taken.
                if self.queue().is_empty() || !self.take_job_slot() {
                    return;
                }
                continue;
            }
            if batch.is_empty() {
                continue;
            }
            let (envelopes, permits): (Vec<Envelope>, Vec<OwnedSemaphorePermit>) =
                batch.into_iter().unzip();
            let ops = self.decode_and_seal(envelopes);
            drop(permits);
            // A closed writer drops the ops, and their tokens ask the senders to resend.
            if !ops.is_empty() {
                let _ = self.writer.blocking_send(ops);
            }
        }
    }

    /// Refuses input that a source could not even split into messages (bad frame or batch).
    pub async fn reject(
        self: &Arc<Self>,
        payload: Bytes,
        origin: Origin,
        received_ms: u64,
        rejection: Rejection,
        token: AckToken,
    ) {
        let this = self.clone();
        let op = tokio::task::spawn_blocking(move || {
            this.quarantine_op(payload, origin, received_ms, rejection, token)
        })
        .await;
        if let Ok(Some(op)) = op {
            let _ = self.writer.send(vec![op]).await;
        }
    }

    /// The write for each envelope: its sealed record, its quarantine entry, or none (the token
    /// was answered Retry).
    fn decode_and_seal(&self, envelopes: Vec<Envelope>) -> Vec<WriteOp> {
        let mut ops = Vec::with_capacity(envelopes.len());
        let mut decoded = Vec::with_capacity(envelopes.len());
        for env in envelopes {
            match self.decode_one(env) {
                Decoded::Record(r) => decoded.push(r),
                Decoded::Settled(op) => ops.extend(op),
            }
        }
        if decoded.is_empty() {
            return ops;
        }
        let sealing = Instant::now();
        let items: Vec<(&Record, RecordId, &seal::DataKey)> = decoded
            .iter()
            .map(|d| (&d.record, RecordId::generate(d.received_ms), &*d.key))
            .collect();
        let sealed = seal::seal_many(&items, self.compress);
        let n = decoded.len();
        let mut derivations = self.derive(&decoded, &sealed);
        for ((sealed, ToSeal { record, token, .. }), derivation) in
            sealed.into_iter().zip(decoded).zip(derivations.drain(..))
        {
            // Unreachable after decode's check_encodable; kept so nothing is sealed inexactly.
            let sealed = match sealed {
                Ok(s) => s,
                Err(e) => {
                    let Record { meta, raw } = record;
                    ops.extend(self.quarantine_op(
                        raw,
                        meta.origin,
                        meta.received_ms,
                        e.rejection(),
                        token,
                    ));
                    continue;
                }
            };
            let derived = match derivation {
                Derived::None => Derivation::None,
                Derived::Sealed(d) => Derivation::Mapped(d),
                Derived::Failed(f) => Derivation::Failed(f),
                Derived::Refused(rejection) => {
                    // normalize.on_error = "reject": the message is not stored.
                    let Record { meta, raw } = record;
                    ops.extend(self.quarantine_op(
                        raw,
                        meta.origin,
                        meta.received_ms,
                        rejection,
                        token,
                    ));
                    continue;
                }
            };
            let (dedup_key, control_key) = self.keyring.dedup_keys(&record);
            ops.push(WriteOp::Put {
                put: PutRecord {
                    sealed,
                    dedup_key,
                    control_key,
                    derived,
                },
                token,
            });
        }
        // Per record: its share of the batch.
        let each = sealing.elapsed().as_secs_f64() / n as f64;
        for _ in 0..n {
            self.metrics.seal_seconds.observe(each);
        }
        ops
    }

    /// Normalizes each sealed HL7v2 record into a derived record sealed under the same key.
    /// After sealing, because the Provenance names the raw record's id and commitment.
    fn derive(
        &self,
        decoded: &[ToSeal],
        sealed: &[Result<seal::Sealed, crate::record::EncodeError>],
    ) -> Vec<Derived> {
        let Some(normalizer) = &self.normalizer else {
            return decoded.iter().map(|_| Derived::None).collect();
        };
        let started = Instant::now();
        let mapped_ms = crate::envelope::now_ms();
        let mut out = Vec::with_capacity(decoded.len());
        let mut to_seal = Vec::new();
        for (d, s) in decoded.iter().zip(sealed) {
            let Ok(s) = s else {
                out.push(Derived::None);
                continue;
            };
            if d.record.meta.format != "hl7v2" {
                out.push(Derived::None);
                continue;
            }
            match derive_record(
                normalizer,
                &self.normalize,
                &d.record.raw,
                (s.record_id, s.commitment),
                mapped_ms,
            ) {
                Ok((derived, remarks)) => {
                    self.metrics.normalized.with_label_values(&["mapped"]).inc();
                    for item in &remarks.unmapped {
                        let label = if normalizer.names_segment(item) {
                            self.metrics.item_label(item)
                        } else {
                            "other".into()
                        };
                        self.metrics.unmapped.with_label_values(&[&label]).inc();
                    }
                    for ty in &remarks.left_out {
                        self.metrics.left_out.with_label_values(&[ty]).inc();
                    }
                    if let Some(why) = remarks.walked {
                        self.metrics.output_walks.with_label_values(&[why]).inc();
                    }
                    to_seal.push((out.len(), derived));
                    out.push(Derived::None);
                }
                Err(e) => {
                    self.metrics.normalized.with_label_values(&["failed"]).inc();
                    self.metrics
                        .mapping_failures
                        .with_label_values(&[e.label])
                        .inc();
                    out.push(match self.normalize.on_error {
                        OnMapError::Store => {
                            Derived::Failed(failure(normalizer, e.label, e.detail, mapped_ms))
                        }
                        // HL7 table 0357: 207 = application internal error.
                        OnMapError::Reject => Derived::Refused(Rejection::new(
                            crate::envelope::RejectKind::Unacceptable,
                            207,
                            "mapping_failed",
                            format!(
                                "the message could not be mapped to FHIR ({}): {}",
                                e.label, e.detail
                            ),
                        )),
                    });
                }
            }
        }
        let items: Vec<(&DerivedRecord, RecordId, &seal::DataKey)> = to_seal
            .iter()
            .map(|(at, r)| (r, RecordId::generate(r.mapped_ms), &*decoded[*at].key))
            .collect();
        for ((at, _), sealed) in to_seal
            .iter()
            .zip(seal::seal_derived_many(&items, self.compress))
        {
            out[*at] = match sealed {
                Ok(s) => Derived::Sealed(s),
                Err(e) => {
                    self.metrics
                        .mapping_failures
                        .with_label_values(&["too_large"])
                        .inc();
                    Derived::Failed(failure(normalizer, "too_large", e.to_string(), mapped_ms))
                }
            };
        }
        let each = started.elapsed().as_secs_f64() / decoded.len().max(1) as f64;
        for _ in 0..decoded.len() {
            self.metrics.normalize_seconds.observe(each);
        }
        out
    }

    /// Decodes one envelope and finds its patient's key; a rejection becomes its quarantine
    /// write, an unavailable key a Retry (no write).
    fn decode_one(&self, env: Envelope) -> Decoded {
        let started = Instant::now();
        let source = env.origin.kind();
        self.metrics
            .received_bytes
            .with_label_values(&[source])
            .inc_by(env.payload.len() as u64);
        let decoded = decode(
            &env.payload,
            env.format,
            &env.origin,
            env.received_ms,
            &self.rules,
        );
        self.metrics
            .parse_seconds
            .observe(started.elapsed().as_secs_f64());
        let record = match decoded {
            Ok(r) => r,
            Err(rejection) => {
                self.metrics
                    .received
                    .with_label_values(&[source, "unparsed"])
                    .inc();
                return Decoded::Settled(self.quarantine_op(
                    env.payload,
                    env.origin,
                    env.received_ms,
                    rejection,
                    env.token,
                ));
            }
        };
        self.metrics
            .received
            .with_label_values(&[source, &self.metrics.type_label(&record.meta.message_type)])
            .inc();
        let key_id = self.keyring.key_id_for(record.patient_key_identity());
        match self.keyring.get_or_create(&key_id) {
            Ok(key) => Decoded::Record(ToSeal {
                record,
                key,
                token: env.token,
                received_ms: env.received_ms,
            }),
            // The patient asked to be forgotten: their messages are refused, and not kept in
            // quarantine either (that would keep what the erasure destroyed). Senders get AE.
            Err(seal::KeyringError::Erased(..)) => {
                self.metrics
                    .rejected
                    .with_label_values(&[source, "patient_erased"])
                    .inc();
                env.token.resolve(Outcome::Rejected(Rejection::new(
                    crate::envelope::RejectKind::Unacceptable,
                    207,
                    "patient_erased",
                    "the patient this message is about was erased; it is not stored",
                )));
                Decoded::Settled(None)
            }
            Err(e) => {
                if let Some(times) = self.key_failures.hit() {
                    tracing::error!(error = %e, times, "data key unavailable");
                }
                env.token.resolve(Outcome::Retry {
                    reason: "key store unavailable; send the message again".into(),
                });
                Decoded::Settled(None)
            }
        }
    }

    fn quarantine_op(
        &self,
        payload: Bytes,
        origin: Origin,
        received_ms: u64,
        rejection: Rejection,
        token: AckToken,
    ) -> Option<WriteOp> {
        self.metrics
            .rejected
            .with_label_values(&[origin.kind(), rejection.label])
            .inc();
        // Kept under the patient's key when the input names one, so that erasing the patient
        // makes it unreadable too; under the gateway key otherwise (and then removed after
        // vault.quarantine_retention_days).
        // Only the identifier that names the key is kept with it: the input may hold more
        // than a record encoding can (it may have been refused for that very reason).
        let patient_ids: Vec<String> = crate::record::key_identity(&patient_ids_of(&payload))
            .map(|id| vec![id.to_string()])
            .unwrap_or_default();
        let key_id = self
            .keyring
            .key_id_for(crate::record::key_identity(&patient_ids));
        let key = match self.keyring.get_or_create(&key_id) {
            Ok(k) => k,
            Err(seal::KeyringError::Erased(..)) => {
                // An erased patient's input is not kept at all.
                token.resolve(Outcome::Rejected(rejection));
                return None;
            }
            Err(e) => {
                if let Some(times) = self.key_failures.hit() {
                    tracing::error!(error = %e, times, "data key unavailable for quarantine");
                }
                token.resolve(Outcome::Retry {
                    reason: "key store unavailable; send the message again".into(),
                });
                return None;
            }
        };
        let entry_origin = origin_label(&origin);
        let record = Record {
            meta: RecordMeta {
                sender: String::new(),
                message_type: String::new(),
                trigger: String::new(),
                control_id: String::new(),
                patient_ids,
                received_ms,
                origin,
                format: "quarantine".into(),
            },
            raw: payload,
        };
        let id = RecordId::generate(received_ms);
        let sealed = match seal::seal(&record, id, &key, self.compress) {
            Ok(s) => s,
            Err(e) => {
                // Input too large to keep even as quarantine: answered, not kept.
                let mut rejection = rejection;
                rejection.reason =
                    format!("{}; the input could not be kept: {e}", rejection.reason);
                token.resolve(Outcome::Rejected(rejection));
                return None;
            }
        };
        let entry = QuarantineEntry {
            id: id.to_string(),
            reason: rejection.reason.clone(),
            label: rejection.label.to_string(),
            received_ms,
            origin: entry_origin,
            size: record.raw.len(),
        };
        Some(WriteOp::Quarantine {
            entry,
            sealed,
            rejection,
            token,
        })
    }
}

/// The patient identifiers refused input names, as far as it can be read (HL7v2 PID-3, or a
/// FHIR resource's Patient identifiers); none when it cannot be read at all.
fn patient_ids_of(payload: &Bytes) -> Vec<String> {
    if crate::fhir::looks_like_json(payload) {
        return crate::fhir::read(payload)
            .map(|m| m.patient_ids)
            .unwrap_or_default();
    }
    let ids_of = |raw: &[u8]| {
        with_message(raw, |msg| {
            crate::record::hl7_patient_ids(msg).unwrap_or_default()
        })
    };
    match ids_of(payload) {
        Ok(ids) => ids,
        // Two messages back to back, refused for that: the patient both name, so that
        // erasing that patient reaches this input too; none when they name different ones.
        Err(crate::hl7::ParseError::SecondMsh(_)) => {
            let parts = crate::hl7::split_batch(payload).unwrap_or_default();
            let mut ids = parts.iter().map(|p| ids_of(p).unwrap_or_default());
            let first = ids.next().unwrap_or_default();
            if ids.all(|i| i == first) {
                first
            } else {
                Vec::new()
            }
        }
        Err(_) => Vec::new(),
    }
}

/// Takes the envelopes whose source withdrew them out of `queued` into `withdrawn`, keeping the
/// rest in order. Called under the queue's lock; their answers go out after it
/// ([`answer_withdrawn`]).
fn set_withdrawn_aside<C: FromIterator<(Envelope, OwnedSemaphorePermit)>>(
    queued: impl Iterator<Item = (Envelope, OwnedSemaphorePermit)>,
    withdrawn: &mut Vec<Envelope>,
) -> C {
    queued
        .filter_map(|(env, permit)| {
            if env.token.is_withdrawn() {
                withdrawn.push(env);
                None
            } else {
                Some((env, permit))
            }
        })
        .collect()
}

/// Tells the sources of withdrawn envelopes that they were not stored.
fn answer_withdrawn(withdrawn: Vec<Envelope>) {
    for env in withdrawn {
        env.token.resolve(Outcome::Retry {
            reason: AckToken::WITHDRAWN.into(),
        });
    }
}

/// Where an input came from, for operators (addresses are not patient data).
fn origin_label(origin: &Origin) -> String {
    match origin {
        Origin::Mllp { peer, .. } => format!("mllp {peer}"),
        Origin::Nats {
            stream, sequence, ..
        } => format!("nats {stream}#{sequence}"),
        Origin::Kafka {
            topic,
            partition,
            offset,
        } => format!("kafka {topic}/{partition}@{offset}"),
        Origin::Http { peer } => format!("http {peer}"),
        // File names can carry patient names: the sealed record has the file, the label not.
        Origin::Import { index, .. } => format!("import #{index}"),
        Origin::Replay { quarantine_id } => format!("replay {quarantine_id}"),
        Origin::Local { name } => format!("local {name}"),
    }
}

/// Decode: a pure function of the bytes, their format and the acceptance rules.
pub fn decode(
    payload: &Bytes,
    format: FormatHint,
    origin: &Origin,
    received_ms: u64,
    rules: &AcceptRules,
) -> Result<Record, Rejection> {
    let fhir = match format {
        FormatHint::Hl7v2 => false,
        FormatHint::Fhir => true,
        FormatHint::Auto => crate::fhir::looks_like_json(payload),
    };
    let record = if fhir {
        let sender = origin.kind();
        Record::from_fhir(payload.clone(), sender, origin.clone(), received_ms, rules)?
    } else {
        decode_hl7(payload, origin, received_ms, rules)?
    };
    record.check_encodable()?;
    Ok(record)
}

fn decode_hl7(
    payload: &Bytes,
    origin: &Origin,
    received_ms: u64,
    rules: &AcceptRules,
) -> Result<Record, Rejection> {
    with_message(payload, |msg| {
        Record::from_hl7(msg, payload.clone(), origin.clone(), received_ms, rules)
    })
    .map_err(|e| parse_rejection(&e))?
}

/// Parses `raw` and hands the message to `f`. A message in a character set whose trail bytes
/// can look like delimiters is read from a UTF-8 copy (the sealed record keeps the original
/// bytes).
pub fn with_message<T>(
    raw: &[u8],
    f: impl FnOnce(&Message<'_>) -> T,
) -> Result<T, crate::hl7::ParseError> {
    let msg = Message::parse(raw)?;
    if !msg.charset().needs_transcoding() {
        return Ok(f(&msg));
    }
    let utf8 = msg.charset().transcode(raw);
    let msg = Message::parse(&utf8)?.with_charset(crate::hl7::Charset::Utf8);
    Ok(f(&msg))
}

/// What a mapping reports beside the derived record, for metrics: names, never values.
#[derive(Debug, Default)]
pub struct Remarks {
    /// Segments and fields holding data no mapping used (`ZPI`, `PID-10`).
    pub unmapped: Vec<String>,
    /// Resource types left out for lack of an element R4 requires, one per resource.
    pub left_out: Vec<String>,
    /// Why the Bundle was parsed back and walked (the rule construction did not show, or
    /// `configured`); `None` when it was shown valid as built, or not checked.
    pub walked: Option<&'static str>,
}

/// Maps the raw HL7v2 message of a sealed record: the derived record to seal (and what no
/// mapping used or what was left out), or why not. Shared by the pipeline and `mapping replay`.
pub fn derive_record(
    normalizer: &Normalizer,
    cfg: &NormalizeConfig,
    raw: &[u8],
    (raw_id, raw_commitment): (RecordId, [u8; 32]),
    mapped_ms: u64,
) -> Result<(DerivedRecord, Remarks), MapError> {
    let raw_id_hex = raw_id.to_string();
    let link = Link {
        raw_record_id: &raw_id_hex,
        raw_commitment: &raw_commitment,
        mapped_ms,
    };
    let mapped = with_message(raw, |msg| normalizer.map(msg, &link)).unwrap_or_else(|e| {
        Err(MapError {
            label: "unparsed",
            detail: format!("the message does not parse again: {e}"),
        })
    })?;
    let walked = check_output(cfg, &mapped)?;
    Ok((
        DerivedRecord {
            raw_id,
            raw_commitment,
            mapping_version: normalizer.version().to_string(),
            mapped_ms,
            outcome: mapping_outcome(&mapped.unmapped, &mapped.warnings).into(),
            bundle: mapped.bundle.into(),
        },
        Remarks {
            unmapped: mapped.unmapped,
            left_out: mapped.left_out,
            walked,
        },
    ))
}

/// A mapping failure as kept for `medanchor mapping failures`.
pub fn failure(normalizer: &Normalizer, label: &str, detail: String, at_ms: u64) -> MappingFailure {
    MappingFailure {
        label: label.to_string(),
        detail,
        mapping_version: normalizer.version().to_string(),
        at_ms,
    }
}

/// The Bundle a mapping made, checked against the FHIR R4 schema and the sharing invariants
/// before it is stored (`normalize.validate_output`): a Bundle that fails is a mapping failure
/// (`invalid_output`) naming paths and rules, never values. One the mapper showed valid as it
/// built it is not parsed back (the mapper does not try under `normalize.output_check = "walk"`);
/// `Ok` says why the walk ran, if it did.
pub(crate) fn check_output(
    cfg: &NormalizeConfig,
    mapped: &crate::normalize::Mapped,
) -> Result<Option<&'static str>, MapError> {
    if !cfg.validate_output {
        return Ok(None);
    }
    let Err(why) = mapped.shown_valid else {
        return Ok(None);
    };
    crate::fhir::validate::Validator::shared()
        .validate_bytes(&mapped.bundle)
        .map_err(|issues| {
            let shown: Vec<String> = issues.iter().take(5).map(|i| i.to_string()).collect();
            MapError {
                label: "invalid_output",
                detail: format!(
                    "the Bundle made is not valid FHIR R4 ({} issue{}): {}",
                    issues.len(),
                    if issues.len() == 1 { "" } else { "s" },
                    shown.join("; ")
                ),
            }
        })?;
    Ok(Some(why))
}

/// The OperationOutcome kept in a derived record: what no mapping used (information), and what
/// was mapped with less than full fidelity or left out (warnings: a resource R4 cannot hold
/// without an element the message lacked, a value that is not a date…). Names and reasons,
/// never values; empty when there is nothing to say.
///
/// Written directly, in the bytes `serde_json` gives the same object (keys sorted, its string
/// escapes; a test holds the two equal): most messages of a typical feed have something
/// unmapped, and building the `Value` tree cost about 2% of the gateway's core.
pub fn mapping_outcome(unmapped: &[String], warnings: &[String]) -> Vec<u8> {
    use crate::normalize::escape_json;
    if unmapped.is_empty() && warnings.is_empty() {
        return Vec::new();
    }
    const NOT_USED: &str = " holds data that no mapping uses";
    // About 130 bytes an issue: one allocation for most outcomes.
    let mut out = Vec::with_capacity(64 + 130 * (unmapped.len() + warnings.len()));
    out.extend_from_slice(b"{\"issue\":[");
    let issues = unmapped
        .iter()
        .map(|u| ("not-supported", u.as_str(), NOT_USED, "information"))
        .chain(
            warnings
                .iter()
                .map(|w| ("incomplete", w.as_str(), "", "warning")),
        );
    for (i, (code, text, tail, severity)) in issues.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"code\":\"");
        out.extend_from_slice(code.as_bytes());
        out.extend_from_slice(b"\",\"details\":{\"text\":\"");
        escape_json(&mut out, text);
        escape_json(&mut out, tail);
        out.extend_from_slice(b"\"},\"severity\":\"");
        out.extend_from_slice(severity.as_bytes());
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"],\"resourceType\":\"OperationOutcome\"}");
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::envelope::RejectKind;

    /// Two messages back to back are refused (`second_msh`), and kept under the key of the
    /// patient both name, as one message would be; under the gateway's when they name two.
    #[test]
    fn refused_messages_back_to_back_name_the_patient_both_name() {
        let msg = |pid: &str| {
            format!("MSH|^~\\&|A|B|C|D|20240101||ADT^A08|{pid}|P|2.5\rPID|1||{pid}^^^H^MR\r")
        };
        let two = |a: &str, b: &str| Bytes::from(format!("{}{}", msg(a), msg(b)));
        assert!(matches!(
            Message::parse(&two("1", "1")),
            Err(crate::hl7::ParseError::SecondMsh(3))
        ));
        let one = patient_ids_of(&Bytes::from(msg("1")));
        assert!(!one.is_empty());
        assert_eq!(patient_ids_of(&two("1", "1")), one);
        assert!(patient_ids_of(&two("1", "2")).is_empty());
    }

    const ADT: &[u8] = include_bytes!("../tests/fixtures/hl7/microsoft/ADT-A01-01.hl7");
    const ORU: &[u8] = include_bytes!("../tests/fixtures/hl7/microsoft/ORU-R01-01.hl7");

    fn envelope(payload: &'static [u8], token: AckToken) -> Envelope {
        Envelope {
            payload: Bytes::from_static(payload),
            origin: Origin::Local {
                name: "test".into(),
            },
            format: FormatHint::Hl7v2,
            received_ms: crate::envelope::now_ms(),
            token,
        }
    }

    fn start(dir: &std::path::Path) -> (Stores, Arc<Pipeline>, Running) {
        let cfg = Config {
            data_dir: dir.join("data"),
            ..Config::default()
        };
        let stores = Stores::open(&cfg, true).expect("open stores");
        let (pipeline, running) =
            Pipeline::start(&cfg, &stores, Arc::new(Metrics::new())).expect("start");
        (stores, pipeline, running)
    }

    /// What a derived record keeps of unmapped data is a valid OperationOutcome naming fields
    /// only; nothing unmapped keeps nothing.
    #[test]
    fn the_unmapped_outcome_is_valid_fhir_and_names_fields_only() {
        assert!(mapping_outcome(&[], &[]).is_empty());
        let outcome = mapping_outcome(&["ZPI".into(), "PID-10".into()], &[]);
        let v: serde_json::Value = serde_json::from_slice(&outcome).unwrap();
        crate::fhir::validate::Validator::shared()
            .validate(&v)
            .unwrap_or_else(|issues| panic!("{issues:?}"));
        assert_eq!(v["issue"].as_array().unwrap().len(), 2);
        assert_eq!(
            v["issue"][1]["details"]["text"],
            "PID-10 holds data that no mapping uses"
        );
        let outcome = mapping_outcome(
            &["ZPI".into()],
            &["Coverage: left out, an element R4 requires was not mapped".into()],
        );
        let v: serde_json::Value = serde_json::from_slice(&outcome).unwrap();
        crate::fhir::validate::Validator::shared()
            .validate(&v)
            .unwrap_or_else(|issues| panic!("{issues:?}"));
        assert_eq!(v["issue"][1]["severity"], "warning");
        assert_eq!(v["issue"][1]["code"], "incomplete");
    }

    /// The outcome written directly is, byte for byte, what `serde_json` writes for the same
    /// object, also for names and reasons holding quotes, backslashes, controls and non-ASCII.
    #[test]
    fn the_outcome_is_written_as_serde_json_writes_it() {
        fn by_serde(unmapped: &[String], warnings: &[String]) -> Vec<u8> {
            let issues: Vec<serde_json::Value> = unmapped
                .iter()
                .map(|item| {
                    serde_json::json!({
                        "severity": "information",
                        "code": "not-supported",
                        "details": {"text": format!("{item} holds data that no mapping uses")}
                    })
                })
                .chain(warnings.iter().map(|w| {
                    serde_json::json!({"severity": "warning", "code": "incomplete", "details": {"text": w}})
                }))
                .collect();
            serde_json::to_vec(
                &serde_json::json!({"resourceType": "OperationOutcome", "issue": issues}),
            )
            .unwrap()
        }
        let awkward: Vec<String> = (0u8..0x80)
            .map(|c| format!("Z{}-{}", c as char, c))
            .chain(["é\u{2028}\"\\".to_string(), String::new()])
            .collect();
        let cases: [(&[String], &[String]); 5] = [
            (&awkward[..3], &[]),
            (&[], &awkward[3..5]),
            (&awkward, &awkward),
            (&awkward[..1], &awkward[1..2]),
            (&[], &[]),
        ];
        for (unmapped, warnings) in cases {
            let want = if unmapped.is_empty() && warnings.is_empty() {
                Vec::new()
            } else {
                by_serde(unmapped, warnings)
            };
            assert_eq!(
                String::from_utf8(mapping_outcome(unmapped, warnings)).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
    }

    /// Records as received in the vault (derived records left out).
    fn raw_records(stores: &Stores) -> u64 {
        let mut n = 0;
        stores
            .vault
            .for_each_record(&mut |id, rec| {
                let rec = rec.unwrap();
                let key = stores
                    .keyring
                    .get(seal::parse_header(&rec.sealed).unwrap().key_id)
                    .unwrap();
                let opened = seal::open_content(&rec.sealed, id, &key).unwrap();
                n += u64::from(matches!(opened.content, crate::record::Content::Record(_)));
                Ok(())
            })
            .unwrap();
        n
    }

    async fn stop(pipeline: Arc<Pipeline>, running: Running) {
        drop(pipeline);
        assert!(
            running.finish().await,
            "the writer and the batcher end cleanly"
        );
    }

    /// An ADT whose PID-3 has `reps` repetitions, the first `first`.
    fn many_patient_ids(reps: usize, first: &str) -> Bytes {
        let mut pid3 = String::from(first);
        for i in 1..reps {
            pid3.push('~');
            pid3.push_str(&(i % 10).to_string());
        }
        Bytes::from(format!(
            "MSH|^~\\&|APP|FAC|GW|GW|20250101000000||ADT^A01|CTRL-{reps}|P|2.5\rPID|1||{pid3}||DOE^JOHN\r"
        ))
    }

    async fn submit_bytes(pipeline: &Arc<Pipeline>, payload: Bytes) -> Outcome {
        let (token, rx) = AckToken::new();
        pipeline
            .submit(Envelope {
                payload,
                origin: Origin::Local {
                    name: "test".into(),
                },
                format: FormatHint::Hl7v2,
                received_ms: crate::envelope::now_ms(),
                token,
            })
            .await;
        rx.await.unwrap()
    }

    /// The patient-identifier count is a u16: 65,536 repetitions once wrapped to 0 and the
    /// identifiers' bytes were read back as the fields after it, a record other than the one sent
    /// (forged origin, time, format and raw), acknowledged and verifying. Now refused with a
    /// reason before anything is stored; 65,535 (the most the count holds) is stored and reads
    /// back with every identifier.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_patient_id_count_beyond_the_encoding_is_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let (stores, pipeline, running) = start(dir.path());
        // What the forgery put first: bytes shaped as length-prefixed fields.
        let forged = "\u{0}\u{0}\u{0}\u{5}FORGE";
        let outcome = submit_bytes(&pipeline, many_patient_ids(65_536, forged)).await;
        let Outcome::Rejected(r) = outcome else {
            panic!("65,536 identifiers must be refused, got {outcome:?}")
        };
        assert_eq!(r.label, "too_many_patient_ids");
        assert_eq!(r.kind, RejectKind::Unacceptable, "answered AE");
        assert!(r.reason.contains("PID-3"), "{}", r.reason);
        assert!(!r.reason.contains("FORGE"), "no content in the reason");
        assert_eq!(stores.vault.record_count().unwrap(), 0, "nothing stored");
        assert_eq!(stores.vault.quarantine_list().unwrap().len(), 1, "kept");

        let outcome = submit_bytes(&pipeline, many_patient_ids(65_535, "MRN1")).await;
        let Outcome::Stored { receipt, .. } = outcome else {
            panic!("65,535 identifiers fit, got {outcome:?}")
        };
        let id = RecordId::parse(&receipt.record_id).unwrap();
        let rec = stores.vault.get(&id).unwrap().unwrap();
        let h = seal::parse_header(&rec.sealed).unwrap();
        let key = stores.keyring.get(h.key_id).unwrap();
        let opened = seal::open(&rec.sealed, id, &key).unwrap();
        assert_eq!(opened.record.meta.patient_ids.len(), 65_535);
        assert_eq!(opened.record.meta.patient_ids[0], "MRN1^^");
        assert_eq!(opened.commitment, rec.commitment);
        stop(pipeline, running).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_withdrawn_message_is_answered_retry_and_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (stores, pipeline, running) = start(dir.path());
        let (token, withdrawn) = AckToken::withdrawable(Arc::new(AtomicBool::new(true)));
        pipeline.submit(envelope(ADT, token)).await;
        let (token, kept) = AckToken::withdrawable(Arc::new(AtomicBool::new(false)));
        pipeline.submit(envelope(ORU, token)).await;
        assert_eq!(
            withdrawn.await.unwrap(),
            Outcome::Retry {
                reason: AckToken::WITHDRAWN.into()
            }
        );
        assert!(matches!(
            kept.await.unwrap(),
            Outcome::Stored {
                duplicate: false,
                ..
            }
        ));
        assert_eq!(raw_records(&stores), 1);
        // Its next reader stores it: nothing of it was kept.
        let (token, again) = AckToken::new();
        pipeline.submit(envelope(ADT, token)).await;
        assert!(matches!(
            again.await.unwrap(),
            Outcome::Stored {
                duplicate: false,
                ..
            }
        ));
        assert_eq!(raw_records(&stores), 2);
        stop(pipeline, running).await;
    }

    /// What a Kafka offset commit needs: when the flag rises while messages of one partition are
    /// in the pipeline, the stored ones are a prefix of the submitted order and the withdrawn
    /// ones the rest, however sealing jobs interleave.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn withdrawal_mid_stream_stores_a_prefix_and_withdraws_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (_stores, pipeline, running) = start(dir.path());
        let (mut stored_total, mut withdrawn_total) = (0, 0);
        for round in 0..5 {
            let flag = Arc::new(AtomicBool::new(false));
            let mut outcomes = Vec::new();
            for i in 0..400 {
                if i == 200 {
                    flag.store(true, Ordering::SeqCst);
                    // As a Kafka release does, in some rounds: what is queued ends at once.
                    if round % 2 == 1 {
                        pipeline.sweep_withdrawn();
                    }
                }
                let (token, outcome) = AckToken::withdrawable(flag.clone());
                pipeline
                    .submit(envelope(if i % 2 == 0 { ADT } else { ORU }, token))
                    .await;
                outcomes.push(outcome);
                // Lets sealing jobs take some as they come, so the flag rises mid-stream.
                if i % 8 == 7 {
                    tokio::time::sleep(std::time::Duration::from_micros(500)).await;
                }
            }
            let mut stored = Vec::new();
            for outcome in outcomes {
                stored.push(match outcome.await.unwrap() {
                    Outcome::Stored { .. } => true,
                    Outcome::Retry { reason } if reason == AckToken::WITHDRAWN => false,
                    other => panic!("round {round}: unexpected {other:?}"),
                });
            }
            let prefix = stored.iter().take_while(|s| **s).count();
            assert!(
                stored[prefix..].iter().all(|s| !s),
                "round {round}: a message stored after a withdrawn one: {stored:?}"
            );
            assert!(
                prefix <= 200,
                "round {round}: messages submitted after the flag rose were stored ({prefix})"
            );
            stored_total += prefix;
            withdrawn_total += stored.len() - prefix;
        }
        // Not vacuous: messages were both stored and withdrawn.
        assert!(
            stored_total > 0 && withdrawn_total > 0,
            "stored {stored_total}, withdrawn {withdrawn_total}"
        );
        stop(pipeline, running).await;
    }
}
