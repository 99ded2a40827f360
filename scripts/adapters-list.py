#!/usr/bin/env python3
"""Writes src/normalize/defaults.rs: the adapters/ mapping files built into the binary.

    scripts/adapters-list.py        (from the repository root; run after adding or removing a file)

A unit test in that file fails when the list and the directory differ.
"""
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
files = []
for d, _, names in os.walk(os.path.join(ROOT, 'adapters')):
    for n in names:
        if n.endswith('.csv'):
            rel = os.path.relpath(os.path.join(d, n), os.path.join(ROOT, 'adapters')).replace(os.sep, '/')
            files.append(rel)
files.sort()
out = ['//! The built-in mapping set: every file under adapters/, written by scripts/adapters-list.py.',
       '//! A test below fails when this list and the directory differ.',
       '',
       'use std::borrow::Cow;',
       '',
       'use super::files::SourceFile;',
       '',
       'const FILES: &[(&str, &str)] = &[']
for f in files:
    out.append(f'    ("{f}", include_str!("../../adapters/{f}")),')
out += ['];',
        '',
        'pub fn files() -> Vec<SourceFile> {',
        '    FILES',
        '        .iter()',
        '        .map(|(name, text)| SourceFile {',
        '            name: name.to_string(),',
        '            shown: format!("adapters/{name}"),',
        '            text: Cow::Borrowed(text),',
        '            site: false,',
        '        })',
        '        .collect()',
        '}',
        '',
        '#[cfg(test)]',
        'mod tests {',
        '    #[test]',
        '    fn lists_every_file_under_adapters() {',
        '        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("adapters");',
        '        let on_disk = super::super::files::read_dir(&root, false).expect("adapters/");',
        '        let mut names: Vec<String> = on_disk.into_iter().map(|f| f.name).collect();',
        '        names.sort();',
        '        let listed: Vec<String> = super::FILES.iter().map(|(n, _)| n.to_string()).collect();',
        '        assert_eq!(listed, names, "run scripts/adapters-list.py");',
        '    }',
        '}']
open(os.path.join(ROOT, 'src/normalize/defaults.rs'), 'w').write('\n'.join(out) + '\n')
print(f'{len(files)} files')
