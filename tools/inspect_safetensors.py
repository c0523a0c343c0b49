#!/usr/bin/env python3
"""Prints what a .safetensors file holds: metadata, then each tensor's name,
dtype, shape and byte range, and checks the header against the file size.
Standard library only.

    tools/inspect_safetensors.py FILE [FILE ...] [--values N] [--grep TEXT]

--values N prints the first N values of each tensor (F64, F32, F16, BF16, the
integer types and BOOL). Exit status 1 if a file is malformed.
"""

import argparse
import json
import math
import struct
import sys

# dtype -> (bytes per element, struct format or None for the 16-bit floats)
DTYPES = {
    "F64": (8, "d"), "F32": (4, "f"), "F16": (2, None), "BF16": (2, None),
    "I64": (8, "q"), "I32": (4, "i"), "I16": (2, "h"), "I8": (1, "b"),
    "U64": (8, "Q"), "U32": (4, "I"), "U16": (2, "H"), "U8": (1, "B"), "BOOL": (1, "?"),
    "F8_E4M3": (1, None), "F8_E5M2": (1, None),
}


def half_to_float(bits: int) -> float:
    sign = -1.0 if bits & 0x8000 else 1.0
    exp = (bits >> 10) & 0x1F
    frac = bits & 0x3FF
    if exp == 0:
        return sign * frac * 2.0 ** -24
    if exp == 31:
        return sign * math.inf if frac == 0 else math.nan
    return sign * (1.0 + frac / 1024.0) * 2.0 ** (exp - 15)


def bf16_to_float(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits << 16))[0]


def decode(dtype: str, raw: bytes):
    size, fmt = DTYPES[dtype]
    n = len(raw) // size
    if fmt is not None:
        return list(struct.unpack(f"<{n}{fmt}", raw))
    if dtype in ("F16", "BF16"):
        words = struct.unpack(f"<{n}H", raw)
        conv = half_to_float if dtype == "F16" else bf16_to_float
        return [conv(w) for w in words]
    return list(raw)


def inspect(path: str, values: int, grep: str) -> bool:
    ok = True
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"{path}: {e}")
        return False
    if len(data) < 8:
        print(f"{path}: file of {len(data)} bytes is shorter than the 8-byte header length")
        return False
    (hlen,) = struct.unpack("<Q", data[:8])
    if 8 + hlen > len(data):
        print(f"{path}: header length {hlen} runs past the end of the file ({len(data)} bytes)")
        return False
    try:
        header = json.loads(data[8:8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        print(f"{path}: header is not valid JSON: {e}")
        return False
    base = 8 + hlen
    payload = len(data) - base
    meta = header.pop("__metadata__", None)
    print(f"{path}: {len(header)} tensors, header {hlen} bytes, data {payload} bytes")
    if meta:
        for k, v in meta.items():
            text = v if len(v) <= 200 else v[:200] + f"... ({len(v)} chars)"
            print(f"  metadata {k} = {text}")
    spans = []
    for name in sorted(header):
        info = header[name]
        dtype, shape, (start, end) = info.get("dtype"), info.get("shape"), info.get("data_offsets", (0, 0))
        count = 1
        for s in shape:
            count *= s
        problem = ""
        if dtype not in DTYPES:
            problem = f"unknown dtype {dtype}"
        elif end - start != count * DTYPES[dtype][0]:
            problem = f"byte range {end - start} != {count} x {DTYPES[dtype][0]}"
        elif not 0 <= start <= end <= payload:
            problem = f"byte range [{start}, {end}) outside the data ({payload} bytes)"
        spans.append((start, end, name))
        if grep and grep not in name and not problem:
            continue
        print(f"  {name:50} {dtype:5} {str(shape):20} [{start}, {end})" + (f"  ERROR: {problem}" if problem else ""))
        if problem:
            ok = False
        elif values > 0:
            n = min(values, count)
            size = DTYPES[dtype][0]
            vals = decode(dtype, data[base + start: base + start + n * size])
            print("      " + " ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in vals)
                  + (" ..." if count > n else ""))
    spans.sort()
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            print(f"  ERROR: {n0} [{s0}, {e0}) overlaps {n1} [{s1}, {e1})")
            ok = False
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--values", type=int, default=0, help="print the first N values of each tensor")
    ap.add_argument("--grep", default="", help="list only tensors whose name contains TEXT")
    args = ap.parse_args()
    ok = True
    for path in args.files:
        ok = inspect(path, args.values, args.grep) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
