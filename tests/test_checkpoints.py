"""Hugging Face GPT-2 checkpoints on MindSpore behave as on PyTorch (recorded references),
save/load round-trips bit-exactly, and generation options do what they say.

The fixtures and reference_outputs.npz come from scripts/make_reference_outputs.py, run with real
PyTorch 2.13 + transformers 4.56.2 (see that script to regenerate)."""
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ms_gpt2.infra import runtime

runtime.ensure()

import torch  # noqa: E402  (mindtorch)

from ms_gpt2.models.checkpoints import load_pretrained, save_pretrained  # noqa: E402
from ms_gpt2.infra.errors import UserError  # noqa: E402
from ms_gpt2.data.examples import encode_continuation  # noqa: E402
from ms_gpt2.jobs.generate import generate, next_word  # noqa: E402
from ms_gpt2.infra.errors import CheckpointError  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = np.load(FIXTURES / "reference_outputs.npz")
CASES = [(name, i) for name in ("gpt2-bpe-tiny", "gpt2-bert-tiny") for i in range(2)]
PROMPTS = {"gpt2-bpe-tiny": ["What is the fastest car in the", "The world of cars is"],
           "gpt2-bert-tiny": ["青禾市轨道交通5号线", "南屿省气象台昨日发布"]}
_loaded = {}


def loaded(name):
    if name not in _loaded:
        _loaded[name] = load_pretrained(FIXTURES / name)
    return _loaded[name]


def ref(name, i, what):
    return REFERENCE[f"{name}/{i}/{what}"]


@pytest.mark.parametrize("name,i", CASES)
def test_prompt_encoding_matches_the_reference_tokenizer(name, i):
    _, tokenizer = loaded(name)
    np.testing.assert_array_equal(encode_continuation(tokenizer, PROMPTS[name][i]), ref(name, i, "prompt_ids"))


@pytest.mark.parametrize("name,i", CASES)
def test_logits_match_pytorch(name, i):
    model, _ = loaded(name)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ref(name, i, "prompt_ids")[None])).logits[0].numpy()
    np.testing.assert_allclose(logits, ref(name, i, "logits"), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name,i", CASES)
@pytest.mark.parametrize("mode,beams,new", [("greedy", 1, 12), ("beam", 4, 10)])
def test_greedy_and_beam_token_ids_match_pytorch(name, i, mode, beams, new):
    model, _ = loaded(name)
    ids = torch.tensor(ref(name, i, "prompt_ids")[None])
    with torch.no_grad():  # the same call the reference script made
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, num_beams=beams,
                             pad_token_id=model.config.pad_token_id, eos_token_id=None, do_sample=False)
    np.testing.assert_array_equal(out[0].numpy(), ref(name, i, mode))


@pytest.mark.parametrize("name,i", CASES)
def test_our_generate_wrapper_gives_the_reference_greedy_continuation(name, i):
    model, tokenizer = loaded(name)
    result = generate(model, tokenizer, PROMPTS[name][i], max_new_tokens=12)
    want = list(ref(name, i, "greedy")[len(ref(name, i, "prompt_ids")):])
    eos = model.generation_config.eos_token_id
    if eos in want:  # ours stops at the end token, the reference ran the full length
        want = want[: want.index(eos) + 1]
    assert result.token_ids == want


@pytest.mark.parametrize("name", ["gpt2-bpe-tiny", "gpt2-bert-tiny"])
def test_save_load_round_trip_is_bit_exact(name, tmp_path):
    model, tokenizer = loaded(name)
    save_pretrained(model, tokenizer, tmp_path / "copy")
    again, tokenizer2 = load_pretrained(tmp_path / "copy")
    first = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    second = {k: v.detach().numpy() for k, v in again.state_dict().items()}
    assert first.keys() == second.keys()
    for key in first:
        assert first[key].dtype == second[key].dtype and np.array_equal(first[key], second[key]), key
    text = PROMPTS[name][0]
    np.testing.assert_array_equal(encode_continuation(tokenizer, text), encode_continuation(tokenizer2, text))
    saved = json.loads((tmp_path / "copy" / "config.json").read_text())
    original = json.loads((FIXTURES / name / "config.json").read_text())
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "eos_token_id"):
        assert saved[key] == original[key]


def test_next_word_appends_the_most_likely_token():
    model, tokenizer = loaded("gpt2-bpe-tiny")
    text = PROMPTS["gpt2-bpe-tiny"][0]
    result = next_word(model, tokenizer, text, top_k=5)
    logits = ref("gpt2-bpe-tiny", 0, "logits")[-1].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    best = int(np.argmax(probs))
    assert result.text == tokenizer.decode([*ref("gpt2-bpe-tiny", 0, "prompt_ids"), best])
    assert result.text.startswith(text)
    assert result.candidates[0][0] == tokenizer.decode([best])
    assert result.candidates[0][1] == pytest.approx(probs[best], abs=1e-5)
    assert [p for _, p in result.candidates] == sorted((p for _, p in result.candidates), reverse=True)


def test_library_generation_uses_the_kv_cache():
    model, tokenizer = loaded("gpt2-bpe-tiny")
    lengths = []
    handle = model.transformer.wte.register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[1]))
    try:
        generate(model, tokenizer, PROMPTS["gpt2-bpe-tiny"][0], max_new_tokens=6, compiled=False)
    finally:
        handle.remove()
    prompt = len(ref("gpt2-bpe-tiny", 0, "prompt_ids"))
    assert lengths[0] == prompt and set(lengths[1:]) == {1}, lengths  # one new position per step


def test_compiled_greedy_prefills_once_then_steps_one_position(monkeypatch):
    from ms_gpt2.models.graphs import gpt2_decode

    model, tokenizer = loaded("gpt2-bpe-tiny")
    calls = []
    real_run, real_prefill = gpt2_decode.CompiledDecoder.run, gpt2_decode.CompiledDecoder.run_prefill
    monkeypatch.setattr(gpt2_decode.CompiledDecoder, "run",
                        lambda self, token, position, *caches: calls.append(("step", position)) or real_run(self, token, position, *caches))
    monkeypatch.setattr(gpt2_decode.CompiledDecoder, "run_prefill",
                        lambda self, prompt: calls.append(("prefill", len(prompt))) or real_prefill(self, prompt))
    result = generate(model, tokenizer, PROMPTS["gpt2-bpe-tiny"][0], max_new_tokens=6)
    prompt = len(ref("gpt2-bpe-tiny", 0, "prompt_ids"))
    assert calls == [("prefill", prompt)] + [("step", prompt + i) for i in range(5)]
    assert result.token_ids == generate(model, tokenizer, PROMPTS["gpt2-bpe-tiny"][0], max_new_tokens=6,
                                        compiled=False).token_ids


def test_sampling_repeats_with_a_seed_and_varies_without_one():
    model, tokenizer = loaded("gpt2-bert-tiny")
    kwargs = dict(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=40, top_p=0.95)
    a = generate(model, tokenizer, "青禾市", seed=7, **kwargs).token_ids
    assert generate(model, tokenizer, "青禾市", seed=7, **kwargs).token_ids == a
    others = {tuple(generate(model, tokenizer, "青禾市", seed=s, **kwargs).token_ids) for s in (8, 9, 10)}
    assert others - {tuple(a)}
    # seed=None: no reseeding, each call draws on from the process's random stream
    unseeded = [generate(model, tokenizer, "青禾市", **kwargs).token_ids for _ in range(3)]
    assert all(unseeded) and len({tuple(u) for u in unseeded}) > 1


def test_streaming_prints_exactly_the_continuation():
    model, tokenizer = loaded("gpt2-bert-tiny")
    out = io.StringIO()
    result = generate(model, tokenizer, "南屿省", max_new_tokens=10, stream=out)
    assert out.getvalue() == result.text + "\n"
    assert " " not in result.text  # no spaces between Chinese characters


def test_repetition_penalty_changes_greedy_output():
    model, tokenizer = loaded("gpt2-bpe-tiny")
    plain = generate(model, tokenizer, "The world", max_new_tokens=12).token_ids
    penalised = generate(model, tokenizer, "The world", max_new_tokens=12, repetition_penalty=5.0).token_ids
    assert plain != penalised
    assert len(set(penalised)) >= len(set(plain))


def test_clear_errors(tmp_path):
    model, tokenizer = loaded("gpt2-bpe-tiny")
    with pytest.raises(UserError, match="longer than the model's n_positions=64"):
        generate(model, tokenizer, "car " * 80, max_new_tokens=1)
    with pytest.raises(UserError, match="lower --max-new-tokens"):
        generate(model, tokenizer, "The world", max_new_tokens=100)
    with pytest.raises(UserError, match="prompt is empty"):
        next_word(model, tokenizer, "  ")
    with pytest.raises(CheckpointError, match="no such model directory"):
        load_pretrained(tmp_path / "absent")

    broken = tmp_path / "broken"
    shutil.copytree(FIXTURES / "gpt2-bpe-tiny", broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=f"{broken}: cannot load"):
        load_pretrained(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_pretrained(broken)

    bigger = tmp_path / "bigger"
    shutil.copytree(FIXTURES / "gpt2-bert-tiny", bigger)
    vocab = (bigger / "vocab.txt").read_text(encoding="utf-8")
    (bigger / "vocab.txt").write_text(vocab + "".join(f"extra{i}\n" for i in range(50)), encoding="utf-8")
    with pytest.raises(CheckpointError, match="tokenizer has .* tokens but the model's vocab_size is"):
        load_pretrained(bigger)


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_a_save_cut_off_mid_swap_leaves_a_loadable_model(tmp_path, monkeypatch, exchange):
    """Crash in the middle of replacing model/: right after the RENAME_EXCHANGE swap, before the old
    copy is removed, or (without the exchange) between the two renames. A complete model is there
    to load, by load_pretrained and by the summarize/evaluate loader, and the next save cleans up."""
    import os

    from ms_gpt2.infra import rundir
    from ms_gpt2.jobs.summarize import Summarizer

    model, tokenizer = loaded("gpt2-bert-tiny")
    target = save_pretrained(model, tokenizer, tmp_path / "model")
    first = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    changed, _ = load_pretrained(FIXTURES / "gpt2-bert-tiny")
    with torch.no_grad():
        changed.transformer.wte.weight.add_(1.0)

    crashes = []
    if exchange:  # the crash goes on the path that runs: the swap, then a kill before the clean-up
        real_exchange = rundir._exchange

        def exchange_then_crash(a, b):
            if not real_exchange(a, b):
                pytest.skip(f"{tmp_path}'s filesystem cannot swap directories (RENAME_EXCHANGE)")
            crashes.append(b)
            raise OSError("simulated crash")

        monkeypatch.setattr(rundir, "_exchange", exchange_then_crash)
    else:  # a platform without renameat2(RENAME_EXCHANGE): os.replace fails at its 2nd call
        monkeypatch.setattr(rundir, "_exchange", lambda a, b: False)
        real, calls = os.replace, []

        def crash_at_second_call(src, dst):
            calls.append(dst)
            if len(calls) == 2:
                crashes.append(dst)
                raise OSError("simulated crash")
            return real(src, dst)

        monkeypatch.setattr(os, "replace", crash_at_second_call)
    with pytest.raises(OSError, match="simulated crash"):
        save_pretrained(changed, tokenizer, target)
    monkeypatch.undo()
    assert crashes  # the crash really happened, on the path this variant names

    want = first if not exchange else {k: v.detach().numpy() for k, v in changed.state_dict().items()}
    for load in (lambda path: Summarizer.from_pretrained(path).model, lambda path: load_pretrained(path)[0]):
        again = load(target)
        got = {k: v.detach().numpy() for k, v in again.state_dict().items()}
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    save_pretrained(model, tokenizer, target)  # the next save replaces it and leaves nothing beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    again, _ = load_pretrained(target)
    np.testing.assert_array_equal(again.transformer.wte.weight.detach().numpy(), first["transformer.wte.weight"])
