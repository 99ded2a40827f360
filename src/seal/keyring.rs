//! Keys on disk, under `<data_dir>/keys/` (files mode 0600):
//!
//! - `master-<n>.key`: 32-byte master keys (hex). The highest `n` wraps new data keys;
//!   `medanchor keys rotate` adds `n+1` and re-wraps every data key under it.
//! - `index.key`: the secret that turns a patient identifier into a data key id (and keys the
//!   dedup index), so neither the key table nor the vault names a patient.
//! - `log-signing.key`: the Ed25519 seed that signs checkpoints.
//! - `keyring.redb`: data keys, each AES-256-GCM-wrapped by a master key (AAD = key id).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use aes_gcm::{aead::AeadInOut, Aes256Gcm, KeyInit};
use redb::{ReadableTable, TableDefinition};

use crate::storage::{Db, Healing};
use zeroize::Zeroizing;

const DATA_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data_keys");
/// Data key id → u64 Unix ms when it was destroyed: a patient's erasure. The key is gone from
/// `data_keys`; this keeps it from being created again.
const ERASED: TableDefinition<&[u8], u64> = TableDefinition::new("erased");
pub const GATEWAY_KEY_ID: &str = "gateway";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("key file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {0} does not hold 32 hex-encoded bytes")]
    BadKeyFile(PathBuf),
    #[error(
        "key file {0} is damaged: the key does not match its check line (restore it from a backup)"
    )]
    DamagedKeyFile(PathBuf),
    #[error("no master key in {0}")]
    NoMaster(PathBuf),
    #[error("master key {0} needed to unwrap a data key is missing")]
    MissingMaster(u32),
    #[error("data key {0} does not exist")]
    UnknownKey(String),
    #[error("data key {0} does not unwrap: the key table or master key was altered")]
    Unwrap(String),
    #[error("keyring database: {0}")]
    Db(String),
    /// The patient was erased: their data key was destroyed at this time (Unix ms).
    #[error("data key {0} was destroyed (the patient was erased)")]
    Erased(String, u64),
}

fn db_err(e: impl std::fmt::Display) -> KeyringError {
    KeyringError::Db(e.to_string())
}

/// A patient as the gateway's indexes and API know them: the 16 bytes of their data key id
/// (`p-` + 32 hex, a keyed hash of their identifier), so no index or URL names anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PatientIndex(pub [u8; 16]);

impl PatientIndex {
    /// The patient of a data key id; `None` for the gateway key or anything else.
    pub fn from_key_id(key_id: &str) -> Option<PatientIndex> {
        let hex = key_id.strip_prefix("p-")?;
        if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        Some(PatientIndex(hex::decode(hex).ok()?.try_into().ok()?))
    }

    /// Their data key id.
    pub fn key_id(&self) -> String {
        format!("p-{}", hex::encode(self.0))
    }
}

impl std::fmt::Display for PatientIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p-{}", hex::encode(self.0))
    }
}

/// A data key: one per patient, plus the gateway key for records without a patient.
pub struct DataKey {
    id: String,
    /// Only the key schedule is kept (zeroized on drop by the aes crate's `zeroize` feature).
    xaes: super::XaesKey,
}

impl DataKey {
    pub fn id(&self) -> &str {
        &self.id
    }
    pub(crate) fn xaes(&self) -> &super::XaesKey {
        &self.xaes
    }
    /// A data key from raw material (tests, benchmarks and key import).
    pub fn new(id: &str, secret: [u8; 32]) -> DataKey {
        DataKey::from_secret(id.to_string(), Zeroizing::new(secret))
    }

    fn from_secret(id: String, secret: Zeroizing<[u8; 32]>) -> DataKey {
        DataKey {
            xaes: super::XaesKey::new(&secret),
            id,
        }
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The check line of a key file: a short hash of the key, so one damaged character is refused
/// by name instead of silently becoming another key (a flipped `index.key` once made every
/// re-send a new record).
fn check_line(secret: &[u8; 32]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"medanchor key file check\0");
    h.update(secret);
    format!("check {}", hex::encode(&h.finalize().as_bytes()[..8]))
}

/// The file text for a secret: hex, then its check line.
fn key_file_text(secret: &[u8; 32]) -> Zeroizing<String> {
    Zeroizing::new(format!("{}\n{}\n", hex::encode(secret), check_line(secret)))
}

/// A key file as read: the secret and whether it carried a check line (files written before
/// check lines have none; the gateway adds one at its next start).
pub struct KeyFile {
    pub secret: Zeroizing<[u8; 32]>,
    pub checked: bool,
}

/// Reads a key file: 32 bytes as hex, then (files written by this version on) a check line
/// that must match.
pub fn read_key_file(path: &Path) -> Result<KeyFile, KeyringError> {
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| KeyringError::File {
                path: path.to_path_buf(),
                source,
            })?,
        );
    let bad = || KeyringError::BadKeyFile(path.into());
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let bytes = Zeroizing::new(hex::decode(lines.next().ok_or_else(bad)?).map_err(|_| bad())?);
    let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad())?;
    let secret = Zeroizing::new(secret);
    let checked = match lines.next() {
        None => false,
        Some(line) if line == check_line(&secret) => true,
        Some(_) => return Err(KeyringError::DamagedKeyFile(path.into())),
    };
    if lines.next().is_some() {
        return Err(bad());
    }
    Ok(KeyFile { secret, checked })
}

/// Writes a key file (mode 0600) that must not exist yet, and syncs it and its directory.
fn write_key_file(path: &Path, secret: &[u8; 32], replace: bool) -> Result<(), KeyringError> {
    let file_err = |source| KeyringError::File {
        path: path.to_path_buf(),
        source,
    };
    let target = if replace {
        path.with_extension("key.new")
    } else {
        path.to_path_buf()
    };
    let _ = replace.then(|| std::fs::remove_file(&target));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(file_err)?;
    f.write_all(key_file_text(secret).as_bytes())
        .map_err(file_err)?;
    f.sync_all().map_err(file_err)?;
    if replace {
        std::fs::rename(&target, path).map_err(file_err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(file_err)?;
    }
    Ok(())
}

/// Reads a 32-byte secret stored as hex, creating it (mode 0600) if `create` and it is missing.
/// With `create` (the gateway's start), a file without a check line gets one.
pub fn load_secret(path: &Path, create: bool) -> Result<Zeroizing<[u8; 32]>, KeyringError> {
    match read_key_file(path) {
        Ok(k) => {
            if create && !k.checked {
                write_key_file(path, &k.secret, true)?;
            }
            Ok(k.secret)
        }
        Err(KeyringError::File { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && create =>
        {
            let mut secret = Zeroizing::new([0u8; 32]);
            getrandom::fill(secret.as_mut()).expect("the operating system's random source failed");
            write_key_file(path, &secret, false)?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

/// Data keys kept unwrapped in memory at most (100,000 of them raised a test process's
/// resident memory by 70 MB: the AES key schedule is most of each). Beyond it the gateway would hold every patient it ever saw: memory
/// that grows with the patient count, and every key unwrapped for as long as the process runs.
/// A key that left the cache is unwrapped again from keyring.redb when next needed (one read
/// and one AES key unwrap).
pub const KEY_CACHE_ENTRIES: usize = 100_000;

/// The unwrapped data keys, bounded: when it is full, a new key takes the place of an
/// arbitrary one (the first in the table's order, which follows the keys' hashes, not their
/// use).
struct KeyCache {
    map: HashMap<String, Arc<DataKey>>,
    capacity: usize,
}

impl KeyCache {
    fn new(capacity: usize) -> Self {
        KeyCache {
            map: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    fn get(&self, key_id: &str) -> Option<Arc<DataKey>> {
        self.map.get(key_id).cloned()
    }

    fn insert(&mut self, key_id: &str, key: Arc<DataKey>) {
        if self.map.len() >= self.capacity && !self.map.contains_key(key_id) {
            if let Some(out) = self.map.keys().next().cloned() {
                self.map.remove(&out);
            }
        }
        self.map.insert(key_id.to_string(), key);
    }

    fn remove(&mut self, key_id: &str) {
        self.map.remove(key_id);
    }
}

pub struct Keyring {
    dir: PathBuf,
    masters: RwLock<Vec<(u32, Zeroizing<[u8; 32]>)>>,
    index_key: Zeroizing<[u8; 32]>,
    /// keyring.redb; reopened by the next write after a storage failure.
    db: Healing,
    /// Data keys unwrapped, at most [`KEY_CACHE_ENTRIES`] of them.
    cache: RwLock<KeyCache>,
    create_lock: Mutex<()>,
    /// Bumped by every destroy after its commit, before its key leaves the cache, so that a load
    /// which read the table before the commit does not put the destroyed key back.
    destroyed: std::sync::atomic::AtomicU64,
}

fn master_ids(dir: &Path) -> Result<Vec<u32>, KeyringError> {
    let rd = std::fs::read_dir(dir).map_err(|source| KeyringError::File {
        path: dir.into(),
        source,
    })?;
    let mut ids: Vec<u32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("master-")?
                .strip_suffix(".key")?
                .parse()
                .ok()
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

impl Keyring {
    /// Opens the keyring in `dir`, creating keys on first start when `create`.
    pub fn open(dir: &Path, create: bool) -> Result<Keyring, KeyringError> {
        if create {
            std::fs::create_dir_all(dir).map_err(|source| KeyringError::File {
                path: dir.into(),
                source,
            })?;
        }
        let mut ids = master_ids(dir)?;
        if ids.is_empty() {
            if !create {
                return Err(KeyringError::NoMaster(dir.into()));
            }
            load_secret(&dir.join("master-1.key"), true)?;
            ids.push(1);
        }
        let masters = ids
            .iter()
            .map(|&id| {
                // With `create` (the gateway's start) an existing file without a check line
                // gets one; none is created here.
                Ok((
                    id,
                    load_secret(&dir.join(format!("master-{id}.key")), create)?,
                ))
            })
            .collect::<Result<Vec<_>, KeyringError>>()?;
        let index_key = load_secret(&dir.join("index.key"), create)?;
        let path = dir.join("keyring.redb");
        if create {
            // Wrapped keys are safe at rest, but nobody but the gateway needs to read them.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            if !path.exists() {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|source| KeyringError::File {
                        path: path.clone(),
                        source,
                    })?;
            }
        }
        let db = if create {
            redb::Database::create(&path)
        } else {
            redb::Database::open(&path)
        }
        .map_err(db_err)?;
        let w = db.begin_write().map_err(db_err)?;
        w.open_table(DATA_KEYS).map_err(db_err)?;
        w.open_table(ERASED).map_err(db_err)?;
        w.commit().map_err(db_err)?;
        Ok(Keyring {
            dir: dir.into(),
            masters: RwLock::new(masters),
            index_key,
            db: Healing::new(
                db,
                Box::new(move || redb::Database::open(&path).map_err(|e| e.to_string())),
            ),
            cache: RwLock::new(KeyCache::new(KEY_CACHE_ENTRIES)),
            create_lock: Mutex::new(()),
            destroyed: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Opens the keyring for reading only (the verifier): no key file is created or rewritten
    /// and keyring.redb is not written (read through a repaired copy if it was not closed
    /// cleanly). Returns the key files that have no check line yet.
    pub fn open_read_only(dir: &Path) -> Result<(Keyring, Vec<PathBuf>), KeyringError> {
        let mut unchecked = Vec::new();
        let mut read = |path: PathBuf| -> Result<Zeroizing<[u8; 32]>, KeyringError> {
            let k = read_key_file(&path)?;
            if !k.checked {
                unchecked.push(path);
            }
            Ok(k.secret)
        };
        let ids = master_ids(dir)?;
        if ids.is_empty() {
            return Err(KeyringError::NoMaster(dir.into()));
        }
        let masters = ids
            .iter()
            .map(|&id| Ok((id, read(dir.join(format!("master-{id}.key")))?)))
            .collect::<Result<Vec<_>, KeyringError>>()?;
        let index_key = read(dir.join("index.key"))?;
        read(dir.join("log-signing.key"))?;
        let db = Db::open_read_only(&dir.join("keyring.redb"), 4 << 20).map_err(db_err)?;
        Ok((
            Keyring {
                dir: dir.into(),
                masters: RwLock::new(masters),
                index_key,
                db: Healing::read_only(db),
                cache: RwLock::new(KeyCache::new(KEY_CACHE_ENTRIES)),
                create_lock: Mutex::new(()),
                destroyed: std::sync::atomic::AtomicU64::new(0),
            },
            unchecked,
        ))
    }

    /// A write transaction on keyring.redb (reopened first after a storage failure).
    fn begin_write(&self) -> Result<redb::WriteTransaction, KeyringError> {
        self.db.begin_write(&|_| Ok(())).map_err(KeyringError::Db)
    }

    /// `Err` names the storage failure the keyring has not recovered from (new data keys cannot
    /// be stored meanwhile).
    pub fn health(&self) -> Result<(), String> {
        self.db.health()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keyed hash under the index key (patient key ids, dedup keys).
    pub fn index_hash(&self, context: &str, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.index_key);
        h.update(context.as_bytes());
        for p in parts {
            h.update(&(p.len() as u64).to_be_bytes());
            h.update(p);
        }
        *h.finalize().as_bytes()
    }

    /// A record's keyed dedup key (sender, control id, raw bytes) and control key (sender,
    /// control id); see docs/FORMATS.md.
    pub fn dedup_keys(&self, record: &crate::record::Record) -> ([u8; 32], [u8; 32]) {
        let m = &record.meta;
        // The message is hashed on its own first: starting at a chunk boundary lets BLAKE3 hash
        // its chunks in parallel lanes, where behind the short prefix it went one block at a time.
        let raw_digest = blake3::hash(&record.raw);
        let dedup = self.index_hash(
            "dedup",
            &[
                m.sender.as_bytes(),
                m.control_id.as_bytes(),
                raw_digest.as_bytes(),
            ],
        );
        let control = self.index_hash("control", &[m.sender.as_bytes(), m.control_id.as_bytes()]);
        (dedup, control)
    }

    /// Data key id for a patient identity (`None`: the gateway key).
    pub fn key_id_for(&self, identity: Option<&str>) -> String {
        match identity {
            None => GATEWAY_KEY_ID.to_string(),
            Some(id) => self.patient(id).key_id(),
        }
    }

    /// The patient a record's key identity (`id^authority^type`, PID-3) stands for.
    pub fn patient(&self, identity: &str) -> PatientIndex {
        let h = self.index_hash("patient-key", &[identity.as_bytes()]);
        PatientIndex(h[..16].try_into().expect("16"))
    }

    fn wrap(&self, key_id: &str, secret: &[u8; 32]) -> Vec<u8> {
        let masters = self.masters.read().expect("lock");
        let (mid, mk) = masters.last().expect("at least one master key");
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        let mut buf = secret.to_vec();
        let tag = Aes256Gcm::new((&**mk).into())
            .encrypt_inout_detached(
                (&nonce).into(),
                key_id.as_bytes(),
                buf.as_mut_slice().into(),
            )
            .expect("32-byte message");
        let mut out = mid.to_be_bytes().to_vec();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
        out
    }

    fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyringError> {
        if wrapped.len() != 4 + 12 + 32 + 16 {
            return Err(KeyringError::Unwrap(key_id.into()));
        }
        let mid = u32::from_be_bytes(wrapped[..4].try_into().expect("4"));
        let masters = self.masters.read().expect("lock");
        let mk = masters
            .iter()
            .find(|(id, _)| *id == mid)
            .map(|(_, k)| k)
            .ok_or(KeyringError::MissingMaster(mid))?;
        let nonce: [u8; 12] = wrapped[4..16].try_into().expect("12");
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&wrapped[16..48]);
        Aes256Gcm::new((&**mk).into())
            .decrypt_inout_detached(
                (&nonce).into(),
                key_id.as_bytes(),
                secret.as_mut_slice().into(),
                wrapped[48..].try_into().expect("16"),
            )
            .map_err(|_| KeyringError::Unwrap(key_id.into()))?;
        Ok(secret)
    }

    fn cached(&self, key_id: &str) -> Option<Arc<DataKey>> {
        self.cache.read().expect("lock").get(key_id)
    }

    fn load(&self, key_id: &str) -> Result<Option<Arc<DataKey>>, KeyringError> {
        use std::sync::atomic::Ordering;
        let destroyed = self.destroyed.load(Ordering::SeqCst);
        // After a storage failure reads fail too until the file is reopened: reopen first, and
        // note a failed read so the next call reopens.
        self.db.heal(&|_| Ok(())).map_err(KeyringError::Db)?;
        let r = self
            .db
            .begin_read()
            .map_err(|e| KeyringError::Db(self.db.failed(e)))?;
        let t = r.open_table(DATA_KEYS).map_err(db_err)?;
        let Some(v) = t.get(key_id.as_bytes()).map_err(db_err)? else {
            return Ok(None);
        };
        let key = Arc::new(DataKey::from_secret(
            key_id.to_string(),
            self.unwrap(key_id, v.value())?,
        ));
        drop(t);
        drop(r);
        let mut cache = self.cache.write().expect("lock");
        if self.destroyed.load(Ordering::SeqCst) != destroyed {
            // A key was destroyed while this one was read: it may have been this one.
            drop(cache);
            return self.load(key_id);
        }
        cache.insert(key_id, key.clone());
        Ok(Some(key))
    }

    /// An existing data key.
    pub fn get(&self, key_id: &str) -> Result<Arc<DataKey>, KeyringError> {
        if let Some(k) = self.cached(key_id) {
            return Ok(k);
        }
        match self.load(key_id)? {
            Some(k) => Ok(k),
            None => match self.erased_at(key_id)? {
                Some(at) => Err(KeyringError::Erased(key_id.into(), at)),
                None => Err(KeyringError::UnknownKey(key_id.into())),
            },
        }
    }

    /// When the data key `key_id` was destroyed, if it was.
    pub fn erased_at(&self, key_id: &str) -> Result<Option<u64>, KeyringError> {
        self.db.heal(&|_| Ok(())).map_err(KeyringError::Db)?;
        let r = self
            .db
            .begin_read()
            .map_err(|e| KeyringError::Db(self.db.failed(e)))?;
        // A keyring from before erasure has no such table: nothing was erased.
        match r.open_table(ERASED) {
            Ok(t) => Ok(t.get(key_id.as_bytes()).map_err(db_err)?.map(|v| v.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(db_err(e)),
        }
    }

    /// Destroys a patient's data key (their erasure): removed from the table and the cache,
    /// durably, and marked so it is never created again. What it sealed can no longer be
    /// opened. Returns whether a key existed. The gateway key cannot be destroyed.
    pub fn destroy(&self, key_id: &str, at_ms: u64) -> Result<bool, KeyringError> {
        if key_id == GATEWAY_KEY_ID {
            return Err(KeyringError::UnknownKey(key_id.into()));
        }
        let _guard = self.create_lock.lock().expect("lock");
        let w = self.begin_write()?;
        let existed = {
            let mut t = w.open_table(DATA_KEYS).map_err(db_err)?;
            let existed = t
                .remove(key_id.as_bytes())
                .map_err(|e| KeyringError::Db(self.db.failed(e)))?
                .is_some();
            let mut erased = w.open_table(ERASED).map_err(db_err)?;
            if erased.get(key_id.as_bytes()).map_err(db_err)?.is_none() {
                erased
                    .insert(key_id.as_bytes(), at_ms)
                    .map_err(|e| KeyringError::Db(self.db.failed(e)))?;
            }
            existed
        };
        w.commit()
            .map_err(|e| KeyringError::Db(self.db.failed(e)))?;
        // Counted before the key leaves the cache: a load that read the table before the
        // commit either caches before this removal (and is removed) or sees the count move.
        self.destroyed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cache.write().expect("lock").remove(key_id);
        Ok(existed)
    }

    /// The data key for `key_id`, created and durably stored first if it does not exist yet.
    pub fn get_or_create(&self, key_id: &str) -> Result<Arc<DataKey>, KeyringError> {
        if let Some(k) = self.cached(key_id) {
            return Ok(k);
        }
        let _guard = self.create_lock.lock().expect("lock");
        if let Some(k) = self.load(key_id)? {
            return Ok(k);
        }
        if let Some(at) = self.erased_at(key_id)? {
            return Err(KeyringError::Erased(key_id.into(), at));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut()).expect("the operating system's random source failed");
        let wrapped = self.wrap(key_id, &secret);
        let w = self.begin_write()?;
        {
            let mut t = w.open_table(DATA_KEYS).map_err(db_err)?;
            t.insert(key_id.as_bytes(), wrapped.as_slice())
                .map_err(|e| KeyringError::Db(self.db.failed(e)))?;
        }
        w.commit()
            .map_err(|e| KeyringError::Db(self.db.failed(e)))?;
        let key = Arc::new(DataKey::from_secret(key_id.to_string(), secret));
        self.cache
            .write()
            .expect("lock")
            .insert(key_id, key.clone());
        Ok(key)
    }

    /// Adds master key n+1 and re-wraps every data key under it. Returns (new id, keys re-wrapped).
    pub fn rotate_master(&self) -> Result<(u32, usize), KeyringError> {
        let _guard = self.create_lock.lock().expect("lock");
        let next = self
            .masters
            .read()
            .expect("lock")
            .last()
            .map(|(id, _)| id + 1)
            .unwrap_or(1);
        let w = self.begin_write()?;
        let secret = load_secret(&self.dir.join(format!("master-{next}.key")), true)?;
        let mut count = 0;
        {
            let mut t = w.open_table(DATA_KEYS).map_err(db_err)?;
            let entries: Vec<(String, Vec<u8>)> = t
                .iter()
                .map_err(db_err)?
                .map(|e| {
                    e.map(|(k, v)| {
                        (
                            String::from_utf8_lossy(k.value()).into_owned(),
                            v.value().to_vec(),
                        )
                    })
                })
                .collect::<Result<_, _>>()
                .map_err(db_err)?;
            let unwrapped = entries
                .iter()
                .map(|(id, v)| Ok((id.clone(), self.unwrap(id, v)?)))
                .collect::<Result<Vec<_>, KeyringError>>()?;
            self.masters.write().expect("lock").push((next, secret));
            for (id, secret) in unwrapped {
                t.insert(id.as_bytes(), self.wrap(&id, &secret).as_slice())
                    .map_err(db_err)?;
                count += 1;
            }
        }
        w.commit().map_err(db_err)?;
        Ok((next, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Origin, RecordId};
    use crate::record::{Record, RecordMeta};

    fn record() -> Record {
        Record {
            meta: RecordMeta {
                sender: "A|B".into(),
                message_type: "ADT".into(),
                trigger: "A01".into(),
                control_id: "1".into(),
                patient_ids: vec!["7^H^MR".into()],
                received_ms: 1,
                origin: Origin::Local { name: "t".into() },
                format: "hl7v2".into(),
            },
            raw: bytes::Bytes::from_static(b"MSH|^~\\&|A|B"),
        }
    }

    /// A record sealed under `key_id` from `k`.
    fn sealed_by(k: &Keyring, key_id: &str) -> Vec<u8> {
        let key = k.get(key_id).unwrap();
        crate::seal::seal(
            &record(),
            RecordId([3; 16]),
            &key,
            crate::seal::Compress::Lz4,
        )
        .unwrap()
        .bytes
    }

    /// Whether `sealed` opens under `key_id` from `k`.
    fn opens(k: &Keyring, key_id: &str, sealed: &[u8]) -> Result<(), String> {
        let key = k.get(key_id).map_err(|e| e.to_string())?;
        crate::seal::open(sealed, RecordId([3; 16]), &key)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
            .collect();
        out.sort();
        out
    }

    /// With room for three keys, twelve patients' keys still each open what they sealed
    /// (those that left the cache are unwrapped again from keyring.redb), the cache never holds
    /// more than three, and a destroyed key that had left it does not come back.
    #[test]
    fn the_key_cache_is_bounded_and_a_key_that_left_it_is_unwrapped_again() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keyring::open(&dir.path().join("keys"), true).unwrap();
        *k.cache.write().unwrap() = KeyCache::new(3);
        let ids: Vec<String> = (0..12)
            .map(|i| k.key_id_for(Some(&format!("{i}^H^MR"))))
            .collect();
        let mut sealed = Vec::new();
        for id in &ids {
            k.get_or_create(id).unwrap();
            sealed.push(sealed_by(&k, id));
            assert!(k.cache.read().unwrap().map.len() <= 3);
        }
        for _ in 0..2 {
            for (id, s) in ids.iter().zip(&sealed) {
                opens(&k, id, s).unwrap();
                assert!(k.cache.read().unwrap().map.len() <= 3);
            }
        }
        assert_eq!(k.cache.read().unwrap().map.len(), 3);
        // Destroyed while out of the cache: loading it again finds it erased.
        k.cache.write().unwrap().remove(&ids[0]);
        assert!(k.destroy(&ids[0], 5).unwrap());
        assert!(matches!(k.get(&ids[0]), Err(KeyringError::Erased(_, 5))));
        assert!(opens(&k, &ids[0], &sealed[0]).is_err());
        opens(&k, &ids[1], &sealed[1]).unwrap();
    }

    #[test]
    fn data_keys_unwrap_after_a_reopen_and_after_rotation_without_the_old_master() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let a = Keyring::open(&keys, true).unwrap();
        let id = a.key_id_for(Some("7^H^MR"));
        assert!(id.starts_with("p-") && id.len() == 34, "{id}");
        a.get_or_create(&id).unwrap();
        a.get_or_create(GATEWAY_KEY_ID).unwrap();
        let (patient, gateway) = (sealed_by(&a, &id), sealed_by(&a, GATEWAY_KEY_ID));
        drop(a);
        let b = Keyring::open(&keys, false).unwrap();
        opens(&b, &id, &patient).unwrap();
        assert!(opens(&b, GATEWAY_KEY_ID, &patient).is_err(), "another key");
        assert!(matches!(
            b.get("p-unknown"),
            Err(KeyringError::UnknownKey(_))
        ));

        let (next, n) = b.rotate_master().unwrap();
        assert_eq!((next, n), (2, 2));
        drop(b);
        // Once re-wrapped, the old master is not needed.
        std::fs::rename(keys.join("master-1.key"), dir.path().join("master-1.bak")).unwrap();
        let after = Keyring::open(&keys, false).unwrap();
        opens(&after, &id, &patient).unwrap();
        opens(&after, GATEWAY_KEY_ID, &gateway).unwrap();
    }

    #[test]
    fn a_wrong_master_key_does_not_unwrap_and_a_damaged_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let a = Keyring::open(&keys, true).unwrap();
        a.get_or_create("p-0123").unwrap();
        drop(a);
        let master = keys.join("master-1.key");
        let original = std::fs::read_to_string(&master).unwrap();

        // Another valid key in its place: the data key does not unwrap, and says which.
        std::fs::remove_file(&master).unwrap();
        write_key_file(&master, &[9; 32], false).unwrap();
        let k = Keyring::open(&keys, false).unwrap();
        match k.get("p-0123") {
            Err(KeyringError::Unwrap(id)) => assert_eq!(id, "p-0123"),
            other => panic!("{other:?}"),
        }

        // One character of the original changed: refused at open, naming the file.
        let mut damaged = original.clone().into_bytes();
        damaged[5] = if damaged[5] == b'a' { b'b' } else { b'a' };
        std::fs::write(&master, &damaged).unwrap();
        match Keyring::open(&keys, false) {
            Err(KeyringError::DamagedKeyFile(p)) => assert_eq!(p, master),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a damaged master key opened"),
        }
        // Not hex, or not 32 bytes.
        std::fs::write(&master, "zz\n").unwrap();
        assert!(matches!(
            Keyring::open(&keys, false),
            Err(KeyringError::BadKeyFile(_))
        ));
    }

    #[test]
    fn key_files_without_a_check_line_are_read_and_get_one_at_the_gateway_start() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        drop(Keyring::open(&keys, true).unwrap());
        load_secret(&keys.join("log-signing.key"), true).unwrap();
        let files = [keys.join("index.key"), keys.join("master-1.key")];
        let texts: Vec<String> = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        let old_formats: Vec<String> = texts
            .iter()
            .map(|t| format!("{}\n", t.lines().next().unwrap()))
            .collect();
        for (f, old) in files.iter().zip(&old_formats) {
            std::fs::write(f, old).unwrap();
        }
        // Read-only: accepted, reported, not rewritten.
        let (_, mut unchecked) = Keyring::open_read_only(&keys).unwrap();
        unchecked.sort();
        let mut expected = files.to_vec();
        expected.sort();
        assert_eq!(unchecked, expected);
        for (f, old) in files.iter().zip(&old_formats) {
            assert_eq!(&std::fs::read_to_string(f).unwrap(), old);
        }
        // The gateway's start adds the check lines, keeping the keys.
        drop(Keyring::open(&keys, true).unwrap());
        for (f, text) in files.iter().zip(&texts) {
            assert_eq!(&std::fs::read_to_string(f).unwrap(), text);
        }
    }

    #[test]
    fn a_read_only_open_changes_no_byte() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let a = Keyring::open(&keys, true).unwrap();
        load_secret(&keys.join("log-signing.key"), true).unwrap();
        a.get_or_create("p-1").unwrap();
        drop(a);
        let before = files(&keys);
        let (k, unchecked) = Keyring::open_read_only(&keys).unwrap();
        assert!(unchecked.is_empty());
        k.get("p-1").unwrap();
        assert!(k.get_or_create("p-2").is_err(), "read-only");
        assert!(k.rotate_master().is_err(), "read-only");
        drop(k);
        assert_eq!(files(&keys), before);
    }

    #[test]
    fn a_destroyed_key_stays_gone_across_reopen_and_rotation_and_is_never_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let k = Keyring::open(&keys, true).unwrap();
        let gone = k.key_id_for(Some("7^H^MR"));
        let kept = k.key_id_for(Some("8^H^MR"));
        k.get_or_create(&gone).unwrap();
        k.get_or_create(&kept).unwrap();
        let sealed = sealed_by(&k, &gone);
        assert!(opens(&k, &gone, &sealed).is_ok());
        assert!(k.destroy(&gone, 42).unwrap());
        assert!(matches!(k.get(&gone), Err(KeyringError::Erased(_, 42))));
        assert!(matches!(
            k.get_or_create(&gone),
            Err(KeyringError::Erased(_, 42))
        ));
        // Destroying twice keeps the first time.
        assert!(!k.destroy(&gone, 99).unwrap());
        assert_eq!(k.erased_at(&gone).unwrap(), Some(42));
        assert!(k.destroy(GATEWAY_KEY_ID, 1).is_err());
        let (_, rewrapped) = k.rotate_master().unwrap();
        assert_eq!(rewrapped, 1, "only the kept key is re-wrapped");
        drop(k);
        let k = Keyring::open(&keys, true).unwrap();
        assert!(matches!(k.get(&gone), Err(KeyringError::Erased(_, 42))));
        assert!(opens(&k, &gone, &sealed).is_err());
        k.get(&kept).unwrap();
    }
}
