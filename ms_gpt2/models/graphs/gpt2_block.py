"""One GPT-2 transformer block, written once for both compiled GPT-2 graphs.

The training graph (:mod:`ms_gpt2.models.graphs.gpt2`) and the decoding graph
(:mod:`ms_gpt2.models.graphs.gpt2_decode`) build their layers from :class:`Block`, so GPT-2's
arithmetic (pre-LN attention and MLP, their residuals) is spelt out here only:

    x = x + c_proj(attention(ln_1(x)))        # masked multi-head self-attention
    x = x + mlp_c_proj(gelu_new(c_fc(ln_2(x))))

with the attention as :mod:`ms_gpt2.models.attention` derives it (Conv1D projections, split/merge
heads, ``softmax(q @ k^T / sqrt(hd) + mask) @ v``) on the cells of :mod:`ms_gpt2.models.graphs.ops`:
MatMuls with their gradients spelt out and no broadcasting arithmetic kernels, the masked
positions an additive bias (0 kept, float32 min masked: ``masked_fill``'s result).

What each graph adds, as options of the same block:

* training (:meth:`Block.construct`): the MatMuls in the graph's precision
  (:mod:`ms_gpt2.models.graphs.precision`), dropout keep-masks at Hugging Face's three sites
  (:mod:`ms_gpt2.models.graphs.dropout`), and ``Cell.recompute()`` on the whole block (the caller
  marks it);
* decoding: a static KV cache of ``max_len`` positions held by the block as two Parameters.
  :meth:`Block.step` writes this token's key/value into the cache at its position and attends
  over the cache; :meth:`Block.fill` writes a whole prompt's (prefill).

Notation (nanoGPT's): B batch, T sequence length, C model width (n_embd), nh heads,
hd = C // nh, M the cache's positions (max_len).
"""
from __future__ import annotations

import numpy as np
import mindspore
from mindspore import Parameter, Tensor, nn, ops

from ms_gpt2.models.attention import merge_heads, split_heads
from ms_gpt2.models.graphs import dropout as keyed
from ms_gpt2.models.graphs.ops import Linear, ScoresMatMul, Softmax, WeightedSum, gelu_new, layer_norm, scale
from ms_gpt2.models.graphs.precision import Precision

# Hugging Face parameter names of one block's weights (under ``transformer.h.{i}.``), in the order
# Block takes them.
BLOCK_PARAMS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                "mlp.c_proj.weight", "mlp.c_proj.bias")


def block_parameter_names(index: int) -> list[str]:
    """Hugging Face names of layer ``index``'s weights, in :data:`BLOCK_PARAMS` order."""
    return [f"transformer.h.{index}.{name}" for name in BLOCK_PARAMS]


def unsupported(model) -> str | None:
    """Why the compiled GPT-2 graphs would not compute what the library computes for ``model``,
    or None if they do. They implement GPT-2 as :class:`Block` spells it out: ``gelu_new``,
    attention scores scaled by 1/sqrt(head_dim) only, an LM head without bias, float32 weights.
    Any other setting of the config flags that change that arithmetic is refused here, so callers
    fall back to Hugging Face (``generate``, the eager engine) instead of silently computing
    something else."""
    cfg = model.config
    if getattr(cfg, "activation_function", "gelu_new") != "gelu_new":
        return f"activation_function={cfg.activation_function!r} (only 'gelu_new' is compiled)"
    for flag, implemented in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                              ("reorder_and_upcast_attn", False)):
        if bool(getattr(cfg, flag, implemented)) != implemented:
            return f"{flag}={getattr(cfg, flag)}"
    if getattr(model.lm_head, "bias", None) is not None:
        return "an LM head with a bias"
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {mindspore.float32}:
        return f"parameters in {sorted(map(str, dtypes))} (the compiled graph is float32)"
    return None


class Block(nn.Cell):
    """One GPT-2 layer: (B, T, C) -> (B, T, C).

    ``params``: the 12 weights in :data:`BLOCK_PARAMS` order (MindSpore Parameters; the block
    owns no copy, so graphs sharing a weight dict share the weights). Options:

    * ``precision``: the MatMuls' dtype (float32 by default; weights and everything else stay float32);
    * ``dropout`` > 0 with ``dropout_source`` ``"host"`` (keep-masks passed in) or ``"device"``
      (hashed in the graph from keys): dropout at the attention weights, the attention output and
      the MLP output (see :meth:`_drop`);
    * ``cache`` = (batch, max_len): a static KV cache, Parameters named ``{name}k_cache`` /
      ``{name}v_cache``, for :meth:`step` and :meth:`fill` (a decoding block, never differentiated:
      its biases are added by ``Add``'s broadcast, one launch fewer per projection, the same sums).
    """

    def __init__(self, params, n_head: int, eps: float, precision: Precision = Precision(), dropout: float = 0.0,
                 dropout_source: str = "host", cache: tuple | None = None, name: str = ""):
        super().__init__()
        (self.ln1_w, self.ln1_b, self.attn_w, self.attn_b, self.proj_w, self.proj_b,
         self.ln2_w, self.ln2_b, self.fc_w, self.fc_b, self.mlp_w, self.mlp_b) = params
        self.n_head = n_head
        self.layer_norm, self.gelu = layer_norm(eps), gelu_new()
        self.use_dropout = dropout > 0
        self.scale = 1.0 / (1.0 - dropout) if dropout < 1 else 0.0
        self.on_device = dropout_source == "device"
        self.threshold = keyed.threshold(dropout)
        dt = precision.dtype if precision.low else None  # None: float32 MatMuls
        # MatMul cells with their gradients spelt out: no broadcasting or Transpose kernels, which keep
        # per-element index tables on CPU (ms_gpt2.models.graphs.ops)
        self.linear = Linear(dt, precision.emulate, broadcast_bias=cache is None)
        self.scores = ScoresMatMul(dt, precision.emulate)
        self.softmax, self.weighted_sum = Softmax(), WeightedSum(dt, precision.emulate)
        if cache is not None:
            batch, max_len = cache
            n_embd = self.ln1_w.shape[0]
            shape = (batch, n_head, max_len, n_embd // n_head)                   # (B, nh, M, hd)
            self.k_cache = Parameter(Tensor(np.zeros(shape, np.float32)), name=name + "k_cache", requires_grad=False)
            self.v_cache = Parameter(Tensor(np.zeros(shape, np.float32)), name=name + "v_cache", requires_grad=False)
            # written in place, one slot per token: rebuilding the cache each step (where(write, k, cache))
            # copied the whole cache per layer per token, 10% of a step at 128 positions
            self.write_slot = ops.ScatterNdUpdate()

    # -- the arithmetic, once ----------------------------------------------------------------------
    def _drop(self, x, drop, j):
        """Dropout at this layer's site j (0: attention weights, 1: attention output, 2: MLP output).
        ``drop``: the 3 keep-masks (host source), or (3 site keys, attention-shaped and hidden-shaped
        index hashes) (device source)."""
        if self.on_device:
            mask = keyed.keep_mask(drop[3] if j == 0 else drop[4], drop[j], self.threshold)
        else:
            mask = drop[j]
        return keyed.apply_keep(x, mask, self.scale)

    def qkv(self, x):
        """ln_1 and c_attn: x (B, T, C) -> q, k, v, each (B, nh, T, hd)."""
        h = self.layer_norm(x, self.ln1_w, self.ln1_b)[0]
        q, k, v = ops.split(self.linear(h, self.attn_w, self.attn_b), x.shape[-1], axis=2)   # 3 x (B, T, C)
        return split_heads(q, self.n_head), split_heads(k, self.n_head), split_heads(v, self.n_head)

    def attend(self, q, k, v, bias, drop):
        """softmax(q @ k^T / sqrt(hd) + bias) @ v, with GPT-2's attention dropout between the softmax
        and the product with V (where Hugging Face applies attn_pdrop).
        q (B, nh, Tq, hd); k, v (B, nh, Tk, hd); bias (B, nh, Tq, Tk): 0 kept, float32 min masked
        (:func:`ms_gpt2.models.graphs.ops.attention_bias`) -> (B, nh, Tq, hd)."""
        scores = scale(self.scores(q, k), q.shape[-1] ** 0.5)  # q @ k^T / sqrt(hd): (B, nh, Tq, Tk)
        weights = self.softmax(ops.add(scores, bias))          # = masked_fill(scores, ~keep, min), then softmax
        if self.use_dropout:
            weights = self._drop(weights, drop, 0)
        return self.weighted_sum(weights, v)

    def finish(self, x, attended, drop):
        """c_proj and the residual, then ln_2, the MLP and its residual: x (B, T, C), attended
        (B, nh, T, hd) -> (B, T, C)."""
        attended = self.linear(merge_heads(attended), self.proj_w, self.proj_b)     # (B, T, C)
        if self.use_dropout:
            attended = self._drop(attended, drop, 1)
        x = ops.add(x, attended)
        h = self.layer_norm(x, self.ln2_w, self.ln2_b)[0]
        mlp = self.linear(self.gelu(self.linear(h, self.fc_w, self.fc_b)), self.mlp_w, self.mlp_b)  # (B, T, C)
        if self.use_dropout:
            mlp = self._drop(mlp, drop, 2)
        return ops.add(x, mlp)

    # -- training: self-attention over the sequence ------------------------------------------------
    def construct(self, x, bias, drop):
        # x: (B, T, C); bias: (B, nh, T, T), 0 where causal & padding keep, float32 min elsewhere;
        # drop: see _drop, or () without dropout. No broadcasting arithmetic: see ms_gpt2.models.graphs.ops
        q, k, v = self.qkv(x)                                                     # (B, nh, T, hd)
        return self.finish(x, self.attend(q, k, v, bias, drop), drop)

    # -- decoding: attention over the KV cache -----------------------------------------------------
    def step(self, x, slot, bias):
        # one token: x (B, 1, C); slot (B, nh, 3): [b, h, position] per row; bias (B, nh, 1, M): 0 on
        # the slots written so far (<= position), float32 min on the rest
        q, k, v = self.qkv(x)                                                     # (B, nh, 1, hd)
        B, nh, _, hd = k.shape
        k_all = self.write_slot(self.k_cache, slot, ops.reshape(k, (B, nh, hd)))  # (B, nh, M, hd), in place
        v_all = self.write_slot(self.v_cache, slot, ops.reshape(v, (B, nh, hd)))
        return self.finish(x, self.attend(q, k_all, v_all, bias, ()), ())

    def fill(self, x, bias):
        # prefill: x (B, T, C) with B = 1 (one prompt); writes cache slots [0, T) of every cache row;
        # bias (B, nh, T, M): causal over the cache slots
        q, k, v = self.qkv(x)                                                     # (B, nh, T, hd)
        B, nh, T, hd = k.shape
        M = self.k_cache.shape[2]
        k_all = ops.concat((k, ops.slice(self.k_cache, (0, 0, T, 0), (B, nh, M - T, hd))), 2)  # (B, nh, M, hd)
        v_all = ops.concat((v, ops.slice(self.v_cache, (0, 0, T, 0), (B, nh, M - T, hd))), 2)
        ops.assign(self.k_cache, ops.broadcast_to(k_all, self.k_cache.shape))  # one prompt -> every beam's row
        ops.assign(self.v_cache, ops.broadcast_to(v_all, self.v_cache.shape))
        return self.finish(x, self.attend(q, k_all, v_all, bias, ()), ())
