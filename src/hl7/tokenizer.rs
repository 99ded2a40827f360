use std::borrow::Cow;

use super::charset::Charset;
use super::escape::decode_escapes;

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
    #[error("MSH-18 character set {0:?} is not supported")]
    UnsupportedCharset(String),
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

/// A parsed HL7v2 message: the bytes, the delimiters and the segment boundaries.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    bytes: &'a [u8],
    delims: Delimiters,
    segments: Vec<(u32, u32)>,
    charset: Charset,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

fn is_segment_id(id: &[u8]) -> bool {
    id.len() == 3
        && id
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

impl<'a> Message<'a> {
    /// Tokenizes `bytes` (one message; see [`super::split_batch`] for batches). Segments may end
    /// in CR, LF or CRLF; blank lines are ignored; a UTF-8 byte order mark is skipped.
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
            if end > start {
                index += 1;
                if !is_segment_id(bytes.get(start..start + 3).unwrap_or(&[]))
                    || bytes.get(start + 3).is_some_and(|&b| b != field)
                {
                    return Err(ParseError::BadSegmentId(index));
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

    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + '_ {
        self.segments.iter().map(move |&(s, e)| Segment {
            raw: &self.bytes[s as usize..e as usize],
            delims: self.delims,
        })
    }

    /// The MSH segment (always the first).
    pub fn msh(&self) -> Segment<'a> {
        let (s, e) = self.segments[0];
        Segment {
            raw: &self.bytes[s as usize..e as usize],
            delims: self.delims,
        }
    }

    /// First segment with this id.
    pub fn segment(&self, id: &[u8; 3]) -> Option<Segment<'a>> {
        self.segments().find(|s| s.id() == id)
    }

    /// Decodes a field, component or subcomponent into text: character set first (so multi-byte
    /// text cannot be mistaken for delimiters), then escape sequences.
    pub fn text(&self, raw: &'a [u8]) -> Result<Cow<'a, str>, ParseError> {
        let decoded = self.charset.decode(raw);
        Ok(match self.delims.escape {
            Some(esc) if decoded.as_bytes().contains(&esc) => {
                Cow::Owned(decode_escapes(&decoded, &self.delims, self.charset))
            }
            _ => decoded,
        })
    }
}

/// One segment: its raw bytes without the terminator.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    raw: &'a [u8],
    delims: Delimiters,
}

impl<'a> Segment<'a> {
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    pub fn id(&self) -> &'a [u8] {
        &self.raw[..3]
    }

    /// All fields after the segment id; for MSH the first one yielded is MSH-2.
    pub fn fields(&self) -> Parts<'a> {
        Parts {
            rest: Some(self.raw.get(4..).unwrap_or(&[])),
            sep: Some(self.delims.field),
            delims: self.delims,
        }
    }

    /// Field `n` (1-based, HL7 numbering). MSH-1 is the separator and MSH-2 the encoding
    /// characters, so MSH field numbers line up with the standard's. Missing fields are empty.
    pub fn field(&self, n: usize) -> Field<'a> {
        let is_msh = self.id() == b"MSH";
        let empty = Field {
            raw: &[],
            delims: self.delims,
        };
        if n == 0 {
            return empty;
        }
        if is_msh && n == 1 {
            return Field {
                raw: &self.raw[3..4],
                delims: self.delims,
            };
        }
        let skip = if is_msh { n - 2 } else { n - 1 };
        self.fields().nth(skip).unwrap_or(empty)
    }
}

/// A field, repetition, component or subcomponent: raw bytes plus the delimiters to split further.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    raw: &'a [u8],
    delims: Delimiters,
}

impl<'a> Field<'a> {
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
    fn children(&self, sep: Option<u8>) -> Parts<'a> {
        Parts {
            rest: Some(self.raw),
            sep,
            delims: self.delims,
        }
    }
    pub fn repetitions(&self) -> Parts<'a> {
        self.children(Some(self.delims.repetition))
    }
    pub fn components(&self) -> Parts<'a> {
        self.children(Some(self.delims.component))
    }
    pub fn subcomponents(&self) -> Parts<'a> {
        self.children(self.delims.subcomponent)
    }
    /// Component `n` (1-based) of the first repetition.
    pub fn component(&self, n: usize) -> Field<'a> {
        let first = split(self.raw, self.delims.repetition)
            .next()
            .unwrap_or(&[]);
        Field {
            raw: split(first, self.delims.component)
                .nth(n.saturating_sub(1))
                .unwrap_or(&[]),
            delims: self.delims,
        }
    }
}

/// The parts of a field split on one delimiter (none: the whole field once).
#[derive(Debug, Clone)]
pub struct Parts<'a> {
    rest: Option<&'a [u8]>,
    sep: Option<u8>,
    delims: Delimiters,
}

impl<'a> Iterator for Parts<'a> {
    type Item = Field<'a>;

    #[inline]
    fn next(&mut self) -> Option<Field<'a>> {
        let r = self.rest?;
        let raw = match self.sep.and_then(|sep| memchr::memchr(sep, r)) {
            Some(i) => {
                self.rest = Some(&r[i + 1..]);
                &r[..i]
            }
            None => {
                self.rest = None;
                r
            }
        };
        Some(Field {
            raw,
            delims: self.delims,
        })
    }
}

/// Splits on one delimiter; an empty input yields one empty part, as HL7 expects.
fn split(bytes: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(sep, r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}
