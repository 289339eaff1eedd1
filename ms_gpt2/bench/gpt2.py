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

``--only train,decode,...`` (:data:`PARTS`, :func:`bench`) runs some parts of the full bench alone,
so one figure can be re-measured without the rest: the report has a section for each part run and
none for the others, and always the machine and the ceilings (measured on every run: the train and
decode fractions need them, and they take seconds).

``--recompute-memory`` measures something else instead: compiled training's peak memory and step
time without and with recomputation (``training.gradient_checkpointing``), each setting in a fresh
process (:func:`recompute_memory`; ``scripts/recompute_memory.py`` for other shapes).

``--memory`` measures training's peak memory (``VmHWM``), each workload in a fresh process so no
peak includes another's: the compiled engine, the eager mindtorch path and the reference (with
``--reference-python``) at batch 4 x 256 and at the tutorial's 1 x 1024 (GPT-2 small, vocab 21128,
3 steps), the ratio to the reference against the 1.25x target, and the compiled engine's peak
against ``n_layer`` (2, 4, 8, 12) with a least-squares fixed + per-layer fit (:func:`memory_report`);
beside them, at the same two shapes, the real ``ms-gpt2 train`` command and the same job on the
``transformers`` Trainer, against the 1.1x target (:mod:`ms_gpt2.bench.train_command`).
The training figures of the plain ``ms-gpt2 bench`` share one process with everything else it runs.

The ratios depend on the machine (MindSpore's CPU kernels and PyTorch's do not scale alike), so
every report records it under ``machine`` (:mod:`ms_gpt2.bench.machine`): the CPU model, the core
count, and the load average at start and at end (a run on a busy machine shows there), beside
MindSpore's MatMul rate in ``ceilings``. The report's JSON shape, how its ratios are oriented
(> 1: ms_gpt2 faster), its table and chart: :mod:`ms_gpt2.bench.report`. A quotable figure is a
spread over several saved runs: :mod:`ms_gpt2.bench.summary` (``ms-gpt2 bench --summarize``).

This module runs the workloads: ms_gpt2's own paths in this process, the reference through
:func:`run_reference`, and the memory figures in fresh processes (``python -m ms_gpt2.bench.gpt2
'<spec json>'`` is one such child).
"""
from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from ms_gpt2.bench.peak import peak_rss_mb, vm_kib
from ms_gpt2.bench.machine import ceilings, load_average, machine
from ms_gpt2.bench.report import (chart, describe_machine, memory_table, ratio, recompute_table, report, table,
                                  write_json)
from ms_gpt2.infra import runtime
from ms_gpt2.infra.errors import UserError

# GPT-2 small with the bert-base-chinese vocabulary, as the tutorial trains it.
FULL = dict(seed=0, vocab_size=21128, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
            train_batch=4, train_len=256, warmup_steps=1, train_steps=3,
            decode_prompt=64, decode_new=64, article_len=900, summary_new=50, beams=5)
# A one-minute smoke version: same code, toy sizes (checks the report, not the speed).
QUICK = dict(FULL, vocab_size=1000, n_positions=160, n_embd=64, n_layer=2, n_head=4, train_batch=2,
             train_len=32, train_steps=2, decode_prompt=16, decode_new=8, article_len=100, summary_new=8)
WORKLOADS = Path(__file__).with_name("workloads.py")


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


def compiled_train(spec: dict, device: str) -> dict:
    """The compiled training engine (:mod:`ms_gpt2.engine`) on the training workload: the same
    model (dropout 0.1, train mode), batch, AdamW (lr 1e-4, weight decay 0.01 as
    ``torch.optim.AdamW``'s default) and clipping (1.0) as :func:`workloads.train`."""
    import statistics

    from ms_gpt2.bench import workloads
    from ms_gpt2.engine.compiled import CompiledEngine

    model = workloads.build_model(spec, device)
    model.train()
    names = [n for n, _ in model.named_parameters()]
    engine = CompiledEngine(model, {n: 0.01 for n in names}, max_grad_norm=1.0, seed=spec["seed"])
    batch = workloads.tokens(spec, (spec["train_batch"], spec["train_len"])).numpy()
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
            "compile_s": compile_s, "peak_rss_mb": peak_rss_mb()}


def compiled_decode(spec: dict, device: str) -> dict:
    """ms_gpt2's own greedy path (the compiled static-cache decoder) on the decode workload."""
    import torch

    from ms_gpt2.bench import workloads
    from ms_gpt2.models.graphs.gpt2_decode import decoder_for

    model = workloads.build_model(spec, device).eval()
    prompt = workloads.tokens(spec, (1, spec["decode_prompt"]))
    n = spec["decode_new"]
    decoder = decoder_for(model, prompt.shape[1] + n)
    decoder.greedy(prompt[0].numpy(), 2)  # compile both graphs
    start = time.perf_counter()
    ids = decoder.greedy(prompt[0].numpy(), n)
    seconds = time.perf_counter() - start
    with torch.no_grad():  # the library's greedy tokens for the same model and prompt
        library = model.generate(prompt.to(device), attention_mask=torch.ones_like(prompt).to(device), do_sample=False,
                                 max_new_tokens=n, min_new_tokens=n, pad_token_id=0, eos_token_id=None)
    return {"tokens_per_s": n / seconds, "seconds": seconds, "params": sum(p.numel() for p in model.parameters()),
            "identical_to_library": ids == [int(t) for t in library[0, prompt.shape[1]:].cpu().numpy()]}


def compiled_summarize(spec: dict, device: str, library_tokens: list[int]) -> dict:
    """ms_gpt2's own beam search (compiled decoder) on the summarize workload, checked against the
    library's tokens for the same model (``workloads`` builds it from the same seed)."""
    from ms_gpt2.bench import workloads
    from ms_gpt2.models.graphs.gpt2_decode import beam_search, decoder_for

    model = workloads.build_model(spec, device).eval()
    article = workloads.tokens(spec, (1, spec["article_len"]))[0].numpy()
    n = spec["summary_new"]
    decoder = decoder_for(model, len(article) + n, batch=spec["beams"])
    beam_search(decoder, article, 2)  # compile the graphs, the prefill at this article's length too
    start = time.perf_counter()
    ids = beam_search(decoder, article, n, no_repeat_ngram_size=2, min_new_tokens=n)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "identical_to_library": ids == library_tokens}


# The parts of the full bench, for ``--only`` (in the order they run). The first three are timed in
# this process beside the reference, and their ratios to the ceilings need them.
PARTS = ("train", "decode", "summarize", "bert", "memory", "recompute")
SPEED_PARTS = ("train", "decode", "summarize")


def parse_parts(text: str) -> tuple[str, ...]:
    """``--only train,decode``: the parts named (comma-separated, any order), in :data:`PARTS` order;
    an unknown or missing name is a one-line UserError naming it and the valid parts."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PARTS]
    valid = f"the parts are {','.join(PARTS)}"
    if unknown:
        listed = ", ".join(repr(name) for name in unknown)
        raise UserError(f"--only: unknown part{'s' if len(unknown) > 1 else ''} {listed}; {valid}")
    if not names:
        raise UserError(f"--only names no part; {valid}")
    return tuple(part for part in PARTS if part in names)


def bench(quick: bool = False, reference_python: str | None = None, json_path=None, png_path=None,
          print_fn=print, only=None, train_command: list[str] | None = None) -> dict:
    """The full bench, or with ``only`` (``--only``, a subset of :data:`PARTS`) those parts alone. Every
    run records the machine (CPU model, cores, load average at start and end) and measures the
    ceilings; the report has a section for each part it ran and none for the others. ``--quick``
    without ``only`` leaves out the memory and recompute parts (minutes, even at toy sizes); named in
    ``only``, they run at the quick sizes. ``train_command``: how to start ``ms-gpt2 train`` (the cli
    passes it down), for the memory part's real-command rows."""
    rt = runtime.ensure()
    from ms_gpt2.bench import workloads

    spec = QUICK if quick else FULL
    parts = set(PARTS if only is None else only)
    speed = [part for part in SPEED_PARTS if part in parts]
    where = machine()
    print_fn(f"== machine: {describe_machine(where)}")
    print_fn(f"== ceilings ({rt.device})")
    ceil = ceilings(1.0 if quick else 4.0)
    reference = None
    if reference_python and speed:  # first, while this process is small: both sides at once outgrow 24 GB
        print_fn(f"== PyTorch reference ({reference_python})")
        # like for like: on Ascend the reference must be PyTorch on the NPU too (torch_npu)
        ref_spec = dict(spec, reference_device=rt.torch_device)
        if len(speed) < len(SPEED_PARTS):
            ref_spec["only"] = ",".join(speed)
        reference = run_reference(reference_python, ref_spec)
    if speed:
        print_fn(f"== ms_gpt2 workloads ({'quick' if quick else 'GPT-2 small'})")
    ours = workloads.run(spec, rt.torch_device, speed)
    if "decode" in parts:
        fast = compiled_decode(spec, rt.torch_device)
        ours["decode"] = {"tokens_per_s": fast["tokens_per_s"], "path": "compiled static-cache decoder",
                          "hf_generate_tokens_per_s": ours["decode"]["tokens_per_s"],
                          "identical_to_library": fast["identical_to_library"], "params": fast["params"]}
    if "train" in parts:
        compiled = compiled_train(spec, rt.torch_device)
        ours["train"] = dict(ours["train"], tokens_per_s=compiled["tokens_per_s"], step_s=compiled["step_s"],
                             path="compiled training engine", eager_tokens_per_s=ours["train"]["tokens_per_s"],
                             compile_s=compiled["compile_s"],
                             peak_rss_mb=max(ours["train"]["peak_rss_mb"], compiled["peak_rss_mb"]))
    if "summarize" in parts:
        beams = compiled_summarize(spec, rt.torch_device, ours["summarize"]["new_tokens"])
        ours["summarize"] = {"seconds": beams["seconds"], "path": "compiled beam search",
                             "hf_generate_seconds": ours["summarize"]["seconds"],
                             "identical_to_library": beams["identical_to_library"]}
    if speed:  # the end of the speed figures (the full bench's memory and BERT runs are fresh processes)
        where["load_average_end"] = load_average()
    result = report(rt.device, spec, ours, reference, ceil, where)
    print_fn(table(result))
    if "bert" in parts:
        from ms_gpt2.bench import bert as bench_bert

        result["bert_pretraining"] = bench_bert.report(quick, reference_python, rt.device, print_fn=print_fn)
    if quick and only is None:  # the fresh-process memory figures take minutes: the full bench runs them
        print_fn("peak memory above shares this process with every workload; each in its own process, against the "
                 "reference: ms-gpt2 bench --memory (make bench-memory)")
    else:
        if "memory" in parts:
            result["memory"] = memory_report(quick, reference_python, print_fn=print_fn, train_command=train_command)
        if "recompute" in parts:
            print_fn(f"== recompute memory ({'quick' if quick else 'GPT-2 small'}): two fresh processes")
            result["recompute_memory"] = recompute_memory(spec, print_fn=print_fn)
    if not speed:  # no speed figure ran: the end of the run
        where["load_average_end"] = load_average()
    write_json(result, json_path, print_fn)
    if png_path or json_path:
        png = chart(result, png_path or Path(json_path).with_suffix(".png"))
        if png:
            print_fn(f"wrote {png}")
    return result


# --- peak memory with and without recomputation, one fresh process per setting ---------------------

def compiled_train_memory(spec: dict, device: str, recompute: bool) -> dict:
    """One process's compiled training on the training workload, with or without recomputation
    (``gradient_checkpointing``): peak resident memory (``VmHWM``) once the engine is built and
    after ``train_steps`` steps, and the step time. Meant for a fresh process
    (:func:`recompute_memory` starts one per setting): the peak is the process's whole life."""
    from ms_gpt2.bench import workloads
    from ms_gpt2.engine.compiled import CompiledEngine

    model = workloads.build_model(spec, device)
    model.train()
    names = [n for n, _ in model.named_parameters()]
    engine = CompiledEngine(model, {n: 0.01 for n in names}, max_grad_norm=1.0, seed=spec["seed"],
                            recompute=recompute)
    if spec.get("keep_model"):  # the Trainer keeps it (to save and evaluate) with the weights released: --memory too
        engine.release_model(model)
    else:
        del model
    built_mb = (vm_kib("VmHWM") or 0.0) / 1024
    batch = workloads.tokens(spec, (spec["train_batch"], spec["train_len"])).numpy()
    times, losses = [], []
    for step in range(spec["train_steps"]):
        start = time.perf_counter()
        losses.append(engine.train_step({"input_ids": batch}, 1e-4, step)[0])
        times.append(time.perf_counter() - start)
    return {"recompute": recompute, "peak_rss_mb": peak_rss_mb(), "built_rss_mb": built_mb,
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
              "slowdown": ratio(on["step_s"], off["step_s"]),
              "same_losses": off["losses"] == on["losses"]}
    print_fn(recompute_table(result))
    return result


def recompute_memory_report(quick: bool = False, json_path=None, print_fn=print) -> dict:
    """``ms-gpt2 bench --recompute-memory``: :func:`recompute_memory` on the training workload."""
    spec = QUICK if quick else FULL
    print_fn(f"== recompute memory ({'quick' if quick else 'GPT-2 small'}): two fresh processes")
    result = recompute_memory(spec, print_fn=print_fn)
    write_json(result, json_path, print_fn)
    return result


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
    """The eager mindtorch path (:func:`workloads.train`: Hugging Face model, AdamW, clipping)."""
    from ms_gpt2.bench import workloads

    return workloads.train(spec, device)


def memory_child(spec: dict, engine: str, python: str | None = None, timeout: float = 3600) -> dict:
    """One training workload in a fresh process; -> its result (``peak_rss_mb`` = the process's VmHWM).
    ``engine``: "compiled" or "eager" (ms_gpt2: this interpreter, ``-m ms_gpt2.bench.gpt2``) or
    "reference" (``python`` runs :mod:`ms_gpt2.bench.workloads` under real PyTorch); or the real
    command, "command" (``ms-gpt2 train``) and "command_reference" (:mod:`ms_gpt2.bench.train_command`)."""
    import sys

    if engine in ("command", "command_reference"):
        from ms_gpt2.bench import train_command

        return train_command.run_child(spec, engine, python, timeout)
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
                  shapes=None, layers=None, run=memory_child, train_command: list[str] | None = None) -> dict:
    """``ms-gpt2 bench --memory``: peak memory of every training workload in its own process; with
    ``train_command`` (the argv that starts ``ms-gpt2 train``, which the cli gives), also the real
    command's beside the reference's at the same shapes (:mod:`ms_gpt2.bench.train_command`)."""
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
        row["ratio"] = ratio(row["compiled"]["peak_rss_mb"], reference)
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
    command = None
    if train_command:
        from ms_gpt2.bench import train_command as real

        print_fn(f"== the real command, {real.STEPS} steps: ms-gpt2 train ({real.QUICK_CONFIG if quick else real.CONFIG}, "
                 f"bundled data){' and the reference Trainer' if reference_python else ''}, one fresh process each")
        rt = runtime.ensure()
        command = real.command_rows(train_command, real.QUICK_SHAPES if quick else shapes, reference_python, run,
                                    rt.device, rt.torch_device, quick=quick, print_fn=print_fn)
    result = {"device": runtime.ensure().device, "workload": base, "machine": machine(), "shapes": rows,
              "layers": {"batch": full_batch, "length": full_length, "rows": layer_rows,
                         "fit": layer_fit((r["n_layer"], r["peak_rss_mb"]) for r in layer_rows)},
              "target": MEMORY_TARGET, "seconds": time.perf_counter() - start}
    if command:
        result["command"] = command
    print_fn(memory_table(result))
    write_json(result, json_path, print_fn)
    return result


if __name__ == "__main__":  # one memory run in a fresh process: python -m ms_gpt2.bench.gpt2 '<spec json>'
    import sys

    _spec = json.loads(sys.argv[1])
    runtime.setup(_spec.pop("device", None), seed=_spec["seed"])
    if _spec.pop("engine", "compiled") == "eager":
        print(json.dumps(eager_train_memory(_spec, runtime.ensure().torch_device)))
    else:
        print(json.dumps(compiled_train_memory(_spec, runtime.ensure().torch_device, bool(_spec.pop("recompute")))))

