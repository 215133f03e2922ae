#!/usr/bin/python3
"""Validates JSON read on stdin against a JSON Schema (draft 2020-12).

usage: validate_json.py SCHEMA [--lines]

With --lines every non-empty line is one document (JSON Lines, as
`stats --watch --json` prints). The schema itself is checked first. Prints
each error with its path and exits 1 if there was any; prints
"valid: N document(s)" otherwise. Uses Debian's python3-jsonschema.
"""
import json
import sys

import jsonschema


def main():
    schema_path = sys.argv[1]
    lines = "--lines" in sys.argv[2:]
    with open(schema_path) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    text = sys.stdin.read()
    docs = [l for l in text.splitlines() if l.strip()] if lines else [text]
    if not docs:
        print("no document on stdin", file=sys.stderr)
        return 1
    errors = 0
    for i, d in enumerate(docs):
        instance = json.loads(d)
        for e in sorted(validator.iter_errors(instance), key=lambda e: list(e.path)):
            path = "/".join(str(p) for p in e.absolute_path)
            print(f"document {i}: /{path}: {e.message}", file=sys.stderr)
            errors += 1
    if errors:
        return 1
    print(f"valid: {len(docs)} document(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
