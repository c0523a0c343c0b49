#!/usr/bin/env python3
"""The peers of kernels/attention/attention_bench.cu, on the same shapes and masks.

torch SDPA with the flash and the cuDNN backends (dense causal only) and
FlexAttention with BLOCK_SIZE=64 on the identical block masks that
seer-attention-bench wrote with --masks-dir (sparsity 0 is the full causal
triangle). 32 heads (32 KV heads), d=64 and 128, causal, bf16 (--dtypes for
fp16); ms is the median of CUDA event timings after warm-up. Prints the same
table as the Seer benchmark:
effective TFLOP/s = 4 S^2 D H / 2 / t; computed TFLOP/s counts 4*64*64*D per
block FlexAttention computes (for SDPA, the causal FLOPs).

Usage: attention_peers.py --masks-dir DIR [--seqs 8192,32768,131072]
       [--sparsities 0,0.5,0.9] [--dtypes bf16] [--dims 64,128]
"""

import argparse
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BLOCK = 64


def read_mask(path):
    """keep[h, qb, kb] as a torch.bool CUDA tensor, from seer-attention-bench's file."""
    with open(path, "rb") as f:
        if f.read(8) != b"SEERMSK1":
            raise ValueError(f"{path}: not a SEERMSK1 file")
        seq, heads, nb, block = struct.unpack("<4i", f.read(16))
        packed = np.frombuffer(f.read(), dtype=np.uint8)
    if block != BLOCK:
        raise ValueError(f"{path}: block size {block}, expected {BLOCK}")
    bits = np.unpackbits(packed, bitorder="little")[: heads * nb * nb]
    return seq, torch.from_numpy(bits.reshape(heads, nb, nb)).to("cuda").bool()


def causal_keep(heads, nb):
    return torch.ones(nb, nb, dtype=torch.bool, device="cuda").tril().expand(heads, nb, nb).contiguous()


def flex_block_mask(keep, seq):
    """FlexAttention BlockMask: the diagonal as partial blocks (causal mask_mod
    applied), the kept off-diagonal blocks as full blocks (no mask_mod)."""
    heads, nb, _ = keep.shape
    ar = torch.arange(nb, device="cuda", dtype=torch.int32)
    diagonal = torch.eye(nb, dtype=torch.bool, device="cuda")
    full = keep & ~diagonal & torch.ones(nb, nb, dtype=torch.bool, device="cuda").tril()
    full_num = full.sum(-1, dtype=torch.int32)
    # Kept indices first, ascending; padding (nb) after them.
    full_idx = torch.where(full, ar, torch.full_like(ar, nb)).sort(dim=-1).values.clamp_(max=nb - 1).to(torch.int32)
    part_num = torch.ones(heads, nb, dtype=torch.int32, device="cuda")
    part_idx = torch.zeros(heads, nb, nb, dtype=torch.int32, device="cuda")
    part_idx[:, :, 0] = ar
    del full

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    kwargs = dict(BLOCK_SIZE=BLOCK, mask_mod=causal, seq_lengths=(seq, seq))
    args = (part_num[None], part_idx[None], full_num[None], full_idx[None])
    try:
        mask = BlockMask.from_kv_blocks(*args, compute_q_blocks=False, **kwargs)
    except TypeError:  # older torch without compute_q_blocks
        mask = BlockMask.from_kv_blocks(*args, **kwargs)
    kept = int(full_num.sum().item()) + heads * nb
    return mask, kept


def time_ms(fn, warmup=2, min_iters=3, max_iters=50, min_seconds=0.5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    times = []
    while len(times) < max_iters and (len(times) < min_iters or sum(times) < min_seconds * 1e3):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--masks-dir", required=True)
    ap.add_argument("--seqs", default="8192,32768,131072")
    ap.add_argument("--sparsities", default="0,0.5,0.9")
    ap.add_argument("--dtypes", default="bf16")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--no-flex", action="store_true")
    args = ap.parse_args()

    seqs = [int(s) for s in args.seqs.split(",")]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    H = args.heads
    dims = [int(d) for d in args.dims.split(",")]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"shape: {H} heads ({H} kv), d={dims}, causal; FlexAttention BLOCK_SIZE={BLOCK}", flush=True)

    flex = torch.compile(flex_attention, dynamic=False)
    kernel_options = {"BLOCK_M": 64, "BLOCK_N": 64}  # must divide the 64-token sparse blocks
    rows = []
    failures = 0
    for seq in seqs:
        nb = (seq + BLOCK - 1) // BLOCK
        masks = {}
        for s in sparsities:
            if s == 0.0:
                masks[s] = causal_keep(H, nb)
            else:
                path = f"{args.masks_dir}/mask_{seq}_{s:.2f}.bin"
                mseq, keep = read_mask(path)
                if mseq != seq or keep.shape[0] != H:
                    raise ValueError(f"{path}: seq {mseq}, heads {keep.shape[0]}; expected {seq}, {H}")
                masks[s] = keep
        for D, tname in [(d, t) for d in dims for t in args.dtypes.split(",")]:
            dtype = dtypes[tname]
            gen = torch.Generator(device="cuda").manual_seed(seq)
            q = torch.rand(1, H, seq, D, device="cuda", dtype=dtype, generator=gen) * 2 - 1
            k = torch.rand(1, H, seq, D, device="cuda", dtype=dtype, generator=gen) * 2 - 1
            v = torch.rand(1, H, seq, D, device="cuda", dtype=dtype, generator=gen) * 2 - 1
            causal_flops = 4.0 * seq * seq * D * H / 2.0

            def add(sparsity, kernel, ms, computed_flops):
                rows.append((tname, D, seq, sparsity, kernel, ms, causal_flops / (ms * 1e9),
                             computed_flops / (ms * 1e9)))
                r = rows[-1]
                print(f"  {tname} d={D} seq={seq} sparsity={sparsity:.2f} {kernel:<22} {ms:9.3f} ms  "
                      f"{r[6]:6.1f} eff TFLOP/s  {r[7]:6.1f} computed TFLOP/s", flush=True)

            reference = None
            for name, backend in (("sdpa flash", SDPBackend.FLASH_ATTENTION),
                                  ("sdpa cudnn", SDPBackend.CUDNN_ATTENTION)):
                try:
                    with sdpa_kernel([backend]):
                        def run():
                            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
                        out = run()
                        if reference is None and seq <= 8192:
                            reference = out.float()
                        add(0.0, name, time_ms(run), causal_flops)
                        del out
                except RuntimeError as e:
                    print(f"  {tname} seq={seq} {name}: not available ({str(e).splitlines()[0]})", flush=True)

            if args.no_flex:
                continue
            for s in sparsities:
                t0 = time.time()
                mask, kept = flex_block_mask(masks[s], seq)
                computed_flops = 4.0 * BLOCK * BLOCK * D * kept

                def run():
                    return flex(q, k, v, block_mask=mask, kernel_options=kernel_options)

                out = run()
                torch.cuda.synchronize()
                if s == 0.0 and reference is not None:
                    # The dense block mask must reproduce causal attention.
                    err = ((out.float() - reference).norm() / reference.norm()).item()
                    ok = err <= 1e-2
                    failures += 0 if ok else 1
                    print(f"  check: FlexAttention(dense block mask) vs SDPA causal, rel err {err:.2e}"
                          f" {'ok' if ok else 'FAILED'} (first call incl. compile {time.time() - t0:.1f} s)",
                          flush=True)
                del out
                add(s, "flex block64", time_ms(run), computed_flops)
                del mask
            del q, k, v
            torch.cuda.empty_cache()
        del masks

    print()
    print("| dtype | d | seq | sparsity | kernel | ms | effective TFLOP/s | computed TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]} | {r[5]:.3f} | {r[6]:.1f} | {r[7]:.1f} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
