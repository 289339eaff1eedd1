"""The compiled step's dropout (ms_gpt2.models.graphs.dropout): the masks sit at Hugging Face's three sites
with the 1/(1-p) scale, the in-graph (device) masks are the NumPy reference's bit for bit, and they
are a function of (seed, step, micro-batch, rank) only: seeded runs repeat, resume repeats,
recomputation replays, ranks differ."""
import numpy as np
import pytest

from ms_gpt2.infra import runtime

runtime.ensure()

import mindspore  # noqa: E402
import torch  # noqa: E402  (mindtorch)
from mindspore import Tensor, nn  # noqa: E402

from ms_gpt2.infra.compat import write_parameter  # noqa: E402
from ms_gpt2.models.graphs import dropout as keyed  # noqa: E402
from ms_gpt2.models.graphs.gpt2 import (GPT2GraphConfig, GPT2Loss, dropout_mask_shapes, dropout_masks,  # noqa: E402
                                        hf_parameter_names)

P = 0.1
B, T, V, C, H, L = 2, 12, 40, 32, 2, 2


def _model(p=P):
    from mindnlp.transformers import GPT2Config

    from ms_gpt2.models.gpt2 import GPT2ForSummarization

    runtime.seed_everything(0)
    config = GPT2Config(vocab_size=V, n_positions=16, n_embd=C, n_layer=L, n_head=H, resid_pdrop=p, embd_pdrop=p,
                        attn_pdrop=p, pad_token_id=0)
    config._attn_implementation = "eager"  # applies attn_dropout to the weights as a module we can replace
    model = GPT2ForSummarization(config)
    model.train()
    return model


def _batch():
    ids = np.random.default_rng(1).integers(1, V, (B, T))
    ids[1, 9:] = 0  # [PAD]: not scored
    return ids


def _graph_loss_and_grads(model, cfg, drop):
    """GPT2Loss on the model's weights: (mean loss, {name: grad of the mean})."""
    own = dict(model.named_parameters())
    names = hf_parameter_names(L)
    weights = {n: mindspore.Parameter(Tensor(own[n].detach().numpy()), name=n) for n in names}
    net = GPT2Loss(weights, cfg)
    params = mindspore.ParameterTuple([weights[n] for n in names])

    def mean_loss(ids, mask, labels, w, drop):
        loss_sum, count = net(ids, mask, labels, w, drop)
        return loss_sum / count

    grad_fn = mindspore.jit(mindspore.value_and_grad(mean_loss, None, params))
    ids = Tensor(_batch().astype(np.int32))
    loss, grads = grad_fn(ids, Tensor(np.ones((B, T), np.int32)), ids, Tensor(np.ones((B, T), np.float32)),
                          mindspore.mutable(drop) if drop else drop)
    return float(loss.asnumpy()), {n: g.asnumpy() for n, g in zip(names, grads)}


class _GivenMask(torch.nn.Module):
    """Hugging Face's nn.Dropout at one site, with the keep-mask given: x * mask / (1 - p)."""

    def __init__(self, mask: np.ndarray, p: float):
        super().__init__()
        self.mask, self.p = torch.tensor(mask.astype(np.float32)), p

    def forward(self, x):
        return x * self.mask / (1 - self.p)


def _reference_loss_and_grads(model, masks):
    """The eager Hugging Face model with masks[0] at the embeddings and, per layer i, masks[1+3i] on
    the attention weights, masks[2+3i] on the attention output, masks[3+3i] on the MLP output."""
    from mindtorch import autograd

    model.transformer.drop = _GivenMask(masks[0], P)
    for i, block in enumerate(model.transformer.h):
        block.attn.attn_dropout = _GivenMask(masks[1 + 3 * i], P)
        block.attn.resid_dropout = _GivenMask(masks[2 + 3 * i], P)
        block.mlp.dropout = _GivenMask(masks[3 + 3 * i], P)
    ids = torch.tensor(_batch().astype(np.int64))
    named = [(n, p) for n, p in model.named_parameters() if n in set(hf_parameter_names(L))]
    loss, grads = autograd.value_and_grad(lambda: model(input_ids=ids, labels=ids)["loss"], [p for _, p in named],
                                          attach_grads=False)()
    return float(loss.asnumpy()), {n: g.asnumpy() for (n, _), g in zip(named, grads)}


def _cfg(source):
    return GPT2GraphConfig(n_layer=L, n_head=H, layer_norm_epsilon=1e-5, pad_token_id=0, dropout=P, dropout_source=source)


def _assert_same(graph, reference, tol=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = graph, reference
    assert loss_a == pytest.approx(loss_b, rel=tol)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:   # each gradient within tol of its tensor's largest entry
        scale = max(np.abs(grads_b[name]).max(), 1e-12)
        assert np.abs(grads_a[name] - grads_b[name]).max() <= tol * scale, name


def test_given_masks_land_at_hugging_faces_three_sites_with_the_inverted_scale():
    cfg = _cfg("host")
    masks = dropout_masks(cfg, seed=3, step=7, batch=B, length=T, n_embd=C)
    assert [tuple(m.shape) for m in masks] == dropout_mask_shapes(cfg, B, T, C)
    numpy_masks = [m.asnumpy() for m in masks]
    assert 0.8 < np.mean(np.concatenate([m.ravel() for m in numpy_masks])) < 0.97
    graph = _graph_loss_and_grads(_model(), cfg, masks)
    reference = _reference_loss_and_grads(_model(), numpy_masks)
    _assert_same(graph, reference)                      # loss within 1e-5 relative, gradients 1e-5 of max
    without = _graph_loss_and_grads(_model(), _cfg("host"), tuple(Tensor(np.ones_like(m)) for m in numpy_masks))
    assert abs(without[0] - graph[0]) > 1e-4            # the masks matter at this size: the check can fail


def test_masks_drawn_in_the_graph_are_the_numpy_hash_and_match_the_reference():
    cfg = _cfg("device")
    drop = dropout_masks(cfg, seed=3, step=7, batch=B, length=T, n_embd=C)
    key = int(drop[0].asnumpy())
    assert key == keyed.step_key(3, 7)
    numpy_masks = [keyed.keep_mask_numpy(shape, key, site, P)
                   for site, shape in enumerate(dropout_mask_shapes(cfg, B, T, C))]
    graph = _graph_loss_and_grads(_model(), cfg, drop)
    given = _graph_loss_and_grads(_model(), _cfg("host"), tuple(Tensor(m) for m in numpy_masks))
    assert graph[0] == given[0]                          # the graph drew exactly the NumPy masks
    for name in graph[1]:
        np.testing.assert_array_equal(graph[1][name], given[1][name], err_msg=name)
    _assert_same(graph, _reference_loss_and_grads(_model(), numpy_masks))


def test_the_in_graph_hash_is_uint32_arithmetic_and_keys_each_site():
    class Keep(nn.Cell):
        def construct(self, index, key, constant):
            return keyed.keep_mask(index, keyed.site_key(key, constant), keyed.threshold(0.3))

    keep = Keep()
    keep.construct = mindspore.jit(keep.construct)
    shape = (3, 5, 7, 11)
    for key in (0, 1, -2**31, 2**31 - 1, keyed.step_key(42, 10**9, 3)):
        for site in (0, 5):
            got = keep(keyed.index_hash(shape), Tensor(np.int32(key)), keyed.site_constant(site)).asnumpy()
            np.testing.assert_array_equal(got, keyed.keep_mask_numpy(shape, key, site, 0.3))
    big = keyed.keep_mask_numpy((200_000,), keyed.step_key(0, 0), 1, 0.3)
    assert abs(big.mean() - 0.7) < 0.005                # keep probability 1 - p (5 sigma is 0.005)
    # distinct sites, steps, micro-batches and seeds (the rank is in the seed) draw different masks
    masks = [keyed.keep_mask_numpy((4096,), keyed.step_key(seed, step, micro), site, 0.3)
             for seed, step, micro, site in ((0, 0, 0, 1), (0, 0, 0, 2), (0, 1, 0, 1), (0, 0, 1, 1),
                                             (2**40, 0, 0, 1))]
    for i in range(len(masks)):
        for j in range(i):
            assert 0.3 < np.mean(masks[i] == masks[j]) < 0.7  # independent masks agree ~58% of the time


# murmur3's fmix32, from the reference: aappleby/smhasher src/MurmurHash3.cpp compiled with gcc, which
# also reproduced the published MurmurHash3_x86_32 vectors ("", 0) = 0, ("", 1) = 0x514E28B7,
# ("", 0xFFFFFFFF) = 0x81F16F39, ("\0\0\0\0", 0) = 0x2362F9DE, ("Hello, world!", 1234) = 0xFAF6CDB3 and
# (the quick brown fox, 0x9747B28C) = 0x2FA826CD. The first three and the fourth are fmix32 values
# themselves: an empty key hashes to fmix32(seed), and four zero bytes to fmix32(0xE6546B60).
FMIX32 = {0x00000000: 0x00000000, 0x00000001: 0x514E28B7, 0xFFFFFFFF: 0x81F16F39, 0xE6546B60: 0x2362F9DE,
          0x00000002: 0x30F4C306, 0x00000003: 0x85F0B427, 0x7FFFFFFF: 0xF9CC0EA8, 0x80000000: 0x6D3C65A0,
          0xDEADBEEF: 0x0DE5C6A9, 0x00003039: 0x3C46C9DC, 0x9E3779B9: 0x92CA2F0E}


def _in_graph(fn):
    class Graph(nn.Cell):
        def construct(self, *args):
            return fn(*args)

    graph = Graph()
    graph.construct = mindspore.jit(graph.construct)
    return graph


def test_the_hash_is_murmur3s_fmix32_by_the_reference_vectors():
    inputs = np.array(list(FMIX32), np.uint32)
    expected = np.array(list(FMIX32.values()), np.uint32)
    graph = _in_graph(keyed.fmix32)(Tensor(inputs.view(np.int32))).asnumpy().view(np.uint32)
    np.testing.assert_array_equal(graph, expected)                       # the graph's int32 ops
    np.testing.assert_array_equal(keyed._fmix_np(inputs), expected)      # the host's NumPy
    assert [keyed.fmix_int(int(x)) for x in inputs] == [int(y) for y in expected]
    # index_hash is fmix32(1, 2, 3, ...)
    np.testing.assert_array_equal(keyed.index_hash((3,)).asnumpy().view(np.uint32), expected[[1, 4, 5]])


def _site_keep_mask(index, key, constant, threshold):
    return keyed.keep_mask(index, keyed.site_key(key, constant), threshold)


def test_the_graphs_masks_keep_1_minus_p_and_two_steps_are_not_shifts_of_each_other():
    """Keep rate at p = 0.1 in the graph (200,000 draws: 5 sigma is 0.0034). Two steps' masks at one
    site (p = 0.5, where agreement by chance is 1/2): at every cyclic shift s of one against the
    other, agreement stays within 0.06 of 1/2 (4096 shifts of a 4096-long mask: sigma 0.0078, the
    largest of 4096 ~ 4.5 sigma); a mask shifted by s agrees fully at s (index + step would do that)."""
    keep = _in_graph(_site_keep_mask)
    key = Tensor(np.int32(keyed.step_key(5, 11)))
    mask = keep(keyed.index_hash((200_000,)), key, keyed.site_constant(2), Tensor(np.int32(keyed.threshold(0.1))))
    assert abs(mask.asnumpy().mean() - 0.9) < 0.0034
    n = 4096
    a, b = (keep(keyed.index_hash((n,)), Tensor(np.int32(keyed.step_key(5, step))), keyed.site_constant(2),
                 Tensor(np.int32(keyed.threshold(0.5)))).asnumpy() for step in (0, 1))
    assert abs(a.mean() - 0.5) < 0.04 and abs(b.mean() - 0.5) < 0.04

    def agreement(x, y):  # mean(x == roll(y, s)) for every s, through the FFT of the +-1 sequences
        fx, fy = np.fft.rfft(np.where(x, 1.0, -1.0)), np.fft.rfft(np.where(y, 1.0, -1.0))
        return (1 + np.fft.irfft(np.conj(fx) * fy, n) / n) / 2

    assert np.max(np.abs(agreement(a, b) - 0.5)) < 0.06
    shifted = agreement(a, np.roll(a, 7))          # the check can fail: a shifted mask agrees fully at s = 7
    assert shifted[7] == pytest.approx(1.0) and np.argmax(shifted) == 7


def _engine_run(source, seed=5, steps=3, start=0, engine=None, recompute=False):
    from ms_gpt2.engine.compiled import CompiledEngine

    if engine is None:
        engine = CompiledEngine(_model(0.2), {}, max_grad_norm=1.0, seed=seed, dropout_source=source,
                                recompute=recompute)
    ids = _batch()
    return [engine.train_step({"input_ids": ids}, 1e-2, step) for step in range(start, start + steps)], engine


def test_device_masks_repeat_resume_recompute_and_differ_by_seed():
    first, engine = _engine_run("device")
    again, _ = _engine_run("device")
    assert first == again                                # seeded: bit for bit
    # resume at step 1: a fresh engine with step 0's weights and AdamW state draws what step 1 drew
    one, resumed = _engine_run("device", steps=1)
    state, weights = resumed.optimizer_state(), resumed.weights()
    fresh = _engine_run("device", steps=0)[1]
    for param, name in zip(fresh.step.weights, fresh.step.names):
        write_parameter(param, weights[name])
    fresh.load_optimizer_state(state)
    assert _engine_run("device", start=1, steps=2, engine=fresh)[0] == first[1:]
    recomputed, _ = _engine_run("device", recompute=True)
    np.testing.assert_allclose(recomputed, first, rtol=1e-6)   # the recomputed blocks replay the masks
    other_rank, _ = _engine_run("device", seed=5 + 2**40)      # rank 1's seed (distributed.py)
    assert other_rank[0][0] != first[0][0]
    host, _ = _engine_run("host")
    assert host[0][0] != first[0][0]                     # the two sources draw different masks


def test_bert_graph_draws_the_numpy_hash_masks_at_each_sites_rate():
    """BERT's graph on the device source: the masks it hashes are keep_mask_numpy's, site by site, at
    the hidden (0.1) and attention (0.2) rates: the loss equals the host path given those masks."""
    from mindnlp.transformers import BertConfig, BertForPreTraining

    from ms_gpt2.models.graphs.bert import BertGraph, BertPreTrainingLoss, dropout_sites, weights_from_model
    from ms_gpt2.models.graphs.precision import Precision

    runtime.seed_everything(0)
    model = BertForPreTraining(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.1,
                                          attention_probs_dropout_prob=0.2))
    model.train()
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(5, 60, (3, 16)), "token_type_ids": np.zeros((3, 16), int),
             "attention_mask": np.ones((3, 16), int), "next_sentence_label": np.array([0, 1, 1]),
             "labels": np.where(rng.random((3, 16)) < 0.3, rng.integers(5, 60, (3, 16)), -100)}
    graphs = {s: BertGraph(model, Precision(), dropout_source=s) for s in ("device", "host")}
    drop = graphs["device"].drop(batch, seed=3, step=7, micro=1)
    key = int(drop[0].asnumpy())
    assert key == keyed.step_key(3, 7, 1)
    sites = dropout_sites(graphs["host"].cfg, 3, 16, 32)
    given = tuple(Tensor(keyed.keep_mask_numpy(shape, key, s, p)) for s, (shape, p) in enumerate(sites))
    inputs = graphs["host"].inputs(batch)[:5]
    out = {}
    for source, masks in (("device", drop), ("host", given)):
        net = BertPreTrainingLoss(weights_from_model(model), graphs[source].cfg)
        net.construct = mindspore.jit(net.construct)
        out[source] = [float(v.asnumpy()) for v in net(*inputs, mindspore.mutable(masks))]
    assert out["device"] == out["host"]
    no_drop = BertPreTrainingLoss(weights_from_model(model), graphs["host"].cfg)
    ones = tuple(Tensor(np.ones(shape, np.bool_)) for shape, _ in sites)
    assert [float(v.asnumpy()) for v in no_drop(*inputs, ones)] != out["host"]   # the masks did drop something
