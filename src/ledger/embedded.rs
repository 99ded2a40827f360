//! Embedded ledger on redb (`<data_dir>/ledger.redb`).
//!
//! Tables: `leaves` (index → entry[33] || record id[16]), `by_record` (record id → index),
//! `checkpoints` (tree size → signed note text), `tiles` (tile index → the 511 node hashes of a
//! full tile of 256 leaves). Leaf hashes are rebuilt into a [`TiledTree`] on open: memory holds
//! the nodes above the tiles (about 0.25 bytes per leaf) and the tile being filled; a proof into
//! an older tile reads that tile's row. Tile rows are derived from the leaves: open writes the
//! missing ones (logs from before tiles) and rewrites any that do not match the leaves.

use std::path::Path;
use std::sync::Mutex;

use medanchor_merkle::{
    record_leaf, Checkpoint, Hash, NoteSigner, NoteVerifier, ProofBundle, RightEdge,
    SignedCheckpoint, TileSource, TiledTree, TreeHasher, BUNDLE_FORMAT,
};
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Ledger, LedgerError, LogHasher, StoredLeaf};
use crate::envelope::RecordId;

const LEAVES: TableDefinition<u64, &[u8]> = TableDefinition::new("leaves");
const BY_RECORD: TableDefinition<&[u8], u64> = TableDefinition::new("by_record");
// Values are bytes, not &str: a damaged file must give an error from our parser, never a
// panic inside the storage engine.
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
const TILES: TableDefinition<u64, &[u8]> = TableDefinition::new("tiles");

const LEDGER_CACHE_BYTES: usize = 16 << 20;

/// Tiles of 2^8 leaves: memory grows by 64 bytes per 256 leaves; each full tile is a 16 KiB row
/// on disk (64 bytes per leaf), and a proof into an old tile reads one row and hashes nothing.
const TILE_HEIGHT: u32 = 8;

/// Rows written per transaction when open fills in missing tiles.
const TILE_REPAIR_BATCH: usize = 64;

fn err(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Storage(e.to_string())
}

pub struct EmbeddedLedger {
    db: redb::Database,
    origin: String,
    signer: NoteSigner,
    log: Mutex<Log>,
    /// Tile rows found not matching the leaves at open (and rewritten).
    repaired_tiles: u64,
}

/// Writes (and drains) tile rows in one transaction.
fn write_tiles(db: &redb::Database, rows: &mut Vec<(u64, Vec<u8>)>) -> Result<(), LedgerError> {
    if rows.is_empty() {
        return Ok(());
    }
    let w = db.begin_write().map_err(err)?;
    {
        let mut t = w.open_table(TILES).map_err(err)?;
        for (index, row) in rows.drain(..) {
            t.insert(index, row.as_slice()).map_err(err)?;
        }
    }
    w.commit().map_err(err)
}

/// The tree and the right edge of the latest checkpoint, computed when it is signed so that
/// proofs against it read at most the one tile of their leaf.
struct Log {
    tree: TiledTree<LogHasher>,
    edge: Option<RightEdge>,
    /// Set when a failed append could not be undone in the tree: the tree no longer matches the
    /// stored leaves, so nothing more is appended or proven until a restart rebuilds it.
    broken: Option<String>,
    /// The latest checkpoint, once verified (read from storage) or signed here: every proof
    /// names it, and checking its signature each time cost most of a proof (≈ 40 µs of 58).
    latest: Option<SignedCheckpoint>,
}

impl Log {
    fn inclusion_proof(
        &mut self,
        index: u64,
        size: u64,
        tiles: &mut StoredTiles,
    ) -> Result<Vec<Hash>, LedgerError> {
        if let Some(why) = &self.broken {
            return Err(LedgerError::Storage(why.clone()));
        }
        let edge = match &self.edge {
            Some(edge) if edge.size() == size => edge,
            _ => self.edge.insert(self.tree.right_edge(size, tiles)?),
        };
        Ok(self.tree.inclusion_proof_at(edge, index, tiles)?)
    }
}

/// The `tiles` table as the tree's [`TileSource`]: each read is its own read transaction, so it
/// sees only committed tiles.
pub struct StoredTiles<'a> {
    db: &'a redb::Database,
}

impl TileSource for StoredTiles<'_> {
    type Tile = TileRow;
    fn tile(&mut self, index: u64) -> Result<TileRow, String> {
        let r = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = r.open_table(TILES).map_err(|e| e.to_string())?;
        let row = t
            .get(index)
            .map_err(|e| e.to_string())?
            .ok_or("no such row")?;
        Ok(TileRow(row))
    }
}

/// A tile row borrowed from redb's pages: a proof reads its hashes without copying the row.
pub struct TileRow(redb::AccessGuard<'static, &'static [u8]>);

impl AsRef<[u8]> for TileRow {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
    }
}

/// Splits a stored leaf value into entry and record id.
pub fn parse_leaf(index: u64, v: &[u8]) -> Result<StoredLeaf, LedgerError> {
    if v.len() != 33 + 16 {
        return Err(LedgerError::Corrupt(format!("leaf {index}")));
    }
    Ok(StoredLeaf {
        index,
        entry: v[..33].to_vec(),
        record_id: RecordId(v[33..].try_into().expect("16")),
    })
}

impl EmbeddedLedger {
    pub fn open(
        path: &Path,
        origin: &str,
        signer: NoteSigner,
        create: bool,
    ) -> Result<Self, LedgerError> {
        // redb's default cache is 1 GiB; the log is written once and read for proofs, so a small
        // cache keeps the gateway's memory flat as the log grows.
        let mut b = redb::Builder::new();
        b.set_cache_size(LEDGER_CACHE_BYTES);
        let db = if create { b.create(path) } else { b.open(path) }.map_err(err)?;
        let w = db.begin_write().map_err(err)?;
        w.open_table(LEAVES).map_err(err)?;
        w.open_table(BY_RECORD).map_err(err)?;
        w.open_table(CHECKPOINTS).map_err(err)?;
        w.open_table(TILES).map_err(err)?;
        w.commit().map_err(err)?;
        let hasher = LogHasher;
        let mut tree = TiledTree::new(hasher, TILE_HEIGHT);
        let mut repaired_tiles = 0;
        {
            let r = db.begin_read().map_err(err)?;
            let t = r.open_table(LEAVES).map_err(err)?;
            let stored_tiles = r.open_table(TILES).map_err(err)?;
            let mut to_write: Vec<(u64, Vec<u8>)> = Vec::new();
            for (expect, e) in t.iter().map_err(err)?.enumerate() {
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
                match stored_tiles.get(index).map_err(err)? {
                    Some(stored) if stored.value() == nodes.as_slice() => continue,
                    Some(_) => {
                        tracing::warn!(
                            tile = index,
                            "ledger tile row did not match the leaves; rebuilt from them"
                        );
                        repaired_tiles += 1;
                    }
                    None => {}
                }
                to_write.push((index, nodes));
                if to_write.len() >= TILE_REPAIR_BATCH {
                    write_tiles(&db, &mut to_write)?;
                }
            }
            write_tiles(&db, &mut to_write)?;
        }
        Ok(EmbeddedLedger {
            db,
            origin: origin.to_string(),
            signer,
            log: Mutex::new(Log {
                tree,
                edge: None,
                broken: None,
                latest: None,
            }),
            repaired_tiles,
        })
    }

    /// Every leaf in index order (for `verify --all`).
    pub fn for_each_leaf(
        &self,
        f: &mut dyn FnMut(StoredLeaf) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(LEAVES).map_err(err)?;
        for e in t.iter().map_err(err)? {
            let (k, v) = e.map_err(err)?;
            f(parse_leaf(k.value(), v.value())?)?;
        }
        Ok(())
    }

    /// Every checkpoint text in size order.
    pub fn checkpoints(&self) -> Result<Vec<(u64, String)>, LedgerError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(CHECKPOINTS).map_err(err)?;
        t.iter()
            .map_err(err)?
            .map(|e| {
                e.map(|(k, v)| (k.value(), String::from_utf8_lossy(v.value()).into_owned()))
                    .map_err(err)
            })
            .collect()
    }

    /// The tree as rebuilt from storage, with its stored tiles (for roots and consistency proofs of
    /// every checkpoint).
    pub fn with_tree<T>(&self, f: impl FnOnce(&TiledTree<LogHasher>, &mut StoredTiles) -> T) -> T {
        f(&self.log.lock().expect("lock").tree, &mut self.tiles())
    }

    /// How many tile rows did not match the leaves when the ledger was opened (they were
    /// rewritten from the leaves; nonzero means the file was damaged or altered).
    pub fn repaired_tiles(&self) -> u64 {
        self.repaired_tiles
    }

    /// Takes the leaves of a batch that did not commit back out of the tree.
    fn undo(&self, log: &mut Log, before: u64) {
        if let Err(e) = log.tree.truncate(before, &mut self.tiles()) {
            log.broken = Some(format!(
                "the log could not undo a failed append ({e}); restart to rebuild it from storage"
            ));
        }
    }

    fn tiles(&self) -> StoredTiles<'_> {
        StoredTiles { db: &self.db }
    }

    pub fn leaf_index(&self, id: &RecordId) -> Result<Option<u64>, LedgerError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(BY_RECORD).map_err(err)?;
        Ok(t.get(id.0.as_slice()).map_err(err)?.map(|v| v.value()))
    }
}

impl Ledger for EmbeddedLedger {
    fn append_records(
        &self,
        records: &[(RecordId, [u8; 32])],
        now_ms: u64,
    ) -> Result<Option<SignedCheckpoint>, LedgerError> {
        let mut log = self.log.lock().expect("lock");
        let log = &mut *log;
        if let Some(why) = &log.broken {
            return Err(LedgerError::Storage(why.clone()));
        }
        let tree = &mut log.tree;
        let before = tree.size();
        let hasher = *tree.hasher();
        let mut w = self.db.begin_write().map_err(err)?;
        w.set_durability(Durability::Immediate).map_err(err)?;
        let result = (|| {
            let mut leaves = w.open_table(LEAVES).map_err(err)?;
            let mut by_record = w.open_table(BY_RECORD).map_err(err)?;
            let mut tiles = w.open_table(TILES).map_err(err)?;
            let mut value = Vec::with_capacity(49);
            for (id, commitment) in records {
                if by_record.get(id.0.as_slice()).map_err(err)?.is_some() {
                    continue;
                }
                let index = tree.size();
                let entry = record_leaf(commitment);
                value.clear();
                value.extend_from_slice(&entry);
                value.extend_from_slice(&id.0);
                leaves.insert(index, value.as_slice()).map_err(err)?;
                by_record.insert(id.0.as_slice(), index).map_err(err)?;
                if let Some((tile, nodes)) = tree.push(hasher.leaf(&entry)) {
                    tiles.insert(tile, nodes.as_slice()).map_err(err)?;
                }
            }
            if tree.size() == before {
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
            let signed = self.signer.sign(&cp);
            w.open_table(CHECKPOINTS)
                .map_err(err)?
                .insert(cp.size, signed.text.as_bytes())
                .map_err(err)?;
            Ok(Some((signed, edge)))
        })();
        match result {
            Ok(Some((signed, edge))) => match w.commit() {
                Ok(()) => {
                    log.edge = Some(edge);
                    log.latest = Some(signed.clone());
                    Ok(Some(signed))
                }
                Err(e) => {
                    self.undo(log, before);
                    Err(err(e))
                }
            },
            Ok(None) => Ok(None),
            Err(e) => {
                self.undo(log, before);
                Err(e)
            }
        }
    }

    fn size(&self) -> u64 {
        self.log.lock().expect("lock").tree.size()
    }

    fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, LedgerError> {
        // Appends hold the log lock from reading the tree to setting `latest`, so what is
        // cached here is never older than what is stored.
        let mut log = self.log.lock().expect("lock");
        if let Some(cp) = &log.latest {
            return Ok(Some(cp.clone()));
        }
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(CHECKPOINTS).map_err(err)?;
        let Some(last) = t.last().map_err(err)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(last.1.value()).into_owned();
        let cp = SignedCheckpoint::verify(&text, &self.verifier())
            .map_err(|e| LedgerError::Corrupt(format!("checkpoint {}: {e}", last.0.value())))?;
        log.latest = Some(cp.clone());
        Ok(Some(cp))
    }

    fn proof(&self, id: &RecordId) -> Result<ProofBundle, LedgerError> {
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
        let r = self.db.begin_read().map_err(err)?;
        let leaf = r
            .open_table(LEAVES)
            .map_err(err)?
            .get(index)
            .map_err(err)?
            .ok_or_else(|| LedgerError::Corrupt(format!("leaf {index} missing")))?;
        let leaf = parse_leaf(index, leaf.value())?;
        let path =
            self.log
                .lock()
                .expect("lock")
                .inclusion_proof(index, size, &mut self.tiles())?;
        Ok(ProofBundle {
            format: BUNDLE_FORMAT.into(),
            record_id: id.to_string(),
            commitment: hex::encode(&leaf.entry[1..]),
            leaf_index: index,
            tree_size: size,
            inclusion: path.iter().map(hex::encode).collect(),
            checkpoint: cp.text,
            public_key: self.verifier().to_vkey(),
        })
    }

    fn verifier(&self) -> NoteVerifier {
        self.signer.verifier()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    fn open(path: &Path, create: bool) -> EmbeddedLedger {
        let signer = NoteSigner::new(
            "test.medanchor",
            ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        )
        .unwrap();
        EmbeddedLedger::open(path, "test.medanchor", signer, create).unwrap()
    }

    fn record(i: u32) -> (RecordId, [u8; 32]) {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        let mut commitment = [0u8; 32];
        commitment[28..].copy_from_slice(&i.to_le_bytes());
        (RecordId(id), commitment)
    }

    fn assert_proves(ledger: &EmbeddedLedger, i: u32) {
        let bundle = ledger.proof(&record(i).0).unwrap();
        bundle
            .verify(Some(&ledger.verifier()))
            .unwrap_or_else(|e| panic!("record {i}: {e}"));
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
        ledger.append_records(&[record(1_000)], 100).unwrap();
        assert_proves(&ledger, 1_000);
        assert_proves(&ledger, 5);
    }

    #[test]
    fn open_writes_missing_tile_rows_and_rewrites_altered_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let ledger = open(&path, true);
        let all: Vec<_> = (0..800).map(record).collect();
        ledger.append_records(&all, 1).unwrap();
        drop(ledger);
        {
            // A log from before tiles has no rows; a damaged one has a wrong row.
            let db = redb::Database::open(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(TILES).unwrap();
                assert_eq!(t.len().unwrap(), 3, "800 leaves fill three tiles of 256");
                t.remove(1).unwrap();
                t.insert(2, [0u8; 511 * 32].as_slice()).unwrap();
            }
            w.commit().unwrap();
        }
        let ledger = open(&path, false);
        assert_eq!(ledger.repaired_tiles(), 1, "the altered row is counted");
        for i in [300, 600, 799] {
            assert_proves(&ledger, i);
        }
        drop(ledger);
        assert_eq!(
            open(&path, false).repaired_tiles(),
            0,
            "rows are whole again"
        );
    }
}
