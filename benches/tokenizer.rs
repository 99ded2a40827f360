//! Tokenizer throughput on the Microsoft corpus mix, side by side with hl7-parser on the same
//! messages (the ones it parses without panicking).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use medanchor::hl7::Message;

fn corpus() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hl7/microsoft");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .map(|p| {
            let raw = std::fs::read(p).unwrap();
            let raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&raw).to_vec();
            let s = String::from_utf8_lossy(&raw)
                .replace("\r\n", "\r")
                .replace('\n', "\r");
            s.trim_end_matches('\r').to_string()
        })
        .filter(|s| {
            std::panic::catch_unwind(|| hl7_parser::parse_message(s).is_ok()).unwrap_or(false)
        })
        .collect();
    v.sort();
    v
}

/// Tokenizes everything down to subcomponents, as a full parse would.
fn walk(m: &Message<'_>) -> usize {
    let mut n = 0;
    for s in m.segments() {
        for f in s.fields() {
            for r in f.repetitions() {
                for c in r.components() {
                    n += c.subcomponents().count();
                }
            }
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let msgs = corpus();
    let bytes: usize = msgs.iter().map(|m| m.len()).sum();
    let mut g = c.benchmark_group("tokenizer");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("medanchor", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &msgs {
                n += walk(&Message::parse(black_box(m.as_bytes())).unwrap());
            }
            n
        })
    });
    g.bench_function("hl7-parser", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &msgs {
                n += hl7_parser::parse_message(black_box(m))
                    .unwrap()
                    .segments
                    .len();
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
