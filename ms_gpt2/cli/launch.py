"""``--nproc N``: a command re-runs itself on N local workers under ``msrun``.

The workers run ``ms_gpt2/__main__.py`` (this CLI) with the same arguments; each joins the group in
:func:`ms_gpt2.infra.runtime.setup` and trains data-parallel (:mod:`ms_gpt2.engine.distributed`).
msrun starts the ``python`` on PATH, so this interpreter's ``bin`` goes first.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def msrun_command(nproc: int, argv: list[str], log_dir, master_port: int | None = None,
                  cluster_time_out: int = 300) -> list[str]:
    """The msrun call that runs ``python -m ms_gpt2 ARGV`` on ``nproc`` workers of this machine."""
    msrun = Path(sys.executable).with_name("msrun")
    launcher = [str(msrun)] if msrun.is_file() else [sys.executable, "-m", "mindspore.parallel.cluster.run"]
    return [*launcher, f"--worker_num={nproc}", f"--local_worker_num={nproc}",
            f"--master_port={master_port or free_port()}", f"--log_dir={log_dir}", "--join=True",
            f"--cluster_time_out={cluster_time_out}", str(Path(__file__).resolve().parents[1] / "__main__.py"),
            *argv]


_NOISE = re.compile(r"^\[(INFO|WARNING|DEBUG)\]")


def worker_errors(log_dir, lines: int = 15) -> dict[str, list[str]]:
    """Per worker log that shows an error: ms-gpt2's one-line error, or its last traceback's tail."""
    found = {}
    for log in sorted(Path(log_dir).glob("worker_*.log")):
        text = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
                if line.strip() and not _NOISE.match(line)]
        user_errors = [line for line in text if line.startswith("ms-gpt2: error:")]
        tracebacks = [i for i, line in enumerate(text) if line.startswith("Traceback")]
        if user_errors:
            found[log.name] = user_errors[-1:]
        elif tracebacks:
            found[log.name] = text[tracebacks[-1]:][-lines:]
    return found


def launch(nproc: int, argv: list[str], log_dir, master_port: int | None = None, out=None) -> int:
    """Run ``ms-gpt2 ARGV`` on ``nproc`` local workers through msrun; 0 if all succeed.

    msrun kills the other workers when one fails and exits non-zero; the failing worker's error
    (its last traceback, or ms-gpt2's one-line error) is then printed from its log."""
    out = out or sys.stderr
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)  # msrun starts workers with the `python` on PATH
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = msrun_command(nproc, argv, log_dir, master_port)
    with open(log_dir / "msrun.log", "w", encoding="utf-8") as msrun_log:
        code = subprocess.call(cmd, env=env, stdout=msrun_log, stderr=subprocess.STDOUT)
    if code != 0:
        errors = worker_errors(log_dir)
        print(f"ms-gpt2: error: {nproc}-worker msrun job failed (exit {code}); logs in {log_dir}", file=out)
        for name, lines in errors.items():
            print(f"--- {name}:", *lines, sep="\n", file=out)
        return code or 1
    result = log_dir / "worker_0.log"  # rank 0's result (a JSON line), as one process prints it
    for line in result.read_text(encoding="utf-8", errors="replace").splitlines() if result.is_file() else ():
        if line.startswith('{"'):
            print(line)
    return 0
