"""Device policy, the CLI's device errors, seeding, and the attention walkthrough command."""
import os
import subprocess
import sys

import numpy as np
import pytest

from ms_gpt2.infra import runtime
from ms_gpt2.infra.errors import UserError

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


# -- branches that run only on a device, forced on CPU ----------------------------------------------
def _pretend_setup(monkeypatch, device):
    """runtime.setup(device) on this CPU machine with MindSpore's device calls recorded, not made:
    -> the calls (set_device, Ascend's op precision mode, the CPU's inline launches)."""
    import mindspore
    from mindspore.device_context.ascend import op_precision

    calls = []
    real_get_context = mindspore.get_context
    monkeypatch.setattr(runtime, "_current", None)   # restored after the test: the CPU runtime comes back
    monkeypatch.setattr(runtime, "available_devices", lambda: dict(ALL))
    monkeypatch.setattr(mindspore, "set_device", lambda target: calls.append(("set_device", target)))
    monkeypatch.setattr(mindspore, "get_context", lambda key: runtime.MINDSPORE_TARGET[device]
                        if key == "device_target" else real_get_context(key))
    monkeypatch.setattr(op_precision, "precision_mode", lambda mode: calls.append(("precision_mode", mode)))
    monkeypatch.setattr(mindspore.runtime, "launch_blocking", lambda: calls.append(("launch_blocking",)))
    join = runtime._join_msrun_group
    monkeypatch.setattr(runtime, "_join_msrun_group", lambda: calls.append(("join msrun group",)) or join())
    rt = runtime.setup(device)
    return rt, calls


@pytest.mark.parametrize("device,torch_device,expected", [
    ("ascend", "npu", [("set_device", "Ascend"), ("precision_mode", "must_keep_origin_dtype")]),
    ("gpu", "cuda", [("set_device", "GPU")]),
    ("cpu", "cpu", [("set_device", "CPU")]),
])
@pytest.mark.parametrize("launch", ["async", "inline"])
def test_setup_on_a_device_requests_its_backend_and_on_ascend_keeps_each_ops_dtype(monkeypatch, device, torch_device,
                                                                                    expected, launch):
    """runtime.setup's Ascend-only branch: float32 stays float32 on a 910A (force_fp16 by default);
    MS_GPT2_CPU_LAUNCH=inline launches ops in the calling thread on the CPU only (devices keep
    asynchronous dispatch)."""
    monkeypatch.setenv(runtime.LAUNCH_ENV, launch)
    if device == "cpu" and launch == "inline":
        expected = expected + [("launch_blocking",)]
    rt, calls = _pretend_setup(monkeypatch, device)
    expected = expected + [("join msrun group",)]   # the device's settings come first (before any op)
    assert calls == expected
    assert (rt.device, rt.torch_device, rt.mindspore_target) == (device, torch_device,
                                                                 runtime.MINDSPORE_TARGET[device])
    assert rt.cpu_launch == (launch if device == "cpu" else None)   # what bench reports record


def test_cpu_ops_launch_inline_unless_asked_and_a_misspelt_launch_is_a_user_error(monkeypatch):
    """This CPU process (set up by tests/conftest.py) launches inline; MS_GPT2_CPU_LAUNCH is read with
    spaces and case forgiven, and anything but async or inline is refused by every setup call."""
    from mindspore._c_expression import RuntimeConf

    rt = runtime.ensure()   # this process: set up by tests/conftest.py as the environment asked
    assert rt.device == "cpu" and rt.cpu_launch == runtime.cpu_launch()
    assert RuntimeConf.get_instance().is_launch_blocking() == (rt.cpu_launch == "inline")
    monkeypatch.delenv(runtime.LAUNCH_ENV, raising=False)
    assert runtime.cpu_launch() == "inline"
    monkeypatch.setenv(runtime.LAUNCH_ENV, " Async ")
    assert runtime.cpu_launch() == "async"
    monkeypatch.setenv(runtime.LAUNCH_ENV, "blocking")
    with pytest.raises(UserError, match="MS_GPT2_CPU_LAUNCH='blocking': expected one of async, inline"):
        runtime.setup("cpu")   # already set up: still checked


def test_ascend_soc_is_asked_of_mindspore_only_on_ascend(monkeypatch):
    """runtime.ascend_soc's Ascend-only branch (it decides the 910A refusals of engine/options.py)."""
    import dataclasses

    from mindspore import _c_expression

    class Context:
        soc = "ascend910"

        @classmethod
        def get_instance(cls):
            return cls()

        def get_ascend_soc_version(self):
            return self.soc

    monkeypatch.setattr(_c_expression, "MSContext", Context)
    assert runtime.ascend_soc() is None                                  # on CPU: not asked
    monkeypatch.setattr(runtime, "_current", dataclasses.replace(runtime.current(), device="ascend"))
    assert runtime.ascend_soc() == "ascend910"
    Context.soc = ""                                                     # MindSpore knows none
    assert runtime.ascend_soc() is None


def test_the_ascend_soc_reaches_the_refusals(monkeypatch):
    """options.check_config / check_arguments read the device and SoC from the runtime: a 910A refuses bf16."""
    import dataclasses
    from types import SimpleNamespace

    from ms_gpt2.engine import options

    monkeypatch.setattr(runtime, "_current", dataclasses.replace(runtime.current(), device="ascend"))
    monkeypatch.setattr(runtime, "ascend_soc", lambda: "ascend910")
    with pytest.raises(options.EngineError, match="training.bf16=true: this NPU is an Atlas training-series 910A"):
        options.check_config({"training": {"bf16": True}}, "compiled")
    options.check_config({"training": {"fp16": True}}, "compiled")       # fp16 runs there
    with pytest.raises(options.EngineError, match="training.bf16=true: this NPU is an Atlas training-series 910A"):
        options.check_arguments(SimpleNamespace(bf16=True), "eager")
    monkeypatch.setattr(runtime, "ascend_soc", lambda: "ascend910b")
    options.check_config({"training": {"bf16": True}}, "compiled")       # an A2 has bfloat16


def test_dropout_masks_are_drawn_in_the_graph_off_cpu(monkeypatch):
    """dropout.resolve_source's device branch, through CompiledEngine's reading of the runtime device."""
    import dataclasses

    from mindnlp.transformers import GPT2Config

    from ms_gpt2.models.graphs import dropout
    from ms_gpt2.engine.compiled import CompiledEngine
    from ms_gpt2.models.gpt2 import GPT2ForSummarization

    assert [dropout.resolve_source("auto", d) for d in ("ascend", "gpu", "cpu")] == ["device", "device", "host"]
    model = GPT2ForSummarization(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                            resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, pad_token_id=0))
    model.train()
    assert CompiledEngine(model, {}).graph.cfg.dropout_source == "host"
    monkeypatch.setattr(runtime, "_current", dataclasses.replace(runtime.current(), device="ascend"))
    assert CompiledEngine(model, {}).graph.cfg.dropout_source == "device"


def test_training_arguments_leave_the_cpu_on_a_device(monkeypatch, tmp_path, char_vocab_dir):
    """jobs.fit.fit's use_cpu=False on a device (the Trainer then places the model on npu/cuda)."""
    import dataclasses

    from conftest import DEMO_DATA
    from ms_gpt2.jobs import fit as fitting, train as training
    from ms_gpt2.infra.config import load_config

    seen = {}

    class Stop(Exception):
        pass

    def arguments(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(fitting, "TrainingArguments", arguments)
    config = load_config("configs/smoke.yaml", ["model.n_positions=64", "model.n_embd=16", "model.n_layer=1",
                                                "model.n_head=2", "data.max_seq_len=64", "data.max_summary_len=30",
                                                f"tokenizer.path={char_vocab_dir}"])
    for device, use_cpu in (("cpu", True), ("ascend", False)):
        monkeypatch.setattr(runtime, "_current", dataclasses.replace(runtime.current(), device=device))
        with pytest.raises(Stop):
            training.train(config, DEMO_DATA, tmp_path / device)
        assert seen["use_cpu"] is use_cpu


def test_the_benchs_pytorch_reference_loads_torch_npu_for_an_npu(tmp_path):
    """bench/workloads.py's reference side imports torch_npu when the bench runs on Ascend (reference_device
    "npu", runtime.TORCH_DEVICE["ascend"]). Forced with stand-in torch/transformers/torch_npu modules:
    the stand-in torch_npu exits 42 on import."""
    import json
    import os

    from ms_gpt2.bench import gpt2 as bench

    (tmp_path / "torch.py").write_text("")
    (tmp_path / "transformers.py").write_text("GPT2Config = GPT2LMHeadModel = object\n")
    (tmp_path / "torch_npu.py").write_text("raise SystemExit(42)\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))

    def reference(device):
        spec = json.dumps({"reference_device": device, "only": "train"})
        return subprocess.run([sys.executable, str(bench.WORKLOADS), spec], env=env, capture_output=True, text=True,
                              timeout=120).returncode

    assert reference(runtime.TORCH_DEVICE["ascend"]) == 42
    assert reference("cpu") not in (0, 42)     # no torch_npu: it goes on (and fails on the stand-in torch)


def test_freed_memory_goes_back_to_the_system():
    """glibc keeps freed heap memory resident (what a compiled step freed stayed in the process's
    figure between steps); runtime.return_freed_memory hands it back."""
    from ms_gpt2.bench.peak import vm_kib

    if not runtime.return_freed_memory():
        pytest.skip("no glibc malloc_trim here")
    blocks = [bytearray(4000) for _ in range(50_000)]   # ~200 MB in the heap, past pymalloc's small objects
    top = bytearray(4000)                                # keeps the heap's top in use: free() cannot shrink it
    held = vm_kib("VmRSS")
    del blocks
    freed = vm_kib("VmRSS")
    assert runtime.return_freed_memory()
    trimmed = vm_kib("VmRSS")
    assert held - freed < 50 * 1024                      # freed, but still resident
    assert freed - trimmed > 150 * 1024                  # given back
    del top


def test_a_step_returns_host_memory_only_on_the_cpu_backend(monkeypatch):
    """After each compiled step the Trainer (and the BERT bench, as the Trainer does) hands freed
    host memory back on CPU; on a device the step's memory is the device's and nothing is trimmed."""
    import types

    trims = []
    monkeypatch.setattr(runtime, "return_freed_memory", lambda: trims.append(1) or True)
    for device, expected in (("ascend", False), ("gpu", False), ("cpu", True)):
        monkeypatch.setattr(runtime, "ensure", lambda device=device: types.SimpleNamespace(device=device))
        assert runtime.return_step_memory() is expected
    assert trims == [1]   # once, on the CPU backend only
