"""Training-graph building blocks that keep MindSpore's CPU kernels from holding memory forever.

MindSpore 2.7's CPU arithmetic kernels (``Add``, ``Sub``, ``Mul``, ``RealDiv``, ``MaskedFill``,
``Select``, ...: ``arithmetic_cpu_kernel.cc``) have a fast path only when both inputs have the
same shape or one of them is a single element (and ``RealDiv`` has none at all). Any other
broadcast goes through ``InitBroadCast``, which builds two ``std::vector<size_t>`` index tables
of the *output's* element count (16 bytes per element, four times an fp32 output) and keeps them
in the kernel object for the life of the compiled graph. The tables live outside the device
memory pool, so ``memory_optimize_level`` and the pool settings cannot reuse them, and every
such node in the graph holds its own: in the GPT-2 training step that was a bias add per
projection, the ``/ sqrt(hd)`` scaling and its gradient, the attention mask's ``masked_fill`` and
its gradient, and softmax's gradient (``dout - sum(out * dout)``): ~0.7 GB per layer at batch 4 x
256, ~2.5x what the layer's activations take (measured: ``ms-gpt2 bench --memory``).

Each helper here computes what the plain op computes, with the broadcast made explicit
(``BroadcastTo`` is a kernel of its own that keeps nothing) so that the arithmetic kernel sees
equal shapes, or with a single-element operand; the results are the same numbers:

* :func:`linear` adds the bias broadcast to the product's shape (its gradient is the same
  ``ReduceSum`` over the rows that ``Add``'s broadcast gradient is);
* :func:`attention_bias` turns the keep-mask into an additive one, 0 where kept and the dtype's
  minimum where masked, already at the scores' full (B, nh, T, T) shape: ``s + 0 == s`` and
  ``s + min == min`` for any score below 1e31 in magnitude, which is ``masked_fill``'s result;
* :class:`Softmax` is ``ops.softmax`` on the last axis whose gradient is MindSpore's own
  formula, ``out * (dout - sum(out * dout, -1))``, with the row sums broadcast explicitly;
* :func:`scale` multiplies by ``1 / divisor`` instead of dividing (``RealDiv`` always builds
  the tables): exactly the quotient when the divisor is a power of two, as ``sqrt(64) = 8`` is for
  every GPT-2 size, and within one rounding of it otherwise.

Mixed precision (:mod:`ms_gpt2.models.graphs.precision`): the matmul cells take the compute dtype (None:
float32) and the emulation flag, and cast exactly where autodiff of ``cast -> matmul -> cast``
would: inputs down, product up, and in the gradient ``dy`` down, the products up.

Also here, for every graph: :func:`layer_norm` as one fused kernel, :func:`gelu_new` (one fused
kernel, or on CPU, where that kernel is slow, vectorised ones with their own gradient),
:class:`ExactGelu` (BERT's erf GELU, its gradient written out), and
:data:`FLOAT32_MIN`, the fill of masked attention scores.
"""
from __future__ import annotations

import numpy as np
import mindspore
from mindspore import nn, ops

FLOAT32_MIN = float(np.finfo(np.float32).min)  # masked scores (not -inf: a fully masked row softmaxes to uniform)


def layer_norm(eps: float):
    """LayerNorm over the last axis as one fused kernel (max error 5e-7 against float64 on CPU): a
    decode step is small enough that per-kernel launch cost, not arithmetic, dominates, and the
    op-by-op form costs nine launches. Called as ``layer_norm(eps)(x, weight, bias)[0]``."""
    return ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)


_GELU_C = float(np.sqrt(2.0 / np.pi))   # gelu_new: 0.5 x (1 + tanh(C (x + A x^3)))
_GELU_A = 0.044715
_SQRT_HALF = float(1.0 / np.sqrt(2.0))          # the exact GELU: x/2 * (1 + erf(x / sqrt 2))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))


def gelu_new(fused: bool | None = None):
    """GPT-2's tanh-approximated GELU, ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.

    ``fused`` (the default everywhere but MindSpore's CPU backend): MindSpore's ``GeLU``, that
    formula in one kernel. On CPU that kernel is a scalar loop: 57 ms forward and 63 ms backward per
    GPT-2-small layer at batch 4 x 256 (1.4 s of an 8.3 s training step, AMD EPYC, 2 cores), so
    there (``fused=False``) it is :class:`SigmoidGelu`, the same function in vectorised kernels,
    10 ms forward and 17 ms forward + backward on the same tensor. Against float64 both err by
    < 1e-6 in value and < 1e-5 in gradient on inputs up to 8 in magnitude (the separate CPU ``tanh``
    kernel errs by 1e-4, see :mod:`ms_gpt2.infra.compat`, hence not the formula spelt out)."""
    if fused is None:
        fused = mindspore.get_context("device_target") != "CPU"
    if not isinstance(fused, bool):
        raise TypeError(f"fused must be True, False or None, not {fused!r}")
    return ops.GeLU() if fused else SigmoidGelu()


def _gelu_new_argument(x, x2):
    """``2 C (x + A x^3)`` from ``x`` and ``x2 = x * x``: gelu_new is ``x * sigmoid`` of it."""
    return ops.mul(ops.add(x, ops.mul(ops.mul(x2, x), _GELU_A)), 2.0 * _GELU_C)


def _one_plus_erf(x):
    """``1 + erf(x / sqrt 2)``: twice the standard normal CDF, the exact GELU's factor."""
    return ops.add(ops.erf(ops.mul(x, _SQRT_HALF)), 1.0)


class SigmoidGelu(nn.Cell):
    """``gelu_new`` as ``x * sigmoid(2 C (x + A x^3))`` (``(1 + tanh(u)) / 2 = sigmoid(2u)``), with
    its gradient written out from ``x``: ``s + x s (1 - s) 2C (1 + 3 A x^2)``, ``s`` the sigmoid.

    Memory: MindSpore's common-subexpression pass may share the backward's ``x * x`` and sigmoid
    with the forward's rather than recompute them; measured on GPT-2 small the training peak rose
    by 22 MB at B4 x 256 and 56 MB at B1 x 1024 (4,397 -> 4,419 and 6,215 -> 6,271 MB, bench
    memory runs in fresh processes, 0.5-0.9%). Inputs are float32 here (``_Casts.high`` brings
    every MatMul output back up): in float16 ``x * x`` would overflow for ``|x| >= 256``."""

    def construct(self, x):
        return ops.mul(x, ops.sigmoid(_gelu_new_argument(x, ops.mul(x, x))))

    def bprop(self, x, out, dout):
        x2 = ops.mul(x, x)
        s = ops.sigmoid(_gelu_new_argument(x, x2))
        slope = ops.mul(ops.mul(ops.mul(x, s), ops.sub(1.0, s)), ops.add(ops.mul(x2, 6.0 * _GELU_A * _GELU_C),
                                                                        2.0 * _GELU_C))
        return (ops.mul(dout, ops.add(s, slope)),)


class ExactGelu(nn.Cell):
    """Hugging Face's "gelu" (BERT's), ``x/2 * (1 + erf(x / sqrt 2))`` as mindtorch computes it on CPU,
    with its gradient written out from ``x``: ``(1 + erf(x / sqrt 2)) / 2 + x exp(-x^2 / 2) / sqrt(2 pi)``.
    Autodiff of the formula keeps three tensors of the input's size for the backward pass (``x/2``,
    ``1 + erf``, ``x / sqrt 2``); this keeps ``x``."""

    def construct(self, x):
        return ops.mul(ops.mul(x, 0.5), _one_plus_erf(x))

    def bprop(self, x, out, dout):
        cdf = ops.mul(_one_plus_erf(x), 0.5)
        pdf = ops.mul(ops.exp(ops.mul(ops.mul(x, x), -0.5)), _INV_SQRT_2PI)
        return (ops.mul(dout, ops.add(cdf, ops.mul(x, pdf))),)


class _Casts(nn.Cell):
    """``low(t)``: a MatMul input in the compute dtype (rounded and back to float32 when emulating);
    ``high(t)``: a MatMul output back in float32 (rounded to the compute dtype first when emulating)."""

    def __init__(self, dtype=None, emulate: bool = False):
        super().__init__()
        self.dtype, self.emulate = dtype, bool(emulate)

    def low(self, t):
        if self.dtype is None:
            return t
        t = ops.cast(t, self.dtype)
        return ops.cast(t, mindspore.float32) if self.emulate else t

    def high(self, t):
        if self.dtype is None:
            return t
        if self.emulate:
            t = ops.cast(t, self.dtype)
        return ops.cast(t, mindspore.float32)


class Linear(_Casts):
    """GPT-2's Conv1D, ``(..., nx) @ (nx, nf) + (nf,)``, with the bias broadcast explicitly and
    gradients from ``MatMul``'s transpose flags (``dx = dy @ W^T``, ``dW = x^T @ dy``,
    ``db = sum of dy's rows``) rather than the explicit ``Transpose`` nodes MindSpore's own
    ``MatMul`` gradient adds. ``broadcast_bias=False`` (decoding, no gradient, a few rows) adds the
    bias with ``Add``'s own broadcast instead: the same sums, one kernel launch fewer."""

    def __init__(self, dtype=None, emulate: bool = False, broadcast_bias: bool = True):
        super().__init__(dtype, emulate)
        self.matmul = ops.MatMul()
        self.matmul_nt, self.matmul_tn = ops.MatMul(transpose_b=True), ops.MatMul(transpose_a=True)
        self.column_sum = ops.ReduceSum()
        self.broadcast_bias = broadcast_bias

    def construct(self, x, weight, bias):
        y = self.high(self.matmul(self.low(ops.reshape(x, (-1, x.shape[-1]))), self.low(weight)))  # (N, nf)
        y = ops.add(y, ops.broadcast_to(bias, y.shape) if self.broadcast_bias else bias)
        return ops.reshape(y, tuple(x.shape[:-1]) + (weight.shape[-1],))

    def bprop(self, x, weight, bias, out, dout):
        x2, dy = ops.reshape(x, (-1, x.shape[-1])), ops.reshape(dout, (-1, weight.shape[-1]))
        low_dy = self.low(dy)
        dx = ops.reshape(self.high(self.matmul_nt(low_dy, self.low(weight))), x.shape)
        return dx, self.high(self.matmul_tn(self.low(x2), low_dy)), self.column_sum(dy, 0)


class _BatchMatMuls(_Casts):
    """``BatchMatMul`` plain (``bmm``), ``a @ b^T`` (``bmm_nt``) and ``a^T @ b`` (``bmm_tn``)."""

    def __init__(self, dtype=None, emulate: bool = False):
        super().__init__(dtype, emulate)
        self.bmm, self.bmm_nt, self.bmm_tn = (ops.BatchMatMul(), ops.BatchMatMul(transpose_b=True),
                                              ops.BatchMatMul(transpose_a=True))


class ScoresMatMul(_BatchMatMuls):
    """``q @ k^T`` over (B, nh, T, hd) with the transposes as ``BatchMatMul`` flags, also in the
    gradient (``dq = ds @ k``, ``dk = ds^T @ q``)."""

    def construct(self, q, k):
        return self.high(self.bmm_nt(self.low(q), self.low(k)))

    def bprop(self, q, k, out, dout):
        ds = self.low(dout)
        return self.high(self.bmm(ds, self.low(k))), self.high(self.bmm_tn(ds, self.low(q)))


class WeightedSum(_BatchMatMuls):
    """``weights @ v`` over (B, nh, T, T) x (B, nh, T, hd); gradients by ``BatchMatMul`` flags
    (``dw = do @ v^T``, ``dv = w^T @ do``)."""

    def construct(self, weights, v):
        return self.high(self.bmm(self.low(weights), self.low(v)))

    def bprop(self, weights, v, out, dout):
        do = self.low(dout)
        return self.high(self.bmm_nt(do, self.low(v))), self.high(self.bmm_tn(self.low(weights), do))


def scale(x, divisor: float):
    """``x / divisor`` as a multiplication by a single element (see the module docstring)."""
    return ops.mul(x, 1.0 / divisor)


def attention_bias(keep, shape, dtype, minimum: float):
    """Additive mask of ``shape`` (B, nh, T, T) from a bool keep-mask broadcastable to it:
    0 where ``keep``, ``minimum`` elsewhere."""
    dropped = ops.cast(ops.logical_not(ops.broadcast_to(keep, shape)), dtype)     # 1 where masked
    return ops.mul(dropped, minimum)


class Softmax(nn.Cell):
    """Softmax over the last axis; its gradient is MindSpore's, with no broadcasting kernel."""

    def __init__(self):
        super().__init__()
        self.row_sum = ops.ReduceSum(keep_dims=True)

    def construct(self, x):
        return ops.softmax(x, axis=-1)

    def bprop(self, x, out, dout):
        total = self.row_sum(ops.mul(out, dout), -1)                              # (..., 1)
        return (ops.mul(out, ops.sub(dout, ops.broadcast_to(total, dout.shape))),)


class DenseLinear(_Casts):
    """``nn.Linear``, ``(..., in) @ (out, in)^T + (out,)``, the bias broadcast explicitly and the
    gradients by ``MatMul`` flags (``dx = dy @ W``, ``dW = dy^T @ x``, ``db`` = the column sums)."""

    def __init__(self, dtype=None, emulate: bool = False):
        super().__init__(dtype, emulate)
        self.matmul = ops.MatMul()
        self.matmul_nt, self.matmul_tn = ops.MatMul(transpose_b=True), ops.MatMul(transpose_a=True)
        self.column_sum = ops.ReduceSum()

    def construct(self, x, weight, bias):
        y = self.high(self.matmul_nt(self.low(ops.reshape(x, (-1, x.shape[-1]))), self.low(weight)))  # (N, out)
        y = ops.add(y, ops.broadcast_to(bias, y.shape))
        return ops.reshape(y, tuple(x.shape[:-1]) + (weight.shape[0],))

    def bprop(self, x, weight, bias, out, dout):
        x2, dy = ops.reshape(x, (-1, x.shape[-1])), ops.reshape(dout, (-1, weight.shape[0]))
        low_dy = self.low(dy)
        dx = ops.reshape(self.high(self.matmul(low_dy, self.low(weight))), x.shape)
        return dx, self.high(self.matmul_tn(low_dy, self.low(x2))), self.column_sum(dy, 0)
