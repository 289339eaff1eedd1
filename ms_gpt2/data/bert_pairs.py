"""BERT's sentence-pair input, the one encoding pretraining (NSP) and fine-tuning (summary-article
matching) share: ``[CLS] A [SEP] B [SEP]``, padded with ``[PAD]`` to ``max_seq_len``;
``token_type_ids`` 0 up to and including the first ``[SEP]``, 1 after it through the second;
``attention_mask`` 1 on real tokens. A pair too long loses tokens from the end of its longer side.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the longer of A and B (its end) one token at a time until both fit in ``max_tokens``."""
    la, lb = len(a), len(b)
    while la + lb > max_tokens:
        if la >= lb:
            la -= 1
        else:
            lb -= 1
    return a[:la], b[:lb]


@dataclass(frozen=True)
class Vocabulary:
    """The ids the example builder needs, taken from a BERT tokenizer."""

    cls: int
    sep: int
    pad: int
    mask: int
    special: np.ndarray   # ids never masked nor drawn as random replacements
    ordinary: np.ndarray  # ids a random replacement is drawn from

    @classmethod
    def of(cls, tokenizer) -> "Vocabulary":
        special = np.asarray(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
        ids = np.asarray(sorted(set(tokenizer.get_vocab().values())), dtype=np.int64)
        return cls(tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id,
                   special, ids[~np.isin(ids, special)])


def encode_pair(a: np.ndarray, b: np.ndarray, vocab: Vocabulary, max_seq_len: int):
    """[CLS] A [SEP] B [SEP] [PAD]...: (input_ids, token_type_ids, attention_mask), each max_seq_len long."""
    a, b = truncate_pair(a, b, max_seq_len - 3)
    n = len(a) + len(b) + 3
    ids = np.full(max_seq_len, vocab.pad, dtype=np.int32)
    ids[:n] = np.concatenate([[vocab.cls], a, [vocab.sep], b, [vocab.sep]])
    segments = np.zeros(max_seq_len, dtype=np.int32)
    segments[len(a) + 2:n] = 1
    attention = np.zeros(max_seq_len, dtype=np.int32)
    attention[:n] = 1
    return ids, segments, attention
