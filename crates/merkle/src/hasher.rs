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

/// The hasher medanchor's log uses: RFC 9162 with SHA3-256.
pub type Sha3Hasher = Rfc9162<sha3::Sha3_256>;
/// RFC 9162 with SHA-256, as in the RFC 6962/9162 test vectors.
pub type Sha256Hasher = Rfc9162<sha2::Sha256>;

fn finish<D: Digest + OutputSizeUser<OutputSize = U32>>(d: D) -> Hash {
    d.finalize().into()
}

impl<D> TreeHasher for Rfc9162<D>
where
    D: Digest + OutputSizeUser<OutputSize = U32> + 'static,
{
    fn empty(&self) -> Hash {
        finish(D::new())
    }

    fn leaf(&self, entry: &[u8]) -> Hash {
        let mut d = D::new();
        d.update([0x00]);
        d.update(entry);
        finish(d)
    }

    fn node(&self, left: &Hash, right: &Hash) -> Hash {
        let mut d = D::new();
        d.update([0x01]);
        d.update(left);
        d.update(right);
        finish(d)
    }
}
