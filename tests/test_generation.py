"""Generation details that the end-to-end test cannot isolate."""
import numpy as np

from ms_gpt2 import runtime

runtime.ensure()

import torch  # noqa: E402
from mindnlp.transformers import NoRepeatNGramLogitsProcessor  # noqa: E402

from ms_gpt2.generation import NoRepeatNGramInContinuation  # noqa: E402


def banned(processor, ids, vocab=8):
    scores = processor(torch.tensor(np.array([ids], dtype=np.int64)), torch.zeros(1, vocab))
    # mindtorch writes float32's minimum where torch writes -inf; both remove the token
    return {i for i, s in enumerate(scores[0].numpy()) if s < -1e38}


def test_summary_may_quote_a_bigram_of_its_article():
    prompt = [2, 5, 6, 3]  # [CLS] 5 6 [SEP]: the article contains the bigram (5, 6)
    assert banned(NoRepeatNGramLogitsProcessor(2), prompt + [5]) == {6}  # the tutorial's ban
    assert banned(NoRepeatNGramInContinuation(2, len(prompt)), prompt + [5]) == set()


def test_bigrams_repeated_within_the_summary_are_still_banned():
    prompt = [2, 5, 6, 3]
    assert banned(NoRepeatNGramInContinuation(2, len(prompt)), prompt + [7, 4, 7]) == {4}
