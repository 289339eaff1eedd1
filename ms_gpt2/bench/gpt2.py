"""``ms-gpt2 bench``: training and decoding speed, beside the PyTorch reference and the machine's limits.

One invocation measures, on the current device:

* the machine's ceilings: fp32 matmul GFLOP/s and memory read GB/s (NumPy, best of several);
* MindSpore's own fp32 ``MatMul`` GFLOP/s at a GPT-2 MLP shape (the framework's kernel ceiling);
* ms_gpt2 (mindtorch on MindSpore) on the workloads in :mod:`ms_gpt2.bench.workloads`: training
  tokens/s (AdamW + gradient clipping, median of several steps after warm-up, peak memory) on the
  compiled training engine (:mod:`ms_gpt2.engine`), the eager mindtorch path reported beside it,
  greedy decoding tokens/s with the KV cache, and the wall time of one tutorial-style
  beam-search summary. Greedy decoding is measured on ms_gpt2's own greedy path, the compiled
  static-cache decoder (:mod:`ms_gpt2.models.graphs.gpt2_decode`), with Hugging Face ``generate`` on mindtorch
  reported beside it and the two checked for identical tokens;
* the same workloads under real PyTorch + transformers, when ``--reference-python`` names an
  interpreter that has them (never a project dependency), in the same run.

``--recompute-memory`` measures something else instead: compiled training's peak memory and step
time without and with recomputation (``training.gradient_checkpointing``), each setting in a fresh
process (:func:`recompute_memory`; ``scripts/recompute_memory.py`` for other shapes).

``--memory`` measures training's peak memory (``VmHWM``), each workload in a fresh process so no
peak includes another's: the compiled engine, the eager mindtorch path and the reference (with
``--reference-python``) at batch 4 x 256 and at the tutorial's 1 x 1024 (GPT-2 small, vocab 21128,
3 steps), the ratio to the reference against the 1.25x target, and the compiled engine's peak
against ``n_layer`` (2, 4, 8, 12) with a least-squares fixed + per-layer fit (:func:`memory_report`).
The training figures of the plain ``ms-gpt2 bench`` share one process with everything else it runs.

Ratios are oriented so that > 1 means ms_gpt2 is faster. Fractions of ceiling: training FLOP/s
(6·params + attention per token) over matmul GFLOP/s (NumPy's, and MindSpore's own MatMul); decoding bytes/s (all weights read once
per token) over read bandwidth.

The ratios depend on the machine (MindSpore's CPU kernels and PyTorch's do not scale alike), so
every report records it under ``machine``: the CPU model, the core count, and the load average at
start and at end (a run on a busy machine shows there), beside MindSpore's MatMul rate in
``ceilings``.

A quotable figure is a spread, not one run: :func:`summarize` (``ms-gpt2 bench --summarize
a.json b.json c.json``) combines saved reports into the median and min–max of each figure. The
runs are separate invocations rather than one ``--runs N`` loop inside a process: each then pays
its own compilation and starts from a fresh process and memory, as a user's run would, a run that
fails or is killed costs only itself, runs can be spread over time (the machine's noise is what a
spread should show), and each run's JSON stays as the evidence behind the figure.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from ms_gpt2.infra import runtime
from ms_gpt2.infra.errors import UserError

log = logging.getLogger(__name__)

# GPT-2 small with the bert-base-chinese vocabulary, as the tutorial trains it.
FULL = dict(seed=0, vocab_size=21128, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
            train_batch=4, train_len=256, warmup_steps=1, train_steps=3,
            decode_prompt=64, decode_new=64, article_len=900, summary_new=50, beams=5)
# A one-minute smoke version: same code, toy sizes (checks the report, not the speed).
QUICK = dict(FULL, vocab_size=1000, n_positions=160, n_embd=64, n_layer=2, n_head=4, train_batch=2,
             train_len=32, train_steps=2, decode_prompt=16, decode_new=8, article_len=100, summary_new=8)
WORKLOADS = Path(__file__).with_name("workloads.py")


def _field(text: str, key: str) -> str | None:
    """The value of the first ``key: value`` line of ``text`` (lscpu's and /proc/cpuinfo's layout)."""
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == key.lower() and value.strip():
            return value.strip()
    return None


def cpu_model() -> str | None:
    """The CPU's model name: lscpu's "Model name", else /proc/cpuinfo's "model name", else
    ``platform.processor()``; None when none of them names it."""
    try:
        done = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env=dict(os.environ, LC_ALL="C"))
        found = _field(done.stdout, "Model name") if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        found = None
    if not found:
        try:
            found = _field(Path("/proc/cpuinfo").read_text(errors="replace"), "model name")
        except OSError:
            found = None
    return found or platform.processor() or None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine() -> dict:
    """What the figures were measured on. ``load_average_start`` is [1, 5, 15]-minute load as the
    run starts: other work on the machine. ``load_average_end`` (set by :func:`bench`) includes the
    bench's own load, so on an idle machine it ends near the core count."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
            "platform": platform.platform(), "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_average_start": _load_average(), "load_average_end": None}


def describe_machine(m: dict | None) -> str:
    """One line: CPU model, cores, load average (1 minute) at start and end."""
    if not m:
        return "CPU model not recorded"
    start, end = m.get("load_average_start"), m.get("load_average_end")
    load = f"load average {_fmt(start[0]) if start else '-'} at start"
    if end:
        load += f", {_fmt(end[0])} at end"
    return f"{m.get('cpu_model') or 'CPU model not recorded'}, {m.get('cores') or '?'} cores, {load}"


def busy_note(m: dict | None) -> str | None:
    """A warning line when other work already loaded the machine as the run started."""
    start, cores = (m or {}).get("load_average_start"), (m or {}).get("usable_cores") or (m or {}).get("cores")
    if start and cores and start[0] >= 0.5 * cores:
        return (f"note: the machine was busy as the run started (load average {start[0]:.2f} on {cores} cores): "
                f"these figures are distorted by other work")
    return None


def ceilings(seconds: float = 3.0) -> dict:
    """fp32 matmul GFLOP/s and memory read GB/s of this machine, best of repeated runs."""
    rng = np.random.default_rng(0)
    n = 2048
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    best_mm, deadline = 0.0, time.perf_counter() + seconds / 2
    while time.perf_counter() < deadline or best_mm == 0:
        start = time.perf_counter()
        a @ b
        best_mm = max(best_mm, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    big = np.ones(64 * 2 ** 20, dtype=np.float32)  # 256 MiB, far beyond the caches
    best_read, deadline = 0.0, time.perf_counter() + seconds / 2
    while time.perf_counter() < deadline or best_read == 0:
        start = time.perf_counter()
        big.sum()
        best_read = max(best_read, big.nbytes / (time.perf_counter() - start) / 1e9)
    return {"matmul_gflops": best_mm, "read_gbps": best_read,
            "mindspore_matmul_gflops": mindspore_matmul_gflops(seconds / 2)}


def mindspore_matmul_gflops(seconds: float = 1.0, shape=(1024, 768, 3072)) -> float:
    """MindSpore's own fp32 ``MatMul`` throughput on the current device, best of repeated runs, at
    a GPT-2 small MLP shape (M x K @ K x N): the framework's kernels, as opposed to the machine's
    (NumPy's BLAS) ceiling."""
    import mindspore
    from mindspore import ops

    m, k, n = shape
    rng = np.random.default_rng(0)
    a = mindspore.Tensor(rng.random((m, k), dtype=np.float32))
    b = mindspore.Tensor(rng.random((k, n), dtype=np.float32))
    matmul = ops.MatMul()
    matmul(a, b).asnumpy()  # warm-up (kernel selection)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0:
        start = time.perf_counter()
        matmul(a, b).asnumpy()
        best = max(best, 2 * m * k * n / (time.perf_counter() - start) / 1e9)
    return best


def compiled_train(spec: dict, device: str) -> dict:
    """The compiled training engine (:mod:`ms_gpt2.engine`) on the training workload: the same
    model (dropout 0.1, train mode), batch, AdamW (lr 1e-4, weight decay 0.01 as
    ``torch.optim.AdamW``'s default) and clipping (1.0) as :func:`bench_workloads.train`."""
    import statistics

    from ms_gpt2.bench import workloads as bench_workloads
    from ms_gpt2.engine.compiled import CompiledEngine

    model = bench_workloads.build_model(spec, device)
    model.train()
    names = [n for n, _ in model.named_parameters()]
    engine = CompiledEngine(model, {n: 0.01 for n in names}, max_grad_norm=1.0, seed=spec["seed"])
    batch = bench_workloads.tokens(spec, (spec["train_batch"], spec["train_len"])).numpy()
    start = time.perf_counter()
    engine.train_step({"input_ids": batch}, 1e-4, 0)  # compiles the graph
    compile_s = time.perf_counter() - start
    for step in range(1, spec["warmup_steps"]):
        engine.train_step({"input_ids": batch}, 1e-4, step)
    times = []
    for step in range(spec["train_steps"]):
        start = time.perf_counter()
        engine.train_step({"input_ids": batch}, 1e-4, spec["warmup_steps"] + step)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"tokens_per_s": spec["train_batch"] * spec["train_len"] / median, "step_s": median, "steps": times,
            "compile_s": compile_s, "peak_rss_mb": bench_workloads.peak_rss_mb()}


def _vm_kib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            return next(float(line.split()[1]) for line in status if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def compiled_train_memory(spec: dict, device: str, recompute: bool) -> dict:
    """One process's compiled training on the training workload, with or without recomputation
    (``gradient_checkpointing``): peak resident memory (``VmHWM``) once the engine is built and
    after ``train_steps`` steps, and the step time. Meant for a fresh process
    (:func:`recompute_memory` starts one per setting): the peak is the process's whole life."""
    from ms_gpt2.bench import workloads as bench_workloads
    from ms_gpt2.engine.compiled import CompiledEngine

    model = bench_workloads.build_model(spec, device)
    model.train()
    names = [n for n, _ in model.named_parameters()]
    engine = CompiledEngine(model, {n: 0.01 for n in names}, max_grad_norm=1.0, seed=spec["seed"],
                            recompute=recompute)
    if spec.get("keep_model"):  # the Trainer keeps it (to save and evaluate) with the weights released: --memory too
        engine.release_model(model)
    else:
        del model
    built_mb = (_vm_kib("VmHWM") or 0.0) / 1024
    batch = bench_workloads.tokens(spec, (spec["train_batch"], spec["train_len"])).numpy()
    times, losses = [], []
    for step in range(spec["train_steps"]):
        start = time.perf_counter()
        losses.append(engine.train_step({"input_ids": batch}, 1e-4, step)[0])
        times.append(time.perf_counter() - start)
    return {"recompute": recompute, "peak_rss_mb": bench_workloads.peak_rss_mb(), "built_rss_mb": built_mb,
            "first_step_s": times[0], "step_s": statistics.median(times[1:]) if len(times) > 1 else times[0],
            "losses": losses}


def recompute_memory(spec: dict, python: str | None = None, device: str | None = None, timeout: float = 3600,
                     print_fn=print) -> dict:
    """Peak memory of compiled training without and with recomputation, each in a fresh process
    (``python -m ms_gpt2.bench.gpt2 '<spec json>'``) so neither peak includes the other's; the losses of
    the two runs are checked to be the same."""
    import sys

    device = device or runtime.ensure().device
    runs = {}
    for recompute in (False, True):
        child = dict(spec, recompute=recompute, device=device)
        try:
            done = subprocess.run([python or sys.executable, "-m", "ms_gpt2.bench.gpt2", json.dumps(child)],
                                  capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise UserError(f"the recompute={recompute} memory run failed: {err}") from err
        if done.returncode != 0:
            tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"the recompute={recompute} memory run failed: {tail[0]}")
        runs["on" if recompute else "off"] = json.loads(done.stdout.strip().splitlines()[-1])
    off, on = runs["off"], runs["on"]
    result = {"device": device, "workload": spec, "machine": machine(), "off": off, "on": on,
              "saved_mb": off["peak_rss_mb"] - on["peak_rss_mb"],
              "step_peak_mb": {k: runs[k]["peak_rss_mb"] - runs[k]["built_rss_mb"] for k in runs},
              "slowdown": _ratio(on["step_s"], off["step_s"]),
              "same_losses": off["losses"] == on["losses"]}
    print_fn(recompute_table(result))
    return result


def write_json(result: dict, json_path, print_fn=print) -> None:
    """Save a report (if asked to) where ``--json`` says, saying so."""
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2), encoding="utf-8")
        print_fn(f"wrote {json_path}")


def recompute_memory_report(quick: bool = False, json_path=None, print_fn=print) -> dict:
    """``ms-gpt2 bench --recompute-memory``: :func:`recompute_memory` on the training workload."""
    spec = QUICK if quick else FULL
    print_fn(f"== recompute memory ({'quick' if quick else 'GPT-2 small'}): two fresh processes")
    result = recompute_memory(spec, print_fn=print_fn)
    write_json(result, json_path, print_fn)
    return result


def recompute_table(result: dict) -> str:
    spec, off, on = result["workload"], result["off"], result["on"]
    step = result["step_peak_mb"]

    def mb(value):
        return f"{value:,.0f} MB"

    return "\n".join([
        f"compiled training, n_layer {spec['n_layer']}, n_embd {spec['n_embd']}, batch {spec['train_batch']} x "
        f"{spec['train_len']}, vocab {spec['vocab_size']}, {spec['train_steps']} steps on {result['device']}, "
        f"each setting in a fresh process",
        f"{'recompute':<12}{'peak RSS':>12}{'of which steps':>16}{'step (s)':>10}",
        f"{'off':<12}{mb(off['peak_rss_mb']):>12}{mb(step['off']):>16}{off['step_s']:>10.3g}",
        f"{'on':<12}{mb(on['peak_rss_mb']):>12}{mb(step['on']):>16}{on['step_s']:>10.3g}",
        f"recomputation saves {mb(result['saved_mb'])} of peak memory ({mb(step['off'] - step['on'])} of the steps' "
        f"share), steps take "
        f"{_fmt(result['slowdown'], 'x')} as long; same losses: {result['same_losses']}"])


# --- peak memory, one fresh process per workload ------------------------------------------------

MEMORY_SHAPES = ((4, 256), (1, 1024))     # the bench's training batch and configs/tutorial.yaml's
MEMORY_LAYERS = (2, 4, 8, 12)
MEMORY_TARGET = 1.25                      # compiled peak / reference peak (issue 17)
# QUICK's toy model: checks the machinery, not the figures
QUICK_MEMORY = dict(shapes=((2, 32), (1, 64)), layers=(1, 2))


def memory_spec(base: dict, batch: int, length: int, n_layer: int | None = None) -> dict:
    return dict(base, train_batch=batch, train_len=length, n_positions=max(base["n_positions"], length),
                n_layer=n_layer or base["n_layer"], warmup_steps=0, train_steps=3, keep_model=True)


def eager_train_memory(spec: dict, device: str) -> dict:
    """The eager mindtorch path (:func:`bench_workloads.train`: Hugging Face model, AdamW, clipping)."""
    from ms_gpt2.bench import workloads as bench_workloads

    return bench_workloads.train(spec, device)


def memory_child(spec: dict, engine: str, python: str | None = None, timeout: float = 3600) -> dict:
    """One training workload in a fresh process; -> its result (``peak_rss_mb`` = the process's VmHWM).
    ``engine``: "compiled" or "eager" (ms_gpt2: this interpreter, ``-m ms_gpt2.bench.gpt2``) or
    "reference" (``python`` runs :mod:`ms_gpt2.bench.workloads` under real PyTorch)."""
    import sys

    if engine == "reference":
        out = run_reference(python, dict(spec, only="train", reference_device=spec.get("reference_device", "cpu")),
                            timeout=timeout)
        return out["train"]
    child = dict(spec, engine=engine, recompute=False, device=spec.get("device") or runtime.ensure().device)
    try:
        done = subprocess.run([sys.executable, "-m", "ms_gpt2.bench.gpt2", json.dumps(child)],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"the {engine} memory run failed: {err}") from err
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"the {engine} memory run failed: {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def layer_fit(points) -> dict | None:
    """Least-squares ``peak = fixed + per_layer * n_layer`` over (n_layer, peak) points."""
    points = [(float(n), float(mb)) for n, mb in points]
    if len({n for n, _ in points}) < 2:
        return None
    per_layer, fixed = np.polyfit([n for n, _ in points], [mb for _, mb in points], 1)
    return {"fixed_mb": float(fixed), "per_layer_mb": float(per_layer)}


def memory_report(quick: bool = False, reference_python: str | None = None, json_path=None, print_fn=print,
                  shapes=None, layers=None, run=memory_child) -> dict:
    """``ms-gpt2 bench --memory``: peak memory of every training workload in its own process."""
    base = QUICK if quick else FULL
    shapes = tuple(shapes or (QUICK_MEMORY["shapes"] if quick else MEMORY_SHAPES))
    layers = tuple(layers or (QUICK_MEMORY["layers"] if quick else MEMORY_LAYERS))
    engines = ("compiled", "eager") + (("reference",) if reference_python else ())
    start = time.perf_counter()
    print_fn(f"== training peak memory ({'quick' if quick else 'GPT-2 small'}), one fresh process per workload")
    rows = []
    for batch, length in shapes:
        row = {"batch": batch, "length": length, "n_layer": base["n_layer"]}
        for engine in engines:
            result = run(memory_spec(base, batch, length), engine, reference_python)
            row[engine] = {"peak_rss_mb": result["peak_rss_mb"], "step_s": result.get("step_s")}
            print_fn(f"   {engine:<9} B{batch} x {length}: {result['peak_rss_mb']:,.0f} MB")
        reference = row.get("reference", {}).get("peak_rss_mb")
        row["ratio"] = _ratio(row["compiled"]["peak_rss_mb"], reference)
        row["target_met"] = None if row["ratio"] is None else row["ratio"] <= MEMORY_TARGET
        rows.append(row)
    full_batch, full_length = shapes[0]
    by_layer = {row["n_layer"]: row["compiled"]["peak_rss_mb"] for row in rows[:1]}
    for n_layer in layers:
        if n_layer not in by_layer:
            by_layer[n_layer] = run(memory_spec(base, full_batch, full_length, n_layer), "compiled",
                                    reference_python)["peak_rss_mb"]
            print_fn(f"   compiled  n_layer {n_layer}: {by_layer[n_layer]:,.0f} MB")
    layer_rows = [{"n_layer": n, "peak_rss_mb": by_layer[n]} for n in layers]
    result = {"device": runtime.ensure().device, "workload": base, "machine": machine(), "shapes": rows,
              "layers": {"batch": full_batch, "length": full_length, "rows": layer_rows,
                         "fit": layer_fit((r["n_layer"], r["peak_rss_mb"]) for r in layer_rows)},
              "target": MEMORY_TARGET, "seconds": time.perf_counter() - start}
    print_fn(memory_table(result))
    write_json(result, json_path, print_fn)
    return result


def memory_table(result: dict) -> str:
    def mb(value):
        return "-" if value is None else f"{value:,.0f} MB"

    w = result["workload"]
    lines = [f"training peak memory (VmHWM), n_embd {w['n_embd']}, vocab {w['vocab_size']}, 3 steps, on "
             f"{result['device']}; each figure its own process",
             f"{'shape':<12}{'compiled':>12}{'eager':>12}{'reference':>12}{'compiled/ref':>14}  target <= "
             f"{result['target']}x"]
    for row in result["shapes"]:
        peak = {k: (row.get(k) or {}).get("peak_rss_mb") for k in ("compiled", "eager", "reference")}
        met = {True: "met", False: "NOT met", None: "no reference"}[row["target_met"]]
        lines.append(f"{'B%d x %d' % (row['batch'], row['length']):<12}{mb(peak['compiled']):>12}"
                     f"{mb(peak['eager']):>12}{mb(peak['reference']):>12}{_fmt(row['ratio'], 'x'):>14}  {met}")
    layers = result["layers"]
    lines.append(f"compiled peak against n_layer at B{layers['batch']} x {layers['length']}:")
    lines.append("  " + "  ".join(f"{r['n_layer']}: {mb(r['peak_rss_mb'])}" for r in layers["rows"]))
    fit = layers["fit"]
    if fit:
        lines.append(f"  least-squares fit: {fit['fixed_mb']:,.0f} MB fixed + {fit['per_layer_mb']:,.0f} MB per layer")
    lines.append(f"measured in {result['seconds'] / 60:.1f} min")
    return "\n".join(lines)


def train_flops_per_token(spec: dict, params: int) -> float:
    """6N for the weights (forward + backward) plus 12·L·T·d for attention scores and values."""
    return 6 * params + 12 * spec["n_layer"] * spec["train_len"] * spec["n_embd"]


def run_reference(python: str, spec: dict, timeout: float = 3600) -> dict:
    try:
        done = subprocess.run([python, str(WORKLOADS), json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"--reference-python {python}: could not run the reference: {err}") from err
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"--reference-python {python}: the reference failed (needs torch + transformers): {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compiled_decode(spec: dict, device: str) -> dict:
    """ms_gpt2's own greedy path (the compiled static-cache decoder) on the decode workload."""
    import torch

    from ms_gpt2.bench import workloads as bench_workloads
    from ms_gpt2.models.graphs.gpt2_decode import decoder_for

    model = bench_workloads.build_model(spec, device).eval()
    prompt = bench_workloads.tokens(spec, (1, spec["decode_prompt"]))
    n = spec["decode_new"]
    decoder = decoder_for(model, prompt.shape[1] + n)
    decoder.greedy(prompt[0].numpy(), 2)  # compile both graphs
    start = time.perf_counter()
    ids = decoder.greedy(prompt[0].numpy(), n)
    seconds = time.perf_counter() - start
    with torch.no_grad():  # the library's greedy tokens for the same model and prompt
        library = model.generate(prompt.to(device), attention_mask=torch.ones_like(prompt).to(device), do_sample=False,
                                 max_new_tokens=n, min_new_tokens=n, pad_token_id=0, eos_token_id=None)
    return {"tokens_per_s": n / seconds, "seconds": seconds,
            "identical_to_library": ids == [int(t) for t in library[0, prompt.shape[1]:].cpu().numpy()]}


def compiled_summarize(spec: dict, device: str, library_tokens: list[int]) -> dict:
    """ms_gpt2's own beam search (compiled decoder) on the summarize workload, checked against the
    library's tokens for the same model (``bench_workloads`` builds it from the same seed)."""
    from ms_gpt2.bench import workloads as bench_workloads
    from ms_gpt2.models.graphs.gpt2_decode import beam_search, decoder_for

    model = bench_workloads.build_model(spec, device).eval()
    article = bench_workloads.tokens(spec, (1, spec["article_len"]))[0].numpy()
    n = spec["summary_new"]
    decoder = decoder_for(model, len(article) + n, batch=spec["beams"])
    beam_search(decoder, article, 2)  # compile the graphs, the prefill at this article's length too
    start = time.perf_counter()
    ids = beam_search(decoder, article, n, no_repeat_ngram_size=2, min_new_tokens=n)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "identical_to_library": ids == library_tokens}


def _ratio(numerator, denominator):
    return None if numerator is None or denominator in (None, 0) else numerator / denominator


def report(device: str, spec: dict, ours: dict, reference: dict | None, ceil: dict,
           machine: dict | None = None) -> dict:
    """The report's JSON shape (see the issue / docs/performance.md); pure, so it is unit-tested."""
    ref = reference or {}
    train_ref = ref.get("train", {}).get("tokens_per_s")
    decode_ref = ref.get("decode", {}).get("tokens_per_s")
    summ_ref = ref.get("summarize", {}).get("seconds")
    params = ours["train"]["params"]
    train_flops = ours["train"]["tokens_per_s"] * train_flops_per_token(spec, params)
    ms_matmul = ceil.get("mindspore_matmul_gflops")
    decode_bytes = ours["decode"]["tokens_per_s"] * params * 4
    return {
        "device": device,
        "machine": machine,
        "workload": spec,
        "train": {"ms_gpt2": ours["train"]["tokens_per_s"], "reference": train_ref,
                  "ratio": _ratio(ours["train"]["tokens_per_s"], train_ref),
                  "fraction_of_ceiling": train_flops / (ceil["matmul_gflops"] * 1e9),
                  "fraction_of_mindspore_matmul": train_flops / (ms_matmul * 1e9) if ms_matmul else None,
                  "path": ours["train"].get("path", "eager"),
                  "eager_on_mindtorch": ours["train"].get("eager_tokens_per_s"),
                  "peak_memory_mb": ours["train"]["peak_rss_mb"],
                  "reference_peak_memory_mb": ref.get("train", {}).get("peak_rss_mb")},
        "decode": {"ms_gpt2": ours["decode"]["tokens_per_s"], "reference": decode_ref,
                   "ratio": _ratio(ours["decode"]["tokens_per_s"], decode_ref),
                   "fraction_of_ceiling": decode_bytes / (ceil["read_gbps"] * 1e9),
                   "path": ours["decode"].get("path", "hf-generate"),
                   "hf_generate_on_mindtorch": ours["decode"].get("hf_generate_tokens_per_s"),
                   "identical_to_library": ours["decode"].get("identical_to_library")},
        "summarize": {"ms_gpt2": ours["summarize"]["seconds"], "reference": summ_ref,
                      "ratio": _ratio(summ_ref, ours["summarize"]["seconds"]), "fraction_of_ceiling": None,
                      "path": ours["summarize"].get("path", "hf-generate"),
                      "hf_generate_on_mindtorch_seconds": ours["summarize"].get("hf_generate_seconds"),
                      "identical_to_library": ours["summarize"].get("identical_to_library")},
        "ceilings": ceil,
        "frameworks": {"ms_gpt2": ours.get("framework"), "reference": ref.get("framework")},
        "attention": {"ms_gpt2": ours["train"].get("attention"), "reference": ref.get("train", {}).get("attention")},
    }


def _fmt(value, unit=""):
    return "-" if value is None else f"{value:,.3g}{unit}"


def table(result: dict) -> str:
    rows = [("train (tokens/s)", "train"), ("decode (tokens/s)", "decode"), ("summarize (s)", "summarize")]
    ms_matmul = result["ceilings"].get("mindspore_matmul_gflops")
    lines = [f"machine: {describe_machine(result.get('machine'))}",
             f"device: {result['device']}   ceilings: matmul {result['ceilings']['matmul_gflops']:.1f} GFLOP/s "
             f"(MindSpore's own MatMul {_fmt(ms_matmul)} GFLOP/s), read {result['ceilings']['read_gbps']:.1f} GB/s",
             f"{'figure':<20}{'ms_gpt2':>12}{'reference':>12}{'ratio':>10}{'of ceiling':>12}"]
    for label, key in rows:
        r = result[key]
        ceiling = "-" if r["fraction_of_ceiling"] is None else f"{100 * r['fraction_of_ceiling']:.2f}%"
        lines.append(f"{label:<20}{_fmt(r['ms_gpt2']):>12}{_fmt(r['reference']):>12}{_fmt(r['ratio'], 'x'):>10}{ceiling:>12}")
    for key, library_key, unit in [("summarize", "hf_generate_on_mindtorch_seconds", " s"),
                                   ("decode", "hf_generate_on_mindtorch", " tokens/s")]:
        r = result[key]
        if r.get(library_key):
            lines.append(f"{key} uses the {r['path']} (same tokens as the library: {r['identical_to_library']}); "
                         f"Hugging Face generate on mindtorch: {_fmt(r[library_key])}{unit}")
    t = result["train"]
    if t.get("eager_on_mindtorch"):
        share = t.get("fraction_of_mindspore_matmul")
        lines.append(f"train uses the {t['path']} ({'-' if share is None else f'{100 * share:.1f}%'} of MindSpore's "
                     f"own MatMul rate); the eager mindtorch path: {_fmt(t['eager_on_mindtorch'])} tokens/s")
    lines.append("ratio > 1: ms_gpt2 faster (summarize: reference seconds / ms_gpt2 seconds)")
    note = busy_note(result.get("machine"))
    if note:
        lines.append(note)
    lines.append(f"peak memory while training: ms_gpt2 {_fmt(result['train']['peak_memory_mb'], ' MB')}, "
                 f"reference {_fmt(result['train']['reference_peak_memory_mb'], ' MB')}")
    return "\n".join(lines)


def chart(result: dict, path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("train", "training tokens/s"), ("decode", "greedy decode tokens/s"), ("summarize", "beam summary seconds")]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, (key, title) in zip(axes, keys):
        values = [result[key]["ms_gpt2"], result[key]["reference"] or 0.0]
        ax.bar(["ms_gpt2", "PyTorch ref."], values, color=["#c0392b", "#2c3e50"])
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(values):
            ax.annotate(_fmt(v) if v else "n/a", (i, v), ha="center", va="bottom", fontsize=9)
    cpu = (result.get("machine") or {}).get("cpu_model") or "CPU model not recorded"
    fig.suptitle(f"ms_gpt2 bench on {result['device']} ({cpu})", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def bench(quick: bool = False, reference_python: str | None = None, json_path=None, png_path=None,
          print_fn=print) -> dict:
    rt = runtime.ensure()
    from ms_gpt2.bench import workloads as bench_workloads

    spec = QUICK if quick else FULL
    where = machine()
    print_fn(f"== machine: {describe_machine(where)}")
    print_fn(f"== ceilings ({rt.device})")
    ceil = ceilings(1.0 if quick else 4.0)
    reference = None
    if reference_python:  # first, while this process is small: both sides at once outgrow 24 GB
        print_fn(f"== PyTorch reference ({reference_python})")
        # like for like: on Ascend the reference must be PyTorch on the NPU too (torch_npu)
        reference = run_reference(reference_python, dict(spec, reference_device=rt.torch_device))
    print_fn(f"== ms_gpt2 workloads ({'quick' if quick else 'GPT-2 small'})")
    ours = bench_workloads.run(spec, rt.torch_device)
    fast = compiled_decode(spec, rt.torch_device)
    ours["decode"] = {"tokens_per_s": fast["tokens_per_s"], "path": "compiled static-cache decoder",
                      "hf_generate_tokens_per_s": ours["decode"]["tokens_per_s"],
                      "identical_to_library": fast["identical_to_library"]}
    compiled = compiled_train(spec, rt.torch_device)
    ours["train"] = dict(ours["train"], tokens_per_s=compiled["tokens_per_s"], step_s=compiled["step_s"],
                         path="compiled training engine", eager_tokens_per_s=ours["train"]["tokens_per_s"],
                         compile_s=compiled["compile_s"],
                         peak_rss_mb=max(ours["train"]["peak_rss_mb"], compiled["peak_rss_mb"]))
    beams = compiled_summarize(spec, rt.torch_device, ours["summarize"]["new_tokens"])
    ours["summarize"] = {"seconds": beams["seconds"], "path": "compiled beam search",
                         "hf_generate_seconds": ours["summarize"]["seconds"],
                         "identical_to_library": beams["identical_to_library"]}
    where["load_average_end"] = _load_average()
    result = report(rt.device, spec, ours, reference, ceil, where)
    print_fn(table(result))
    from ms_gpt2.bench import bert as bench_bert

    result["bert_pretraining"] = bench_bert.report(quick, reference_python, rt.device, print_fn=print_fn)
    if quick:  # the fresh-process memory figures take minutes: the full bench runs them
        print_fn("peak memory above shares this process with every workload; each in its own process, against the "
                 "reference: ms-gpt2 bench --memory (make bench-memory)")
    else:
        result["memory"] = memory_report(False, reference_python, print_fn=print_fn)
        print_fn("== recompute memory (GPT-2 small): two fresh processes")
        result["recompute_memory"] = recompute_memory(spec, print_fn=print_fn)
    write_json(result, json_path, print_fn)
    if png_path or json_path:
        png = chart(result, png_path or Path(json_path).with_suffix(".png"))
        print_fn(f"wrote {png}")
    return result


# --- several runs -> one quotable spread ---------------------------------------------------------

FIGURES = [("train", "tokens/s"), ("decode", "tokens/s"), ("summarize", "s")]


def _spread(values) -> dict:
    """Median and min–max of the values that exist (a run without a reference has no ratio)."""
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(present), "min": min(present), "max": max(present), "n": len(present)}


def workload_name(spec: dict) -> str:
    return "GPT-2 small" if spec == FULL else "quick" if spec == QUICK else "custom"


def load_runs(paths) -> list[tuple[str, dict]]:
    """(path, report) for each saved ``ms-gpt2 bench --json`` file; a file that is not one is a UserError."""
    runs = []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: not a readable bench report ({err})") from err
        keys = ("train", "decode", "summarize", "workload", "ceilings")
        if not isinstance(result, dict) or not all(isinstance(result.get(k), dict) for k in keys):
            raise UserError(f"{path}: not an `ms-gpt2 bench --json` report (no {'/'.join(keys)})")
        runs.append((str(path), result))
    return runs


def combine(runs: list[tuple[str, dict]], mixed_cpus: bool = False) -> dict:
    """The spread of each figure over saved runs of one workload on one device and CPU model.

    Runs of different workloads or devices never combine. Runs whose CPU models differ (a run that
    did not record its CPU counts as a model of its own, "not recorded") combine only with
    ``mixed_cpus``: the ratios depend on the machine, so such a spread is not a figure of any one.
    """
    if not runs:
        raise UserError("--summarize needs at least one bench report")
    first_path, first = runs[0]
    for path, result in runs[1:]:
        if result["workload"] != first["workload"]:
            raise UserError(f"{path} ran another workload than {first_path} ({workload_name(result['workload'])} vs "
                            f"{workload_name(first['workload'])}); their figures do not combine")
        if result.get("device") != first.get("device"):
            raise UserError(f"{path} ran on {result.get('device')}, {first_path} on {first.get('device')}; "
                            f"their figures do not combine")
    cpus = {}
    for path, result in runs:
        cpus.setdefault((result.get("machine") or {}).get("cpu_model") or "not recorded", []).append(path)
    if len(cpus) > 1 and not mixed_cpus:
        listed = "; ".join(f"{cpu} ({', '.join(paths)})" for cpu, paths in cpus.items())
        raise UserError(f"runs from different CPU models: {listed}; ratios depend on the machine "
                        f"(pass --mixed-cpus to combine them anyway)")
    per_run = []
    for path, result in runs:
        m = result.get("machine") or {}
        row = {"file": path, "started_at": m.get("started_at"), "cpu_model": m.get("cpu_model"),
               "cores": m.get("cores"),
               "load_average_start": m.get("load_average_start"), "load_average_end": m.get("load_average_end"),
               "mindspore_matmul_gflops": result["ceilings"].get("mindspore_matmul_gflops"),
               "numpy_matmul_gflops": result["ceilings"].get("matmul_gflops")}
        for key, _ in FIGURES:
            row[key] = {k: result[key].get(k) for k in ("ms_gpt2", "reference", "ratio")}
        per_run.append(row)
    figures = {key: {k: _spread([row[key][k] for row in per_run]) for k in ("ms_gpt2", "reference", "ratio")}
               for key, _ in FIGURES}
    return {"runs": per_run, "cpu_models": sorted(cpus), "device": first.get("device"),
            "workload": first["workload"], "figures": figures,
            "mindspore_matmul_gflops": _spread([row["mindspore_matmul_gflops"] for row in per_run]),
            "numpy_matmul_gflops": _spread([row["numpy_matmul_gflops"] for row in per_run])}


def _range(s: dict, unit: str = "") -> str:
    if not s["n"]:
        return "-"
    if s["min"] == s["max"]:
        return _fmt(s["min"], unit)
    return f"{_fmt(s['min'], unit)}–{_fmt(s['max'], unit)}"


def summary_table(summary: dict) -> str:
    runs = summary["runs"]
    n = len(runs)
    cores = sorted({row["cores"] for row in runs if row["cores"]})
    ms = summary["mindspore_matmul_gflops"]
    lines = [f"{n} run{'s' if n != 1 else ''} of the {workload_name(summary['workload'])} workload on "
             f"{summary['device']}; CPU model: {', '.join(summary['cpu_models'])}"
             f"{'' if not cores else ' (' + '/'.join(map(str, cores)) + ' cores)'}",
             f"MindSpore's own MatMul: median {_fmt(ms['median'])} GFLOP/s, {_range(ms)} over the runs",
             f"{'figure':<28}{'median':>10}{'min–max':>18}{'runs':>6}"]
    for key, unit in FIGURES:
        for part, label, suffix in [("ms_gpt2", f"{key} ms_gpt2 ({unit})", ""),
                                    ("reference", f"{key} reference ({unit})", ""), ("ratio", f"{key} ratio", "x")]:
            s = summary["figures"][key][part]
            lines.append(f"{label:<28}{_fmt(s['median'], suffix):>10}{_range(s, suffix):>18}{s['n']:>6}")
    lines.append("ratio > 1: ms_gpt2 faster (summarize: reference seconds / ms_gpt2 seconds)")
    lines.append("per run:")
    for row in runs:
        start, end = row["load_average_start"], row["load_average_end"]
        load = "-" if not start else f"{start[0]:.2f}" + (f"→{end[0]:.2f}" if end else "")
        ratios = ", ".join(f"{key} {_fmt(row[key]['ratio'], 'x')}" for key, _ in FIGURES)
        lines.append(f"  {row['file']}: {row['started_at'] or 'date not recorded'}, "
                     f"{row['cpu_model'] or 'CPU model not recorded'}, MatMul {_fmt(row['mindspore_matmul_gflops'])} "
                     f"GFLOP/s, load {load}; {ratios}")
    busy = [row["file"] for row in runs
            if busy_note({"cores": row["cores"], "load_average_start": row["load_average_start"]})]
    if busy:
        lines.append(f"note: {len(busy)} of the runs started on a busy machine (load average at least half the cores): "
                     f"{', '.join(busy)}")
    if n < 3:
        lines.append(f"note: {n} run{'s' if n != 1 else ''}; quote a spread over at least three")
    if len(summary["cpu_models"]) > 1:
        lines.append("note: these runs come from different CPU models (--mixed-cpus); the spread is not one machine's")
    return "\n".join(lines)


def summarize(paths, mixed_cpus: bool = False, json_path=None, print_fn=print) -> dict:
    """``ms-gpt2 bench --summarize FILE...``: the median and min–max of every figure over saved runs."""
    summary = combine(load_runs(paths), mixed_cpus)
    print_fn(summary_table(summary))
    write_json(summary, json_path, print_fn)
    return summary


if __name__ == "__main__":  # one memory run in a fresh process: python -m ms_gpt2.bench.gpt2 '<spec json>'
    import sys

    _spec = json.loads(sys.argv[1])
    runtime.setup(_spec.pop("device", None), seed=_spec["seed"])
    if _spec.pop("engine", "compiled") == "eager":
        print(json.dumps(eager_train_memory(_spec, runtime.ensure().torch_device)))
    else:
        print(json.dumps(compiled_train_memory(_spec, runtime.ensure().torch_device, bool(_spec.pop("recompute")))))
