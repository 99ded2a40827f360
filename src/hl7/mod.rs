//! HL7v2: a zero-copy tokenizer, escape and character-set decoding, batch splitting, the ACK
//! builder and the MLLP frame codec.
//!
//! Nothing here allocates per field on the hot path: a [`Message`] records where its segments are
//! and hands out borrowed slices; text is decoded only when someone asks for it.

pub mod ack;
pub mod batch;
mod charset;
mod escape;
pub mod mllp;
mod tokenizer;

pub use ack::{AckCode, AckMode, AckRequest};
pub use batch::{split_batch, BatchError};
pub use charset::Charset;
pub use escape::{decode_escapes, decode_escapes_as, Formatting, MAX_FORMAT_REPEAT};
pub use tokenizer::{Delimiters, Field, Message, ParseError, Parts, Segment};
