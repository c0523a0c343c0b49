#!/usr/bin/env python3
"""Hugging Face transformers prefill of a Llama-3.1-8B-shaped model, the peer
of bench/prefill_bench.cu: random bf16 weights made on the GPU (from_config,
no checkpoint), attn_implementation="sdpa", use_cache=True, logits for the
last position only. Prints TTFT (wall clock around the forward, synchronised)
and peak GPU memory (torch.cuda.max_memory_allocated) for each length; a
length that runs out of memory is reported as OOM.

    python3 tools/bench_prefill_hf.py [--lengths 8192,32768,131072] [--repeats 3] [--layers 32]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig


def llama31_8b(layers: int) -> LlamaConfig:
    # The shape of meta-llama/Llama-3.1-8B's config.json.
    shape = dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    try:
        # transformers 5: one rope_parameters dict.
        return LlamaConfig(**shape, rope_parameters={**scaling, "rope_theta": 500000.0})
    except TypeError:
        # transformers 4: rope_theta plus rope_scaling.
        return LlamaConfig(**shape, rope_theta=500000.0, rope_scaling=scaling)


def make_model(config: LlamaConfig):
    kwargs = {"attn_implementation": "sdpa"}
    # transformers 5 names the argument `dtype`; 4.x `torch_dtype`.
    params = inspect.signature(AutoModelForCausalLM.from_config).parameters
    dtype_key = "dtype" if "dtype" in params or "torch_dtype" not in params else "torch_dtype"
    kwargs[dtype_key] = torch.bfloat16
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    return model.to(torch.bfloat16).eval()


def forward_kwargs(model) -> dict:
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        return {"logits_to_keep": 1}
    if "num_logits_to_keep" in params:
        return {"num_logits_to_keep": 1}
    return {}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="8192,32768,131072")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=32)
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",") if x]

    if not torch.cuda.is_available():
        print("no CUDA device visible", file=sys.stderr)
        return 1
    dev = torch.cuda.get_device_name(0)
    t0 = time.perf_counter()
    model = make_model(llama31_8b(args.layers))
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated()
    print(f"device: {dev}; torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model: Llama-3.1-8B shape, {args.layers} layers, random bf16 weights on the GPU "
          f"({weights / 2**30:.2f} GiB, made in {time.perf_counter() - t0:.1f} s), sdpa")
    extra = forward_kwargs(model)
    rope = getattr(model.config, "rope_parameters", None) or getattr(model.config, "rope_scaling", None)
    print(f"forward kwargs: use_cache=True {extra}; rope {rope}")

    gen = torch.Generator(device="cuda").manual_seed(1)

    def run(n: int) -> tuple[float, int]:
        ids = torch.randint(0, model.config.vocab_size, (1, n), device="cuda", generator=gen)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True, **extra)
            logits = out.logits[:, -1, :].float().cpu()
        torch.cuda.synchronize()
        ms = (time.perf_counter() - start) * 1e3
        peak = torch.cuda.max_memory_allocated()
        if not torch.isfinite(logits).all():
            raise RuntimeError("non-finite logits")
        del out, logits, ids
        torch.cuda.empty_cache()
        return ms, peak

    run(4096)  # warm-up: kernels, cuBLAS and cuDNN heuristics

    rows = []
    for n in lengths:
        reps = 1 if n >= 65536 else args.repeats
        times, peak, err = [], 0, ""
        for _ in range(reps):
            try:
                ms, p = run(n)
            except torch.cuda.OutOfMemoryError as e:
                err = "OOM (" + str(e).split(".")[0] + ")"
                torch.cuda.empty_cache()
                break
            times.append(ms)
            peak = max(peak, p)
        print(f"  L={n}: {len(times)} run(s) {err}", flush=True)
        rows.append((n, times, peak, err))

    print(f"\nHF transformers prefill TTFT, {dev}, Llama-3.1-8B shape ({args.layers} layers), bf16, sdpa")
    print("| seq | TTFT ms (median) | runs | peak allocated GiB |")
    print("|---|---|---|---|")
    for n, times, peak, err in rows:
        if not times:
            print(f"| {n} | {err} | 0 | - |")
        else:
            print(f"| {n} | {statistics.median(times):.1f} | {len(times)} | {peak / 2**30:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
