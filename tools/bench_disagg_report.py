#!/usr/bin/env python3
"""The table of tools/bench_disagg.sh, and its checks.

Reads the runs (one JSON object per line: the request's settings plus what
`seer generate --json` printed), the HF transformers log and the fp8 error
log, prints one markdown table, and exits 1 (naming what is wrong) when:
  - a request failed or generated fewer tokens than asked;
  - a transport other than the one asked for moved the KV (after the
    integration the summary says which one did), unless --allow-fallback;
  - nccl and grpc (both bf16) gave different greedy tokens for the same
    prompt and sparsity (the KV must be the same bytes);
  - a field the table needs is missing from a transport's summary.

    python3 tools/bench_disagg_report.py RUNS.jsonl [--hf HF.log] [--wire-error ERR.log] [--allow-fallback]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("--hf", default="")
    ap.add_argument("--wire-error", default="")
    ap.add_argument("--allow-fallback", action="store_true")
    ap.add_argument("--legacy", action="store_true", help="servers without transports: no kv_transfer field")
    args = ap.parse_args()

    problems = []
    runs = []
    with open(args.runs) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                runs.append(json.loads(line))
            except ValueError as e:
                problems.append(f"{args.runs}:{n}: not JSON ({e})")

    # Several repeats of one (length, sparsity, transport): the median row.
    groups = defaultdict(list)
    for r in runs:
        key = (r["tokens_in"], r["sparsity"], r["transport"])
        if r.get("rc", 0) != 0 or "result" not in r:
            problems.append(f"{key}: seer generate failed (exit {r.get('rc')}): {r.get('error', '')[:300]}")
            continue
        res = r["result"]
        if len(res.get("tokens", [])) != r["new_tokens"] and res.get("finish_reason") != "stop":
            problems.append(f"{key}: {len(res.get('tokens', []))} tokens, asked {r['new_tokens']}")
        kv = res.get("kv_transfer")
        if kv is None and not args.legacy:
            problems.append(f"{key}: the summary has no kv_transfer (servers without the transport integration?)")
        want = "nccl" if r["transport"] == "nccl" else "grpc"
        if kv is not None and kv.get("transport") != want and not args.allow_fallback:
            problems.append(f"{key}: asked {r['transport']}, the KV moved over {kv.get('transport')} "
                            f"({kv.get('fallback_reason', '')})")
        if kv is not None and r["transport"].endswith("fp8") and kv.get("wire") != "fp8" and not args.allow_fallback:
            problems.append(f"{key}: asked fp8 on the wire, got {kv.get('wire')} ({kv.get('fallback_reason', '')})")
        groups[key].append(r)

    # Greedy tokens: bf16 transports must agree exactly; fp8 is reported.
    tokens = {}
    for key, rs in groups.items():
        tokens[key] = rs[0]["result"]["tokens"]
    for (n, sp, t), toks in tokens.items():
        if t == "nccl" and (n, sp, "grpc") in tokens and tokens[(n, sp, "grpc")] != toks:
            problems.append(f"{n} tokens {sp}: nccl and grpc generated different tokens")

    print("| prompt tokens | sparsity | transport | TTFT at the client ms | prefill compute ms | TTFT / prefill "
          "| KV GB | KV s | KV GB/s | prefill blocked ms | inter-token ms | tokens = grpc bf16 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2])):
        rs = groups[key]
        med = lambda f: statistics.median([f(r["result"]) for r in rs])
        ttft = med(lambda x: x["ttft_ms"])
        prefill = med(lambda x: x["prefill_ms"])
        kv = rs[0]["result"].get("kv_transfer") or {}
        kv_bytes = kv.get("bytes") or rs[0]["result"].get("kv_bytes")
        kv_s = med(lambda x: (x.get("kv_transfer") or {}).get("seconds", x["kv_transfer_ms"] / 1e3))
        blocked = med(lambda x: (x.get("kv_transfer") or {}).get("blocked_ms", float("nan"))) if kv else None
        ntok = len(rs[0]["result"]["tokens"])
        itl = med(lambda x: (x["total_ms"] - x["ttft_ms"]) / max(1, len(x["tokens"]) - 1)) if ntok > 1 else None
        ref = tokens.get((key[0], key[1], "grpc"))
        same = "-" if ref is None or key[2] == "grpc" else (
            "yes" if ref == tokens[key] else f"{sum(a == b for a, b in zip(ref, tokens[key]))}/{len(ref)}")
        name = key[2] + ("" if kv.get("grpc_streams", 1) <= 1 or key[2] == "nccl" else f" ({kv['grpc_streams']} streams)")
        print(f"| {key[0]} | {key[1]} | {name} | {ttft:.1f} | {prefill:.1f} | {ttft / prefill:.3f} | "
              f"{kv_bytes / 1e9:.4g} | {kv_s:.4g} | {kv_bytes / 1e9 / kv_s if kv_s > 0 else 0:.3g} | "
              f"{fmt(blocked)} | {fmt(itl, '.2f')} | {same} |")

    if args.hf:
        try:
            hf = open(args.hf).read()
            rows = re.findall(r"^\| (\d+) \| ([0-9.]+|OOM[^|]*) \|", hf, re.M)
            for n, ms in rows:
                print(f"| {n} | dense | HF transformers sdpa, monolithic | - | {ms} | - | - | - | - | - | - | - |")
            if not rows:
                problems.append(f"{args.hf}: no HF rows (see the log)")
        except OSError as e:
            problems.append(f"HF log: {e}")
    if args.wire_error:
        try:
            print()
            print(open(args.wire_error).read().strip())
        except OSError as e:
            problems.append(f"wire error log: {e}")

    if problems:
        print("\nbench_disagg: FAILED checks:", file=sys.stderr)
        for p in problems:
            print("  - " + p, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
