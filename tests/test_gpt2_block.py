"""One GPT-2 block (ms_gpt2.models.graphs.gpt2_block) serves both compiled graphs: on the same small
random weights and tokens, Hugging Face's eager GPT2LMHeadModel, the training graph and the decoding
graph compute the same logits.

Tolerances: everything runs in float32 on CPU and the three differ only in the order of float32
operations (a fused LayerNorm kernel, gelu_new as x * sigmoid(...) on CPU, transposes as MatMul
flags, an additive mask instead of masked_fill), so they agree to a few float32 roundings of the logits: 1e-5 absolute on logits of
magnitude ~3 (the measured gaps are 2e-6 or less), and the loss to 1e-6 relative.
"""
import numpy as np

from ms_gpt2.infra import runtime

runtime.ensure()

import mindspore  # noqa: E402
import torch  # noqa: E402  (mindtorch)
from mindnlp.transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from mindspore import Tensor  # noqa: E402

from ms_gpt2.models.graphs.gpt2 import GPT2GraphConfig, GPT2Loss, hf_parameter_names  # noqa: E402
from ms_gpt2.models.graphs.gpt2_block import Block  # noqa: E402
from ms_gpt2.models.graphs.gpt2_decode import CompiledDecoder  # noqa: E402

V, C, H, L, T = 50, 32, 4, 2, 8
LOGITS_ATOL = 1e-5


def _model():
    runtime.seed_everything(0)
    config = GPT2Config(vocab_size=V, n_positions=16, n_embd=C, n_layer=L, n_head=H, initializer_range=0.2,
                        pad_token_id=0)
    return GPT2LMHeadModel(config).eval()


def _tokens():
    return np.random.default_rng(1).integers(1, V, size=T)


def _library_logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens[None].astype(np.int64))).logits[0].numpy()  # (T, V)


def _graph_loss_and_logits(model, tokens):
    """The training graph (dropout 0, float32) on the model's weights: its loss and, from the same
    net's blocks, the logits (the graph returns only the loss)."""
    own = dict(model.named_parameters())
    weights = {n: mindspore.Parameter(Tensor(own[n].detach().numpy()), name=n) for n in hf_parameter_names(L)}
    cfg = GPT2GraphConfig(n_layer=L, n_head=H, layer_norm_epsilon=model.config.layer_norm_epsilon, pad_token_id=0)
    net = GPT2Loss(weights, cfg)
    ids = Tensor(tokens[None].astype(np.int32))
    loss_sum, count = net(ids, Tensor(np.ones((1, T), np.int32)), ids, Tensor(np.ones((1, T), np.float32)), ())
    return float(loss_sum.asnumpy()) / float(count.asnumpy()), weights, net


def test_both_graphs_build_their_layers_from_the_one_block():
    model = _model()
    _, _, net = _graph_loss_and_logits(model, _tokens())
    decoder = CompiledDecoder.from_model(model, max_len=16)
    assert all(type(b) is Block for b in net.blocks) and all(type(b) is Block for b in decoder.step.blocks)
    # on the CPU backend both graphs' blocks take the vectorised gelu_new, not MindSpore's slow CPU kernel
    from ms_gpt2.models.graphs.ops import SigmoidGelu

    if mindspore.get_context("device_target") == "CPU":
        assert all(isinstance(b.gelu, SigmoidGelu) for b in list(net.blocks) + list(decoder.step.blocks))


def test_library_training_graph_and_decoder_agree():
    model = _model()
    tokens = _tokens()
    library = _library_logits(model, tokens)                                       # (T, V)

    # (b) the training graph: its loss is the library's next-token cross-entropy over the T - 1 pairs
    loss, _, _ = _graph_loss_and_logits(model, tokens)
    z = library.astype(np.float64) - library.max(-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    library_loss = -np.mean([log_probs[t, tokens[t + 1]] for t in range(T - 1)])
    np.testing.assert_allclose(loss, library_loss, rtol=1e-6)
    with torch.no_grad():
        ids = torch.tensor(tokens[None].astype(np.int64))
        hf_loss = float(model(input_ids=ids, labels=ids).loss.numpy())
    np.testing.assert_allclose(loss, hf_loss, rtol=1e-6)

    # (c) the decoder: prefill T - 1 tokens, then one cached step for the last one
    decoder = CompiledDecoder.from_model(model, max_len=16)
    _, prefill_logits = decoder.run_prefill([int(t) for t in tokens[:-1]])
    np.testing.assert_allclose(prefill_logits.asnumpy()[0], library[T - 2], atol=LOGITS_ATOL, rtol=0)
    _, step_logits = decoder.run(int(tokens[-1]), T - 1)
    np.testing.assert_allclose(step_logits.asnumpy()[0], library[T - 1], atol=LOGITS_ATOL, rtol=0)


def test_training_graph_logits_match_the_library():
    """The training graph's own blocks and ln_f (the shared Block, with its weights as the graph holds
    them), stacked here on the embeddings, a causal mask and the tied head, against the library's
    logits at every position. The loss graph's whole forward is checked through its loss above."""
    from mindspore import ops

    from ms_gpt2.models.graphs.ops import FLOAT32_MIN, attention_bias

    model = _model()
    tokens = _tokens()
    _, weights, net = _graph_loss_and_logits(model, tokens)
    ids = Tensor(tokens[None].astype(np.int32))
    x = ops.add(ops.gather(weights["transformer.wte.weight"], ids, 0),
                ops.reshape(ops.slice(weights["transformer.wpe.weight"], (0, 0), (T, C)), (1, T, C)))
    keep = Tensor(np.tril(np.ones((T, T), np.bool_)).reshape(1, 1, T, T))
    bias = attention_bias(keep, (1, H, T, T), mindspore.float32, FLOAT32_MIN)
    for block in net.blocks:
        x = block(x, bias, ())
    x = net.ln_f(x, weights["transformer.ln_f.weight"], weights["transformer.ln_f.bias"])[0]
    logits = ops.matmul(ops.reshape(x, (T, C)), ops.transpose(weights["transformer.wte.weight"], (1, 0)))
    np.testing.assert_allclose(logits.asnumpy(), _library_logits(model, tokens), atol=LOGITS_ATOL, rtol=0)


def _gelu_new_float64(x):
    """GPT-2's gelu_new and its derivative in float64 NumPy (the independent reference)."""
    c, a = np.sqrt(2.0 / np.pi), 0.044715
    t = np.tanh(c * (x + a * x ** 3))
    return 0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * a * x ** 2)


def test_both_gelu_forms_are_gelu_new_with_its_gradient():
    """The fused kernel (devices) and the sigmoid form with its written-out gradient (CPU, where the
    kernel is slow) both compute gelu_new, forward and backward, inside a compiled graph, on
    inputs up to 8 in magnitude and saturated ones (+-50, +-1e4): values to 2e-6 absolute, the
    gradient of the sum weighted by dy to 2e-5 (measured: 6e-7 and 6e-6). The written-out bprop is
    also checked called directly, so that a graph which differentiated ``construct`` instead would
    not hide a wrong one."""
    from mindspore import nn, ops

    from ms_gpt2.models.graphs.ops import SigmoidGelu, gelu_new

    assert isinstance(gelu_new(fused=False), SigmoidGelu) and isinstance(gelu_new(fused=True), ops.GeLU)
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-8, 8, 2001), rng.standard_normal(3993) * 3,
                        [50, -50, 1e4, -1e4, 0, 0]]).astype(np.float32).reshape(3, -1)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    value, slope = _gelu_new_float64(x.astype(np.float64))

    class Weighted(nn.Cell):
        def __init__(self, gelu):
            super().__init__()
            self.gelu = gelu

        def construct(self, v, d):
            return ops.reduce_sum(ops.mul(self.gelu(v), d))

    for fused in (True, False):
        gelu = gelu_new(fused=fused)
        forward = mindspore.jit(gelu)(Tensor(x)).asnumpy()
        grad = mindspore.jit(mindspore.grad(Weighted(gelu), grad_position=0))(Tensor(x), Tensor(dy)).asnumpy()
        np.testing.assert_allclose(forward, value, atol=2e-6, rtol=0, err_msg=f"fused={fused}")
        np.testing.assert_allclose(grad, dy * slope, atol=2e-5, rtol=0, err_msg=f"fused={fused}")
    written_out = SigmoidGelu().bprop(Tensor(x), None, Tensor(dy))[0].asnumpy()
    np.testing.assert_allclose(written_out, dy * slope, atol=2e-5, rtol=0)
