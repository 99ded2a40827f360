//! Proofs from the embedded ledger as the API serves them: record id → leaf index, the latest
//! checkpoint, the leaf, and the inclusion path (one tile row read for a leaf in a full tile),
//! on a 256k-leaf log in redb.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use medanchor::envelope::RecordId;
use medanchor::ledger::{EmbeddedLedger, Ledger};
use medanchor_merkle::NoteSigner;

const N: u32 = 1 << 18;

fn record(i: u32) -> (RecordId, [u8; 32]) {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&i.to_be_bytes());
    let mut commitment = [0u8; 32];
    commitment[..4].copy_from_slice(&i.to_le_bytes());
    (RecordId(id), commitment)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::new(
        "bench.medanchor",
        ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
    )
    .unwrap();
    let ledger = EmbeddedLedger::open(
        &dir.path().join("ledger.redb"),
        "bench.medanchor",
        signer,
        true,
    )
    .unwrap();
    let all: Vec<_> = (0..N).map(record).collect();
    for (n, batch) in all.chunks(1000).enumerate() {
        ledger.append_records(batch, n as u64).unwrap();
    }
    let mut g = c.benchmark_group("ledger");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Elements(1));
    let mut i = 0u32;
    let mut next = move || {
        i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        i % N
    };
    g.bench_function("proof_256k_leaves", |b| {
        b.iter(|| ledger.proof(black_box(&record(next()).0)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
