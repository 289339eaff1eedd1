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
from mindspore import Parameter, Tensor, mutable, nn, ops

from ms_gpt2.attention import conv1d, merge_heads, scaled_masked_attention, split_heads


FLOAT32_MIN = float(np.finfo(np.float32).min)


def layer_norm(x, weight, bias, eps: float):
    mean = ops.mean(x, -1, keep_dims=True)
    centered = ops.sub(x, mean)
    variance = ops.mean(ops.mul(centered, centered), -1, keep_dims=True)
    return ops.add(ops.mul(ops.div(centered, ops.sqrt(ops.add(variance, eps))), weight), bias)


def gelu_new(x):
    """GPT-2's tanh GELU, with tanh = expm1(2u)/(expm1(2u)+2): MindSpore's CPU tanh errs by 1e-4."""
    u = ops.mul(ops.add(x, ops.mul(ops.pow(x, 3.0), 0.044715)), float(np.sqrt(2.0 / np.pi)))
    e = ops.expm1(ops.mul(ops.clamp(u, -20.0, 20.0), 2.0))
    return ops.mul(ops.mul(x, 0.5), ops.add(ops.div(e, ops.add(e, 2.0)), 1.0))


def _param(tensor, name: str) -> Parameter:
    array = tensor.detach().cpu().numpy().astype(np.float32)
    return Parameter(Tensor(np.ascontiguousarray(array)), name=name, requires_grad=False)


class Block(nn.Cell):
    """One GPT-2 layer for a single new position, reading and extending its KV cache.

    Each layer owns its parameters (no slicing of stacked weights inside the graph, which would
    copy every weight on every token).
    """

    def __init__(self, block, index: int, n_head: int, eps: float):
        super().__init__()
        self.n_head, self.eps = n_head, eps
        p = f"h{index}."
        self.ln1_w, self.ln1_b = _param(block.ln_1.weight, p + "ln1_w"), _param(block.ln_1.bias, p + "ln1_b")
        self.attn_w, self.attn_b = _param(block.attn.c_attn.weight, p + "attn_w"), _param(block.attn.c_attn.bias, p + "attn_b")
        self.proj_w, self.proj_b = _param(block.attn.c_proj.weight, p + "proj_w"), _param(block.attn.c_proj.bias, p + "proj_b")
        self.ln2_w, self.ln2_b = _param(block.ln_2.weight, p + "ln2_w"), _param(block.ln_2.bias, p + "ln2_b")
        self.fc_w, self.fc_b = _param(block.mlp.c_fc.weight, p + "fc_w"), _param(block.mlp.c_fc.bias, p + "fc_b")
        self.mlp_w, self.mlp_b = _param(block.mlp.c_proj.weight, p + "mlp_w"), _param(block.mlp.c_proj.bias, p + "mlp_b")

    def heads(self, x):
        """x (B, T, C) -> q, k, v, each (B, nh, T, hd)."""
        h = layer_norm(x, self.ln1_w, self.ln1_b, self.eps)
        q, k, v = ops.split(conv1d(h, self.attn_w, self.attn_b), x.shape[-1], axis=2)   # 3 x (B, T, C)
        return split_heads(q, self.n_head), split_heads(k, self.n_head), split_heads(v, self.n_head)

    def finish(self, x, attended):
        """Residual + output projection, then residual + MLP: (B, T, C) -> (B, T, C)."""
        x = ops.add(x, conv1d(merge_heads(attended), self.proj_w, self.proj_b))
        h = layer_norm(x, self.ln2_w, self.ln2_b, self.eps)
        return ops.add(x, conv1d(gelu_new(conv1d(h, self.fc_w, self.fc_b)), self.mlp_w, self.mlp_b))

    def construct(self, x, k_cache, v_cache, write, keep):
        # decode: x (B, 1, C); caches (B, nh, M, hd); write: this step's slot; keep: slots written so far
        q, k, v = self.heads(x)
        k_cache = ops.where(write, k, k_cache)                                    # (B, nh, M, hd)
        v_cache = ops.where(write, v, v_cache)
        a, _ = scaled_masked_attention(q, k_cache, v_cache, keep, fill_value=FLOAT32_MIN)  # (B, nh, 1, hd)
        return self.finish(x, a), k_cache, v_cache


class DecodeStep(nn.Cell):
    """One token through GPT-2: (token (B,), position (), caches) -> (next token, logits, caches)."""

    def __init__(self, model, max_len: int):
        super().__init__()
        cfg = model.config
        self.n_layer, self.n_head, self.n_embd, self.max_len = cfg.n_layer, cfg.n_head, cfg.n_embd, max_len
        base = model.transformer
        self.wte = _param(base.wte.weight, "wte")              # (V, C), also the (tied) LM head
        self.wpe = _param(base.wpe.weight, "wpe")              # (P, C)
        self.ln_f_w, self.ln_f_b = _param(base.ln_f.weight, "ln_f_w"), _param(base.ln_f.bias, "ln_f_b")
        self.eps = float(cfg.layer_norm_epsilon)
        self.blocks = nn.CellList([Block(b, i, cfg.n_head, self.eps) for i, b in enumerate(base.h)])
        self.positions = Tensor(np.arange(max_len, dtype=np.int32))
        self.lm_head = ops.MatMul(transpose_b=True)

    def construct(self, token, position, k_caches, v_caches):
        # token: (B,) int32; position: () int32; k_caches/v_caches: tuples of L x (B, nh, M, hd)
        B = token.shape[0]
        x = ops.add(ops.gather(self.wte, token, 0), ops.gather(self.wpe, ops.reshape(position, (1,)), 0))
        x = ops.reshape(x, (B, 1, self.n_embd))                                   # (B, 1, C)
        write = ops.reshape(ops.equal(self.positions, position), (1, 1, self.max_len, 1))
        keep = ops.reshape(ops.less_equal(self.positions, position), (1, 1, 1, self.max_len))
        new_k = ()
        new_v = ()
        i = 0
        for block in self.blocks:
            x, k, v = block(x, k_caches[i], v_caches[i], write, keep)
            new_k = new_k + (k,)
            new_v = new_v + (v,)
            i += 1
        x = layer_norm(ops.reshape(x, (B, self.n_embd)), self.ln_f_w, self.ln_f_b, self.eps)
        logits = self.lm_head(x, self.wte)  # (B, V); transpose_b: no per-token copy of the 65 MB wte
        return ops.cast(ops.argmax(logits, -1), mindspore.int32), logits, new_k, new_v


class Prefill(nn.Cell):
    """The whole prompt in one pass: fills cache slots [0, T) and returns the next token.

    T is the prompt padded up to a bucket (so few lengths are ever compiled); slots past the real
    prompt hold padding's keys/values, but decode step p overwrites slot p before any query can
    see it (queries only attend to slots <= their own position).
    """

    def __init__(self, step: DecodeStep):
        super().__init__()
        self.step = step  # shares every parameter with the decode step

    def construct(self, tokens, last, k_caches, v_caches):
        # tokens: (B, T) int32; last: () int32, index of the real prompt's last token
        s = self.step
        B, T = tokens.shape
        x = ops.add(ops.gather(s.wte, tokens, 0), ops.slice(s.wpe, (0, 0), (T, s.n_embd)))  # (B, T, C)
        query_positions = ops.reshape(ops.slice(s.positions, (0,), (T,)), (T, 1))
        keep = ops.reshape(ops.less_equal(ops.reshape(s.positions, (1, s.max_len)), query_positions),
                           (1, 1, T, s.max_len))                                  # causal over cache slots
        new_k = ()
        new_v = ()
        i = 0
        for block in s.blocks:
            q, k, v = block.heads(x)                                              # (B, nh, T, hd)
            k_all = ops.concat((k, ops.slice(k_caches[i], (0, 0, T, 0), (B, s.n_head, s.max_len - T, k.shape[-1]))), 2)
            v_all = ops.concat((v, ops.slice(v_caches[i], (0, 0, T, 0), (B, s.n_head, s.max_len - T, v.shape[-1]))), 2)
            a, _ = scaled_masked_attention(q, k_all, v_all, keep, fill_value=FLOAT32_MIN)
            x = block.finish(x, a)
            new_k = new_k + (k_all,)
            new_v = new_v + (v_all,)
            i += 1
        x = ops.reshape(ops.gather(x, ops.reshape(last, (1,)), 1), (B, s.n_embd))  # the last real position
        logits = s.lm_head(layer_norm(x, s.ln_f_w, s.ln_f_b, s.eps), s.wte)
        return ops.cast(ops.argmax(logits, -1), mindspore.int32), logits, new_k, new_v


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

    def empty_cache(self, batch: int = 1):
        s = self.step
        shape = (batch, s.n_head, self.max_len, s.n_embd // s.n_head)
        return (tuple(Tensor(np.zeros(shape, np.float32)) for _ in range(s.n_layer)),
                tuple(Tensor(np.zeros(shape, np.float32)) for _ in range(s.n_layer)))

    def run(self, token: int, position: int, k_cache, v_cache):
        """One compiled step. Caches go in as ``mutable`` tuples: a plain tuple of tensors would be
        compiled in as a constant, recompiling the graph whenever its values change."""
        return self.step(Tensor(np.array([token], np.int32)), Tensor(np.int32(position)),
                         mutable(tuple(k_cache)), mutable(tuple(v_cache)))

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
        token, _, k_cache, v_cache = self.run_prefill(prompt)
        out = [int(token.asnumpy()[0])]
        if on_token:
            on_token(out[-1])
        for position in range(len(prompt), len(prompt) + max_new_tokens - 1):
            if eos_token_id is not None and out[-1] == eos_token_id:
                break
            token, _, k_cache, v_cache = self.run(out[-1], position, k_cache, v_cache)
            out.append(int(token.asnumpy()[0]))
            if on_token:
                on_token(out[-1])
        return out

    def run_prefill(self, prompt: list[int]):
        """The prompt through the compiled prefill graph, padded to a multiple of PREFILL_BUCKET."""
        padded = min(-(-len(prompt) // PREFILL_BUCKET) * PREFILL_BUCKET, self.max_len - 1)
        tokens = np.zeros((1, padded), np.int32)
        tokens[0, :len(prompt)] = prompt
        k_cache, v_cache = self.empty_cache()
        return self.prefill(Tensor(tokens), Tensor(np.int32(len(prompt) - 1)), mutable(k_cache), mutable(v_cache))


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
