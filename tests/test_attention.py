"""The hand-derived attention equals mindnlp's GPT2Attention, and has the properties it must."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ms_gpt2.infra import runtime

runtime.ensure()

import mindspore  # noqa: E402
from mindnlp.transformers import GPT2Config, GPT2LMHeadModel, GPT2Model  # noqa: E402

from ms_gpt2.models import attention  # noqa: E402
from ms_gpt2.models.attention import MaskedSelfAttention, masked_self_attention  # noqa: E402
from ms_gpt2.models.attention_check import capture_library_attention, hand_derived_from, relative_difference  # noqa: E402

# Max |library - ours| / max |library output|. At the default init the output is ~1.5e-2, so an
# absolute 1e-5 would let through mistakes worth 1e-4; relatively, float32 agreement is below 1e-6
# and each mistake below is over 1e-3 (test_comparison_catches_a_perturbed_derivation).
REL_TOL = 1e-5
_models = {}


def library_model(n_head, n_embd=32, n_layer=2, impl=None, lm_head=False):
    key = (n_head, n_embd, n_layer, impl, lm_head)
    if key not in _models:
        config = GPT2Config(vocab_size=97, n_positions=32, n_embd=n_embd, n_layer=n_layer, n_head=n_head)
        if impl:
            config._attn_implementation = impl
        _models[key] = ((GPT2LMHeadModel if lm_head else GPT2Model)(config)).eval()
    return _models[key]


def padding_mask(batch, seq_len, side, rng):
    mask = np.ones((batch, seq_len), dtype=np.int64)
    for b in range(1, batch):  # row 0 stays unpadded, the others lose a random tail/head
        n_pad = int(rng.integers(1, seq_len)) if seq_len > 1 else 0
        if side == "right":
            mask[b, seq_len - n_pad:] = 0
        else:
            mask[b, :n_pad] = 0
    return mask


@pytest.mark.parametrize("n_head", [1, 2, 4])
@pytest.mark.parametrize("batch,seq_len", [(1, 1), (1, 10), (3, 7), (2, 32)])
@pytest.mark.parametrize("padding", [None, "right", "left"])
def test_matches_library_attention(n_head, batch, seq_len, padding):
    rng = np.random.default_rng(batch * 100 + seq_len * 10 + n_head)
    model = library_model(n_head)
    ids = rng.integers(0, 97, size=(batch, seq_len))
    mask = None if padding is None else padding_mask(batch, seq_len, padding, rng)
    assert relative_difference(model, ids, mask, layer=1) < REL_TOL


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_matches_each_library_attention_implementation_inside_lm_head_model(impl):
    rng = np.random.default_rng(7)
    model = library_model(4, n_embd=64, impl=impl, lm_head=True)
    ids = rng.integers(0, 97, size=(2, 12))
    mask = padding_mask(2, 12, "right", rng)
    assert relative_difference(model, ids, mask, layer=0) < REL_TOL


def sqrt_c_scaling(real):
    """The classic slip: scores divided by sqrt(C) = sqrt(n_head * head_dim), not sqrt(head_dim)."""
    def scaled_masked_attention(q, k, v, keep, trace=None, fill_value=None):
        n_head = q.shape[1]  # (q / sqrt(n_head)) @ k^T / sqrt(hd) = q @ k^T / sqrt(C)
        return real(attention.ops.mul(q, 1.0 / n_head ** 0.5), k, v, keep, trace, fill_value)
    return scaled_masked_attention


@pytest.mark.parametrize("weight_scale", [1, 20])
@pytest.mark.parametrize("perturbation", ["sqrt_C_scaling", "no_causal_mask", "no_scaling", "no_padding_mask"])
def test_comparison_catches_a_perturbed_derivation(perturbation, weight_scale, monkeypatch):
    """If a step of the derivation is wrong or dropped, the parity check above fails, by a wide
    margin, at the default init (weight_scale 1: near-uniform softmax) and where scores are O(1)."""
    if perturbation == "sqrt_C_scaling":
        monkeypatch.setattr(attention, "scaled_masked_attention", sqrt_c_scaling(attention.scaled_masked_attention))
    elif perturbation == "no_causal_mask":
        monkeypatch.setattr(attention, "causal_mask_buffer",
                            lambda n: mindspore.Tensor(np.ones((1, 1, n, n), dtype=np.bool_)))
    elif perturbation == "no_scaling":
        monkeypatch.setattr(attention.ops, "div", lambda a, b: a)
    else:
        real_logical_and = attention.ops.logical_and
        monkeypatch.setattr(attention.ops, "logical_and", lambda keep, padding: real_logical_and(keep, keep))
    rng = np.random.default_rng(11)
    model = library_model(2)  # two heads: sqrt(C) and sqrt(head_dim) differ by sqrt(2)
    ids = rng.integers(0, 97, size=(2, 9))
    mask = padding_mask(2, 9, "right", rng)
    model.h[1].attn.c_attn.weight.data.mul_(weight_scale)
    try:
        assert relative_difference(model, ids, mask, layer=1) > 10 * REL_TOL
    finally:
        model.h[1].attn.c_attn.weight.data.div_(weight_scale)


def _random_cell(n_embd=24, n_head=3, seed=0):
    return MaskedSelfAttention(n_embd, n_head, n_positions=16, seed=seed)


@settings(max_examples=25, deadline=None)
@given(seq_len=st.integers(2, 12), t=st.integers(0, 10), seed=st.integers(0, 2**16))
def test_causality_output_at_t_ignores_later_tokens(seq_len, t, seed):
    t = t % (seq_len - 1)  # a position with at least one later token
    rng = np.random.default_rng(seed)
    cell = _random_cell(seed=seed)
    x = rng.normal(size=(2, seq_len, 24)).astype(np.float32)
    changed = x.copy()
    changed[:, t + 1:] = rng.normal(size=changed[:, t + 1:].shape) * 5
    a = cell(mindspore.Tensor(x)).asnumpy()
    b = cell(mindspore.Tensor(changed)).asnumpy()
    np.testing.assert_allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-6)
    assert np.abs(a[:, t + 1:] - b[:, t + 1:]).max() > 1e-4  # later positions do see the change


def test_attention_weights_are_causal_distributions():
    rng = np.random.default_rng(5)
    cell = _random_cell()
    x = mindspore.Tensor(rng.normal(size=(3, 8, 24)).astype(np.float32))
    mask = np.ones((3, 8), dtype=np.int64)
    mask[1, 5:] = 0
    _, w = cell(x, attention_mask=mindspore.Tensor(mask), return_weights=True)
    w = w.asnumpy()
    assert w.shape == (3, 3, 8, 8)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    assert np.all(w[..., np.triu_indices(8, 1)[0], np.triu_indices(8, 1)[1]] == 0)
    assert np.all(w[1, :, :, 5:] == 0)  # nobody attends to padding


def test_function_and_cell_agree():
    cell = _random_cell(seed=3)
    x = mindspore.Tensor(np.random.default_rng(3).normal(size=(2, 6, 24)).astype(np.float32))
    fn_out = masked_self_attention(x, cell.c_attn_weight, cell.c_attn_bias, cell.c_proj_weight,
                                   cell.c_proj_bias, n_head=3)
    np.testing.assert_array_equal(fn_out.asnumpy(), cell(x).asnumpy())


def test_library_weights_load_in_gpt2_layout():
    model = library_model(4)
    cell = hand_derived_from(model, layer=0)
    assert tuple(cell.c_attn_weight.shape) == (32, 96)  # Conv1D (nx, nf), not Linear's (out, in)
    np.testing.assert_array_equal(cell.c_attn_weight.asnumpy(), model.h[0].attn.c_attn.weight.detach().numpy())


def test_rejects_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="divisible"):
        MaskedSelfAttention(30, 4)
