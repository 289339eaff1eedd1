"""Run the library's GPT2Attention and the hand-derived one on the same input, and compare.

The library side is a real ``GPT2Model`` forward pass: a hook captures exactly what layer ``i``'s
attention received (hidden states after ``ln_1``) and returned, so the comparison includes the
library's own mask construction rather than a re-implementation of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ms_gpt2.infra import runtime

runtime.ensure()

import mindspore  # noqa: E402
import torch  # noqa: E402  (mindtorch)

from ms_gpt2.models.attention import MaskedSelfAttention  # noqa: E402


@dataclass
class AttentionIO:
    hidden_states: np.ndarray  # (B, T, C) what the library attention got
    output: np.ndarray  # (B, T, C) what it returned


def capture_library_attention(model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                              layer: int = 0) -> AttentionIO:
    """Forward ``model`` (a GPT2Model/GPT2LMHeadModel) and capture layer ``layer``'s attention I/O."""
    base = getattr(model, "transformer", model)
    captured = {}

    def hook(module, args, kwargs, out):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        captured["io"] = AttentionIO(hidden.detach().cpu().numpy(), out[0].detach().cpu().numpy())

    handle = base.h[layer].attn.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(
                input_ids=torch.tensor(input_ids, dtype=torch.long),
                attention_mask=None if attention_mask is None else torch.tensor(attention_mask, dtype=torch.long),
            )
    finally:
        handle.remove()
    return captured["io"]


def hand_derived_from(model, layer: int = 0) -> MaskedSelfAttention:
    cfg = model.config
    cell = MaskedSelfAttention(cfg.n_embd, cfg.n_head, cfg.n_positions)
    return cell.load_from_library(getattr(model, "transformer", model).h[layer].attn)


def _outputs(model, input_ids, attention_mask, layer, trace) -> tuple[np.ndarray, np.ndarray]:
    """(library output, hand-derived output) of one layer's attention on the same input."""
    io = capture_library_attention(model, input_ids, attention_mask, layer)
    mine = hand_derived_from(model, layer)
    mask = None if attention_mask is None else mindspore.Tensor(np.asarray(attention_mask, np.int64))
    out = mine(mindspore.Tensor(io.hidden_states), attention_mask=mask, trace=trace)
    return io.output, out.asnumpy()


def max_abs_difference(model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                       layer: int = 0, trace=None) -> float:
    """Max |library - hand-derived| over the whole attention output of one layer."""
    library, mine = _outputs(model, input_ids, attention_mask, layer, trace)
    return float(np.abs(mine - library).max())


def relative_difference(model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                        layer: int = 0, trace=None) -> float:
    """Max |library - hand-derived| / max |library|: the disagreement on the scale of the output.

    At GPT-2's initialisation (weights N(0, 0.02)) the attention output is about 1e-2 and the
    softmax nearly uniform, so an absolute difference says little; relative to the output, float32
    agreement is ~1e-7 while a wrong step (dividing by sqrt(C) instead of sqrt(head_dim)) is ~1e-3."""
    library, mine = _outputs(model, input_ids, attention_mask, layer, trace)
    return float(np.abs(mine - library).max() / np.abs(library).max())
