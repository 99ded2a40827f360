//! A [`TiledTree`] must answer exactly what a [`MemoryTree`] over the same leaves answers, for
//! every size and tile height, and must refuse (not mis-answer) when its storage is damaged.

use medanchor_merkle::{
    verify_inclusion, Hash, LeafSource, MemoryTree, Sha3Hasher, TiledTree, TreeError, TreeHasher,
};

/// Leaf storage as a vector; counts reads so tests can see how much a proof costs.
struct Stored {
    leaves: Vec<Hash>,
    reads: usize,
    fail: bool,
}

impl LeafSource for Stored {
    fn leaf_hashes(&mut self, start: u64, end: u64) -> Result<Vec<Hash>, String> {
        if self.fail {
            return Err("disk on fire".into());
        }
        self.reads += 1;
        Ok(self.leaves[start as usize..end as usize].to_vec())
    }
}

fn leaves(n: u32) -> Vec<Hash> {
    let hr = Sha3Hasher::default();
    (0..n).map(|i| hr.leaf(&i.to_be_bytes())).collect()
}

fn both(leaves: &[Hash], height: u32) -> (MemoryTree<Sha3Hasher>, TiledTree<Sha3Hasher>) {
    let hr = Sha3Hasher::default();
    let mut memory = MemoryTree::new(hr);
    let mut tiled = TiledTree::new(hr, height);
    for l in leaves {
        memory.push(*l);
        tiled.push(*l);
    }
    (memory, tiled)
}

#[test]
fn every_size_and_height_answers_like_the_memory_tree() {
    let all = leaves(48);
    for height in [0, 1, 2, 3, 5] {
        let (memory, tiled) = both(&all, height);
        let mut store = Stored {
            leaves: all.clone(),
            reads: 0,
            fail: false,
        };
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
    let (memory, tiled) = both(&all, 8);
    let mut store = Stored {
        leaves: all.clone(),
        reads: 0,
        fail: false,
    };
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
    let mut store = Stored {
        leaves: all.clone(),
        reads: 0,
        fail: false,
    };
    for (from, to) in [
        (100, 97),
        (100, 64),
        (100, 63),
        (100, 1),
        (100, 0),
        (64, 60),
        (17, 16),
    ] {
        let (_, mut tiled) = both(&all[..from], 4);
        tiled.truncate(to as u64, &mut store).unwrap();
        assert_eq!(tiled.size(), to as u64);
        let (memory, _) = both(&all[..to], 4);
        // Grow both again and compare every root: the rebuilt tail must be the real one.
        let (mut memory, mut tiled) = (memory, tiled);
        for l in &all[to..] {
            memory.push(*l);
            tiled.push(*l);
        }
        for n in 0..=100 {
            assert_eq!(
                tiled.root(n, &mut store).unwrap(),
                memory.root(n).unwrap(),
                "{from}->{to}, root {n}"
            );
        }
    }
    let (_, mut tiled) = both(&all, 4);
    tiled.truncate(200, &mut store).unwrap();
    assert_eq!(
        tiled.size(),
        100,
        "truncating above the size keeps everything"
    );
}

#[test]
fn damaged_or_failing_storage_is_an_error_never_a_wrong_proof() {
    let all = leaves(40);
    let (_, tiled) = both(&all, 3);
    let edge = {
        let mut ok = Stored {
            leaves: all.clone(),
            reads: 0,
            fail: false,
        };
        tiled.right_edge(40, &mut ok).unwrap()
    };
    // Wrong leaf: one stored leaf hash in tile 2 (leaves 16..24) differs.
    let mut wrong = all.clone();
    wrong[19][0] ^= 1;
    let mut damaged = Stored {
        leaves: wrong,
        reads: 0,
        fail: false,
    };
    assert_eq!(
        tiled.inclusion_proof_at(&edge, 17, &mut damaged),
        Err(TreeError::TileMismatch { tile: 2 })
    );
    // Leaves in other tiles still prove: the damage is confined to its tile.
    tiled.inclusion_proof_at(&edge, 3, &mut damaged).unwrap();
    // Truncated storage: the tile comes back short.
    struct Short(Vec<Hash>);
    impl LeafSource for Short {
        fn leaf_hashes(&mut self, start: u64, end: u64) -> Result<Vec<Hash>, String> {
            Ok(self.0[start as usize..end as usize - 1].to_vec())
        }
    }
    assert_eq!(
        tiled.inclusion_proof_at(&edge, 9, &mut Short(all.clone())),
        Err(TreeError::TileMismatch { tile: 1 })
    );
    let mut failing = Stored {
        leaves: all,
        reads: 0,
        fail: true,
    };
    assert!(matches!(
        tiled.inclusion_proof_at(&edge, 9, &mut failing),
        Err(TreeError::Source {
            start: 8,
            end: 16,
            ..
        })
    ));
    // Sizes beyond the tree are refused as by the memory tree.
    assert!(matches!(
        tiled.root(41, &mut failing),
        Err(TreeError::SizeTooLarge {
            asked: 41,
            have: 40
        })
    ));
}
