"""Every value of a run config checked against what its key takes, before any work starts.

:func:`check_values` is called by :func:`ms_gpt2.infra.config.load_config`, so a value given in a YAML
file or with ``--set`` that the run could not use (``training.per_device_train_batch_size=0``,
``training.learning_rate=abc``) fails in one line naming the key and what it takes
(:class:`~ms_gpt2.infra.errors.ConfigError`, exit 2 through the CLI), not deep inside the Trainer.

* ``training:`` values are checked against the type of their ``TrainingArguments`` field, read
  from the dataclass annotation (:func:`spec_of`): ``bool`` takes true/false only, ``int`` an
  integer (``2.0`` is read as 2), ``float`` any finite number, ``str`` a string, an enum
  (``IntervalStrategy``, ``SchedulerType``, ``OptimizerNames``...) one of its values, ``dict`` /
  ``list`` a mapping / list, ``Optional[...]`` also null. A field is ranged only when
  :data:`TRAINING_RANGES` says so (batch sizes >= 1, warmup_ratio in [0, 1], ...).
* ms_gpt2's own keys (:data:`ms_gpt2.infra.config.DEFAULTS`) have their spec in :data:`OWN`, which
  names every one of them (tests/test_config.py fails on a key without one).
* :func:`_cross_checks` relates keys: ``model.n_head`` divides ``model.n_embd``; an epoch count or
  ``max_steps`` that trains at all.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from dataclasses import dataclass

from ms_gpt2.infra.errors import ConfigError

NoneType = type(None)


@dataclass(frozen=True)
class Range:
    """``low``/``high`` bounds (``*_open``: excluded); ``steps``: a ratio in (0, 1) or a whole number
    above 1, as the Trainer reads ``logging_steps``/``save_steps``/``eval_steps``."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    steps: bool = False
    also: tuple = ()  # single values allowed outside the range (max_steps: -1)

    def holds(self, value) -> bool:
        if value in self.also:
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return not (self.steps and value > 1 and not float(value).is_integer())

    def text(self) -> str:
        """What follows "an integer" / "a number": " in [0, 1)", " >= 1"... (``also`` is said apart)."""
        if self.steps:
            return " > 0 (a whole number of steps, or a fraction of the run below 1)"
        if self.low is not None and self.high is not None:
            return (f" in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f" {'<' if self.high_open else '<='} {_num(self.high)}"
        return ""


@dataclass(frozen=True)
class Spec:
    """What one key takes: any of ``kinds`` (bool, int, float, str, dict, list), or one of
    ``choices``; ``items``: the choices of a list's items; ``nullable``: null too."""
    kinds: frozenset = frozenset()
    choices: tuple = ()
    items: tuple | None = None
    nullable: bool = False
    range: Range | None = None
    hint: str = ""

    def describe(self) -> str:
        parts = []
        if self.choices:
            parts.append(f"one of {', '.join(map(str, self.choices))}" if len(self.choices) > 1 else self.choices[0])
        bound = self.range.text() if self.range else ""
        if self.range and self.range.also:
            parts.append(" or ".join(_show(v) for v in self.range.also))
        for kind in ("bool", "int", "float", "str", "dict", "list"):
            if kind in self.kinds and not (kind == "int" and "float" in self.kinds):  # a number covers it
                if kind == "list" and self.items:
                    parts.append(f"a list of {', '.join(map(str, self.items))}")
                else:
                    parts.append(_KIND_TEXT[kind] + (bound if kind in ("int", "float") else ""))
        text = " or ".join(parts)
        return text + (" (or null)" if self.nullable else "") + (f" ({self.hint})" if self.hint else "")


_KIND_TEXT = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
              "dict": "a mapping", "list": "a list"}


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2 ** 53 else str(x)


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def spec(*kinds, choices=(), nullable=False, range=None, hint="") -> Spec:  # noqa: A002 (a Range)
    return Spec(frozenset(kinds), tuple(choices), None, nullable, range, hint)


def _enum_values(tp) -> tuple | None:
    return tuple(m.value for m in tp) if isinstance(tp, type) and issubclass(tp, enum.Enum) else None


def spec_of(annotation) -> Spec | None:
    """The :class:`Spec` a dataclass field's annotation gives (None: a type not checked here)."""
    args = typing.get_args(annotation)
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    parts = [a for a in args if a is not NoneType] if is_union else [annotation]
    nullable = is_union and len(parts) < len(args)
    kinds, choices, items = set(), (), None
    for part in parts:
        origin = typing.get_origin(part) or part
        if _enum_values(part):
            choices = _enum_values(part)
        elif part in (bool, int, float, str):
            kinds.add(part.__name__)
        elif origin is dict:
            kinds.add("dict")
        elif origin is list:
            kinds.add("list")
            item = (typing.get_args(part) or (None,))[0]
            items = _enum_values(item) or items
        else:
            return None  # a forward reference (ParallelismConfig...): refused or managed elsewhere
    if choices and kinds == {"str"}:
        kinds = set()  # Union[SomeEnum, str]: the string is the enum's spelling
    if "float" in kinds:
        kinds.add("int")  # a float field takes 1 as well as 1.0
    return Spec(frozenset(kinds), choices, items, nullable)


_AT_LEAST_1 = Range(1)
_POSITIVE = Range(0, low_open=True)
_NON_NEGATIVE = Range(0)
_UNIT = Range(0, 1)
_BETA = Range(0, 1, high_open=True)
_STEPS = Range(0, low_open=True, steps=True)

#: ``TrainingArguments`` fields with a range (the type comes from the field's annotation).
TRAINING_RANGES: dict[str, Range] = {
    "per_device_train_batch_size": _AT_LEAST_1, "per_device_eval_batch_size": _AT_LEAST_1,
    "per_gpu_train_batch_size": _AT_LEAST_1, "per_gpu_eval_batch_size": _AT_LEAST_1,
    "gradient_accumulation_steps": _AT_LEAST_1, "eval_accumulation_steps": _AT_LEAST_1,
    "torch_empty_cache_steps": _AT_LEAST_1, "save_total_limit": _AT_LEAST_1,
    "learning_rate": _NON_NEGATIVE, "weight_decay": _NON_NEGATIVE, "max_grad_norm": _NON_NEGATIVE,
    "adam_beta1": _BETA, "adam_beta2": _BETA, "adam_epsilon": _POSITIVE,
    "num_train_epochs": _NON_NEGATIVE, "max_steps": Range(1, also=(-1,)),
    "warmup_ratio": _UNIT, "warmup_steps": _NON_NEGATIVE, "eval_delay": _NON_NEGATIVE,
    "logging_steps": _STEPS, "save_steps": _STEPS, "eval_steps": _STEPS,
    "label_smoothing_factor": _UNIT, "neftune_noise_alpha": _POSITIVE,
    "data_seed": Range(0, 2 ** 31, high_open=True), "dataloader_prefetch_factor": _AT_LEAST_1,
    "fsdp_min_num_params": _NON_NEGATIVE, "ddp_timeout": _AT_LEAST_1,
}

#: ``training:`` values ms_gpt2 reads itself besides the field's own type.
TRAINING_EXTRAS = {"save_steps": ("epoch",)}  # save_steps: epoch = once per epoch (ms_gpt2.jobs.fit.fit)

_PATH = spec("str", nullable=True)
_COUNT = spec("int", range=_AT_LEAST_1)

#: ms_gpt2's own keys (every key of :data:`ms_gpt2.infra.config.DEFAULTS`, and the top-level ``engine``).
OWN: dict[str, Spec] = {
    "engine": spec(choices=("compiled", "eager")),
    "model.init_from": _PATH,
    "model.n_positions": _COUNT, "model.n_embd": _COUNT, "model.n_layer": _COUNT, "model.n_head": _COUNT,
    "model.dropout": spec("float", "int", range=_BETA),
    "tokenizer.path": _PATH, "tokenizer.vocab_size": _COUNT, "tokenizer.min_frequency": _COUNT,
    "data.fraction": spec("float", "int", range=Range(0, 1, low_open=True)),
    "data.train_ratio": spec("float", "int", range=Range(0, 1, low_open=True)),
    "data.max_seq_len": spec("int", range=Range(2)), "data.max_summary_len": _COUNT,
    "data.article_loss_weight": spec("float", "int", nullable=True, range=_UNIT,
                                     hint="0 = summary only, 1 = whole sequence"),
    "data.summary_only_loss": spec("bool", nullable=True),
    "data.skip_bad_lines": spec("bool"), "data.shuffle": spec("bool"),
    "generation.num_beams": _COUNT, "generation.no_repeat_ngram_size": spec("int", range=_NON_NEGATIVE),
    "generation.max_new_tokens": _COUNT, "generation.no_repeat_ngram_scope": spec(choices=("summary", "sequence")),
    "pretrain.text_field": _PATH, "pretrain.eval_fraction": spec("float", "int", range=Range(0, 1, high_open=True)),
    "pretrain.objective": spec(choices=("clm", "mlm-nsp")),
    "pretrain.mlm_probability": spec("float", range=Range(0, 1, low_open=True, high_open=True)),
    "pretrain.masking": spec(choices=("dynamic", "static")),
    "finetune.negatives": spec(choices=("dynamic", "static")),
}


@functools.lru_cache(maxsize=1)
def training_fields() -> frozenset[str]:
    """The settable fields of (mindnlp's) ``TrainingArguments``."""
    from ms_gpt2.infra import runtime

    runtime.ensure()  # transformers imports torch, which is mindtorch only once mindnlp is in
    from mindnlp.transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


@functools.lru_cache(maxsize=1)
def training_specs() -> dict[str, Spec]:
    """name -> :class:`Spec` for every settable ``TrainingArguments`` field whose type is checked."""
    training_fields()  # imports TrainingArguments on the right runtime
    from mindnlp.transformers import TrainingArguments

    specs = {}
    for f in dataclasses.fields(TrainingArguments):
        found = spec_of(f.type) if f.init else None
        if found is not None:
            specs[f.name] = dataclasses.replace(found, range=TRAINING_RANGES.get(f.name),
                                                choices=found.choices + TRAINING_EXTRAS.get(f.name, ()))
    return specs


def _conforms(value, s: Spec):
    """(ok, value as the run will use it): an ``int`` spec reads 2.0 as 2."""
    if value is None:
        return s.nullable, value
    if isinstance(value, bool):
        return "bool" in s.kinds, value
    if s.choices and isinstance(value, str) and value in s.choices:
        return True, value
    if isinstance(value, (int, float)) and ("int" in s.kinds or "float" in s.kinds):
        if not math.isfinite(value):
            return False, value
        if "float" not in s.kinds:
            if isinstance(value, float) and not value.is_integer():
                return False, value
            value = int(value)
        return (s.range is None or s.range.holds(value)), value
    if isinstance(value, str):
        return "str" in s.kinds, value
    if isinstance(value, dict):
        return "dict" in s.kinds, value
    if isinstance(value, list):
        ok = "list" in s.kinds and (s.items is None or all(item in s.items for item in value))
        return ok, value
    return False, value


def check_value(key: str, value, s: Spec):
    """``value`` as the run will use it, or :class:`ConfigError` naming ``key`` and what it takes."""
    ok, value = _conforms(value, s)
    if not ok:
        raise ConfigError(f"{key}={_show(value)}: must be {s.describe()}")
    return value


def check_values(config: dict) -> None:
    """Check (and normalise: 2.0 -> 2 for an integer) every value of a loaded ``config`` in place."""
    for dotted, s in OWN.items():
        section, _, key = dotted.rpartition(".")
        holder = config.get(section) if section else config
        if isinstance(holder, dict) and key in holder:
            holder[key] = check_value(dotted, holder[key], s)
    training = config.get("training") or {}
    specs = training_specs()
    for key, value in training.items():
        if key in specs:
            training[key] = check_value(f"training.{key}", value, specs[key])
    _cross_checks(config)


def _cross_checks(config: dict) -> None:
    model, training = config.get("model") or {}, config.get("training") or {}
    if model.get("n_embd") and model.get("n_head") and model["n_embd"] % model["n_head"]:
        raise ConfigError(f"model.n_head={model['n_head']}: must divide model.n_embd={model['n_embd']} (each head "
                          f"takes n_embd / n_head of the width)")
    if training.get("num_train_epochs", 1) == 0 and training.get("max_steps", -1) < 1:
        raise ConfigError("training.num_train_epochs=0: trains nothing; give a number of epochs > 0 (or "
                          "training.max_steps >= 1)")
