//! Merkle trees that answer roots and proofs for any earlier size.
//!
//! [`MemoryTree`] holds every full subtree hash. [`TiledTree`] holds only the hashes above
//! fixed-height tiles of leaves, plus the tile being filled; each full tile's hashes are handed to
//! the caller to store once and read back (a [`TileSource`]) when a proof reaches into it, so a
//! log's memory stays flat as it grows. Both run the same RFC 9162 recursion over [`Nodes`].

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
    #[error("reading tile {tile}: {reason}")]
    Source { tile: u64, reason: String },
    #[error("stored tile {tile} is malformed or does not end in the tile root held in memory")]
    TileMismatch { tile: u64 },
    #[error("{leaves} leaves given for the partial tile, which holds fewer than {tile_leaves}")]
    PartialTileTooLong { leaves: u64, tile_leaves: u64 },
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

/// Where the RFC 9162 recursion finds the hash of a full subtree.
trait Nodes {
    type Hasher: TreeHasher;
    fn hasher(&self) -> &Self::Hasher;
    fn size(&self) -> u64;
    /// MTH of leaves `[index·2^level, (index+1)·2^level)`, a range below `size()`.
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, TreeError>;
}

fn split_point(n: u64) -> u64 {
    // Largest power of two strictly smaller than n (n >= 2).
    1 << (63 - (n - 1).leading_zeros())
}

fn check_size(have: u64, asked: u64) -> Result<(), TreeError> {
    if asked > have {
        return Err(TreeError::SizeTooLarge { asked, have });
    }
    Ok(())
}

/// See [`MemoryTree::right_edge`].
fn right_edge<N: Nodes>(nodes: &mut N, size: u64) -> Result<RightEdge, TreeError> {
    check_size(nodes.size(), size)?;
    // The ranges [s_i, size) the RFC recursion asks for start at s_i = `size` with all but
    // its top i set bits cleared; only those that are not a single full subtree are kept,
    // and edge[i] holds the i-th, so a range's slot is the popcount of its start.
    let parts = size.count_ones() as usize;
    let mut edge = vec![[0u8; 32]; parts.saturating_sub(1)];
    if parts >= 2 {
        // Walk from the smallest full subtree at the right end back to the left.
        let lowest = size.trailing_zeros();
        let mut acc = nodes.node(lowest, (size >> lowest) - 1)?;
        let mut bits = size & (size - 1);
        for i in (0..parts - 1).rev() {
            let level = bits.trailing_zeros();
            let start = bits & (bits - 1);
            let left = nodes.node(level, start >> level)?;
            acc = nodes.hasher().node(&left, &acc);
            edge[i] = acc;
            bits = start;
        }
    }
    Ok(RightEdge { size, edge })
}

/// MTH(D[start:end]) for a range the RFC recursion produces within the tree of `edge`.
fn subtree<N: Nodes>(
    nodes: &mut N,
    edge: &RightEdge,
    start: u64,
    end: u64,
) -> Result<Hash, TreeError> {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        let level = n.trailing_zeros();
        return nodes.node(level, start >> level);
    }
    debug_assert_eq!(end, edge.size, "only the right edge holds partial subtrees");
    Ok(edge.edge[start.count_ones() as usize])
}

fn edge_root<N: Nodes>(nodes: &mut N, edge: &RightEdge) -> Result<Hash, TreeError> {
    // A truncated tree would make the edge stale.
    check_size(nodes.size(), edge.size)?;
    if edge.size == 0 {
        return Ok(nodes.hasher().empty());
    }
    subtree(nodes, edge, 0, edge.size)
}

fn inclusion_proof_at<N: Nodes>(
    nodes: &mut N,
    edge: &RightEdge,
    index: u64,
) -> Result<Vec<Hash>, TreeError> {
    check_size(nodes.size(), edge.size)?;
    let size = edge.size;
    if index >= size {
        return Err(TreeError::IndexOutOfRange { index, size });
    }
    // RFC 9162 §2.1.3.1, walked top-down; the path lists the siblings bottom-up.
    let mut levels = Vec::with_capacity(64 - size.leading_zeros() as usize);
    let (mut m, mut start, mut end) = (index, 0, size);
    while end - start > 1 {
        let k = split_point(end - start);
        if m < k {
            levels.push((start + k, end));
            end = start + k;
        } else {
            levels.push((start, start + k));
            m -= k;
            start += k;
        }
    }
    levels
        .into_iter()
        .rev()
        .map(|(s, e)| subtree(nodes, edge, s, e))
        .collect()
}

fn consistency_proof<N: Nodes>(
    nodes: &mut N,
    first: u64,
    second: u64,
) -> Result<Vec<Hash>, TreeError> {
    let edge = right_edge(nodes, second)?;
    if first > second {
        return Err(TreeError::SizesOutOfOrder { first, second });
    }
    if first == 0 || first == second {
        return Ok(Vec::new());
    }
    // RFC 9162 §2.1.4.1 SUBPROOF, walked top-down; the proof lists the hashes bottom-up.
    let mut ranges = Vec::new();
    let (mut m, mut start, mut end, mut whole) = (first, 0, second, true);
    loop {
        let n = end - start;
        if m == n {
            if !whole {
                ranges.push((start, end));
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            ranges.push((start + k, end));
            end = start + k;
        } else {
            ranges.push((start, start + k));
            m -= k;
            start += k;
            whole = false;
        }
    }
    ranges
        .into_iter()
        .rev()
        .map(|(s, e)| subtree(nodes, &edge, s, e))
        .collect()
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

/// A [`MemoryTree`] as [`Nodes`]: every lookup is an index.
struct Held<'a, H>(&'a MemoryTree<H>);

impl<H: TreeHasher> Nodes for Held<'_, H> {
    type Hasher = H;
    fn hasher(&self) -> &H {
        &self.0.hasher
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, TreeError> {
        Ok(self.0.levels[level as usize][index as usize])
    }
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

    /// Precomputes the right edge of the tree of the first `size` leaves: the O(log n) subtree
    /// hashes that are not stored because their range ends at `size` inside a subtree that is not
    /// full yet. Proofs against that size then cost lookups only, so a log serving proofs for its
    /// latest checkpoint computes this once per checkpoint rather than once per proof.
    pub fn right_edge(&self, size: u64) -> Result<RightEdge, TreeError> {
        right_edge(&mut Held(self), size)
    }

    /// Root of the tree made of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, TreeError> {
        let edge = self.right_edge(size)?;
        self.edge_root(&edge)
    }

    /// Root of the tree `edge` was computed for.
    pub fn edge_root(&self, edge: &RightEdge) -> Result<Hash, TreeError> {
        edge_root(&mut Held(self), edge)
    }

    /// RFC 9162 §2.1.3.1 inclusion path of leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
        let edge = self.right_edge(size)?;
        self.inclusion_proof_at(&edge, index)
    }

    /// Inclusion path of leaf `index` in the tree `edge` was computed for; no hashing.
    pub fn inclusion_proof_at(&self, edge: &RightEdge, index: u64) -> Result<Vec<Hash>, TreeError> {
        inclusion_proof_at(&mut Held(self), edge, index)
    }

    /// RFC 9162 §2.1.4.1 consistency proof between the trees of `first` and `second` leaves.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, TreeError> {
        consistency_proof(&mut Held(self), first, second)
    }

    /// The root of a full tree of `2^level` leaves.
    fn full_root(&self, level: u32) -> Hash {
        self.levels[level as usize][0]
    }

    /// Every node of a full tree of `2^height` leaves, level by level from the leaves up to the
    /// root (`2^(height+1) - 1` hashes), concatenated: the stored form of a tile.
    fn tile_bytes(&self, height: u32) -> Vec<u8> {
        self.levels[..=height as usize].concat().concat()
    }
}

/// Reads back the tiles a [`TiledTree`] handed out as they filled.
///
/// A stored tile is the concatenation of its `2^(h+1) - 1` node hashes, level by level from the
/// leaves up to the tile root (h = the tree's tile height); level `l` starts at hash
/// `2^(h+1) - 2^(h+1-l)`.
pub trait TileSource {
    /// A tile's bytes; a borrowed view of storage where it has one, so a proof copies nothing.
    type Tile: AsRef<[u8]>;
    /// Full tile `index`, exactly as [`TiledTree::push`] returned it.
    fn tile(&mut self, index: u64) -> Result<Self::Tile, String>;
}

/// Offset (in hashes) of level `level`'s first node in a stored tile of `height`.
fn level_offset(height: u32, level: u32) -> usize {
    (1usize << (height + 1)) - (1usize << (height + 1 - level))
}

/// A tree that keeps in memory only the nodes at or above `height`: the roots of full tiles of
/// `2^height` leaves and the subtrees above them, plus every node of the tile being filled.
///
/// Memory is about two hashes per tile (0.25 bytes per leaf at height 8). When a tile fills,
/// [`TiledTree::push`] returns its bytes for the caller to store; a node below `height` in a full
/// tile is then one lookup in that tile, read back through a [`TileSource`] and checked for
/// length and root, so a proof reads at most one tile (two for an older tree size) and hashes
/// nothing.
#[derive(Clone, Debug)]
pub struct TiledTree<H> {
    height: u32,
    /// A tree whose leaves are the roots of the full tiles.
    tiles: MemoryTree<H>,
    /// The tile being filled.
    tail: MemoryTree<H>,
}

/// A [`TiledTree`] with its stored tiles as [`Nodes`]; keeps the one tile read last.
struct Tiled<'a, H, S: TileSource + ?Sized> {
    tree: &'a TiledTree<H>,
    source: &'a mut S,
    tile: Option<(u64, S::Tile)>,
}

impl<H: TreeHasher, S: TileSource + ?Sized> Tiled<'_, H, S> {
    /// Tile `tile` as stored, checked for length and root.
    fn load(&mut self, tile: u64) -> Result<&[u8], TreeError> {
        if !matches!(&self.tile, Some((t, _)) if *t == tile) {
            let nodes = self
                .source
                .tile(tile)
                .map_err(|reason| TreeError::Source { tile, reason })?;
            let root_at = level_offset(self.tree.height, self.tree.height) * 32;
            let bytes = nodes.as_ref();
            if bytes.len() != root_at + 32
                || bytes[root_at..] != Held(&self.tree.tiles).node(0, tile)?
            {
                return Err(TreeError::TileMismatch { tile });
            }
            self.tile = Some((tile, nodes));
        }
        Ok(self.tile.as_ref().expect("just read").1.as_ref())
    }
}

impl<H: TreeHasher, S: TileSource + ?Sized> Nodes for Tiled<'_, H, S> {
    type Hasher = H;
    fn hasher(&self) -> &H {
        self.tree.hasher()
    }
    fn size(&self) -> u64 {
        self.tree.size()
    }
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, TreeError> {
        let height = self.tree.height;
        if level >= height {
            return Held(&self.tree.tiles).node(level - height, index);
        }
        let tile = index >> (height - level);
        let within = index - (tile << (height - level));
        if tile == self.tree.tiles.size() {
            return Held(&self.tree.tail).node(level, within);
        }
        let at = (level_offset(height, level) + within as usize) * 32;
        let bytes = self.load(tile)?;
        Ok(bytes[at..at + 32].try_into().expect("32 bytes"))
    }
}

impl<H: TreeHasher> TiledTree<H> {
    /// A tree with tiles of `2^height` leaves (height at most 16: a stored tile is
    /// `2^(height+1) - 1` hashes).
    pub fn new(hasher: H, height: u32) -> Self {
        assert!(height <= 16, "tile height {height} is above 16");
        TiledTree {
            height,
            tiles: MemoryTree::new(hasher),
            tail: MemoryTree::new(hasher),
        }
    }

    /// The tree [`TiledTree::new`] followed by pushing every leaf would be, rebuilt from what a
    /// log stores: the roots of its full tiles in order (the last 32 bytes of each tile
    /// [`TiledTree::push`] returned) and the leaf hashes of the partial tile after them (fewer
    /// than `2^height`). Costs about one node hash per tile and one per partial-tile leaf,
    /// instead of two per leaf.
    ///
    /// The tile roots are taken as given: a proof into a stored tile still checks the tile's
    /// bytes against its root, but a wrong root only shows as a wrong tree root.
    pub fn restore(
        hasher: H,
        height: u32,
        tile_roots: impl IntoIterator<Item = Hash>,
        partial_tile: impl IntoIterator<Item = Hash>,
    ) -> Result<Self, TreeError> {
        let mut tree = TiledTree::new(hasher, height);
        for root in tile_roots {
            tree.tiles.push(root);
        }
        for leaf in partial_tile {
            tree.tail.push(leaf);
            if tree.tail.size() >= 1 << height {
                return Err(TreeError::PartialTileTooLong {
                    leaves: tree.tail.size(),
                    tile_leaves: 1 << height,
                });
            }
        }
        Ok(tree)
    }

    pub fn hasher(&self) -> &H {
        self.tiles.hasher()
    }

    /// The tile height: full tiles hold `2^height` leaves.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Number of full tiles.
    pub fn full_tiles(&self) -> u64 {
        self.tiles.size()
    }

    /// Root of full tile `index` (what [`TiledTree::restore`] takes back).
    pub fn tile_root(&self, index: u64) -> Option<&Hash> {
        self.tiles.leaf(index)
    }

    /// Leaf hashes of the partial tile after the full ones.
    pub fn partial_tile(&self) -> &[Hash] {
        &self.tail.levels[0]
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        (self.tiles.size() << self.height) + self.tail.size()
    }

    /// Appends a leaf hash (already hashed with [`TreeHasher::leaf`]). When this leaf fills a
    /// tile, returns the tile's index and bytes: the caller stores them for its [`TileSource`].
    pub fn push(&mut self, leaf_hash: Hash) -> Option<(u64, Vec<u8>)> {
        self.tail.push(leaf_hash);
        if self.tail.size() < 1 << self.height {
            return None;
        }
        let nodes = self.tail.tile_bytes(self.height);
        let index = self.tiles.size();
        self.tiles.push(self.tail.full_root(self.height));
        self.tail.truncate(0);
        Some((index, nodes))
    }

    /// Drops every leaf from `size` on (to undo appends whose storage commit failed). When `size`
    /// falls in a full tile, that tile's leaves are read back from `source`.
    pub fn truncate<S: TileSource + ?Sized>(
        &mut self,
        size: u64,
        source: &mut S,
    ) -> Result<(), TreeError> {
        if size >= self.size() {
            return Ok(());
        }
        let tile = size >> self.height;
        let keep = (size - (tile << self.height)) as usize;
        if tile < self.tiles.size() {
            let mut nodes = self.nodes(source);
            let leaves = nodes.load(tile)?[..keep * 32].to_vec();
            self.tiles.truncate(tile);
            self.tail.truncate(0);
            for leaf in leaves.chunks_exact(32) {
                self.tail.push(leaf.try_into().expect("32 bytes"));
            }
        } else {
            self.tail.truncate(keep as u64);
        }
        Ok(())
    }

    fn nodes<'a, S: TileSource + ?Sized>(&'a self, source: &'a mut S) -> Tiled<'a, H, S> {
        Tiled {
            tree: self,
            source,
            tile: None,
        }
    }

    /// See [`MemoryTree::right_edge`].
    pub fn right_edge<S: TileSource + ?Sized>(
        &self,
        size: u64,
        source: &mut S,
    ) -> Result<RightEdge, TreeError> {
        right_edge(&mut self.nodes(source), size)
    }

    /// Root of the tree made of the first `size` leaves.
    pub fn root<S: TileSource + ?Sized>(
        &self,
        size: u64,
        source: &mut S,
    ) -> Result<Hash, TreeError> {
        let mut nodes = self.nodes(source);
        let edge = right_edge(&mut nodes, size)?;
        edge_root(&mut nodes, &edge)
    }

    /// Root of the tree `edge` was computed for.
    pub fn edge_root<S: TileSource + ?Sized>(
        &self,
        edge: &RightEdge,
        source: &mut S,
    ) -> Result<Hash, TreeError> {
        edge_root(&mut self.nodes(source), edge)
    }

    /// Inclusion path of leaf `index` in the tree `edge` was computed for.
    pub fn inclusion_proof_at<S: TileSource + ?Sized>(
        &self,
        edge: &RightEdge,
        index: u64,
        source: &mut S,
    ) -> Result<Vec<Hash>, TreeError> {
        inclusion_proof_at(&mut self.nodes(source), edge, index)
    }

    /// RFC 9162 §2.1.4.1 consistency proof between the trees of `first` and `second` leaves.
    pub fn consistency_proof<S: TileSource + ?Sized>(
        &self,
        first: u64,
        second: u64,
        source: &mut S,
    ) -> Result<Vec<Hash>, TreeError> {
        consistency_proof(&mut self.nodes(source), first, second)
    }
}
