"""The real ``ms-gpt2 train`` command's peak memory, beside the same job on PyTorch (``bench --memory``).

The synthetic training workload of :func:`ms_gpt2.bench.gpt2.memory_report` is a model, a batch and
an optimizer. What users run is the command: the data pipeline, the Trainer, the Hugging Face model
with its dropout, saving. So ``bench --memory`` also runs, at each of its shapes:

* **ms_gpt2**: ``ms-gpt2 train --config configs/tutorial.yaml --data data/demo/nlpcc_demo.jsonl``
  (engine compiled, dropout 0.1, as configured) for :data:`STEPS` optimizer steps, with
  ``data.fraction=1.0`` (the tutorial's 0.1% of the 64 bundled records would be one record), the
  shape's ``training.per_device_train_batch_size`` and ``data.max_seq_len``, and a vocabulary of
  ``tokenizer.vocab_size`` words (21,128, bert-base-chinese's, as the tutorial's model has): the
  WordPiece vocabulary the command would build from the data (1,103 words on the demo corpus),
  padded with unused ``[unusedN]`` entries that no text ever produces, so every example is tokenized
  as the command would tokenize it but the model has the tutorial's size. The command is given
  by the caller (``train_command``: the cli knows how to start itself); this module adds its options.
* **reference** (with ``--reference-python``): the same job as a PyTorch user would run it,
  Hugging Face ``GPT2LMHeadModel`` (the same config) and the ``transformers`` ``Trainer`` with the
  same ``TrainingArguments`` (batch, learning rate, warmup, ``max_grad_norm``, steps, seed, fp32),
  on the very token ids the command trains on: the bench encodes the training split once, as the
  command does (:func:`ms_gpt2.data.examples.encode_example`), and the reference reads them from a
  file (:func:`ms_gpt2.bench.workloads.train_command`).

Saving is the same on both sides, the command's: its ``save_steps: epoch`` (15 or 58 steps) is never
reached in 3 steps, but the Trainer (Hugging Face's, on both sides) saves a checkpoint when training
stops at ``max_steps`` (``checkpoint-3``: weights, AdamW moments, scheduler, RNG), and the command
then writes the final ``model/``; the reference Trainer has the same ``save_steps`` and
``save_total_limit`` and calls ``save_model`` at the end.

Both run under the same instrument, the launcher in :mod:`ms_gpt2.bench.peak` (a small stdlib-only
process that starts the command and reads its ``ru_maxrss`` from ``wait4``), so each figure is the
command's own peak, not this (large) process's: Linux carries a parent's high-water mark into a child
it forks. The ratio is ms_gpt2's peak over the reference's, against issue 24's :data:`TARGET`.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ms_gpt2.bench import peak
from ms_gpt2.bench.report import ratio
from ms_gpt2.infra import resources
from ms_gpt2.infra.config import article_loss_weight, load_config
from ms_gpt2.infra.errors import UserError

TARGET = 1.1                      # the command's peak / the reference command's (issue 24)
STEPS = 3                         # optimizer steps of each run
CONFIG = "tutorial.yaml"          # the full bench's config; --quick: smoke.yaml (a toy GPT-2)
QUICK_CONFIG = "smoke.yaml"
QUICK_SHAPES = ((2, 64), (1, 128))  # --quick: the smoke model's; a shorter max_seq_len would not hold the summaries
UNUSED = "[unused{}]"             # the padding entries of the vocabulary (bert-base-chinese has such)
WORKLOADS = Path(__file__).with_name("workloads.py")
LAUNCHER = Path(peak.__file__)


def overrides(batch: int, length: int, steps: int = STEPS) -> list[str]:
    """The ``--set`` options that turn the config's run into the bench's: every bundled record, the
    shape, ``steps`` optimizer steps."""
    return ["data.fraction=1.0", f"training.max_steps={steps}", f"training.per_device_train_batch_size={batch}",
            f"data.max_seq_len={length}"]


def options(config_path: Path, data, vocab_dir: Path, output_dir: Path, device: str, seed: int,
            batch: int, length: int) -> list[str]:
    """The options this job adds to ``ms-gpt2 train`` (the argv after the command itself): the config,
    the bundled data, the padded vocabulary, the output directory, device, seed and :func:`overrides`."""
    argv = ["--config", str(config_path), "--data", str(data), "--tokenizer", str(vocab_dir),
            "--output-dir", str(output_dir), "--device", device, "--seed", str(seed)]
    for option in overrides(batch, length):
        argv += ["--set", option]
    return argv


def padded_vocabulary(config: dict, data, out_dir: Path) -> dict:
    """The vocabulary ``ms-gpt2 train`` builds from ``data``'s training split (``tokenizer.vocab_size``),
    padded with :data:`UNUSED` entries to exactly ``tokenizer.vocab_size`` words, in ``out_dir``.
    -> {"path", "built", "vocab_size"}."""
    from ms_gpt2.data.nlpcc import NLPCCSource, records
    from ms_gpt2.data.tokenization import build_tokenizer

    d, size = config["data"], int(config["tokenizer"]["vocab_size"])
    source = NLPCCSource.open(data, out_dir / "work", d["fraction"], d["train_ratio"], d["skip_bad_lines"])
    built_dir = out_dir / "built"
    build_tokenizer([text for pair in records(source.lines("train")) for text in pair], built_dir, size,
                    config["tokenizer"].get("min_frequency", 1))
    words = (built_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    taken = set(words)
    extra = [UNUSED.format(i) for i in range(1, size + 1) if UNUSED.format(i) not in taken][:max(0, size - len(words))]
    vocab_dir = out_dir / "tokenizer"
    shutil.copytree(built_dir, vocab_dir)  # its tokenizer_config.json too, then the longer vocab.txt
    (vocab_dir / "vocab.txt").write_text("".join(w + "\n" for w in words + extra), encoding="utf-8")
    return {"path": vocab_dir, "built": len(words), "vocab_size": len(words) + len(extra)}


def write_examples(config: dict, data, vocab_dir: Path, path: Path, workdir: Path) -> dict:
    """The training split's examples exactly as the command builds them (same tokenizer, same
    ``max_seq_len`` padding, same labels), as JSON for the reference: ``input_ids``,
    ``attention_mask`` and ``labels`` with the positions the command's loss leaves out ([PAD]) as
    -100, Hugging Face's ignore index. -> {"examples", "tokens_min", "tokens_max"} (tokens before padding)."""
    from ms_gpt2.data.examples import article_weighted, encode_example, summary_fits
    from ms_gpt2.data.nlpcc import NLPCCSource, records
    from ms_gpt2.data.tokenization import load_wordpiece

    d = config["data"]
    lam = article_loss_weight(d)
    if article_weighted(lam):
        raise UserError(f"the reference reproduces data.article_loss_weight 0 or 1, not {lam}")
    tokenizer = load_wordpiece(vocab_dir)
    source = NLPCCSource.open(data, workdir, d["fraction"], d["train_ratio"], d["skip_bad_lines"],
                              check=summary_fits(tokenizer, d["max_seq_len"]))
    ids, masks, labels = [], [], []
    for article, summary in records(source.lines("train")):
        example = encode_example(tokenizer, article, summary, d["max_seq_len"], article_loss_weight=lam)
        ids.append(example["input_ids"].tolist())
        masks.append(example["attention_mask"].tolist())
        labels.append([-100 if t == tokenizer.pad_token_id else int(t) for t in example["labels"]])
    path.write_text(json.dumps({"input_ids": ids, "attention_mask": masks, "labels": labels}), encoding="utf-8")
    lengths = [sum(m) for m in masks]
    return {"examples": len(ids), "tokens_min": min(lengths), "tokens_max": max(lengths),
            "special_ids": {"bos": tokenizer.cls_token_id, "eos": tokenizer.sep_token_id,
                            "pad": tokenizer.pad_token_id}}


def reference_spec(config: dict, vocab_size: int, special_ids: dict, examples: Path, n_examples: int,
                   output_dir: Path, result: Path, seed: int, device: str) -> dict:
    """What :func:`ms_gpt2.bench.workloads.train_command` needs: the model's config and the
    ``TrainingArguments`` of the command's resolved config."""
    m, t = config["model"], config["training"]
    keep = ("learning_rate", "warmup_steps", "warmup_ratio", "max_grad_norm", "weight_decay", "logging_steps",
            "max_steps", "lr_scheduler_type", "adam_beta1", "adam_beta2", "adam_epsilon",
            "gradient_accumulation_steps")
    return {"only": "train_command", "seed": seed, "reference_device": device, "examples": str(examples),
            "output_dir": str(output_dir), "result_path": str(result),
            "model": {"vocab_size": vocab_size, "n_positions": m["n_positions"], "n_embd": m["n_embd"],
                      "n_layer": m["n_layer"], "n_head": m["n_head"], "dropout": m["dropout"],
                      "bos_token_id": special_ids["bos"], "eos_token_id": special_ids["eos"],
                      "pad_token_id": special_ids["pad"]},
            "training": {"per_device_train_batch_size": t["per_device_train_batch_size"],
                         **{k: t[k] for k in keep if t.get(k) is not None}},
            "save": save_settings(config, n_examples)}


def save_settings(config: dict, n_examples: int) -> dict:
    """The command's saving as ``TrainingArguments``: ``save_steps`` (``epoch``: the optimizer steps of
    an epoch, as :func:`ms_gpt2.jobs.fit.fit` resolves it) and ``save_total_limit``. Either side's
    Trainer also saves a checkpoint when training stops at ``max_steps``: the command's 3 steps end
    with ``checkpoint-3`` (weights, optimizer moments, scheduler, RNG), then the final model."""
    from ms_gpt2.jobs.fit import batch_count, updates_per_epoch

    t = config["training"]
    steps = t.get("save_steps")
    if steps == "epoch":
        steps = updates_per_epoch(batch_count(n_examples, int(t["per_device_train_batch_size"]),
                                              bool(t.get("dataloader_drop_last", False))),
                                  int(t.get("gradient_accumulation_steps", 1)))
    save = {"save_strategy": "steps", "save_safetensors": True}
    if steps is not None:
        save["save_steps"] = steps
    if t.get("save_total_limit") is not None:
        save["save_total_limit"] = t["save_total_limit"]
    return save


def measured(argv: list[str], log: Path, timeout: float = 3600, what: str = "the command") -> dict:
    """``argv``'s peak memory, wall time and exit code, run under the launcher (:mod:`ms_gpt2.bench.peak`)
    in a fresh interpreter; its output goes to ``log``. A failure is a UserError with the log's last line."""
    with open(log, "w", encoding="utf-8") as out:
        try:
            done = subprocess.run([sys.executable, str(LAUNCHER), "--timeout", str(timeout), "--", *argv],
                                  stdout=subprocess.PIPE, stderr=out, text=True, timeout=timeout + 60)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise UserError(f"{what}: could not run it: {err}") from err
    lines = (done.stdout or "").strip().splitlines()
    result = json.loads(lines[-1]) if done.returncode == 0 and lines else None
    if result is None or result["returncode"] != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["no output"]
        why = "timed out" if result and result.get("timed_out") else "failed"
        raise UserError(f"{what} {why}: {tail[0]}")
    return result


def run_child(spec: dict, engine: str, python: str | None = None, timeout: float = 3600) -> dict:
    """One run of the real command in a fresh process (what ``memory_report``'s ``run`` does for
    the engines "command" and "command_reference"): -> {"peak_rss_mb", "seconds", ...}."""
    log = Path(spec["log"])
    if engine == "command":
        return measured(spec["argv"], log, timeout, "ms-gpt2 train")
    result = measured([python, str(WORKLOADS), json.dumps(spec)], log, timeout,
                      f"--reference-python {python}: the reference Trainer (needs torch + transformers + accelerate)")
    own = json.loads(Path(spec["result_path"]).read_text(encoding="utf-8"))
    return dict(result, vmhwm_mb=own["peak_rss_mb"], losses=own.get("losses"), framework=own.get("framework"))


def command_rows(train_command: list[str], shapes, reference_python: str | None, run, device: str,
                 reference_device: str = "cpu", quick: bool = False, seed: int = 42, print_fn=print,
                 workdir=None) -> dict:
    """The real command's rows of ``bench --memory``: at each (batch, length) of ``shapes`` the
    command (``train_command`` + this job's options) and, with ``reference_python``, the reference;
    each through ``run(spec, engine, python)`` (:func:`run_child`). The vocabulary, examples, runs and
    their logs go to a temporary directory, or to ``workdir`` (kept)."""
    config_path = resources.config(QUICK_CONFIG if quick else CONFIG)
    data = resources.demo_data()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ms_gpt2_bench_command_") as tmp:
        tmp = Path(workdir or tmp)
        vocab = padded_vocabulary(load_config(config_path, overrides(*shapes[0])), data, tmp / "vocab")
        for batch, length in shapes:
            config = load_config(config_path, overrides(batch, length))
            here = tmp / f"B{batch}x{length}"
            here.mkdir(parents=True)
            info = write_examples(config, data, vocab["path"], here / "examples.json", here / "work")
            argv = [*train_command, *options(config_path, data, vocab["path"], here / "ms_gpt2", device, seed,
                                             batch, length)]
            row = {"batch": batch, "length": length, "examples": info["examples"],
                   "example_tokens": [info["tokens_min"], info["tokens_max"]]}
            ours = run({"argv": argv, "log": str(here / "ms_gpt2.log")}, "command", reference_python)
            row["ms_gpt2"] = {"peak_rss_mb": ours["peak_rss_mb"], "seconds": ours.get("seconds")}
            print_fn(f"   ms-gpt2 train  B{batch} x {length}: {ours['peak_rss_mb']:,.0f} MB")
            if reference_python:
                spec = reference_spec(config, vocab["vocab_size"], info["special_ids"], here / "examples.json",
                                      info["examples"], here / "reference", here / "reference.json", seed,
                                      reference_device)
                spec["log"] = str(here / "reference.log")
                ref = run(spec, "command_reference", reference_python)
                row["reference"] = {"peak_rss_mb": ref["peak_rss_mb"], "seconds": ref.get("seconds"),
                                    "vmhwm_mb": ref.get("vmhwm_mb")}
                print_fn(f"   reference      B{batch} x {length}: {ref['peak_rss_mb']:,.0f} MB")
            row["ratio"] = ratio(row["ms_gpt2"]["peak_rss_mb"], (row.get("reference") or {}).get("peak_rss_mb"))
            row["target_met"] = None if row["ratio"] is None else row["ratio"] <= TARGET
            rows.append(row)
    return {"config": f"configs/{config_path.name}", "data": f"data/demo/{data.name}", "steps": STEPS,
            "vocab_size": vocab["vocab_size"], "vocab_built": vocab["built"], "target": TARGET, "rows": rows}
