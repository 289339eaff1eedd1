"""GPT-2 decoding (greedy and beam search) as one compiled MindSpore graph per token, with a
static-shape KV cache.

Why: Hugging Face ``generate`` on mindtorch dispatches every op of every layer from Python, one
MindSpore kernel launch at a time, plus generate's own per-token bookkeeping. On CPU that costs
far more than the arithmetic (see docs/performance.md). Here a whole decode step (embed, every
layer's attention and MLP, the LM head, argmax) is a single ``mindspore.jit`` graph. Its
shapes never change: the KV cache is preallocated to ``max_len`` positions and each step writes
one position and masks the ones not yet written, so the graph compiles once and is reused for
every token and every prompt.

The attention is the hand-derived one (:mod:`ms_gpt2.models.attention`: Conv1D projections,
split/merge heads, scaled masked softmax), loaded with the model's own weights; tests check that
the tokens equal the library's greedy ``generate``.
"""
from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import mindspore
from mindspore import Parameter, Tensor, nn, ops

from ms_gpt2.models.attention import conv1d, merge_heads, scaled_masked_attention, split_heads


FLOAT32_MIN = float(np.finfo(np.float32).min)

log = logging.getLogger(__name__)


class UnsupportedModel(ValueError):
    """The model's config asks for something the compiled graph does not implement."""


def unsupported(model) -> str | None:
    """Why the compiled decoder would not compute what the library computes for ``model``, or
    None if it does. The graph implements GPT-2 as :class:`Block` spells it out: ``gelu_new``,
    attention scores scaled by 1/sqrt(head_dim) only, an LM head without bias, float32. Any
    other setting of the config flags that change that arithmetic is refused here, so callers
    fall back to Hugging Face ``generate`` instead of silently producing other tokens."""
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


def layer_norm(eps: float):
    """GPT-2's LayerNorm over the last axis as one fused kernel (max error 5e-7 against float64 on
    CPU): a decode step is small enough that per-kernel launch cost, not arithmetic, dominates,
    and the op-by-op form costs nine launches."""
    return ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)


def gelu_new():
    """GPT-2's tanh-approximated GELU. MindSpore's ``GeLU`` is exactly that formula in one kernel
    (max error 4e-7 against float64 on CPU; the separate CPU ``tanh`` kernel errs by 1e-4,
    see :mod:`ms_gpt2.infra.compat`), replacing the twelve launches of the formula spelt out."""
    return ops.GeLU()


def _param(tensor, name: str) -> Parameter:
    array = tensor.detach().cpu().numpy().astype(np.float32)
    return Parameter(Tensor(np.ascontiguousarray(array)), name=name, requires_grad=False)


def _weight_sources(model) -> dict:
    """The model's tensors behind every compiled weight, by compiled name."""
    base = model.transformer
    weights = {"wte": base.wte.weight, "wpe": base.wpe.weight, "ln_f_w": base.ln_f.weight, "ln_f_b": base.ln_f.bias,
               # The LM head (wte itself when tied) as its own (C, V) copy: a plain MatMul reads it at 1.6x the
               # speed of MatMul(transpose_b) over wte on CPU, worth the extra V*C*4 bytes (65 MB for GPT-2 small).
               "lm_head_w": model.lm_head.weight.T}
    for i, block in enumerate(base.h):
        for name, module in (("ln1", block.ln_1), ("attn", block.attn.c_attn), ("proj", block.attn.c_proj),
                             ("ln2", block.ln_2), ("fc", block.mlp.c_fc), ("mlp", block.mlp.c_proj)):
            weights[f"h{i}.{name}_w"], weights[f"h{i}.{name}_b"] = module.weight, module.bias
    return weights


def compiled_weights(model) -> dict[str, Parameter]:
    """Every weight the compiled graphs read, copied once from ``model`` into MindSpore
    Parameters. A model's decoders (one per length bucket and batch size) all share this one
    copy rather than each holding its own (~470 MB for GPT-2 small)."""
    return {name: _param(tensor, name) for name, tensor in _weight_sources(model).items()}


def refresh_weights(weights: dict[str, Parameter], model) -> None:
    """Copy ``model``'s current values into ``weights`` in place (same shapes): every compiled
    graph that reads them sees the new values without being rebuilt or recompiled. In place
    means ``ops.assign``: ``Parameter.set_data`` swaps in a new buffer that graphs already
    compiled do not read correctly (they decoded garbage when tried)."""
    for name, tensor in _weight_sources(model).items():
        array = tensor.detach().cpu().numpy().astype(np.float32)
        ops.assign(weights[name], Tensor(np.ascontiguousarray(array)))


def weights_fingerprint(model) -> tuple[tuple, tuple]:
    """(structure, contents) of ``model`` as the compiled graphs see it.

    ``structure``: the geometry baked into a graph (parameter names and shapes, heads, layer-norm
    epsilon); ``contents``: a CRC-32 of every byte of every parameter. Why hash everything: the
    weights can change in place in ways nothing announces (an optimizer's ``add_``, ``copy_``,
    ``load_state_dict``), mindtorch tensors keep no version counter, and a data pointer or a
    sample of a few values misses such updates. zlib's CRC-32 runs at several GB/s, so this costs
    about 0.06 s per 270 MB of float32 weights on one CPU core (~0.12 s for GPT-2 small, a few
    decode steps), paid once per ``decoder_for`` call, i.e. once per generated text."""
    cfg = model.config
    structure, contents = [cfg.n_head, float(cfg.layer_norm_epsilon)], []
    for name, p in model.named_parameters():
        array = np.ascontiguousarray(p.detach().cpu().numpy())
        structure.append((name, array.shape, str(array.dtype)))
        contents.append(zlib.crc32(array.view(np.uint8).reshape(-1)))
    return tuple(structure), tuple(contents)


class Block(nn.Cell):
    """One GPT-2 layer, with its KV cache held in place as two Parameters.

    Each layer owns its parameters (no slicing of stacked weights inside the graph, which would
    copy every weight on every token). The cache is written in place, one slot per token
    (``ScatterNdUpdate``): rebuilding it each step (``where(write, k, cache)``) copied the whole
    cache per layer per token, 10% of a step at 128 positions and growing with the context.
    """

    def __init__(self, weights: dict, index: int, n_head: int, eps: float, batch: int, max_len: int):
        super().__init__()
        self.n_head = n_head
        p = f"h{index}."
        self.ln1_w, self.ln1_b = weights[p + "ln1_w"], weights[p + "ln1_b"]
        self.attn_w, self.attn_b = weights[p + "attn_w"], weights[p + "attn_b"]
        self.proj_w, self.proj_b = weights[p + "proj_w"], weights[p + "proj_b"]
        self.ln2_w, self.ln2_b = weights[p + "ln2_w"], weights[p + "ln2_b"]
        self.fc_w, self.fc_b = weights[p + "fc_w"], weights[p + "fc_b"]
        self.mlp_w, self.mlp_b = weights[p + "mlp_w"], weights[p + "mlp_b"]
        self.layer_norm, self.gelu = layer_norm(eps), gelu_new()
        n_embd = self.ln1_w.shape[0]
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
        ops.assign(self.k_cache, ops.broadcast_to(k_all, self.k_cache.shape))  # one prompt -> every beam's row
        ops.assign(self.v_cache, ops.broadcast_to(v_all, self.v_cache.shape))
        a, _ = scaled_masked_attention(q, k_all, v_all, keep, fill_value=FLOAT32_MIN)
        return self.finish(x, a)


class DecodeStep(nn.Cell):
    """One token through GPT-2: (token (B,), position ()) -> (next token (B,), logits (B, V)).

    The KV cache lives in the layers (see :class:`Block`), so a decoder serves one sequence (or
    one batch of ``batch`` rows) at a time.
    """

    def __init__(self, model, max_len: int, batch: int = 1, weights: dict | None = None):
        super().__init__()
        cfg = model.config
        weights = weights if weights is not None else compiled_weights(model)
        self.n_head, self.n_embd, self.max_len = cfg.n_head, cfg.n_embd, max_len
        self.wte, self.wpe = weights["wte"], weights["wpe"]                  # (V, C), (P, C)
        self.lm_head_w, self.lm_head = weights["lm_head_w"], ops.MatMul()    # (C, V), see compiled_weights
        self.ln_f_w, self.ln_f_b = weights["ln_f_w"], weights["ln_f_b"]
        self.ln_f = layer_norm(float(cfg.layer_norm_epsilon))
        self.blocks = nn.CellList([Block(weights, i, cfg.n_head, float(cfg.layer_norm_epsilon), batch, max_len)
                                   for i in range(cfg.n_layer)])
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


class ReorderCache(nn.Cell):
    """Beam search: row b of every layer's cache becomes row ``index[b]`` (the beam it extends)."""

    def __init__(self, step: DecodeStep):
        super().__init__()
        self.step = step

    def construct(self, index):
        for block in self.step.blocks:
            ops.assign(block.k_cache, ops.gather(block.k_cache, index, 0))
            ops.assign(block.v_cache, ops.gather(block.v_cache, index, 0))
        return index


PREFILL_BUCKET = 32


def _round_up(n: int, bucket: int) -> int:
    return -(-n // bucket) * bucket


@dataclass
class CompiledDecoder:
    """Compiled GPT-2 decoding for ``batch`` rows sharing one prompt: greedy (batch 1, same
    tokens as ``model.generate(num_beams=1)``) and beam search (batch = beams, same tokens as
    ``model.generate(num_beams=...)``, see :func:`beam_search`)."""

    step: DecodeStep
    prefill: Prefill
    reorder: ReorderCache
    max_len: int
    batch: int = 1

    @classmethod
    def from_model(cls, model, max_len: int | None = None, batch: int = 1,
                   weights: dict | None = None) -> "CompiledDecoder":
        """``weights``: :func:`compiled_weights` of ``model``, to share with its other decoders."""
        reason = unsupported(model)
        if reason is not None:
            raise UnsupportedModel(f"the compiled decoder does not implement {reason}")
        max_len = max_len or model.config.n_positions
        if max_len > model.config.n_positions:
            raise ValueError(f"max_len={max_len} exceeds the model's n_positions={model.config.n_positions}")
        step = DecodeStep(model, max_len, batch, weights)
        prefill, reorder = Prefill(step), ReorderCache(step)
        for cell in (step, prefill, reorder):
            cell.construct = mindspore.jit(cell.construct)
        return cls(step, prefill, reorder, max_len, batch)

    @property
    def vocab_size(self) -> int:
        return self.step.wte.shape[0]

    def run(self, token, position: int):
        """One compiled step: ``token`` (an int, or one per row) at ``position`` (cache slots below
        it must hold this sequence's earlier tokens) -> (next tokens (B,), logits (B, V)), as
        MindSpore tensors."""
        tokens = np.broadcast_to(np.asarray(token, np.int32), (self.batch,))
        return self.step(Tensor(np.ascontiguousarray(tokens)), Tensor(np.int32(position)))

    def check(self, prompt_ids, max_new_tokens: int) -> list[int]:
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("empty prompt")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if len(prompt) + max_new_tokens > self.max_len:
            raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds max_len={self.max_len}")
        return prompt

    def greedy(self, prompt_ids, max_new_tokens: int, eos_token_id: int | None = None, on_token=None) -> list[int]:
        """New token ids after ``prompt_ids`` (1-D), stopping after ``eos_token_id`` if given.
        ``on_token(id)`` is called as each token is decided (for streaming)."""
        if self.batch != 1:
            raise ValueError(f"greedy decoding needs a batch-1 decoder, this one has {self.batch} rows")
        prompt = self.check(prompt_ids, max_new_tokens)
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
        """The prompt through the compiled prefill graph, padded to a multiple of PREFILL_BUCKET;
        its keys and values go to every row of the cache. -> (next token (1,), logits (1, V))."""
        padded = min(_round_up(len(prompt), PREFILL_BUCKET), self.max_len - 1)
        tokens = np.zeros((1, padded), np.int32)
        tokens[0, :len(prompt)] = prompt
        return self.prefill(Tensor(tokens), Tensor(np.int32(len(prompt) - 1)))

    def reorder_cache(self, rows: np.ndarray) -> None:
        if not np.array_equal(rows, np.arange(self.batch)):
            self.reorder(Tensor(rows.astype(np.int32)))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def banned_ngram_tokens(sequence: np.ndarray, n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in ``sequence`` (Hugging Face's
    ``NoRepeatNGramLogitsProcessor`` rule, for one row)."""
    if n <= 0 or len(sequence) + 1 < n:
        return []
    tail = tuple(sequence[len(sequence) - n + 1:]) if n > 1 else ()
    return [int(sequence[i + n - 1]) for i in range(len(sequence) - n + 1)
            if tuple(sequence[i:i + n - 1]) == tail]


def beam_search(decoder: CompiledDecoder, prompt_ids, max_new_tokens: int, eos_token_id: int | None = None,
                no_repeat_ngram_size: int = 0, no_repeat_from: int = 0, min_new_tokens: int = 0,
                length_penalty: float = 1.0, early_stopping: bool | str = False) -> list[int]:
    """Beam search with ``decoder.batch`` beams on the compiled step; returns the best sequence's
    new tokens (ending with ``eos_token_id`` if it finished on it).

    Why not Hugging Face's loop: it drives the model one mindtorch op at a time and keeps its own
    cache, which a static compiled graph cannot share. This is its algorithm (transformers 4.56
    ``GenerationMixin._beam_search``, one prompt): keep the top 2·beams continuations, finished
    ones (eos, or the length limit) scored by sum of log-probs / generated length^length_penalty,
    the same early-stop heuristic and ``early_stopping`` modes, so the tokens are the library's
    (tests compare them). The n-gram ban covers the tokens from ``no_repeat_from`` on (0: the
    whole sequence as in the library; the prompt length: the summary only). The prompt runs
    once and its keys/values are shared by every beam; only row reorders copy the cache.
    """
    prompt = decoder.check(prompt_ids, max_new_tokens)
    beams, vocab, T = decoder.batch, decoder.vocab_size, len(prompt)
    keep = max(2, 1 + (eos_token_id is not None)) * beams
    max_length = T + max_new_tokens
    running = np.zeros((beams, max_length), np.int64)
    running[:, :T] = prompt
    running_scores = np.full(beams, -1e9, np.float32)
    running_scores[0] = 0.0                          # identical beams at first: let only one expand
    finished = running.copy()
    finished_scores = np.full(beams, -1e9, np.float32)
    finished_lengths = np.zeros(beams, np.int64)
    is_finished = np.zeros(beams, bool)
    improvable = True

    _, logits = decoder.run_prefill(prompt)
    logits = np.broadcast_to(logits.asnumpy().astype(np.float32), (beams, vocab))
    cur_len = T
    while True:
        log_probs = _log_softmax(logits).astype(np.float32)
        if eos_token_id is not None and cur_len - T < min_new_tokens:
            log_probs[:, eos_token_id] = -np.inf
        if no_repeat_ngram_size:
            for b in range(beams):
                log_probs[b, banned_ngram_tokens(running[b, no_repeat_from:cur_len], no_repeat_ngram_size)] = -np.inf
        flat = (log_probs + running_scores[:, None]).reshape(-1)
        top = np.argsort(-flat, kind="stable")[:keep]
        top_scores, source, tokens = flat[top], top // vocab, top % vocab
        candidates = running[source].copy()
        candidates[:, cur_len] = tokens
        stops = np.full(keep, cur_len + 1 >= max_length)
        if eos_token_id is not None:
            stops |= tokens == eos_token_id

        alive = top_scores + stops.astype(np.float32) * np.float32(-1e9)
        chosen = np.argsort(-alive, kind="stable")[:beams]
        running, running_scores, rows = candidates[chosen], alive[chosen], source[chosen]

        just_finished = stops & (np.arange(keep) < beams)
        scores = top_scores / np.float32((cur_len + 1 - T) ** length_penalty)
        if (early_stopping is True and is_finished.all()) or not improvable:
            scores = scores + np.float32(-1e9)
        scores = scores + (~just_finished).astype(np.float32) * np.float32(-1e9)
        merged = np.concatenate([finished_scores, scores])
        best = np.argsort(-merged, kind="stable")[:beams]
        finished = np.concatenate([finished, candidates])[best]
        finished_lengths = np.concatenate([finished_lengths, np.full(keep, cur_len + 1 - T)])[best]
        is_finished = np.concatenate([is_finished, just_finished])[best]
        finished_scores = merged[best]

        cur_len += 1
        length = (max_length if early_stopping == "never" and length_penalty > 0 else cur_len) - T
        best_possible = running_scores[0] / np.float32(length ** length_penalty)
        worst_finished = np.where(is_finished, finished_scores.min(), np.float32(-1e9))
        improvable = improvable and bool(np.any(best_possible > worst_finished))
        if not improvable or (early_stopping is True and is_finished.all()) or stops.all():
            break
        decoder.reorder_cache(rows)
        _, logits = decoder.run(running[:, cur_len - 1], cur_len - 1)
        logits = logits.asnumpy().astype(np.float32)
    return [int(t) for t in finished[0, T:T + finished_lengths[0]]]


CACHE_BUCKET = 64
MAX_CACHED_DECODERS = 4  # per model; GPT-2 small's 1024-position cache for 5 beams alone is 377 MB


@dataclass
class _ModelDecoders:
    """What :func:`decoder_for` keeps on a model: one weight copy, and its decoders by
    (max_len, batch), least recently used first."""
    structure: tuple
    contents: tuple
    weights: dict
    decoders: OrderedDict = field(default_factory=OrderedDict)


_CACHE_ATTRIBUTE = "_ms_gpt2_compiled_decoders"


def decoder_for(model, needed_length: int, batch: int = 1) -> CompiledDecoder:
    """The model's compiled decoder for ``batch`` rows and sequences up to ``needed_length``
    (rounded up to a bucket, so a handful of graphs serve every length).

    Decoders are kept on the model, all on one shared copy of the weights, and reused: at most
    ``MAX_CACHED_DECODERS`` of them, the least recently used dropped first. Every call checks
    :func:`weights_fingerprint`: weights changed since the copy was made (training, an in-place
    update, ``load_state_dict``) are copied again into the same Parameters, so the compiled
    graphs stay valid and decode with the new values; changed geometry starts afresh. Raises
    :class:`UnsupportedModel` for configs the graph does not implement (see :func:`unsupported`)."""
    reason = unsupported(model)
    if reason is not None:
        raise UnsupportedModel(f"the compiled decoder does not implement {reason}")
    max_len = min(_round_up(needed_length, CACHE_BUCKET), model.config.n_positions)
    structure, contents = weights_fingerprint(model)
    cache = model.__dict__.get(_CACHE_ATTRIBUTE)
    if cache is None or cache.structure != structure:
        cache = _ModelDecoders(structure, contents, compiled_weights(model))
        model.__dict__[_CACHE_ATTRIBUTE] = cache
    elif cache.contents != contents:
        log.info("model weights changed since they were compiled: copying them again")
        refresh_weights(cache.weights, model)
        cache.contents = contents
    key = (max_len, batch)
    if key in cache.decoders:
        cache.decoders.move_to_end(key)
    else:
        cache.decoders[key] = CompiledDecoder.from_model(model, max_len, batch, cache.weights)
        while len(cache.decoders) > MAX_CACHED_DECODERS:
            cache.decoders.popitem(last=False)
    return cache.decoders[key]


def decoder_or_none(model, needed_length: int, batch: int = 1) -> CompiledDecoder | None:
    """:func:`decoder_for`, or None when the compiled graph does not implement the model's config:
    the caller then uses Hugging Face ``generate``. The fallback is logged once per model."""
    reason = unsupported(model)
    if reason is None:
        return decoder_for(model, needed_length, batch)
    logged = model.__dict__.setdefault("_ms_gpt2_fallbacks_logged", set())
    if reason not in logged:
        logged.add(reason)
        log.warning("compiled decoder does not implement %s; decoding with Hugging Face generate", reason)
    return None
