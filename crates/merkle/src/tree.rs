//! An in-memory Merkle tree that answers roots and proofs for any earlier size.

use crate::hasher::{Hash, TreeHasher};

/// Why a tree could not answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("tree size {asked} is larger than the {have} leaves held")]
    SizeTooLarge { asked: u64, have: u64 },
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("first size {first} is larger than second size {second}")]
    SizesOutOfOrder { first: u64, second: u64 },
}

/// Holds every full subtree hash: `levels[k][i]` covers leaves `[i·2^k, (i+1)·2^k)`.
///
/// Memory is about two hashes per leaf. Any subtree the RFC 9162 recursion asks for is either one
/// stored node or a right edge built from O(log n) stored nodes, so a proof costs O(log² n) hashes
/// at worst and usually far fewer.
#[derive(Clone, Debug)]
pub struct MemoryTree<H> {
    hasher: H,
    levels: Vec<Vec<Hash>>,
}

/// The hashes of the partial subtrees along the right edge of the tree of one size
/// (see [`MemoryTree::right_edge`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RightEdge {
    size: u64,
    edge: Vec<Hash>,
}

impl RightEdge {
    /// The tree size this edge belongs to.
    pub fn size(&self) -> u64 {
        self.size
    }
}

fn split_point(n: u64) -> u64 {
    // Largest power of two strictly smaller than n (n >= 2).
    1 << (63 - (n - 1).leading_zeros())
}

impl<H: TreeHasher> MemoryTree<H> {
    pub fn new(hasher: H) -> Self {
        MemoryTree {
            hasher,
            levels: vec![Vec::new()],
        }
    }

    pub fn hasher(&self) -> &H {
        &self.hasher
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels[0].len() as u64
    }

    /// Leaf hash at `index`, if present.
    pub fn leaf(&self, index: u64) -> Option<&Hash> {
        self.levels[0].get(usize::try_from(index).ok()?)
    }

    /// Drops every leaf from `size` on (to undo appends whose storage commit failed).
    pub fn truncate(&mut self, size: u64) {
        for (k, level) in self.levels.iter_mut().enumerate() {
            level.truncate((size >> k) as usize);
        }
    }

    /// Appends a leaf hash (already hashed with [`TreeHasher::leaf`]).
    pub fn push(&mut self, leaf_hash: Hash) {
        self.levels[0].push(leaf_hash);
        let mut level = 0;
        while self.levels[level].len().is_multiple_of(2) {
            let len = self.levels[level].len();
            let parent = self
                .hasher
                .node(&self.levels[level][len - 2], &self.levels[level][len - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
    }

    fn check_size(&self, size: u64) -> Result<(), TreeError> {
        if size > self.size() {
            return Err(TreeError::SizeTooLarge {
                asked: size,
                have: self.size(),
            });
        }
        Ok(())
    }

    /// Precomputes the right edge of the tree of the first `size` leaves: the O(log n) subtree
    /// hashes that are not stored because their range ends at `size` inside a subtree that is not
    /// full yet. Proofs against that size then cost lookups only, so a log serving proofs for its
    /// latest checkpoint computes this once per checkpoint rather than once per proof.
    pub fn right_edge(&self, size: u64) -> Result<RightEdge, TreeError> {
        self.check_size(size)?;
        // The ranges [s_i, size) the RFC recursion asks for start at s_i = `size` with all but
        // its top i set bits cleared; only those that are not a single full subtree are stored,
        // and edge[i] holds the i-th, so a range's slot is the popcount of its start.
        let parts = size.count_ones() as usize;
        let mut edge = vec![[0u8; 32]; parts.saturating_sub(1)];
        if parts >= 2 {
            // Walk from the smallest full subtree at the right end back to the left.
            let lowest = size.trailing_zeros() as usize;
            let mut acc = self.levels[lowest][((size >> lowest) - 1) as usize];
            let mut bits = size & (size - 1);
            for i in (0..parts - 1).rev() {
                let level = bits.trailing_zeros() as usize;
                let start = bits & (bits - 1);
                acc = self
                    .hasher
                    .node(&self.levels[level][(start >> level) as usize], &acc);
                edge[i] = acc;
                bits = start;
            }
        }
        Ok(RightEdge { size, edge })
    }

    /// MTH(D[start:end]) for a range the RFC recursion produces within the tree of `edge`.
    fn subtree(&self, edge: &RightEdge, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(start >> level) as usize];
        }
        debug_assert_eq!(end, edge.size, "only the right edge holds partial subtrees");
        edge.edge[start.count_ones() as usize]
    }

    /// Root of the tree made of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, TreeError> {
        let edge = self.right_edge(size)?;
        Ok(self.edge_root(&edge))
    }

    /// Root of the tree `edge` was computed for.
    pub fn edge_root(&self, edge: &RightEdge) -> Hash {
        if edge.size == 0 {
            return self.hasher.empty();
        }
        self.subtree(edge, 0, edge.size)
    }

    /// RFC 9162 §2.1.3.1 inclusion path of leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
        let edge = self.right_edge(size)?;
        self.inclusion_proof_at(&edge, index)
    }

    /// Inclusion path of leaf `index` in the tree `edge` was computed for; no hashing.
    pub fn inclusion_proof_at(&self, edge: &RightEdge, index: u64) -> Result<Vec<Hash>, TreeError> {
        // A truncated tree would make the edge stale.
        self.check_size(edge.size)?;
        let size = edge.size;
        if index >= size {
            return Err(TreeError::IndexOutOfRange { index, size });
        }
        let mut path = Vec::with_capacity(64 - size.leading_zeros() as usize);
        self.path(edge, index, 0, size, &mut path);
        Ok(path)
    }

    fn path(&self, edge: &RightEdge, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split_point(n);
        if m < k {
            self.path(edge, m, start, start + k, out);
            out.push(self.subtree(edge, start + k, end));
        } else {
            self.path(edge, m - k, start + k, end, out);
            out.push(self.subtree(edge, start, start + k));
        }
    }

    /// RFC 9162 §2.1.4.1 consistency proof between the trees of `first` and `second` leaves.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, TreeError> {
        let edge = self.right_edge(second)?;
        if first > second {
            return Err(TreeError::SizesOutOfOrder { first, second });
        }
        let mut out = Vec::new();
        if first == 0 || first == second {
            return Ok(out);
        }
        self.subproof(&edge, first, 0, second, true, &mut out);
        Ok(out)
    }

    fn subproof(
        &self,
        edge: &RightEdge,
        m: u64,
        start: u64,
        end: u64,
        whole: bool,
        out: &mut Vec<Hash>,
    ) {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(self.subtree(edge, start, end));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(edge, m, start, start + k, whole, out);
            out.push(self.subtree(edge, start + k, end));
        } else {
            self.subproof(edge, m - k, start + k, end, false, out);
            out.push(self.subtree(edge, start, start + k));
        }
    }
}
