"""The compiled BERT pretraining graph (ms_gpt2.models.graphs.bert) against Hugging Face's eager
BertForPreTraining on the same weights: the loss, the gradient of every weight (tied MLM decoder
included), dropout with given keep-masks at Hugging Face's sites, and the configs it refuses.

Tolerances: losses within 1e-5 relative; each weight's gradient within 1e-5 of that tensor's
largest eager gradient entry (max |graph - eager| <= 1e-5 * max |eager|). The attention key
biases are the exception: their exact gradient is 0 (adding q . b_k to every score of a row does
not change its softmax), so both sides hold float noise (~1e-10) and are checked to be below 1e-8.
"""
import numpy as np
import pytest

from ms_gpt2.infra import runtime

runtime.ensure()

import mindspore  # noqa: E402
import torch  # noqa: E402  (mindtorch)
from mindspore import Tensor, nn, ops  # noqa: E402
from mindnlp.transformers import BertConfig, BertForPreTraining  # noqa: E402

from ms_gpt2.models.graphs.bert import (TIED, BertGraphConfig, BertPreTrainingLoss, dropout_sites,  # noqa: E402
                                        hf_parameter_names, weights_from_model)

LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-5          # of the tensor's max |eager gradient|
ZERO_GRAD_ATOL = 1e-8     # key biases: exactly 0 in exact arithmetic
B, T, V = 3, 16, 100


def _config(hidden_dropout=0.0, attention_dropout=0.0, attn="sdpa", **overrides):
    return BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=32, type_vocab_size=2,
                      hidden_dropout_prob=hidden_dropout, attention_probs_dropout_prob=attention_dropout,
                      attn_implementation=attn, **overrides)


def _model(config):
    """A BertForPreTraining with every weight moved off its init (biases 0, LayerNorm 1 would hide
    a swapped or missing one), the same weights for any config of the same sizes."""
    runtime.seed_everything(0)
    model = BertForPreTraining(config)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(p + torch.tensor(rng.normal(0.0, 0.05, tuple(p.shape)).astype(np.float32)))
    return model


def _batch():
    """3 rows of 16: padding in two of them, both token types, ~30% of the real tokens MLM-labelled
    (the rest -100), NSP labels 0, 1 and -100."""
    rng = np.random.default_rng(1)
    attention_mask = np.ones((B, T), np.int64)
    attention_mask[1, 11:] = 0
    attention_mask[2, 6:] = 0
    input_ids = np.where(attention_mask == 1, rng.integers(1, V, (B, T)), 0)
    token_type_ids = np.where((np.arange(T) >= 8) & (attention_mask == 1), 1, 0)
    labelled = (rng.random((B, T)) < 0.3) & (attention_mask == 1)
    mlm_labels = np.where(labelled, rng.integers(0, V, (B, T)), -100)
    nsp_labels = np.array([0, 1, -100])
    assert labelled.sum() >= 5 and token_type_ids.sum() > 0
    return dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                labels=mlm_labels, next_sentence_label=nsp_labels)


def _masks(sites, seed=2):
    rng = np.random.default_rng(seed)
    return [rng.random(shape) >= p for shape, p in sites]


def _eager(model, batch):
    """Hugging Face's loss and the gradient of every named parameter (mindtorch's functional
    value_and_grad, as mindnlp's Trainer: loss.backward() is a no-op)."""
    from mindtorch import autograd

    inputs = {k: torch.tensor(v.astype(np.int64)) for k, v in batch.items()}
    names, params = zip(*model.named_parameters())
    loss, grads = autograd.value_and_grad(lambda x: model(**x)["loss"], params, attach_grads=False)(inputs)
    return float(loss.asnumpy()), {n: g.asnumpy() for n, g in zip(names, grads)}


class _HFLoss(nn.Cell):
    """The graph's sums as Hugging Face's loss: mlm_sum / mlm_count + nsp_sum / nsp_count."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, input_ids, token_type_ids, attention_mask, mlm_labels, nsp_labels, masks):
        mlm_sum, mlm_count, nsp_sum, nsp_count = self.net(input_ids, token_type_ids, attention_mask, mlm_labels,
                                                          nsp_labels, masks)
        return ops.add(ops.div(mlm_sum, mlm_count), ops.div(nsp_sum, nsp_count))


def _graph(model, batch, masks=()):
    """The compiled graph's loss and gradients on a copy of ``model``'s weights."""
    cfg = BertGraphConfig.from_hf(model.config, training=bool(masks))
    weights = weights_from_model(model)
    names = hf_parameter_names(cfg)
    grad_fn = mindspore.jit(mindspore.value_and_grad(_HFLoss(BertPreTrainingLoss(weights, cfg)), None,
                                                     mindspore.ParameterTuple([weights[n] for n in names])))
    ints = [Tensor(batch[k].astype(np.int32)) for k in ("input_ids", "token_type_ids", "attention_mask", "labels",
                                                         "next_sentence_label")]
    masks = mindspore.mutable(tuple(Tensor(m) for m in masks)) if masks else ()
    loss, grads = grad_fn(*ints, masks)
    return float(loss.asnumpy()), {n: g.asnumpy() for n, g in zip(names, grads)}


def _assert_same(got, want):
    (loss, grads), (want_loss, want_grads) = got, want
    assert abs(loss - want_loss) <= LOSS_RTOL * abs(want_loss), (loss, want_loss)
    assert sorted(grads) == sorted(want_grads)
    for name, want_grad in want_grads.items():
        diff = np.abs(grads[name] - want_grad).max()
        if name.endswith("attention.self.key.bias"):
            assert np.abs(want_grad).max() < ZERO_GRAD_ATOL and np.abs(grads[name]).max() < ZERO_GRAD_ATOL, name
        else:
            assert diff <= GRAD_RTOL * np.abs(want_grad).max(), (name, diff, np.abs(want_grad).max())


def test_parameter_names_are_the_models_and_the_decoder_is_tied():
    model = _model(_config())
    assert hf_parameter_names(model.config) == [n for n, _ in model.named_parameters()]
    assert len(hf_parameter_names(model.config)) == 5 + 16 * 2 + 9
    for alias, target in TIED.items():   # in state_dict, the same Parameter, not a named parameter
        assert alias in model.state_dict() and alias not in dict(model.named_parameters())
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias


@pytest.mark.parametrize("attn", ["sdpa", "eager"])   # sdpa: mindnlp's default, what pretraining trains
def test_loss_and_gradients_equal_the_eager_models(attn):
    model = _model(_config(attn=attn))
    model.eval()
    assert model.config._attn_implementation == attn
    batch = _batch()
    _assert_same(_graph(model, batch), _eager(model, batch))


class _GivenMask(torch.nn.Module):
    """In place of one nn.Dropout: x * keep-mask * 1 / (1 - p), with the mask given."""

    def __init__(self, keep, p):
        super().__init__()
        self.keep, self.scale = torch.tensor(keep.astype(np.float32)), 1.0 / (1.0 - p)

    def forward(self, x):
        return x * self.keep * self.scale


def test_dropout_with_given_masks_equals_the_eager_model_with_those_masks():
    """hidden dropout 0.1, attention dropout 0.2 (different rates: a swapped scale shows)."""
    model = _model(_config(hidden_dropout=0.1, attention_dropout=0.2, attn="eager"))  # SDPA drops inside its kernel
    model.train()
    batch = _batch()
    cfg = BertGraphConfig.from_hf(model.config)
    sites = dropout_sites(cfg, B, T, 32)
    assert len(sites) == 1 + 3 * 2
    masks = _masks(sites)
    bert = model.bert
    bert.embeddings.dropout = _GivenMask(masks[0], 0.1)
    for i, layer in enumerate(bert.encoder.layer):  # Hugging Face's sites, in call order
        layer.attention.self.dropout = _GivenMask(masks[1 + 3 * i], 0.2)
        layer.attention.output.dropout = _GivenMask(masks[2 + 3 * i], 0.1)
        layer.output.dropout = _GivenMask(masks[3 + 3 * i], 0.1)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    eager = _eager(model, batch)
    _assert_same(_graph(model, batch, masks), eager)
    without = _eager(_model(_config()), batch)[0]
    assert abs(eager[0] - without) > 1e-3            # the masks do change the loss


def test_unsupported_configs_are_refused_by_name():
    with pytest.raises(NotImplementedError, match="hidden_act='relu'"):
        BertGraphConfig.from_hf(_config(hidden_act="relu"))
    with pytest.raises(NotImplementedError, match="hidden_act='gelu_new'"):
        BertGraphConfig(n_layer=2, n_head=4, hidden_act="gelu_new")
    with pytest.raises(NotImplementedError, match="position_embedding_type='relative_key'"):
        BertGraphConfig.from_hf(_config(position_embedding_type="relative_key"))
    assert BertGraphConfig.from_hf(_config()) == BertGraphConfig(n_layer=2, n_head=4, layer_norm_eps=1e-12)


def test_a_twelve_layer_bert_compiles():
    """BERT-base depth: MindSpore's graph analysis passed its default call-depth limit (1000) at 12
    layers; the engine raises it (compiled.RECURSION_LIMIT)."""
    from mindnlp.transformers import BertConfig, BertForPreTraining

    from ms_gpt2.engine.compiled import CompiledEngine

    model = BertForPreTraining(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=12, num_attention_heads=2,
                                          intermediate_size=16, max_position_embeddings=16))
    model.train()
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(5, 40, (2, 8)), "token_type_ids": np.zeros((2, 8), int),
             "attention_mask": np.ones((2, 8), int), "labels": rng.integers(5, 40, (2, 8)),
             "next_sentence_label": np.array([0, 1])}
    loss, norm = CompiledEngine(model, {}, max_grad_norm=1.0).train_step(batch, 1e-3, 0)
    assert np.isfinite(loss) and np.isfinite(norm)


def test_exact_gelu_and_its_written_out_gradient_against_float64():
    """ExactGelu (BERT's "gelu", whose bprop keeps only its input) against float64 NumPy, value and
    gradient, inside a compiled graph and with the bprop called directly: 1e-6 absolute in value on
    inputs up to 8 in magnitude and saturated ones, 1e-5 in the gradient weighted by dy."""
    import math

    from ms_gpt2.models.graphs.ops import ExactGelu

    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-8, 8, 2001), rng.standard_normal(993) * 3,
                        [50, -50, 1e4, -1e4, 0, 0]]).astype(np.float32).reshape(3, -1)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    x64 = x.astype(np.float64)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x64 / math.sqrt(2)))
    value, slope = x64 * cdf, cdf + x64 * np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi)

    class Weighted(nn.Cell):
        def __init__(self):
            super().__init__()
            self.gelu = ExactGelu()

        def construct(self, v, d):
            return ops.reduce_sum(ops.mul(self.gelu(v), d))

    np.testing.assert_allclose(mindspore.jit(ExactGelu())(Tensor(x)).asnumpy(), value, atol=1e-6, rtol=1e-6)
    grad = mindspore.jit(mindspore.grad(Weighted(), grad_position=0))(Tensor(x), Tensor(dy)).asnumpy()
    np.testing.assert_allclose(grad, dy * slope, atol=1e-5, rtol=0)
    direct = ExactGelu().bprop(Tensor(x), None, Tensor(dy))[0].asnumpy()
    np.testing.assert_allclose(direct, dy * slope, atol=1e-5, rtol=0)
