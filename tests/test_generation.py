"""Generation details that the end-to-end test cannot isolate."""
from pathlib import Path

import numpy as np
import pytest

from ms_gpt2.infra import runtime

runtime.ensure()

import torch  # noqa: E402
from mindnlp.transformers import NoRepeatNGramLogitsProcessor  # noqa: E402

from ms_gpt2.models.gpt2 import NoRepeatNGramInContinuation  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


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


def test_beam_search_with_a_stream_prints_the_final_text():
    import io

    from ms_gpt2.models.checkpoints import load_pretrained
    from ms_gpt2.jobs.generate import generate

    model, tokenizer = load_pretrained(FIXTURES / "gpt2-bert-tiny")
    out = io.StringIO()
    options = dict(max_new_tokens=8, num_beams=5, no_repeat_ngram_size=2)
    streamed = generate(model, tokenizer, "青禾市", stream=out, echo_prompt=True, **options)
    assert out.getvalue() == "青禾市" + streamed.text + "\n" and streamed.text
    assert streamed.token_ids == generate(model, tokenizer, "青禾市", **options).token_ids


@pytest.mark.parametrize("fixture,prompt", [("gpt2-bert-tiny", "青禾市"), ("gpt2-bpe-tiny", "The world of cars")])
def test_generate_command_with_beam_search_streams(fixture, prompt, capsys):
    """The README's `generate --num-beams 5 --no-repeat-ngram-size 2`, streaming as by default (through
    ``cli.main``, what ``python -m ms_gpt2`` runs; test_readme_commands runs the real process)."""
    from ms_gpt2.cli import main
    from ms_gpt2.models.checkpoints import load_pretrained
    from ms_gpt2.jobs.generate import generate

    args = ["generate", "--model", str(FIXTURES / fixture), "--prompt", prompt,
            "--num-beams", "5", "--no-repeat-ngram-size", "2", "--max-new-tokens", "8", "--device", "cpu"]
    assert main(args) == 0
    streamed = capsys.readouterr().out
    model, tokenizer = load_pretrained(FIXTURES / fixture)
    want = generate(model, tokenizer, prompt, max_new_tokens=8, num_beams=5, no_repeat_ngram_size=2)
    assert want.text and streamed == prompt + want.text + "\n"


def test_one_length_check_for_summaries_and_continuations():
    from ms_gpt2.models.checkpoints import load_pretrained
    from ms_gpt2.infra.config import load_config
    from ms_gpt2.infra.errors import UserError
    from ms_gpt2.data.examples import encode_continuation, encode_prompt
    from ms_gpt2.jobs.summarize import Summarizer

    model, tokenizer = load_pretrained(FIXTURES / "gpt2-bert-tiny")
    text = "青禾市轨道交通5号线"
    continuation = encode_continuation(tokenizer, text)
    np.testing.assert_array_equal(encode_prompt(tokenizer, text), [*continuation, tokenizer.sep_token_id])
    with pytest.raises(UserError, match="exceeds the model's n_positions=64; lower generation.max_new_tokens to 52"):
        Summarizer(model, tokenizer, load_config(None, ["generation.max_new_tokens=60"])).summarize_text(text)
