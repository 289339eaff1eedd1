"""The compiled static-cache decoder gives exactly the library's greedy tokens."""
from pathlib import Path

import numpy as np
import pytest

from ms_gpt2 import runtime

runtime.ensure()

import torch  # noqa: E402
from mindnlp.transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from ms_gpt2.checkpoints import load_pretrained  # noqa: E402
from ms_gpt2.fast_decode import CompiledGreedyDecoder  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = np.load(FIXTURES / "reference_outputs.npz")


@pytest.mark.parametrize("name", ["gpt2-bpe-tiny", "gpt2-bert-tiny"])
def test_matches_the_pytorch_reference_greedy_ids(name):
    model, _ = load_pretrained(FIXTURES / name)
    decoder = CompiledGreedyDecoder.from_model(model)
    for i in range(2):
        prompt = REFERENCE[f"{name}/{i}/prompt_ids"]
        want = REFERENCE[f"{name}/{i}/greedy"][len(prompt):]
        assert decoder.greedy(prompt, len(want)) == [int(t) for t in want]


def test_matches_library_generate_and_logits_on_a_deeper_random_model():
    runtime.seed_everything(3)
    config = GPT2Config(vocab_size=300, n_positions=48, n_embd=48, n_layer=4, n_head=6, initializer_range=0.3)
    model = GPT2LMHeadModel(config).eval()
    prompt = np.random.default_rng(0).integers(0, 300, size=11)
    ids = torch.tensor(prompt[None].astype(np.int64))
    with torch.no_grad():
        library = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                                 num_beams=1, pad_token_id=0, eos_token_id=None)[0, len(prompt):].numpy()
        library_logits = model(input_ids=ids).logits[0, -1].numpy()
    decoder = CompiledGreedyDecoder.from_model(model, max_len=32)
    assert decoder.greedy(prompt, 20) == [int(t) for t in library]

    decoder.greedy(prompt[::-1], 5)  # leave another sequence's keys and values in the cache
    for position, token in enumerate(prompt):  # token by token: slot p is written before it is read
        _, logits = decoder.run(int(token), position)
    np.testing.assert_allclose(logits.asnumpy()[0], library_logits, atol=1e-4, rtol=0)


def test_stops_at_eos_and_checks_lengths():
    model, _ = load_pretrained(FIXTURES / "gpt2-bpe-tiny")
    decoder = CompiledGreedyDecoder.from_model(model)
    prompt = REFERENCE["gpt2-bpe-tiny/0/prompt_ids"]
    full = decoder.greedy(prompt, 10)
    assert decoder.greedy(prompt, 10, eos_token_id=full[3]) == full[: full.index(full[3]) + 1]
    with pytest.raises(ValueError, match="exceeds max_len"):
        decoder.greedy(prompt, 64)
    with pytest.raises(ValueError, match="exceeds the model's n_positions"):
        CompiledGreedyDecoder.from_model(model, max_len=65)
