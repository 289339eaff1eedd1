"""One GPT-2 training step as one compiled MindSpore graph.

:class:`TrainStep` is forward (the hand-derived attention of :mod:`ms_gpt2.attention`) -> shifted
cross-entropy as a (sum of token losses, token count) pair -> backward (``mindspore.value_and_grad``
of the sum) -> :class:`Reduce` (the data-parallel seam) -> divide by the count -> global-norm
clipping -> AdamW, all inside one ``mindspore.jit`` graph. The learning rate is an input, so the
caller (the Trainer's scheduler) decides it step by step without recompiling.

Gradient accumulation (``TrainStep(..., accumulate=True)``) splits that graph in two, compiled
separately: :meth:`TrainStep.accumulate` (forward + backward of one micro-batch, adding its
gradients, loss sum and token count into accumulator Parameters; no division) and
:meth:`TrainStep.apply` (:class:`Reduce` of the accumulated sums -> divide by the total count ->
clipping -> AdamW -> zero the accumulators), so the update is the token mean over the whole
accumulated batch and a data-parallel Reduce runs once per optimizer step. Without accumulation
``construct`` stays the one fused graph and no accumulators are allocated.

AdamW has PyTorch's semantics (``torch.optim.AdamW``, which the Hugging Face Trainer uses): decoupled
weight decay ``p *= 1 - lr * wd`` applied before the update, bias-corrected moments and ``eps``
added to ``sqrt(v_hat)``. It runs on MindSpore's fused ``Adam`` kernel (``ApplyAdam``, one
in-place kernel per tensor on CPU, GPU and Ascend), whose formula is
``p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``; passing it
``eps * sqrt(1 - b2^t)`` makes that exactly PyTorch's ``lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
(Neither ``nn.AdamWeightDecay`` (no bias correction) nor the fused ``AdamWeightDecay`` kernel
has PyTorch's semantics.)

Dropout keep-masks are a pure function of (seed, global step, micro-batch, rank, site)
(:mod:`ms_gpt2.engine.dropout`): drawn in the graph by a counter-based hash from one int32 key per
step (``dropout_source="device"``, the default off CPU), or drawn on the host by NumPy and passed
in (``"host"``, the default on CPU, where it is faster). Either way a seeded run repeats exactly, a
resumed run draws the masks the uninterrupted run drew at the same step, and recomputation replays
them. With dropout 0 no masks are drawn.

Mixed precision (``StepConfig.precision``, :mod:`ms_gpt2.engine.precision`): MatMuls in
float16/bfloat16, everything else float32 (master weights, AdamW, LayerNorm, softmax, the loss, the
gradient norm); fp16 scales the loss dynamically and skips a step whose reduced gradients overflow
(weights, moments and step count untouched, :meth:`TrainStep.update`).

Recomputation (``StepConfig.recompute``, the Trainer's ``gradient_checkpointing``): every
:class:`Block` is marked with ``Cell.recompute()``, so the graph keeps only each block's input
for the backward pass and recomputes the block's activations there (MindSpore's
``add_recomputation`` pass, which also runs for cells inside a ``mindspore.jit`` graph in
PyNative mode: the recomputed nodes carry ``recompute: Bool(1)`` in the saved IR). The dropout
keep-masks are inputs or a pure function of the step's key, so the recomputed forward applies the
very masks the first one did: losses, gradients and weights are those of the run without
recomputation (bit for bit on CPU).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import mindspore
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from ms_gpt2.attention import merge_heads, split_heads
from ms_gpt2.engine import dropout as keyed
from ms_gpt2.engine.precision import Precision, linear, matmul
from ms_gpt2.fast_decode import FLOAT32_MIN, gelu_new, layer_norm

# Hugging Face parameter names of one block's weights, in the order Block holds them.
BLOCK_PARAMS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                "mlp.c_proj.weight", "mlp.c_proj.bias")


def hf_parameter_names(n_layer: int) -> list[str]:
    """Every trainable GPT-2 weight by its Hugging Face name (the LM head is tied to ``wte``)."""
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        names += [f"transformer.h.{i}.{name}" for name in BLOCK_PARAMS]
    return names + ["transformer.ln_f.weight", "transformer.ln_f.bias"]


@dataclass(frozen=True)
class StepConfig:
    """What the graph is compiled for; changing any of these means a new graph."""
    n_layer: int
    n_head: int
    layer_norm_epsilon: float
    pad_token_id: int             # the label value not scored (ms_gpt2.modeling.ignored_label_id)
    dropout: float = 0.0          # embd/attn/resid dropout (GPT-2 uses one value for all three here)
    max_grad_norm: float = 0.0    # <= 0: no clipping
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    precision: Precision = Precision()  # MatMuls' dtype and fp16's loss scaling (weights stay float32)
    recompute: bool = False       # recompute each Block in the backward pass instead of keeping its activations
    dropout_source: str = "host"  # keep-masks: "host" (inputs drawn by NumPy) | "device" (hashed in the graph)


def _dropout(x, mask, scale):
    """Inverted dropout with a given keep-mask: x * mask / (1 - p)."""
    return ops.mul(ops.mul(x, ops.cast(mask, x.dtype)), scale)


class Block(nn.Cell):
    """One GPT-2 layer for training: (B, T, C) -> (B, T, C), dropout where GPT-2 has it."""

    def __init__(self, params: list, cfg: StepConfig):
        super().__init__()
        (self.ln1_w, self.ln1_b, self.attn_w, self.attn_b, self.proj_w, self.proj_b,
         self.ln2_w, self.ln2_b, self.fc_w, self.fc_b, self.mlp_w, self.mlp_b) = params
        self.n_head = cfg.n_head
        self.layer_norm, self.gelu = layer_norm(cfg.layer_norm_epsilon), gelu_new()
        self.use_dropout = cfg.dropout > 0
        self.scale = 1.0 / (1.0 - cfg.dropout) if cfg.dropout < 1 else 0.0
        self.on_device = cfg.dropout_source == "device"
        self.threshold = keyed.threshold(cfg.dropout)
        self.mm_dtype = cfg.precision.dtype if cfg.precision.low else None  # None: float32 MatMuls
        self.emulate = cfg.precision.emulate

    def _drop(self, x, drop, j):
        """Dropout at this layer's site j (0: attention weights, 1: attention output, 2: MLP output).
        ``drop``: the 3 keep-masks (host source), or (3 site keys, attention-shaped and hidden-shaped
        index hashes) (device source)."""
        if self.on_device:
            mask = keyed.keep_mask(drop[3] if j == 0 else drop[4], drop[j], self.threshold)
        else:
            mask = drop[j]
        return _dropout(x, mask, self.scale)

    def construct(self, x, keep, drop):
        # x: (B, T, C); keep: bool (B, 1, T, T), causal & padding; drop: see _drop, or () without dropout
        dt, em = self.mm_dtype, self.emulate
        h = self.layer_norm(x, self.ln1_w, self.ln1_b)[0]
        q, k, v = ops.split(linear(h, self.attn_w, self.attn_b, dt, em), x.shape[-1], axis=2)   # 3 x (B, T, C)
        q, k, v = split_heads(q, self.n_head), split_heads(k, self.n_head), split_heads(v, self.n_head)
        # ms_gpt2.attention.scaled_masked_attention, with GPT-2's attention dropout between the
        # softmax and the product with V (where Hugging Face applies attn_pdrop)
        scores = ops.div(matmul(q, ops.transpose(k, (0, 1, 3, 2)), dt, em), q.shape[-1] ** 0.5)  # (B, nh, T, T)
        weights = ops.softmax(ops.masked_fill(scores, ops.logical_not(keep), FLOAT32_MIN), axis=-1)
        if self.use_dropout:
            weights = self._drop(weights, drop, 0)
        attended = linear(merge_heads(matmul(weights, v, dt, em)), self.proj_w, self.proj_b, dt, em)   # (B, T, C)
        if self.use_dropout:
            attended = self._drop(attended, drop, 1)
        x = ops.add(x, attended)
        h = self.layer_norm(x, self.ln2_w, self.ln2_b)[0]
        mlp = linear(self.gelu(linear(h, self.fc_w, self.fc_b, dt, em)), self.mlp_w, self.mlp_b, dt, em)
        if self.use_dropout:
            mlp = self._drop(mlp, drop, 2)
        return ops.add(x, mlp)


class GPT2Loss(nn.Cell):
    """GPT-2 forward + the tutorial's loss: (ids, attention_mask, labels, weights, masks) -> (loss_sum, count).

    The loss is next-token cross-entropy: logits at t scored against ``labels[t + 1]``, positions
    whose label is ``[PAD]`` left out (as :class:`ms_gpt2.modeling.GPT2ForSummarization`), each
    token's loss weighted by ``weights[t + 1]`` (float (B, T), by label position; all ones = the
    plain token mean; ``data.article_loss_weight``). It is returned as a (weighted) sum and a
    (weighted) token count so that gradients of the sum can be added up across micro-batches or
    processes before the one division by the total count.
    """

    def __init__(self, params: dict, cfg: StepConfig):
        super().__init__()
        self.cfg = cfg
        self.wte, self.wpe = params["transformer.wte.weight"], params["transformer.wpe.weight"]
        self.ln_f_w, self.ln_f_b = params["transformer.ln_f.weight"], params["transformer.ln_f.bias"]
        self.blocks = nn.CellList([Block([params[f"transformer.h.{i}.{n}"] for n in BLOCK_PARAMS], cfg)
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
        x = ops.add(ops.gather(self.wte, input_ids, 0), ops.slice(self.wpe, (0, 0), (T, C)))  # (B, T, C)
        hidden_index, attn_index = None, None
        if self.use_dropout and self.on_device:  # every site of a shape mixes its own key into its hashed indices
            attn_index, hidden_index = drop[1], drop[2]
            x = _dropout(x, keyed.keep_mask(hidden_index, keyed.site_key(drop[0], self.sites[0]), self.threshold),
                         self.scale)
        elif self.use_dropout:
            x = _dropout(x, drop[0], self.scale)
        causal = ops.reshape(ops.slice(self.causal, (0, 0), (T, T)), (1, 1, T, T))
        keep = ops.logical_and(causal, ops.reshape(ops.cast(attention_mask, mindspore.bool_), (B, 1, 1, T)))
        for i, block in enumerate(self.blocks):
            if not self.use_dropout:
                layer_drop = ()
            elif self.on_device:
                layer_drop = (keyed.site_key(drop[0], self.sites[1 + 3 * i]),
                              keyed.site_key(drop[0], self.sites[2 + 3 * i]),
                              keyed.site_key(drop[0], self.sites[3 + 3 * i]), attn_index, hidden_index)
            else:
                layer_drop = (drop[1 + 3 * i], drop[2 + 3 * i], drop[3 + 3 * i])
            x = block(x, keep, layer_drop)
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


class ScaledLoss(nn.Cell):
    """fp16's loss scaling around a loss graph: ``(..., scale) -> (loss_sum / count * scale, count, loss_sum)``.

    The scaled quantity is the micro-batch's *mean* loss times the scale, as in PyTorch's GradScaler,
    so the scale that fits does not depend on how many tokens a micro-batch holds;
    :meth:`TrainStep._grads` turns the gradients back into those of the (unscaled) loss sum."""

    def __init__(self, net: nn.Cell):
        super().__init__()
        self.net = net

    def construct(self, input_ids, attention_mask, labels, weights, drop, scale):
        loss_sum, count = self.net(input_ids, attention_mask, labels, weights, drop)
        return ops.mul(ops.div(loss_sum, _positive(count)), scale), count, loss_sum


def _positive(count):
    """The count a micro-batch's loss sum is divided by before scaling: itself, or 1 if it is 0."""
    return ops.select(ops.gt(count, 0.0), count, ops.ones_like(count))


class Reduce(nn.Cell):
    """The data-parallel seam: ``(loss_sum, count, grads) -> (loss_sum, count, grads)``.

    Called inside the step after the backward pass and *before* anything divides by the count or
    clips, so a data-parallel version only has to sum three things over the processes (e.g.
    ``ops.AllReduce(ReduceOp.SUM)`` over every gradient, the loss sum and the count): the mean,
    the global norm, the clipping and the update that follow are then the same on every process
    and equal to one process's over the whole global batch (token-weighted). One process: identity.
    Replace it with ``TrainStep(..., reduce=MyAllReduce())``.
    """

    def construct(self, loss_sum, count, grads):
        return loss_sum, count, grads


_sq_sum = ops.MultitypeFuncGraph("sq_sum")
_scale = ops.MultitypeFuncGraph("scale")


@_sq_sum.register("Tensor")
def _sq_sum_one(grad):
    return ops.reduce_sum(ops.square(ops.cast(grad, mindspore.float32)))


@_scale.register("Tensor", "Tensor")
def _scale_one(factor, grad):
    return ops.mul(grad, ops.cast(factor, grad.dtype))


_finite_or_zero = ops.MultitypeFuncGraph("finite_or_zero")


@_finite_or_zero.register("Tensor", "Tensor")
def _finite_or_zero_one(ok, grad):
    return ops.select(ops.broadcast_to(ok, grad.shape), grad, ops.zeros_like(grad))


class TrainStep(nn.Cell):
    """forward + backward + reduce + mean + clip + AdamW: ``(ids, attention_mask, labels, weights, lr, drop)
    -> (mean loss, global grad norm before clipping)``. Owns the weights and AdamW's state, and with
    fp16 the loss scale (``loss_scale``, ``good_steps``: clean steps since the scale last changed).

    With ``accumulate=True`` it also owns the accumulators that :meth:`accumulate` adds into and
    :meth:`apply` consumes (see the module docstring). A step that fp16 skips returns a non-finite norm."""

    def __init__(self, weights: dict, cfg: StepConfig, weight_decay: dict, reduce: nn.Cell | None = None,
                 accumulate: bool = False):
        super().__init__()
        self.cfg = cfg
        self.names = list(weights)
        self.weights = ParameterTuple([weights[n] for n in self.names])
        self.net = GPT2Loss(weights, cfg)
        self.scaled = cfg.precision.scaled
        if self.scaled:  # differentiate loss_sum * scale; the scale and its clean-step count live here
            self.grad_fn = mindspore.value_and_grad(ScaledLoss(self.net), None, self.weights, has_aux=True)
            self.loss_scale = Parameter(Tensor(cfg.precision.init_loss_scale, mindspore.float32), name="loss_scale",
                                        requires_grad=False)
            self.good_steps = Parameter(Tensor(0.0, mindspore.float32), name="good_steps", requires_grad=False)
            self.window = float(cfg.precision.scale_window)
        else:
            self.grad_fn = mindspore.value_and_grad(self.net, None, self.weights, has_aux=True)
        self.reduce = reduce if reduce is not None else Reduce()
        self.exp_avg = self.weights.clone(prefix="exp_avg", init="zeros")
        self.exp_avg_sq = self.weights.clone(prefix="exp_avg_sq", init="zeros")
        self.step = Parameter(Tensor(0.0, mindspore.float32), name="adamw_step", requires_grad=False)
        self.decay = tuple(float(weight_decay[n]) for n in self.names)  # constants: no work where 0
        self.beta1, self.beta2 = (Tensor(b, mindspore.float32) for b in cfg.betas)
        self.eps = Tensor(cfg.eps, mindspore.float32)
        self.max_norm = float(cfg.max_grad_norm or 0.0)
        self.adam = ops.Adam()
        self.map = ops.HyperMap()
        if accumulate:  # the sums over the micro-batches of one optimizer step
            self.acc_grads = self.weights.clone(prefix="acc_grad", init="zeros")
            self.acc_loss_sum = Parameter(Tensor(0.0, mindspore.float32), name="acc_loss_sum", requires_grad=False)
            self.acc_count = Parameter(Tensor(0.0, mindspore.float32), name="acc_count", requires_grad=False)

    def _grads(self, input_ids, attention_mask, labels, weights, drop):
        """-> (loss sum, count, grads of the loss sum). Under fp16 the backward pass runs on the
        scaled mean; its gradients are brought back to the loss sum's here, in float32, where an
        overflow stays inf/nan for :meth:`update` to see."""
        if self.scaled:
            (_, count, loss_sum), grads = self.grad_fn(input_ids, attention_mask, labels, weights, drop,
                                                       self.loss_scale)
            grads = self.map(ops.partial(_scale, ops.div(_positive(count), self.loss_scale)), grads)
        else:
            (loss_sum, count), grads = self.grad_fn(input_ids, attention_mask, labels, weights, drop)
        return loss_sum, count, grads

    def construct(self, input_ids, attention_mask, labels, weights, lr, drop):
        loss_sum, count, grads = self._grads(input_ids, attention_mask, labels, weights, drop)
        return self.update(loss_sum, count, grads, lr)

    def accumulate(self, input_ids, attention_mask, labels, weights, drop):
        """One micro-batch: ``acc_grads += grads of its loss sum``, ``acc_loss_sum += loss sum``,
        ``acc_count += token count``; -> this micro-batch's (loss sum, count)."""
        loss_sum, count, grads = self._grads(input_ids, attention_mask, labels, weights, drop)
        done = [ops.assign_add(self.acc_loss_sum, loss_sum), ops.assign_add(self.acc_count, count)]
        for i in range(len(self.acc_grads)):
            done.append(ops.assign_add(self.acc_grads[i], grads[i]))
        return ops.depend(loss_sum, tuple(done)), count

    def apply(self, lr):
        """The optimizer step on the accumulated sums, then the accumulators back to zero;
        -> (mean loss over the accumulated batch, global grad norm before clipping)."""
        # graph side effects keep program order: update reads the sums before they are zeroed
        loss, norm = self.update(self.acc_loss_sum, self.acc_count, tuple(self.acc_grads), lr)
        zeroed = [ops.assign(self.acc_loss_sum, ops.zeros_like(self.acc_loss_sum)),
                  ops.assign(self.acc_count, ops.zeros_like(self.acc_count))]
        for i in range(len(self.acc_grads)):
            zeroed.append(ops.assign(self.acc_grads[i], ops.zeros_like(self.acc_grads[i])))
        zeroed = ops.depend(tuple(zeroed), loss)   # after the update has read them
        return ops.depend(loss, zeroed), ops.depend(norm, zeroed)

    def update(self, loss_sum, count, grads, lr):
        """reduce + mean + clip + AdamW on (sum of token losses, token count, grads of the sum).

        fp16: the step is taken only if the reduced gradients' norm is finite. A skipped step feeds
        AdamW lr 0, betas 1 and zero gradients, which leave weights, moments and (not counted) step
        exactly as they were, so the fused in-place kernel needs no branch; then the scale halves (not
        below 1). ``window`` clean steps in a row double it."""
        loss_sum, count, grads = self.reduce(loss_sum, count, grads)
        count = ops.maximum(count, 1.0)
        inv_count = ops.div(1.0, count)
        grads = self.map(ops.partial(_scale, inv_count), grads)              # grads of the mean loss
        norm = ops.sqrt(ops.addn(self.map(_sq_sum, grads)))                  # torch.nn.utils.clip_grad_norm_
        if self.max_norm > 0:
            factor = ops.minimum(ops.div(self.max_norm, ops.add(norm, 1e-6)), 1.0)
            grads = self.map(ops.partial(_scale, factor), grads)
        beta1, beta2, counted = self.beta1, self.beta2, 1.0
        if self.scaled:
            ok = ops.isfinite(norm)
            grads = self.map(ops.partial(_finite_or_zero, ok), grads)
            lr = ops.select(ok, lr, ops.zeros_like(lr))
            beta1 = ops.select(ok, beta1, ops.ones_like(beta1))
            beta2 = ops.select(ok, beta2, ops.ones_like(beta2))
            counted = ops.cast(ok, mindspore.float32)
        step = ops.add(self.step, counted)
        step = ops.depend(step, ops.assign(self.step, step))
        powers_at = ops.maximum(step, 1.0)  # a skipped first step: powers stay finite (lr is 0 anyway)
        beta1_power, beta2_power = ops.pow(self.beta1, powers_at), ops.pow(self.beta2, powers_at)
        eps_hat = ops.mul(self.eps, ops.sqrt(ops.sub(1.0, beta2_power)))    # makes ApplyAdam torch's AdamW
        done = []
        for i in range(len(self.decay)):  # unrolled at compile time; decay is a constant per tensor
            param = self.weights[i]
            if self.decay[i] > 0:  # PyTorch AdamW: decoupled decay first, p *= 1 - lr * wd
                ops.assign(param, ops.mul(param, ops.sub(1.0, ops.mul(lr, self.decay[i]))))
            done.append(self.adam(param, self.exp_avg[i], self.exp_avg_sq[i], beta1_power, beta2_power, lr,
                                  beta1, beta2, eps_hat, grads[i])[0])
        if self.scaled:
            done.append(self._update_scale(ok))
        loss = ops.depend(ops.mul(loss_sum, inv_count), tuple(done))
        return loss, norm

    def _update_scale(self, ok):
        """Dynamic loss scaling: overflow halves the scale (not below 1) and restarts the count of
        clean steps; ``window`` clean steps in a row double it."""
        scale = self.loss_scale * 1.0
        good = ops.add(self.good_steps, 1.0)
        grow = ops.ge(good, self.window)
        new_scale = ops.select(ok, ops.select(grow, ops.mul(scale, 2.0), scale), ops.maximum(ops.mul(scale, 0.5), 1.0))
        new_good = ops.select(ok, ops.select(grow, ops.zeros_like(good), good), ops.zeros_like(good))
        return ops.depend(ops.assign(self.loss_scale, new_scale), ops.assign(self.good_steps, new_good))


def dropout_mask_shapes(cfg: StepConfig, batch: int, length: int, n_embd: int) -> list[tuple]:
    """Shapes of the keep-masks one step consumes: embeddings, then per layer attention weights,
    attention output, MLP output (Hugging Face's embd/attn/resid dropout sites)."""
    hidden, attn = (batch, length, n_embd), (batch, cfg.n_head, length, length)
    return [hidden] + [attn, hidden, hidden] * cfg.n_layer


def dropout_masks(cfg: StepConfig, seed: int, step: int, batch: int, length: int, n_embd: int,
                  micro: int = 0) -> tuple:
    """What the step's ``drop`` argument is for micro-batch ``micro`` of optimizer step ``step``: a
    function of (seed, step, micro) only, so a resumed run draws what the uninterrupted run drew.
    Host source: the keep-masks; device source: the one int32 key the graph hashes them from."""
    if cfg.dropout <= 0:
        return ()
    if cfg.dropout_source == "device":
        attn, hidden = dropout_mask_shapes(cfg, batch, length, n_embd)[1:3]
        return (Tensor(np.int32(keyed.step_key(seed, step, micro))), _index_hash(attn), _index_hash(hidden))
    return keyed.host_masks(dropout_mask_shapes(cfg, batch, length, n_embd), cfg.dropout, seed, step, micro)


@functools.lru_cache(maxsize=8)
def _index_hash(shape: tuple) -> Tensor:
    return keyed.index_hash(shape)


def compile_step(step: TrainStep) -> TrainStep:
    step.construct = mindspore.jit(step.construct)
    if hasattr(step, "acc_grads"):
        step.accumulate = mindspore.jit(step.accumulate)
        step.apply = mindspore.jit(step.apply)
    return step
