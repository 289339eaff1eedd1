"""GPT-2's masked multi-head self-attention, derived step by step with MindSpore ops.

This is the tutorial's first half made executable: every step it names is a line here, in its
order, with the tensor shape it produces. It is the reference the library attention is tested
against (tests/test_attention.py) and what ``ms-gpt2 attention-demo`` walks through.

Notation (nanoGPT's): B batch, T sequence length, C model width (n_embd), nh heads, hd = C // nh.

GPT-2 stores its projections as ``Conv1D`` layers, which are linear layers whose weight is kept
*transposed* relative to ``nn.Linear``: shape ``(nx, nf)`` = (in, out), applied as ``x @ W + b``.
Keeping that layout means a Hugging Face checkpoint's ``attn.c_attn.weight`` loads as-is.

Only MindSpore's *functional* ops are used, never Tensor methods or operators (``x + y``,
``x.reshape``): once ``mindnlp`` is imported, mindtorch re-binds ``mindspore.Tensor``'s methods to
torch semantics (``transpose`` then swaps two dims, operators dispatch through mindtorch and need a
device tag). The functional API means the same thing whether or not mindnlp is loaded.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import mindspore
from mindspore import Parameter, Tensor, nn, ops

Trace = Optional[Callable[[str, Tensor], None]]


def _note(trace: Trace, step: str, tensor: Tensor) -> Tensor:
    if trace is not None:
        trace(step, tensor)
    return tensor


def conv1d(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """GPT-2's Conv1D: (..., nx) @ (nx, nf) + (nf,) -> (..., nf)."""
    out_shape = tuple(x.shape[:-1]) + (weight.shape[-1],)
    y = ops.add(ops.matmul(ops.reshape(x, (-1, x.shape[-1])), weight), bias)  # (B*T, nf)
    return ops.reshape(y, out_shape)


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(B, T, C) -> (B, nh, T, hd): each head attends in its own hd-wide subspace."""
    B, T, C = x.shape
    return ops.transpose(ops.reshape(x, (B, T, n_head, C // n_head)), (0, 2, 1, 3))


def merge_heads(x: Tensor) -> Tensor:
    """(B, nh, T, hd) -> (B, T, C): concatenate the heads back into the model width."""
    B, nh, T, hd = x.shape
    return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (B, T, nh * hd))


def causal_mask_buffer(n_positions: int) -> Tensor:
    """The ``bias`` buffer of GPT-2 (and the tutorial): lower-triangular ones, (1, 1, n, n) bool.

    Entry [.., i, j] is True where query i may look at key j, i.e. j <= i.
    """
    tril = np.tril(np.ones((n_positions, n_positions), dtype=np.bool_))
    return Tensor(tril.reshape(1, 1, n_positions, n_positions))


def min_value(dtype) -> float:
    """The most negative finite value of ``dtype``: the fill for masked scores (not -inf, so a
    fully masked row softmaxes to a uniform row instead of NaN, as the library's does)."""
    return float(np.finfo(mindspore.dtype_to_nptype(dtype)).min)


def scaled_masked_attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, trace: Trace = None,
                            fill_value: float | None = None):
    """softmax(q @ k^T / sqrt(hd), masked to ``keep``) @ v.

    q: (B, nh, Tq, hd); k, v: (B, nh, Tk, hd); keep: bool, broadcastable to (B, nh, Tq, Tk).
    ``fill_value`` defaults to :func:`min_value` of the scores' dtype; a compiled caller passes it
    precomputed (plain Python scalars keep this function usable inside ``mindspore.jit``).
    Returns the attention output (B, nh, Tq, hd) and the weights (B, nh, Tq, Tk).
    """
    hd = q.shape[-1]
    scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))           # (B, nh, Tq, Tk)
    _note(trace, "scores = q @ k^T", scores)
    scores = ops.div(scores, hd ** 0.5)
    _note(trace, "scores / sqrt(head_dim)", scores)
    if fill_value is None:
        fill_value = min_value(scores.dtype)
    scores = ops.masked_fill(scores, ops.logical_not(keep), fill_value)
    _note(trace, "masked_fill(min float)", scores)
    weights = ops.softmax(scores, axis=-1)                           # rows sum to 1
    _note(trace, "softmax", weights)
    out = ops.matmul(weights, v)                                     # (B, nh, Tq, hd)
    _note(trace, "weights @ value", out)
    return out, weights


def masked_self_attention(
    x: Tensor,
    c_attn_weight: Tensor,
    c_attn_bias: Tensor,
    c_proj_weight: Tensor,
    c_proj_bias: Tensor,
    n_head: int,
    attention_mask: Tensor | None = None,
    causal_buffer: Tensor | None = None,
    return_weights: bool = False,
    trace: Trace = None,
):
    """Masked multi-head self-attention, exactly as GPT-2 computes it (dropout omitted: eval).

    Args:
        x: hidden states, (B, T, C).
        c_attn_weight, c_attn_bias: the fused Q/K/V projection, (C, 3C) and (3C,).
        c_proj_weight, c_proj_bias: the output projection, (C, C) and (C,).
        n_head: number of heads; C must be divisible by it.
        attention_mask: optional padding mask, (B, T), 1 for real tokens and 0 for padding.
        causal_buffer: a precomputed :func:`causal_mask_buffer` at least T long (the Cell keeps
            one, as GPT-2 does); built on the fly when omitted.
        return_weights: also return the softmaxed attention weights, (B, nh, T, T).
        trace: called as ``trace(step_name, tensor)`` after each step (the walkthrough uses it).
    """
    B, T, C = x.shape
    if C % n_head:
        raise ValueError(f"model width {C} is not divisible by n_head={n_head}")
    hd = C // n_head
    _note(trace, "input x", x)                                      # (B, T, C)

    qkv = _note(trace, "c_attn (Conv1D)", conv1d(x, c_attn_weight, c_attn_bias))  # (B, T, 3C)
    q, k, v = ops.split(qkv, C, axis=2)                            # 3 x (B, T, C)
    _note(trace, "split -> query", q)
    _note(trace, "split -> key", k)
    _note(trace, "split -> value", v)

    q = _note(trace, "split_heads(query)", split_heads(q, n_head))  # (B, nh, T, hd)
    k = _note(trace, "split_heads(key)", split_heads(k, n_head))    # (B, nh, T, hd)
    v = _note(trace, "split_heads(value)", split_heads(v, n_head))  # (B, nh, T, hd)

    # Which (query, key) pairs may interact: the causal triangle, intersected with the padding mask.
    if causal_buffer is None:
        causal_buffer = causal_mask_buffer(T)
    if causal_buffer.shape[-1] < T:
        raise ValueError(f"sequence length {T} exceeds the causal buffer ({causal_buffer.shape[-1]})")
    keep = ops.slice(causal_buffer, (0, 0, 0, 0), (1, 1, T, T))    # (1, 1, T, T)
    _note(trace, "causal mask (tril buffer)", keep)
    if attention_mask is not None:
        padding = ops.reshape(ops.cast(attention_mask, mindspore.bool_), (B, 1, 1, T))  # (B, 1, 1, T)
        keep = ops.logical_and(keep, padding)                       # (B, 1, T, T)
        _note(trace, "causal & padding mask", keep)
    out, weights = scaled_masked_attention(q, k, v, keep, trace)    # (B, nh, T, hd), (B, nh, T, T)
    out = _note(trace, "merge_heads", merge_heads(out))            # (B, T, C)
    out = _note(trace, "c_proj (Conv1D)", conv1d(out, c_proj_weight, c_proj_bias))  # (B, T, C)
    return (out, weights) if return_weights else out


class MaskedSelfAttention(nn.Cell):
    """The same computation as a Cell holding GPT-2's parameters and ``bias`` buffer.

    Parameter names and layouts mirror a Hugging Face ``GPT2Attention`` (``c_attn.weight`` (C, 3C),
    ``c_proj.weight`` (C, C)), so :meth:`load_from_library` is a plain copy.
    """

    def __init__(self, n_embd: int = 768, n_head: int = 12, n_positions: int = 1024, seed: int = 0):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        self.n_embd, self.n_head = n_embd, n_head
        rng = np.random.default_rng(seed)  # GPT-2's init: N(0, 0.02) weights, zero biases

        def param(shape, name, std=0.02):
            init = rng.normal(0.0, std, shape) if std else np.zeros(shape)
            return Parameter(Tensor(init.astype(np.float32)), name=name)

        self.c_attn_weight = param((n_embd, 3 * n_embd), "c_attn.weight")
        self.c_attn_bias = param((3 * n_embd,), "c_attn.bias", std=0)
        self.c_proj_weight = param((n_embd, n_embd), "c_proj.weight")
        self.c_proj_bias = param((n_embd,), "c_proj.bias", std=0)
        self.bias = causal_mask_buffer(n_positions)

    def construct(self, x, attention_mask=None, return_weights=False, trace: Trace = None):
        return masked_self_attention(
            x, self.c_attn_weight, self.c_attn_bias, self.c_proj_weight, self.c_proj_bias,
            self.n_head, attention_mask=attention_mask, causal_buffer=self.bias,
            return_weights=return_weights, trace=trace,
        )

    def load_from_library(self, attn) -> "MaskedSelfAttention":
        """Copy weights from a Hugging Face/mindnlp ``GPT2Attention`` module."""
        pairs = {
            self.c_attn_weight: attn.c_attn.weight,
            self.c_attn_bias: attn.c_attn.bias,
            self.c_proj_weight: attn.c_proj.weight,
            self.c_proj_bias: attn.c_proj.bias,
        }
        for mine, theirs in pairs.items():
            value = theirs.detach().cpu().numpy()
            if tuple(value.shape) != tuple(mine.shape):
                raise ValueError(f"{mine.name}: library shape {value.shape} != {mine.shape}")
            mine.set_data(Tensor(value.astype(np.float32)))
        return self
