"""Which ``TrainingArguments`` each training engine honours: the one decision table.

The compiled engine (:mod:`ms_gpt2.engine.trainer`) replaces the Trainer's ``training_step``
(``_prepare_inputs``, the autocast context, ``compute_loss`` with its label smoother,
``accelerator.backward``), the optimizer (a facade over the graph's AdamW), the clipping call and
the model's forward (the graph computes GPT-2 itself, from copied weights). A field whose effect
lives in that code would be silently ignored, so every settable field is decided here, field by
field, against transformers 4.56:

* :data:`REFUSED` - a non-default value is refused in one line (:class:`EngineError`, exit 2
  through the CLI) naming the key and what to do, before any data work;
* :data:`HONOURED` - the compiled engine reads it (the graph, or the Trainer code it keeps);
* :data:`OUTSIDE_THE_STEP` - its effect lives in code both engines share (the loop, logging,
  checkpoints, evaluation, data loading, the Hub, launchers), so the engine changes nothing;
* the keys ms_gpt2 sets itself are :data:`ms_gpt2.infra.config.MANAGED_TRAINING_KEYS`.

tests/test_engine_options.py walks ``dataclasses.fields(TrainingArguments)`` and fails on a field
in none of these, so a new transformers field cannot slip through undecided.

``fp16``/``bf16`` are honoured by the compiled engine (:mod:`ms_gpt2.models.graphs.precision`) where they
run. Some refusals hold for the eager engine too, where it has no working path: fp16/bf16 on CPU (the
Trainer's CPU mixed precision does not work under mindtorch: bf16 fails in ``torch.cpu.amp``, fp16
runs float32 kernels whose results drift from a plain float32 run; the compiled graph's CPU run is
an emulation kept for tests), bf16 on Ascend 910A (no bfloat16 there), and
``average_tokens_across_devices: false`` under data parallel (ms_gpt2's own data parallel always
takes the token mean over every rank, :mod:`ms_gpt2.engine.distributed`). So do the Trainer's
DataLoader settings, on both engines: ms_gpt2's MindSpore pipeline builds the batches instead
(``group_by_length``, ``auto_find_batch_size``, ``dataloader_prefetch_factor``...); of that group it
honours ``data_seed`` and ``dataloader_drop_last`` itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from ms_gpt2.engine import ENGINES
from ms_gpt2.infra.errors import EngineError

SUPPORTED_OPTIM = ("adamw_torch", "adamw_torch_fused")
EAGER = "use --engine eager (or drop the setting)"


@dataclass(frozen=True)
class Context:
    engine: str        # the engine that will train: "compiled" | "eager"
    device: str        # ms_gpt2.infra.runtime's: "cpu" | "ascend" | "gpu"
    world_size: int = 1
    soc: str | None = None  # Ascend's SoC ("ascend910" is the 910A, "ascend910b"/"ascend910_93" A2/A3)


@dataclass(frozen=True)
class Refused:
    """One refusal: ``reason`` (what the engine does instead), ``remedy`` (what to do)."""
    reason: str
    remedy: str = EAGER
    engines: tuple = ("compiled",)
    when: Callable[[Any, Context], bool] | None = None  # also needed besides a non-default value
    allowed: tuple = ()                                 # values accepted besides the default


def _off_cpu(value, ctx: Context) -> bool:
    return ctx.device != "cpu"


def _half_on_cpu(value, ctx: Context) -> bool:
    """fp16/bf16 on CPU: refused, except the compiled graph's emulation that tests switch on."""
    from ms_gpt2.models.graphs.precision import emulating

    return ctx.device == "cpu" and not (ctx.engine == "compiled" and emulating())


def _on_910a(value, ctx: Context) -> bool:
    return ctx.device == "ascend" and ctx.soc == "ascend910"


_HALF_ON_CPU = "drop it (train in float32), or train on Ascend (or a GPU)"

#: ``training.report_to`` values ms_gpt2 honours (besides the default, none)
REPORT_TO = ("none", ["none"], "tensorboard", ["tensorboard"])


def reports_to_tensorboard(value) -> bool:
    return value in ("tensorboard", ["tensorboard"])


def tensorboard_writer() -> bool:
    """Whether Hugging Face's TensorBoardCallback will find a writer: mindtorch has no
    ``torch.utils.tensorboard``, so it takes tensorboardX's."""
    import importlib.util

    return importlib.util.find_spec("tensorboardX") is not None


#: key -> the refusals that apply to it, checked in order (the first that applies is raised).
REFUSED: dict[str, tuple[Refused, ...]] = {
    # -- precision: the graph's dtype is float32; CPU has no working half-precision path at all --
    "fp16": (Refused("on CPU neither engine trains in float16: MindSpore's CPU kernels compute it in float32 (the "
                     "compiled graph's CPU float16 is an emulation for tests), and the eager Trainer's CPU mixed "
                     "precision does not work under mindtorch (results drifting from a plain float32 run)",
                     _HALF_ON_CPU, engines=ENGINES, when=_half_on_cpu),),
    "bf16": (Refused("on CPU neither engine trains in bfloat16: MindSpore 2.7 has no CPU bfloat16 MatMul (the compiled "
                     "graph's CPU bfloat16 is an emulation for tests), and the eager Trainer's CPU autocast "
                     "(torch.cpu.amp) is missing under mindtorch", _HALF_ON_CPU, engines=ENGINES,
                     when=_half_on_cpu),
             Refused("this NPU is an Atlas training-series 910A, which has no bfloat16 (bf16 runs on Ascend A2/A3, "
                     "910B and later)", "use training.fp16 (with loss scaling) instead", engines=ENGINES,
                     when=_on_910a)),
    "half_precision_backend": (Refused("the half-precision backend (amp, apex, cpu_amp) wraps the Trainer's "
                                         "training_step, which the graph replaces"),),
    "fp16_backend": (Refused("the deprecated alias of half_precision_backend, which wraps the Trainer's "
                               "training_step, which the graph replaces"),),
    "fp16_opt_level": (Refused("apex's optimisation level applies in the Trainer's training_step, which the graph "
                                 "replaces"),),
    # -- the loss: compute_loss is not called --
    "label_smoothing_factor": (Refused("the graph's loss is the plain token-mean cross-entropy; the Trainer's label "
                                         "smoother (compute_loss) does not run"),),
    "past_index": (Refused("the Trainer feeds outputs[past_index] back as `mems` in compute_loss/_prepare_inputs, "
                             "which the graph replaces (and GPT-2 takes no mems)"),),
    # -- the model's forward: the graph computes GPT-2 itself, hooks and patches on the model never run --
    "neftune_noise_alpha": (Refused("NEFTune adds noise in a forward hook on the input embeddings; the graph "
                                      "computes the embeddings itself, without it"),),
    "use_liger_kernel": (Refused("the Liger kernels patch the model's modules; the graph does not run them"),),
    "liger_kernel_config": (Refused("configures the Liger kernels, which patch the model's modules the graph "
                                      "does not run"),),
    "torch_compile": (Refused("torch.compile wraps the eager model; the compiled engine is already one MindSpore "
                                "graph per step"),),
    "torch_compile_backend": (Refused("sets torch_compile (torch.compile wraps the eager model, the compiled engine "
                                        "is already one MindSpore graph per step)"),),
    "torch_compile_mode": (Refused("sets torch_compile (torch.compile wraps the eager model, the compiled engine is "
                                     "already one MindSpore graph per step)"),),
    "torchdynamo": (Refused("the deprecated alias of torch_compile_backend (torch.compile wraps the eager model)"),),
    "use_ipex": (Refused("Intel's extension optimises the eager model and optimizer, which the graph replaces"),),
    "debug": (Refused("underflow_overflow detection hooks the model's forward, which the graph replaces"),),
    # -- the optimizer: the graph's AdamW (torch.optim.AdamW semantics) --
    "optim": (Refused(f"the compiled engine implements AdamW only ({', '.join(SUPPORTED_OPTIM)})",
                        "use --engine eager for other optimizers", allowed=SUPPORTED_OPTIM),),
    "adafactor": (Refused("it selects Adafactor; the compiled engine implements AdamW only",
                            "use --engine eager for other optimizers"),),
    "optim_args": (Refused("the graph's AdamW takes no extra optimizer arguments (adam_beta1/2, adam_epsilon and "
                             "weight_decay are honoured)"),),
    "optim_target_modules": (Refused("it selects the modules GaLore/APOLLO-style optimizers act on; the compiled "
                                       "engine implements AdamW on every weight"),),
    # -- the step's housekeeping and the model wrappers the graph cannot run under --
    "torch_empty_cache_steps": (Refused("the Trainer empties the device cache in its training_step, which the graph "
                                          "replaces (MindSpore manages the graph's memory)"),),
    "deepspeed": (Refused("DeepSpeed wraps the model and optimizer, which the graph replaces"),),
    "fsdp": (Refused("FSDP shards the eager model; the graph holds whole weights (data parallel: msrun / --nproc)"),),
    "fsdp_config": (Refused("configures FSDP, which shards the eager model the graph does not run"),),
    "fsdp_min_num_params": (Refused("configures FSDP, which shards the eager model the graph does not run"),),
    "fsdp_transformer_layer_cls_to_wrap": (Refused("configures FSDP, which shards the eager model the graph does "
                                                     "not run"),),
    "parallelism_config": (Refused("context/tensor parallelism splits the eager model's inputs in training_step, "
                                     "which the graph replaces"),),
    "full_determinism": (Refused("it makes torch's eager kernels deterministic, which the graph does not run (on "
                                   "CPU, where it is accepted, the graph's seeded runs repeat bit for bit)",
                                   when=_off_cpu),),
    # -- both engines: data loading is ms_gpt2's MindSpore pipeline (ms_gpt2.jobs.fit.PipelineBatches), not the
    # Trainer's DataLoader; what only that DataLoader (or accelerate's preparation of it) reads would do nothing --
    "per_gpu_train_batch_size": (Refused("the deprecated alias of per_device_train_batch_size, which ms_gpt2's "
                                           "pipeline batches by", "use training.per_device_train_batch_size",
                                           engines=ENGINES),),
    "group_by_length": (Refused("ms_gpt2's pipeline draws each epoch's examples in a seeded uniform order; it does "
                                  "not group them by length", "drop it", engines=ENGINES),),
    "length_column_name": (Refused("read only by group_by_length, which ms_gpt2's pipeline does not do",
                                     "drop it", engines=ENGINES),),
    "auto_find_batch_size": (Refused("ms_gpt2's pipeline batches by training.per_device_train_batch_size; nothing "
                                       "retries a smaller batch after running out of memory",
                                       "set training.per_device_train_batch_size (with "
                                       "gradient_accumulation_steps for the same effective batch)",
                                       engines=ENGINES),),
    "dataloader_prefetch_factor": (Refused("the batches come from the MindSpore pipeline's own threads, with no "
                                             "DataLoader workers to prefetch", "drop it", engines=ENGINES),),
    "dataloader_persistent_workers": (Refused("the batches come from the MindSpore pipeline's own threads; there are "
                                                "no DataLoader workers to keep", "drop it", engines=ENGINES),),
    "accelerator_config": (Refused("it configures accelerate's preparation of the Trainer's DataLoader (split, "
                                     "dispatch, even batches, a seedable sampler) and its DDP gradient syncing, "
                                     "which ms_gpt2's pipeline and data parallel do without",
                                     "drop it (data order: training.data_seed; data parallel: --nproc)",
                                     engines=ENGINES),),
    # -- both engines: evaluation during training is the job's own held-out scoring --
    **{key: (Refused(f"{what}; ms_gpt2's evaluation during training is the job's own held-out scoring "
                     f"(ms_gpt2.jobs.fit.HeldOutEvaluation), which runs no prediction loop and no compute_metrics",
                     "drop it", engines=ENGINES),)
       for key, what in {
           "eval_accumulation_steps": "it moves gathered predictions off the device every N evaluation steps",
           "prediction_loss_only": "it makes the prediction loop return only the loss",
           "include_inputs_for_metrics": "it passes the inputs to compute_metrics",
           "include_for_metrics": "it passes inputs or losses to compute_metrics",
           "eval_do_concat_batches": "it sets how the prediction loop concatenates predictions",
           "batch_eval_metrics": "it calls compute_metrics batch by batch",
           "eval_use_gather_object": "it gathers predictions as Python objects across devices",
           "jit_mode_eval": "it traces the model with torch.jit for the prediction loop",
           "fp16_full_eval": "it runs the prediction loop's model in float16 (the held-out scoring is float32)",
           "bf16_full_eval": "it runs the prediction loop's model in bfloat16 (the held-out scoring is float32)",
           "use_legacy_prediction_loop": "it selects the older prediction loop",
           "label_names": "the prediction loop reads the labels under these names",
       }.items()},
    "per_gpu_eval_batch_size": (Refused("the deprecated alias of per_device_eval_batch_size",
                                        "use training.per_device_eval_batch_size", engines=ENGINES),),
    # -- both engines: where the logs go --
    "report_to": (Refused("ms_gpt2 logs to loss_log.jsonl and loss_curve.png in --output-dir, and to TensorBoard "
                          "with report_to: tensorboard; it sets up no other integration",
                          "use report_to: tensorboard (or none)", engines=ENGINES, allowed=REPORT_TO),
                  Refused("TensorBoard's event files are written with tensorboardX, which is not installed",
                          "pip install tensorboardX (or drop the setting)", engines=ENGINES,
                          when=lambda value, ctx: reports_to_tensorboard(value) and not tensorboard_writer()),),
    # -- both engines: ms_gpt2's own data parallel --
    "average_tokens_across_devices": (Refused(
        "ms_gpt2's data parallel always takes the token mean over every rank's tokens (both engines)",
        "drop it", engines=ENGINES, when=lambda value, ctx: ctx.world_size > 1),),
}

#: Fields the compiled engine honours, and how.
HONOURED: dict[str, str] = {
    "per_device_train_batch_size": "the rows of each batch the graph runs (ms_gpt2's pipeline batches them)",
    "gradient_accumulation_steps": "the accumulate and apply graphs: the token mean over the whole group",
    "learning_rate": "the Trainer's scheduler sets the learning rate fed to each step",
    "lr_scheduler_type": "the Trainer's scheduler sets the learning rate fed to each step",
    "lr_scheduler_kwargs": "the Trainer's scheduler sets the learning rate fed to each step",
    "warmup_ratio": "the Trainer's scheduler sets the learning rate fed to each step",
    "warmup_steps": "the Trainer's scheduler sets the learning rate fed to each step",
    "weight_decay": "the Trainer's parameter groups (biases and LayerNorm exempt) give the graph's AdamW its decay",
    "adam_beta1": "read from the Trainer's AdamW parameter group into the graph's AdamW",
    "adam_beta2": "read from the Trainer's AdamW parameter group into the graph's AdamW",
    "adam_epsilon": "read from the Trainer's AdamW parameter group into the graph's AdamW",
    "max_grad_norm": "the graph's global-norm clipping (torch's clip_grad_norm_ formula); the norm is logged",
    "gradient_checkpointing": "each block is recomputed in the graph's backward pass (Cell.recompute)",
    "gradient_checkpointing_kwargs": "torch.utils.checkpoint's options (use_reentrant, ...): the graph's "
                                     "recomputation has no variants to choose",
}

_LOOP = "the Trainer's loop around the step, the same on both engines"
_LOGGING = "logging of what the step returns (loss, grad norm), the same on both engines"
_SAVING = ("checkpoints and resume: the engine brings the model up to date before each save; optimizer.pt holds "
           "its AdamW state")
_EVAL = ("evaluation during training: the job's own held-out scoring (ms_gpt2.jobs.fit.HeldOutEvaluation) runs "
         "on the Hugging Face model, which the compiled engine brings up to date first")
_HUB = "Hugging Face Hub uploads of saved checkpoints, the same on both engines"
_LAUNCH = ("device selection and torch.distributed launch settings, read before training (ms_gpt2: --device, and "
           "its own data parallel through msrun on both engines)")


def _each(reason: str, names: str) -> dict[str, str]:
    return {name: reason for name in names.split()}


#: Fields whose effect lives outside the code the compiled engine replaces.
OUTSIDE_THE_STEP: dict[str, str] = {
    **_each(_LOOP, "num_train_epochs max_steps include_num_input_tokens_seen include_tokens_per_second "
                   "logging_nan_inf_filter"),
    **_each(_LOGGING, "log_level log_level_replica log_on_each_node logging_dir logging_strategy logging_first_step "
                      "logging_steps run_name disable_tqdm skip_memory_metrics"),
    **_each(_SAVING, "save_steps save_total_limit save_on_each_node save_only_model "
                     "restore_callback_states_from_checkpoint ignore_data_skip"),
    "overwrite_output_dir": "not read by the Trainer (ms_gpt2: --overwrite)",
    "resume_from_checkpoint": "not read by the Trainer (ms_gpt2: --resume)",
    **_each("not read by the Trainer (scripts' flags)", "do_train do_eval do_predict"),
    **_each(_EVAL, "eval_strategy eval_steps eval_delay eval_on_start per_device_eval_batch_size "
                   "metric_for_best_model greater_is_better load_best_model_at_end"),
    # data loading, before the step: ms_gpt2's MindSpore pipeline builds the batches on both engines
    "data_seed": "seeds each epoch's batch order (ms_gpt2.jobs.fit.PipelineBatches), apart from --seed, which the "
                 "initial weights and dropout keep following",
    "dataloader_drop_last": "ms_gpt2's pipeline leaves out each epoch's short last (global) batch: floor(examples / "
                            "batch) batches an epoch, all full (on the compiled engine: no second graph for its shape)",
    "dataloader_pin_memory": "not read: ms_gpt2's loader hands the Trainer host tensors and never pins them, the "
                             "same with true or false",
    **_each(_HUB, "push_to_hub hub_model_id hub_strategy hub_token hub_private_repo hub_always_push hub_revision "
                  "push_to_hub_model_id push_to_hub_organization push_to_hub_token"),
    **_each(_LAUNCH, "no_cuda use_mps_device local_rank ddp_backend tpu_num_cores tpu_metrics_debug "
                     "ddp_find_unused_parameters ddp_bucket_cap_mb ddp_broadcast_buffers ddp_timeout mp_parameters "
                     "ray_scope"),
    "tf32": "a CUDA matmul switch: TrainingArguments itself refuses it without an Ampere GPU",
}

_EMPTY = (None, "", [], {}, ())


def field_defaults() -> dict[str, Any]:
    """The settable fields of (mindnlp's) ``TrainingArguments`` and their defaults."""
    from ms_gpt2.infra.config_checks import training_fields

    training_fields()  # imports TrainingArguments on the right runtime
    from mindnlp.transformers import TrainingArguments

    defaults = {}
    for f in dataclasses.fields(TrainingArguments):
        if f.init:
            defaults[f.name] = (f.default if f.default is not dataclasses.MISSING else
                                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    return defaults


def _plain(value):
    return getattr(value, "value", value)  # an enum (OptimizerNames, ...) as its string


def _is_default(value, default) -> bool:
    value, default = _plain(value), _plain(default)
    return value == default or (value in _EMPTY and default in _EMPTY)


def _show(value) -> str:
    value = _plain(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise EngineError(f"engine={engine!r}: choose one of {', '.join(ENGINES)}")
    return engine


def check(training: dict, ctx: Context, defaults: dict | None = None) -> None:
    """Refuse, in one line, the first setting of ``training`` (a ``training:`` section, or any
    field -> value mapping) that ``ctx.engine`` cannot honour on ``ctx.device``."""
    check_engine(ctx.engine)
    defaults = field_defaults() if defaults is None else defaults
    for key, rules in REFUSED.items():
        if key not in training:
            continue
        value = training[key]
        for rule in rules:
            if ctx.engine not in rule.engines or _is_default(value, defaults.get(key)):
                continue
            if _plain(value) in rule.allowed or (rule.when is not None and not rule.when(value, ctx)):
                continue
            raise EngineError(f"training.{key}={_show(value)}: {rule.reason}; {rule.remedy}")


def check_config(config: dict, engine: str | None = None) -> None:
    """:func:`check` for a loaded ms_gpt2 config, on this process's device and msrun world, for
    ``engine`` (default: the config's). Call it before any data work."""
    from ms_gpt2.infra import runtime

    current = runtime.ensure()
    check(config.get("training") or {}, Context(engine or config.get("engine") or "compiled", current.device,
                                                current.world_size, runtime.ascend_soc()))


def check_arguments(args, engine: str = "compiled") -> None:
    """:func:`check` for a built ``TrainingArguments`` (a Trainer made without :func:`check_config`).
    Its ``__post_init__`` rewrites some defaults (``debug`` and ``fsdp`` to lists, ``fsdp_config``
    to a filled dict, read only with ``fsdp``; ``accelerator_config`` to an ``AcceleratorConfig``),
    which count as defaults here."""
    from ms_gpt2.infra import runtime

    values = {key: getattr(args, key) for key in REFUSED if hasattr(args, key)}
    if not values.get("fsdp"):
        values.pop("fsdp_config", None)
    if _is_default_accelerator_config(values.get("accelerator_config")):
        values.pop("accelerator_config", None)
    check(values, Context(engine, runtime.ensure().device, soc=runtime.ascend_soc()))


def _is_default_accelerator_config(value) -> bool:
    """``__post_init__`` turns ``accelerator_config: None`` into a default ``AcceleratorConfig()``."""
    from transformers.trainer_pt_utils import AcceleratorConfig

    return value is None or (isinstance(value, AcceleratorConfig) and value == AcceleratorConfig())


def check_frozen(model) -> None:
    """The compiled engine updates every weight of its graph: refuse a model with frozen parameters."""
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        shown = ", ".join(frozen[:3]) + (f" and {len(frozen) - 3} more" if len(frozen) > 3 else "")
        raise EngineError(f"{len(frozen)} parameter(s) have requires_grad=False ({shown}): the compiled engine "
                          f"updates every weight; use --engine eager to keep them frozen")
