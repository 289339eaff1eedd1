"""Greedy GPT-2 decoding as one compiled MindSpore graph per token, with a static-shape KV cache.

Why: Hugging Face ``generate`` on mindtorch dispatches every op of every layer from Python, one
MindSpore kernel launch at a time, plus generate's own per-token bookkeeping. On CPU that costs
far more than the arithmetic (see docs/performance.md). Here a whole decode step (embed, every
layer's attention and MLP, the LM head, argmax) is a single ``mindspore.jit`` graph. Its
shapes never change: the KV cache is preallocated to ``max_len`` positions and each step writes
one position and masks the ones not yet written, so the graph compiles once and is reused for
every token and every prompt.

The attention is the hand-derived one (:mod:`ms_gpt2.attention`: Conv1D projections,
split/merge heads, scaled masked softmax), loaded with the model's own weights; tests check that
the tokens equal the library's greedy ``generate``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import mindspore
from mindspore import Parameter, Tensor, nn, ops

from ms_gpt2.attention import conv1d, merge_heads, scaled_masked_attention, split_heads


FLOAT32_MIN = float(np.finfo(np.float32).min)


def layer_norm(eps: float):
    """GPT-2's LayerNorm over the last axis as one fused kernel (max error 5e-7 against float64 on
    CPU): a decode step is small enough that per-kernel launch cost, not arithmetic, dominates,
    and the op-by-op form costs nine launches."""
    return ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)


def gelu_new():
    """GPT-2's tanh-approximated GELU. MindSpore's ``GeLU`` is exactly that formula in one kernel
    (max error 4e-7 against float64 on CPU; the separate CPU ``tanh`` kernel errs by 1e-4,
    see :mod:`ms_gpt2.compat`), replacing the twelve launches of the formula spelt out."""
    return ops.GeLU()


def _param(tensor, name: str) -> Parameter:
    array = tensor.detach().cpu().numpy().astype(np.float32)
    return Parameter(Tensor(np.ascontiguousarray(array)), name=name, requires_grad=False)


class Block(nn.Cell):
    """One GPT-2 layer, with its KV cache held in place as two Parameters.

    Each layer owns its parameters (no slicing of stacked weights inside the graph, which would
    copy every weight on every token). The cache is written in place, one slot per token
    (``ScatterNdUpdate``): rebuilding it each step (``where(write, k, cache)``) copied the whole
    cache per layer per token, 10% of a step at 128 positions and growing with the context.
    """

    def __init__(self, block, index: int, n_head: int, eps: float, batch: int, max_len: int):
        super().__init__()
        self.n_head, self.eps = n_head, eps
        p = f"h{index}."
        self.ln1_w, self.ln1_b = _param(block.ln_1.weight, p + "ln1_w"), _param(block.ln_1.bias, p + "ln1_b")
        self.attn_w, self.attn_b = _param(block.attn.c_attn.weight, p + "attn_w"), _param(block.attn.c_attn.bias, p + "attn_b")
        self.proj_w, self.proj_b = _param(block.attn.c_proj.weight, p + "proj_w"), _param(block.attn.c_proj.bias, p + "proj_b")
        self.ln2_w, self.ln2_b = _param(block.ln_2.weight, p + "ln2_w"), _param(block.ln_2.bias, p + "ln2_b")
        self.fc_w, self.fc_b = _param(block.mlp.c_fc.weight, p + "fc_w"), _param(block.mlp.c_fc.bias, p + "fc_b")
        self.mlp_w, self.mlp_b = _param(block.mlp.c_proj.weight, p + "mlp_w"), _param(block.mlp.c_proj.bias, p + "mlp_b")
        self.layer_norm, self.gelu = layer_norm(eps), gelu_new()
        n_embd = block.ln_1.weight.shape[0]
        shape = (batch, n_head, max_len, n_embd // n_head)
        self.k_cache = Parameter(Tensor(np.zeros(shape, np.float32)), name=p + "k_cache", requires_grad=False)
        self.v_cache = Parameter(Tensor(np.zeros(shape, np.float32)), name=p + "v_cache", requires_grad=False)
        self.write_slot = ops.ScatterNdUpdate()

    def heads(self, x):
        """x (B, T, C) -> q, k, v, each (B, nh, T, hd)."""
        h = self.layer_norm(x, self.ln1_w, self.ln1_b)[0]
        q, k, v = ops.split(conv1d(h, self.attn_w, self.attn_b), x.shape[-1], axis=2)   # 3 x (B, T, C)
        return split_heads(q, self.n_head), split_heads(k, self.n_head), split_heads(v, self.n_head)

    def finish(self, x, attended):
        """Residual + output projection, then residual + MLP: (B, T, C) -> (B, T, C)."""
        x = ops.add(x, conv1d(merge_heads(attended), self.proj_w, self.proj_b))
        h = self.layer_norm(x, self.ln2_w, self.ln2_b)[0]
        return ops.add(x, conv1d(self.gelu(conv1d(h, self.fc_w, self.fc_b)), self.mlp_w, self.mlp_b))

    def construct(self, x, slot, keep):
        # decode: x (B, 1, C); slot (B, nh, 3): [b, h, position] per row; keep: slots written so far
        q, k, v = self.heads(x)                                                   # (B, nh, 1, hd)
        B, nh, _, hd = k.shape
        k_all = self.write_slot(self.k_cache, slot, ops.reshape(k, (B, nh, hd)))  # (B, nh, M, hd), in place
        v_all = self.write_slot(self.v_cache, slot, ops.reshape(v, (B, nh, hd)))
        a, _ = scaled_masked_attention(q, k_all, v_all, keep, fill_value=FLOAT32_MIN)  # (B, nh, 1, hd)
        return self.finish(x, a)

    def fill(self, x, keep):
        # prefill: x (B, T, C); writes cache slots [0, T) in one go
        q, k, v = self.heads(x)                                                   # (B, nh, T, hd)
        B, nh, T, hd = k.shape
        M = self.k_cache.shape[2]
        k_all = ops.concat((k, ops.slice(self.k_cache, (0, 0, T, 0), (B, nh, M - T, hd))), 2)  # (B, nh, M, hd)
        v_all = ops.concat((v, ops.slice(self.v_cache, (0, 0, T, 0), (B, nh, M - T, hd))), 2)
        ops.assign(self.k_cache, k_all)
        ops.assign(self.v_cache, v_all)
        a, _ = scaled_masked_attention(q, k_all, v_all, keep, fill_value=FLOAT32_MIN)
        return self.finish(x, a)


class DecodeStep(nn.Cell):
    """One token through GPT-2: (token (B,), position ()) -> (next token (B,), logits (B, V)).

    The KV cache lives in the layers (see :class:`Block`), so a decoder serves one sequence (or
    one batch of ``batch`` rows) at a time.
    """

    def __init__(self, model, max_len: int, batch: int = 1):
        super().__init__()
        cfg = model.config
        self.n_layer, self.n_head, self.n_embd, self.max_len = cfg.n_layer, cfg.n_head, cfg.n_embd, max_len
        base = model.transformer
        self.wte = _param(base.wte.weight, "wte")              # (V, C): the token embedding
        self.wpe = _param(base.wpe.weight, "wpe")              # (P, C)
        # The (tied) LM head as its own (C, V) copy: a plain MatMul reads it at 1.6x the speed of
        # MatMul(transpose_b) over wte on CPU, worth the extra V*C*4 bytes (65 MB for GPT-2 small).
        self.lm_head_w = _param(base.wte.weight.T, "lm_head_w")
        self.lm_head = ops.MatMul()
        self.ln_f_w, self.ln_f_b = _param(base.ln_f.weight, "ln_f_w"), _param(base.ln_f.bias, "ln_f_b")
        self.eps = float(cfg.layer_norm_epsilon)
        self.ln_f = layer_norm(self.eps)
        self.blocks = nn.CellList([Block(b, i, cfg.n_head, self.eps, batch, max_len) for i, b in enumerate(base.h)])
        self.positions = Tensor(np.arange(max_len, dtype=np.int32))
        rows = np.stack(np.meshgrid(np.arange(batch), np.arange(cfg.n_head), indexing="ij"), -1)  # (B, nh, 2)
        self.slot_base = Tensor(np.concatenate([rows, np.zeros_like(rows[..., :1])], -1).astype(np.int32))  # [b, h, 0]
        self.slot_unit = Tensor(np.array([0, 0, 1], np.int32))

    def construct(self, token, position):
        # token: (B,) int32; position: () int32
        B = token.shape[0]
        x = ops.add(ops.gather(self.wte, token, 0), ops.gather(self.wpe, ops.reshape(position, (1,)), 0))
        x = ops.reshape(x, (B, 1, self.n_embd))                                   # (B, 1, C)
        slot = ops.add(self.slot_base, ops.mul(self.slot_unit, position))          # (B, nh, 3)
        keep = ops.reshape(ops.less_equal(self.positions, position), (1, 1, 1, self.max_len))
        for block in self.blocks:
            x = block(x, slot, keep)
        x = self.ln_f(ops.reshape(x, (B, self.n_embd)), self.ln_f_w, self.ln_f_b)[0]
        logits = self.lm_head(x, self.lm_head_w)                                  # (B, V)
        return ops.cast(ops.argmax(logits, -1), mindspore.int32), logits


class Prefill(nn.Cell):
    """The whole prompt in one pass: fills cache slots [0, T) and returns the next token.

    T is the prompt padded up to a bucket (so few lengths are ever compiled); slots past the real
    prompt hold padding's keys/values, but decode step p overwrites slot p before any query can
    see it (queries only attend to slots <= their own position).
    """

    def __init__(self, step: DecodeStep):
        super().__init__()
        self.step = step  # shares every parameter, and the caches, with the decode step

    def construct(self, tokens, last):
        # tokens: (B, T) int32; last: () int32, index of the real prompt's last token
        s = self.step
        B, T = tokens.shape
        x = ops.add(ops.gather(s.wte, tokens, 0), ops.slice(s.wpe, (0, 0), (T, s.n_embd)))  # (B, T, C)
        query_positions = ops.reshape(ops.slice(s.positions, (0,), (T,)), (T, 1))
        keep = ops.reshape(ops.less_equal(ops.reshape(s.positions, (1, s.max_len)), query_positions),
                           (1, 1, T, s.max_len))                                  # causal over cache slots
        for block in s.blocks:
            x = block.fill(x, keep)
        x = ops.reshape(ops.gather(x, ops.reshape(last, (1,)), 1), (B, s.n_embd))  # the last real position
        logits = s.lm_head(s.ln_f(x, s.ln_f_w, s.ln_f_b)[0], s.lm_head_w)
        return ops.cast(ops.argmax(logits, -1), mindspore.int32), logits


PREFILL_BUCKET = 32


@dataclass
class CompiledGreedyDecoder:
    """Greedy decoding with a compiled step; same tokens as ``model.generate(num_beams=1)``."""

    step: DecodeStep
    prefill: Prefill
    max_len: int

    @classmethod
    def from_model(cls, model, max_len: int | None = None) -> "CompiledGreedyDecoder":
        max_len = max_len or model.config.n_positions
        if max_len > model.config.n_positions:
            raise ValueError(f"max_len={max_len} exceeds the model's n_positions={model.config.n_positions}")
        step = DecodeStep(model, max_len)
        prefill = Prefill(step)
        step.construct = mindspore.jit(step.construct)
        prefill.construct = mindspore.jit(prefill.construct)
        return cls(step, prefill, max_len)

    def run(self, token: int, position: int):
        """One compiled step: ``token`` at ``position`` (cache slots below it must hold this
        sequence's earlier tokens) -> (next token, logits), both (1, ...) MindSpore tensors."""
        return self.step(Tensor(np.array([token], np.int32)), Tensor(np.int32(position)))

    def greedy(self, prompt_ids, max_new_tokens: int, eos_token_id: int | None = None, on_token=None) -> list[int]:
        """New token ids after ``prompt_ids`` (1-D), stopping after ``eos_token_id`` if given.
        ``on_token(id)`` is called as each token is decided (for streaming)."""
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("empty prompt")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if len(prompt) + max_new_tokens > self.max_len:
            raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds max_len={self.max_len}")
        token, _ = self.run_prefill(prompt)
        out = [int(token.asnumpy()[0])]
        if on_token:
            on_token(out[-1])
        for position in range(len(prompt), len(prompt) + max_new_tokens - 1):
            if eos_token_id is not None and out[-1] == eos_token_id:
                break
            token, _ = self.run(out[-1], position)
            out.append(int(token.asnumpy()[0]))
            if on_token:
                on_token(out[-1])
        return out

    def run_prefill(self, prompt: list[int]):
        """The prompt through the compiled prefill graph, padded to a multiple of PREFILL_BUCKET."""
        padded = min(-(-len(prompt) // PREFILL_BUCKET) * PREFILL_BUCKET, self.max_len - 1)
        tokens = np.zeros((1, padded), np.int32)
        tokens[0, :len(prompt)] = prompt
        return self.prefill(Tensor(tokens), Tensor(np.int32(len(prompt) - 1)))


CACHE_BUCKET = 64


def decoder_for(model, needed_length: int) -> CompiledGreedyDecoder:
    """The model's compiled decoder for sequences up to ``needed_length`` (rounded up to a bucket,
    so a handful of graphs serve every length); built once per model and bucket."""
    limit = model.config.n_positions
    max_len = min(-(-needed_length // CACHE_BUCKET) * CACHE_BUCKET, limit)
    cache = model.__dict__.setdefault("_ms_gpt2_compiled_decoders", {})
    if max_len not in cache:
        cache[max_len] = CompiledGreedyDecoder.from_model(model, max_len)
    return cache[max_len]
