//! RFC 9162 Merkle tree hashing, inclusion and consistency proofs, and signed checkpoints.
//!
//! This crate is what an auditor needs to check a medanchor proof without the gateway: it has no
//! I/O, no async and no storage. The gateway uses the same tree code to build its log, so the
//! prover and the verifier cannot drift apart on the RFC 9162 algorithms.
//!
//! The hash is the exception, on purpose. [`Sha3Hasher`], which [`ProofBundle::verify`] and the
//! examples here use, is SHA3-256 from RustCrypto's `sha3` crate, the reference implementation;
//! the gateway writes its log with its own SHA3-256 (`medanchor-sha3`, vectorised with AVX2 and
//! AVX-512, and a hasher of its own over [`rfc9162_leaf`] and [`rfc9162_node`]), and this crate
//! does not depend on it. If the two shared code, a bug in the fast hash would write a wrong
//! tree and verify it as right; with two implementations such a bug makes proofs fail to verify
//! instead. The gateway's tests check that both give the same leaf and node hashes, roots and
//! proofs on `testdata/vectors.json` and on random inputs, and `medanchor-sha3` is checked on
//! each of its code paths against the NIST CAVP vectors.
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

pub use bundle::{
    derived_leaf, event_leaf, record_leaf, BundleError, DerivedFrom, EventKind, ProofBundle,
    BUNDLE_FORMAT, LEAF_CONSENT_GRANTED, LEAF_CONSENT_REVOKED, LEAF_DERIVED_STORED,
    LEAF_PATIENT_ERASED, LEAF_RECORD_ACCESSED, LEAF_RECORD_STORED,
};
pub use checkpoint::{
    key_hash, Checkpoint, CheckpointError, NoteSigner, NoteVerifier, SignedCheckpoint,
};
pub use hasher::{
    rfc9162_empty, rfc9162_leaf, rfc9162_node, Hash, Rfc9162, Sha256Hasher, Sha3Hasher, TreeHasher,
};
pub use proof::{verify_consistency, verify_inclusion, ProofError};
pub use tree::{MemoryTree, RightEdge, TileSource, TiledTree, TreeError};
