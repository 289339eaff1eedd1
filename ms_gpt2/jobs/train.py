"""The tutorial's job: fine-tune GPT-2 to summarize NLPCC articles (``ms-gpt2 train``).

The data is NLPCC JSON lines, split into training and held-out records (``data.fraction``,
``data.train_ratio``); the vocabulary is :func:`ms_gpt2.data.tokenization.training_vocabulary`'s;
the model is a new GPT-2, ``model.init_from`` or the resumed checkpoint; training is the set-up
every job shares (:func:`ms_gpt2.jobs.fit.fit`) in an output directory a run owns
(:mod:`ms_gpt2.jobs.run`). The held-out records are scored with the training objective
(loss and perplexity) at each evaluation during training.

Output directory::

    checkpoint-N/      Trainer checkpoints (HF format + tokenizer + ms_gpt2_config.yaml), the newest
                       save_total_limit kept; each is written as .checkpoint-N.partial and renamed
                       only when complete, so a crash never leaves a half-written checkpoint-N
    model/             the final model + tokenizer + generation config, written atomically
    tokenizer/         the vocabulary built from the data (when none was given; rebuilt on every fresh start)
    train_config.yaml  the resolved config;  loss_log.jsonl, loss_curve.png  the loss history (and the
                       held-out metrics of evaluations during training, training.eval_strategy; a run
                       starting from checkpoint-N first drops the entries after step N)
    runs/              TensorBoard event files (training.report_to: tensorboard)
    work/              clean copies of input files that had skipped bad lines
    .ms_gpt2.lock      held (flock) while a run writes here: a second run into the directory refuses
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ms_gpt2.infra import runtime

runtime.ensure()

from ms_gpt2.data.examples import summary_fits, train_pipeline  # noqa: E402
from ms_gpt2.data.nlpcc import NLPCCSource, records  # noqa: E402
from ms_gpt2.data.tokenization import training_vocabulary  # noqa: E402
from ms_gpt2.engine import distributed  # noqa: E402
from ms_gpt2.infra.config import article_loss_weight  # noqa: E402
from ms_gpt2.infra.errors import UserError  # noqa: E402
from ms_gpt2.jobs.evaluate import language_model_loss  # noqa: E402
from ms_gpt2.jobs.fit import HeldOutEvaluation, fit  # noqa: E402
from ms_gpt2.jobs.run import rank0_first, run_job, workdir_for  # noqa: E402
from ms_gpt2.models.gpt2 import GPT2ForSummarization, build_config, generation_config_for, load_model  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    global_step: int
    train_loss: float
    loss_curve: Path | None
    n_train: int
    n_test: int


def train(config: dict, data_path, output_dir, resume=None, overwrite: bool = False) -> TrainResult:
    """Run the tutorial's fine-tuning as configured; returns where everything was written."""
    return run_job(_train, config, data_path, output_dir, resume, overwrite)


def _train(config: dict, data_path, output_dir: Path, resume_from: str | None, seed: int) -> TrainResult:
    mcfg, dcfg = config["model"], config["data"]

    # Check every line once (format only: the tokenizer may not exist yet), then again with the
    # tokenizer's length check, so a bad record fails here and never mid-epoch.
    workdir = workdir_for(output_dir)
    source = NLPCCSource.open(data_path, workdir, dcfg["fraction"], dcfg["train_ratio"],
                              dcfg["skip_bad_lines"])
    tokenizer = rank0_first(lambda: training_vocabulary(
        config, output_dir, resume_from, lambda: (text for pair in records(source.lines("train")) for text in pair),
        heldout=(lambda: (text for pair in records(source.lines("test")) for text in pair)) if source.n_test else None))
    source = NLPCCSource.open(data_path, workdir, dcfg["fraction"], dcfg["train_ratio"],
                              dcfg["skip_bad_lines"], check=summary_fits(tokenizer, dcfg["max_seq_len"]))
    distributed.maybe_fail_for_test()

    if resume_from:
        model = load_model(resume_from, GPT2ForSummarization, tokenizer=tokenizer)
    elif mcfg["init_from"]:
        model = load_model(mcfg["init_from"], GPT2ForSummarization, tokenizer=tokenizer)
    else:
        runtime.seed_everything(seed)  # the initial weights follow --seed
        model = GPT2ForSummarization(build_config(tokenizer, mcfg["n_positions"], mcfg["n_embd"],
                                                  mcfg["n_layer"], mcfg["n_head"], mcfg["dropout"]))
    if dcfg["max_seq_len"] > model.config.n_positions:
        raise UserError(f"data.max_seq_len={dcfg['max_seq_len']} exceeds the model's n_positions={model.config.n_positions}")
    gen = config["generation"]
    generation_config = generation_config_for(tokenizer, gen["num_beams"], gen["no_repeat_ngram_size"], gen["max_new_tokens"])
    model.generation_config = generation_config

    def pipeline(batch_size, epoch):  # the shuffle follows the seed PipelineBatches sets per epoch
        return train_pipeline(source.lines("train"), tokenizer, dcfg["max_seq_len"], batch_size,
                              shuffle=dcfg["shuffle"], article_loss_weight=article_loss_weight(dcfg))

    def held_out_loss(model, batch_size):  # the λ-weighted training objective on the held-out records
        batches = train_pipeline(source.lines("test"), tokenizer, dcfg["max_seq_len"], batch_size,
                                 article_loss_weight=article_loss_weight(dcfg))
        return language_model_loss(model, batches.create_dict_iterator(num_epochs=1, output_numpy=True))

    fitted = fit(config, model, tokenizer, pipeline, source.n_train, output_dir, resume_from, generation_config,
                 held_out=HeldOutEvaluation(held_out_loss, ("loss", "perplexity")) if source.n_test else None,
                 no_held_out=f"data.train_ratio={dcfg['train_ratio']} (of data.fraction={dcfg['fraction']}) leaves "
                             f"no held-out records to evaluate on; lower it")
    if workdir != output_dir / "work":
        shutil.rmtree(workdir, ignore_errors=True)
    log.info("trained %d steps, final model in %s", fitted.global_step, fitted.model_dir)
    return TrainResult(output_dir, fitted.model_dir, fitted.global_step, fitted.train_loss, fitted.loss_curve,
                       source.n_train, source.n_test)
