"""BERT pretraining (masked LM + next-sentence prediction) as one compiled MindSpore graph.

:class:`BertPreTrainingLoss` is Hugging Face's ``BertForPreTraining`` forward and loss spelt out in
MindSpore functional ops, over weights held as Parameters keyed by their Hugging Face names:

- embeddings: word + token type + position (absolute), LayerNorm, dropout;
- per encoder layer (post-LN): Q/K/V projections, scores / sqrt(head_dim) plus the additive padding
  mask ``(1 - attention_mask) * float32 min`` (Hugging Face's eager attention; its SDPA path, the
  default in mindnlp 0.5.1, adds the same mask), softmax, dropout on the probabilities, context,
  output dense, dropout, residual, LayerNorm; intermediate dense, exact (erf) GELU, output dense,
  dropout, residual, LayerNorm;
- MLM head: transform dense, GELU, LayerNorm, decoder = the word embeddings (tied) + bias;
- NSP head: pooler (first token, dense, tanh) then the 2-way classifier.

The loss comes back as two (sum, count) pairs, ``(mlm_loss_sum, mlm_count, nsp_loss_sum,
nsp_count)``, labels equal to -100 left out of both; Hugging Face's loss is
``mlm_loss_sum / mlm_count + nsp_loss_sum / nsp_count``. Both counts depend on the labels only, so
a training step can know them before the backward pass and take gradients of
``mlm_loss_sum / N_mlm + nsp_loss_sum / N_nsp`` with the whole batch's counts, added up over
micro-batches or processes like GPT-2's single sum.

Dropout: with both rates 0 the graph takes no masks. Otherwise ``masks`` is a tuple of keep-masks
(bool) in the order of :func:`dropout_sites` (Hugging Face's sites): the embeddings, then per layer
the attention probabilities, the attention output, the FFN output; each kept value is scaled by
1 / (1 - p) of its site.

Only MindSpore's functional ops are used (see :mod:`ms_gpt2.models.attention`: once mindnlp is imported,
Tensor methods and operators mean mindtorch's). Two ops are composed rather than taken from
MindSpore, to match what the eager path computes on CPU: GELU as ``x/2 * (1 + erf(x/sqrt 2))``
(mindtorch's CPU GELU; ``ops.gelu`` uses Tensor operators; :class:`~ms_gpt2.models.graphs.ops.ExactGelu`,
with its gradient written out so that the backward pass keeps only its input) and tanh as ``expm1(2x) / (expm1(2x) + 2)``
(:mod:`ms_gpt2.infra.compat`'s accurate tanh; MindSpore's CPU kernel errs by 1e-4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import mindspore
from mindspore import Parameter, Tensor, nn, ops

from ms_gpt2.models.attention import merge_heads, split_heads
from ms_gpt2.models.graphs import dropout as keyed
from ms_gpt2.models.graphs.ops import (FLOAT32_MIN, DenseLinear, ExactGelu, ScoresMatMul, Softmax, WeightedSum,
                                      layer_norm, scale)
from ms_gpt2.models.graphs.base import ModelGraph
from ms_gpt2.models.graphs.precision import Precision

IGNORE_INDEX = -100  # Hugging Face's CrossEntropyLoss ignore_index, for MLM and NSP labels alike

EMBEDDING_PARAMS = ("bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                    "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.LayerNorm.weight",
                    "bert.embeddings.LayerNorm.bias")
# one encoder layer's weights (under bert.encoder.layer.{i}.), in the order _Layer holds them
LAYER_PARAMS = ("attention.self.query.weight", "attention.self.query.bias", "attention.self.key.weight",
                "attention.self.key.bias", "attention.self.value.weight", "attention.self.value.bias",
                "attention.output.dense.weight", "attention.output.dense.bias",
                "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
                "intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight", "output.dense.bias",
                "output.LayerNorm.weight", "output.LayerNorm.bias")
HEAD_PARAMS = ("bert.pooler.dense.weight", "bert.pooler.dense.bias", "cls.predictions.bias",
               "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
               "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
               "cls.seq_relationship.weight", "cls.seq_relationship.bias")
# Names that are the same Parameter as another in BertForPreTraining: state_dict() lists them,
# named_parameters() does not. The graph uses the target for both.
TIED = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias"}


def hf_parameter_names(config) -> list[str]:
    """Every trainable ``BertForPreTraining`` weight by its Hugging Face name, in the order
    ``named_parameters()`` yields them; the tied decoder weight and bias (:data:`TIED`) are not
    separate weights. ``config``: a :class:`BertGraphConfig` or a Hugging Face ``BertConfig``."""
    n_layer = config.n_layer if hasattr(config, "n_layer") else config.num_hidden_layers
    names = list(EMBEDDING_PARAMS)
    for i in range(n_layer):
        names += [f"bert.encoder.layer.{i}.{name}" for name in LAYER_PARAMS]
    return names + list(HEAD_PARAMS)


@dataclass(frozen=True)
class BertGraphConfig:
    """What the graph is compiled for; changing any of these means a new graph. Sizes (vocabulary,
    hidden, intermediate, positions, token types) come from the weights."""
    n_layer: int
    n_head: int
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"         # Hugging Face's "gelu": the exact erf GELU (the only one compiled)
    hidden_dropout: float = 0.0      # hidden_dropout_prob: embeddings, attention output, FFN output
    attention_dropout: float = 0.0   # attention_probs_dropout_prob: the attention probabilities
    precision: Precision = Precision()  # the MatMuls' dtype (ms_gpt2.models.graphs.precision); the rest is float32
    dropout_source: str = "host"     # keep-masks: "host" (inputs) | "device" (hashed in the graph from a key)

    def __post_init__(self):
        if self.hidden_act != "gelu":
            raise NotImplementedError(f"hidden_act={self.hidden_act!r}: the BERT graph compiles only 'gelu' "
                                      "(the exact erf GELU)")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")

    @property
    def use_dropout(self) -> bool:
        return self.hidden_dropout > 0 or self.attention_dropout > 0

    @classmethod
    def from_hf(cls, config, training: bool = True, precision: Precision | None = None,
                dropout_source: str = "host") -> "BertGraphConfig":
        """From a Hugging Face ``BertConfig``; anything whose arithmetic the graph does not implement
        raises ``NotImplementedError`` naming the setting. ``training=False``: no dropout."""
        act = config.hidden_act
        if not isinstance(act, str):
            raise NotImplementedError(f"hidden_act={act!r}: the BERT graph compiles only 'gelu'")
        for flag, implemented in (("position_embedding_type", "absolute"), ("is_decoder", False),
                                  ("add_cross_attention", False)):
            value = getattr(config, flag, implemented)
            if value != implemented:
                raise NotImplementedError(f"{flag}={value!r}: the BERT graph compiles only {implemented!r}")
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"hidden_size={config.hidden_size} is not divisible by "
                             f"num_attention_heads={config.num_attention_heads}")
        return cls(n_layer=int(config.num_hidden_layers), n_head=int(config.num_attention_heads),
                   layer_norm_eps=float(config.layer_norm_eps), hidden_act=act,
                   hidden_dropout=float(config.hidden_dropout_prob) if training else 0.0,
                   attention_dropout=float(config.attention_probs_dropout_prob) if training else 0.0,
                   precision=precision or Precision(), dropout_source=dropout_source)


def dropout_sites(cfg: BertGraphConfig, batch: int, length: int, hidden: int) -> list[tuple[tuple, float]]:
    """(keep-mask shape, dropout rate) of every mask one forward pass takes, in the graph's order:
    the embeddings, then per layer the attention probabilities, the attention output and the FFN
    output (Hugging Face's ``nn.Dropout`` sites, in call order). Empty without dropout."""
    if not cfg.use_dropout:
        return []
    states, probs = (batch, length, hidden), (batch, cfg.n_head, length, length)
    per_layer = [(probs, cfg.attention_dropout), (states, cfg.hidden_dropout), (states, cfg.hidden_dropout)]
    return [(states, cfg.hidden_dropout)] + per_layer * cfg.n_layer


def weights_from_model(model) -> dict[str, Parameter]:
    """Fresh float32 Parameters (named by Hugging Face name) holding a copy of ``model``'s weights,
    for every name of :func:`hf_parameter_names`."""
    own = dict(model.named_parameters())
    names = hf_parameter_names(model.config)
    missing = [n for n in names if n not in own]
    if missing:
        raise NotImplementedError(f"not a BertForPreTraining the graph knows: no {missing[0]}")
    return {n: Parameter(Tensor(np.ascontiguousarray(own[n].detach().cpu().numpy().astype(np.float32))), name=n)
            for n in names}


def _scale(p: float) -> float:
    return 1.0 / (1.0 - p)


def _tanh(x):
    """tanh to float32 accuracy (ms_gpt2.infra.compat's: MindSpore's CPU tanh kernel errs by 1e-4)."""
    e = ops.expm1(ops.mul(ops.maximum(ops.minimum(x, 20.0), -20.0), 2.0))
    return ops.div(e, ops.add(e, 2.0))


def _masked_token_loss(logits, labels):
    """Cross-entropy per row of ``logits`` (N, K) against ``labels`` (N,): (sum over counted rows,
    number of counted rows), rows labelled -100 left out."""
    targets = ops.reshape(labels, (-1, 1))
    # an ignored label is -100: gather at 0 there, it is not counted anyway
    token_loss = ops.neg(ops.gather_elements(ops.log_softmax(logits, -1), 1, ops.maximum(targets, 0)))  # (N, 1)
    counted = ops.cast(ops.not_equal(targets, IGNORE_INDEX), mindspore.float32)
    return ops.reduce_sum(ops.mul(token_loss, counted)), ops.reduce_sum(counted)


class _Layer(nn.Cell):
    """One post-LN BERT encoder layer: (B, T, C) -> (B, T, C), dropout where Hugging Face has it."""

    def __init__(self, params: list, cfg: BertGraphConfig):
        super().__init__()
        (self.q_w, self.q_b, self.k_w, self.k_b, self.v_w, self.v_b, self.ao_w, self.ao_b, self.ln1_w, self.ln1_b,
         self.i_w, self.i_b, self.o_w, self.o_b, self.ln2_w, self.ln2_b) = params
        self.n_head = cfg.n_head
        self.layer_norm = layer_norm(cfg.layer_norm_eps)
        dt, em = (cfg.precision.dtype if cfg.precision.low else None), cfg.precision.emulate
        # MatMul cells with their gradients spelt out and no broadcasting kernels (ms_gpt2.models.graphs.ops:
        # MindSpore's CPU kernels keep per-element index tables for those)
        self.linear, self.scores, self.weighted_sum = DenseLinear(dt, em), ScoresMatMul(dt, em), WeightedSum(dt, em)
        self.softmax, self.gelu = Softmax(), ExactGelu()
        self.use_dropout = cfg.use_dropout
        self.attn_scale, self.hidden_scale = _scale(cfg.attention_dropout), _scale(cfg.hidden_dropout)

    def construct(self, x, additive_mask, masks):
        # x: (B, T, C); additive_mask: (B, nh, T, T) float, 0 or float32 min; masks: this layer's 3 or ()
        q = split_heads(self.linear(x, self.q_w, self.q_b), self.n_head)               # (B, nh, T, hd)
        k = split_heads(self.linear(x, self.k_w, self.k_b), self.n_head)
        v = split_heads(self.linear(x, self.v_w, self.v_b), self.n_head)
        scores = scale(self.scores(q, k), math.sqrt(q.shape[-1]))                  # q @ k^T / sqrt(hd): (B, nh, T, T)
        probs = self.softmax(ops.add(scores, additive_mask))
        if self.use_dropout:
            probs = keyed.apply_keep(probs, masks[0], self.attn_scale)
        attended = self.linear(merge_heads(self.weighted_sum(probs, v)), self.ao_w, self.ao_b)  # (B, T, C)
        if self.use_dropout:
            attended = keyed.apply_keep(attended, masks[1], self.hidden_scale)
        x = self.layer_norm(ops.add(attended, x), self.ln1_w, self.ln1_b)[0]
        ffn = self.linear(self.gelu(self.linear(x, self.i_w, self.i_b)), self.o_w, self.o_b)
        if self.use_dropout:
            ffn = keyed.apply_keep(ffn, masks[2], self.hidden_scale)
        return self.layer_norm(ops.add(ffn, x), self.ln2_w, self.ln2_b)[0]


class BertPreTrainingLoss(nn.Cell):
    """``BertForPreTraining`` forward + loss: ``(input_ids, token_type_ids, attention_mask, mlm_labels,
    nsp_labels, masks=()) -> (mlm_loss_sum, mlm_count, nsp_loss_sum, nsp_count)``, float32.

    ``input_ids``, ``token_type_ids``, ``attention_mask`` (1 = attend, 0 = padding), ``mlm_labels``:
    integers (B, T); ``nsp_labels``: integers (B,) (0 = B follows A, 1 = random); labels -100 are not
    scored. ``params``: Hugging Face name -> Parameter for every name of :func:`hf_parameter_names`
    (the MLM decoder uses the word embeddings and ``cls.predictions.bias``: tied as in the model).
    ``masks``: the keep-masks of :func:`dropout_sites` when ``cfg`` has dropout, else ().
    """

    def __init__(self, params: dict, cfg: BertGraphConfig):
        super().__init__()
        missing = [n for n in hf_parameter_names(cfg) if n not in params]
        if missing:
            raise ValueError(f"BertPreTrainingLoss needs every BertForPreTraining weight: no {missing[0]}")
        hidden = params["bert.embeddings.word_embeddings.weight"].shape[1]
        if hidden % cfg.n_head:
            raise ValueError(f"hidden size {hidden} is not divisible by n_head={cfg.n_head}")
        self.cfg = cfg
        self.word, self.position, self.token_type, self.emb_ln_w, self.emb_ln_b = (params[n] for n in EMBEDDING_PARAMS)
        self.layers = nn.CellList([_Layer([params[f"bert.encoder.layer.{i}.{n}"] for n in LAYER_PARAMS], cfg)
                                   for i in range(cfg.n_layer)])
        (self.pool_w, self.pool_b, self.decoder_b, self.transform_w, self.transform_b, self.transform_ln_w,
         self.transform_ln_b, self.nsp_w, self.nsp_b) = (params[n] for n in HEAD_PARAMS)
        self.layer_norm = layer_norm(cfg.layer_norm_eps)
        self.linear = DenseLinear(cfg.precision.dtype if cfg.precision.low else None, cfg.precision.emulate)
        self.gelu = ExactGelu()
        self.use_dropout = cfg.use_dropout
        self.hidden_scale = _scale(cfg.hidden_dropout)
        self.on_device = cfg.dropout_source == "device"
        self.sites = tuple(keyed.site_constant(s) for s in range(1 + 3 * cfg.n_layer))
        self.thresholds = (keyed.threshold(cfg.hidden_dropout), keyed.threshold(cfg.attention_dropout))

    def _device_masks(self, drop):
        """The keep-masks of :func:`dropout_sites`, hashed in the graph from ``drop`` = (step key, hashed
        indices of the attention probabilities' and of the hidden states' shape): site s's mask is
        :func:`ms_gpt2.models.graphs.dropout.keep_mask_numpy` of (shape, key, s, its rate)."""
        key, attn_index, hidden_index = drop[0], drop[1], drop[2]
        hidden, attention = self.thresholds
        masks = (keyed.keep_mask(hidden_index, keyed.site_key(key, self.sites[0]), hidden),)
        for i in range(len(self.layers)):
            masks = masks + (keyed.keep_mask(attn_index, keyed.site_key(key, self.sites[1 + 3 * i]), attention),
                             keyed.keep_mask(hidden_index, keyed.site_key(key, self.sites[2 + 3 * i]), hidden),
                             keyed.keep_mask(hidden_index, keyed.site_key(key, self.sites[3 + 3 * i]), hidden))
        return masks

    def construct(self, input_ids, token_type_ids, attention_mask, mlm_labels, nsp_labels, masks=()):
        B, T = input_ids.shape
        C = self.word.shape[1]
        if self.use_dropout and self.on_device:
            masks = self._device_masks(masks)
        x = ops.add(ops.gather(self.word, input_ids, 0), ops.gather(self.token_type, token_type_ids, 0))
        x = ops.add(x, ops.broadcast_to(ops.slice(self.position, (0, 0), (T, C)), (B, T, C)))  # (B, T, C)
        x = self.layer_norm(x, self.emb_ln_w, self.emb_ln_b)[0]
        if self.use_dropout:
            x = keyed.apply_keep(x, masks[0], self.hidden_scale)
        # Hugging Face's extended attention mask: 0 where attended, float32 min at padding keys
        padding = ops.sub(1.0, ops.cast(attention_mask, mindspore.float32))
        additive_mask = ops.broadcast_to(ops.reshape(ops.mul(padding, FLOAT32_MIN), (B, 1, 1, T)),
                                         (B, self.cfg.n_head, T, T))
        for i, layer in enumerate(self.layers):
            layer_masks = (masks[1 + 3 * i], masks[2 + 3 * i], masks[3 + 3 * i]) if self.use_dropout else ()
            x = layer(x, additive_mask, layer_masks)
        # MLM: every position scored against its label (-100: not scored)
        h = self.gelu(self.linear(ops.reshape(x, (B * T, C)), self.transform_w, self.transform_b))
        h = self.layer_norm(h, self.transform_ln_w, self.transform_ln_b)[0]
        mlm_logits = self.linear(h, self.word, self.decoder_b)            # (B*T, V): the decoder, tied to the embeddings
        mlm_sum, mlm_count = _masked_token_loss(mlm_logits, ops.reshape(mlm_labels, (B * T,)))
        # NSP: the pooler (first token, dense, tanh), then the 2-way classifier
        first = ops.reshape(ops.slice(x, (0, 0, 0), (B, 1, C)), (B, C))
        pooled = _tanh(self.linear(first, self.pool_w, self.pool_b))
        nsp_sum, nsp_count = _masked_token_loss(self.linear(pooled, self.nsp_w, self.nsp_b), nsp_labels)
        return mlm_sum, mlm_count, nsp_sum, nsp_count


class BertStepLoss(nn.Cell):
    """:class:`BertPreTrainingLoss` as the training step's one (loss_sum, count) pair:
    ``(..., mlm_norm, nsp_norm, share, masks) -> (mlm_sum / mlm_norm + nsp_sum / nsp_norm, share)``.

    With each micro-batch's own counts as the norms and ``share`` 1 this is Hugging Face's loss of the
    micro-batch, and the step's division by the summed shares averages the micro-batches' losses, as
    the Trainer does for a model that takes no ``num_items_in_batch`` (``BertForPreTraining``)."""

    def __init__(self, params: dict, cfg: BertGraphConfig):
        super().__init__()
        self.loss = BertPreTrainingLoss(params, cfg)

    def construct(self, input_ids, token_type_ids, attention_mask, mlm_labels, nsp_labels, mlm_norm, nsp_norm, share,
                  masks):
        mlm_sum, _, nsp_sum, _ = self.loss(input_ids, token_type_ids, attention_mask, mlm_labels, nsp_labels, masks)
        return ops.add(ops.div(mlm_sum, mlm_norm), ops.div(nsp_sum, nsp_norm)), share


def _norms(mlm_labels, nsp_labels) -> tuple[float, float]:
    """What a batch's MLM and NSP loss sums are divided by: their scored counts (at least 1)."""
    return (max(float(np.sum(mlm_labels != IGNORE_INDEX)), 1.0), max(float(np.sum(nsp_labels != IGNORE_INDEX)), 1.0))


class BertGraph(ModelGraph):
    """``BertForPreTraining`` for the training engine (a :class:`~ms_gpt2.models.graphs.base.ModelGraph`).

    Batches are :mod:`ms_gpt2.jobs.bert_pretrain`'s: ``input_ids``, ``token_type_ids``,
    ``attention_mask``, ``labels`` (MLM, -100 not scored), ``next_sentence_label`` (B,). Dropout
    keep-masks are a function of (seed, step, micro-batch, rank, site), each site at its own rate:
    drawn in the graph by :mod:`ms_gpt2.models.graphs.dropout`'s hash (``dropout_source="device"``, off CPU),
    or on the host by NumPy (``"host"``, on CPU). With
    fp16/bf16 every MatMul (Q/K/V, scores, attention x V, output and FFN denses, the MLM transform and
    tied decoder, pooler, NSP classifier) runs in the low precision, the rest in float32."""

    def __init__(self, model, precision, recompute: bool = False, dropout_source: str = "host"):
        self.cfg = BertGraphConfig.from_hf(model.config, training=model.training, precision=precision,
                                           dropout_source=dropout_source)
        self.recompute = bool(recompute)
        self.hidden = int(model.config.hidden_size)
        self.names = hf_parameter_names(self.cfg)
        self.dropout = max(self.cfg.hidden_dropout, self.cfg.attention_dropout) if self.cfg.use_dropout else 0.0

    def describe(self) -> str:
        return (f"BERT pretraining graph ({self.cfg.n_layer} layers), dropout {self.cfg.hidden_dropout:g}/"
                f"{self.cfg.attention_dropout:g} (masks drawn on the {self.cfg.dropout_source}), "
                f"recompute {self.recompute}")

    def loss_net(self, weights: dict) -> nn.Cell:
        net = BertStepLoss(weights, self.cfg)
        if self.recompute:  # keep each layer's input only; its activations are recomputed in the backward pass
            for layer in net.loss.layers:
                layer.recompute()
        return net

    def inputs(self, batch: dict) -> tuple:
        ints = [np.asarray(batch[k], np.int32) for k in ("input_ids", "token_type_ids", "attention_mask", "labels",
                                                           "next_sentence_label")]
        norms = batch.get("norms") or _norms(ints[3], ints[4])  # a shard carries its global batch's
        return (*(Tensor(a) for a in ints), *(Tensor(np.float32(n)) for n in norms),
                Tensor(np.float32(batch.get("share", 1.0))))

    def shard(self, batch: dict, per_device: int, rank: int, size: int) -> dict:
        """Each rank divides its MLM and NSP loss sums by the *global* micro-batch's counts, so the
        sums over ranks are the global batch's two means; ``share`` (this rank's fraction of the
        rows) sums to 1. A placeholder row has every label ignored and share 0."""
        rows = len(batch["input_ids"])
        norms = _norms(np.asarray(batch["labels"]), np.asarray(batch["next_sentence_label"]))
        start, stop = rank * per_device, min((rank + 1) * per_device, rows)
        if start >= rows:
            local = {k: np.asarray(v)[:1] for k, v in batch.items()}
            local["labels"] = np.full_like(local["labels"], IGNORE_INDEX)
            local["next_sentence_label"] = np.full_like(local["next_sentence_label"], IGNORE_INDEX)
            return dict(local, norms=norms, share=0.0)
        return dict({k: np.asarray(v)[start:stop] for k, v in batch.items()}, norms=norms,
                    share=(stop - start) / rows)

    def drop(self, batch: dict, seed: int, step: int, micro: int) -> tuple:
        B, T = np.shape(batch["input_ids"])
        sites = dropout_sites(self.cfg, B, T, self.hidden)
        if not sites:
            return ()
        if self.cfg.dropout_source == "device":  # the key; the graph hashes the masks (GPT-2's scheme)
            return (Tensor(np.int32(keyed.step_key(seed, step, micro))), keyed.index_hash(sites[1][0]),
                    keyed.index_hash(sites[0][0]))
        rng = np.random.default_rng([seed % 2**63, step, 0x62657274] + ([micro] if micro else []))
        return tuple(Tensor(rng.random(shape, dtype=np.float32) >= np.float32(p)) for shape, p in sites)
