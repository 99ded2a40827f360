//! Lexical conversions from HL7v2 values to FHIR primitives. Numbers never pass through a float
//! (`72.50` stays `72.50`); dates keep the precision the sender gave; every conversion either
//! yields valid FHIR text or says why not (the caller turns that into a warning).

use std::fmt::Write;

use crate::fhir::validate::primitive::{self, Scan};

/// A fixed UTC offset in minutes (a time's own, or the settings' `default_timezone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset(pub i16);

/// The zone of v2 times sent without one (`default_timezone`): a fixed offset, or an IANA zone
/// (`America/New_York`), whose offset is the one in force at each time's own date and hour,
/// daylight saving time included. The zone database is the one built into the binary.
#[derive(Debug, Clone)]
pub enum Zone {
    Fixed(Offset),
    Named(jiff::tz::TimeZone),
}

impl Zone {
    /// `Z`, `+01:00`, `-0500`, or an IANA zone name.
    pub fn parse(s: &str) -> Option<Zone> {
        if let Some(o) = Offset::parse(s) {
            return Some(Zone::Fixed(o));
        }
        let s = s.trim();
        // A name of the database, not a POSIX TZ string or a file path.
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_-+".contains(&b))
        {
            return None;
        }
        jiff::tz::TimeZone::get(s).ok().map(Zone::Named)
    }

    /// What the times a zone gives depend on, for the mapping-set version: a fixed offset, or
    /// a named zone's offset in 1800 and every change of it up to 2200 as the zone database
    /// built into the binary has them. A binary whose database changed a zone's rules then
    /// names another mapping set, as a changed file does.
    pub fn rules_hash(&self, h: &mut blake3::Hasher) {
        match self {
            Zone::Fixed(o) => {
                h.update(b"fixed\0");
                h.update(&o.0.to_le_bytes());
            }
            Zone::Named(tz) => {
                h.update(b"named\0");
                let name = tz.iana_name().unwrap_or_default();
                h.update(&(name.len() as u64).to_le_bytes());
                h.update(name.as_bytes());
                // 1800-01-01 and 2200-01-01, in seconds since 1970.
                let (from, until) = (-5_364_662_400_i64, 7_258_118_400_i64);
                let Ok(start) = jiff::Timestamp::from_second(from) else {
                    return;
                };
                h.update(&tz.to_offset(start).seconds().to_le_bytes());
                for t in tz.following(start) {
                    let at = t.timestamp().as_second();
                    if at >= until {
                        break;
                    }
                    h.update(&at.to_le_bytes());
                    h.update(&t.offset().seconds().to_le_bytes());
                }
            }
        }
    }

    /// The offset of the local time `t` (which has at least an hour): `None` for a time the
    /// zone's clocks skipped or passed twice (a daylight saving change), or a historic offset
    /// of seconds FHIR cannot write. Such a time keeps its date only, as one without a zone.
    fn offset_at(&self, t: &V2Time<'_>) -> Option<Offset> {
        let tz = match self {
            Zone::Fixed(o) => return Some(*o),
            Zone::Named(tz) => tz,
        };
        let n = |s: Option<&str>| s.unwrap_or("0").parse::<i8>().ok();
        let dt = jiff::civil::DateTime::new(
            t.year.parse().ok()?,
            n(t.month)?,
            n(t.day)?,
            n(t.hour)?,
            n(t.minute)?,
            // A leap second (`:60`) has the offset of the second before it; the civil clock
            // has no 60th second to ask about.
            n(t.second)?.min(59),
            0,
        )
        .ok()?;
        match tz.to_ambiguous_timestamp(dt).offset() {
            jiff::tz::AmbiguousOffset::Unambiguous { offset } => {
                let secs = offset.seconds();
                if secs % 60 != 0 {
                    return None;
                }
                i16::try_from(secs / 60).ok().map(Offset)
            }
            _ => None,
        }
    }
}

impl Offset {
    /// `Z`, `+01:00`, `-0500`, `+02`.
    pub fn parse(s: &str) -> Option<Offset> {
        let s = s.trim();
        if s == "Z" || s == "z" {
            return Some(Offset(0));
        }
        let (sign, rest) = match s.as_bytes().first()? {
            b'+' => (1i16, &s[1..]),
            b'-' => (-1i16, &s[1..]),
            _ => return None,
        };
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (h, m) = match digits.len() {
            2 => (digits.parse::<i16>().ok()?, 0),
            4 => (digits[..2].parse().ok()?, digits[2..].parse().ok()?),
            _ => return None,
        };
        if h > 14 || m > 59 || (h == 14 && m > 0) {
            return None;
        }
        Some(Offset(sign * (h * 60 + m)))
    }

    fn write(self, out: &mut String) {
        let m = self.0.unsigned_abs();
        out.push(if self.0 < 0 { '-' } else { '+' });
        push2(out, m / 60);
        out.push(':');
        push2(out, m % 60);
    }
}

/// `s.trim()`, settled by a look at the two end bytes when both are ASCII other than
/// whitespace (most values): only whitespace is trimmed, and a character of more than one byte
/// begins and ends with bytes above 0x7F, so such ends are not whitespace of any kind.
pub fn trim(s: &str) -> &str {
    let ascii_solid = |c: u8| c < 0x80 && !char::from(c).is_whitespace();
    match s.as_bytes() {
        [a, .., z] if ascii_solid(*a) && ascii_solid(*z) => s,
        [a] if ascii_solid(*a) => s,
        _ => s.trim(),
    }
}

/// Two decimal digits (formatting machinery costs more than the mapping around it).
fn push2(out: &mut String, v: u16) {
    out.push(char::from(b'0' + (v / 10 % 10) as u8));
    out.push(char::from(b'0' + (v % 10) as u8));
}

/// A decimal integer without the formatting machinery.
pub fn push_int(out: &mut String, v: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut u = v.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (u % 10) as u8;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    if v < 0 {
        out.push('-');
    }
    out.extend(digits[i..].iter().map(|&c| char::from(c)));
}

/// An HL7v2 DTM/TS/DT value read lexically: `YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Time<'a> {
    pub year: &'a str,
    pub month: Option<&'a str>,
    pub day: Option<&'a str>,
    pub hour: Option<&'a str>,
    pub minute: Option<&'a str>,
    pub second: Option<&'a str>,
    /// Fraction digits without the dot.
    pub fraction: Option<&'a str>,
    pub offset: Option<Offset>,
}

fn days_in(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

pub fn parse_v2_time(s: &str) -> Result<V2Time<'_>, &'static str> {
    let s = trim(s);
    // TS in v2.3–2.5 has a second component (degree of precision): take the first.
    let s = s.split('^').next().unwrap_or(s);
    let (body, offset) = match s.find(['+', '-']) {
        Some(i) => (
            &s[..i],
            Some(Offset::parse(&s[i..]).ok_or("time zone is not +/-HHMM")?),
        ),
        None => (s, None),
    };
    let (digits, fraction) = match body.split_once('.') {
        Some((d, f)) => {
            if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return Err("fraction of a second is not 1-9 digits");
            }
            (d, Some(f))
        }
        None => (body, None),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("date/time has characters other than digits");
    }
    let n = digits.len();
    if !matches!(n, 4 | 6 | 8 | 10 | 12 | 14) {
        return Err("date/time is not YYYY[MM[DD[HH[MM[SS]]]]]");
    }
    if fraction.is_some() && n != 14 {
        return Err("fraction of a second without seconds");
    }
    let part = |a: usize| (n >= a + 2).then(|| &digits[a..a + 2]);
    let t = V2Time {
        year: &digits[..4],
        month: part(4),
        day: part(6),
        hour: part(8),
        minute: part(10),
        second: part(12),
        fraction,
        offset,
    };
    let num = |s: Option<&str>| s.map(|v| v.parse::<u32>().unwrap_or(99));
    let year: u32 = t.year.parse().unwrap_or(0);
    if year == 0 {
        return Err("year 0000");
    }
    if let Some(m) = num(t.month) {
        if !(1..=12).contains(&m) {
            return Err("month out of range");
        }
        if let Some(d) = num(t.day) {
            if d < 1 || d > days_in(year, m) {
                return Err("day out of range");
            }
        }
    }
    if num(t.hour).is_some_and(|h| h > 23)
        || num(t.minute).is_some_and(|m| m > 59)
        || num(t.second).is_some_and(|s| s > 60)
    {
        return Err("time of day out of range");
    }
    // 60: a leap second, which FHIR's time, dateTime and instant allow. One falls only in the
    // last minute of a UTC hour (23:59:60Z; 18:59:60-05:00), so a 60 elsewhere is a sender's
    // rounding slip, refused as before. (Without a zone in the value, minute 59 as sent.)
    if num(t.second) == Some(60) {
        let minute = num(t.minute).unwrap_or(0) as i32;
        let offset = t.offset.map_or(0, |o| i32::from(o.0));
        if (minute - offset).rem_euclid(60) != 59 {
            return Err("time of day out of range");
        }
    }
    Ok(t)
}

/// Which FHIR date/time flavour to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeKind {
    Date,
    DateTime,
    Instant,
}

/// What a conversion kept: the text, and whether precision was given up on the way.
#[derive(Debug, PartialEq, Eq)]
pub enum Converted {
    Exact,
    /// The time of day was dropped: no zone in the value and none configured.
    TimeDropped,
    /// The time of day was dropped: the configured zone's clocks skipped or repeated it (a
    /// daylight saving change), or its offset then had seconds (Monrovia until 1972), so it has
    /// no offset FHIR can write.
    TimeAmbiguous,
    /// Seconds were added (v2 allows HH or HHMM; FHIR needs seconds once a time is given).
    Padded,
}

/// Writes a v2 time as a FHIR date, dateTime or instant.
///
/// A dateTime with a time of day needs a zone: the value's own, else `default_zone`; with
/// neither, the time is dropped and the date kept (a wrong zone would move the instant). An
/// instant needs a full time and a zone: otherwise it is an error.
pub fn write_time(
    s: &str,
    kind: TimeKind,
    default_zone: Option<&Zone>,
    out: &mut String,
) -> Result<Converted, &'static str> {
    let t = parse_v2_time(s)?;
    let mut status = Converted::Exact;
    out.push_str(t.year);
    let Some(month) = t.month else {
        return if kind == TimeKind::Instant {
            Err("an instant needs a date and a time")
        } else {
            Ok(status)
        };
    };
    out.push('-');
    out.push_str(month);
    let Some(day) = t.day else {
        return if kind == TimeKind::Instant {
            Err("an instant needs a date and a time")
        } else {
            Ok(status)
        };
    };
    out.push('-');
    out.push_str(day);
    if kind == TimeKind::Date {
        return Ok(status);
    }
    let Some(hour) = t.hour else {
        return if kind == TimeKind::Instant {
            Err("an instant needs a time of day")
        } else {
            Ok(status)
        };
    };
    let zone = match (t.offset, default_zone) {
        (Some(o), _) => Some(o),
        (None, Some(z)) => match z.offset_at(&t) {
            Some(o) => Some(o),
            None if kind == TimeKind::Instant => {
                return Err("the configured zone gives the time no one offset in minutes (its clocks skip or repeat it, or the offset then had seconds)");
            }
            None => return Ok(Converted::TimeAmbiguous),
        },
        (None, None) => None,
    };
    let Some(zone) = zone else {
        if kind == TimeKind::Instant {
            return Err("an instant needs a time zone (none in the value, none configured)");
        }
        return Ok(Converted::TimeDropped);
    };
    out.push('T');
    out.push_str(hour);
    out.push(':');
    out.push_str(t.minute.unwrap_or("00"));
    out.push(':');
    out.push_str(t.second.unwrap_or("00"));
    if t.minute.is_none() || t.second.is_none() {
        status = Converted::Padded;
    }
    if let Some(f) = t.fraction {
        out.push('.');
        out.push_str(f);
    }
    zone.write(out);
    Ok(status)
}

/// A v2 TM (`HH[MM[SS[.S]]]`) as a FHIR time (`hh:mm:ss`).
pub fn write_tm(s: &str, out: &mut String) -> Result<(), &'static str> {
    let s = trim(s);
    let s = s.split(['+', '-']).next().unwrap_or(s);
    let (digits, frac) = match s.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (s, None),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 2 | 4 | 6) {
        return Err("time is not HH[MM[SS]]");
    }
    let p = |a: usize| digits.get(a..a + 2).unwrap_or("00");
    // A leap second (60) only in a minute 59; a TM's zone is left off above.
    if p(0) > "23" || p(2) > "59" || p(4) > "60" || (p(4) == "60" && p(2) != "59") {
        return Err("time of day out of range");
    }
    out.push_str(p(0));
    out.push(':');
    out.push_str(p(2));
    out.push(':');
    out.push_str(p(4));
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) || f.len() > 9 {
            return Err("fraction of a second is not digits");
        }
        out.push('.');
        out.push_str(f);
    }
    Ok(())
}

/// Longest decimal accepted (digits and point): beyond it a value is a warning, so a hostile
/// message cannot put a megabyte number into a Bundle that other readers parse as a double.
pub const MAX_DECIMAL_LEN: usize = 40;

/// An HL7 NM's sign, integer digits without leading zeros and fraction digits, or why it is
/// none (`<0.5`, `POS`, 41 digits).
fn decimal_parts(s: &str) -> Result<(bool, &str, &str), &'static str> {
    let s = trim(s);
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("not a decimal number");
    }
    let int = int.trim_start_matches('0');
    if int.len() + frac.len() > MAX_DECIMAL_LEN {
        return Err("decimal number too long");
    }
    Ok((neg, int, frac))
}

/// Whether `s` is a number [`write_decimal`] writes (the condition `IS NUMERIC`).
pub fn is_decimal(s: &str) -> bool {
    decimal_parts(s).is_ok()
}

/// Normalizes a v2 NM lexically into a JSON/FHIR decimal: `+5` → `5`, `.5` → `0.5`, `007.50` →
/// `7.50`, `5.` → `5`, `-0.0` kept. The digits after the point are kept as written: they carry
/// the precision.
pub fn write_decimal(s: &str, out: &mut String) -> Result<(), &'static str> {
    let (neg, int, frac) = decimal_parts(s)?;
    if neg {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Ok(())
}

/// FHIR integer flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntKind {
    Integer,
    Positive,
    Unsigned,
}

pub fn write_integer(s: &str, kind: IntKind, out: &mut String) -> Result<(), &'static str> {
    let s = trim(s);
    let t = s.strip_prefix('+').unwrap_or(s);
    // "2.0" from a sender that writes NM for a count is still the integer 2.
    let t = match t.split_once('.') {
        Some((i, f)) if f.bytes().all(|b| b == b'0') => i,
        _ => t,
    };
    let v: i64 = t.parse().map_err(|_| "not an integer")?;
    if v > i64::from(i32::MAX) || v < i64::from(i32::MIN) {
        return Err("integer out of range");
    }
    match kind {
        IntKind::Positive if v < 1 => return Err("not a positive integer"),
        IntKind::Unsigned if v < 0 => return Err("not an unsigned integer"),
        _ => {}
    }
    push_int(out, v);
    Ok(())
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" | "true" | "t" | "1" => Some(true),
        "n" | "no" | "false" | "f" | "0" => Some(false),
        _ => None,
    }
}

/// Text as a FHIR string or markdown holds it: white space other than space, tab, CR and LF
/// (a no-break space from Latin-1 data, a vertical tab, U+2028) becomes a space, and any other
/// control character (`\X00\`, `\X1B\` sent as hex, a C1 control) U+FFFD. The R4 pattern `^[ \r\n\t\S]+$`
/// refuses those white spaces and the spec every control character, and one of them would make
/// the whole Bundle invalid. Returns whether a control character was replaced (the sender's
/// text changed, not only its spacing).
pub fn push_text(s: &str, out: &mut String) -> bool {
    push_text_scanned(s, out).0
}

/// [`push_text`], with the byte classes of `s` (its `<` and `:` are those of what was pushed).
pub fn push_text_scanned(s: &str, out: &mut String) -> (bool, Scan) {
    let scan = Scan::of(s);
    if !scan.has(Scan::NON_ASCII | Scan::CONTROL) {
        out.push_str(s);
        return (false, scan);
    }
    let mut replaced = false;
    out.extend(s.chars().map(|c| {
        if c.is_whitespace() && !matches!(c, ' ' | '\t' | '\r' | '\n') {
            ' '
        } else if is_refused_control(c) {
            replaced = true;
            char::REPLACEMENT_CHARACTER
        } else {
            c
        }
    }));
    (replaced, scan)
}

/// A control character no value the mapper writes may hold: C0 other than tab, LF and CR
/// (the spec refuses those in every string), and C1, which FHIR lets by but no sender means
/// (NEL, U+0085, is also white space: text makes it a space before asking this):
/// they are what windows-1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D in a Latin-1
/// message) or a UTF-8 sender's mojibake, and a reader sees nothing where text was.
pub fn is_refused_control(c: char) -> bool {
    (c.is_ascii() && Scan::class(c as u8) & Scan::CONTROL != 0)
        || ('\u{80}'..='\u{9f}').contains(&c)
}

/// Why `s` is not a URI to write (`None`: it is): white space, which no URI holds, or a
/// `urn:oid:` that is not an OID (`urn:oid:urn:oid:1.2`, an authority named in words) or a
/// `urn:uuid:` that is not a UUID, by the validator's own rules for those forms.
pub fn uri_problem(s: &str) -> Option<&'static str> {
    let scan = Scan::of(s);
    let space =
        scan.has(Scan::SPACE) || (scan.has(Scan::NON_ASCII) && s.chars().any(char::is_whitespace));
    if space {
        Some("white space in a URI")
    } else if scan.has(Scan::CONTROL)
        || (scan.has(Scan::NON_ASCII) && s.chars().any(is_refused_control))
    {
        Some("a control character in a URI")
    } else if runs_in_a_browser(s) {
        Some("a URI a browser would run (javascript:, vbscript:, data:)")
    } else if s.starts_with("urn:oid:") && !primitive::is_urn_oid(s) {
        Some("not an OID after urn:oid:")
    } else if s.starts_with("urn:uuid:") && !primitive::is_urn_uuid(s) {
        Some("not a UUID after urn:uuid:")
    } else {
        None
    }
}

/// Whether a URI's scheme is one a browser runs or renders as a page when the URI is followed
/// (an attachment's url shown as a link): `javascript:`, `vbscript:`, `data:`. A scheme is
/// compared in any case, as browsers compare it; an attachment's data has its own element.
fn runs_in_a_browser(s: &str) -> bool {
    // Asked of every URI written: the first byte settles most (`http`, `urn`).
    if !matches!(
        s.as_bytes().first(),
        Some(b'j' | b'J' | b'v' | b'V' | b'd' | b'D')
    ) {
        return false;
    }
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    ["javascript", "vbscript", "data"]
        .iter()
        .any(|k| scheme.eq_ignore_ascii_case(k))
}

/// Collapses whitespace runs and trims (FHIR `code` allows single inner spaces only).
pub fn normalize_code(s: &str, out: &mut String) {
    // Most codes are one word of ASCII: nothing to join.
    if s.bytes().all(|c| c > b' ' && c < 0x80) {
        out.push_str(s);
        return;
    }
    let mut first = true;
    for w in s.split_whitespace() {
        if !first {
            out.push(' ');
        }
        out.push_str(w);
        first = false;
    }
}

/// UUID version 5 (RFC 9562 §5.5): SHA-1 of the namespace and the name.
pub fn uuid_v5(namespace: &[u8; 16], name: &[u8]) -> [u8; 16] {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(namespace);
    h.update(name);
    let d = h.finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x50;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// The id of what `name` names in `namespace`: its UUIDv5 as the Bundle writes it.
pub fn id_of(namespace: &[u8; 16], name: &str) -> [u8; 36] {
    format_uuid(&uuid_v5(namespace, name.as_bytes()))
}

/// `8-4-4-4-12` lower-case hex.
pub fn format_uuid(u: &[u8; 16]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut j = 0;
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            j += 1;
        }
        out[j] = HEX[(b >> 4) as usize];
        out[j + 1] = HEX[(b & 15) as usize];
        j += 2;
    }
    out
}

pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let v = hex::decode(hex).ok()?;
    v.try_into().ok()
}

/// A FHIR instant (`2024-03-05T10:00:00-05:00`) `minutes` later, in the same zone and with
/// its fraction of a second; `None` for what is not a whole instant, or past year 9999.
pub fn add_minutes(instant: &str, minutes: u32) -> Option<String> {
    let ms = crate::fhir::validate::primitive::ms_from_instant(instant)?;
    if instant.len() < 20 {
        return None;
    }
    let zone = match instant.strip_suffix('Z') {
        Some(_) => "Z",
        None => instant.get(instant.len() - 6..)?,
    };
    let offset_ms = match zone.as_bytes() {
        [sign @ (b'+' | b'-'), ..] => {
            let m = zone[1..3].parse::<i64>().ok()? * 60 + zone[4..6].parse::<i64>().ok()?;
            if *sign == b'-' {
                -m * 60_000
            } else {
                m * 60_000
            }
        }
        _ => 0,
    };
    let local = i64::try_from(ms).ok()? + offset_ms + i64::from(minutes) * 60_000;
    let (y, m, d, hh, mm, ss, millis) = crate::hl7::ack::utc_fields(u64::try_from(local).ok()?);
    if y > 9999 {
        return None;
    }
    let mut out = String::with_capacity(instant.len());
    let _ = write!(out, "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}");
    if instant.as_bytes().get(19) == Some(&b'.') {
        let _ = write!(out, ".{millis:03}");
    }
    out.push_str(zone);
    Some(out)
}

/// Unix milliseconds as a FHIR instant in UTC (`Provenance.recorded`).
pub fn instant_from_ms(ms: u64, out: &mut String) {
    let (y, m, d, hh, mm, ss, millis) = crate::hl7::ack::utc_fields(ms);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{millis:03}Z"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_are_added_in_the_instants_own_zone() {
        for (at, minutes, want) in [
            (
                "2024-03-05T10:00:00-05:00",
                30,
                Some("2024-03-05T10:30:00-05:00"),
            ),
            (
                "2024-02-28T23:45:00+05:30",
                30,
                Some("2024-02-29T00:15:00+05:30"),
            ),
            (
                "2023-12-31T23:59:59.5Z",
                1,
                Some("2024-01-01T00:00:59.500Z"),
            ),
            (
                "2024-03-05T10:00:00-05:00",
                0,
                Some("2024-03-05T10:00:00-05:00"),
            ),
            ("9999-12-31T23:00:00Z", 120, None),
            ("2024-03-05", 30, None),
            ("2024-03-05T10:00:00", 30, None),
            ("2024-02-30T10:00:00Z", 30, None),
        ] {
            assert_eq!(add_minutes(at, minutes).as_deref(), want, "{at}");
        }
    }

    #[test]
    fn uris_with_space_or_a_false_oid_or_uuid_are_named() {
        for ok in [
            "http://loinc.org",
            "urn:oid:2.16.840.1.113883.6.1",
            "urn:oid:0.1",
            "urn:uuid:0123abcd-0000-5000-8000-00000000000f",
            "urn:ietf:rfc:3986",
        ] {
            assert_eq!(uri_problem(ok), None, "{ok}");
        }
        for bad in ["urn:oid:not an oid", "http://a b", "urn:oid:\u{a0}1.2"] {
            assert_eq!(uri_problem(bad), Some("white space in a URI"), "{bad}");
        }
        for bad in [
            "urn:oid:urn:oid:1.2",
            "urn:oid:1",
            "urn:oid:3.1",
            "urn:oid:12.3",
            "urn:oid:1.02",
            "urn:oid:1..2",
            "urn:oid:",
        ] {
            assert_eq!(uri_problem(bad), Some("not an OID after urn:oid:"), "{bad}");
        }
        // Upper-case hex is a UUID too (RFC 9562 reads either case).
        assert_eq!(
            uri_problem("urn:uuid:0123ABCD-0000-5000-8000-00000000000F"),
            None
        );
        for bad in [
            "urn:uuid:ID",
            "urn:uuid:0123abcd-0000-5000-8000-00000000000",
        ] {
            assert_eq!(
                uri_problem(bad),
                Some("not a UUID after urn:uuid:"),
                "{bad}"
            );
        }
        let mut out = String::new();
        assert!(!push_text("a\u{a0}b\u{b}c\td\u{2028}e", &mut out));
        assert_eq!(out, "a b c\td e");
        out.clear();
        assert!(push_text("Al\u{0}pha\u{7}\r\n\u{1f}", &mut out));
        assert_eq!(out, "Al\u{fffd}pha\u{fffd}\r\n\u{fffd}");
        assert_eq!(
            uri_problem("urn:x\u{1}"),
            Some("a control character in a URI")
        );
        assert_eq!(
            uri_problem("urn:a\u{81}b"),
            Some("a control character in a URI")
        );
        assert_eq!(uri_problem("urn:caf\u{e9}"), None);
        for bad in [
            "javascript:alert(1)",
            "JaVaScRiPt:x",
            "vbscript:x",
            "data:text/html,<b>",
        ] {
            assert_eq!(
                uri_problem(bad),
                Some("a URI a browser would run (javascript:, vbscript:, data:)"),
                "{bad}"
            );
        }
        assert_eq!(uri_problem("http://h/javascript:x"), None);
        out.clear();
        assert!(push_text("O\u{2019}NE\u{81}IL\u{9f}", &mut out));
        assert_eq!(out, "O\u{2019}NE\u{fffd}IL\u{fffd}");
    }

    fn time(
        s: &str,
        kind: TimeKind,
        zone: Option<&str>,
    ) -> Result<(String, Converted), &'static str> {
        let mut out = String::new();
        let c = write_time(s, kind, zone.and_then(Zone::parse).as_ref(), &mut out)?;
        Ok((out, c))
    }

    /// The shortcut answers as `str::trim` does, on ends of every kind: ASCII letters,
    /// every whitespace character (ASCII, the vertical tab, no-break and ideographic spaces),
    /// multi-byte letters, and the empty string.
    #[test]
    fn trim_agrees_with_str_trim() {
        let ends = [
            "",
            "a",
            "Z",
            "0",
            "-",
            " ",
            "\t",
            "\n",
            "\r",
            "\u{b}",
            "\u{c}",
            "\u{1c}",
            "\u{85}",
            "\u{a0}",
            "\u{3000}",
            "\u{2028}",
            "é",
            "ü",
            "中",
            "\u{1f600}",
        ];
        for a in ends {
            for mid in ["", "x", " y ", "é"] {
                for z in ends {
                    let s = format!("{a}{mid}{z}");
                    assert_eq!(trim(&s), s.trim(), "{s:?}");
                }
            }
        }
    }

    /// One word of ASCII is copied as it is; anything else is joined by single spaces, as
    /// `split_whitespace` reads it (a vertical tab, a no-break space and control bytes too).
    #[test]
    fn codes_collapse_whitespace() {
        let pieces = [
            "", "a", "8480-6", " ", "\t", "\u{b}", "\u{a0}", "\u{1}", "\u{7f}", "é",
        ];
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let s = format!("{a}{b}{c}");
                    let mut out = String::new();
                    normalize_code(&s, &mut out);
                    assert_eq!(
                        out,
                        s.split_whitespace().collect::<Vec<_>>().join(" "),
                        "{s:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn times_keep_precision_and_zone() {
        use TimeKind::*;
        assert_eq!(time("1988", DateTime, None).unwrap().0, "1988");
        assert_eq!(time("198808", DateTime, None).unwrap().0, "1988-08");
        assert_eq!(time("19880818", DateTime, None).unwrap().0, "1988-08-18");
        assert_eq!(
            time("198808181126+0215", DateTime, None).unwrap(),
            ("1988-08-18T11:26:00+02:15".into(), Converted::Padded)
        );
        assert_eq!(
            time("20210817151943.4+0200", DateTime, None).unwrap().0,
            "2021-08-17T15:19:43.4+02:00"
        );
        assert_eq!(
            time("198808181126+0215", Date, None).unwrap().0,
            "1988-08-18"
        );
        assert_eq!(
            time("20240102030405", DateTime, None).unwrap(),
            ("2024-01-02".into(), Converted::TimeDropped)
        );
        assert_eq!(
            time("20240102030405", DateTime, Some("-05:00")).unwrap().0,
            "2024-01-02T03:04:05-05:00"
        );
        assert_eq!(
            time("20240102030405", Instant, Some("Z")).unwrap().0,
            "2024-01-02T03:04:05+00:00"
        );
        assert!(time("20240102", Instant, Some("Z")).is_err());
        // An IANA zone: the offset in force at the time's own date, daylight saving included.
        let ny = Some("America/New_York");
        assert_eq!(
            time("20240715103000", DateTime, ny).unwrap().0,
            "2024-07-15T10:30:00-04:00"
        );
        assert_eq!(
            time("20240115103000", DateTime, ny).unwrap().0,
            "2024-01-15T10:30:00-05:00"
        );
        assert_eq!(
            time("202407151030", Instant, ny).unwrap().0,
            "2024-07-15T10:30:00-04:00"
        );
        // A value's own zone wins over the configured one.
        assert_eq!(
            time("20240715103000+0000", DateTime, ny).unwrap().0,
            "2024-07-15T10:30:00+00:00"
        );
        // 02:30 on 10 March 2024 never happened in New York, and 01:30 on 3 November happened
        // twice: the date alone is kept (an instant fails).
        for gap_or_fold in ["20240310023000", "20241103013000"] {
            assert_eq!(
                time(gap_or_fold, DateTime, ny).unwrap().1,
                Converted::TimeAmbiguous,
                "{gap_or_fold}"
            );
            assert!(time(gap_or_fold, Instant, ny).is_err());
        }
        assert_eq!(time("2024031002", DateTime, ny).unwrap().0, "2024-03-10");
        // A leap second is kept as sent (FHIR allows `:60`), in a named zone too; a 61st
        // second is no time.
        assert_eq!(
            time("20161231235960+0000", Instant, None).unwrap().0,
            "2016-12-31T23:59:60+00:00"
        );
        assert_eq!(
            time("20161231185960", DateTime, ny).unwrap().0,
            "2016-12-31T18:59:60-05:00"
        );
        for not_leap in [
            "20161231235961+0000",
            "20240315103060-0500",
            "20240315103060",
        ] {
            assert_eq!(
                time(not_leap, DateTime, None),
                Err("time of day out of range"),
                "{not_leap}"
            );
        }
        assert_eq!(
            time("20170101052960+0530", DateTime, None).unwrap().0,
            "2017-01-01T05:29:60+05:30"
        );
        let mut tm = String::new();
        assert!(write_tm("235960", &mut tm).is_ok());
        assert_eq!(tm, "23:59:60");
        assert!(write_tm("235961", &mut String::new()).is_err());
        assert!(write_tm("103060", &mut String::new()).is_err());
        for not_a_zone in [
            "Mars/Olympus",
            "../etc/passwd",
            "EST5EDT,M3.2.0,M11.1.0",
            "",
            "New York",
        ] {
            assert!(Zone::parse(not_a_zone).is_none(), "{not_a_zone}");
        }
        assert!(Zone::parse("Europe/Berlin").is_some());
        for bad in [
            "2024130101",
            "20240230",
            "20240101250000",
            "2024-01-01",
            "abc",
            "20240101+99",
            "",
            "2024010112.5",
            "00000101",
        ] {
            assert!(time(bad, DateTime, None).is_err(), "{bad}");
        }
        assert_eq!(time("20240229", Date, None).unwrap().0, "2024-02-29");
        assert!(time("20230229", Date, None).is_err());
    }

    #[test]
    fn decimals_stay_as_written() {
        let d = |s: &str| {
            let mut o = String::new();
            write_decimal(s, &mut o).map(|_| o)
        };
        assert_eq!(d("72.50").unwrap(), "72.50");
        assert_eq!(d("+5").unwrap(), "5");
        assert_eq!(d(".5").unwrap(), "0.5");
        assert_eq!(d("-.5").unwrap(), "-0.5");
        assert_eq!(d("007.50").unwrap(), "7.50");
        assert_eq!(d("5.").unwrap(), "5");
        assert_eq!(d(" 0 ").unwrap(), "0");
        assert_eq!(d("000").unwrap(), "0");
        for bad in [
            "", "+", ".", "1e5", "1,5", "abc", "--1", "1.2.3", "NaN", "<0.5",
        ] {
            assert!(d(bad).is_err(), "{bad}");
            assert!(!is_decimal(bad), "{bad}");
        }
        assert_eq!(d(&"9".repeat(100)), Err("decimal number too long"));
        assert!(!is_decimal(&"9".repeat(100)));
        // Leading zeros do not count towards the length; the condition and the writer agree.
        assert!(is_decimal(&format!("{}1", "0".repeat(100))));
        assert!(is_decimal(" 007.50 "));
    }

    #[test]
    fn integers_and_booleans() {
        let i = |s: &str, k| {
            let mut o = String::new();
            write_integer(s, k, &mut o).map(|_| o)
        };
        assert_eq!(i("+2", IntKind::Integer).unwrap(), "2");
        assert_eq!(i("2.0", IntKind::Positive).unwrap(), "2");
        assert!(i("0", IntKind::Positive).is_err());
        assert!(i("-1", IntKind::Unsigned).is_err());
        assert!(i("99999999999", IntKind::Integer).is_err());
        assert_eq!(parse_bool("Y"), Some(true));
        assert_eq!(parse_bool("n"), Some(false));
        assert_eq!(parse_bool("X"), None);
    }

    #[test]
    fn uuid_v5_matches_rfc_vector() {
        // uuid5(NAMESPACE_DNS, "python.org") from Python's uuid module documentation.
        let ns = parse_uuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8").unwrap();
        let u = uuid_v5(&ns, b"python.org");
        assert_eq!(
            std::str::from_utf8(&format_uuid(&u)).unwrap(),
            "886313e1-3b8a-5372-9b90-0c9aee199e5d"
        );
    }

    #[test]
    fn instants_from_unix_ms() {
        let mut s = String::new();
        instant_from_ms(1_700_000_000_123, &mut s);
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        s.clear();
        instant_from_ms(0, &mut s);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
    }
}
