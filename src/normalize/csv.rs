//! The small CSV dialect of the mapping files: RFC 4180 quoting (`"a, b"`, `""` for a quote),
//! `#` comment lines, blank lines ignored, the first record a header. Every record keeps the line
//! it starts on, so load errors can name it.

/// One record: its first line (1-based) and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub line: usize,
    pub fields: Vec<String>,
}

impl Record {
    /// Field `i`, trimmed; empty when the record is shorter.
    pub fn get(&self, i: usize) -> &str {
        self.fields.get(i).map(|s| s.trim()).unwrap_or("")
    }
}

/// Why a file is not readable as CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvError {
    pub line: usize,
    pub reason: String,
}

/// Parses `text`; the header is the first record returned.
pub fn parse(text: &str) -> Result<Vec<Record>, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut line = 1usize;
    let mut chars = text.chars().peekable();
    loop {
        // Start of a record: skip blank and comment lines.
        match chars.peek() {
            None => break,
            Some('\n') => {
                chars.next();
                line += 1;
                continue;
            }
            Some('\r') => {
                chars.next();
                continue;
            }
            Some('#') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                line += 1;
                continue;
            }
            _ => {}
        }
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut at_field_start = true;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    return Err(CsvError {
                        line: start,
                        reason: "a quoted field is not closed".into(),
                    });
                }
                fields.push(std::mem::take(&mut field));
                break;
            };
            if quoted {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => quoted = false,
                    '\n' => {
                        line += 1;
                        field.push('\n');
                    }
                    _ => field.push(c),
                }
                continue;
            }
            match c {
                '"' if at_field_start => {
                    quoted = true;
                    at_field_start = false;
                }
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    at_field_start = true;
                }
                '\r' => {}
                '\n' => {
                    line += 1;
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                _ => {
                    field.push(c);
                    if !c.is_whitespace() {
                        at_field_start = false;
                    }
                }
            }
        }
        if fields.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        out.push(Record {
            line: start,
            fields,
        });
    }
    Ok(out)
}

/// Writes one record, quoting where needed (used by tools that write mapping files).
pub fn write_record(fields: &[&str]) -> String {
    let mut s = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        if f.contains([',', '"', '\n']) {
            s.push('"');
            s.push_str(&f.replace('"', "\"\""));
            s.push('"');
        } else {
            s.push_str(f);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_quotes_comments_and_lines() {
        let t = "a,b,c\n# note\n\nPID-6,,\"x, y\",\"\"\"lit\"\"\"\r\nX,\"multi\nline\",z\nlast";
        let r = parse(t).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[1].line, 4);
        assert_eq!(r[1].fields, vec!["PID-6", "", "x, y", "\"lit\""]);
        assert_eq!(r[2].line, 5);
        assert_eq!(r[2].get(1), "multi\nline");
        assert_eq!(r[3].line, 7);
        assert_eq!(r[3].get(5), "");
        assert!(parse("a,\"open").is_err());
    }

    #[test]
    fn write_then_parse_round_trips() {
        let f = ["a", "b,c", "\"q\"", ""];
        let line = write_record(&f);
        let r = parse(&line).unwrap();
        assert_eq!(r[0].fields, f);
    }
}
