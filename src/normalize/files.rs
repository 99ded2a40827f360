//! The mapping files in use: the defaults (built in, or `adapters_dir`) with a site's overrides
//! merged over them row by row, and the mapping-set version (a hash of every file's name and bytes).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::csv::{self, Record};
use super::LoadError;

/// One mapping file as read.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path inside the mapping set, `/`-separated (`segments/PID[Patient].csv`).
    pub name: String,
    /// How errors name it (`adapters/segments/PID[Patient].csv` or the path on disk).
    pub shown: String,
    pub text: Cow<'static, str>,
    pub site: bool,
}

/// A merged file: records from the base file with the site's rows applied.
#[derive(Debug, Clone)]
pub struct MergedFile {
    pub name: String,
    pub header: Vec<String>,
    /// Each record with the index of the file it came from (into `Files::sources`).
    pub records: Vec<(usize, Record)>,
}

#[derive(Debug)]
pub struct Files {
    pub sources: Vec<SourceFile>,
    pub merged: BTreeMap<String, MergedFile>,
    pub version: String,
}

/// Where a file stops being UTF-8: its line, and the character on it.
fn not_utf8(p: &Path, bytes: &[u8], e: std::str::Utf8Error) -> LoadError {
    let good = &bytes[..e.valid_up_to()];
    let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
    LoadError::Invalid {
        file: p.display().to_string(),
        line: good.iter().filter(|&&b| b == b'\n').count() + 1,
        reason: format!("character {column}: not UTF-8 (mapping files are UTF-8 text)"),
    }
}

/// What [`read_dir`] found: the files it could read, and one problem per file that is not
/// UTF-8 (named by its line and column).
pub struct Read {
    pub files: Vec<SourceFile>,
    pub not_text: Vec<LoadError>,
}

/// Reads every `*.csv` under `dir` (recursively); a file that is not UTF-8 is named by its line
/// and the others are still read, so that lint names every problem. `Err` only when the
/// directory cannot be read.
pub fn read_dir(dir: &Path, site: bool) -> Result<Read, Vec<LoadError>> {
    fn walk(
        base: &Path,
        dir: &Path,
        site: bool,
        out: &mut Vec<SourceFile>,
        bad_text: &mut Vec<LoadError>,
    ) -> Result<(), LoadError> {
        let io = |e| LoadError::Io {
            path: dir.to_path_buf(),
            source: e,
        };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(base, &p, site, out, bad_text)?;
            } else if p.extension().is_some_and(|e| e == "csv") {
                let bytes = std::fs::read(&p).map_err(|e| LoadError::Io {
                    path: p.clone(),
                    source: e,
                })?;
                let text = match String::from_utf8(bytes) {
                    Ok(t) => t,
                    Err(e) => {
                        bad_text.push(not_utf8(&p, e.as_bytes(), e.utf8_error()));
                        continue;
                    }
                };
                let rel = p
                    .strip_prefix(base)
                    .unwrap_or(&p)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push(SourceFile {
                    name: rel,
                    shown: p.display().to_string(),
                    text: Cow::Owned(text),
                    site,
                });
            }
        }
        Ok(())
    }
    if !dir.is_dir() {
        return Err(vec![LoadError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        }]);
    }
    let (mut files, mut not_text) = (Vec::new(), Vec::new());
    walk(dir, dir, site, &mut files, &mut not_text).map_err(|e| vec![e])?;
    Ok(Read { files, not_text })
}

/// The key a row is replaced by in a site override: which columns identify "the same row".
fn key_columns(name: &str) -> &'static [usize] {
    let dir = name.split('/').next().unwrap_or("");
    match dir {
        // segment, resource, segment map
        "messages" => &[0, 3, 4],
        // source, FHIR path
        "segments" | "datatypes" => &[0, 2],
        // code, system
        "vocabulary" => &[0, 1],
        _ => match name {
            "tables/ids.csv" => &[0, 1],
            "tables/security-labels.csv" => &[0, 1],
            "tables/security-propagation.csv" => &[0, 1],
            _ => &[0],
        },
    }
}

fn key_of(name: &str, r: &Record) -> Vec<String> {
    key_columns(name)
        .iter()
        .map(|&i| r.get(i).replace(' ', ""))
        .collect()
}

/// Reads and merges the files. Every file is read, so that each problem of each file is
/// named at once (a file that does not parse, a row with more or fewer columns than its
/// header, an override whose header differs).
pub fn load(base: Vec<SourceFile>, site: Vec<SourceFile>) -> Result<Files, Vec<LoadError>> {
    let mut sources = base;
    sources.extend(site);
    let mut merged: BTreeMap<String, MergedFile> = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, f) in sources.iter().enumerate() {
        let invalid = |line: usize, reason: String| LoadError::Invalid {
            file: f.shown.clone(),
            line,
            reason,
        };
        let recs = match csv::parse(&f.text) {
            Ok(r) => r,
            Err(e) => {
                errors.push(invalid(e.line, e.reason));
                continue;
            }
        };
        let mut it = recs.into_iter();
        let Some(header) = it.next() else {
            continue;
        };
        let header: Vec<String> = header.fields.iter().map(|h| h.trim().to_string()).collect();
        // A row one column short reads every later value in the wrong column (an identifier
        // written as its system): refused, never guessed at.
        let mut rows: Vec<Record> = it.collect();
        let mut short_or_long = false;
        for r in rows.iter_mut() {
            // Empty columns after the last (a spreadsheet's export) hold nothing to misread.
            while r.fields.len() > header.len()
                && r.fields.last().is_some_and(|f| f.trim().is_empty())
            {
                r.fields.pop();
            }
            if r.fields.len() != header.len() {
                short_or_long = true;
                errors.push(invalid(
                    r.line,
                    format!(
                        "{} columns where the header has {} ({}): leave a column empty, \
                         not out",
                        r.fields.len(),
                        header.len(),
                        header.join(",")
                    ),
                ));
            }
        }
        if short_or_long {
            continue;
        }
        match merged.get_mut(&f.name) {
            None => {
                merged.insert(
                    f.name.clone(),
                    MergedFile {
                        name: f.name.clone(),
                        header,
                        records: rows.into_iter().map(|r| (i, r)).collect(),
                    },
                );
            }
            Some(m) => {
                if header != m.header {
                    errors.push(invalid(
                        1,
                        format!(
                            "the header must be the same as the file it overrides: {}",
                            m.header.join(",")
                        ),
                    ));
                    continue;
                }
                merge_rows(m, i, rows);
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let version = version(&sources);
    Ok(Files {
        sources,
        merged,
        version,
    })
}

/// A site row replaces every base row with its key (at the place of the first); rows with new
/// keys go after the last row about the same source (so a new mapping of a field sits with the
/// others), else at the end; a vocabulary row without a system goes before the rows about its
/// code.
fn merge_rows(m: &mut MergedFile, file: usize, rows: Vec<Record>) {
    let name = m.name.clone();
    let mut by_key: BTreeMap<Vec<String>, Vec<Record>> = BTreeMap::new();
    let mut order: Vec<Vec<String>> = Vec::new();
    for r in rows {
        let k = key_of(&name, &r);
        if !by_key.contains_key(&k) {
            order.push(k.clone());
        }
        by_key.entry(k).or_default().push(r);
    }
    for k in order {
        let new = by_key.remove(&k).unwrap_or_default();
        let positions: Vec<usize> = m
            .records
            .iter()
            .enumerate()
            .filter(|(_, (_, r))| key_of(&name, r) == k)
            .map(|(i, _)| i)
            .collect();
        let tagged: Vec<(usize, Record)> = new.into_iter().map(|r| (file, r)).collect();
        if let Some(&first) = positions.first() {
            for &p in positions.iter().rev() {
                m.records.remove(p);
            }
            m.records.splice(first..first, tagged);
        } else {
            let source = &k[0];
            let about = |r: &Record| r.get(0).replace(' ', "") == *source;
            // A vocabulary row that names no system matches the code whatever its system, and
            // the first row that matches wins: after the base rows about the code it would
            // never be reached (`F,,male` behind `F,HL70001,female`), so it goes before them.
            let wildcard =
                name.starts_with("vocabulary/") && k.get(1).is_some_and(|s| s.is_empty());
            let at = if wildcard {
                m.records.iter().position(|(_, r)| about(r))
            } else {
                m.records.iter().rposition(|(_, r)| about(r)).map(|p| p + 1)
            }
            .unwrap_or(m.records.len());
            m.records.splice(at..at, tagged);
        }
    }
}

/// BLAKE3 over the name and bytes of every file in use, base files before site files, each set
/// sorted by name; hex.
fn version(sources: &[SourceFile]) -> String {
    let mut files: Vec<&SourceFile> = sources.iter().collect();
    files.sort_by(|a, b| (a.site, &a.name).cmp(&(b.site, &b.name)));
    let mut h = blake3::Hasher::new();
    h.update(b"medanchor mapping set v1\0");
    for f in files {
        h.update(if f.site { b"site\0" } else { b"base\0" });
        h.update(&(f.name.len() as u64).to_le_bytes());
        h.update(f.name.as_bytes());
        h.update(&(f.text.len() as u64).to_le_bytes());
        h.update(f.text.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, text: impl Into<Cow<'static, str>>, site: bool) -> SourceFile {
        SourceFile {
            name: name.into(),
            shown: name.into(),
            text: text.into(),
            site,
        }
    }

    #[test]
    fn site_rows_replace_by_key_and_new_rows_join_their_field() {
        let base = f(
            "segments/PID[Patient].csv",
            "field,condition,fhir_path,datatype_map,vocabulary_map,assignment\nPID-3,,identifier[2],CX[Identifier],,\nPID-7,,birthDate,,,\nPID-8,,gender,,,\n",
            false,
        );
        let site = f(
            "segments/PID[Patient].csv",
            "field,condition,fhir_path,datatype_map,vocabulary_map,assignment\nPID-7,NEVER,birthDate,,,\nPID-3,,identifier[9].system,,,\"\"\"urn:x\"\"\"\nPID-99,,active,,,\n",
            true,
        );
        let files = load(vec![base], vec![site]).unwrap();
        let m = &files.merged["segments/PID[Patient].csv"];
        let rows: Vec<String> = m
            .records
            .iter()
            .map(|(i, r)| format!("{i}:{}:{}:{}", r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(
            rows,
            vec![
                "0:PID-3::identifier[2]",
                "1:PID-3::identifier[9].system",
                "1:PID-7:NEVER:birthDate",
                "0:PID-8::gender",
                "1:PID-99::active"
            ]
        );
        let only_base = load(
            vec![f("segments/PID[Patient].csv", "field\nPID-3\n", false)],
            vec![],
        )
        .unwrap();
        assert_ne!(files.version, only_base.version);
        assert_eq!(files.version.len(), 64);
    }

    /// A site's vocabulary row without a system is reached: it goes before the base rows
    /// about its code (after them, the base row with a system would always match first). One
    /// with a system goes after them, as other new rows do.
    #[test]
    fn a_site_vocabulary_row_without_a_system_comes_first() {
        let base = f(
            "vocabulary/AdministrativeSex.csv",
            "code,system,target_code,target_display,target_system\n\
             F,HL70001,female,,\nM,HL70001,male,,\n",
            false,
        );
        let site = f(
            "vocabulary/AdministrativeSex.csv",
            "code,system,target_code,target_display,target_system\n\
             F,,other,,\nM,LOCAL,unknown,,\n",
            true,
        );
        let files = load(vec![base], vec![site]).unwrap();
        let rows: Vec<String> = files.merged["vocabulary/AdministrativeSex.csv"]
            .records
            .iter()
            .map(|(_, r)| format!("{}:{}:{}", r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(
            rows,
            [
                "F::other",
                "F:HL70001:female",
                "M:HL70001:male",
                "M:LOCAL:unknown"
            ]
        );
    }

    #[test]
    fn a_site_file_with_another_header_is_refused() {
        let base = f("settings.csv", "key,value\na,b\n", false);
        let site = f("settings.csv", "key,value,extra\na,c,d\n", true);
        let errors = load(vec![base], vec![site]).unwrap_err();
        assert!(
            matches!(errors[..], [LoadError::Invalid { line: 1, .. }]),
            "{errors:?}"
        );
    }

    /// A row one column short or long is refused by its line (read as it is, the MRN of a
    /// five-column PID-3 row became the identifier's system), and every file's problems are
    /// named, not the first file's alone.
    #[test]
    fn rows_have_their_headers_columns_and_every_file_is_read() {
        let seg = "field,condition,fhir_path,datatype_map,vocabulary_map,assignment\n";
        let short = f(
            "segments/PID[Patient].csv",
            format!("{seg}PID-7,,birthDate,,,\nPID-3,,identifier[2].system,,\n"),
            true,
        );
        let long = f(
            "vocabulary/Local.csv",
            "code,system,target_code,target_display,target_system\nGLU,L,2345-7,,http://loinc.org,x\n",
            true,
        );
        let open = f("settings.csv", "key,value\na,\"b\n", true);
        // Empty columns after the last, as a spreadsheet exports them, are nothing misread.
        let padded = f("tables/message-types.csv", "a,b\nx,y,,\n", true);
        assert!(load(vec![], vec![padded]).is_ok());
        let errors = load(vec![], vec![short, long, open]).unwrap_err();
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(
            shown[0].starts_with("segments/PID[Patient].csv:3: 5 columns where the header has 6"),
            "{shown:?}"
        );
        assert!(
            shown[1].starts_with("vocabulary/Local.csv:2: 6 columns where the header has 5"),
            "{shown:?}"
        );
        assert!(
            shown[2].starts_with("settings.csv:2: a quoted field"),
            "{shown:?}"
        );
    }
}
