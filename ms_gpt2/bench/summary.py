"""``ms-gpt2 bench --summarize``: several saved runs -> one quotable spread.

A quotable figure is a spread, not one run: :func:`summarize` (``ms-gpt2 bench --summarize
a.json b.json c.json``) combines saved reports into the median and min–max of each figure. The
runs are separate invocations rather than one ``--runs N`` loop inside a process: each then pays
its own compilation and starts from a fresh process and memory, as a user's run would, a run that
fails or is killed costs only itself, runs can be spread over time (the machine's noise is what a
spread should show), and each run's JSON stays as the evidence behind the figure.

Besides the speed figures it combines BERT's tokens/s and peak memory (a report's
``bert_pretraining``) and training's peak memory per shape: the synthetic workloads and the real
``ms-gpt2 train`` command (a report's ``memory``). A standalone ``bench --memory`` report (``make
bench-memory``'s memory.json, which ``make bench-summary`` globs with the rest) is read as a report
whose only section is ``memory`` (:func:`as_report`).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from ms_gpt2.bench.gpt2 import FULL, QUICK
from ms_gpt2.bench.machine import matmul_mode
from ms_gpt2.bench.report import SPEED_PANELS, busy_note, fmt, target_text, write_json
from ms_gpt2.infra.errors import UserError

FIGURES = [("train", "tokens/s"), ("decode", "tokens/s"), ("summarize", "s")]
# each speed figure's fraction of its limit (the report's key, as the chart reads it) and its label here
_FRACTION_LABELS = {"train": "of MindSpore's MatMul", "decode": "of the read ceiling"}
FRACTIONS = {key: (fraction_key, _FRACTION_LABELS[key]) for key, _, fraction_key, *_ in SPEED_PANELS if fraction_key}
BERT_PARTS = ("ms_gpt2", "reference", "ratio")          # tokens/s and peak MB; ratio: BERT's ratio, memory_ratio
SHAPE_PARTS = ("compiled", "eager", "reference", "ratio")  # the synthetic training workload's peak MB per shape
COMMAND_PARTS = ("ms_gpt2", "reference", "ratio")        # the real `ms-gpt2 train` command's peak MB per shape


def _spread(values) -> dict:
    """Median and min–max of the values that exist (a run without a reference has no ratio)."""
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(present), "min": min(present), "max": max(present), "n": len(present)}


def workload_name(spec: dict) -> str:
    return "GPT-2 small" if spec == FULL else "quick" if spec == QUICK else "custom"


def is_memory_report(result) -> bool:
    """A standalone ``bench --memory`` report (:func:`ms_gpt2.bench.gpt2.memory_report`'s JSON shape)."""
    return isinstance(result, dict) and "ceilings" not in result and isinstance(result.get("workload"), dict) and \
        isinstance(result.get("shapes"), list) and isinstance(result.get("layers"), dict)


def as_report(result: dict) -> dict:
    """A standalone ``bench --memory`` report as a bench report that ran only its memory part (``bench
    --only memory`` gives that shape): the same device, machine and workload, no ceilings measured."""
    return {"device": result.get("device"), "machine": result.get("machine"), "workload": result["workload"],
            "ceilings": {}, "memory": result}


def load_runs(paths) -> list[tuple[str, dict]]:
    """(path, report) for each saved ``ms-gpt2 bench --json`` or ``bench --memory --json`` file (the
    latter through :func:`as_report`); a file that is neither is a UserError."""
    runs = []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: not a readable bench report ({err})") from err
        if is_memory_report(result):
            result = as_report(result)
        # a run of some parts (`bench --only`) has the sections of those only; every run has these
        keys = ("workload", "ceilings")
        if not isinstance(result, dict) or not all(isinstance(result.get(k), dict) for k in keys) or \
                not all(isinstance(result[k], dict) for k, _ in FIGURES if k in result):
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
    cpus = _grouped(runs, lambda result: (result.get("machine") or {}).get("cpu_model") or "not recorded")
    if len(cpus) > 1 and not mixed_cpus:
        raise UserError(f"runs from different CPU models: {_listed(cpus)}; ratios depend on the machine "
                        f"(pass --mixed-cpus to combine them anyway)")
    # a CPU report without the key ran MindSpore's asynchronous dispatch; a device's says None (no CPU mode)
    launches = _grouped(runs, lambda result: ((result.get("machine") or {}).get("cpu_launch") or "async")
                        if result.get("device") == "cpu" else None)
    if len(launches) > 1:
        raise UserError(f"runs whose CPU ops launched differently (MS_GPT2_CPU_LAUNCH): {_listed(launches)}; "
                        f"figures measured each way do not combine")
    modes = _grouped(runs, lambda result: matmul_mode(result["ceilings"]))  # a run without the rate: no mode
    if len(modes) > 1:
        raise UserError(f"runs that timed MindSpore's MatMul differently: {_listed(modes)}; the fractions of it "
                        f"do not combine (re-run the older ones)")
    per_run = []
    for path, result in runs:
        m = result.get("machine") or {}
        row = {"file": path, "started_at": m.get("started_at"), "cpu_model": m.get("cpu_model"),
               "cores": m.get("cores"),
               "load_average_start": m.get("load_average_start"), "load_average_end": m.get("load_average_end"),
               "mindspore_matmul_gflops": result["ceilings"].get("mindspore_matmul_gflops"),
               "mindspore_matmul_pynative_gflops": result["ceilings"].get("mindspore_matmul_pynative_gflops"),
               "numpy_matmul_gflops": result["ceilings"].get("matmul_gflops"),
               "read_gbps": result["ceilings"].get("read_gbps")}
        for key, _ in FIGURES:  # None: this run did not run that part (`bench --only`)
            row[key] = {k: result[key].get(k) for k in ("ms_gpt2", "reference", "ratio")} if key in result else None
            if row[key] and key in FRACTIONS:
                row[key]["fraction"] = result[key].get(FRACTIONS[key][0])
        row.update(_bert_row(result.get("bert_pretraining")), **_memory_row(result.get("memory")))
        per_run.append(row)
    # a figure present in only some runs is the spread over those (its "n" says how many)
    figures = {key: {k: _spread([row[key].get(k) for row in per_run if row[key]])
                     for k in ("ms_gpt2", "reference", "ratio") + (("fraction",) if key in FRACTIONS else ())}
               for key, _ in FIGURES}
    figures.update(_bert_figures(per_run), **_memory_figures(per_run))
    return {"runs": per_run, "cpu_models": sorted(cpus), "device": first.get("device"),
            "workload": first["workload"], "figures": figures,
            "mindspore_matmul_mode": next(iter(modes), None),
            # issue 24's speed targets, of every section some run saved them for (a later run's win)
            "targets": {key: value for _, result in runs for key, value in (result.get("targets") or {}).items()},
            "mindspore_matmul_gflops": _spread([row["mindspore_matmul_gflops"] for row in per_run]),
            "mindspore_matmul_pynative_gflops": _spread([row["mindspore_matmul_pynative_gflops"] for row in per_run]),
            "numpy_matmul_gflops": _spread([row["numpy_matmul_gflops"] for row in per_run]),
            "read_gbps": _spread([row["read_gbps"] for row in per_run])}


def _grouped(runs, key) -> dict:
    """``key(result)`` -> the paths of the runs that have it, in order; runs whose key is None left out."""
    groups = {}
    for path, result in runs:
        value = key(result)
        if value is not None:
            groups.setdefault(value, []).append(path)
    return groups


def _listed(groups: dict) -> str:
    return "; ".join(f"{value} ({', '.join(paths)})" for value, paths in groups.items())


def _peak(section) -> float | None:
    return (section or {}).get("peak_rss_mb")


def _bert_row(bert: dict | None) -> dict:
    """A run's BERT figures (None: it did not run BERT)."""
    if not bert:
        return {}
    ours, ref = bert.get("ms_gpt2") or {}, bert.get("reference") or {}
    return {"bert_pretraining": {
        "tokens_per_s": {"ms_gpt2": ours.get("tokens_per_s"), "reference": ref.get("tokens_per_s"),
                         "ratio": bert.get("ratio")},
        "peak_rss_mb": {"ms_gpt2": ours.get("peak_rss_mb"), "reference": ref.get("peak_rss_mb"),
                        "ratio": bert.get("memory_ratio")}}}


def _memory_row(memory: dict | None) -> dict:
    """A run's training peak memory per shape: the synthetic rows and the real command's (if it ran them)."""
    if not memory:
        return {}
    row = {"target": memory.get("target"),
           "shapes": [{"batch": r["batch"], "length": r["length"], "compiled": _peak(r.get("compiled")),
                       "eager": _peak(r.get("eager")), "reference": _peak(r.get("reference")),
                       "ratio": r.get("ratio")} for r in memory.get("shapes") or []]}
    command = memory.get("command")
    if command:
        row["command_target"] = command.get("target")
        row["command"] = [{"batch": r["batch"], "length": r["length"], "ms_gpt2": _peak(r.get("ms_gpt2")),
                           "reference": _peak(r.get("reference")), "ratio": r.get("ratio")}
                          for r in command.get("rows") or []]
    return {"memory": row}


def _bert_figures(per_run: list[dict]) -> dict:
    rows = [row["bert_pretraining"] for row in per_run if row.get("bert_pretraining")]
    if not rows:
        return {}
    return {"bert_pretraining": {figure: {k: _spread([r[figure][k] for r in rows]) for k in BERT_PARTS}
                                 for figure in ("tokens_per_s", "peak_rss_mb")}}


def _by_shape(rows_per_run: list[list[dict]], parts) -> list[dict]:
    """The spread of each part at each (batch, length), shapes in the order the runs first give them."""
    shapes = {}
    for rows in rows_per_run:
        for r in rows:
            shapes.setdefault((r["batch"], r["length"]), []).append(r)
    return [dict(batch=batch, length=length, **{k: _spread([r[k] for r in rows]) for k in parts})
            for (batch, length), rows in shapes.items()]


def _memory_figures(per_run: list[dict]) -> dict:
    runs = [row["memory"] for row in per_run if row.get("memory")]
    if not runs:
        return {}
    memory = {"target": next((m["target"] for m in runs if m.get("target")), None),
              "shapes": _by_shape([m["shapes"] for m in runs], SHAPE_PARTS)}
    commands = [m for m in runs if "command" in m]
    if commands:
        memory["command_target"] = next((m["command_target"] for m in commands if m.get("command_target")), None)
        memory["command"] = _by_shape([m["command"] for m in commands], COMMAND_PARTS)
    return {"memory": memory}


def _range(s: dict, unit: str = "", show=fmt) -> str:
    if not s["n"]:
        return "-"
    if s["min"] == s["max"]:
        return show(s["min"], unit)
    return f"{show(s['min'], unit)}–{show(s['max'], unit)}"


def _mb(value, unit=""):
    """Megabytes as whole numbers (5,210, not 5.21e+03)."""
    return "-" if value is None else f"{value:,.0f}{unit}"


def _percent(value, unit=""):
    return "-" if value is None else f"{100 * value:.3g}%"


def _line(label: str, s: dict, unit: str = "", show=fmt) -> str:
    return f"{label:<28}{show(s['median'], unit):>10}{_range(s, unit, show):>18}{s['n']:>6}"


def memory_lines(figures: dict) -> list[str]:
    """The rows of BERT's figures and of training's peak memory per shape (only what some run has)."""
    lines = []
    bert = figures.get("bert_pretraining")
    if bert:
        speed, peak = bert["tokens_per_s"], bert["peak_rss_mb"]
        lines += ["BERT-base pretraining (ratio > 1: ms_gpt2 faster; memory ratio < 1: ms_gpt2 smaller):",
                  _line("BERT ms_gpt2 (tokens/s)", speed["ms_gpt2"]),
                  _line("BERT reference (tokens/s)", speed["reference"]), _line("BERT ratio", speed["ratio"], "x"),
                  _line("BERT ms_gpt2 (peak MB)", peak["ms_gpt2"], show=_mb),
                  _line("BERT reference (peak MB)", peak["reference"], show=_mb),
                  _line("BERT memory ratio", peak["ratio"], "x")]
    memory = figures.get("memory")
    if memory:
        lines.append(f"training peak memory, the synthetic workload (compiled/ref target <= "
                     f"{fmt(memory['target'], 'x')}):")
        for r in memory["shapes"]:
            shape = f"B{r['batch']}x{r['length']}"
            lines += [_line(f"{shape} compiled (MB)", r["compiled"], show=_mb),
                      _line(f"{shape} eager (MB)", r["eager"], show=_mb),
                      _line(f"{shape} reference (MB)", r["reference"], show=_mb),
                      _line(f"{shape} compiled/ref", r["ratio"], "x")]
        if "command" in memory:
            lines.append(f"the real command, ms-gpt2 train (target <= {fmt(memory['command_target'], 'x')}):")
            for r in memory["command"]:
                shape = f"B{r['batch']}x{r['length']}"
                lines += [_line(f"{shape} ms_gpt2 (MB)", r["ms_gpt2"], show=_mb),
                          _line(f"{shape} reference (MB)", r["reference"], show=_mb),
                          _line(f"{shape} ms_gpt2/ref", r["ratio"], "x")]
    return lines


def summary_table(summary: dict) -> str:
    runs = summary["runs"]
    n = len(runs)
    cores = sorted({row["cores"] for row in runs if row["cores"]})
    ms = summary["mindspore_matmul_gflops"]
    lines = [f"{n} run{'s' if n != 1 else ''} of the {workload_name(summary['workload'])} workload on "
             f"{summary['device']}; CPU model: {', '.join(summary['cpu_models'])}"
             f"{'' if not cores else ' (' + '/'.join(map(str, cores)) + ' cores)'}",
             f"MindSpore's own MatMul ({summary.get('mindspore_matmul_mode') or 'not measured'}): median "
             f"{fmt(ms['median'])} GFLOP/s, {_range(ms)} over the runs"
             + ("" if not summary.get("mindspore_matmul_pynative_gflops", {}).get("n") else
                f"; one op at a time: median {fmt(summary['mindspore_matmul_pynative_gflops']['median'])} GFLOP/s, "
                f"{_range(summary['mindspore_matmul_pynative_gflops'])}")
             + ("" if not summary.get("read_gbps", {}).get("n") else
                f"; NumPy's: median {fmt(summary['numpy_matmul_gflops']['median'])} GFLOP/s, "
                f"{_range(summary['numpy_matmul_gflops'])}; read ceiling: median {fmt(summary['read_gbps']['median'])} "
                f"GB/s, {_range(summary['read_gbps'])}"),
             f"{'figure':<28}{'median':>10}{'min–max':>18}{'runs':>6}"]
    for key, unit in FIGURES:
        if not any(row[key] for row in runs):  # no run ran this part
            continue
        for part, label, suffix in [("ms_gpt2", f"{key} ms_gpt2 ({unit})", ""),
                                    ("reference", f"{key} reference ({unit})", ""), ("ratio", f"{key} ratio", "x")]:
            lines.append(_line(label, summary["figures"][key][part], suffix))
        if summary["figures"][key].get("fraction", {}).get("n"):
            lines.append(_line(f"{key} {FRACTIONS[key][1]}", summary["figures"][key]["fraction"], show=_percent))
    lines.append("ratio > 1: ms_gpt2 faster (summarize: reference seconds / ms_gpt2 seconds)")
    if summary.get("targets"):
        lines.append("targets (issue 24): " + target_text(summary["targets"]))
    lines += memory_lines(summary["figures"])
    lines.append("per run:")
    for row in runs:
        start, end = row["load_average_start"], row["load_average_end"]
        load = "-" if not start else f"{start[0]:.2f}" + (f"→{end[0]:.2f}" if end else "")
        ratios = ", ".join(f"{key} {fmt(row[key]['ratio'], 'x')}" for key, _ in FIGURES if row[key]) or \
            "no speed figures"
        lines.append(f"  {row['file']}: {row['started_at'] or 'date not recorded'}, "
                     f"{row['cpu_model'] or 'CPU model not recorded'}, MatMul {fmt(row['mindspore_matmul_gflops'])} "
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

