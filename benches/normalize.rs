//! HL7v2 → FHIR R4 normalization per message: a typical ADT^A01 (patient, next of kin,
//! visit, allergy, diagnosis, insurance) and an ORU^R01 with 10 OBX, mapped with the built-in
//! mapping set. `map` is what the gateway runs per message (the message is already parsed for
//! sealing), the check that shows the Bundle valid as built included; `map_unchecked` leaves
//! that check out (its cost is the difference); `parse+map` adds the tokenizer;
//! `serde_json_write` is serde_json writing the same Bundle from a tree already built: what the
//! output's bytes alone cost a general-purpose writer on the host, for comparison. Targets: 20 µs and 50 µs per message per core.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use medanchor::config::NormalizeConfig;
use medanchor::hl7::Message;
use medanchor::normalize::{Link, Normalizer};

/// The gateway's allocator (src/main.rs), so the figures are the gateway's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fixture(name: &str) -> Vec<u8> {
    let p = format!(
        "{}/tests/fixtures/v2fhir/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(p).unwrap()
}

fn bench(c: &mut Criterion) {
    let n = Normalizer::load(&NormalizeConfig::default()).unwrap();
    let unchecked = Normalizer::load(&NormalizeConfig {
        validate_output: false,
        ..NormalizeConfig::default()
    })
    .unwrap();
    let commitment = [7u8; 32];
    let link = Link {
        raw_record_id: "0123456789abcdef0123456789abcdef",
        raw_commitment: &commitment,
        mapped_ms: 1_700_000_000_000,
    };
    let mut g = c.benchmark_group("normalize");
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    for (name, file) in [
        ("adt_a01", "local/adt-a01.hl7"),
        ("oru_r01_10obx", "local/oru-r01-lipids.hl7"),
        ("adt_a01_kitchen_sink", "ms/ADT-A01-01.hl7"),
    ] {
        let raw: Vec<u8> = fixture(file)
            .iter()
            .map(|&b| if b == b'\n' { b'\r' } else { b })
            .collect();
        let msg = Message::parse(&raw).unwrap();
        let out = n.map(&msg, &link).unwrap();
        eprintln!(
            "{name}: {} bytes in, {} resources, {} bytes out",
            raw.len(),
            out.resources.len(),
            out.bundle.len()
        );
        g.bench_function(format!("{name}/map"), |b| {
            b.iter(|| n.map(black_box(&msg), &link).unwrap().bundle.len())
        });
        assert_eq!(
            out.shown_valid,
            Ok(()),
            "{name}: the benchmark measures the shown path"
        );
        g.bench_function(format!("{name}/map_unchecked"), |b| {
            b.iter(|| unchecked.map(black_box(&msg), &link).unwrap().bundle.len())
        });
        // A point of comparison for the host, not a lower bound: serde_json writing the same
        // Bundle from a `Value` already in memory (no mapping, no ids, no check; sorted keys,
        // a fresh buffer each time), timed in the same run.
        let tree: serde_json::Value = serde_json::from_slice(&out.bundle).unwrap();
        g.bench_function(format!("{name}/serde_json_write"), |b| {
            b.iter(|| serde_json::to_vec(black_box(&tree)).unwrap().len())
        });
        g.bench_function(format!("{name}/parse+map"), |b| {
            b.iter(|| {
                let m = Message::parse(black_box(&raw)).unwrap();
                n.map(&m, &link).unwrap().bundle.len()
            })
        });
    }
    g.finish();
    c.bench_function("normalize/load_default_set", |b| {
        b.iter(|| {
            Normalizer::load(&NormalizeConfig::default())
                .unwrap()
                .version()
                .len()
        })
    });
}

/// `NORMALIZE_LOOP=adt_a01:100000 cargo bench --bench normalize` runs that many `map` calls
/// and exits, for `perf stat -e cycles:u,instructions:u` on a machine other processes share
/// (wall time there says more about the neighbours than about the code).
fn fixed_loop(spec: &str) {
    let (name, n) = spec.split_once(':').unwrap_or((spec, "100000"));
    let file = match name {
        "adt_a01" => "local/adt-a01.hl7",
        "oru_r01_10obx" => "local/oru-r01-lipids.hl7",
        _ => "ms/ADT-A01-01.hl7",
    };
    let n: usize = n.parse().unwrap();
    let norm = Normalizer::load(&NormalizeConfig::default()).unwrap();
    let raw: Vec<u8> = fixture(file)
        .iter()
        .map(|&b| if b == b'\n' { b'\r' } else { b })
        .collect();
    let msg = Message::parse(&raw).unwrap();
    let commitment = [7u8; 32];
    let link = Link {
        raw_record_id: "0123456789abcdef0123456789abcdef",
        raw_commitment: &commitment,
        mapped_ms: 1_700_000_000_000,
    };
    let t = std::time::Instant::now();
    let mut total = 0;
    for _ in 0..n {
        total += norm.map(black_box(&msg), &link).unwrap().bundle.len();
    }
    let per = t.elapsed() / n as u32;
    eprintln!("{name}: {n} maps, {per:?} wall per map, {total} bytes");
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(spec) = std::env::var("NORMALIZE_LOOP") {
        fixed_loop(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
