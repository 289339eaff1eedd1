"""BERT fine-tuning, the step MLM + NSP pretraining exists for: a task head on the pretrained encoder.

``ms-gpt2 finetune-bert`` trains mindnlp's ``BertForSequenceClassification`` (Hugging Face's, on
MindSpore) on a task built from the data the project has, NLPCC JSON lines (``article``,
``summarization``): **summary-article matching**, a sentence-pair classification::

    [CLS] summary [SEP] article (its start) [SEP]   -> 1 when the summary is this article's, else 0

It needs no labels beyond the corpus, it is a pair task like NSP (so the pretrained pooler has
seen pairs), and it cannot be solved from one side alone: every epoch, each record of a split
gives one positive (its own summary) and one negative (the summary of the record a random
derangement of the split maps it to), so every article and every summary appears once in each
class and the classes are balanced (chance: 0.5).

**Examples.** Summaries and articles are tokenized once by a ``TextFileDataset`` -> ``map``
pipeline; the pairs are built in a ``NumpySlicesDataset`` -> ``map`` -> ``batch`` pipeline by the
encoding BERT pretraining uses too (:mod:`ms_gpt2.data.bert_pairs`: ``token_type_ids`` 0 through the
first ``[SEP]``, 1 after; the longer side, the article, is cut first, so it is the article's start
that is read).
Epoch ``e``'s negatives come from ``numpy.random.default_rng([seed, e])``, so runs and resumes
repeat exactly. ``finetune.negatives: dynamic`` (default) draws new negatives every epoch;
``static`` repeats epoch 0's (only their order is reshuffled), which a tiny model fits sooner.

**Split.** As ``ms-gpt2 train`` splits NLPCC files: the first ``data.fraction`` of the records,
the first ``data.train_ratio`` of those trained on, the rest held out. A held-out record's
negatives are other held-out records' summaries, never a training record's. (With
``pretrain.eval_fraction`` = 1 - ``data.train_ratio``, pretraining held out the same last
records, so their articles are new to the encoder too.)

**Model.** ``model.init_from`` (``--init-from``): the ``model/`` of ``ms-gpt2 pretrain --objective
mlm-nsp`` (or that output directory itself, or any local BERT checkpoint): the encoder (embeddings,
layers, pooler) is loaded from it, the classification head (``classifier.*``) is new, and which
weights are new and which of the checkpoint's were left unused (the MLM and NSP heads) is logged
and written to ``eval.json``. A checkpoint that is not BERT, or that lacks encoder weights, is
refused. Without ``init_from`` the same model is built from the ``model:`` keys with random weights
(``--tokenizer`` the pretrained ``model/`` to compare the two starts on one vocabulary).

**Evaluation** (``eval.json``, also printed): on the held-out records, pair accuracy and loss over
their positives and negatives (majority baseline beside them), and matching accuracy: for each
held-out article, is its own summary the one, among all held-out summaries, the model scores as
likeliest to match (chance 1 / number of held-out records); pair accuracy and loss on a sample of
the training examples too. Evaluations during training (``training.eval_strategy``) log the
held-out pair ``eval_loss`` and ``eval_accuracy``.

Output directory: as for ``ms-gpt2 train``: ``checkpoint-N/``, ``model/`` (Hugging Face layout with
``vocab.txt``: ``BertForSequenceClassification.from_pretrained(OUTPUT_DIR/model)``),
``loss_log.jsonl``, ``loss_curve.png``, ``train_config.yaml``, plus ``eval.json``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ms_gpt2.infra import runtime

runtime.ensure()

import mindspore.dataset as msds  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402  (mindtorch)
from mindnlp.transformers import BertForSequenceClassification  # noqa: E402

from ms_gpt2.data import tokenization  # noqa: E402
from ms_gpt2.data.bert_pairs import Vocabulary, encode_pair  # noqa: E402
from ms_gpt2.models.bert import bert_config  # noqa: E402
from ms_gpt2.models.checkpoints import resolve_model_dir  # noqa: E402
from ms_gpt2.infra.config import ConfigError  # noqa: E402
from ms_gpt2.data.nlpcc import DataError, NLPCCSource, parse_record, records  # noqa: E402
from ms_gpt2.infra.errors import UserError  # noqa: E402
from ms_gpt2.infra.errors import CheckpointError  # noqa: E402
from ms_gpt2.infra.rundir import atomic_write_text  # noqa: E402
from ms_gpt2.data.tokenization import training_vocabulary  # noqa: E402
from ms_gpt2.jobs.fit import HeldOutEvaluation, fit  # noqa: E402
from ms_gpt2.jobs.run import run_job, workdir_for  # noqa: E402

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"
OTHER, MATCH = 0, 1        # labels: the summary is another record's / this article's own
LABELS = {OTHER: "other", MATCH: "match"}
EVAL_SALT = 7_919          # held-out negatives use their own random stream
TRAIN_EVAL_SAMPLE = 512    # training examples scored after training
NEW_HEAD = ("classifier.",)  # the task head: always new when starting from a pretraining checkpoint
MAY_BE_NEW = ("bert.pooler.",)  # new too when the checkpoint has no pooler (e.g. a BertForMaskedLM)
COLUMNS = ["input_ids", "token_type_ids", "attention_mask", "labels"]


# --------------------------------------------------------------------------------------------------
# Records and examples
# --------------------------------------------------------------------------------------------------

def read_records(lines, tokenizer) -> list[tuple[np.ndarray, np.ndarray]]:
    """TextFileDataset -> map(parse, tokenize): (summary ids, article ids) of every record, no specials."""
    def tokenize(line):
        article, summary = parse_record(str(line.item()))
        ids = [np.asarray(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)), dtype=np.int32)
               for text in (summary, article)]
        return ids[0], ids[1]

    pipeline = lines.map(tokenize, input_columns=["text"], output_columns=["summary", "article"])
    return [(s, a) for s, a in pipeline.create_tuple_iterator(num_epochs=1, output_numpy=True)]


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of range(n) with no fixed point: record i is paired with summary p[i] != i."""
    if n < 2:
        raise ValueError("a derangement needs at least two items")
    while True:  # about e draws on average
        p = rng.permutation(n)
        if (p != np.arange(n)).all():
            return p


class PairBuilder:
    """The matching examples of one split, epoch by epoch, reproducible from (seed, epoch, index).

    Example ``2i`` is record i's article with its own summary (label 1), ``2i + 1`` the same article
    with the summary of record ``negatives(epoch)[i]`` (label 0), always of this split."""

    def __init__(self, records, tokenizer, max_seq_len: int, seed: int, salt: int | None = None,
                 static: bool = False):
        if not isinstance(max_seq_len, int) or max_seq_len < 5:
            raise ConfigError(f"data.max_seq_len={max_seq_len!r}: a summary-article pair needs at least 5 tokens")
        if len(records) < 2:
            raise ValueError("summary-article matching needs at least two records per split")
        self.records, self.vocab, self.max_seq_len = records, Vocabulary.of(tokenizer), max_seq_len
        self.key = [seed] if salt is None else [seed, salt]
        self.static = static
        self.n_examples = 2 * len(records)
        self._negatives: dict[int, np.ndarray] = {}

    def negatives(self, epoch: int) -> np.ndarray:
        epoch = 0 if self.static else int(epoch)
        if epoch not in self._negatives:
            self._negatives = {epoch: derangement(len(self.records), np.random.default_rng([*self.key, epoch]))}
        return self._negatives[epoch]

    def pair(self, epoch: int, index: int) -> tuple[int, int, int]:
        """(summary's record, article's record, label) of example ``index``."""
        record, negative = divmod(int(index), 2)
        return (int(self.negatives(epoch)[record]), record, OTHER) if negative else (record, record, MATCH)

    def encode(self, summary_of: int, article_of: int) -> tuple[np.ndarray, ...]:
        return encode_pair(self.records[summary_of][0], self.records[article_of][1], self.vocab, self.max_seq_len)

    def example(self, epoch: int, index: int) -> tuple[np.ndarray, ...]:
        summary_of, article_of, label = self.pair(epoch, index)
        return (*self.encode(summary_of, article_of), np.int32(label))

    def pipeline(self, epoch: int, batch_size: int, shuffle: bool = True, limit: int | None = None):
        """indices -> [shuffle] -> map(build example) -> batch. Shuffle seed: mindspore.dataset.config's."""
        self.negatives(epoch)  # drawn once here, not in the map's threads
        n = self.n_examples if limit is None else min(limit, self.n_examples)
        ds = msds.NumpySlicesDataset({"index": np.arange(n, dtype=np.int64)}, shuffle=shuffle)
        ds = ds.map(lambda index: self.example(epoch, int(index)), input_columns=["index"], output_columns=COLUMNS)
        return ds.project(COLUMNS).batch(batch_size)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------

def checkpoint_dir(path) -> Path:
    """``model.init_from`` as a BERT checkpoint directory (a pretraining output directory stands for
    its ``model/``), or :class:`CheckpointError` saying what it is not."""
    given = Path(path)
    if not given.exists():
        raise CheckpointError(f"model.init_from {given}: no such model directory")
    path = resolve_model_dir(given)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"model.init_from {given}: no config.json (expected the model/ of "
                              f"`ms-gpt2 pretrain --objective mlm-nsp`, or a Hugging Face BERT checkpoint directory)")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as err:
        raise CheckpointError(f"model.init_from {config_file}: not a valid config.json ({err})") from None
    if model_type != "bert":
        raise CheckpointError(f"model.init_from {given}: not a BERT checkpoint (model_type {model_type!r}); "
                              f"fine-tune the model/ of `ms-gpt2 pretrain --objective mlm-nsp`")
    return path


def new_weights_allowed(name: str) -> bool:
    return name.startswith(NEW_HEAD + MAY_BE_NEW)


def load_classifier(path, vocab_size: int | None = None):
    """(BertForSequenceClassification with 2 labels, loading info) from a BERT checkpoint directory:
    its encoder loaded, the head new. ``info``: {"new": [...], "unused": [...]} weight names."""
    path = checkpoint_dir(path)
    try:
        model, info = BertForSequenceClassification.from_pretrained(
            str(path), num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
            local_files_only=True, output_loading_info=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot load a BERT checkpoint: {err}") from err
    new, unused = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    encoder_missing = [name for name in new if not new_weights_allowed(name)]
    if encoder_missing or info.get("mismatched_keys"):
        shown = ", ".join((encoder_missing or [str(k[0]) for k in info["mismatched_keys"]])[:3])
        raise CheckpointError(f"{path}: not a complete BERT encoder checkpoint ({len(encoder_missing)} encoder "
                              f"weights missing, {len(info.get('mismatched_keys') or [])} of the wrong shape: "
                              f"{shown}...)")
    if vocab_size is not None and vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer needs {vocab_size} ids but the model's vocab_size is "
                              f"{model.config.vocab_size}; use the vocabulary the model was trained with")
    return model, {"new": new, "unused": unused}


def new_classifier(tokenizer, m: dict) -> BertForSequenceClassification:
    """The same model from the ``model:`` keys, every weight random (seed first)."""
    config = bert_config(tokenizer, m)
    config.num_labels, config.id2label, config.label2id = 2, LABELS, {v: k for k, v in LABELS.items()}
    return BertForSequenceClassification(config)


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

def _logits(model, batch: dict) -> np.ndarray:
    inputs = {k: torch.tensor(np.asarray(batch[k]).astype(np.int64)).to(model.device)
              for k in ("input_ids", "token_type_ids", "attention_mask")}
    return model(**inputs, return_dict=True).logits.float().numpy().astype(np.float64)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def evaluate_pairs(model, builder: PairBuilder, batch_size: int = 32, limit: int | None = None) -> dict:
    """Pair accuracy and mean cross-entropy on the builder's epoch-0 examples (the first ``limit``)."""
    hits = n = positives = 0
    nll = 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pipeline = builder.pipeline(0, batch_size, shuffle=False, limit=limit)
        for row in pipeline.create_dict_iterator(num_epochs=1, output_numpy=True):
            logits, labels = _logits(model, row), row["labels"].astype(np.int64).reshape(-1)
            hits += int((logits.argmax(-1) == labels).sum())
            nll -= float(_log_softmax(logits)[np.arange(len(labels)), labels].sum())
            n += len(labels)
            positives += int((labels == MATCH).sum())
    model.train(was_training)
    return {"accuracy": hits / n, "loss": nll / n, "examples": n,
            "majority_baseline": max(positives, n - positives) / n}


def matching_accuracy(model, builder: PairBuilder, batch_size: int = 32) -> dict:
    """For each article of the split, is its own summary the likeliest match among all the split's summaries?"""
    n = len(builder.records)
    pairs = [(s, a) for a in range(n) for s in range(n)]  # article-major: row a of the score matrix
    scores = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start_ in range(0, len(pairs), batch_size):
            rows = [builder.encode(s, a) for s, a in pairs[start_:start_ + batch_size]]
            batch = {k: np.stack([r[i] for r in rows]) for i, k in enumerate(COLUMNS[:3])}
            scores.append(_log_softmax(_logits(model, batch))[:, MATCH])
    model.train(was_training)
    best = np.concatenate(scores).reshape(n, n).argmax(axis=1)
    return {"matching_accuracy": float((best == np.arange(n)).mean()), "matching_candidates": n,
            "matching_chance": 1 / n}


# --------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------

def check_negatives(negatives: str) -> str:
    if negatives not in ("dynamic", "static"):
        raise ConfigError(f"finetune.negatives must be dynamic or static, got {negatives!r}")
    return negatives


@dataclass
class FinetuneResult:
    output_dir: Path
    model_dir: Path
    global_step: int
    train_loss: float
    loss_curve: Path | None
    train_records: int
    eval_records: int
    eval: dict   # {"start", "init_from", "new_weights", "unused_weights", "train": scores, "eval": scores}


def finetune_bert(config: dict, data_path, output_dir, resume=None, overwrite: bool = False) -> FinetuneResult:
    """Fine-tune BertForSequenceClassification on summary-article matching as configured; evaluate; save."""
    def checks():
        check_negatives(config["finetune"]["negatives"])
        if config["model"]["init_from"] and not resume:  # a bad checkpoint is named before any data work
            checkpoint_dir(config["model"]["init_from"])

    # BERT fine-tunes on the eager engine
    return run_job(_finetune_bert, config, data_path, output_dir, resume, overwrite, outputs=[EVAL_FILE],
                   engine="eager", checks=checks)


def _finetune_bert(config: dict, data_path, output_dir: Path, resume_from: str | None, seed: int) -> FinetuneResult:
    mcfg, dcfg = config["model"], config["data"]
    max_seq_len = dcfg["max_seq_len"]
    negatives = check_negatives(config["finetune"]["negatives"])
    init_from = str(checkpoint_dir(mcfg["init_from"])) if mcfg["init_from"] else None
    config = {**config, "model": {**mcfg, "init_from": init_from}}  # its model/, where the vocabulary is

    source = NLPCCSource.open(data_path, workdir_for(output_dir), dcfg["fraction"], dcfg["train_ratio"],
                              dcfg["skip_bad_lines"])
    if source.n_train < 2 or source.n_test < 2:
        raise DataError(source.report.path, None, f"{source.n_train} training and {source.n_test} held-out records: "
                                                  f"summary-article matching needs at least two of each (negatives "
                                                  f"are other records' summaries of the same split)")
    tokenizer = training_vocabulary(config, output_dir, resume_from,
                                    lambda: (t for pair in records(source.lines("train")) for t in pair),
                                    bert_only="BERT fine-tuning",
                                    heldout=lambda: (t for pair in records(source.lines("test")) for t in pair))
    train_examples = PairBuilder(read_records(source.lines("train"), tokenizer), tokenizer, max_seq_len, seed,
                                 static=negatives == "static")
    held_out = PairBuilder(read_records(source.lines("test"), tokenizer), tokenizer, max_seq_len, seed,
                           salt=EVAL_SALT, static=True)
    log.info("%d training records -> %d summary-article pairs per epoch (half matching, %s negatives); %d held out",
             source.n_train, train_examples.n_examples, negatives, source.n_test)

    runtime.seed_everything(seed)  # the new head's (or every) initial weight follows --seed
    loading = {"new": [], "unused": []}
    vocab_size = tokenization.vocab_id_range(tokenizer)
    if resume_from:
        model, _ = load_classifier(resume_from, vocab_size)
    elif init_from:
        model, loading = load_classifier(init_from, vocab_size)
        log.info("encoder from %s; new weights (random, trained from here): %s; unused from the checkpoint: %s",
                 init_from, ", ".join(loading["new"]), ", ".join(loading["unused"]) or "none")
    else:
        model = new_classifier(tokenizer, mcfg)
        log.info("no model.init_from: every weight is random (fine-tuning from scratch)")
    if max_seq_len > model.config.max_position_embeddings:
        raise UserError(f"data.max_seq_len={max_seq_len} exceeds the model's n_positions="
                        f"{model.config.max_position_embeddings}")

    def pipeline(batch_size, epoch):  # negatives keyed by (seed, epoch); the shuffle by PipelineBatches' seed
        return train_examples.pipeline(epoch, batch_size, shuffle=dcfg["shuffle"])

    fitted = fit(config, model, tokenizer, pipeline, train_examples.n_examples, output_dir, resume_from,
                 compiled_ok=False, data_parallel_ok=False,
                 held_out=HeldOutEvaluation(lambda m, batch_size: evaluate_pairs(m, held_out, batch_size),
                                            ("loss", "accuracy")))
    model = fitted.trainer.model
    batch_size = int(config["training"]["per_device_train_batch_size"])
    scores = {"start": "pretrained" if init_from else "scratch", "init_from": init_from,
              "new_weights": loading["new"], "unused_weights": loading["unused"],
              "train": evaluate_pairs(model, train_examples, batch_size, limit=TRAIN_EVAL_SAMPLE),
              "eval": {**evaluate_pairs(model, held_out, batch_size), **matching_accuracy(model, held_out, batch_size)}}
    atomic_write_text(output_dir / EVAL_FILE, json.dumps(scores, indent=2))
    for split in ("train", "eval"):
        s = scores[split]
        log.info("%s: pair accuracy %.3f (majority %.3f), loss %.3f over %d pairs%s", split, s["accuracy"],
                 s["majority_baseline"], s["loss"], s["examples"],
                 f"; matching accuracy {s['matching_accuracy']:.3f} among {s['matching_candidates']} (chance "
                 f"{s['matching_chance']:.3f})" if "matching_accuracy" in s else "")
    return FinetuneResult(output_dir, fitted.model_dir, fitted.global_step, fitted.train_loss, fitted.loss_curve,
                          source.n_train, source.n_test, scores)
