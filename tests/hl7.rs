//! Tokenizer, escapes, character sets and batches against public vectors (tests/fixtures, see
//! SOURCES.md) and against hl7-parser as a differential oracle.

use std::path::Path;

use medanchor::hl7::{
    decode_escapes, decode_escapes_as, split_batch, Charset, Delimiters, Formatting, Message,
    ParseError, MAX_FORMAT_REPEAT,
};
use serde_json::Value;

fn fixture(p: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hl7")
            .join(p),
    )
    .unwrap()
}

fn delims_of(spec: &str) -> Delimiters {
    if spec == "default" {
        return Delimiters::default();
    }
    let m = format!("{spec}\r");
    *Message::parse(m.as_bytes()).unwrap().delimiters()
}

#[test]
fn escape_vectors_decode_as_listed() {
    let v: Value = serde_json::from_slice(&fixture("wokket/escape_vectors.json")).unwrap();
    let mut n = 0;
    for c in v["vectors"].as_array().unwrap() {
        let d = delims_of(c["delimiters"].as_str().unwrap());
        let got = decode_escapes(c["input"].as_str().unwrap(), &d, Charset::Ascii);
        assert_eq!(got, c["expected"].as_str().unwrap(), "{}", c["test"]);
        n += 1;
    }
    let v: Value = serde_json::from_slice(&fixture("python-hl7/escape_vectors.json")).unwrap();
    for c in v["vectors"].as_array().unwrap() {
        let input = c["input"].as_str().unwrap();
        // python-hl7 replaces \H\ and \N\ with "_" (its own choice, noted in the file); medanchor
        // keeps unknown and formatting escapes verbatim, as rust-hl7's vectors above expect.
        if c["op"] != "unescape" || input.contains("\\H\\") {
            continue;
        }
        let got = decode_escapes(input, &Delimiters::default(), Charset::Ascii);
        assert_eq!(got, c["expected"].as_str().unwrap(), "{input}");
        n += 1;
    }
    assert_eq!(n, 14 + 7);
}

/// Formatted text as plain text (the mapper's view): highlighting marks dropped, line and skip
/// commands as line breaks and spaces, modes and indents dropped; a count is capped, and what is
/// not a formatting command stays as sent.
#[test]
fn formatting_commands_become_plain_text() {
    let d = Delimiters::default();
    let plain = |s: &str| decode_escapes_as(s, &d, Charset::Ascii, Formatting::Plain);
    for (input, want) in [
        ("\\H\\HIGH\\N\\ glucose", "HIGH glucose"),
        ("one\\.sp\\two\\.sp2\\three", "one\ntwo\n\nthree"),
        ("a\\.br\\b\\.ce\\c", "a\nb\nc"),
        ("a\\.sk3\\b", "a   b"),
        ("\\.in+4\\\\.ti-2\\\\.fi\\\\.nf\\x", "x"),
        ("\\.in4\\x", "x"),
        // Not formatting commands: kept as sent.
        (
            "\\.zz\\ \\.spx\\ \\.ce1\\ \\Zloc\\",
            "\\.zz\\ \\.spx\\ \\.ce1\\ \\Zloc\\",
        ),
    ] {
        assert_eq!(plain(input), want, "{input}");
    }
    // A hostile count is capped (not 999,999,999 line breaks), and an overflowing one too.
    assert_eq!(plain("\\.sp999999999\\").len(), MAX_FORMAT_REPEAT);
    assert_eq!(
        plain("\\.sk99999999999999999999999\\").len(),
        MAX_FORMAT_REPEAT
    );
    // Kept as sent by the parser's own decoding.
    assert_eq!(
        decode_escapes("\\H\\x\\N\\\\.sp\\", &d, Charset::Ascii),
        "\\H\\x\\N\\\\.sp\\"
    );
}

#[test]
fn escapes_in_multibyte_text_and_charsets() {
    let d = Delimiters::default();
    assert_eq!(
        decode_escapes("Zoë \\T\\ 日本\\F\\語", &d, Charset::Utf8),
        "Zoë & 日本|語"
    );
    assert_eq!(
        decode_escapes("\\XC3A9\\t\\.br\\x", &d, Charset::Utf8),
        "ét\nx"
    );
    // A message in UTF-8 with an escape right after non-ASCII text.
    let raw =
        "MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rNTE|1||Müller\\T\\Søn\\E\\x"
            .as_bytes();
    let m = Message::parse(raw).unwrap();
    let nte = m.segment(b"NTE").unwrap();
    assert_eq!(m.text(nte.field(3).raw()).unwrap(), "Müller&Søn\\x");
    // 8859/1: byte 0xE9 is é.
    let raw = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5||||||8859/1\rPID|1||1||Ren\xe9e\\S\\X";
    let m = Message::parse(raw).unwrap();
    assert_eq!(
        m.text(m.segment(b"PID").unwrap().field(5).raw()).unwrap(),
        "Renée^X"
    );
    // GB 18030: a trail byte equal to '|' must not split the field once transcoded.
    let (gb, _, _) = encoding_rs::GB18030
        .encode("MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5||||||GB 18030-2000\rPID|1||1||丨乇乊\r");
    assert!(Message::parse(&gb).unwrap().charset().needs_transcoding());
    let rec = medanchor::pipeline::decode(
        &bytes::Bytes::from(gb.into_owned()),
        medanchor::envelope::FormatHint::Hl7v2,
        &medanchor::envelope::Origin::Local { name: "t".into() },
        0,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(rec.meta.control_id, "1");
    // Unknown charsets are refused by name (as a charset, not as some other parse error).
    assert!(matches!(
        Message::parse(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5||||||KLINGON\r"),
        Err(ParseError::UnsupportedCharset)
    ));
}

#[test]
fn delimiters_line_endings_bom_and_truncation_character() {
    let raw = b"\xEF\xBB\xBFMSH$%~\\&#$A$B\r\nPID$1$$123%%%HOSP%MR\n\nOBX$1\r";
    let m = Message::parse(raw).unwrap();
    let d = m.delimiters();
    assert_eq!(
        (d.field, d.component, d.truncation),
        (b'$', b'%', Some(b'#'))
    );
    assert_eq!(m.segment_count(), 3);
    let pid = m.segment(b"PID").unwrap();
    assert_eq!(pid.field(3).component(1).raw(), b"123");
    assert_eq!(pid.field(3).component(4).raw(), b"HOSP");
    assert_eq!(m.msh().field(1).raw(), b"$");
    assert_eq!(m.msh().field(2).raw(), b"%~\\&#");
    assert_eq!(m.msh().field(3).raw(), b"A");
    // python-hl7's non-standard separators file parses.
    let ns = fixture("python-hl7/nonstandard_separators.hl7");
    assert!(Message::parse(&ns).is_ok());
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    for bad in [
        &b""[..],
        b"   ",
        b"PID|1",
        b"MSH",
        b"MSH|",
        b"MSH|^^\r",
        b"MSH|^~\\&\rpid|1",
        b"MSH|^~\\&\rPI",
        b"MSHa^~",
    ] {
        assert!(
            Message::parse(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn python_hl7_batches_split_or_fail_as_upstream_expects() {
    let index: Value = serde_json::from_slice(&fixture("python-hl7/index.json")).unwrap();
    let mut checked = 0;
    for e in index.as_array().unwrap() {
        let file = e["file"]
            .as_str()
            .unwrap()
            .trim_start_matches("_extracted/");
        let Some(expected) = e["expected"].as_str() else {
            continue;
        };
        let bytes = fixture(&format!("python-hl7/{file}"));
        let result = split_batch(&bytes);
        if expected.starts_with("ParseException") {
            let err = result.expect_err(file);
            assert!(!err.to_string().is_empty());
            checked += 1;
        } else if expected.contains("message") || expected.contains("batch") {
            let msgs = result.unwrap_or_else(|e| panic!("{file}: {e}"));
            let want = e["segments"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| *s == "MSH")
                .count();
            assert_eq!(msgs.len(), want, "{file}");
            for m in msgs {
                assert!(m.starts_with(b"MSH"));
                Message::parse(m).unwrap();
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 18, "every batch/file vector was exercised");
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hl7/microsoft");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_microsoft_sample_parses_and_matches_hl7_parser() {
    let samples = corpus();
    assert_eq!(samples.len(), 139);
    let mut compared = 0;
    for (name, raw) in &samples {
        let m = Message::parse(raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Oracle: hl7-parser (it panics on some inputs, so it runs under catch_unwind and
        // only on the BOM-less text it accepts).
        let text = String::from_utf8_lossy(raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw))
            .replace("\r\n", "\r")
            .replace('\n', "\r");
        let text = text.trim_end_matches('\r').to_string();
        let oracle = std::panic::catch_unwind(|| {
            hl7_parser::parse_message(&text).ok().map(|o| {
                o.segments
                    .iter()
                    .map(|s| (s.name.to_string(), s.fields.len()))
                    .collect::<Vec<_>>()
            })
        });
        let Ok(Some(theirs)) = oracle else { continue };
        let ours: Vec<(String, usize)> = m
            .segments()
            .map(|s| {
                let n = s.fields().count();
                (
                    String::from_utf8_lossy(s.id()).into_owned(),
                    if s.id() == b"MSH" { n + 1 } else { n },
                )
            })
            .collect();
        assert_eq!(ours.len(), theirs.len(), "{name}: segment count");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a.0, b.0, "{name}");
        }
        compared += 1;
    }
    assert!(compared > 100, "hl7-parser compared on {compared} samples");
}

/// The batch splitter skips the lines the tokenizer skips: a file ending in a DOS ^Z, a blank
/// line before the first header or after the trailer, still splits.
#[test]
fn batches_skip_the_blank_lines_messages_skip() {
    let batch = b" \r\nFHS|^~\\&\rBHS|^~\\&\rMSH|^~\\&|A|B\rPID|1\r\t\rMSH|^~\\&|A|C\rPID|2\rBTS|2\rFTS|1\r\x1a";
    let msgs = split_batch(batch).expect("splits");
    assert_eq!(msgs.len(), 2);
    for m in msgs {
        let parsed = Message::parse(m).expect("each part is one message");
        assert_eq!(parsed.segments().count(), 2);
    }
    // A line of text is still no blank line.
    assert!(split_batch(b"MSH|^~\\&|A\rPID|1\rFTS|0\rX").is_err());
}
