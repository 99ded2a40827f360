//! Embedded ledger on redb (`<data_dir>/ledger.redb`).
//!
//! Tables: `leaves` (index → entry || record id[16] [|| raw record id[16] for a derived record]),
//! `by_record` (record id → index),
//! `checkpoints` (tree size → signed note text), `tiles` (tile index → the 511 node hashes of a
//! full tile of 256 leaves) and `tile_roots` (tile index → the tile's root, the last 32 bytes of
//! its row). An append writes all of them in one transaction.
//!
//! Memory holds a [`TiledTree`]: the nodes above the tiles (about 0.25 bytes per leaf) and the
//! tile being filled; a proof into an older tile reads that tile's row. Open restores the tree
//! from `tile_roots` and the leaves of the partial tile, so it reads 32 bytes per 256 leaves and
//! hashes one node per tile, whatever the log's size (a file without `tile_roots`, from before
//! it, gets the table built once from its leaves). Open then checks that the tree reproduces the
//! latest checkpoint's root. Whether every leaf, tile row and index agrees with the others is
//! checked by [`EmbeddedLedger::check_against_leaves`] (`medanchor verify --all`), which also
//! works on a handle from [`EmbeddedLedger::open_read_only`].
//!
//! A failed append (a full disk, an I/O error) leaves the tree possibly out of step with what was
//! committed, and redb refuses every later operation on a database whose I/O failed. So the ledger
//! closes and reopens the file and rebuilds the tree from storage, right away and then on later
//! appends and proofs until that succeeds; meanwhile [`Ledger::health`] says why it is down.

use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use medanchor_merkle::{
    Checkpoint, DerivedFrom, Hash, NoteSigner, NoteVerifier, ProofBundle, RightEdge, Sha3Hasher,
    SignedCheckpoint, TileSource, TiledTree, TreeHasher, BUNDLE_FORMAT, LEAF_DERIVED_STORED,
    LEAF_RECORD_STORED,
};
use redb::{
    Durability, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
};

use super::{EventKind, Leaf, Ledger, LedgerError, LogHasher, StoredLeaf};
use crate::envelope::RecordId;
use crate::storage::Db;
use crate::throttle::Throttle;

const LEAVES: TableDefinition<u64, &[u8]> = TableDefinition::new("leaves");
const BY_RECORD: TableDefinition<&[u8], u64> = TableDefinition::new("by_record");
// Values are bytes, not &str: a damaged file must give an error from our parser, never a
// panic inside the storage engine.
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
const TILES: TableDefinition<u64, &[u8]> = TableDefinition::new("tiles");
const TILE_ROOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("tile_roots");
/// `anchored_through` → the vault position anchored through (see `Ledger::append_through`).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ANCHORED_THROUGH: &str = "anchored_through";

const LEDGER_CACHE_BYTES: usize = 16 << 20;

/// Tiles of 2^8 leaves: memory grows by 64 bytes per 256 leaves; each full tile is a 16 KiB row
/// on disk (64 bytes per leaf), and a proof into an old tile reads one row and hashes nothing.
const TILE_HEIGHT: u32 = 8;

/// Rows written per transaction when open fills in missing tiles.
const TILE_REPAIR_BATCH: usize = 64;

/// Tile roots written per transaction when open builds the `tile_roots` table.
const TILE_ROOT_BATCH: usize = 4096;

/// After a failed attempt to recover, the next one waits this long (proofs keep failing fast
/// meanwhile instead of each reopening the file).
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// A redb error as the ledger's: I/O failures apart, since after one redb refuses every
/// operation until the database is opened again.
fn err(e: impl Into<redb::Error>) -> LedgerError {
    match e.into() {
        e @ (redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::Backend(_)) => {
            LedgerError::Io(e.to_string())
        }
        e => LedgerError::Storage(e.to_string()),
    }
}

/// The redb handle: read-write for the gateway, read-only for verification.
/// The ledger's reads and writes on the shared [`Db`] (one way to open redb files read-only for
/// the whole data directory).
trait LedgerDb {
    fn read_txn(&self) -> Result<ReadTransaction, LedgerError>;
    fn write_txn(&self) -> Result<redb::WriteTransaction, LedgerError>;
}

impl LedgerDb for Db {
    fn read_txn(&self) -> Result<ReadTransaction, LedgerError> {
        self.begin_read().map_err(err)
    }

    fn write_txn(&self) -> Result<redb::WriteTransaction, LedgerError> {
        self.writable()
            .ok_or(LedgerError::ReadOnly)?
            .begin_write()
            .map_err(err)
    }
}

/// Opens the ledger's database again (after an I/O error redb refuses every operation until the
/// database is closed and opened again).
type Reopen = Box<dyn Fn(&redb::Builder) -> Result<redb::Database, LedgerError> + Send + Sync>;

fn builder() -> redb::Builder {
    // redb's default cache is 1 GiB; the log is written once and read for proofs, so a small
    // cache keeps the gateway's memory flat as the log grows.
    let mut b = redb::Builder::new();
    b.set_cache_size(LEDGER_CACHE_BYTES);
    b
}

/// The database, swapped for a fresh handle when the ledger recovers from an I/O error. `None`
/// while a reopen has failed. Transactions own what they need, so the lock is held only to begin
/// one.
struct Store {
    db: RwLock<Option<Db>>,
    reopen: Option<Reopen>,
}

impl Store {
    fn read(&self) -> Result<ReadTransaction, LedgerError> {
        match &*self.db.read().expect("lock") {
            Some(db) => db.read_txn(),
            None => Err(LedgerError::Unavailable(
                "the ledger file is closed after a storage error".into(),
            )),
        }
    }

    fn write(&self) -> Result<redb::WriteTransaction, LedgerError> {
        match &*self.db.read().expect("lock") {
            Some(db) => db.write_txn(),
            None => Err(LedgerError::Unavailable(
                "the ledger file is closed after a storage error".into(),
            )),
        }
    }

    /// Closes the database and opens it again (redb recovers a file left by a failed commit).
    fn reopen(&self) -> Result<(), LedgerError> {
        let Some(reopen) = &self.reopen else {
            return Err(LedgerError::ReadOnly);
        };
        let mut db = self.db.write().expect("lock");
        // Closed first: the file's lock is released only when the old handle is dropped.
        *db = None;
        *db = Some(Db::Writable(reopen(&builder())?));
        Ok(())
    }
}

pub struct EmbeddedLedger {
    store: Store,
    origin: String,
    /// `None` on a read-only handle.
    signer: Option<NoteSigner>,
    verifier: NoteVerifier,
    log: Mutex<Log>,
    /// Why the ledger cannot append or prove right now (what [`Ledger::health`] answers); apart
    /// from `log` so readiness never waits behind an append.
    down: Mutex<Option<String>>,
    recovery_interval: Duration,
    recovery_failures: Throttle,
    /// Tile rows found not matching the leaves and rewritten when open had to build the tree
    /// from the leaves (a file from before `tile_roots`, or one whose roots were damaged).
    repaired_tiles: u64,
}

/// What a failed append or read left to do before the log can be used again.
struct Fault {
    /// What failed.
    cause: String,
    /// Why the last attempt to recover failed.
    recovery: Option<String>,
    /// The database must be closed and opened again (its I/O failed).
    reopen: bool,
    /// When recovery was last tried and failed.
    tried: Option<Instant>,
}

impl Fault {
    fn reason(&self) -> String {
        match &self.recovery {
            None => self.cause.clone(),
            Some(e) => format!("{}; recovering from storage failed: {e}", self.cause),
        }
    }
}

/// The tree and the right edge of the latest checkpoint, computed when it is signed so that
/// proofs against it read at most the one tile of their leaf.
struct Log {
    /// `None` when the tree may not match storage (after a failed append): rebuilt from storage
    /// before it is used again.
    tree: Option<TiledTree<LogHasher>>,
    edge: Option<RightEdge>,
    /// The latest checkpoint, once verified (read from storage) or signed here: every proof
    /// names it, and checking its signature each time cost most of a proof (≈ 40 µs of 58).
    latest: Option<SignedCheckpoint>,
    fault: Option<Fault>,
}

/// The `tiles` table as the tree's [`TileSource`]: each read is its own read transaction, so it
/// sees only committed tiles.
pub struct StoredTiles<'a> {
    store: &'a Store,
    /// Set when a read failed with an I/O error (the database must be opened again).
    io_failed: bool,
}

impl<'a> StoredTiles<'a> {
    fn new(store: &'a Store) -> Self {
        StoredTiles {
            store,
            io_failed: false,
        }
    }

    fn read(&mut self, index: u64) -> Result<Option<TileRow>, LedgerError> {
        let r = self.store.read()?;
        let t = r.open_table(TILES).map_err(err)?;
        Ok(t.get(index).map_err(err)?.map(TileRow))
    }
}

impl TileSource for StoredTiles<'_> {
    type Tile = TileRow;
    fn tile(&mut self, index: u64) -> Result<TileRow, String> {
        match self.read(index) {
            Ok(Some(row)) => Ok(row),
            Ok(None) => Err("no such row".into()),
            Err(e) => {
                self.io_failed |= matches!(e, LedgerError::Io(_));
                Err(e.to_string())
            }
        }
    }
}

/// A tile row borrowed from redb's pages: a proof reads its hashes without copying the row.
pub struct TileRow(redb::AccessGuard<'static, &'static [u8]>);

impl AsRef<[u8]> for TileRow {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
    }
}

/// Tiles held in memory, for trees rebuilt from the leaves without a table to read them from.
struct NoTiles;

impl TileSource for NoTiles {
    type Tile = Vec<u8>;
    fn tile(&mut self, index: u64) -> Result<Vec<u8>, String> {
        Err(format!("tile {index} is not at hand"))
    }
}

/// Splits a stored leaf value into entry, record id and (for a derived record) the raw record's
/// id: `0x01 || commitment || id` (49 bytes; an event's is the same with its kind, 0x03..=0x06) or `0x02 || commitment || raw commitment || id ||
/// raw id` (97 bytes).
pub fn parse_leaf(index: u64, v: &[u8]) -> Result<StoredLeaf, LedgerError> {
    let id = |at: usize| RecordId(v[at..at + 16].try_into().expect("16"));
    match (v.first(), v.len()) {
        (Some(&LEAF_RECORD_STORED), 49) => Ok(StoredLeaf {
            index,
            entry: v[..33].to_vec(),
            record_id: id(33),
            derived_from: None,
        }),
        (Some(&kind), 49) if EventKind::from_byte(kind).is_some() => Ok(StoredLeaf {
            index,
            entry: v[..33].to_vec(),
            record_id: id(33),
            derived_from: None,
        }),
        (Some(&LEAF_DERIVED_STORED), 97) => Ok(StoredLeaf {
            index,
            entry: v[..65].to_vec(),
            record_id: id(65),
            derived_from: Some(id(81)),
        }),
        _ => Err(LedgerError::Corrupt(format!("leaf {index}"))),
    }
}

/// The stored value of a leaf (what [`parse_leaf`] reads), into `value`.
fn leaf_value(leaf: &Leaf, entry: &[u8], value: &mut Vec<u8>) {
    value.clear();
    value.extend_from_slice(entry);
    value.extend_from_slice(&leaf.record_id.0);
    if let Some((raw_id, _)) = &leaf.derived_from {
        value.extend_from_slice(&raw_id.0);
    }
}

/// A table that a file written before it was added does not have.
fn optional_table(
    r: &ReadTransaction,
    def: TableDefinition<u64, &'static [u8]>,
) -> Result<Option<redb::ReadOnlyTable<u64, &'static [u8]>>, LedgerError> {
    match r.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

fn tile_root(row: &[u8]) -> Option<Hash> {
    row.len()
        .checked_sub(32)
        .and_then(|at| row[at..].try_into().ok())
}

/// Where the tree came from, for the open-time check.
enum Restored {
    /// From `tile_roots` and the partial tile: nothing compared with the leaves.
    FromRoots(TiledTree<LogHasher>),
    /// `tile_roots` is missing, or its entries are not one root for each full tile.
    NeedsLeaves,
}

/// The tree from the tile roots and the partial tile's leaves: reads 32 bytes per full tile and
/// at most 255 leaves.
fn restore(r: &ReadTransaction) -> Result<Restored, LedgerError> {
    let leaves = r.open_table(LEAVES).map_err(err)?;
    let n = leaves.len().map_err(err)?;
    if n > 0 {
        let last = leaves.last().map_err(err)?.map(|(k, _)| k.value());
        if last != Some(n - 1) {
            return Err(LedgerError::Corrupt(format!(
                "leaf indexes are not 0..{n} (the last is {last:?})"
            )));
        }
    }
    let full = n >> TILE_HEIGHT;
    let Some(roots) = optional_table(r, TILE_ROOTS)? else {
        return Ok(Restored::NeedsLeaves);
    };
    if roots.len().map_err(err)? != full {
        return Ok(Restored::NeedsLeaves);
    }
    let mut tile_roots = Vec::with_capacity(full as usize);
    for (expect, e) in roots.iter().map_err(err)?.enumerate() {
        let (k, v) = e.map_err(err)?;
        match <Hash>::try_from(v.value()) {
            Ok(root) if k.value() == expect as u64 => tile_roots.push(root),
            _ => return Ok(Restored::NeedsLeaves),
        }
    }
    let hasher = LogHasher;
    let mut partial = Vec::with_capacity(1 << TILE_HEIGHT);
    for e in leaves.range(full << TILE_HEIGHT..).map_err(err)? {
        let (k, v) = e.map_err(err)?;
        partial.push(hasher.leaf(&parse_leaf(k.value(), v.value())?.entry));
    }
    Ok(Restored::FromRoots(TiledTree::restore(
        hasher,
        TILE_HEIGHT,
        tile_roots,
        partial,
    )?))
}

/// Tile rows and roots that a rebuild from the leaves found missing or different.
#[derive(Default)]
struct Rewrites {
    rows: Vec<(u64, Vec<u8>)>,
    roots: Vec<(u64, Hash)>,
    /// Rows that were present but did not match the leaves.
    mismatched_rows: u64,
}

impl Rewrites {
    fn flush(&mut self, store: &Store) -> Result<(), LedgerError> {
        if self.rows.is_empty() && self.roots.is_empty() {
            return Ok(());
        }
        let w = store.write()?;
        {
            let mut t = w.open_table(TILES).map_err(err)?;
            for (index, row) in self.rows.drain(..) {
                t.insert(index, row.as_slice()).map_err(err)?;
            }
            let mut t = w.open_table(TILE_ROOTS).map_err(err)?;
            for (index, root) in self.roots.drain(..) {
                t.insert(index, root.as_slice()).map_err(err)?;
            }
        }
        w.commit().map_err(err)
    }
}

/// The tree rebuilt by hashing every leaf. With `write`, tile rows and roots that are missing or
/// differ from the leaves are written, and roots past the last full tile removed: this is how a
/// file from before `tile_roots` gets the table. Returns the tree and how many stored rows did
/// not match.
fn rebuild_from_leaves(
    store: &Store,
    write: bool,
) -> Result<(TiledTree<LogHasher>, u64), LedgerError> {
    let hasher = LogHasher;
    let mut tree = TiledTree::new(hasher, TILE_HEIGHT);
    let mut rewrites = Rewrites::default();
    let r = store.read()?;
    let leaves = r.open_table(LEAVES).map_err(err)?;
    let rows = optional_table(&r, TILES)?;
    let roots = optional_table(&r, TILE_ROOTS)?;
    for (expect, e) in leaves.iter().map_err(err)?.enumerate() {
        let (k, v) = e.map_err(err)?;
        if k.value() != expect as u64 {
            return Err(LedgerError::Corrupt(format!(
                "leaf index {} out of sequence",
                k.value()
            )));
        }
        let leaf = parse_leaf(k.value(), v.value())?;
        let Some((index, nodes)) = tree.push(hasher.leaf(&leaf.entry)) else {
            continue;
        };
        let root = tile_root(&nodes).expect("a whole tile");
        let stored_root = match &roots {
            Some(t) => t.get(index).map_err(err)?.map(|v| v.value().to_vec()),
            None => None,
        };
        if stored_root.as_deref() != Some(root.as_slice()) {
            rewrites.roots.push((index, root));
        }
        let stored_row = match &rows {
            Some(t) => t.get(index).map_err(err)?,
            None => None,
        };
        match stored_row {
            Some(stored) if stored.value() == nodes.as_slice() => {}
            found => {
                if found.is_some() {
                    tracing::warn!(
                        tile = index,
                        "ledger tile row did not match the leaves; rebuilt from them"
                    );
                    rewrites.mismatched_rows += 1;
                }
                rewrites.rows.push((index, nodes));
            }
        }
        if write
            && (rewrites.rows.len() >= TILE_REPAIR_BATCH || rewrites.roots.len() >= TILE_ROOT_BATCH)
        {
            rewrites.flush(store)?;
        }
    }
    if write {
        rewrites.flush(store)?;
        let full = tree.full_tiles();
        let extra = match &roots {
            Some(t) => t
                .last()
                .map_err(err)?
                .is_some_and(|(k, _)| k.value() >= full),
            None => false,
        };
        if extra {
            let w = store.write()?;
            w.open_table(TILE_ROOTS)
                .map_err(err)?
                .retain(|k, _| k < full)
                .map_err(err)?;
            w.commit().map_err(err)?;
        }
    }
    Ok((tree, rewrites.mismatched_rows))
}

/// The latest stored checkpoint, its signature checked.
fn read_latest(
    r: &ReadTransaction,
    verifier: &NoteVerifier,
) -> Result<Option<SignedCheckpoint>, LedgerError> {
    let t = r.open_table(CHECKPOINTS).map_err(err)?;
    let Some(last) = t.last().map_err(err)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(last.1.value()).into_owned();
    SignedCheckpoint::verify(&text, verifier)
        .map(Some)
        .map_err(|e| LedgerError::Corrupt(format!("checkpoint {}: {e}", last.0.value())))
}

/// Whether `tree` reproduces the root `cp` signed.
fn reproduces(tree: &TiledTree<LogHasher>, cp: &SignedCheckpoint, store: &Store) -> bool {
    let c = &cp.checkpoint;
    c.size <= tree.size()
        && tree
            .root(c.size, &mut StoredTiles::new(store))
            .is_ok_and(|root| root == c.root)
}

/// A log restored from storage on a writable handle: the tree, checked against the latest
/// checkpoint, and how many tile rows had to be rewritten.
struct Loaded {
    tree: TiledTree<LogHasher>,
    latest: Option<SignedCheckpoint>,
    repaired_tiles: u64,
}

/// Restores the tree for appending and proving. The fast way (tile roots) is checked against the
/// latest checkpoint; when it is not there or does not reproduce it, the tree is rebuilt from the
/// leaves and the tile rows and roots written from them. If even the leaves do not reproduce the
/// latest checkpoint, the log was altered: appending would sign a checkpoint inconsistent with
/// the ones published, so this refuses.
fn load(store: &Store, verifier: &NoteVerifier, force_leaves: bool) -> Result<Loaded, LedgerError> {
    let r = store.read()?;
    let latest = read_latest(&r, verifier)?;
    let restored = if force_leaves {
        Restored::NeedsLeaves
    } else {
        restore(&r)?
    };
    drop(r);
    if let Restored::FromRoots(tree) = restored {
        match &latest {
            Some(cp) if !reproduces(&tree, cp, store) => {
                tracing::warn!(
                    size = cp.checkpoint.size,
                    "the ledger's tile roots do not reproduce the latest checkpoint; rebuilding them from the leaves"
                );
            }
            _ => {
                return Ok(Loaded {
                    tree,
                    latest,
                    repaired_tiles: 0,
                });
            }
        }
    } else if !force_leaves {
        tracing::info!("building the ledger's tile_roots table from its leaves (once)");
    }
    let (tree, repaired_tiles) = rebuild_from_leaves(store, true)?;
    if let Some(cp) = &latest {
        if !reproduces(&tree, cp, store) {
            return Err(LedgerError::Corrupt(format!(
                "the stored leaves do not reproduce the root of checkpoint {}: the log was \
                 altered; run `medanchor verify --all`",
                cp.checkpoint.size
            )));
        }
    }
    Ok(Loaded {
        tree,
        latest,
        repaired_tiles,
    })
}

/// Creates the tables a new (or older) file lacks.
fn create_tables(db: &redb::Database) -> Result<(), LedgerError> {
    let w = db.begin_write().map_err(err)?;
    w.open_table(LEAVES).map_err(err)?;
    w.open_table(BY_RECORD).map_err(err)?;
    w.open_table(CHECKPOINTS).map_err(err)?;
    w.open_table(TILES).map_err(err)?;
    w.open_table(TILE_ROOTS).map_err(err)?;
    w.open_table(META).map_err(err)?;
    w.commit().map_err(err)
}

/// Rows of a table keyed by u64, copied out.
type Rows = Vec<(u64, Vec<u8>)>;

/// What [`EmbeddedLedger::check_against_leaves`] went through.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LeafCheck {
    pub leaves: u64,
    pub tiles: u64,
    pub checkpoints: u64,
    /// How many problems were reported.
    pub problems: u64,
}

impl EmbeddedLedger {
    /// Opens (with `create`, creates) the ledger at `path` for appending and proving.
    pub fn open(
        path: &Path,
        origin: &str,
        signer: NoteSigner,
        create: bool,
    ) -> Result<Self, LedgerError> {
        Self::open_writable(Self::file_opener(path, create), origin, signer, false)
    }

    /// Opens the ledger as the code before `tile_roots` did: every leaf re-hashed and every tile
    /// row read and compared (for the start-up benchmark; [`EmbeddedLedger::open`] reads the tile
    /// roots instead).
    #[doc(hidden)]
    pub fn open_rehashing_every_leaf(
        path: &Path,
        origin: &str,
        signer: NoteSigner,
    ) -> Result<Self, LedgerError> {
        Self::open_writable(Self::file_opener(path, false), origin, signer, true)
    }

    /// For a stopped gateway (`medanchor repair`): builds a new ledger.redb from the old one's
    /// leaves and signed checkpoints, which are the log itself; everything derived from them
    /// (record index, tile rows, tile roots) is computed anew, so damage there (even damage that
    /// makes the storage engine fail) is gone. The old file is kept beside it. Returns (leaves,
    /// checkpoints, where the old file was moved).
    pub fn repair(
        path: &Path,
        origin: &str,
        signer: NoteSigner,
    ) -> Result<(u64, u64, std::path::PathBuf), LedgerError> {
        let read = || -> Result<(Rows, Rows), LedgerError> {
            let db = Db::open_read_only(path, LEDGER_CACHE_BYTES)
                .map_err(|e| LedgerError::Storage(e.to_string()))?;
            let r = db.read_txn()?;
            let copy =
                |t: redb::ReadOnlyTable<u64, &[u8]>| -> Result<Vec<(u64, Vec<u8>)>, LedgerError> {
                    t.iter()
                        .map_err(err)?
                        .map(|e| {
                            let (k, v) = e.map_err(err)?;
                            Ok((k.value(), v.value().to_vec()))
                        })
                        .collect()
                };
            Ok((
                copy(r.open_table(LEAVES).map_err(err)?)?,
                copy(r.open_table(CHECKPOINTS).map_err(err)?)?,
            ))
        };
        // A damaged page can make the storage engine panic rather than fail: that is a finding
        // here, not a crash.
        let (leaves, checkpoints) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
            .unwrap_or_else(|_| {
                Err(LedgerError::Corrupt(
                    "the leaves or checkpoints cannot be read (the storage engine failed on a damaged page): restore ledger.redb from a backup".into(),
                ))
            })?;
        let fresh = path.with_extension("redb.rebuilding");
        let _ = std::fs::remove_file(&fresh);
        {
            let db = builder().create(&fresh).map_err(err)?;
            create_tables(&db)?;
            let w = db.begin_write().map_err(err)?;
            {
                let mut t = w.open_table(LEAVES).map_err(err)?;
                let mut by_record = w.open_table(BY_RECORD).map_err(err)?;
                for (index, value) in &leaves {
                    let leaf = parse_leaf(*index, value)?;
                    t.insert(*index, value.as_slice()).map_err(err)?;
                    if by_record
                        .get(leaf.record_id.0.as_slice())
                        .map_err(err)?
                        .is_none()
                    {
                        by_record
                            .insert(leaf.record_id.0.as_slice(), *index)
                            .map_err(err)?;
                    }
                }
                let mut t = w.open_table(CHECKPOINTS).map_err(err)?;
                for (size, text) in &checkpoints {
                    t.insert(*size, text.as_slice()).map_err(err)?;
                }
            }
            w.commit().map_err(err)?;
        }
        // Tile rows and roots from the leaves; this also checks that the leaves reproduce the
        // latest checkpoint.
        drop(Self::open_rehashing_every_leaf(&fresh, origin, signer)?);
        let old = path.with_extension(format!("redb.replaced-{}", crate::envelope::now_ms()));
        std::fs::rename(path, &old).map_err(err)?;
        std::fs::rename(&fresh, path).map_err(err)?;
        Ok((leaves.len() as u64, checkpoints.len() as u64, old))
    }

    /// Opens a ledger whose file is reached through `backend` (called again for each reopen after
    /// a storage error): how tests inject I/O faults ([`crate::testing::faulty`]).
    #[doc(hidden)]
    pub fn open_with_backend<B: redb::StorageBackend>(
        backend: impl Fn() -> std::io::Result<B> + Send + Sync + 'static,
        origin: &str,
        signer: NoteSigner,
    ) -> Result<Self, LedgerError> {
        let reopen: Reopen =
            Box::new(move |b| b.create_with_backend(backend().map_err(err)?).map_err(err));
        Self::open_writable(reopen, origin, signer, false)
    }

    fn file_opener(path: &Path, create: bool) -> Reopen {
        let path = path.to_path_buf();
        let first = std::sync::atomic::AtomicBool::new(create);
        Box::new(move |b| {
            // Created at most by the first open; a reopen must find the file it had.
            if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                b.create(&path)
            } else {
                b.open(&path)
            }
            .map_err(err)
        })
    }

    fn open_writable(
        reopen: Reopen,
        origin: &str,
        signer: NoteSigner,
        force_leaves: bool,
    ) -> Result<Self, LedgerError> {
        let db = reopen(&builder())?;
        create_tables(&db)?;
        let store = Store {
            db: RwLock::new(Some(Db::Writable(db))),
            reopen: Some(reopen),
        };
        let verifier = signer.verifier();
        let loaded = load(&store, &verifier, force_leaves)?;
        Ok(EmbeddedLedger {
            store,
            origin: origin.to_string(),
            signer: Some(signer),
            verifier,
            log: Mutex::new(Log {
                tree: Some(loaded.tree),
                edge: None,
                latest: loaded.latest,
                fault: None,
            }),
            down: Mutex::new(None),
            recovery_interval: RECOVERY_INTERVAL,
            recovery_failures: Throttle::new(Duration::from_secs(10)),
            repaired_tiles: loaded.repaired_tiles,
        })
    }

    /// Opens the ledger without changing a byte of its file, for verification: appends answer
    /// [`LedgerError::ReadOnly`]. The tree comes from the tile roots (from the leaves for a file
    /// without them) and is not checked against anything: that is
    /// [`EmbeddedLedger::check_against_leaves`]'s job. A file that was not closed cleanly is
    /// read through a repaired private copy: recovering it means writing to it.
    pub fn open_read_only(
        path: &Path,
        origin: &str,
        verifier: NoteVerifier,
    ) -> Result<Self, LedgerError> {
        // A file not closed cleanly (a crash) is read through a repaired private copy.
        let db = Db::open_read_only(path, LEDGER_CACHE_BYTES).map_err(|e| match e {
            crate::storage::StorageError::Open {
                source: redb::DatabaseError::DatabaseAlreadyOpen,
                ..
            } => LedgerError::InUse(path.to_path_buf()),
            e => LedgerError::Storage(e.to_string()),
        })?;
        let store = Store {
            db: RwLock::new(Some(db)),
            reopen: None,
        };
        // Best effort: whatever is wrong is for the caller's checks to name.
        let restored = restore(&store.read()?);
        let tree = match restored {
            Ok(Restored::FromRoots(tree)) => tree,
            Ok(Restored::NeedsLeaves) | Err(LedgerError::Corrupt(_)) => {
                match rebuild_from_leaves(&store, false) {
                    Ok((tree, _)) => tree,
                    Err(LedgerError::Corrupt(e)) => {
                        tracing::warn!(error = %e, "the ledger's tree could not be restored");
                        TiledTree::new(LogHasher, TILE_HEIGHT)
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        Ok(EmbeddedLedger {
            store,
            origin: origin.to_string(),
            signer: None,
            verifier,
            log: Mutex::new(Log {
                tree: Some(tree),
                edge: None,
                latest: None,
                fault: None,
            }),
            down: Mutex::new(None),
            recovery_interval: RECOVERY_INTERVAL,
            recovery_failures: Throttle::new(Duration::from_secs(10)),
            repaired_tiles: 0,
        })
    }

    /// How long a failed recovery waits before the next call tries again (1 s; tests set 0).
    #[doc(hidden)]
    pub fn set_recovery_interval(&mut self, interval: Duration) {
        self.recovery_interval = interval;
    }

    /// Every leaf in index order (for `verify --all`).
    pub fn for_each_leaf(
        &self,
        f: &mut dyn FnMut(StoredLeaf) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError> {
        let r = self.store.read()?;
        let t = r.open_table(LEAVES).map_err(err)?;
        for e in t.iter().map_err(err)? {
            let (k, v) = e.map_err(err)?;
            f(parse_leaf(k.value(), v.value())?)?;
        }
        Ok(())
    }

    /// Every checkpoint text in size order.
    pub fn checkpoints(&self) -> Result<Vec<(u64, String)>, LedgerError> {
        let r = self.store.read()?;
        let t = r.open_table(CHECKPOINTS).map_err(err)?;
        t.iter()
            .map_err(err)?
            .map(|e| {
                e.map(|(k, v)| (k.value(), String::from_utf8_lossy(v.value()).into_owned()))
                    .map_err(err)
            })
            .collect()
    }

    /// The signed note of the checkpoint at tree size `size`, if one was signed at that size.
    pub fn checkpoint_at(&self, size: u64) -> Result<Option<String>, LedgerError> {
        let r = self.store.read()?;
        let t = r.open_table(CHECKPOINTS).map_err(err)?;
        Ok(t.get(size)
            .map_err(err)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    /// RFC 9162 consistency proof between the trees of `first` and `second` leaves (both at
    /// most the log's size).
    pub fn consistency(&self, first: u64, second: u64) -> Result<Vec<Hash>, LedgerError> {
        if second > self.size() {
            return Err(LedgerError::NoCheckpoint(second));
        }
        let mut log = self.log.lock().expect("lock");
        self.ready(&mut log)?;
        let tree = log.tree.as_ref().expect("ready");
        let mut tiles = self.tiles();
        match tree.consistency_proof(first, second, &mut tiles) {
            Ok(p) => Ok(p),
            Err(e) if tiles.io_failed => Err(LedgerError::Io(e.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// The tree as restored from storage, with its stored tiles (for roots and consistency proofs
    /// of every checkpoint). While the log is down and cannot be restored, `f` gets an empty tree
    /// and a tile source that fails with the reason.
    pub fn with_tree<T>(&self, f: impl FnOnce(&TiledTree<LogHasher>, &mut StoredTiles) -> T) -> T {
        let mut log = self.log.lock().expect("lock");
        match self.ready(&mut log) {
            Ok(()) => f(log.tree.as_ref().expect("ready"), &mut self.tiles()),
            Err(e) => {
                tracing::warn!(error = %e, "the ledger's tree is not available");
                f(&TiledTree::new(LogHasher, TILE_HEIGHT), &mut self.tiles())
            }
        }
    }

    /// How many tile rows did not match the leaves when open had to rebuild the tree from them
    /// (they were rewritten): only a file from before `tile_roots`, or one whose tile roots did
    /// not reproduce the latest checkpoint, is rebuilt at open. The full check is
    /// [`EmbeddedLedger::check_against_leaves`]; this stays until `verify` calls it.
    #[doc(hidden)]
    pub fn repaired_tiles(&self) -> u64 {
        self.repaired_tiles
    }

    fn tiles(&self) -> StoredTiles<'_> {
        StoredTiles::new(&self.store)
    }

    pub fn leaf_index(&self, id: &RecordId) -> Result<Option<u64>, LedgerError> {
        let r = self.store.read()?;
        let t = r.open_table(BY_RECORD).map_err(err)?;
        Ok(t.get(id.0.as_slice()).map_err(err)?.map(|v| v.value()))
    }

    /// Marks the log down: its tree may not match storage, and with `reopen` the database must
    /// be opened again.
    fn fail(&self, log: &mut Log, reason: String, reopen: bool) {
        // The latest checkpoint stays: it was committed before, so it is still true (a commit
        // that failed late may have added a newer one, found when the tree is restored).
        log.tree = None;
        log.edge = None;
        let reopen = reopen || log.fault.as_ref().is_some_and(|f| f.reopen);
        log.fault = Some(Fault {
            cause: reason.clone(),
            recovery: None,
            reopen,
            tried: None,
        });
        *self.down.lock().expect("lock") = Some(reason);
    }

    /// Makes the log usable: when it is down, reopens the database if needed and restores the
    /// tree from storage, at most once per recovery interval.
    fn ready(&self, log: &mut Log) -> Result<(), LedgerError> {
        let Some(fault) = &mut log.fault else {
            return Ok(());
        };
        if fault
            .tried
            .is_some_and(|at| at.elapsed() < self.recovery_interval)
        {
            return Err(LedgerError::Unavailable(fault.reason()));
        }
        let attempt = (|| {
            if fault.reopen {
                self.store.reopen()?;
                fault.reopen = false;
            }
            load(&self.store, &self.verifier, false)
        })();
        match attempt {
            Ok(loaded) => {
                tracing::info!(
                    size = loaded.tree.size(),
                    failed_attempts_not_logged = self.recovery_failures.clear().unwrap_or(0),
                    "the ledger recovered: tree restored from storage"
                );
                log.tree = Some(loaded.tree);
                log.latest = loaded.latest;
                log.edge = None;
                log.fault = None;
                *self.down.lock().expect("lock") = None;
                Ok(())
            }
            Err(e) => {
                // A failed reopen leaves the database closed, and a failed read leaves it
                // refusing everything: the next attempt opens it again.
                if matches!(e, LedgerError::Io(_)) || self.store.db.read().expect("lock").is_none()
                {
                    fault.reopen = true;
                }
                fault.recovery = Some(e.to_string());
                fault.tried = Some(Instant::now());
                if let Some(times) = self.recovery_failures.hit() {
                    tracing::warn!(error = %e, times, "the ledger could not recover from storage yet");
                }
                let reason = fault.reason();
                *self.down.lock().expect("lock") = Some(reason.clone());
                Err(LedgerError::Unavailable(reason))
            }
        }
    }

    /// Re-hashes every leaf and checks the file against it, without writing: (a) leaf indexes are
    /// 0..n in sequence and every leaf is well formed, (b) every tile row equals the tile built
    /// from the leaves and there are no others, (c) every tile root entry equals that tile's root
    /// and there are no others, (d) `by_record` maps each leaf's record id to that leaf and has no
    /// other entries, (e) every checkpoint verifies, is stored under its own size, and its root
    /// is the root of that many leaves; and that the tree this handle proves with is the leaves'.
    /// Each problem is passed to `report` as one line naming the leaf, tile, record or
    /// checkpoint (never record content). Errors only when storage cannot be read.
    pub fn check_against_leaves(
        &self,
        report: &mut dyn FnMut(String),
    ) -> Result<LeafCheck, LedgerError> {
        let mut summary = LeafCheck::default();
        let mut problem = |summary: &mut LeafCheck, what: String| {
            summary.problems += 1;
            report(what);
        };
        // The reference SHA3-256 (RustCrypto's, through medanchor-merkle), not the writer's
        // own: a wrong hash in the writer shows here instead of agreeing with itself.
        let hasher = Sha3Hasher;
        let mut tree = TiledTree::new(hasher, TILE_HEIGHT);
        let r = self.store.read()?;
        let leaves = r.open_table(LEAVES).map_err(err)?;
        let by_record = r.open_table(BY_RECORD).map_err(err)?;
        let rows = optional_table(&r, TILES)?;
        let roots = optional_table(&r, TILE_ROOTS)?;
        if roots.is_none() {
            problem(&mut summary, "ledger: no tile_roots table".into());
        }
        let checkpoints = r.open_table(CHECKPOINTS).map_err(err)?;
        let mut checkpoints = checkpoints.iter().map_err(err)?;
        let mut next_checkpoint = || -> Result<Option<(u64, Vec<u8>)>, LedgerError> {
            match checkpoints.next() {
                None => Ok(None),
                Some(e) => {
                    let (k, v) = e.map_err(err)?;
                    Ok(Some((k.value(), v.value().to_vec())))
                }
            }
        };
        let mut pending = next_checkpoint()?;
        let mut mapped = 0u64;
        let mut leaf_iter = leaves.iter().map_err(err)?;
        loop {
            // Checkpoints at the size reached so far, against the tree as it is now: its right
            // edge is all in memory, so no tile is read.
            while let Some((size, text)) = pending.take_if(|(size, _)| *size <= tree.size()) {
                summary.checkpoints += 1;
                match self.signed_checkpoint(size, &text) {
                    Err(p) => problem(&mut summary, p),
                    Ok(cp) if tree.root(size, &mut NoTiles).ok() != Some(cp.root) => problem(
                        &mut summary,
                        format!("checkpoint {size}: root does not match the leaves"),
                    ),
                    Ok(_) => {}
                }
                pending = next_checkpoint()?;
            }
            let Some(e) = leaf_iter.next() else { break };
            let (k, v) = e.map_err(err)?;
            let index = k.value();
            let expect = tree.size();
            if index != expect {
                problem(
                    &mut summary,
                    format!("leaf {index}: out of sequence (expected leaf {expect})"),
                );
            }
            summary.leaves += 1;
            let v = v.value();
            let entry = match parse_leaf(index, v) {
                Ok(leaf) => {
                    match by_record.get(leaf.record_id.0.as_slice()).map_err(err)? {
                        Some(at) if at.value() == index => mapped += 1,
                        Some(at) => problem(
                            &mut summary,
                            format!(
                                "record {}: by_record points at leaf {}, not at leaf {index} \
                                 that names it",
                                leaf.record_id,
                                at.value()
                            ),
                        ),
                        None => problem(
                            &mut summary,
                            format!(
                                "record {}: named by leaf {index} but missing from by_record",
                                leaf.record_id
                            ),
                        ),
                    }
                    leaf.entry
                }
                Err(_) => {
                    problem(
                        &mut summary,
                        format!(
                            "leaf {index}: {} bytes, not a record leaf (49) or a derived leaf (97)",
                            v.len()
                        ),
                    );
                    v.to_vec()
                }
            };
            let Some((tile, nodes)) = tree.push(hasher.leaf(&entry)) else {
                continue;
            };
            summary.tiles += 1;
            let row = match &rows {
                Some(t) => t.get(tile).map_err(err)?,
                None => None,
            };
            match row {
                Some(row) if row.value() == nodes.as_slice() => {}
                Some(_) => problem(
                    &mut summary,
                    format!("tile {tile}: row does not match the leaves"),
                ),
                None => problem(&mut summary, format!("tile {tile}: row missing")),
            }
            let root = tile_root(&nodes).expect("a whole tile");
            if let Some(t) = &roots {
                match t.get(tile).map_err(err)? {
                    Some(r) if r.value() == root.as_slice() => {}
                    Some(_) => problem(
                        &mut summary,
                        format!("tile root {tile}: does not match the leaves"),
                    ),
                    None => problem(&mut summary, format!("tile root {tile}: missing")),
                }
            }
        }
        while let Some((size, text)) = pending {
            summary.checkpoints += 1;
            if let Err(p) = self.signed_checkpoint(size, &text) {
                problem(&mut summary, p);
            }
            problem(
                &mut summary,
                format!("checkpoint {size}: beyond the {} leaves", tree.size()),
            );
            pending = next_checkpoint()?;
        }
        let full = tree.full_tiles();
        for (what, table) in [("tile", &rows), ("tile root", &roots)] {
            let Some(t) = table else { continue };
            for e in t.range(full..).map_err(err)? {
                let (k, _) = e.map_err(err)?;
                problem(
                    &mut summary,
                    format!("{what} {}: beyond the {full} full tiles", k.value()),
                );
            }
        }
        // Every leaf whose record maps to it was counted in `mapped`; any other entry is extra.
        if by_record.len().map_err(err)? != mapped {
            for e in by_record.iter().map_err(err)? {
                let (id, at) = e.map_err(err)?;
                let (id, at) = (id.value(), at.value());
                let named = leaves.get(at).map_err(err)?.is_some_and(|v| {
                    parse_leaf(at, v.value()).is_ok_and(|l| l.record_id.0.as_slice() == id)
                });
                if !named {
                    let id = match <[u8; 16]>::try_from(id) {
                        Ok(id) => RecordId(id).to_string(),
                        Err(_) => format!("of {} bytes", id.len()),
                    };
                    problem(
                        &mut summary,
                        format!(
                            "record {id}: by_record points at leaf {at}, which does not name it"
                        ),
                    );
                }
            }
        }
        drop(r);
        // The tree this handle proves with (restored at open, mostly from the tile roots) must
        // be the leaves' tree.
        let log = self.log.lock().expect("lock");
        if let Some(held) = &log.tree {
            let held_root = held.root(held.size(), &mut self.tiles()).ok();
            if held.size() != tree.size() || held_root != tree.root(tree.size(), &mut NoTiles).ok()
            {
                problem(
                    &mut summary,
                    format!(
                        "ledger: the tree restored at open ({} leaves) is not the leaves' tree \
                         ({} leaves)",
                        held.size(),
                        tree.size()
                    ),
                );
            }
        }
        Ok(summary)
    }

    /// A stored checkpoint, its signature checked and its signed size that of its key; or the
    /// problem with it.
    fn signed_checkpoint(&self, size: u64, text: &[u8]) -> Result<Checkpoint, String> {
        match SignedCheckpoint::verify(&String::from_utf8_lossy(text), &self.verifier) {
            Err(e) => Err(format!("checkpoint {size}: {e}")),
            Ok(cp) if cp.checkpoint.size != size => Err(format!(
                "checkpoint {size}: signed size {} differs from its key",
                cp.checkpoint.size
            )),
            Ok(cp) => Ok(cp.checkpoint),
        }
    }

    fn append_locked(
        &self,
        log: &mut Log,
        records: &[Leaf],
        now_ms: u64,
        through: Option<u64>,
    ) -> Result<Option<(SignedCheckpoint, RightEdge)>, LedgerError> {
        let signer = self.signer.as_ref().ok_or(LedgerError::ReadOnly)?;
        let tree = log.tree.as_mut().expect("ready");
        let before = tree.size();
        let hasher = *tree.hasher();
        let mut w = self.store.write()?;
        w.set_durability(Durability::Immediate).map_err(err)?;
        {
            let mut leaves = w.open_table(LEAVES).map_err(err)?;
            let mut by_record = w.open_table(BY_RECORD).map_err(err)?;
            let mut tiles = w.open_table(TILES).map_err(err)?;
            let mut tile_roots = w.open_table(TILE_ROOTS).map_err(err)?;
            let mut value = Vec::with_capacity(97);
            for leaf in records {
                let id = &leaf.record_id;
                if by_record.get(id.0.as_slice()).map_err(err)?.is_some() {
                    continue;
                }
                let index = tree.size();
                let entry = leaf.entry();
                leaf_value(leaf, &entry, &mut value);
                leaves.insert(index, value.as_slice()).map_err(err)?;
                by_record.insert(id.0.as_slice(), index).map_err(err)?;
                if let Some((tile, nodes)) = tree.push(hasher.leaf(&entry)) {
                    tiles.insert(tile, nodes.as_slice()).map_err(err)?;
                    let root = tile_root(&nodes).expect("a whole tile");
                    tile_roots.insert(tile, root.as_slice()).map_err(err)?;
                }
            }
        }
        if let Some(through) = through {
            let mut meta = w.open_table(META).map_err(err)?;
            let current = meta
                .get(ANCHORED_THROUGH)
                .map_err(err)?
                .map_or(0, |v| v.value());
            if through > current {
                meta.insert(ANCHORED_THROUGH, through).map_err(err)?;
            }
        }
        if tree.size() == before {
            // Nothing new to sign; the watermark, if any, still becomes durable.
            if through.is_some() {
                w.commit().map_err(err)?;
            }
            return Ok(None);
        }
        // The new size's right edge lies in the tile being filled (or is empty when the size
        // ends a tile): nothing is read from storage, where this batch is not committed yet.
        let edge = tree.right_edge(tree.size(), &mut self.tiles())?;
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size: tree.size(),
            root: tree.edge_root(&edge, &mut self.tiles())?,
            timestamp_ms: now_ms,
        };
        let signed = signer.sign(&cp);
        w.open_table(CHECKPOINTS)
            .map_err(err)?
            .insert(cp.size, signed.text.as_bytes())
            .map_err(err)?;
        w.commit().map_err(err)?;
        Ok(Some((signed, edge)))
    }
}

impl EmbeddedLedger {
    /// Appends `records` (and, with `through`, the anchored watermark) in one transaction.
    fn append(
        &self,
        records: &[Leaf],
        now_ms: u64,
        through: Option<u64>,
    ) -> Result<Option<SignedCheckpoint>, LedgerError> {
        if self.signer.is_none() {
            return Err(LedgerError::ReadOnly);
        }
        let mut log = self.log.lock().expect("lock");
        let log = &mut *log;
        self.ready(log)?;
        match self.append_locked(log, records, now_ms, through) {
            Ok(Some((signed, edge))) => {
                log.edge = Some(edge);
                log.latest = Some(signed.clone());
                Ok(Some(signed))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                // The tree holds leaves whose commit failed, or whose commit may have landed
                // (an error from the final sync): it is rebuilt from what storage holds, in a
                // freshly opened database, since redb refuses everything after an I/O error.
                self.fail(log, format!("an append failed: {e}"), true);
                if let Err(still) = self.ready(log) {
                    tracing::debug!(error = %still, "the ledger could not recover yet");
                }
                Err(e)
            }
        }
    }
}

impl Ledger for EmbeddedLedger {
    fn append_records(
        &self,
        records: &[Leaf],
        now_ms: u64,
    ) -> Result<Option<SignedCheckpoint>, LedgerError> {
        self.append(records, now_ms, None)
    }

    fn append_through(
        &self,
        records: &[Leaf],
        now_ms: u64,
        through: u64,
    ) -> Result<Option<SignedCheckpoint>, LedgerError> {
        self.append(records, now_ms, Some(through))
    }

    fn anchored_through(&self) -> Result<u64, LedgerError> {
        let r = self.store.read()?;
        // A ledger written before the watermark was kept here has no table yet.
        let meta = match r.open_table(META) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(err(e)),
        };
        Ok(meta
            .get(ANCHORED_THROUGH)
            .map_err(err)?
            .map_or(0, |v| v.value()))
    }

    fn size(&self) -> u64 {
        let log = self.log.lock().expect("lock");
        match &log.tree {
            Some(tree) => tree.size(),
            // Down: the size of the last checkpoint known committed.
            None => log.latest.as_ref().map_or(0, |cp| cp.checkpoint.size),
        }
    }

    fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, LedgerError> {
        // Appends hold the log lock from reading the tree to setting `latest`, so what is
        // cached here is never older than what this process committed.
        let mut log = self.log.lock().expect("lock");
        if let Some(cp) = &log.latest {
            return Ok(Some(cp.clone()));
        }
        self.ready(&mut log)?;
        if let Some(cp) = &log.latest {
            return Ok(Some(cp.clone()));
        }
        let cp = read_latest(&self.store.read()?, &self.verifier)?;
        log.latest = cp.clone();
        Ok(cp)
    }

    fn proof(&self, id: &RecordId) -> Result<ProofBundle, LedgerError> {
        let result = self.prove(id);
        if let Err(LedgerError::Io(e)) = &result {
            // redb fails everything after an I/O error until it is opened again.
            let mut log = self.log.lock().expect("lock");
            if log.fault.is_none() && self.signer.is_some() {
                self.fail(&mut log, format!("a proof's read failed: {e}"), true);
            }
        }
        result
    }

    fn verifier(&self) -> NoteVerifier {
        self.verifier.clone()
    }

    fn health(&self) -> Result<(), String> {
        match &*self.down.lock().expect("lock") {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }
}

impl EmbeddedLedger {
    fn prove(&self, id: &RecordId) -> Result<ProofBundle, LedgerError> {
        if self.down.lock().expect("lock").is_some() {
            // Down: storage may be closed; recover before reading it.
            self.ready(&mut self.log.lock().expect("lock"))?;
        }
        let index = self
            .leaf_index(id)?
            .ok_or_else(|| LedgerError::NotAnchored(id.to_string()))?;
        let cp = self
            .latest_checkpoint()?
            .ok_or(LedgerError::NoCheckpoint(index))?;
        let size = cp.checkpoint.size;
        if index >= size {
            return Err(LedgerError::NoCheckpoint(index));
        }
        let r = self.store.read()?;
        let leaves = r.open_table(LEAVES).map_err(err)?;
        let leaf = leaves
            .get(index)
            .map_err(err)?
            .ok_or_else(|| LedgerError::Corrupt(format!("leaf {index} missing")))?;
        let leaf = parse_leaf(index, leaf.value())?;
        // A derived record's bundle proves the raw record it names too, in the same tree.
        let raw = match &leaf.derived_from {
            None => None,
            Some(raw_id) => {
                let not_before = || {
                    LedgerError::Corrupt(format!(
                        "leaf {index} names raw record {raw_id}, which is not a record leaf before it with the commitment it names"
                    ))
                };
                let raw_index = self
                    .leaf_index(raw_id)?
                    .filter(|&i| i < index)
                    .ok_or_else(not_before)?;
                let raw_leaf = leaves
                    .get(raw_index)
                    .map_err(err)?
                    .ok_or_else(|| LedgerError::Corrupt(format!("leaf {raw_index} missing")))?;
                let raw_leaf = parse_leaf(raw_index, raw_leaf.value())?;
                if raw_leaf.entry[0] != LEAF_RECORD_STORED
                    || raw_leaf.commitment() != &leaf.entry[33..65]
                {
                    return Err(not_before());
                }
                Some((*raw_id, raw_leaf))
            }
        };
        let mut paths = {
            let mut log = self.log.lock().expect("lock");
            self.ready(&mut log)?;
            let log = &mut *log;
            let tree = log.tree.as_ref().expect("ready");
            let mut tiles = self.tiles();
            let edge = match &log.edge {
                Some(edge) if edge.size() == size => Ok(edge),
                _ => tree
                    .right_edge(size, &mut tiles)
                    .map(|edge| &*log.edge.insert(edge)),
            };
            let paths = edge.and_then(|edge| {
                std::iter::once(index)
                    .chain(raw.as_ref().map(|(_, l)| l.index))
                    .map(|i| tree.inclusion_proof_at(edge, i, &mut tiles))
                    .collect::<Result<Vec<_>, _>>()
            });
            match paths {
                Ok(paths) => paths.into_iter(),
                Err(e) if tiles.io_failed => return Err(LedgerError::Io(e.to_string())),
                Err(e) => return Err(e.into()),
            }
        };
        let hexes = |path: Vec<Hash>| path.iter().map(hex::encode).collect();
        let path = paths.next().expect("the leaf's path");
        Ok(ProofBundle {
            format: BUNDLE_FORMAT.into(),
            record_id: id.to_string(),
            commitment: hex::encode(leaf.commitment()),
            leaf_index: index,
            tree_size: size,
            inclusion: hexes(path),
            checkpoint: cp.text,
            public_key: self.verifier.to_vkey(),
            derived_from: raw.map(|(raw_id, raw_leaf)| DerivedFrom {
                record_id: raw_id.to_string(),
                commitment: hex::encode(raw_leaf.commitment()),
                leaf_index: raw_leaf.index,
                inclusion: hexes(paths.next().expect("the raw leaf's path")),
            }),
            event: leaf.event().map(|k| k.name().to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::faulty::{Faults, FaultyBackend};
    use redb::ReadableDatabase;

    const ORIGIN: &str = "test.medanchor";

    fn signer() -> NoteSigner {
        NoteSigner::new(ORIGIN, ed25519_dalek::SigningKey::from_bytes(&[7; 32])).unwrap()
    }

    fn open(path: &Path, create: bool) -> EmbeddedLedger {
        EmbeddedLedger::open(path, ORIGIN, signer(), create).unwrap()
    }

    fn open_read_only(path: &Path) -> EmbeddedLedger {
        EmbeddedLedger::open_read_only(path, ORIGIN, signer().verifier()).unwrap()
    }

    /// A ledger whose file fails on command, recovering without waiting between attempts.
    fn open_faulty(path: &Path, faults: &Faults) -> EmbeddedLedger {
        let (path, faults) = (path.to_path_buf(), faults.clone());
        let mut ledger = EmbeddedLedger::open_with_backend(
            move || FaultyBackend::open(&path, faults.clone()),
            ORIGIN,
            signer(),
        )
        .unwrap();
        ledger.set_recovery_interval(Duration::ZERO);
        ledger
    }

    fn record(i: u32) -> Leaf {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        let mut commitment = [0u8; 32];
        commitment[28..].copy_from_slice(&i.to_le_bytes());
        Leaf::record(RecordId(id), commitment)
    }

    fn assert_proves(ledger: &EmbeddedLedger, i: u32) {
        let bundle = ledger.proof(&record(i).record_id).unwrap();
        bundle
            .verify(Some(&ledger.verifier()))
            .unwrap_or_else(|e| panic!("record {i}: {e}"));
    }

    fn problems(ledger: &EmbeddedLedger) -> Vec<String> {
        let mut found = Vec::new();
        let summary = ledger.check_against_leaves(&mut |p| found.push(p)).unwrap();
        assert_eq!(summary.problems, found.len() as u64);
        found
    }

    /// A ledger of `n` records appended in batches of `batch`.
    fn build(path: &Path, n: u32, batch: usize) {
        let ledger = open(path, true);
        let all: Vec<_> = (0..n).map(record).collect();
        for (t, b) in all.chunks(batch).enumerate() {
            ledger.append_records(b, t as u64).unwrap();
        }
    }

    fn with_db(path: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
        let db = redb::Database::open(path).unwrap();
        let w = db.begin_write().unwrap();
        f(&w);
        w.commit().unwrap();
    }

    #[test]
    fn proofs_into_old_tiles_verify_before_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let ledger = open(&path, true);
        // Batches of 37 leave checkpoints at sizes inside tiles and across tile boundaries.
        let all: Vec<_> = (0..1_000).map(record).collect();
        for (n, batch) in all.chunks(37).enumerate() {
            ledger.append_records(batch, n as u64).unwrap();
        }
        // A batch whose records are all present appends nothing and signs nothing.
        assert!(ledger.append_records(&all[..10], 99).unwrap().is_none());
        assert_eq!(ledger.size(), 1_000);
        for i in [0, 255, 256, 511, 700, 767, 768, 999] {
            assert_proves(&ledger, i);
        }
        drop(ledger);
        let ledger = open(&path, false);
        assert_eq!(ledger.size(), 1_000);
        for i in [0, 300, 999] {
            assert_proves(&ledger, i);
        }
        // Every checkpoint's root is reproduced from the tiles and stored leaves.
        let checkpoints = ledger.checkpoints().unwrap();
        assert_eq!(checkpoints.len(), 1_000usize.div_ceil(37));
        ledger.with_tree(|tree, tiles| {
            for (size, text) in &checkpoints {
                let cp = SignedCheckpoint::verify(text, &ledger.verifier()).unwrap();
                assert_eq!(
                    tree.root(*size, tiles).unwrap(),
                    cp.checkpoint.root,
                    "{size}"
                );
            }
        });
        assert_eq!(problems(&ledger), Vec::<String>::new());
        ledger.append_records(&[record(1_000)], 100).unwrap();
        assert_proves(&ledger, 1_000);
        assert_proves(&ledger, 5);
        assert_eq!(ledger.health(), Ok(()));
    }

    #[test]
    fn the_tree_restored_from_tile_roots_is_the_one_built_from_every_leaf() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0, 1, 255, 256, 257, 511, 512, 513, 1_000] {
            let path = dir.path().join(format!("{n}.redb"));
            build(&path, n, 100);
            let slow = EmbeddedLedger::open_rehashing_every_leaf(&path, ORIGIN, signer()).unwrap();
            let b = slow.log.lock().unwrap().tree.clone().unwrap();
            drop(slow);
            let fast = open(&path, false);
            let a = fast.log.lock().unwrap().tree.clone().unwrap();
            assert_eq!(a.size(), u64::from(n));
            assert_eq!(a.full_tiles(), b.full_tiles());
            assert_eq!(a.partial_tile(), b.partial_tile(), "{n}");
            for t in 0..a.full_tiles() {
                assert_eq!(a.tile_root(t), b.tile_root(t), "{n}: tile {t}");
            }
            for i in [0, n / 2, n.saturating_sub(1)]
                .into_iter()
                .filter(|&i| i < n)
            {
                assert_proves(&fast, i);
            }
        }
    }

    #[test]
    fn a_file_without_tile_roots_gets_them_built_once_then_opens_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        build(&path, 800, 50);
        // As the code before `tile_roots` left it, and from before tiles: no roots, a row missing.
        with_db(&path, |w| {
            assert!(w.delete_table(TILE_ROOTS).unwrap());
            w.open_table(TILES).unwrap().remove(1).unwrap();
        });
        let ledger = open(&path, false);
        assert_eq!(ledger.size(), 800);
        for i in [0, 300, 600, 799] {
            assert_proves(&ledger, i);
        }
        assert_eq!(problems(&ledger), Vec::<String>::new());
        drop(ledger);
        {
            let db = redb::ReadOnlyDatabase::open(&path).unwrap();
            let r = db.begin_read().unwrap();
            assert_eq!(r.open_table(TILE_ROOTS).unwrap().len().unwrap(), 3);
            assert_eq!(r.open_table(TILES).unwrap().len().unwrap(), 3);
        }
        // Open no longer reads the full tiles' leaves: a leaf altered in one of them goes
        // unnoticed by open (the roots still reproduce the checkpoint) and is named by the check.
        with_db(&path, |w| {
            let mut leaves = w.open_table(LEAVES).unwrap();
            let mut v = leaves.get(10).unwrap().unwrap().value().to_vec();
            v[32] ^= 1;
            leaves.insert(10, v.as_slice()).unwrap();
        });
        let ledger = open(&path, false);
        assert_eq!(ledger.size(), 800);
        let found = problems(&ledger);
        assert!(
            found
                .iter()
                .any(|p| p == "tile 0: row does not match the leaves"),
            "{found:?}"
        );
        assert!(found
            .iter()
            .any(|p| p == "tile root 0: does not match the leaves"));
        assert!(
            found
                .iter()
                .any(|p| p == "checkpoint 50: root does not match the leaves"),
            "{found:?}"
        );
    }

    #[test]
    fn open_refuses_a_log_whose_leaves_do_not_reproduce_the_latest_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        build(&path, 300, 100);
        // A leaf of the partial tile (re-hashed at every open) altered.
        with_db(&path, |w| {
            let mut leaves = w.open_table(LEAVES).unwrap();
            let mut v = leaves.get(290).unwrap().unwrap().value().to_vec();
            v[5] ^= 1;
            leaves.insert(290, v.as_slice()).unwrap();
        });
        let e = EmbeddedLedger::open(&path, ORIGIN, signer(), false)
            .err()
            .unwrap();
        assert!(
            matches!(&e, LedgerError::Corrupt(m) if m.contains("checkpoint 300")),
            "{e}"
        );
        // The read-only handle opens it, for the check to say what is wrong.
        let found = problems(&open_read_only(&path));
        assert!(
            found.contains(&"checkpoint 300: root does not match the leaves".to_string()),
            "{found:?}"
        );
    }

    #[test]
    fn tile_roots_that_do_not_reproduce_the_latest_checkpoint_are_rebuilt_from_the_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        build(&path, 600, 100);
        with_db(&path, |w| {
            w.open_table(TILE_ROOTS)
                .unwrap()
                .insert(1, [9u8; 32].as_slice())
                .unwrap();
        });
        let found = problems(&open_read_only(&path));
        assert!(found.contains(&"tile root 1: does not match the leaves".to_string()));
        let ledger = open(&path, false);
        for i in [0, 300, 599] {
            assert_proves(&ledger, i);
        }
        assert_eq!(problems(&ledger), Vec::<String>::new());
        drop(ledger);
        // A root that is not 32 bytes, or one missing: rebuilt the same way.
        for damage in [Some([1u8; 5].as_slice()), None] {
            with_db(&path, |w| {
                let mut t = w.open_table(TILE_ROOTS).unwrap();
                match damage {
                    Some(v) => t.insert(0, v).map(drop),
                    None => t.remove(0).map(drop),
                }
                .unwrap();
            });
            let ledger = open(&path, false);
            assert_proves(&ledger, 10);
            assert_eq!(problems(&ledger), Vec::<String>::new());
        }
    }

    #[test]
    fn check_against_leaves_names_each_kind_of_damage() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.redb");
        build(&base, 700, 100);
        assert_eq!(problems(&open_read_only(&base)), Vec::<String>::new());
        let other = record(9_999).record_id;
        let id = |i: u32| record(i).record_id.to_string();
        type Damage = Box<dyn Fn(&redb::WriteTransaction)>;
        let cases: Vec<(&str, Damage, Vec<String>)> = vec![
            (
                "a leaf moved out of sequence",
                Box::new(|w| {
                    let mut t = w.open_table(LEAVES).unwrap();
                    let v = t.remove(699).unwrap().unwrap().value().to_vec();
                    t.insert(5_000, v.as_slice()).unwrap();
                }),
                vec![
                    "leaf 5000: out of sequence (expected leaf 699)".into(),
                    format!("record {}: by_record points at leaf 699, not at leaf 5000 that names it", id(699)),
                ],
            ),
            (
                "a malformed leaf",
                Box::new(|w| {
                    w.open_table(LEAVES).unwrap().insert(600, [1u8; 10].as_slice()).unwrap();
                }),
                vec![
                    "leaf 600: 10 bytes, not a record leaf (49) or a derived leaf (97)".into(),
                    "checkpoint 700: root does not match the leaves".into(),
                ],
            ),
            (
                "a tile row altered",
                Box::new(|w| {
                    let mut t = w.open_table(TILES).unwrap();
                    let mut row = t.get(1).unwrap().unwrap().value().to_vec();
                    row[0] ^= 1;
                    t.insert(1, row.as_slice()).unwrap();
                }),
                vec!["tile 1: row does not match the leaves".into()],
            ),
            (
                "a tile row missing and one extra",
                Box::new(|w| {
                    let mut t = w.open_table(TILES).unwrap();
                    t.remove(0).unwrap();
                    t.insert(7, [0u8; 511 * 32].as_slice()).unwrap();
                }),
                vec!["tile 0: row missing".into(), "tile 7: beyond the 2 full tiles".into()],
            ),
            (
                "a tile root altered",
                Box::new(|w| {
                    w.open_table(TILE_ROOTS).unwrap().insert(0, [3u8; 32].as_slice()).unwrap();
                }),
                vec![
                    "tile root 0: does not match the leaves".into(),
                    "ledger: the tree restored at open (700 leaves) is not the leaves' tree (700 leaves)".into(),
                ],
            ),
            (
                "by_record pointing elsewhere, and an extra entry",
                Box::new(move |w| {
                    let mut t = w.open_table(BY_RECORD).unwrap();
                    t.insert(record(3).record_id.0.as_slice(), 4).unwrap();
                    t.insert(other.0.as_slice(), 2).unwrap();
                }),
                vec![
                    format!("record {}: by_record points at leaf 4, not at leaf 3 that names it", id(3)),
                    format!("record {}: by_record points at leaf 4, which does not name it", id(3)),
                    format!("record {other}: by_record points at leaf 2, which does not name it"),
                ],
            ),
            (
                "by_record missing an entry",
                Box::new(|w| {
                    w.open_table(BY_RECORD).unwrap().remove(record(8).record_id.0.as_slice()).unwrap();
                }),
                vec![format!("record {}: named by leaf 8 but missing from by_record", id(8))],
            ),
            (
                "a checkpoint under the wrong size, and one beyond the leaves",
                Box::new(|w| {
                    let mut t = w.open_table(CHECKPOINTS).unwrap();
                    let text = t.get(100).unwrap().unwrap().value().to_vec();
                    t.insert(150, text.as_slice()).unwrap();
                    let text = t.get(700).unwrap().unwrap().value().to_vec();
                    t.insert(900, text.as_slice()).unwrap();
                }),
                vec![
                    "checkpoint 150: signed size 100 differs from its key".into(),
                    "checkpoint 900: signed size 700 differs from its key".into(),
                ],
            ),
            (
                "a checkpoint whose signature fails",
                Box::new(|w| {
                    let mut t = w.open_table(CHECKPOINTS).unwrap();
                    let mut text = t.get(200).unwrap().unwrap().value().to_vec();
                    text[0] ^= 1;
                    t.insert(200, text.as_slice()).unwrap();
                }),
                vec!["checkpoint 200: signature from key".into()],
            ),
        ];
        for (name, damage, expected) in cases {
            let path = dir.path().join("damaged.redb");
            std::fs::copy(&base, &path).unwrap();
            with_db(&path, |w| damage(w));
            let found = problems(&open_read_only(&path));
            for want in &expected {
                assert!(
                    found.iter().any(|p| p.starts_with(want.as_str())),
                    "{name}: {want:?} not in {found:#?}"
                );
            }
        }
    }

    #[test]
    fn a_read_only_handle_changes_no_byte_and_cannot_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        build(&path, 300, 64);
        let before = std::fs::read(&path).unwrap();
        {
            let ledger = open_read_only(&path);
            assert_eq!(ledger.size(), 300);
            assert_eq!(problems(&ledger), Vec::<String>::new());
            assert_proves(&ledger, 17);
            assert_proves(&ledger, 299);
            let mut n = 0;
            ledger
                .for_each_leaf(&mut |_| {
                    n += 1;
                    Ok(())
                })
                .unwrap();
            assert_eq!(n, 300);
            assert_eq!(ledger.checkpoints().unwrap().len(), 5);
            assert_eq!(ledger.with_tree(|tree, _| tree.size()), 300);
            assert!(matches!(
                ledger.append_records(&[record(300)], 1),
                Err(LedgerError::ReadOnly)
            ));
            // The gateway cannot open it meanwhile, nor can a read-only handle while it runs.
            let e = EmbeddedLedger::open(&path, ORIGIN, signer(), false).err();
            assert!(e.is_some());
        }
        assert!(std::fs::read(&path).unwrap() == before, "the file changed");
        let _writer = open(&path, false);
        assert!(matches!(
            EmbeddedLedger::open_read_only(&path, ORIGIN, signer().verifier()),
            Err(LedgerError::InUse(_))
        ));
    }

    #[test]
    fn a_file_left_by_a_failed_write_is_read_only_through_a_repaired_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let faults = Faults::default();
        let ledger = open_faulty(&path, &faults);
        ledger.append_records(&[record(0)], 1).unwrap();
        faults.fail_all();
        assert!(ledger.append_records(&[record(1)], 2).is_err());
        drop(ledger);
        faults.clear();
        let before = std::fs::read(&path).unwrap();
        let ro = EmbeddedLedger::open_read_only(&path, ORIGIN, signer().verifier()).unwrap();
        assert_eq!(problems(&ro), Vec::<String>::new());
        assert_eq!(ro.size(), 1);
        drop(ro);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the file itself is untouched"
        );
    }

    #[test]
    fn appends_during_a_full_disk_fail_cleanly_and_the_log_heals_once_space_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let faults = Faults::default();
        let ledger = open_faulty(&path, &faults);
        let all: Vec<_> = (0..700).map(record).collect();
        for (t, b) in all[..400].chunks(100).enumerate() {
            ledger.append_records(b, t as u64).unwrap();
        }
        let latest = ledger.latest_checkpoint().unwrap().unwrap();
        faults.fail_all();
        for (t, b) in all[400..].chunks(100).enumerate() {
            let e = ledger.append_records(b, 10 + t as u64).unwrap_err();
            assert!(e.to_string().contains("No space left on device"), "{e}");
            assert_eq!(ledger.size(), 400);
            assert_eq!(ledger.latest_checkpoint().unwrap().unwrap(), latest);
            let why = ledger.health().unwrap_err();
            assert!(why.contains("No space left on device"), "{why}");
        }
        // Proofs need the tree, which cannot be restored while the file cannot be reopened.
        assert!(matches!(
            ledger.proof(&record(5).record_id),
            Err(LedgerError::Unavailable(_))
        ));
        assert!(faults.injected() > 0);
        faults.clear();
        // The next append reopens the file, restores the tree and appends.
        let cp = ledger.append_records(&all[400..], 20).unwrap().unwrap();
        assert_eq!(cp.checkpoint.size, 700);
        assert_eq!(ledger.health(), Ok(()));
        for i in [0, 255, 399, 400, 650, 699] {
            assert_proves(&ledger, i);
        }
        assert_eq!(problems(&ledger), Vec::<String>::new());
        drop(ledger);
        assert_eq!(problems(&open_read_only(&path)), Vec::<String>::new());
    }

    #[test]
    fn proofs_heal_the_log_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let faults = Faults::default();
        let ledger = open_faulty(&path, &faults);
        ledger.append_records(&[record(0), record(1)], 1).unwrap();
        faults.fail_all();
        assert!(ledger.append_records(&[record(2)], 2).is_err());
        assert!(ledger.health().is_err());
        faults.clear();
        assert_proves(&ledger, 1);
        assert_eq!(ledger.health(), Ok(()));
        assert_eq!(ledger.size(), 2);
    }

    #[test]
    fn a_failure_at_any_write_call_of_an_append_sequence_leaves_a_consistent_log() {
        let dir = tempfile::tempdir().unwrap();
        // Batches that end inside a tile, exactly on a tile boundary, and across one.
        let all: Vec<_> = (0..600).map(record).collect();
        let batches: Vec<&[Leaf]> =
            vec![&all[..100], &all[100..256], &all[256..300], &all[300..600]];
        let calls = {
            let path = dir.path().join("count.redb");
            let faults = Faults::default();
            let ledger = open_faulty(&path, &faults);
            let before = faults.calls();
            for (t, b) in batches.iter().enumerate() {
                ledger.append_records(b, t as u64).unwrap();
            }
            faults.calls() - before
        };
        assert!(calls >= batches.len() as u64, "{calls} write calls");
        // Of the failed appends: how many left storage as before, and how many had committed
        // anyway (the failed call came after the commit was written, e.g. the final sync).
        let (mut rolled_back, mut landed) = (0, 0);
        for k in 0..calls {
            let path = dir.path().join(format!("{k}.redb"));
            let faults = Faults::default();
            let ledger = open_faulty(&path, &faults);
            faults.fail_after(k);
            let mut failures = 0;
            for (t, b) in batches.iter().enumerate() {
                // Retried until it succeeds: the fault fails one call only.
                let mut tries = 0;
                let before = ledger.size();
                while let Err(e) = ledger.append_records(b, t as u64) {
                    // The failed append's recovery restored the tree from what was committed.
                    if ledger.size() == before {
                        rolled_back += 1;
                    } else {
                        assert_eq!(ledger.size(), before + b.len() as u64, "call {k}");
                        landed += 1;
                    }
                    failures += 1;
                    tries += 1;
                    assert!(tries < 3, "call {k}: batch {t} keeps failing: {e}");
                }
            }
            assert_eq!(faults.injected(), 1, "call {k}");
            assert_eq!(failures, 1, "call {k}: the failed call failed an append");
            assert_eq!(ledger.size(), 600, "call {k}");
            assert_eq!(ledger.health(), Ok(()), "call {k}");
            // Every record once, every tile and index right, every checkpoint's root the leaves'.
            assert_eq!(problems(&ledger), Vec::<String>::new(), "call {k}");
            for i in [0, 99, 100, 255, 256, 299, 599] {
                assert_proves(&ledger, i);
            }
            drop(ledger);
            let ledger = open(&path, false);
            assert_eq!(ledger.size(), 600, "call {k}: reopened");
            assert_eq!(
                problems(&ledger),
                Vec::<String>::new(),
                "call {k}: reopened"
            );
        }
        eprintln!("{calls} write calls: {rolled_back} failed appends rolled back, {landed} landed");
        assert_eq!(rolled_back + landed, calls);
        assert!(rolled_back > 0 && landed > 0);
    }
}
