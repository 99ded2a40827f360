//! The hasher the gateway writes its log with: RFC 9162 tree hashing (the domain separation of
//! `medanchor-merkle`, [`rfc9162_leaf`] and [`rfc9162_node`]) over `medanchor-sha3`, the same
//! SHA3-256 as the record commitments, vectorised where the CPU allows.
//!
//! Auditors verify with `medanchor-merkle`'s [`Sha3Hasher`](medanchor_merkle::Sha3Hasher), which
//! hashes with RustCrypto's `sha3` instead, so a bug in this hash cannot also pass the check.
//! `tests/hash_agreement.rs` shows the two agree on the merkle crate's vectors and on random
//! inputs.

use medanchor_merkle::{rfc9162_empty, rfc9162_leaf, rfc9162_node, Hash, TreeHasher};
use medanchor_sha3::Sha3_256;

/// RFC 9162 with `medanchor-sha3`'s SHA3-256: the hasher of the gateway's own tree.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogHasher;

impl TreeHasher for LogHasher {
    fn empty(&self) -> Hash {
        rfc9162_empty(Sha3_256::digest_parts)
    }

    fn leaf(&self, entry: &[u8]) -> Hash {
        rfc9162_leaf(Sha3_256::digest_parts, entry)
    }

    fn node(&self, left: &Hash, right: &Hash) -> Hash {
        rfc9162_node(Sha3_256::digest_parts, left, right)
    }
}
