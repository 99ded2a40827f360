//! The embedded ledger in redb.
//!
//! - `ledger/proof_256k_leaves`: proofs as the API serves them: record id → leaf index, the
//!   latest checkpoint, the leaf, and the inclusion path (one tile row read for a leaf in a full
//!   tile), on a 256k-leaf log.
//! - `open_10m_leaves/…`: start-up on a 10,000,000-leaf log: `tile_roots` (what
//!   `EmbeddedLedger::open` does: the tree from the 39,062 tile roots and the partial tile's
//!   leaves) side by side with `rehash_every_leaf` (what open did before: every leaf re-hashed and
//!   every tile row read and compared). The log is built once, before anything is measured (it
//!   takes minutes: the time is printed); set `MEDANCHOR_BENCH_LEDGER_DIR` to keep it in that
//!   directory and reuse it in later runs. Each open is timed without the close that follows it.
//!
//! `cargo bench --bench ledger -- open` runs the start-up pair alone.

use std::cell::OnceCell;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use medanchor::envelope::RecordId;
use medanchor::ledger::{EmbeddedLedger, Leaf, Ledger};
use medanchor_merkle::NoteSigner;

const PROOF_LEAVES: u32 = 1 << 18;
const OPEN_LEAVES: u32 = 10_000_000;
/// Records per append while building the 10M-leaf log.
const FIXTURE_BATCH: usize = 65_536;

fn record(i: u32) -> Leaf {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&i.to_be_bytes());
    let mut commitment = [0u8; 32];
    commitment[..4].copy_from_slice(&i.to_le_bytes());
    Leaf::record(RecordId(id), commitment)
}

fn signer() -> NoteSigner {
    NoteSigner::new(
        "bench.medanchor",
        ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
    )
    .unwrap()
}

/// A ledger of `n` records appended `batch` at a time.
fn build(path: &Path, n: u32, batch: usize) -> EmbeddedLedger {
    let ledger = EmbeddedLedger::open(path, "bench.medanchor", signer(), true).unwrap();
    let mut records = Vec::with_capacity(batch);
    let mut next = 0u32;
    while next < n {
        records.clear();
        records.extend((next..n).take(batch).map(record));
        next += records.len() as u32;
        ledger.append_records(&records, u64::from(next)).unwrap();
    }
    ledger
}

fn proofs(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Elements(1));
    let fixture = OnceCell::new();
    let mut i = 0u32;
    let mut next = move || {
        i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        i % PROOF_LEAVES
    };
    g.bench_function("proof_256k_leaves", |b| {
        let (_dir, ledger) = fixture.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let ledger = build(&dir.path().join("ledger.redb"), PROOF_LEAVES, 1000);
            (dir, ledger)
        });
        b.iter(|| ledger.proof(black_box(&record(next()).record_id)).unwrap())
    });
    g.finish();
}

/// The 10M-leaf log: built once (in `MEDANCHOR_BENCH_LEDGER_DIR` if set, and then kept).
struct OpenFixture {
    path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

fn open_fixture() -> OpenFixture {
    let (dir, keep) = match std::env::var_os("MEDANCHOR_BENCH_LEDGER_DIR") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            (PathBuf::from(d), None)
        }
        None => {
            let t = tempfile::tempdir().unwrap();
            (t.path().to_path_buf(), Some(t))
        }
    };
    let path = dir.join(format!("ledger-{OPEN_LEAVES}.redb"));
    let done = dir.join(format!("ledger-{OPEN_LEAVES}.done"));
    if !done.exists() {
        let _ = std::fs::remove_file(&path);
        let started = Instant::now();
        drop(build(&path, OPEN_LEAVES, FIXTURE_BATCH));
        let took = started.elapsed();
        std::fs::write(&done, format!("{took:?}\n")).unwrap();
        eprintln!(
            "built the {OPEN_LEAVES}-leaf ledger in batches of {FIXTURE_BATCH} in {:.1} s \
             ({:.0} leaves/s), {} MB",
            took.as_secs_f64(),
            f64::from(OPEN_LEAVES) / took.as_secs_f64(),
            std::fs::metadata(&path).unwrap().len() >> 20
        );
    } else {
        eprintln!("reusing {} (built earlier)", path.display());
    }
    OpenFixture { path, _dir: keep }
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open_10m_leaves");
    // One open per sample: re-hashing every leaf takes seconds.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    let fixture = OnceCell::new();
    // Each open is timed alone: the handle is closed (redb flushes on close) outside the timing,
    // before the next open, which needs the file's lock.
    let time_opens = |iters: u64, path: &Path, rehash: bool| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let started = Instant::now();
            let ledger = if rehash {
                EmbeddedLedger::open_rehashing_every_leaf(path, "bench.medanchor", signer())
            } else {
                EmbeddedLedger::open(path, "bench.medanchor", signer(), false)
            }
            .unwrap();
            total += started.elapsed();
            assert_eq!(ledger.size(), u64::from(OPEN_LEAVES));
            drop(ledger);
        }
        total
    };
    g.bench_function("tile_roots", |b| {
        let f: &OpenFixture = fixture.get_or_init(open_fixture);
        b.iter_custom(|iters| time_opens(iters, &f.path, false))
    });
    g.bench_function("rehash_every_leaf", |b| {
        let f: &OpenFixture = fixture.get_or_init(open_fixture);
        b.iter_custom(|iters| time_opens(iters, &f.path, true))
    });
    g.finish();
}

criterion_group!(benches, proofs, open);
criterion_main!(benches);
