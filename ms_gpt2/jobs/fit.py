"""Training with the MindNLP ``Trainer``, fed by the tutorial's MindSpore data pipeline: the set-up every
job shares (:func:`fit`).

mindnlp 0.5's ``Trainer`` is Hugging Face's, which wants a torch-style DataLoader. The bridge is
:class:`PipelineBatches`: an iterable over the *batched* MindSpore pipeline (so batching and
shuffling stay MindSpore's, as in the tutorial), handed to the Trainer through a DataLoader with
``batch_size=None`` that passes the Trainer's ``set_epoch`` on. Each epoch rebuilds the pipeline
with shuffle seed ``data seed + epoch`` (``training.data_seed``, else ``--seed``: the batch order
can be varied apart from the model's initialisation and dropout, which follow ``--seed``), and a
run resumed from a checkpoint, even mid-epoch, sees exactly the batches the uninterrupted run would
have. ``training.dataloader_drop_last`` leaves out each epoch's short last batch.

**Evaluation during training** (``training.eval_strategy`` steps or epoch): each job hands
:func:`fit` its own held-out evaluation (:class:`HeldOutEvaluation`, the code that scores the
held-out split after training) and :meth:`PipelineTrainer.evaluate` runs it on the Hugging Face
model, so the Trainer's ``eval_*`` metrics, ``load_best_model_at_end`` and ``metric_for_best_model``
work as in Hugging Face. Every data-parallel rank evaluates the whole held-out split (the same
weights, so the same numbers; no collective call, so no rank waits for another).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ms_gpt2.infra import runtime

runtime.ensure()

import mindspore.dataset as msds  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402  (mindtorch)
from mindnlp.transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from transformers.trainer import TRAINER_STATE_NAME  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: E402

from ms_gpt2.engine import distributed, options  # noqa: E402
from ms_gpt2.engine.trainer import trainer_class  # noqa: E402
from ms_gpt2.infra.config import dump_config  # noqa: E402
from ms_gpt2.infra.errors import UserError  # noqa: E402
from ms_gpt2.infra.rundir import (WriteError, atomic_write_text, describe_write_failure, replace_dir,  # noqa: E402
                                  staging_name, write_failure)
from ms_gpt2.jobs.run import LOSS_LOG, data_seed, run_seed, what_survives  # noqa: E402
from ms_gpt2.models.checkpoints import FINAL_MODEL, RUN_CONFIG, incomplete_reason, save_pretrained  # noqa: E402
from ms_gpt2.models.gpt2 import ignored_label_id, loss_token_count  # noqa: E402

log = logging.getLogger(__name__)

LOSS_CURVE = "loss_curve.png"
EVAL_LOSS = "eval_loss"  # the held-out loss an evaluation during training logs
EVAL_TIMINGS = ("_runtime", "_per_second")  # evaluation metrics the loss log leaves out
PAUSE_IN_SAVE_ENV = "MS_GPT2_TEST_PAUSE_IN_SAVE"


class PipelineBatches(torch.utils.data.IterableDataset):
    """Batches from a MindSpore pipeline, as mindtorch tensors, one epoch per iteration.

    Epoch ``e`` is shuffled with seed ``seed + e`` (the Trainer says which epoch it is through
    :meth:`PipelineLoader.set_epoch`), so every epoch has its own order and any run repeats it.
    Only the first ``n_batches`` batches of an epoch are read: with ``dataloader_drop_last``
    (:func:`batch_count`) that leaves out the short last one.
    :meth:`resume_at` makes one epoch start after the batches a checkpoint already trained on: the
    batched pipeline skips them (they are never turned into tensors), and ``len()`` says how many
    remain, so the Trainer groups the rest for gradient accumulation as the first run did.
    """

    def __init__(self, make_pipeline, n_batches: int, seed: int):
        self.make_pipeline, self.n_batches, self.seed, self.epoch = make_pipeline, n_batches, seed, 0
        self.skip = 0          # batches of the current epoch already trained (resume)
        self.position = 0      # batches of the current epoch consumed so far, skipped ones included
        self._resume = None    # (epoch, batches) waiting for that epoch to start

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.skip, self.position = int(epoch), 0, 0
        if self._resume is not None and self._resume[0] == self.epoch:
            self.skip, self._resume = self._resume[1], None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """When epoch ``epoch`` starts, leave out its first ``batches_done`` batches."""
        self._resume = (int(epoch), int(batches_done))

    def __len__(self) -> int:
        return self.n_batches - self.skip

    def __iter__(self):
        msds.config.set_seed(self.seed + self.epoch)
        pipeline = self.make_pipeline().take(self.n_batches)  # drop_last: not the short last batch
        if self.skip:
            pipeline = pipeline.skip(self.skip)
        self.position = self.skip
        for row in pipeline.create_dict_iterator(num_epochs=1, output_numpy=True):
            self.position += 1
            yield {key: torch.tensor(value.astype(np.float32 if key == "loss_weights" else np.int64))
                   for key, value in row.items()}


class CrashSafeCheckpoints:
    """Trainer mixin: ``checkpoint-N`` appears only once every file of it is written, with the run config.

    The Trainer's own ``_save_checkpoint`` writes into ``.checkpoint-N.partial/checkpoint-N`` (by
    pointing ``_get_output_dir`` there while it runs), then the finished directory is flushed and
    renamed to ``checkpoint-N`` and only then are old checkpoints rotated away. Hidden staging names
    match neither ``get_last_checkpoint`` nor the rotation's ``checkpoint-*`` glob. A save that fails
    (a full disk) removes its staging directory; one the user can fix (see
    :func:`~ms_gpt2.infra.rundir.write_failure`) is a one-line :class:`~ms_gpt2.infra.rundir.WriteError`.
    """

    run_config: dict | None = None  # saved as ms_gpt2_config.yaml in every checkpoint
    _staging_root: Path | None = None

    def _get_output_dir(self, trial):
        return str(self._staging_root) if self._staging_root is not None else super()._get_output_dir(trial)

    def _rotate_checkpoints(self, use_mtime=False, output_dir=None) -> None:
        if self._staging_root is None:  # during a save: deferred until the new checkpoint is in place
            super()._rotate_checkpoints(use_mtime=use_mtime, output_dir=output_dir)

    def _sorted_checkpoints(self, *args, **kwargs) -> list[str]:
        # oldest first = deleted first; incomplete ones (a crash under an older version) go before
        # every complete one, so rotation never deletes a resumable checkpoint to keep a broken one
        ordered = super()._sorted_checkpoints(*args, **kwargs)
        return sorted(ordered, key=lambda p: incomplete_reason(p) is None)  # stable: age order kept within each

    def _save_checkpoint(self, model, trial):
        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        root = staging_name(run_dir / name)
        shutil.rmtree(root, ignore_errors=True)
        self._staging_root = root
        try:
            super()._save_checkpoint(model, trial)
            if self.run_config is not None:
                dump_config(self.run_config, root / name / RUN_CONFIG)
            self._unstage_best_checkpoint(root, run_dir, root / name)
            replace_dir(root / name, run_dir / name)
        except Exception as err:  # a full disk: one line, and the half-written copy does not keep its space
            shutil.rmtree(root, ignore_errors=True)
            failure = write_failure(err)
            if failure is None:
                raise
            raise WriteError(f"{run_dir / name}: cannot save the checkpoint: {describe_write_failure(failure)}; "
                             f"{what_survives(run_dir, failure)}") from err
        finally:
            self._staging_root = None
        shutil.rmtree(root, ignore_errors=True)
        if self.args.should_save:
            self._rotate_checkpoints(use_mtime=True, output_dir=str(run_dir))

    def _unstage_best_checkpoint(self, root: Path, run_dir: Path, staged: Path) -> None:
        """The Trainer names the best checkpoint (``load_best_model_at_end``) by the directory it saved
        into, the staging one: name its final place, in the state and in the staged trainer_state.json."""
        best = self.state.best_model_checkpoint
        if best is None or Path(best).parent != root:
            return
        self.state.best_model_checkpoint = str(run_dir / Path(best).name)
        state_file = staged / TRAINER_STATE_NAME
        if self.args.should_save and state_file.is_file():
            self.state.save_to_json(str(state_file))  # what the Trainer wrote, with the final name

    def _save_rng_state(self, output_dir):
        _pause_in_save_for_tests(Path(self.args.output_dir), self.state.global_step)
        super()._save_rng_state(output_dir)


def _pause_in_save_for_tests(run_dir: Path, step: int) -> None:
    """Test hook: with MS_GPT2_TEST_PAUSE_IN_SAVE=<step>, stop half-way through writing checkpoint-<step>
    (weights and optimizer written, RNG and trainer state not), touch ``<run_dir>/.paused-in-save-<step>``
    and sleep, so a test can SIGKILL the run exactly there."""
    if os.environ.get(PAUSE_IN_SAVE_ENV) == str(step):
        (run_dir / f".paused-in-save-{step}").touch()
        time.sleep(600)


class PipelineLoader(torch.utils.data.DataLoader):
    """``DataLoader(PipelineBatches, batch_size=None)`` that passes the Trainer's ``set_epoch`` on.

    The Trainer calls ``set_epoch`` on the dataloader only (a plain DataLoader has none, so the
    dataset never heard of epochs and every epoch repeated the first one's order).
    """

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


@dataclass
class HeldOutEvaluation:
    """A job's held-out evaluation during training, handed to the Trainer as its ``eval_dataset``.

    ``score(model, batch_size) -> {metric: value}`` is the job's own held-out scoring (the code of its
    end-of-training scores), run on the Hugging Face model; it puts the model in eval mode (no
    dropout) and back in train mode. ``metrics``: the names the Trainer reports, as ``eval_<name>``
    (``loss`` among them: Hugging Face's default ``metric_for_best_model``)."""

    score: Callable[[object, int], dict]
    metrics: tuple[str, ...]


class PipelineTrainer(CrashSafeCheckpoints, Trainer):
    """The MindNLP Trainer, reading batches the MindSpore pipeline already made, evaluating with the
    job's :class:`HeldOutEvaluation` (its ``eval_dataset``)."""

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """The Trainer's ``evaluate`` with the job's held-out scoring instead of its prediction loop:
        ``{eval_<metric>: value, eval_runtime}``, logged and passed to the callbacks as Hugging Face does.
        (The compiled engine brings the model up to date before this runs.)"""
        held_out = self.eval_dataset if eval_dataset is None else eval_dataset
        if not isinstance(held_out, HeldOutEvaluation):
            raise TypeError(f"{type(self).__name__}.evaluate scores a HeldOutEvaluation, not {type(held_out).__name__}")
        started = time.time()
        scores = held_out.score(self.model, self.args.per_device_eval_batch_size)
        metrics = {f"{metric_key_prefix}_{name}": float(scores[name]) for name in held_out.metrics}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - started, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def get_train_dataloader(self):
        # batch_size=None: the pipeline has batched. Not passed through accelerate's prepare():
        # its iterable-dataset dispatcher needs torch datapipes, which mindtorch lacks, and a
        # single process needs no sharding.
        return PipelineLoader(self.train_dataset, batch_size=None)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # The Trainer counts labels != -100 as the tokens of the accumulated batch; the loss does not
        # score position 0 (and GPT2ForSummarization's ignores [PAD]), so count what it scores.
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if num_items is not None and batches:
            ignored = ignored_label_id(self.accelerator.unwrap_model(self.model))
            num_items = sum(loss_token_count(batch["labels"], ignored, batch.get("loss_weights")) for batch in batches)
            if self.args.average_tokens_across_devices:
                num_items = self.accelerator.gather(num_items).sum()
            num_items = num_items.to(device)
        return batches, num_items


class EpochProgress(TrainerCallback):
    """Keeps ``state.epoch`` counting the batches a resumed epoch skipped.

    The Trainer computes it as ``epoch + (step + 1 + skipped) / len(dataloader)``, but it does
    not know that :class:`PipelineBatches` skipped the trained batches itself.
    """

    def __init__(self, batches: PipelineBatches):
        self.batches = batches

    def on_step_end(self, args, state, control, **kwargs):
        state.epoch = self.batches.epoch + self.batches.position / self.batches.n_batches


def batch_count(n_examples: int, batch_size: int, drop_last: bool) -> int:
    """Batches in an epoch of ``n_examples``: the short last one too, unless ``drop_last``."""
    return n_examples // batch_size if drop_last else math.ceil(n_examples / batch_size)


def updates_per_epoch(n_batches: int, accumulation: int) -> int:
    """Optimizer steps in an epoch of ``n_batches`` micro-batches (a short last group is a step too)."""
    return max(math.ceil(n_batches / accumulation), 1)


def trained_position(checkpoint, n_batches: int, accumulation: int) -> tuple[int, int] | None:
    """(epoch, batches of it already trained) at a Trainer checkpoint, counted as the Trainer does."""
    state_file = Path(checkpoint) / "trainer_state.json"
    if not state_file.is_file():
        return None
    global_step = int(json.loads(state_file.read_text(encoding="utf-8"))["global_step"])
    per_epoch = updates_per_epoch(n_batches, accumulation)
    return global_step // per_epoch, (global_step % per_epoch) * accumulation


class LossLog(TrainerCallback):
    """Appends every logged loss to loss_log.jsonl, so the curve survives resumes and crashes; and
    every evaluation's held-out metrics, as ``{"step", "epoch", "eval_loss", ...}`` (no timings: the
    log of a seeded run is the same in every process)."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        drop_torn_tail(self.path)  # a run killed mid-write left half a line: the next entry must start clean
        # steps a crashed run logged after its last checkpoint are trained (and logged) again
        drop_entries_after(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            entry = {"step": state.global_step, "epoch": logs.get("epoch"), "loss": logs["loss"],
                     "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm")}
            # fp16's loss scaling; "skipped": the step's update was skipped (its grad_norm is null)
            entry.update({k: logs[k] for k in ("loss_scale", "skipped_steps", "skipped") if k in logs})
        elif logs and EVAL_LOSS in logs:
            entry = {"step": state.global_step, "epoch": logs.get("epoch"),
                     **{k: v for k, v in logs.items() if k.startswith("eval_") and not k.endswith(EVAL_TIMINGS)}}
        else:
            return
        # strict JSON: a value that is not finite (an overflowed norm, a diverged loss) is null
        entry = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in entry.items()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, allow_nan=False) + "\n")


def drop_torn_tail(path: Path) -> None:
    """Cut a JSON-lines file back to its last complete line (what a SIGKILL during an append leaves)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping an incomplete last line (%d bytes) left by an interrupted run", path, len(data) - keep)
        with open(path, "r+b") as handle:
            handle.truncate(keep)


def drop_entries_after(path: Path, step: int) -> None:
    """Cut a JSON-lines log back to the entries of steps up to ``step`` (the checkpoint a run resumes
    from; 0 on a fresh start), crash-safely: the kept lines go to a temporary file that replaces it."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _logged_step(line) <= step]
    if len(kept) < len(lines):
        log.info("%s: dropping %d entries after step %d, the step this run starts from", path,
                 len(lines) - len(kept), step)
        atomic_write_text(path, "".join(kept))


def _logged_step(line: str) -> float:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # no step: not ours to drop
        return -math.inf


def read_loss_log(path: Path, key: str = "loss") -> dict[int, float]:
    """step -> ``key`` (the training loss, or an evaluation's metric such as ``eval_loss``) from
    loss_log.jsonl; entries without it are left out. A resumed run re-logs a step: the latest entry
    wins. A torn last line (a kill during an append) is skipped."""
    by_step = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: skipping an incomplete line (an interrupted write)", path)
            continue
        if key in entry:
            by_step[entry["step"]] = entry[key]
    return by_step


def plot_loss_curve(log_path: Path, png_path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_path.is_file():
        return None
    by_step, held_out = read_loss_log(log_path), read_loss_log(log_path, EVAL_LOSS)
    if not by_step and not held_out:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values, marker in (("training loss", by_step, "."), ("held-out loss", held_out, "o")):
        if values:
            steps = sorted(values)
            ax.plot(steps, [values[s] for s in steps], marker=marker if len(steps) < 50 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("ms_gpt2 training loss" + (" and held-out loss" if held_out else ""))
    if held_out:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


@dataclass
class Fitted:
    trainer: object
    global_step: int
    train_loss: float
    model_dir: Path
    loss_curve: Path | None


EVAL_STRATEGIES = ("no", "steps", "epoch")
#: ``training:`` keys that do nothing without evaluations during training (refused then)
NEEDS_EVALUATION = ("eval_steps", "eval_delay", "eval_on_start", "per_device_eval_batch_size", "metric_for_best_model",
                    "greater_is_better", "load_best_model_at_end")


def evaluation_settings(tcfg: dict, per_epoch: int, held_out: HeldOutEvaluation | None, no_held_out: str) -> None:
    """Check the ``training:`` evaluation keys against the job's held-out evaluation, in one line each,
    and map ``eval_strategy: epoch`` to steps as ``save_steps: epoch`` is (``eval_steps`` = the optimizer
    steps of an epoch, ``eval_delay`` in epochs turned into steps), so ``load_best_model_at_end``
    finds the save and evaluation strategies matching. ``tcfg`` is changed in place."""
    strategy = str(tcfg.get("eval_strategy") or "no")  # YAML reads a bare `no` as false
    if strategy not in EVAL_STRATEGIES:
        raise UserError(f"training.eval_strategy={strategy}: choose one of {', '.join(EVAL_STRATEGIES)}")
    if strategy == "no":
        for key in NEEDS_EVALUATION:
            if tcfg.get(key) not in (None, False):  # False, 0: the defaults
                value = str(tcfg[key]).lower() if isinstance(tcfg[key], bool) else tcfg[key]
                raise UserError(f"training.{key}={value} applies to evaluations during training, and there are "
                                f"none: set training.eval_strategy (steps or epoch), or drop it")
        return
    if held_out is None:
        raise UserError(f"training.eval_strategy={strategy}: {no_held_out}")
    metric = tcfg.get("metric_for_best_model")
    if metric is not None and str(metric).removeprefix("eval_") not in held_out.metrics:
        raise UserError(f"training.metric_for_best_model={metric}: this job's held-out metrics are "
                        f"{', '.join(held_out.metrics)}")
    if strategy == "epoch":
        tcfg["eval_strategy"], tcfg["eval_steps"] = "steps", per_epoch
        tcfg["eval_delay"] = math.ceil(float(tcfg.get("eval_delay") or 0) * per_epoch)
    eval_steps = tcfg.get("eval_steps") or tcfg.get("logging_steps")
    save_steps = tcfg.get("save_steps")
    if (tcfg.get("load_best_model_at_end") and isinstance(save_steps, int) and isinstance(eval_steps, int)
            and eval_steps > 0 and save_steps % eval_steps):
        raise UserError(f"training.load_best_model_at_end: the best model must have a checkpoint, so save_steps "
                        f"({save_steps}) must be a multiple of the evaluation interval ({eval_steps} steps)")


def report_to(value) -> list[str]:
    """``training.report_to`` as the Trainer's list: [] or ["tensorboard"] (anything else is refused
    earlier, by :mod:`ms_gpt2.engine.options`)."""
    return ["tensorboard"] if options.reports_to_tensorboard(value) else []


def fit(config: dict, model, tokenizer, make_pipeline, n_examples: int, output_dir: Path, resume_from: str | None,
        generation_config=None, compiled_ok: bool = True, data_parallel_ok: bool = True,
        held_out: HeldOutEvaluation | None = None,
        no_held_out: str = "this job has no held-out split to evaluate on") -> Fitted:
    """Train ``model`` with the MindNLP Trainer on batches from ``make_pipeline(batch_size, epoch)``
    (a batched MindSpore dataset of ``n_examples`` examples per epoch); the one set-up every job
    (train, pretrain, pretrain --objective mlm-nsp) shares.

    The engine is ``config["engine"]`` (the compiled step, or the eager one; ``compiled_ok=False``
    for models the graph does not implement, which then train eagerly). Under msrun every rank
    reads the same global batches of ``per_device_train_batch_size x world size`` and keeps its rows
    (with ``dataloader_drop_last``, only full global batches); the batch order follows
    :func:`data_seed`; rank 0 alone writes ``train_config.yaml``, checkpoints, the loss log and curve,
    TensorBoard's event files, and ``model/``. ``held_out``: the job's evaluation during training
    (``training.eval_strategy``); without one, ``no_held_out`` says why when evaluation is asked for."""
    engine = config.get("engine") if compiled_ok else "eager"
    options.check_config(config, engine)  # the jobs checked already, before their data work; API callers here
    rank, world_size = distributed.world()
    if world_size > 1 and not data_parallel_ok:
        raise UserError(f"data parallel (msrun, --nproc) trains {type(model).__name__} on the compiled engine only; "
                        "use --engine compiled, or run it in one process")
    seed = run_seed()
    tcfg = dict(config["training"])
    distributed.broadcast_parameters(model.parameters())  # every rank starts from rank 0's weights
    batch_size = int(tcfg.pop("per_device_train_batch_size"))
    global_batch = batch_size * world_size  # every rank reads the same global batches, keeps its rows
    drop_last = bool(tcfg.get("dataloader_drop_last", False))
    n_batches = batch_count(n_examples, global_batch, drop_last)
    if n_batches == 0:
        raise UserError(f"training.dataloader_drop_last=true: the {n_examples} training examples are fewer than one "
                        f"{'global ' if world_size > 1 else ''}batch of {global_batch}; lower "
                        f"training.per_device_train_batch_size or drop dataloader_drop_last")
    accumulation = int(tcfg.get("gradient_accumulation_steps", 1))
    if tcfg.get("save_steps") == "epoch":  # once per epoch: the Trainer counts optimizer steps
        tcfg["save_steps"] = updates_per_epoch(n_batches, accumulation)
    evaluation_settings(tcfg, updates_per_epoch(n_batches, accumulation), held_out, no_held_out)
    reports = report_to(tcfg.pop("report_to", None))
    reports = reports if rank == 0 else []  # rank 0 alone writes files
    batches = PipelineBatches(lambda: make_pipeline(global_batch, batches.epoch), n_batches, data_seed(config))
    # Resuming mid-epoch: the Trainer would skip the trained batches by drawing and dropping them
    # through a new DataLoader (accelerate's skip_first_batches); PipelineBatches skips them in the
    # pipeline instead. ignore_data_skip keeps its meaning: start the epoch over.
    skip_trained = not tcfg.pop("ignore_data_skip", False)
    if resume_from and skip_trained:
        position = trained_position(resume_from, n_batches, accumulation)
        if position:
            batches.resume_at(*position)

    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, seed=seed,
        report_to=reports, save_strategy="steps", save_safetensors=True, remove_unused_columns=False,
        dataloader_num_workers=0, use_cpu=runtime.ensure().device == "cpu", ignore_data_skip=True, **tcfg)
    if rank == 0:
        dump_config(config, output_dir / "train_config.yaml")
    if not compiled_ok and config.get("engine") == "compiled":
        log.info("%s trains on the eager engine", type(model).__name__)
    if engine == "eager" and args.gradient_checkpointing:
        # the Trainer enables it on the model, whose blocks then go through torch.utils.checkpoint:
        # mindtorch's runs the block once and keeps its activations (no recomputation, no saving)
        log.warning("training.gradient_checkpointing saves no memory on the eager engine (mindtorch's "
                    "checkpoint does not recompute); the compiled engine recomputes each block")
    # the compiled step or the eager one, data-parallel when msrun started several workers
    trainer_cls = trainer_class(PipelineTrainer, engine, data_parallel=world_size > 1)
    callbacks = [EpochProgress(batches)] + ([LossLog(output_dir / LOSS_LOG)] if rank == 0 else [])
    trainer = trainer_cls(model=model, args=args, train_dataset=batches, processing_class=tokenizer,
                          callbacks=callbacks, eval_dataset=held_out if args.eval_strategy != "no" else None)
    trainer.run_config = config  # each checkpoint-N carries it, for summarize/evaluate --model checkpoint-N
    result = trainer.train(resume_from_checkpoint=resume_from)
    model_dir, curve = output_dir / FINAL_MODEL, None
    if rank == 0:
        model_dir = save_pretrained(trainer.model, tokenizer, model_dir, generation_config, config)
        curve = plot_loss_curve(output_dir / LOSS_LOG, output_dir / LOSS_CURVE)
    return Fitted(trainer, result.global_step, result.training_loss, model_dir, curve)
