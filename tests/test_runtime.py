"""Device policy, the CLI's device errors, seeding, and the attention walkthrough command."""
import subprocess
import sys

import numpy as np
import pytest

from ms_gpt2 import runtime
from ms_gpt2.errors import UserError

ALL = {"ascend": True, "gpu": True, "cpu": True}
CPU_ONLY = {"ascend": False, "gpu": False, "cpu": True}


@pytest.mark.parametrize("available,want", [
    (ALL, "ascend"),
    ({"ascend": False, "gpu": True, "cpu": True}, "gpu"),
    (CPU_ONLY, "cpu"),
])
def test_auto_prefers_ascend_then_gpu_then_cpu(available, want, monkeypatch):
    monkeypatch.delenv(runtime.ENV_VAR, raising=False)
    assert runtime.resolve_device("auto", available) == ("auto", want)
    assert runtime.resolve_device(None, available) == ("auto", want)


def test_env_var_applies_and_argument_wins(monkeypatch):
    monkeypatch.setenv(runtime.ENV_VAR, "GPU")
    assert runtime.resolve_device(None, ALL) == ("gpu", "gpu")
    assert runtime.resolve_device("cpu", ALL) == ("cpu", "cpu")


def test_missing_device_is_a_clear_error():
    with pytest.raises(runtime.DeviceUnavailableError, match=r"'ascend' was requested.*available: cpu"):
        runtime.resolve_device("ascend", CPU_ONLY)
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        runtime.resolve_device("tpu", ALL)


def test_setup_is_idempotent_and_refuses_to_switch_device(monkeypatch):
    import mindspore

    rt = runtime.setup("cpu")
    assert (rt.device, rt.torch_device, rt.mindspore_target) == ("cpu", "cpu", "CPU")
    assert runtime.setup("cpu") is runtime.current()
    # Pretend every backend is present, so resolving "ascend" succeeds and the only thing left to
    # refuse the switch is setup()'s guard (mindtorch is already bound to the CPU).
    monkeypatch.setattr(runtime, "available_devices", lambda: dict(ALL))
    with pytest.raises(RuntimeError, match="already runs on 'cpu'.*cannot switch to 'ascend'"):
        runtime.setup("ascend")
    assert runtime.current().device == "cpu" and mindspore.get_context("device_target") == "CPU"


def test_seed_makes_every_rng_repeat():
    import torch  # mindtorch (conftest imported mindnlp through runtime.setup)
    import mindspore

    def draw():
        return (np.random.rand(3), torch.rand(3).numpy(),
                mindspore.ops.standard_normal((3,)).asnumpy())

    runtime.seed_everything(123)
    first = draw()
    runtime.seed_everything(123)
    for a, b in zip(first, draw()):
        np.testing.assert_array_equal(a, b)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ms_gpt2", *args], capture_output=True, text=True, timeout=300)


def test_cli_reports_an_absent_device_and_exits_2():
    result = _cli("attention-demo", "--device", "ascend")
    assert result.returncode == 2
    assert "'ascend' was requested" in result.stderr


def test_attention_walkthrough_prints_every_step_and_a_tiny_difference():
    result = _cli("attention-demo", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step, shape in [("c_attn (Conv1D)", "(1, 10, 2304)"), ("split_heads(query)", "(1, 12, 10, 64)"),
                        ("scores / sqrt(head_dim)", "(1, 12, 10, 10)"), ("causal mask (tril buffer)", "(1, 1, 10, 10)"),
                        ("merge_heads", "(1, 10, 768)"), ("c_proj (Conv1D)", "(1, 10, 768)")]:
        assert any(line.startswith(step) and line.endswith(shape) for line in out.splitlines()), step
    diff = float(out.strip().splitlines()[-1].split("=")[-1])
    assert diff < 1e-5
