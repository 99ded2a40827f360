//! HL7v2 escape sequences (v2.9 §2.7): `\F\ \S\ \T\ \R\ \E\ \P\ \Xhh…\ \.br\`. What else a
//! sender writes (`\H\`, `\N\`, the formatting commands of FT such as `\.sp\`, `\Zxx\`,
//! `\Cxxyy\`, unterminated escapes) is kept verbatim by [`decode_escapes`], so nothing is lost;
//! [`decode_escapes_as`] with [`Formatting::Plain`] turns highlighting and formatting into the
//! plain text a FHIR string holds.

use super::charset::Charset;
use super::tokenizer::Delimiters;

/// What the highlighting (`\H\`, `\N\`) and formatting commands (`\.sp\`, `\.in\`…) of
/// formatted text become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formatting {
    /// Kept as sent: a parser's view of the message.
    Keep,
    /// Plain text: highlighting marks dropped, `.sp N` as N line breaks and `.ce` as one (the
    /// line ends), `.sk N` as N spaces, `.fi`, `.nf`, `.in` and `.ti` (fill and indent
    /// modes) dropped. A count is capped at [`MAX_FORMAT_REPEAT`]: `\.sp999999999\` is not a gigabyte.
    Plain,
}

/// The most line breaks or spaces one formatting command becomes.
pub const MAX_FORMAT_REPEAT: usize = 16;

/// Replaces escape sequences in already charset-decoded text. Hex escapes (`\X..\`) are bytes in
/// the message's character set and are decoded through it. Formatting is kept as sent.
pub fn decode_escapes(text: &str, delims: &Delimiters, charset: Charset) -> String {
    decode_escapes_as(text, delims, charset, Formatting::Keep)
}

/// [`decode_escapes`], with highlighting and formatting commands as `formatting` says.
pub fn decode_escapes_as(
    text: &str,
    delims: &Delimiters,
    charset: Charset,
    formatting: Formatting,
) -> String {
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
        let done = decode_one(body, delims, charset, &mut out)
            || (formatting == Formatting::Plain && plain_format(body, &mut out));
        if done {
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

/// Highlighting or a formatting command as plain text; `false` when `body` is neither.
fn plain_format(body: &str, out: &mut String) -> bool {
    if body == "H" || body == "N" {
        return true;
    }
    let Some(cmd) = body.strip_prefix('.') else {
        return false;
    };
    let (name, arg) = cmd.split_at(cmd.len().min(2));
    let arg = arg.trim_start();
    // An absent count is one; a signed count (`.in+2`) is the indents' and names no repeat.
    let count = if arg.is_empty() {
        Some(1)
    } else if arg.bytes().all(|b| b.is_ascii_digit()) {
        Some(
            arg.parse::<usize>()
                .unwrap_or(usize::MAX)
                .min(MAX_FORMAT_REPEAT),
        )
    } else if matches!(name, "in" | "ti")
        && arg.len() > 1
        && matches!(arg.as_bytes()[0], b'+' | b'-')
        && arg[1..].bytes().all(|b| b.is_ascii_digit())
    {
        Some(0)
    } else {
        None
    };
    let Some(n) = count else {
        return false;
    };
    match name {
        "sp" => out.extend(std::iter::repeat_n('\n', n.max(1))),
        "ce" if arg.is_empty() => out.push('\n'),
        "sk" => out.extend(std::iter::repeat_n(' ', n)),
        "fi" | "nf" if arg.is_empty() => {}
        "in" | "ti" => {}
        _ => return false,
    }
    true
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
