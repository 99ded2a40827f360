//! Embedded ledger on redb (`<data_dir>/ledger.redb`).
//!
//! Tables: `leaves` (index → entry[33] || record id[16]), `by_record` (record id → index),
//! `checkpoints` (tree size → signed note text). Leaf hashes are rebuilt into a [`TiledTree`] on
//! open: memory holds the nodes above tiles of 256 leaves (about 0.25 bytes per leaf) and the tile
//! being filled; a proof into an older tile reads that tile's 256 leaves back from `leaves`.

use std::path::Path;
use std::sync::Mutex;

use medanchor_merkle::{
    record_leaf, Checkpoint, Hash, LeafSource, NoteSigner, NoteVerifier, ProofBundle, RightEdge,
    Sha3Hasher, SignedCheckpoint, TiledTree, TreeHasher, BUNDLE_FORMAT,
};
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Ledger, LedgerError, StoredLeaf};
use crate::envelope::RecordId;

const LEAVES: TableDefinition<u64, &[u8]> = TableDefinition::new("leaves");
const BY_RECORD: TableDefinition<&[u8], u64> = TableDefinition::new("by_record");
// Values are bytes, not &str: a damaged file must give an error from our parser, never a
// panic inside the storage engine.
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");

const LEDGER_CACHE_BYTES: usize = 16 << 20;

/// Tiles of 2^8 leaves: memory grows by 64 bytes per 256 leaves, and a proof into an old tile
/// reads and hashes 256 leaves (about 0.1 ms).
const TILE_HEIGHT: u32 = 8;

fn err(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Storage(e.to_string())
}

pub struct EmbeddedLedger {
    db: redb::Database,
    origin: String,
    signer: NoteSigner,
    log: Mutex<Log>,
}

/// The tree and the right edge of the latest checkpoint, computed when it is signed so that
/// proofs against it read at most the one tile of their leaf.
struct Log {
    tree: TiledTree<Sha3Hasher>,
    edge: Option<RightEdge>,
    /// Set when a failed append could not be undone in the tree: the tree no longer matches the
    /// stored leaves, so nothing more is appended or proven until a restart rebuilds it.
    broken: Option<String>,
}

impl Log {
    fn inclusion_proof(
        &mut self,
        index: u64,
        size: u64,
        leaves: &mut StoredLeaves,
    ) -> Result<Vec<Hash>, LedgerError> {
        if let Some(why) = &self.broken {
            return Err(LedgerError::Storage(why.clone()));
        }
        let edge = match &self.edge {
            Some(edge) if edge.size() == size => edge,
            _ => self.edge.insert(self.tree.right_edge(size, leaves)?),
        };
        Ok(self.tree.inclusion_proof_at(edge, index, leaves)?)
    }
}

/// The `leaves` table as the tree's [`LeafSource`]: each read is its own read transaction, so it
/// sees only committed leaves.
pub struct StoredLeaves<'a> {
    db: &'a redb::Database,
}

impl LeafSource for StoredLeaves<'_> {
    fn leaf_hashes(&mut self, start: u64, end: u64) -> Result<Vec<Hash>, String> {
        let hasher = Sha3Hasher::default();
        let r = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = r.open_table(LEAVES).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        for e in t.range(start..end).map_err(|e| e.to_string())? {
            let (k, v) = e.map_err(|e| e.to_string())?;
            let leaf = parse_leaf(k.value(), v.value()).map_err(|e| e.to_string())?;
            if leaf.index != start + out.len() as u64 {
                return Err(format!("leaf {} is missing", start + out.len() as u64));
            }
            out.push(hasher.leaf(&leaf.entry));
        }
        Ok(out)
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
        w.commit().map_err(err)?;
        let hasher = Sha3Hasher::default();
        let mut tree = TiledTree::new(hasher, TILE_HEIGHT);
        {
            let r = db.begin_read().map_err(err)?;
            let t = r.open_table(LEAVES).map_err(err)?;
            for (expect, e) in t.iter().map_err(err)?.enumerate() {
                let (k, v) = e.map_err(err)?;
                if k.value() != expect as u64 {
                    return Err(LedgerError::Corrupt(format!(
                        "leaf index {} out of sequence",
                        k.value()
                    )));
                }
                let leaf = parse_leaf(k.value(), v.value())?;
                tree.push(hasher.leaf(&leaf.entry));
            }
        }
        Ok(EmbeddedLedger {
            db,
            origin: origin.to_string(),
            signer,
            log: Mutex::new(Log {
                tree,
                edge: None,
                broken: None,
            }),
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

    /// The tree as rebuilt from storage and its leaves (for roots and consistency proofs of every
    /// checkpoint).
    pub fn with_tree<T>(
        &self,
        f: impl FnOnce(&TiledTree<Sha3Hasher>, &mut StoredLeaves) -> T,
    ) -> T {
        f(&self.log.lock().expect("lock").tree, &mut self.leaves())
    }

    /// Takes the leaves of a batch that did not commit back out of the tree.
    fn undo(&self, log: &mut Log, before: u64) {
        if let Err(e) = log.tree.truncate(before, &mut self.leaves()) {
            log.broken = Some(format!(
                "the log could not undo a failed append ({e}); restart to rebuild it from storage"
            ));
        }
    }

    fn leaves(&self) -> StoredLeaves<'_> {
        StoredLeaves { db: &self.db }
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
                tree.push(hasher.leaf(&entry));
            }
            if tree.size() == before {
                return Ok(None);
            }
            // The new size's right edge lies in the tile being filled (or is empty when the size
            // ends a tile): nothing is read from storage, which does not hold these leaves yet.
            let edge = tree.right_edge(tree.size(), &mut self.leaves())?;
            let cp = Checkpoint {
                origin: self.origin.clone(),
                size: tree.size(),
                root: tree.edge_root(&edge, &mut self.leaves())?,
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
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(CHECKPOINTS).map_err(err)?;
        let Some(last) = t.last().map_err(err)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(last.1.value()).into_owned();
        SignedCheckpoint::verify(&text, &self.verifier())
            .map(Some)
            .map_err(|e| LedgerError::Corrupt(format!("checkpoint {}: {e}", last.0.value())))
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
                .inclusion_proof(index, size, &mut self.leaves())?;
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
        ledger.with_tree(|tree, leaves| {
            for (size, text) in &checkpoints {
                let cp = SignedCheckpoint::verify(text, &ledger.verifier()).unwrap();
                assert_eq!(
                    tree.root(*size, leaves).unwrap(),
                    cp.checkpoint.root,
                    "{size}"
                );
            }
        });
        ledger.append_records(&[record(1_000)], 100).unwrap();
        assert_proves(&ledger, 1_000);
        assert_proves(&ledger, 5);
    }
}
