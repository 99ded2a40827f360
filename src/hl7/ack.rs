//! ACK building. An ACK mirrors the inbound message: delimiters, version and character set come from
//! it, sending and receiving application/facility are swapped, MSA-2 echoes MSH-10.

use super::tokenizer::{Delimiters, Message};

/// Outcome code, written as AA/AE/AR in original mode and CA/CE/CR in enhanced mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    Accept,
    Error,
    Reject,
}

impl AckCode {
    fn letter(self) -> char {
        match self {
            AckCode::Accept => 'A',
            AckCode::Error => 'E',
            AckCode::Reject => 'R',
        }
    }
}

/// MSH-15 / MSH-16 conditions (HL7 table 0155).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCondition {
    Always,
    Never,
    ErrorOnly,
    SuccessOnly,
}

impl AckCondition {
    fn parse(raw: &[u8]) -> Option<AckCondition> {
        match raw {
            b"AL" => Some(AckCondition::Always),
            b"NE" => Some(AckCondition::Never),
            b"ER" => Some(AckCondition::ErrorOnly),
            b"SU" => Some(AckCondition::SuccessOnly),
            _ => None,
        }
    }
    fn allows(self, code: AckCode) -> bool {
        match self {
            AckCondition::Always => true,
            AckCondition::Never => false,
            AckCondition::ErrorOnly => code != AckCode::Accept,
            AckCondition::SuccessOnly => code == AckCode::Accept,
        }
    }
}

/// Original mode (MSH-15 and MSH-16 empty): AA/AE/AR. Enhanced mode: the answer is the
/// application acknowledgement (AA/AE/AR) when MSH-16 asks for one for this outcome, and the
/// accept (commit) acknowledgement (CA/CE/CR) otherwise. medanchor answers every MLLP frame
/// exactly once, even under `NE`: MLLP senders block until a reply arrives, and a reply sent
/// only after the record is durable is true at both levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Original,
    Enhanced {
        accept: AckCondition,
        application: AckCondition,
    },
}

/// Everything an ACK needs from the inbound message, copied so the message buffer can go.
#[derive(Debug, Clone)]
pub struct AckRequest {
    delims: Delimiters,
    sending_app: Vec<u8>,
    sending_fac: Vec<u8>,
    receiving_app: Vec<u8>,
    receiving_fac: Vec<u8>,
    control_id: Vec<u8>,
    trigger: Vec<u8>,
    processing_id: Vec<u8>,
    version: Vec<u8>,
    charset: Vec<u8>,
    pub mode: AckMode,
}

impl AckRequest {
    pub fn from_message(msg: &Message<'_>) -> AckRequest {
        let msh = msg.msh();
        let f = |n: usize| msh.field(n).raw().to_vec();
        let accept = msh.field(15).raw();
        let application = msh.field(16).raw();
        let mode = if accept.is_empty() && application.is_empty() {
            AckMode::Original
        } else {
            AckMode::Enhanced {
                accept: AckCondition::parse(accept).unwrap_or(AckCondition::Always),
                application: AckCondition::parse(application).unwrap_or(AckCondition::Always),
            }
        };
        AckRequest {
            delims: *msg.delimiters(),
            sending_app: f(3),
            sending_fac: f(4),
            receiving_app: f(5),
            receiving_fac: f(6),
            control_id: f(10),
            trigger: msh.field(9).component(2).raw().to_vec(),
            processing_id: f(11),
            version: f(12),
            charset: f(18),
            mode,
        }
    }

    /// For input that is not a readable HL7 message: standard delimiters, v2.5, original mode.
    pub fn fallback() -> AckRequest {
        AckRequest {
            delims: Delimiters::default(),
            sending_app: Vec::new(),
            sending_fac: Vec::new(),
            receiving_app: Vec::new(),
            receiving_fac: Vec::new(),
            control_id: Vec::new(),
            trigger: Vec::new(),
            processing_id: b"P".to_vec(),
            version: b"2.5".to_vec(),
            charset: Vec::new(),
            mode: AckMode::Original,
        }
    }

    pub fn delimiters(&self) -> &Delimiters {
        &self.delims
    }

    /// `A` (application / original) or `C` (commit) for this outcome.
    pub fn level(&self, code: AckCode) -> char {
        match self.mode {
            AckMode::Original => 'A',
            AckMode::Enhanced { application, .. } if application.allows(code) => 'A',
            // Commit level, also when MSH-15 asked for nothing (see AckMode).
            AckMode::Enhanced { .. } => 'C',
        }
    }

    fn version_at_least_25(&self) -> bool {
        let v = String::from_utf8_lossy(&self.version);
        let mut it = v.split('.').map(|p| p.trim().parse::<u32>().unwrap_or(0));
        let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        (major, minor) >= (2, 5)
    }

    /// Escapes text we write into the ACK so it cannot break the inbound delimiters.
    fn escape(&self, text: &str, out: &mut Vec<u8>) {
        let d = &self.delims;
        let esc = d.escape.unwrap_or(b'\\');
        for b in text.bytes() {
            let code = if b == d.field {
                Some(b'F')
            } else if b == d.component {
                Some(b'S')
            } else if b == d.repetition {
                Some(b'R')
            } else if Some(b) == d.escape {
                Some(b'E')
            } else if Some(b) == d.subcomponent {
                Some(b'T')
            } else {
                None
            };
            match code {
                Some(c) if d.escape.is_some() => out.extend_from_slice(&[esc, c, esc]),
                Some(_) => out.push(b' '),
                None if b == b'\r' || b == b'\n' => out.push(b' '),
                None => out.push(b),
            }
        }
    }

    /// Builds the ACK segments (CR-terminated). `error` is an HL7 table 0357 code and a reason;
    /// `receipt` is (record id, commitment hex) for the ZRC segment.
    pub fn build(
        &self,
        code: AckCode,
        ack_control_id: &str,
        timestamp: &str,
        error: Option<(u16, &str)>,
        receipt: Option<(&str, &str)>,
    ) -> Vec<u8> {
        let d = &self.delims;
        let fs = d.field;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"MSH");
        out.push(fs);
        out.extend_from_slice(&d.encoding_characters());
        for f in [
            &self.receiving_app,
            &self.receiving_fac,
            &self.sending_app,
            &self.sending_fac,
        ] {
            out.push(fs);
            out.extend_from_slice(f);
        }
        out.push(fs);
        out.extend_from_slice(timestamp.as_bytes());
        out.push(fs); // MSH-8 security
        out.push(fs);
        out.extend_from_slice(b"ACK");
        if !self.trigger.is_empty() {
            out.push(d.component);
            out.extend_from_slice(&self.trigger);
            out.push(d.component);
            out.extend_from_slice(b"ACK");
        }
        out.push(fs);
        out.extend_from_slice(ack_control_id.as_bytes());
        out.push(fs);
        out.extend_from_slice(if self.processing_id.is_empty() {
            b"P"
        } else {
            &self.processing_id
        });
        out.push(fs);
        out.extend_from_slice(&self.version);
        if !self.charset.is_empty() {
            out.extend(std::iter::repeat_n(fs, 6)); // MSH-13..MSH-18
            out.extend_from_slice(&self.charset);
        }
        out.push(b'\r');

        let prefix = self.level(code);
        out.extend_from_slice(b"MSA");
        out.push(fs);
        out.push(prefix as u8);
        out.push(code.letter() as u8);
        out.push(fs);
        out.extend_from_slice(&self.control_id);
        if let Some((_, reason)) = error {
            out.push(fs);
            self.escape(reason, &mut out);
        }
        out.push(b'\r');

        if let Some((err_code, reason)) = error {
            let severity = b'E';
            out.extend_from_slice(b"ERR");
            out.push(fs);
            if self.version_at_least_25() {
                // ERR-2 location empty, ERR-3 code (CWE), ERR-4 severity, ERR-8 user message.
                out.push(fs);
                out.push(fs);
                out.extend_from_slice(err_code.to_string().as_bytes());
                out.push(d.component);
                self.escape(reason, &mut out);
                out.push(d.component);
                out.extend_from_slice(b"HL70357");
                out.push(fs);
                out.push(severity);
                out.extend(std::iter::repeat_n(fs, 4));
                self.escape(reason, &mut out);
            } else {
                // v2.3/2.4 ERR-1 (CM): segment^sequence^field^code&text&table.
                let sub = d.subcomponent.unwrap_or(b'&');
                out.extend(std::iter::repeat_n(d.component, 3));
                out.extend_from_slice(err_code.to_string().as_bytes());
                out.push(sub);
                self.escape(reason, &mut out);
                out.push(sub);
                out.extend_from_slice(b"HL70357");
            }
            out.push(b'\r');
        }
        if let Some((record_id, commitment)) = receipt {
            out.extend_from_slice(b"ZRC");
            out.push(fs);
            out.extend_from_slice(record_id.as_bytes());
            out.push(fs);
            out.extend_from_slice(commitment.as_bytes());
            out.push(b'\r');
        }
        out
    }
}

/// Wraps per-message ACKs of a batch in BHS/BTS, as the batch protocol expects.
pub fn wrap_batch(delims: &Delimiters, timestamp: &str, acks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"BHS");
    out.push(delims.field);
    out.extend_from_slice(&delims.encoding_characters());
    out.extend(std::iter::repeat_n(delims.field, 5));
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b'\r');
    for a in acks {
        out.extend_from_slice(a);
    }
    out.extend_from_slice(b"BTS");
    out.push(delims.field);
    out.extend_from_slice(acks.len().to_string().as_bytes());
    out.push(b'\r');
    out
}

/// A Unix time in milliseconds as UTC calendar fields: (year, month, day, hour, minute, second,
/// millisecond).
pub fn utc_fields(unix_ms: u64) -> (i64, i64, i64, u64, u64, u64, u64) {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000,
    )
}

/// HL7 DTM for a Unix time in milliseconds, UTC: `YYYYMMDDHHMMSS.SSS+0000`.
pub fn hl7_timestamp(unix_ms: u64) -> String {
    let (year, month, day, h, m, sec, ms) = utc_fields(unix_ms);
    format!("{year:04}{month:02}{day:02}{h:02}{m:02}{sec:02}.{ms:03}+0000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_civil_utc() {
        assert_eq!(hl7_timestamp(0), "19700101000000.000+0000");
        assert_eq!(hl7_timestamp(1_709_210_096_007), "20240229123456.007+0000");
    }

    #[test]
    fn ack_mirrors_inbound_and_escapes_reason() {
        let raw =
            b"MSH|^~\\&|LAB|HOSP|GW|MA|20240101||ORU^R01|CTRL1|P|2.5.1||||||UNICODE UTF-8\rPID|1";
        let msg = Message::parse(raw).unwrap();
        let req = AckRequest::from_message(&msg);
        let ack = req.build(
            AckCode::Error,
            "A1",
            "20240101000000",
            Some((101, "MSH-9 missing | bad")),
            Some(("rid", "c0ffee")),
        );
        let text = String::from_utf8(ack).unwrap();
        let lines: Vec<&str> = text.split('\r').collect();
        assert_eq!(
            lines[0],
            "MSH|^~\\&|GW|MA|LAB|HOSP|20240101000000||ACK^R01^ACK|A1|P|2.5.1||||||UNICODE UTF-8"
        );
        assert_eq!(lines[1], "MSA|AE|CTRL1|MSH-9 missing \\F\\ bad");
        assert!(lines[2].starts_with("ERR|||101^MSH-9 missing \\F\\ bad^HL70357|E|"));
        assert_eq!(lines[3], "ZRC|rid|c0ffee");
    }

    #[test]
    fn enhanced_mode_follows_msh15() {
        let raw = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X|P|2.5|||AL|ER\r";
        let req = AckRequest::from_message(&Message::parse(raw).unwrap());
        // MSH-16 ER: application ACK on errors, commit ACK on success.
        assert_eq!(req.level(AckCode::Accept), 'C');
        assert_eq!(req.level(AckCode::Error), 'A');
        let ack = req.build(AckCode::Accept, "1", "t", None, None);
        assert!(String::from_utf8(ack).unwrap().contains("MSA|CA|X"));
        let ack = req.build(AckCode::Error, "1", "t", Some((207, "x")), None);
        assert!(String::from_utf8(ack).unwrap().contains("MSA|AE|X|x"));
        let orig = AckRequest::from_message(
            &Message::parse(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|X|P|2.5\r").unwrap(),
        );
        assert_eq!(orig.level(AckCode::Accept), 'A');
    }
}
