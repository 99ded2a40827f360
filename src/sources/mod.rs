//! Sources: one folder each. A source turns its protocol into [`Envelope`](crate::envelope::Envelope)s
//! and turns each [`Outcome`](crate::envelope::Outcome) back into its protocol's acknowledgement.

pub mod mllp;
