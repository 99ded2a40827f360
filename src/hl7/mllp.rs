//! MLLP framing: `0x0B payload 0x1C 0x0D`.
//!
//! The decoder never holds more than `max_frame` payload bytes: a frame that grows past the limit
//! is reported once as [`MllpError::FrameTooLarge`] and the connection is expected to close.
//! Bytes outside a frame are dropped as they arrive (never buffered) and counted, so a confused
//! peer is visible in metrics.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

pub const START: u8 = 0x0B;
pub const END: [u8; 2] = [0x1C, 0x0D];

#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    #[error("MLLP frame exceeds the limit of {0} bytes")]
    FrameTooLarge(usize),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Decodes MLLP frames and encodes payloads into frames.
#[derive(Debug)]
pub struct MllpCodec {
    max_frame: usize,
    /// How far the current frame has been searched for the end marker.
    scanned: usize,
    in_frame: bool,
    skipped: u64,
}

impl MllpCodec {
    pub fn new(max_frame: usize) -> Self {
        MllpCodec {
            max_frame,
            scanned: 1,
            in_frame: false,
            skipped: 0,
        }
    }

    /// Bytes skipped outside frames since the last call.
    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }
}

impl Decoder for MllpCodec {
    type Item = Bytes;
    type Error = MllpError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, MllpError> {
        if !self.in_frame {
            match memchr::memchr(START, buf) {
                Some(0) => {}
                Some(i) => {
                    self.skipped += i as u64;
                    buf.advance(i);
                }
                None => {
                    self.skipped += buf.len() as u64;
                    buf.clear();
                    return Ok(None);
                }
            }
            self.in_frame = true;
            self.scanned = 1;
        }
        // Search from one byte before the last scan end: the 0x1C may have arrived alone.
        let from = self.scanned.saturating_sub(1).max(1);
        if let Some(i) = memchr::memmem::find(&buf[from..], &END) {
            let end = from + i;
            if end - 1 > self.max_frame {
                // A whole oversize frame can arrive in one read: the limit holds for it too.
                return Err(MllpError::FrameTooLarge(self.max_frame));
            }
            let mut frame = buf.split_to(end + 2);
            frame.advance(1);
            frame.truncate(frame.len() - 2);
            self.in_frame = false;
            self.scanned = 1;
            return Ok(Some(frame.freeze()));
        }
        self.scanned = buf.len();
        if buf.len() > self.max_frame + 2 {
            return Err(MllpError::FrameTooLarge(self.max_frame));
        }
        // Room to read more grows with what has arrived (at most 64 KiB more per read), so a
        // connection that sent a few bytes of a frame holds a few KiB, not the read size.
        buf.reserve(buf.len().clamp(1, 64 * 1024));
        Ok(None)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, MllpError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if self.in_frame && buf.len() > 1 => {
                buf.clear();
                self.in_frame = false;
                Err(MllpError::Truncated)
            }
            None => {
                buf.clear();
                Ok(None)
            }
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for MllpCodec {
    type Error = MllpError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), MllpError> {
        let payload = item.as_ref();
        dst.reserve(payload.len() + 3);
        dst.extend_from_slice(&[START]);
        dst.extend_from_slice(payload);
        dst.extend_from_slice(&END);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], chunk: usize, max: usize) -> (Vec<Bytes>, u64, Option<String>) {
        let mut codec = MllpCodec::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut err = None;
        'outer: for part in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(part);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(f)) => out.push(f),
                    Ok(None) => break,
                    Err(e) => {
                        err = Some(e.to_string());
                        break 'outer;
                    }
                }
            }
        }
        (out, codec.take_skipped(), err)
    }

    #[test]
    fn frames_survive_any_split_and_leading_noise_is_counted() {
        let input = b"noise\x0bMSH|a\x1c\x0d\r\n\x0bMSH|b\x1c\x0d";
        for chunk in 1..input.len() {
            let (f, skipped, err) = frames(input, chunk, 1024);
            assert_eq!(err, None);
            assert_eq!(
                f,
                vec![Bytes::from_static(b"MSH|a"), Bytes::from_static(b"MSH|b")]
            );
            assert_eq!(skipped, 7, "chunk {chunk}");
        }
    }

    #[test]
    fn oversize_frame_is_an_error_without_an_end_marker() {
        let mut input = vec![START];
        input.extend(std::iter::repeat_n(b'x', 100));
        let (f, _, err) = frames(&input, 7, 50);
        assert!(f.is_empty());
        assert!(err.unwrap().contains("exceeds"));
        // Exactly at the limit is fine.
        let mut ok = vec![START];
        ok.extend(std::iter::repeat_n(b'x', 50));
        ok.extend_from_slice(&END);
        assert_eq!(frames(&ok, 3, 50).0.len(), 1);
    }

    #[test]
    fn oversize_frame_arriving_whole_in_one_read_is_refused() {
        // Found by cargo-fuzz (mllp_codec): the limit was only applied to incomplete frames.
        let mut input = vec![START];
        input.extend(std::iter::repeat_n(b'x', 100));
        input.extend_from_slice(&END);
        let (f, _, err) = frames(&input, input.len(), 50);
        assert!(f.is_empty());
        assert!(err.unwrap().contains("exceeds"));
    }

    #[test]
    fn bytes_outside_a_frame_are_not_buffered_and_a_partial_frame_stays_under_the_limit() {
        let mut codec = MllpCodec::new(4096);
        let mut buf = BytesMut::new();
        // A megabyte of noise, no start byte: nothing is kept.
        for _ in 0..256 {
            buf.extend_from_slice(&[b'n'; 4096]);
            assert!(codec.decode(&mut buf).unwrap().is_none());
            assert!(buf.is_empty());
        }
        assert_eq!(codec.take_skipped(), 1 << 20);
        // A frame that starts and trickles: a few bytes do not reserve the read size…
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"\x0bMSH|");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() < 1024, "{}", buf.capacity());
        // …and it never grows past the limit.
        let mut err = None;
        for _ in 0..10 {
            buf.extend_from_slice(&[b'x'; 1000]);
            match codec.decode(&mut buf) {
                Ok(None) => assert!(buf.len() <= 4096 + 2),
                Ok(Some(_)) => unreachable!("no end marker was sent"),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(
            matches!(err, Some(MllpError::FrameTooLarge(4096))),
            "{err:?}"
        );
    }

    #[test]
    fn a_lone_fs_inside_the_payload_does_not_end_the_frame() {
        let (f, _, _) = frames(b"\x0bab\x1cc\x1c\x0d", 1, 100);
        assert_eq!(f, vec![Bytes::from_static(b"ab\x1cc")]);
    }
}
