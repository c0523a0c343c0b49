#!/usr/bin/env python3
"""One attention table from the logs of seer-attention-bench and attention_peers.py.

Both print rows `| dtype | d | seq | sparsity | kernel | ms | effective TFLOP/s |
computed TFLOP/s |`. This merges them, sorted by (dtype, d, seq, sparsity), adds
each row's time relative to the fastest SDPA (cuDNN or flash) at sparsity 0 and
to FlexAttention at the same sparsity, and repeats the gate table.

Usage: attention_table.py bench.log peers.log
"""

import sys


def rows(path):
    out = []
    with open(path) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 8 or cells[0] not in ("bf16", "fp16"):
                continue
            dtype, d, seq, sparsity, kernel, ms, eff, computed = cells
            out.append((dtype, int(d), int(seq), float(sparsity), kernel, float(ms), float(eff), float(computed)))
    return out


def gate_lines(path):
    lines, on = [], False
    with open(path) as f:
        for line in f:
            if line.startswith("| d | seq | gate"):
                on = True
            if on:
                if not line.startswith("|"):
                    break
                lines.append(line.rstrip())
    return lines


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    all_rows = rows(sys.argv[1]) + rows(sys.argv[2])
    all_rows.sort(key=lambda r: (r[0], r[1], r[2], r[3], r[4]))
    sdpa = {}
    flex = {}
    for r in all_rows:
        key = (r[0], r[1], r[2])
        if r[4].startswith("sdpa"):
            sdpa[key] = min(sdpa.get(key, float("inf")), r[5])
        if r[4].startswith("flex"):
            flex[key + (r[3],)] = r[5]
    print("| dtype | d | seq | sparsity | kernel | ms | effective TFLOP/s | computed TFLOP/s | vs best SDPA (dense) | vs Flex |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in all_rows:
        key = (r[0], r[1], r[2])
        vs_sdpa = f"{r[5] / sdpa[key]:.2f}x" if key in sdpa and r[3] == 0.0 else "-"
        fx = flex.get(key + (r[3],))
        vs_flex = f"{r[5] / fx:.2f}x" if fx else "-"
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]} | {r[5]:.3f} | {r[6]:.1f} | {r[7]:.1f} | "
              f"{vs_sdpa} | {vs_flex} |")
    gates = gate_lines(sys.argv[1])
    if gates:
        print()
        print("\n".join(gates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
