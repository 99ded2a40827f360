//! Sealing a 1.5 KB record next to SHA3-256 + AES-256-GCM run standalone on the same bytes, and
//! the commitment's SHA3-256 next to the `sha3` crate on a record of the bench mix's mean size.

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::{aead::AeadInOut, Aes256Gcm, KeyInit};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use medanchor::envelope::{Origin, RecordId};
use medanchor::record::{Record, RecordMeta};
use medanchor::seal::{seal, Compress, DataKey};
use medanchor_sha3::{Backend, Sha3_256};
use sha3::Digest;

fn bench(c: &mut Criterion) {
    let mut raw =
        b"MSH|^~\\&|LAB|HOSP|GW|HOSP|20240101||ORU^R01|C1|P|2.5\rPID|1||12345^^^H^MR||Doe^Jane\r"
            .to_vec();
    while raw.len() < 1500 {
        raw.extend_from_slice(b"OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L|3.9-5.5|N|||F\r");
    }
    raw.truncate(1500);
    let record = Record {
        meta: RecordMeta {
            sender: "LAB|HOSP".into(),
            message_type: "ORU".into(),
            trigger: "R01".into(),
            control_id: "C1".into(),
            patient_ids: vec!["12345^H^MR".into()],
            received_ms: 1,
            origin: Origin::Local {
                name: "bench".into(),
            },
            format: "hl7v2".into(),
        },
        raw: Bytes::from(raw.clone()),
    };
    let key = DataKey::new("p-bench", [7; 32]);
    let cipher = Aes256Gcm::new((&[7u8; 32]).into());
    let mut g = c.benchmark_group("seal_1500B");
    g.throughput(Throughput::Bytes(1500));
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("medanchor_seal", |b| {
        b.iter(|| seal(black_box(&record), RecordId([1; 16]), &key, Compress::Lz4).unwrap())
    });
    g.bench_function("standalone_sha3_aes_gcm", |b| {
        b.iter(|| {
            let h = Sha3_256::digest(black_box(&raw));
            let mut buf = raw.clone();
            let tag = cipher
                .encrypt_inout_detached((&[0u8; 12]).into(), b"", buf.as_mut_slice().into())
                .unwrap();
            (h, tag, buf)
        })
    });
    g.finish();

    // 5,321 bytes: the mean message of `medanchor bench`'s corpus mix.
    let record: Vec<u8> = (0..5321u32).map(|i| (i * 131 + 17) as u8).collect();
    let mut g = c.benchmark_group("sha3_256_5321B");
    g.throughput(Throughput::Bytes(record.len() as u64));
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("sha3_crate", |b| {
        b.iter(|| -> [u8; 32] { sha3::Sha3_256::digest(black_box(&record)).into() })
    });
    g.bench_function(format!("medanchor_{:?}", Backend::detect()), |b| {
        b.iter(|| Sha3_256::digest(black_box(&record)))
    });
    g.bench_function("medanchor_Portable", |b| {
        b.iter(|| {
            let mut h = Sha3_256::with_backend(Backend::Portable);
            h.update(black_box(&record));
            h.finalize()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
