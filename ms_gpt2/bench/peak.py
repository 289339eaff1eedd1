"""A process's own peak resident memory, for the bench's fresh-process figures.

Standard library only: the PyTorch reference runs the bench's scripts by file path in an interpreter
that has no ms_gpt2, and imports this file as a sibling (``import peak``).

Linux's ``getrusage(RUSAGE_SELF).ru_maxrss`` survives ``execve``: a child started by a 16 GB parent
reports at least 16 GB, whatever it used itself. The address space's high-water mark, ``VmHWM`` in
``/proc/self/status``, starts afresh at ``exec``; ``ru_maxrss`` is only the fallback where there is no
``/proc`` (then a figure may include the parent's).
"""
from __future__ import annotations

import resource


def vm_kib(field: str) -> float | None:
    """A ``/proc/self/status`` field in KiB (``VmHWM``, ``VmRSS``...), or None without ``/proc``."""
    try:
        with open("/proc/self/status") as status:
            return next(float(line.split()[1]) for line in status if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (``VmHWM``; ``ru_maxrss`` without ``/proc``)."""
    hwm = vm_kib("VmHWM")
    return hwm / 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
