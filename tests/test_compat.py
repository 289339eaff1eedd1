"""The CPU shims: numbers checked against NumPy, and each shown to be needed."""
import math
import warnings

import numpy as np
import pytest

from ms_gpt2.infra import compat, runtime

runtime.ensure()

import torch  # noqa: E402  (mindtorch)
from mindtorch._apis import cpu as cpu_table  # noqa: E402


def test_shims_are_in_force_on_the_pinned_stack():
    assert set(runtime.current().shims) == {s.name for s in compat.SHIMS}


def test_guard_refuses_other_versions_loudly():
    with pytest.warns(compat.CompatWarning, match="not applying"):
        assert compat.apply({"mindspore": "2.8.0", "mindnlp": "0.5.1"}) == []


def test_addcdiv_matches_numpy():
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=(3, 4)).astype(np.float32) for _ in range(3))
    c = np.abs(c) + 0.5
    out = torch.addcdiv(torch.tensor(a), torch.tensor(b), torch.tensor(c), value=-0.3)
    np.testing.assert_allclose(out.numpy(), a - 0.3 * b / c, rtol=1e-6, atol=1e-6)


def test_addcdiv_is_missing_without_the_shim(monkeypatch):
    assert compat.ORIGINALS["cpu.addcdiv"] is None
    monkeypatch.delattr(cpu_table, "addcdiv")
    with pytest.raises(RuntimeError, match="No implementation for function: addcdiv"):
        torch.addcdiv(torch.ones(2), torch.ones(2), torch.ones(2))


@pytest.mark.parametrize("ord_", [1, 2, 3, 1.5, math.inf, -math.inf, 0])
@pytest.mark.parametrize("keepdim", [False, True])
def test_vector_norm_over_all_dims_matches_numpy(ord_, keepdim):
    x = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    x[0, 0] = 0.0
    got = torch.linalg.vector_norm(torch.tensor(x), ord=ord_, dim=None, keepdim=keepdim).numpy()
    flat = np.abs(x.ravel())
    if ord_ == math.inf:
        want = flat.max()
    elif ord_ == -math.inf:
        want = flat.min()
    elif ord_ == 0:
        want = np.count_nonzero(flat)
    else:
        want = (flat ** ord_).sum() ** (1 / ord_)
    assert got.shape == ((1, 1) if keepdim else ())
    np.testing.assert_allclose(got.reshape(()), want, rtol=1e-5)


def test_vector_norm_with_dim_none_fails_without_the_shim(monkeypatch):
    monkeypatch.setattr(cpu_table, "linalg_vector_norm", compat.ORIGINALS["cpu.linalg_vector_norm"])
    with pytest.raises(TypeError, match="axis"):
        torch.norm(torch.ones(3, 3), 2.0)


def _numpy_adamw(p, grads, lr, betas, eps, wd):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat = m / (1 - betas[0] ** t)
        v_hat = v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def test_adamw_steps_match_numpy_reference():
    rng = np.random.default_rng(2)
    p0 = rng.normal(size=(4, 3)).astype(np.float32)
    grads = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(3)]
    param = torch.nn.Parameter(torch.tensor(p0.copy()))
    opt = torch.optim.AdamW([param], lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    for g in grads:
        param.grad = torch.tensor(g)
        opt.step()
    want = _numpy_adamw(p0.astype(np.float64), grads, 0.01, (0.9, 0.999), 1e-8, 0.1)
    np.testing.assert_allclose(param.detach().numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_matches_numpy(norm_type):
    rng = np.random.default_rng(3)
    grads = [rng.normal(size=s).astype(np.float32) * 3 for s in [(4, 3), (5,), (2, 2, 2)]]
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(g.shape))
        p.grad = torch.tensor(g)
        params.append(p)
    total = torch.nn.utils.clip_grad_norm_(params, max_norm=1.0, norm_type=norm_type)
    flat = np.concatenate([g.ravel() for g in grads]).astype(np.float64)
    want_total = np.abs(flat).max() if norm_type == math.inf else (np.abs(flat) ** norm_type).sum() ** (1 / norm_type)
    np.testing.assert_allclose(float(total), want_total, rtol=1e-5)
    coef = min(1.0, 1.0 / (want_total + 1e-6))
    for p, g in zip(params, grads):
        np.testing.assert_allclose(p.grad.numpy(), g * coef, rtol=1e-5, atol=1e-6)


def _draws():
    return [torch.rand(4).numpy(), torch.randn(3).numpy(), torch.randint(0, 1000, (4,)).numpy(),
            torch.multinomial(torch.tensor([0.2, 0.3, 0.5]), 6, replacement=True).numpy(),
            torch.nn.functional.dropout(torch.ones(8), 0.5, training=True).numpy()]


def test_manual_seed_makes_cpu_random_ops_repeat():
    torch.manual_seed(7)
    first = _draws()
    torch.manual_seed(7)
    for a, b in zip(first, _draws()):
        np.testing.assert_array_equal(a, b)
    torch.manual_seed(8)
    assert not np.array_equal(first[0], _draws()[0])
    assert set(np.unique(first[4])) <= {0.0, 2.0}  # inverted dropout keeps E[x]


#: One draw of each CPU random op the shim replaces, from ``generator`` (None: the global one).
DRAWS = {
    "rand": lambda g: torch.rand(6, generator=g),
    "randn": lambda g: torch.randn(6, generator=g),
    "randint": lambda g: torch.randint(0, 1000, (6,), generator=g),
    "normal_float_float": lambda g: torch.normal(0.0, 1.0, size=(6,), generator=g),
    # torch.normal(tensor, tensor) in mindtorch 0.5.1 computes this entry, then returns normal_float_float's
    # draw instead: the entry itself is called here
    "normal_tensor_tensor": lambda g: cpu_table.normal_tensor_tensor(torch.tensor(0.0), torch.tensor(1.0), (6,),
                                                                     torch.float32, g or torch.default_generator),
}


def _draw(op, generator=None):
    if op == "dropout":  # takes no generator: the global one's seed and offset
        return torch.nn.functional.dropout(torch.ones(64), 0.5, training=True).numpy()
    return DRAWS[op](generator).numpy()


@pytest.mark.parametrize("op", list(DRAWS))
def test_explicit_generator_is_honoured(op):
    def generator(seed):
        return torch.Generator().manual_seed(seed)

    a = _draw(op, generator(3))
    np.testing.assert_array_equal(a, _draw(op, generator(3)))   # same seed, same numbers
    assert not np.array_equal(a, _draw(op, generator(4)))       # another seed, other numbers
    torch.manual_seed(1)
    np.testing.assert_array_equal(a, _draw(op, generator(3)))   # the global seed plays no part...
    torch.manual_seed(2)
    _draw(op)
    np.testing.assert_array_equal(a, _draw(op, generator(3)))   # ...nor draws from the global generator
    g = generator(3)
    np.testing.assert_array_equal(_draw(op, g), a)
    assert not np.array_equal(_draw(op, g), a)                 # each draw advances the generator
    if op == "randint":
        assert ((0 <= a) & (a < 1000)).all()
    else:
        assert abs(float(a.mean())) < 3  # uniform/normal values, not garbage


@pytest.mark.parametrize("op", [*DRAWS, "dropout"])
def test_cpu_random_ops_ignore_the_seed_without_the_shim(op, monkeypatch):
    """The gap the shim fills, op by op: the same torch.manual_seed gives other numbers."""
    monkeypatch.setattr(cpu_table, op, compat.ORIGINALS[f"cpu.{op}"])
    torch.manual_seed(7)
    a = _draw(op)
    torch.manual_seed(7)
    assert not np.array_equal(a, _draw(op))
    if op != "dropout":  # and an explicit generator's seed is dropped too
        assert not np.array_equal(_draw(op, torch.Generator().manual_seed(3)),
                                  _draw(op, torch.Generator().manual_seed(3)))


def test_successive_draws_differ_and_the_seed_replays_them():
    torch.manual_seed(7)
    first, second = _draws(), _draws()
    for a, b in zip(first, second):  # each draw advances the generator
        assert not np.array_equal(a, b)
    torch.manual_seed(7)
    for want, got in zip(first + second, _draws() + _draws()):
        np.testing.assert_array_equal(got, want)


def test_generator_never_advances_without_the_shim(monkeypatch):
    from mindtorch._C import Generator

    monkeypatch.setattr(Generator, "_step", compat.ORIGINALS["Generator._step"])
    torch.manual_seed(7)
    np.testing.assert_array_equal(torch.rand(6).numpy(), torch.rand(6).numpy())  # the same numbers again
    dropout = torch.nn.functional.dropout
    np.testing.assert_array_equal(dropout(torch.ones(64), 0.5).numpy(), dropout(torch.ones(64), 0.5).numpy())


def test_gradient_flows_through_seeded_dropout():
    from mindtorch import autograd

    layer = torch.nn.Linear(4, 4)
    x = torch.ones(2, 4)

    def loss_fn():
        y = torch.nn.functional.dropout(layer(x), 0.5, training=True)
        return y.sum(), y

    torch.manual_seed(3)
    _, aux = autograd.value_and_grad(loss_fn, [layer.weight], has_aux=True)()
    y = (aux[0] if isinstance(aux, tuple) else aux).detach().numpy()
    kept = (y != 0).astype(np.float32)  # bias-only outputs are non-zero almost surely when kept
    # d(sum y)/dW[j, k] = sum_b mask[b, j] * x[b, k] / (1 - p)
    np.testing.assert_allclose(layer.weight.grad.numpy(), np.repeat(kept.sum(0)[:, None] * 2, 4, 1), rtol=1e-6)


def test_argmax_and_argmin_without_dim_index_the_flattened_tensor():
    x = np.array([[3.0, 9.0, 1.0], [7.0, -2.0, 5.0]], dtype=np.float32)
    assert int(torch.tensor(x).argmax()) == 1 and int(torch.tensor(x).argmin()) == 4
    assert torch.tensor(x).argmax(dim=1).numpy().tolist() == [1, 0]  # dims still go to the original


def test_argmax_without_dim_fails_without_the_shim(monkeypatch):
    monkeypatch.setattr(cpu_table, "argmax", compat.ORIGINALS["cpu.argmax"])
    with pytest.raises(TypeError, match="ArgMaxWithValue"):
        torch.tensor([1.0, 3.0]).argmax()


def test_resume_helper_safe_globals_is_a_context_manager():
    assert compat.ORIGINALS["serialization.safe_globals"] is None
    with torch.serialization.safe_globals([np.ndarray]):
        pass


def test_tanh_is_float32_accurate_with_a_correct_gradient():
    from mindtorch import autograd

    x = np.linspace(-30, 30, 4001).astype(np.float32)
    got = torch.tanh(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, np.tanh(x.astype(np.float64)), atol=3e-7, rtol=0)
    assert np.isfinite(got).all()
    t = torch.nn.Parameter(torch.tensor(x[1900:2100].copy()))
    autograd.value_and_grad(lambda: torch.tanh(t).sum(), [t])()
    np.testing.assert_allclose(t.grad.numpy(), 1 - np.tanh(x[1900:2100].astype(np.float64)) ** 2, atol=1e-6)


def test_cpu_tanh_kernel_is_inaccurate_without_the_shim(monkeypatch):
    monkeypatch.setattr(cpu_table, "tanh", compat.ORIGINALS["cpu.tanh"])
    x = np.linspace(-6, 6, 2001).astype(np.float32)
    assert np.abs(torch.tanh(torch.tensor(x)).numpy() - np.tanh(x.astype(np.float64))).max() > 1e-5


def _position_embedding_grad():
    """d/d(wpe) of a loss through ``wpe(ids).to(x.device)``, as Hugging Face GPT-2 computes it."""
    from mindtorch import autograd

    wpe = torch.nn.Embedding(8, 3)
    x = torch.ones(2, 5, 3)
    positions = torch.arange(5).unsqueeze(0)
    autograd.value_and_grad(lambda: (x + wpe(positions).to(x.device)).pow(2).sum(), [wpe.weight])()
    return wpe.weight.detach().numpy(), wpe.weight.grad.numpy()


def test_same_device_to_keeps_the_gradient():
    weight, grad = _position_embedding_grad()
    want = np.zeros_like(weight)
    want[:5] = 2 * 2 * (1 + weight[:5])  # two batch rows, d/dw (1 + w)^2
    np.testing.assert_allclose(grad, want, rtol=1e-6)


def test_same_device_to_cuts_the_gradient_without_the_shim(monkeypatch):
    import mindspore

    monkeypatch.setattr(mindspore.Tensor, "_move_to", compat.ORIGINALS["Tensor._move_to"])
    _, grad = _position_embedding_grad()
    assert not grad.any()  # GPT-2's position embeddings got no gradient on CPU


def test_read_parameter_is_a_copy_where_asnumpy_is_a_view():
    """MindSpore 2.7 on CPU: Parameter.asnumpy() shares the buffer a compiled graph's step updates."""
    import mindspore
    from mindspore import Parameter, Tensor, nn, ops

    class Step(nn.Cell):
        def __init__(self):
            super().__init__()
            self.param = Parameter(Tensor(np.zeros(3, np.float32)), name="read_parameter_test")

        def construct(self, x):
            return ops.assign_add(self.param, x)

    step = Step()
    step.construct = mindspore.jit(step.construct)
    step(Tensor(np.zeros(3, np.float32)))            # compiled, the parameter on the graph's buffer
    view, copy = step.param.asnumpy(), compat.read_parameter(step.param)
    step(Tensor(np.array([1.0, 2.0, 3.0], np.float32)))
    assert copy.tolist() == [0.0, 0.0, 0.0]
    assert view.tolist() == [1.0, 2.0, 3.0]          # the quirk read_parameter is for: if this fails, it is gone


def test_a_reported_skip_is_what_the_accelerator_tells_the_trainer():
    """compat.report_skipped_step sets what accelerate 1.10's optimizer_step_was_skipped reads (the
    Trainer's scheduler waits on it), and the wrapper's own step() (no GradScaler) leaves it alone."""
    import torch  # mindtorch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    optimizer = accelerator.prepare_optimizer(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.1))
    assert not accelerator.optimizer_step_was_skipped
    compat.report_skipped_step(optimizer, True)
    optimizer.step()
    assert accelerator.optimizer_step_was_skipped
    compat.report_skipped_step(optimizer, False)
    assert not accelerator.optimizer_step_was_skipped
    compat.report_skipped_step(optimizer.optimizer, True)   # an unwrapped optimizer has nothing to tell
    assert not accelerator.optimizer_step_was_skipped


def test_mindnlp_diffusers_is_imported_only_when_used():
    """runtime.setup keeps mindnlp 0.5.1's eager ``from . import diffusers`` (1.7 s of start-up) out of
    a process that never uses it, and a process that does gets the real package. A fresh interpreter:
    this one imported mindnlp long ago."""
    import subprocess
    import sys

    assert not compat.defer_mindnlp_diffusers()          # too late here: mindnlp is imported
    probe = ("import sys\n"
             "from ms_gpt2.infra import runtime\n"
             "runtime.setup('cpu', seed=0)\n"
             "from mindnlp.transformers import GPT2LMHeadModel\n"
             "import importlib.util\n"
             "print('diffusers' in sys.modules, 'mindnlp.diffusers.pipelines' in sys.modules,\n"
             "      importlib.util.find_spec('mindnlp.diffusers').origin.endswith('diffusers/__init__.py'))\n"
             "from mindnlp.diffusers import DiffusionPipeline\n"
             "import mindnlp\n"
             "print(DiffusionPipeline.__module__, sys.modules['mindnlp.diffusers'] is mindnlp.diffusers,\n"
             "      hasattr(mindnlp.diffusers, 'pipelines'))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    before, after = done.stdout.split("\n")[:2]
    assert before == "False False True"
    assert after == "diffusers.pipelines.pipeline_utils True True"


class _CopyingTensor:
    """A tensor whose asnumpy() returns a fresh copy each time (as on a device), counting the copies alive."""

    live = 0
    most = 0

    def __init__(self, array):
        import mindspore

        self.array, self.shape = array, array.shape
        self.dtype = {np.dtype(np.float32): mindspore.float32, np.dtype(np.float16): mindspore.float16,
                      np.dtype(np.int64): mindspore.int64}[array.dtype]

    def asnumpy(self):
        import weakref

        copy = self.array.copy()
        cls = type(self)
        cls.live += 1
        cls.most = max(cls.most, cls.live)
        weakref.finalize(copy, lambda: setattr(cls, "live", cls.live - 1))
        return copy


def _mixed_tensors():
    rng = np.random.default_rng(0)
    return {"transformer.h.0.attn.c_attn.weight": rng.random((8, 24), dtype=np.float32),
            "a.bias": rng.random(5).astype(np.float16), "ids": np.arange(7, dtype=np.int64),
            "transformer.wte.weight": rng.random((11, 8), dtype=np.float32), "empty": np.zeros((0, 3), np.float32),
            "scalar": np.array(2.5, np.float32)}


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_streamed_safetensors_save_writes_safetensors_own_bytes(tmp_path, metadata):
    """The streamed writer (the Trainer's model.safetensors) gives the file safetensors writes, byte
    for byte: the same header (order by dtype then name, metadata, padding) and data."""
    from safetensors.numpy import save_file

    tensors = dict(_mixed_tensors(), **{"ü": np.ones(2, np.bool_)})
    save_file(tensors, str(tmp_path / "library.safetensors"), metadata=metadata)
    compat.save_safetensors_streamed(tensors, tmp_path / "streamed.safetensors", metadata=metadata)
    assert (tmp_path / "streamed.safetensors").read_bytes() == (tmp_path / "library.safetensors").read_bytes()


def test_save_pretrained_holds_one_tensor_copy_at_a_time(tmp_path, monkeypatch):
    """transformers' save_pretrained writes through the streamed save: where asnumpy() copies, one copy
    is alive at a time (mindnlp's save, the original, held every tensor's at once), same bytes."""
    import transformers.modeling_utils

    arrays = {k: v for k, v in _mixed_tensors().items() if v.ndim}
    assert transformers.modeling_utils.safe_save_file is not compat.ORIGINALS["safetensors.save_file"]
    for name, save in (("streamed", transformers.modeling_utils.safe_save_file),
                       ("original", compat.ORIGINALS["safetensors.save_file"])):
        monkeypatch.setattr(_CopyingTensor, "live", 0)
        monkeypatch.setattr(_CopyingTensor, "most", 0)
        save({k: _CopyingTensor(v) for k, v in arrays.items()}, str(tmp_path / f"{name}.safetensors"),
             metadata={"format": "pt"})
        assert _CopyingTensor.most == (1 if name == "streamed" else len(arrays)), name
    assert (tmp_path / "streamed.safetensors").read_bytes() == (tmp_path / "original.safetensors").read_bytes()
