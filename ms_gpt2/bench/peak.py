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


# --- a command's own peak, measured from outside it -----------------------------------------------
#
# ``VmHWM`` can only be read from inside the process (or racily from outside while it runs). A
# command that is not ours to change (``ms-gpt2 train``) is measured instead by its parent: the
# ``ru_maxrss`` that ``wait4`` returns for the child. That figure carries the memory high-water mark
# of the address space the child was forked from (the copy ``exec`` replaces), so the parent must be
# small: the bench starts this file as a launcher in a fresh interpreter (standard library only, tens
# of MB), and the launcher starts the command. Run by file path it prints one JSON line on stdout:
#
#     python peak.py [--timeout SECONDS] -- COMMAND ARG...
#     {"peak_rss_mb": ..., "returncode": ..., "seconds": ...}
#
# and sends the command's own stdout to its stderr, so that line is the only one on stdout.


def measure(argv: list[str], timeout: float | None = None, stdout=None) -> dict:
    """Run ``argv`` as this process's child; -> its exit code, wall time and peak resident memory in
    MB (``ru_maxrss`` of the child from ``wait4``: its own peak, or that of the largest process it
    waited for; never below this process's own peak, so call it from a small process). The child is
    killed after ``timeout`` seconds (returncode then negative, ``timed_out`` true)."""
    import os
    import signal
    import subprocess
    import time

    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=stdout)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(child.pid, 0 if timeout is None else os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > timeout:
            timed_out = True
            os.kill(child.pid, signal.SIGKILL)
            timeout = None  # then wait for it without a deadline
        else:
            time.sleep(0.2)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "returncode": child.returncode,
            "seconds": time.perf_counter() - start, "timed_out": timed_out}


def _launch(args: list[str]) -> int:
    import json
    import sys

    timeout = None
    if args[:1] == ["--timeout"]:
        timeout, args = float(args[1]), args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python peak.py [--timeout SECONDS] -- COMMAND ARG...", file=sys.stderr)
        return 2
    sys.stdout.flush()
    result = measure(args, timeout, stdout=sys.stderr.fileno())
    result["launcher_peak_rss_mb"] = peak_rss_mb()  # the floor under the child's figure
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_launch(sys.argv[1:]))
