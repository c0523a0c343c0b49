#!/usr/bin/env python3
"""Builds the test fixtures of docs/FIXTURES.md with Hugging Face's own code.

Run where torch, transformers and safetensors are installed (not on the build
machine). Writes, under --out:
  llama/, qwen2/                 tiny random checkpoints, saved by save_pretrained in bf16
  <model>/expected.safetensors   HF float32 logits, KV cache and greedy tokens
  <model>_gates/                 gate checkpoint in the released SeerAttention format
                                 (config.json + attn_gate_weights.pth)
  <model>_gates/expected.safetensors
                                 masks, gate probabilities and block-sparse logits
                                 of the PyTorch reference (tools/seer_reference.py)
Then re-reads everything, prints a verification table and exits non-zero if
any self-check failed.

    cd tools && PYTHONUNBUFFERED=1 python3 make_fixtures.py --out /tmp/fx
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seer_reference as sr  # noqa: E402

BLOCK = 64
L_SHORT = 333
L_LONG = 1000
NEW_TOKENS = 8
MIN_MARGIN = 1e-3
MIN_DISTINCT = 4  # distinct greedy tokens wanted among the NEW_TOKENS
SEED_TRIES = 150
# Logits rows stored per sparse mode: the last token of every query block
# (each sees its whole diagonal block), and one token in the middle of block 0.
# Few rows keep the fixtures under 2 MiB; masks are compared separately.
LOGITS_ROWS = [31, 63, 127, 191, 255, 319, L_SHORT - 1]
NZ_RATIOS = [0.3, 0.7]
GATE_SCORE_STD = 2.0    # spread of the gate scores within a row after calibration
# No causal probability lies closer than this to a threshold (tests allow
# 1e-6; float32 vs this float64 reference differ by ~1e-7).
THRESHOLD_MARGIN = 2e-5

SPECS = [
    dict(
        name="llama", arch="LlamaForCausalLM", heads=4, kv_heads=1, head_dim=64,
        config=dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, head_dim=64,
                    max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
                    attention_bias=False, mlp_bias=False, hidden_act="silu",
                    bos_token_id=1, eos_token_id=2, initializer_range=0.1),
        rope=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                  high_freq_factor=4.0, original_max_position_embeddings=256),
        prompt_seed=1001, long_seed=1002, gate_seed=1003, model_seed0=0,
    ),
    dict(
        name="qwen2", arch="Qwen2ForCausalLM", heads=2, kv_heads=1, head_dim=64,
        config=dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                    max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=True,
                    use_sliding_window=False, hidden_act="silu",
                    bos_token_id=1, eos_token_id=2, initializer_range=0.1),
        rope=dict(rope_type="default", rope_theta=1000000.0),
        prompt_seed=2001, long_seed=2002, gate_seed=2003, model_seed0=0,
    ),
]

FAILURES: list = []


def check(ok: bool, what: str) -> bool:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        FAILURES.append(what)
    return ok


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ----------------------------------------------------------------------------
# Models


def expected_inv_freq(rope: dict, dim: int) -> torch.Tensor:
    """inv_freq written out from the rope config (float64), to check that
    the model really uses the rope we asked for."""
    inv = 1.0 / rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    if rope["rope_type"] == "default":
        return inv
    assert rope["rope_type"] == "llama3"
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    orig = rope["original_max_position_embeddings"]
    out = []
    for f in inv.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < orig / high:
            out.append(f)
        elif wavelen > orig / low:
            out.append(f / factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return torch.tensor(out, dtype=torch.float64)


def config_class(spec):
    return getattr(transformers, spec["arch"].replace("ForCausalLM", "Config"))


def model_class(spec):
    return getattr(transformers, spec["arch"])


_ROPE_STYLE: dict = {}


def make_config(spec, style: str):
    kw = dict(spec["config"])
    rope = dict(spec["rope"])
    if style == "rope_parameters":
        kw["rope_parameters"] = rope
    else:
        kw["rope_theta"] = rope.pop("rope_theta")
        if rope["rope_type"] != "default":
            kw["rope_scaling"] = rope
    try:
        return config_class(spec)(**kw)
    except TypeError:
        # A config class without a head_dim field: set it as an attribute
        # (the modeling code reads getattr(config, "head_dim")).
        head_dim = kw.pop("head_dim")
        cfg = config_class(spec)(**kw)
        cfg.head_dim = head_dim
        return cfg


def construct(spec):
    """An untrained model of the spec, checked to have the asked-for rope
    and shapes. Tries the transformers-5 rope_parameters style first."""
    styles = [_ROPE_STYLE[spec["name"]]] if spec["name"] in _ROPE_STYLE else ["rope_parameters", "legacy"]
    want = expected_inv_freq(spec["rope"], spec["head_dim"])
    errors = []
    for style in styles:
        try:
            model = model_class(spec)(make_config(spec, style))
        except Exception as e:  # noqa: BLE001
            errors.append(f"{style}: {type(e).__name__}: {e}")
            continue
        got = model.model.rotary_emb.inv_freq.to(torch.float64)
        err = float(((got - want).abs() / want.abs()).max()) if got.shape == want.shape else math.inf
        if err < 1e-5:  # element by element: the scaled low frequencies are tiny
            _ROPE_STYLE[spec["name"]] = style
            return model
        errors.append(f"{style}: inv_freq differs from the rope config (max elementwise rel err {err:.3g})")
    raise RuntimeError(f"{spec['name']}: could not build a model with the wanted rope: {errors}")


def init_weights(model, seed: int):
    """Our own random init (HF's would zero the biases and set norms to 1,
    which would hide bugs): Linear N(0, 0.12^2), embeddings N(0, 0.1^2) (small
    against the layers' outputs, so that with tied embeddings the next token
    is not simply the current one again), norms 1 + N(0, 0.1^2), biases
    N(0, 0.2^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.2 * noise)
            elif "embed_tokens" in name:
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.12 * noise)


@torch.no_grad()
def greedy_manual(model, ids: torch.Tensor, n: int):
    """Greedy decoding by full forward passes; returns tokens and top1-top2 margins."""
    seq = ids.clone()
    toks, margins = [], []
    for _ in range(n):
        logits = model(input_ids=seq[None], use_cache=False).logits[0, -1]
        top = torch.topk(logits.to(torch.float64), 2)
        margins.append(float(top.values[0] - top.values[1]))
        toks.append(int(top.indices[0]))
        seq = torch.cat([seq, top.indices[:1]])
    return toks, margins


def load_f32(path: str, attn: str):
    try:
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    except TypeError:
        m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation=attn)
    return m.eval()


def cache_kv(cache, i):
    if hasattr(cache, "layers"):
        return cache.layers[i].keys, cache.layers[i].values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[i], cache.value_cache[i]
    return cache[i][0], cache[i][1]


def save_bf16(model, path: str):
    model.to(torch.bfloat16)
    try:
        model.save_pretrained(path, safe_serialization=True)
    except TypeError:
        model.save_pretrained(path)


def build_checkpoint(spec, out_dir: str, ids: torch.Tensor):
    """Seed search, save in bf16, returns (seed, bf16 state dict).

    A seed is taken when every greedy step's top1-top2 margin is > 2 *
    MIN_MARGIN (twice the recorded bound, so eager vs sdpa rounding cannot
    matter), no step emits eos, and the 8 tokens hold at least MIN_DISTINCT
    different values (a model that repeats one token would hide decode bugs).
    Without such a seed in SEED_TRIES, the margin-clean seed with the most
    distinct tokens is used."""
    eos = spec["config"]["eos_token_id"]
    best = None
    tried = []
    for seed in range(spec["model_seed0"], spec["model_seed0"] + SEED_TRIES):
        model = construct(spec)
        init_weights(model, seed)
        model.to(torch.bfloat16).to(torch.float32).eval()
        toks, margins = greedy_manual(model, ids, NEW_TOKENS)
        clean = min(margins) > 2 * MIN_MARGIN and eos not in toks
        distinct = len(set(toks))
        tried.append((seed, round(min(margins), 4), distinct))
        if clean and distinct >= MIN_DISTINCT:
            best = (seed, distinct)
            break
        if clean and (best is None or distinct > best[1]):
            best = (seed, distinct)
    if best is None:
        raise RuntimeError(f"no seed with clear greedy margins: {tried}")
    print(f"  seeds tried (seed, min margin, distinct tokens): {tried[:12]}{' ...' if len(tried) > 12 else ''}")
    seed = best[0]
    if tried[-1][0] != seed:
        model = construct(spec)
        init_weights(model, seed)
        model.to(torch.bfloat16).to(torch.float32).eval()
    path = os.path.join(out_dir, spec["name"])
    save_bf16(model, path)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return seed, state


# ----------------------------------------------------------------------------
# Gates


def centered_score_std(scores: torch.Tensor) -> float:
    """Std of the scores around each row's mean, over the causal entries of
    rows with at least two blocks."""
    vals = []
    nb = scores.shape[-1]
    for r in range(1, nb):
        row = scores[:, r, : r + 1]
        vals.append((row - row.mean(dim=-1, keepdim=True)).flatten())
    v = torch.cat(vals)
    return float(v.pow(2).mean().sqrt())


def causal_values(probs: torch.Tensor, rows=None) -> torch.Tensor:
    nb = probs.shape[-1]
    out = []
    for r in range(nb) if rows is None else rows:
        out.append(probs[:, r, : r + 1].flatten())
    return torch.cat(out)


def threshold_distance(results, t: float) -> float:
    d = math.inf
    for res in results:
        for p in res.probs:
            d = min(d, float((causal_values(p) - t).abs().min()))
    return d


def widest_gap(values: torch.Tensor, lo: float, hi: float):
    """Middle of the widest gap between the values inside (lo, hi), with lo
    and hi as ends; returns (middle, half the gap)."""
    v = torch.sort(values[(values > lo) & (values < hi)].to(torch.float64)).values
    pts = torch.cat([torch.tensor([lo], dtype=torch.float64), v, torch.tensor([hi], dtype=torch.float64)])
    gaps = pts[1:] - pts[:-1]
    i = int(torch.argmax(gaps))
    return float((pts[i] + pts[i + 1]) / 2), float(gaps[i] / 2)


def round_sig(x: float, digits: int) -> float:
    return float(f"{x:.{digits}g}")


def density(keep: torch.Tensor) -> float:
    h, nb, _ = keep.shape
    return float(keep.sum()) / (h * nb * (nb + 1) / 2)


def overall_density(keeps) -> float:
    kept = sum(float(k.sum()) for k in keeps)
    causal = sum(k.shape[0] * k.shape[1] * (k.shape[1] + 1) / 2 for k in keeps)
    return kept / causal


def write_pth(path: str, weights):
    """The released format: torch.save of a plain dict of bf16 tensors."""
    sd = {f"model.layers.{i}.self_attn.attn_gate.mask_linear_k.weight": w.clone().contiguous()
          for i, w in enumerate(weights)}
    torch.save(sd, path)
    return sd


# ----------------------------------------------------------------------------


def process(spec, out_dir: str, table: list):
    name = spec["name"]
    print(f"\n=== {name} ===")
    g = torch.Generator().manual_seed(spec["prompt_seed"])
    vocab = spec["config"]["vocab_size"]
    ids = torch.randint(0, vocab, (L_SHORT,), generator=g)
    g = torch.Generator().manual_seed(spec["long_seed"])
    long_ids = torch.randint(0, vocab, (L_LONG,), generator=g)

    t0 = time.time()
    seed, bf16_state = build_checkpoint(spec, out_dir, ids)
    mdir = os.path.join(out_dir, name)
    print(f"  seed {seed}, rope style {_ROPE_STYLE[name]}, saved {sorted(os.listdir(mdir))} in {time.time() - t0:.1f}s")
    check(sorted(os.listdir(mdir)) == ["config.json", "generation_config.json", "model.safetensors"],
          f"{name}: save_pretrained wrote config.json, generation_config.json, model.safetensors")

    hq, hkv, d = spec["heads"], spec["kv_heads"], spec["head_dim"]
    header = _shapes(os.path.join(mdir, "model.safetensors"))
    keys = list(header)
    dtypes = {dt for dt, _ in header.values()}
    check(dtypes == {"BF16"}, f"{name}: checkpoint tensors are all BF16 ({dtypes})")
    if spec["config"]["tie_word_embeddings"]:
        check("lm_head.weight" not in keys, f"{name}: tied embeddings, no lm_head.weight in the file")
    else:
        check("lm_head.weight" in keys, f"{name}: untied lm_head.weight present")
    cfg_json = json.load(open(os.path.join(mdir, "config.json")))
    print(f"  config.json rope fields: " + json.dumps({k: cfg_json[k] for k in cfg_json if "rope" in k}))

    # The same config in the hub style of older checkpoints (top-level
    # rope_theta / rope_scaling, torch_dtype), for the config-parser tests;
    # checked here to give HF the same rope and head_dim.
    hub = {k: v for k, v in cfg_json.items() if k not in ("rope_parameters", "dtype")}
    rp = dict(cfg_json.get("rope_parameters") or {})
    if rp:
        hub["rope_theta"] = rp.pop("rope_theta")
        hub["rope_scaling"] = rp if rp.get("rope_type", "default") != "default" else None
    hub["torch_dtype"] = cfg_json.get("dtype", "bfloat16")
    with open(os.path.join(mdir, "hub_style_config.json"), "w") as f:
        json.dump(hub, f, indent=2, sort_keys=True)
        f.write("\n")
    try:
        hub_cfg = config_class(spec).from_dict(dict(hub))
        hub_model = model_class(spec)(hub_cfg)
        got = hub_model.model.rotary_emb.inv_freq.to(torch.float64)
        want = expected_inv_freq(spec["rope"], spec["head_dim"])
        err = float(((got - want).abs() / want.abs()).max())
        widths = (hub_model.model.layers[0].self_attn.q_proj.out_features,
                  hub_model.model.layers[0].self_attn.k_proj.out_features)
        check(err < 1e-5 and widths == (hq * d, hkv * d),
              f"{name}: hub_style_config.json gives HF the same rope (rel err {err:.1e}) and head_dim")
    except Exception as e:  # noqa: BLE001
        check(False, f"{name}: hub_style_config.json not accepted by HF: {type(e).__name__}: {e}")

    # Reload the bf16 checkpoint in float32 with eager attention.
    model = load_f32(mdir, "eager")
    sd = model.state_dict()
    same = all(torch.equal(sd[k].to(torch.float32), v.to(torch.float32)) for k, v in bf16_state.items())
    check(same, f"{name}: reloaded float32 weights equal the saved bf16 values")
    attn0 = model.model.layers[0].self_attn
    check(attn0.q_proj.out_features == hq * d and attn0.k_proj.out_features == hkv * d,
          f"{name}: q_proj/k_proj widths {attn0.q_proj.out_features}/{attn0.k_proj.out_features} = heads*{d}")
    if name == "qwen2":
        check(attn0.q_proj.bias is not None and attn0.k_proj.bias is not None and attn0.v_proj.bias is not None
              and attn0.o_proj.bias is None, f"{name}: q/k/v biases, no o_proj bias")
        check(model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
              f"{name}: lm_head tied to embed_tokens after reload")

    with torch.no_grad():
        out = model(input_ids=ids[None], use_cache=True)
    logits = out.logits[0].to(torch.float32)
    tensors = {"input_ids": ids.to(torch.int32), "logits": logits.contiguous()}
    n_layers = spec["config"]["num_hidden_layers"]
    for i in range(n_layers):
        k, v = cache_kv(out.past_key_values, i)
        tensors[f"layers.{i}.k"] = k[0].to(torch.float32).contiguous()
        tensors[f"layers.{i}.v"] = v[0].to(torch.float32).contiguous()

    gen = model.generate(input_ids=ids[None], attention_mask=torch.ones(1, L_SHORT, dtype=torch.long),
                         do_sample=False, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True,
                         output_logits=True, pad_token_id=0)
    gen_tokens = gen.sequences[0, L_SHORT:].tolist()
    gen_margins = []
    for step_logits in gen.logits:
        top = torch.topk(step_logits[0].to(torch.float64), 2).values
        gen_margins.append(float(top[0] - top[1]))
    man_tokens, man_margins = greedy_manual(model, ids, NEW_TOKENS)
    check(gen_tokens == man_tokens and len(gen_tokens) == NEW_TOKENS,
          f"{name}: generate() tokens {gen_tokens} == step-by-step greedy {man_tokens}")
    min_margin = min(min(gen_margins), min(man_margins))
    check(min_margin > MIN_MARGIN, f"{name}: min greedy top1-top2 margin {min_margin:.4g} > {MIN_MARGIN}")
    tensors["greedy_tokens"] = torch.tensor(gen_tokens, dtype=torch.int32)
    save_file(tensors, os.path.join(mdir, "expected.safetensors"), metadata={
        "min_greedy_margin": f"{min_margin:.6g}", "model_seed": str(seed),
        "prompt_seed": str(spec["prompt_seed"]), "torch": torch.__version__,
        "transformers": transformers.__version__, "dtype": "float32, eager attention, bf16 checkpoint"})

    # ---- The reference with HF's model code.
    smodel = None
    try:
        smodel = load_f32(mdir, sr.ATTN_NAME)
        how = "from_pretrained(attn_implementation=...)"
    except Exception as e:  # noqa: BLE001
        print(f"  from_pretrained with {sr.ATTN_NAME} failed ({type(e).__name__}: {e}); switching after load")
        smodel = load_f32(mdir, "eager")
        how = sr.use_attention(smodel, sr.ATTN_NAME)
    print(f"  reference attention installed via {how}")
    ref = sr.SeerReference(smodel, gates=None, block=BLOCK)
    dense = ref.run(ids, sr.Sparsity())
    e = rel_err(dense.logits, logits)
    check(e < 1e-5, f"{name}: reference dense (all blocks) logits vs HF eager: rel err {e:.2e} < 1e-5")
    dense_long = ref.run(long_ids, sr.Sparsity())
    with torch.no_grad():
        eager_long = model(input_ids=long_ids[None], use_cache=False).logits[0]
    e = rel_err(dense_long.logits, eager_long)
    check(e < 1e-5, f"{name}: reference dense logits, 1000-token prompt, vs HF eager: rel err {e:.2e} < 1e-5")

    # Hooks: captured pre-RoPE K with HF's RoPE must equal the cache.
    pos = torch.arange(L_SHORT)[None]
    cos, sin = model.model.rotary_emb(torch.zeros(1, L_SHORT, d), pos)
    for i in range(n_layers):
        k_rot = sr.apply_rope(dense.k_pre[i].to(torch.float64), cos[0].to(torch.float64), sin[0].to(torch.float64))
        e = rel_err(k_rot.transpose(0, 1), tensors[f"layers.{i}.k"])
        check(e < 1e-5, f"{name}: layer {i} hooked k_proj output + RoPE == HF cache K (rel err {e:.2e})")

    # Pooling against torch's pooling ops with ceil_mode (the authors' way).
    x = dense.k_pre[0].to(torch.float64).permute(1, 2, 0)  # [H, D, L]
    tmax = torch.nn.functional.max_pool1d(x, BLOCK, BLOCK, ceil_mode=True).permute(2, 0, 1)
    tmin = -torch.nn.functional.max_pool1d(-x, BLOCK, BLOCK, ceil_mode=True).permute(2, 0, 1)
    tavg = torch.nn.functional.avg_pool1d(x, BLOCK, BLOCK, ceil_mode=True).permute(2, 0, 1)
    ours = sr.pool_k(dense.k_pre[0].to(torch.float64), BLOCK)
    e = rel_err(ours, torch.cat([tmax, tmin, tavg], dim=-1))
    check(e < 1e-12, f"{name}: pool_k (max,min,avg; partial block over 13 real tokens) == torch ceil_mode pooling ({e:.1e})")

    # ---- Gate weights: random, calibrated so scores spread GATE_SCORE_STD within a row.
    g = torch.Generator().manual_seed(spec["gate_seed"])
    weights_bf16 = []
    for i in range(n_layers):
        w0 = torch.randn(hq, 3 * d, d, generator=g, dtype=torch.float64) / math.sqrt(3 * d)
        cs, sn = ref.rope(d, L_LONG)
        s0 = sr.gate_scores(dense_long.q_pre[i], dense_long.k_pre[i], w0, cs, sn, BLOCK)
        scale = GATE_SCORE_STD / centered_score_std(s0)
        weights_bf16.append((w0 * scale).to(torch.bfloat16))
        print(f"  layer {i}: gate weight scale {scale:.3f}")
    gdir = os.path.join(out_dir, f"{name}_gates")
    os.makedirs(gdir, exist_ok=True)
    write_pth(os.path.join(gdir, "attn_gate_weights.pth"), weights_bf16)
    loaded = torch.load(os.path.join(gdir, "attn_gate_weights.pth"), weights_only=True)
    ok = (sorted(loaded) == sorted(f"model.layers.{i}.self_attn.attn_gate.mask_linear_k.weight" for i in range(n_layers))
          and all(loaded[f"model.layers.{i}.self_attn.attn_gate.mask_linear_k.weight"].dtype == torch.bfloat16
                  and torch.equal(loaded[f"model.layers.{i}.self_attn.attn_gate.mask_linear_k.weight"], weights_bf16[i])
                  for i in range(n_layers)))
    check(ok, f"{name}: torch.load(weights_only=True) reloads attn_gate_weights.pth: keys, bf16, values")
    # The reference uses exactly what a reader of the file gets: bf16 -> float32.
    gates = [{"k": loaded[f"model.layers.{i}.self_attn.attn_gate.mask_linear_k.weight"].to(torch.float32)}
             for i in range(n_layers)]
    ref.gates = gates

    # Gate self-checks: the general forms agree with the released form.
    cs, sn = ref.rope(d, L_SHORT)
    base = sr.gate_scores(dense.q_pre[0], dense.k_pre[0], gates[0]["k"], cs, sn, BLOCK)
    eye = torch.eye(d, dtype=torch.float32).expand(hq, d, d)
    e = rel_err(sr.gate_scores(dense.q_pre[0], dense.k_pre[0], gates[0]["k"], cs, sn, BLOCK, w_q=eye), base)
    check(e < 1e-12, f"{name}: gate with identity mask_linear_q == gate without ({e:.1e})")
    if hkv == 1:
        wk1 = gates[0]["k"][:1]
        e = rel_err(sr.gate_scores(dense.q_pre[0], dense.k_pre[0], wk1, cs, sn, BLOCK),
                    sr.gate_scores(dense.q_pre[0], dense.k_pre[0], wk1.expand(hq, -1, -1), cs, sn, BLOCK))
        check(e < 1e-12, f"{name}: mask_linear_k per KV head (linear, then repeat) == repeat, then linear ({e:.1e})")
    model_rope = model.model.rotary_emb(torch.zeros(1, 1, d), torch.tensor([[128]]))
    e = max(rel_err(cs[2], model_rope[0][0, 0]), rel_err(sn[2], model_rope[1][0, 0]))
    check(e < 1e-7, f"{name}: block RoPE of block 2 == the model's RoPE at token position 128 ({e:.1e})")

    # Every block kept through the full gate path (threshold=0) equals dense.
    all_kept = ref.run(ids, sr.parse_sparsity("threshold=0.0;last_block_dense=false"))
    check(all(bool(k.equal(torch.ones_like(k).tril())) for k in all_kept.keep),
          f"{name}: threshold=0 keeps every causal block")
    e = rel_err(all_kept.logits, logits)
    check(e < 1e-5, f"{name}: gate path + sparse attention with every block kept vs HF dense logits: rel err {e:.2e}")

    # ---- Thresholds from the dense-run probabilities (layer 0 is exact for
    # every mode; later layers see the sparse activations and are checked after).
    dense_g = ref.run(ids, sr.Sparsity())
    dense_gl = ref.run(long_ids, sr.Sparsity())
    pv = torch.cat([causal_values(p, range(1, p.shape[-1])) for r in (dense_g, dense_gl) for p in r.probs])
    rowmax = torch.cat([p[:, 1:, :].amax(dim=-1).flatten() for r in (dense_g, dense_gl) for p in r.probs])
    t_lo = round_sig(float(torch.quantile(pv, 0.35)), 3)
    t_mid = round_sig(float(torch.quantile(pv, 0.6)), 3)
    t_hi = round_sig(max(float(torch.quantile(pv, 0.8)), float(torch.quantile(rowmax, 0.1))), 3)
    # last_block_dense=false at a threshold above the smallest row maximum of
    # layer 0 on the short prompt (layer 0 is the same in every mode), so the
    # never-empty-row rule fires in rows that the stored logits depend on.
    short_rowmax0 = float(dense_g.probs[0][:, 1:, :].amax(dim=-1).min())
    t_lbd = round_sig(max(t_hi, 1.12 * short_rowmax0), 3)
    plan = [(f"threshold={t_lo!r}", None), (f"threshold={t_mid!r}", None), (f"threshold={t_hi!r}", None),
            *((f"nz_ratio={r!r}", None) for r in NZ_RATIOS),
            (f"threshold={t_lbd!r};last_block_dense=false", 1.01 * short_rowmax0)]

    final_modes, records = [], []
    for text, floor in plan:
        sp = sr.parse_sparsity(text)
        target = sp.threshold
        lo = max(0.85 * target, floor or 0.0)
        for attempt in range(12):
            rs = ref.run(ids, sp)
            rl = ref.run(long_ids, sp)
            if sp.mode != "threshold":
                dist = math.inf
                break
            # Put the threshold in the middle of the widest gap between the
            # probabilities near the target; re-run, since later layers move.
            dist = threshold_distance([rs, rl], sp.threshold)
            vals = torch.cat([causal_values(p) for r in (rs, rl) for p in r.probs])
            t_best, half_gap = widest_gap(vals, lo, 1.2 * target)
            if dist >= THRESHOLD_MARGIN and dist >= 0.5 * half_gap:
                break
            if attempt == 11:
                check(False, f"{name}: no threshold near {text} with every probability {THRESHOLD_MARGIN} away")
                break
            sp.threshold = round_sig(t_best, 5)
        final_modes.append(sp.to_string())
        records.append((sp, rs, rl, dist))

    gt = {"long.input_ids": long_ids.to(torch.int32)}
    info = {}
    for j, (sp, rs, rl, dist) in enumerate(records):
        for i in range(n_layers):
            gt[f"mode{j}.layers.{i}.block_mask"] = rs.keep[i].to(torch.uint8).contiguous()
            gt[f"mode{j}.layers.{i}.gate_probs"] = rs.probs[i].to(torch.float32).contiguous()
            gt[f"long.mode{j}.layers.{i}.block_mask"] = rl.keep[i].to(torch.uint8).contiguous()
            gt[f"long.mode{j}.layers.{i}.gate_probs"] = rl.probs[i].to(torch.float32).contiguous()
        gt[f"mode{j}.logits_rows"] = torch.tensor(LOGITS_ROWS, dtype=torch.int32)
        gt[f"mode{j}.logits"] = rs.logits[LOGITS_ROWS].contiguous()
        dev = rel_err(rs.logits[LOGITS_ROWS], logits[LOGITS_ROWS])
        info[sp.to_string()] = dict(
            density=[round(density(k), 6) for k in rs.keep], density_overall=round(overall_density(rs.keep), 6),
            long_density=[round(density(k), 6) for k in rl.keep], long_density_overall=round(overall_density(rl.keep), 6),
            empty_rows_fixed=rs.empty_rows_fixed, long_empty_rows_fixed=rl.empty_rows_fixed,
            min_threshold_distance=(None if dist == math.inf else float(f"{dist:.3g}")),
            min_topk_gap=(None if min(rs.topk_gap, rl.topk_gap) == math.inf else float(f"{min(rs.topk_gap, rl.topk_gap):.3g}")),
            logits_change_vs_dense=float(f"{dev:.3g}"))
        table.append((name, j, sp.to_string(), info[sp.to_string()]))
    save_file(gt, os.path.join(gdir, "expected.safetensors"), metadata={
        "modes": ",".join(final_modes), "block_size": str(BLOCK), "prompt": f"../{name}/expected.safetensors input_ids",
        "stats": json.dumps(info), "torch": torch.__version__, "transformers": transformers.__version__})

    gate_cfg = dict(cfg_json)
    gate_cfg.update({
        "base_model": f"../{name}",
        "seerattn_sparsity_method": "threshold",
        "seerattn_threshold": records[1][0].threshold,
        "seerattn_nz_ratio": 1.0,
        "seerattn_gate_type": "Qavg_Kmaxminavg",
        "seerattn_gate_block_size": BLOCK,
        "seerattn_gate_hidden_size": d,
        "seerattn_gate_force_double": False,
        "seerattn_last_block_dense": True,
    })
    with open(os.path.join(gdir, "config.json"), "w") as f:
        json.dump(gate_cfg, f, indent=2, sort_keys=True)
        f.write("\n")

    # Nothing stored is the same mask twice in a row of modes by accident.
    check(len(set(final_modes)) == len(final_modes), f"{name}: modes are distinct: {final_modes}")
    ref.close()


def verify_files(out_dir: str):
    print("\n=== re-reading what was written ===")
    for spec in SPECS:
        name = spec["name"]
        hq, hkv, d, nl = spec["heads"], spec["kv_heads"], spec["head_dim"], spec["config"]["num_hidden_layers"]
        vocab = spec["config"]["vocab_size"]
        want = {"input_ids": ("I32", [L_SHORT]), "logits": ("F32", [L_SHORT, vocab]), "greedy_tokens": ("I32", [NEW_TOKENS])}
        for i in range(nl):
            want[f"layers.{i}.k"] = ("F32", [hkv, L_SHORT, d])
            want[f"layers.{i}.v"] = ("F32", [hkv, L_SHORT, d])
        p = os.path.join(out_dir, name, "expected.safetensors")
        if not os.path.exists(p):
            check(False, f"{p} exists")
            continue
        check(_shapes(p) == want, f"{name}/expected.safetensors names, dtypes, shapes as docs/FIXTURES.md")
        p = os.path.join(out_dir, f"{name}_gates", "expected.safetensors")
        if not os.path.exists(p):
            check(False, f"{p} exists")
            continue
        modes = _metadata(p)["modes"].split(",")
        nb, nbl = sr.num_blocks(L_SHORT, BLOCK), sr.num_blocks(L_LONG, BLOCK)
        want = {"long.input_ids": ("I32", [L_LONG])}
        for j in range(len(modes)):
            for i in range(nl):
                want[f"mode{j}.layers.{i}.block_mask"] = ("U8", [hq, nb, nb])
                want[f"mode{j}.layers.{i}.gate_probs"] = ("F32", [hq, nb, nb])
                want[f"long.mode{j}.layers.{i}.block_mask"] = ("U8", [hq, nbl, nbl])
                want[f"long.mode{j}.layers.{i}.gate_probs"] = ("F32", [hq, nbl, nbl])
            want[f"mode{j}.logits_rows"] = ("I32", [len(LOGITS_ROWS)])
            want[f"mode{j}.logits"] = ("F32", [len(LOGITS_ROWS), vocab])
        check(_shapes(p) == want, f"{name}_gates/expected.safetensors names, dtypes, shapes ({len(modes)} modes)")


def _header(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


def _metadata(path):
    return _header(path).get("__metadata__", {})


def _shapes(path):
    header = _header(path)
    header.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"]) for k, v in header.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (becomes tests/fixtures)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {sys.version.split()[0]}")
    print(f"attention registration: {sr.register_attention()}")
    t0 = time.time()
    table: list = []
    for spec in SPECS:
        try:
            process(spec, args.out, table)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            FAILURES.append(f"{spec['name']}: exception")
    verify_files(args.out)

    print("\n=== verification table ===")
    print(f"{'model':6} {'j':>1} {'mode':42} {'density/layer (L=333)':24} {'overall':>7} "
          f"{'density/layer (L=1000)':24} {'overall':>7} {'fixed':>7} {'margin':>8} {'dlogits':>8}")
    for name, j, mode, s in table:
        dens = " ".join(f"{x:.3f}" for x in s["density"])
        ldens = " ".join(f"{x:.3f}" for x in s["long_density"])
        fixed = f"{sum(s['empty_rows_fixed'])}/{sum(s['long_empty_rows_fixed'])}"
        margin = s["min_threshold_distance"] if s["min_threshold_distance"] is not None else s["min_topk_gap"]
        print(f"{name:6} {j:>1} {mode:42} {dens:24} {s['density_overall']:7.3f} {ldens:24} "
              f"{s['long_density_overall']:7.3f} {fixed:>7} {margin if margin is not None else '-':>8} "
              f"{s['logits_change_vs_dense']:8.2e}")
    print("fixed = empty rows given their diagonal block (L=333 / L=1000, summed over layers and heads);")
    print("margin = smallest |prob - threshold| (threshold modes) or k-th vs (k+1)-th score gap (nz_ratio);")
    print("dlogits = rel. change of the stored sparse logits vs dense")

    total = 0
    print("\n=== sizes ===")
    for root, _, files in sorted(os.walk(args.out)):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            total += os.path.getsize(p)
            print(f"  {os.path.relpath(p, args.out):45} {os.path.getsize(p):>9}")
    print(f"  total {total} bytes ({total / 2**20:.3f} MiB)")
    if total >= 2 * 2**20:
        FAILURES.append(f"total size {total} >= 2 MiB")
    print(f"\nelapsed {time.time() - t0:.1f}s")
    if FAILURES:
        print(f"\n{len(FAILURES)} CHECK(S) FAILED:")
        for f in FAILURES:
            print("  - " + f)
        sys.exit(1)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
