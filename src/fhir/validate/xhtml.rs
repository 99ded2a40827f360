//! Narrative XHTML (`Narrative.div`): well-formed XML whose root is an XHTML `div`, only the
//! elements and attributes of R4's `txt-1`, no scripts, event handlers or `javascript:` links,
//! only XML's own entities, and some content (`txt-2`). A single pass, no recursion: nesting is
//! a stack on the heap.

/// `txt-1`: the basic HTML formatting elements (FHIR R4 narrative.html).
const ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "b",
    "big",
    "blockquote",
    "br",
    "caption",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "li",
    "ol",
    "p",
    "pre",
    "q",
    "samp",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "ul",
    "var",
];

/// `txt-1`: the attributes allowed on them.
const ATTRIBUTES: &[&str] = &[
    "abbr",
    "accesskey",
    "align",
    "alt",
    "axis",
    "bgcolor",
    "border",
    "cellhalign",
    "cellpadding",
    "cellspacing",
    "cellvalign",
    "char",
    "charoff",
    "charset",
    "cite",
    "class",
    "colspan",
    "compact",
    "coords",
    "dir",
    "frame",
    "headers",
    "height",
    "href",
    "hreflang",
    "hspace",
    "id",
    "lang",
    "longdesc",
    "name",
    "nowrap",
    "rel",
    "rev",
    "rowspan",
    "rules",
    "scope",
    "shape",
    "span",
    "src",
    "start",
    "style",
    "summary",
    "tabindex",
    "title",
    "type",
    "valign",
    "value",
    "vspace",
    "width",
    "xmlns",
    "xml:lang",
    "xml:space",
];

const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";

/// What is wrong with a narrative, as a rule name and a message without content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub invariant: bool,
    pub message: String,
}

fn problem(invariant: bool, message: impl Into<String>) -> Problem {
    Problem {
        invariant,
        message: message.into(),
    }
}

/// Checks one `div`. Messages name the rule, never the markup found (the narrative is content).
pub fn check(div: &str) -> Result<(), Problem> {
    let s = div.as_bytes();
    let mut i = 0;
    let mut stack: Vec<&str> = Vec::new();
    let mut seen_root = false;
    let mut content = false;
    while i < s.len() {
        if s[i] == b'<' {
            if s[i..].starts_with(b"<!--") {
                let end =
                    find(s, i + 4, b"-->").ok_or_else(|| problem(false, "unclosed XML comment"))?;
                i = end + 3;
                continue;
            }
            if s[i..].starts_with(b"<![CDATA[") {
                let end = find(s, i + 9, b"]]>")
                    .ok_or_else(|| problem(false, "unclosed CDATA section"))?;
                if stack.is_empty() {
                    return Err(problem(false, "text outside the root div"));
                }
                content |= s[i + 9..end].iter().any(|b| !b.is_ascii_whitespace());
                i = end + 3;
                continue;
            }
            if s.get(i + 1).is_some_and(|b| *b == b'!' || *b == b'?') {
                return Err(problem(
                    false,
                    "processing instructions and DOCTYPE are not allowed in a narrative",
                ));
            }
            let closing = s.get(i + 1) == Some(&b'/');
            let start = if closing { i + 2 } else { i + 1 };
            let name_end = scan_name(s, start);
            if name_end == start {
                return Err(problem(
                    false,
                    "not well-formed XHTML: '<' not starting a tag",
                ));
            }
            let name = &div[start..name_end];
            let local = name.rsplit(':').next().unwrap_or(name);
            if closing {
                let mut j = skip_ws(s, name_end);
                if s.get(j) != Some(&b'>') {
                    return Err(problem(false, "not well-formed XHTML: bad end tag"));
                }
                j += 1;
                match stack.pop() {
                    Some(open) if open == name => {}
                    _ => {
                        return Err(problem(
                            false,
                            "not well-formed XHTML: an end tag does not match its start tag",
                        ))
                    }
                }
                i = j;
                continue;
            }
            let is_root = stack.is_empty();
            if is_root {
                if seen_root {
                    return Err(problem(
                        false,
                        "the narrative must have a single root element",
                    ));
                }
                if local != "div" {
                    return Err(problem(
                        true,
                        "the narrative's root element must be an XHTML div",
                    ));
                }
                seen_root = true;
            }
            if !ELEMENTS.contains(&local) {
                return Err(problem(
                    true,
                    "txt-1: an element that is not basic HTML formatting (such as script, style, \
                     iframe or form) is not allowed in a narrative",
                ));
            }
            if local == "img" {
                content = true;
            }
            // Attributes.
            let mut j = name_end;
            let mut xmlns_ok = false;
            loop {
                let k = skip_ws(s, j);
                match s.get(k) {
                    None => return Err(problem(false, "not well-formed XHTML: unclosed tag")),
                    Some(b'>') => {
                        stack.push(name);
                        j = k + 1;
                        break;
                    }
                    Some(b'/') if s.get(k + 1) == Some(&b'>') => {
                        j = k + 2;
                        break;
                    }
                    _ => {}
                }
                if k == j {
                    return Err(problem(
                        false,
                        "not well-formed XHTML: attributes must be separated",
                    ));
                }
                let an_end = scan_name(s, k);
                if an_end == k {
                    return Err(problem(false, "not well-formed XHTML: bad attribute"));
                }
                let attr = &div[k..an_end];
                let mut m = skip_ws(s, an_end);
                if s.get(m) != Some(&b'=') {
                    return Err(problem(
                        false,
                        "not well-formed XHTML: attribute without value",
                    ));
                }
                m = skip_ws(s, m + 1);
                let quote = match s.get(m) {
                    Some(q @ (b'"' | b'\'')) => *q,
                    _ => return Err(problem(false, "not well-formed XHTML: unquoted attribute")),
                };
                let vend = s[m + 1..]
                    .iter()
                    .position(|b| *b == quote)
                    .map(|p| m + 1 + p)
                    .ok_or_else(|| problem(false, "not well-formed XHTML: unclosed attribute"))?;
                let value = &div[m + 1..vend];
                if value.contains('<') {
                    return Err(problem(false, "not well-formed XHTML: '<' in an attribute"));
                }
                check_entities(value)?;
                let lower = attr.to_ascii_lowercase();
                if lower.starts_with("on") {
                    return Err(problem(
                        true,
                        "txt-1: event handler attributes (on...) are not allowed in a narrative",
                    ));
                }
                if !ATTRIBUTES.contains(&lower.as_str()) && !lower.starts_with("xmlns:") {
                    return Err(problem(
                        true,
                        "txt-1: an attribute outside the narrative's allowed set",
                    ));
                }
                if matches!(lower.as_str(), "href" | "src" | "longdesc" | "cite") {
                    // As the browser reads it: `java&#x09;script:` and `&#106;avascript:` are
                    // script URLs too.
                    if super::primitive::is_script_url(value) {
                        return Err(problem(
                            true,
                            "txt-1: script URLs are not allowed in a narrative",
                        ));
                    }
                }
                if lower == "xmlns" {
                    xmlns_ok = value == XHTML_NS;
                    if !xmlns_ok {
                        return Err(problem(
                            false,
                            "the narrative must be in the XHTML namespace",
                        ));
                    }
                }
                j = vend + 1;
            }
            if is_root && !xmlns_ok {
                return Err(problem(
                    false,
                    "the narrative's div must declare the XHTML namespace (xmlns=\"http://www.w3.org/1999/xhtml\")",
                ));
            }
            i = j;
            continue;
        }
        // Text.
        if stack.is_empty() {
            if !s[i].is_ascii_whitespace() {
                return Err(problem(false, "text outside the root div"));
            }
            i += 1;
            continue;
        }
        let end = s[i..]
            .iter()
            .position(|b| *b == b'<')
            .map_or(s.len(), |p| i + p);
        let text = &div[i..end];
        check_entities(text)?;
        content |= text.bytes().any(|b| !b.is_ascii_whitespace());
        i = end;
    }
    if !seen_root {
        return Err(problem(true, "the narrative must be an XHTML div element"));
    }
    if !stack.is_empty() {
        return Err(problem(false, "not well-formed XHTML: unclosed element"));
    }
    if !content {
        return Err(problem(
            true,
            "txt-2: the narrative must have some non-whitespace content",
        ));
    }
    Ok(())
}

fn find(s: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    s.get(from..)?
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| from + p)
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

fn scan_name(s: &[u8], mut i: usize) -> usize {
    while s
        .get(i)
        .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.'))
    {
        i += 1;
    }
    i
}

/// Only XML's five entities and character references (`&#NN;`, `&#xHH;`).
fn check_entities(text: &str) -> Result<(), Problem> {
    let mut rest = text;
    while let Some(p) = rest.find('&') {
        rest = &rest[p + 1..];
        let end = rest
            .find(';')
            .filter(|e| *e <= 32)
            .ok_or_else(|| problem(false, "not well-formed XHTML: '&' not starting an entity"))?;
        let name = &rest[..end];
        let ok = match name {
            "lt" | "gt" | "amp" | "quot" | "apos" => true,
            _ => {
                if let Some(hex) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                    !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
                } else if let Some(dec) = name.strip_prefix('#') {
                    !dec.is_empty() && dec.bytes().all(|b| b.is_ascii_digit())
                } else {
                    false
                }
            }
        };
        if !ok {
            return Err(problem(
                false,
                "invalid entity in the XHTML (only XML's five entities and character references \
                 are defined)",
            ));
        }
        rest = &rest[end + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = r#"<div xmlns="http://www.w3.org/1999/xhtml">"#;

    #[test]
    fn good_narratives() {
        for d in [
            format!("{NS}<p>Hello <b>you</b> &amp; &#169; &#xA9;</p><br/></div>"),
            format!("{NS}<table><tr><td colspan=\"2\">x</td></tr></table></div>"),
            format!("{NS}<img src=\"#a\" alt=\"\"/></div>"),
            format!("\n  {NS}<!-- c --><a href=\"http://x\" name=\"n\">x</a></div>\n"),
        ] {
            assert_eq!(check(&d), Ok(()), "{d}");
        }
    }

    #[test]
    fn bad_narratives() {
        for (d, invariant) in [
            (format!("{NS}text <script>s</script></div>"), true),
            (format!("{NS}<p onclick=\"x()\">t</p></div>"), true),
            (format!("{NS}<a href=\" JavaScript:x()\">t</a></div>"), true),
            (format!("{NS}&reg;</div>"), false),
            (format!("{NS}<p>t</div>"), false),
            (format!("{NS}   </div>"), true),
            ("<div>text</div>".to_string(), false),
            (format!("<p xmlns=\"{XHTML_NS}\">t</p>"), true),
            (format!("{NS}t</div><div>u</div>"), false),
            ("plain text".to_string(), false),
            (String::new(), true),
        ] {
            let e = check(&d).expect_err(&d);
            assert_eq!(e.invariant, invariant, "{d}: {e:?}");
        }
    }

    #[test]
    fn deep_nesting_is_no_problem() {
        let d = format!(
            "{NS}{}x{}</div>",
            "<b>".repeat(100_000),
            "</b>".repeat(100_000)
        );
        assert_eq!(check(&d), Ok(()));
    }
}
