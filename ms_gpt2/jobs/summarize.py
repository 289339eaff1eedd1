"""Summaries with beam search, the tutorial's test loop with its bugs fixed.

The tutorial decodes the whole output (article included) and never stops at [SEP] (its
``eos_token_id = config.sep_token_id`` reads an attribute GPT2Config does not have). Here
generation stops at [SEP], pads with [PAD], only the new tokens are decoded, and decoding drops
the spaces WordPiece puts between Chinese characters.

``no_repeat_ngram_size=2`` needs care with a decoder-only model: Hugging Face applies it to the
whole sequence, *prompt included*, so every bigram of the article is banned from the summary and
a summary can never quote its article ("梅岭马拉松" becomes "梅马马松"). By default the ban covers the
generated tokens only (``no_repeat_ngram_scope: summary``); ``sequence`` is the tutorial's.

:class:`Summarizer` is built once from a model directory (model, tokenizer, the run's settings)
and serves every summary of a job: ``summarize``, ``evaluate`` and the demo (:mod:`ms_gpt2.jobs.tasks`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ms_gpt2.infra import runtime

runtime.ensure()

import numpy as np  # noqa: E402
import torch  # noqa: E402  (mindtorch)
from mindnlp.transformers import LogitsProcessorList  # noqa: E402

from ms_gpt2.data import tokenization  # noqa: E402
from ms_gpt2.models.checkpoints import load_model_dir  # noqa: E402
from ms_gpt2.infra.config import load_config  # noqa: E402
from ms_gpt2.infra.errors import UserError  # noqa: E402
from ms_gpt2.data.examples import encode_prompt, prompt_pipeline  # noqa: E402
from ms_gpt2.models.graphs.gpt2_decode import beam_search, decoder_or_none  # noqa: E402
from ms_gpt2.models.gpt2 import NGRAM_SCOPES, GPT2ForSummarization, NoRepeatNGramInContinuation, check_length  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class Summary:
    article: str
    reference: str | None
    summary: str


class Summarizer:
    """A model made ready to summarize, built once and then used for every article, as Hugging
    Face's ``pipeline()`` holds its model: the model and its tokenizer, the run's settings
    (``config``), and what they fix for every summary: the prompt length and the beam search.

    Decoding runs on the model's compiled decoders (:func:`ms_gpt2.models.graphs.gpt2_decode.decoder_for` keeps
    them on the model, one per length bucket: a short article's beams attend over and reorder a
    short cache), or on Hugging Face ``generate`` with ``compiled=False`` or for a model config the
    compiled graph does not implement (logged once)."""

    def __init__(self, model, tokenizer, config: dict | None = None, model_dir=None, compiled: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.config = config if config is not None else load_config()
        self.model_dir = Path(model_dir) if model_dir is not None else None  # where it was loaded from, if it was
        self.compiled = compiled
        d, g = self.config["data"], self.config["generation"]
        if d["max_summary_len"] >= d["max_seq_len"]:
            raise UserError(f"data.max_summary_len={d['max_summary_len']} leaves no room in max_seq_len={d['max_seq_len']}")
        self.max_prompt_len = d["max_seq_len"] - d["max_summary_len"]  # [CLS] article [SEP], the article cut to fit
        if g["no_repeat_ngram_scope"] not in NGRAM_SCOPES:
            raise UserError(f"generation.no_repeat_ngram_scope must be one of {NGRAM_SCOPES}, "
                            f"got {g['no_repeat_ngram_scope']!r}")
        self.num_beams, self.max_new_tokens = g["num_beams"], g["max_new_tokens"]
        self.no_repeat_ngram_size, self.no_repeat_ngram_scope = g["no_repeat_ngram_size"], g["no_repeat_ngram_scope"]

    @classmethod
    def from_pretrained(cls, model_dir, config=None, overrides=()) -> "Summarizer":
        """From a directory written by ``ms-gpt2 train`` (its ``model/``, a checkpoint, or the
        training output directory itself), or any GPT-2 with a BERT ``vocab.txt``. ``config`` and
        ``overrides``: see :func:`~ms_gpt2.models.checkpoints.run_settings`; the settings are read
        before the model is loaded."""
        loaded = load_model_dir(model_dir, GPT2ForSummarization, bert_only=True, config=config, overrides=overrides)
        return cls(loaded.model, loaded.tokenizer, loaded.settings, loaded.path)

    def summarize_ids(self, prompt_ids: np.ndarray) -> np.ndarray:
        """Beam-search continuation of ``[CLS] article [SEP]`` (1-D ids); returns only the new ids.

        The compiled path (:func:`ms_gpt2.models.graphs.gpt2_decode.beam_search`, several times faster on CPU)
        and Hugging Face ``generate`` give the same tokens; tests check it."""
        prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)                     # (T,)
        check_length(self.model, len(prompt), self.max_new_tokens, option="generation.max_new_tokens")
        decoder = None
        if self.compiled:  # the model's decoder for this length bucket, one row per beam
            decoder = decoder_or_none(self.model, len(prompt) + self.max_new_tokens, batch=self.num_beams)
        eos = self.tokenizer.sep_token_id
        if decoder is not None:
            no_repeat_from = len(prompt) if self.no_repeat_ngram_scope == "summary" else 0
            return np.array(beam_search(decoder, prompt, self.max_new_tokens, eos_token_id=eos,
                                        no_repeat_ngram_size=self.no_repeat_ngram_size, early_stopping=True,
                                        no_repeat_from=no_repeat_from), dtype=np.int64)
        input_ids = torch.tensor(prompt.reshape(1, -1)).to(self.model.device)              # (1, T)
        processors, no_repeat_ngram_size = LogitsProcessorList(), self.no_repeat_ngram_size
        if no_repeat_ngram_size and self.no_repeat_ngram_scope == "summary":
            processors.append(NoRepeatNGramInContinuation(no_repeat_ngram_size, len(prompt)))
            no_repeat_ngram_size = 0  # the library's own (whole-sequence) ban stays off
        with torch.no_grad():
            output = self.model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), num_beams=self.num_beams,
                no_repeat_ngram_size=no_repeat_ngram_size, max_new_tokens=self.max_new_tokens,
                eos_token_id=eos, pad_token_id=self.tokenizer.pad_token_id, do_sample=False,
                early_stopping=True, logits_processor=processors,
            )                                                                                  # (1, T + new)
        return output[0, len(prompt):].cpu().numpy()

    def summarize_text(self, article: str) -> str:
        ids = encode_prompt(self.tokenizer, article, self.max_prompt_len)
        return tokenization.decode(self.tokenizer, self.summarize_ids(ids))

    def summarize_lines(self, lines) -> Iterator[Summary]:
        """Summaries for a TextFileDataset of NLPCC lines, through the tutorial's test pipeline."""
        pipeline = prompt_pipeline(lines, self.tokenizer, self.max_prompt_len)
        for row in pipeline.create_dict_iterator(num_epochs=1, output_numpy=True):   # batches of 1
            new_ids = self.summarize_ids(row["input_ids"][0])
            yield Summary(str(row["article"][0]), str(row["summary"][0]), tokenization.decode(self.tokenizer, new_ids))


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
