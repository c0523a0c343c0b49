#!/usr/bin/env python3
"""Generates text/unicode_tables.inc: the Unicode data the text layer needs.

    python3 tools/gen_unicode_tables.py [--ucd /usr/share/unicode] \
        [--probe tests/fixtures/tokenizers/unicode_probes.json] > text/unicode_tables.inc

Inputs: the Unicode Character Database of Debian's `unicode-data` package
(Unicode 15.0.0 on Debian 12: `apt-get install unicode-data`), and the
committed probe of what Hugging Face tokenizers' regex engine (Oniguruma)
puts in each general category. tokenizers 0.23.2 was built with a newer
Unicode than Debian 12 ships (its Oniguruma knows the Unicode 16.0
additions), so the probe extends each major category with the code points
Oniguruma assigns there: the major classes (\\p{L}, \\p{N}, ...) then match
Hugging Face exactly. Code points that only the probe knows get the
subcategory the probe names (Lu, Nd) or a representative one (Lo, No, Mn,
Po, So); NFC data stays Unicode 15.0 (the committed NFC probe checks it).

Tables (all sorted by code point):
  kCategoryRuns       {first code point, category} runs covering 0..10FFFF
  kCombiningClasses   {first, last, canonical combining class} for ccc != 0
  kDecompositions     {code point, first, second}: one level of canonical
                      decomposition (second == 0 for singletons); Hangul is
                      algorithmic and not listed
  kCompositions       {first, second, composite}: primary composites
  kSimpleCaseFolding  {code point, folded}: CaseFolding.txt statuses C and S
  kSimpleUpper/Lower  {code point, mapped}: UnicodeData.txt's simple case mappings
  kSpecialUpper/Lower {code point, {mapped...}}: SpecialCasing.txt's unconditional
                      multi-code-point mappings (e.g. U+00DF -> "SS"), for Python's
                      str.upper() / str.lower() in chat templates
  kWordExtra          {first, last}: code points Oniguruma's \\w matches beyond
                      L, M, Nd and Pc (Nl, some So and No), from the probe

tokenizers' NFC normaliser (the unicode-normalization-alignments crate)
predates Unicode 13.0: it does not compose pairs whose composite is newer
(the probe shows U+11938) nor decompose them, so the NFC tables
(decompositions, compositions, combining classes) keep only code points
assigned up to Unicode 12.1 (DerivedAge.txt).
"""
import argparse
import json
import os
import sys

CATEGORIES = ["Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe",
              "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn"]
REPRESENTATIVE = {"L": "Lo", "N": "No", "M": "Mn", "P": "Po", "S": "So", "Z": "Zs", "C": "Cn"}


def read_case_mappings(ucd):
    upper, lower = {}, {}
    for line in open(os.path.join(ucd, "UnicodeData.txt"), encoding="utf-8"):
        r = line.rstrip("\n").split(";")
        cp = int(r[0], 16)
        if r[12]:
            upper[cp] = int(r[12], 16)
        if r[13]:
            lower[cp] = int(r[13], 16)
    return upper, lower


def read_special_casing(ucd):
    """SpecialCasing.txt's unconditional mappings: {cp: (lower, upper)} as lists."""
    out = {}
    for line in open(os.path.join(ucd, "SpecialCasing.txt"), encoding="utf-8"):
        line = line.split("#")[0].strip()
        if not line:
            continue
        f = [x.strip() for x in line.split(";")]
        if len(f) > 4 and f[4]:
            continue  # conditional (final sigma, locales)
        cp = int(f[0], 16)
        out[cp] = ([int(x, 16) for x in f[1].split()], [int(x, 16) for x in f[3].split()])
    return out


def read_unicode_data(ucd):
    gc, ccc, decomp = {}, {}, {}
    rows = [line.rstrip("\n").split(";") for line in open(os.path.join(ucd, "UnicodeData.txt"), encoding="utf-8")]
    i = 0
    while i < len(rows):
        r = rows[i]
        cp = int(r[0], 16)
        if r[1].endswith("First>"):
            last = int(rows[i + 1][0], 16)
            for c in range(cp, last + 1):
                gc[c] = r[2]
            i += 2
            continue
        gc[cp] = r[2]
        if int(r[3]):
            ccc[cp] = int(r[3])
        if r[5] and not r[5].startswith("<"):
            decomp[cp] = [int(x, 16) for x in r[5].split()]
        i += 1
    return gc, ccc, decomp


def read_property(path, name):
    out = set()
    for line in open(path, encoding="utf-8"):
        line = line.split("#")[0].strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(";")]
        if fields[1] != name:
            continue
        a, _, b = fields[0].partition("..")
        out.update(range(int(a, 16), int(b or a, 16) + 1))
    return out


def read_case_folding(ucd):
    out = {}
    for line in open(os.path.join(ucd, "CaseFolding.txt"), encoding="utf-8"):
        line = line.split("#")[0].strip()
        if not line:
            continue
        code, status, mapping = [f.strip() for f in line.split(";")[:3]]
        if status in ("C", "S"):
            out[int(code, 16)] = int(mapping, 16)
    return out


def read_ages(ucd):
    out = {}
    for line in open(os.path.join(ucd, "DerivedAge.txt"), encoding="utf-8"):
        line = line.split("#")[0].strip()
        if not line:
            continue
        r, v = [f.strip() for f in line.split(";")]
        a, _, b = r.partition("..")
        major, minor = v.split(".")
        for c in range(int(a, 16), int(b or a, 16) + 1):
            out[c] = (int(major), int(minor))
    return out


def ranges(cps):
    out = []
    for c in cps:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def expand(ranges):
    s = set()
    for a, b in ranges:
        s.update(range(a, b + 1))
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ucd", default="/usr/share/unicode")
    ap.add_argument("--probe", default="tests/fixtures/tokenizers/unicode_probes.json")
    args = ap.parse_args()
    version = open(os.path.join(args.ucd, "ReadMe.txt"), encoding="utf-8").read()
    gc, ccc, decomp = read_unicode_data(args.ucd)
    probe = json.load(open(args.probe, encoding="utf-8"))["classes"] if args.probe else {}
    extended = 0
    for major in ("L", "N", "M", "P", "S", "Z"):
        for cp in expand(probe.get(major, [])):
            if gc.get(cp, "Cn")[0] != major:
                sub = REPRESENTATIVE[major]
                for exact in ("Lu", "Nd"):
                    if exact[0] == major and cp in expand(probe.get(exact, [])):
                        sub = exact
                gc[cp] = sub
                extended += 1
    # Derived: primary composites are the two-code-point canonical
    # decompositions minus Full_Composition_Exclusion.
    exclusions = read_property(os.path.join(args.ucd, "DerivedNormalizationProps.txt"), "Full_Composition_Exclusion")
    fold = read_case_folding(args.ucd)
    upper, lower = read_case_mappings(args.ucd)
    special = read_special_casing(args.ucd)

    runs = []
    prev = None
    for cp in range(0x110000):
        cat = gc.get(cp, "Cn")
        if 0xD800 <= cp <= 0xDFFF:
            cat = "Cs"
        if cat != prev:
            runs.append((cp, cat))
            prev = cat
    ccc_runs = []
    for cp in sorted(ccc):
        if ccc_runs and ccc_runs[-1][1] == cp - 1 and ccc_runs[-1][2] == ccc[cp]:
            ccc_runs[-1][1] = cp
        else:
            ccc_runs.append([cp, cp, ccc[cp]])
    age = read_ages(args.ucd)
    nfc_known = lambda cp: age.get(cp, (99, 0)) <= (12, 1)  # noqa: E731
    decomp = {cp: d for cp, d in decomp.items() if nfc_known(cp)}
    ccc = {cp: c for cp, c in ccc.items() if nfc_known(cp)}
    comps = sorted((d[0], d[1], cp) for cp, d in decomp.items() if len(d) == 2 and cp not in exclusions)
    word_core = {cp for cp, cat in gc.items() if cat[0] in "LM" or cat in ("Nd", "Pc")}
    word_extra = ranges(sorted(expand(probe.get("w", [])) - word_core))

    w = sys.stdout.write
    w("// Generated by tools/gen_unicode_tables.py; do not edit.\n")
    w("// " + [l for l in version.splitlines() if l.startswith("# Date")][0][2:] + ", Unicode Character Database of\n")
    w("// Debian's unicode-data (15.0.0); general categories extended by the probe of\n")
    w(f"// tokenizers 0.23.2's Oniguruma ({extended} code points it assigns that 15.0 does not).\n")
    w(f"// {len(runs)} category runs, {len(ccc_runs)} combining-class runs, {len(decomp)} decompositions,\n")
    w(f"// {len(comps)} compositions (composites up to Unicode 12.1), {len(fold)} case foldings,\n")
    w(f"// {len(word_extra)} extra word-character ranges.\n\n")
    w("static constexpr CategoryRun kCategoryRuns[] = {\n")
    for i in range(0, len(runs), 6):
        w("    " + " ".join(f"{{0x{cp:X}, GeneralCategory::k{cat}}}," for cp, cat in runs[i:i + 6]) + "\n")
    w("};\n\nstatic constexpr CombiningClassRun kCombiningClasses[] = {\n")
    for i in range(0, len(ccc_runs), 6):
        w("    " + " ".join(f"{{0x{a:X}, 0x{b:X}, {c}}}," for a, b, c in ccc_runs[i:i + 6]) + "\n")
    w("};\n\nstatic constexpr Decomposition kDecompositions[] = {\n")
    items = sorted(decomp.items())
    for i in range(0, len(items), 5):
        w("    " + " ".join(f"{{0x{cp:X}, 0x{d[0]:X}, 0x{(d[1] if len(d) > 1 else 0):X}}},"
                           for cp, d in items[i:i + 5]) + "\n")
    w("};\n\nstatic constexpr Composition kCompositions[] = {\n")
    for i in range(0, len(comps), 5):
        w("    " + " ".join(f"{{0x{a:X}, 0x{b:X}, 0x{c:X}}}," for a, b, c in comps[i:i + 5]) + "\n")
    w("};\n\nstatic constexpr CaseFold kSimpleCaseFolding[] = {\n")
    items = sorted(fold.items())
    for i in range(0, len(items), 6):
        w("    " + " ".join(f"{{0x{a:X}, 0x{b:X}}}," for a, b in items[i:i + 6]) + "\n")
    for name, table in (("kSimpleUpper", upper), ("kSimpleLower", lower)):
        w(f"}};\n\nstatic constexpr CaseFold {name}[] = {{\n")
        items = sorted(table.items())
        for i in range(0, len(items), 6):
            w("    " + " ".join(f"{{0x{a:X}, 0x{b:X}}}," for a, b in items[i:i + 6]) + "\n")
    for name, index in (("kSpecialLower", 0), ("kSpecialUpper", 1)):
        w(f"}};\n\nstatic constexpr SpecialCase {name}[] = {{\n")
        items = [(cp, m[index]) for cp, m in sorted(special.items()) if len(m[index]) > 1]
        assert all(len(x) <= 3 for _, x in items)
        for i in range(0, len(items), 4):
            w("    " + " ".join("{0x%X, {%s}}," % (cp, ", ".join(f"0x{c:X}" for c in x)) for cp, x in items[i:i + 4]) + "\n")
    w("};\n\nstatic constexpr WordRange kWordExtra[] = {\n")
    for i in range(0, len(word_extra), 6):
        w("    " + " ".join(f"{{0x{a:X}, 0x{b:X}}}," for a, b in word_extra[i:i + 6]) + "\n")
    w("};\n")
    assert all(len(d) <= 2 for d in decomp.values())


if __name__ == "__main__":
    main()
