"""The benchmark's report: shape, ratio orientation and ceiling fractions (never its speed)."""
import json
import sys

import pytest

from ms_gpt2 import bench
from ms_gpt2.errors import UserError

OURS = {"train": {"tokens_per_s": 100.0, "params": 1000, "peak_rss_mb": 500.0},
        "decode": {"tokens_per_s": 10.0}, "summarize": {"seconds": 4.0}, "framework": "mindtorch"}
REF = {"train": {"tokens_per_s": 50.0, "peak_rss_mb": 300.0}, "decode": {"tokens_per_s": 40.0},
       "summarize": {"seconds": 2.0}, "framework": "torch"}
CEIL = {"matmul_gflops": 10.0, "read_gbps": 2.0}
SPEC = dict(bench.QUICK, n_layer=2, train_len=32, n_embd=64)


def test_ratios_say_greater_than_one_means_ms_gpt2_is_faster():
    r = bench.report("cpu", SPEC, OURS, REF, CEIL)
    assert r["train"]["ratio"] == pytest.approx(2.0)       # 100 vs 50 tokens/s: we are faster
    assert r["decode"]["ratio"] == pytest.approx(0.25)     # 10 vs 40 tokens/s: we are slower
    assert r["summarize"]["ratio"] == pytest.approx(0.5)   # 4 s vs 2 s: we are slower


def test_fractions_of_the_machine_ceilings():
    r = bench.report("cpu", SPEC, OURS, None, CEIL)
    flops_per_token = 6 * 1000 + 12 * 2 * 32 * 64
    assert r["train"]["fraction_of_ceiling"] == pytest.approx(100 * flops_per_token / 10e9)
    assert r["decode"]["fraction_of_ceiling"] == pytest.approx(10 * 1000 * 4 / 2e9)
    assert r["summarize"]["fraction_of_ceiling"] is None
    for key in ("train", "decode", "summarize"):
        assert r[key]["reference"] is None and r[key]["ratio"] is None


def test_quick_bench_writes_a_complete_report(tmp_path):
    out = tmp_path / "bench.json"
    result = bench.bench(quick=True, json_path=out, print_fn=lambda *a: None)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["device"] == "cpu"
    machine = saved["machine"]  # the ratios depend on the machine: the report says which
    assert machine["cpu_model"] and machine["cpu_model"] == bench.cpu_model()
    assert machine["cores"] >= 1 and machine["started_at"]
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3
    for key in ("train", "decode", "summarize"):
        assert set(saved[key]) >= {"ms_gpt2", "reference", "ratio", "fraction_of_ceiling"}
        assert saved[key]["ms_gpt2"] > 0
    assert 0 < saved["train"]["fraction_of_ceiling"] < 1 and 0 < saved["decode"]["fraction_of_ceiling"] < 1
    assert saved["ceilings"]["matmul_gflops"] > 0 and saved["ceilings"]["read_gbps"] > 0
    assert saved["train"]["peak_memory_mb"] > 0
    assert saved["train"]["path"] == "compiled training engine" and saved["train"]["eager_on_mindtorch"] > 0
    assert saved["ceilings"]["mindspore_matmul_gflops"] > 0 and 0 < saved["train"]["fraction_of_mindspore_matmul"]
    assert saved["decode"]["path"] == "compiled static-cache decoder"
    assert saved["decode"]["hf_generate_on_mindtorch"] > 0 and saved["decode"]["identical_to_library"] is True
    assert out.with_suffix(".png").stat().st_size > 1000
    text = bench.table(result)
    assert "train (tokens/s)" in text and "ratio > 1: ms_gpt2 faster" in text
    assert text.startswith(f"machine: {machine['cpu_model']}, {machine['cores']} cores, load average ")


def test_a_reference_interpreter_without_torch_is_a_clear_error():
    # this venv has no real torch: mindtorch only stands in after `import mindnlp`
    with pytest.raises(UserError, match="needs torch \\+ transformers"):
        bench.run_reference(sys.executable, bench.QUICK, timeout=120)


LSCPU = """Architecture:                            x86_64
CPU(s):                                  2
Vendor ID:                               AuthenticAMD
Model name:                              AMD EPYC 9654 96-Core Processor
CPU family:                              25
"""
CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz\n"


def test_the_cpu_model_is_read_from_lscpu_or_cpuinfo_layouts():
    assert bench._field(LSCPU, "Model name") == "AMD EPYC 9654 96-Core Processor"
    assert bench._field(CPUINFO, "model name") == "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"
    assert bench._field("Model name:   \n", "Model name") is None  # empty: fall through to the next source
    assert bench.cpu_model()  # this machine names its CPU one way or another


def test_a_busy_start_is_flagged():
    idle = {"cpu_model": "X", "cores": 2, "usable_cores": 2, "load_average_start": [0.1, 0.1, 0.1]}
    assert bench.busy_note(idle) is None and bench.busy_note(None) is None
    assert "busy" in bench.busy_note(dict(idle, load_average_start=[1.9, 1.0, 0.5]))
    assert "busy" in bench.table(bench.report("cpu", SPEC, OURS, REF, CEIL, dict(idle, load_average_start=[3.0] * 3)))

