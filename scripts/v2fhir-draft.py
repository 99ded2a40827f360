#!/usr/bin/env python3
"""First drafts of adapters/ mapping files from the HL7 v2-to-FHIR implementation guide's CSV tables
(github.com/HL7/v2-to-fhir, mappings/{segments,datatypes,codesystems}).

    scripts/v2fhir-draft.py IG_MAPPINGS_DIR OUT_DIR

Writes OUT_DIR/{segments,datatypes,vocabulary}/NAME.csv in the trimmed column shape the engine
reads. Rows the engine cannot read as they are (narrative assignments such as `/map …/`, paths in
the wrong column, `extension??` placeholders) are kept as `#` comments so a person decides. The
drafts are a starting point: the shipped files under adapters/ are curated from them and are what
the engine reads (`medanchor mapping lint` checks them).
"""
import csv
import os
import re
import sys

SEG_HEADER = 'field,condition,fhir_path,datatype_map,vocabulary_map,assignment'
DT_HEADER = 'component,condition,fhir_path,datatype_map,vocabulary_map,assignment'
VOCAB_HEADER = 'code,system,target_code,target_display,target_system'


def name_of(fname, prefix):
    base = os.path.basename(fname)
    base = base[len(prefix):]
    return re.sub(r' - [^-]*\.csv$', '', base).strip()


def quote(row):
    out = []
    for v in row:
        v = v.replace('\n', ' ').strip()
        if any(c in v for c in ',"'):
            v = '"' + v.replace('"', '""') + '"'
        out.append(v)
    return ','.join(out)


def convert_map(path, header):
    rows = list(csv.reader(open(path, encoding='utf-8-sig')))
    lines = [header]
    for r in rows[2:]:
        r = r + [''] * (19 - len(r))
        ident, cond, attr, dtmap, vocab, assign = r[1], r[6], r[9], r[14], r[15], r[16]
        if not attr.strip():
            continue
        ident = ident.strip()
        cond = ' '.join(cond.split())
        problem = None
        if assign.strip().startswith('/') or '??' in attr or '(' in attr and not re.search(r'\((\w+)\)$', attr.strip()):
            problem = 'narrative or placeholder'
        line = quote([ident, cond, attr.strip(), dtmap.strip(), vocab.strip(), assign.strip()])
        lines.append(('# ' + problem + ': ' + line) if problem else line)
    return '\n'.join(lines) + '\n'


def convert_vocab(path):
    rows = list(csv.reader(open(path, encoding='utf-8-sig')))
    lines = [VOCAB_HEADER]
    for r in rows[2:]:
        r = r + [''] * (12 - len(r))
        if not r[0].strip() or not r[6].strip():
            continue
        lines.append(quote([r[0], r[2], r[6], r[8], r[9]]))
    return '\n'.join(lines) + '\n'


def main():
    ig, out = sys.argv[1], sys.argv[2]
    for sub in ('segments', 'datatypes', 'vocabulary'):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    for f in sorted(os.listdir(os.path.join(ig, 'segments'))):
        if f.endswith('.csv'):
            n = name_of(f, 'HL7 Segment - FHIR R4_ ')
            open(os.path.join(out, 'segments', n + '.csv'), 'w').write(
                convert_map(os.path.join(ig, 'segments', f), SEG_HEADER))
    for f in sorted(os.listdir(os.path.join(ig, 'datatypes'))):
        if f.endswith('.csv'):
            n = name_of(f, 'HL7 Data Type - FHIR R4_ ')
            open(os.path.join(out, 'datatypes', n + '.csv'), 'w').write(
                convert_map(os.path.join(ig, 'datatypes', f), DT_HEADER))
    for f in sorted(os.listdir(os.path.join(ig, 'codesystems'))):
        if f.endswith('.csv'):
            n = name_of(f, 'HL7 Concept Map_ ')
            open(os.path.join(out, 'vocabulary', n + '.csv'), 'w').write(
                convert_vocab(os.path.join(ig, 'codesystems', f)))


main()
