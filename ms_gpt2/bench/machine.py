"""What a bench figure was measured on: the machine (CPU model, cores, load average) and its
ceilings (NumPy's fp32 matmul GFLOP/s and memory read GB/s, and MindSpore's own ``MatMul`` rate),
which every ``ms-gpt2 bench`` report records beside its figures (the ratios depend on the machine).
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from datetime import datetime
from pathlib import Path

import numpy as np


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


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine() -> dict:
    """What the figures were measured on. ``load_average_start`` is [1, 5, 15]-minute load as the
    run starts: other work on the machine. ``load_average_end`` (set by :func:`ms_gpt2.bench.gpt2.bench`) includes the
    bench's own load, so on an idle machine it ends near the core count."""
    from ms_gpt2.infra import runtime

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
            # how MindSpore's CPU ops launched in this run (None on a device); reports without it: "async"
            "cpu_launch": runtime.ensure().cpu_launch,
            "platform": platform.platform(), "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_average_start": load_average(), "load_average_end": None}


def ceilings(seconds: float = 3.0) -> dict:
    """fp32 matmul GFLOP/s and memory read GB/s of this machine (NumPy), best of repeated runs, and
    MindSpore's own MatMul GFLOP/s inside a compiled graph (``mindspore_matmul_gflops``, the compiled
    engine's limit) and one op at a time (``mindspore_matmul_pynative_gflops``, the eager path's)."""
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
            # the rate the compiled engine's fraction is of; earlier reports timed it differently (see
            # matmul_mode), and `bench --summarize` will not mix the kinds
            "mindspore_matmul_gflops": mindspore_matmul_gflops(seconds / 4),
            "mindspore_matmul_pynative_gflops": mindspore_matmul_gflops(seconds / 4, compiled=False),
            "mindspore_matmul_wait": MATMUL_WAIT}


#: How each MindSpore MatMul timing ends (``ceilings``' ``mindspore_matmul_wait``): the device is
#: synchronised and nothing else is timed. Reports without the key ended each call by ``asnumpy()``.
MATMUL_WAIT = "synchronize"


def matmul_mode(ceil: dict) -> str | None:
    """How a report's ``mindspore_matmul_gflops`` was timed; None: not measured.

    "graph": in a compiled graph, each call waited for by synchronising the device (reports with
    ``mindspore_matmul_wait``). "graph, ended by asnumpy()": in a graph, each call ended by
    ``asnumpy()`` of the product, which took ~20% of the call (reports with the one-op-at-a-time
    rate beside it but no ``mindspore_matmul_wait``: the first of 2026-12-06). "one op at a time":
    PyNative, ended by ``asnumpy()`` (reports before those). A wait this code does not know is a
    mode of its own ("graph, <wait>")."""
    if ceil.get("mindspore_matmul_gflops") is None:
        return None
    if "mindspore_matmul_pynative_gflops" not in ceil:
        return "one op at a time"
    wait = ceil.get("mindspore_matmul_wait")
    return "graph, ended by asnumpy()" if wait is None else "graph" if wait == MATMUL_WAIT else f"graph, {wait}"


def mindspore_matmul_gflops(seconds: float = 1.0, shape=(1024, 768, 3072), compiled: bool = True) -> float:
    """MindSpore's own fp32 ``MatMul`` throughput on the current device, best of repeated runs, at
    a GPT-2 small MLP shape (M x K @ K x N): the framework's kernels, as opposed to the machine's
    (NumPy's BLAS) ceiling.

    ``compiled`` (the default): the MatMul inside a ``mindspore.jit`` graph, which is how the
    compiled training engine and the decoders run it. ``compiled=False``: one op at a time
    (PyNative, as mindtorch's eager path runs it). They differ: on an AMD EPYC (2 cores) the graph's
    MatMul ran at 194-201 GFLOP/s and PyNative's at 103-110 in the same process (2026-12-06), so a
    fraction of the PyNative figure would overstate how close a compiled step is to its limit."""
    import mindspore
    from mindspore import ops

    from ms_gpt2.infra import compat

    m, k, n = shape
    rng = np.random.default_rng(0)
    a = mindspore.Tensor(rng.random((m, k), dtype=np.float32))
    b = mindspore.Tensor(rng.random((k, n), dtype=np.float32))
    op = ops.MatMul()

    def matmul(x, y):
        return op(x, y)

    if compiled:
        matmul = mindspore.jit(matmul)
    matmul(a, b)  # warm-up (kernel selection; the graph's compilation)
    compat.synchronize()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0:
        start = time.perf_counter()
        matmul(a, b)
        compat.synchronize()  # the kernel has run; nothing else is timed (asnumpy() would add ~20%)
        best = max(best, 2 * m * k * n / (time.perf_counter() - start) / 1e9)
    return best
