"""The compiled engine around one model: weights in, steps, weights and AdamW state out.

:class:`CompiledEngine` takes a Hugging Face model, asks :func:`ms_gpt2.models.graphs.graph_for` for
its loss graph (GPT-2's or BERT's; the engine itself knows no model), copies the weights it names
into MindSpore Parameters that the compiled :class:`~ms_gpt2.engine.step.TrainStep` owns and
updates, and gives them back (:meth:`CompiledEngine.to_model`) when the model is needed (save,
evaluation, the end): on CPU as views of the graph's own buffers, on a device as copies. AdamW's moments and step count travel by Hugging Face name in
``torch.optim.AdamW``'s own ``state_dict`` layout, so the ``optimizer.pt`` of a checkpoint is the
same whichever engine wrote it.
"""
from __future__ import annotations

import numpy as np
import mindspore
from mindspore import Parameter, Tensor

from ms_gpt2.infra.compat import parameter_view, read_parameter, write_parameter
from ms_gpt2.models.graphs import dropout as keyed
from ms_gpt2.models.graphs import graph_for
from ms_gpt2.models.graphs.precision import Precision
from ms_gpt2.engine.step import StepConfig, TrainStep, compile_step


RECURSION_LIMIT = 10_000


def _numpy(tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy().astype(np.float32))


def _host_is_device() -> bool:
    """Whether the graph's buffers live in host memory (the CPU backend), so that a NumPy view of a
    Parameter is the buffer itself. Decided by the runtime's device, not by probing ``asnumpy()``."""
    from ms_gpt2.infra import runtime

    return runtime.ensure().device == "cpu"


class CompiledEngine:
    """A model's training step compiled once per input shape, over weights copied from ``model``.

    ``weight_decay``: Hugging Face parameter name -> decay (the Trainer's groups decide it).
    ``seed`` keys the dropout masks (the model's own rates, in train mode). ``accumulation > 1``
    builds the accumulators and the two graphs of :meth:`accumulate` / :meth:`apply` beside
    :meth:`train_step`'s fused one. ``recompute``: recompute each transformer layer in the backward
    pass rather than keep its activations (the Trainer's ``gradient_checkpointing``): the same
    losses, gradients and weights either way. ``precision``: the MatMuls' dtype and fp16's loss
    scaling (:mod:`ms_gpt2.models.graphs.precision`; float32 by default). ``dropout_source``: where the
    keep-masks are drawn (:mod:`ms_gpt2.models.graphs.dropout`; ``"auto"``: on the host on CPU, in the
    graph elsewhere). Batches are dicts of NumPy arrays keyed as the Trainer's (the graph's
    :meth:`~ms_gpt2.models.graphs.base.ModelGraph.inputs` says which keys).
    """

    def __init__(self, model, weight_decay: dict, max_grad_norm: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8,
                 seed: int = 0, precision: Precision | None = None, reduce=None, accumulation: int = 1,
                 recompute: bool = False, dropout_source: str = "auto"):
        from ms_gpt2.infra import runtime

        # MindSpore's graph analysis nests one call per statement of an unrolled loop: BERT-base's 12
        # post-LN layers with their MatMul cells pass its default depth limit of 1000 (GPT-2's do not)
        mindspore.set_recursion_limit(RECURSION_LIMIT)
        precision = precision or Precision()
        self.graph = graph_for(model, precision, recompute=bool(recompute),
                               dropout_source=keyed.resolve_source(dropout_source, runtime.ensure().device))
        self.cfg = StepConfig(max_grad_norm=float(max_grad_norm or 0.0), betas=tuple(float(b) for b in betas),
                              eps=float(eps), precision=precision)
        self.seed = int(seed)
        self.names = list(self.graph.names)
        own = dict(model.named_parameters())
        missing = [n for n in self.names if n not in own]
        if missing:
            raise NotImplementedError(f"not a {type(model).__name__} the compiled engine knows: no {missing[0]}")
        weights = {n: Parameter(Tensor(_numpy(own[n])), name=n) for n in self.names}
        self.step = compile_step(TrainStep(self.graph.loss_net(weights), weights, self.cfg,
                                           {n: weight_decay.get(n, 0.0) for n in self.names}, reduce,
                                           accumulate=int(accumulation) > 1))

    # -- training ---------------------------------------------------------------------------------
    def train_step(self, batch: dict, lr: float, step_index: int):
        """One optimizer step on one batch; -> (mean loss, grad norm) as Python floats (fp16: a
        skipped step's norm is not finite). ``step_index`` (the global step) keys the dropout masks."""
        loss, norm = self.step(Tensor(np.float32(lr)), *self.graph_inputs(batch, step_index, 0))
        return float(loss.asnumpy()), float(norm.asnumpy())

    def accumulate(self, batch: dict, step_index: int, micro: int) -> None:
        """Add micro-batch ``micro`` of optimizer step ``step_index`` (which key its dropout masks)
        to the accumulated gradients, loss sum and count; needs ``accumulation > 1``."""
        if not hasattr(self.step, "acc_grads"):
            raise ValueError("this engine was built without accumulators (accumulation=1)")
        self.step.accumulate(*self.graph_inputs(batch, step_index, micro))

    def apply(self, lr: float):
        """The optimizer step on everything accumulated since the last one; -> (mean loss over the
        accumulated batch, grad norm) as Python floats."""
        loss, norm = self.step.apply(Tensor(np.float32(lr)))
        return float(loss.asnumpy()), float(norm.asnumpy())

    def graph_inputs(self, batch: dict, step_index: int, micro: int = 0) -> tuple:
        """What the step graph is called with for micro-batch ``micro`` of step ``step_index``: the
        batch as tensors and its dropout keep-masks (the host's share of a step; profiled by
        scripts/profile_train_step.py)."""
        drop = self.graph.drop(batch, self.seed, step_index, micro)
        # jit treats a plain tuple argument as a constant: new masks would mean a new graph every
        # step (recompiled, and the old one kept). mutable() makes it an ordinary input.
        return (*self.graph.inputs(batch), mindspore.mutable(drop) if drop else drop)

    # -- weights ----------------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        """name -> the graph's weight, a NumPy copy (the next step does not change it)."""
        return {n: read_parameter(p) for n, p in zip(self.step.names, self.step.weights)}

    def to_model(self, model, share: bool = False) -> None:
        """Bring the Hugging Face model up to date with the graph's weights (tied weights included),
        giving back the storage :meth:`release_model` dropped.

        ``share``: where the graph's buffers can be viewed (CPU; :func:`~ms_gpt2.infra.compat.parameter_view`),
        the model's weights become views of them rather than copies: no memory, the same values, but
        they would follow the graph's next step, so :meth:`release_model` must come before it (the
        Trainer's ``training_step`` releases before every step). Elsewhere: copies."""
        import torch  # mindtorch

        views = self._views() if share else None
        own = dict(model.named_parameters())
        with torch.no_grad():
            for name, param in zip(self.step.names, self.step.weights):
                if views is not None:
                    own[name].data = torch.from_numpy(views[name])  # the graph's buffer itself
                    continue
                value = param.asnumpy()    # on CPU a view: torch.tensor copies it
                if self.released:
                    own[name].data = torch.tensor(value).to(own[name].device)
                else:
                    own[name].copy_(torch.tensor(value))
        self.released = False

    released = False   # the model's copies of the graph's weights are dropped until to_model

    def _views(self) -> dict | None:
        """name -> a NumPy view of the graph's weight, or None where they cannot be viewed (off the
        CPU the model's weights live on the device: they get device copies)."""
        if not _host_is_device():
            return None
        views = {}
        for name, param in zip(self.step.names, self.step.weights):
            views[name] = parameter_view(param)
            if views[name] is None:
                return None
        return views

    def release_model(self, model) -> None:
        """Drop the model's copies of the weights the graph holds and updates (one model's size of
        memory during training); :meth:`to_model` restores them. Until then the model must not run."""
        import torch  # mindtorch

        own = dict(model.named_parameters())
        for name in self.names:
            own[name].data = torch.empty(0, dtype=own[name].dtype).to(own[name].device)
        self.released = True

    # -- AdamW state ------------------------------------------------------------------------------
    @property
    def optimizer_steps(self) -> int:
        return int(round(float(self.step.step.asnumpy())))

    def optimizer_state(self, views: bool = False) -> dict[str, dict]:
        """name -> {"step", "exp_avg", "exp_avg_sq"} (NumPy copies), empty before the first step.

        ``views``: where the graph's buffers can be viewed (CPU), the moments are views of them, not
        copies (no memory: what a save that writes them before the next step wants); elsewhere copies."""
        steps = self.optimizer_steps
        if steps == 0:
            return {}

        def read(param):
            view = parameter_view(param) if views and _host_is_device() else None
            return read_parameter(param) if view is None else view

        return {n: {"step": float(steps), "exp_avg": read(m), "exp_avg_sq": read(v)}
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
            raise ValueError("optimizer state does not cover every weight of the graph at one step count")
        for n, m, v in zip(self.step.names, self.step.exp_avg, self.step.exp_avg_sq):
            write_parameter(m, state[n]["exp_avg"])
            write_parameter(v, state[n]["exp_avg_sq"])
        write_parameter(self.step.step, steps.pop())
