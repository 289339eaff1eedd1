"""Text generation with any GPT-2: next-word prediction, greedy / beam / sampled continuations.

Everything goes through Hugging Face's ``generate`` (on MindSpore via mindnlp), which keeps a KV
cache: each new token costs one position of compute, not a re-run of the prefix. This module
adds what a user of a bare checkpoint needs around it: prompt encoding for both vocabulary
families (:func:`ms_gpt2.data.examples.encode_continuation`), length checks against ``n_positions``
(:func:`ms_gpt2.models.gpt2.check_length`), reproducible sampling (``seed``), and streaming
of text as tokens arrive.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ms_gpt2.infra import runtime

runtime.ensure()

import numpy as np  # noqa: E402
import torch  # noqa: E402  (mindtorch)
from transformers.generation.streamers import BaseStreamer  # noqa: E402

from ms_gpt2.data import tokenization  # noqa: E402
from ms_gpt2.data.examples import encode_continuation  # noqa: E402
from ms_gpt2.data.tokenization import is_bert_vocabulary  # noqa: E402
from ms_gpt2.infra.errors import UserError  # noqa: E402
from ms_gpt2.models.gpt2 import check_length  # noqa: E402


def decode(tokenizer, ids) -> str:
    ids = [int(i) for i in ids]
    if is_bert_vocabulary(tokenizer):
        return tokenization.decode(tokenizer, ids)
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _tensor(ids, model):
    return torch.tensor(np.asarray(ids, dtype=np.int64).reshape(1, -1)).to(model.device)


@dataclass
class NextWord:
    text: str  # the prompt with the most likely token appended
    candidates: list[tuple[str, float]] = field(default_factory=list)  # (token, probability), best first


def next_word(model, tokenizer, text: str, top_k: int = 10) -> NextWord:
    """The PyTorch-Transformers next-word example: score the prompt, take the most likely token."""
    ids = encode_continuation(tokenizer, text)
    check_length(model, len(ids))
    with torch.no_grad():
        logits = model(input_ids=_tensor(ids, model)).logits[0, -1].float().cpu().numpy().astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    best = np.argsort(-probs, kind="stable")[:top_k]
    candidates = [(tokenizer.decode([int(i)]), float(probs[i])) for i in best]
    return NextWord(decode(tokenizer, [*ids, int(best[0])]), candidates)


def _uses_plain_greedy(do_sample, num_beams, repetition_penalty, no_repeat_ngram_size) -> bool:
    return not do_sample and num_beams == 1 and repetition_penalty == 1.0 and not no_repeat_ngram_size


class TextPrinter(BaseStreamer):
    """Streams decoded text to a file as tokens arrive (the prompt is not repeated).

    Decodes the whole continuation each time and writes what is new, so multi-byte characters
    split across BPE tokens and the space clean-up of BERT vocabularies come out right.
    """

    def __init__(self, tokenizer, out=None):
        self.tokenizer, self.out = tokenizer, out or sys.stdout
        self.ids: list[int] = []
        self.printed = ""
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        values = value.cpu().numpy() if hasattr(value, "cpu") else value
        self.ids.extend(int(i) for i in np.asarray(values).reshape(-1))
        text = decode(self.tokenizer, self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.printed):
            return  # an incomplete character, or a clean-up that rewrote the tail: wait
        self.out.write(text[len(self.printed):])
        self.out.flush()
        self.printed = text

    def end(self):
        text = decode(self.tokenizer, self.ids)
        if text.startswith(self.printed):
            self.out.write(text[len(self.printed):])
        self.out.write("\n")
        self.out.flush()


@dataclass
class Generated:
    prompt: str
    text: str  # the continuation only
    token_ids: list[int]  # the continuation's ids


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 50, do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, num_beams: int = 1,
             repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0, seed: int | None = None,
             stream=None, echo_prompt: bool = False, compiled: bool = True) -> Generated:
    """Continue ``prompt``. Greedy by default; ``num_beams`` > 1 for beam search; ``do_sample``
    with ``temperature``/``top_k``/``top_p`` for sampling (``seed`` makes it repeat). Stops at
    the model's end token. ``stream``: a file to print text to as it is generated (after the
    prompt itself when ``echo_prompt``).

    Plain greedy decoding runs on the compiled static-cache decoder (:mod:`ms_gpt2.models.graphs.gpt2_decode`,
    same tokens, several times faster on CPU) unless ``compiled=False`` or the model's config is
    one it does not implement (logged); beam search, sampling and penalties go through Hugging
    Face ``generate``. Beam search cannot stream (a beam's text can still be overtaken), so with
    ``stream`` its final text is printed once it is known."""
    ids = encode_continuation(tokenizer, prompt)
    check_length(model, len(ids), max_new_tokens)
    if do_sample and num_beams > 1:
        raise UserError("choose sampling or beam search, not both")
    if temperature <= 0 or not 0 < top_p <= 1 or top_k < 0 or repetition_penalty <= 0:
        raise UserError("need temperature > 0, 0 < top_p <= 1, top_k >= 0, repetition_penalty > 0")
    eos = model.generation_config.eos_token_id
    if eos is None and is_bert_vocabulary(tokenizer):
        eos = tokenizer.sep_token_id
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else eos
    if seed is not None:
        runtime.seed_everything(seed)
    if stream is not None and echo_prompt:
        stream.write(prompt)
    decoder = None
    if compiled and _uses_plain_greedy(do_sample, num_beams, repetition_penalty, no_repeat_ngram_size):
        from ms_gpt2.models.graphs.gpt2_decode import decoder_or_none

        decoder = decoder_or_none(model, len(ids) + max_new_tokens)
    if decoder is not None:
        printer = TextPrinter(tokenizer, stream) if stream is not None else None
        if printer:
            printer.put(None)  # the prompt: already echoed (or not wanted)
        new = decoder.greedy(ids, max_new_tokens, eos, on_token=(lambda t: printer.put(np.array([t]))) if printer else None)
        if printer:
            printer.end()
        return Generated(prompt, decode(tokenizer, new), new)
    input_ids = _tensor(ids, model)
    options = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample,
                   repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                   eos_token_id=eos, pad_token_id=pad, use_cache=True)
    if do_sample:
        options.update(temperature=temperature, top_k=top_k, top_p=top_p)
    else:  # the checkpoint's generation_config may carry sampling settings; greedy/beam ignore them
        options.update(temperature=None, top_k=None, top_p=None)
    streams_tokens = stream is not None and num_beams == 1  # generate() refuses a streamer with beams
    with torch.no_grad():
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                streamer=TextPrinter(tokenizer, stream) if streams_tokens else None,
                                **options)
    new = [int(i) for i in output[0, len(ids):].cpu().numpy()]
    if eos is not None and eos in new:
        new = new[: new.index(eos) + 1]
    if stream is not None and not streams_tokens:  # beam search: the winning text, once known
        printer = TextPrinter(tokenizer, stream)
        printer.put(None)
        printer.put(np.asarray(new, dtype=np.int64))
        printer.end()
    return Generated(prompt, decode(tokenizer, new), new)
