"""Training and test examples in the tutorial's layout, and the MindSpore pipelines that make them.

Training example: ``[CLS] article [SEP] summary [SEP] [PAD]...`` of exactly ``max_seq_len``
tokens, built by the tokenizer's sentence-pair call with ``truncation="only_first"``: only the
article is cut. (The tutorial passes the summary as ``text_pari=``, a typo the tokenizer
swallows, so its examples contain no summary at all; here it is ``text_pair``, and a test checks
the summary is in every example.) ``labels`` are the ``input_ids`` (the model shifts them).

**Loss weights** (``data.article_loss_weight``, λ): the loss is ``Σ w_t·ce_t / Σ w_t`` over the
scored targets, ``w = 1`` for the summary tokens and the final ``[SEP]``, ``λ`` for
``[CLS] article [SEP]`` and 0 for ``[PAD]``. λ = 1 is the tutorial's whole-sequence loss and needs
no weights; λ = 0 (``summary_only_loss``) blanks the article's labels to ``[PAD]``, which the loss
ignores; only 0 < λ < 1 adds a float ``loss_weights`` column (weights by label position).

Test example: ``[CLS] article [SEP]`` with the article cut to ``max_seq_len - max_summary_len``,
leaving room for the generated summary.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ms_gpt2.data.nlpcc import DataError, RecordCheck, read_map
from ms_gpt2.infra.errors import UserError

SPECIAL_TOKENS_IN_PAIR = 3  # [CLS] a [SEP] b [SEP]


def summary_fits(tokenizer, max_seq_len: int) -> RecordCheck:
    """A record check: the summary plus special tokens must leave room for some article."""
    def check(article: str, summary: str):
        n = len(tokenizer.tokenize(summary))
        if n + SPECIAL_TOKENS_IN_PAIR + 1 > max_seq_len:
            return (f"summary is {n} tokens; with [CLS]/[SEP] it leaves no room for the article in "
                    f"max_seq_len={max_seq_len} (only the article is truncated)")
        return None
    return check


def encode_example(tokenizer, article: str, summary: str, max_seq_len: int,
                   summary_only_loss: bool = False, article_loss_weight: float | None = None) -> dict[str, np.ndarray]:
    """One training example; ``article_loss_weight`` (λ, see the module docstring) overrides
    ``summary_only_loss`` (its λ = 0 / 1 alias) when given."""
    weight = (0.0 if summary_only_loss else 1.0) if article_loss_weight is None else float(article_loss_weight)
    enc = tokenizer(text=article, text_pair=summary, padding="max_length", truncation="only_first",
                    max_length=max_seq_len, return_token_type_ids=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    if len(ids) > max_seq_len:  # only_first could not make room: the tokenizer just logs and returns it
        raise DataError("<example>", None, summary_fits(tokenizer, max_seq_len)(article, summary) or
                        f"example is {len(ids)} tokens, over max_seq_len={max_seq_len}")
    labels = ids.copy()
    example = {"input_ids": ids, "attention_mask": np.asarray(enc["attention_mask"], dtype=np.int32),
               "labels": labels}
    if weight < 1:
        first_sep = int(np.argmax(ids == tokenizer.sep_token_id))
        if weight == 0:
            labels[: first_sep + 1] = tokenizer.pad_token_id  # ignored by the loss, like padding
        else:
            weights = (ids != tokenizer.pad_token_id).astype(np.float32)
            weights[: first_sep + 1] = np.float32(weight)
            example["loss_weights"] = weights
    return example


def article_weighted(article_loss_weight: float | None) -> bool:
    """Whether examples at this λ carry a ``loss_weights`` column (only 0 < λ < 1 does)."""
    return article_loss_weight is not None and 0 < float(article_loss_weight) < 1


def encode_prompt(tokenizer, article: str, max_prompt_len: int | None = None) -> np.ndarray:
    """A summary's prompt ids: ``[CLS] article [SEP]``, the article truncated so the whole prompt is
    at most ``max_prompt_len``. (A text to continue: :func:`encode_continuation`.)"""
    enc = tokenizer(text=article, truncation=max_prompt_len is not None, max_length=max_prompt_len,
                    return_token_type_ids=False)
    return np.asarray(enc["input_ids"], dtype=np.int32)


def encode_continuation(tokenizer, text: str) -> np.ndarray:
    """A text to continue (``ms-gpt2 generate``/``next-word``) as prompt ids: ``[CLS] text``, no [SEP]
    (BERT vocabularies start a GPT-2 sequence with [CLS]); GPT-2 BPE vocabularies have no [CLS]: the
    text's own ids. An empty text is an error."""
    if not text or not text.strip():
        raise UserError("the prompt is empty")
    ids = tokenizer(text=text, add_special_tokens=False, return_token_type_ids=False)["input_ids"]
    if tokenizer.cls_token_id is not None:
        ids = [tokenizer.cls_token_id] + ids
    return np.asarray(ids, dtype=np.int64)


def _strings(*arrays):
    return [str(a.item() if isinstance(a, np.ndarray) else a) for a in arrays]


def train_pipeline(lines, tokenizer, max_seq_len: int, batch_size: int, shuffle: bool = False,
                   summary_only_loss: bool = False, buffer_size: int = 10_000,
                   article_loss_weight: float | None = None):
    """TextFileDataset -> map(read) -> map(tokenize) -> [shuffle] -> batch, the tutorial's shape.

    Columns: input_ids, attention_mask, labels, and loss_weights when 0 < ``article_loss_weight`` < 1.

    Examples are shuffled before batching (the tutorial shuffles whole batches afterwards, which
    keeps the same examples together every epoch). The shuffle follows
    ``mindspore.dataset.config``'s seed, set by the caller.
    """
    columns = ["input_ids", "attention_mask", "labels"]
    if article_weighted(article_loss_weight):
        columns.append("loss_weights")

    def tokenize(article, summary):
        a, s = _strings(article, summary)
        ex = encode_example(tokenizer, a, s, max_seq_len, summary_only_loss, article_loss_weight)
        return tuple(ex[c] for c in columns)

    ds = lines.map(read_map, input_columns=["text"], output_columns=["article", "summary"])
    ds = ds.map(tokenize, input_columns=["article", "summary"], output_columns=columns)
    ds = ds.project(columns)
    if shuffle:
        ds = ds.shuffle(buffer_size)
    return ds.batch(batch_size)


def prompt_pipeline(lines, tokenizer, max_prompt_len: int):
    """TextFileDataset -> map(read) -> map(prompt) -> batch(1): the tutorial's test pipeline."""
    def prompt(article):  # keeps the article column: map replaces its input columns
        return encode_prompt(tokenizer, _strings(article)[0], max_prompt_len), article

    ds = lines.map(read_map, input_columns=["text"], output_columns=["article", "summary"])
    ds = ds.map(prompt, input_columns=["article"], output_columns=["input_ids", "article"])
    return ds.project(["input_ids", "article", "summary"]).batch(1)


PipelineFactory = Callable[[int], object]  # epoch -> batched MindSpore dataset
