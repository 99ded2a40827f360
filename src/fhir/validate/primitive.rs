//! Checks on primitive values that the schema's patterns do not make: real calendar dates,
//! base64, id/uuid/oid syntax, absolute URIs, text that looks like HTML.

/// The byte classes the string rules look for, found in one pass over a value: the pattern
/// shortcuts, the active-HTML check and a JSON writer's escaping each read a bit instead of
/// scanning the value again (a Bundle's values are short, so the passes, not the bytes, cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan(u8);

impl Scan {
    /// A byte of 0x80 or above (the value may hold non-ASCII white space).
    pub const NON_ASCII: u8 = 1;
    /// Vertical tab or form feed: ASCII white space that `string`'s pattern refuses.
    pub const VT_FF: u8 = 2;
    /// ASCII white space (tab to carriage return, space).
    pub const SPACE: u8 = 4;
    /// `<` or `:`, where active HTML starts (a tag, a `javascript:` scheme).
    pub const MARKUP: u8 = 8;
    /// What JSON must escape in a string: control characters, `"` and `\`.
    pub const JSON_ESCAPE: u8 = 16;
    /// A control character no FHIR string may hold: below 0x20, other than tab, LF and CR
    /// (the spec's rule for every string type; the schema's patterns let most of them by).
    pub const CONTROL: u8 = 32;

    const TABLE: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            let b = i as u8;
            let mut c = 0;
            if b >= 0x80 {
                c |= Scan::NON_ASCII;
            }
            if b == 0x0B || b == 0x0C {
                c |= Scan::VT_FF;
            }
            if matches!(b, b'\t'..=b'\r' | b' ') {
                c |= Scan::SPACE;
            }
            if b == b'<' || b == b':' {
                c |= Scan::MARKUP;
            }
            if b < 0x20 || b == b'"' || b == b'\\' {
                c |= Scan::JSON_ESCAPE;
            }
            if b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r') {
                c |= Scan::CONTROL;
            }
            t[i] = c;
            i += 1;
        }
        t
    };

    /// The classes of one byte.
    pub fn class(b: u8) -> u8 {
        Scan::TABLE[b as usize]
    }

    pub fn of(s: &str) -> Scan {
        Scan(s.bytes().fold(0, |acc, b| acc | Scan::TABLE[b as usize]))
    }

    /// Whether a byte of any of the classes `bits` was seen.
    pub fn has(self, bits: u8) -> bool {
        self.0 & bits != 0
    }
}

/// `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The number a few ASCII digits write (`None` when one is not a digit, or for none).
fn digits(part: &[u8]) -> Option<u32> {
    if part.is_empty() || part.len() > 9 {
        return None;
    }
    part.iter().try_fold(0u32, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
    })
}

/// A FHIR date, dateTime or instant (already of the schema's shape, or not): whether its
/// year-month-day is a day of the calendar. `None` when the text is not of that shape at all.
pub fn calendar_ok(s: &str) -> Option<bool> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| digits(b.get(r)?);
    let year = num(0..4)?;
    if b.len() == 4 {
        return Some(year > 0);
    }
    if b.get(4) != Some(&b'-') {
        return None;
    }
    let month = num(5..7)?;
    if !(1..=12).contains(&month) {
        return Some(false);
    }
    if b.len() == 7 {
        return Some(true);
    }
    if b.get(7) != Some(&b'-') {
        return None;
    }
    let day = num(8..10)?;
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    Some((1..=days).contains(&day))
}

/// Seconds since 0000-01-01T00:00Z of a dateTime with time and zone, for ordering (`per-1`).
/// Partial dates give the start of the period they name; `None` if the text is not a dateTime.
pub fn sort_key(s: &str) -> Option<(i64, bool)> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| digits(b.get(r)?).map(i64::from);
    let year = num(0..4)?;
    let month = if b.len() >= 7 { num(5..7)? } else { 1 };
    let day = if b.len() >= 10 { num(8..10)? } else { 1 };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe;
    if b.len() <= 10 {
        return Some((days * 86_400, false));
    }
    let (h, m, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut t = days * 86_400 + h * 3600 + m * 60 + sec;
    let rest = &s[19..];
    let rest = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    match rest.as_bytes() {
        [b'Z'] => {}
        [sign @ (b'+' | b'-'), ..] if rest.len() == 6 => {
            let zh: i64 = rest.get(1..3)?.parse().ok()?;
            let zm: i64 = rest.get(4..6)?.parse().ok()?;
            let off = zh * 3600 + zm * 60;
            t += if *sign == b'+' { -off } else { off };
        }
        _ => return None,
    }
    Some((t, true))
}

/// `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDThh:mm:ss[.fff](Z|±hh:mm)` as Unix ms. The
/// calendar and the arithmetic are the validator's (`calendar_ok`, `sort_key`).
pub fn ms_from_instant(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>, max: u32| {
        s.get(r)
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse::<u32>().ok())
            .is_some_and(|v| v <= max)
    };
    if !s.is_ascii() || b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    if calendar_ok(&s[..10]) != Some(true) {
        return None;
    }
    let mut millis = 0u64;
    if b.len() > 10 {
        if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
            return None;
        }
        if !(digits(11..13, 23) && digits(14..16, 59) && digits(17..19, 60)) {
            return None;
        }
        let mut rest = &s[19..];
        if let Some(frac) = rest.strip_prefix('.') {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 || n > 9 {
                return None;
            }
            millis = format!("{:0<3}", &frac[..n])[..3].parse().ok()?;
            rest = &frac[n..];
        }
        let zone_ok = rest == "Z"
            || (rest.len() == 6
                && (rest.starts_with('+') || rest.starts_with('-'))
                && &rest[3..4] == ":"
                && digits(s.len() - 5..s.len() - 3, 23)
                && digits(s.len() - 2..s.len(), 59));
        if !zone_ok {
            return None;
        }
    }
    let (t, _) = sort_key(s)?;
    let (epoch, _) = sort_key("1970-01-01")?;
    let secs = u64::try_from(t - epoch).ok()?;
    Some(secs * 1000 + millis)
}

/// Standard base64 (RFC 4648 alphabet, `=` padding, whitespace between groups allowed).
/// Returns the decoded length.
pub fn base64_len(s: &str) -> Option<usize> {
    let mut n = 0usize;
    let mut pad = 0usize;
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' if pad == 0 => n += 1,
            b'=' => pad += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => return None,
        }
    }
    if !(n + pad).is_multiple_of(4) || pad > 2 {
        return None;
    }
    Some((n + pad) / 4 * 3 - pad)
}

/// `urn:uuid:` followed by a lower- or upper-case RFC 4122 text form.
pub fn is_urn_uuid(s: &str) -> bool {
    s.strip_prefix("urn:uuid:").is_some_and(is_uuid)
}

/// An RFC 4122 text form, lower- or upper-case.
pub fn is_uuid(u: &str) -> bool {
    u.len() == 36
        && u.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `urn:oid:` followed by an OID (`[0-2](\.(0|[1-9][0-9]*))+`).
pub fn is_urn_oid(s: &str) -> bool {
    let Some(o) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut parts = o.split('.');
    let first_ok = matches!(parts.next(), Some("0" | "1" | "2"));
    let mut count = 0;
    first_ok
        && parts.all(|p| {
            count += 1;
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p == "0" || !p.starts_with('0'))
        })
        && count > 0
}

/// Whether a URI is absolute: it starts with a scheme (`[A-Za-z][A-Za-z0-9+.-]*:`).
pub fn has_scheme(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut b = scheme.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'.' | b'-'))
}

/// URLs on the domains the specification reserves for examples.
pub fn is_example_url(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return false;
    };
    let host = rest.split(['/', ':', '?', '#']).next().unwrap_or("");
    [
        "example.org",
        "example.com",
        "example.net",
        "acme.com",
        "acme.org",
    ]
    .iter()
    .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

/// Elements that make text active in a browser when it is rendered as HTML: they run script,
/// load content or restyle the page. (`<a>` is not among them: clinical text writes `<a` in
/// comparisons, and a `javascript:` link is caught by its scheme.)
const ACTIVE_TAGS: &[&str] = &[
    "script", "iframe", "object", "embed", "applet", "form", "img", "svg", "style", "link", "meta",
    "base", "frame", "frameset", "body", "html",
];

/// Whether plain text holds something that a browser would run or load if it were pasted into
/// HTML unescaped: a tag of an active element; any tag with an event handler or a script URL
/// among its attributes, read as a browser reads them (quoted values, character references);
/// or a script URL in the text itself, spelled as the URL parser would still read it.
pub fn looks_like_active_html(s: &str) -> bool {
    let b = s.as_bytes();
    if memchr::memchr2(b'<', b':', b).is_none() {
        return false;
    }
    // A `javascript:` ends at a colon: look back from each one (a URI has one or two) rather
    // than comparing at every position.
    if memchr::memchr_iter(b':', b)
        .any(|i| i >= 10 && b[i - 10..i].eq_ignore_ascii_case(b"javascript"))
    {
        return true;
    }
    // Spelled with references or with tabs, newlines or controls inside (`&#106;avascript:`,
    // `java<TAB>script:`): an `href` given this text runs it. One pass, and only for text
    // that holds such bytes beside a colon.
    if memchr::memchr(b':', b).is_some() && b.iter().any(|&c| c == b'&' || c < 0x20 || c == 0x7f) {
        let read = as_browser_reads(b);
        if contains(&read, b"javascript:") || contains(&read, b"vbscript:") {
            return true;
        }
    }
    let mut i = 0;
    // Where the attributes of the last tag read end: a `<` before it lies inside them (a
    // quoted value), as a browser reads it, and is not read again (read per `<`, a megabyte
    // of `<a` cost a read of the rest of the text per tag).
    let mut read_to = 0;
    while let Some(p) = memchr::memchr(b'<', &b[i..]) {
        let mut start = i + p + 1;
        if b.get(start) == Some(&b'/') {
            start += 1;
        }
        let end = b[start..]
            .iter()
            .position(|c| !c.is_ascii_alphanumeric())
            .map_or(b.len(), |e| start + e);
        let name = &b[start..end];
        let delimited = matches!(
            b.get(end),
            None | Some(b'>' | b' ' | b'/' | b'\t' | b'\n' | b'\r' | b'\x0c')
        );
        if delimited
            && ACTIVE_TAGS
                .iter()
                .any(|t| t.as_bytes().eq_ignore_ascii_case(name))
        {
            return true;
        }
        if start > read_to && name.first().is_some_and(u8::is_ascii_alphabetic) {
            let (active, len) = attributes_active(&b[end..]);
            if active {
                return true;
            }
            read_to = end + len;
        }
        i = start;
    }
    false
}

/// Reads a tag's attributes (`b` starts just after its name) as a browser's tokenizer does:
/// names, `=`, values quoted or not, up to the `>` outside quotes. Whether one is an event
/// handler given a value (`on` and letters: `<details ontoggle=…>` runs without a click; any
/// such name, as new handlers keep coming) or holds a script URL ([`is_script_url`]), and how
/// many bytes the attributes take.
fn attributes_active(b: &[u8]) -> (bool, usize) {
    let space = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c');
    let mut k = 0;
    loop {
        while k < b.len() && (space(b[k]) || b[k] == b'/') {
            k += 1;
        }
        if k >= b.len() || b[k] == b'>' {
            return (false, k);
        }
        // A name runs to white space, `/`, `>` or `=` (a leading `=` is part of it).
        let name_start = k;
        k += 1;
        while k < b.len() && !space(b[k]) && !matches!(b[k], b'/' | b'>' | b'=') {
            k += 1;
        }
        let name = &b[name_start..k];
        while k < b.len() && space(b[k]) {
            k += 1;
        }
        // Without a value an attribute runs nothing (`a<b, once daily` is text).
        if b.get(k) != Some(&b'=') {
            continue;
        }
        if name.len() > 2
            && name[..2].eq_ignore_ascii_case(b"on")
            && name[2..].iter().all(u8::is_ascii_alphabetic)
        {
            return (true, k);
        }
        k += 1;
        while k < b.len() && space(b[k]) {
            k += 1;
        }
        let value = match b.get(k) {
            Some(&q @ (b'"' | b'\'')) => {
                let from = k + 1;
                let to = memchr::memchr(q, &b[from..]).map_or(b.len(), |e| from + e);
                k = (to + 1).min(b.len());
                &b[from..to]
            }
            _ => {
                let from = k;
                while k < b.len() && !space(b[k]) && b[k] != b'>' {
                    k += 1;
                }
                &b[from..k]
            }
        };
        if is_script_url_bytes(value) {
            return (true, k);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// Attribute text as a browser's URL parser reads it: character references decoded (numeric
/// ones with or without their `;`, XML's five, and the named ones that spell URL syntax:
/// `&Tab;`, `&NewLine;`, `&colon;`), ASCII lower-cased; other characters become `?`. Tabs and
/// newlines go (the parser drops them anywhere), and so do other controls (it strips those at
/// the ends only: dropping them everywhere errs toward refusing).
pub fn as_browser_reads(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let (c, used) = if b[i] == b'&' {
            char_ref(&b[i..]).unwrap_or((u32::from(b'&'), 1))
        } else {
            (u32::from(b[i]), 1)
        };
        i += used;
        match u8::try_from(c) {
            Ok(c) if c < 0x80 => {
                if c >= 0x20 && c != 0x7f {
                    out.push(c.to_ascii_lowercase());
                }
            }
            _ => out.push(b'?'),
        }
    }
    out
}

/// The character a reference at the start of `b` (`&…`) stands for, and its length.
fn char_ref(b: &[u8]) -> Option<(u32, usize)> {
    if b.get(1) == Some(&b'#') {
        let hex = matches!(b.get(2), Some(b'x' | b'X'));
        let from = if hex { 3 } else { 2 };
        let n = b[from..]
            .iter()
            .take_while(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
            .count();
        if n == 0 {
            return None;
        }
        let digits = std::str::from_utf8(&b[from..from + n]).ok()?;
        let v = u32::from_str_radix(digits, if hex { 16 } else { 10 }).unwrap_or(u32::MAX);
        let semi = usize::from(b.get(from + n) == Some(&b';'));
        return Some((v, from + n + semi));
    }
    const NAMED: &[(&[u8], u8)] = &[
        (b"&tab;", b'\t'),
        (b"&newline;", b'\n'),
        (b"&colon;", b':'),
        (b"&amp;", b'&'),
        (b"&lt;", b'<'),
        (b"&gt;", b'>'),
        (b"&quot;", b'"'),
        (b"&apos;", b'\''),
    ];
    NAMED
        .iter()
        .find(|(n, _)| b.get(..n.len()).is_some_and(|x| x.eq_ignore_ascii_case(n)))
        .map(|(n, c)| (u32::from(*c), n.len()))
}

/// Whether a link's value (an `href` or `src`, as written in the narrative) is a script URL
/// once a browser has read it: `javascript:`, `vbscript:` or `data:text`.
pub fn is_script_url(value: &str) -> bool {
    is_script_url_bytes(value.as_bytes())
}

fn is_script_url_bytes(value: &[u8]) -> bool {
    let v = as_browser_reads(value);
    let v = &v[v.iter().position(|c| *c != b' ').unwrap_or(v.len())..];
    v.starts_with(b"javascript:") || v.starts_with(b"vbscript:") || v.starts_with(b"data:text")
}

/// Whether markdown holds an HTML tag (`<` followed by a letter or `/letter`).
pub fn has_html_tag(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(2).enumerate().any(|(i, w)| {
        w[0] == b'<'
            && (w[1].is_ascii_alphabetic()
                || (w[1] == b'/' && b.get(i + 2).is_some_and(u8::is_ascii_alphabetic)))
    })
}

/// A required binding to a code system R4's schema does not list (ISO 4217 currencies, BCP 13
/// media types), held to the form of its codes. Not to a list: a list would refuse every code
/// added after it was copied (ISO 4217 gained ZWG in 2024), and the form is what tells a code
/// from text (`DOLLARS`, `application/octet stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// `Money.currency`: three capital letters.
    Currency,
    /// `Attachment.contentType`: `type/subtype` (RFC 6838 names), then `; name=value`
    /// parameters (RFC 2045 tokens or quoted strings).
    MediaType,
}

impl Binding {
    /// The binding of element `name` of type `owner`, if it is one of these.
    pub fn of(owner: &str, name: &str) -> Option<Binding> {
        match (owner, name) {
            ("Money", "currency") => Some(Binding::Currency),
            ("Attachment", "contentType") => Some(Binding::MediaType),
            _ => None,
        }
    }

    /// The same code in the system's own spelling, where that is unambiguous: ISO 4217 codes
    /// are capitals (`usd` is USD).
    pub fn fold(self, s: &mut str) {
        if self == Binding::Currency && s.len() == 3 {
            s.make_ascii_uppercase();
        }
    }

    pub fn holds(self, s: &str) -> bool {
        match self {
            Binding::Currency => s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()),
            Binding::MediaType => media_type_ok(s),
        }
    }

    /// What is wrong with a code that does not hold, for an issue or a warning.
    pub fn problem(self) -> &'static str {
        match self {
            Binding::Currency => "not an ISO 4217 currency code (three capital letters, e.g. USD)",
            Binding::MediaType => "not a media type (BCP 13: type/subtype, e.g. application/pdf)",
        }
    }
}

/// RFC 6838 `type/subtype`, then RFC 9110 parameters: `; name=value`, the value a token or a
/// quoted string (which may hold `;` and `\"`), white space around the `;`, an empty one
/// allowed (`text/plain;`).
fn media_type_ok(s: &str) -> bool {
    // restricted-name: a letter or digit, then up to 126 of these.
    fn name(n: &[u8]) -> bool {
        !n.is_empty()
            && n.len() <= 127
            && n[0].is_ascii_alphanumeric()
            && n.iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
    }
    // token: printable ASCII but delimiters.
    fn tchar(c: u8) -> bool {
        c.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&c)
    }
    let b = s.as_bytes();
    let end = b
        .iter()
        .position(|&c| c == b';' || c == b' ' || c == b'\t')
        .unwrap_or(b.len());
    let Some(slash) = b[..end].iter().position(|&c| c == b'/') else {
        return false;
    };
    if !name(&b[..slash]) || !name(&b[slash + 1..end]) {
        return false;
    }
    let ows = |mut i: usize| {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        i
    };
    let mut i = end;
    loop {
        i = ows(i);
        if i == b.len() {
            return true;
        }
        if b[i] != b';' {
            return false;
        }
        i = ows(i + 1);
        if i == b.len() || b[i] == b';' {
            continue;
        }
        let k = i;
        while i < b.len() && tchar(b[i]) {
            i += 1;
        }
        if i == k || b.get(i) != Some(&b'=') {
            return false;
        }
        i += 1;
        if b.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match b.get(i) {
                    None => return false,
                    Some(b'"') => break,
                    Some(b'\\') if i + 1 < b.len() => i += 2,
                    Some(&c) if c == b'\t' || c == b' ' || c.is_ascii_graphic() || c >= 0x80 => {
                        i += 1
                    }
                    Some(_) => return false,
                }
            }
            i += 1;
        } else {
            let v = i;
            while i < b.len() && tchar(b[i]) {
                i += 1;
            }
            if i == v {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_sees_each_class_in_any_position() {
        let classes = [
            (Scan::NON_ASCII, "é\u{a0}\u{2003}"),
            (Scan::VT_FF, "\u{b}\u{c}"),
            (Scan::SPACE, "\t\n\u{b}\u{c}\r "),
            (Scan::MARKUP, "<:"),
            (Scan::JSON_ESCAPE, "\u{0}\u{1f}\"\\\n"),
            (Scan::CONTROL, "\u{0}\u{7}\u{b}\u{c}\u{1b}\u{1f}"),
        ];
        for (bit, members) in classes {
            for c in members.chars() {
                for s in [
                    format!("{c}"),
                    format!("ab{c}"),
                    format!("{c}cd"),
                    format!("a{c}b"),
                ] {
                    assert!(Scan::of(&s).has(bit), "{bit} in {s:?}");
                }
            }
        }
        // Every other printable ASCII byte is in no class; the classes are told apart.
        for b in 0x20u8..0x7f {
            let s = (b as char).to_string();
            let want = match b {
                b' ' => Scan::SPACE,
                b'<' | b':' => Scan::MARKUP,
                b'"' | b'\\' => Scan::JSON_ESCAPE,
                _ => 0,
            };
            assert_eq!(Scan::of(&s), Scan(want), "{s:?}");
        }
        assert_eq!(
            Scan::of("\u{b}"),
            Scan(Scan::VT_FF | Scan::SPACE | Scan::JSON_ESCAPE | Scan::CONTROL)
        );
        // Tab, LF and CR are JSON escapes but no control a string refuses.
        assert!(!Scan::of("\t\n\r").has(Scan::CONTROL));
        assert_eq!(Scan::of(""), Scan(0));
    }

    /// The scheme is found where a scan of every position finds it: any case, at the start,
    /// after other colons, at the very end, and not when a letter of it is missing.
    #[test]
    fn javascript_scheme_is_found_at_any_colon() {
        let every_position = |s: &str| {
            s.as_bytes()
                .windows(11)
                .any(|w| w.eq_ignore_ascii_case(b"javascript:"))
        };
        let pieces = [
            "",
            ":",
            "a",
            "javascript",
            "JaVaScRiPt",
            "avascript",
            "javascript:",
            "http:",
            "x:javascript",
            "é",
            "::",
        ];
        let mut found = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let s = format!("{a}{b}{c}");
                    let want = every_position(&s);
                    found += usize::from(want);
                    assert_eq!(looks_like_active_html(&s), want, "{s:?}");
                }
            }
        }
        assert!(found > 100, "{found} strings with the scheme");
    }

    #[test]
    fn calendar() {
        assert_eq!(calendar_ok("2024-02-29"), Some(true));
        assert_eq!(calendar_ok("2023-02-29"), Some(false));
        assert_eq!(calendar_ok("2023-04-31T10:00:00Z"), Some(false));
        assert_eq!(calendar_ok("2023-13"), Some(false));
        assert_eq!(calendar_ok("2023"), Some(true));
        assert_eq!(calendar_ok("not a date"), None);
    }

    #[test]
    fn ordering_with_zones() {
        let a = sort_key("2024-01-01T10:00:00+02:00").unwrap();
        let b = sort_key("2024-01-01T09:00:00Z").unwrap();
        assert!(a.0 < b.0);
        assert!(sort_key("2024-03").unwrap().0 < sort_key("2024-03-02").unwrap().0);
    }

    #[test]
    fn base64() {
        assert_eq!(base64_len("SGVsbG8gd29ybGQh"), Some(12));
        assert_eq!(base64_len("SGVsbG8=\n"), Some(5));
        assert_eq!(base64_len("%%%2@()()"), None);
        assert_eq!(base64_len("abc"), None);
        assert_eq!(base64_len("ab=c"), None);
    }

    #[test]
    fn identifiers() {
        assert!(is_id("a-b.C9") && !is_id("bad_id") && !is_id("") && !is_id(&"1".repeat(65)));
        assert!(is_urn_uuid("urn:uuid:9ce2a97b-5cab-4986-814f-4734016e6084"));
        assert!(!is_urn_uuid(
            "urn:uuid:9ce2a97b-5cab-4986-814f-4734016e6084-X"
        ));
        assert!(is_urn_oid("urn:oid:1.2.840.10008") && !is_urn_oid("urn:oid:1.02"));
        assert!(has_scheme("urn:uuid:x") && has_scheme("http://a/b") && !has_scheme("Patient/1"));
        assert!(is_example_url("http://repository.example.org/fhir/x"));
        assert!(!is_example_url("http://hl7.org/fhir"));
    }

    #[test]
    fn html_in_text() {
        assert!(looks_like_active_html(
            "Standard <script>somescript</script>"
        ));
        assert!(looks_like_active_html("<IMG src=x onerror=y>"));
        assert!(!looks_like_active_html(
            "BP <120 and a<b, <resource type>, x <a day"
        ));
        assert!(looks_like_active_html(
            "<a href='JavaScript:alert(1)'>x</a>"
        ));
        assert!(has_html_tag("<resource type>\\<id>") && !has_html_tag("a < b"));
    }

    /// Attack round 9: what a browser runs that the first checks let through.
    #[test]
    fn script_spelled_for_browsers_and_event_handlers_are_active() {
        for active in [
            "<details open ontoggle=alert(1)>",
            "<input autofocus onfocus=alert(1)>",
            "<video><source onerror=alert(1)>",
            "<p/onmouseover = x>",
            "<a href=\"java&#x09;script:alert(1)\">x</a>",
            "<a href=\"&#106;avascript:alert(1)\">x</a>",
            "<a href=\"&#106avascript:alert(1)\">x</a>",
            "<a href=\"\u{1}javascript:alert(1)\">x</a>",
            "<a href=\"javascript&colon;alert(1)\">x</a>",
            // A `>` inside quotes does not end the tag (the review found these passing).
            "<details title=\">\" open ontoggle=alert(1)>",
            "<a title='>' href=\"java&#x09;script:alert(1)\">x</a>",
            // Outside a tag, spelled so that an `href` given the text runs it.
            "&#106;avascript:alert(1)",
            "java\tscript:alert(1)",
            "java\nscript:alert(1)",
        ] {
            assert!(looks_like_active_html(active), "{active:?}");
        }
        for text in [
            "BP <120 and a<b, once daily",
            "<a href=\"https://example.org/on=1\">report</a>",
            "<a href=\"https://example.org/online=1\">report</a>",
            "see <b>bold</b> online=yes",
            "onset = 2 days, x <y",
            "ALT <ULN. Transcript: dictated",
            "WBC <LLN; postscript: none",
            "ratio 1:2, see note: x, <5 mg",
            "Fe &amp; TIBC: low",
        ] {
            assert!(!looks_like_active_html(text), "{text}");
        }
        // 300,000 tags before one `>`: read once per stretch, not once per tag (per tag, this
        // text is 10^11 bytes of reading). Run on a thread with a deadline far beyond the
        // milliseconds it takes, so that a quadratic reading fails here instead of hanging CI.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let many = "<a ".repeat(300_000);
            let found = (
                looks_like_active_html(&many),
                looks_like_active_html(&format!("{many}<b onclick=x>")),
            );
            let _ = tx.send(found);
        });
        let found = match rx.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(found) => found,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("300,000 tags not read in two minutes: once per tag, not once")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the reading panicked"),
        };
        assert_eq!(found, (false, true));
        assert!(is_script_url("java&#x09;script:alert(1)"));
        assert!(is_script_url("&#x6A;avascript:x"));
        assert!(is_script_url(" \u{1}JavaScript:x"));
        assert!(is_script_url("java\tscript:x"));
        assert!(!is_script_url("https://example.org/javascript:x"));
        assert!(!is_script_url("#javascript"));
    }

    #[test]
    fn instants_parse_with_zones_and_dates_alone() {
        assert_eq!(ms_from_instant("1970-01-01"), Some(0));
        assert_eq!(
            ms_from_instant("2026-11-30T00:00:00Z"),
            Some(1_795_996_800_000)
        );
        assert_eq!(
            ms_from_instant("2026-11-30T01:00:00.5+01:00"),
            Some(1_795_996_800_500)
        );
        assert_eq!(
            ms_from_instant("2026-11-29T23:00:00-01:00"),
            Some(1_795_996_800_000)
        );
        for bad in [
            "2026-13-01",
            "2026-11-30T00:00:00",
            "2026-11-30T25:00:00Z",
            "x",
            "2026-11-30T00:00:00.Z",
            "2025-01-0\u{e9}",
            "2025-01-01T00:00:00+0\u{e9}00",
            "2025-01-01T00:00:0\u{e9}Z",
            "",
        ] {
            assert_eq!(ms_from_instant(bad), None, "{bad}");
        }
    }

    /// Attack round 9: `DOLLARS` and `application/octet stream` were written and shown valid.
    #[test]
    fn externally_bound_codes_are_held_to_their_form() {
        let c = Binding::of("Money", "currency").unwrap();
        for ok in ["USD", "EUR", "ZWG", "XXX"] {
            assert!(c.holds(ok), "{ok}");
        }
        for bad in ["DOLLARS", "usd", "US", "U$D", "", "USD "] {
            assert!(!c.holds(bad), "{bad}");
        }
        let m = Binding::of("Attachment", "contentType").unwrap();
        for ok in [
            "application/pdf",
            "text/plain; charset=UTF-8",
            "text/plain;charset=utf-8",
            "application/fhir+json",
            "image/svg+xml",
            "application/vnd.ms-excel",
            "multipart/mixed; boundary=\"a b\"",
            "multipart/mixed; boundary=\"a;b\"",
            "text/plain; charset=\"utf-8\"",
            "text/plain; name=\"a \\\"b\\\"\"",
            "text/plain;",
            "APPLICATION/PDF",
            "application/x-hl7-cda-level-one+xml",
        ] {
            assert!(m.holds(ok), "{ok}");
        }
        for bad in [
            "application/octet stream",
            "pdf",
            "application/",
            "/pdf",
            "text/plain; charset",
            "text/plain; =x",
            "text/plain; a=\"open",
            "text/plain charset=x",
            "application/p(d)f",
            "",
        ] {
            assert!(!m.holds(bad), "{bad}");
        }
        assert_eq!(Binding::of("Money", "value"), None);
    }
}
