//! Sealing: the salted commitment and the encrypted payload of a record.
//!
//! ```text
//! commitment = SHA3-256("medanchor/record/v1" 0x00 || salt[32] || record encoding)
//! sealed     = header || AES-256-GCM(subkey, nonce[12..24], salt || record encoding,
//!                                    aad = header || record id)
//! header     = "MAS" 0x01 || key id length (u8) || key id || nonce[24] || salt length (u8 = 32)
//! subkey     = XAES-256-GCM key derivation (C2SP) from the data key and nonce[0..12]
//! ```
//!
//! An encoding of [`COMPRESS_FROM`] bytes or more is sealed as an LZ4 block when that saves at
//! least an eighth (version 2: `"MAS" 0x02`, the header ends with the encoding's length, u32
//! big-endian, and the ciphertext holds `salt || LZ4 block`). The commitment is over the encoding
//! itself either way, so proofs do not depend on how it was stored: compression only changes the
//! bytes the vault writes (a mapped Bundle, about 13-17 KB of JSON, to about a third).
//!
//! The salt is inside the ciphertext: once a patient's key is destroyed, the anchored commitment
//! cannot be linked to any guess of the record. Every record is encrypted under its own subkey
//! derived from a fresh 96-bit value, so no GCM key ever sees more than one message and the
//! SP 800-38D limit of 2^32 random nonces per key cannot be reached however many records a patient
//! has: this is XAES-256-GCM (C2SP), tested against its published vectors.

pub mod keyring;
mod xaes;

pub use xaes::XaesKey;

use aes_gcm::{aead::AeadInOut, Aes256Gcm, KeyInit};
use zeroize::Zeroizing;

use crate::envelope::RecordId;
use crate::record::{Content, DerivedRecord, EncodeError, Event, Record};
pub use keyring::{DataKey, Keyring, KeyringError};
use medanchor_sha3::Sha3_256;

pub const MAGIC: &[u8; 4] = b"MAS\x01";
/// The magic of a sealed record whose encoding is stored as an LZ4 block.
pub const MAGIC_COMPRESSED: &[u8; 4] = b"MAS\x02";
/// Encodings this long or longer are sealed compressed when LZ4 saves an eighth of them; a
/// sealed record of version 2 holding a shorter one is refused (no writer makes one).
pub const COMPRESS_FROM: usize = 4096;
pub const SALT_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
const COMMIT_DOMAIN: &[u8] = b"medanchor/record/v1\x00";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed record header is malformed")]
    BadHeader,
    #[error(
        "sealed record does not decrypt under key {0}: ciphertext, header or record id altered"
    )]
    Decrypt(String),
    #[error("decrypted payload is not a valid record encoding")]
    BadRecord,
    #[error(transparent)]
    Key(#[from] KeyringError),
}

/// A sealed record, ready for the vault.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub record_id: RecordId,
    pub commitment: [u8; 32],
    pub key_id: String,
    /// Header and ciphertext with tag.
    pub bytes: Vec<u8>,
}

/// The commitment over a salt and a record encoding.
pub fn commitment(salt: &[u8; SALT_LEN], encoded: &[u8]) -> [u8; 32] {
    Sha3_256::digest_parts(&commitment_input(salt, encoded))
}

/// What the commitment hashes, in order.
fn commitment_input<'a>(salt: &'a [u8; SALT_LEN], encoded: &'a [u8]) -> [&'a [u8]; 3] {
    [COMMIT_DOMAIN, salt, encoded]
}

fn subkey(key: &DataKey, nonce: &[u8; NONCE_LEN]) -> Aes256Gcm {
    let k = key.xaes().derive(nonce);
    Aes256Gcm::new((&*k).into())
}

/// Per-record randomness (salts, nonces, record ids) from the thread's CSPRNG: ChaCha12 seeded
/// and periodically reseeded from the operating system, so the hot path makes no system call per
/// record. Keys still come straight from the operating system (see `keyring`).
pub(crate) fn random<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

/// Seals `record` under `key`. The record bytes are copied once into the output buffer, hashed
/// once for the commitment and encrypted in place. A record that cannot be encoded exactly is
/// refused (the pipeline checks this before sealing, with a rejection the sender sees).
/// `compress` is the vault's setting (`vault.compress`): no caller may default it.
pub fn seal(
    record: &Record,
    record_id: RecordId,
    key: &DataKey,
    compress: Compress,
) -> Result<Sealed, EncodeError> {
    seal_many(&[(record, record_id, key)], compress)
        .pop()
        .expect("one result per record")
}

/// [`seal`] for several records at once: their commitments are hashed together
/// (`Sha3_256::digest_many`, eight at a time on AVX-512F, four on AVX2), which is most of the
/// work of sealing.
/// One result per record, in order. Each record gets a fresh salt and nonce from [`random`].
pub fn seal_many(
    records: &[(&Record, RecordId, &DataKey)],
    compress: Compress,
) -> Vec<Result<Sealed, EncodeError>> {
    let plain: Vec<_> = records
        .iter()
        .map(|&(r, id, key)| (Plain::Record(r), id, key))
        .collect();
    seal_plain(&plain, compress)
}

/// [`seal_many`] for derived records.
pub fn seal_derived_many(
    records: &[(&DerivedRecord, RecordId, &DataKey)],
    compress: Compress,
) -> Vec<Result<Sealed, EncodeError>> {
    let plain: Vec<_> = records
        .iter()
        .map(|&(r, id, key)| (Plain::Derived(r), id, key))
        .collect();
    seal_plain(&plain, compress)
}

/// [`seal_many`] for events.
pub fn seal_events(
    events: &[(&Event, RecordId, &DataKey)],
    compress: Compress,
) -> Vec<Result<Sealed, EncodeError>> {
    let plain: Vec<_> = events
        .iter()
        .map(|&(e, id, key)| (Plain::Event(e), id, key))
        .collect();
    seal_plain(&plain, compress)
}

/// Whether an encoding of [`COMPRESS_FROM`] bytes or more is sealed as an LZ4 block (sealed
/// record version 2) where that saves an eighth. `Never` keeps every stored length equal to
/// the encoding's, whatever its content: compressed lengths depend on how repetitive a record
/// is, which someone able both to put text into a patient's messages and to watch stored
/// sizes could use to guess the rest (docs/FORMATS.md, config `vault.compress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compress {
    #[default]
    Lz4,
    Never,
}

/// What is sealed: a record as received, one derived from it, or an event (told apart inside
/// the ciphertext by the encoding's version byte).
#[derive(Clone, Copy)]
pub enum Plain<'a> {
    Record(&'a Record),
    Derived(&'a DerivedRecord),
    Event(&'a Event),
}

fn seal_plain(
    records: &[(Plain<'_>, RecordId, &DataKey)],
    compress: Compress,
) -> Vec<Result<Sealed, EncodeError>> {
    let items: Vec<SealInput<'_>> = records
        .iter()
        .map(|&(record, record_id, key)| {
            // One draw for both.
            let fresh: [u8; SALT_LEN + NONCE_LEN] = random();
            SealInput {
                record,
                record_id,
                key,
                salt: fresh[..SALT_LEN].try_into().expect("32"),
                nonce: fresh[SALT_LEN..].try_into().expect("24"),
                compress,
            }
        })
        .collect();
    seal_inputs(&items)
}

/// [`seal`] with the salt and nonce given instead of drawn: the same code path as
/// [`seal_many`], for known-answer vectors (`testdata/formats/vectors.json`). Never reuse a
/// nonce or salt outside tests: both must be fresh and random for every record.
#[doc(hidden)]
pub fn seal_with(
    record: &Record,
    record_id: RecordId,
    key: &DataKey,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
) -> Result<Sealed, EncodeError> {
    seal_one_with(Plain::Record(record), record_id, key, salt, nonce)
}

/// [`seal_with`] for a derived record: the same code path as [`seal_derived_many`], for
/// known-answer vectors only (never reuse a nonce or salt outside tests).
#[doc(hidden)]
pub fn seal_derived_with(
    record: &DerivedRecord,
    record_id: RecordId,
    key: &DataKey,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
) -> Result<Sealed, EncodeError> {
    seal_one_with(Plain::Derived(record), record_id, key, salt, nonce)
}

/// [`seal_with`] for an event: the same code path as [`seal_events`], for known-answer vectors
/// only (never reuse a nonce or salt outside tests).
#[doc(hidden)]
pub fn seal_event_with(
    event: &Event,
    record_id: RecordId,
    key: &DataKey,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
) -> Result<Sealed, EncodeError> {
    seal_one_with(Plain::Event(event), record_id, key, salt, nonce)
}

/// The known-answer path: compression as the default vault has it (the vectors hold both
/// forms; tests only, so it is the one place that does not take the vault's setting).
fn seal_one_with(
    record: Plain<'_>,
    record_id: RecordId,
    key: &DataKey,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
) -> Result<Sealed, EncodeError> {
    seal_inputs(&[SealInput {
        record,
        record_id,
        key,
        salt,
        nonce,
        compress: Compress::Lz4,
    }])
    .pop()
    .expect("one result per record")
}

/// One record to seal, with its salt and nonce.
struct SealInput<'a> {
    record: Plain<'a>,
    record_id: RecordId,
    key: &'a DataKey,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    compress: Compress,
}

/// What [`seal_many`] and [`seal_with`] share: encodes, commits (hashed together) and encrypts.
fn seal_inputs(items: &[SealInput<'_>]) -> Vec<Result<Sealed, EncodeError>> {
    let prepared: Vec<Result<Prepared, EncodeError>> = items
        .iter()
        .map(|i| Prepared::new(i.record, i.key, i.salt, i.nonce))
        .collect();
    let parts: Vec<[&[u8]; 3]> = prepared
        .iter()
        .flatten()
        .map(|p| commitment_input(&p.salt, p.encoded()))
        .collect();
    let inputs: Vec<&[&[u8]]> = parts.iter().map(|p| &p[..]).collect();
    let mut commitments = Sha3_256::digest_many(&inputs).into_iter();
    prepared
        .into_iter()
        .zip(items)
        .map(|(p, item)| {
            let p = p?;
            let commitment = commitments
                .next()
                .expect("one commitment per prepared record");
            Ok(p.finish(commitment, item.record_id, item.key, item.compress))
        })
        .collect()
}

/// A record's sealed form before its commitment and encryption: header, salt, encoding.
struct Prepared {
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    header_len: usize,
    out: Vec<u8>,
}

impl Prepared {
    fn new(
        record: Plain<'_>,
        key: &DataKey,
        salt: [u8; SALT_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Prepared, EncodeError> {
        let origin_json = match record {
            Plain::Record(r) => serde_json::to_vec(&r.meta.origin).unwrap_or_default(),
            Plain::Derived(_) | Plain::Event(_) => Vec::new(),
        };
        let encoded_len = match record {
            Plain::Record(r) => r.encoded_len(&origin_json)?,
            Plain::Derived(d) => d.encoded_len()?,
            Plain::Event(e) => e.encoded_len()?,
        };
        let key_id = key.id().as_bytes();
        let header_len = 4 + 1 + key_id.len() + NONCE_LEN + 1;
        let mut out = Vec::with_capacity(header_len + SALT_LEN + encoded_len + TAG_LEN);
        write_header(&mut out, key_id, &nonce, None);
        out.extend_from_slice(&salt);
        match record {
            Plain::Record(r) => r.encode_into(&origin_json, &mut out)?,
            Plain::Derived(d) => d.encode_into(&mut out)?,
            Plain::Event(e) => e.encode_into(&mut out)?,
        }
        Ok(Prepared {
            salt,
            nonce,
            header_len,
            out,
        })
    }

    /// The record encoding the commitment covers.
    fn encoded(&self) -> &[u8] {
        &self.out[self.header_len + SALT_LEN..]
    }

    /// Compresses the encoding where that pays ([`COMPRESS_FROM`]), then encrypts salt and
    /// encoding in place and appends the tag.
    fn finish(
        self,
        commitment: [u8; 32],
        record_id: RecordId,
        key: &DataKey,
        compress: Compress,
    ) -> Sealed {
        let Prepared {
            nonce,
            mut header_len,
            mut out,
            ..
        } = self;
        let packed = match compress {
            Compress::Lz4 => compressed(&out, header_len, key.id().as_bytes(), &nonce),
            Compress::Never => None,
        };
        if let Some(packed) = packed {
            // The plaintext copy is dropped, not encrypted over: wipe it.
            zeroize::Zeroize::zeroize(&mut out);
            header_len += 4;
            out = packed;
        }
        let mut aad = Vec::with_capacity(header_len + 16);
        aad.extend_from_slice(&out[..header_len]);
        aad.extend_from_slice(&record_id.0);
        let cipher = subkey(key, &nonce);
        let tag = cipher
            .encrypt_inout_detached(
                (&nonce[12..]).try_into().expect("12 bytes"),
                &aad,
                out[header_len..].as_mut().into(),
            )
            .expect("AES-GCM accepts messages far larger than a record");
        out.extend_from_slice(&tag);
        Sealed {
            record_id,
            commitment,
            key_id: key.id().to_string(),
            bytes: out,
        }
    }
}

/// Writes a sealed record's header: version 1, or version 2 with the length of the encoding
/// it compresses.
fn write_header(out: &mut Vec<u8>, key_id: &[u8], nonce: &[u8; NONCE_LEN], packed: Option<u32>) {
    out.extend_from_slice(if packed.is_some() {
        MAGIC_COMPRESSED
    } else {
        MAGIC
    });
    out.push(key_id.len() as u8);
    out.extend_from_slice(key_id);
    out.extend_from_slice(nonce);
    out.push(SALT_LEN as u8);
    if let Some(len) = packed {
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// The version 2 form of a prepared record (`out`: header of `header_len` bytes, salt,
/// encoding), still in plaintext, when its encoding is long enough and LZ4 saves an eighth.
/// LZ4 writes into a per-thread scratch buffer of its worst-case size (zero-filled once, when
/// it grows, not per record), and the record gets an exact copy: a sealed Bundle holds its own
/// length until the vault writes it, not the worst case. What LZ4 wrote is wiped after the copy.
/// A record too long for the kept buffer ([`SCRATCH_MAX`]) gets a buffer of its own instead, so
/// one large message does not hold its worst case on every sealing thread for good.
fn compressed(
    out: &[u8],
    header_len: usize,
    key_id: &[u8],
    nonce: &[u8; NONCE_LEN],
) -> Option<Vec<u8>> {
    let (salt, encoded) = out[header_len..].split_at(SALT_LEN);
    if encoded.len() < COMPRESS_FROM {
        return None;
    }
    let len = u32::try_from(encoded.len()).ok()?;
    let room = lz4_flex::block::get_maximum_output_size(encoded.len());
    let pack = |scratch: &mut [u8]| {
        let Ok(n) = lz4_flex::block::compress_into(encoded, scratch) else {
            // Not reached (the room is LZ4's worst case); what it wrote is wiped all the same.
            zeroize::Zeroize::zeroize(scratch);
            return None;
        };
        let block = &mut scratch[..n];
        let packed = (n <= encoded.len() - encoded.len() / 8).then(|| {
            let mut packed = Vec::with_capacity(header_len + 4 + SALT_LEN + n + TAG_LEN);
            write_header(&mut packed, key_id, nonce, Some(len));
            packed.extend_from_slice(salt);
            packed.extend_from_slice(block);
            packed
        });
        zeroize::Zeroize::zeroize(block);
        packed
    };
    if room > SCRATCH_MAX {
        return pack(&mut vec![0; room]);
    }
    SCRATCH.with_borrow_mut(|scratch| {
        if scratch.len() < room {
            scratch.resize(room, 0);
        }
        pack(&mut scratch[..room])
    })
}

/// The largest scratch buffer a sealing thread keeps between records (LZ4's worst case for an
/// encoding of about 1 MiB; typical Bundles need a few KiB).
const SCRATCH_MAX: usize = 1 << 20;

thread_local! {
    /// [`compressed`]'s LZ4 output, zero between records.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The parsed header of a sealed record.
pub struct Header<'a> {
    pub key_id: &'a str,
    pub nonce: [u8; NONCE_LEN],
    /// The header's length in bytes.
    pub len: usize,
    /// Version 2: the length of the encoding the ciphertext holds as an LZ4 block.
    pub packed: Option<usize>,
}

pub fn parse_header(bytes: &[u8]) -> Result<Header<'_>, SealError> {
    let compressed = match bytes.get(..4) {
        Some(m) if m == MAGIC => false,
        Some(m) if m == MAGIC_COMPRESSED => true,
        _ => return Err(SealError::BadHeader),
    };
    let kl = *bytes.get(4).ok_or(SealError::BadHeader)? as usize;
    let salt_at = 5 + kl + NONCE_LEN;
    let len = salt_at + 1 + if compressed { 4 } else { 0 };
    if kl == 0 || bytes.len() < len + SALT_LEN + TAG_LEN {
        return Err(SealError::BadHeader);
    }
    let key_id = std::str::from_utf8(&bytes[5..5 + kl]).map_err(|_| SealError::BadHeader)?;
    let nonce = bytes[5 + kl..salt_at].try_into().expect("length checked");
    if bytes[salt_at] as usize != SALT_LEN {
        return Err(SealError::BadHeader);
    }
    let packed = if compressed {
        let n = u32::from_be_bytes(bytes[len - 4..len].try_into().expect("4 bytes")) as usize;
        // What no writer makes: a short encoding compressed, or one past the encoding limit.
        if !(COMPRESS_FROM..=crate::record::MAX_ENCODED_LEN).contains(&n) {
            return Err(SealError::BadHeader);
        }
        Some(n)
    } else {
        None
    };
    Ok(Header {
        key_id,
        nonce,
        len,
        packed,
    })
}

/// An opened record: the record, its salt and the recomputed commitment.
pub struct Opened {
    pub record: Record,
    pub salt: [u8; SALT_LEN],
    pub commitment: [u8; 32],
}

/// An opened record of either kind.
pub struct OpenedContent {
    pub content: Content,
    pub salt: [u8; SALT_LEN],
    pub commitment: [u8; 32],
}

/// Decrypts and checks a sealed record as received (a derived record is `BadRecord` here; see
/// [`open_content`]).
pub fn open(bytes: &[u8], record_id: RecordId, key: &DataKey) -> Result<Opened, SealError> {
    let o = open_content(bytes, record_id, key)?;
    match o.content {
        Content::Record(record) => Ok(Opened {
            record,
            salt: o.salt,
            commitment: o.commitment,
        }),
        Content::Derived(_) | Content::Event(_) => Err(SealError::BadRecord),
    }
}

/// Decrypts a sealed record of any kind without recomputing its commitment: for serving reads,
/// where the AEAD tag already proves the bytes are the ones sealed under this key and id, and
/// hashing the whole record again would be most of a read's cost. Verification uses
/// [`open_content`].
pub fn decrypt_content(
    bytes: &[u8],
    record_id: RecordId,
    key: &DataKey,
) -> Result<Content, SealError> {
    let plain = decrypt(bytes, record_id, key)?;
    Content::decode(&plain[SALT_LEN..]).ok_or(SealError::BadRecord)
}

/// The salt and encoding inside a sealed record, after checking its header and tag.
fn decrypt(
    bytes: &[u8],
    record_id: RecordId,
    key: &DataKey,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let header = parse_header(bytes)?;
    if header.key_id != key.id() {
        return Err(SealError::Decrypt(header.key_id.to_string()));
    }
    let (head, rest) = bytes.split_at(header.len);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut aad = head.to_vec();
    aad.extend_from_slice(&record_id.0);
    let mut plain = Zeroizing::new(ct.to_vec());
    subkey(key, &header.nonce)
        .decrypt_inout_detached(
            (&header.nonce[12..]).try_into().expect("12 bytes"),
            &aad,
            plain.as_mut_slice().into(),
            tag.try_into().expect("16 bytes"),
        )
        .map_err(|_| SealError::Decrypt(key.id().to_string()))?;
    match header.packed {
        None => Ok(plain),
        Some(n) => unpack(&plain, n),
    }
}

/// `salt || encoding` from a version 2 plaintext (`salt || LZ4 block`) whose encoding is `n`
/// bytes long. The tag has verified, so only a holder of the key can have made the block; still,
/// the block must decode to exactly `n` bytes, and `n` is checked against what LZ4 can expand
/// (at most 255 bytes per byte) before anything is allocated.
fn unpack(plain: &[u8], n: usize) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let (salt, block) = plain.split_at(SALT_LEN);
    // `n` is at least COMPRESS_FROM (`parse_header`), so an empty block fails here too.
    if n / 255 > block.len() {
        return Err(SealError::BadRecord);
    }
    let mut out = Zeroizing::new(vec![0u8; SALT_LEN + n]);
    out[..SALT_LEN].copy_from_slice(salt);
    match lz4_flex::block::decompress_into(block, &mut out[SALT_LEN..]) {
        Ok(m) if m == n => Ok(out),
        _ => Err(SealError::BadRecord),
    }
}

/// Decrypts and checks a sealed record of either kind.
pub fn open_content(
    bytes: &[u8],
    record_id: RecordId,
    key: &DataKey,
) -> Result<OpenedContent, SealError> {
    let plain = decrypt(bytes, record_id, key)?;
    let salt: [u8; SALT_LEN] = plain[..SALT_LEN].try_into().expect("length checked");
    let encoded = &plain[SALT_LEN..];
    let content = Content::decode(encoded).ok_or(SealError::BadRecord)?;
    Ok(OpenedContent {
        commitment: commitment(&salt, encoded),
        content,
        salt,
    })
}

/// SHA3-256 of arbitrary bytes (certificate fingerprints and the like).
pub fn fingerprint(bytes: &[u8]) -> [u8; 32] {
    Sha3_256::digest(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Origin;
    use crate::record::RecordMeta;

    fn record(i: usize, len: usize) -> Record {
        Record {
            meta: RecordMeta {
                sender: "LAB|HOSP".into(),
                message_type: "ORU".into(),
                trigger: "R01".into(),
                control_id: format!("C{i}"),
                patient_ids: vec![format!("{i}^^^H^MR")],
                received_ms: i as u64,
                origin: Origin::Local {
                    name: "test".into(),
                },
                format: "hl7v2".into(),
            },
            raw: (0..len)
                .map(|b| (b * 7 + i) as u8)
                .collect::<Vec<u8>>()
                .into(),
        }
    }

    /// Records sealed together (commitments hashed eight or four at a time where the CPU can)
    /// open under their own keys to the same record, and carry the commitment `open` recomputes
    /// from the salt and encoding, as records sealed one at a time do.
    #[test]
    fn sealed_together_open_alone() {
        let keys: Vec<DataKey> = (0..3)
            .map(|k| DataKey::new(&format!("p-{k}"), [k as u8 + 1; 32]))
            .collect();
        let records: Vec<Record> = (0..9).map(|i| record(i, 100 + i * 700)).collect();
        let items: Vec<(&Record, RecordId, &DataKey)> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r, RecordId([i as u8; 16]), &keys[i % 3]))
            .collect();
        let mut sealed: Vec<Sealed> = seal_many(&items, Compress::Lz4)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        sealed.push(seal(&records[0], RecordId([0; 16]), &keys[0], Compress::Lz4).unwrap());
        assert_eq!(sealed.len(), 10);
        for (i, s) in sealed.iter().enumerate() {
            let i = i % 9;
            let opened = open(&s.bytes, RecordId([i as u8; 16]), &keys[i % 3]).unwrap();
            assert_eq!(opened.record.raw, records[i].raw);
            assert_eq!(opened.record.meta.control_id, records[i].meta.control_id);
            assert_eq!(s.commitment, opened.commitment, "record {i}");
            assert!(open(&s.bytes, RecordId([i as u8; 16]), &keys[(i + 1) % 3]).is_err());
        }
        // Fresh salt per record: the same record sealed twice commits differently.
        assert_ne!(sealed[0].commitment, sealed[9].commitment);
    }

    /// `seal_with` is sealing with the salt and nonce given: the same inputs give the same
    /// bytes, the salt is the one `open` finds, and the nonce is the one in the header.
    #[test]
    fn seal_with_uses_the_salt_and_nonce_it_is_given() {
        let key = DataKey::new("p-0", [5; 32]);
        let r = record(1, 300);
        let (salt, nonce) = ([0x11; SALT_LEN], [0x22; NONCE_LEN]);
        let a = seal_with(&r, RecordId([1; 16]), &key, salt, nonce).unwrap();
        let b = seal_with(&r, RecordId([1; 16]), &key, salt, nonce).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(parse_header(&a.bytes).unwrap().nonce, nonce);
        let opened = open(&a.bytes, RecordId([1; 16]), &key).unwrap();
        assert_eq!(opened.salt, salt);
        assert_eq!(opened.commitment, a.commitment);
        let other = seal_with(&r, RecordId([1; 16]), &key, salt, [0x23; NONCE_LEN]).unwrap();
        assert_ne!(other.bytes, a.bytes);
        assert_eq!(
            other.commitment, a.commitment,
            "the commitment does not cover the nonce"
        );
    }

    /// A record whose bytes repeat (text, JSON) is sealed compressed once its encoding reaches
    /// `COMPRESS_FROM`, and opens to the same record with the commitment of its encoding; one
    /// just short of it, or one LZ4 cannot shrink by an eighth, is sealed as version 1.
    #[test]
    fn long_repetitive_records_are_sealed_compressed() {
        let key = DataKey::new("p-0", [5; 32]);
        let (salt, nonce) = ([0x11; SALT_LEN], [0x22; NONCE_LEN]);
        let encoded_len = |r: &Record| {
            let origin = serde_json::to_vec(&r.meta.origin).unwrap();
            r.encoded_len(&origin).unwrap()
        };
        let mut long = record(1, COMPRESS_FROM);
        let s = seal_with(&long, RecordId([1; 16]), &key, salt, nonce).unwrap();
        let h = parse_header(&s.bytes).unwrap();
        assert_eq!(&s.bytes[..4], MAGIC_COMPRESSED);
        assert_eq!(h.packed, Some(encoded_len(&long)));
        assert!(s.bytes.len() < COMPRESS_FROM / 2, "{} bytes", s.bytes.len());
        let opened = open(&s.bytes, RecordId([1; 16]), &key).unwrap();
        assert_eq!(opened.record.raw, long.raw);
        assert_eq!(opened.commitment, s.commitment);
        let origin = serde_json::to_vec(&long.meta.origin).unwrap();
        let mut enc = Vec::new();
        long.encode_into(&origin, &mut enc).unwrap();
        assert_eq!(s.commitment, commitment(&salt, &enc));
        assert!(open(&s.bytes, RecordId([2; 16]), &key).is_err());
        // LZ4's worst case is a scratch buffer's, not the record's, and what LZ4 wrote there
        // is wiped once the record has its copy.
        assert!(
            s.bytes.capacity() < 2 * s.bytes.len(),
            "{}",
            s.bytes.capacity()
        );
        let scratch = || SCRATCH.with_borrow(|b| (b.len(), b.iter().all(|&x| x == 0)));
        let (kept, wiped) = scratch();
        assert!(
            kept >= COMPRESS_FROM && wiped,
            "{kept} bytes, wiped: {wiped}"
        );

        // An encoding over the kept buffer's size gets a buffer of its own: the thread keeps
        // what it had.
        let huge = record(1, 2 * SCRATCH_MAX);
        let s = seal_with(&huge, RecordId([1; 16]), &key, salt, nonce).unwrap();
        assert_eq!(&s.bytes[..4], MAGIC_COMPRESSED);
        let opened = open(&s.bytes, RecordId([1; 16]), &key).unwrap();
        assert_eq!(opened.record.raw, huge.raw);
        assert_eq!(scratch(), (kept, true));

        // `vault.compress = false`: version 1, the same commitment.
        let plain = seal_many(&[(&long, RecordId([1; 16]), &key)], Compress::Never)
            .pop()
            .unwrap()
            .unwrap();
        assert_eq!(&plain.bytes[..4], MAGIC);
        assert_eq!(parse_header(&plain.bytes).unwrap().packed, None);
        assert!(plain.bytes.len() > encoded_len(&long));
        let opened = open(&plain.bytes, RecordId([1; 16]), &key).unwrap();
        assert_eq!(opened.record.raw, long.raw);
        assert_eq!(opened.commitment, plain.commitment);

        // One byte short of the threshold: version 1.
        let short = COMPRESS_FROM - (encoded_len(&long) - long.raw.len()) - 1;
        let r = record(1, short);
        assert_eq!(encoded_len(&r), COMPRESS_FROM - 1);
        let s = seal_with(&r, RecordId([1; 16]), &key, salt, nonce).unwrap();
        assert_eq!(&s.bytes[..4], MAGIC);
        assert_eq!(parse_header(&s.bytes).unwrap().packed, None);

        // Bytes that do not repeat: version 1 whatever the length.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        long.raw = (0..3 * COMPRESS_FROM)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect::<Vec<u8>>()
            .into();
        let s = seal_with(&long, RecordId([1; 16]), &key, salt, nonce).unwrap();
        assert_eq!(&s.bytes[..4], MAGIC);
        assert_eq!(
            open(&s.bytes, RecordId([1; 16]), &key).unwrap().record.raw,
            long.raw
        );
    }

    /// Version 2 records that a key holder could make but no writer does: the length in the
    /// header not the block's, a block cut short or with a byte after it, a length LZ4 cannot
    /// reach, a short encoding compressed. Each is refused, none with a panic.
    #[test]
    fn compressed_records_that_do_not_decode_to_their_length_are_refused() {
        let key = DataKey::new("p-0", [5; 32]);
        let id = RecordId([1; 16]);
        let nonce = [0x22; NONCE_LEN];
        let r = record(1, 3 * COMPRESS_FROM);
        let good = seal_with(&r, id, &key, [0x11; SALT_LEN], nonce).unwrap();
        let h = parse_header(&good.bytes).unwrap();
        let n = h.packed.unwrap();
        let plain = decrypt(&good.bytes, id, &key).unwrap();
        let origin = serde_json::to_vec(&r.meta.origin).unwrap();
        let mut enc = Vec::new();
        r.encode_into(&origin, &mut enc).unwrap();
        let block = lz4_flex::block::compress(&enc);
        // Seals `salt || block` under a version 2 header that says `len`.
        let reseal = |len: u32, block: &[u8]| {
            let mut out = Vec::new();
            write_header(&mut out, b"p-0", &nonce, Some(len));
            let header_len = out.len();
            out.extend_from_slice(&plain[..SALT_LEN]);
            out.extend_from_slice(block);
            let mut aad = out[..header_len].to_vec();
            aad.extend_from_slice(&id.0);
            let tag = subkey(&key, &nonce)
                .encrypt_inout_detached(
                    (&nonce[12..]).try_into().unwrap(),
                    &aad,
                    out[header_len..].as_mut().into(),
                )
                .unwrap();
            out.extend_from_slice(&tag);
            out
        };
        assert_eq!(
            open(&reseal(n as u32, &block), id, &key)
                .unwrap()
                .record
                .raw,
            r.raw
        );
        let refused = |bytes: Vec<u8>, why: &str| match open(&bytes, id, &key) {
            Err(SealError::BadRecord) | Err(SealError::BadHeader) => {}
            Err(e) => panic!("{why}: {e}"),
            Ok(_) => panic!("{why}: opened"),
        };
        refused(reseal(n as u32 + 1, &block), "length one more");
        refused(reseal(n as u32 - 1, &block), "length one less");
        refused(
            reseal(n as u32, &block[..block.len() - 1]),
            "block cut short",
        );
        let mut trailing = block.clone();
        trailing.push(0);
        refused(reseal(n as u32, &trailing), "a byte after the block");
        refused(reseal(u32::MAX - 8192, &block), "a length LZ4 cannot reach");
        refused(reseal(COMPRESS_FROM as u32 - 1, &block), "a short encoding");
        // The length is authenticated: changed in place, the tag fails.
        let mut moved = good.bytes.clone();
        moved[h.len - 1] ^= 1;
        assert!(matches!(open(&moved, id, &key), Err(SealError::Decrypt(_))));
    }
}
