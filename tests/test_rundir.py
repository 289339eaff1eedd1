"""Crash-safe files/directories and the one-run-per-output-directory lock (no MindSpore: fast)."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ms_gpt2 import rundir
from ms_gpt2.rundir import LOCK_FILE, RunDirInUseError, RunLock

ROOT = Path(__file__).resolve().parents[1]
HOLDER = ("import sys, time; sys.path.insert(0, {root!r}); from ms_gpt2.rundir import RunLock; "
          "lock = RunLock(sys.argv[1]).acquire(); open(sys.argv[2], 'w').close(); time.sleep(300)")


def hold_lock(directory, tmp_path):
    """A separate process holding the lock on ``directory`` (it sleeps once it has it)."""
    ready = tmp_path / "holding"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=str(ROOT)), str(directory), str(ready)])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
        time.sleep(0.05)
    return proc


def test_a_second_run_refuses_naming_the_live_holder(tmp_path):
    proc = hold_lock(tmp_path / "run", tmp_path)
    try:
        with pytest.raises(RunDirInUseError) as caught:
            RunLock(tmp_path / "run").acquire()
        message = str(caught.value)
        assert "\n" not in message
        assert f"pid {proc.pid} on host " in message and str(tmp_path / "run") in message
        assert "from ms_gpt2.rundir import RunLock" in message  # the holder's command line
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
    proc = hold_lock(tmp_path / "run", tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "run" / LOCK_FILE).is_file()  # SIGKILL left the file; the kernel dropped the lock
    with caplog.at_level(logging.WARNING, logger="ms_gpt2.rundir"):
        with RunLock(tmp_path / "run"):
            held = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
            assert held["pid"] == os.getpid()
    assert f"taking over the lock left by a run that is no longer alive (pid {proc.pid} " in caplog.text
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # a clean exit leaves no lock file


def test_released_lock_can_be_taken_again_without_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ms_gpt2.rundir"):
        with RunLock(tmp_path / "run"):
            pass
        with RunLock(tmp_path / "run"):
            with pytest.raises(RunDirInUseError):  # one run per directory, in one process too
                RunLock(tmp_path / "run").acquire()
    assert "taking over" not in caplog.text


def failing_at_call(monkeypatch, module_os, n):
    """Make ``os.replace`` raise at its n-th call: a crash between two steps of a save."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == n:
            raise OSError("simulated crash")
        return real(src, dst)

    monkeypatch.setattr(module_os, "replace", replace)


def test_atomic_write_keeps_the_old_file_when_the_write_is_cut_off(tmp_path, monkeypatch):
    path = tmp_path / "train_config.yaml"
    rundir.atomic_write_text(path, "old: 1\n")
    failing_at_call(monkeypatch, rundir.os, 1)
    with pytest.raises(OSError, match="simulated crash"):
        rundir.atomic_write_text(path, "new: 2\n")
    assert path.read_text() == "old: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["train_config.yaml"]  # no temporary left behind


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_replace_dir_never_leaves_no_directory(tmp_path, monkeypatch, exchange):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    staging = rundir.staging_name(target)
    staging.mkdir()
    (staging / "weights").write_text("new")
    if not exchange:  # a platform without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(rundir, "_exchange", lambda a, b: False)
    failing_at_call(monkeypatch, rundir.os, 2)  # the two-rename swap dies between its renames
    try:
        rundir.replace_dir(staging, target)
    except OSError:
        assert not exchange
    monkeypatch.undo()
    assert (rundir.recover_dir(target) / "weights").read_text() == ("new" if exchange else "old")
