//! Principals: who may call the API, in what role, and for patients whose data they are.
//!
//! `access.redb` in the data directory (mode 0600) holds them: table `principals` (id → JSON
//! [`Principal`]) and `tokens` (SHA3-256 of a bearer token → principal id). A token is shown
//! once, when it is made; only its hash is kept. Tokens are 256 random bits, so looking one
//! up by its hash is safe: timing can at most tell which hash prefixes exist, which helps no
//! one find a token with that hash. Every principal is held in memory too, so authenticating
//! a request reads no disk, and a revocation (written durably first) holds for the very next
//! request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use base64::Engine;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::seal::keyring::PatientIndex;
use crate::storage::Healing;
use crate::testing::faulty::{Faults, FaultyBackend};

const PRINCIPALS: TableDefinition<&str, &[u8]> = TableDefinition::new("principals");
const TOKENS: TableDefinition<&[u8], &str> = TableDefinition::new("tokens");

/// Every bearer token starts with this, so a leaked one is easy to recognise and scan for.
pub const TOKEN_PREFIX: &str = "mat_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Patient,
    Practitioner,
    Organization,
    Auditor,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Practitioner => "practitioner",
            Role::Organization => "organization",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [
            Role::Patient,
            Role::Practitioner,
            Role::Organization,
            Role::Auditor,
            Role::Admin,
        ]
        .into_iter()
        .find(|r| r.name() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// 1–128 of letters, digits, `-`, `_`, `.`, `@`.
    pub id: String,
    pub role: Role,
    /// For a patient: the patients they are (`p-` + 32 hex, from their identifiers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<String>,
    /// For a practitioner: the organization principal they work for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// For an organization: the senders whose records it sent, as `MSH-3|MSH-4`, or `|MSH-4`
    /// for every application of a facility.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub senders: Vec<String>,
    /// TLS client certificates that authenticate as this principal (`sha3-256:` + hex of the
    /// DER certificate), on an HTTP listener with mutual TLS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<String>,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

impl Principal {
    /// Whether this principal is one of the patient's own.
    pub fn is_patient(&self, patient: &PatientIndex) -> bool {
        self.role == Role::Patient && self.patients.iter().any(|p| *p == patient.key_id())
    }

    /// Whether this organization (or a practitioner's organization, looked up by the caller)
    /// sent records from `sender` (`MSH-3|MSH-4`).
    pub fn sent(&self, sender: &str) -> bool {
        let facility = sender.split_once('|').map(|(_, f)| f);
        self.senders
            .iter()
            .any(|s| s == sender || (s.starts_with('|') && facility.is_some_and(|f| f == &s[1..])))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrincipalError {
    #[error("access store: {0}")]
    Storage(String),
    #[error("principal {0:?} exists already")]
    Exists(String),
    #[error("no principal {0:?}")]
    Unknown(String),
    #[error("field {0}: {1}")]
    Field(&'static str, String),
    #[error("{0} is the last admin: add another admin first")]
    LastAdmin(String),
    #[error(
        "{} is open in another process: is the gateway running? Use its admin API (POST /v1/admin/principals)",
        .0.display()
    )]
    InUse(std::path::PathBuf),
}

fn store_err(e: impl std::fmt::Display) -> PrincipalError {
    PrincipalError::Storage(e.to_string())
}

/// What `add` is given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPrincipal {
    pub id: String,
    pub role: Option<Role>,
    #[serde(default)]
    pub patients: Vec<String>,
    #[serde(default)]
    pub organization: Option<String>,
    #[serde(default)]
    pub senders: Vec<String>,
    #[serde(default)]
    pub certificates: Vec<String>,
}

/// Whether `s` is a certificate fingerprint as principals name them.
fn is_fingerprint(s: &str) -> bool {
    s.strip_prefix("sha3-256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

pub fn is_principal_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

impl NewPrincipal {
    fn check(&self) -> Result<Role, PrincipalError> {
        let f = |field, why: &str| Err(PrincipalError::Field(field, why.into()));
        if !is_principal_id(&self.id) {
            return f("id", "1 to 128 of letters, digits, - _ . @");
        }
        let Some(role) = self.role else {
            return f(
                "role",
                "one of patient, practitioner, organization, auditor, admin",
            );
        };
        if (role == Role::Patient) == self.patients.is_empty() {
            return f(
                "patients",
                "a patient principal, and only one, names its patients",
            );
        }
        if self.patients.len() > 64
            || self
                .patients
                .iter()
                .any(|p| PatientIndex::from_key_id(p).is_none())
        {
            return f("patients", "up to 64 patient ids (p- and 32 hex)");
        }
        if self.organization.is_some() && role != Role::Practitioner {
            return f("organization", "only a practitioner has an organization");
        }
        if self
            .organization
            .as_ref()
            .is_some_and(|o| !is_principal_id(o))
        {
            return f("organization", "a principal id");
        }
        if !self.senders.is_empty() && role != Role::Organization {
            return f("senders", "only an organization has senders");
        }
        if self.senders.len() > 256
            || self
                .senders
                .iter()
                .any(|s| s.len() > 256 || !s.contains('|') || s.chars().any(char::is_control))
        {
            return f("senders", "up to 256 of MSH-3|MSH-4 or |MSH-4");
        }
        if self.certificates.len() > 16 || !self.certificates.iter().all(|c| is_fingerprint(c)) {
            return f(
                "certificates",
                "up to 16 fingerprints, sha3-256: and 64 lowercase hex",
            );
        }
        Ok(role)
    }
}

/// The principals, durable in `access.redb` and held in memory.
pub struct Principals {
    /// Reopened by the next write after a storage failure (a full disk, an I/O error), so an
    /// add or revoke that failed can be made again without a restart.
    db: Healing,
    by_token: RwLock<HashMap<[u8; 32], Arc<Principal>>>,
    by_id: RwLock<HashMap<String, Arc<Principal>>>,
}

fn token_hash(token: &str) -> [u8; 32] {
    crate::seal::fingerprint(token.as_bytes())
}

impl Principals {
    /// Opens (creating) `access.redb` in `dir` and loads every principal.
    pub fn open(dir: &Path) -> Result<Principals, PrincipalError> {
        Self::open_with_faults(dir, None)
    }

    /// [`Principals::open`] on a backend that fails on command (fault-injection tests).
    pub fn open_with_faults(
        dir: &Path,
        faults: Option<Faults>,
    ) -> Result<Principals, PrincipalError> {
        let path = dir.join("access.redb");
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(store_err)?;
        }
        // The file is made above, with its mode: a reopen after a failure must find it (a
        // missing one is an error, not a new empty store that would lose every principal at
        // the next start).
        let open = {
            let path = path.clone();
            move || {
                if !path.exists() {
                    let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
                    return Err(redb::DatabaseError::Storage(missing.into()));
                }
                match &faults {
                    None => redb::Database::create(&path),
                    Some(f) => redb::Builder::new().create_with_backend(
                        FaultyBackend::open(&path, f.clone())
                            .map_err(|e| redb::DatabaseError::Storage(e.into()))?,
                    ),
                }
            }
        };
        let db = match open() {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(PrincipalError::InUse(path))
            }
            Err(e) => return Err(store_err(e)),
        };
        let w = db.begin_write().map_err(store_err)?;
        w.open_table(PRINCIPALS).map_err(store_err)?;
        w.open_table(TOKENS).map_err(store_err)?;
        w.commit().map_err(store_err)?;
        let mut by_id = HashMap::new();
        let mut by_token = HashMap::new();
        {
            let r = db.begin_read().map_err(store_err)?;
            let principals = r.open_table(PRINCIPALS).map_err(store_err)?;
            for row in principals.iter().map_err(store_err)? {
                let (k, v) = row.map_err(store_err)?;
                let p: Principal = serde_json::from_slice(v.value()).map_err(|e| {
                    PrincipalError::Storage(format!("principal {:?}: {e}", k.value()))
                })?;
                by_id.insert(p.id.clone(), Arc::new(p));
            }
            let tokens = r.open_table(TOKENS).map_err(store_err)?;
            for row in tokens.iter().map_err(store_err)? {
                let (k, v) = row.map_err(store_err)?;
                let hash: [u8; 32] = k
                    .value()
                    .try_into()
                    .map_err(|_| PrincipalError::Storage("a token hash is not 32 bytes".into()))?;
                if let Some(p) = by_id.get(v.value()) {
                    by_token.insert(hash, p.clone());
                }
            }
        }
        Ok(Principals {
            db: Healing::new(db, Box::new(move || open().map_err(|e| e.to_string()))),
            by_token: RwLock::new(by_token),
            by_id: RwLock::new(by_id),
        })
    }

    /// A write transaction on access.redb, after reopening it if a failure broke it.
    fn begin_write(&self) -> Result<redb::WriteTransaction, PrincipalError> {
        self.db
            .begin_write(&|_| Ok(()))
            .map_err(PrincipalError::Storage)
    }

    /// A failed write: noted, so the next write reopens the file first.
    fn failed(&self, e: impl std::fmt::Display) -> PrincipalError {
        PrincipalError::Storage(self.db.failed(e))
    }

    /// `Err` names a storage failure not recovered from yet (adds and revocations fail until
    /// the next write reopens the file; authentication reads memory and goes on).
    #[cfg(test)]
    fn health(&self) -> Result<(), String> {
        self.db.health()
    }

    /// Adds a principal and returns its bearer token (shown once; only its hash is kept).
    pub fn add(
        &self,
        new: &NewPrincipal,
        now_ms: u64,
    ) -> Result<(Principal, String), PrincipalError> {
        let role = new.check()?;
        let p = Principal {
            id: new.id.clone(),
            role,
            patients: new.patients.clone(),
            organization: new.organization.clone(),
            senders: new.senders.clone(),
            certificates: new.certificates.clone(),
            created_ms: now_ms,
            revoked_ms: None,
        };
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::seal::random::<32>())
        );
        let hash = token_hash(&token);
        let mut by_id = self.by_id.write().expect("lock");
        if by_id.contains_key(&p.id) {
            return Err(PrincipalError::Exists(p.id));
        }
        if let Some(c) = p
            .certificates
            .iter()
            .find(|c| by_id.values().any(|o| o.certificates.contains(c)))
        {
            return Err(PrincipalError::Field(
                "certificates",
                format!("{c} already names another principal"),
            ));
        }
        let w = self.begin_write()?;
        {
            let json = serde_json::to_vec(&p).map_err(store_err)?;
            w.open_table(PRINCIPALS)
                .map_err(|e| self.failed(e))?
                .insert(p.id.as_str(), json.as_slice())
                .map_err(|e| self.failed(e))?;
            w.open_table(TOKENS)
                .map_err(|e| self.failed(e))?
                .insert(hash.as_slice(), p.id.as_str())
                .map_err(|e| self.failed(e))?;
        }
        w.commit().map_err(|e| self.failed(e))?;
        let shared = Arc::new(p.clone());
        by_id.insert(p.id.clone(), shared.clone());
        self.by_token.write().expect("lock").insert(hash, shared);
        Ok((p, token))
    }

    /// Revokes a principal: durably, then at once for every request after this returns.
    pub fn revoke(&self, id: &str, now_ms: u64) -> Result<Principal, PrincipalError> {
        let mut by_id = self.by_id.write().expect("lock");
        let Some(p) = by_id.get(id) else {
            return Err(PrincipalError::Unknown(id.into()));
        };
        let mut p = (**p).clone();
        let admins = by_id
            .values()
            .filter(|a| a.role == Role::Admin && a.revoked_ms.is_none())
            .count();
        if p.role == Role::Admin && p.revoked_ms.is_none() && admins <= 1 {
            return Err(PrincipalError::LastAdmin(p.id));
        }
        if p.revoked_ms.is_none() {
            p.revoked_ms = Some(now_ms);
        }
        let w = self.begin_write()?;
        {
            let json = serde_json::to_vec(&p).map_err(store_err)?;
            w.open_table(PRINCIPALS)
                .map_err(|e| self.failed(e))?
                .insert(p.id.as_str(), json.as_slice())
                .map_err(|e| self.failed(e))?;
        }
        w.commit().map_err(|e| self.failed(e))?;
        let shared = Arc::new(p.clone());
        by_id.insert(p.id.clone(), shared.clone());
        for v in self.by_token.write().expect("lock").values_mut() {
            if v.id == p.id {
                *v = shared.clone();
            }
        }
        Ok(p)
    }

    /// The principal a bearer token belongs to, unless revoked.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Principal>> {
        if !token.starts_with(TOKEN_PREFIX) {
            return None;
        }
        let p = self
            .by_token
            .read()
            .expect("lock")
            .get(&token_hash(token))
            .cloned()?;
        p.revoked_ms.is_none().then_some(p)
    }

    /// The principal a TLS client certificate names, unless revoked.
    pub fn by_certificate(&self, fingerprint: &str) -> Option<Arc<Principal>> {
        self.by_id
            .read()
            .expect("lock")
            .values()
            .find(|p| p.revoked_ms.is_none() && p.certificates.iter().any(|c| c == fingerprint))
            .cloned()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Principal>> {
        self.by_id.read().expect("lock").get(id).cloned()
    }

    pub fn list(&self) -> Vec<Principal> {
        let mut all: Vec<Principal> = self
            .by_id
            .read()
            .expect("lock")
            .values()
            .map(|p| (**p).clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// On a gateway's first start (no admin yet): adds the principal `admin` and writes its
    /// token to `admin.token` in `dir` (mode 0600), the one way in for hospital IT, who add
    /// everyone else with it. Returns the file's path when it made one.
    pub fn bootstrap_admin(
        &self,
        dir: &Path,
        now_ms: u64,
    ) -> Result<Option<std::path::PathBuf>, PrincipalError> {
        if self.has_admin() || self.get("admin").is_some() {
            return Ok(None);
        }
        let path = dir.join("admin.token");
        let (_, token) = self.add(
            &NewPrincipal {
                id: "admin".into(),
                role: Some(Role::Admin),
                ..Default::default()
            },
            now_ms,
        )?;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(store_err)?;
        f.write_all(format!("{token}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(store_err)?;
        Ok(Some(path))
    }

    /// Whether any admin that is not revoked exists (the gateway makes one at first start).
    pub fn has_admin(&self) -> bool {
        self.by_id
            .read()
            .expect("lock")
            .values()
            .any(|p| p.role == Role::Admin && p.revoked_ms.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str, role: Role) -> NewPrincipal {
        NewPrincipal {
            id: id.into(),
            role: Some(role),
            ..Default::default()
        }
    }

    #[test]
    fn tokens_authenticate_until_revoked_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ps = Principals::open(dir.path()).unwrap();
        let (p, token) = ps.add(&new("dr-a", Role::Practitioner), 1).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() > 40);
        assert_eq!(ps.authenticate(&token).unwrap().id, p.id);
        assert!(ps.authenticate("mat_wrong").is_none());
        assert!(ps.authenticate(&token[..token.len() - 1]).is_none());
        assert!(matches!(
            ps.add(&new("dr-a", Role::Practitioner), 2),
            Err(PrincipalError::Exists(_))
        ));
        drop(ps);
        let ps = Principals::open(dir.path()).unwrap();
        assert_eq!(ps.authenticate(&token).unwrap().id, "dr-a");
        ps.revoke("dr-a", 5).unwrap();
        assert!(ps.authenticate(&token).is_none(), "revocation is immediate");
        drop(ps);
        let ps = Principals::open(dir.path()).unwrap();
        assert!(ps.authenticate(&token).is_none(), "and durable");
        assert_eq!(ps.get("dr-a").unwrap().revoked_ms, Some(5));
        // The token itself is nowhere in the file.
        let bytes = std::fs::read(dir.path().join("access.redb")).unwrap();
        assert!(memchr::memmem::find(&bytes, token.as_bytes()).is_none());
    }

    /// A full disk fails an add and a revocation with a storage error and leaves memory as it
    /// was; once space is back the next write reopens access.redb and succeeds, without a
    /// restart, and what it wrote is there after a reopen.
    #[test]
    fn a_full_disk_fails_writes_and_they_succeed_again_once_space_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        let ps = Principals::open_with_faults(dir.path(), Some(faults.clone())).unwrap();
        let (_, token) = ps.add(&new("dr-a", Role::Practitioner), 1).unwrap();
        faults.fail_all();
        assert!(matches!(
            ps.add(&new("dr-b", Role::Practitioner), 2),
            Err(PrincipalError::Storage(_))
        ));
        assert!(ps.get("dr-b").is_none(), "not added in memory either");
        assert!(matches!(
            ps.revoke("dr-a", 3),
            Err(PrincipalError::Storage(_))
        ));
        assert!(
            ps.authenticate(&token).is_some(),
            "not revoked in memory either"
        );
        assert!(ps.health().is_err());
        faults.clear();
        let (_, token_b) = ps.add(&new("dr-b", Role::Practitioner), 4).unwrap();
        ps.revoke("dr-a", 5).unwrap();
        assert!(ps.health().is_ok());
        drop(ps);
        let ps = Principals::open(dir.path()).unwrap();
        assert_eq!(ps.authenticate(&token_b).unwrap().id, "dr-b");
        assert!(ps.authenticate(&token).is_none());
        assert_eq!(ps.get("dr-a").unwrap().revoked_ms, Some(5));
    }

    #[test]
    fn fields_are_checked_by_role() {
        let dir = tempfile::tempdir().unwrap();
        let ps = Principals::open(dir.path()).unwrap();
        let field = |n: NewPrincipal| match ps.add(&n, 0) {
            Err(PrincipalError::Field(f, _)) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(new("a b", Role::Admin)), "id");
        assert_eq!(field(new("pat", Role::Patient)), "patients");
        assert_eq!(
            field(NewPrincipal {
                patients: vec!["7^H^MR".into()],
                ..new("pat", Role::Patient)
            }),
            "patients"
        );
        assert_eq!(
            field(NewPrincipal {
                organization: Some("org".into()),
                ..new("aud", Role::Auditor)
            }),
            "organization"
        );
        assert_eq!(
            field(NewPrincipal {
                senders: vec!["LAB".into()],
                ..new("org", Role::Organization)
            }),
            "senders"
        );
        assert_eq!(
            field(NewPrincipal {
                role: None,
                ..new("x", Role::Admin)
            }),
            "role"
        );
    }

    #[test]
    fn an_organization_covers_its_senders_and_facility_wildcards() {
        let p = Principal {
            id: "org".into(),
            role: Role::Organization,
            patients: vec![],
            organization: None,
            senders: vec!["LAB|HOSP".into(), "|CLINIC".into()],
            certificates: vec![],
            created_ms: 0,
            revoked_ms: None,
        };
        assert!(p.sent("LAB|HOSP"));
        assert!(!p.sent("ADT|HOSP"));
        assert!(p.sent("ANY|CLINIC"));
        assert!(!p.sent("ANY|CLINIC2"));
        assert!(!p.sent("CLINIC"));
    }
}
