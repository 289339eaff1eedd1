"""``ms-gpt2 bench --summarize``: several saved runs -> one quotable spread.

A quotable figure is a spread, not one run: :func:`summarize` (``ms-gpt2 bench --summarize
a.json b.json c.json``) combines saved reports into the median and min–max of each figure. The
runs are separate invocations rather than one ``--runs N`` loop inside a process: each then pays
its own compilation and starts from a fresh process and memory, as a user's run would, a run that
fails or is killed costs only itself, runs can be spread over time (the machine's noise is what a
spread should show), and each run's JSON stays as the evidence behind the figure.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from ms_gpt2.bench.gpt2 import FULL, QUICK
from ms_gpt2.bench.report import busy_note, fmt, write_json
from ms_gpt2.infra.errors import UserError

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
        for key, _ in FIGURES:  # None: this run did not run that part (`bench --only`)
            row[key] = {k: result[key].get(k) for k in ("ms_gpt2", "reference", "ratio")} if key in result else None
        per_run.append(row)
    # a figure present in only some runs is the spread over those (its "n" says how many)
    figures = {key: {k: _spread([row[key][k] for row in per_run if row[key]]) for k in ("ms_gpt2", "reference",
                                                                                          "ratio")}
               for key, _ in FIGURES}
    return {"runs": per_run, "cpu_models": sorted(cpus), "device": first.get("device"),
            "workload": first["workload"], "figures": figures,
            "mindspore_matmul_gflops": _spread([row["mindspore_matmul_gflops"] for row in per_run]),
            "numpy_matmul_gflops": _spread([row["numpy_matmul_gflops"] for row in per_run])}


def _range(s: dict, unit: str = "") -> str:
    if not s["n"]:
        return "-"
    if s["min"] == s["max"]:
        return fmt(s["min"], unit)
    return f"{fmt(s['min'], unit)}–{fmt(s['max'], unit)}"


def summary_table(summary: dict) -> str:
    runs = summary["runs"]
    n = len(runs)
    cores = sorted({row["cores"] for row in runs if row["cores"]})
    ms = summary["mindspore_matmul_gflops"]
    lines = [f"{n} run{'s' if n != 1 else ''} of the {workload_name(summary['workload'])} workload on "
             f"{summary['device']}; CPU model: {', '.join(summary['cpu_models'])}"
             f"{'' if not cores else ' (' + '/'.join(map(str, cores)) + ' cores)'}",
             f"MindSpore's own MatMul: median {fmt(ms['median'])} GFLOP/s, {_range(ms)} over the runs",
             f"{'figure':<28}{'median':>10}{'min–max':>18}{'runs':>6}"]
    for key, unit in FIGURES:
        if not any(row[key] for row in runs):  # no run ran this part
            continue
        for part, label, suffix in [("ms_gpt2", f"{key} ms_gpt2 ({unit})", ""),
                                    ("reference", f"{key} reference ({unit})", ""), ("ratio", f"{key} ratio", "x")]:
            s = summary["figures"][key][part]
            lines.append(f"{label:<28}{fmt(s['median'], suffix):>10}{_range(s, suffix):>18}{s['n']:>6}")
    lines.append("ratio > 1: ms_gpt2 faster (summarize: reference seconds / ms_gpt2 seconds)")
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

