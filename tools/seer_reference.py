"""PyTorch reference of the SeerAttention prefill gate and block-sparse attention.

Written from the SeerAttention semantics in docs/GATES.md (not from the C++ engine), to
produce the expected masks and logits that tests/fixtures/*_gates hold. Needs
torch, and transformers for the model hook-up (SeerReference).

The pieces, each a standalone function:
  pool_q / pool_k       block pooling along the sequence (partial last block
                        averaged over its real tokens only)
  repeat_heads          KV heads -> Q heads, repeat_interleave order (HF repeat_kv)
  multihead_linear      x . W per head, W stored [heads, in, out]
  apply_rope            half-split (rotate_half) RoPE
  block_rope_cos_sin    the model's own rotary embedding at block start positions
  gate_scores           q'.k'^T * hidden^-0.5, [Hq, nb, nb], unmasked
  select_blocks         dense / threshold / nz_ratio, last_block_dense, and our
                        never-empty-row rule (counted)
  block_sparse_attention
                        dense causal attention restricted to the kept blocks

SeerReference runs a Hugging Face model with the gate: forward hooks capture
each layer's q_proj / k_proj outputs (before RoPE, bias included), and an
attention function registered in transformers' attention registry computes
the layer's mask from them and applies block-sparse attention. Everything
else is HF's own model code.

The gate arithmetic runs in float64 on float32 inputs (the fixtures compare a
float32 engine against it; float64 keeps the reference's own rounding out of
the comparison). Attention also runs in float64 and returns the model dtype.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

ATTN_NAME = "seer_reference_sparse"


# ----------------------------------------------------------------------------
# Sparsity modes


@dataclass
class Sparsity:
    mode: str = "dense"  # "dense" | "threshold" | "nz_ratio"
    threshold: float = 0.0
    nz_ratio: float = 1.0
    last_block_dense: bool = True

    def to_string(self) -> str:
        if self.mode == "dense":
            s = "dense"
        elif self.mode == "threshold":
            s = f"threshold={self.threshold!r}"
        else:
            s = f"nz_ratio={self.nz_ratio!r}"
        if not self.last_block_dense:
            s += ";last_block_dense=false"
        return s


def parse_sparsity(text: str) -> Sparsity:
    """Parses 'dense', 'threshold=T', 'nz_ratio=R', each optionally followed by
    ';last_block_dense=true|false' (the mode strings of docs/FIXTURES.md)."""
    parts = text.split(";")
    head = parts[0].strip()
    sp = Sparsity()
    if head == "dense":
        sp.mode = "dense"
    elif head.startswith("threshold="):
        sp.mode = "threshold"
        sp.threshold = float(head[len("threshold="):])
    elif head.startswith("nz_ratio="):
        sp.mode = "nz_ratio"
        sp.nz_ratio = float(head[len("nz_ratio="):])
        if not (0.0 < sp.nz_ratio <= 1.0):
            raise ValueError(f"nz_ratio must be in (0, 1], got {sp.nz_ratio}")
    else:
        raise ValueError(f"unknown sparsity mode {text!r}")
    for extra in parts[1:]:
        key, _, value = extra.strip().partition("=")
        if key != "last_block_dense" or value not in ("true", "false"):
            raise ValueError(f"unknown sparsity option {extra!r} in {text!r}")
        sp.last_block_dense = value == "true"
    return sp


# ----------------------------------------------------------------------------
# Gate pieces


def num_blocks(seq_len: int, block: int) -> int:
    return (seq_len + block - 1) // block


def _blocked(x: torch.Tensor, block: int, fill: float) -> torch.Tensor:
    """[L, H, C] -> [nb, block, H, C], the tail padded with `fill`."""
    seq_len = x.shape[0]
    nb = num_blocks(seq_len, block)
    pad = nb * block - seq_len
    if pad:
        tail = torch.full((pad,) + tuple(x.shape[1:]), fill, dtype=x.dtype, device=x.device)
        x = torch.cat([x, tail], dim=0)
    return x.reshape(nb, block, *x.shape[1:])


def _block_counts(seq_len: int, block: int, dtype, device) -> torch.Tensor:
    """Real tokens per block, [nb]."""
    nb = num_blocks(seq_len, block)
    starts = torch.arange(nb, device=device) * block
    return (torch.clamp(seq_len - starts, max=block)).to(dtype)


def pool_avg(x: torch.Tensor, block: int) -> torch.Tensor:
    """Average over each block's real tokens: [L, H, C] -> [nb, H, C]."""
    sums = _blocked(x, block, 0.0).sum(dim=1)
    counts = _block_counts(x.shape[0], block, x.dtype, x.device)
    return sums / counts[:, None, None]


def pool_max(x: torch.Tensor, block: int) -> torch.Tensor:
    return _blocked(x, block, float("-inf")).amax(dim=1)


def pool_min(x: torch.Tensor, block: int) -> torch.Tensor:
    return _blocked(x, block, float("inf")).amin(dim=1)


def pool_q(q: torch.Tensor, block: int) -> torch.Tensor:
    """Q pooling of gate type Qavg_*: [L, Hq, D] -> [nb, Hq, D]."""
    return pool_avg(q, block)


def pool_k(k: torch.Tensor, block: int) -> torch.Tensor:
    """K pooling of gate type *_Kmaxminavg: max, min, avg concatenated on
    channels in that order. [L, Hkv, D] -> [nb, Hkv, 3D]."""
    return torch.cat([pool_max(k, block), pool_min(k, block), pool_avg(k, block)], dim=-1)


def repeat_heads(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[.., H, C] -> [.., H * n_rep, C]; head h of the result is input head
    h // n_rep (HF repeat_kv / torch.repeat_interleave order)."""
    if n_rep == 1:
        return x
    return torch.repeat_interleave(x, n_rep, dim=-2)


def multihead_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-head x . W with W stored [H, in, out] (not x . W^T).
    x: [n, H, in] -> [n, H, out]."""
    if x.shape[-2] != w.shape[0] or x.shape[-1] != w.shape[1]:
        raise ValueError(f"multihead_linear: x {tuple(x.shape)} does not fit W {tuple(w.shape)}")
    return torch.einsum("nhi,hio->nho", x, w)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split RoPE. x: [n, H, d]; cos, sin: [n, d]."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


def block_rope_cos_sin(model, hidden: int, seq_len: int, block: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [nb, hidden] of the model's own rotary embedding (its theta and
    rope scaling) with head_dim = hidden, at the first token position of each
    block: 0, block, 2*block, ... (not the block index)."""
    rotary = model.model.rotary_emb
    head_dim = _head_dim(model.config)
    if hidden != head_dim:
        cfg = copy.deepcopy(model.config)
        cfg.head_dim = hidden
        cfg.hidden_size = hidden * cfg.num_attention_heads
        rotary = type(rotary)(config=cfg)
    positions = torch.arange(0, seq_len, block, dtype=torch.long)[None, :]
    probe = torch.zeros(1, positions.shape[1], hidden, dtype=torch.float32)
    cos, sin = rotary(probe, positions)
    return cos[0].to(torch.float64), sin[0].to(torch.float64)


def gate_scores(q: torch.Tensor, k: torch.Tensor, w_k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                block: int, w_q: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The gate of one layer, before masking and selection.

    q: [L, Hq, D], k: [L, Hkv, D], straight after q_proj / k_proj (bias
    included, before RoPE). w_k: [Hk', 3D, hidden] with Hk' = Hq (the released
    gates: K repeated to the Q heads first) or Hkv (general form, repeated after
    the linear). w_q: None or [Hq, D, hidden]. Returns [Hq, nb, nb] float64
    scores q'.k'^T * hidden^-0.5 for every (query block, key block) pair.
    """
    q = q.to(torch.float64)
    k = k.to(torch.float64)
    hq, hkv = q.shape[1], k.shape[1]
    hk_w = w_k.shape[0]
    if hq % hk_w or hk_w % hkv:
        raise ValueError(f"gate: mask_linear_k has {hk_w} heads; model has {hq} Q and {hkv} KV heads")
    if w_k.shape[1] != 3 * k.shape[2]:
        raise ValueError(f"gate: mask_linear_k in-dim {w_k.shape[1]} != 3 * head_dim {3 * k.shape[2]}")
    hidden = w_k.shape[2]

    qp = pool_q(q, block)
    if w_q is not None:
        qp = multihead_linear(qp, w_q.to(torch.float64))
    if qp.shape[-1] != hidden:
        raise ValueError(f"gate: pooled Q width {qp.shape[-1]} != gate hidden {hidden} (no mask_linear_q)")

    kp = repeat_heads(pool_k(k, block), hk_w // hkv)
    kk = multihead_linear(kp, w_k.to(torch.float64))

    qr = apply_rope(qp, cos, sin)
    kr = repeat_heads(apply_rope(kk, cos, sin), hq // hk_w)
    return torch.einsum("qhd,khd->hqk", qr, kr) * (hidden ** -0.5)


def nz_topk(nb: int, nz_ratio: float) -> int:
    """k of nz_ratio mode, one k for every row: max(1, int((1 - sqrt(1 - r)) * nb))."""
    return max(1, int((1.0 - math.sqrt(1.0 - nz_ratio)) * nb))


def causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the causal key blocks of each row; 0 above the diagonal."""
    nb = scores.shape[-1]
    causal = torch.ones(nb, nb, dtype=torch.bool, device=scores.device).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


@dataclass
class Selection:
    keep: torch.Tensor         # [H, nb, nb] bool, 0 above the diagonal
    probs: torch.Tensor        # [H, nb, nb] float64, causal softmax
    empty_rows_fixed: int      # rows that came out empty and got their diagonal block
    topk_gap: float = math.inf  # nz_ratio: smallest gap between the k-th and (k+1)-th causal score


def select_blocks(scores: torch.Tensor, sp: Sparsity) -> Selection:
    """Turns gate scores [H, nb, nb] into a block mask (docs/GATES.md)."""
    h, nb, _ = scores.shape
    causal = torch.ones(nb, nb, dtype=torch.bool, device=scores.device).tril()
    masked = scores.masked_fill(~causal, float("-inf"))
    probs = torch.softmax(masked, dim=-1)
    gap = math.inf
    if sp.mode == "dense":
        keep = causal.expand(h, nb, nb).clone()
    elif sp.mode == "threshold":
        keep = probs > sp.threshold
    elif sp.mode == "nz_ratio":
        k = nz_topk(nb, sp.nz_ratio)
        # Top-k over the block-causal-masked scores (the authors add the block
        # mask to the scores before top-k), then the causal cut below.
        idx = torch.topk(masked, k, dim=-1).indices
        keep = torch.zeros(h, nb, nb, dtype=torch.bool, device=scores.device)
        keep.scatter_(-1, idx, True)
        srt = torch.sort(masked, dim=-1, descending=True).values
        for row in range(nb):
            if k < row + 1:  # a real choice among the causal blocks of this row
                gap = min(gap, float((srt[:, row, k - 1] - srt[:, row, k]).min()))
    else:
        raise ValueError(f"unknown mode {sp.mode}")
    if sp.last_block_dense:
        keep[:, -2:, :] = True
    keep &= causal
    empty = ~keep.any(dim=-1)  # [H, nb]
    fixed = int(empty.sum())
    if fixed:
        eye = torch.eye(nb, dtype=torch.bool, device=scores.device)
        keep |= eye[None] & empty[:, :, None]
    return Selection(keep=keep, probs=probs, empty_rows_fixed=fixed, topk_gap=gap)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor,
                           block: int, scale: float) -> torch.Tensor:
    """Dense causal attention restricted to the kept blocks, with the token
    causal mask inside diagonal blocks. q: [Hq, L, D]; k, v: [Hkv, L, D];
    keep: [Hq, nb, nb] bool. Returns [Hq, L, D]. Every query row must have at
    least one allowed key (the never-empty-row rule guarantees it)."""
    hq, seq_len, _ = q.shape
    n_rep = hq // k.shape[0]
    k = torch.repeat_interleave(k, n_rep, dim=0)
    v = torch.repeat_interleave(v, n_rep, dim=0)
    pos = torch.arange(seq_len, device=q.device)
    blk = pos // block
    allowed = keep[:, blk][:, :, blk] & (pos[None, :] <= pos[:, None])[None]
    if not bool(allowed.any(dim=-1).all()):
        raise AssertionError("block_sparse_attention: a query row has no allowed key")
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


# ----------------------------------------------------------------------------
# Hugging Face hook-up


def _head_dim(config) -> int:
    hd = getattr(config, "head_dim", None)
    return int(hd) if hd else config.hidden_size // config.num_attention_heads


_ACTIVE: Optional["SeerReference"] = None


def _seer_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention function for transformers' registry. query: [B, Hq, L, D]
    after RoPE; key/value: [B, Hkv, S, D]. Returns ([B, L, Hq, D], None)."""
    ref = _ACTIVE
    if ref is None:
        raise RuntimeError("seer reference attention called with no active SeerReference")
    return ref._attend(module, query, key, value, scaling)


def register_attention() -> str:
    """Registers the reference attention function under ATTN_NAME in
    transformers' attention registry, plus HF's sdpa mask builder under the
    same name in the mask registry (the function ignores the mask; it builds
    its own block and token causal masks). Returns what was used."""
    notes = []
    try:
        from transformers import AttentionInterface
    except ImportError:
        from transformers.modeling_utils import AttentionInterface
    AttentionInterface.register(ATTN_NAME, _seer_attention)
    notes.append("AttentionInterface.register")
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)
        notes.append("ALL_MASK_ATTENTION_FUNCTIONS.register(sdpa_mask)")
    except ImportError:
        notes.append("no mask registry")
    return ", ".join(notes)


def use_attention(model, name: str) -> str:
    """Switches a loaded model to attention implementation `name`."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
        return "set_attn_implementation"
    model.config._attn_implementation = name
    return "config._attn_implementation"


@dataclass
class RunResult:
    logits: torch.Tensor                       # [L, vocab] float32
    keep: List[torch.Tensor] = field(default_factory=list)    # per layer [Hq, nb, nb] bool
    probs: List[torch.Tensor] = field(default_factory=list)   # per layer [Hq, nb, nb] float64 (None: no gate)
    empty_rows_fixed: List[int] = field(default_factory=list)
    topk_gap: float = math.inf
    q_pre: List[torch.Tensor] = field(default_factory=list)   # per layer [L, Hq, D]
    k_pre: List[torch.Tensor] = field(default_factory=list)   # per layer [L, Hkv, D]
    calls: int = 0


class SeerReference:
    """Runs a HF causal LM whose attention implementation is ATTN_NAME with
    SeerAttention gates. gates: list (one per layer) of dicts with 'k' ->
    [Hk', 3D, hidden] float tensor and optionally 'q' -> [Hq, D, hidden]; or
    None for dense runs (no gate)."""

    def __init__(self, model, gates: Optional[List[Dict[str, torch.Tensor]]] = None, block: int = 64):
        self.model = model
        self.gates = gates
        self.block = block
        self.layers = model.model.layers
        self._captured: Dict[Tuple[int, str], torch.Tensor] = {}
        self._hooks = []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            self._hooks.append(attn.q_proj.register_forward_hook(self._capture(i, "q")))
            self._hooks.append(attn.k_proj.register_forward_hook(self._capture(i, "k")))
        self._rope_cache: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]] = {}
        self._result: Optional[RunResult] = None
        self._sparsity = Sparsity()

    def _capture(self, i, which):
        def hook(module, inputs, output):
            self._captured[(i, which)] = output.detach()
        return hook

    def close(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def rope(self, hidden: int, seq_len: int):
        key = (hidden, seq_len)
        if key not in self._rope_cache:
            self._rope_cache[key] = block_rope_cos_sin(self.model, hidden, seq_len, self.block)
        return self._rope_cache[key]

    def _attend(self, module, query, key, value, scaling):
        res = self._result
        i = int(module.layer_idx)
        bsz, hq, seq_len, d = query.shape
        hkv = key.shape[1]
        if bsz != 1 or key.shape[2] != seq_len:
            raise RuntimeError("seer reference: prefill of one sequence with no cache only")
        q_pre = self._captured[(i, "q")][0].reshape(seq_len, hq, d)
        k_pre = self._captured[(i, "k")][0].reshape(seq_len, hkv, d)
        res.q_pre.append(q_pre)
        res.k_pre.append(k_pre)
        nb = num_blocks(seq_len, self.block)
        if self.gates is not None:
            g = self.gates[i]
            cos, sin = self.rope(g["k"].shape[2], seq_len)
            scores = gate_scores(q_pre, k_pre, g["k"], cos, sin, self.block, g.get("q"))
            sel = select_blocks(scores, self._sparsity)
            keep, probs, fixed = sel.keep, sel.probs, sel.empty_rows_fixed
            res.topk_gap = min(res.topk_gap, sel.topk_gap)
        else:
            if self._sparsity.mode != "dense":
                raise RuntimeError("seer reference: a sparse mode needs gates")
            keep = torch.ones(hq, nb, nb, dtype=torch.bool).tril()
            probs, fixed = None, 0
        res.keep.append(keep)
        res.probs.append(probs)
        res.empty_rows_fixed.append(fixed)
        res.calls += 1
        scale = float(scaling) if scaling is not None else float(module.scaling)
        out = block_sparse_attention(query[0].to(torch.float64), key[0].to(torch.float64),
                                     value[0].to(torch.float64), keep, self.block, scale)
        return out.to(query.dtype).transpose(0, 1).unsqueeze(0).contiguous(), None

    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, sparsity: Sparsity) -> RunResult:
        """One prefill of input_ids ([L] long) with `sparsity`."""
        global _ACTIVE
        self._sparsity = sparsity
        self._result = RunResult(logits=torch.empty(0))
        self._captured.clear()
        prev, _ACTIVE = _ACTIVE, self
        try:
            out = self.model(input_ids=input_ids[None], use_cache=False)
        finally:
            _ACTIVE = prev
        res = self._result
        res.logits = out.logits[0].detach().to(torch.float32)
        if res.calls != len(self.layers):
            raise RuntimeError(f"seer reference attention ran {res.calls} times for {len(self.layers)} layers; "
                               "the model did not use the registered attention function")
        self._result = None
        return res
