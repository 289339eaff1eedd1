"""BERT's pretraining objectives, MLM + NSP, on raw text: the encoder half of the GPT/BERT picture.

``ms-gpt2 pretrain --objective mlm-nsp`` trains mindnlp's ``BertForPreTraining`` (Hugging Face's,
on MindSpore) on the same inputs as causal-LM pretraining: plain text, one document per line, or
JSON lines with ``pretrain.text_field`` (``article`` for NLPCC files), read by
:mod:`ms_gpt2.data.corpus`.

**Sentences.** Each document is split into sentences after ``。``, ``！``, ``？`` (closing quotes
and brackets stay with their sentence) and at line ends; every sentence is tokenized once, by a
``TextFileDataset`` -> ``map`` pipeline, into an in-memory table of token ids per document.

**Pairs (NSP).** Every sentence that has a successor in its document starts one example per epoch:
``[CLS] A [SEP] B [SEP]`` where B is, with probability 1/2, the next sentence (``IsNext``,
``next_sentence_label`` 0, Hugging Face's convention) and otherwise a random sentence of another
document (label 1). A and B are single sentences; when the pair is longer than ``data.max_seq_len``
the longer one loses its last token until it fits (longest first). ``token_type_ids`` are 0 up to
and including the first ``[SEP]``, 1 after it through the second; ``attention_mask`` is 1 on real
tokens; everything is padded with ``[PAD]`` to ``max_seq_len``.

**Masking (MLM).** Of the non-special tokens (``[CLS]``, ``[SEP]``, ``[PAD]`` and ``[UNK]``, not worth
predicting, are never chosen), ``pretrain.mlm_probability`` (15%) are chosen: ``floor(n * p)`` plus
one more with probability ``frac(n * p)`` (at least one), so the rate is exactly ``p`` in
expectation and no example scores nothing. Of the chosen, 80% become ``[MASK]``, 10% a random non-special token, 10% stay; ``labels``
hold the original id there and -100 everywhere else.

**Randomness.** The pair table of epoch ``e`` comes from ``numpy.random.default_rng([seed, e])``;
an example's masks from ``default_rng([seed, e, index])`` inside the pipeline's ``map``, so they
do not depend on thread scheduling and a resumed run sees exactly the examples of the run it
continues. ``pretrain.masking: dynamic`` (default, as in RoBERTa) draws new pairs and masks every
epoch; ``static`` repeats epoch 0's examples every epoch (only their order is reshuffled).

**Evaluation.** The last ``pretrain.eval_fraction`` of the documents are held out, NSP negatives
included: a held-out pair's B is a random sentence of another held-out document, or, when fewer than
two held-out documents have sentences, another sentence of the same document (not A, not its
successor; a two-sentence document's pair is then always IsNext). ``eval.json``'s held-out scores
name which in ``nsp_negatives``. After training, ``eval.json`` holds, for the held-out examples and
for a sample of the training examples: MLM accuracy on the masked positions, NSP accuracy, the MLM
loss (mean over masked tokens), the NSP loss and their sum ``loss`` (what the model minimizes), with
the chance baselines beside them. Evaluations during training (``training.eval_strategy``) log the
held-out ``eval_loss``, ``eval_mlm_loss``, ``eval_nsp_loss``, ``eval_mlm_accuracy`` and
``eval_nsp_accuracy``.

Output directory: as for ``ms-gpt2 train``: ``checkpoint-N/``, ``model/`` (Hugging Face layout with
``vocab.txt``: ``BertForPreTraining.from_pretrained(OUTPUT_DIR/model)`` loads it, ``BertModel`` too),
``loss_log.jsonl``, ``loss_curve.png``, ``train_config.yaml``, plus ``eval.json``.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ms_gpt2.infra import runtime

runtime.ensure()

import mindspore.dataset as msds  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402  (mindtorch)
from mindnlp.transformers import BertForPreTraining  # noqa: E402

from ms_gpt2.data import tokenization  # noqa: E402
from ms_gpt2.data.bert_pairs import Vocabulary, encode_pair  # noqa: E402
from ms_gpt2.infra.config import ConfigError  # noqa: E402
from ms_gpt2.infra.rundir import atomic_write_text  # noqa: E402
from ms_gpt2.data.corpus import CorpusSource, parse_document  # noqa: E402
from ms_gpt2.data.nlpcc import DataError  # noqa: E402
from ms_gpt2.infra.errors import UserError  # noqa: E402
from ms_gpt2.models.bert import bert_config, load_bert  # noqa: E402
from ms_gpt2.data.tokenization import training_vocabulary  # noqa: E402
from ms_gpt2.jobs.fit import HeldOutEvaluation, fit  # noqa: E402
from ms_gpt2.jobs.run import run_job  # noqa: E402

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"
IGNORE = -100            # labels not predicted (Hugging Face's ignore index)
IS_NEXT, NOT_NEXT = 0, 1  # next_sentence_label, Hugging Face's convention
EVAL_SALT = 7_919        # eval pairs/masks use their own random stream
TRAIN_EVAL_SAMPLE = 512  # training examples scored after training
#: what an evaluation during training (training.eval_strategy) logs, as eval_<name>
HELD_OUT_METRICS = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy")


# --------------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------------

_SENTENCE = re.compile(r"[^。！？\n]*[。！？]+[”’\"'」』）)》]*|[^。！？\n]+")


def split_sentences(text: str) -> list[str]:
    """Sentences of a document: cut after 。！？ (closing quotes kept) and at line ends; stripped, non-empty."""
    return [s for s in (m.group().strip() for m in _SENTENCE.finditer(text)) if s]


def document_sentences(tokenizer, text: str) -> list[np.ndarray]:
    """Token ids (no specials) of each sentence of ``text``; sentences with no tokens are left out."""
    out = []
    for sentence in split_sentences(text):
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(sentence))
        if ids:
            out.append(np.asarray(ids, dtype=np.int32))
    return out


def read_sentences(lines, tokenizer, text_field: str | None = None) -> list[list[np.ndarray]]:
    """TextFileDataset -> map(parse, split, tokenize): every document as a list of sentence id arrays."""
    def tokenize(line):
        sentences = document_sentences(tokenizer, parse_document(str(line.item()), text_field=text_field))
        lengths = np.asarray([len(s) for s in sentences], dtype=np.int32)
        flat = np.concatenate(sentences) if sentences else np.zeros(0, np.int32)
        return flat, lengths

    pipeline = lines.map(tokenize, input_columns=["text"], output_columns=["ids", "lengths"])
    documents = []
    for flat, lengths in pipeline.create_tuple_iterator(num_epochs=1, output_numpy=True):
        documents.append(np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else [])
    return documents


# --------------------------------------------------------------------------------------------------
# Examples: NSP pairs, then MLM masks
# --------------------------------------------------------------------------------------------------

@dataclass
class Pairs:
    """One epoch's sentence pairs: A = (a_doc, a_sent), B = (b_doc, b_sent), label 0 IsNext / 1 random."""

    a_doc: np.ndarray
    a_sent: np.ndarray
    b_doc: np.ndarray
    b_sent: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


def count_pairs(documents) -> int:
    return sum(max(len(d) - 1, 0) for d in documents)


def make_pairs(documents, rng: np.random.Generator, same_document: bool = False) -> Pairs:
    """Every sentence with a successor starts a pair; B is the successor half of the time, else a
    random sentence of another of ``documents``, or with ``same_document`` a random sentence of
    A's own document other than A and its successor (none in a two-sentence document: IsNext)."""
    pool = np.asarray([i for i, d in enumerate(documents) if len(d)], dtype=np.int64)
    rows = []
    for d, sentences in enumerate(documents):
        for i in range(len(sentences) - 1):
            if rng.random() < 0.5:
                rows.append((d, i, d, i + 1, IS_NEXT))
                continue
            if same_document:
                candidates = [j for j in range(len(sentences)) if j not in (i, i + 1)]
                rows.append((d, i, d, int(candidates[rng.integers(len(candidates))]), NOT_NEXT) if candidates
                            else (d, i, d, i + 1, IS_NEXT))
                continue
            others = pool[pool != d]
            if len(others) == 0:
                raise DataError("<corpus>", None, "next-sentence prediction needs sentences from at least two "
                                                  "documents; this corpus (or split) has one")
            b = int(others[rng.integers(len(others))])
            rows.append((d, i, b, int(rng.integers(len(documents[b]))), NOT_NEXT))
    table = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    return Pairs(*(table[:, k] for k in range(5)))


def mask_tokens(ids: np.ndarray, vocab: Vocabulary, rng: np.random.Generator, probability: float = 0.15):
    """BERT's 80/10/10 masking of ``probability`` of the non-special tokens: (masked ids, labels)."""
    candidates = np.flatnonzero(~np.isin(ids, vocab.special))
    labels = np.full(ids.shape, IGNORE, dtype=np.int32)
    if len(candidates) == 0:
        return ids.copy(), labels
    expected = len(candidates) * probability
    k = int(expected) + int(rng.random() < expected - int(expected))
    chosen = rng.choice(candidates, size=min(max(k, 1), len(candidates)), replace=False)
    labels[chosen] = ids[chosen]
    masked = ids.copy()
    action = rng.random(len(chosen))
    masked[chosen[action < 0.8]] = vocab.mask
    swap = chosen[(action >= 0.8) & (action < 0.9)]
    masked[swap] = vocab.ordinary[rng.integers(len(vocab.ordinary), size=len(swap))]
    return masked, labels


COLUMNS = ["input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"]


def check_options(max_seq_len: int, mlm_probability: float, masking: str) -> None:
    """The MLM/NSP settings, checked before any data is read; errors name the config key."""
    if not isinstance(max_seq_len, int) or max_seq_len < 5:
        raise ConfigError(f"data.max_seq_len={max_seq_len!r}: a sentence pair needs at least 5 tokens")
    if not isinstance(mlm_probability, (int, float)) or not 0 < mlm_probability < 1:
        raise ConfigError(f"pretrain.mlm_probability must be in (0, 1), got {mlm_probability!r}")
    if masking not in ("dynamic", "static"):
        raise ConfigError(f"pretrain.masking must be dynamic or static, got {masking!r}")


class ExampleBuilder:
    """Examples of one split, epoch by epoch, reproducible from (seed, epoch, index)."""

    def __init__(self, documents, tokenizer, max_seq_len: int, seed: int, mlm_probability: float = 0.15,
                 masking: str = "dynamic", same_document_negatives: bool = False, salt: int | None = None):
        check_options(max_seq_len, mlm_probability, masking)
        self.documents, self.same_document_negatives = documents, same_document_negatives
        self.vocab, self.max_seq_len, self.mlm_probability = Vocabulary.of(tokenizer), max_seq_len, mlm_probability
        self.key = [seed] if salt is None else [seed, salt]
        self.static = masking == "static"
        self.n_examples = count_pairs(documents)
        self._pairs: dict[int, Pairs] = {}

    def _epoch(self, epoch: int) -> int:
        return 0 if self.static else int(epoch)

    def pairs(self, epoch: int) -> Pairs:
        epoch = self._epoch(epoch)
        if epoch not in self._pairs:
            self._pairs = {epoch: make_pairs(self.documents, np.random.default_rng([*self.key, epoch]),
                                             self.same_document_negatives)}
        return self._pairs[epoch]

    def example(self, epoch: int, index: int) -> tuple[np.ndarray, ...]:
        p, epoch = self.pairs(epoch), self._epoch(epoch)
        a = self.documents[p.a_doc[index]][p.a_sent[index]]
        b = self.documents[p.b_doc[index]][p.b_sent[index]]
        ids, segments, attention = encode_pair(a, b, self.vocab, self.max_seq_len)
        ids, labels = mask_tokens(ids, self.vocab, np.random.default_rng([*self.key, epoch, index]),
                                  self.mlm_probability)
        return ids, segments, attention, labels, np.int32(p.label[index])

    def pipeline(self, epoch: int, batch_size: int, shuffle: bool = True, limit: int | None = None):
        """indices -> [shuffle] -> map(build example) -> batch. Shuffle seed: mindspore.dataset.config's."""
        self.pairs(epoch)  # built once here, not in the map's threads
        n = self.n_examples if limit is None else min(limit, self.n_examples)
        ds = msds.NumpySlicesDataset({"index": np.arange(n, dtype=np.int64)}, shuffle=shuffle)
        ds = ds.map(lambda index: self.example(epoch, int(index)), input_columns=["index"], output_columns=COLUMNS)
        return ds.project(COLUMNS).batch(batch_size)


OTHER_DOCUMENTS = "other held-out documents"
SAME_DOCUMENT = "the same held-out document (fewer than two held-out documents have sentences)"


def held_out_examples(eval_docs, tokenizer, **options) -> tuple[ExampleBuilder, str]:
    """The held-out examples, built from the held-out documents alone, and where their NSP negatives
    come from (:data:`OTHER_DOCUMENTS` or :data:`SAME_DOCUMENT`): never from a training document."""
    same = sum(1 for d in eval_docs if len(d)) < 2
    return (ExampleBuilder(eval_docs, tokenizer, **options, salt=EVAL_SALT, same_document_negatives=same),
            SAME_DOCUMENT if same else OTHER_DOCUMENTS)


# --------------------------------------------------------------------------------------------------
# Evaluation (the model: ms_gpt2.models.bert)
# --------------------------------------------------------------------------------------------------

def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def evaluate_batches(model, batches) -> dict:
    """MLM accuracy/loss over masked positions, NSP accuracy/loss over examples, and chance baselines."""
    mlm_hits = mlm_n = nsp_hits = nsp_n = 0
    mlm_nll = nsp_nll = 0.0
    label_counts: dict[int, int] = {}
    positives = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for row in batches:
            inputs = {k: torch.tensor(row[k].astype(np.int64)).to(model.device)
                      for k in ("input_ids", "token_type_ids", "attention_mask")}
            out = model(**inputs, return_dict=True)
            labels, nsp = row["labels"].astype(np.int64), row["next_sentence_label"].astype(np.int64).reshape(-1)
            where = labels != IGNORE
            logits = out.prediction_logits.float().numpy()[where].astype(np.float64)  # (masked, V)
            targets = labels[where]
            mlm_hits += int((logits.argmax(-1) == targets).sum())
            mlm_nll -= float(_log_softmax(logits)[np.arange(len(targets)), targets].sum())
            mlm_n += len(targets)
            for t, c in zip(*np.unique(targets, return_counts=True)):
                label_counts[int(t)] = label_counts.get(int(t), 0) + int(c)
            rel = out.seq_relationship_logits.float().numpy().astype(np.float64)
            nsp_hits += int((rel.argmax(-1) == nsp).sum())
            nsp_nll -= float(_log_softmax(rel)[np.arange(len(nsp)), nsp].sum())
            nsp_n += len(nsp)
            positives += int((nsp == IS_NEXT).sum())
    model.train(was_training)
    if mlm_n == 0 or nsp_n == 0:
        raise UserError("no examples to evaluate (every document has a single sentence?)")
    mlm_loss, nsp_loss = mlm_nll / mlm_n, nsp_nll / nsp_n
    return {"mlm_accuracy": mlm_hits / mlm_n, "nsp_accuracy": nsp_hits / nsp_n, "loss": mlm_loss + nsp_loss,
            "mlm_loss": mlm_loss, "nsp_loss": nsp_loss, "masked_tokens": mlm_n, "examples": nsp_n,
            # chance: always answering the commonest masked token / the commoner NSP label
            "mlm_majority_baseline": max(label_counts.values()) / mlm_n,
            "nsp_majority_baseline": max(positives, nsp_n - positives) / nsp_n}


def evaluate(model, builder: ExampleBuilder, batch_size: int = 16, limit: int | None = None) -> dict:
    """Scores on the builder's epoch-0 examples (the first ``limit`` of them), in order."""
    pipeline = builder.pipeline(0, batch_size, shuffle=False, limit=limit)
    return evaluate_batches(model, pipeline.create_dict_iterator(num_epochs=1, output_numpy=True))


# --------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------

@dataclass
class MlmNspResult:
    output_dir: Path
    model_dir: Path
    global_step: int
    train_loss: float
    loss_curve: Path | None
    train_documents: int
    eval_documents: int
    train_examples: int  # sentence pairs per epoch
    eval: dict           # {"train": scores, "eval": scores or None}


def compiled_graph_fits(config: dict, model) -> bool:
    """Whether the compiled engine's BERT graph computes this model as configured; if not (an
    activation other than GELU, relative positions, fp16/bf16, ...), one logged line says why and
    the eager engine trains it."""
    from ms_gpt2.models.graphs import graph_for
    from ms_gpt2.models.graphs.precision import Precision

    if (config.get("engine") or "compiled") != "compiled":
        return False
    training = config.get("training") or {}
    try:
        graph_for(model, Precision.of(fp16=bool(training.get("fp16")), bf16=bool(training.get("bf16"))))
    except NotImplementedError as why:
        log.info("the compiled BERT graph does not implement %s: training on the eager engine", why)
        return False
    return True


def pretrain_mlm_nsp(config: dict, data_path, output_dir, resume=None, overwrite: bool = False) -> MlmNspResult:
    """Train BertForPreTraining with MLM + NSP on a raw-text corpus as configured; evaluate; save."""
    return run_job(_pretrain_mlm_nsp, config, data_path, output_dir, resume, overwrite, outputs=[EVAL_FILE])


def _pretrain_mlm_nsp(config: dict, data_path, output_dir: Path, resume_from: str | None, seed: int) -> MlmNspResult:
    mcfg, dcfg, pcfg = config["model"], config["data"], config["pretrain"]
    max_seq_len = dcfg["max_seq_len"]
    check_options(max_seq_len, pcfg["mlm_probability"], pcfg["masking"])

    source = CorpusSource.open(data_path, output_dir / "work", pcfg["text_field"], pcfg["eval_fraction"],
                               dcfg["skip_bad_lines"])
    report, n_train = source.report, source.n_train
    tokenizer = training_vocabulary(config, output_dir, resume_from, source.train_texts, bert_only="BERT pretraining",
                                    heldout=source.eval_texts)
    documents = read_sentences(source.lines("all"), tokenizer, report.text_field)
    train_docs, eval_docs = documents[:n_train], documents[n_train:]
    options = dict(max_seq_len=max_seq_len, seed=seed, mlm_probability=pcfg["mlm_probability"],
                   masking=pcfg["masking"])
    train_examples = ExampleBuilder(train_docs, tokenizer, **options)
    if train_examples.n_examples == 0:
        raise DataError(report.path, None, "no training document has two sentences (split at 。！？ and line ends)")
    log.info("%d training documents -> %d sentence pairs per epoch (%s masking); %d held out",
             len(train_docs), train_examples.n_examples, pcfg["masking"], len(eval_docs))

    if resume_from or mcfg["init_from"]:
        model = load_bert(resume_from or mcfg["init_from"], vocab_size=tokenization.vocab_id_range(tokenizer))
    else:
        runtime.seed_everything(seed)  # the initial weights follow --seed
        model = BertForPreTraining(bert_config(tokenizer, mcfg))
    if max_seq_len > model.config.max_position_embeddings:
        raise UserError(f"data.max_seq_len={max_seq_len} exceeds the model's n_positions="
                        f"{model.config.max_position_embeddings}")

    def pipeline(batch_size, epoch):  # pairs and masks keyed by (seed, epoch, index)
        return train_examples.pipeline(epoch, batch_size, shuffle=dcfg["shuffle"])

    held_out = negatives = evaluation = None
    if count_pairs(eval_docs):
        held_out, negatives = held_out_examples(eval_docs, tokenizer, **options)
        if negatives == SAME_DOCUMENT:
            log.warning("fewer than two held-out documents have sentences: held-out NSP negatives are other "
                        "sentences of the same document (training's come from other documents)")
        evaluation = HeldOutEvaluation(lambda m, batch_size: evaluate(m, held_out, batch_size), HELD_OUT_METRICS)

    # data parallel runs on the compiled engine (its graph divides each rank's loss by the global counts)
    compiled = compiled_graph_fits(config, model)
    fitted = fit(config, model, tokenizer, pipeline, train_examples.n_examples, output_dir, resume_from,
                 compiled_ok=compiled, data_parallel_ok=compiled, held_out=evaluation,
                 no_held_out=f"the held-out documents (pretrain.eval_fraction={pcfg['eval_fraction']}) hold no "
                             f"sentence pair to evaluate on; raise it")
    trainer, model_dir, curve = fitted.trainer, fitted.model_dir, fitted.loss_curve
    log.info("pretrained BERT (MLM + NSP) %d steps, final model in %s", fitted.global_step, model_dir)

    batch_size = int(config["training"]["per_device_train_batch_size"])
    scores = {"train": evaluate(trainer.model, train_examples, batch_size, limit=TRAIN_EVAL_SAMPLE), "eval": None}
    if held_out is not None:
        scores["eval"] = {**evaluate(trainer.model, held_out, batch_size), "nsp_negatives": negatives}
    elif eval_docs:
        log.warning("the %d held-out documents have no sentence pairs; no held-out scores", len(eval_docs))
    atomic_write_text(output_dir / EVAL_FILE, json.dumps(scores, indent=2))
    for split, s in scores.items():
        if s:
            log.info("%s: MLM accuracy %.3f (majority %.3f), NSP accuracy %.3f, loss %.3f over %d examples", split,
                     s["mlm_accuracy"], s["mlm_majority_baseline"], s["nsp_accuracy"], s["loss"], s["examples"])
    return MlmNspResult(output_dir, model_dir, fitted.global_step, fitted.train_loss, curve, len(train_docs),
                        len(eval_docs), train_examples.n_examples, scores)
