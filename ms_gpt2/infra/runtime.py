"""One place that decides where ms_gpt2 runs: Ascend NPU first, then GPU, then CPU.

Why this has to happen early: mindtorch (the ``torch`` that mindnlp 0.5 provides) reads MindSpore's
``device_target`` once, when ``mindnlp`` is first imported, and routes every op through that
backend's table. So the device is fixed *before* that import, here, and every ms_gpt2 module that
needs mindnlp calls :func:`ensure` first. The compat shims are applied at the same moment, so no
code path can see the stack half-patched.

Precedence: explicit argument (``--device``) > ``MS_GPT2_DEVICE`` > ``auto``.
"""
from __future__ import annotations

import functools
import logging
import os
import random
import sys
from dataclasses import dataclass, replace

from ms_gpt2.infra.errors import UserError

# MindSpore logs every missing accelerator plugin at WARNING on a CPU machine; keep errors only
# unless the user asked for more. Must be set before mindspore is imported to take effect.
os.environ.setdefault("GLOG_v", "3")

log = logging.getLogger("ms_gpt2")

ENV_VAR = "MS_GPT2_DEVICE"
CHOICES = ("auto", "ascend", "gpu", "cpu")
PREFERENCE = ("ascend", "gpu", "cpu")
MINDSPORE_TARGET = {"ascend": "Ascend", "gpu": "GPU", "cpu": "CPU"}
# The device string Hugging Face code (on mindtorch) expects for each backend.
TORCH_DEVICE = {"ascend": "npu", "gpu": "cuda", "cpu": "cpu"}


class DeviceUnavailableError(UserError, RuntimeError):
    """The user asked for a backend this machine does not have."""


@dataclass(frozen=True)
class Runtime:
    device: str  # "ascend" | "gpu" | "cpu"
    requested: str  # what the user asked for, e.g. "auto"
    seed: int | None
    shims: tuple[str, ...]
    rank: int = 0  # this process's rank in an msrun group (0 when alone)
    world_size: int = 1
    cpu_launch: str | None = None  # how this process's CPU ops launch ("inline" | "async"); None off the CPU

    @property
    def mindspore_target(self) -> str:
        return MINDSPORE_TARGET[self.device]

    @property
    def torch_device(self) -> str:
        return TORCH_DEVICE[self.device]


_current: Runtime | None = None


def available_devices() -> dict[str, bool]:
    """Which backends MindSpore can load plugins for on this machine."""
    from mindspore.device_context import ascend, gpu

    return {"ascend": bool(ascend.is_available()), "gpu": bool(gpu.is_available()), "cpu": True}


def resolve_device(requested: str | None, available: dict[str, bool]) -> tuple[str, str]:
    """Return ``(requested, chosen)``; pure so the policy is testable without hardware."""
    requested = (requested or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if requested not in CHOICES:
        raise UserError(f"unknown device {requested!r}; choose one of {', '.join(CHOICES)}")
    if requested == "auto":
        return requested, next(d for d in PREFERENCE if available.get(d))
    if not available.get(requested):
        have = ", ".join(d for d in PREFERENCE if available.get(d))
        raise DeviceUnavailableError(
            f"device {requested!r} was requested (--device or ${ENV_VAR}) but MindSpore cannot use "
            f"it on this machine (available: {have}). Install the {MINDSPORE_TARGET[requested]} "
            f"MindSpore plugin/driver, or pass --device auto / --device cpu."
        )
    return requested, requested


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, MindSpore and mindtorch, so sampling and init are reproducible."""
    import numpy as np
    import mindspore

    random.seed(seed)
    np.random.seed(seed)
    mindspore.set_seed(seed)
    if "mindnlp" in sys.modules:
        import torch  # mindtorch, once mindnlp is imported

        torch.manual_seed(seed)


def setup(device: str | None = None, seed: int | None = None) -> Runtime:
    """Fix the backend, import mindnlp on it, apply compat shims, seed. Idempotent per device."""
    global _current
    import mindspore

    launch = cpu_launch()   # a misspelt MS_GPT2_CPU_LAUNCH is refused on any device, and on every call
    requested, chosen = resolve_device(device, available_devices())
    if _current is not None:
        if chosen != _current.device:
            raise RuntimeError(
                f"ms_gpt2 already runs on {_current.device!r} in this process; mindtorch cannot "
                f"switch to {chosen!r} after mindnlp is imported. Start a new process."
            )
    else:
        if "mindnlp" in sys.modules and mindspore.get_context("device_target") != MINDSPORE_TARGET[chosen]:
            raise RuntimeError(
                "mindnlp was imported before ms_gpt2.infra.runtime.setup() on another device; "
                "call setup() (or pass --device) before importing mindnlp."
            )
        mindspore.set_device(MINDSPORE_TARGET[chosen])
        if chosen == "ascend":
            _keep_origin_dtype()
        if chosen == "cpu" and launch == "inline":
            _launch_inline()   # before the first op (MindSpore decides some of it once, at that op)
        rank, world_size = _join_msrun_group()
        from ms_gpt2.infra import compat

        compat.defer_mindnlp_diffusers()
        import mindnlp  # noqa: F401  (binds mindtorch to the device just set)


        shims = tuple(compat.apply())
        _current = Runtime(device=chosen, requested=requested, seed=seed, shims=shims, rank=rank,
                           world_size=world_size, cpu_launch=launch if chosen == "cpu" else None)
        log.info("ms_gpt2 device: %s (requested %s; MindSpore target %s%s)",
                 chosen, requested, MINDSPORE_TARGET[chosen],
                 f"; rank {rank} of {world_size}" if world_size > 1 else "")
    if seed is not None:
        seed_everything(seed)
        _current = replace(_current, seed=seed)
    return _current


LAUNCH_ENV = "MS_GPT2_CPU_LAUNCH"
LAUNCH_CHOICES = ("async", "inline")


def cpu_launch() -> str:
    """How the CPU backend launches ops: ``MS_GPT2_CPU_LAUNCH``, "inline" (the default, see
    :func:`_launch_inline`) or "async" (MindSpore's own default); anything else is a UserError
    naming the variable."""
    value = os.environ.get(LAUNCH_ENV, "inline").strip().lower() or "inline"
    if value not in LAUNCH_CHOICES:
        raise UserError(f"{LAUNCH_ENV}={os.environ[LAUNCH_ENV]!r}: expected one of {', '.join(LAUNCH_CHOICES)}")
    return value


def _launch_inline() -> None:
    """On the CPU backend, run each op in the calling thread and launch each graph synchronously
    (``launch_blocking``, formerly the ``pynative_synchronize`` context) rather than handing them to
    MindSpore's dispatch threads; ``MS_GPT2_CPU_LAUNCH=async`` keeps MindSpore's asynchronous
    dispatch. The same numbers come out: only where the work runs changes.

    MindSpore 2.7's asynchronous dispatch pays a thread hand-off per launch (and, likely, its waiting
    threads keep a core busy: CPU time was about twice wall time in these runs). On a 2-core Xeon
    (2026-12-06, fresh processes): the eager mindtorch training step of a 6-layer 384-wide GPT-2
    went from 3.8-4.7 s to 2.1-2.4 s, Hugging Face ``generate`` on it from 7.5-8.2 s to 3.8 s,
    MindSpore's MatMul one op at a time from 161-176 to 286-297 GFLOP/s, and the test suite from
    14-15 to 10.6 minutes. GPT-2 small's compiled graphs, whose kernels
    dwarf their launches, neither gain nor lose: training steps of 6.81 s (async) against 6.88 s,
    greedy decoding 27.9-30.4 against 29.1-30.6 tokens/s. Devices keep asynchronous dispatch,
    which there overlaps the host's work with the device's."""
    import mindspore

    mindspore.runtime.launch_blocking()


def _keep_origin_dtype() -> None:
    """An fp32 run means fp32 on every Ascend: the Atlas training series (910A) defaults to
    ``force_fp16``, which runs a float32 graph's MatMuls in float16, unscaled. ``must_keep_origin_dtype``
    keeps each op's dtype, so float32 stays float32 and fp16/bf16 come only from the graph's own casts
    (:mod:`ms_gpt2.models.graphs.precision`; A2/A3 already default to it)."""
    from mindspore.device_context.ascend.op_precision import precision_mode

    precision_mode("must_keep_origin_dtype")


def ascend_soc() -> str | None:
    """The Ascend SoC MindSpore runs on ("ascend910" = 910A, "ascend910b"/"ascend910_93" = A2/A3),
    or None off Ascend."""
    if _current is None or _current.device != "ascend":
        return None
    from mindspore._c_expression import MSContext  # pylint: disable=no-name-in-module

    return MSContext.get_instance().get_ascend_soc_version() or None


def _join_msrun_group() -> tuple[int, int]:
    """Under ``msrun`` (it sets ``MS_ROLE``), join the job's communication group: HCCL on Ascend,
    MCCL on CPU, chosen by MindSpore from the device just set. msrun also runs the script as its
    scheduler (``MS_ROLE=MS_SCHED``): that process serves the group inside ``init()`` and exits
    there, before it could write anything. Returns ``(rank, world size)``; ``(0, 1)`` alone."""
    if os.environ.get("MS_ROLE") not in ("MS_WORKER", "MS_SCHED"):
        return 0, 1
    from mindspore import communication

    communication.init()
    return communication.get_rank(), communication.get_group_size()


def ensure() -> Runtime:
    """The runtime in force, setting it up with defaults (env var or auto) on first use."""
    return _current if _current is not None else setup()


def current() -> Runtime | None:
    return _current


def return_freed_memory() -> bool:
    """Give the memory the process has freed back to the system (glibc's ``malloc_trim(0)``); False
    where there is no glibc (nothing done).

    Freed host memory is not returned by itself: glibc keeps it in the heap for later ``malloc``
    calls, so it stays resident. Measured on GPT-2 small (CPU): releasing the Hugging Face model's
    weights (408 MB) lowered the resident memory by 62 MB, trimming after it by 327 MB more; after
    the first compiled training step at B4 x 256, trimming lowered it by 210-250 MB (compilation's
    and the step's freed memory). Nothing computed depends on it."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def return_step_memory() -> bool:
    """After a training step: on the CPU backend, what the step (the first: its compilation) freed
    goes back to the system (:func:`return_freed_memory`); glibc keeps it in the heap otherwise,
    and the resident memory between steps stays at the step's high point. On a device the step's
    memory is the device's: nothing to trim on the host each step. -> whether memory was returned."""
    return ensure().device == "cpu" and return_freed_memory()


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim   # the C library the interpreter runs on (no lookup)
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl: no such call; Windows: no CDLL(None))
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim
