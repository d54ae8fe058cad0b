#!/usr/bin/env python3
"""Compares packaging/systemd/glidefs.service with the unit nixos/module.nix renders.

usage: compare-unit.py UNIT_FILE RENDERED_UNIT DOC

Both are parsed into {(section, key): [values]}; repeated lines and whitespace-
separated values of one key are concatenated, so `SystemCallFilter=@system-service
umount2` equals two lines of one value each, as systemd reads them. Every key must
agree, except the deliberate differences, which are read from DOC (docs/nixos.md):
the table rows between `<!-- unit-differences -->` and `<!-- /unit-differences -->`
whose first cell is `` `Section.Key` ``. A listed difference that no longer differs
is an error too, so the list stays true. Exit status 1 on any mismatch.
"""
import re
import sys


def parse(text):
    out = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            section = m.group(1)
            continue
        key, sep, value = line.partition("=")
        if not sep or section is None:
            raise SystemExit(f"unparsable line: {raw!r}")
        key = key.strip()
        value = value.strip()
        if section == "Unit" and key in ("Description",):
            vals = [value]  # free text: compared as one string
        else:
            vals = value.split()
        out.setdefault((section, key), []).extend(vals)
    return out


def differences(doc):
    text = open(doc).read()
    m = re.search(r"<!-- unit-differences -->(.*?)<!-- /unit-differences -->", text, re.S)
    if not m:
        raise SystemExit(f"{doc}: no <!-- unit-differences --> table")
    keys = set()
    for row in m.group(1).splitlines():
        cell = re.match(r"\|\s*`(\w+)\.(\w+)`\s*\|", row)
        if cell:
            keys.add((cell.group(1), cell.group(2)))
    return keys


def main():
    unit_file, rendered, doc = sys.argv[1:4]
    a = parse(open(unit_file).read())
    b = parse(open(rendered).read())
    allowed = differences(doc)
    bad = 0
    same = 0
    for key in sorted(set(a) | set(b)):
        name = f"{key[0]}.{key[1]}"
        va, vb = a.get(key), b.get(key)
        if va == vb:
            same += 1
            if key in allowed:
                bad += 1
                print(f"FAIL {name}: listed as a difference in {doc} but both say {va}")
            continue
        if key in allowed:
            print(f"ok   {name}: deliberate difference (unit {va}, module {vb})")
            continue
        bad += 1
        print(f"FAIL {name}: unit file {va}, module renders {vb}")
    for key in sorted(allowed - set(a) - set(b)):
        bad += 1
        print(f"FAIL {key[0]}.{key[1]}: listed in {doc} but in neither unit")
    print(f"compare-unit: {same} directives agree, {len(allowed)} listed differences, {bad} mismatches")
    sys.exit(1 if bad else 0)


main()
