#!/usr/bin/env python3
"""How much a gate's block masks let an attention kernel share K/V loads.

The block-sparse kernels load a kept 64x64 block's K and V once per query
block that keeps it (v6, Sm90PairsKernel) or once per tile of two
neighbouring query blocks of one head (v3, the shared-stage kernel). Which
one moves fewer bytes depends on how much neighbouring rows share, and
uniform random masks share almost nothing: two rows that each keep a
fraction p of their blocks share p^2 of them. This prints, per layer of a
`seer run --dump` file (block_mask [heads, nb, nb] per layer), or per
SEERMSK1 mask file:

  density   kept blocks / causal blocks
  pairs     the union of the rows 2i and 2i+1 of a head over the sum of
            their lengths: the loads per kept block of a kernel that loads
            a tile's blocks once (1 = nothing shared, 0.5 = all shared)
  group     the same over the Q heads of a KV group at one query block
            (--group, the model's num_heads / num_kv_heads)

and the same two ratios for masks with the same row lengths whose kept
blocks are drawn uniformly (the diagonal kept where the gate kept it), the
case the attention benchmark's uniform masks stand for.

  tools/mask_stats.py DUMP.safetensors [--group G] [--write-mask OUT.bin]
  tools/mask_stats.py MASK.bin [...]

--write-mask stacks every layer's heads into one SEERMSK1 file (layer-major),
so that `seer-attention-bench --masks-from=OUT.bin --heads=<layers x heads>`
times the kernels on the gate's own selections; --write-uniform writes the
uniform comparison's masks (the same row lengths) the same way, for an A/B
on identical amounts of work.
"""

import argparse
import json
import random
import struct
import sys

MAGIC = b"SEERMSK1"


def read_dump_masks(path):
    """[(name, heads, nb, keep bytes)] from a `seer run --dump` safetensors file."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        base = 8 + header_len
        masks = []
        names = [k for k in header if k.endswith(".block_mask")]
        names.sort(key=lambda k: int(k.split(".")[1]))
        for name in names:
            info = header[name]
            if info["dtype"] != "U8" or len(info["shape"]) != 3:
                raise ValueError(f"{path}: {name} is {info['dtype']} {info['shape']}, not U8 [heads, nb, nb]")
            heads, nb, nb2 = info["shape"]
            if nb != nb2:
                raise ValueError(f"{path}: {name} is not square: {info['shape']}")
            begin, end = info["data_offsets"]
            f.seek(base + begin)
            keep = f.read(end - begin)
            if len(keep) != heads * nb * nb:
                raise ValueError(f"{path}: {name} holds {len(keep)} bytes, not {heads * nb * nb}")
            masks.append((name[: -len(".block_mask")], heads, nb, keep))
    if not masks:
        raise ValueError(f"{path}: no block_mask tensors (was the prompt run with --gates and --dump?)")
    return masks


def read_seermsk(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24 or data[:8] != MAGIC:
        raise ValueError(f"{path}: not a SEERMSK1 mask")
    seq_len, heads, nb, block = struct.unpack("<4i", data[8:24])
    n = heads * nb * nb
    packed = data[24:]
    if len(packed) != (n + 7) // 8:
        raise ValueError(f"{path}: {len(packed)} bytes of mask, {(n + 7) // 8} expected")
    keep = bytes((packed[i >> 3] >> (i & 7)) & 1 for i in range(n))
    return seq_len, block, [(path, heads, nb, keep)]


def write_seermsk(path, seq_len, block, heads, nb, keep):
    n = heads * nb * nb
    packed = bytearray((n + 7) // 8)
    for i in range(n):
        if keep[i]:
            packed[i >> 3] |= 1 << (i & 7)
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<4i", seq_len, heads, nb, block) + bytes(packed))


def rows_of(heads, nb, keep):
    """rows[h][qb] = the set of kept key blocks (causal only)."""
    rows = []
    for h in range(heads):
        head = []
        for qb in range(nb):
            off = (h * nb + qb) * nb
            head.append({kb for kb in range(qb + 1) if keep[off + kb]})
        rows.append(head)
    return rows


def share_ratios(rows, group):
    """(density, pairs, group) ratios as the module docstring defines them."""
    heads, nb = len(rows), len(rows[0])
    kept = sum(len(r) for head in rows for r in head)
    causal = heads * nb * (nb + 1) // 2
    pair_sum = pair_union = 0
    for head in rows:
        for i in range(0, nb, 2):
            a = head[i]
            b = head[i + 1] if i + 1 < nb else set()
            pair_sum += len(a) + len(b)
            pair_union += len(a | b)
    group_sum = group_union = 0
    if group > 1 and heads % group == 0:
        for g in range(heads // group):
            for qb in range(nb):
                sets = [rows[g * group + j][qb] for j in range(group)]
                group_sum += sum(len(s) for s in sets)
                group_union += len(set().union(*sets))
    pairs = pair_union / pair_sum if pair_sum else float("nan")
    grp = group_union / group_sum if group_sum else float("nan")
    return kept / causal, pairs, grp


def keep_of(rows):
    """The keep bytes [heads][nb][nb] of rows_of's sets."""
    nb = len(rows[0])
    out = bytearray(len(rows) * nb * nb)
    for h, head in enumerate(rows):
        for qb, r in enumerate(head):
            for kb in r:
                out[(h * nb + qb) * nb + kb] = 1
    return bytes(out)


def uniform_like(rows, rng):
    """Rows of the same lengths, their blocks drawn uniformly from the causal
    range; the diagonal is kept where the row kept it."""
    out = []
    for head in rows:
        new_head = []
        for qb, r in enumerate(head):
            diag = qb in r
            pool = list(range(qb)) if diag else list(range(qb + 1))
            picked = set(rng.sample(pool, len(r) - (1 if diag else 0)))
            if diag:
                picked.add(qb)
            new_head.append(picked)
        out.append(new_head)
    return out


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="seer run --dump files (.safetensors) or SEERMSK1 masks")
    ap.add_argument("--group", type=int, default=1, help="Q heads per KV head, for the group ratio (default 1)")
    ap.add_argument("--seq-len", type=int, default=0,
                    help="tokens, for --write-mask from a dump (default: blocks x 64)")
    ap.add_argument("--write-mask", metavar="OUT", help="stack every layer's heads into one SEERMSK1 file")
    ap.add_argument("--write-uniform", metavar="OUT", help="the same for the uniform comparison's masks")
    ap.add_argument("--seed", type=int, default=1, help="seed of the uniform comparison (default 1)")
    args = ap.parse_args(argv)
    if args.group < 1:
        ap.error(f"--group must be at least 1, got {args.group}")

    masks = []
    seq_len, block = args.seq_len, 64
    try:
        for path in args.inputs:
            if path.endswith(".safetensors"):
                masks += read_dump_masks(path)
            else:
                seq_len, block, m = read_seermsk(path)
                masks += m
    except (OSError, ValueError) as e:
        print(f"mask_stats.py: {e}", file=sys.stderr)
        return 1
    nbs = {nb for _, _, nb, _ in masks}
    if (args.write_mask or args.write_uniform) and len(nbs) != 1:
        ap.error(f"--write-mask and --write-uniform need masks of one size, got block counts {sorted(nbs)}")

    rng = random.Random(args.seed)
    print("| mask | heads | blocks | density | pairs: gate | pairs: uniform | group: gate | group: uniform |")
    print("|---|---|---|---|---|---|---|---|")
    totals = [0.0] * 5
    uniform_keep = []
    for name, heads, nb, keep in masks:
        rows = rows_of(heads, nb, keep)
        density, pairs, grp = share_ratios(rows, args.group)
        uniform = uniform_like(rows, rng)
        _, u_pairs, u_grp = share_ratios(uniform, args.group)
        uniform_keep.append(keep_of(uniform))
        print(f"| {name} | {heads} | {nb} | {density:.3f} | {pairs:.3f} | {u_pairs:.3f} | {grp:.3f} | {u_grp:.3f} |")
        for i, v in enumerate((density, pairs, u_pairs, grp, u_grp)):
            totals[i] += v
    if len(masks) > 1:
        mean = [t / len(masks) for t in totals]
        print("| mean | | | " + " | ".join(f"{v:.3f}" for v in mean) + " |")

    nb = next(iter(nbs))
    heads = sum(h for _, h, _, _ in masks)
    tokens = seq_len or nb * block
    for path, keeps in ((args.write_mask, [k for _, _, _, k in masks]), (args.write_uniform, uniform_keep)):
        if path:
            write_seermsk(path, tokens, block, heads, nb, b"".join(keeps))
            print(f"wrote {path}: {heads} heads of {nb} blocks ({tokens} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
