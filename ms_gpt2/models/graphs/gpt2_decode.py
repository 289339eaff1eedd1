"""GPT-2 decoding (greedy and beam search) as one compiled MindSpore graph per token, with a
static-shape KV cache.

Why: Hugging Face ``generate`` on mindtorch dispatches every op of every layer from Python, one
MindSpore kernel launch at a time, plus generate's own per-token bookkeeping. On CPU that costs
far more than the arithmetic (see docs/performance.md). Here a whole decode step (embed, every
layer's attention and MLP, the LM head, argmax) is a single ``mindspore.jit`` graph. Its
shapes never change: the KV cache is preallocated to ``max_len`` positions and each step writes
one position and masks the ones not yet written, so the graph compiles once and is reused for
every token and every prompt.

The layers are :class:`ms_gpt2.models.graphs.gpt2_block.Block`, the block the training graph
runs, with its static KV cache, loaded with the model's own weights; tests check that the tokens
equal the library's greedy ``generate``.
"""
from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import mindspore
from mindspore import Parameter, Tensor, nn, ops

from ms_gpt2.models.graphs.gpt2_block import Block, block_parameter_names, unsupported
from ms_gpt2.models.graphs.ops import FLOAT32_MIN, attention_bias, layer_norm

log = logging.getLogger(__name__)


class UnsupportedModel(ValueError):
    """The model's config asks for something the compiled graph does not implement
    (:func:`ms_gpt2.models.graphs.gpt2_block.unsupported`)."""


def _param(tensor, name: str) -> Parameter:
    array = tensor.detach().cpu().numpy().astype(np.float32)
    return Parameter(Tensor(np.ascontiguousarray(array)), name=name, requires_grad=False)


def _weight_sources(model) -> dict:
    """The model's tensors behind every compiled weight, by compiled name: Hugging Face's for the
    embeddings, the blocks and the final LayerNorm, ``lm_head_w`` for the LM head's (C, V) copy."""
    def tensor(name):  # "transformer.h.0.ln_1.weight" -> the module attribute it names
        obj = model
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj

    names = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"]
    names += [n for i in range(model.config.n_layer) for n in block_parameter_names(i)]
    # The LM head (wte itself when tied) as its own (C, V) copy: a plain MatMul reads it at 1.6x the
    # speed of MatMul(transpose_b) over wte on CPU, worth the extra V*C*4 bytes (65 MB for GPT-2 small).
    return {**{name: tensor(name) for name in names}, "lm_head_w": model.lm_head.weight.T}


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


class DecodeStep(nn.Cell):
    """One token through GPT-2: (token (B,), position ()) -> (next token (B,), logits (B, V)).

    The KV cache lives in the layers (:class:`ms_gpt2.models.graphs.gpt2_block.Block` with a
    cache), so a decoder serves one sequence (or one batch of ``batch`` rows) at a time.
    """

    def __init__(self, model, max_len: int, batch: int = 1, weights: dict | None = None):
        super().__init__()
        cfg = model.config
        weights = weights if weights is not None else compiled_weights(model)
        self.n_head, self.n_embd, self.max_len = cfg.n_head, cfg.n_embd, max_len
        self.wte, self.wpe = weights["transformer.wte.weight"], weights["transformer.wpe.weight"]  # (V, C), (P, C)
        self.lm_head_w, self.lm_head = weights["lm_head_w"], ops.MatMul()    # (C, V), see _weight_sources
        self.ln_f_w, self.ln_f_b = weights["transformer.ln_f.weight"], weights["transformer.ln_f.bias"]
        self.ln_f = layer_norm(float(cfg.layer_norm_epsilon))
        self.blocks = nn.CellList([Block([weights[n] for n in block_parameter_names(i)], cfg.n_head,
                                         float(cfg.layer_norm_epsilon), cache=(batch, max_len), name=f"h{i}.")
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
        bias = attention_bias(keep, (B, self.n_head, 1, self.max_len), x.dtype, FLOAT32_MIN)  # (B, nh, 1, M)
        for block in self.blocks:
            x = block.step(x, slot, bias)
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
        bias = attention_bias(keep, (B, s.n_head, T, s.max_len), x.dtype, FLOAT32_MIN)  # (B, nh, T, M)
        for block in s.blocks:
            x = block.fill(x, bias)
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
