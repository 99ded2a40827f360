//! A `Record`: the raw message plus the metadata medanchor extracts from it, and the canonical
//! byte encoding that is committed to and sealed (see docs/FORMATS.md, "Record encoding").

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::envelope::{Origin, RecordId, RejectKind, Rejection};
use crate::hl7::{self, Message};
use crate::ledger::EventKind;

/// Metadata kept with every record (inside the ciphertext: it includes patient identifiers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMeta {
    /// MSH-3 and MSH-4 (sending application and facility) as `app|facility`.
    pub sender: String,
    /// MSH-9.1 and MSH-9.2.
    pub message_type: String,
    pub trigger: String,
    /// MSH-10.
    pub control_id: String,
    /// PID-3 repetitions as `id^authority^type`.
    pub patient_ids: Vec<String>,
    pub received_ms: u64,
    pub origin: Origin,
    pub format: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub meta: RecordMeta,
    pub raw: Bytes,
}

/// The most patient identifiers a record encoding holds (its count is a u16).
pub const MAX_PATIENT_IDS: usize = u16::MAX as usize;

/// The longest record encoding: its sealed form (header, salt and tag added) must still fit the
/// segment entry's u32 length.
pub const MAX_ENCODED_LEN: usize = u32::MAX as usize - 4096;

/// Why a record cannot be encoded exactly. Names fields, never their content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0} patient identifiers (PID-3 repetitions) exceed the limit of {MAX_PATIENT_IDS}")]
    TooManyPatientIds(usize),
    #[error("field {field} is {len} bytes, more than a record encoding can hold")]
    TooLong { field: &'static str, len: usize },
}

impl EncodeError {
    pub fn rejection(&self) -> Rejection {
        let label = match self {
            EncodeError::TooManyPatientIds(_) => "too_many_patient_ids",
            EncodeError::TooLong { .. } => "too_large",
        };
        // HL7 table 0357: 102 = data type error (a field beyond what it may hold).
        Rejection::new(RejectKind::Unacceptable, 102, label, self.to_string())
    }
}

/// Adds a length-prefixed field to a running total, refusing what the encoding cannot hold.
fn add_field(total: usize, field: &'static str, len: usize) -> Result<usize, EncodeError> {
    let total = total.saturating_add(len);
    if len > u32::MAX as usize || total > MAX_ENCODED_LEN {
        return Err(EncodeError::TooLong { field, len });
    }
    Ok(total)
}

/// Rules an integration engineer can put on what is accepted (config `[accept]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcceptRules {
    /// MSH-9.1 values accepted (empty: all).
    pub message_types: Vec<String>,
    /// MSH-11.1 processing ids accepted (empty: all).
    pub processing_ids: Vec<String>,
    /// Reject messages without a PID-3 identifier.
    pub require_patient_id: bool,
}

impl AcceptRules {
    /// `accept.message_types`; `what` names the kind of type in the reason.
    fn check_type(&self, what: &str, message_type: &str) -> Result<(), Rejection> {
        if self.message_types.is_empty() || self.message_types.iter().any(|t| t == message_type) {
            return Ok(());
        }
        Err(Rejection::new(
            RejectKind::Unacceptable,
            200,
            "type_not_accepted",
            format!("{what} is not accepted by this gateway (accept.message_types)"),
        ))
    }

    /// `accept.require_patient_id`; `missing` says what was not found.
    fn check_patient(&self, patient_ids: &[String], missing: &str) -> Result<(), Rejection> {
        if !self.require_patient_id || !patient_ids.is_empty() {
            return Ok(());
        }
        Err(Rejection::new(
            RejectKind::Unacceptable,
            101,
            "missing_patient_id",
            format!("{missing} (accept.require_patient_id)"),
        ))
    }
}

/// PID-3's identifiers as `id^authority^type` (CX.1, the first subcomponent of CX.4, CX.5),
/// empty ones left out.
pub fn hl7_patient_ids(msg: &Message<'_>) -> Result<Vec<String>, Rejection> {
    let mut patient_ids = Vec::new();
    if let Some(pid) = msg.segment(b"PID") {
        for rep in pid.field(3).repetitions() {
            let cx = |n: usize| rep.components().nth(n - 1).map(|c| c.raw()).unwrap_or(b"");
            let id = msg.text(cx(1)).map_err(|e| parse_rejection(&e))?;
            if id.trim().is_empty() || id == "\"\"" {
                continue;
            }
            // CX.4 is an HD: its first subcomponent names the authority.
            let authority_raw = cx(4)
                .split(|&b| Some(b) == msg.delimiters().subcomponent)
                .next();
            let authority = msg
                .text(authority_raw.unwrap_or(b""))
                .map_err(|e| parse_rejection(&e))?;
            let id_type = msg.text(cx(5)).map_err(|e| parse_rejection(&e))?;
            patient_ids.push(format!(
                "{}^{}^{}",
                id.trim(),
                authority.trim(),
                id_type.trim()
            ));
        }
    }
    Ok(patient_ids)
}

/// Which of a record's patient identifiers names its data key: the medical record number
/// (type MR) if there is one, else the first.
pub fn key_identity(patient_ids: &[String]) -> Option<&str> {
    patient_ids
        .iter()
        .find(|p| p.ends_with("^MR"))
        .or_else(|| patient_ids.first())
        .map(|s| s.as_str())
}

/// Maps a tokenizer error to a rejection (AR: the bytes are not a message we can read).
pub fn parse_rejection(e: &hl7::ParseError) -> Rejection {
    let label = match e {
        hl7::ParseError::UnsupportedCharset => "unsupported_charset",
        hl7::ParseError::Empty => "empty",
        hl7::ParseError::SecondMsh(_) => "second_msh",
        _ => "not_hl7",
    };
    let code = match e {
        hl7::ParseError::UnsupportedCharset => 203,
        _ => 100,
    };
    Rejection::new(RejectKind::NotHl7, code, label, e.to_string())
}

impl Record {
    /// Reads the metadata out of a FHIR JSON resource or Bundle. `sender` names who sent it
    /// (FHIR has no MSH-3/4). A resource without id or Bundle identifier gets a control id made
    /// from its bytes, so re-sending it is still recognised and never counted as a conflict.
    pub fn from_fhir(
        raw: Bytes,
        sender: &str,
        origin: Origin,
        received_ms: u64,
        rules: &AcceptRules,
    ) -> Result<Record, Rejection> {
        let m = crate::fhir::read(&raw)?;
        rules.check_type("resourceType", &m.resource_type)?;
        rules.check_patient(&m.patient_ids, "no Patient identifier or Patient reference")?;
        // FHIR ids are unique per resource type, so the type is part of the control id.
        let control_id = if m.id.trim().is_empty() {
            format!("bytes:{}", &blake3::hash(&raw).to_hex()[..32])
        } else {
            format!("{}/{}", m.resource_type, m.id)
        };
        Ok(Record {
            meta: RecordMeta {
                sender: sender.to_string(),
                message_type: m.resource_type,
                trigger: m.kind,
                control_id,
                patient_ids: m.patient_ids,
                received_ms,
                origin,
                format: "fhir".into(),
            },
            raw,
        })
    }

    /// Reads the metadata out of an HL7v2 message and applies the acceptance rules.
    pub fn from_hl7(
        msg: &Message<'_>,
        raw: Bytes,
        origin: Origin,
        received_ms: u64,
        rules: &AcceptRules,
    ) -> Result<Record, Rejection> {
        let msh = msg.msh();
        let text = |f: hl7::Field<'_>| msg.text(f.raw()).map(|c| c.into_owned());
        let t = |f| text(f).map_err(|e| parse_rejection(&e));
        let message_type = t(msh.field(9).component(1))?;
        let trigger = t(msh.field(9).component(2))?;
        let control_id = t(msh.field(10))?;
        if message_type.trim().is_empty() {
            return Err(Rejection::new(
                RejectKind::Unacceptable,
                101,
                "missing_msh9",
                "required field MSH-9 (message type) is empty",
            ));
        }
        if control_id.trim().is_empty() {
            return Err(Rejection::new(
                RejectKind::Unacceptable,
                101,
                "missing_msh10",
                "required field MSH-10 (message control id) is empty",
            ));
        }
        rules.check_type("MSH-9 message type", &message_type)?;
        let processing = t(msh.field(11).component(1))?;
        if !rules.processing_ids.is_empty() && !rules.processing_ids.contains(&processing) {
            return Err(Rejection::new(
                RejectKind::Unacceptable,
                202,
                "processing_id_not_accepted",
                "MSH-11 processing id is not accepted by this gateway (accept.processing_ids)",
            ));
        }
        let sender = format!("{}|{}", t(msh.field(3))?, t(msh.field(4))?);
        let patient_ids = hl7_patient_ids(msg)?;
        rules.check_patient(
            &patient_ids,
            "required field PID-3 (patient identifier) is empty",
        )?;
        Ok(Record {
            meta: RecordMeta {
                sender,
                message_type,
                trigger,
                control_id,
                patient_ids,
                received_ms,
                origin,
                format: "hl7v2".into(),
            },
            raw,
        })
    }

    /// The identifier that selects the patient's data key: the first PID-3 of type MR, else the
    /// first one. `None` means the record is sealed under the gateway key.
    pub fn patient_key_identity(&self) -> Option<&str> {
        key_identity(&self.meta.patient_ids)
    }

    /// Length of [`encode_into`](Self::encode_into)'s output, after checking that every count
    /// and length fits its field: the encoding must never wrap a count and read back as another
    /// record (a u16 count of 65,536 identifiers once did).
    pub fn encoded_len(&self, origin_json: &[u8]) -> Result<usize, EncodeError> {
        let m = &self.meta;
        if m.patient_ids.len() > MAX_PATIENT_IDS {
            return Err(EncodeError::TooManyPatientIds(m.patient_ids.len()));
        }
        let fields: [(&'static str, usize); 7] = [
            ("sender", m.sender.len()),
            ("message_type", m.message_type.len()),
            ("trigger", m.trigger.len()),
            ("control_id", m.control_id.len()),
            ("origin", origin_json.len()),
            ("format", m.format.len()),
            ("raw", self.raw.len()),
        ];
        let mut total = 1 + 4 * fields.len() + 2 + 8;
        for (field, len) in fields {
            total = add_field(total, field, len)?;
        }
        for p in &m.patient_ids {
            total = add_field(total + 4, "patient_ids", p.len())?;
        }
        Ok(total)
    }

    /// Canonical encoding, version 1: every string and the raw bytes length-prefixed (u32 BE),
    /// the patient-identifier count a u16. `origin_json` is `serde_json::to_vec(&meta.origin)`,
    /// computed once by the caller. Refuses (writing nothing) what cannot be encoded exactly.
    pub fn encode_into(&self, origin_json: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let len = self.encoded_len(origin_json)?;
        out.reserve(len);
        let m = &self.meta;
        // Lengths were checked by encoded_len: the casts below cannot truncate.
        let put = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        };
        out.push(1);
        put(out, m.sender.as_bytes());
        put(out, m.message_type.as_bytes());
        put(out, m.trigger.as_bytes());
        put(out, m.control_id.as_bytes());
        out.extend_from_slice(&(m.patient_ids.len() as u16).to_be_bytes());
        for p in &m.patient_ids {
            put(out, p.as_bytes());
        }
        out.extend_from_slice(&m.received_ms.to_be_bytes());
        put(out, origin_json);
        put(out, m.format.as_bytes());
        put(out, &self.raw);
        Ok(())
    }

    /// Whether this record can be encoded, as a rejection a sender can act on (checked before
    /// anything is acknowledged).
    pub fn check_encodable(&self) -> Result<(), Rejection> {
        let origin_json = serde_json::to_vec(&self.meta.origin).unwrap_or_default();
        self.encoded_len(&origin_json)
            .map(|_| ())
            .map_err(|e| e.rejection())
    }

    /// Inverse of [`encode_into`](Self::encode_into); `None` for anything that is not exactly one
    /// well-formed encoding.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let mut r = Reader(bytes);
        if r.u8()? != 1 {
            return None;
        }
        let sender = r.string()?;
        let message_type = r.string()?;
        let trigger = r.string()?;
        let control_id = r.string()?;
        let n = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
        let mut patient_ids = Vec::with_capacity(n as usize);
        for _ in 0..n {
            patient_ids.push(r.string()?);
        }
        let received_ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let origin_json = r.bytes()?;
        let origin: Origin = serde_json::from_slice(origin_json).ok()?;
        // Only the one encoding the writer makes: other spellings of the same JSON (spaces, key
        // order, escapes) would give two byte strings for one record.
        if serde_json::to_vec(&origin).ok()? != origin_json {
            return None;
        }
        let format = r.string()?;
        let raw = Bytes::copy_from_slice(r.bytes()?);
        if !r.0.is_empty() {
            return None;
        }
        Some(Record {
            meta: RecordMeta {
                sender,
                message_type,
                trigger,
                control_id,
                patient_ids,
                received_ms,
                origin,
                format,
            },
            raw,
        })
    }
}

/// A record derived from a stored one: the FHIR R4 Bundle normalization made of a raw HL7v2
/// message (docs/FORMATS.md, "Derived record encoding"). Sealed under the raw record's patient
/// key and anchored as its own leaf, which binds it to the raw record's commitment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedRecord {
    pub raw_id: RecordId,
    pub raw_commitment: [u8; 32],
    /// The mapping set's version (a hash of its files).
    pub mapping_version: String,
    pub mapped_ms: u64,
    /// A FHIR OperationOutcome (compact JSON) listing what the mapping left out; may be empty.
    pub outcome: Bytes,
    /// The FHIR R4 Bundle, compact JSON.
    pub bundle: Bytes,
}

/// Version byte of the derived record encoding (a raw record's is 1).
pub const DERIVED_VERSION: u8 = 2;

impl DerivedRecord {
    /// Length of the encoding, after checking every length fits its field.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        let mut total = 1 + 16 + 32 + 8 + 3 * 4;
        for (field, len) in [
            ("mapping_version", self.mapping_version.len()),
            ("outcome", self.outcome.len()),
            ("bundle", self.bundle.len()),
        ] {
            total = add_field(total, field, len)?;
        }
        Ok(total)
    }

    /// `2 || raw id[16] || raw commitment[32] || str mapping_version || u64 mapped_ms ||
    /// bytes outcome || bytes bundle`. Refuses (writing nothing) what cannot be encoded exactly.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let len = self.encoded_len()?;
        out.reserve(len);
        let put = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        };
        out.push(DERIVED_VERSION);
        out.extend_from_slice(&self.raw_id.0);
        out.extend_from_slice(&self.raw_commitment);
        put(out, self.mapping_version.as_bytes());
        out.extend_from_slice(&self.mapped_ms.to_be_bytes());
        put(out, &self.outcome);
        put(out, &self.bundle);
        Ok(())
    }

    /// Inverse of [`encode_into`](Self::encode_into); `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<DerivedRecord> {
        let mut r = Reader(bytes);
        if r.u8()? != DERIVED_VERSION {
            return None;
        }
        let raw_id = RecordId(r.take(16)?.try_into().ok()?);
        let raw_commitment = r.take(32)?.try_into().ok()?;
        let mapping_version = r.string()?;
        let mapped_ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let outcome = Bytes::copy_from_slice(r.bytes()?);
        let bundle = Bytes::copy_from_slice(r.bytes()?);
        if !r.0.is_empty() {
            return None;
        }
        Some(DerivedRecord {
            raw_id,
            raw_commitment,
            mapping_version,
            mapped_ms,
            outcome,
            bundle,
        })
    }
}

/// Something that happened to a patient's data (docs/FORMATS.md, "Event encoding"): a consent
/// granted or revoked, a read, an erasure. Stored, sealed and anchored like a record, so a
/// patient can prove it; sealed under the patient's data key (an erasure, whose key is gone,
/// under the gateway key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// The patient it concerns: their data key id (`p-` + 32 hex), which names no one.
    pub patient: String,
    pub at_ms: u64,
    /// Compact JSON: a FHIR Consent (granted, revoked) or AuditEvent (accessed), or the
    /// erasure's note. Bytes to this format.
    pub body: Bytes,
}

/// Version byte of the event encoding.
pub const EVENT_VERSION: u8 = 3;

impl Event {
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        let mut total = 1 + 1 + 8 + 2 * 4;
        for (field, len) in [("patient", self.patient.len()), ("body", self.body.len())] {
            total = add_field(total, field, len)?;
        }
        Ok(total)
    }

    /// `3 || kind u8 || str patient || u64 at_ms || bytes body`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let len = self.encoded_len()?;
        out.reserve(len);
        out.push(EVENT_VERSION);
        out.push(self.kind.byte());
        out.extend_from_slice(&(self.patient.len() as u32).to_be_bytes());
        out.extend_from_slice(self.patient.as_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.body);
        Ok(())
    }

    /// Inverse of [`encode_into`](Self::encode_into); `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Event> {
        let mut r = Reader(bytes);
        if r.u8()? != EVENT_VERSION {
            return None;
        }
        let kind = EventKind::from_byte(r.u8()?)?;
        let patient = r.string()?;
        let at_ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let body = Bytes::copy_from_slice(r.bytes()?);
        if !r.0.is_empty() {
            return None;
        }
        Some(Event {
            kind,
            patient,
            at_ms,
            body,
        })
    }
}

/// What a sealed record holds: a record as received, one derived from it, or an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Record(Record),
    Derived(DerivedRecord),
    Event(Event),
}

impl Content {
    /// Decodes any encoding, told apart by the version byte.
    pub fn decode(bytes: &[u8]) -> Option<Content> {
        match bytes.first()? {
            1 => Record::decode(bytes).map(Content::Record),
            &DERIVED_VERSION => DerivedRecord::decode(bytes).map(Content::Derived),
            &EVENT_VERSION => Event::decode(bytes).map(Content::Event),
            _ => None,
        }
    }
}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn origin() -> impl Strategy<Value = Origin> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>(), proptest::option::of(".*")).prop_map(
                |(ip, port, tls_client)| Origin::Mllp {
                    peer: (std::net::Ipv4Addr::from(ip), port).into(),
                    tls_client
                }
            ),
            (".*", ".*", any::<u64>()).prop_map(|(stream, subject, sequence)| Origin::Nats {
                stream,
                subject,
                sequence
            }),
            (".*", any::<i32>(), any::<i64>()).prop_map(|(topic, partition, offset)| {
                Origin::Kafka {
                    topic,
                    partition,
                    offset,
                }
            }),
            (".*", any::<u64>()).prop_map(|(file, index)| Origin::Import { file, index }),
            ".*".prop_map(|name| Origin::Local { name }),
        ]
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            (".*", ".*", ".*", ".*"),
            proptest::collection::vec(".*", 0..40),
            any::<u64>(),
            origin(),
            ".*",
            proptest::collection::vec(any::<u8>(), 0..2000),
        )
            .prop_map(
                |(
                    (sender, message_type, trigger, control_id),
                    patient_ids,
                    received_ms,
                    origin,
                    format,
                    raw,
                )| {
                    Record {
                        meta: RecordMeta {
                            sender,
                            message_type,
                            trigger,
                            control_id,
                            patient_ids,
                            received_ms,
                            origin,
                            format,
                        },
                        raw: raw.into(),
                    }
                },
            )
    }

    fn encode(r: &Record) -> Result<Vec<u8>, EncodeError> {
        let origin = serde_json::to_vec(&r.meta.origin).unwrap();
        let mut out = Vec::new();
        r.encode_into(&origin, &mut out)?;
        assert_eq!(out.len(), r.encoded_len(&origin)?);
        Ok(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Every record that can be encoded decodes to itself.
        #[test]
        fn every_encodable_record_decodes_to_itself(r in record()) {
            let bytes = encode(&r).unwrap();
            prop_assert_eq!(Record::decode(&bytes), Some(r));
        }

        /// The other direction: bytes that decode at all are the one encoding of their record,
        /// so no two byte strings (and no two commitments) stand for one record. Mutations of a
        /// real encoding reach the interesting cases far more often than random bytes.
        #[test]
        fn whatever_decodes_is_the_encoding_of_what_it_decodes_to(
            r in record(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = encode(&r).unwrap();
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            if let Some(d) = Record::decode(&bytes) {
                prop_assert_eq!(encode(&d).unwrap(), bytes);
            }
        }
    }

    fn event() -> impl Strategy<Value = Event> {
        (
            proptest::sample::select(EventKind::ALL.to_vec()),
            ".*",
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..500),
        )
            .prop_map(|(kind, patient, at_ms, body)| Event {
                kind,
                patient,
                at_ms,
                body: body.into(),
            })
    }

    fn encode_event(e: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        e.encode_into(&mut out).unwrap();
        assert_eq!(out.len(), e.encoded_len().unwrap());
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        /// Events round-trip, and any bytes that decode as an event are its one encoding.
        #[test]
        fn events_decode_to_themselves_and_only_from_their_encoding(
            e in event(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = encode_event(&e);
            prop_assert_eq!(Content::decode(&bytes), Some(Content::Event(e)));
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            if let Some(Content::Event(d)) = Content::decode(&bytes) {
                prop_assert_eq!(encode_event(&d), bytes);
            }
        }
    }

    #[test]
    fn an_event_of_an_unknown_kind_or_with_trailing_bytes_does_not_decode() {
        let e = Event {
            kind: EventKind::RecordAccessed,
            patient: "p-00".into(),
            at_ms: 7,
            body: Bytes::from_static(b"{}"),
        };
        let good = encode_event(&e);
        let mut kind = good.clone();
        kind[1] = 0x02;
        assert_eq!(Event::decode(&kind), None);
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(Event::decode(&trailing), None);
        assert_eq!(Event::decode(&good[..good.len() - 1]), None);
    }

    fn with_ids(n: usize) -> Record {
        Record {
            meta: RecordMeta {
                sender: "APP|FAC".into(),
                message_type: "ADT".into(),
                trigger: "A01".into(),
                control_id: "1".into(),
                patient_ids: vec!["1".into(); n],
                received_ms: 1,
                origin: Origin::Local { name: "t".into() },
                format: "hl7v2".into(),
            },
            raw: Bytes::from_static(b"MSH|"),
        }
    }

    #[test]
    fn the_identifier_count_holds_65535_and_refuses_one_more() {
        let r = with_ids(MAX_PATIENT_IDS);
        assert_eq!(Record::decode(&encode(&r).unwrap()), Some(r));
        let r = with_ids(MAX_PATIENT_IDS + 1);
        assert_eq!(encode(&r), Err(EncodeError::TooManyPatientIds(65_536)));
        let mut out = Vec::new();
        assert!(r.encode_into(b"{}", &mut out).is_err());
        assert!(out.is_empty(), "nothing written for a refused record");
        let rej = r.check_encodable().unwrap_err();
        assert_eq!(rej.label, "too_many_patient_ids");
        assert_eq!(rej.kind, RejectKind::Unacceptable);
    }

    #[test]
    fn an_origin_spelled_another_way_does_not_decode() {
        let r = with_ids(1);
        let bytes = encode(&r).unwrap();
        let canonical = br#"{"source":"local","name":"t"}"#;
        let at = memchr::memmem::find(&bytes, canonical).expect("origin in the encoding");
        let spaced = br#"{"source":"local", "name":"t"}"#;
        let mut other = bytes[..at - 4].to_vec();
        other.extend_from_slice(&(spaced.len() as u32).to_be_bytes());
        other.extend_from_slice(spaced);
        other.extend_from_slice(&bytes[at + canonical.len()..]);
        assert_eq!(Record::decode(&other), None);
    }
}
