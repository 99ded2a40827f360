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
