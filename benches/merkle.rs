//! Log appends and inclusion proofs (generated, verified, and both) on a 1M-leaf tree: built with
//! the gateway's `LogHasher`, verified with the merkle crate's reference `Sha3Hasher`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use medanchor::ledger::LogHasher;
use medanchor_merkle::{
    verify_inclusion, MemoryTree, Sha3Hasher, TileSource, TiledTree, TreeHasher,
};

const N: u64 = 1 << 20;

fn bench(c: &mut Criterion) {
    // The gateway builds its tree and proofs with its own hasher; an auditor verifies with the
    // merkle crate's reference one.
    let hr = LogHasher;
    let auditor = Sha3Hasher;
    let leaves: Vec<[u8; 32]> = (0..N).map(|i| hr.leaf(&i.to_be_bytes())).collect();
    let mut g = c.benchmark_group("merkle");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Elements(N));
    g.bench_function("append_1M_leaf_hashes", |b| {
        b.iter_batched(
            || MemoryTree::new(hr),
            |mut t| {
                for l in &leaves {
                    t.push(*l);
                }
                t
            },
            BatchSize::LargeInput,
        )
    });
    let mut tree = MemoryTree::new(hr);
    for l in &leaves {
        tree.push(*l);
    }
    let size = N - 12_345; // not a power of two: the right edge has partial subtrees
                           // The ledger computes the right edge once per checkpoint and serves every proof from it.
    let edge = tree.right_edge(size).unwrap();
    let root = tree.edge_root(&edge).unwrap();
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    let mut next = move || {
        i = (i * 6_364_136_223_846_793_005 + 1_442_695_040_888_963_407) % size;
        i
    };
    g.bench_function("inclusion_proof_generate_and_verify", |b| {
        b.iter(|| {
            let i = next();
            let p = tree.inclusion_proof_at(&edge, black_box(i)).unwrap();
            verify_inclusion(&auditor, i, size, tree.leaf(i).unwrap(), &p, &root).unwrap();
        })
    });
    g.bench_function("inclusion_proof_generate", |b| {
        b.iter(|| tree.inclusion_proof_at(&edge, black_box(next())).unwrap())
    });
    // Without the cached edge every proof rebuilds the partial subtrees it touches.
    g.bench_function("inclusion_proof_generate_uncached", |b| {
        b.iter(|| tree.inclusion_proof(black_box(next()), size).unwrap())
    });
    let proofs: Vec<(u64, Vec<[u8; 32]>)> = (0..1024)
        .map(|_| {
            let i = next();
            (i, tree.inclusion_proof_at(&edge, i).unwrap())
        })
        .collect();
    let mut j = 0;
    g.bench_function("inclusion_proof_verify", |b| {
        b.iter(|| {
            let (i, p) = &proofs[j % proofs.len()];
            j += 1;
            verify_inclusion(&auditor, *i, size, tree.leaf(*i).unwrap(), p, &root).unwrap();
        })
    });
    // The ledger's tree: nodes above tiles of 256 leaves in memory, each proof into a full tile
    // one lookup in that tile's stored bytes (borrowed from memory here, as the ledger borrows
    // a redb row; the ledger adds the row lookup).
    struct Tiles(Vec<Vec<u8>>);
    impl<'a> TileSource for &'a Tiles {
        type Tile = &'a [u8];
        fn tile(&mut self, index: u64) -> Result<&'a [u8], String> {
            Ok(&self.0[index as usize])
        }
    }
    let mut tiled = TiledTree::new(hr, 8);
    let mut tiles = Tiles(Vec::new());
    for l in &leaves {
        if let Some((_, nodes)) = tiled.push(*l) {
            tiles.0.push(nodes);
        }
    }
    let mut tiles = &tiles;
    let tiled_edge = tiled.right_edge(size, &mut tiles).unwrap();
    g.bench_function("inclusion_proof_generate_and_verify_tiled_h8", |b| {
        b.iter(|| {
            let i = next();
            let p = tiled
                .inclusion_proof_at(&tiled_edge, black_box(i), &mut tiles)
                .unwrap();
            verify_inclusion(&auditor, i, size, tree.leaf(i).unwrap(), &p, &root).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
