"""GPT-2 checkpoints in Hugging Face layout, in and out, from local directories only.

A checkpoint directory is ``config.json`` + weights (``model.safetensors`` or the older
``pytorch_model.bin``) + the tokenizer that gives its ids meaning: GPT-2 byte-level BPE
(``vocab.json`` + ``merges.txt``, the English ``gpt2`` family) or a BERT WordPiece ``vocab.txt``
(Chinese GPT-2s built on bert-base-chinese). Users download these however they like (a browser,
``git lfs``, ``huggingface-cli download`` on a connected machine); ms_gpt2 never reaches a hub.

Saving writes ``model.safetensors`` + config + tokenizer into a hidden staging sibling, flushes it
to disk and swaps it in (:func:`ms_gpt2.infra.rundir.replace_dir`), so a crash never leaves a
half-written checkpoint where a good one was, nor no directory at all.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ms_gpt2.infra import runtime
from ms_gpt2.infra.config import load_config
from ms_gpt2.infra.rundir import recover_dir, replace_dir, staging_name

runtime.ensure()

from mindnlp.transformers import GPT2LMHeadModel  # noqa: E402

from ms_gpt2.data import tokenization  # noqa: E402
from ms_gpt2.infra.errors import CheckpointError  # noqa: E402
from ms_gpt2.models.gpt2 import WEIGHT_FILES, load_model  # noqa: E402

RUN_CONFIG = "ms_gpt2_config.yaml"
TRAINER_STATE = "trainer_state.json"


def incomplete_reason(path) -> str | None:
    """What a Trainer checkpoint directory lacks to be resumed from (None when it is complete)."""
    path = Path(path)
    missing = [name for name in ("config.json", TRAINER_STATE) if not (path / name).is_file()]
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append(f"weights ({WEIGHT_FILES[0]})")
    return f"no {', '.join(missing)}" if missing else None


FINAL_MODEL = "model"  # where ``ms-gpt2 train``/``pretrain`` put the final model in their output directory


def resolve_model_dir(path) -> Path:
    """``--model`` as the user means it: a training output directory stands for its final ``model/``.
    A path that is no directory is a :class:`CheckpointError` naming it as the model directory."""
    import logging

    path = recover_dir(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model directory" if not path.exists() else
                              f"{path}: not a directory; expected a model directory (config.json, weights, vocabulary)")
    final = path / FINAL_MODEL
    if path.is_dir() and not (path / "config.json").is_file() and (recover_dir(final) / "config.json").is_file():
        logging.getLogger(__name__).info("%s is a training output directory; using its final model %s", path, final)
        return final
    return path


def load_pretrained(path, cls=GPT2LMHeadModel, bert_only: bool = False):
    """(model, tokenizer) from a local Hugging Face GPT-2 directory (or a training output directory:
    its ``model/``), on the current device, eval mode. ``bert_only``: a BERT vocab.txt is required."""
    return _load_resolved(resolve_model_dir(path), cls, bert_only)


def _load_resolved(path: Path, cls, bert_only: bool):
    tokenizer = tokenization.load_vocabulary(path, bert_only)
    model = load_model(path, cls, tokenizer=tokenizer)  # every id the vocabulary has must have a row
    return model.to(runtime.ensure().torch_device).eval(), tokenizer


def run_settings(model_dir, config=None, overrides=()) -> dict:
    """The settings to use the model in ``model_dir`` (a model directory, already resolved) with:
    ``config`` itself when it is a dict (a run's loaded config), else the YAML file it names
    (``--config``), else the run config saved with the model (:data:`RUN_CONFIG`), else the
    defaults; ``overrides`` (``section.key=value``) apply to the file or the defaults."""
    if isinstance(config, dict):
        if overrides:
            raise ValueError("overrides apply to a config file or the defaults, not to a loaded config")
        return config
    saved = Path(model_dir) / RUN_CONFIG
    return load_config(config or (saved if saved.is_file() else None), overrides)


@dataclass
class ModelDir:
    """A model directory loaded once: where it is (resolved), the model, its tokenizer, its settings."""

    path: Path
    model: object
    tokenizer: object
    settings: dict


def load_model_dir(path, cls=GPT2LMHeadModel, bert_only: bool = False, config=None, overrides=()) -> ModelDir:
    """:func:`load_pretrained` plus the settings to use it with (:func:`run_settings`), the
    directory resolved once (a training output directory stands for its ``model/``). The settings
    are read before the model is loaded, so a bad config is reported first."""
    path = resolve_model_dir(path)
    settings = run_settings(path, config, overrides)
    model, tokenizer = _load_resolved(path, cls, bert_only)
    return ModelDir(path, model, tokenizer, settings)


def save_pretrained(model, tokenizer, target, generation_config=None, run_config: dict | None = None) -> Path:
    """Write model + tokenizer (+ optional run config) to ``target`` atomically; returns it."""
    target = recover_dir(target)
    tmp = staging_name(target)
    shutil.rmtree(tmp, ignore_errors=True)
    if generation_config is not None:
        model.generation_config = generation_config
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if run_config is not None:
            from ms_gpt2.infra.config import dump_config

            dump_config(run_config, tmp / RUN_CONFIG)
        return replace_dir(tmp, target)
    except BaseException:  # e.g. a full disk: the half-written copy must not keep its space
        shutil.rmtree(tmp, ignore_errors=True)
        raise
