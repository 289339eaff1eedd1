"""The reports of ``ms-gpt2 bench``: the speed report's JSON shape (:func:`report`), its table and
bar chart, the tables of the memory runs, and writing a report where ``--json`` says.

Ratios are oriented so that > 1 means ms_gpt2 is faster. Fractions of ceiling: training FLOP/s
(6·params + attention per token) over matmul GFLOP/s (NumPy's, and MindSpore's own MatMul inside a
graph); decoding bytes/s (all weights read once per token) over read bandwidth.
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


#: Issue 24's targets for the speed figures, set on the project's 2-core CPU (so saved only in CPU
#: reports): per report section, a figure's key -> its target ("ratio": ms_gpt2 over the reference,
#: at least; a fraction: of that section's limit, at least). BERT's are in ms_gpt2.bench.bert.
SPEED_TARGETS = {"train": {"ratio": 1.5, "fraction_of_mindspore_matmul": 0.75},
                 "decode": {"fraction_of_ceiling": 0.80}}


def report(device: str, spec: dict, ours: dict, reference: dict | None, ceil: dict,
           machine: dict | None = None) -> dict:
    """The report's JSON shape (see the issue / docs/performance.md); pure, so it is unit-tested.
    ``ours`` has a section for each workload that ran (``bench --only``: train, decode, summarize),
    and the report then has those sections only; ``attention`` is training's."""
    ref = reference or {}
    result = {"device": device, "machine": machine, "workload": spec}
    # decoding reads every weight once per token: the parameter count from training, or from decoding's own model
    params = (ours.get("train") or ours.get("decode") or {}).get("params")
    ms_matmul = ceil.get("mindspore_matmul_gflops")
    if "train" in ours:
        train_ref = ref.get("train", {}).get("tokens_per_s")
        train_flops = ours["train"]["tokens_per_s"] * train_flops_per_token(spec, params)
        result["train"] = {"ms_gpt2": ours["train"]["tokens_per_s"], "reference": train_ref,
                           "ratio": ratio(ours["train"]["tokens_per_s"], train_ref),
                           "fraction_of_ceiling": train_flops / (ceil["matmul_gflops"] * 1e9),
                           "fraction_of_mindspore_matmul": train_flops / (ms_matmul * 1e9) if ms_matmul else None,
                           "path": ours["train"].get("path", "eager"),
                           "eager_on_mindtorch": ours["train"].get("eager_tokens_per_s"),
                           "peak_memory_mb": ours["train"]["peak_rss_mb"],
                           "reference_peak_memory_mb": ref.get("train", {}).get("peak_rss_mb")}
    if "decode" in ours:
        decode_ref = ref.get("decode", {}).get("tokens_per_s")
        decode_bytes = ours["decode"]["tokens_per_s"] * params * 4
        result["decode"] = {"ms_gpt2": ours["decode"]["tokens_per_s"], "reference": decode_ref,
                            "ratio": ratio(ours["decode"]["tokens_per_s"], decode_ref),
                            "fraction_of_ceiling": decode_bytes / (ceil["read_gbps"] * 1e9),
                            "path": ours["decode"].get("path", "hf-generate"),
                            "hf_generate_on_mindtorch": ours["decode"].get("hf_generate_tokens_per_s"),
                            "identical_to_library": ours["decode"].get("identical_to_library")}
    if "summarize" in ours:
        summ_ref = ref.get("summarize", {}).get("seconds")
        result["summarize"] = {"ms_gpt2": ours["summarize"]["seconds"], "reference": summ_ref,
                               "ratio": ratio(summ_ref, ours["summarize"]["seconds"]), "fraction_of_ceiling": None,
                               "path": ours["summarize"].get("path", "hf-generate"),
                               "hf_generate_on_mindtorch_seconds": ours["summarize"].get("hf_generate_seconds"),
                               "identical_to_library": ours["summarize"].get("identical_to_library")}
    result["ceilings"] = ceil
    result["frameworks"] = {"ms_gpt2": ours.get("framework"), "reference": ref.get("framework")}
    if "train" in ours:
        result["attention"] = {"ms_gpt2": ours["train"].get("attention"),
                               "reference": ref.get("train", {}).get("attention")}
    targets = {key: dict(figures) for key, figures in SPEED_TARGETS.items() if key in result}
    if device == "cpu" and targets:
        result["targets"] = targets
    return result


def table(result: dict) -> str:
    """The speed report as text: the machine and ceilings, then a row for each workload it ran."""
    rows = [(label, key) for label, key in [("train (tokens/s)", "train"), ("decode (tokens/s)", "decode"),
                                            ("summarize (s)", "summarize")] if key in result]
    ms_matmul = result["ceilings"].get("mindspore_matmul_gflops")
    lines = [f"machine: {describe_machine(result.get('machine'))}",
             f"device: {result['device']}   ceilings: matmul {result['ceilings']['matmul_gflops']:.1f} GFLOP/s "
             f"(MindSpore's own MatMul {fmt(ms_matmul)} GFLOP/s in a graph, "
             f"{fmt(result['ceilings'].get('mindspore_matmul_pynative_gflops'))} one op at a time), "
             f"read {result['ceilings']['read_gbps']:.1f} GB/s"]
    if rows:
        lines.append(f"{'figure':<20}{'ms_gpt2':>12}{'reference':>12}{'ratio':>10}{'of ceiling':>12}")
    for label, key in rows:
        r = result[key]
        ceiling = "-" if r["fraction_of_ceiling"] is None else f"{100 * r['fraction_of_ceiling']:.2f}%"
        lines.append(f"{label:<20}{fmt(r['ms_gpt2']):>12}{fmt(r['reference']):>12}{fmt(r['ratio'], 'x'):>10}"
                     f"{ceiling:>12}")
    for key, library_key, unit in [("summarize", "hf_generate_on_mindtorch_seconds", " s"),
                                   ("decode", "hf_generate_on_mindtorch", " tokens/s")]:
        r = result.get(key, {})
        if r.get(library_key):
            lines.append(f"{key} uses the {r['path']} (same tokens as the library: {r['identical_to_library']}); "
                         f"Hugging Face generate on mindtorch: {fmt(r[library_key])}{unit}")
    t = result.get("train", {})
    if t.get("eager_on_mindtorch"):
        share = t.get("fraction_of_mindspore_matmul")
        lines.append(f"train uses the {t['path']} ({'-' if share is None else f'{100 * share:.1f}%'} of MindSpore's "
                     f"own MatMul rate in a graph); the eager mindtorch path: {fmt(t['eager_on_mindtorch'])} tokens/s")
    if rows:
        lines.append("ratio > 1: ms_gpt2 faster (summarize: reference seconds / ms_gpt2 seconds)")
        if result.get("targets"):
            lines.append("targets (issue 24): " + target_text(result["targets"]))
    note = busy_note(result.get("machine"))
    if note:
        lines.append(note)
    if t:
        lines.append(f"peak memory while training: ms_gpt2 {fmt(t['peak_memory_mb'], ' MB')}, "
                     f"reference {fmt(t['reference_peak_memory_mb'], ' MB')}")
    return "\n".join(lines)


_TARGET_WORDS = {("train", "ratio"): "train >= {}x the reference",
                 ("train", "fraction_of_mindspore_matmul"): "train >= {:.0%} of MindSpore's own MatMul rate in a graph",
                 ("decode", "fraction_of_ceiling"): "decode >= {:.0%} of the read ceiling"}


def target_text(targets: dict) -> str:
    """A report's ``targets`` in words: "train >= 1.5x the reference; ..."."""
    return "; ".join(_TARGET_WORDS.get((section, key), f"{section} {key} >= {{}}").format(value)
                     for section, figures in targets.items() for key, value in figures.items())


OURS_COLOR, EAGER_COLOR, REF_COLOR, LIMIT_COLOR = "#c0392b", "#e59866", "#2c3e50", "#bdc3c7"
# (report key, title, the report's fraction of the limit, the limit's bar label, what the limit is):
# training against the rate MindSpore's own MatMul allows, greedy decoding against reading every
# weight once per token at the measured read bandwidth; the beam summary has no limit.
SPEED_PANELS = [("train", "training tokens/s", "fraction_of_mindspore_matmul", "MatMul limit",
                 "MindSpore's MatMul rate"),
                ("decode", "greedy decode tokens/s", "fraction_of_ceiling", "read limit", "the memory-read ceiling"),
                ("summarize", "beam summary seconds", None, None, None)]


def limit_of(section: dict, fraction_key: str | None) -> float | None:
    """The figure at 100% of its ceiling (the report keeps ms_gpt2's fraction of it): training tokens/s
    at MindSpore's MatMul rate, decoding tokens/s at the memory-read bandwidth."""
    fraction = section.get(fraction_key) if fraction_key else None
    return section["ms_gpt2"] / fraction if fraction else None


def _label(value) -> str:
    """A bar's value: three significant digits, whole numbers from 1,000 (5,210 MB, not 5.21e+03)."""
    return "n/a" if not value else f"{value:,.0f}" if value >= 1000 else fmt(value)


def _bars(ax, labels, values, colors, hatches=None):
    x = list(range(len(values)))
    bars = ax.bar(x, [v or 0.0 for v in values], color=colors)
    for bar, hatch in zip(bars, hatches or []):
        bar.set_hatch(hatch)
    ax.set_xticks(x, labels, fontsize=8)
    for i, v in enumerate(values):
        ax.annotate(_label(v), (i, v or 0.0), ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, 1.15 * max([v or 0.0 for v in values] + [1e-9]))  # room for the labels
    return bars


def _speed_panel(ax, section: dict, targets: dict, title: str, fraction_key, limit_label, limit_name) -> None:
    """ms_gpt2's bar, the reference's and the limit's, with the section's targets (dotted: a multiple
    of the reference; dashed: a fraction of the limit) where the report has them."""
    labels, values, colors = ["ms_gpt2", "PyTorch ref."], [section["ms_gpt2"], section["reference"]], \
        [OURS_COLOR, REF_COLOR]
    limit = limit_of(section, fraction_key)
    if limit:
        labels.append(limit_label)
        values.append(limit)
        colors.append(LIMIT_COLOR)
        title += f"\nms_gpt2 at {100 * section['ms_gpt2'] / limit:.0f}% of {limit_name}"
    _bars(ax, labels, values, colors, [None, None, "//"])
    # a ratio target is of a rate (tokens/s: ms_gpt2 >= ratio x the reference's); a figure in seconds
    # (summarize) would need reference / ratio, and has no target
    lines = [(section["reference"] * targets["ratio"], "dotted", f"target {fmt(targets['ratio'], 'x')} ref.")
             if section["reference"] and targets.get("ratio") else None,
             (limit * targets[fraction_key], "dashed", f"target {targets[fraction_key]:.0%} of the limit")
             if limit and targets.get(fraction_key) else None]
    for height, style, label in filter(None, lines):
        ax.axhline(height, color="black", linestyle=style, linewidth=1, label=label)
        ax.set_ylim(top=max(ax.get_ylim()[1], height * 1.1))
    if any(lines):
        ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=9)


def _peak_group(ax, rows, series, first, ratio_of, target, linestyle, hatch=None, labelled=False) -> bool:
    """One group of peak-MB bars per row of ``rows`` at x = ``first`` + i: a bar per (key, color, label)
    of ``series``, the ratio over the ``ratio_of`` bar, and the target (``target`` x the reference's
    peak) as a line; -> whether the target line has been labelled."""
    width = 0.27
    offset = (len(series) - 1) / 2
    for j, (key, color, label) in enumerate(series):
        x = [first + i + (j - offset) * width for i in range(len(rows))]
        peaks = [(row.get(key) or {}).get("peak_rss_mb") for row in rows]
        ax.bar(x, [v or 0.0 for v in peaks], width, color=color, hatch=hatch, label=label)
    at = [key for key, _, _ in series].index(ratio_of) - offset
    for i, row in enumerate(rows):
        ours = (row.get(ratio_of) or {}).get("peak_rss_mb") or 0.0
        ax.annotate(fmt(row.get("ratio"), "x") if row.get("ratio") else "n/a", (first + i + at * width, ours),
                    ha="center", va="bottom", fontsize=8)
        reference = (row.get("reference") or {}).get("peak_rss_mb")
        if reference and target:
            half = (offset + 0.5) * width
            ax.hlines(reference * target, first + i - half, first + i + half, colors="black", linestyles=linestyle,
                      label=None if labelled else f"target {fmt(target, 'x')} ref.")
            labelled = True
    return labelled


def _memory_panel(ax, memory: dict) -> None:
    """Peak MB of compiled / eager / reference training per shape, each compiled peak's ratio to the
    reference, and the target (a dashed line at target x the reference); then, when the report has the
    real ``ms-gpt2 train`` command's rows (``command``), its peak beside the reference Trainer's per
    shape, hatched, with its ratio and its own target (1.1x, dotted)."""
    rows, target = memory["shapes"], memory.get("target")
    _peak_group(ax, rows, [("compiled", OURS_COLOR, "compiled"), ("eager", EAGER_COLOR, "eager"),
                           ("reference", REF_COLOR, "reference")], 0, "compiled", target, "dashed")
    command = memory.get("command") or {}
    command_rows, command_target = command.get("rows") or [], command.get("target")
    title = f"training peak MB (target <= {fmt(target, 'x')} ref."
    if command_rows:
        _peak_group(ax, command_rows, [("ms_gpt2", OURS_COLOR, "ms-gpt2 train"),
                                       ("reference", REF_COLOR, "reference Trainer")],
                    len(rows), "ms_gpt2", command_target, "dotted", hatch="xx")
        title += f";\nthe real command, hatched: <= {fmt(command_target, 'x')}"
    ax.set_xticks(range(len(rows) + len(command_rows)),
                  [f"B{row['batch']} x {row['length']}" for row in rows] +
                  [f"train\nB{row['batch']} x {row['length']}" for row in command_rows], fontsize=8)
    ax.set_title(title + ")", fontsize=9)
    ax.set_ylim(0, 1.45 * max([bar.get_height() for bar in ax.patches] + [1e-9]))  # room for the legend
    ax.legend(fontsize=7, ncol=2, loc="upper left")


def chart_figure(result: dict):
    """The chart of a report as a matplotlib figure (None when it has nothing to draw): a panel for each
    speed figure it ran, each with its limit beside it, then training memory (``memory``) and BERT's
    tokens/s and peak memory (``bert_pretraining``) when the report has them."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = result.get("targets") or {}
    panels = [(key, lambda ax, key=key, spec=spec: _speed_panel(ax, result[key], targets.get(key, {}), *spec))
              for key, *spec in SPEED_PANELS if key in result]
    if result.get("memory"):
        panels.append(("memory", lambda ax: _memory_panel(ax, result["memory"])))
    bert = result.get("bert_pretraining")
    if bert:
        ref = bert.get("reference") or {}
        for key, field, title, ratio_key, sense, target_key in [
                ("bert_speed", "tokens_per_s", "BERT-base training tokens/s", "ratio", "the speed", "speed_target"),
                ("bert_memory", "peak_rss_mb", "BERT-base peak MB", "memory_ratio", "the memory", "memory_target")]:
            def draw(ax, field=field, title=title, ratio_key=ratio_key, sense=sense, target_key=target_key):
                _bars(ax, ["ms_gpt2", "PyTorch ref."], [bert["ms_gpt2"][field], ref.get(field)],
                      [OURS_COLOR, REF_COLOR])
                target = bert.get(target_key)  # issue 24's, as a multiple of the reference (older reports: none)
                if target and ref.get(field):
                    ax.axhline(ref[field] * target, color="black", linestyle="dotted",
                               label=f"target {fmt(target, 'x')} ref.")
                    ax.set_ylim(top=max(ax.get_ylim()[1], ref[field] * target * 1.1))  # a target above the bars shows
                    ax.legend(fontsize=7, loc="upper left")
                ax.set_title(title + (f" ({fmt(bert[ratio_key], 'x')} {sense})" if bert.get(ratio_key) else ""),
                             fontsize=9)
            panels.append((key, draw))
    if not panels:
        return None
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11 * cols / 3 if cols > 1 else 4.5, 3.6 * rows), squeeze=False)
    axes = [ax for row in axes for ax in row]
    for ax, (key, draw) in zip(axes, panels):
        ax.set_label(key)
        draw(ax)
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    cpu = (result.get("machine") or {}).get("cpu_model") or "CPU model not recorded"
    fig.suptitle(f"ms_gpt2 bench on {result['device']} ({cpu})", fontsize=11)
    fig.tight_layout()
    return fig


def chart(result: dict, path) -> Path | None:
    """:func:`chart_figure` saved as a PNG at ``path``; None (nothing written) when there is nothing to draw."""
    fig = chart_figure(result)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

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

