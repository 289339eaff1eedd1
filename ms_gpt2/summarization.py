"""Summaries with beam search, the tutorial's test loop with its bugs fixed.

The tutorial decodes the whole output (article included) and never stops at [SEP] (its
``eos_token_id = config.sep_token_id`` reads an attribute GPT2Config does not have). Here
generation stops at [SEP], pads with [PAD], only the new tokens are decoded, and decoding drops
the spaces WordPiece puts between Chinese characters.

``no_repeat_ngram_size=2`` needs care with a decoder-only model: Hugging Face applies it to the
whole sequence, *prompt included*, so every bigram of the article is banned from the summary and
a summary can never quote its article ("梅岭马拉松" becomes "梅马马松"). By default the ban covers the
generated tokens only (``no_repeat_ngram_scope: summary``); ``sequence`` is the tutorial's.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ms_gpt2 import runtime

runtime.ensure()

import numpy as np  # noqa: E402
import torch  # noqa: E402  (mindtorch)
from mindnlp.transformers import LogitsProcessorList  # noqa: E402

from ms_gpt2 import tokenization  # noqa: E402
from ms_gpt2.errors import UserError  # noqa: E402
from ms_gpt2.examples import encode_prompt, prompt_pipeline  # noqa: E402
from ms_gpt2.generation import NGRAM_SCOPES, NoRepeatNGramInContinuation, check_length  # noqa: E402
from ms_gpt2.modeling import GPT2ForSummarization  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class Summary:
    article: str
    reference: str | None
    summary: str


def load_summarizer(model_dir):
    """(model, tokenizer) from a directory written by ``ms-gpt2 train`` (or any GPT-2 + vocab.txt)."""
    from ms_gpt2.checkpoints import load_pretrained

    return load_pretrained(model_dir, GPT2ForSummarization, bert_only=True)


def summarize_ids(model, tokenizer, prompt_ids: np.ndarray, num_beams=5, no_repeat_ngram_size=2,
                  max_new_tokens=50, no_repeat_ngram_scope="summary", compiled: bool = True) -> np.ndarray:
    """Beam-search continuation of ``[CLS] article [SEP]``; returns only the new token ids.

    Runs on the compiled decoder (:func:`ms_gpt2.fast_decode.beam_search`, the library's beam
    search on a static-cache graph, several times faster on CPU); ``compiled=False``, or a model
    config the compiled graph does not implement (logged), uses Hugging Face ``generate`` on
    mindtorch. Tests check both give the same tokens."""
    input_ids = torch.tensor(np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)).to(model.device)
    check_length(model, input_ids.shape[1], max_new_tokens, option="generation.max_new_tokens")
    if no_repeat_ngram_scope not in NGRAM_SCOPES:
        raise UserError(f"generation.no_repeat_ngram_scope must be one of {NGRAM_SCOPES}, got {no_repeat_ngram_scope!r}")
    decoder = None
    if compiled:
        from ms_gpt2.fast_decode import decoder_or_none

        decoder = decoder_or_none(model, input_ids.shape[1] + max_new_tokens, batch=num_beams)
    if decoder is not None:
        from ms_gpt2.fast_decode import beam_search

        prompt = np.asarray(prompt_ids).reshape(-1)
        return np.array(beam_search(decoder, prompt, max_new_tokens, eos_token_id=tokenizer.sep_token_id,
                                    no_repeat_ngram_size=no_repeat_ngram_size, early_stopping=True,
                                    no_repeat_from=len(prompt) if no_repeat_ngram_scope == "summary" else 0),
                        dtype=np.int64)
    processors = LogitsProcessorList()
    if no_repeat_ngram_size and no_repeat_ngram_scope == "summary":
        processors.append(NoRepeatNGramInContinuation(no_repeat_ngram_size, input_ids.shape[1]))
        no_repeat_ngram_size = 0  # the library's own (whole-sequence) ban stays off
    with torch.no_grad():
        output = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), num_beams=num_beams,
            no_repeat_ngram_size=no_repeat_ngram_size, max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False,
            early_stopping=True, logits_processor=processors,
        )
    return output[0, input_ids.shape[1]:].cpu().numpy()


def summarize_text(model, tokenizer, article: str, max_prompt_len: int, **generation) -> str:
    ids = encode_prompt(tokenizer, article, max_prompt_len)
    return tokenization.decode(tokenizer, summarize_ids(model, tokenizer, ids, **generation))


def summarize_lines(model, tokenizer, lines, max_prompt_len: int, **generation) -> Iterator[Summary]:
    """Summaries for a TextFileDataset of NLPCC lines, through the tutorial's test pipeline."""
    pipeline = prompt_pipeline(lines, tokenizer, max_prompt_len)
    for row in pipeline.create_dict_iterator(num_epochs=1, output_numpy=True):
        new_ids = summarize_ids(model, tokenizer, row["input_ids"][0], **generation)
        yield Summary(str(row["article"][0]), str(row["summary"][0]), tokenization.decode(tokenizer, new_ids))


def write_jsonl(summaries: Iterable[Summary], path) -> list[Summary]:
    """Write as we go to a temp file, then rename: an interrupted run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    done = []
    with open(tmp, "w", encoding="utf-8") as out:
        for item in summaries:
            out.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
            done.append(item)
    tmp.replace(path)
    return done
