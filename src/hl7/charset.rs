//! MSH-18 character sets.
//!
//! Delimiters are ASCII bytes. In ASCII, ISO 8859-x and UTF-8 no byte of a multi-byte character can
//! equal one, so those messages are tokenized in place. In GB 18030, Big5 and ISO-2022-JP a trail
//! byte can be `|`, `^` or `\`; such messages are transcoded to UTF-8 first
//! ([`Charset::needs_transcoding`]) and tokenized as UTF-8.

use std::borrow::Cow;

use encoding_rs::Encoding;

use super::tokenizer::ParseError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// MSH-18 empty or `ASCII`. Real senders often put UTF-8 or Latin-1 in such messages anyway,
    /// so text is read as UTF-8 when it is valid UTF-8 and as ISO 8859-1 otherwise (read as
    /// [`Charset::Latin1`] is).
    Ascii,
    /// `8859/1`, read as its superset windows-1252, as browsers read the label (WHATWG Encoding):
    /// senders that say 8859/1 send Windows text, and bytes 0x80-0x9F are then quotes, dashes
    /// and the euro sign (`O\x92Neil` is O’Neil), not C1 control characters. Other bytes are the
    /// code point of the same value.
    Latin1,
    /// `UNICODE UTF-8` (and the older `UNICODE`, which senders use for UTF-8 in practice).
    Utf8,
    /// Any other supported set, decoded by encoding_rs.
    Other(&'static Encoding),
}

impl Charset {
    /// Reads the first repetition of MSH-18.
    pub fn from_msh18(raw: &[u8]) -> Result<Charset, ParseError> {
        let name = String::from_utf8_lossy(raw).trim().to_ascii_uppercase();
        Ok(match name.as_str() {
            "" | "ASCII" | "ISO IR6" => Charset::Ascii,
            "8859/1" | "ISO IR100" => Charset::Latin1,
            "UNICODE UTF-8" | "UTF-8" | "UNICODE" => Charset::Utf8,
            "8859/2" => Charset::Other(encoding_rs::ISO_8859_2),
            "8859/3" => Charset::Other(encoding_rs::ISO_8859_3),
            "8859/4" => Charset::Other(encoding_rs::ISO_8859_4),
            "8859/5" => Charset::Other(encoding_rs::ISO_8859_5),
            "8859/6" => Charset::Other(encoding_rs::ISO_8859_6),
            "8859/7" => Charset::Other(encoding_rs::ISO_8859_7),
            "8859/8" => Charset::Other(encoding_rs::ISO_8859_8),
            // encoding_rs maps ISO 8859-9 to its superset windows-1254, as browsers do.
            "8859/9" => Charset::Other(encoding_rs::WINDOWS_1254),
            "8859/15" => Charset::Other(encoding_rs::ISO_8859_15),
            "ISO IR87" | "ISO IR159" => Charset::Other(encoding_rs::ISO_2022_JP),
            "GB 18030-2000" => Charset::Other(encoding_rs::GB18030),
            "KS X 1001" => Charset::Other(encoding_rs::EUC_KR),
            "BIG-5" => Charset::Other(encoding_rs::BIG5),
            _ => return Err(ParseError::UnsupportedCharset),
        })
    }

    /// Whether a trail byte of this set can look like an ASCII delimiter.
    pub fn needs_transcoding(&self) -> bool {
        matches!(self, Charset::Other(e) if *e == encoding_rs::GB18030
            || *e == encoding_rs::BIG5
            || *e == encoding_rs::ISO_2022_JP
            || *e == encoding_rs::SHIFT_JIS
            || *e == encoding_rs::GBK)
    }

    /// Decodes bytes to text. Invalid sequences become U+FFFD: the original bytes are kept in the
    /// sealed record, so decoding for metadata must not reject a message over one bad byte.
    pub fn decode<'a>(&self, raw: &'a [u8]) -> Cow<'a, str> {
        match self {
            Charset::Ascii => match std::str::from_utf8(raw) {
                Ok(s) => Cow::Borrowed(s),
                Err(_) => Charset::Latin1.decode(raw),
            },
            Charset::Latin1 => encoding_rs::WINDOWS_1252.decode_without_bom_handling(raw).0,
            Charset::Utf8 => String::from_utf8_lossy(raw),
            Charset::Other(enc) => enc.decode_without_bom_handling(raw).0,
        }
    }

    /// Whether every byte sequence of `raw` is text in this set (else [`Charset::decode`]
    /// writes U+FFFD for some: a Latin-1 `ü` in a message that says UTF-8).
    pub fn holds(&self, raw: &[u8]) -> bool {
        match self {
            Charset::Ascii | Charset::Latin1 => true,
            Charset::Utf8 => std::str::from_utf8(raw).is_ok(),
            Charset::Other(enc) => enc
                .decode_without_bom_handling_and_without_replacement(raw)
                .is_some(),
        }
    }

    /// The whole message as UTF-8, for sets that [`needs_transcoding`](Self::needs_transcoding).
    pub fn transcode(&self, raw: &[u8]) -> Vec<u8> {
        self.decode(raw).into_owned().into_bytes()
    }
}
