"""Crash-safe files/directories and the one-run-per-output-directory lock (no MindSpore: fast)."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ms_gpt2.infra import rundir
from ms_gpt2.infra.rundir import LOCK_FILE, RunDirInUseError, RunLock

ROOT = Path(__file__).resolve().parents[1]
HOLDER = ("import sys, time; sys.path.insert(0, {root!r}); from ms_gpt2.infra.rundir import RunLock; "
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
        assert "from ms_gpt2.infra.rundir import RunLock" in message  # the holder's command line
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
    proc = hold_lock(tmp_path / "run", tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "run" / LOCK_FILE).is_file()  # SIGKILL left the file; the kernel dropped the lock
    with caplog.at_level(logging.WARNING, logger="ms_gpt2.infra.rundir"):
        with RunLock(tmp_path / "run"):
            held = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
            assert held["pid"] == os.getpid()
    assert f"taking over the lock left by a run that is no longer alive (pid {proc.pid} " in caplog.text
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # a clean exit leaves no lock file


def test_released_lock_can_be_taken_again_without_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ms_gpt2.infra.rundir"):
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


def write_model(directory, version):
    """A two-file stand-in for a saved model, so a half-removed or half-written copy shows."""
    directory.mkdir()
    for name in ("config.json", "weights"):
        (directory / name).write_text(f"{name} {version}")


def model_version(directory):
    """Which version a complete copy written by write_model is; anything else fails the test."""
    files = {p.name: p.read_text() for p in directory.iterdir()} if directory.is_dir() else {}
    for version in ("old", "new", "newer"):
        if files == {name: f"{name} {version}" for name in ("config.json", "weights")}:
            return version
    raise AssertionError(f"{directory} holds no complete model: {files}")


def crash_at_step(monkeypatch, n, steps):
    """Kill a save at the n-th filesystem step of replace_dir (0: never), recording each step in ``steps``.

    The steps are os.replace, the RENAME_EXCHANGE swap (rundir._exchange) and shutil.rmtree. The n-th
    raises before it runs, except rmtree, which first removes one file: a kill part-way through a
    removal. Every step of both swap paths is wrapped, so the crash lands on whichever path runs."""
    real_replace, real_exchange, real_rmtree = os.replace, rundir._exchange, rundir.shutil.rmtree

    def step(name, run, *args, **kwargs):
        steps.append(name)
        if len(steps) == n:
            if name == "rmtree" and Path(args[0]).is_dir():
                next(p for p in sorted(Path(args[0]).rglob("*")) if p.is_file()).unlink()
            raise OSError(f"simulated crash at {name}")
        result = run(*args, **kwargs)
        if name == "exchange" and result is False:  # the OS cannot swap: replace_dir falls back to renames
            steps[-1] = "no exchange"
        return result

    monkeypatch.setattr(os, "replace", lambda *a, **k: step("replace", real_replace, *a, **k))
    monkeypatch.setattr(rundir, "_exchange", lambda *a: step("exchange", real_exchange, *a))
    monkeypatch.setattr(rundir, "shutil", SimpleNamespace(rmtree=lambda *a, **k: step("rmtree", real_rmtree, *a, **k)))


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_a_save_killed_at_any_step_of_the_swap_leaves_the_old_or_the_new_model(tmp_path, monkeypatch, exchange):
    """replace_dir killed before each of its steps in turn (and part-way through each removal):
    recover_dir always finds a complete model, old or new, and the next save goes through."""
    if not exchange:  # a platform without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(rundir, "_exchange", lambda a, b: False)
    else:  # the exchange variant must run the exchange, not fall back to two renames unnoticed
        pair = [tmp_path / "a", tmp_path / "b"]
        for p in pair:
            p.mkdir()
        if not rundir._exchange(*pair):
            pytest.skip(f"{tmp_path}'s filesystem cannot swap directories (RENAME_EXCHANGE)")
        for p in pair:
            p.rmdir()
    target, staging = tmp_path / "model", rundir.staging_name(tmp_path / "model")

    def save(version):  # as save_pretrained/_save_checkpoint do: clear the staging name, write, swap
        shutil.rmtree(staging, ignore_errors=True)
        write_model(staging, version)
        return rundir.replace_dir(staging, target)

    clean = []
    with monkeypatch.context() as patch:
        write_model(target, "old")
        crash_at_step(patch, 0, clean)
        save("new")
    assert model_version(target) == "new"
    seen = set()
    for n in range(1, len(clean) + 1):
        shutil.rmtree(target)
        write_model(target, "old")
        with monkeypatch.context() as patch:
            crash_at_step(patch, n, [])
            with pytest.raises(OSError, match="simulated crash"):
                save("new")
        seen.add(model_version(rundir.recover_dir(target)))
        save("newer")  # the next save after the crash
        assert model_version(target) == "newer"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert seen == {"old", "new"}  # killed before the swap: the old model; after it: the new
    assert ("exchange" in clean) == exchange  # the variant ran the path it names
