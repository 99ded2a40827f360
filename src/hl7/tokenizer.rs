use std::borrow::Cow;

use super::charset::Charset;
use super::escape::{decode_escapes_as, Formatting};

/// Why bytes are not an HL7v2 message. Reasons name positions, never content.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("message is empty")]
    Empty,
    #[error("message does not start with an MSH segment")]
    NoMsh,
    #[error("MSH segment is too short to hold the field separator and encoding characters")]
    ShortMsh,
    #[error("MSH-1 field separator is not a printable ASCII character")]
    BadFieldSeparator,
    #[error("MSH-2 encoding characters are missing, repeated or not printable ASCII")]
    BadEncodingCharacters,
    #[error("segment {0} does not start with a three-character segment id")]
    BadSegmentId(usize),
    /// One message per parse: a second header is a second message (batches are split first,
    /// `super::split_batch`), and its fields would be read as the first one's.
    #[error("segment {0} is a second MSH: one message expected (send a batch to send several)")]
    SecondMsh(usize),
    /// The value is not kept: reasons name fields, never what a sender put in them.
    #[error("MSH-18 character set is not one this gateway supports (see docs/sources/mllp.md)")]
    UnsupportedCharset,
    #[error("text is not valid in the declared character set {0}")]
    BadText(&'static str),
}

/// The five delimiters declared by MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    pub field: u8,
    pub component: u8,
    pub repetition: u8,
    pub escape: Option<u8>,
    pub subcomponent: Option<u8>,
    /// v2.7+ truncation character (the fifth encoding character, usually `#`).
    pub truncation: Option<u8>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: Some(b'\\'),
            subcomponent: Some(b'&'),
            truncation: None,
        }
    }
}

impl Delimiters {
    /// MSH-2 as it should be written back (e.g. in an ACK).
    pub fn encoding_characters(&self) -> Vec<u8> {
        let mut v = vec![self.component, self.repetition];
        if let Some(e) = self.escape {
            v.push(e);
            if let Some(s) = self.subcomponent {
                v.push(s);
                if let Some(t) = self.truncation {
                    v.push(t);
                }
            }
        }
        v
    }

    fn parse(field: u8, enc: &[u8]) -> Result<Delimiters, ParseError> {
        let printable = |b: u8| b.is_ascii_graphic() && !b.is_ascii_alphanumeric();
        if !printable(field) {
            return Err(ParseError::BadFieldSeparator);
        }
        // Some senders escape the escape character itself (`^~\\&`): collapse that doubling.
        let mut chars: Vec<u8> = Vec::with_capacity(5);
        for (i, &b) in enc.iter().enumerate() {
            if i > 0 && b == b'\\' && enc[i - 1] == b'\\' && chars.len() == 3 {
                continue;
            }
            chars.push(b);
        }
        if chars.len() < 2 || chars.len() > 5 {
            return Err(ParseError::BadEncodingCharacters);
        }
        for (i, &c) in chars.iter().enumerate() {
            if !printable(c) || c == field || chars[..i].contains(&c) {
                return Err(ParseError::BadEncodingCharacters);
            }
        }
        Ok(Delimiters {
            field,
            component: chars[0],
            repetition: chars[1],
            escape: chars.get(2).copied(),
            subcomponent: chars.get(3).copied(),
            truncation: chars.get(4).copied(),
        })
    }
}

/// A parsed HL7v2 message: the bytes, the delimiters, the segment boundaries and a bitmap of
/// where every field, component, repetition and subcomponent delimiter is.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    bytes: &'a [u8],
    delims: Delimiters,
    segments: Vec<(u32, u32)>,
    charset: Charset,
    index: DelimiterIndex<'a>,
}

// Delimiter kinds, in the order their bitmaps are interleaved in a `DelimiterIndex` word group.
const FIELD: usize = 0;
const COMPONENT: usize = 1;
const REPETITION: usize = 2;
const SUBCOMPONENT: usize = 3;
/// Any delimiter below the field separator: a part without one needs no further splitting.
const BELOW_FIELD: usize = 4;
const KINDS: usize = 5;

/// One bit per message byte and delimiter kind: `bits[w * KINDS + k]` bit `j` is set when byte
/// `64·w + j` is the kind-`k` delimiter.
///
/// Built in one pass over the message (eight bytes at a time), so splitting a part afterwards is
/// a bit scan of usually one word instead of a search through bytes; a full walk down to
/// subcomponents touches each byte once rather than once per level.
#[derive(Debug, Clone)]
struct DelimiterIndex<'a> {
    bytes: &'a [u8],
    bits: Vec<u64>,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// High bit of each byte of `word` that equals `c` (exact: no false positives across bytes).
#[inline(always)]
fn eq_bytes(word: u64, c: u8) -> u64 {
    let x = word ^ (ONES * u64::from(c));
    !(((x & !HIGHS) + !HIGHS) | x) & HIGHS
}

/// Gathers the high bit of each byte into the low eight bits (byte `i` → bit `i`).
#[inline(always)]
fn gather(highs: u64) -> u64 {
    ((highs >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// ORs into `group[k]` the bits of the bytes of `block` equal to `kinds[k]`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn block_masks(block: &[u8; 64], kinds: &[u8; 4], group: &mut [u64]) {
    // SAFETY: this function only exists when the compilation target enables SSE2 (the cfg
    // above; it is part of the x86_64 baseline), so every CPU this code runs on has it, which is
    // the one requirement of calling a `#[target_feature(enable = "sse2")]` function.
    unsafe { block_masks_sse2(block, kinds, group) }
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
fn block_masks_sse2(block: &[u8; 64], kinds: &[u8; 4], group: &mut [u64]) {
    // The vector is built from the array by value (no raw-pointer load), which LLVM turns into
    // one unaligned load; inside an SSE2 function these intrinsics are safe to call.
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_movemask_epi8, _mm_set1_epi8, _mm_setr_epi8};
    for (i, b) in block.chunks_exact(16).enumerate() {
        let v = _mm_setr_epi8(
            b[0] as i8,
            b[1] as i8,
            b[2] as i8,
            b[3] as i8,
            b[4] as i8,
            b[5] as i8,
            b[6] as i8,
            b[7] as i8,
            b[8] as i8,
            b[9] as i8,
            b[10] as i8,
            b[11] as i8,
            b[12] as i8,
            b[13] as i8,
            b[14] as i8,
            b[15] as i8,
        );
        for (k, &c) in kinds.iter().enumerate() {
            let m = _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8))) as u16;
            group[k] |= u64::from(m) << (16 * i);
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
fn block_masks(block: &[u8; 64], kinds: &[u8; 4], group: &mut [u64]) {
    block_masks_portable(block, kinds, group)
}

/// Portable version: eight bytes at a time in a u64.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
fn block_masks_portable(block: &[u8; 64], kinds: &[u8; 4], group: &mut [u64]) {
    for (i, chunk) in block.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        for (k, &c) in kinds.iter().enumerate() {
            group[k] |= gather(eq_bytes(word, c)) << (8 * i);
        }
    }
}

impl<'a> DelimiterIndex<'a> {
    fn build(bytes: &'a [u8], d: &Delimiters) -> Self {
        // A kind the message does not declare gets the field separator's value: its bits are
        // never consulted because no split on it is asked for.
        let kinds = [
            d.field,
            d.component,
            d.repetition,
            d.subcomponent.unwrap_or(d.field),
        ];
        let words = bytes.len().div_ceil(64);
        let mut bits = vec![0u64; words * KINDS];
        for (group, block) in bits.chunks_exact_mut(KINDS).zip(bytes.chunks(64)) {
            let mut lane = [0u8; 64];
            lane[..block.len()].copy_from_slice(block);
            block_masks(&lane, &kinds, group);
        }
        for group in bits.chunks_exact_mut(KINDS) {
            if d.subcomponent.is_none() {
                group[SUBCOMPONENT] = 0;
            }
            group[BELOW_FIELD] = group[COMPONENT] | group[REPETITION] | group[SUBCOMPONENT];
        }
        DelimiterIndex { bytes, bits }
    }

    /// Position of the first kind-`k` delimiter in `[from, end)`, or `end`.
    #[inline]
    fn next(&self, k: usize, from: usize, end: usize) -> usize {
        if from >= end {
            return end;
        }
        let mut w = from / 64;
        let mut word = self.bits[w * KINDS + k] & (!0u64 << (from % 64));
        loop {
            if word != 0 {
                return (w * 64 + word.trailing_zeros() as usize).min(end);
            }
            w += 1;
            if w * 64 >= end {
                return end;
            }
            word = self.bits[w * KINDS + k];
        }
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

fn is_segment_id(id: &[u8]) -> bool {
    id.len() == 3
        && id
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// A line that is no segment: empty, or blanks only (a trailing space or tab, a DOS
/// end-of-file ^Z). The tokenizer and the batch splitter skip the same lines.
pub(super) fn is_blank_line(line: &[u8]) -> bool {
    line.iter()
        .all(|b| matches!(b, b' ' | b'\t' | 0x0B | 0x0C | 0x1A))
}

impl<'a> Message<'a> {
    /// Tokenizes `bytes` (one message; see [`super::split_batch`] for batches). Segments may end
    /// in CR, LF or CRLF; blank lines ([`is_blank_line`]) are ignored; a second MSH is refused
    /// (two messages back to back are a batch); a UTF-8 byte order mark is skipped.
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(ParseError::Empty);
        }
        if !bytes.starts_with(b"MSH") {
            return Err(ParseError::NoMsh);
        }
        if bytes.len() < 5 {
            return Err(ParseError::ShortMsh);
        }
        let field = bytes[3];
        let enc_end = bytes[4..]
            .iter()
            .position(|&b| b == field || b == b'\r' || b == b'\n')
            .map(|p| p + 4)
            .unwrap_or(bytes.len());
        let delims = Delimiters::parse(field, &bytes[4..enc_end])?;
        if bytes.len() > u32::MAX as usize {
            return Err(ParseError::ShortMsh);
        }
        let mut segments = Vec::with_capacity(16);
        let mut start = 0usize;
        let mut index = 0usize;
        for end in memchr::memchr2_iter(b'\r', b'\n', bytes).chain(std::iter::once(bytes.len())) {
            if !is_blank_line(&bytes[start..end]) {
                index += 1;
                // A segment id alone (`PID`, every field omitted) is a segment; the byte after
                // the id, when the segment has one, must be the field separator.
                if end < start + 3
                    || !is_segment_id(&bytes[start..start + 3])
                    || (end > start + 3 && bytes[start + 3] != field)
                {
                    return Err(ParseError::BadSegmentId(index));
                }
                if index > 1 && &bytes[start..start + 3] == b"MSH" {
                    return Err(ParseError::SecondMsh(index));
                }
                segments.push((start as u32, end as u32));
            }
            start = end + 1;
        }
        let mut msg = Message {
            bytes,
            delims,
            segments,
            charset: Charset::Ascii,
            index: DelimiterIndex::build(bytes, &delims),
        };
        let declared = msg.msh().field(18);
        let first = declared
            .repetitions()
            .next()
            .map(|f| f.raw())
            .unwrap_or(b"");
        msg.charset = Charset::from_msh18(first)?;
        Ok(msg)
    }

    /// Overrides the declared character set (for a message already transcoded to UTF-8).
    pub fn with_charset(mut self, charset: Charset) -> Self {
        self.charset = charset;
        self
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    pub fn delimiters(&self) -> &Delimiters {
        &self.delims
    }
    pub fn charset(&self) -> Charset {
        self.charset
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> + '_ {
        self.segments
            .iter()
            .map(move |&(s, e)| self.segment_at(s, e))
    }

    fn segment_at(&self, start: u32, end: u32) -> Segment<'_> {
        Segment {
            index: &self.index,
            start,
            end,
        }
    }

    /// The MSH segment (always the first).
    pub fn msh(&self) -> Segment<'_> {
        let (s, e) = self.segments[0];
        self.segment_at(s, e)
    }

    /// First segment with this id.
    pub fn segment(&self, id: &[u8; 3]) -> Option<Segment<'_>> {
        self.segments().find(|s| s.id() == id)
    }

    /// Decodes a field, component or subcomponent into text: character set first (so multi-byte
    /// text cannot be mistaken for delimiters), then escape sequences.
    pub fn text<'r>(&self, raw: &'r [u8]) -> Result<Cow<'r, str>, ParseError> {
        self.text_as(raw, Formatting::Keep)
    }

    /// [`Message::text`], with highlighting and formatting commands as `formatting` says
    /// (`Plain`: the text a FHIR string holds).
    pub fn text_as<'r>(
        &self,
        raw: &'r [u8],
        formatting: Formatting,
    ) -> Result<Cow<'r, str>, ParseError> {
        let decoded = self.charset.decode(raw);
        Ok(match self.delims.escape {
            Some(esc) if decoded.as_bytes().contains(&esc) => Cow::Owned(decode_escapes_as(
                &decoded,
                &self.delims,
                self.charset,
                formatting,
            )),
            _ => decoded,
        })
    }
}

/// One segment: its raw bytes without the terminator.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'m> {
    index: &'m DelimiterIndex<'m>,
    start: u32,
    end: u32,
}

impl<'m> Segment<'m> {
    pub fn raw(&self) -> &'m [u8] {
        &self.index.bytes[self.start as usize..self.end as usize]
    }
    pub fn id(&self) -> &'m [u8] {
        &self.raw()[..3]
    }

    /// The bytes `[from, to)` of the segment as one part (not known to be flat).
    #[inline]
    fn part(&self, from: u32, to: u32) -> Field<'m> {
        Field {
            index: self.index,
            start: self.start + from,
            end: self.start + to,
            flat: false,
        }
    }

    /// All fields after the segment id; for MSH the first one yielded is MSH-2.
    #[inline]
    pub fn fields(&self) -> Parts<'m> {
        let len = self.end - self.start;
        self.part(4.min(len), len).split(FIELD)
    }

    /// Field `n` (1-based, HL7 numbering). MSH-1 is the separator and MSH-2 the encoding
    /// characters, so MSH field numbers line up with the standard's. Missing fields are empty.
    pub fn field(&self, n: usize) -> Field<'m> {
        let is_msh = self.id() == b"MSH";
        let empty = self.part(0, 0);
        if n == 0 {
            return empty;
        }
        if is_msh && n == 1 {
            let len = self.end - self.start;
            return self.part(3.min(len), 4.min(len));
        }
        let skip = if is_msh { n - 2 } else { n - 1 };
        self.fields().nth(skip).unwrap_or(empty)
    }
}

/// A field, repetition, component or subcomponent: where its bytes are in the message.
#[derive(Debug, Clone, Copy)]
pub struct Field<'m> {
    index: &'m DelimiterIndex<'m>,
    start: u32,
    end: u32,
    /// Holds no delimiter below the field separator, so every split of it is itself: most
    /// fields and components are like that, and their walk then costs no lookups.
    flat: bool,
}

impl<'m> Field<'m> {
    #[inline]
    pub fn raw(&self) -> &'m [u8] {
        &self.index.bytes[self.start as usize..self.end as usize]
    }
    /// Where its bytes are: `Message::bytes()[start..end]`.
    pub fn span(&self) -> (u32, u32) {
        (self.start, self.end)
    }
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
    /// Whether it holds a byte that is neither blank nor a delimiter: `^^^` or `~&` is a value
    /// of empty parts, sent, but with nothing in it.
    pub fn holds_data(&self) -> bool {
        let raw = self.raw();
        if self.flat {
            return raw.iter().any(|b| !b.is_ascii_whitespace());
        }
        raw.iter().zip(self.start..).any(|(b, p)| {
            let word = self.index.bits[(p / 64) as usize * KINDS + BELOW_FIELD];
            !b.is_ascii_whitespace() && word & (1u64 << (p % 64)) == 0
        })
    }
    #[inline]
    fn split(&self, kind: usize) -> Parts<'m> {
        let kind = if self.flat { WHOLE } else { kind };
        let at = self.start / 64;
        let word = if kind == WHOLE || self.start >= self.end {
            0
        } else {
            self.index.bits[at as usize * KINDS + kind] & (!0u64 << (self.start % 64))
        };
        Parts {
            index: self.index,
            pos: self.start,
            end: self.end,
            kind,
            flat: self.flat,
            done: false,
            at,
            word,
        }
    }
    #[inline]
    pub fn repetitions(&self) -> Parts<'m> {
        self.split(REPETITION)
    }
    #[inline]
    pub fn components(&self) -> Parts<'m> {
        self.split(COMPONENT)
    }
    /// Without a declared subcomponent delimiter its bitmap is empty: the whole comes back.
    #[inline]
    pub fn subcomponents(&self) -> Parts<'m> {
        self.split(SUBCOMPONENT)
    }
    /// Component `n` (1-based) of the first repetition.
    pub fn component(&self, n: usize) -> Field<'m> {
        let first = self.repetitions().next().unwrap_or(*self);
        first
            .components()
            .nth(n.saturating_sub(1))
            .unwrap_or(Field {
                end: first.start,
                ..first
            })
    }
}

/// Not a delimiter kind: yield the whole once.
const WHOLE: usize = usize::MAX;

/// The parts of a field split on one delimiter kind. An empty field yields one empty part, as
/// HL7 expects.
#[derive(Debug, Clone)]
pub struct Parts<'m> {
    index: &'m DelimiterIndex<'m>,
    /// Where the next part starts, in message offsets.
    pos: u32,
    end: u32,
    kind: usize,
    /// Whether the whole is flat (handed on when it is yielded whole).
    flat: bool,
    done: bool,
    /// The bitmap word being consumed (`at`, in words) with the delimiters already passed
    /// cleared: finding the next part is then a bit clear, not a dependent load, so the parts of
    /// one field come out without waiting on memory.
    at: u32,
    word: u64,
}

impl Parts<'_> {
    /// Offset of the next kind delimiter before `end`, or `end`.
    #[inline(always)]
    fn next_delimiter(&mut self) -> usize {
        let end = self.end as usize;
        loop {
            if self.word != 0 {
                let p = self.at as usize * 64 + self.word.trailing_zeros() as usize;
                self.word &= self.word - 1;
                return p.min(end);
            }
            self.at += 1;
            if self.at as usize * 64 >= end {
                return end;
            }
            self.word = self.index.bits[self.at as usize * KINDS + self.kind];
        }
    }
}

impl<'m> Iterator for Parts<'m> {
    type Item = Field<'m>;

    #[inline(always)]
    fn next(&mut self) -> Option<Field<'m>> {
        if self.done {
            return None;
        }
        let (from, all) = (self.pos as usize, self.end as usize);
        let (end, flat) = match self.kind {
            WHOLE => (all, self.flat),
            SUBCOMPONENT => (self.next_delimiter(), true),
            _ => {
                let end = self.next_delimiter();
                (end, self.index.next(BELOW_FIELD, from, end) == end)
            }
        };
        if end == all {
            self.done = true;
        } else {
            self.pos = end as u32 + 1;
        }
        Some(Field {
            index: self.index,
            start: from as u32,
            end: end as u32,
            flat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that stress the bit tricks: every delimiter, its neighbours in value, high bytes
    /// whose low seven bits equal a delimiter, and runs of delimiters across 8/16/64 boundaries.
    fn tricky_block(seed: u64) -> [u8; 64] {
        let palette = [
            b'|',
            b'^',
            b'~',
            b'&',
            b'\\',
            b'{',
            b'}',
            b'}' + 1,
            b'|' | 0x80,
            b'^' | 0x80,
            b'&' | 0x80,
            0x00,
            0xFF,
            0x7F,
            0x80,
            b'A',
            b'\r',
        ];
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut block = [0u8; 64];
        for b in &mut block {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = palette[(x % palette.len() as u64) as usize];
        }
        block
    }

    #[test]
    fn block_masks_match_a_byte_by_byte_scan() {
        let kinds = *b"|^~&";
        for seed in 0..2_000u64 {
            let block = tricky_block(seed);
            let mut expected = [0u64; 4];
            for (j, &b) in block.iter().enumerate() {
                for (k, &c) in kinds.iter().enumerate() {
                    expected[k] |= u64::from(b == c) << j;
                }
            }
            let mut fast = [0u64; 4];
            block_masks(&block, &kinds, &mut fast);
            let mut portable = [0u64; 4];
            block_masks_portable(&block, &kinds, &mut portable);
            assert_eq!(fast, expected, "seed {seed}");
            assert_eq!(portable, expected, "seed {seed}");
        }
    }

    #[test]
    fn only_delimiters_and_blanks_hold_no_data() {
        // The PID field that holds the padding crosses a 64-byte word of the index.
        let pad = "^".repeat(70);
        let text = format!(
            "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|^^^|~&^ |{pad}|{pad}x|a|\\F\\|\"\"\r"
        );
        let msg = Message::parse(text.as_bytes()).unwrap();
        let pid = msg.segment(b"PID").unwrap();
        let holds: Vec<bool> = (1..=7).map(|n| pid.field(n).holds_data()).collect();
        assert_eq!(holds, [false, false, false, true, true, true, true]);
        // A component of a field with data is judged on its own bytes.
        assert!(!pid.field(4).component(3).holds_data());
        assert!(pid.field(4).component(71).holds_data());
    }

    #[test]
    fn parts_agree_with_splitting_bytes_across_word_boundaries() {
        // Fields long enough that delimiters fall on both sides of 64-byte words.
        let mut msg = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|".to_vec();
        for i in 0..90 {
            msg.extend_from_slice(if i % 7 == 0 { b"x^y&z~" } else { b"ab^" });
            if i % 5 == 0 {
                msg.push(b'|');
            }
        }
        let m = Message::parse(&msg).unwrap();
        let pid = m.segment(b"PID").unwrap();
        let want: Vec<&[u8]> = pid.raw()[4..].split(|&b| b == b'|').collect();
        let got: Vec<&[u8]> = pid.fields().map(|f| f.raw()).collect();
        assert_eq!(got, want);
        for f in pid.fields() {
            let reps: Vec<&[u8]> = f.repetitions().map(|r| r.raw()).collect();
            assert_eq!(reps, f.raw().split(|&b| b == b'~').collect::<Vec<_>>());
            for r in f.repetitions() {
                let comps: Vec<&[u8]> = r.components().map(|c| c.raw()).collect();
                assert_eq!(comps, r.raw().split(|&b| b == b'^').collect::<Vec<_>>());
                for c in r.components() {
                    let subs: Vec<&[u8]> = c.subcomponents().map(|s| s.raw()).collect();
                    assert_eq!(subs, c.raw().split(|&b| b == b'&').collect::<Vec<_>>());
                }
            }
        }
    }

    #[test]
    fn a_segment_id_alone_is_a_segment_and_a_short_or_glued_one_is_refused() {
        let m = Message::parse(b"MSH|^~\\&|A|B\rPD1\rPID|1||X\rNTE").unwrap();
        let ids: Vec<&[u8]> = m.segments().map(|s| s.id()).collect();
        assert_eq!(ids, [&b"MSH"[..], b"PD1", b"PID", b"NTE"]);
        let pd1 = m.segment(b"PD1").unwrap();
        assert!(!pd1.field(1).holds_data());
        assert_eq!(pd1.fields().count(), 1);
        assert_eq!(m.segment(b"PID").unwrap().field(3).raw(), b"X");
        for (bad, at) in [
            (&b"MSH|^~\\&|A\rPI\rPID|1"[..], 2),
            (b"MSH|^~\\&|A\rPID|1\rNTEX|1", 3),
            (b"MSH|^~\\&|A\rpid|1", 2),
        ] {
            let got = Message::parse(bad).err();
            assert_eq!(got, Some(ParseError::BadSegmentId(at)), "{bad:?}");
        }
    }

    #[test]
    fn blank_lines_are_skipped_and_a_second_header_is_refused() {
        let m = Message::parse(b"MSH|^~\\&|A|B\r \rPID|1\r\t \r\n\x1a").unwrap();
        let ids: Vec<&[u8]> = m.segments().map(|s| s.id()).collect();
        assert_eq!(ids, [&b"MSH"[..], b"PID"]);
        for (two, at) in [
            (&b"MSH|^~\\&|A\rPID|1\rMSH|^~\\&|B\rPID|2"[..], 3),
            (b"MSH|^~\\&|A\rPID|1\rMSH", 3),
            (b"MSH|^~\\&|A\n\nMSH|^~\\&|B", 2),
        ] {
            let got = Message::parse(two).err();
            assert_eq!(got, Some(ParseError::SecondMsh(at)), "{two:?}");
        }
    }

    #[test]
    fn without_a_subcomponent_delimiter_ampersands_are_text() {
        let m = Message::parse(b"MSH|^~\\|A|B\rPID|1||a&b^c").unwrap();
        let pid = m.segment(b"PID").unwrap();
        let c = pid.field(3).component(1);
        assert_eq!(c.raw(), b"a&b");
        assert_eq!(c.subcomponents().count(), 1);
    }
}
