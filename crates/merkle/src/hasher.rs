use std::marker::PhantomData;

use digest::{consts::U32, Digest, OutputSizeUser};

/// A 32-byte tree hash.
pub type Hash = [u8; 32];

/// Leaf and interior-node hashing of a Merkle tree.
pub trait TreeHasher: Copy + Send + Sync + 'static {
    /// Hash of the empty tree.
    fn empty(&self) -> Hash;
    /// Hash of a leaf entry (domain-separated from interior nodes).
    fn leaf(&self, entry: &[u8]) -> Hash;
    /// Hash of an interior node from its two children.
    fn node(&self, left: &Hash, right: &Hash) -> Hash;
}

/// RFC 9162 §2.1.1 hashing over any 32-byte digest: `leaf = H(0x00 || entry)`,
/// `node = H(0x01 || left || right)`, empty tree = `H()`.
pub struct Rfc9162<D>(PhantomData<fn() -> D>);

impl<D> Default for Rfc9162<D> {
    fn default() -> Self {
        Rfc9162(PhantomData)
    }
}
impl<D> Clone for Rfc9162<D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D> Copy for Rfc9162<D> {}
impl<D> std::fmt::Debug for Rfc9162<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rfc9162")
    }
}

/// The hasher medanchor's log is verified with: RFC 9162 with SHA3-256 from RustCrypto's `sha3`
/// crate, the reference implementation. The gateway writes the log with its own SHA3-256
/// (`medanchor-sha3`, vectorised); verifying with a different implementation means a bug in the
/// writer's hash cannot also hide in the check (see the crate docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sha3Hasher;
/// RFC 9162 with SHA-256, as in the RFC 6962/9162 test vectors.
pub type Sha256Hasher = Rfc9162<sha2::Sha256>;

/// RFC 9162 §2.1.1 hash of the empty tree over `hash`, a function that hashes the concatenation
/// of its parts: `H()`. With [`rfc9162_leaf`] and [`rfc9162_node`] the one copy of the domain
/// separation, which other [`TreeHasher`]s (the gateway's, over its own SHA3-256) build on.
pub fn rfc9162_empty(hash: impl Fn(&[&[u8]]) -> Hash) -> Hash {
    hash(&[])
}

/// RFC 9162 §2.1.1 leaf hash: `H(0x00 || entry)`.
pub fn rfc9162_leaf(hash: impl Fn(&[&[u8]]) -> Hash, entry: &[u8]) -> Hash {
    hash(&[&[0x00], entry])
}

/// RFC 9162 §2.1.1 interior-node hash: `H(0x01 || left || right)`.
pub fn rfc9162_node(hash: impl Fn(&[&[u8]]) -> Hash, left: &Hash, right: &Hash) -> Hash {
    hash(&[&[0x01], left, right])
}

fn digest_parts<D: Digest + OutputSizeUser<OutputSize = U32>>(parts: &[&[u8]]) -> Hash {
    let mut d = D::new();
    for p in parts {
        d.update(p);
    }
    d.finalize().into()
}

impl<D> TreeHasher for Rfc9162<D>
where
    D: Digest + OutputSizeUser<OutputSize = U32> + 'static,
{
    fn empty(&self) -> Hash {
        rfc9162_empty(digest_parts::<D>)
    }

    fn leaf(&self, entry: &[u8]) -> Hash {
        rfc9162_leaf(digest_parts::<D>, entry)
    }

    fn node(&self, left: &Hash, right: &Hash) -> Hash {
        rfc9162_node(digest_parts::<D>, left, right)
    }
}

impl TreeHasher for Sha3Hasher {
    fn empty(&self) -> Hash {
        Rfc9162::<sha3::Sha3_256>::default().empty()
    }

    fn leaf(&self, entry: &[u8]) -> Hash {
        Rfc9162::<sha3::Sha3_256>::default().leaf(entry)
    }

    fn node(&self, left: &Hash, right: &Hash) -> Hash {
        Rfc9162::<sha3::Sha3_256>::default().node(left, right)
    }
}
