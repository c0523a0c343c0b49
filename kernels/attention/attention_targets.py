#!/usr/bin/env python3
"""Issue 10's targets, judged from the logs of one device call.

Reads the merged attention table that tools/gpu_attention_run.sh writes
(attention_table.py: Seer, SDPA and FlexAttention rows, then the gate table)
and, when given, seer-prefill-bench's and tools/bench_prefill_hf.py's logs.
Prints one markdown row per target: what was measured, and whether it is met.
A target whose rows are missing is "not measured", never met.

The targets (d = 128, bf16, causal, 64-token block masks):
  - dense: Seer's time <= SDPA cuDNN's at 8k, 32k and 128k;
  - sparse rate: Seer's computed TFLOP/s at s = 0.5 and 0.9 >= 0.9 x its own
    dense computed TFLOP/s, at 32k and 128k;
  - FlexAttention: Seer at 128k, s = 0.9 <= 0.5 x FlexAttention (block 64) on
    the identical masks;
  - gate: the gate the engine runs at that length (GateVariant::kAuto: fused
    up to 192 blocks, unfused beyond) <= 25% of Seer's attention at 8k,
    s = 0.9, and <= 3% at 128k, s = 0.9 (recomputed from the two times);
  - prefill: TTFT at 128k, nz_ratio = 0.1 <= 0.33 x HF sdpa's, dense
    <= 0.9 x HF sdpa's.

Seer's rows are the kernel the gate table names (the variant kAuto runs),
or --kernel's.

Usage: attention_targets.py TABLE.md [--prefill PREFILL.log --hf HF.log]
                            [--kernel NAME] [--dtype bf16] [--dim 128]
"""

import argparse
import re
import sys

FUSED_MAX_BLOCKS = 192  # kernels/gate/gate.h: GateVariant::kAuto


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def read_table(path):
    """Attention rows {(dtype, d, seq, sparsity, kernel): (ms, computed)},
    gate rows {(d, seq, variant): ms} and the kernel the gate table names."""
    attention, gates, kernel = {}, {}, None
    with open(path) as f:
        for line in f:
            if not line.startswith("|"):
                continue
            c = cells(line)
            if line.startswith("| d | seq | gate"):
                m = re.search(r"at 0\.9 sparsity \((.+)\)", c[-1])
                kernel = m.group(1) if m else None
                continue
            if len(c) >= 8 and c[0] in ("bf16", "fp16"):
                try:
                    key = (c[0], int(c[1]), int(c[2]), float(c[3]), c[4])
                    attention[key] = (float(c[5]), float(c[7]))
                except ValueError:
                    pass
            elif len(c) == 5 and c[0].isdigit():
                variant = "fused" if c[2].startswith("fused") else "unfused"
                # Rows of full float32 gate weights (--gate-weights=f32) are
                # shown, not judged: SeerAttention's gates are bf16 values.
                if "f32 weights" in c[2]:
                    variant += " f32"
                try:
                    gates[(int(c[0]), int(c[1]), variant)] = float(c[3])
                except ValueError:
                    pass
    return attention, gates, kernel


def read_prefill(path):
    """{(seq, mode): TTFT ms} from seer-prefill-bench's first table."""
    out = {}
    with open(path) as f:
        for line in f:
            c = cells(line)
            if len(c) >= 4 and c[0].isdigit() and (c[1] == "dense" or c[1].startswith("nz_ratio")):
                try:
                    out.setdefault((int(c[0]), c[1]), float(c[3]))
                except ValueError:
                    pass
    return out


def read_hf(path):
    """{seq: TTFT ms} from bench_prefill_hf.py's table."""
    out = {}
    with open(path) as f:
        for line in f:
            c = cells(line)
            if len(c) >= 2 and c[0].isdigit():
                try:
                    out[int(c[0])] = float(c[1])
                except ValueError:
                    pass
    return out


def judge(args):
    """[(target, measured, verdict)] for every target."""
    attention, gates, named = read_table(args.table)
    kernel = args.kernel or named
    if kernel and not kernel.startswith("seer "):
        kernel = "seer " + kernel  # the table's rows name Seer's kernels "seer <variant>"
    rows = []

    def seer(seq, s):
        return attention.get((args.dtype, args.dim, seq, s, kernel)) if kernel else None

    def peer(seq, s, name):
        return attention.get((args.dtype, args.dim, seq, s, name))

    def verdict(ok):
        return "met" if ok else "missed"

    # Dense against cuDNN.
    parts, oks = [], []
    for seq in (8192, 32768, 131072):
        ours, cudnn = seer(seq, 0.0), peer(seq, 0.0, "sdpa cudnn")
        if ours and cudnn:
            ratio = ours[0] / cudnn[0]
            parts.append(f"{seq // 1024}k {ours[0]:.3f} / {cudnn[0]:.3f} ms = {ratio:.3f}x")
            oks.append(ratio <= 1.0)
        else:
            parts.append(f"{seq // 1024}k not measured")
            oks.append(None)
    rows.append(("dense <= SDPA cuDNN at 8k / 32k / 128k", "; ".join(parts), combined_verdict(oks)))

    # The sparse rate against our own dense rate.
    parts, oks = [], []
    for seq in (32768, 131072):
        dense = seer(seq, 0.0)
        for s in (0.5, 0.9):
            sparse = seer(seq, s)
            if dense and sparse:
                ratio = sparse[1] / dense[1]
                parts.append(f"{seq // 1024}k s={s}: {ratio:.3f}")
                oks.append(ratio >= 0.9)
            else:
                parts.append(f"{seq // 1024}k s={s}: not measured")
                oks.append(None)
    rows.append(("sparse computed TFLOP/s >= 0.9x own dense, 32k and 128k", "; ".join(parts), combined_verdict(oks)))

    # FlexAttention at 128k, s = 0.9.
    ours, flex = seer(131072, 0.9), peer(131072, 0.9, "flex block64")
    if ours and flex:
        ratio = ours[0] / flex[0]
        rows.append(("128k s = 0.9 <= 0.5x FlexAttention", f"{ours[0]:.3f} / {flex[0]:.3f} ms = {ratio:.3f}x",
                     verdict(ratio <= 0.5)))
    else:
        rows.append(("128k s = 0.9 <= 0.5x FlexAttention", "not measured", "not measured"))

    # The gate the engine runs, against the attention at s = 0.9.
    for seq, limit in ((8192, 25.0), (131072, 3.0)):
        variant = "fused" if seq // 64 <= FUSED_MAX_BLOCKS else "unfused"
        gate, ours = gates.get((args.dim, seq, variant)), seer(seq, 0.9)
        name = f"gate <= {limit:g}% of attention at {seq // 1024}k, s = 0.9"
        if gate is not None and ours:
            pct = 100.0 * gate / ours[0]
            rows.append((name, f"{variant} {gate:.3f} / {ours[0]:.3f} ms = {pct:.1f}%", verdict(pct <= limit)))
        else:
            rows.append((name, "not measured", "not measured"))

    # The prefill against HF.
    prefill = read_prefill(args.prefill) if args.prefill else {}
    hf = read_hf(args.hf) if args.hf else {}
    for mode, limit in (("nz_ratio=0.1", 0.33), ("dense", 0.9)):
        name = f"prefill 128k {mode} <= {limit}x HF sdpa"
        ours, theirs = prefill.get((131072, mode)), hf.get(131072)
        if ours and theirs:
            ratio = ours / theirs
            rows.append((name, f"{ours:.1f} / {theirs:.1f} ms = {ratio:.3f}x", verdict(ratio <= limit)))
        else:
            rows.append((name, "not measured", "not measured"))
    return kernel, rows


def combined_verdict(oks):
    """One verdict over several measurements (None: not measured)."""
    if any(ok is None for ok in oks):
        return "not measured" if all(ok is None for ok in oks) else "partly measured, " + (
            "missed" if any(ok is False for ok in oks) else "met where measured")
    return "met" if all(oks) else "missed"


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("table", help="the merged attention table (tools/gpu_attention_run.sh's table.md)")
    parser.add_argument("--prefill", help="seer-prefill-bench's log")
    parser.add_argument("--hf", help="tools/bench_prefill_hf.py's log")
    parser.add_argument("--kernel", help="Seer's kernel name in the table (default: the one the gate table names)")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args(argv)
    kernel, rows = judge(args)
    print(f"Targets of issue 10 ({args.dtype}, d = {args.dim}, Seer = {kernel or 'no kernel named'})")
    print("| target | measured | |")
    print("|---|---|---|")
    for target, measured, v in rows:
        print(f"| {target} | {measured} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
