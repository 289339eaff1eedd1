"""Mixed precision in the compiled step: which dtype each op computes in, and fp16's loss scaling.

The Trainer's switches keep their Hugging Face meaning (``training.fp16`` / ``training.bf16``):

* **master weights and AdamW moments stay float32**, as do the activations between ops, the
  LayerNorms, the softmax, the cross-entropy, the gradient norm and the update (MindFormers' GPT-2:
  ``compute_dtype: float16`` with ``layernorm_compute_type``/``softmax_compute_type: float32``);
* **every MatMul/BatchMatMul runs in the low precision**: its inputs are cast down, its output cast
  back up (:func:`matmul`): the weights, the attention scores and values, the LM head. Their
  gradients come out of the backward MatMuls in the low precision too, so an fp16 overflow there
  shows up as inf, which loss scaling is for;
* **fp16 scales the loss** dynamically (:class:`ms_gpt2.engine.step.TrainStep`, :class:`~ms_gpt2.engine.step.ScaledLoss`): the loss sum is multiplied by the scale
  before the backward pass and the gradients divided by it after the data-parallel reduce; a step
  whose gradient norm is not finite is skipped (weights, moments and step count untouched) and
  halves the scale; ``window`` clean steps in a row double it. The decision reads the *reduced*
  gradients, so every data-parallel rank skips the same steps. bf16 has float32's exponent range
  and needs no scaling.

``emulate`` (tests only, through :data:`EMULATE_ENV`): MindSpore 2.7's CPU backend has no bfloat16
MatMul, so on CPU the tests run the same graph with each MatMul's inputs and output rounded to the
low precision and the product computed in float32: the cast placement, the overflow to inf and the
loss scaling are exercised exactly; only the accumulation inside the MatMul differs from a device's.

Which device runs what is in the README's precision table; :mod:`ms_gpt2.engine.options` refuses
the combinations that do not run (fp16/bf16 on CPU, bf16 on Ascend 910A).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import mindspore
from mindspore import ops

_MATMUL_NT = ops.MatMul(transpose_b=True)
EMULATE_ENV = "MS_GPT2_EMULATE_LOW_PRECISION"  # "1": tests run fp16/bf16 graphs on CPU, emulated
DTYPES = {"float32": mindspore.float32, "float16": mindspore.float16, "bfloat16": mindspore.bfloat16}
INIT_LOSS_SCALE = 2.0 ** 16    # torch.cuda.amp.GradScaler's start (MindFormers starts at 2^32)
SCALE_WINDOW = 1000            # clean steps before the scale doubles (GradScaler's growth_interval is 2000)


def emulating() -> bool:
    return os.environ.get(EMULATE_ENV) == "1"


@dataclass(frozen=True)
class Precision:
    """What the graph computes MatMuls in and how fp16's loss is scaled."""
    compute: str = "float32"             # "float32" | "float16" | "bfloat16"
    emulate: bool = False                # round to ``compute`` and multiply in float32 (tests on CPU)
    init_loss_scale: float = 0.0         # > 0: dynamic loss scaling from this scale (fp16)
    scale_window: int = SCALE_WINDOW

    def __post_init__(self):
        if self.compute not in DTYPES:
            raise ValueError(f"compute dtype must be one of {', '.join(DTYPES)}, not {self.compute!r}")

    @classmethod
    def of(cls, fp16: bool = False, bf16: bool = False, emulate: bool | None = None,
           init_loss_scale: float = INIT_LOSS_SCALE, scale_window: int = SCALE_WINDOW) -> "Precision":
        """The Trainer's ``fp16``/``bf16`` switches as a Precision (both set is an error)."""
        if fp16 and bf16:
            raise ValueError("fp16 and bf16 are both set; choose one")
        compute = "float16" if fp16 else "bfloat16" if bf16 else "float32"
        return cls(compute=compute, emulate=emulating() if emulate is None else bool(emulate),
                   init_loss_scale=float(init_loss_scale) if fp16 else 0.0, scale_window=int(scale_window))

    @property
    def low(self) -> bool:
        return self.compute != "float32"

    @property
    def dtype(self):
        return DTYPES[self.compute]

    @property
    def scaled(self) -> bool:
        return self.init_loss_scale > 0


def matmul(a, b, dtype, emulate: bool, transpose_b: bool = False):
    """``a @ b`` (2-D ``a @ b^T`` with ``transpose_b``) in ``dtype``, float32 in and out;
    ``dtype`` None: plain float32."""
    if dtype is not None:
        a, b = ops.cast(a, dtype), ops.cast(b, dtype)
        if emulate:  # the rounded inputs, multiplied in float32, the product rounded like a device's output
            a, b = ops.cast(a, mindspore.float32), ops.cast(b, mindspore.float32)
    out = _MATMUL_NT(a, b) if transpose_b else ops.matmul(a, b)
    if dtype is None:
        return out
    if emulate:
        out = ops.cast(out, dtype)
    return ops.cast(out, mindspore.float32)

