//! HL7v2 escape sequences (v2.9 §2.7): `\F\ \S\ \T\ \R\ \E\ \P\ \Xhh…\ \.br\`. Everything else
//! (`\H\`, `\N\`, `\Zxx\`, `\Cxxyy\`, formatting commands, unterminated escapes) is kept verbatim,
//! so nothing a sender wrote is lost.

use super::charset::Charset;
use super::tokenizer::Delimiters;

/// Replaces escape sequences in already charset-decoded text. Hex escapes (`\X..\`) are bytes in
/// the message's character set and are decoded through it.
pub fn decode_escapes(text: &str, delims: &Delimiters, charset: Charset) -> String {
    let Some(esc) = delims.escape.map(char::from) else {
        return text.to_string();
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + esc.len_utf8()..];
        let Some(end) = after.find(esc) else {
            out.push_str(&rest[start..]);
            return out;
        };
        let body = &after[..end];
        if decode_one(body, delims, charset, &mut out) {
            rest = &after[end + esc.len_utf8()..];
        } else {
            // Unknown: keep the opening escape and continue after it, so that `\E\` style pairs
            // and a stray escape character both survive.
            out.push(esc);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn decode_one(body: &str, d: &Delimiters, charset: Charset, out: &mut String) -> bool {
    let push = |out: &mut String, b: Option<u8>| match b {
        Some(b) => {
            out.push(char::from(b));
            true
        }
        None => false,
    };
    match body {
        "F" => push(out, Some(d.field)),
        "S" => push(out, Some(d.component)),
        "T" => push(out, d.subcomponent),
        "R" => push(out, Some(d.repetition)),
        "E" => push(out, d.escape),
        "P" => push(out, d.truncation),
        ".br" => {
            out.push('\n');
            true
        }
        _ => match body.strip_prefix('X') {
            Some(hex) if !hex.is_empty() && hex.len() % 2 == 0 => match hex::decode(hex) {
                Ok(bytes) => {
                    out.push_str(&charset.decode(&bytes));
                    true
                }
                Err(_) => false,
            },
            _ => false,
        },
    }
}
