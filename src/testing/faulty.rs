//! A redb storage backend that fails on command, for testing what a store does when its disk
//! fills up or its I/O fails: [`FaultyBackend`] wraps redb's file backend and, while its
//! [`Faults`] say so, answers `write`, `sync_data` and `set_len` with an I/O error (ENOSPC unless
//! set otherwise) without touching the file. Reads, length and locks always pass through.
//!
//! ```ignore
//! let faults = Faults::default();
//! let f = faults.clone();
//! let db = redb::Builder::new().create_with_backend(FaultyBackend::open(&path, f)?)?;
//! faults.fail_all();        // every write fails from now on: a full disk
//! faults.clear();           // space is back
//! faults.fail_after(3);     // three writes succeed, the fourth fails, then all succeed
//! ```
//!
//! [`Faults`] is shared by clones, so a store that reopens its file (with a new backend over
//! the same `Faults`) keeps failing until the test clears them.

use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// ENOSPC: no space left on device.
pub const ENOSPC: i32 = 28;

/// The switch a test holds: which of the backend's write calls fail.
#[derive(Clone, Debug)]
pub struct Faults(Arc<State>);

#[derive(Debug)]
struct State {
    failing: AtomicBool,
    /// Write calls (`write`, `sync_data`, `set_len`) seen so far, failed or not.
    calls: AtomicU64,
    /// The one call number to fail (`u64::MAX`: none).
    fail_call: AtomicU64,
    /// Calls answered with an injected error.
    injected: AtomicU64,
    errno: AtomicI32,
}

impl Default for Faults {
    fn default() -> Self {
        Faults(Arc::new(State {
            failing: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            fail_call: AtomicU64::new(u64::MAX),
            injected: AtomicU64::new(0),
            errno: AtomicI32::new(ENOSPC),
        }))
    }
}

impl Faults {
    /// Every write call fails until [`Faults::clear`].
    pub fn fail_all(&self) {
        self.0.failing.store(true, Ordering::SeqCst);
    }

    /// The next `n` write calls succeed, the one after fails, and later ones succeed again.
    pub fn fail_after(&self, n: u64) {
        let at = self.0.calls.load(Ordering::SeqCst) + n;
        self.0.fail_call.store(at, Ordering::SeqCst);
    }

    /// No more failures.
    pub fn clear(&self) {
        self.0.failing.store(false, Ordering::SeqCst);
        self.0.fail_call.store(u64::MAX, Ordering::SeqCst);
    }

    /// The OS error number of the injected errors (default [`ENOSPC`]; 5 is EIO).
    pub fn set_errno(&self, errno: i32) {
        self.0.errno.store(errno, Ordering::SeqCst);
    }

    /// The same switch as a hook for the vault's segment files
    /// ([`crate::vault::segments::FaultHook`]): their writes count and fail with redb's.
    pub fn hook(&self) -> crate::vault::segments::FaultHook {
        let faults = self.clone();
        std::sync::Arc::new(move || faults.check())
    }

    /// Write calls seen so far.
    pub fn calls(&self) -> u64 {
        self.0.calls.load(Ordering::SeqCst)
    }

    /// Write calls that were failed.
    pub fn injected(&self) -> u64 {
        self.0.injected.load(Ordering::SeqCst)
    }

    fn check(&self) -> io::Result<()> {
        let call = self.0.calls.fetch_add(1, Ordering::SeqCst);
        let once = self
            .0
            .fail_call
            .compare_exchange(call, u64::MAX, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if once || self.0.failing.load(Ordering::SeqCst) {
            self.0.injected.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(
                self.0.errno.load(Ordering::SeqCst),
            ));
        }
        Ok(())
    }
}

/// redb's file backend with write calls that fail on command (see the module docs).
#[derive(Debug)]
pub struct FaultyBackend {
    inner: FileBackend,
    faults: Faults,
}

impl FaultyBackend {
    /// Opens (creating if need be) `path` for reading and writing.
    pub fn open(path: &Path, faults: Faults) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let inner = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(FaultyBackend { inner, faults })
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.faults.check()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.faults.check()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.faults.check()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase;

    #[test]
    fn writes_fail_on_command_and_the_database_works_again_once_reopened() {
        const T: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("t");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let faults = Faults::default();
        let open = || {
            redb::Builder::new()
                .create_with_backend(FaultyBackend::open(&path, faults.clone()).unwrap())
                .unwrap()
        };
        let put = |db: &redb::Database, k: u64| -> Result<(), redb::Error> {
            let w = db.begin_write()?;
            w.open_table(T)?.insert(k, k)?;
            w.commit()?;
            Ok(())
        };
        let db = open();
        put(&db, 1).unwrap();
        faults.fail_all();
        let e = put(&db, 2).unwrap_err();
        assert!(
            matches!(&e, redb::Error::Io(io) if io.raw_os_error() == Some(ENOSPC)),
            "{e:?}"
        );
        assert!(faults.injected() > 0);
        faults.clear();
        // redb refuses everything after an I/O error until the database is opened again.
        assert!(matches!(put(&db, 3), Err(redb::Error::PreviousIo)));
        drop(db);
        let db = open();
        put(&db, 4).unwrap();
        let r = db.begin_read().unwrap();
        let t = r.open_table(T).unwrap();
        assert!(t.get(1).unwrap().is_some());
        assert!(t.get(4).unwrap().is_some());
        // One call fails, the ones around it do not.
        drop((t, r));
        faults.fail_after(0);
        let injected = faults.injected();
        assert!(put(&db, 5).is_err());
        assert_eq!(faults.injected(), injected + 1, "only the one call fails");
        drop(db);
        let db = open();
        put(&db, 6).unwrap();
    }
}
