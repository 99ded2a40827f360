//! A [`TiledTree`] must answer exactly what a [`MemoryTree`] over the same leaves answers, for
//! every size and tile height, and must refuse (not mis-answer) when its storage is damaged.

use medanchor_merkle::{
    verify_inclusion, Hash, MemoryTree, Sha3Hasher, TileSource, TiledTree, TreeError, TreeHasher,
};

/// Tile storage as a vector; counts reads so tests can see how much a proof costs.
#[derive(Default)]
struct Stored {
    tiles: Vec<Vec<u8>>,
    reads: usize,
    fail: bool,
}

impl TileSource for Stored {
    type Tile = Vec<u8>;
    fn tile(&mut self, index: u64) -> Result<Vec<u8>, String> {
        if self.fail {
            return Err("disk on fire".into());
        }
        self.reads += 1;
        Ok(self.tiles[index as usize].clone())
    }
}

fn leaves(n: u32) -> Vec<Hash> {
    let hr = Sha3Hasher;
    (0..n).map(|i| hr.leaf(&i.to_be_bytes())).collect()
}

/// The same leaves in a memory tree and a tiled tree, with the tiles the latter handed out.
fn both(leaves: &[Hash], height: u32) -> (MemoryTree<Sha3Hasher>, TiledTree<Sha3Hasher>, Stored) {
    let hr = Sha3Hasher;
    let mut memory = MemoryTree::new(hr);
    let mut tiled = TiledTree::new(hr, height);
    let mut stored = Stored::default();
    for l in leaves {
        memory.push(*l);
        if let Some((index, nodes)) = tiled.push(*l) {
            assert_eq!(index as usize, stored.tiles.len(), "tiles come in order");
            assert_eq!(nodes.len(), ((1 << (height + 1)) - 1) * 32);
            stored.tiles.push(nodes);
        }
    }
    (memory, tiled, stored)
}

#[test]
fn every_size_and_height_answers_like_the_memory_tree() {
    let all = leaves(48);
    for height in [0, 1, 2, 3, 5] {
        let (memory, tiled, mut store) = both(&all, height);
        assert_eq!(tiled.size(), 48);
        for n in 1..=48u64 {
            let root = memory.root(n).unwrap();
            assert_eq!(
                tiled.root(n, &mut store).unwrap(),
                root,
                "root {n} h{height}"
            );
            let edge = tiled.right_edge(n, &mut store).unwrap();
            assert_eq!(edge, memory.right_edge(n).unwrap(), "edge {n} h{height}");
            for m in 0..n {
                let before = store.reads;
                let p = tiled.inclusion_proof_at(&edge, m, &mut store).unwrap();
                // m's tile, and for an older size the full tile its right edge ends in.
                assert!(store.reads - before <= 2, "tile reads per proof");
                assert_eq!(
                    p,
                    memory.inclusion_proof(m, n).unwrap(),
                    "path {m}/{n} h{height}"
                );
                verify_inclusion(memory.hasher(), m, n, &all[m as usize], &p, &root).unwrap();
            }
            for m in 0..=n {
                assert_eq!(
                    tiled.consistency_proof(m, n, &mut store).unwrap(),
                    memory.consistency_proof(m, n).unwrap(),
                    "consistency {m}->{n} h{height}"
                );
            }
        }
    }
}

#[test]
fn proofs_for_the_latest_size_of_a_large_tree_read_one_tile() {
    let all = leaves(10_000);
    let (memory, tiled, mut store) = both(&all, 8);
    let edge = tiled.right_edge(10_000, &mut store).unwrap();
    // The right edge of the newest size lies in the tile being filled: no reads.
    assert_eq!(store.reads, 0);
    for m in [0, 255, 256, 4_097, 9_983, 9_984, 9_999] {
        let before = store.reads;
        let p = tiled.inclusion_proof_at(&edge, m, &mut store).unwrap();
        assert_eq!(p, memory.inclusion_proof(m, 10_000).unwrap(), "path {m}");
        let want = usize::from(m < 9_984);
        assert_eq!(store.reads - before, want, "reads for leaf {m}");
    }
}

#[test]
fn truncate_back_into_a_full_tile_reads_it_back() {
    let all = leaves(100);
    for (from, to) in [
        (100, 97),
        (100, 64),
        (100, 63),
        (100, 1),
        (100, 0),
        (64, 60),
        (17, 16),
    ] {
        let (_, mut tiled, mut store) = both(&all[..from], 4);
        tiled.truncate(to as u64, &mut store).unwrap();
        assert_eq!(tiled.size(), to as u64);
        // Grow both again and compare every root: the rebuilt tail must be the real one, and
        // the tiles it fills again must be the ones stored before.
        let (mut memory, _, _) = both(&all[..to], 4);
        for l in &all[to..] {
            memory.push(*l);
            if let Some((index, nodes)) = tiled.push(*l) {
                store.tiles.truncate(index as usize);
                store.tiles.push(nodes);
            }
        }
        for n in 0..=100 {
            assert_eq!(
                tiled.root(n, &mut store).unwrap(),
                memory.root(n).unwrap(),
                "{from}->{to}, root {n}"
            );
        }
    }
    let (_, mut tiled, mut store) = both(&all, 4);
    tiled.truncate(200, &mut store).unwrap();
    assert_eq!(
        tiled.size(),
        100,
        "truncating above the size keeps everything"
    );
}

#[test]
fn damaged_or_failing_storage_is_an_error_never_a_panic() {
    let all = leaves(40);
    let (_, tiled, mut store) = both(&all, 3);
    let edge = tiled.right_edge(40, &mut store).unwrap();
    // Tile 2 (leaves 16..24) comes back with a different root, truncated, or with trailing
    // bytes: refused for that tile, while other tiles still prove.
    let good = store.tiles[2].clone();
    for (name, damaged) in [
        ("wrong root", {
            let mut t = good.clone();
            *t.last_mut().unwrap() ^= 1;
            t
        }),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("trailing", {
            let mut t = good.clone();
            t.push(0);
            t
        }),
        ("empty", Vec::new()),
        ("not whole hashes", good[..good.len() - 7].to_vec()),
    ] {
        store.tiles[2] = damaged;
        assert_eq!(
            tiled.inclusion_proof_at(&edge, 17, &mut store),
            Err(TreeError::TileMismatch { tile: 2 }),
            "{name}"
        );
        tiled.inclusion_proof_at(&edge, 3, &mut store).unwrap();
    }
    store.tiles[2] = good;
    store.fail = true;
    assert!(matches!(
        tiled.inclusion_proof_at(&edge, 9, &mut store),
        Err(TreeError::Source { tile: 1, .. })
    ));
    // Sizes beyond the tree are refused as by the memory tree.
    assert!(matches!(
        tiled.root(41, &mut store),
        Err(TreeError::SizeTooLarge {
            asked: 41,
            have: 40
        })
    ));
}

/// Rebuilds `tiled` from what a log stores: the tile roots (the last hash of each stored tile)
/// and the partial tile's leaves.
fn restored(tiled: &TiledTree<Sha3Hasher>, store: &Stored) -> TiledTree<Sha3Hasher> {
    let height = tiled.height();
    let roots = store.tiles.iter().map(|t| {
        let root: Hash = t[t.len() - 32..].try_into().unwrap();
        root
    });
    TiledTree::restore(
        Sha3Hasher,
        height,
        roots,
        tiled.partial_tile().iter().copied(),
    )
    .unwrap()
}

#[test]
fn a_tree_restored_from_tile_roots_and_the_partial_tile_equals_the_pushed_one() {
    let all = leaves(70);
    for height in [0, 1, 3, 4] {
        let tile = 1usize << height;
        // Sizes around every tile boundary, the empty tree and one full tile.
        let mut sizes: Vec<usize> = (0..=70 / tile)
            .flat_map(|t| [t * tile, t * tile + 1, (t * tile).saturating_sub(1)])
            .filter(|&n| n <= 70)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        for n in sizes {
            let (memory, pushed, mut store) = both(&all[..n], height);
            let mut tree = restored(&pushed, &store);
            assert_eq!(tree.size(), n as u64, "size {n} h{height}");
            assert_eq!(tree.full_tiles(), pushed.full_tiles());
            for m in 0..=n as u64 {
                assert_eq!(
                    tree.root(m, &mut store).unwrap(),
                    memory.root(m).unwrap(),
                    "root {m} of {n} h{height}"
                );
                let edge = tree.right_edge(m, &mut store).unwrap();
                assert_eq!(edge, pushed.right_edge(m, &mut store).unwrap());
                for i in 0..m {
                    assert_eq!(
                        tree.inclusion_proof_at(&edge, i, &mut store).unwrap(),
                        memory.inclusion_proof(i, m).unwrap(),
                        "path {i}/{m} of {n} h{height}"
                    );
                }
                assert_eq!(
                    tree.consistency_proof(m, n as u64, &mut store).unwrap(),
                    memory.consistency_proof(m, n as u64).unwrap(),
                    "consistency {m}->{n} h{height}"
                );
            }
            // Growing the restored tree hands out the same tiles as growing the pushed one.
            let mut pushed = pushed;
            for l in &all[n..] {
                assert_eq!(tree.push(*l), pushed.push(*l), "after {n} h{height}");
            }
            for (i, t) in store.tiles.iter().enumerate() {
                assert_eq!(t[t.len() - 32..], tree.tile_root(i as u64).unwrap()[..]);
            }
            let (memory, _, mut grown) = both(&all, height);
            assert_eq!(tree.root(70, &mut grown).unwrap(), memory.root(70).unwrap());
        }
    }
}

#[test]
fn a_partial_tile_of_a_whole_tile_or_more_is_refused() {
    let all = leaves(16);
    for n in [16, 17] {
        let leaves: Vec<Hash> = all.iter().cycle().take(n).copied().collect();
        assert_eq!(
            TiledTree::restore(Sha3Hasher, 4, [], leaves).err(),
            Some(TreeError::PartialTileTooLong {
                leaves: 16,
                tile_leaves: 16
            })
        );
    }
    assert!(TiledTree::restore(Sha3Hasher, 4, [], all[..15].iter().copied()).is_ok());
}
