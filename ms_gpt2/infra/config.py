"""YAML run configs with command-line overrides, Hugging Face style: the file is the experiment.

A config has seven sections: ``model``, ``tokenizer``, ``data``, ``training`` (passed to
``TrainingArguments``, so any of its fields can be set, except the few ms_gpt2 sets itself:
:data:`MANAGED_TRAINING_KEYS`), ``generation``, ``pretrain`` (``ms-gpt2 pretrain`` only; its
block size is ``data.max_seq_len``) and ``finetune`` (``ms-gpt2 finetune-bert`` only). Unknown keys are refused when the config is loaded, before
any data work, naming the closest valid ones. Any key can be
overridden from the command line as ``--set section.key=value``, the value read as YAML
(``--set training.learning_rate=3e-4``, ``--set tokenizer.path=null``); the top-level keys
(:data:`TOP_LEVEL`) as ``--set engine=eager``. Every value is checked against what its key takes
(:mod:`ms_gpt2.infra.config_checks`) when the config is loaded, before any work.
"""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from ms_gpt2.infra import config_checks
from ms_gpt2.infra.config_checks import training_fields
from ms_gpt2.infra.errors import ConfigError
from ms_gpt2.infra.rundir import atomic_write_text

SECTIONS = ("model", "tokenizer", "data", "training", "generation", "pretrain", "finetune")
TOP_LEVEL = {"engine": "compiled"}  # scalar keys beside the sections: the training engine (compiled | eager)

DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"init_from": None, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "dropout": 0.1},
    "tokenizer": {"path": None, "vocab_size": 21128, "min_frequency": 1},
    "data": {"fraction": 1.0, "train_ratio": 0.9, "max_seq_len": 1024, "max_summary_len": 100,
             # the article tokens' loss weight λ (0 = summary only, 1 = whole sequence); null: from
             # summary_only_loss, its older alias (true = 0; false or null = 1)
             "article_loss_weight": None, "summary_only_loss": None, "skip_bad_lines": False, "shuffle": True},
    "training": {"per_device_train_batch_size": 1, "num_train_epochs": 1, "learning_rate": 1.5e-4,
                 "warmup_steps": 100, "max_grad_norm": 1.0, "save_steps": "epoch", "save_total_limit": 3,
                 "logging_steps": 1},
    "generation": {"num_beams": 5, "no_repeat_ngram_size": 2, "max_new_tokens": 50,
                   "no_repeat_ngram_scope": "summary"},
    "pretrain": {"text_field": None, "eval_fraction": 0.05,
                 # objective: clm (GPT-2) | mlm-nsp (BERT, ms_gpt2.jobs.bert_pretrain); masking: dynamic | static
                 "objective": "clm", "mlm_probability": 0.15, "masking": "dynamic"},
    # ms-gpt2 finetune-bert (ms_gpt2.jobs.bert_finetune): negatives dynamic (new each epoch) | static (epoch 0's)
    "finetune": {"negatives": "dynamic"},
}


#: ``training:`` keys that ms_gpt2 sets itself, and where to set them instead.
MANAGED_TRAINING_KEYS = {
    "output_dir": "use --output-dir",
    "seed": "use --seed",
    "use_cpu": "use --device",
    "save_strategy": "checkpoints are written every training.save_steps steps (save_steps: epoch = once per epoch)",
    "save_safetensors": "checkpoints are always safetensors",
    "remove_unused_columns": "the MindSpore pipeline yields exactly the model's inputs",
    "dataloader_num_workers": "batches come from the MindSpore data pipeline",
}


def _unknown(key: str, where: str, known, what: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ConfigError(f"unknown key {where}{key}{hint} ({what})")


def _check_training_key(key: str) -> None:
    if key in MANAGED_TRAINING_KEYS:
        raise ConfigError(f"training.{key} is set by ms_gpt2: {MANAGED_TRAINING_KEYS[key]}")
    fields = training_fields()
    if key not in fields:
        raise _unknown(key, "training.", fields, "not a TrainingArguments field")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float, as YAML 1.2 does (PyYAML's 1.1 says string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+][0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _merge(base: dict, update: dict, where: str) -> dict:
    for key, value in update.items():
        if where == "" and key not in SECTIONS and key not in TOP_LEVEL:
            raise ConfigError(f"unknown config section {key!r}; sections are {', '.join(SECTIONS)}")
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, f"{where}{key}.")
        else:
            if where == "training.":
                _check_training_key(key)
            elif where and key not in base:
                raise _unknown(key, where, base, f"known: {', '.join(base)}")
            base[key] = value
    return base


def parse_override(text: str) -> dict:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) == 1 and parts[0] in TOP_LEVEL:  # engine=eager
        return {parts[0]: _yaml(raw)}
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {text!r}: the key must be section.key, e.g. training.learning_rate "
                          f"(or one of the top-level keys: {', '.join(TOP_LEVEL)})")
    return {parts[0]: {parts[1]: _yaml(raw)}}


def load_config(path=None, overrides: Iterable[str] = ()) -> dict:
    config = {**copy.deepcopy(DEFAULTS), **TOP_LEVEL}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            loaded = _yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections")
        _merge(config, loaded, "")
    for text in overrides:
        _merge(config, parse_override(text), "")
    config_checks.check_values(config)  # every value against what its key takes, in one line each
    article_loss_weight(config["data"])  # inconsistent or out-of-range settings fail here, before any work
    return config


def article_loss_weight(data: dict) -> float:
    """λ, the weight of the article tokens' loss against the summary tokens' (1), from the ``data``
    section: ``article_loss_weight``, or its alias ``summary_only_loss`` (true = 0, false = 1).
    Neither set: 1, the tutorial's whole-sequence loss. Both set and disagreeing: ConfigError."""
    weight, alias = data.get("article_loss_weight"), data.get("summary_only_loss")
    if alias is not None and not isinstance(alias, bool):
        raise ConfigError(f"data.summary_only_loss must be true or false, got {alias!r}")
    if weight is None:
        return 0.0 if alias else 1.0
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise ConfigError(f"data.article_loss_weight must be a number in [0, 1] (0 = summary only, "
                          f"1 = whole sequence), got {weight!r}")
    if alias is not None and float(weight) != (0.0 if alias else 1.0):
        raise ConfigError(f"data.article_loss_weight={weight} contradicts data.summary_only_loss={str(alias).lower()} "
                          f"(its alias for {0 if alias else 1}); set only one (summary_only_loss: null)")
    return float(weight)


def dump_config(config: dict, path) -> None:
    """Write ``config`` as YAML; a crash leaves the old file or the new one, never a truncated one."""
    atomic_write_text(path, yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
