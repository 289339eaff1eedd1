"""The benchmark's report: shape, ratio orientation and ceiling fractions (never its speed)."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from ms_gpt2.bench import bert as bench_bert
from ms_gpt2.bench import gpt2 as bench
from ms_gpt2.bench import machine as bench_machine
from ms_gpt2.bench import report as bench_report
from ms_gpt2.bench import summary as bench_summary
from ms_gpt2.infra.errors import UserError

OURS = {"train": {"tokens_per_s": 100.0, "params": 1000, "peak_rss_mb": 500.0},
        "decode": {"tokens_per_s": 10.0}, "summarize": {"seconds": 4.0}, "framework": "mindtorch"}
REF = {"train": {"tokens_per_s": 50.0, "peak_rss_mb": 300.0}, "decode": {"tokens_per_s": 40.0},
       "summarize": {"seconds": 2.0}, "framework": "torch"}
CEIL = {"matmul_gflops": 10.0, "read_gbps": 2.0}
SPEC = dict(bench.QUICK, n_layer=2, train_len=32, n_embd=64)


def test_ratios_say_greater_than_one_means_ms_gpt2_is_faster():
    r = bench_report.report("cpu", SPEC, OURS, REF, CEIL)
    assert r["train"]["ratio"] == pytest.approx(2.0)       # 100 vs 50 tokens/s: we are faster
    assert r["decode"]["ratio"] == pytest.approx(0.25)     # 10 vs 40 tokens/s: we are slower
    assert r["summarize"]["ratio"] == pytest.approx(0.5)   # 4 s vs 2 s: we are slower


def test_fractions_of_the_machine_ceilings():
    r = bench_report.report("cpu", SPEC, OURS, None, CEIL)
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
    assert machine["cpu_model"] and machine["cpu_model"] == bench_machine.cpu_model()
    assert machine["cores"] >= 1 and machine["started_at"]
    from mindspore._c_expression import RuntimeConf   # how this process's CPU ops did launch

    assert machine["cpu_launch"] == ("inline" if RuntimeConf.get_instance().is_launch_blocking() else "async")
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3
    for key in ("train", "decode", "summarize"):
        assert set(saved[key]) >= {"ms_gpt2", "reference", "ratio", "fraction_of_ceiling"}
        assert saved[key]["ms_gpt2"] > 0
    assert 0 < saved["train"]["fraction_of_ceiling"] < 1 and 0 < saved["decode"]["fraction_of_ceiling"] < 1
    assert saved["ceilings"]["matmul_gflops"] > 0 and saved["ceilings"]["read_gbps"] > 0
    assert saved["train"]["peak_memory_mb"] > 0
    assert saved["train"]["path"] == "compiled training engine" and saved["train"]["eager_on_mindtorch"] > 0
    assert saved["ceilings"]["mindspore_matmul_gflops"] > 0 and 0 < saved["train"]["fraction_of_mindspore_matmul"]
    assert bench_machine.matmul_mode(saved["ceilings"]) == "graph" and saved["ceilings"]["mindspore_matmul_pynative_gflops"] > 0
    assert saved["decode"]["path"] == "compiled static-cache decoder"
    assert saved["decode"]["hf_generate_on_mindtorch"] > 0 and saved["decode"]["identical_to_library"] is True
    assert out.with_suffix(".png").stat().st_size > 1000
    bert = saved["bert_pretraining"]   # BERT on the compiled engine, in a fresh process of its own
    assert bert["ms_gpt2"]["tokens_per_s"] > 0 and bert["ms_gpt2"]["peak_rss_mb"] > 0
    assert bert["ms_gpt2"]["engine"].startswith("BERT pretraining graph") and bert["reference"] is None
    text = bench_report.table(result)
    assert "train (tokens/s)" in text and "ratio > 1: ms_gpt2 faster" in text
    assert text.startswith(f"machine: {machine['cpu_model']}, {machine['cores']} cores, load average ")


def test_mindspore_matmul_rates_wait_for_the_kernel():
    """One op at a time, MindSpore's CPU kernels run asynchronously: a clock stopped at the launch gave
    ~2,000,000 "GFLOP/s" (2026-12-06, 2-core Xeon). Both rates must be of finished work: within a
    few times what NumPy's BLAS does with the same MatMul on the same cores (measured: 0.6-1.05x)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((1024, 768), dtype=np.float32), rng.random((768, 3072), dtype=np.float32)
    numpy_best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        numpy_best = max(numpy_best, 2 * 1024 * 768 * 3072 / (time.perf_counter() - start) / 1e9)
    for compiled in (True, False):
        rate = bench_machine.mindspore_matmul_gflops(0.1, compiled=compiled)
        assert 0 < rate < 3 * numpy_best, (compiled, rate, numpy_best)
    # inline launches (this process) wait for every op anyway: the wait matters with MindSpore's own
    # asynchronous dispatch, so there, in a process of its own, and once without it to show the difference
    code = """if True:
        import json, sys
        from ms_gpt2.infra import compat, runtime
        runtime.setup("cpu")
        from ms_gpt2.bench import machine
        waited = machine.mindspore_matmul_gflops(0.1, compiled=False)
        compat.synchronize = lambda: None   # seconds=0: one timed call (unwaited, they would pile up)
        print(json.dumps([waited, machine.mindspore_matmul_gflops(0.0, compiled=False)]))"""
    env = dict(os.environ, MS_GPT2_CPU_LAUNCH="async")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    waited, not_waited = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 < waited < 3 * numpy_best < not_waited, (waited, not_waited, numpy_best)


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
    assert bench_machine._field(LSCPU, "Model name") == "AMD EPYC 9654 96-Core Processor"
    assert bench_machine._field(CPUINFO, "model name") == "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"
    assert bench_machine._field("Model name:   \n", "Model name") is None  # empty: fall through to the next source
    assert bench_machine.cpu_model()  # this machine names its CPU one way or another


def test_a_busy_start_is_flagged():
    idle = {"cpu_model": "X", "cores": 2, "usable_cores": 2, "load_average_start": [0.1, 0.1, 0.1]}
    assert bench_report.busy_note(idle) is None and bench_report.busy_note(None) is None
    assert "busy" in bench_report.busy_note(dict(idle, load_average_start=[1.9, 1.0, 0.5]))
    busy = dict(idle, load_average_start=[3.0] * 3)
    assert "busy" in bench_report.table(bench_report.report("cpu", SPEC, OURS, REF, CEIL, busy))


def saved_run(tmp_path, name, train, decode, summarize, matmul, cpu="AMD EPYC 9654", spec=SPEC, device="cpu",
              mode="graph"):
    """A report as `ms-gpt2 bench --json` saves it, with these ms_gpt2 figures against REF (50 tokens/s,
    40 tokens/s, 2 s) and this MindSpore MatMul rate, timed as ``mode`` says (bench_machine.matmul_mode):
    "graph" as reports are saved now, "copied" in a graph, each call ended by asnumpy(), None one op at a
    time, alone (the oldest reports)."""
    ours = {"train": dict(OURS["train"], tokens_per_s=train), "decode": {"tokens_per_s": decode},
            "summarize": {"seconds": summarize}, "framework": "mindtorch"}
    where = None if cpu is None else {"cpu_model": cpu, "cores": 2, "usable_cores": 2,
                                      "started_at": f"2026-12-0{name[-1]}",
                                      "load_average_start": [0.2, 0.2, 0.2], "load_average_end": [1.8, 1.0, 0.5]}
    ceil = dict(CEIL, mindspore_matmul_gflops=matmul)
    if mode is not None:   # "graph": as reports are saved now; "copied": the first graph timing (asnumpy)
        ceil.update(mindspore_matmul_pynative_gflops=50.0, **({"mindspore_matmul_wait": "synchronize"}
                                                              if mode == "graph" else {}))
    result = bench_report.report(device, spec, ours, REF, ceil, where)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(result))
    return path


def three_runs(tmp_path):
    return [saved_run(tmp_path, "run1", 60.0, 44.0, 1.5, 212.0), saved_run(tmp_path, "run2", 54.0, 48.0, 1.6, 127.0),
            saved_run(tmp_path, "run3", 59.0, 42.0, 1.25, 101.0)]


def test_cpu_reports_carry_issue_24s_speed_targets_and_print_them():
    """Set on the project's 2-core CPU: saved with (and printed from) a CPU report of the parts that
    ran, and not in a device's report."""
    full = bench_report.report("cpu", SPEC, OURS, REF, CEIL, None)
    assert full["targets"] == {"train": {"ratio": 1.5, "fraction_of_mindspore_matmul": 0.75},
                               "decode": {"fraction_of_ceiling": 0.8}}
    assert ("targets (issue 24): train >= 1.5x the reference; train >= 75% of MindSpore's own MatMul rate in a "
            "graph; decode >= 80% of the read ceiling") in bench_report.table(full)
    decode_only = bench_report.report("cpu", SPEC, {"decode": dict(OURS["decode"], params=1000)}, REF, CEIL, None)
    assert decode_only["targets"] == {"decode": {"fraction_of_ceiling": 0.8}}
    on_a_device = bench_report.report("ascend", SPEC, OURS, REF, CEIL, None)
    assert "targets" not in on_a_device and "targets (issue 24)" not in bench_report.table(on_a_device)
    summary_only = bench_report.report("cpu", SPEC, {"summarize": OURS["summarize"]}, REF, CEIL, None)
    assert "targets" not in summary_only  # no figure with a target ran


def test_summarize_gives_median_and_min_max_of_every_figure(tmp_path):
    printed = []
    summary = bench_summary.summarize(three_runs(tmp_path), print_fn=printed.append)
    f = summary["figures"]
    assert f["train"]["ratio"] == {"median": pytest.approx(1.18), "min": pytest.approx(1.08),
                                   "max": pytest.approx(1.2), "n": 3}
    assert f["train"]["ms_gpt2"]["median"] == 59.0 and f["train"]["reference"]["median"] == 50.0
    assert (f["decode"]["ratio"]["median"], f["decode"]["ratio"]["min"], f["decode"]["ratio"]["max"]) == \
        pytest.approx((1.1, 1.05, 1.2))
    # summarize: reference seconds / ms_gpt2 seconds, and its own seconds as measured
    assert (f["summarize"]["ratio"]["min"], f["summarize"]["ratio"]["max"]) == pytest.approx((1.25, 1.6))
    assert f["summarize"]["ms_gpt2"]["median"] == 1.5
    assert summary["mindspore_matmul_gflops"] == {"median": 127.0, "min": 101.0, "max": 212.0, "n": 3}
    assert summary["cpu_models"] == ["AMD EPYC 9654"]
    text = printed[0]
    assert "3 runs of the quick workload on cpu; CPU model: AMD EPYC 9654 (2 cores)" in text
    assert "MindSpore's own MatMul (graph): median 127 GFLOP/s, 101–212 over the runs" in text
    assert "1.18x" in text and "1.08x–1.2x" in text
    assert "MatMul 212 GFLOP/s, load 0.20→1.80; train 1.2x, decode 1.1x, summarize 1.33x" in text
    # each speed figure's fraction of its limit (the reports': training FLOP/s over each run's MatMul rate)
    fractions = [json.loads(path.read_text())["train"]["fraction_of_mindspore_matmul"] for path in three_runs(tmp_path)]
    assert f["train"]["fraction"] == {"median": pytest.approx(sorted(fractions)[1]), "min": pytest.approx(min(fractions)),
                                      "max": pytest.approx(max(fractions)), "n": 3}
    assert f"train of MindSpore's MatMul{100 * sorted(fractions)[1]:>10.3g}%" in text
    assert f["decode"]["fraction"]["n"] == 3 and "decode of the read ceiling" in text
    assert "targets (issue 24): train >= 1.5x the reference" in text
    assert "at least three" not in text and "busy" not in text


def test_summarize_takes_older_reports_without_targets_or_fractions(tmp_path):
    """Reports saved before the targets and fractions were: no target line from them, and a fraction's
    spread only over the runs that have one; the targets come from any run that saved them."""
    runs = three_runs(tmp_path)
    for path in runs[:2]:
        result = json.loads(path.read_text())
        del result["targets"], result["train"]["fraction_of_mindspore_matmul"]
        path.write_text(json.dumps(result))
    printed = []
    summary = bench_summary.summarize(runs[:2], print_fn=printed.append)
    assert summary["targets"] == {} and "targets (issue 24)" not in printed[0]
    assert summary["figures"]["train"]["fraction"]["n"] == 0 and "train of MindSpore's MatMul" not in printed[0]
    assert summary["figures"]["decode"]["fraction"]["n"] == 2
    summary = bench_summary.summarize(runs, print_fn=printed.append)
    assert summary["figures"]["train"]["fraction"]["n"] == 1 and summary["targets"]["train"]["ratio"] == 1.5
    assert "targets (issue 24): train >= 1.5x" in printed[1]
    # a target this code has no words for is still printed, not a crash
    assert bench_report.target_text({"decode": {"new_key": 0.5}}) == "decode new_key >= 0.5"


def test_summarize_refuses_to_mix_cpu_models_unless_asked(tmp_path):
    runs = three_runs(tmp_path) + [saved_run(tmp_path, "run4", 30.0, 20.0, 3.0, 90.0, cpu="Intel Xeon Gold 6248")]
    with pytest.raises(UserError, match="different CPU models: AMD EPYC 9654 .*; Intel Xeon Gold 6248 .*--mixed-cpus"):
        bench_summary.summarize(runs, print_fn=lambda *a: None)
    printed = []
    summary = bench_summary.summarize(runs, mixed_cpus=True, print_fn=printed.append)
    assert summary["cpu_models"] == ["AMD EPYC 9654", "Intel Xeon Gold 6248"]
    assert summary["figures"]["train"]["ratio"]["n"] == 4
    assert "different CPU models (--mixed-cpus)" in printed[0]


def test_summarize_refuses_to_mix_matmul_rates_timed_differently(tmp_path):
    """Reports before 2026-12-06 timed MindSpore's MatMul one op at a time (about half the graph's
    rate): a spread over both kinds, and the fractions of it, would mean nothing."""
    old = saved_run(tmp_path, "run4", 59.0, 42.0, 1.25, 105.0, mode=None)
    with pytest.raises(UserError, match=r"timed MindSpore's MatMul differently: graph \(.*run1.json.*\); "
                                        r"one op at a time \(.*run4.json\)"):
        bench_summary.summarize(three_runs(tmp_path) + [old], print_fn=lambda *a: None)
    printed = []
    bench_summary.summarize([old], print_fn=printed.append)
    assert "MindSpore's own MatMul (one op at a time): median 105 GFLOP/s" in printed[0]
    # the first graph timings ended each call with asnumpy(), which took ~20% of it
    copied = saved_run(tmp_path, "run5", 59.0, 42.0, 1.25, 198.0, mode="copied")
    with pytest.raises(UserError, match=r"graph, ended by asnumpy\(\) \(.*run5.json\)"):
        bench_summary.summarize(three_runs(tmp_path) + [copied], print_fn=lambda *a: None)
    ceil = dict(CEIL, mindspore_matmul_gflops=1.0, mindspore_matmul_pynative_gflops=1.0)
    assert bench_machine.matmul_mode(dict(ceil, mindspore_matmul_wait="event")) == "graph, event"  # a later kind
    assert bench_machine.matmul_mode(CEIL) is None


def test_summarize_refuses_to_mix_cpu_launch_modes(tmp_path):
    """Reports before MS_GPT2_CPU_LAUNCH ran MindSpore's asynchronous dispatch (no key: "async"): its
    one-op MatMul rate and eager figures differ from an inline run's, so the two do not combine."""
    inline = saved_run(tmp_path, "run4", 59.0, 42.0, 1.25, 127.0)
    result = json.loads(inline.read_text())
    result["machine"]["cpu_launch"] = "inline"
    inline.write_text(json.dumps(result))
    with pytest.raises(UserError, match=r"launched differently \(MS_GPT2_CPU_LAUNCH\): async \(.*run1.json.*\); "
                                        r"inline \(.*run4.json\)"):
        bench_summary.summarize(three_runs(tmp_path) + [inline], print_fn=lambda *a: None)
    assert bench_summary.summarize([inline], print_fn=lambda *a: None)["figures"]["train"]["ms_gpt2"]["n"] == 1
    # a device has no CPU launch mode (None), and its reports from before the key combine with new ones
    old, new = (saved_run(tmp_path, f"npu{i}", 59.0, 42.0, 1.25, 127.0, device="ascend") for i in (1, 2))
    result = json.loads(new.read_text())
    result["machine"]["cpu_launch"] = None
    new.write_text(json.dumps(result))
    assert bench_summary.summarize([old, new], print_fn=lambda *a: None)["figures"]["train"]["ms_gpt2"]["n"] == 2


def test_a_run_that_did_not_record_its_cpu_is_a_model_of_its_own(tmp_path):
    old = saved_run(tmp_path, "old1", 161.0, 60.0, 9.45, 212.0, cpu=None)  # saved before the machine was recorded
    with pytest.raises(UserError, match="not recorded"):
        bench_summary.summarize(three_runs(tmp_path) + [old], print_fn=lambda *a: None)
    printed = []
    bench_summary.summarize([old], print_fn=printed.append)
    assert "CPU model: not recorded" in printed[0] and "quote a spread over at least three" in printed[0]


def test_summarize_names_the_runs_that_started_on_a_busy_machine(tmp_path):
    path = saved_run(tmp_path, "run9", 60.0, 44.0, 1.5, 212.0)
    result = json.loads(path.read_text())
    result["machine"]["load_average_start"] = [4.0, 2.0, 1.0]
    path.write_text(json.dumps(result))
    printed = []
    bench_summary.summarize(three_runs(tmp_path) + [path], print_fn=printed.append)
    assert f"note: 1 of the runs started on a busy machine (load average at least half the cores): {path}" in printed[0]


def test_summarize_never_combines_other_workloads_devices_or_non_reports(tmp_path):
    runs = three_runs(tmp_path)
    with pytest.raises(UserError, match="another workload"):
        bench_summary.summarize(runs + [saved_run(tmp_path, "full4", 60.0, 44.0, 1.5, 212.0, spec=bench.FULL)],
                                mixed_cpus=True)
    with pytest.raises(UserError, match="ran on ascend"):
        bench_summary.summarize(runs + [saved_run(tmp_path, "npu5", 60.0, 44.0, 1.5, 212.0, device="ascend")],
                                mixed_cpus=True)
    summary_json = tmp_path / "summary.json"
    bench_summary.summarize(runs, json_path=summary_json, print_fn=lambda *a: None)
    with pytest.raises(UserError, match="not an `ms-gpt2 bench --json` report"):
        bench_summary.summarize(runs + [summary_json])
    with pytest.raises(UserError, match="missing.json: not a readable bench report"):
        bench_summary.summarize([tmp_path / "missing.json"])


def test_the_command_line_refuses_mixed_cpus_in_one_line_exit_2(tmp_path, capsys):
    from ms_gpt2 import cli

    other = saved_run(tmp_path, "run4", 30.0, 20.0, 3.0, 90.0, cpu="Other")
    runs = [str(p) for p in three_runs(tmp_path) + [other]]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--device", "cpu", "--summarize", *runs])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ms-gpt2: error: runs from different CPU models")
    assert cli.main(["bench", "--device", "cpu", "--summarize", *runs, "--mixed-cpus"]) == 0
    assert "4 runs of the quick workload" in capsys.readouterr().out


def test_recompute_memory_runs_each_setting_in_a_fresh_process():
    """``bench --recompute-memory``: peak memory without and with recomputation, each measured in a
    child process of its own, the same losses in both (toy sizes: checks the report, not the saving)."""
    lines = []
    spec = dict(bench.QUICK, n_layer=1, train_steps=2)
    result = bench.recompute_memory(spec, device="cpu", print_fn=lines.append)
    assert (result["off"]["recompute"], result["on"]["recompute"]) == (False, True)
    assert result["same_losses"] and len(result["off"]["losses"]) == 2
    for key in ("off", "on"):
        assert 0 < result[key]["built_rss_mb"] <= result[key]["peak_rss_mb"]
        assert result["step_peak_mb"][key] == result[key]["peak_rss_mb"] - result[key]["built_rss_mb"]
    assert result["saved_mb"] == result["off"]["peak_rss_mb"] - result["on"]["peak_rss_mb"]
    assert "recomputation saves" in lines[0] and "n_layer 1, n_embd 64, batch 2 x 32" in lines[0]


def test_recompute_memory_refuses_what_it_does_not_measure(capsys):
    from ms_gpt2 import cli

    for extra in (["--png", "x.png"], ["--reference-python", "python3"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["bench", "--device", "cpu", "--recompute-memory", *extra])
        assert exit_.value.code == 2
        assert "--recompute-memory measures ms_gpt2 alone" in capsys.readouterr().err


# --- ms-gpt2 bench --memory -------------------------------------------------------------------

def test_the_layer_fit_recovers_the_fixed_and_per_layer_parts():
    fit = bench.layer_fit([(n, 1500.0 + 250.0 * n) for n in (2, 4, 8, 12)])
    assert fit["fixed_mb"] == pytest.approx(1500.0) and fit["per_layer_mb"] == pytest.approx(250.0)
    assert bench.layer_fit([(12, 4000.0)]) is None      # one depth: nothing to fit


def test_the_memory_report_runs_each_workload_once_and_says_whether_the_target_is_met():
    calls = []

    def fake(spec, engine, python):  # peak grows with depth and tokens; the reference is smaller
        calls.append((engine, spec["n_layer"], spec["train_batch"], spec["train_len"]))
        mb = 100.0 * spec["n_layer"] + spec["train_batch"] * spec["train_len"] / 10
        return {"peak_rss_mb": mb * {"compiled": 1.0, "eager": 2.0, "reference": 0.9}[engine], "step_s": 1.0}

    result = bench.memory_report(reference_python="ref", shapes=((4, 256), (1, 1024)), layers=(2, 4, 12),
                                 run=fake, print_fn=lambda *a: None)
    assert len(calls) == len(set(calls))                                  # nothing measured twice
    assert {c[0] for c in calls} == {"compiled", "eager", "reference"}
    assert [c[1] for c in calls if c[0] == "compiled"] == [12, 12, 2, 4]   # the 12-layer B4x256 run is reused
    first = result["shapes"][0]
    assert first["ratio"] == pytest.approx(1 / 0.9) and first["target_met"] is True
    assert result["layers"]["fit"]["per_layer_mb"] == pytest.approx(100.0)
    assert [r["n_layer"] for r in result["layers"]["rows"]] == [2, 4, 12]
    text = bench_report.memory_table(result)
    assert "B4 x 256" in text and "B1 x 1024" in text and "met" in text and "per layer" in text
    missing = bench.memory_report(shapes=((4, 256),), layers=(2, 12), run=fake, print_fn=lambda *a: None)
    assert missing["shapes"][0]["ratio"] is None and "no reference" in bench_report.memory_table(missing)


def test_a_memory_child_measures_a_tiny_model_in_its_own_process():
    spec = bench.memory_spec(dict(bench.QUICK, n_layer=1, n_embd=32, n_head=2, vocab_size=200), 1, 16)
    compiled = bench.memory_child(spec, "compiled")
    eager = bench.memory_child(spec, "eager")
    for result in (compiled, eager):
        assert result["peak_rss_mb"] > 100 and result["step_s"] > 0
    assert len(compiled["losses"]) == 3 and all(np.isfinite(compiled["losses"]))
    with pytest.raises(UserError, match="needs torch \\+ transformers"):
        bench.memory_child(spec, "reference", python=sys.executable, timeout=120)


def test_memory_refuses_what_it_does_not_measure(capsys):
    from ms_gpt2 import cli

    for extra in (["--png", "x.png"], ["--recompute-memory"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["bench", "--device", "cpu", "--memory", *extra])
        assert exit_info.value.code == 2
        assert "--memory prints a table" in capsys.readouterr().err


def test_the_memory_report_measures_the_real_train_command_beside_the_reference_trainer():
    """``bench --memory`` runs ``ms-gpt2 train`` (the argv the cli gives, with the tutorial's config, the
    bundled data, 3 steps, each shape) and the reference Trainer on the same token ids, and sets each
    ratio against the 1.1x target. Faked runs: this checks what each is asked to do, not the figures."""
    from pathlib import Path

    from ms_gpt2.bench import train_command

    seen = {}

    def fake(spec, engine, python):
        if engine == "command":
            argv = spec["argv"]
            assert argv[:2] == ["TRAIN", "COMMAND"] and "configs/tutorial.yaml" in argv[argv.index("--config") + 1]
            sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
            assert "training.max_steps=3" in sets and "data.fraction=1.0" in sets
            batch = int(next(s for s in sets if s.startswith("training.per_device_train_batch_size=")).split("=")[1])
            length = int(next(s for s in sets if s.startswith("data.max_seq_len=")).split("=")[1])
            vocab = Path(argv[argv.index("--tokenizer") + 1]) / "vocab.txt"
            seen[engine, batch, length] = len(vocab.read_text(encoding="utf-8").splitlines())
            return {"peak_rss_mb": {256: 1000.0, 1024: 1300.0}[length], "seconds": 1.0}
        if engine == "command_reference":
            assert python == "ref"
            m, t = spec["model"], spec["training"]
            assert (m["vocab_size"], m["n_positions"], m["n_embd"], m["n_layer"], m["n_head"], m["dropout"]) == \
                (21128, 1024, 768, 12, 12, 0.1)
            assert t["max_steps"] == 3 and t["max_grad_norm"] == 1.0 and t["learning_rate"] == 1.5e-4
            # the command's saving: save_steps "epoch" = 58 examples / batch; the stop at max_steps saves too
            assert spec["save"] == {"save_strategy": "steps", "save_safetensors": True, "save_total_limit": 3,
                                    "save_steps": {4: 15, 1: 58}[t["per_device_train_batch_size"]]}
            examples = json.loads(Path(spec["examples"]).read_text(encoding="utf-8"))
            ids = np.array(examples["input_ids"])
            assert ids.shape[0] == 58 and (np.array(examples["labels"])[ids == 0] == -100).all()
            seen[engine, t["per_device_train_batch_size"], ids.shape[1]] = ids.max() < 21128
            return {"peak_rss_mb": 1000.0, "seconds": 1.0, "vmhwm_mb": 1000.0}
        return {"peak_rss_mb": 100.0, "step_s": 1.0}  # the synthetic workloads

    result = bench.memory_report(reference_python="ref", shapes=((4, 256), (1, 1024)), layers=(12,), run=fake,
                                 print_fn=lambda *a: None, train_command=["TRAIN", "COMMAND"])
    assert seen == {("command", 4, 256): 21128, ("command", 1, 1024): 21128,   # the tutorial's vocabulary size
                    ("command_reference", 4, 256): True, ("command_reference", 1, 1024): True}
    command = result["command"]
    assert command["target"] == train_command.TARGET == 1.1 and command["steps"] == 3 and command["vocab_size"] == 21128
    first, second = command["rows"]
    assert (first["batch"], first["length"], second["batch"], second["length"]) == (4, 256, 1, 1024)
    assert first["ratio"] == pytest.approx(1.0) and first["target_met"] is True
    assert second["ratio"] == pytest.approx(1.3) and second["target_met"] is False
    assert 100 < first["example_tokens"][0] <= first["example_tokens"][1] <= 256
    assert result["shapes"][0]["target_met"] is True and result["target"] == 1.25   # the synthetic rows keep theirs
    text = bench_report.memory_table(result)
    assert "the real command: ms-gpt2 train configs/tutorial.yaml" in text and "target <= 1.1x" in text
    assert "1.3x  NOT met" in text and "1,300 MB" in text
    alone = bench.memory_report(shapes=((4, 256),), layers=(12,), run=fake, print_fn=lambda *a: None,
                                train_command=["TRAIN", "COMMAND"])   # no reference: the command's figure alone
    assert alone["command"]["rows"][0]["ratio"] is None and "no reference" in bench_report.memory_table(alone)


# A parent that has touched ~1.5 GB starts the child the way the bench does (a fresh interpreter
# running the file by path); the child reads its own peak with what bench/bert.py and
# bench/workloads.py use. ru_maxrss, which they read before, is carried across exec on Linux: the
# child's ru_maxrss is at least the parent's, so the same test on it fails.
_FAT_PARENT = """
import json, subprocess, sys
import numpy as np
ballast = np.ones(1500 * 2**20 // 8)  # 1.5 GB, every page touched
child = '''
import json, resource, sys
sys.path.insert(0, sys.argv[1])  # as when run by file path: the script's folder is sys.path[0]
import peak
print(json.dumps({"peak_mb": peak.peak_rss_mb(), "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''
out = subprocess.run([sys.executable, "-c", child, sys.argv[1]], capture_output=True, text=True, check=True).stdout
print(out.strip().splitlines()[-1], float(ballast.sum()) > 0)
"""


def test_a_childs_peak_memory_is_its_own_not_its_parents():
    from pathlib import Path

    import ms_gpt2.bench.peak as peak

    folder = str(Path(peak.__file__).parent)
    import subprocess

    done = subprocess.run([sys.executable, "-c", _FAT_PARENT, folder], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    child = json.loads(done.stdout.strip().splitlines()[-1].rsplit(" ", 1)[0])
    assert child["ru_maxrss_mb"] > 1400, child  # the defect this guards against: the parent's 1.5 GB shows up here
    assert child["peak_mb"] < 200, child        # a bare interpreter's own peak: tens of MB
    assert bench_bert.peak_rss_mb is peak.peak_rss_mb  # the BERT bench reads this, not ru_maxrss


# --- ms-gpt2 bench --only: parts of the full bench, each alone (fakes: no workload runs) ------------

FAKE_CEIL = dict(CEIL, mindspore_matmul_gflops=8.0)


@pytest.fixture
def fake_parts(monkeypatch):
    """Every workload of the full bench replaced by a stand-in that records that it ran (and what the
    reference was asked for), so a test sees which parts ran without running any."""
    from ms_gpt2.bench import bert as bench_bert
    from ms_gpt2.bench import workloads

    ran = []

    def record(name, value):
        def fake(*args, **kwargs):
            ran.append(name)
            return value(*args) if callable(value) else value
        return fake

    def reference(python, spec, timeout=3600):
        ran.append(("reference", spec.get("only")))
        parts = spec["only"].split(",") if spec.get("only") else ["train", "decode", "summarize"]
        return dict({k: REF[k] for k in parts}, framework="torch")

    monkeypatch.setattr(bench, "ceilings", record("ceilings", FAKE_CEIL))
    monkeypatch.setattr(bench, "run_reference", reference)
    monkeypatch.setattr(workloads, "train", record("eager train", dict(OURS["train"], steps=[1.0])))
    monkeypatch.setattr(workloads, "decode", record("hf decode", {"tokens_per_s": 8.0}))
    monkeypatch.setattr(workloads, "summarize", record("hf summarize", {"seconds": 5.0, "new_tokens": [1, 2]}))
    monkeypatch.setattr(bench, "compiled_train", record("train", {"tokens_per_s": 100.0, "step_s": 0.64,
                                                                  "compile_s": 1.0, "peak_rss_mb": 600.0}))
    monkeypatch.setattr(bench, "compiled_decode", record("decode", {"tokens_per_s": 10.0, "params": 1000,
                                                                    "identical_to_library": True}))
    monkeypatch.setattr(bench, "compiled_summarize", record("summarize", {"seconds": 4.0,
                                                                          "identical_to_library": True}))
    monkeypatch.setattr(bench_bert, "report", record("bert", {"ms_gpt2": {"tokens_per_s": 20.0, "peak_rss_mb": 700.0},
                                                              "reference": None, "ratio": None,
                                                              "memory_ratio": None}))
    monkeypatch.setattr(bench, "memory_report", record("memory", {"target": 1.25, "shapes": [
        {"batch": 2, "length": 32, "compiled": {"peak_rss_mb": 400.0}, "eager": {"peak_rss_mb": 500.0},
         "ratio": None, "target_met": None}]}))
    monkeypatch.setattr(bench, "recompute_memory", record("recompute", {"saved_mb": 1.0}))
    return ran


WORKLOAD_CALLS = {"train": ["eager train", "train"], "decode": ["hf decode", "decode"],
                  "summarize": ["hf summarize", "summarize"], "bert": ["bert"], "memory": ["memory"],
                  "recompute": ["recompute"]}
SECTIONS = {"train": "train", "decode": "decode", "summarize": "summarize", "bert": "bert_pretraining",
            "memory": "memory", "recompute": "recompute_memory"}


@pytest.mark.parametrize("only", [("decode",), ("train", "summarize"), ("bert",), ("memory", "recompute"),
                                  ("summarize", "decode", "bert", "train", "recompute", "memory")])
def test_only_runs_exactly_the_parts_asked(fake_parts, tmp_path, only):
    out = tmp_path / "bench.json"
    result = bench.bench(quick=True, reference_python="ref", json_path=out, print_fn=lambda *a: None, only=only)
    speed = [p for p in ("train", "decode", "summarize") if p in only]
    expected = ["ceilings"] + [c for part in only for c in WORKLOAD_CALLS[part]]
    if speed:  # the reference runs the speed parts asked, all three without "only" (as the full bench)
        expected.append(("reference", None if len(speed) == 3 else ",".join(speed)))
    assert sorted(map(str, fake_parts)) == sorted(map(str, expected))
    saved = json.loads(out.read_text())
    assert {SECTIONS[p] for p in SECTIONS if p in only} == set(saved) & set(SECTIONS.values())
    machine = saved["machine"]  # always: the machine, its load at start and end, and the ceilings
    assert machine["cpu_model"] and len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3
    assert saved["ceilings"]["mindspore_matmul_gflops"] == 8.0 and saved["workload"] == bench.QUICK
    if "decode" in only:  # its ratio to the read ceiling, even without the training run's parameter count
        assert saved["decode"]["fraction_of_ceiling"] == pytest.approx(10 * 1000 * 4 / 2e9)
    if "train" in only:
        assert saved["train"]["fraction_of_mindspore_matmul"] > 0 and saved["attention"]
    else:
        assert "attention" not in saved


def test_the_full_bench_still_runs_every_part_and_quick_leaves_the_memory_runs_out(fake_parts, tmp_path):
    bench.bench(quick=False, print_fn=lambda *a: None)
    assert sorted(fake_parts) == sorted(["ceilings"] + [c for calls in WORKLOAD_CALLS.values() for c in calls])
    fake_parts.clear()
    result = bench.bench(quick=True, print_fn=lambda *a: None)
    assert "memory" not in fake_parts and "recompute" not in fake_parts and "memory" not in result
    assert list(result)[:9] == ["device", "machine", "workload", "train", "decode", "summarize", "ceilings",
                                "frameworks", "attention"]


def test_only_on_the_command_line(monkeypatch, capsys):
    from ms_gpt2 import cli

    seen = []
    monkeypatch.setattr(bench, "bench", lambda *args, **kwargs: seen.append((args, kwargs)))
    assert cli.main(["bench", "--device", "cpu", "--quick", "--only", "recompute, train"]) == 0
    assert seen[0][0][0] is True and seen[0][1]["only"] == ("train", "recompute")
    refused = {("--only", "train,decod,Bert"): "--only: unknown parts 'decod', 'Bert'; the parts are "
                                               "train,decode,summarize,bert,memory,recompute",
               ("--only", ","): "--only names no part; the parts are",
               ("--only", "memory", "--memory"): "--only and --memory do not combine",
               ("--only", "bert", "--bert"): "--only and --bert do not combine",
               ("--only", "train", "--recompute-memory"): "--only and --recompute-memory do not combine",
               ("--only", "train", "--summarize", "a.json"): "--summarize combines saved reports and runs nothing"}
    for args, message in refused.items():
        with pytest.raises(SystemExit) as exit_:
            cli.main(["bench", "--device", "cpu", *args])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"ms-gpt2: error: {message}"), err
    assert len(seen) == 1  # nothing refused ran


# --- the chart: each figure beside its limit, and the memory and BERT panels ----------------------

def canned_report(parts=("train", "decode", "summarize", "memory", "bert")):
    ours = {k: v for k, v in dict(OURS, train=dict(OURS["train"], eager_tokens_per_s=50.0),
                                  decode=dict(OURS["decode"], params=1000)).items()  # as bench gives it
            if k in parts or k == "framework"}
    result = bench_report.report("cpu", SPEC, ours, REF, FAKE_CEIL, {"cpu_model": "AMD EPYC 9654", "cores": 2})
    if "memory" in parts:
        result["memory"] = {"target": 1.25, "shapes": [
            {"batch": 4, "length": 256, "compiled": {"peak_rss_mb": 4475.0}, "eager": {"peak_rss_mb": 5451.0},
             "reference": {"peak_rss_mb": 3974.0}, "ratio": 4475 / 3974, "target_met": True},
            {"batch": 1, "length": 1024, "compiled": {"peak_rss_mb": 6321.0}, "eager": {"peak_rss_mb": 6804.0},
             "reference": {"peak_rss_mb": 5230.0}, "ratio": 6321 / 5230, "target_met": True}]}
    if "bert" in parts:
        result["bert_pretraining"] = {"ms_gpt2": {"tokens_per_s": 139.0, "peak_rss_mb": 5210.0},
                                      "reference": {"tokens_per_s": 120.0, "peak_rss_mb": 3302.0},
                                      "ratio": 139 / 120, "memory_ratio": 5210 / 3302,
                                      "speed_target": bench_bert.SPEED_TARGET, "memory_target": bench_bert.MEMORY_TARGET}
    return result


def _panels(fig):
    return {ax.get_label(): ax for ax in fig.axes}


def _heights(ax):
    return [bar.get_height() for bar in ax.patches]


def test_the_chart_draws_each_figure_beside_its_limit_and_the_memory_and_bert_panels():
    import matplotlib.pyplot as plt

    result = canned_report()
    fig = bench_report.chart_figure(result)
    try:
        panels = _panels(fig)
        assert list(panels) == ["train", "decode", "summarize", "memory", "bert_speed", "bert_memory"]
        # training at MindSpore's MatMul rate: 100 tokens/s is this fraction of it
        train_limit = 100.0 / result["train"]["fraction_of_mindspore_matmul"]
        assert _heights(panels["train"]) == pytest.approx([100.0, 50.0, train_limit])
        assert [t.get_text() for t in panels["train"].get_xticklabels()] == ["ms_gpt2", "PyTorch ref.", "MatMul limit"]
        decode_limit = 2e9 / (1000 * 4)  # read bandwidth / bytes of weights read per token
        assert _heights(panels["decode"]) == pytest.approx([10.0, 40.0, decode_limit])
        assert "read limit" in [t.get_text() for t in panels["decode"].get_xticklabels()]
        # issue 24's speed targets: training 1.5x the reference (dotted) and 75% of its limit (dashed),
        # decoding 80% of the read limit; the beam summary has none
        assert [(line.get_ydata()[0], line.get_linestyle()) for line in panels["train"].get_lines()] == \
            [(pytest.approx(50.0 * 1.5), ":"), (pytest.approx(train_limit * 0.75), "--")]
        assert [line.get_ydata()[0] for line in panels["decode"].get_lines()] == pytest.approx([decode_limit * 0.8])
        assert panels["summarize"].get_lines() == []
        assert _heights(panels["summarize"]) == pytest.approx([4.0, 2.0])  # no limit to draw
        memory = panels["memory"]  # compiled, eager, reference per shape, and the target over each reference
        assert sorted(_heights(memory)) == sorted([4475.0, 6321.0, 5451.0, 6804.0, 3974.0, 5230.0])
        targets = [seg[0][1] for lines in memory.collections for seg in lines.get_segments()]
        assert targets == pytest.approx([3974.0 * 1.25, 5230.0 * 1.25])
        assert "1.25x" in memory.get_title()
        assert _heights(panels["bert_speed"]) == pytest.approx([139.0, 120.0])
        assert _heights(panels["bert_memory"]) == pytest.approx([5210.0, 3302.0])
        assert "1.58x the memory" in panels["bert_memory"].get_title()
        # issue 24's BERT targets as lines at 1.5x the reference's tokens/s and 1.25x its memory
        assert [line.get_ydata()[0] for line in panels["bert_speed"].get_lines()] == pytest.approx([120.0 * 1.5])
        assert [line.get_ydata()[0] for line in panels["bert_memory"].get_lines()] == pytest.approx([3302.0 * 1.25])
        assert panels["bert_speed"].get_ylim()[1] > 120.0 * 1.5  # above the bars, still drawn inside the panel
    finally:
        plt.close(fig)


def test_the_chart_leaves_out_the_panels_of_parts_not_run(tmp_path):
    import matplotlib.pyplot as plt

    fig = bench_report.chart_figure(canned_report(("decode", "bert")))
    assert list(_panels(fig)) == ["decode", "bert_speed", "bert_memory"]
    plt.close(fig)
    assert bench_report.chart(canned_report(()), tmp_path / "none.png") is None  # e.g. --only recompute
    assert not (tmp_path / "none.png").exists()
    assert bench_report.chart(canned_report(("memory",)), tmp_path / "memory.png").stat().st_size > 1000


def test_summarize_over_reports_that_ran_different_parts(tmp_path):
    paths = []
    for name, parts, train in [("a", ("train", "decode"), 60.0), ("b", ("decode", "summarize"), None),
                               ("c", ("train",), 54.0), ("d", ("memory",), None)]:
        result = canned_report(parts)
        result["machine"].update(load_average_start=[0.2] * 3, started_at=f"2026-12-06 {name}")
        if train:
            result["train"].update(ms_gpt2=train, ratio=train / 50.0)
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(result))
    printed = []
    summary = bench_summary.summarize(paths, print_fn=printed.append)
    f = summary["figures"]  # each figure over the runs that have it
    assert f["train"]["ms_gpt2"] == {"median": 57.0, "min": 54.0, "max": 60.0, "n": 2}
    assert f["decode"]["ratio"]["n"] == 2 and f["summarize"]["ms_gpt2"] == {"median": 4.0, "min": 4.0, "max": 4.0,
                                                                            "n": 1}
    text = printed[0]
    assert "4 runs of the quick workload" in text and "train ratio" in text and "summarize ratio" in text
    assert f"{paths[1]}: 2026-12-06 b, AMD EPYC 9654, MatMul 8 GFLOP/s, load 0.20; decode 0.25x, summarize 0.5x" \
        in text
    assert f"{paths[3]}: 2026-12-06 d, AMD EPYC 9654, MatMul 8 GFLOP/s, load 0.20; no speed figures" in text
    printed.clear()
    bench_summary.summarize(paths[2:3], print_fn=printed.append)  # a figure no run has is left out
    assert "train ratio" in printed[0] and "decode" not in printed[0] and "summarize ratio" not in printed[0]
# The real command cannot read its own VmHWM: its parent measures it (ru_maxrss from wait4). That
# figure too carries the high-water mark of the process it was forked from, so the bench starts it
# through a small launcher (ms_gpt2/bench/peak.py run by file path) instead of from its own process.
_FAT_PARENT_LAUNCHING = """
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import peak
ballast = np.ones(1500 * 2**20 // 8)  # 1.5 GB, every page touched
command = [sys.executable, "-c", "block = b'x' * (120 * 2**20)"]  # a command that touches 120 MB
direct = peak.measure(command)
out = subprocess.run([sys.executable, peak.__file__, "--", *command], capture_output=True, text=True, check=True)
print(json.dumps({"direct": direct, "launched": json.loads(out.stdout.strip().splitlines()[-1])}), float(ballast.sum()) > 0)
"""


def test_the_launcher_reports_the_commands_own_peak_not_its_parents():
    from pathlib import Path

    import ms_gpt2.bench.peak as peak

    import subprocess

    done = subprocess.run([sys.executable, "-c", _FAT_PARENT_LAUNCHING, str(Path(peak.__file__).parent)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1].rsplit(" ", 1)[0])
    assert runs["direct"]["peak_rss_mb"] > 1400, runs   # forked from the 1.5 GB parent: its figure shows up
    launched = runs["launched"]
    assert launched["returncode"] == 0 and not launched["timed_out"]
    assert 120 < launched["peak_rss_mb"] < 250, runs    # the command's own 120 MB and a bare interpreter
    assert launched["launcher_peak_rss_mb"] < 100, runs  # the floor under it: the launcher is small


# --- --summarize over the BERT and memory figures, and standalone `bench --memory` reports -----------

def memory_section(scale=1.0, command=True, cpu="AMD EPYC 9654", name="1"):
    """A `bench --memory` report (the shape memory_report gives, standalone or as a bench report's
    "memory" section): the synthetic rows and, with ``command``, the real command's rows, each MB x scale."""
    def peaks(compiled, eager, reference):
        return {"compiled": {"peak_rss_mb": compiled * scale, "step_s": 1.0},
                "eager": {"peak_rss_mb": eager * scale, "step_s": 2.0},
                "reference": {"peak_rss_mb": reference, "step_s": 1.0}, "ratio": compiled * scale / reference}
    result = {"device": "cpu", "workload": SPEC, "target": 1.25, "seconds": 60.0,
              "machine": {"cpu_model": cpu, "cores": 2, "started_at": f"2026-12-0{name}",
                          "load_average_start": [0.2] * 3},
              "shapes": [dict(batch=4, length=256, n_layer=12, **peaks(4400.0, 5400.0, 4000.0)),
                         dict(batch=1, length=1024, n_layer=12, **peaks(6000.0, 6800.0, 5000.0))],
              "layers": {"batch": 4, "length": 256, "rows": [{"n_layer": 12, "peak_rss_mb": 4400.0 * scale}],
                         "fit": None}}
    if command:
        result["command"] = {"config": "configs/tutorial.yaml", "data": "data", "steps": 3, "vocab_size": 21128,
                             "target": 1.1, "rows": [
                                 {"batch": b, "length": n, "ms_gpt2": {"peak_rss_mb": ours * scale},
                                  "reference": {"peak_rss_mb": ref}, "ratio": ours * scale / ref,
                                  "target_met": ours * scale / ref <= 1.1}
                                 for b, n, ours, ref in [(4, 256, 4400.0, 3850.0), (1, 1024, 6000.0, 5150.0)]]}
    return result


def full_report(name, scale, bert_tokens, bert_mb, cpu="AMD EPYC 9654"):
    """A full bench report (speed, BERT and memory sections) saved as `bench --json` writes it."""
    result = canned_report()
    result["machine"].update(cpu_model=cpu, started_at=f"2026-12-0{name[-1]}", load_average_start=[0.2] * 3)
    result["bert_pretraining"] = {"ms_gpt2": {"tokens_per_s": bert_tokens, "peak_rss_mb": bert_mb},
                                  "reference": {"tokens_per_s": 120.0, "peak_rss_mb": 4000.0},
                                  "ratio": bert_tokens / 120.0, "memory_ratio": bert_mb / 4000.0}
    result["memory"] = memory_section(scale, cpu=cpu, name=name[-1])
    return result


def three_full_runs(tmp_path):
    paths = []
    for name, scale, tokens, mb in [("full1", 1.0, 150.0, 5000.0), ("full2", 1.1, 132.0, 4400.0),
                                    ("full3", 0.9, 138.0, 5200.0)]:
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(full_report(name, scale, tokens, mb)))
    return paths


def test_summarize_gives_the_spread_of_the_bert_and_memory_figures(tmp_path):
    printed = []
    summary = bench_summary.summarize(three_full_runs(tmp_path), json_path=tmp_path / "summary.json",
                                      print_fn=printed.append)
    bert = summary["figures"]["bert_pretraining"]
    assert bert["tokens_per_s"]["ms_gpt2"] == {"median": 138.0, "min": 132.0, "max": 150.0, "n": 3}
    assert bert["tokens_per_s"]["reference"] == {"median": 120.0, "min": 120.0, "max": 120.0, "n": 3}
    assert (bert["tokens_per_s"]["ratio"]["median"], bert["tokens_per_s"]["ratio"]["min"],
            bert["tokens_per_s"]["ratio"]["max"]) == pytest.approx((1.15, 1.1, 1.25))
    assert bert["peak_rss_mb"]["ms_gpt2"] == {"median": 5000.0, "min": 4400.0, "max": 5200.0, "n": 3}
    assert (bert["peak_rss_mb"]["ratio"]["median"], bert["peak_rss_mb"]["ratio"]["min"],
            bert["peak_rss_mb"]["ratio"]["max"]) == pytest.approx((1.25, 1.1, 1.3))
    memory = summary["figures"]["memory"]
    assert memory["target"] == 1.25 and memory["command_target"] == 1.1
    first, second = memory["shapes"]
    assert (first["batch"], first["length"], second["batch"], second["length"]) == (4, 256, 1, 1024)
    assert (first["compiled"]["median"], first["compiled"]["min"], first["compiled"]["max"]) == \
        pytest.approx((4400.0, 3960.0, 4840.0))
    assert (second["eager"]["median"], second["eager"]["min"], second["eager"]["max"]) == \
        pytest.approx((6800.0, 6120.0, 7480.0))
    assert second["reference"] == {"median": 5000.0, "min": 5000.0, "max": 5000.0, "n": 3}
    assert (second["ratio"]["median"], second["ratio"]["min"], second["ratio"]["max"]) == \
        pytest.approx((1.2, 1.08, 1.32))
    command = memory["command"]
    assert [(row["batch"], row["length"]) for row in command] == [(4, 256), (1, 1024)]
    assert (command[0]["ms_gpt2"]["median"], command[0]["ms_gpt2"]["min"], command[0]["ms_gpt2"]["max"]) == \
        pytest.approx((4400.0, 3960.0, 4840.0))
    assert command[1]["reference"]["median"] == 5150.0 and command[1]["ratio"]["n"] == 3
    assert command[1]["ratio"]["median"] == pytest.approx(6000.0 / 5150.0)
    saved = json.loads((tmp_path / "summary.json").read_text())  # --json carries them
    assert saved["figures"]["memory"]["command"][1]["ratio"]["median"] == pytest.approx(6000.0 / 5150.0)
    assert saved["figures"]["bert_pretraining"]["tokens_per_s"]["ms_gpt2"]["median"] == 138.0
    text = printed[0]
    assert "3 runs of the quick workload on cpu; CPU model: AMD EPYC 9654 (2 cores)" in text
    lines = text.splitlines()
    assert f"{'BERT ms_gpt2 (tokens/s)':<28}{'138':>10}{'132–150':>18}{3:>6}" in lines
    assert f"{'BERT ms_gpt2 (peak MB)':<28}{'5,000':>10}{'4,400–5,200':>18}{3:>6}" in lines
    assert f"{'BERT memory ratio':<28}{'1.25x':>10}{'1.1x–1.3x':>18}{3:>6}" in lines
    assert f"{'B1x1024 compiled (MB)':<28}{'6,000':>10}{'5,400–6,600':>18}{3:>6}" in lines
    assert f"{'B1x1024 compiled/ref':<28}{'1.2x':>10}{'1.08x–1.32x':>18}{3:>6}" in lines
    assert f"{'B4x256 ms_gpt2 (MB)':<28}{'4,400':>10}{'3,960–4,840':>18}{3:>6}" in lines
    assert "the real command, ms-gpt2 train (target <= 1.1x):" in text
    assert "train ratio" in text  # the speed figures stay


def test_summarize_accepts_a_standalone_memory_report(tmp_path):
    """`make bench-summary` globs runs/bench/*.json, which holds `make bench-memory`'s memory.json."""
    standalone = tmp_path / "memory.json"
    standalone.write_text(json.dumps(memory_section(1.2, name="4")))
    printed = []
    summary = bench_summary.summarize(three_full_runs(tmp_path) + [standalone], print_fn=printed.append)
    memory = summary["figures"]["memory"]
    assert memory["shapes"][0]["compiled"] == {"median": pytest.approx(4620.0), "min": pytest.approx(3960.0),
                                               "max": pytest.approx(5280.0), "n": 4}
    assert memory["command"][0]["ms_gpt2"]["n"] == 4
    assert summary["figures"]["bert_pretraining"]["tokens_per_s"]["ms_gpt2"]["n"] == 3   # not in memory.json
    assert summary["figures"]["train"]["ratio"]["n"] == 3
    assert f"{standalone}: 2026-12-04, AMD EPYC 9654" in printed[0]
    printed.clear()
    alone = bench_summary.summarize([standalone], print_fn=printed.append)  # alone, and without command rows
    assert alone["figures"]["memory"]["shapes"][1]["ratio"]["median"] == pytest.approx(1.44)
    assert "train ratio" not in printed[0] and "B1x1024 compiled/ref" in printed[0]
    old = tmp_path / "old_memory.json"
    old.write_text(json.dumps(memory_section(1.0, command=False)))
    assert "command" not in bench_summary.summarize([old], print_fn=lambda *a: None)["figures"]["memory"]


def test_summarize_still_refuses_a_bert_or_memory_report_from_another_cpu(tmp_path):
    runs = three_full_runs(tmp_path)
    other = tmp_path / "memory.json"
    other.write_text(json.dumps(memory_section(1.0, cpu="Intel Xeon Gold 6248")))
    with pytest.raises(UserError, match="different CPU models: AMD EPYC 9654 .*; Intel Xeon Gold 6248 .*--mixed-cpus"):
        bench_summary.summarize(runs + [other], print_fn=lambda *a: None)
    full_other = tmp_path / "full9.json"
    full_other.write_text(json.dumps(full_report("full9", 1.0, 100.0, 4000.0, cpu="Intel Xeon Gold 6248")))
    with pytest.raises(UserError, match="different CPU models"):
        bench_summary.summarize(runs + [full_other], print_fn=lambda *a: None)
    summary = bench_summary.summarize(runs + [other, full_other], mixed_cpus=True, print_fn=lambda *a: None)
    assert summary["figures"]["memory"]["shapes"][0]["compiled"]["n"] == 5
    assert summary["figures"]["bert_pretraining"]["peak_rss_mb"]["ms_gpt2"]["n"] == 4


def test_the_chart_draws_the_real_commands_memory_beside_the_reference():
    import matplotlib.pyplot as plt

    result = canned_report()
    result["memory"]["command"] = memory_section()["command"]
    fig = bench_report.chart_figure(result)
    try:
        memory = _panels(fig)["memory"]
        assert sorted(_heights(memory)) == sorted([4475.0, 6321.0, 5451.0, 6804.0, 3974.0, 5230.0,  # synthetic
                                                   4400.0, 3850.0, 6000.0, 5150.0])              # the command
        targets = [seg[0][1] for lines in memory.collections for seg in lines.get_segments()]
        assert targets == pytest.approx([3974.0 * 1.25, 5230.0 * 1.25, 3850.0 * 1.1, 5150.0 * 1.1])
        ticks = [t.get_text() for t in memory.get_xticklabels()]
        assert ticks == ["B4 x 256", "B1 x 1024", "train\nB4 x 256", "train\nB1 x 1024"]
        assert "1.1x" in memory.get_title()
        texts = [t.get_text() for t in memory.texts]
        assert fmt_ratio(6000.0 / 5150.0) in texts
    finally:
        plt.close(fig)


def fmt_ratio(value):
    return bench_report.fmt(value, "x")
