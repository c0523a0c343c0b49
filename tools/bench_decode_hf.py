#!/usr/bin/env python3
"""Hugging Face transformers decode of a Llama-3.1-8B-shaped model, the peer of
bench/decode_bench.cu: random bf16 weights made on the GPU (from_config, no
checkpoint), sdpa attention, greedy `generate` with the static cache
(cache_implementation="static"), eager (generate's automatic torch.compile of
the static-cache step is off: it recompiles for every cache length, and the
compile time swamped the measurement). For each BATCHxCONTEXT row, the time
per decode step is (generate N+1 new tokens - generate 1 new token) / N,
which takes the prefill out; tokens/s is batch / step time.

    python3 tools/bench_decode_hf.py [--rows 1x8192,8x8192,...] [--new-tokens 16] [--layers 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_prefill_hf import llama31_8b, make_model  # noqa: E402


def timed_generate(model, ids, new_tokens: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, cache_implementation="static", pad_token_id=0, disable_compile=True)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1x8192,8x8192,1x32768,8x32768,32x8192,128x2048")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--layers", type=int, default=32)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_decode_hf: no CUDA device", file=sys.stderr)
        return 1
    model = make_model(llama31_8b(args.layers))
    g = torch.Generator(device="cuda").manual_seed(0)
    print(f"\nHF transformers decode (generate, static cache, greedy), {torch.cuda.get_device_name()}, "
          f"Llama-3.1-8B shape ({args.layers} layers), bf16")
    print("| batch | context | ms/step | tokens/s |")
    print("|---|---|---|---|")
    for item in args.rows.split(","):
        batch, context = (int(x) for x in item.split("x"))
        ids = torch.randint(0, model.config.vocab_size, (batch, context), device="cuda", generator=g)
        try:
            # Warm-up at the row's own length: a shorter one left the first
            # row's one-token run paying for first-time allocations and
            # kernel choices, and its step time came out below the bandwidth
            # limit (1.53 ms at 1 x 8192 on an H200, 2026-11-28).
            timed_generate(model, ids, 2)
            one = timed_generate(model, ids, 1)
            many = timed_generate(model, ids, args.new_tokens + 1)
            step = (many - one) / args.new_tokens
            print(f"| {batch} | {context} | {step * 1e3:.2f} | {batch / step:.0f} |", flush=True)
        except torch.OutOfMemoryError:
            print(f"| {batch} | {context} | OOM | - |", flush=True)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
