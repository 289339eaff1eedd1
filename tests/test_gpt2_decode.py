"""The compiled static-cache decoder gives exactly the library's greedy tokens."""
from pathlib import Path

import numpy as np
import pytest

from ms_gpt2.infra import runtime

runtime.ensure()

import torch  # noqa: E402
from mindnlp.transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from ms_gpt2.models.checkpoints import load_pretrained  # noqa: E402
from ms_gpt2.models.graphs.gpt2_decode import CompiledDecoder, banned_ngram_tokens, beam_search  # noqa: E402
from ms_gpt2.models.gpt2 import NoRepeatNGramInContinuation  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = np.load(FIXTURES / "reference_outputs.npz")


@pytest.mark.parametrize("name", ["gpt2-bpe-tiny", "gpt2-bert-tiny"])
def test_matches_the_pytorch_reference_greedy_ids(name):
    model, _ = load_pretrained(FIXTURES / name)
    decoder = CompiledDecoder.from_model(model)
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
    decoder = CompiledDecoder.from_model(model, max_len=32)
    assert decoder.greedy(prompt, 20) == [int(t) for t in library]

    decoder.greedy(prompt[::-1], 5)  # leave another sequence's keys and values in the cache
    for position, token in enumerate(prompt):  # token by token: slot p is written before it is read
        _, logits = decoder.run(int(token), position)
    np.testing.assert_allclose(logits.asnumpy()[0], library_logits, atol=1e-4, rtol=0)


def test_stops_at_eos_and_checks_lengths():
    model, _ = load_pretrained(FIXTURES / "gpt2-bpe-tiny")
    decoder = CompiledDecoder.from_model(model)
    prompt = REFERENCE["gpt2-bpe-tiny/0/prompt_ids"]
    full = decoder.greedy(prompt, 10)
    assert decoder.greedy(prompt, 10, eos_token_id=full[3]) == full[: full.index(full[3]) + 1]
    with pytest.raises(ValueError, match="exceeds max_len"):
        decoder.greedy(prompt, 64)
    with pytest.raises(ValueError, match="exceeds the model's n_positions"):
        CompiledDecoder.from_model(model, max_len=65)


@pytest.mark.parametrize("name", ["gpt2-bpe-tiny", "gpt2-bert-tiny"])
def test_beam_search_matches_the_pytorch_reference_beam_ids(name):
    model, _ = load_pretrained(FIXTURES / name)
    decoder = CompiledDecoder.from_model(model, batch=4)  # the reference script's 4 beams, 10 tokens
    for i in range(2):
        prompt = REFERENCE[f"{name}/{i}/prompt_ids"]
        want = REFERENCE[f"{name}/{i}/beam"][len(prompt):]
        assert beam_search(decoder, prompt, len(want)) == [int(t) for t in want]


def _library_beams(model, prompt, beams, new, eos, ngram, scope_from, early_stopping, min_new, length_penalty):
    ids = torch.tensor(prompt[None].astype(np.int64))
    processors = [NoRepeatNGramInContinuation(ngram, scope_from)] if ngram and scope_from else []
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, num_beams=beams,
                             do_sample=False, pad_token_id=0, eos_token_id=eos, early_stopping=early_stopping,
                             no_repeat_ngram_size=0 if scope_from else ngram, min_new_tokens=min_new,
                             length_penalty=length_penalty, logits_processor=processors)
    return [int(t) for t in out[0, len(prompt):].numpy()]


@pytest.fixture(scope="module")
def peaked():
    """The beam-parity cases' model and prompts, built once: a peaked random model, four prompts, and for
    each the token the library's greedy decoding puts third (the cases' "likely" eos)."""
    runtime.seed_everything(5)
    config = GPT2Config(vocab_size=40, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.6)
    model = GPT2LMHeadModel(config).eval()
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 40, size=int(rng.integers(3, 12))) for _ in range(4)]
    likely = [_library_beams(model, prompt, 1, 6, None, 0, 0, False, 0, 1.0)[2] for prompt in prompts]
    return model, prompts, likely


@pytest.mark.parametrize("beams,eos,ngram,scope,early_stopping,min_new,length_penalty", [
    (5, "likely", 2, "summary", True, 0, 1.0),     # the tutorial's summarize call
    (5, "likely", 2, "sequence", False, 0, 1.0),   # the library's own whole-sequence ban, default stopping
    (3, "likely", 0, None, "never", 4, 1.0),       # a minimum length; never stop early
    (4, "likely", 0, None, False, 0, 0.5),
    (2, None, 3, "sequence", False, 0, 1.0),
])
def test_beam_search_matches_library_generate(peaked, beams, eos, ngram, scope, early_stopping, min_new,
                                              length_penalty):
    """A peaked random model, with eos set to a token the model is about to produce, so that eos,
    n-gram bans, min length and early stops all happen (the assertions below check they did)."""
    model, prompts, likely = peaked
    decoder = CompiledDecoder.from_model(model, max_len=64, batch=beams)
    finished_early = 0
    for prompt, third in zip(prompts, likely):
        scope_from = len(prompt) if scope == "summary" else 0
        end = third if eos == "likely" else eos
        want = _library_beams(model, prompt, beams, 16, end, ngram, scope_from, early_stopping, min_new,
                              length_penalty)
        got = beam_search(decoder, prompt, 16, eos_token_id=end, no_repeat_ngram_size=ngram,
                          no_repeat_from=scope_from, early_stopping=early_stopping, min_new_tokens=min_new,
                          length_penalty=length_penalty)
        if end is not None and end in want:  # the library pads a finished beam with pad/eos after its eos
            want = want[: want.index(end) + 1]
        assert got == want, (prompt, got, want)
        finished_early += len(got) < 16
    assert eos is None or finished_early >= 2  # else this test would not exercise eos handling


def test_banned_ngram_tokens_follow_the_library_rule():
    from mindnlp.transformers import NoRepeatNGramLogitsProcessor

    rng = np.random.default_rng(0)
    for n in (1, 2, 3):
        for _ in range(20):
            seq = rng.integers(0, 6, size=int(rng.integers(0, 12)))
            scores = NoRepeatNGramLogitsProcessor(n)(torch.tensor(seq[None].astype(np.int64)), torch.zeros(1, 6))
            library = sorted(int(t) for t in np.flatnonzero(scores.numpy()[0] < -1e30))
            assert sorted(set(banned_ngram_tokens(seq, n))) == library, (n, seq)


def test_greedy_refuses_a_beam_decoder():
    model, _ = load_pretrained(FIXTURES / "gpt2-bpe-tiny")
    with pytest.raises(ValueError, match="batch-1"):
        CompiledDecoder.from_model(model, batch=3).greedy(REFERENCE["gpt2-bpe-tiny/0/prompt_ids"], 3)


def summarizers(model, tokenizer, *settings):
    """(compiled, library) Summarizers of ``model`` with ``generation.KEY=VALUE`` settings."""
    from ms_gpt2.infra.config import load_config
    from ms_gpt2.jobs.summarize import Summarizer

    config = load_config(None, [f"generation.{s}" for s in settings])
    return Summarizer(model, tokenizer, config), Summarizer(model, tokenizer, config, compiled=False)


@pytest.mark.parametrize("scope", ["summary", "sequence"])
def test_summarize_ids_compiled_equals_the_library_path(scope):
    model, tokenizer = load_pretrained(FIXTURES / "gpt2-bert-tiny")
    compiled, library = summarizers(model, tokenizer, "num_beams=5", "no_repeat_ngram_size=2", "max_new_tokens=12",
                                    f"no_repeat_ngram_scope={scope}")
    for i in range(2):
        prompt = REFERENCE[f"gpt2-bert-tiny/{i}/prompt_ids"]
        fast = compiled.summarize_ids(prompt)
        np.testing.assert_array_equal(fast, library.summarize_ids(prompt))
        assert len(fast) > 0


def test_a_models_decoders_share_one_copy_of_the_weights():
    from ms_gpt2.models.graphs.gpt2_decode import decoder_for

    runtime.seed_everything(4)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=160, n_embd=32, n_layer=2, n_head=4,
                                       initializer_range=0.3)).eval()
    prompt = np.random.default_rng(2).integers(0, 300, size=9)
    ids = torch.tensor(prompt[None].astype(np.int64))
    with torch.no_grad():
        want = [int(t) for t in model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                               do_sample=False, pad_token_id=0, eos_token_id=None)[0, 9:].numpy()]
    short, long, beams = decoder_for(model, 20), decoder_for(model, 100), decoder_for(model, 20, batch=4)
    assert (short.max_len, long.max_len) == (64, 128) and decoder_for(model, 30) is short
    for a, b in [(short, long), (short, beams)]:
        assert a.step.wte is b.step.wte and a.step.blocks[0].fc_w is b.step.blocks[0].fc_w
    assert short.greedy(prompt, 12) == want and long.greedy(prompt, 12) == want


def _tiny_model(seed, n_positions=64, **config):
    runtime.seed_everything(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=n_positions, n_embd=32, n_layer=2, n_head=4,
                                      initializer_range=0.3, **config)).eval()


def _library_greedy(model, prompt, new):
    ids = torch.tensor(np.asarray(prompt)[None].astype(np.int64))
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                             num_beams=1, pad_token_id=0, eos_token_id=None)
    return [int(t) for t in out[0, len(prompt):].numpy()]


def test_decoder_follows_weights_changed_in_place():
    """load_state_dict and an optimizer-style in-place update both change the weights under an
    already built decoder: the next decoder_for must decode with the new values."""
    from ms_gpt2.models.graphs.gpt2_decode import decoder_for

    model, other = _tiny_model(6), _tiny_model(7)
    prompt = np.random.default_rng(3).integers(0, 300, size=9)
    before = _library_greedy(model, prompt, 12)
    assert decoder_for(model, 21).greedy(prompt, 12) == before
    beams = decoder_for(model, 21, batch=3)  # built before the changes, on the same shared weights

    model.load_state_dict(other.state_dict())
    loaded = _library_greedy(model, prompt, 12)
    assert loaded != before  # else the check below proves nothing
    assert decoder_for(model, 21).greedy(prompt, 12) == loaded

    runtime.seed_everything(8)
    with torch.no_grad():  # what an optimizer step does: every parameter updated in place
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.3)
    stepped = _library_greedy(model, prompt, 12)
    assert stepped != loaded
    assert decoder_for(model, 21).greedy(prompt, 12) == stepped
    assert beam_search(beams, prompt, 6) == _library_beams(model, prompt, 3, 6, None, 0, 0, False, 0, 1.0)


def test_decoder_cache_keeps_only_the_most_recently_used_buckets():
    from ms_gpt2.models.graphs import gpt2_decode

    model = _tiny_model(6, n_positions=64 * (gpt2_decode.MAX_CACHED_DECODERS + 1))
    lengths = [64 * i + 1 for i in range(gpt2_decode.MAX_CACHED_DECODERS)]  # one bucket each
    first = {n: gpt2_decode.decoder_for(model, n) for n in lengths}
    assert gpt2_decode.decoder_for(model, lengths[0]) is first[lengths[0]]  # now the most recently used
    gpt2_decode.decoder_for(model, 64 * gpt2_decode.MAX_CACHED_DECODERS + 1)  # one bucket too many
    assert gpt2_decode.decoder_for(model, lengths[1]) is not first[lengths[1]]  # the least recently used went
    assert gpt2_decode.decoder_for(model, lengths[0]) is first[lengths[0]]
    assert len(model.__dict__["_ms_gpt2_compiled_decoders"].decoders) == gpt2_decode.MAX_CACHED_DECODERS


def test_untied_lm_head_decodes_with_its_own_weights():
    model = _tiny_model(6, tie_word_embeddings=False)
    assert model.lm_head.weight is not model.transformer.wte.weight
    prompt = np.random.default_rng(4).integers(0, 300, size=7)
    assert CompiledDecoder.from_model(model, 32).greedy(prompt, 12) == _library_greedy(model, prompt, 12)


UNIMPLEMENTED = [dict(activation_function="relu"), dict(scale_attn_by_inverse_layer_idx=True),
                 dict(reorder_and_upcast_attn=True), dict(scale_attn_weights=False)]


def _model_with(flag, vocab_size):
    runtime.seed_everything(9)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      initializer_range=0.4, **flag)).eval()


@pytest.mark.parametrize("flag", UNIMPLEMENTED)
def test_configs_the_graph_does_not_implement_fall_back_to_the_library(flag, caplog):
    from ms_gpt2.jobs.generate import generate

    _, tokenizer = load_pretrained(FIXTURES / "gpt2-bpe-tiny")
    model = _model_with(flag, len(tokenizer))
    with caplog.at_level("WARNING", logger="ms_gpt2.models.graphs.gpt2_decode"):
        fast = generate(model, tokenizer, "The world of cars", max_new_tokens=8)
    assert fast.token_ids == generate(model, tokenizer, "The world of cars", max_new_tokens=8,
                                      compiled=False).token_ids
    (name, value), = flag.items()
    assert f"does not implement {name}={value}" in caplog.text.replace("'", "")
    assert "_ms_gpt2_compiled_decoders" not in model.__dict__  # nothing was compiled

    from ms_gpt2.models.graphs.gpt2_decode import UnsupportedModel, decoder_for

    with pytest.raises(UnsupportedModel, match=name):
        decoder_for(model, 20)


def test_summaries_fall_back_to_the_library_too():
    _, tokenizer = load_pretrained(FIXTURES / "gpt2-bert-tiny")
    model = _model_with(UNIMPLEMENTED[1], len(tokenizer))
    prompt = REFERENCE["gpt2-bert-tiny/0/prompt_ids"]
    compiled, library = summarizers(model, tokenizer, "num_beams=2", "max_new_tokens=4")
    summary = compiled.summarize_ids(prompt)
    assert "_ms_gpt2_compiled_decoders" not in model.__dict__
    np.testing.assert_array_equal(summary, library.summarize_ids(prompt))
