//! The single-core floor of the pipeline's CPU work on `medanchor bench mllp`'s message mixes
//! (`--mix typical` and `--mix corpus`): decode, normalize (map and check the Bundle), and seal
//! the raw and the derived record, on one thread, with no I/O. The end-to-end MLLP rate on one
//! core is reported as a fraction of this (`scripts/bench-normalize` runs both side by side).
//! Messages are worked in sealing jobs as the gateway works them under load: whole copies of the
//! mix, as many as fit in `pipeline::SEAL_BATCH` (16 for the two-message typical mix, 12 for the
//! six-message corpus mix), so batch hashing counts as it does there.
//!
//! Variants: `normalize_on` (what the gateway does by default: each Bundle shown valid as it is
//! built), `normalize_walked` (`normalize.output_check = "walk"`: each Bundle parsed back and
//! walked), `normalize_no_validation` (`normalize.validate_output = false`) and `normalize_off`
//! (decode and seal the raw record only).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use medanchor::cli::bench::Mix;
use medanchor::config::{NormalizeConfig, OutputCheck};
use medanchor::envelope::{FormatHint, Origin, RecordId};
use medanchor::normalize::Normalizer;
use medanchor::pipeline::{decode, derive_record, SEAL_BATCH};
use medanchor::record::AcceptRules;
use medanchor::seal::{seal_derived_many, seal_many, Compress, DataKey};

/// The gateway's allocator (src/main.rs), so the figures are the gateway's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    for (name, mix) in [("typical", Mix::Typical), ("corpus", Mix::Corpus)] {
        bench_mix(c, name, mix);
    }
}

fn bench_mix(c: &mut Criterion, mix_name: &str, mix: Mix) {
    let messages: Vec<Bytes> = medanchor::cli::bench::mix_messages(mix)
        .into_iter()
        .map(Bytes::from)
        .collect();
    let origin = Origin::Local {
        name: "bench".into(),
    };
    let rules = AcceptRules::default();
    let key = DataKey::new("p-bench", [7; 32]);
    let on = NormalizeConfig::default();
    let no_validation = NormalizeConfig {
        validate_output: false,
        ..NormalizeConfig::default()
    };
    let walked = NormalizeConfig {
        output_check: OutputCheck::Walk,
        ..NormalizeConfig::default()
    };
    let normalizer = Normalizer::load(&on).expect("the built-in mapping files load");
    // The configurations differ in what `map` checks as it builds, so each has its normalizer.
    let normalizer_walked = Normalizer::load(&walked).expect("loads");
    let normalizer_unchecked = Normalizer::load(&no_validation).expect("loads");
    // Every message of the mix maps: a failure here would measure the failure path instead.
    for (i, m) in messages.iter().enumerate() {
        let record = decode(m, FormatHint::Hl7v2, &origin, 1, &rules).expect("decodes");
        let (_, remarks) = derive_record(
            &normalizer,
            &on,
            &record.raw,
            (RecordId([1; 16]), [2; 32]),
            1,
        )
        .unwrap_or_else(|e| panic!("message {i} of the mix does not map: {e}"));
        assert_eq!(remarks.walked, None, "message {i}: shown valid as built");
    }
    // One sealing job's worth (whole copies of the mix, at most `pipeline::SEAL_BATCH`, or the
    // mix once if it is longer), worked as the gateway works a job under load: decode each, seal
    // the raw records together, derive each, seal the derived records together (their
    // commitments are hashed several at a time).
    let copies = (SEAL_BATCH / messages.len()).max(1);
    let job: Vec<&Bytes> = std::iter::repeat_n(&messages, copies).flatten().collect();
    let run = |cfg: Option<(&Normalizer, &NormalizeConfig)>| {
        let records: Vec<_> = job
            .iter()
            .map(|m| decode(black_box(m), FormatHint::Hl7v2, &origin, 1, &rules).unwrap())
            .collect();
        let raw: Vec<_> = records
            .iter()
            .map(|r| (r, RecordId([1; 16]), &key))
            .collect();
        let sealed: Vec<_> = seal_many(&raw, Compress::Lz4)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        if let Some((normalizer, cfg)) = cfg {
            let derived: Vec<_> = records
                .iter()
                .zip(&sealed)
                .map(|(r, s)| {
                    derive_record(normalizer, cfg, &r.raw, (s.record_id, s.commitment), 1)
                        .unwrap()
                        .0
                })
                .collect();
            let items: Vec<_> = derived
                .iter()
                .map(|d| (d, RecordId([3; 16]), &key))
                .collect();
            black_box(seal_derived_many(&items, Compress::Lz4));
        }
        black_box(sealed);
    };
    let mut g = c.benchmark_group(format!("pipeline_floor_{mix_name}"));
    g.throughput(Throughput::Elements(job.len() as u64));
    g.measurement_time(Duration::from_secs(6));
    g.bench_function("normalize_on", |b| b.iter(|| run(Some((&normalizer, &on)))));
    g.bench_function("normalize_walked", |b| {
        b.iter(|| run(Some((&normalizer_walked, &walked))))
    });
    g.bench_function("normalize_no_validation", |b| {
        b.iter(|| run(Some((&normalizer_unchecked, &no_validation))))
    });
    g.bench_function("normalize_off", |b| b.iter(|| run(None)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
