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
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use zeroize::Zeroizing;

const DATA_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data_keys");
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
}

fn db_err(e: impl std::fmt::Display) -> KeyringError {
    KeyringError::Db(e.to_string())
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

/// Reads a 32-byte secret stored as hex, creating it (mode 0600) if `create` and it is missing.
pub fn load_secret(path: &Path, create: bool) -> Result<Zeroizing<[u8; 32]>, KeyringError> {
    let file_err = |source| KeyringError::File {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = Zeroizing::new(
                hex::decode(text.trim()).map_err(|_| KeyringError::BadKeyFile(path.into()))?,
            );
            let arr: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyringError::BadKeyFile(path.into()))?;
            Ok(Zeroizing::new(arr))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let mut secret = Zeroizing::new([0u8; 32]);
            getrandom::fill(secret.as_mut()).expect("the operating system's random source failed");
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(file_err)?;
            let text = Zeroizing::new(hex::encode(secret.as_ref()) + "\n");
            f.write_all(text.as_bytes()).map_err(file_err)?;
            f.sync_all().map_err(file_err)?;
            Ok(secret)
        }
        Err(e) => Err(file_err(e)),
    }
}

pub struct Keyring {
    dir: PathBuf,
    masters: RwLock<Vec<(u32, Zeroizing<[u8; 32]>)>>,
    index_key: Zeroizing<[u8; 32]>,
    db: redb::Database,
    cache: RwLock<HashMap<String, Arc<DataKey>>>,
    create_lock: Mutex<()>,
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
                Ok((
                    id,
                    load_secret(&dir.join(format!("master-{id}.key")), false)?,
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
        w.commit().map_err(db_err)?;
        Ok(Keyring {
            dir: dir.into(),
            masters: RwLock::new(masters),
            index_key,
            db,
            cache: RwLock::new(HashMap::new()),
            create_lock: Mutex::new(()),
        })
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

    /// Data key id for a patient identity (`None`: the gateway key).
    pub fn key_id_for(&self, identity: Option<&str>) -> String {
        match identity {
            None => GATEWAY_KEY_ID.to_string(),
            Some(id) => format!(
                "p-{}",
                hex::encode(&self.index_hash("patient-key", &[id.as_bytes()])[..16])
            ),
        }
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
        self.cache.read().expect("lock").get(key_id).cloned()
    }

    fn load(&self, key_id: &str) -> Result<Option<Arc<DataKey>>, KeyringError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(DATA_KEYS).map_err(db_err)?;
        let Some(v) = t.get(key_id.as_bytes()).map_err(db_err)? else {
            return Ok(None);
        };
        let key = Arc::new(DataKey::from_secret(
            key_id.to_string(),
            self.unwrap(key_id, v.value())?,
        ));
        self.cache
            .write()
            .expect("lock")
            .insert(key_id.to_string(), key.clone());
        Ok(Some(key))
    }

    /// An existing data key.
    pub fn get(&self, key_id: &str) -> Result<Arc<DataKey>, KeyringError> {
        if let Some(k) = self.cached(key_id) {
            return Ok(k);
        }
        self.load(key_id)?
            .ok_or_else(|| KeyringError::UnknownKey(key_id.into()))
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
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut()).expect("the operating system's random source failed");
        let wrapped = self.wrap(key_id, &secret);
        let w = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = w.open_table(DATA_KEYS).map_err(db_err)?;
            t.insert(key_id.as_bytes(), wrapped.as_slice())
                .map_err(db_err)?;
        }
        w.commit().map_err(db_err)?;
        let key = Arc::new(DataKey::from_secret(key_id.to_string(), secret));
        self.cache
            .write()
            .expect("lock")
            .insert(key_id.to_string(), key.clone());
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
        let secret = load_secret(&self.dir.join(format!("master-{next}.key")), true)?;
        let w = self.db.begin_write().map_err(db_err)?;
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
