//! The redb files of a data directory, opened for writing (the gateway) or for reading only (the
//! verifier, which must change no byte of what it checks).
//!
//! A file the last writer did not close cleanly (a crash) needs redb's repair before it can be
//! read, and a read-only open refuses it. The verifier then repairs a private copy in a temporary
//! directory and reads that: the data directory stays as it was, and the report says so.

use std::path::Path;

use redb::{ReadTransaction, ReadableDatabase, TransactionError};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Open {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("{path}: copying it to repair the copy: {source}")]
    Copy {
        path: String,
        source: std::io::Error,
    },
}

/// A redb database as one of the stores holds it.
pub enum Db {
    Writable(redb::Database),
    /// Between dropping a handle that failed and opening it again.
    Closed,
    ReadOnly {
        db: redb::ReadOnlyDatabase,
        /// The repaired copy being read, when the file itself was not closed cleanly.
        _copy: Option<tempfile::TempDir>,
    },
}

impl Db {
    pub fn begin_read(&self) -> Result<ReadTransaction, TransactionError> {
        match self {
            Db::Writable(db) => db.begin_read(),
            Db::ReadOnly { db, .. } => db.begin_read(),
            Db::Closed => Err(TransactionError::Storage(
                redb::StorageError::DatabaseClosed,
            )),
        }
    }

    /// The database for writing, `None` when opened read-only.
    pub fn writable(&self) -> Option<&redb::Database> {
        match self {
            Db::Writable(db) => Some(db),
            Db::ReadOnly { .. } | Db::Closed => None,
        }
    }

    /// Whether this is a repaired copy of a file that was not closed cleanly.
    pub fn is_repaired_copy(&self) -> bool {
        matches!(self, Db::ReadOnly { _copy: Some(_), .. })
    }

    /// Opens `path` without writing to it. A file that needs repair is copied to a temporary
    /// directory and the copy is repaired and read instead.
    pub fn open_read_only(path: &Path, cache_bytes: usize) -> Result<Db, StorageError> {
        let open_err = |source| StorageError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut b = redb::Builder::new();
        b.set_cache_size(cache_bytes);
        match b.open_read_only(path) {
            Ok(db) => return Ok(Db::ReadOnly { db, _copy: None }),
            Err(redb::DatabaseError::RepairAborted) => {}
            Err(e) => return Err(open_err(e)),
        }
        let copy_err = |source| StorageError::Copy {
            path: path.display().to_string(),
            source,
        };
        let dir = tempfile::tempdir().map_err(copy_err)?;
        let copy = dir.path().join("copy.redb");
        std::fs::copy(path, &copy).map_err(copy_err)?;
        // Opening for writing repairs the copy; closing it leaves it clean for a read-only open.
        drop(b.open(&copy).map_err(open_err)?);
        let db = b.open_read_only(&copy).map_err(open_err)?;
        Ok(Db::ReadOnly {
            db,
            _copy: Some(dir),
        })
    }
}

/// Opens a writable redb file (again, after a failure).
pub type Opener = Box<dyn Fn() -> Result<redb::Database, String> + Send + Sync>;

/// A writable redb file that reopens itself after a failed write. redb refuses every operation
/// after a write failed (a full disk, an I/O error) until the file is opened again; reopening
/// recovers it to its last durable commit. The next write after a failure does that first, so a
/// store heals once writes succeed again instead of waiting for a restart.
pub struct Healing {
    db: std::sync::RwLock<Db>,
    open: Opener,
    /// The failure not recovered from yet.
    failing: std::sync::Mutex<Option<String>>,
}

impl Healing {
    pub fn new(db: redb::Database, open: Opener) -> Healing {
        Healing {
            db: std::sync::RwLock::new(Db::Writable(db)),
            open,
            failing: std::sync::Mutex::new(None),
        }
    }

    /// A read-only file; writes are refused.
    pub fn read_only(db: Db) -> Healing {
        Healing {
            db: std::sync::RwLock::new(db),
            open: Box::new(|| Err("opened read-only".into())),
            failing: std::sync::Mutex::new(None),
        }
    }

    pub fn begin_read(&self) -> Result<ReadTransaction, TransactionError> {
        self.db.read().expect("lock").begin_read()
    }

    pub fn is_repaired_copy(&self) -> bool {
        self.db.read().expect("lock").is_repaired_copy()
    }

    /// A write transaction, after reopening the file if a failure broke it; `after_reopen` then
    /// runs on the reopened file first (to rebuild what its last durable commit lacks).
    pub fn begin_write(
        &self,
        after_reopen: &dyn Fn(&redb::Database) -> Result<(), String>,
    ) -> Result<redb::WriteTransaction, String> {
        self.heal(after_reopen)?;
        let db = self.db.read().expect("lock");
        let db = db.writable().ok_or("opened read-only")?;
        db.begin_write().map_err(|e| self.failed(e))
    }

    /// Notes a failed write: the next [`begin_write`](Self::begin_write) reopens the file.
    /// Returns the reason.
    pub fn failed(&self, e: impl std::fmt::Display) -> String {
        let why = e.to_string();
        *self.failing.lock().expect("lock") = Some(why.clone());
        why
    }

    /// `Err` names the failure not recovered from yet.
    pub fn health(&self) -> Result<(), String> {
        match &*self.failing.lock().expect("lock") {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    /// Reopens the file now if a failure broke it (for stores whose reads come before their
    /// writes: reads fail too until the reopen).
    pub fn heal(
        &self,
        after_reopen: &dyn Fn(&redb::Database) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut failing = self.failing.lock().expect("lock");
        let Some(why) = failing.clone() else {
            return Ok(());
        };
        let mut db = self.db.write().expect("lock");
        // The broken handle holds the file lock: drop it before opening again.
        *db = Db::Closed;
        let reopened = (self.open)().and_then(|new| {
            after_reopen(&new)?;
            Ok(new)
        });
        match reopened {
            Ok(new) => {
                *db = Db::Writable(new);
                *failing = None;
                tracing::info!(after = %why, "reopened after a storage failure");
                Ok(())
            }
            Err(e) => Err(format!(
                "unavailable since a storage failure ({why}); reopening failed: {e}"
            )),
        }
    }
}
