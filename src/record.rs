//! A `Record`: the raw message plus the metadata medanchor extracts from it, and the canonical
//! byte encoding that is committed to and sealed (see docs/FORMATS.md, "Record encoding").

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::envelope::{Origin, RejectKind, Rejection};
use crate::hl7::{self, Message};

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
            format!("{what} {message_type} is not accepted by this gateway (accept.message_types)"),
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

/// Maps a tokenizer error to a rejection (AR: the bytes are not a message we can read).
pub fn parse_rejection(e: &hl7::ParseError) -> Rejection {
    let label = match e {
        hl7::ParseError::UnsupportedCharset(_) => "unsupported_charset",
        hl7::ParseError::Empty => "empty",
        _ => "not_hl7",
    };
    let code = match e {
        hl7::ParseError::UnsupportedCharset(_) => 203,
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
        rules.check_type("resource type", &m.resource_type)?;
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
        rules.check_type("message type", &message_type)?;
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
        self.meta
            .patient_ids
            .iter()
            .find(|p| p.ends_with("^MR"))
            .or_else(|| self.meta.patient_ids.first())
            .map(|s| s.as_str())
    }

    /// Length of [`encode_into`](Self::encode_into)'s output.
    pub fn encoded_len(&self, origin_json: &[u8]) -> usize {
        let m = &self.meta;
        1 + 4 * 7
            + m.sender.len()
            + m.message_type.len()
            + m.trigger.len()
            + m.control_id.len()
            + origin_json.len()
            + m.format.len()
            + 2
            + m.patient_ids.iter().map(|p| 4 + p.len()).sum::<usize>()
            + 8
            + self.raw.len()
    }

    /// Canonical encoding, version 1: every string and the raw bytes length-prefixed (u32 BE).
    /// `origin_json` is `serde_json::to_vec(&self.meta.origin)`, computed once by the caller.
    pub fn encode_into(&self, origin_json: &[u8], out: &mut Vec<u8>) {
        let m = &self.meta;
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
        let origin = serde_json::from_slice(r.bytes()?).ok()?;
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
