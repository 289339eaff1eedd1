"""Scores: character-level ROUGE-1/2/L for Chinese, the Lead baseline, and the model's loss and perplexity.

ROUGE comes from Google's ``rouge-score`` package (the reference re-implementation of
ROUGE-1.5.5). Its default tokenizer keeps only ``[a-z0-9]`` and would score Chinese as empty, so
it is given a character tokenizer: every non-space character is a token, the usual practice for
Chinese summarization (NLPCC2017 included).

The **Lead baseline** is the summarization papers' yardstick: the article's first sentence (up to
and including the first 。, ！ or ？), cut to the reference's length in characters if that is
shorter. A model that does not beat it on the same split does no better than copying.
"""
from __future__ import annotations

import math
from typing import Iterable

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class CharTokenizer:
    """rouge-score tokenizer: one token per non-whitespace character, lower-cased."""

    def tokenize(self, text: str) -> list[str]:
        return [ch for ch in text.lower() if not ch.isspace()]


_scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=CharTokenizer())


def rouge(pairs: Iterable[tuple[str, str]]) -> dict:
    """Mean (macro) precision/recall/F1 over (reference, prediction) pairs."""
    totals = {t: [0.0, 0.0, 0.0] for t in ROUGE_TYPES}
    n = 0
    for reference, prediction in pairs:
        scores = _scorer.score(reference, prediction)
        for t in ROUGE_TYPES:
            totals[t][0] += scores[t].precision
            totals[t][1] += scores[t].recall
            totals[t][2] += scores[t].fmeasure
        n += 1
    if n == 0:
        raise ValueError("ROUGE needs at least one (reference, prediction) pair")
    names = {"rouge1": "rouge-1", "rouge2": "rouge-2", "rougeL": "rouge-l"}
    return {names[t]: {"precision": p / n, "recall": r / n, "f1": f / n} for t, (p, r, f) in totals.items()}


SENTENCE_ENDS = "。！？"


def lead(article: str, reference: str | None = None) -> str:
    """The article's first sentence, cut at the first 。！？ (kept) or at ``len(reference)`` characters."""
    text = article.strip()
    cut = next((i + 1 for i, ch in enumerate(text) if ch in SENTENCE_ENDS), len(text))
    if reference is not None:
        cut = min(cut, len(reference))
    return text[:cut]


def lead_baseline(pairs: Iterable[tuple[str, str]]) -> dict:
    """ROUGE of the Lead baseline over (article, reference) pairs, as :func:`rouge` reports it."""
    return rouge((reference, lead(article, reference)) for article, reference in pairs)


def language_model_loss(model, batches) -> dict:
    """Token-weighted mean loss and perplexity over batches of training-format examples.

    Uses the model's own loss (the training objective), weighting each batch by its number of
    scored tokens (their summed ``loss_weights`` when the batches carry them: the article tokens
    then count λ each) so the result does not depend on how examples were batched. The model runs
    in eval mode (no dropout) and is left in the mode it was in.
    """
    from ms_gpt2.infra import runtime

    runtime.ensure()
    import numpy as np
    import torch

    from ms_gpt2.models.gpt2 import scored_count

    pad = model.config.pad_token_id
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for row in batches:
                n = scored_count(row["labels"], pad, row.get("loss_weights"))
                if n == 0:
                    continue
                batch = {k: torch.tensor(v.astype(np.float32 if k == "loss_weights" else np.int64)).to(model.device)
                         for k, v in row.items()}
                total += model(**batch).loss.item() * n  # not float(): mindtorch rounds it to 5 decimals
                tokens += n
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("no scored tokens to compute a loss on")
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700)), "tokens": tokens}
