"""The compiled engine around one GPT-2 model: weights in, steps, weights and AdamW state out.

:class:`CompiledEngine` copies a Hugging Face GPT-2's weights into MindSpore Parameters that the
compiled :class:`~ms_gpt2.engine.step.TrainStep` owns and updates, and copies them back
(:meth:`CompiledEngine.to_model`) when the model is needed (save, evaluation, the end). AdamW's
moments and step count travel in ``torch.optim.AdamW``'s own ``state_dict`` layout, so the
``optimizer.pt`` of a checkpoint is the same whichever engine wrote it.
"""
from __future__ import annotations

import numpy as np
import mindspore
from mindspore import Parameter, Tensor

from ms_gpt2.compat import write_parameter
from ms_gpt2.engine import dropout as keyed
from ms_gpt2.engine.precision import Precision
from ms_gpt2.engine.step import StepConfig, TrainStep, compile_step, dropout_masks, hf_parameter_names


def _numpy(tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy().astype(np.float32))


class CompiledEngine:
    """A GPT-2 training step compiled once per input shape, over weights copied from ``model``.

    ``weight_decay``: Hugging Face parameter name -> decay (the Trainer's groups decide it);
    ``dropout``: the model's dropout (``resid_pdrop``; GPT-2 configs from :func:`ms_gpt2.modeling.build_config`
    use one value for all three sites, checked). ``seed`` keys the dropout masks. ``accumulation > 1``
    builds the accumulators and the two graphs of :meth:`accumulate` / :meth:`apply` beside
    :meth:`train_step`'s fused one. ``recompute``: recompute each transformer block in the backward
    pass rather than keep its activations (``StepConfig.recompute``; the Trainer's
    ``gradient_checkpointing``): the same losses, gradients and weights either way. ``precision``:
    the MatMuls' dtype and fp16's loss scaling (:mod:`ms_gpt2.engine.precision`; float32 by default).
    ``dropout_source``: where the keep-masks are drawn (:mod:`ms_gpt2.engine.dropout`; ``"auto"``:
    on the host on CPU, in the graph elsewhere).
    """

    def __init__(self, model, weight_decay: dict, max_grad_norm: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8,
                 seed: int = 0, precision: Precision | None = None, reduce=None, accumulation: int = 1,
                 recompute: bool = False, dropout_source: str = "auto"):
        from ms_gpt2 import runtime
        from ms_gpt2.fast_decode import unsupported
        from ms_gpt2.modeling import ignored_label_id

        c = model.config
        why = unsupported(model)  # the arithmetic the graph does not implement (activation, scaling, ...)
        if why is None and not getattr(c, "tie_word_embeddings", True):
            why = "tie_word_embeddings=False (the graph's LM head is the token embedding)"
        if why:
            raise NotImplementedError(f"the compiled engine does not implement {why}")
        dropout = {float(c.resid_pdrop), float(c.embd_pdrop), float(c.attn_pdrop)}
        if len(dropout) != 1:
            raise NotImplementedError(f"the compiled engine needs one dropout rate, the model has {sorted(dropout)}")
        self.cfg = StepConfig(n_layer=c.n_layer, n_head=c.n_head, layer_norm_epsilon=float(c.layer_norm_epsilon),
                              pad_token_id=ignored_label_id(model),
                              dropout=dropout.pop() if model.training else 0.0,
                              max_grad_norm=float(max_grad_norm or 0.0), betas=tuple(float(b) for b in betas),
                              eps=float(eps), precision=precision or Precision(), recompute=bool(recompute),
                              dropout_source=keyed.resolve_source(dropout_source, runtime.ensure().device))
        self.n_embd, self.seed = c.n_embd, int(seed)
        self.names = hf_parameter_names(c.n_layer)
        own = dict(model.named_parameters())
        missing = [n for n in self.names if n not in own]
        if missing:
            raise NotImplementedError(f"not a GPT-2 the compiled engine knows: no {missing[0]}")
        weights = {n: Parameter(Tensor(_numpy(own[n])), name=n) for n in self.names}
        self.step = compile_step(TrainStep(weights, self.cfg, {n: weight_decay.get(n, 0.0) for n in self.names},
                                           reduce, accumulate=int(accumulation) > 1))

    # -- training ---------------------------------------------------------------------------------
    def train_step(self, input_ids, attention_mask, labels, lr: float, step_index: int, loss_weights=None):
        """One optimizer step on one batch (NumPy or torch integers, (B, T)); -> (mean loss, grad norm)
        as Python floats. ``step_index`` (the global step) keys the dropout masks. ``loss_weights``
        (float (B, T), by label position): the loss is the weighted token mean; None = all ones."""
        inputs = self._inputs(input_ids, attention_mask, labels, loss_weights, step_index, 0)
        loss, norm = self.step(*inputs[:4], Tensor(np.float32(lr)), inputs[4])
        return float(loss.asnumpy()), float(norm.asnumpy())

    def accumulate(self, input_ids, attention_mask, labels, step_index: int, micro: int, loss_weights=None) -> None:
        """Add micro-batch ``micro`` of optimizer step ``step_index`` (which key its dropout masks)
        to the accumulated gradients, loss sum and token count; needs ``accumulation > 1``."""
        if not hasattr(self.step, "acc_grads"):
            raise ValueError("this engine was built without accumulators (accumulation=1)")
        self.step.accumulate(*self._inputs(input_ids, attention_mask, labels, loss_weights, step_index, micro))

    def apply(self, lr: float):
        """The optimizer step on everything accumulated since the last one; -> (mean loss over the
        accumulated batch, grad norm) as Python floats."""
        loss, norm = self.step.apply(Tensor(np.float32(lr)))
        return float(loss.asnumpy()), float(norm.asnumpy())

    def _inputs(self, input_ids, attention_mask, labels, loss_weights, step_index, micro):
        ids = np.asarray(input_ids, np.int32)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
        labels = ids if labels is None else np.asarray(labels, np.int32)
        B, T = ids.shape
        weights = np.ones((B, T), np.float32) if loss_weights is None else np.asarray(loss_weights, np.float32)
        masks = dropout_masks(self.cfg, self.seed, step_index, B, T, self.n_embd, micro)
        # jit treats a plain tuple argument as a constant: new masks would mean a new graph every
        # step (recompiled, and the old one kept). mutable() makes it an ordinary input.
        masks = mindspore.mutable(masks) if masks else masks
        return Tensor(ids), Tensor(mask), Tensor(labels), Tensor(weights), masks

    # -- weights ----------------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        return {n: p.asnumpy() for n, p in zip(self.step.names, self.step.weights)}

    def to_model(self, model) -> None:
        """Bring the Hugging Face model up to date with the graph's weights (tied LM head included)."""
        import torch  # mindtorch

        own = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.weights().items():
                own[name].copy_(torch.tensor(value))

    # -- AdamW state ------------------------------------------------------------------------------
    @property
    def optimizer_steps(self) -> int:
        return int(round(float(self.step.step.asnumpy())))

    def optimizer_state(self) -> dict[str, dict]:
        """name -> {"step", "exp_avg", "exp_avg_sq"} (NumPy), empty before the first step."""
        steps = self.optimizer_steps
        if steps == 0:
            return {}
        return {n: {"step": float(steps), "exp_avg": m.asnumpy(), "exp_avg_sq": v.asnumpy()}
                for n, m, v in zip(self.step.names, self.step.exp_avg, self.step.exp_avg_sq)}

    @property
    def loss_scaled(self) -> bool:
        return self.step.scaled

    def loss_scale_state(self) -> dict:
        """fp16's dynamic loss scale: {"scale", "good_steps"} (empty without loss scaling)."""
        if not self.step.scaled:
            return {}
        return {"scale": float(self.step.loss_scale.asnumpy()), "good_steps": int(self.step.good_steps.asnumpy())}

    def load_loss_scale_state(self, state: dict | None) -> None:
        """The inverse of :meth:`loss_scale_state`; nothing to load (e.g. a checkpoint from an
        fp32 run) leaves the initial scale."""
        if self.step.scaled and state:
            write_parameter(self.step.loss_scale, state["scale"])
            write_parameter(self.step.good_steps, state["good_steps"])

    def load_optimizer_state(self, state: dict[str, dict]) -> None:
        """The inverse of :meth:`optimizer_state`; every parameter must have the same step count."""
        if not state:
            return
        steps = {float(entry["step"]) for entry in state.values()}
        if len(steps) != 1 or set(state) != set(self.step.names):
            raise ValueError("optimizer state does not cover every GPT-2 weight at one step count")
        for n, m, v in zip(self.step.names, self.step.exp_avg, self.step.exp_avg_sq):
            write_parameter(m, state[n]["exp_avg"])
            write_parameter(v, state[n]["exp_avg_sq"])
        write_parameter(self.step.step, steps.pop())
