"""The compiled step under the MindNLP (Hugging Face) ``Trainer``.

The Trainer stays the driver: data loading, the LR schedule, callbacks, logging, evaluation,
checkpoint saving and rotation, ``--resume``. Per optimizer step its loop (transformers 4.56
``_inner_training_loop``) calls, in order::

    training_step(model, inputs)            -> compiled step: forward, backward, reduce, clip, AdamW
    accelerator.clip_grad_norm_(params, c)  -> returns the norm the graph measured (before clipping)
    optimizer.step(); lr_scheduler.step()   -> the optimizer is a facade: step() does nothing,
    model.zero_grad()                          the scheduler advances the lr fed to the next step
                                               (not after a step fp16 skipped, as on PyTorch)
    _maybe_log_save_evaluate(...)           -> model brought up to date before saving/evaluating

so :class:`CompiledTrainerMixin` replaces ``training_step`` (it runs the graph at the
scheduler's current lr, which is the lr an eager ``optimizer.step()`` would use) and
:class:`EngineAdamW` stands in for the optimizer: a ``torch.optim.AdamW`` with the Trainer's
parameter groups (so the scheduler and the no-decay rule for biases and LayerNorm weights are the
Trainer's own), whose ``step``/``zero_grad`` are no-ops and whose ``state_dict``/``load_state_dict``
carry the graph's moments and step count in AdamW's layout, so each checkpoint's
``optimizer.pt`` holds them and ``--resume`` restores them.

Gradient accumulation (``gradient_accumulation_steps = k > 1``): the loop calls ``training_step``
on each micro-batch of a group (k, or fewer for an epoch's short last group) and clips and steps
after the last, which it marks with ``accelerator.sync_gradients``. Each call runs the accumulate
graph (gradients, loss sum and token count added up, no division); the call that sees
``sync_gradients`` also runs the apply graph (reduce, divide by the group's token count, clip,
AdamW), so the update is the token mean over the whole group, as the eager path's
``num_items_in_batch`` makes it. The loss returned is 0 for the group's earlier micro-batches
and the group's mean at the last, so the Trainer's summed, logged loss is the eager path's.

What the graph does not do is refused before training, in one line naming ``--engine eager``:
the TrainingArguments fields whose effect lives in the code it replaces (label smoothing, NEFTune,
fp16/bf16 on CPU, optimizers other than AdamW, ...: the decision table, field by field, is
:mod:`ms_gpt2.engine.options`), and frozen parameters (the graph updates every weight it holds).
``predict`` is not synchronised (ms_gpt2 does not call it during training).

Mixed precision is the graph's (:mod:`ms_gpt2.models.graphs.precision`), loss scaling included. On a device
accelerate builds, for ``fp16``, a ``GradScaler`` and native autocast; the mixin removes both from
the Trainer's accelerator (and the Trainer's CPU autocast), so the loop's ``optimizer.step()`` is the
facade's and the model is not wrapped in autocast. A step the graph skipped (its fp16 gradients
overflowed) is reported through ``accelerator.optimizer_step_was_skipped``
(:func:`ms_gpt2.infra.compat.report_skipped_step`), so the LR schedule counts only the updates taken, and
its log line carries ``"grad_norm": None, "skipped": True``.
"""
from __future__ import annotations

import logging
from collections import defaultdict

from ms_gpt2.infra import compat, runtime

runtime.ensure()

import numpy as np  # noqa: E402
import torch  # noqa: E402  (mindtorch)

from ms_gpt2.engine import DEFAULT_ENGINE, options  # noqa: E402
from ms_gpt2.engine.compiled import CompiledEngine  # noqa: E402
from ms_gpt2.infra.errors import EngineError  # noqa: E402,F401  (raised here)
from ms_gpt2.models.graphs.precision import Precision  # noqa: E402

log = logging.getLogger(__name__)


class EngineAdamW(torch.optim.AdamW):
    """The Trainer's optimizer when the compiled graph does the update (see the module docstring)."""

    def attach(self, trainer) -> "EngineAdamW":
        self._trainer = trainer
        return self

    def step(self, closure=None):  # the update already happened in the graph
        return None

    def zero_grad(self, set_to_none: bool = True):  # the graph keeps no gradients between steps
        return None

    def _params_by_name(self) -> dict:
        return {name: p for name, p in self._trainer.model.named_parameters()}

    #: fp16's dynamic loss scale travels in optimizer.pt under this key (torch's loader ignores it)
    LOSS_SCALE_KEY = "ms_gpt2_loss_scale"
    loaded_loss_scale: dict | None = None

    def take_state(self, engine, views: bool = False) -> None:
        """Copy the graph's moments and step count into ``self.state`` (AdamW's layout). ``views``:
        where the device allows (CPU), the moments are views of the graph's own buffers, not copies
        (:meth:`CompiledEngine.optimizer_state`): for a save that writes them before the next step."""
        by_name = self._params_by_name()
        moment = torch.from_numpy if views else torch.tensor  # from_numpy shares the array it is given
        for name, entry in engine.optimizer_state(views=views).items():
            self.state[by_name[name]] = {"step": torch.tensor(entry["step"], dtype=torch.float32),
                                         "exp_avg": moment(entry["exp_avg"]),
                                         "exp_avg_sq": moment(entry["exp_avg_sq"])}

    def release_state(self) -> None:
        """Forget ``self.state``: while an engine runs, the graph's Parameters are the moments."""
        self.state = defaultdict(dict)

    def state_dict(self):
        engine = getattr(self._trainer, "_engine", None)
        if engine is None:
            state = super().state_dict()
            if self.loaded_loss_scale:
                state[self.LOSS_SCALE_KEY] = dict(self.loaded_loss_scale)
            return state
        # the moments as views of the graph's buffers (CPU), as torch's own state_dict() refers to the
        # live state tensors: torch.save writes them one at a time, and no copy of both moments (twice
        # the model's size) exists during the save. Like torch's, the dict follows the next step.
        self.take_state(engine, views=True)
        try:
            state = super().state_dict()
        finally:
            self.release_state()   # not kept: the graph's Parameters are the moments
        scale = engine.loss_scale_state()
        if scale:
            state[self.LOSS_SCALE_KEY] = dict(scale)
        return state

    def load_state_dict(self, state_dict):
        self.loaded_loss_scale = state_dict.get(self.LOSS_SCALE_KEY)
        super().load_state_dict(state_dict)
        engine = getattr(self._trainer, "_engine", None)
        if engine is not None:  # normally the engine is built later and reads engine_state() itself
            engine.load_optimizer_state(self.engine_state())
            engine.load_loss_scale_state(self.loaded_loss_scale)

    def engine_state(self) -> dict:
        """The loaded AdamW state by parameter name, as the engine takes it."""
        state = {}
        for name, p in self._params_by_name().items():
            entry = self.state.get(p)
            if entry:
                state[name] = {"step": float(np.asarray(entry["step"].cpu().numpy() if hasattr(entry["step"], "cpu")
                                                        else entry["step"])),
                               "exp_avg": entry["exp_avg"].cpu().numpy(), "exp_avg_sq": entry["exp_avg_sq"].cpu().numpy()}
        return state


class CompiledTrainerMixin:
    """Put before a ``Trainer`` class: the compiled step runs under its loop (module docstring)."""

    _engine: CompiledEngine | None = None
    _engine_dirty = False      # the graph's weights are newer than the model's
    _engine_grad_norm = None
    _engine_micro = 0          # micro-batches accumulated since the last apply (accumulation > 1)
    _engine_skipped = 0        # optimizer steps fp16 skipped (overflow) in this train() call
    _engine_last_skipped = False  # the last optimizer step was one of them
    engine_reduce = None       # a ms_gpt2.engine.step.Reduce replacement (data parallel), or None

    # -- set-up -----------------------------------------------------------------------------------
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # what the graph does not do, refused before training (ms_gpt2's jobs check the config earlier)
        options.check_arguments(self.args, "compiled")
        options.check_frozen(self.model)
        self.use_cpu_amp = False   # the graph casts its own MatMuls; no Trainer autocast (module docstring)

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        # fp16's loss scale is the graph's. accelerate's device-only fp16 objects must not act: with its
        # GradScaler the loop's optimizer.step() goes through scaler.step(EngineAdamW), which asserts (no
        # scaler.scale ran: "Attempted step but _scale is None"); native_amp wraps the model in autocast.
        self.accelerator.scaler = None
        self.accelerator.native_amp = False
        # The loop's clipping call: the graph has clipped already; report the norm it measured.
        self.accelerator.clip_grad_norm_ = self._engine_clip_grad_norm

    def _engine_clip_grad_norm(self, parameters, max_norm, norm_type=2):
        return self._engine_grad_norm

    def create_optimizer(self):
        options.check_frozen(self.model)  # again: a model can be frozen after the Trainer is made
        super().create_optimizer()  # the Trainer's own parameter groups (weight decay rule) and settings
        groups = self.optimizer.param_groups
        self.optimizer = EngineAdamW(groups, lr=groups[0]["lr"]).attach(self)
        return self.optimizer

    def _build_engine(self) -> CompiledEngine:
        optimizer = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        names = {id(p): n for n, p in self.model.named_parameters()}
        decay = {names[id(p)]: float(g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
        group = optimizer.param_groups[0]
        self.model.train()
        engine = CompiledEngine(self.model, decay, max_grad_norm=self.args.max_grad_norm or 0.0,
                                betas=group["betas"], eps=group["eps"], seed=self.args.seed, reduce=self.engine_reduce,
                                accumulation=self.args.gradient_accumulation_steps,
                                # gradient_checkpointing: the Trainer enabled it on the Hugging Face model too,
                                # which the graph does not run; here the graph's own blocks are recomputed
                                recompute=bool(self.args.gradient_checkpointing),
                                precision=Precision.of(fp16=bool(self.args.fp16), bf16=bool(self.args.bf16)))
        engine.load_optimizer_state(optimizer.engine_state())
        engine.load_loss_scale_state(optimizer.loaded_loss_scale)
        optimizer.release_state()  # the graph holds the moments now (from --resume or an earlier engine)
        log.info("compiled training engine: %s, %d weights, MatMuls in %s%s%s, AdamW state at step %d",
                 engine.graph.describe(), len(engine.names), engine.cfg.precision.compute,
                 " (emulated: rounded, multiplied in float32)" if engine.cfg.precision.emulate else "",
                 f", loss scale {engine.loss_scale_state()['scale']:g}" if engine.loss_scaled else "",
                 engine.optimizer_steps)
        return engine

    # -- the step ---------------------------------------------------------------------------------
    def _ensure_engine(self) -> CompiledEngine:
        if self._engine is None:
            try:
                self._engine = self._build_engine()
            except NotImplementedError as err:  # a model the graph does not compute: say so in one line
                raise EngineError(f"{err}; train this model with --engine eager") from None
        return self._engine

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self._ensure_engine().released:
            # the graph holds the weights (copied when it was built): the model's copies wait for
            # sync_model, and go before the step rather than after it, so that the first step's
            # compilation and activations never share the process with two copies of the weights
            self._engine.release_model(self.model)
        # the Trainer's torch tensors, or a data-parallel shard's NumPy arrays (and its weights)
        batch = {k: v.cpu().numpy() if hasattr(v, "cpu") else v for k, v in inputs.items()}
        if self.args.gradient_accumulation_steps == 1:  # the one fused graph
            loss, self._engine_grad_norm = self._engine.train_step(batch, self._get_learning_rate(),
                                                                   self.state.global_step)
        else:
            self._engine.accumulate(batch, self.state.global_step, self._engine_micro)
            self._engine_micro += 1
            if not self.accelerator.sync_gradients:  # the loop steps after a later micro-batch
                return torch.tensor(0.0, device=self.args.device)
            loss, self._engine_grad_norm = self._engine.apply(self._get_learning_rate())
            self._engine_micro = 0
        self._engine_dirty = True
        runtime.return_step_memory()   # on CPU, what the step freed goes back to the system
        self._engine_last_skipped = self._engine.loss_scaled and not np.isfinite(self._engine_grad_norm)
        compat.report_skipped_step(self.optimizer, self._engine_last_skipped)  # the scheduler waits a step
        if self._engine_last_skipped:
            self._engine_skipped += 1
            log.warning("step %d skipped: the float16 gradients overflowed; loss scale now %g",
                        self.state.global_step + 1, self._engine.loss_scale_state()["scale"])
        return torch.tensor(loss, device=self.args.device)

    def log(self, logs, *args, **kwargs):
        """The Trainer's log line, plus fp16's loss scale and the steps it skipped so far; if the
        line's last step was skipped, its ``grad_norm`` (not finite) is None and ``skipped`` True."""
        if self._engine is not None and self._engine.loss_scaled and "loss" in logs:
            logs = dict(logs, loss_scale=self._engine.loss_scale_state()["scale"], skipped_steps=self._engine_skipped)
            if self._engine_last_skipped:
                logs.update(grad_norm=None, skipped=True)
        return super().log(logs, *args, **kwargs)

    # -- keeping the Hugging Face model up to date --------------------------------------------------
    def sync_model(self) -> None:
        """Bring ``self.model`` up to date with the graph's weights if they are newer (or were released).

        On CPU the model is given the graph's own buffers (views: no copy of the weights for a
        checkpoint, an evaluation or the end of training); ``training_step`` releases them before the
        next step, so the model never sees a step's update without a sync. Elsewhere: copies."""
        if self._engine is not None and (self._engine_dirty or self._engine.released):
            self._engine.to_model(self.model, share=True)
            self._engine_dirty = False

    def _save_checkpoint(self, model, trial):
        self.sync_model()
        return super()._save_checkpoint(model, trial)

    def evaluate(self, *args, **kwargs):
        self.sync_model()
        return super().evaluate(*args, **kwargs)

    def _drop_engine(self) -> None:
        """Forget the engine; its AdamW state goes back to the optimizer, for the next one."""
        if self._engine is not None and self.optimizer is not None:
            optimizer = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
            optimizer.take_state(self._engine)
            optimizer.loaded_loss_scale = self._engine.loss_scale_state() or optimizer.loaded_loss_scale
        self._engine = None

    def _load_best_model(self):
        self.sync_model()
        super()._load_best_model()
        self._drop_engine()  # the model now holds other weights: rebuild from it if training goes on

    def train(self, *args, **kwargs):
        self.sync_model()
        self._drop_engine()  # built at the first step, from the model as train() (or --resume) left it
        self._engine_micro = 0
        self._engine_skipped = 0
        self._engine_last_skipped = False
        try:
            return super().train(*args, **kwargs)
        finally:
            self.sync_model()


def trainer_class(base, engine: str | None, data_parallel: bool = False):
    """The Trainer class for ``engine`` ("compiled" or "eager") on top of ``base``; with
    ``data_parallel``, one rank's of an msrun job (:mod:`ms_gpt2.engine.distributed`)."""
    from ms_gpt2.engine import distributed

    engine = options.check_engine(DEFAULT_ENGINE if engine is None else engine)
    if engine == "eager":
        mixins = (distributed.DataParallelMixin,) if data_parallel else ()
    else:
        mixins = ((distributed.CompiledDataParallelMixin,) if data_parallel else ()) + (CompiledTrainerMixin,)
    if not mixins:
        return base
    prefix = ("Compiled" if engine == "compiled" else "") + ("DataParallel" if data_parallel else "")
    return type(f"{prefix}{base.__name__}", (*mixins, base), {})
