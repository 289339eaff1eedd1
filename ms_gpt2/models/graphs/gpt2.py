"""GPT-2's training loss as one MindSpore graph, over weights held as Parameters by Hugging Face name.

:class:`GPT2Loss` is GPT-2's forward on the hand-derived attention of :mod:`ms_gpt2.models.attention`
(embeddings -> ``n_layer`` pre-LN blocks (:class:`ms_gpt2.models.graphs.gpt2_block.Block`, the very
block the decoder runs) -> final LayerNorm -> the LM head tied to the token embedding) and the
tutorial's loss: next-token cross-entropy, ``[PAD]`` (or -100) labels not
scored, each token weighted, returned as a (weighted sum of token losses, weighted token count)
pair so that a training step can add gradients of sums over micro-batches and processes before
one division. :class:`GPT2Graph` is what the training engine (:mod:`ms_gpt2.engine.compiled`)
knows of it: the weights' names, the graph, and how a batch becomes the graph's inputs.

Dropout keep-masks are a pure function of (seed, global step, micro-batch, rank, site)
(:mod:`ms_gpt2.models.graphs.dropout`): drawn in the graph by a counter-based hash from one int32 key per
step (``dropout_source="device"``, the default off CPU), or drawn on the host by NumPy and passed
in (``"host"``, the default on CPU, where it is faster). Either way a seeded run repeats exactly, a
resumed run draws the masks the uninterrupted run drew at the same step, and recomputation replays
them. With dropout 0 no masks are drawn.

Mixed precision (``GPT2GraphConfig.precision``, :mod:`ms_gpt2.models.graphs.precision`): every MatMul in
float16/bfloat16, LayerNorm, softmax and the loss in float32.

Recomputation (``GPT2GraphConfig.recompute``, the Trainer's ``gradient_checkpointing``): every
``Block`` is marked with ``Cell.recompute()``, so the graph keeps only each block's input
for the backward pass and recomputes the block's activations there (MindSpore's
``add_recomputation`` pass, which also runs for cells inside a ``mindspore.jit`` graph in
PyNative mode: the recomputed nodes carry ``recompute: Bool(1)`` in the saved IR). The dropout
keep-masks are inputs or a pure function of the step's key, so the recomputed forward applies the
very masks the first one did: losses, gradients and weights are those of the run without
recomputation (bit for bit on CPU).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import mindspore
from mindspore import Tensor, nn, ops

from ms_gpt2.models.graphs import dropout as keyed
from ms_gpt2.models.graphs.base import ModelGraph
from ms_gpt2.infra.errors import EngineError
from ms_gpt2.models.graphs.gpt2_block import Block, block_parameter_names, unsupported
from ms_gpt2.models.graphs.ops import FLOAT32_MIN, attention_bias, layer_norm
from ms_gpt2.models.graphs.precision import Precision, matmul


def hf_parameter_names(n_layer: int) -> list[str]:
    """Every trainable GPT-2 weight by its Hugging Face name (the LM head is tied to ``wte``)."""
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        names += block_parameter_names(i)
    return names + ["transformer.ln_f.weight", "transformer.ln_f.bias"]


@dataclass(frozen=True)
class GPT2GraphConfig:
    """What GPT-2's graph is compiled for; changing any of these means a new graph."""
    n_layer: int
    n_head: int
    layer_norm_epsilon: float
    pad_token_id: int             # the label value not scored (ms_gpt2.models.gpt2.ignored_label_id)
    dropout: float = 0.0          # embd/attn/resid dropout (GPT-2 uses one value for all three here)
    precision: Precision = Precision()  # MatMuls' dtype (weights and everything else stay float32)
    recompute: bool = False       # recompute each Block in the backward pass instead of keeping its activations
    dropout_source: str = "host"  # keep-masks: "host" (inputs drawn by NumPy) | "device" (hashed in the graph)


class GPT2Loss(nn.Cell):
    """GPT-2 forward + the tutorial's loss: (ids, attention_mask, labels, weights, masks) -> (loss_sum, count).

    The loss is next-token cross-entropy: logits at t scored against ``labels[t + 1]``, positions
    whose label is ``[PAD]`` left out (as :class:`ms_gpt2.models.gpt2.GPT2ForSummarization`), each
    token's loss weighted by ``weights[t + 1]`` (float (B, T), by label position; all ones = the
    plain token mean; ``data.article_loss_weight``). It is returned as a (weighted) sum and a
    (weighted) token count so that gradients of the sum can be added up across micro-batches or
    processes before the one division by the total count.
    """

    def __init__(self, params: dict, cfg: GPT2GraphConfig):
        super().__init__()
        self.cfg = cfg
        self.wte, self.wpe = params["transformer.wte.weight"], params["transformer.wpe.weight"]
        self.ln_f_w, self.ln_f_b = params["transformer.ln_f.weight"], params["transformer.ln_f.bias"]
        self.blocks = nn.CellList([Block([params[n] for n in block_parameter_names(i)], cfg.n_head,
                                         cfg.layer_norm_epsilon, cfg.precision, cfg.dropout, cfg.dropout_source)
                                   for i in range(cfg.n_layer)])
        if cfg.recompute:  # keep each block's input only; its activations are recomputed in the backward pass
            for block in self.blocks:
                block.recompute()
        self.ln_f = layer_norm(cfg.layer_norm_epsilon)
        self.use_dropout = cfg.dropout > 0
        self.scale = 1.0 / (1.0 - cfg.dropout) if cfg.dropout < 1 else 0.0
        self.on_device = cfg.dropout_source == "device"
        self.threshold = keyed.threshold(cfg.dropout)
        self.sites = tuple(keyed.site_constant(s) for s in range(1 + 3 * cfg.n_layer))
        self.n_head = cfg.n_head
        self.mm_dtype = cfg.precision.dtype if cfg.precision.low else None  # None: float32 MatMuls
        self.emulate = cfg.precision.emulate
        n = self.wpe.shape[0]
        self.causal = Tensor(np.tril(np.ones((n, n), np.bool_)))
        self.pad = cfg.pad_token_id

    def construct(self, input_ids, attention_mask, labels, weights, drop):
        # drop: the 1 + 3 * n_layer keep-masks (host source); (step key, hashed indices of the attention
        # weights' and of the hidden states' shape) (device source); () without dropout
        B, T = input_ids.shape
        C = self.wte.shape[1]
        x = ops.add(ops.gather(self.wte, input_ids, 0), ops.broadcast_to(ops.slice(self.wpe, (0, 0), (T, C)), (B, T, C)))
        hidden_index, attn_index = None, None
        if self.use_dropout and self.on_device:  # every site of a shape mixes its own key into its hashed indices
            attn_index, hidden_index = drop[1], drop[2]
            keep = keyed.keep_mask(hidden_index, keyed.site_key(drop[0], self.sites[0]), self.threshold)
            x = keyed.apply_keep(x, keep, self.scale)
        elif self.use_dropout:
            x = keyed.apply_keep(x, drop[0], self.scale)
        causal = ops.broadcast_to(ops.reshape(ops.slice(self.causal, (0, 0), (T, T)), (1, 1, T, T)), (B, 1, T, T))
        padding = ops.broadcast_to(ops.reshape(ops.cast(attention_mask, mindspore.bool_), (B, 1, 1, T)), (B, 1, T, T))
        bias = attention_bias(ops.logical_and(causal, padding), (B, self.n_head, T, T), x.dtype, FLOAT32_MIN)
        for i, block in enumerate(self.blocks):
            if not self.use_dropout:
                layer_drop = ()
            elif self.on_device:
                layer_drop = (keyed.site_key(drop[0], self.sites[1 + 3 * i]),
                              keyed.site_key(drop[0], self.sites[2 + 3 * i]),
                              keyed.site_key(drop[0], self.sites[3 + 3 * i]), attn_index, hidden_index)
            else:
                layer_drop = (drop[1 + 3 * i], drop[2 + 3 * i], drop[3 + 3 * i])
            x = block(x, bias, layer_drop)
        x = self.ln_f(x, self.ln_f_w, self.ln_f_b)[0]
        # only positions 0..T-2 predict a label; the last one has nothing to score
        x = ops.reshape(ops.slice(x, (0, 0, 0), (B, T - 1, C)), (B * (T - 1), C))
        logits = matmul(x, self.wte, self.mm_dtype, self.emulate, transpose_b=True)  # (N, V), the LM head tied to wte
        targets = ops.reshape(ops.slice(labels, (0, 1), (B, T - 1)), (B * (T - 1), 1))
        # an ignored label may be -100 (Hugging Face's): gather at 0 there, its weight is 0 anyway
        token_loss = ops.neg(ops.gather_elements(ops.log_softmax(logits, -1), 1, ops.maximum(targets, 0)))  # (N, 1)
        counted = ops.cast(ops.not_equal(targets, self.pad), mindspore.float32)
        counted = ops.mul(counted, ops.reshape(ops.slice(weights, (0, 1), (B, T - 1)), (B * (T - 1), 1)))
        return ops.reduce_sum(ops.mul(token_loss, counted)), ops.reduce_sum(counted)


def dropout_mask_shapes(cfg: GPT2GraphConfig, batch: int, length: int, n_embd: int) -> list[tuple]:
    """Shapes of the keep-masks one step consumes: embeddings, then per layer attention weights,
    attention output, MLP output (Hugging Face's embd/attn/resid dropout sites)."""
    hidden, attn = (batch, length, n_embd), (batch, cfg.n_head, length, length)
    return [hidden] + [attn, hidden, hidden] * cfg.n_layer


def dropout_masks(cfg: GPT2GraphConfig, seed: int, step: int, batch: int, length: int, n_embd: int,
                  micro: int = 0) -> tuple:
    """What the step's ``drop`` argument is for micro-batch ``micro`` of optimizer step ``step``: a
    function of (seed, step, micro) only, so a resumed run draws what the uninterrupted run drew.
    Host source: the keep-masks; device source: the one int32 key the graph hashes them from."""
    if cfg.dropout <= 0:
        return ()
    if cfg.dropout_source == "device":
        attn, hidden = dropout_mask_shapes(cfg, batch, length, n_embd)[1:3]
        return (Tensor(np.int32(keyed.step_key(seed, step, micro))), keyed.index_hash(attn), keyed.index_hash(hidden))
    return keyed.host_masks(dropout_mask_shapes(cfg, batch, length, n_embd), cfg.dropout, seed, step, micro)


class GPT2Graph(ModelGraph):
    """GPT-2 (``GPT2LMHeadModel``, :class:`ms_gpt2.models.gpt2.GPT2ForSummarization`) for the engine.

    Batches are dicts of NumPy arrays (B, T): ``input_ids``; optional ``attention_mask`` (default
    all ones), ``labels`` (default the ids) and ``loss_weights`` (float, by label position; default
    all ones: the plain token mean, ``data.article_loss_weight``). A batch that carries
    ``token_type_ids`` or ``position_ids`` is refused (:data:`UNSUPPORTED_INPUTS`): Hugging Face's GPT-2
    adds ``wte(token_type_ids)`` and reads the positions given, the graph does neither; ms_gpt2's
    own pipelines never make them."""

    #: batch keys the graph does not compute with; Hugging Face's GPT-2 would
    UNSUPPORTED_INPUTS = ("token_type_ids", "position_ids")

    def __init__(self, model, precision: Precision, recompute: bool, dropout_source: str):
        from ms_gpt2.models.gpt2 import ignored_label_id

        c = model.config
        why = unsupported(model)  # the arithmetic the graph does not implement (activation, scaling, ...)
        if why is None and not getattr(c, "tie_word_embeddings", True):
            why = "tie_word_embeddings=False (the graph's LM head is the token embedding)"
        if why:
            raise NotImplementedError(f"the compiled engine does not implement {why}")
        dropout = {float(c.resid_pdrop), float(c.embd_pdrop), float(c.attn_pdrop)}
        if len(dropout) != 1:
            raise NotImplementedError(f"the compiled engine needs one dropout rate, the model has {sorted(dropout)}")
        self.cfg = GPT2GraphConfig(n_layer=c.n_layer, n_head=c.n_head, layer_norm_epsilon=float(c.layer_norm_epsilon),
                                   pad_token_id=ignored_label_id(model),
                                   dropout=dropout.pop() if model.training else 0.0, precision=precision,
                                   recompute=bool(recompute), dropout_source=dropout_source)
        self.n_embd = c.n_embd
        self.names = hf_parameter_names(c.n_layer)
        self.dropout = self.cfg.dropout

    def loss_net(self, weights: dict) -> nn.Cell:
        return GPT2Loss(weights, self.cfg)

    def describe(self) -> str:
        return (f"GPT-2 graph ({self.cfg.n_layer} layers), dropout {self.dropout:g} (masks drawn on the "
                f"{self.cfg.dropout_source}), recompute {self.cfg.recompute}")

    def inputs(self, batch: dict) -> tuple:
        given = [k for k in self.UNSUPPORTED_INPUTS if batch.get(k) is not None]
        if given:
            raise EngineError(f"the batch carries {' and '.join(given)}, which the compiled GPT-2 graph does not "
                              "compute with (Hugging Face's GPT-2 would); drop them or train with --engine eager")
        ids = np.asarray(batch["input_ids"], np.int32)
        mask, labels, weights = (batch.get(k) for k in ("attention_mask", "labels", "loss_weights"))
        return (Tensor(ids), Tensor(np.ones_like(ids) if mask is None else np.asarray(mask, np.int32)),
                Tensor(ids if labels is None else np.asarray(labels, np.int32)),
                Tensor(np.ones(ids.shape, np.float32) if weights is None else np.asarray(weights, np.float32)))

    def drop(self, batch: dict, seed: int, step: int, micro: int) -> tuple:
        B, T = np.shape(batch["input_ids"])
        return dropout_masks(self.cfg, seed, step, B, T, self.n_embd, micro)

    def shard(self, batch: dict, per_device: int, rank: int, size: int) -> dict:
        """The loss is a sum over tokens and the count is the tokens' (weights'), so plain row slices
        sum to the global batch's pair; a placeholder row has every label ignored."""
        from ms_gpt2.models.graphs.base import shard_batch

        shard = shard_batch(batch, per_device, self.cfg.pad_token_id, rank, size)
        if shard.local_tokens == 0:  # placeholder rows: all ignored labels, so they add no token to the sums
            return dict(shard.inputs, labels=np.full_like(shard.inputs["labels"], self.cfg.pad_token_id))
        return shard.inputs
