"""Fine-tuning with the MindNLP ``Trainer``, fed by the tutorial's MindSpore data pipeline.

mindnlp 0.5's ``Trainer`` is Hugging Face's, which wants a torch-style DataLoader. The bridge is
:class:`PipelineBatches`: an iterable over the *batched* MindSpore pipeline (so batching and
shuffling stay MindSpore's, as in the tutorial), handed to the Trainer through a DataLoader with
``batch_size=None``. Each epoch rebuilds the pipeline with shuffle seed ``seed + epoch``, so a
run resumed from a checkpoint sees exactly the batches the uninterrupted run would have.

Output directory::

    checkpoint-N/      Trainer checkpoints (HF format + tokenizer), the newest save_total_limit kept
    model/             the final model + tokenizer + generation config, written atomically
    tokenizer/         the vocabulary built from the data (when none was given)
    train_config.yaml  the resolved config;  loss_log.jsonl, loss_curve.png  the loss history
    work/              clean copies of input files that had skipped bad lines
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from ms_gpt2 import runtime

runtime.ensure()

import mindspore.dataset as msds  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402  (mindtorch)
from mindnlp.transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from ms_gpt2 import tokenization  # noqa: E402
from ms_gpt2.checkpoints import save_pretrained  # noqa: E402
from ms_gpt2.config import dump_config  # noqa: E402
from ms_gpt2.data import NLPCCSource, records  # noqa: E402
from ms_gpt2.engine.trainer import trainer_class  # noqa: E402
from ms_gpt2.errors import UserError  # noqa: E402
from ms_gpt2.examples import summary_fits, train_pipeline  # noqa: E402
from ms_gpt2.modeling import (GPT2ForSummarization, build_config, generation_config_for,  # noqa: E402
                              load_model)

log = logging.getLogger(__name__)

LOSS_LOG = "loss_log.jsonl"
LOSS_CURVE = "loss_curve.png"
FINAL_MODEL = "model"


class OutputDirError(UserError, RuntimeError):
    """Starting would overwrite an earlier run's checkpoints."""


class PipelineBatches(torch.utils.data.IterableDataset):
    """Batches from a MindSpore pipeline, as mindtorch tensors, one epoch per iteration."""

    def __init__(self, make_pipeline, n_batches: int, seed: int):
        self.make_pipeline, self.n_batches, self.seed, self.epoch = make_pipeline, n_batches, seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer at each epoch start
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):
        msds.config.set_seed(self.seed + self.epoch)
        pipeline = self.make_pipeline()
        for row in pipeline.create_dict_iterator(num_epochs=1, output_numpy=True):
            yield {key: torch.tensor(value.astype(np.int64)) for key, value in row.items()}


class PipelineTrainer(Trainer):
    """The MindNLP Trainer, reading batches the MindSpore pipeline already made."""

    def get_train_dataloader(self):
        # batch_size=None: the pipeline has batched. Not passed through accelerate's prepare():
        # its iterable-dataset dispatcher needs torch datapipes, which mindtorch lacks, and a
        # single process needs no sharding.
        return torch.utils.data.DataLoader(self.train_dataset, batch_size=None)


class LossLog(TrainerCallback):
    """Appends every logged loss to loss_log.jsonl, so the curve survives resumes and crashes."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            entry = {"step": state.global_step, "epoch": logs.get("epoch"), "loss": logs["loss"],
                     "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm")}
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")


def plot_loss_curve(log_path: Path, png_path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_path.is_file():
        return None
    by_step = {}
    for line in log_path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        by_step[entry["step"]] = entry["loss"]  # a resumed run re-logs a step: keep the latest
    if not by_step:
        return None
    steps = sorted(by_step)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [by_step[s] for s in steps], marker="." if len(steps) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("ms_gpt2 training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    global_step: int
    train_loss: float
    loss_curve: Path | None
    n_train: int
    n_test: int


def _resolve_tokenizer(config: dict, source: NLPCCSource, output_dir: Path, resume_from: str | None):
    if resume_from:  # the checkpoint carries the vocabulary its ids mean
        return tokenization.load_tokenizer(resume_from)
    path = config["tokenizer"]["path"]
    if path:
        return tokenization.load_tokenizer(path)
    built = output_dir / "tokenizer"
    if (built / "vocab.txt").is_file():
        return tokenization.load_tokenizer(built)
    texts = (text for pair in records(source.lines("train")) for text in pair)
    return tokenization.build_tokenizer(texts, built, config["tokenizer"]["vocab_size"],
                                        config["tokenizer"].get("min_frequency", 1))


def _resume_checkpoint(output_dir: Path, resume, overwrite: bool) -> str | None:
    existing = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if resume in (None, False):
        if existing and not overwrite:
            raise OutputDirError(
                f"{output_dir} already holds checkpoints (latest {Path(existing).name}); pass --resume to "
                f"continue that run, --overwrite to start over there, or another --output-dir")
        return None
    if resume is True or resume == "latest":
        if not existing:
            raise OutputDirError(f"--resume: no checkpoint-N directory in {output_dir}")
        return existing
    if not Path(resume).is_dir():
        raise OutputDirError(f"--resume {resume}: no such checkpoint directory")
    return str(resume)


def train(config: dict, data_path, output_dir, resume=None, overwrite: bool = False) -> TrainResult:
    """Run the tutorial's fine-tuning as configured; returns where everything was written."""
    output_dir = Path(output_dir)
    resume_from = _resume_checkpoint(output_dir, resume, overwrite)
    if overwrite and not resume_from:
        for stale in [*output_dir.glob("checkpoint-*"), output_dir / LOSS_LOG]:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    seed = runtime.ensure().seed if runtime.ensure().seed is not None else 42
    mcfg, dcfg, tcfg = config["model"], config["data"], dict(config["training"])

    # Check every line once (format only: the tokenizer may not exist yet), then again with the
    # tokenizer's length check, so a bad record fails here and never mid-epoch.
    source = NLPCCSource.open(data_path, output_dir / "work", dcfg["fraction"], dcfg["train_ratio"],
                              dcfg["skip_bad_lines"])
    tokenizer = _resolve_tokenizer(config, source, output_dir, resume_from)
    source = NLPCCSource.open(data_path, output_dir / "work", dcfg["fraction"], dcfg["train_ratio"],
                              dcfg["skip_bad_lines"], check=summary_fits(tokenizer, dcfg["max_seq_len"]))

    if resume_from:
        model = load_model(resume_from, GPT2ForSummarization, vocab_size=len(tokenizer))
    elif mcfg["init_from"]:
        model = load_model(mcfg["init_from"], GPT2ForSummarization, vocab_size=len(tokenizer))
    else:
        runtime.seed_everything(seed)  # the initial weights follow --seed
        model = GPT2ForSummarization(build_config(tokenizer, mcfg["n_positions"], mcfg["n_embd"],
                                                  mcfg["n_layer"], mcfg["n_head"], mcfg["dropout"]))
    if dcfg["max_seq_len"] > model.config.n_positions:
        raise UserError(f"data.max_seq_len={dcfg['max_seq_len']} exceeds the model's n_positions={model.config.n_positions}")
    gen = config["generation"]
    generation_config = generation_config_for(tokenizer, gen["num_beams"], gen["no_repeat_ngram_size"], gen["max_new_tokens"])
    model.generation_config = generation_config

    batch_size = int(tcfg.pop("per_device_train_batch_size"))
    n_batches = math.ceil(source.n_train / batch_size)
    if tcfg.get("save_steps") == "epoch":
        tcfg["save_steps"] = n_batches  # the tutorial's save_steps = batches per epoch
    train_lines = lambda: source.lines("train")  # noqa: E731
    batches = PipelineBatches(
        lambda: train_pipeline(train_lines(), tokenizer, dcfg["max_seq_len"], batch_size,
                               shuffle=dcfg["shuffle"], summary_only_loss=dcfg["summary_only_loss"]),
        n_batches, seed)

    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, seed=seed,
        report_to=[], save_strategy="steps", save_safetensors=True, remove_unused_columns=False,
        dataloader_num_workers=0, use_cpu=runtime.ensure().device == "cpu", **tcfg)
    dump_config(config, output_dir / "train_config.yaml")
    trainer_cls = trainer_class(PipelineTrainer, config.get("engine"))  # compiled step, or the eager one
    trainer = trainer_cls(model=model, args=args, train_dataset=batches, processing_class=tokenizer,
                          callbacks=[LossLog(output_dir / LOSS_LOG)])
    result = trainer.train(resume_from_checkpoint=resume_from)
    model_dir = save_pretrained(trainer.model, tokenizer, output_dir / FINAL_MODEL, generation_config, config)
    curve = plot_loss_curve(output_dir / LOSS_LOG, output_dir / LOSS_CURVE)
    log.info("trained %d steps, final model in %s", result.global_step, model_dir)
    return TrainResult(output_dir, model_dir, result.global_step, result.training_loss, curve,
                       source.n_train, source.n_test)
