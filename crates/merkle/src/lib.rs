//! RFC 9162 Merkle tree hashing, inclusion and consistency proofs, and signed checkpoints.
//!
//! This crate is what an auditor needs to check a medanchor proof without the gateway: it has no
//! I/O, no async and no storage. The gateway uses the same code to build its log, so the prover and
//! the verifier cannot drift apart.
//!
//! ```
//! use medanchor_merkle::{MemoryTree, Sha3Hasher, TreeHasher, verify_inclusion};
//!
//! let hasher = Sha3Hasher;
//! let mut tree = MemoryTree::new(hasher);
//! for i in 0u8..10 {
//!     tree.push(hasher.leaf(&[i]));
//! }
//! let root = tree.root(10).unwrap();
//! let path = tree.inclusion_proof(3, 10).unwrap();
//! verify_inclusion(&hasher, 3, 10, &hasher.leaf(&[3]), &path, &root).unwrap();
//! ```

mod bundle;
mod checkpoint;
mod hasher;
mod proof;
mod tree;

pub use bundle::{record_leaf, BundleError, ProofBundle, BUNDLE_FORMAT, LEAF_RECORD_STORED};
pub use checkpoint::{
    key_hash, Checkpoint, CheckpointError, NoteSigner, NoteVerifier, SignedCheckpoint,
};
pub use hasher::{Hash, Rfc9162, Sha256Hasher, Sha3Hasher, TreeHasher};
pub use proof::{verify_consistency, verify_inclusion, ProofError};
pub use tree::{MemoryTree, RightEdge, TileSource, TiledTree, TreeError};
