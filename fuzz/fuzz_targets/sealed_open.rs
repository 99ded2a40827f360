//! Sealed records: `seal::parse_header` and `seal::open` on arbitrary bytes, and a structured
//! mode that seals a record made from the input, damages the sealed bytes as the input says and
//! checks that `open` either fails or, only when nothing changed, gives back the same record and
//! commitment.
//!
//! Input: first byte 0x00 selects the structured mode (below); anything else is taken as the
//! sealed bytes themselves and opened under key `p-x` ([7; 32]) and record id [0x11; 16].
//!
//! Structured mode, after the 0x00: `n` (1 byte, at most 8 edits used), then `n` edits of 4 bytes
//! `op, pos_hi, pos_lo, value`, then the record: the rest of the input is its raw message, and
//! its metadata is made from the first bytes of the raw message. Ops (op % 6): 0 xor `value`
//! (0 taken as 1) into the byte at pos, 1 truncate to pos, 2 append `value`, 3 set the byte at
//! pos to `value`, 4 open under another record id, 5 open under another key. Positions are taken
//! modulo the current length.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use medanchor::envelope::{Origin, RecordId};
use medanchor::record::{Record, RecordMeta};
use medanchor::seal::{self, DataKey};

const ID: RecordId = RecordId([0x11; 16]);

fn key() -> DataKey {
    DataKey::new("p-x", [7; 32])
}

fn arbitrary(data: &[u8]) {
    let header = seal::parse_header(data);
    let opened = seal::open(data, ID, &key());
    if let Ok(o) = &opened {
        // Only well-formed headers open, and what opens is a canonical record encoding whose
        // commitment is the one over its salt and encoding.
        let h = header.as_ref().expect("an opened record has a header");
        assert_eq!(h.key_id, "p-x");
        let origin_json = serde_json::to_vec(&o.record.meta.origin).unwrap();
        let mut enc = Vec::new();
        o.record.encode_into(&origin_json, &mut enc).unwrap();
        assert_eq!(o.commitment, seal::commitment(&o.salt, &enc));
        // Version 1 holds the encoding as it is; version 2 an LZ4 block of the length its
        // header says.
        match h.packed {
            None => assert_eq!(
                data.len(),
                h.len + seal::SALT_LEN + enc.len() + seal::TAG_LEN
            ),
            Some(n) => assert_eq!(n, enc.len()),
        }
    }
    if let Ok(h) = header {
        assert!(h.len + seal::SALT_LEN + seal::TAG_LEN <= data.len());
        assert!(!h.key_id.is_empty());
    }
}

fn record(raw: &[u8]) -> Record {
    let text = |from: usize, n: usize| {
        String::from_utf8_lossy(raw.get(from..(from + n).min(raw.len())).unwrap_or(b""))
            .into_owned()
    };
    let ids = raw.first().map_or(0, |b| b % 4) as usize;
    Record {
        meta: RecordMeta {
            sender: text(0, 3),
            message_type: "ADT".into(),
            trigger: text(3, 3),
            control_id: text(6, 8),
            patient_ids: (0..ids).map(|i| text(i, 5)).collect(),
            received_ms: raw.len() as u64,
            origin: Origin::Local { name: text(1, 4) },
            format: "hl7v2".into(),
        },
        raw: Bytes::copy_from_slice(raw),
    }
}

fn structured(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 9);
    if rest.len() < 4 * n {
        return;
    }
    let (edits, raw) = rest.split_at(4 * n);
    let r = record(raw);
    let k = key();
    let sealed = seal::seal(&r, ID, &k, seal::Compress::Lz4).expect("a small record seals");
    let mut bytes = sealed.bytes.clone();
    let mut id = ID;
    let (mut key_id, mut secret) = ("p-x", [7u8; 32]);
    for e in edits.chunks_exact(4) {
        let pos = usize::from(u16::from_be_bytes([e[1], e[2]]));
        let v = e[3];
        match e[0] % 6 {
            0 if !bytes.is_empty() => {
                let i = pos % bytes.len();
                bytes[i] ^= v.max(1);
            }
            1 => bytes.truncate(pos % (bytes.len() + 1)),
            2 => bytes.push(v),
            3 if !bytes.is_empty() => {
                let i = pos % bytes.len();
                bytes[i] = v;
            }
            4 => id.0[pos % 16] ^= v.max(1),
            5 => {
                key_id = if v & 1 == 0 { "p-x" } else { "p-y" };
                secret = [v | 1; 32];
            }
            _ => {}
        }
    }
    let open_key = DataKey::new(key_id, secret);
    let unchanged = bytes == sealed.bytes && id == ID && key_id == "p-x" && secret == [7; 32];
    let _ = seal::parse_header(&bytes);
    match seal::open(&bytes, id, &open_key) {
        Ok(o) => {
            assert!(unchanged, "damaged sealed record opened");
            assert_eq!(o.record, r);
            assert_eq!(o.commitment, sealed.commitment);
        }
        Err(e) => assert!(!unchanged, "intact sealed record did not open: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, rest)) => structured(rest),
        _ => arbitrary(data),
    }
});
