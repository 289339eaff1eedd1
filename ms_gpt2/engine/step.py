"""One training step as one compiled MindSpore graph, for any model's loss graph.

:class:`TrainStep` wraps a loss graph (``(*inputs) -> (loss_sum, count)``: a model's forward and loss,
:mod:`ms_gpt2.models.graphs`) as MindFormers' ``TrainOneStepCell`` wraps a network: forward ->
backward (``mindspore.value_and_grad`` of the sum) -> :class:`Reduce` (the data-parallel seam) ->
divide by the count -> global-norm clipping -> AdamW, all inside one ``mindspore.jit`` graph. It
knows no model: the weights come by name, the inputs pass through. The learning rate is an input,
so the caller (the Trainer's scheduler) decides it step by step without recompiling.

Gradient accumulation (``TrainStep(..., accumulate=True)``) splits that graph in two, compiled
separately: :meth:`TrainStep.accumulate` (forward + backward of one micro-batch, adding its
gradients, loss sum and count into accumulator Parameters; no division) and
:meth:`TrainStep.apply` (:class:`Reduce` of the accumulated sums -> divide by the total count ->
clipping -> AdamW -> zero the accumulators), so the update is the mean over the whole
accumulated batch and a data-parallel Reduce runs once per optimizer step. Without accumulation
``construct`` stays the one fused graph and no accumulators are allocated.

AdamW has PyTorch's semantics (``torch.optim.AdamW``, which the Hugging Face Trainer uses): decoupled
weight decay ``p *= 1 - lr * wd`` applied before the update, bias-corrected moments and ``eps``
added to ``sqrt(v_hat)``. It runs on MindSpore's fused in-place kernels (one per tensor on CPU, GPU
and Ascend), neither of which has those semantics as documented, so the step rescales their inputs:

* tensors without weight decay: ``Adam`` (``ApplyAdam``), which computes
  ``p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``; passed ``eps * sqrt(1 - b2^t)``
  it is exactly PyTorch's ``lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``;
* decayed tensors: ``AdamWeightDecay``, which computes ``p -= lr' * (m / (sqrt(v) + eps') + wd' * p)``
  with no bias correction; passed ``lr' = lr * sqrt(1 - b2^t) / (1 - b1^t)``,
  ``eps' = eps * sqrt(1 - b2^t)`` and ``wd' = wd * (1 - b1^t) / sqrt(1 - b2^t)`` (so that
  ``lr' * wd' = lr * wd``) it is PyTorch's AdamW step, decay included, in one kernel. (``nn.AdamWeightDecay``,
  the Cell, has no bias correction and is not used.)

Checked against the eager Trainer's ``torch.optim.AdamW`` (``tests/test_engine.py``) and against
AdamW written in NumPy with non-default betas, eps and decay (``tests/test_engine_options.py``).

The loss is a mean: the summed (weighted) token losses divided by their summed weights, floored at
:data:`ms_gpt2.models.gpt2.LOSS_COUNT_FLOOR` (the eager loss's floor too), so a batch that scores
nothing has loss 0 and a batch whose weights sum below 1 keeps its exact weighted mean.

Mixed precision (``StepConfig.precision``, :mod:`ms_gpt2.models.graphs.precision`): the loss graph runs its
MatMuls in float16/bfloat16; here everything stays float32 (master weights, AdamW, the gradient
norm); fp16 scales the loss dynamically (:class:`ScaledLoss`) and skips a step whose reduced
gradients overflow (weights, moments and step count untouched, :meth:`TrainStep.update`).
"""
from __future__ import annotations

from dataclasses import dataclass

import mindspore
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from ms_gpt2.models.graphs.precision import Precision
from ms_gpt2.models.gpt2 import LOSS_COUNT_FLOOR


@dataclass(frozen=True)
class StepConfig:
    """What the step (not the model) is compiled for."""
    max_grad_norm: float = 0.0    # <= 0: no clipping
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    precision: Precision = Precision()  # loss scaling (fp16) lives here; the graph casts its MatMuls


class ScaledLoss(nn.Cell):
    """fp16's loss scaling around a loss graph: ``(scale, *inputs) -> (loss_sum / count * scale, count, loss_sum)``.

    The scaled quantity is the micro-batch's *mean* loss times the scale, as in PyTorch's GradScaler,
    so the scale that fits does not depend on how many tokens a micro-batch holds;
    :meth:`TrainStep._grads` turns the gradients back into those of the (unscaled) loss sum."""

    def __init__(self, net: nn.Cell):
        super().__init__()
        self.net = net

    def construct(self, scale, *inputs):
        loss_sum, count = self.net(*inputs)
        return ops.mul(ops.div(loss_sum, _floored(count)), scale), count, loss_sum


def _floored(count):
    """What a loss sum is divided by: its (weighted) count, at least :data:`~ms_gpt2.models.gpt2.LOSS_COUNT_FLOOR`
    (the eager loss's floor)."""
    return ops.maximum(count, LOSS_COUNT_FLOOR)


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
    """forward + backward + reduce + mean + clip + AdamW: ``(lr, *inputs) -> (mean loss, global grad norm
    before clipping)``, ``inputs`` being the loss graph's (``net``: ``(*inputs) -> (loss_sum, count)``,
    see :class:`~ms_gpt2.models.graphs.base.ModelGraph`). Owns AdamW's state and, with fp16, the
    loss scale (``loss_scale``, ``good_steps``: clean steps since the scale last changed); the
    weights are the net's, by name (``weights``: name -> the Parameter the net reads).

    With ``accumulate=True`` it also owns the accumulators that :meth:`accumulate` adds into and
    :meth:`apply` consumes (see the module docstring). A step that fp16 skips returns a non-finite norm."""

    def __init__(self, net: nn.Cell, weights: dict, cfg: StepConfig, weight_decay: dict, reduce: nn.Cell | None = None,
                 accumulate: bool = False):
        super().__init__()
        self.cfg = cfg
        self.names = list(weights)
        self.weights = ParameterTuple([weights[n] for n in self.names])
        self.net = net
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
        self.adam, self.adam_decay = ops.Adam(), ops.AdamWeightDecay()
        self.map = ops.HyperMap()
        if accumulate:  # the sums over the micro-batches of one optimizer step
            self.acc_grads = self.weights.clone(prefix="acc_grad", init="zeros")
            self.acc_loss_sum = Parameter(Tensor(0.0, mindspore.float32), name="acc_loss_sum", requires_grad=False)
            self.acc_count = Parameter(Tensor(0.0, mindspore.float32), name="acc_count", requires_grad=False)

    def _grads(self, *inputs):
        """-> (loss sum, count, grads of the loss sum). Under fp16 the backward pass runs on the
        scaled mean; its gradients are brought back to the loss sum's here, in float32, where an
        overflow stays inf/nan for :meth:`update` to see."""
        if self.scaled:
            (_, count, loss_sum), grads = self.grad_fn(self.loss_scale, *inputs)
            grads = self.map(ops.partial(_scale, ops.div(_floored(count), self.loss_scale)), grads)
        else:
            (loss_sum, count), grads = self.grad_fn(*inputs)
        return loss_sum, count, grads

    def construct(self, lr, *inputs):
        loss_sum, count, grads = self._grads(*inputs)
        return self.update(loss_sum, count, grads, lr)

    def accumulate(self, *inputs):
        """One micro-batch: ``acc_grads += grads of its loss sum``, ``acc_loss_sum += loss sum``,
        ``acc_count += token count``; -> this micro-batch's (loss sum, count)."""
        loss_sum, count, grads = self._grads(*inputs)
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
        exactly as they were, so the fused in-place kernels (``Adam``; ``AdamWeightDecay`` for the
        decayed tensors) need no branch; then the scale halves (not
        below 1). ``window`` clean steps in a row double it."""
        loss_sum, count, grads = self.reduce(loss_sum, count, grads)
        count = _floored(count)
        inv_count = ops.div(1.0, count)
        # torch.nn.utils.clip_grad_norm_ on the mean loss's gradients (grads * inv_count), whose norm
        # is inv_count times the sum's: the mean and the clipping then cost one pass over the
        # gradients (grads * (inv_count * clip factor)), not one each
        norm = ops.mul(ops.sqrt(ops.addn(self.map(_sq_sum, grads))), inv_count)
        factor = inv_count
        if self.max_norm > 0:
            factor = ops.mul(inv_count, ops.minimum(ops.div(self.max_norm, ops.add(norm, 1e-6)), 1.0))
        grads = self.map(ops.partial(_scale, factor), grads)                # grads of the (clipped) mean loss
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
        # AdamWeightDecay computes p - lr' * (m / (sqrt(v) + eps') + wd' * p): with eps' = eps_hat,
        # lr' = lr * sqrt(1 - b2^t) / (1 - b1^t) and wd' = wd * (1 - b1^t) / sqrt(1 - b2^t) (so lr' * wd' = lr * wd)
        # that is torch's AdamW in one in-place kernel; a separate p *= 1 - lr * wd (an Assign) makes
        # the graph copy every decayed weight it reads in the forward pass (TensorMove)
        bias_ratio = ops.div(ops.sqrt(ops.sub(1.0, beta2_power)), ops.sub(1.0, beta1_power))
        lr_t = ops.mul(lr, bias_ratio)
        done = []
        for i in range(len(self.decay)):  # unrolled at compile time; decay is a constant per tensor
            param = self.weights[i]
            if self.decay[i] > 0:  # PyTorch AdamW: decoupled decay p -= lr * wd * p, then the Adam step
                done.append(self.adam_decay(param, self.exp_avg[i], self.exp_avg_sq[i], lr_t, beta1, beta2, eps_hat,
                                            ops.div(self.decay[i], bias_ratio), grads[i])[0])
                continue
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


def compile_step(step: TrainStep) -> TrainStep:
    step.construct = mindspore.jit(step.construct)
    if hasattr(step, "acc_grads"):
        step.accumulate = mindspore.jit(step.accumulate)
        step.apply = mindspore.jit(step.apply)
    return step
