//! Known-answer vectors for the byte formats of docs/FORMATS.md, in `testdata/formats/vectors.json`:
//! record encodings, derived record encodings, commitments, sealed records, key files, key ids and
//! dedup keys, wrapped data keys, leaves (both kinds) and a small tree, a ledger's tables, a
//! signed checkpoint, proof bundles (of raw and derived records), segment entries (with padding
//! and the recovery rule) and the vault's derivation tables, each valid vector beside named
//! corruptions that must fail.
//!
//! The test reads the file and checks every vector against the code (and, where the format is
//! simple enough, against a second implementation written here from the docs alone), then checks
//! that the code still generates exactly this file: a format change fails here. When the file is
//! missing, or with `MEDANCHOR_REGENERATE_VECTORS=1`, it is written first:
//!
//! ```text
//! MEDANCHOR_REGENERATE_VECTORS=1 cargo test --test formats
//! ```

use std::path::{Path, PathBuf};

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use medanchor::envelope::{FormatHint, Origin, RecordId};
use medanchor::ledger::EventKind;
use medanchor::ledger::{EmbeddedLedger, Leaf, Ledger, LogHasher};
use medanchor::record::{
    AcceptRules, Content, DerivedRecord, EncodeError, Event, Record, RecordMeta, DERIVED_VERSION,
    MAX_PATIENT_IDS,
};
use medanchor::seal::keyring::{self, Keyring, KeyringError};
use medanchor::seal::{self, DataKey, SealError};
use medanchor::vault::segments::{
    EntryHeader, SegmentError, SegmentLog, Staged, Tail, DERIVED_MARK,
};
use medanchor::vault::{
    Derivation, EmbeddedVault, MappingFailure, PutRecord, PutResult, Rederive, Vault,
};
use medanchor_merkle::{
    derived_leaf, key_hash, record_leaf, BundleError, Checkpoint, CheckpointError, MemoryTree,
    NoteSigner, NoteVerifier, ProofBundle, ProofError, Sha3Hasher, TiledTree, TreeHasher,
    LEAF_DERIVED_STORED, LEAF_RECORD_STORED,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{json, Value};
use sha3::Digest;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/formats/vectors.json");

/// The log origin (and signing key name) of the ledger vectors.
const ORIGIN: &str = "medanchor.example/log";
/// Tile height of the gateway's ledger (`src/ledger/embedded.rs`).
const TILE_HEIGHT: u32 = 8;
/// Leaves in the ledger vector: one full tile and one leaf of the next.
const LEDGER_LEAVES: u64 = 257;
const T1: u64 = 1_763_856_001_000;
const T2: u64 = 1_763_856_002_000;
/// The third append: the derived records.
const T3: u64 = 1_763_856_003_000;

// ---------------------------------------------------------------------------------------------
// Inputs

/// 32 bytes counting up from `start`.
fn fill(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn index_key() -> [u8; 32] {
    fill(0x10)
}
fn master_key() -> [u8; 32] {
    fill(0x30)
}
fn signing_seed() -> [u8; 32] {
    fill(0xb0)
}
fn other_seed() -> [u8; 32] {
    fill(0xd0)
}

/// A record id as the gateway makes them: 48-bit millisecond time, then 80 bits (here fixed).
fn record_id(ms: u64, tail: u8) -> RecordId {
    let mut id = [tail; 16];
    id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    RecordId(id)
}

const ADT_A01: &[u8] =
    b"MSH|^~\\&|HIS|GENHOSP|MEDANCHOR|GENHOSP|20251123000000||ADT^A01^ADT_A01|MSG00001|P|2.5.1\r\
EVN|A01|20251123000000\r\
PID|1||123456^^^GENHOSP^MR~987654321^^^SSA^SS~A-77^^^LAB&1.2.3&ISO^PI||DOE^JANE||19800101|F\r\
PV1|1|I|W^101^1\r";

const FHIR_PATIENT: &[u8] = br#"{"resourceType":"Patient","id":"p-1","identifier":[{"system":"urn:oid:1.2.3","value":"12345","type":{"coding":[{"code":"MR"}]}}],"name":[{"family":"Doe","given":["Jane"]}]}"#;

const ORU_UTF8: &[u8] = "MSH|^~\\&|LABOR|Klinik Zürich|MEDANCHOR|KZ|20251123000000||ORU^R01|Ä-1|P|2.5|||||CHE|UNICODE UTF-8\r\
PID|1||Ünï-42^^^Hôpital^MR||Müller^Zoë\r\
OBX|1|TX|||患者メモ: ½ Tablette\r"
    .as_bytes();

/// Valid FHIR R4 (inbound FHIR is validated): each transaction entry has its request.
const FHIR_BUNDLE: &[u8] = br#"{"resourceType":"Bundle","type":"transaction","identifier":{"value":"B-9"},"entry":[{"resource":{"resourceType":"Patient","identifier":[{"system":"urn:oid:2.16.840.1.113883.2.4.6.3","value":"999911120","type":{"coding":[{"code":"NNNLD"}]}}]},"request":{"method":"POST","url":"Patient"}},{"resource":{"resourceType":"Observation","status":"final","code":{"text":"weight"},"subject":{"reference":"Patient/7"}},"request":{"method":"POST","url":"Observation"}}]}"#;

/// A record vector: its name, the record, and the format it was parsed from (`None`: built
/// field by field).
struct Rec {
    name: &'static str,
    record: Record,
    parsed: Option<FormatHint>,
}

fn parse(raw: &[u8], hint: FormatHint, origin: Origin, ms: u64) -> Record {
    medanchor::pipeline::decode(
        &Bytes::copy_from_slice(raw),
        hint,
        &origin,
        ms,
        &AcceptRules::default(),
    )
    .expect("the vector's input is accepted")
}

fn records() -> Vec<Rec> {
    let parsed = |name, raw, hint, origin, ms| Rec {
        name,
        record: parse(raw, hint, origin, ms),
        parsed: Some(hint),
    };
    vec![
        parsed(
            "hl7v2_adt_a01_three_patient_ids",
            ADT_A01,
            FormatHint::Hl7v2,
            Origin::Mllp {
                peer: "10.0.0.5:51234".parse().unwrap(),
                tls_client: None,
            },
            1_763_856_000_123,
        ),
        parsed(
            "fhir_patient",
            FHIR_PATIENT,
            FormatHint::Fhir,
            Origin::Http {
                peer: "10.0.0.7:40112".parse().unwrap(),
            },
            1_763_856_000_456,
        ),
        Rec {
            name: "empty_strings",
            record: Record {
                meta: RecordMeta {
                    sender: String::new(),
                    message_type: String::new(),
                    trigger: String::new(),
                    control_id: String::new(),
                    patient_ids: vec![String::new()],
                    received_ms: 0,
                    origin: Origin::Local {
                        name: String::new(),
                    },
                    format: String::new(),
                },
                raw: Bytes::new(),
            },
            parsed: None,
        },
        parsed(
            "hl7v2_utf8_non_ascii",
            ORU_UTF8,
            FormatHint::Hl7v2,
            Origin::Mllp {
                peer: "[2001:db8::7]:2575".parse().unwrap(),
                tls_client: Some("CN=labor.klinik.example,O=Klinik Zürich".into()),
            },
            1_763_856_000_789,
        ),
        parsed(
            "fhir_bundle",
            FHIR_BUNDLE,
            FormatHint::Fhir,
            Origin::Kafka {
                topic: "fhir.in".into(),
                partition: 3,
                offset: 1_234_567,
            },
            1_763_856_000_999,
        ),
    ]
}

/// One of every origin, for the spelling of the origin JSON.
fn origins() -> Vec<Origin> {
    vec![
        Origin::Mllp {
            peer: "10.0.0.5:51234".parse().unwrap(),
            tls_client: None,
        },
        Origin::Mllp {
            peer: "[2001:db8::7]:2575".parse().unwrap(),
            tls_client: Some("CN=lab".into()),
        },
        Origin::Nats {
            stream: "HL7".into(),
            subject: "hl7.in".into(),
            sequence: 42,
        },
        Origin::Kafka {
            topic: "fhir.in".into(),
            partition: 3,
            offset: -2,
        },
        Origin::Http {
            peer: "10.0.0.7:40112".parse().unwrap(),
        },
        Origin::Import {
            file: "batch \"1\".hl7".into(),
            index: 7,
        },
        Origin::Replay {
            quarantine_id: "019aa3b84d7bffffffffffffffffffff".into(),
        },
        Origin::Local { name: "é".into() },
    ]
}

fn encode(r: &Record) -> Vec<u8> {
    let origin = serde_json::to_vec(&r.meta.origin).unwrap();
    let mut out = Vec::new();
    r.encode_into(&origin, &mut out).expect("encodable");
    out
}

/// What each sealed vector seals: record index, key id (`None`: the record's patient key id),
/// data key, record id tail.
fn sealings() -> Vec<(usize, Option<&'static str>, [u8; 32], u8)> {
    vec![
        (0, None, fill(0x50), 0xa1),
        (1, None, fill(0x70), 0xa2),
        (2, Some(keyring::GATEWAY_KEY_ID), fill(0x90), 0xa3),
        (3, None, fill(0x50), 0xa4),
        (4, None, fill(0x60), 0xa5),
    ]
}

fn salt_of(i: usize) -> [u8; 32] {
    fill(0x01 + 0x20 * i as u8)
}

fn nonce_of(i: usize) -> [u8; 24] {
    std::array::from_fn(|j| 0xc0u8.wrapping_add((j + 7 * i) as u8))
}

/// A keyring in `dir` whose key files hold the vector keys.
fn vector_keyring(dir: &Path) -> Keyring {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("master-1.key"), key_file(&master_key())).unwrap();
    std::fs::write(dir.join("index.key"), key_file(&index_key())).unwrap();
    Keyring::open(dir, true).unwrap()
}

/// A key file as the gateway writes it: written without a check line, then upgraded by
/// `load_secret` at a (simulated) start.
fn key_file(secret: &[u8; 32]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    std::fs::write(&path, format!("{}\n", hex::encode(secret))).unwrap();
    keyring::load_secret(&path, true).unwrap();
    std::fs::read_to_string(&path).unwrap()
}

/// A sealed vector as built.
struct SealedVec {
    name: String,
    record: usize,
    key_id: String,
    key: [u8; 32],
    id: RecordId,
    salt: [u8; 32],
    nonce: [u8; 24],
    sealed: seal::Sealed,
}

fn sealed_vectors(recs: &[Rec], ring: &Keyring) -> Vec<SealedVec> {
    sealings()
        .into_iter()
        .enumerate()
        .map(|(i, (r, key_id, key, tail))| {
            let record = &recs[r].record;
            let key_id = key_id
                .map(str::to_string)
                .unwrap_or_else(|| ring.key_id_for(record.patient_key_identity()));
            let id = record_id(record.meta.received_ms, tail);
            let (salt, nonce) = (salt_of(i), nonce_of(i));
            let sealed =
                seal::seal_with(record, id, &DataKey::new(&key_id, key), salt, nonce).unwrap();
            SealedVec {
                name: recs[r].name.to_string(),
                record: r,
                key_id,
                key,
                id,
                salt,
                nonce,
                sealed,
            }
        })
        .collect()
}

/// The FHIR Bundles of the derived vectors (content is the mapping's; the format carries bytes).
const ADT_BUNDLE: &str = r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient","identifier":[{"system":"GENHOSP","value":"123456"}],"name":[{"family":"DOE","given":["JANE"]}],"gender":"female","birthDate":"1980-01-01"}}]}"#;
const ADT_BUNDLE_REMAPPED: &str = r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient","identifier":[{"system":"GENHOSP","value":"123456","type":{"coding":[{"code":"MR"}]}}],"gender":"female"}}]}"#;
const ORU_BUNDLE: &str = r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient","identifier":[{"system":"Hôpital","value":"Ünï-42"}],"name":[{"family":"Müller","given":["Zoë"]}]}}]}"#;

/// A derived record vector: its name, the sealed vector of the raw record it was made from, its
/// record id and the record.
struct Der {
    name: &'static str,
    raw: usize,
    id: RecordId,
    record: DerivedRecord,
}

/// Two derived records of the ADT message (the second from a newer mapping set, as a replay
/// writes it) and one of the UTF-8 ORU message, with an OperationOutcome.
fn derivations(sealed: &[SealedVec]) -> Vec<Der> {
    let make =
        |name, raw: usize, version: &str, ms: u64, tail: u8, outcome: Vec<u8>, bundle: &str| {
            let s: &SealedVec = &sealed[raw];
            Der {
                name,
                raw,
                id: record_id(ms, tail),
                record: DerivedRecord {
                    raw_id: s.id,
                    raw_commitment: s.sealed.commitment,
                    mapping_version: version.into(),
                    mapped_ms: ms,
                    outcome: outcome.into(),
                    bundle: Bytes::copy_from_slice(bundle.as_bytes()),
                },
            }
        };
    let outcome = medanchor::pipeline::mapping_outcome(&["OBX-5".to_string()], &[]);
    vec![
        make(
            "adt_a01_bundle",
            0,
            "map-1f0c4a9e27d3b865",
            1_763_856_000_200,
            0xb1,
            Vec::new(),
            ADT_BUNDLE,
        ),
        make(
            "oru_r01_bundle_with_outcome",
            3,
            "map-1f0c4a9e27d3b865",
            1_763_856_000_900,
            0xb2,
            outcome,
            ORU_BUNDLE,
        ),
        make(
            "adt_a01_bundle_remapped",
            0,
            "map-8a2e61d04c7f93b0",
            1_763_856_002_500,
            0xb3,
            Vec::new(),
            ADT_BUNDLE_REMAPPED,
        ),
    ]
}

fn encode_derived(d: &DerivedRecord) -> Vec<u8> {
    let mut out = Vec::new();
    d.encode_into(&mut out).expect("encodable");
    out
}

/// A sealed derived vector: under its raw record's key id and data key.
struct SealedDer {
    salt: [u8; 32],
    nonce: [u8; 24],
    sealed: seal::Sealed,
}

fn sealed_derivations(ders: &[Der], sealed: &[SealedVec]) -> Vec<SealedDer> {
    ders.iter()
        .enumerate()
        .map(|(i, d)| {
            let raw = &sealed[d.raw];
            let (salt, nonce) = (salt_of(5 + i), nonce_of(5 + i));
            let key = DataKey::new(&raw.key_id, raw.key);
            let sealed = seal::seal_derived_with(&d.record, d.id, &key, salt, nonce).unwrap();
            SealedDer {
                salt,
                nonce,
                sealed,
            }
        })
        .collect()
}

/// The log leaf of a derived vector.
fn derived_leaf_of(d: &Der, s: &SealedDer) -> Leaf {
    Leaf {
        record_id: d.id,
        commitment: s.sealed.commitment,
        derived_from: Some((d.record.raw_id, d.record.raw_commitment)),
        event: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Second implementations, from docs/FORMATS.md alone

fn sha3(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = sha3::Sha3_256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn docs_commitment(salt: &[u8], encoding: &[u8]) -> [u8; 32] {
    sha3(&[b"medanchor/record/v1\x00", salt, encoding])
}

/// The fields of a record encoding, read as the docs describe it.
#[derive(Debug, PartialEq)]
struct DocsRecord {
    sender: Vec<u8>,
    message_type: Vec<u8>,
    trigger: Vec<u8>,
    control_id: Vec<u8>,
    patient_ids: Vec<Vec<u8>>,
    received_ms: u64,
    origin: Vec<u8>,
    format: Vec<u8>,
    raw: Vec<u8>,
}

/// The next `n` bytes of `b`, as the docs' readers take them.
fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (a, rest) = (b.get(..n)?, b.get(n..)?);
    *b = rest;
    Some(a)
}

/// A length-prefixed field (u32 big-endian length, then the bytes).
fn field(b: &mut &[u8]) -> Option<Vec<u8>> {
    let n = u32::from_be_bytes(take(b, 4)?.try_into().ok()?) as usize;
    Some(take(b, n)?.to_vec())
}

fn docs_read_record(mut b: &[u8]) -> Option<DocsRecord> {
    if take(&mut b, 1)? != [1] {
        return None;
    }
    let sender = field(&mut b)?;
    let message_type = field(&mut b)?;
    let trigger = field(&mut b)?;
    let control_id = field(&mut b)?;
    let n = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
    let patient_ids = (0..n).map(|_| field(&mut b)).collect::<Option<Vec<_>>>()?;
    let received_ms = u64::from_be_bytes(take(&mut b, 8)?.try_into().ok()?);
    let r = DocsRecord {
        sender,
        message_type,
        trigger,
        control_id,
        patient_ids,
        received_ms,
        origin: field(&mut b)?,
        format: field(&mut b)?,
        raw: field(&mut b)?,
    };
    b.is_empty().then_some(r)
}

/// The fields of a derived record encoding (v2), read as the docs describe it.
#[derive(Debug, PartialEq)]
struct DocsDerived {
    raw_id: [u8; 16],
    raw_commitment: [u8; 32],
    mapping_version: String,
    mapped_ms: u64,
    outcome: Vec<u8>,
    bundle: Vec<u8>,
}

fn docs_read_derived(mut b: &[u8]) -> Option<DocsDerived> {
    if take(&mut b, 1)? != [2] {
        return None;
    }
    let d = DocsDerived {
        raw_id: take(&mut b, 16)?.try_into().ok()?,
        raw_commitment: take(&mut b, 32)?.try_into().ok()?,
        mapping_version: String::from_utf8(field(&mut b)?).ok()?,
        mapped_ms: u64::from_be_bytes(take(&mut b, 8)?.try_into().ok()?),
        outcome: field(&mut b)?,
        bundle: field(&mut b)?,
    };
    b.is_empty().then_some(d)
}

/// XAES-256-GCM key derivation as C2SP specifies it (CMAC subkey K1 with u128 arithmetic, a
/// different implementation from `src/seal/xaes.rs`).
fn docs_xaes_key(key: &[u8; 32], nonce: &[u8; 24]) -> [u8; 32] {
    use aes_gcm::aes::cipher::{BlockCipherEncrypt, KeyInit as _};
    use aes_gcm::aes::Aes256;
    let aes = Aes256::new(key.into());
    let mut l = [0u8; 16];
    aes.encrypt_block((&mut l).into());
    let l = u128::from_be_bytes(l);
    let k1 = (l << 1) ^ if l >> 127 == 1 { 0x87 } else { 0 };
    let mut out = [0u8; 32];
    for (i, half) in out.chunks_exact_mut(16).enumerate() {
        let mut m = [0u8; 16];
        m[..4].copy_from_slice(&[0x00, i as u8 + 1, b'X', 0x00]);
        m[4..].copy_from_slice(&nonce[..12]);
        let mut block = (u128::from_be_bytes(m) ^ k1).to_be_bytes();
        aes.encrypt_block((&mut block).into());
        half.copy_from_slice(&block);
    }
    out
}

fn docs_header(key_id: &str, nonce: &[u8; 24]) -> Vec<u8> {
    let mut h = b"MAS\x01".to_vec();
    h.push(key_id.len() as u8);
    h.extend_from_slice(key_id.as_bytes());
    h.extend_from_slice(nonce);
    h.push(32);
    h
}

/// The header of a sealed record of version 2: version 1's with `MAS 0x02` and the encoding's
/// length after it.
fn docs_header_v2(key_id: &str, nonce: &[u8; 24], len: usize) -> Vec<u8> {
    let mut h = docs_header(key_id, nonce);
    h[3] = 0x02;
    h.extend_from_slice(&(len as u32).to_be_bytes());
    h
}

/// Decodes an LZ4 block (the LZ4 block format, lz4/doc/lz4_Block_format.md) that must give
/// exactly `n` bytes: sequences of a token (literal length, match length − 4), literals, a
/// little-endian u16 offset and the match; the last sequence has literals only.
fn docs_lz4_decode(block: &[u8], n: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(n.min(block.len().saturating_mul(255)));
    let mut i = 0;
    let length = |i: &mut usize, base: usize| -> Option<usize> {
        let mut len = base;
        if base == 15 {
            loop {
                let b = *block.get(*i)?;
                *i += 1;
                len += b as usize;
                if b != 255 {
                    break;
                }
            }
        }
        Some(len)
    };
    loop {
        let token = *block.get(i)?;
        i += 1;
        let lit = length(&mut i, (token >> 4) as usize)?;
        out.extend_from_slice(block.get(i..i + lit)?);
        i += lit;
        if out.len() > n {
            return None;
        }
        if i == block.len() {
            break;
        }
        let offset = u16::from_le_bytes(block.get(i..i + 2)?.try_into().ok()?) as usize;
        i += 2;
        let len = length(&mut i, (token & 15) as usize)? + 4;
        if offset == 0 || offset > out.len() || out.len() + len > n {
            return None;
        }
        for _ in 0..len {
            out.push(out[out.len() - offset]);
        }
    }
    (out.len() == n).then_some(out)
}

/// Seals `plain` (salt || encoding) as the docs say, whatever it holds.
fn docs_seal(
    key: &[u8; 32],
    key_id: &str,
    nonce: &[u8; 24],
    id: &RecordId,
    plain: &[u8],
) -> Vec<u8> {
    docs_seal_as(key, &docs_header(key_id, nonce), nonce, id, plain)
}

/// [`docs_seal`] under a header given whole (version 2's, or one made wrong on purpose).
fn docs_seal_as(
    key: &[u8; 32],
    header: &[u8],
    nonce: &[u8; 24],
    id: &RecordId,
    plain: &[u8],
) -> Vec<u8> {
    let header = header.to_vec();
    let mut aad = header.clone();
    aad.extend_from_slice(&id.0);
    let mut buf = plain.to_vec();
    let tag = Aes256Gcm::new((&docs_xaes_key(key, nonce)).into())
        .encrypt_inout_detached(
            (&nonce[12..]).try_into().unwrap(),
            &aad,
            buf.as_mut_slice().into(),
        )
        .unwrap();
    let mut out = header;
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    out
}

/// Opens a sealed record as the docs say: (key id, salt || encoding).
fn docs_open(key: &[u8; 32], id: &RecordId, sealed: &[u8]) -> Option<(String, Vec<u8>)> {
    let v2 = match sealed.get(..4)? {
        b"MAS\x01" => false,
        b"MAS\x02" => true,
        _ => return None,
    };
    let kl = *sealed.get(4)? as usize;
    let header_len = 5 + kl + 24 + 1 + if v2 { 4 } else { 0 };
    if kl == 0 || sealed.len() < header_len + 32 + 16 || sealed[5 + kl + 24] != 32 {
        return None;
    }
    let packed = v2.then(|| {
        u32::from_be_bytes(sealed[header_len - 4..header_len].try_into().unwrap()) as usize
    });
    if packed.is_some_and(|n| !(4096..=u32::MAX as usize - 4096).contains(&n)) {
        return None;
    }
    let key_id = String::from_utf8(sealed[5..5 + kl].to_vec()).ok()?;
    let nonce: [u8; 24] = sealed[5 + kl..5 + kl + 24].try_into().ok()?;
    let mut aad = sealed[..header_len].to_vec();
    aad.extend_from_slice(&id.0);
    let (ct, tag) = sealed[header_len..].split_at(sealed.len() - header_len - 16);
    let mut buf = ct.to_vec();
    Aes256Gcm::new((&docs_xaes_key(key, &nonce)).into())
        .decrypt_inout_detached(
            (&nonce[12..]).try_into().unwrap(),
            &aad,
            buf.as_mut_slice().into(),
            tag.try_into().unwrap(),
        )
        .ok()?;
    match packed {
        None => Some((key_id, buf)),
        Some(n) => {
            let (salt, block) = buf.split_at(32);
            let mut plain = salt.to_vec();
            plain.extend_from_slice(&docs_lz4_decode(block, n)?);
            Some((key_id, plain))
        }
    }
}

fn docs_keyed(key: &[u8; 32], context: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut input = context.as_bytes().to_vec();
    for p in parts {
        input.extend_from_slice(&(p.len() as u64).to_be_bytes());
        input.extend_from_slice(p);
    }
    *blake3::keyed_hash(key, &input).as_bytes()
}

fn docs_key_check(secret: &[u8; 32]) -> String {
    let mut input = b"medanchor key file check\x00".to_vec();
    input.extend_from_slice(secret);
    format!(
        "check {}",
        hex::encode(&blake3::hash(&input).as_bytes()[..8])
    )
}

fn docs_leaf(entry: &[u8]) -> [u8; 32] {
    sha3(&[&[0x00], entry])
}

fn docs_node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    sha3(&[&[0x01], l, r])
}

/// RFC 9162 §2.1.1 MTH by its recursion.
fn docs_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => sha3(&[]),
        1 => leaves[0],
        n => {
            let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
            docs_node(&docs_root(&leaves[..k]), &docs_root(&leaves[k..]))
        }
    }
}

/// RFC 9162 §2.1.3.2: the root an inclusion path leads to, or `None` if the path does not fit.
fn docs_inclusion_root(
    index: u64,
    size: u64,
    leaf: [u8; 32],
    path: &[[u8; 32]],
) -> Option<[u8; 32]> {
    if index >= size {
        return None;
    }
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in path {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = docs_node(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = docs_node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

/// Verifies a proof bundle as "Writing an independent verifier" in docs/FORMATS.md says, with
/// `pinned` the verifier key the caller trusts. Returns the leaf index and tree size; a failed
/// inclusion is `Err("inclusion")`, a failed inclusion of the raw leaf `Err("raw inclusion")`.
fn docs_verify_bundle(text: &str, pinned: &str) -> Result<(u64, u64), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("not an object")?;
    // derived_from: an object of exactly four fields, or absent (null is taken as absent).
    let derived_from = match obj.get("derived_from") {
        None | Some(Value::Null) => None,
        Some(Value::Object(d)) => {
            let fields = ["record_id", "commitment", "leaf_index", "inclusion"];
            if d.len() != fields.len() || !fields.iter().all(|f| d.contains_key(*f)) {
                return Err("derived_from fields".into());
            }
            d["record_id"].as_str().ok_or("derived_from.record_id")?;
            Some(d)
        }
        Some(_) => return Err("derived_from is not an object".into()),
    };
    let extra = usize::from(obj.contains_key("derived_from"));
    let fields = [
        "format",
        "record_id",
        "commitment",
        "leaf_index",
        "tree_size",
        "inclusion",
        "checkpoint",
        "public_key",
    ];
    if obj.len() != fields.len() + extra || !fields.iter().all(|f| obj.contains_key(*f)) {
        return Err("fields".into());
    }
    if v["format"] != "medanchor-proof/1" {
        return Err("format".into());
    }
    if v["public_key"] != pinned {
        return Err("not the pinned key".into());
    }
    // name+hex(key hash)+base64(0x01 || key)
    let mut parts = pinned.splitn(3, '+');
    let (name, hash_hex, key_b64) = (
        parts.next().unwrap(),
        parts.next().ok_or("key")?,
        parts.next().ok_or("key")?,
    );
    let raw = B64.decode(key_b64).map_err(|_| "key base64")?;
    if raw.len() != 33 || raw[0] != 0x01 {
        return Err("not ed25519".into());
    }
    let key = ed25519_dalek::VerifyingKey::from_bytes(&raw[1..].try_into().unwrap())
        .map_err(|_| "key point")?;
    let hash = hex::decode(hash_hex).map_err(|_| "key hash hex")?;
    // Checkpoint: body up to and including the first blank line's newline.
    let cp = v["checkpoint"].as_str().ok_or("checkpoint")?;
    let split = cp.find("\n\n").ok_or("no blank line")?;
    let (body, sigs) = (&cp[..split + 1], &cp[split + 2..]);
    let lines: Vec<&str> = body.strip_suffix('\n').unwrap().split('\n').collect();
    if lines.len() != 4 {
        return Err("body lines".into());
    }
    let size: u64 = lines[1].parse().map_err(|_| "size")?;
    let root: [u8; 32] = B64
        .decode(lines[2])
        .ok()
        .and_then(|r| r.try_into().ok())
        .ok_or("root")?;
    lines[3]
        .strip_prefix("timestamp ")
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or("timestamp")?;
    let mut signed = false;
    for line in sigs.strip_suffix('\n').ok_or("sig newline")?.split('\n') {
        let rest = line.strip_prefix("\u{2014} ").ok_or("em dash")?;
        let (sig_name, b64) = rest.split_once(' ').ok_or("sig name")?;
        let blob = B64.decode(b64).map_err(|_| "sig base64")?;
        if sig_name != name || blob.len() < 4 || blob[..4] != hash[..] {
            continue;
        }
        let sig = ed25519_dalek::Signature::from_slice(&blob[4..]).map_err(|_| "sig")?;
        key.verify_strict(body.as_bytes(), &sig)
            .map_err(|_| "bad signature")?;
        signed = true;
    }
    if !signed {
        return Err("no signature".into());
    }
    let tree_size = v["tree_size"].as_u64().ok_or("tree_size")?;
    if tree_size != size {
        return Err("tree size".into());
    }
    let h32 = |v: &Value| -> Option<[u8; 32]> { hex::decode(v.as_str()?).ok()?.try_into().ok() };
    let commitment = h32(&v["commitment"]).ok_or("commitment")?;
    let path = v["inclusion"]
        .as_array()
        .ok_or("inclusion")?
        .iter()
        .map(h32)
        .collect::<Option<Vec<_>>>()
        .ok_or("inclusion hex")?;
    let index = v["leaf_index"].as_u64().ok_or("leaf_index")?;
    let mut entry = vec![0x01];
    entry.extend_from_slice(&commitment);
    if let Some(d) = derived_from {
        // The raw record's leaf, in the same tree; then the derived leaf binds both commitments.
        let raw = h32(&d["commitment"]).ok_or("derived_from.commitment")?;
        let raw_path = d["inclusion"]
            .as_array()
            .ok_or("derived_from.inclusion")?
            .iter()
            .map(h32)
            .collect::<Option<Vec<_>>>()
            .ok_or("derived_from.inclusion hex")?;
        let raw_index = d["leaf_index"].as_u64().ok_or("derived_from.leaf_index")?;
        let raw_entry = [&[0x01][..], &raw].concat();
        if docs_inclusion_root(raw_index, tree_size, docs_leaf(&raw_entry), &raw_path) != Some(root)
        {
            return Err("raw inclusion".into());
        }
        entry = [&[0x02][..], &commitment, &raw].concat();
    }
    match docs_inclusion_root(index, tree_size, docs_leaf(&entry), &path) {
        Some(r) if r == root => Ok((index, tree_size)),
        _ => Err("inclusion".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Error names (exhaustive matches: a new variant must be named here)

fn seal_error(e: &SealError) -> &'static str {
    match e {
        SealError::BadHeader => "BadHeader",
        SealError::Decrypt(_) => "Decrypt",
        SealError::BadRecord => "BadRecord",
        SealError::Key(_) => "Key",
    }
}

fn keyring_error(e: &KeyringError) -> &'static str {
    match e {
        KeyringError::File { .. } => "File",
        KeyringError::BadKeyFile(_) => "BadKeyFile",
        KeyringError::DamagedKeyFile(_) => "DamagedKeyFile",
        KeyringError::NoMaster(_) => "NoMaster",
        KeyringError::MissingMaster(_) => "MissingMaster",
        KeyringError::UnknownKey(_) => "UnknownKey",
        KeyringError::Unwrap(_) => "Unwrap",
        KeyringError::Db(_) => "Db",
        KeyringError::Erased(..) => "Erased",
    }
}

fn checkpoint_error(e: &CheckpointError) -> &'static str {
    match e {
        CheckpointError::Malformed(_) => "Malformed",
        CheckpointError::BadKey(_) => "BadKey",
        CheckpointError::NoSignature(_) => "NoSignature",
        CheckpointError::BadSignature(_) => "BadSignature",
    }
}

fn proof_error(e: &ProofError) -> &'static str {
    match e {
        ProofError::IndexOutOfRange { .. } => "IndexOutOfRange",
        ProofError::PathTooLong => "PathTooLong",
        ProofError::PathTooShort => "PathTooShort",
        ProofError::SizesOutOfOrder { .. } => "SizesOutOfOrder",
        ProofError::EqualSizes => "EqualSizes",
        ProofError::RootMismatch => "RootMismatch",
    }
}

fn bundle_error(e: &BundleError) -> String {
    match e {
        BundleError::Format(_) => "Format".into(),
        BundleError::Hex(_) => "Hex".into(),
        BundleError::Key(c) => format!("Key.{}", checkpoint_error(c)),
        BundleError::UnpinnedKey(..) => "UnpinnedKey".into(),
        BundleError::Checkpoint(c) => format!("Checkpoint.{}", checkpoint_error(c)),
        BundleError::SizeMismatch(..) => "SizeMismatch".into(),
        BundleError::Inclusion(p) => format!("Inclusion.{}", proof_error(p)),
        BundleError::RawInclusion(p) => format!("RawInclusion.{}", proof_error(p)),
        BundleError::Event(_) => "Event".into(),
        BundleError::EventDerived => "EventDerived".into(),
    }
}

fn encode_error(e: &EncodeError) -> &'static str {
    match e {
        EncodeError::TooManyPatientIds(_) => "TooManyPatientIds",
        EncodeError::TooLong { .. } => "TooLong",
    }
}

fn segment_error(e: &SegmentError) -> &'static str {
    match e {
        SegmentError::Io { .. } => "Io",
        SegmentError::Truncated { .. } => "Truncated",
        SegmentError::Mismatch { .. } => "Mismatch",
        SegmentError::Damaged { .. } => "Damaged",
        SegmentError::Layout { .. } => "Layout",
    }
}

// ---------------------------------------------------------------------------------------------
// Generation

fn hx(b: &[u8]) -> String {
    hex::encode(b)
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("a hex string")).expect("hex")
}

fn unhex32(v: &Value) -> [u8; 32] {
    unhex(v).try_into().expect("32 bytes")
}

fn str_of(v: &Value) -> &str {
    v.as_str().expect("a string")
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().expect("an unsigned integer")
}

fn list(v: &Value) -> &Vec<Value> {
    v.as_array().expect("an array")
}

/// Replaces the `u32` length prefix at `at` and the bytes after it (`old` of them) with `new`.
fn splice_field(bytes: &[u8], at: usize, old: usize, new: &[u8]) -> Vec<u8> {
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(&(new.len() as u32).to_be_bytes());
    out.extend_from_slice(new);
    out.extend_from_slice(&bytes[at + 4 + old..]);
    out
}

/// Offsets of the fields of an encoding: (patient count, received_ms, origin, format, raw).
fn offsets(bytes: &[u8]) -> (usize, usize, usize, usize, usize) {
    let mut at = 1;
    let skip = |at: &mut usize| {
        let n = u32::from_be_bytes(bytes[*at..*at + 4].try_into().unwrap()) as usize;
        *at += 4 + n;
    };
    for _ in 0..4 {
        skip(&mut at);
    }
    let count_at = at;
    let n = u16::from_be_bytes(bytes[at..at + 2].try_into().unwrap());
    at += 2;
    for _ in 0..n {
        skip(&mut at);
    }
    let ms_at = at;
    at += 8;
    let origin_at = at;
    skip(&mut at);
    let format_at = at;
    skip(&mut at);
    (count_at, ms_at, origin_at, format_at, at)
}

fn record_corruptions(recs: &[Rec]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut add = |name: &str, of: &str, bytes: Vec<u8>, why: &str| {
        assert_eq!(Record::decode(&bytes), None, "corruption {name} decodes");
        out.push(json!({"name": name, "of": of, "encoding": hx(&bytes), "why": why}));
    };
    let adt = encode(&recs[0].record);
    let (count_at, _, origin_at, _, raw_at) = offsets(&adt);
    let name = recs[0].name;
    let mut b = adt.clone();
    b[0] = 2;
    add(
        "unknown_version",
        name,
        b,
        "version byte 2: readers refuse versions they do not know",
    );
    let mut b = adt.clone();
    b[count_at + 1] += 1;
    add(
        "patient_id_count_too_large",
        name,
        b,
        "the u16 count says one identifier more than there are: the fields after it are misread",
    );
    let mut b = adt.clone();
    let raw_len = u32::from_be_bytes(b[raw_at..raw_at + 4].try_into().unwrap());
    b[raw_at..raw_at + 4].copy_from_slice(&(raw_len + 1).to_be_bytes());
    add(
        "raw_length_past_end",
        name,
        b,
        "the raw length runs one byte past the end",
    );
    let mut b = adt.clone();
    b.push(0x00);
    add(
        "trailing_byte",
        name,
        b,
        "one byte after raw: nothing may follow it",
    );
    add(
        "truncated",
        name,
        adt[..adt.len() - 1].to_vec(),
        "the last byte of raw is missing",
    );
    add("empty", name, Vec::new(), "no version byte");
    let mut b = adt.clone();
    b[1 + 4] = 0xff;
    add(
        "non_utf8_sender",
        name,
        b,
        "the sender's first byte is 0xFF: strings must be UTF-8",
    );
    let origin_len = u32::from_be_bytes(adt[origin_at..origin_at + 4].try_into().unwrap()) as usize;
    let origin = std::str::from_utf8(&adt[origin_at + 4..origin_at + 4 + origin_len]).unwrap();
    let spaced = origin.replacen("\",\"", "\", \"", 1);
    add(
        "origin_json_with_a_space",
        name,
        splice_field(&adt, origin_at, origin_len, spaced.as_bytes()),
        "the same origin with a space after a comma: only serde_json's compact spelling decodes",
    );
    let reordered = r#"{"peer":"10.0.0.5:51234","source":"mllp"}"#;
    assert_ne!(reordered, origin);
    add(
        "origin_json_keys_reordered",
        name,
        splice_field(&adt, origin_at, origin_len, reordered.as_bytes()),
        "the same origin with its keys in another order",
    );
    add(
        "origin_json_unknown_source",
        name,
        splice_field(&adt, origin_at, origin_len, br#"{"source":"fax"}"#),
        "an origin that is not one of the Origin variants",
    );
    out
}

/// Field offsets of a derived encoding: (mapping_version length, outcome length, bundle length).
fn derived_offsets(bytes: &[u8]) -> (usize, usize, usize) {
    let len = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let version_at = 1 + 16 + 32;
    let outcome_at = version_at + 4 + len(version_at) + 8;
    let bundle_at = outcome_at + 4 + len(outcome_at);
    (version_at, outcome_at, bundle_at)
}

fn derived_corruptions(ders: &[Der]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>, why: &str| {
        assert_eq!(
            DerivedRecord::decode(&bytes),
            None,
            "corruption {name} decodes"
        );
        assert_eq!(Content::decode(&bytes), None, "corruption {name} decodes");
        out.push(json!({"name": name, "of": ders[0].name, "encoding": hx(&bytes), "why": why}));
    };
    let enc = encode_derived(&ders[0].record);
    let (version_at, _, bundle_at) = derived_offsets(&enc);
    let mut b = enc.clone();
    b[0] = 3;
    add(
        "unknown_version",
        b,
        "version byte 3: readers refuse versions they do not know",
    );
    let mut b = enc.clone();
    b[0] = 1;
    add(
        "version_1",
        b,
        "version byte 1 on a derived encoding: read as a record encoding (v1), it does not parse",
    );
    add(
        "truncated_raw_id",
        enc[..1 + 10].to_vec(),
        "ends after 10 of the raw record id's 16 bytes",
    );
    let mut b = enc.clone();
    b[version_at..version_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    add(
        "mapping_version_length_past_end",
        b,
        "the mapping version's length is 2^32-1: it runs past the end",
    );
    let mut b = enc.clone();
    let n = u32::from_be_bytes(b[bundle_at..bundle_at + 4].try_into().unwrap());
    b[bundle_at..bundle_at + 4].copy_from_slice(&(n + 1).to_be_bytes());
    add(
        "bundle_length_past_end",
        b,
        "the bundle's length runs one byte past the end",
    );
    let mut b = enc.clone();
    b.push(0x00);
    add(
        "trailing_byte",
        b,
        "one byte after the bundle: nothing may follow it",
    );
    add(
        "truncated",
        enc[..enc.len() - 1].to_vec(),
        "the last byte of the bundle is missing",
    );
    let mut b = enc.clone();
    b[version_at + 4] = 0xff;
    add(
        "non_utf8_mapping_version",
        b,
        "the mapping version's first byte is 0xFF: strings must be UTF-8",
    );
    out
}

fn derived_json(d: &Der, sealed: &[SealedVec]) -> Value {
    let r = &d.record;
    json!({
        "name": d.name,
        "raw_record": sealed[d.raw].name,
        "fields": {
            "raw_record_id": r.raw_id.to_string(), "raw_commitment": hx(&r.raw_commitment),
            "mapping_version": r.mapping_version, "mapped_ms": r.mapped_ms,
            "outcome": hx(&r.outcome), "bundle": hx(&r.bundle),
        },
        "encoding": hx(&encode_derived(r)),
    })
}

fn generate() -> Value {
    let recs = records();
    let keys_dir = tempfile::tempdir().unwrap();
    let ring = vector_keyring(keys_dir.path());

    // Records.
    let origin_spellings: Vec<Value> = origins()
        .iter()
        .map(|o| json!({"origin": o, "json": serde_json::to_string(o).unwrap()}))
        .collect();
    let record_vectors: Vec<Value> = recs
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "parsed_from": r.parsed.map(|h| match h {
                    FormatHint::Hl7v2 => "hl7v2",
                    FormatHint::Fhir => "fhir",
                    FormatHint::Auto => "auto",
                }),
                "meta": r.record.meta,
                "raw": hx(&r.record.raw),
                "origin_json": serde_json::to_string(&r.record.meta.origin).unwrap(),
                "encoding": hx(&encode(&r.record)),
            })
        })
        .collect();
    let encode_limits = json!([
        {"name": "most_patient_ids", "patient_id": "1", "count": MAX_PATIENT_IDS, "error": null},
        {"name": "too_many_patient_ids", "patient_id": "1", "count": MAX_PATIENT_IDS + 1,
         "error": "TooManyPatientIds", "rejection_label": "too_many_patient_ids"},
    ]);

    // Commitments.
    let commitments: Vec<Value> = [(0usize, fill(0x00)), (2, [0xff; 32]), (3, fill(0x80))]
        .iter()
        .map(|(r, salt)| {
            let enc = encode(&recs[*r].record);
            json!({"record": recs[*r].name, "salt": hx(salt),
                   "commitment": hx(&seal::commitment(salt, &enc))})
        })
        .collect();

    // Sealed records.
    let sealed = sealed_vectors(&recs, &ring);
    let sealed_json: Vec<Value> = sealed
        .iter()
        .map(|s| {
            let header = seal::parse_header(&s.sealed.bytes).unwrap().len;
            json!({
                "record": s.name, "key_id": s.key_id, "data_key": hx(&s.key),
                "record_id": s.id.to_string(), "salt": hx(&s.salt), "nonce": hx(&s.nonce),
                "header": hx(&s.sealed.bytes[..header]), "sealed": hx(&s.sealed.bytes),
                "commitment": hx(&s.sealed.commitment),
            })
        })
        .collect();
    let mut sealed_corruptions = sealed_corruptions(&sealed, &recs);
    let (sealed_compressed, compressed_corruptions) = compressed_vectors(&sealed, &recs);
    sealed_corruptions.extend(compressed_corruptions);

    // Derived records, sealed under their raw records' keys.
    let ders = derivations(&sealed);
    let sealed_ders = sealed_derivations(&ders, &sealed);
    let derived_vectors: Vec<Value> = ders.iter().map(|d| derived_json(d, &sealed)).collect();
    let sealed_derived_json: Vec<Value> = ders
        .iter()
        .zip(&sealed_ders)
        .map(|(d, s)| {
            let raw = &sealed[d.raw];
            let header = seal::parse_header(&s.sealed.bytes).unwrap().len;
            json!({
                "derived": d.name, "key_id": raw.key_id, "data_key": hx(&raw.key),
                "record_id": d.id.to_string(), "salt": hx(&s.salt), "nonce": hx(&s.nonce),
                "header": hx(&s.sealed.bytes[..header]), "sealed": hx(&s.sealed.bytes),
                "commitment": hx(&s.sealed.commitment),
            })
        })
        .collect();

    // Keyring.
    let patient_key_ids: Vec<Value> = recs
        .iter()
        .filter_map(|r| r.record.patient_key_identity())
        .map(|identity| json!({"identity": identity, "key_id": ring.key_id_for(Some(identity))}))
        .collect();
    let dedup: Vec<Value> = recs
        .iter()
        .map(|r| {
            let (dedup, control) = ring.dedup_keys(&r.record);
            json!({"record": r.name, "dedup_key": hx(&dedup), "control_key": hx(&control)})
        })
        .collect();
    let wrapped = wrapped_keys(&sealed[0]);
    drop(ring);

    // Leaves and a small tree: the sealed records' commitments, then the derived records'.
    let mut entries: Vec<Vec<u8>> = sealed
        .iter()
        .map(|s| record_leaf(&s.sealed.commitment).to_vec())
        .collect();
    let mut leaves: Vec<Value> = entries
        .iter()
        .zip(&sealed)
        .map(|(e, s)| {
            json!({"record": s.name, "kind": e[0], "commitment": hx(&e[1..]),
                   "entry": hx(e), "leaf_hash": hx(&Sha3Hasher.leaf(e))})
        })
        .collect();
    for (d, s) in ders.iter().zip(&sealed_ders) {
        let e = derived_leaf(&s.sealed.commitment, &d.record.raw_commitment);
        leaves.push(
            json!({"record": d.name, "kind": e[0], "commitment": hx(&e[1..33]),
                           "raw_commitment": hx(&e[33..]), "entry": hx(&e),
                           "leaf_hash": hx(&Sha3Hasher.leaf(&e))}),
        );
        entries.push(e.to_vec());
    }
    let mut tree = MemoryTree::new(Sha3Hasher);
    for e in &entries {
        tree.push(Sha3Hasher.leaf(e));
    }
    let roots: Vec<Value> = (0..=tree.size())
        .map(|n| json!({"size": n, "root": hx(&tree.root(n).unwrap())}))
        .collect();

    let events = event_vectors();
    let (ledger, bundles) = ledger_vectors(&sealed, &ders, &sealed_ders);
    let segments = segment_vectors(&sealed, &recs, &ders, &sealed_ders);
    let vault = vault_vectors(&sealed, &recs, &ders, &sealed_ders);

    json!({
        "about": "Known-answer vectors for docs/FORMATS.md, generated and checked by tests/formats.rs \
                  (MEDANCHOR_REGENERATE_VECTORS=1 cargo test --test formats rewrites this file). \
                  Bytes are lowercase hex unless a field says base64. Tree, inclusion, consistency \
                  and checkpoint corruptions are in crates/merkle/testdata/vectors.json.",
        "records": {
            "valid": record_vectors,
            "corrupt": record_corruptions(&recs),
            "encode_limits": encode_limits,
            "origin_json": origin_spellings,
        },
        "derived": {"valid": derived_vectors, "corrupt": derived_corruptions(&ders)},
        "commitments": commitments,
        "sealed": {"valid": sealed_json, "corrupt": sealed_corruptions, "derived": sealed_derived_json,
                   "compressed": sealed_compressed},
        "keys": {
            "index_key": hx(&index_key()),
            "master_key": hx(&master_key()),
            "key_files": key_file_vectors(),
            "patient_key_ids": patient_key_ids,
            "dedup": dedup,
            "wrapped_data_keys": wrapped,
        },
        "leaves": leaves,
        "tree": {"roots": roots},
        "ledger": ledger,
        "bundles": bundles,
        "segments": segments,
        "vault": vault,
        "events": events,
    })
}

/// The four kinds of event, each encoded, sealed under a patient's key and as its leaf.
fn events() -> Vec<(&'static str, Event)> {
    let patient = format!("p-{}", hx(&fill(0x50)[..16]));
    let e = |kind, at_ms, body: &str| Event {
        kind,
        patient: patient.clone(),
        at_ms,
        body: Bytes::from(body.to_string()),
    };
    vec![
        (
            "consent_granted",
            e(
                EventKind::ConsentGranted,
                T1,
                r#"{"grant":{"grantee":"org-b","decision":"deny","labels":["PSY"]},"by":"pat-1"}"#,
            ),
        ),
        (
            "consent_revoked",
            e(
                EventKind::ConsentRevoked,
                T2,
                r#"{"revokes":"019aae02a47ba1a1a1a1a1a1a1a1a1a1","by":"pat-1"}"#,
            ),
        ),
        (
            "record_accessed",
            e(
                EventKind::RecordAccessed,
                T2,
                r#"{"resourceType":"AuditEvent","action":"R","outcome":"4","outcomeDesc":"deny"}"#,
            ),
        ),
        (
            "patient_erased",
            e(
                EventKind::PatientErased,
                T3,
                r#"{"by":"admin","reason":"request 42","keys_destroyed":1}"#,
            ),
        ),
    ]
}

fn encode_event(e: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    e.encode_into(&mut out).unwrap();
    out
}

fn event_vectors() -> Value {
    let valid: Vec<Value> = events()
        .into_iter()
        .enumerate()
        .map(|(i, (name, e))| {
            // An erasure is sealed under the gateway key: the patient's is destroyed.
            let key_id = match e.kind {
                EventKind::PatientErased => keyring::GATEWAY_KEY_ID.to_string(),
                _ => format!("p-{}", hx(&fill(0x50)[..16])),
            };
            let key = DataKey::new(&key_id, fill(0x60));
            let id = record_id(e.at_ms, 0xe0 + i as u8);
            let (salt, nonce) = (fill(0x70 + i as u8), nonce_of(40 + i));
            let sealed = seal::seal_event_with(&e, id, &key, salt, nonce).unwrap();
            let entry = medanchor_merkle::event_leaf(e.kind, &sealed.commitment);
            json!({
                "name": name, "kind": e.kind.byte(), "patient": e.patient, "at_ms": e.at_ms,
                "body": String::from_utf8(e.body.to_vec()).unwrap(),
                "encoding": hx(&encode_event(&e)),
                "key_id": key_id, "data_key": hx(&fill(0x60)), "record_id": id.to_string(),
                "salt": hx(&salt), "nonce": hx(&nonce), "sealed": hx(&sealed.bytes),
                "commitment": hx(&sealed.commitment), "entry": hx(&entry),
                "leaf_hash": hx(&Sha3Hasher.leaf(&entry)), "bundle_event": e.kind.name(),
            })
        })
        .collect();
    let good = encode_event(&events()[2].1);
    let plen = events()[2].1.patient.len();
    let corrupt = |name: &str, bytes: Vec<u8>| json!({"name": name, "encoding": hx(&bytes)});
    let mut not_utf8 = good.clone();
    not_utf8[6] = 0xff;
    let mut version = good.clone();
    version[0] = 2;
    let mut derived_kind = good.clone();
    derived_kind[1] = 0x02;
    let mut unknown_kind = good.clone();
    unknown_kind[1] = 0x07;
    let mut long_body = good.clone();
    let at = 2 + 4 + plen + 8;
    long_body[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut trailing = good.clone();
    trailing.push(0);
    json!({
        "valid": valid,
        "corrupt": [
            corrupt("version_2", version),
            corrupt("kind_of_a_derived_record", derived_kind),
            corrupt("kind_unknown", unknown_kind),
            corrupt("patient_not_utf8", not_utf8),
            corrupt("body_length_past_the_end", long_body),
            corrupt("body_cut_short", good[..good.len() - 1].to_vec()),
            corrupt("trailing_byte", trailing),
            corrupt("empty", Vec::new()),
        ],
    })
}

/// An event encoding read as docs/FORMATS.md describes it: (kind, patient, at_ms, body).
fn docs_read_event(mut b: &[u8]) -> Option<(u8, String, u64, Vec<u8>)> {
    if take(&mut b, 1)? != [3] {
        return None;
    }
    let kind = take(&mut b, 1)?[0];
    if !(0x03..=0x06).contains(&kind) {
        return None;
    }
    let patient = String::from_utf8(field(&mut b)?).ok()?;
    let at = u64::from_be_bytes(take(&mut b, 8)?.try_into().ok()?);
    let body = field(&mut b)?;
    b.is_empty().then_some((kind, patient, at, body))
}

fn check_events(v: &Value, n: &mut Count) {
    for e in list(&v["valid"]) {
        let encoding = unhex(&e["encoding"]);
        let kind = EventKind::from_byte(u8::try_from(u64_of(&e["kind"])).unwrap()).unwrap();
        let event = Event {
            kind,
            patient: str_of(&e["patient"]).into(),
            at_ms: u64_of(&e["at_ms"]),
            body: Bytes::from(str_of(&e["body"]).to_string()),
        };
        assert_eq!(encode_event(&event), encoding, "{}", e["name"]);
        assert_eq!(
            Content::decode(&encoding),
            Some(Content::Event(event.clone()))
        );
        assert_eq!(
            docs_read_event(&encoding),
            Some((
                kind.byte(),
                event.patient.clone(),
                event.at_ms,
                event.body.to_vec()
            )),
            "by the docs"
        );
        let id = RecordId::parse(str_of(&e["record_id"])).unwrap();
        let secret = unhex32(&e["data_key"]);
        let key = DataKey::new(str_of(&e["key_id"]), secret);
        let (salt, nonce) = (unhex32(&e["salt"]), unhex(&e["nonce"]).try_into().unwrap());
        let sealed = seal::seal_event_with(&event, id, &key, salt, nonce).unwrap();
        assert_eq!(hx(&sealed.bytes), str_of(&e["sealed"]));
        let (key_id, plain) = docs_open(&secret, &id, &sealed.bytes).expect("opens by the docs");
        assert_eq!(key_id, str_of(&e["key_id"]));
        assert_eq!((&plain[..32], &plain[32..]), (&salt[..], &encoding[..]));
        let commitment = docs_commitment(&salt, &encoding);
        assert_eq!(hx(&commitment), str_of(&e["commitment"]));
        let opened = seal::open_content(&sealed.bytes, id, &key).unwrap();
        assert_eq!(
            (opened.commitment, opened.content),
            (commitment, Content::Event(event))
        );
        let entry = unhex(&e["entry"]);
        assert_eq!(
            [&[kind.byte()][..], &commitment].concat(),
            entry,
            "by the docs"
        );
        let want = unhex32(&e["leaf_hash"]);
        assert_eq!(LogHasher.leaf(&entry), want, "the gateway's hasher");
        assert_eq!(Sha3Hasher.leaf(&entry), want, "the reference hasher");
        assert_eq!(docs_leaf(&entry), want);
        assert_eq!(Leaf::event(kind, id, commitment).entry(), entry);
        assert_eq!(str_of(&e["bundle_event"]), kind.name());
        n.checked += 1;
    }
    for c in list(&v["corrupt"]) {
        let bytes = unhex(&c["encoding"]);
        assert_eq!(Event::decode(&bytes), None, "{}", c["name"]);
        assert!(
            !matches!(Content::decode(&bytes), Some(Content::Event(_))),
            "{}",
            c["name"]
        );
        assert_eq!(docs_read_event(&bytes), None, "{} by the docs", c["name"]);
        n.checked += 1;
    }
}

/// The ADT vector record made long enough to be sealed compressed (version 2): its message with
/// notes appended until the encoding passes `seal::COMPRESS_FROM`.
fn long_record(recs: &[Rec]) -> Record {
    let mut r = recs[0].record.clone();
    let mut raw = r.raw.to_vec();
    let mut i = 1;
    while encode(&r).len() < seal::COMPRESS_FROM {
        raw.extend_from_slice(
            format!("NTE|{i}||Patient reports no change since the last visit.\r").as_bytes(),
        );
        r.raw = Bytes::from(raw.clone());
        i += 1;
    }
    r
}

/// Sealed records of version 2 (the long ADT record under the ADT vector's key), and version 2
/// records that must not open: the length in the header changed (the tag fails), and resealed
/// under the right key, a length one more or one less than the block's, a block cut short, a
/// byte after the block, a length LZ4 cannot reach and a short encoding compressed.
fn compressed_vectors(sealed: &[SealedVec], recs: &[Rec]) -> (Vec<Value>, Vec<Value>) {
    let s = &sealed[0];
    let record = long_record(recs);
    let enc = encode(&record);
    let id = record_id(record.meta.received_ms, 0xc1);
    let (salt, nonce) = (fill(0xe9), nonce_of(9));
    let key = DataKey::new(&s.key_id, s.key);
    let sealed_long = seal::seal_with(&record, id, &key, salt, nonce).unwrap();
    let header = seal::parse_header(&sealed_long.bytes).unwrap().len;
    let valid = vec![json!({
        "name": "adt_a01_long", "key_id": s.key_id, "data_key": hx(&s.key),
        "record_id": id.to_string(), "salt": hx(&salt), "nonce": hx(&nonce),
        "encoding_len": enc.len(), "header": hx(&sealed_long.bytes[..header]),
        "sealed": hx(&sealed_long.bytes), "commitment": hx(&sealed_long.commitment),
    })];
    // The block as the crate writes it (lz4_flex): LZ4 allows many blocks for one input, so the
    // docs side only decodes ([`docs_lz4_decode`]).
    let mut plain = salt.to_vec();
    plain.extend_from_slice(&lz4_flex::block::compress(&enc));
    let reseal = |len: usize, plain: &[u8]| {
        docs_seal_as(
            &s.key,
            &docs_header_v2(&s.key_id, &nonce, len),
            &nonce,
            &id,
            plain,
        )
    };
    assert_eq!(hx(&reseal(enc.len(), &plain)), hx(&sealed_long.bytes));
    let mut corrupt = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>, why: &str| {
        let e = seal::open(&bytes, id, &key)
            .err()
            .unwrap_or_else(|| panic!("corruption {name} opens"));
        corrupt.push(json!({
            "name": name, "of": "adt_a01_long", "sealed": hx(&bytes), "record_id": id.to_string(),
            "key_id": s.key_id, "data_key": hx(&s.key), "error": seal_error(&e), "why": why,
        }));
    };
    let mut c = sealed_long.bytes.clone();
    c[header - 1] ^= 0x01;
    add(
        "compressed_length_altered",
        c,
        "the encoding length in the header changed: it is authenticated, the tag fails",
    );
    add(
        "compressed_length_one_more",
        reseal(enc.len() + 1, &plain),
        "resealed with a length one more than the block decodes to",
    );
    add(
        "compressed_length_one_less",
        reseal(enc.len() - 1, &plain),
        "resealed with a length one less than the block decodes to",
    );
    add(
        "compressed_block_truncated",
        reseal(enc.len(), &plain[..plain.len() - 1]),
        "resealed with the block's last byte cut off",
    );
    let mut trailing = plain.clone();
    trailing.push(0);
    add(
        "compressed_trailing_byte",
        reseal(enc.len(), &trailing),
        "resealed with a byte after the block",
    );
    add(
        "compressed_length_unreachable",
        reseal(u32::MAX as usize - 8192, &plain),
        "a length more than 255 times the block's: refused before anything is allocated",
    );
    add(
        "compressed_short_encoding",
        reseal(seal::COMPRESS_FROM - 1, &plain),
        "a length under 4096: no writer compresses so short an encoding",
    );
    (valid, corrupt)
}

fn sealed_corruptions(sealed: &[SealedVec], recs: &[Rec]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut add = |name: &str,
                   s: &SealedVec,
                   bytes: Vec<u8>,
                   id: RecordId,
                   key_id: &str,
                   key: [u8; 32],
                   why: &str| {
        let e = seal::open(&bytes, id, &DataKey::new(key_id, key))
            .err()
            .unwrap_or_else(|| panic!("corruption {name} opens"));
        out.push(json!({
            "name": name, "of": s.name, "sealed": hx(&bytes), "record_id": id.to_string(),
            "key_id": key_id, "data_key": hx(&key), "error": seal_error(&e), "why": why,
        }));
    };
    let s = &sealed[0];
    let header = seal::parse_header(&s.sealed.bytes).unwrap().len;
    let b = &s.sealed.bytes;
    let mut c = b.clone();
    c[header + 40] ^= 0x01;
    add(
        "flipped_ciphertext_byte",
        s,
        c,
        s.id,
        &s.key_id,
        s.key,
        "one bit of the ciphertext changed",
    );
    let mut c = b.clone();
    let last = c.len() - 1;
    c[last] ^= 0x80;
    add(
        "flipped_tag_byte",
        s,
        c,
        s.id,
        &s.key_id,
        s.key,
        "one bit of the GCM tag changed",
    );
    let mut c = b.clone();
    c[header - 2] ^= 0x01;
    add(
        "flipped_nonce_byte",
        s,
        c,
        s.id,
        &s.key_id,
        s.key,
        "one bit of the nonce (in the header, so in the AAD) changed",
    );
    let mut other = s.id;
    other.0[15] ^= 0x01;
    add(
        "wrong_record_id",
        s,
        b.clone(),
        other,
        &s.key_id,
        s.key,
        "opened under another record id: the id is in the AAD",
    );
    add(
        "wrong_key",
        s,
        b.clone(),
        s.id,
        &s.key_id,
        fill(0x51),
        "another data key under the same key id",
    );
    add(
        "other_key_id",
        s,
        b.clone(),
        s.id,
        keyring::GATEWAY_KEY_ID,
        s.key,
        "the key offered has another id than the header names",
    );
    add(
        "truncated_by_one",
        s,
        b[..b.len() - 1].to_vec(),
        s.id,
        &s.key_id,
        s.key,
        "the last tag byte is missing",
    );
    add(
        "truncated_to_header",
        s,
        b[..header + 32 + 15].to_vec(),
        s.id,
        &s.key_id,
        s.key,
        "shorter than header, salt and tag",
    );
    let mut c = b.clone();
    c[0] = b'X';
    add(
        "bad_magic",
        s,
        c,
        s.id,
        &s.key_id,
        s.key,
        "does not start with MAS 0x01 or MAS 0x02",
    );
    let mut c = b.clone();
    c[3] = 0x03;
    add(
        "unknown_version",
        s,
        c,
        s.id,
        &s.key_id,
        s.key,
        "format version 3",
    );
    let mut c = b.clone();
    c[header - 1] = 16;
    add(
        "salt_length_not_32",
        s,
        c,
        s.id,
        &s.key_id,
        s.key,
        "the salt length byte says 16",
    );
    // The gateway-key record is short: a key id length of 255 runs past its end.
    let g = &sealed[2];
    let mut c = g.sealed.bytes.clone();
    c[4] = 0xff;
    add(
        "key_id_length_past_end",
        g,
        c,
        g.id,
        &g.key_id,
        g.key,
        "the key id length byte says 255: header, salt and tag would run past the end",
    );
    let mut c = g.sealed.bytes.clone();
    c[4] = 0;
    add(
        "key_id_length_zero",
        g,
        c,
        g.id,
        &g.key_id,
        g.key,
        "a key id of 0 bytes",
    );
    // Authenticated, but what it holds is not a record encoding (a trailing byte).
    let mut plain = s.salt.to_vec();
    plain.extend_from_slice(&encode(&recs[s.record].record));
    plain.push(0);
    add(
        "not_a_record_encoding",
        s,
        docs_seal(&s.key, &s.key_id, &s.nonce, &s.id, &plain),
        s.id,
        &s.key_id,
        s.key,
        "decrypts, but the plaintext is salt || encoding || 0x00",
    );
    out
}

fn key_file_vectors() -> Vec<Value> {
    let key = index_key();
    let written = key_file(&key);
    let hexkey = hx(&key);
    let check = written.lines().nth(1).unwrap().to_string();
    let mut damaged_check = check.clone().into_bytes();
    let last = damaged_check.len() - 1;
    damaged_check[last] = if damaged_check[last] == b'0' {
        b'1'
    } else {
        b'0'
    };
    let damaged_check = String::from_utf8(damaged_check).unwrap();
    let mut damaged_key = hexkey.clone().into_bytes();
    damaged_key[5] = if damaged_key[5] == b'a' { b'b' } else { b'a' };
    let damaged_key = String::from_utf8(damaged_key).unwrap();
    let cases: Vec<(&str, String, Result<bool, &str>)> = vec![
        ("as_written", written.clone(), Ok(true)),
        ("no_check_line", format!("{hexkey}\n"), Ok(false)),
        (
            "crlf_and_blank_lines",
            format!("\r\n{hexkey}\r\n\r\n{check}\r\n"),
            Ok(true),
        ),
        (
            "uppercase_hex",
            format!("{}\n{check}\n", hexkey.to_uppercase()),
            Ok(true),
        ),
        (
            "check_line_damaged",
            format!("{hexkey}\n{damaged_check}\n"),
            Err("DamagedKeyFile"),
        ),
        (
            "key_character_changed",
            format!("{damaged_key}\n{check}\n"),
            Err("DamagedKeyFile"),
        ),
        (
            "check_line_of_another_key",
            format!("{hexkey}\n{}\n", docs_key_check(&fill(0x11))),
            Err("DamagedKeyFile"),
        ),
        ("not_hex", "zz\n".into(), Err("BadKeyFile")),
        (
            "31_bytes",
            format!("{}\n", &hexkey[..62]),
            Err("BadKeyFile"),
        ),
        (
            "extra_line",
            format!("{written}check 0000000000000000\n"),
            Err("BadKeyFile"),
        ),
        ("empty", String::new(), Err("BadKeyFile")),
    ];
    cases
        .into_iter()
        .map(|(name, text, expect)| {
            let got = read_key_text(&text);
            match (&got, &expect) {
                (Ok((k, c)), Ok(checked)) => assert!(k == &key && c == checked, "{name}"),
                (Err(e), Err(want)) => assert_eq!(e, want, "{name}"),
                _ => panic!("key file {name}: {got:?}"),
            }
            match expect {
                Ok(checked) => {
                    json!({"name": name, "text": text, "key": hexkey, "checked": checked})
                }
                Err(e) => json!({"name": name, "text": text, "error": e}),
            }
        })
        .collect()
}

/// Reads key file text with the gateway's reader: (key, has a check line) or the error's name.
fn read_key_text(text: &str) -> Result<([u8; 32], bool), &'static str> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    std::fs::write(&path, text).unwrap();
    keyring::read_key_file(&path)
        .map(|k| (*k.secret, k.checked))
        .map_err(|e| keyring_error(&e))
}

/// What a vector is expected to do: succeed, or fail with the named error.
type Expect = Result<(), &'static str>;

const DATA_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data_keys");

/// Wrapped data keys: (stored under key id, wrapping master id, nonce, wrapped bytes, expected).
fn wrapped_cases(s: &SealedVec) -> Vec<(&'static str, String, Vec<u8>, Expect)> {
    let wrap = |master_id: u32, aad: &str, nonce: [u8; 12]| {
        let mut buf = s.key.to_vec();
        let tag = Aes256Gcm::new((&master_key()).into())
            .encrypt_inout_detached((&nonce).into(), aad.as_bytes(), buf.as_mut_slice().into())
            .unwrap();
        let mut out = master_id.to_be_bytes().to_vec();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
        out
    };
    let nonce: [u8; 12] = std::array::from_fn(|i| 0xe0 + i as u8);
    let valid = wrap(1, &s.key_id, nonce);
    let mut flipped = valid.clone();
    flipped[20] ^= 0x01;
    vec![
        ("valid", s.key_id.clone(), valid.clone(), Ok(())),
        (
            "stored_under_another_key_id",
            "p-00000000000000000000000000000000".into(),
            valid.clone(),
            Err("Unwrap"),
        ),
        (
            "flipped_wrapped_byte",
            "p-00000000000000000000000000000001".into(),
            flipped,
            Err("Unwrap"),
        ),
        (
            "master_2_missing",
            "p-00000000000000000000000000000002".into(),
            wrap(2, "p-00000000000000000000000000000002", nonce),
            Err("MissingMaster"),
        ),
        (
            "truncated",
            "p-00000000000000000000000000000003".into(),
            valid[..valid.len() - 1].to_vec(),
            Err("Unwrap"),
        ),
    ]
}

/// Stores the wrapped keys in a vector keyring and reads each back with the gateway's keyring:
/// `Ok` when it unwraps to a key that seals like `s`'s data key.
fn unwrap_with_keyring(
    s: &SealedVec,
    rec: &Record,
    stored: &[(String, Vec<u8>)],
) -> Vec<Result<(), &'static str>> {
    let dir = tempfile::tempdir().unwrap();
    drop(vector_keyring(dir.path()));
    {
        let db = redb::Database::open(dir.path().join("keyring.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(DATA_KEYS).unwrap();
            for (id, wrapped) in stored {
                t.insert(id.as_bytes(), wrapped.as_slice()).unwrap();
            }
        }
        w.commit().unwrap();
    }
    let ring = Keyring::open(dir.path(), false).unwrap();
    let expect = seal::seal_with(rec, s.id, &DataKey::new(&s.key_id, s.key), s.salt, s.nonce)
        .unwrap()
        .bytes;
    stored
        .iter()
        .map(|(id, _)| {
            let key = ring.get(id).map_err(|e| keyring_error(&e))?;
            // Sealed under the unwrapped key with the vector's key id, the bytes must be those
            // sealed under the vector's data key.
            let got = seal::seal_with(rec, s.id, &key, s.salt, s.nonce)
                .unwrap()
                .bytes;
            if key.id() == s.key_id && got == expect {
                Ok(())
            } else {
                Err("unwrapped another key")
            }
        })
        .collect()
}

fn wrapped_keys(s: &SealedVec) -> Vec<Value> {
    let recs = records();
    let cases = wrapped_cases(s);
    let stored: Vec<(String, Vec<u8>)> = cases.iter().map(|c| (c.1.clone(), c.2.clone())).collect();
    let results = unwrap_with_keyring(s, &recs[s.record].record, &stored);
    cases
        .iter()
        .zip(results)
        .map(|((name, id, wrapped, expect), got)| {
            assert_eq!(&got, expect, "wrapped key {name}");
            let mut v = json!({"name": name, "stored_under": id, "wrapped": hx(wrapped)});
            match expect {
                Ok(()) => v["data_key"] = hx(&s.key).into(),
                Err(e) => v["error"] = (*e).into(),
            }
            v
        })
        .collect()
}

/// The synthetic leaves that fill the ledger vector up to [`LEDGER_LEAVES`].
fn synthetic(i: u32) -> (RecordId, [u8; 32]) {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&T2.to_be_bytes()[2..]);
    id[12..].copy_from_slice(&i.to_be_bytes());
    (
        RecordId(id),
        sha3(&[b"medanchor vectors synthetic leaf", &i.to_be_bytes()]),
    )
}

fn ledger_appends(sealed: &[SealedVec]) -> [Vec<(RecordId, [u8; 32])>; 2] {
    let first: Vec<_> = sealed.iter().map(|s| (s.id, s.sealed.commitment)).collect();
    let rest = (0..(LEDGER_LEAVES as usize - first.len()) as u32)
        .map(synthetic)
        .collect();
    [first, rest]
}

const LEAVES: TableDefinition<u64, &[u8]> = TableDefinition::new("leaves");
const BY_RECORD: TableDefinition<&[u8], u64> = TableDefinition::new("by_record");
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
const TILES: TableDefinition<u64, &[u8]> = TableDefinition::new("tiles");
const TILE_ROOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("tile_roots");

/// What the gateway's ledger holds after the vector appends: checkpoints, table rows, the
/// proof bundle of the first record after the first two appends, and the proofs asked for after
/// the third (the derived records).
struct LedgerState {
    checkpoints: Vec<(u64, String)>,
    leaves: Vec<(u64, Vec<u8>)>,
    by_record: Vec<(Vec<u8>, u64)>,
    tiles: Vec<(u64, Vec<u8>)>,
    tile_roots: Vec<(u64, Vec<u8>)>,
    bundle: String,
    proofs: Vec<ProofBundle>,
}

fn signer(seed: [u8; 32]) -> NoteSigner {
    NoteSigner::new(ORIGIN, SigningKey::from_bytes(&seed)).unwrap()
}

fn run_ledger(
    appends: &[Vec<(RecordId, [u8; 32])>; 2],
    derived: &[Leaf],
    prove: RecordId,
    prove_last: &[RecordId],
) -> LedgerState {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    {
        let ledger = EmbeddedLedger::open(&path, ORIGIN, signer(signing_seed()), true).unwrap();
        let leaves = |a: &[(RecordId, [u8; 32])]| -> Vec<Leaf> {
            a.iter().map(|&(id, c)| Leaf::record(id, c)).collect()
        };
        ledger
            .append_records(&leaves(&appends[0]), T1)
            .unwrap()
            .unwrap();
        ledger
            .append_records(&leaves(&appends[1]), T2)
            .unwrap()
            .unwrap();
        let bundle = serde_json::to_string_pretty(&ledger.proof(&prove).unwrap()).unwrap() + "\n";
        ledger.append_records(derived, T3).unwrap().unwrap();
        let proofs = prove_last
            .iter()
            .map(|id| ledger.proof(id).unwrap())
            .collect();
        drop(ledger);
        let db = redb::Database::open(&path).unwrap();
        let r = db.begin_read().unwrap();
        let u64_rows = |def: TableDefinition<u64, &'static [u8]>| -> Vec<(u64, Vec<u8>)> {
            r.open_table(def)
                .unwrap()
                .iter()
                .unwrap()
                .map(|e| {
                    let (k, v) = e.unwrap();
                    (k.value(), v.value().to_vec())
                })
                .collect()
        };
        let checkpoints = u64_rows(CHECKPOINTS)
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
            .collect();
        let by_record = r
            .open_table(BY_RECORD)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().to_vec(), v.value())
            })
            .collect();
        LedgerState {
            checkpoints,
            leaves: u64_rows(LEAVES),
            by_record,
            tiles: u64_rows(TILES),
            tile_roots: u64_rows(TILE_ROOTS),
            bundle,
            proofs,
        }
    }
}

/// The records proven after the third append: the first derived record (the `derived_valid`
/// bundle), the raw record of the second and the third derived record (for corruptions).
fn proven_last(sealed: &[SealedVec], ders: &[Der]) -> Vec<RecordId> {
    vec![ders[0].id, sealed[ders[1].raw].id, ders[2].id]
}

fn ledger_vectors(
    sealed: &[SealedVec],
    ders: &[Der],
    sealed_ders: &[SealedDer],
) -> (Value, Vec<Value>) {
    let appends = ledger_appends(sealed);
    let derived: Vec<Leaf> = ders
        .iter()
        .zip(sealed_ders)
        .map(|(d, s)| derived_leaf_of(d, s))
        .collect();
    let state = run_ledger(&appends, &derived, sealed[0].id, &proven_last(sealed, ders));
    let verifier = signer(signing_seed()).verifier();
    let checkpoints: Vec<Value> = state
        .checkpoints
        .iter()
        .map(|(size, text)| {
            let body = &text[..text.find("\n\n").unwrap() + 1];
            json!({"size": size, "body": body, "text": text})
        })
        .collect();
    let leaf_rows: Vec<Value> = state
        .leaves
        .iter()
        .filter(|(i, _)| [0, 4, 5, 255, 256, 257, 258, 259].contains(i))
        .map(|(i, v)| json!({"index": i, "value": hx(v)}))
        .collect();
    let by_record: Vec<Value> = state
        .by_record
        .iter()
        .filter(|(_, i)| [0, 4, 5, 256, 257, 259].contains(i))
        .map(|(k, i)| json!({"record_id": hx(k), "index": i}))
        .collect();
    assert_eq!(state.tiles.len(), 1, "one full tile");
    let (tile, row) = &state.tiles[0];
    let level_offsets: Vec<usize> = (0..=TILE_HEIGHT)
        .map(|l| (1usize << (TILE_HEIGHT + 1)) - (1usize << (TILE_HEIGHT + 1 - l)))
        .collect();
    let ledger = json!({
        "origin": ORIGIN,
        "signing_seed": hx(&signing_seed()),
        "public_key": hx(verifier.key.as_bytes()),
        "key_hash": hx(&verifier.key_hash),
        "verifier_key": verifier.to_vkey(),
        "appends": [
            {"timestamp_ms": T1, "records": appends[0].iter().map(|(id, c)| json!({"record_id": id.to_string(), "commitment": hx(c)})).collect::<Vec<_>>()},
            {"timestamp_ms": T2, "synthetic": appends[1].len(),
             "rule": "record i (from 0): record id = u48 timestamp_ms || 6 zero bytes || u32 i; commitment = SHA3-256(\"medanchor vectors synthetic leaf\" || u32 i)"},
            {"timestamp_ms": T3, "derived": derived.iter().map(|l| {
                let (raw_id, raw_c) = l.derived_from.unwrap();
                json!({"record_id": l.record_id.to_string(), "commitment": hx(&l.commitment),
                       "raw_record_id": raw_id.to_string(), "raw_commitment": hx(&raw_c)})
            }).collect::<Vec<_>>()},
        ],
        "checkpoints": checkpoints,
        "tables": {
            "leaves": leaf_rows,
            "by_record": by_record,
            "tiles": [{"tile": tile, "row_base64": B64.encode(row), "row_sha3_256": hx(&sha3(&[row])), "level_offsets": level_offsets}],
            "tile_roots": state.tile_roots.iter().map(|(t, r)| json!({"tile": t, "root": hx(r)})).collect::<Vec<_>>(),
        },
    });
    let mut bundles = bundle_vectors(&state.bundle, &verifier, sealed);
    bundles.extend(derived_bundle_vectors(
        &state.bundle,
        &state.proofs,
        &verifier,
        sealed,
        sealed_ders,
    ));
    (ledger, bundles)
}

/// Proof bundles of a derived record: `proofs` are those of [`proven_last`], the first of them
/// the valid one.
fn derived_bundle_vectors(
    raw_valid: &str,
    proofs: &[ProofBundle],
    verifier: &NoteVerifier,
    sealed: &[SealedVec],
    sealed_ders: &[SealedDer],
) -> Vec<Value> {
    let valid = serde_json::to_string_pretty(&proofs[0]).unwrap() + "\n";
    let v: Value = serde_json::from_str(&valid).unwrap();
    let pinned_key = verifier.to_vkey();
    let pinned = Some(pinned_key.as_str());
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut b = v.clone();
        f(&mut b);
        serde_json::to_string_pretty(&b).unwrap() + "\n"
    };
    // derived_from taken from another leaf's proof in the same tree.
    let from_proof = |p: &ProofBundle| {
        json!({"record_id": p.record_id, "commitment": p.commitment,
               "leaf_index": p.leaf_index, "inclusion": p.inclusion})
    };
    let (other_raw, other_derived) = (from_proof(&proofs[1]), from_proof(&proofs[2]));
    let other_raw_commitment = hx(&sealed[1].sealed.commitment);
    let other_derived_commitment = hx(&sealed_ders[1].sealed.commitment);
    let tree_size = proofs[0].tree_size;
    let mut raw_with_null: Value = serde_json::from_str(raw_valid).unwrap();
    raw_with_null["derived_from"] = Value::Null;
    let raw_with_null = serde_json::to_string_pretty(&raw_with_null).unwrap() + "\n";
    let cases: Vec<(&str, String, Option<&str>, Expect, &str)> = vec![
        ("derived_valid", valid.clone(), pinned, Ok(()),
         "the proof of sealed.derived[0] as `medanchor proof` writes it: its derived leaf and its raw record's leaf, in one tree"),
        ("derived_raw_record_id_changed", edit(&|b| b["derived_from"]["record_id"] = "00000000000000000000000000000000".into()), pinned, Ok(()),
         "verifies: the raw record id is in no leaf; the derived record's content and the raw record's AAD bind it"),
        ("derived_wrong_leaf", edit(&|b| b["commitment"] = other_derived_commitment.clone().into()), pinned, Err("Inclusion.RootMismatch"),
         "another derived record's commitment"),
        ("derived_wrong_raw_commitment", edit(&|b| b["derived_from"]["commitment"] = other_raw_commitment.clone().into()), pinned, Err("RawInclusion.RootMismatch"),
         "another raw record's commitment with the raw leaf's index and path: the raw leaf is checked first"),
        ("derived_from_another_raw_record", edit(&|b| b["derived_from"] = other_raw.clone()), pinned, Err("Inclusion.RootMismatch"),
         "the id, commitment, index and path of another raw record in the log: its leaf verifies, but the derived leaf binds the first raw record's commitment"),
        ("derived_truncated_raw_inclusion_path", edit(&|b| { b["derived_from"]["inclusion"].as_array_mut().unwrap().pop(); }), pinned, Err("RawInclusion.PathTooShort"),
         "the last hash of the raw leaf's path removed"),
        ("derived_extra_raw_inclusion_hash", edit(&|b| { let first = b["derived_from"]["inclusion"][0].clone(); b["derived_from"]["inclusion"].as_array_mut().unwrap().push(first); }), pinned, Err("RawInclusion.PathTooLong"),
         "a hash added to the raw leaf's path"),
        ("derived_raw_leaf_index_off_by_one", edit(&|b| b["derived_from"]["leaf_index"] = 1.into()), pinned, Err("RawInclusion.RootMismatch"),
         "the raw leaf's index 1 instead of 0"),
        ("derived_raw_leaf_index_beyond_size", edit(&|b| b["derived_from"]["leaf_index"] = tree_size.into()), pinned, Err("RawInclusion.IndexOutOfRange"),
         "the raw leaf's index = tree_size"),
        ("derived_truncated_inclusion_path", edit(&|b| { b["inclusion"].as_array_mut().unwrap().pop(); }), pinned, Err("Inclusion.PathTooShort"),
         "the last hash of the derived leaf's own path removed"),
        ("derived_from_names_a_derived_leaf", edit(&|b| b["derived_from"] = other_derived.clone()), pinned, Err("RawInclusion.RootMismatch"),
         "derived_from names a derived record's leaf (in the log, but kind 0x02): the raw leaf must be 0x01 || commitment"),
        ("derived_from_removed", edit(&|b| { b.as_object_mut().unwrap().remove("derived_from"); }), pinned, Err("Inclusion.RootMismatch"),
         "without derived_from the leaf is taken to be 0x01 || commitment, which is not in the tree"),
        ("derived_from_null", edit(&|b| b["derived_from"] = Value::Null), pinned, Err("Inclusion.RootMismatch"),
         "null is read as absent: as derived_from_removed"),
        ("raw_with_derived_from_null", raw_with_null, pinned, Ok(()),
         "the raw `valid` bundle with \"derived_from\": null verifies: null is read as absent (writers leave the field out)"),
        ("derived_raw_commitment_not_hex", edit(&|b| b["derived_from"]["commitment"] = "zz".into()), pinned, Err("Hex"),
         "derived_from.commitment is not 32 bytes of hex"),
        ("derived_raw_inclusion_hash_not_hex", edit(&|b| b["derived_from"]["inclusion"][0] = "00".into()), pinned, Err("Hex"),
         "the first hash of derived_from.inclusion is one byte"),
        ("derived_from_unknown_field", edit(&|b| b["derived_from"]["note"] = "extra".into()), pinned, Err("Json"),
         "a field derived_from does not have"),
        ("derived_from_missing_field", edit(&|b| { b["derived_from"].as_object_mut().unwrap().remove("leaf_index"); }), pinned, Err("Json"),
         "derived_from.leaf_index removed"),
    ];
    bundle_cases(cases)
}

/// Checks each proof-bundle case against the verifier and writes it as a vector.
fn bundle_cases(cases: Vec<(&str, String, Option<&str>, Expect, &str)>) -> Vec<Value> {
    cases
        .into_iter()
        .map(|(name, text, pin, expect, why)| {
            let got = verify_bundle_text(&text, pin);
            assert_eq!(got, expect.map_err(String::from), "bundle {name}");
            let mut out = json!({"name": name, "bundle": text, "pinned_key": pin, "why": why});
            out["error"] = match expect {
                Ok(()) => Value::Null,
                Err(e) => e.into(),
            };
            out
        })
        .collect()
}

fn bundle_vectors(valid: &str, verifier: &NoteVerifier, sealed: &[SealedVec]) -> Vec<Value> {
    let v: Value = serde_json::from_str(valid).unwrap();
    let other_key = signer(other_seed()).verifier().to_vkey();
    let pinned_key = verifier.to_vkey();
    let (pinned, other) = (pinned_key.as_str(), other_key.as_str());
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut b = v.clone();
        f(&mut b);
        serde_json::to_string_pretty(&b).unwrap() + "\n"
    };
    let path_len = v["inclusion"].as_array().unwrap().len();
    let cp = v["checkpoint"].as_str().unwrap().to_string();
    let sig_at = cp.rfind(' ').unwrap() + 1;
    let mut sig = B64.decode(cp[sig_at..].trim_end()).unwrap();
    sig[10] ^= 0x01;
    let bad_sig_cp = format!("{}{}\n", &cp[..sig_at], B64.encode(&sig));
    let mut bad_hash_key: Vec<&str> = pinned.split('+').collect();
    bad_hash_key[1] = "00000000";
    let bad_hash_key = bad_hash_key.join("+");
    let other_commitment = hx(&sealed[1].sealed.commitment);
    let cases: Vec<(&str, String, Option<&str>, Expect, &str)> = vec![
        ("valid", valid.to_string(), Some(pinned), Ok(()), "as `medanchor proof` writes it"),
        ("valid_unpinned", valid.to_string(), None, Ok(()), "the bundle's own key trusted as given"),
        ("record_id_changed", edit(&|b| b["record_id"] = "00000000000000000000000000000000".into()), Some(pinned), Ok(()),
         "verifies: the record id is not in the leaf or the checkpoint; only the sealed record binds it (AAD)"),
        ("wrong_leaf", edit(&|b| b["commitment"] = other_commitment.clone().into()), Some(pinned), Err("Inclusion.RootMismatch"), "another record's commitment"),
        ("truncated_inclusion_path", edit(&|b| { b["inclusion"].as_array_mut().unwrap().pop(); }), Some(pinned), Err("Inclusion.PathTooShort"), "the last hash of the path removed"),
        ("extra_inclusion_hash", edit(&|b| { let first = b["inclusion"][0].clone(); b["inclusion"].as_array_mut().unwrap().push(first); }), Some(pinned), Err("Inclusion.PathTooLong"), "a hash added to the path"),
        ("flipped_inclusion_hash", edit(&|b| { let h = b["inclusion"][path_len - 1].as_str().unwrap().to_string(); let mut raw = hex::decode(h).unwrap(); raw[0] ^= 1; b["inclusion"][path_len - 1] = hx(&raw).into(); }), Some(pinned), Err("Inclusion.RootMismatch"), "one bit of the top path hash changed"),
        ("leaf_index_changed", edit(&|b| b["leaf_index"] = 1.into()), Some(pinned), Err("Inclusion.RootMismatch"), "leaf 1 instead of 0"),
        ("leaf_index_beyond_size", edit(&|b| b["leaf_index"] = LEDGER_LEAVES.into()), Some(pinned), Err("Inclusion.IndexOutOfRange"), "leaf_index = tree_size"),
        ("tree_size_mismatch", edit(&|b| b["tree_size"] = (LEDGER_LEAVES - 1).into()), Some(pinned), Err("SizeMismatch"), "tree_size is not the checkpoint's size"),
        ("trailing_bytes", format!("{valid}x"), Some(pinned), Err("Json"), "a byte after the JSON object"),
        ("unknown_field", edit(&|b| b["note"] = "extra".into()), Some(pinned), Err("Json"), "a field the format does not have"),
        ("missing_field", edit(&|b| { b.as_object_mut().unwrap().remove("public_key"); }), Some(pinned), Err("Json"), "public_key removed"),
        ("unknown_format", edit(&|b| b["format"] = "medanchor-proof/2".into()), Some(pinned), Err("Format"), "another format version"),
        ("commitment_not_hex", edit(&|b| b["commitment"] = "zz".into()), Some(pinned), Err("Hex"), "the commitment is not 32 bytes of hex"),
        ("bundle_key_not_pinned_key", valid.to_string(), Some(other), Err("UnpinnedKey"), "verified with another key pinned"),
        ("wrong_key_in_bundle", edit(&|b| b["public_key"] = other.into()), None, Err("Checkpoint.NoSignature"), "the bundle names another key (same name): no signature of it"),
        ("key_hash_mismatch", edit(&|b| b["public_key"] = bad_hash_key.clone().into()), None, Err("Key.BadKey"), "the verifier key's hash does not match its name and key"),
        ("checkpoint_signature_flipped", edit(&|b| b["checkpoint"] = bad_sig_cp.clone().into()), Some(pinned), Err("Checkpoint.BadSignature"), "one bit of the Ed25519 signature changed"),
        ("checkpoint_root_changed", edit(&|b| { let c = b["checkpoint"].as_str().unwrap().to_string(); let mut lines: Vec<String> = c.split('\n').map(String::from).collect(); let mut root = B64.decode(&lines[2]).unwrap(); root[0] ^= 1; lines[2] = B64.encode(root); b["checkpoint"] = lines.join("\n").into(); }), Some(pinned), Err("Checkpoint.BadSignature"), "the signed root changed"),
    ];
    bundle_cases(cases)
}

/// Parses and verifies bundle text with medanchor-merkle; `Err` names the failure.
fn verify_bundle_text(text: &str, pinned: Option<&str>) -> Result<(), String> {
    let bundle: ProofBundle = serde_json::from_str(text).map_err(|_| "Json".to_string())?;
    let pinned = pinned.map(|p| NoteVerifier::parse(p).unwrap());
    bundle
        .verify(pinned.as_ref())
        .map(|_| ())
        .map_err(|e| bundle_error(&e))
}

// ---------------------------------------------------------------------------------------------
// Segments

/// An entry's bytes as the vault stages them (appended to a fresh log and read back).
fn stage_entry(h: &EntryHeader, sealed: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let log =
        SegmentLog::recover(dir.path(), Tail::default(), 1 << 20, true, &mut |_, _| {}).unwrap();
    let mut staged = Staged::default();
    SegmentLog::stage(&mut staged, h, sealed);
    log.append(&staged).unwrap();
    drop(log);
    std::fs::read(dir.path().join("00000000.seg")).unwrap()
}

/// The segment entries of the vectors: the first three sealed records with their dedup keys,
/// then the first derived record (its header names its raw record instead).
fn segment_entries(
    sealed: &[SealedVec],
    recs: &[Rec],
    ders: &[Der],
    sealed_ders: &[SealedDer],
) -> Vec<(String, EntryHeader, Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let ring = vector_keyring(dir.path());
    let mut out: Vec<_> = sealed[..3]
        .iter()
        .map(|s| {
            let (dedup_key, control_key) = ring.dedup_keys(&recs[s.record].record);
            let h = EntryHeader {
                record_id: s.id,
                commitment: s.sealed.commitment,
                dedup_key,
                control_key,
            };
            let entry = stage_entry(&h, &s.sealed.bytes);
            (s.name.clone(), h, s.sealed.bytes.clone(), entry)
        })
        .collect();
    let (d, s) = (&ders[0], &sealed_ders[0]);
    let h = EntryHeader::derived(
        d.id,
        s.sealed.commitment,
        d.record.raw_id,
        d.record.raw_commitment,
    );
    let entry = stage_entry(&h, &s.sealed.bytes);
    out.push((d.name.to_string(), h, s.sealed.bytes.clone(), entry));
    out
}

/// A step of a segment layout: an entry by number, with one byte flipped or the last bytes cut.
#[derive(Clone, Copy)]
enum Put {
    Entry(usize),
    Flipped(usize, usize),
    Cut(usize, usize),
}

fn layout_json(files: &[Vec<Put>]) -> Value {
    files
        .iter()
        .map(|f| {
            f.iter()
                .map(|p| match *p {
                    Put::Entry(e) => json!({"entry": e}),
                    Put::Flipped(e, at) => json!({"entry": e, "flip_byte_at": at}),
                    Put::Cut(e, n) => json!({"entry": e, "cut_last_bytes": n}),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn layout_of(v: &Value) -> Vec<Vec<Put>> {
    list(v)
        .iter()
        .map(|f| {
            list(f)
                .iter()
                .map(|p| {
                    let e = u64_of(&p["entry"]) as usize;
                    if let Some(at) = p["flip_byte_at"].as_u64() {
                        Put::Flipped(e, at as usize)
                    } else if let Some(n) = p["cut_last_bytes"].as_u64() {
                        Put::Cut(e, n as usize)
                    } else {
                        Put::Entry(e)
                    }
                })
                .collect()
        })
        .collect()
}

fn write_layout(dir: &Path, files: &[Vec<Put>], entries: &[Vec<u8>]) {
    for (n, f) in files.iter().enumerate() {
        let mut bytes = Vec::new();
        for p in f {
            match *p {
                Put::Entry(e) => bytes.extend_from_slice(&entries[e]),
                Put::Flipped(e, at) => {
                    let mut b = entries[e].clone();
                    b[at] ^= 0x01;
                    bytes.extend_from_slice(&b);
                }
                Put::Cut(e, n) => bytes.extend_from_slice(&entries[e][..entries[e].len() - n]),
            }
        }
        std::fs::write(dir.join(format!("{n:08}.seg")), bytes).unwrap();
    }
}

/// Opens a segment layout with the gateway's recovery: what it found, as JSON.
fn recover_layout(files: &[Vec<Put>], entries: &[Vec<u8>]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    write_layout(dir.path(), files, entries);
    let mut seen = Vec::new();
    let result = SegmentLog::recover(dir.path(), Tail::default(), 1 << 20, false, &mut |h, at| {
        seen.push(json!({"record_id": h.record_id.to_string(), "segment": at.segment, "offset": at.offset, "len": at.len}))
    });
    match result {
        Ok(log) => {
            let tail = log.tail();
            let torn: Vec<Value> = std::fs::read_dir(dir.path().join("torn"))
                .map(|rd| {
                    rd.map(|e| {
                        let e = e.unwrap();
                        json!({"kept_as": format!("torn/{}", e.file_name().to_string_lossy()),
                               "bytes": hx(&std::fs::read(e.path()).unwrap())})
                    })
                    .collect()
                })
                .unwrap_or_default();
            json!({"records": seen, "tail": {"segment": tail.segment, "len": tail.len}, "torn": torn})
        }
        Err(e) => {
            let mut out = json!({"error": segment_error(&e)});
            if let SegmentError::Damaged {
                segment,
                offset,
                record,
                next_segment,
                next_valid,
            } = e
            {
                out["at"] = json!({"segment": segment, "offset": offset, "record_id": record.to_string(),
                                   "next_segment": next_segment, "next_valid": next_valid});
            }
            out
        }
    }
}

/// `medanchor repair` on a layout: what it set aside, the padding it wrote, and what a recovery
/// then finds.
fn repair_layout(files: &[Vec<Put>], entries: &[Vec<u8>]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    write_layout(dir.path(), files, entries);
    let aside = SegmentLog::repair(dir.path(), Tail::default()).unwrap();
    let set_aside: Vec<Value> = aside
        .iter()
        .map(|s| {
            let seg = std::fs::read(dir.path().join(format!("{:08}.seg", s.segment))).unwrap();
            let span = &seg[s.offset as usize..(s.offset + s.len) as usize];
            json!({
                "segment": s.segment, "offset": s.offset, "len": s.len,
                "record_id": s.record.to_string(),
                "kept_as": s.kept.strip_prefix(dir.path()).unwrap().to_string_lossy(),
                "kept_bytes": hx(&std::fs::read(&s.kept).unwrap()),
                "padding_entry": hx(span),
            })
        })
        .collect();
    let mut seen = Vec::new();
    SegmentLog::recover(dir.path(), Tail::default(), 1 << 20, false, &mut |h, _| {
        seen.push(h.record_id.to_string())
    })
    .unwrap();
    json!({"set_aside": set_aside, "records_after": seen})
}

fn segment_cases() -> Vec<(&'static str, Vec<Vec<Put>>, &'static str)> {
    use Put::*;
    let flip = 120 + 50; // inside the sealed bytes
    vec![
        (
            "three_entries",
            vec![vec![Entry(0), Entry(1), Entry(2)]],
            "every entry intact",
        ),
        (
            "torn_tail",
            vec![vec![Entry(0), Entry(1), Cut(2, 7)]],
            "the last entry cut short: torn, kept under torn/ and cut",
        ),
        (
            "damaged_last_entry",
            vec![vec![Entry(0), Entry(1), Flipped(2, flip)]],
            "the last entry fails its CRC and nothing intact follows: torn",
        ),
        (
            "damaged_then_intact",
            vec![vec![Entry(0), Flipped(1, flip), Entry(2)]],
            "an intact entry (found by MAS 0x01, confirmed by CRC) follows the damage: refused",
        ),
        (
            "damaged_length_then_intact",
            vec![vec![Entry(0), Flipped(1, 2), Entry(2)]],
            "the damaged entry's length field is wrong; the next entry is still found",
        ),
        (
            "damaged_end_of_finished_segment",
            vec![vec![Entry(0), Flipped(1, flip)], vec![Entry(2)]],
            "damage at the end of a segment that has a successor: refused",
        ),
        (
            "raw_and_derived_entries",
            vec![vec![Entry(0), Entry(3)]],
            "a raw record's entry and its derived record's entry, as one group commit writes them",
        ),
    ]
}

fn segment_vectors(
    sealed: &[SealedVec],
    recs: &[Rec],
    ders: &[Der],
    sealed_ders: &[SealedDer],
) -> Value {
    let built = segment_entries(sealed, recs, ders, sealed_ders);
    let entries: Vec<Vec<u8>> = built.iter().map(|b| b.3.clone()).collect();
    let entry_json: Vec<Value> = built
        .iter()
        .map(|(name, h, body, entry)| {
            let mut v = json!({
                "sealed_record": name, "len": body.len(), "crc32": hx(&entry[4..8]),
                "record_id": h.record_id.to_string(), "commitment": hx(&h.commitment),
                "dedup_key": hx(&h.dedup_key), "control_key": hx(&h.control_key),
                "entry": hx(entry),
            });
            if let Some((raw_id, raw_c)) = h.derived_from() {
                v["derived_from"] =
                    json!({"record_id": raw_id.to_string(), "commitment": hx(&raw_c)});
            }
            v
        })
        .collect();
    let recovery: Vec<Value> = segment_cases()
        .into_iter()
        .map(|(name, files, why)| {
            json!({"name": name, "files": layout_json(&files), "why": why,
                   "recovered": recover_layout(&files, &entries)})
        })
        .collect();
    let repair_files = vec![vec![
        Put::Entry(0),
        Put::Flipped(1, 120 + 50),
        Put::Entry(2),
    ]];
    json!({
        "entries": entry_json,
        "recovery": recovery,
        "repair": {"files": layout_json(&repair_files), "result": repair_layout(&repair_files, &entries)},
    })
}

// ---------------------------------------------------------------------------------------------
// Vault: the derivation tables

const DERIVED_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("derived");
const FAILURES_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mapping_failures");
const RECORDS_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");

/// The mapping failure of the vault vector (record 1, FHIR input here, stands in for any raw
/// record whose mapping failed).
fn vector_failure() -> MappingFailure {
    MappingFailure {
        label: "unknown_segment".into(),
        detail: "segment ZPI at line 5 has no mapping".into(),
        mapping_version: "map-1f0c4a9e27d3b865".into(),
        at_ms: 1_763_856_000_500,
    }
}

/// A vault built by the gateway's vault: records 0, 1 and 3 stored in one commit (0 and 3 with
/// their first derived records, 1 with a failed mapping), then a replay that stores the third
/// derived record of record 0. Returns the rows of `derived`, `mapping_failures` and the derived
/// records' `records` rows.
fn run_vault(sealed: &[SealedVec], recs: &[Rec], ders: &[Der], sealed_ders: &[SealedDer]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let ring = vector_keyring(&dir.path().join("keys"));
    let (index, segments) = (dir.path().join("vault.redb"), dir.path().join("segments"));
    {
        let vault = EmbeddedVault::open(&index, &segments, 1 << 20, true).unwrap();
        let put = |i: usize, derived: Derivation| {
            let (dedup_key, control_key) = ring.dedup_keys(&recs[sealed[i].record].record);
            PutRecord {
                sealed: sealed[i].sealed.clone(),
                dedup_key,
                control_key,
                derived,
            }
        };
        let puts = [
            put(0, Derivation::Mapped(sealed_ders[0].sealed.clone())),
            put(1, Derivation::Failed(vector_failure())),
            put(3, Derivation::Mapped(sealed_ders[1].sealed.clone())),
        ];
        let results = vault.commit(&puts, &[]).unwrap();
        assert!(results
            .iter()
            .all(|r| matches!(r, PutResult::Stored { .. })));
        let replay = Rederive {
            raw_id: ders[2].record.raw_id,
            raw_commitment: ders[2].record.raw_commitment,
            derived: Derivation::Mapped(sealed_ders[2].sealed.clone()),
        };
        vault.commit_derivations(&[replay]).unwrap();
        assert_eq!(
            vault.derived_of(&sealed[0].id).unwrap(),
            vec![ders[0].id, ders[2].id]
        );
        vault.sync().unwrap();
    }
    let db = redb::Database::open(&index).unwrap();
    let r = db.begin_read().unwrap();
    let rows = |def: TableDefinition<&'static [u8], &'static [u8]>| -> Vec<(Vec<u8>, Vec<u8>)> {
        r.open_table(def)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().to_vec(), v.value().to_vec())
            })
            .collect()
    };
    let derived_ids: Vec<[u8; 16]> = ders.iter().map(|d| d.id.0).collect();
    json!({
        "derived": rows(DERIVED_TABLE).iter().map(|(k, v)| json!({"raw_record_id": hx(k), "value": hx(v)})).collect::<Vec<_>>(),
        "mapping_failures": rows(FAILURES_TABLE).iter().map(|(k, v)| json!({"raw_record_id": hx(k), "value": String::from_utf8(v.clone()).unwrap()})).collect::<Vec<_>>(),
        "records": rows(RECORDS_TABLE).iter().filter(|(k, _)| derived_ids.iter().any(|d| d[..] == k[..])).map(|(k, v)| json!({"record_id": hx(k), "value": hx(v)})).collect::<Vec<_>>(),
    })
}

fn vault_vectors(
    sealed: &[SealedVec],
    recs: &[Rec],
    ders: &[Der],
    sealed_ders: &[SealedDer],
) -> Value {
    json!({
        "commits": [
            {"stored": [sealed[0].name, sealed[1].name, sealed[3].name],
             "derived": [ders[0].name, Value::Null, ders[1].name],
             "mapping_failure": {"of": sealed[1].name, "failure": vector_failure()}},
            {"replay": ders[2].name},
        ],
        "tables": run_vault(sealed, recs, ders, sealed_ders),
    })
}

// ---------------------------------------------------------------------------------------------
// Checks: every vector against the code and the second implementations above

#[derive(Default, Debug)]
struct Count {
    checked: usize,
}

fn rec_of(v: &Value) -> Record {
    Record {
        meta: serde_json::from_value(v["meta"].clone()).expect("record meta"),
        raw: unhex(&v["raw"]).into(),
    }
}

fn check_records(v: &Value, n: &mut Count) -> Vec<(String, Record, Vec<u8>)> {
    let mut out = Vec::new();
    for r in list(&v["valid"]) {
        let name = str_of(&r["name"]);
        let record = rec_of(r);
        let bytes = unhex(&r["encoding"]);
        assert_eq!(hx(&encode(&record)), hx(&bytes), "record {name}: encoding");
        assert_eq!(
            Record::decode(&bytes).as_ref(),
            Some(&record),
            "record {name}: decode"
        );
        let origin = serde_json::to_string(&record.meta.origin).unwrap();
        assert_eq!(
            origin,
            str_of(&r["origin_json"]),
            "record {name}: origin spelling"
        );
        let m = &record.meta;
        assert_eq!(
            docs_read_record(&bytes),
            Some(DocsRecord {
                sender: m.sender.clone().into_bytes(),
                message_type: m.message_type.clone().into_bytes(),
                trigger: m.trigger.clone().into_bytes(),
                control_id: m.control_id.clone().into_bytes(),
                patient_ids: m
                    .patient_ids
                    .iter()
                    .map(|p| p.clone().into_bytes())
                    .collect(),
                received_ms: m.received_ms,
                origin: origin.into_bytes(),
                format: m.format.clone().into_bytes(),
                raw: record.raw.to_vec(),
            }),
            "record {name}: read by the docs"
        );
        if let Some(from) = r["parsed_from"].as_str() {
            let hint = FormatHint::parse(from).unwrap();
            let parsed = parse(&record.raw, hint, m.origin.clone(), m.received_ms);
            assert_eq!(
                parsed, record,
                "record {name}: what the gateway reads out of raw"
            );
        }
        out.push((name.to_string(), record, bytes));
        n.checked += 1;
    }
    for c in list(&v["corrupt"]) {
        let bytes = unhex(&c["encoding"]);
        assert_eq!(
            Record::decode(&bytes),
            None,
            "corruption {} decodes",
            c["name"]
        );
        n.checked += 1;
    }
    for l in list(&v["encode_limits"]) {
        let mut r = out[0].1.clone();
        r.meta.patient_ids =
            vec![str_of(&l["patient_id"]).to_string(); u64_of(&l["count"]) as usize];
        let origin = serde_json::to_vec(&r.meta.origin).unwrap();
        let mut buf = Vec::new();
        let got = r.encode_into(&origin, &mut buf);
        match l["error"].as_str() {
            None => {
                got.unwrap();
                assert_eq!(Record::decode(&buf).as_ref(), Some(&r));
            }
            Some(e) => {
                assert_eq!(got.map_err(|x| encode_error(&x)), Err(e), "{}", l["name"]);
                assert!(buf.is_empty(), "nothing written for a refused record");
                assert_eq!(
                    r.check_encodable().unwrap_err().label,
                    str_of(&l["rejection_label"])
                );
            }
        }
        n.checked += 1;
    }
    for o in list(&v["origin_json"]) {
        let origin: Origin = serde_json::from_value(o["origin"].clone()).unwrap();
        assert_eq!(serde_json::to_string(&origin).unwrap(), str_of(&o["json"]));
        n.checked += 1;
    }
    out
}

fn der_of(v: &Value) -> DerivedRecord {
    let f = &v["fields"];
    DerivedRecord {
        raw_id: RecordId::parse(str_of(&f["raw_record_id"])).unwrap(),
        raw_commitment: unhex32(&f["raw_commitment"]),
        mapping_version: str_of(&f["mapping_version"]).into(),
        mapped_ms: u64_of(&f["mapped_ms"]),
        outcome: unhex(&f["outcome"]).into(),
        bundle: unhex(&f["bundle"]).into(),
    }
}

/// A derived vector as read back: name, record, encoding.
type DerVec = (String, DerivedRecord, Vec<u8>);

fn check_derived(
    v: &Value,
    sealed: &Value,
    recs: &[(String, Record, Vec<u8>)],
    n: &mut Count,
) -> Vec<DerVec> {
    let mut out = Vec::new();
    for d in list(&v["valid"]) {
        let name = str_of(&d["name"]);
        let record = der_of(d);
        let bytes = unhex(&d["encoding"]);
        assert_eq!(bytes[0], DERIVED_VERSION);
        assert_eq!(
            hx(&encode_derived(&record)),
            hx(&bytes),
            "derived {name}: encoding"
        );
        assert_eq!(
            DerivedRecord::decode(&bytes).as_ref(),
            Some(&record),
            "derived {name}"
        );
        assert_eq!(
            Content::decode(&bytes),
            Some(Content::Derived(record.clone()))
        );
        assert_eq!(
            Record::decode(&bytes),
            None,
            "derived {name} read as a record"
        );
        assert_eq!(
            docs_read_derived(&bytes),
            Some(DocsDerived {
                raw_id: record.raw_id.0,
                raw_commitment: record.raw_commitment,
                mapping_version: record.mapping_version.clone(),
                mapped_ms: record.mapped_ms,
                outcome: record.outcome.to_vec(),
                bundle: record.bundle.to_vec(),
            }),
            "derived {name}: read by the docs"
        );
        assert_eq!(docs_read_record(&bytes), None);
        // It names the raw record it was made from: a sealed vector, by id and commitment.
        let raw = list(&sealed["valid"])
            .iter()
            .find(|s| s["record"] == d["raw_record"])
            .expect("the raw record is a sealed vector");
        assert_eq!(record.raw_id.to_string(), str_of(&raw["record_id"]));
        assert_eq!(hx(&record.raw_commitment), str_of(&raw["commitment"]));
        out.push((name.to_string(), record, bytes));
        n.checked += 1;
    }
    for c in list(&v["corrupt"]) {
        let bytes = unhex(&c["encoding"]);
        let name = &c["name"];
        assert_eq!(
            DerivedRecord::decode(&bytes),
            None,
            "derived corruption {name}"
        );
        assert_eq!(Content::decode(&bytes), None, "derived corruption {name}");
        assert_eq!(
            docs_read_derived(&bytes),
            None,
            "derived corruption {name} by the docs"
        );
        assert_eq!(
            docs_read_record(&bytes),
            None,
            "derived corruption {name} by the docs"
        );
        n.checked += 1;
    }
    // The version byte tells the two encodings apart.
    for (name, record, enc) in recs {
        assert_eq!(
            DerivedRecord::decode(enc),
            None,
            "record {name} read as derived"
        );
        assert_eq!(
            docs_read_derived(enc),
            None,
            "record {name} read as derived"
        );
        assert_eq!(Content::decode(enc), Some(Content::Record(record.clone())));
    }
    out
}

fn check_commitments(v: &Value, recs: &[(String, Record, Vec<u8>)], n: &mut Count) {
    for c in list(v) {
        let enc = &recs.iter().find(|r| r.0 == str_of(&c["record"])).unwrap().2;
        let salt = unhex32(&c["salt"]);
        let want = unhex32(&c["commitment"]);
        assert_eq!(seal::commitment(&salt, enc), want);
        assert_eq!(docs_commitment(&salt, enc), want);
        n.checked += 1;
    }
}

/// What every sealed vector holds: the key id and data key it opens under, its record id, and
/// the salt, nonce and sealed bytes, in that order.
type SealedFields<'a> = (&'a str, [u8; 32], RecordId, [u8; 32], [u8; 24], Vec<u8>);

fn sealed_fields(s: &Value) -> SealedFields<'_> {
    (
        str_of(&s["key_id"]),
        unhex32(&s["data_key"]),
        RecordId::parse(str_of(&s["record_id"])).unwrap(),
        unhex32(&s["salt"]),
        unhex(&s["nonce"]).try_into().unwrap(),
        unhex(&s["sealed"]),
    )
}

fn check_sealed(v: &Value, recs: &[(String, Record, Vec<u8>)], ders: &[DerVec], n: &mut Count) {
    let find = |name: &str| recs.iter().find(|r| r.0 == name).unwrap();
    for s in list(&v["valid"]) {
        let (name, record, enc) = find(str_of(&s["record"]));
        let (key_id, data_key, id, salt, nonce, bytes) = sealed_fields(s);
        let key = DataKey::new(key_id, data_key);
        let sealed = seal::seal_with(record, id, &key, salt, nonce).unwrap();
        assert_eq!(hx(&sealed.bytes), hx(&bytes), "sealed {name}: bytes");
        assert_eq!(
            sealed.commitment,
            unhex32(&s["commitment"]),
            "sealed {name}"
        );
        assert_eq!(
            unhex(&s["header"]),
            docs_header(key_id, &nonce),
            "sealed {name}: header"
        );
        assert!(bytes.starts_with(&unhex(&s["header"])));
        let opened = seal::open(&bytes, id, &key).unwrap();
        assert_eq!(&opened.record, record);
        assert_eq!(opened.salt, salt);
        assert_eq!(opened.commitment, sealed.commitment);
        // The docs' way, without the crate's sealing code.
        let mut plain = salt.to_vec();
        plain.extend_from_slice(enc);
        assert_eq!(
            docs_open(&data_key, &id, &bytes),
            Some((key_id.to_string(), plain.clone()))
        );
        assert_eq!(
            hx(&docs_seal(&data_key, key_id, &nonce, &id, &plain)),
            hx(&bytes)
        );
        assert_eq!(docs_commitment(&salt, enc), sealed.commitment);
        n.checked += 1;
    }
    for s in list(&v["derived"]) {
        let (name, record, enc) = ders.iter().find(|d| d.0 == str_of(&s["derived"])).unwrap();
        let (key_id, data_key, id, salt, nonce, bytes) = sealed_fields(s);
        let key = DataKey::new(key_id, data_key);
        let sealed = seal::seal_derived_with(record, id, &key, salt, nonce).unwrap();
        assert_eq!(
            hx(&sealed.bytes),
            hx(&bytes),
            "sealed derived {name}: bytes"
        );
        assert_eq!(
            sealed.commitment,
            unhex32(&s["commitment"]),
            "sealed derived {name}"
        );
        assert_eq!(unhex(&s["header"]), docs_header(key_id, &nonce));
        assert!(bytes.starts_with(&unhex(&s["header"])));
        let opened = seal::open_content(&bytes, id, &key).unwrap();
        assert_eq!(opened.content, Content::Derived(record.clone()));
        assert_eq!((opened.salt, opened.commitment), (salt, sealed.commitment));
        // A reader of raw records only refuses it after decrypting.
        assert!(matches!(
            seal::open(&bytes, id, &key),
            Err(SealError::BadRecord)
        ));
        // Sealed under the key of the raw record it names.
        let raw = list(&v["valid"])
            .iter()
            .find(|r| str_of(&r["record_id"]) == record.raw_id.to_string())
            .unwrap();
        assert_eq!(
            (&raw["key_id"], &raw["data_key"]),
            (&s["key_id"], &s["data_key"])
        );
        let mut plain = salt.to_vec();
        plain.extend_from_slice(enc);
        assert_eq!(
            docs_open(&data_key, &id, &bytes),
            Some((key_id.to_string(), plain.clone()))
        );
        assert_eq!(
            hx(&docs_seal(&data_key, key_id, &nonce, &id, &plain)),
            hx(&bytes)
        );
        assert_eq!(docs_commitment(&salt, enc), sealed.commitment);
        n.checked += 1;
    }
    for s in list(&v["compressed"]) {
        // Version 2: opened the docs' way (decrypt, then decode the LZ4 block to exactly the
        // header's length), the record decoded and committed to; then the crate seals the
        // record it opens to the same bytes.
        let name = str_of(&s["name"]);
        let (key_id, data_key, id, salt, nonce, bytes) = sealed_fields(s);
        let len = s["encoding_len"].as_u64().unwrap() as usize;
        assert_eq!(
            unhex(&s["header"]),
            docs_header_v2(key_id, &nonce, len),
            "sealed {name}: header"
        );
        assert!(bytes.starts_with(&unhex(&s["header"])));
        let (got_key_id, plain) = docs_open(&data_key, &id, &bytes).expect("opens by the docs");
        assert_eq!((got_key_id.as_str(), &plain[..32]), (key_id, &salt[..]));
        let enc = &plain[32..];
        assert_eq!(enc.len(), len);
        assert!(docs_read_record(enc).is_some(), "sealed {name}: encoding");
        assert_eq!(docs_commitment(&salt, enc), unhex32(&s["commitment"]));
        let key = DataKey::new(key_id, data_key);
        let opened = seal::open(&bytes, id, &key).unwrap();
        assert_eq!(encode(&opened.record), enc);
        assert_eq!(
            (opened.salt, opened.commitment),
            (salt, unhex32(&s["commitment"]))
        );
        let sealed = seal::seal_with(&opened.record, id, &key, salt, nonce).unwrap();
        assert_eq!(hx(&sealed.bytes), hx(&bytes), "sealed {name}: bytes");
        n.checked += 1;
    }
    for c in list(&v["corrupt"]) {
        let name = str_of(&c["name"]);
        let id = RecordId::parse(str_of(&c["record_id"])).unwrap();
        let key = DataKey::new(str_of(&c["key_id"]), unhex32(&c["data_key"]));
        let bytes = unhex(&c["sealed"]);
        match seal::open(&bytes, id, &key) {
            Ok(_) => panic!("sealed corruption {name} opens"),
            Err(e) => assert_eq!(
                seal_error(&e),
                str_of(&c["error"]),
                "sealed corruption {name}: {e}"
            ),
        }
        // Nor by the docs: refused, or not the record under this key id.
        let docs = docs_open(&unhex32(&c["data_key"]), &id, &bytes).filter(|(k, plain)| {
            k == str_of(&c["key_id"]) && docs_read_record(&plain[32..]).is_some()
        });
        assert!(docs.is_none(), "sealed corruption {name} opens by the docs");
        n.checked += 1;
    }
}

fn check_keys(v: &Value, recs: &[(String, Record, Vec<u8>)], sealed: &Value, n: &mut Count) {
    let index = unhex32(&v["index_key"]);
    let master = unhex32(&v["master_key"]);
    assert_eq!((index, master), (index_key(), master_key()));
    for f in list(&v["key_files"]) {
        let name = str_of(&f["name"]);
        let got = read_key_text(str_of(&f["text"]));
        match f["error"].as_str() {
            None => assert_eq!(
                got,
                Ok((unhex32(&f["key"]), f["checked"].as_bool().unwrap())),
                "key file {name}"
            ),
            Some(e) => assert_eq!(got, Err(e), "key file {name}"),
        }
        n.checked += 1;
    }
    // The text the gateway writes is hex, newline, the check line, newline.
    let written = list(&v["key_files"])
        .iter()
        .find(|f| f["name"] == "as_written")
        .unwrap();
    let key = unhex32(&written["key"]);
    assert_eq!(
        str_of(&written["text"]),
        format!("{}\n{}\n", hx(&key), docs_key_check(&key))
    );
    assert_eq!(str_of(&written["text"]), key_file(&key));

    let dir = tempfile::tempdir().unwrap();
    let ring = vector_keyring(dir.path());
    for p in list(&v["patient_key_ids"]) {
        let identity = str_of(&p["identity"]);
        let want = str_of(&p["key_id"]);
        assert_eq!(ring.key_id_for(Some(identity)), want);
        let docs = docs_keyed(&index, "patient-key", &[identity.as_bytes()]);
        assert_eq!(format!("p-{}", hx(&docs[..16])), want);
        n.checked += 1;
    }
    assert_eq!(ring.key_id_for(None), keyring::GATEWAY_KEY_ID);
    for d in list(&v["dedup"]) {
        let (_, record, _) = recs.iter().find(|r| r.0 == str_of(&d["record"])).unwrap();
        let (dedup, control) = ring.dedup_keys(record);
        assert_eq!(
            (hx(&dedup), hx(&control)),
            (
                str_of(&d["dedup_key"]).into(),
                str_of(&d["control_key"]).into()
            )
        );
        let m = &record.meta;
        let raw = blake3::hash(&record.raw);
        assert_eq!(
            docs_keyed(
                &index,
                "dedup",
                &[m.sender.as_bytes(), m.control_id.as_bytes(), raw.as_bytes()]
            ),
            dedup
        );
        assert_eq!(
            docs_keyed(
                &index,
                "control",
                &[m.sender.as_bytes(), m.control_id.as_bytes()]
            ),
            control
        );
        n.checked += 1;
    }
    drop(ring);

    // Wrapped data keys: stored in a keyring.redb, read back by the gateway's keyring.
    let s0 = &list(&sealed["valid"])[0];
    let (_, record, _) = recs.iter().find(|r| r.0 == str_of(&s0["record"])).unwrap();
    let sv = SealedVec {
        name: String::new(),
        record: 0,
        key_id: str_of(&s0["key_id"]).into(),
        key: unhex32(&s0["data_key"]),
        id: RecordId::parse(str_of(&s0["record_id"])).unwrap(),
        salt: unhex32(&s0["salt"]),
        nonce: unhex(&s0["nonce"]).try_into().unwrap(),
        sealed: seal::Sealed {
            record_id: RecordId([0; 16]),
            commitment: [0; 32],
            key_id: String::new(),
            bytes: Vec::new(),
        },
    };
    let wrapped = list(&v["wrapped_data_keys"]);
    let stored: Vec<(String, Vec<u8>)> = wrapped
        .iter()
        .map(|w| (str_of(&w["stored_under"]).to_string(), unhex(&w["wrapped"])))
        .collect();
    for (w, got) in wrapped
        .iter()
        .zip(unwrap_with_keyring(&sv, record, &stored))
    {
        let want = match w["error"].as_str() {
            None => {
                assert_eq!(unhex32(&w["data_key"]), sv.key);
                Ok(())
            }
            Some(e) => Err(e),
        };
        assert_eq!(got, want, "wrapped key {}", w["name"]);
        // The docs' unwrap: AES-256-GCM under the master key, AAD = key id.
        let raw = unhex(&w["wrapped"]);
        if raw.len() == 64 && raw[..4] == 1u32.to_be_bytes() {
            let mut secret = raw[16..48].to_vec();
            let ok = Aes256Gcm::new((&master).into())
                .decrypt_inout_detached(
                    raw[4..16].try_into().unwrap(),
                    str_of(&w["stored_under"]).as_bytes(),
                    secret.as_mut_slice().into(),
                    raw[48..].try_into().unwrap(),
                )
                .is_ok();
            assert_eq!(ok, want.is_ok(), "wrapped key {} by the docs", w["name"]);
            if ok {
                assert_eq!(secret, sv.key);
            }
        }
        n.checked += 1;
    }
}

fn check_leaves_and_tree(leaves: &Value, tree: &Value, n: &mut Count) -> Vec<[u8; 32]> {
    let mut hashes = Vec::new();
    for l in list(leaves) {
        let commitment = unhex32(&l["commitment"]);
        let entry = unhex(&l["entry"]);
        let kind = u8::try_from(u64_of(&l["kind"])).unwrap();
        match kind {
            LEAF_RECORD_STORED => {
                assert_eq!(record_leaf(&commitment).to_vec(), entry);
                assert_eq!([&[0x01][..], &commitment].concat(), entry, "by the docs");
            }
            LEAF_DERIVED_STORED => {
                let raw = unhex32(&l["raw_commitment"]);
                assert_eq!(derived_leaf(&commitment, &raw).to_vec(), entry);
                assert_eq!(
                    [&[0x02][..], &commitment, &raw].concat(),
                    entry,
                    "by the docs"
                );
            }
            k => panic!("leaf kind {k}"),
        }
        let want = unhex32(&l["leaf_hash"]);
        assert_eq!(LogHasher.leaf(&entry), want, "the gateway's hasher");
        assert_eq!(Sha3Hasher.leaf(&entry), want, "the reference hasher");
        assert_eq!(docs_leaf(&entry), want);
        hashes.push(want);
        n.checked += 1;
    }
    let mut gateway = MemoryTree::new(LogHasher);
    let mut reference = MemoryTree::new(Sha3Hasher);
    for h in &hashes {
        gateway.push(*h);
        reference.push(*h);
    }
    for r in list(&tree["roots"]) {
        let size = u64_of(&r["size"]);
        let want = unhex32(&r["root"]);
        assert_eq!(gateway.root(size).unwrap(), want);
        assert_eq!(reference.root(size).unwrap(), want);
        assert_eq!(docs_root(&hashes[..size as usize]), want);
        n.checked += 1;
    }
    hashes
}

fn check_ledger(v: &Value, sealed: &Value, ders: &[DerVec], bundles: &Value, n: &mut Count) {
    let seed = unhex32(&v["signing_seed"]);
    let verifier = signer(seed).verifier();
    assert_eq!(str_of(&v["origin"]), ORIGIN);
    assert_eq!(hx(verifier.key.as_bytes()), str_of(&v["public_key"]));
    assert_eq!(hx(&key_hash(ORIGIN, &verifier.key)), str_of(&v["key_hash"]));
    let vkey = format!(
        "{ORIGIN}+{}+{}",
        str_of(&v["key_hash"]),
        B64.encode([&[0x01][..], &unhex(&v["public_key"])].concat())
    );
    assert_eq!(vkey, str_of(&v["verifier_key"]));
    assert_eq!(NoteVerifier::parse(&vkey).unwrap(), verifier);

    // The appends, rebuilt from the vectors.
    let first = &list(&v["appends"])[0];
    let second = &list(&v["appends"])[1];
    assert_eq!(
        (
            u64_of(&first["timestamp_ms"]),
            u64_of(&second["timestamp_ms"])
        ),
        (T1, T2)
    );
    let a0: Vec<(RecordId, [u8; 32])> = list(&first["records"])
        .iter()
        .map(|r| {
            (
                RecordId::parse(str_of(&r["record_id"])).unwrap(),
                unhex32(&r["commitment"]),
            )
        })
        .collect();
    let sealed_pairs: Vec<(RecordId, [u8; 32])> = list(&sealed["valid"])
        .iter()
        .map(|s| {
            (
                RecordId::parse(str_of(&s["record_id"])).unwrap(),
                unhex32(&s["commitment"]),
            )
        })
        .collect();
    assert_eq!(a0, sealed_pairs, "the first append is the sealed records");
    let a1: Vec<_> = (0..u64_of(&second["synthetic"]) as u32)
        .map(synthetic)
        .collect();
    // The third append: the sealed derived records, each naming its raw record.
    let third = &list(&v["appends"])[2];
    assert_eq!(u64_of(&third["timestamp_ms"]), T3);
    let derived: Vec<Leaf> = list(&third["derived"])
        .iter()
        .map(|r| Leaf {
            record_id: RecordId::parse(str_of(&r["record_id"])).unwrap(),
            commitment: unhex32(&r["commitment"]),
            derived_from: Some((
                RecordId::parse(str_of(&r["raw_record_id"])).unwrap(),
                unhex32(&r["raw_commitment"]),
            )),
            event: None,
        })
        .collect();
    let sealed_derived: Vec<Leaf> = list(&sealed["derived"])
        .iter()
        .map(|s| {
            let (_, d, _) = ders.iter().find(|d| d.0 == str_of(&s["derived"])).unwrap();
            Leaf {
                record_id: RecordId::parse(str_of(&s["record_id"])).unwrap(),
                commitment: unhex32(&s["commitment"]),
                derived_from: Some((d.raw_id, d.raw_commitment)),
                event: None,
            }
        })
        .collect();
    assert_eq!(
        derived, sealed_derived,
        "the third append is the sealed derived records"
    );
    let prove_last = [
        derived[0].record_id,
        derived[1].derived_from.unwrap().0,
        derived[2].record_id,
    ];
    let state = run_ledger(&[a0.clone(), a1.clone()], &derived, a0[0].0, &prove_last);
    // Every leaf: record id, entry (by the docs), the raw record id of a derived leaf.
    let mut all: Vec<(RecordId, Vec<u8>, Option<RecordId>)> = a0
        .iter()
        .chain(&a1)
        .map(|(id, c)| (*id, [&[0x01][..], c].concat(), None))
        .collect();
    assert_eq!(all.len() as u64, LEDGER_LEAVES);
    for l in &derived {
        let (raw_id, raw_c) = l.derived_from.unwrap();
        all.push((
            l.record_id,
            [&[0x02][..], &l.commitment, &raw_c].concat(),
            Some(raw_id),
        ));
    }

    // Checkpoints: the gateway's signer, the stored text, and the docs' reading of it.
    let leaf_hashes: Vec<[u8; 32]> = all.iter().map(|(_, e, _)| docs_leaf(e)).collect();
    let cps = list(&v["checkpoints"]);
    assert_eq!(cps.len(), state.checkpoints.len());
    for (c, (size, text)) in cps.iter().zip(&state.checkpoints) {
        assert_eq!(
            (u64_of(&c["size"]), str_of(&c["text"])),
            (*size, text.as_str())
        );
        let ts = match *size {
            s if s == a0.len() as u64 => T1,
            LEDGER_LEAVES => T2,
            _ => T3,
        };
        let root = docs_root(&leaf_hashes[..*size as usize]);
        let cp = Checkpoint {
            origin: ORIGIN.into(),
            size: *size,
            root,
            timestamp_ms: ts,
        };
        assert_eq!(cp.body(), str_of(&c["body"]));
        assert_eq!(
            cp.body(),
            format!("{ORIGIN}\n{size}\n{}\ntimestamp {ts}\n", B64.encode(root))
        );
        assert_eq!(
            signer(seed).sign(&cp).text,
            text.as_str(),
            "Ed25519 signatures are deterministic"
        );
        // Signature line: em dash, space, key name, space, base64(key hash || signature), newline.
        let sig_line = format!("\u{2014} {ORIGIN} ");
        let at = text.find(&sig_line).unwrap();
        assert_eq!(&text[..at], format!("{}\n", cp.body()));
        let blob = B64
            .decode(text[at + sig_line.len()..].strip_suffix('\n').unwrap())
            .unwrap();
        assert_eq!(blob.len(), 68);
        assert_eq!(blob[..4], verifier.key_hash);
        let sig = ed25519_dalek::Signature::from_slice(&blob[4..]).unwrap();
        verifier
            .key
            .verify_strict(cp.body().as_bytes(), &sig)
            .unwrap();
        n.checked += 1;
    }

    // Table rows.
    let t = &v["tables"];
    for l in list(&t["leaves"]) {
        let i = u64_of(&l["index"]);
        let (id, entry, raw_id) = &all[i as usize];
        // entry || record id, then the raw record id for a derived leaf: 49 or 97 bytes.
        let mut want = [&entry[..], &id.0].concat();
        if let Some(raw_id) = raw_id {
            want.extend_from_slice(&raw_id.0);
        }
        assert_eq!(want.len(), if raw_id.is_some() { 97 } else { 49 });
        assert_eq!(unhex(&l["value"]), want, "leaf {i}");
        assert_eq!(state.leaves[i as usize], (i, want));
        n.checked += 1;
    }
    assert_eq!(state.leaves.len(), all.len());
    for b in list(&t["by_record"]) {
        let i = u64_of(&b["index"]);
        assert_eq!(unhex(&b["record_id"]), all[i as usize].0 .0);
        assert!(state
            .by_record
            .contains(&(all[i as usize].0 .0.to_vec(), i)));
        n.checked += 1;
    }
    assert_eq!(state.by_record.len(), all.len());
    let tiles = list(&t["tiles"]);
    assert_eq!(tiles.len(), state.tiles.len());
    for tile in tiles {
        let index = u64_of(&tile["tile"]);
        let row = B64.decode(str_of(&tile["row_base64"])).unwrap();
        assert_eq!(hx(&sha3(&[&row])), str_of(&tile["row_sha3_256"]));
        assert_eq!(state.tiles[index as usize], (index, row.clone()));
        // 511 hashes, level by level from the 256 leaf hashes up to the tile root.
        assert_eq!(row.len(), 511 * 32);
        let mut level: Vec<[u8; 32]> =
            leaf_hashes[(index as usize) << TILE_HEIGHT..][..1 << TILE_HEIGHT].to_vec();
        let mut docs_row: Vec<u8> = Vec::new();
        let mut offsets = Vec::new();
        loop {
            offsets.push(docs_row.len() / 32);
            docs_row.extend(level.iter().flatten());
            if level.len() == 1 {
                break;
            }
            level = level.chunks(2).map(|p| docs_node(&p[0], &p[1])).collect();
        }
        assert_eq!(hx(&docs_row), hx(&row), "tile row by the docs");
        let want_offsets: Vec<u64> = list(&tile["level_offsets"]).iter().map(u64_of).collect();
        assert_eq!(
            offsets.iter().map(|&o| o as u64).collect::<Vec<_>>(),
            want_offsets
        );
        // The tree code hands out the same row, with either hasher.
        let mut gw = TiledTree::new(LogHasher, TILE_HEIGHT);
        let mut rf = TiledTree::new(Sha3Hasher, TILE_HEIGHT);
        let mut rows = (None, None);
        for h in &leaf_hashes[..1 << TILE_HEIGHT] {
            rows = (gw.push(*h).or(rows.0), rf.push(*h).or(rows.1));
        }
        assert_eq!(rows, (Some((0, row.clone())), Some((0, row.clone()))));
        n.checked += 1;
    }
    for r in list(&t["tile_roots"]) {
        let index = u64_of(&r["tile"]) as usize;
        let root = unhex(&r["root"]);
        assert_eq!(state.tile_roots[index], (index as u64, root.clone()));
        let row = B64.decode(str_of(&tiles[index]["row_base64"])).unwrap();
        assert_eq!(
            root,
            row[row.len() - 32..],
            "the tile root is the row's last hash"
        );
        assert_eq!(
            root,
            docs_root(&leaf_hashes[index << TILE_HEIGHT..(index + 1) << TILE_HEIGHT])
        );
        n.checked += 1;
    }
    // The bundle the gateway writes now is the vectors' valid one.
    let valid = &list(bundles)[0];
    assert_eq!(valid["name"], "valid");
    assert_eq!(
        state.bundle,
        str_of(&valid["bundle"]),
        "the bundle `medanchor proof` writes"
    );
    let derived_valid = list(bundles)
        .iter()
        .find(|b| b["name"] == "derived_valid")
        .unwrap();
    assert_eq!(
        serde_json::to_string_pretty(&state.proofs[0]).unwrap() + "\n",
        str_of(&derived_valid["bundle"]),
        "the bundle `medanchor proof` writes for a derived record"
    );
    // A raw record's bundle has no derived_from at all, not even null.
    assert!(!str_of(&valid["bundle"]).contains("derived_from"));
    assert!(state.proofs[1].derived_from.is_none());
}

fn check_bundles(v: &Value, ledger: &Value, n: &mut Count) {
    let pinned = str_of(&ledger["verifier_key"]);
    for b in list(v) {
        let name = str_of(&b["name"]);
        let text = str_of(&b["bundle"]);
        let pin = b["pinned_key"].as_str();
        let want = match b["error"].as_str() {
            None => Ok(()),
            Some(e) => Err(e.to_string()),
        };
        assert_eq!(verify_bundle_text(text, pin), want, "bundle {name}");
        // The docs' verifier agrees, with the key pinned (a bundle verified without a pin is
        // only as good as the key it carries).
        let docs = docs_verify_bundle(text, pin.unwrap_or(pinned));
        assert_eq!(
            docs.is_ok(),
            want.is_ok(),
            "bundle {name} by the docs: {docs:?}"
        );
        // Which of the two inclusions failed, in the order the docs give.
        let class = match &want {
            Err(e) if e.starts_with("RawInclusion.") => Some("raw inclusion"),
            Err(e) if e.starts_with("Inclusion.") => Some("inclusion"),
            _ => None,
        };
        if let Some(class) = class {
            assert_eq!(docs, Err(class.to_string()), "bundle {name} by the docs");
        }
        n.checked += 1;
    }
}

fn check_segments(v: &Value, sealed: &Value, n: &mut Count) {
    let mut entries = Vec::new();
    for e in list(&v["entries"]) {
        let s = list(&sealed["valid"])
            .iter()
            .find(|s| s["record"] == e["sealed_record"])
            .or_else(|| {
                list(&sealed["derived"])
                    .iter()
                    .find(|s| s["derived"] == e["sealed_record"])
            })
            .expect("a sealed vector");
        let body = unhex(&s["sealed"]);
        let h = EntryHeader {
            record_id: RecordId::parse(str_of(&e["record_id"])).unwrap(),
            commitment: unhex32(&e["commitment"]),
            dedup_key: unhex32(&e["dedup_key"]),
            control_key: unhex32(&e["control_key"]),
        };
        assert_eq!(h.record_id.to_string(), str_of(&s["record_id"]));
        assert_eq!(hx(&h.commitment), str_of(&s["commitment"]));
        // A derived record's header: dedup key = raw commitment, control key =
        // "medanchor/derive" || raw record id.
        assert_eq!(DERIVED_MARK, b"medanchor/derive");
        match e.get("derived_from") {
            None => assert_eq!(h.derived_from(), None),
            Some(d) => {
                let raw_id = RecordId::parse(str_of(&d["record_id"])).unwrap();
                let raw_c = unhex32(&d["commitment"]);
                assert_eq!(h.derived_from(), Some((raw_id, raw_c)));
                assert_eq!(h.dedup_key, raw_c, "by the docs");
                assert_eq!(
                    h.control_key[..],
                    [&b"medanchor/derive"[..], &raw_id.0].concat(),
                    "by the docs"
                );
            }
        }
        let entry = unhex(&e["entry"]);
        assert_eq!(
            hx(&stage_entry(&h, &body)),
            hx(&entry),
            "entry of {}",
            e["sealed_record"]
        );
        // The docs' layout: len, CRC-32 of everything after it, id, commitment, keys, sealed.
        let mut rest = h.record_id.0.to_vec();
        rest.extend_from_slice(&h.commitment);
        rest.extend_from_slice(&h.dedup_key);
        rest.extend_from_slice(&h.control_key);
        rest.extend_from_slice(&body);
        let crc = crc32fast::hash(&rest);
        assert_eq!(hx(&crc.to_be_bytes()), str_of(&e["crc32"]));
        assert_eq!(u64_of(&e["len"]), body.len() as u64);
        let docs = [
            &(body.len() as u32).to_be_bytes()[..],
            &crc.to_be_bytes(),
            &rest,
        ]
        .concat();
        assert_eq!(hx(&docs), hx(&entry), "entry by the docs");
        entries.push(entry);
        n.checked += 1;
    }
    for r in list(&v["recovery"]) {
        let files = layout_of(&r["files"]);
        assert_eq!(
            recover_layout(&files, &entries),
            r["recovered"],
            "recovery {}",
            r["name"]
        );
        n.checked += 1;
    }
    let repair = &v["repair"];
    let files = layout_of(&repair["files"]);
    let result = repair_layout(&files, &entries);
    assert_eq!(result, repair["result"]);
    for s in list(&result["set_aside"]) {
        // A padding entry: the all-zero record id, commitment and keys, a zero body, its CRC.
        let len = u64_of(&s["len"]) as usize - 120;
        let mut rest = vec![0u8; 112 + len];
        let crc = crc32fast::hash(&rest);
        let mut docs = (len as u32).to_be_bytes().to_vec();
        docs.extend_from_slice(&crc.to_be_bytes());
        docs.append(&mut rest);
        assert_eq!(hx(&docs), str_of(&s["padding_entry"]));
        n.checked += 1;
    }
}

fn check_vault(v: &Value, sealed: &Value, ders: &[DerVec], n: &mut Count) {
    let t = &v["tables"];
    let sealed_id = |name: &Value| -> String {
        let s = list(&sealed["valid"])
            .iter()
            .find(|s| &s["record"] == name)
            .unwrap();
        str_of(&s["record_id"]).to_string()
    };
    // derived: raw record id → the derived records' ids, 16 bytes each, oldest first.
    let rows = list(&t["derived"]);
    let mut raws: Vec<RecordId> = ders.iter().map(|d| d.1.raw_id).collect();
    raws.dedup();
    raws.sort_by_key(|r| r.0);
    raws.dedup();
    assert_eq!(rows.len(), raws.len());
    for (row, raw) in rows.iter().zip(&raws) {
        assert_eq!(str_of(&row["raw_record_id"]), hx(&raw.0));
        // The vectors list them in store order.
        let ids: Vec<u8> = ders
            .iter()
            .filter(|d| d.1.raw_id == *raw)
            .flat_map(|d| {
                let s = list(&sealed["derived"])
                    .iter()
                    .find(|s| str_of(&s["derived"]) == d.0);
                RecordId::parse(str_of(&s.unwrap()["record_id"])).unwrap().0
            })
            .collect();
        assert_eq!(unhex(&row["value"]), ids, "derived list of {raw}");
        n.checked += 1;
    }
    // mapping_failures: raw record id → the failure as compact JSON, fields in this order.
    let commit = &list(&v["commits"])[0];
    let f: MappingFailure =
        serde_json::from_value(commit["mapping_failure"]["failure"].clone()).unwrap();
    let rows = list(&t["mapping_failures"]);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        str_of(&rows[0]["raw_record_id"]),
        sealed_id(&commit["mapping_failure"]["of"])
    );
    let json_text = format!(
        r#"{{"label":{},"detail":{},"mapping_version":{},"at_ms":{}}}"#,
        json!(f.label),
        json!(f.detail),
        json!(f.mapping_version),
        f.at_ms
    );
    assert_eq!(str_of(&rows[0]["value"]), json_text);
    assert_eq!(
        serde_json::from_str::<MappingFailure>(&json_text).unwrap(),
        f
    );
    n.checked += 1;
    // records: a derived record has its row like any record. The vault vector's segment holds,
    // in order: record 0 and its derived record, record 1, record 3 and its derived record
    // (one commit), then the replay's derived record; each entry is 120 bytes of header and
    // the sealed record.
    let body_len = |s: &Value| unhex(&s["sealed"]).len() as u64;
    let by_name = |name: &Value| -> &Value {
        list(&sealed["valid"])
            .iter()
            .find(|s| &s["record"] == name)
            .or_else(|| {
                list(&sealed["derived"])
                    .iter()
                    .find(|s| &s["derived"] == name)
            })
            .unwrap()
    };
    let stored = list(&commit["stored"]);
    let derived = list(&commit["derived"]);
    let mut order: Vec<&Value> = Vec::new();
    for (s, d) in stored.iter().zip(derived) {
        order.push(by_name(s));
        if !d.is_null() {
            order.push(by_name(d));
        }
    }
    order.push(by_name(&list(&v["commits"])[1]["replay"]));
    let mut offset = 0u64;
    let mut want_rows = Vec::new();
    for s in order {
        if s.get("derived").is_some() {
            let mut row = unhex(&s["commitment"]);
            row.extend_from_slice(&0u32.to_be_bytes());
            row.extend_from_slice(&offset.to_be_bytes());
            row.extend_from_slice(&(body_len(s) as u32).to_be_bytes());
            want_rows.push((str_of(&s["record_id"]).to_string(), row));
        }
        offset += 120 + body_len(s);
    }
    want_rows.sort();
    let rows = list(&t["records"]);
    assert_eq!(rows.len(), want_rows.len());
    for (row, (id, want)) in rows.iter().zip(&want_rows) {
        assert_eq!(str_of(&row["record_id"]), id);
        assert_eq!(unhex(&row["value"]), *want, "records row of {id}");
        n.checked += 1;
    }
}

#[test]
fn vectors_match_the_code() {
    let path = PathBuf::from(PATH);
    let regenerate = std::env::var_os("MEDANCHOR_REGENERATE_VECTORS").is_some_and(|v| v == "1");
    if regenerate || !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text = serde_json::to_string_pretty(&generate()).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.len() < 224_000, "vectors.json is {} bytes", text.len());
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut n = Count::default();
    let recs = check_records(&v["records"], &mut n);
    let ders = check_derived(&v["derived"], &v["sealed"], &recs, &mut n);
    check_commitments(&v["commitments"], &recs, &mut n);
    check_sealed(&v["sealed"], &recs, &ders, &mut n);
    check_keys(&v["keys"], &recs, &v["sealed"], &mut n);
    check_leaves_and_tree(&v["leaves"], &v["tree"], &mut n);
    check_ledger(&v["ledger"], &v["sealed"], &ders, &v["bundles"], &mut n);
    check_bundles(&v["bundles"], &v["ledger"], &mut n);
    check_segments(&v["segments"], &v["sealed"], &mut n);
    check_vault(&v["vault"], &v["sealed"], &ders, &mut n);
    check_events(&v["events"], &mut n);
    println!("{} vectors checked", n.checked);
    // Whatever the checks above do not look at: the code must still generate exactly this file.
    assert!(
        v == generate(),
        "testdata/formats/vectors.json is not what the code generates now: a format changed. If \
         the change is intended, update docs/FORMATS.md and regenerate with \
         MEDANCHOR_REGENERATE_VECTORS=1 cargo test --test formats"
    );
}
