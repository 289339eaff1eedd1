"""The reports of ``ms-gpt2 bench``: the speed report's JSON shape (:func:`report`), its table and
bar chart, the tables of the memory runs, and writing a report where ``--json`` says.

Ratios are oriented so that > 1 means ms_gpt2 is faster. Fractions of ceiling: training FLOP/s
(6·params + attention per token) over matmul GFLOP/s (NumPy's, and MindSpore's own MatMul); decoding
bytes/s (all weights read once per token) over read bandwidth.
"""
from __future__ import annotations

import json
from pathlib import Path


def fmt(value, unit=""):
    return "-" if value is None else f"{value:,.3g}{unit}"


def ratio(numerator, denominator):
    return None if numerator is None or denominator in (None, 0) else numerator / denominator


def describe_machine(m: dict | None) -> str:
    """One line: CPU model, cores, load average (1 minute) at start and end."""
    if not m:
        return "CPU model not recorded"
    start, end = m.get("load_average_start"), m.get("load_average_end")
    load = f"load average {fmt(start[0]) if start else '-'} at start"
    if end:
        load += f", {fmt(end[0])} at end"
    return f"{m.get('cpu_model') or 'CPU model not recorded'}, {m.get('cores') or '?'} cores, {load}"


def busy_note(m: dict | None) -> str | None:
    """A warning line when other work already loaded the machine as the run started."""
    start, cores = (m or {}).get("load_average_start"), (m or {}).get("usable_cores") or (m or {}).get("cores")
    if start and cores and start[0] >= 0.5 * cores:
        return (f"note: the machine was busy as the run started (load average {start[0]:.2f} on {cores} cores): "
                f"these figures are distorted by other work")
    return None


def train_flops_per_token(spec: dict, params: int) -> float:
    """6N for the weights (forward + backward) plus 12·L·T·d for attention scores and values."""
    return 6 * params + 12 * spec["n_layer"] * spec["train_len"] * spec["n_embd"]


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
                  "ratio": ratio(ours["train"]["tokens_per_s"], train_ref),
                  "fraction_of_ceiling": train_flops / (ceil["matmul_gflops"] * 1e9),
                  "fraction_of_mindspore_matmul": train_flops / (ms_matmul * 1e9) if ms_matmul else None,
                  "path": ours["train"].get("path", "eager"),
                  "eager_on_mindtorch": ours["train"].get("eager_tokens_per_s"),
                  "peak_memory_mb": ours["train"]["peak_rss_mb"],
                  "reference_peak_memory_mb": ref.get("train", {}).get("peak_rss_mb")},
        "decode": {"ms_gpt2": ours["decode"]["tokens_per_s"], "reference": decode_ref,
                   "ratio": ratio(ours["decode"]["tokens_per_s"], decode_ref),
                   "fraction_of_ceiling": decode_bytes / (ceil["read_gbps"] * 1e9),
                   "path": ours["decode"].get("path", "hf-generate"),
                   "hf_generate_on_mindtorch": ours["decode"].get("hf_generate_tokens_per_s"),
                   "identical_to_library": ours["decode"].get("identical_to_library")},
        "summarize": {"ms_gpt2": ours["summarize"]["seconds"], "reference": summ_ref,
                      "ratio": ratio(summ_ref, ours["summarize"]["seconds"]), "fraction_of_ceiling": None,
                      "path": ours["summarize"].get("path", "hf-generate"),
                      "hf_generate_on_mindtorch_seconds": ours["summarize"].get("hf_generate_seconds"),
                      "identical_to_library": ours["summarize"].get("identical_to_library")},
        "ceilings": ceil,
        "frameworks": {"ms_gpt2": ours.get("framework"), "reference": ref.get("framework")},
        "attention": {"ms_gpt2": ours["train"].get("attention"), "reference": ref.get("train", {}).get("attention")},
    }


def table(result: dict) -> str:
    rows = [("train (tokens/s)", "train"), ("decode (tokens/s)", "decode"), ("summarize (s)", "summarize")]
    ms_matmul = result["ceilings"].get("mindspore_matmul_gflops")
    lines = [f"machine: {describe_machine(result.get('machine'))}",
             f"device: {result['device']}   ceilings: matmul {result['ceilings']['matmul_gflops']:.1f} GFLOP/s "
             f"(MindSpore's own MatMul {fmt(ms_matmul)} GFLOP/s), read {result['ceilings']['read_gbps']:.1f} GB/s",
             f"{'figure':<20}{'ms_gpt2':>12}{'reference':>12}{'ratio':>10}{'of ceiling':>12}"]
    for label, key in rows:
        r = result[key]
        ceiling = "-" if r["fraction_of_ceiling"] is None else f"{100 * r['fraction_of_ceiling']:.2f}%"
        lines.append(f"{label:<20}{fmt(r['ms_gpt2']):>12}{fmt(r['reference']):>12}{fmt(r['ratio'], 'x'):>10}"
                     f"{ceiling:>12}")
    for key, library_key, unit in [("summarize", "hf_generate_on_mindtorch_seconds", " s"),
                                   ("decode", "hf_generate_on_mindtorch", " tokens/s")]:
        r = result[key]
        if r.get(library_key):
            lines.append(f"{key} uses the {r['path']} (same tokens as the library: {r['identical_to_library']}); "
                         f"Hugging Face generate on mindtorch: {fmt(r[library_key])}{unit}")
    t = result["train"]
    if t.get("eager_on_mindtorch"):
        share = t.get("fraction_of_mindspore_matmul")
        lines.append(f"train uses the {t['path']} ({'-' if share is None else f'{100 * share:.1f}%'} of MindSpore's "
                     f"own MatMul rate); the eager mindtorch path: {fmt(t['eager_on_mindtorch'])} tokens/s")
    lines.append("ratio > 1: ms_gpt2 faster (summarize: reference seconds / ms_gpt2 seconds)")
    note = busy_note(result.get("machine"))
    if note:
        lines.append(note)
    lines.append(f"peak memory while training: ms_gpt2 {fmt(result['train']['peak_memory_mb'], ' MB')}, "
                 f"reference {fmt(result['train']['reference_peak_memory_mb'], ' MB')}")
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
            ax.annotate(fmt(v) if v else "n/a", (i, v), ha="center", va="bottom", fontsize=9)
    cpu = (result.get("machine") or {}).get("cpu_model") or "CPU model not recorded"
    fig.suptitle(f"ms_gpt2 bench on {result['device']} ({cpu})", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_json(result: dict, json_path, print_fn=print) -> None:
    """Save a report (if asked to) where ``--json`` says, saying so."""
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2), encoding="utf-8")
        print_fn(f"wrote {json_path}")


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
        f"{fmt(result['slowdown'], 'x')} as long; same losses: {result['same_losses']}"])


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
                     f"{mb(peak['eager']):>12}{mb(peak['reference']):>12}{fmt(row['ratio'], 'x'):>14}  {met}")
    layers = result["layers"]
    lines.append(f"compiled peak against n_layer at B{layers['batch']} x {layers['length']}:")
    lines.append("  " + "  ".join(f"{r['n_layer']}: {mb(r['peak_rss_mb'])}" for r in layers["rows"]))
    fit = layers["fit"]
    if fit:
        lines.append(f"  least-squares fit: {fit['fixed_mb']:,.0f} MB fixed + {fit['per_layer_mb']:,.0f} MB per layer")
    lines += command_lines(result.get("command"), mb)
    lines.append(f"measured in {result['seconds'] / 60:.1f} min")
    return "\n".join(lines)


def command_lines(command: dict | None, mb) -> list[str]:
    """The real ``ms-gpt2 train`` rows of the memory table (:mod:`ms_gpt2.bench.train_command`)."""
    if not command:
        return []
    lines = [f"the real command: ms-gpt2 train {command['config']} on {command['data']}, {command['steps']} steps, "
             f"vocab {command['vocab_size']}; the reference: the transformers Trainer on the same token ids; "
             f"each its own process",
             f"{'shape':<12}{'ms_gpt2':>12}{'':>12}{'reference':>12}{'ms_gpt2/ref':>14}  target <= {command['target']}x"]
    for row in command["rows"]:
        met = {True: "met", False: "NOT met", None: "no reference"}[row["target_met"]]
        lines.append(f"{'B%d x %d' % (row['batch'], row['length']):<12}{mb(row['ms_gpt2']['peak_rss_mb']):>12}"
                     f"{'':>12}{mb((row.get('reference') or {}).get('peak_rss_mb')):>12}"
                     f"{fmt(row['ratio'], 'x'):>14}  {met}")
    rows = command["rows"]
    if rows and "example_tokens" in rows[0]:
        lines.append("  examples: " + ", ".join(f"B{r['batch']} x {r['length']}: {r['examples']} of "
                                              f"{r['example_tokens'][0]}-{r['example_tokens'][1]} tokens (the rest "
                                              f"[PAD])" for r in rows))
    return lines

