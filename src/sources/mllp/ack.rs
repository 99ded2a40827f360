//! Turning outcomes into ACK bytes.

use crate::envelope::{now_ms, Outcome, RejectKind};
use crate::hl7::{ack::hl7_timestamp, AckCode, AckRequest};

/// The code an outcome maps to.
pub fn code_of(outcome: &Outcome) -> AckCode {
    match outcome {
        Outcome::Stored { .. } => AckCode::Accept,
        Outcome::Rejected(r) if r.kind == RejectKind::NotHl7 => AckCode::Reject,
        Outcome::Rejected(_) | Outcome::Retry { .. } => AckCode::Error,
    }
}

/// HL7 table 0008 code as text, for metrics.
pub fn code_label(req: &AckRequest, code: AckCode) -> &'static str {
    match (req.level(code), code) {
        ('A', AckCode::Accept) => "AA",
        ('A', AckCode::Error) => "AE",
        ('A', AckCode::Reject) => "AR",
        (_, AckCode::Accept) => "CA",
        (_, AckCode::Error) => "CE",
        (_, AckCode::Reject) => "CR",
    }
}

/// The ACK for one message.
pub fn build(
    req: &AckRequest,
    outcome: &Outcome,
    receipt_segment: bool,
    seq: u64,
) -> Option<Vec<u8>> {
    let code = code_of(outcome);
    let now = now_ms();
    let control = format!("MA{now}{seq:06}");
    let ts = hl7_timestamp(now);
    Some(match outcome {
        Outcome::Stored { receipt, .. } => {
            let r = receipt_segment
                .then_some((receipt.record_id.as_str(), receipt.commitment.as_str()));
            req.build(code, &control, &ts, None, r)
        }
        Outcome::Rejected(r) => {
            let reason = match &r.quarantine_id {
                Some(q) => format!("{} (quarantine id {q})", r.reason),
                None => r.reason.clone(),
            };
            req.build(code, &control, &ts, Some((r.code, &reason)), None)
        }
        Outcome::Retry { reason } => req.build(code, &control, &ts, Some((207, reason)), None),
    })
}
