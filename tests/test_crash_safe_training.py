"""Training survives being killed mid-checkpoint, refuses to share an output directory, and every
checkpoint carries the settings summarize/evaluate need.

A real ``python -m ms_gpt2 train`` process is SIGKILLed while it writes checkpoint-4 (the test hook
MS_GPT2_TEST_PAUSE_IN_SAVE stops it after the weights and optimizer, before the trainer state);
``--resume`` then continues from checkpoint-2 and logs the same per-step losses as a run that was
never interrupted."""
import errno
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

import numpy as np
import pytest

from conftest import DEMO_DATA, write_jsonl
from ms_gpt2.infra import runtime
from ms_gpt2.infra.config import load_config
from ms_gpt2.infra.rundir import LOCK_FILE
from ms_gpt2.jobs.fit import PAUSE_IN_SAVE_ENV, PipelineTrainer
from ms_gpt2.jobs.run import OutputDirError
from ms_gpt2.jobs.train import train
from ms_gpt2.models.checkpoints import run_settings

ROOT = Path(__file__).resolve().parents[1]
# 4 records, batch 2: 2 batches an epoch, 3 epochs = 6 steps, a checkpoint every 2, every loss logged
SETTINGS = ["model.n_positions=160", "model.n_embd=64", "model.n_layer=1", "model.n_head=2", "model.dropout=0.0",
            "data.max_seq_len=128", "data.max_summary_len=30", "data.train_ratio=1.0",
            "data.summary_only_loss=true", "training.per_device_train_batch_size=2",
            "training.learning_rate=5.0e-3", "training.warmup_steps=0", "training.logging_steps=1",
            "training.num_train_epochs=3", "training.save_steps=2", "training.save_total_limit=2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, char_vocab_dir):
    rows = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")]
    rows = sorted(rows, key=lambda r: len(r["article"]))[:4]
    data = write_jsonl(tmp_path_factory.mktemp("data") / "handful.jsonl", rows)
    overrides = SETTINGS + [f"tokenizer.path={char_vocab_dir}"]
    return SimpleNamespace(data=data, overrides=overrides, config=load_config("configs/smoke.yaml", overrides))


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory):
    """The uninterrupted run everything is compared with (seed 0, as the CLI runs below)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    runtime.seed_everything(0)
    result = train(setup.config, setup.data, out)
    assert result.global_step == 6
    return out


def losses(run_dir) -> dict:
    """Per-step losses from loss_log.jsonl; a step logged again after a resume keeps the latest entry."""
    by_step = {}
    for line in (Path(run_dir) / "loss_log.jsonl").read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        by_step[entry["step"]] = entry["loss"]
    return by_step


def assert_same_losses(run_dir, reference):
    got, want = losses(run_dir), losses(reference)
    assert sorted(got) == sorted(want) == list(range(1, 7))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-5)


def cli_train(setup, output_dir, *extra, env=None, **popen):
    args = [sys.executable, "-m", "ms_gpt2", "train", "--config", "configs/smoke.yaml", "--data", str(setup.data),
            "--output-dir", str(output_dir), "--device", "cpu", "--seed", "0", *extra]
    for item in setup.overrides:
        args += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(args, cwd=ROOT, env=env, text=True, **popen)


def test_killed_while_writing_a_checkpoint_then_resumed_matches_an_uninterrupted_run(setup, straight, tmp_path,
                                                                                       caplog):
    run = tmp_path / "run"
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log_file:
        first = cli_train(setup, run, env={PAUSE_IN_SAVE_ENV: "4"}, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        marker, deadline = run / ".paused-in-save-4", time.monotonic() + 300
        while not marker.exists():
            assert first.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached checkpoint-4"
            time.sleep(0.2)

        # a second train into the same directory while the first is alive: refused, naming it
        second = cli_train(setup, run, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 2, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("ms-gpt2: error: ") and "Traceback" not in err
        assert f"{run} is in use by another run (pid {first.pid} on host " in last
        assert "ms_gpt2 train" in last  # the other run's command line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    # what the kill left: checkpoint-2 complete, checkpoint-4 only as a hidden staging directory
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    partial = run / ".checkpoint-4.partial" / "checkpoint-4"
    assert (partial / "model.safetensors").is_file() and not (partial / "trainer_state.json").exists()
    assert (run / LOCK_FILE).is_file()
    assert max(losses(run)) == 4

    runtime.seed_everything(123)  # resuming restores the RNG state from the checkpoint
    with caplog.at_level(logging.WARNING):
        resumed = train(setup.config, setup.data, run, resume="latest")
    assert resumed.global_step == 6
    assert f"taking over the lock left by a run that is no longer alive (pid {first.pid} " in caplog.text
    assert ".checkpoint-4.partial, a checkpoint a crashed run did not finish writing" in caplog.text
    assert_same_losses(run, straight)
    # rotation (save_total_limit=2) ran on complete checkpoints only; no staging or lock left behind
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert not list(run.glob(".checkpoint-*")) and not (run / LOCK_FILE).exists()


def _kill_while_saving(setup, run, step: int, tmp_path):
    """Start the CLI run, SIGKILL it half-way through writing checkpoint-``step``."""
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log_file:
        first = cli_train(setup, run, env={PAUSE_IN_SAVE_ENV: str(step)}, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        marker, deadline = run / f".paused-in-save-{step}", time.monotonic() + 300
        while not marker.exists():
            assert first.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the run never reached checkpoint-{step}"
            time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


@pytest.fixture(scope="module")
def eager_dropout(setup, tmp_path_factory):
    """The eager engine at dropout 0.1, and its uninterrupted run."""
    overrides = setup.overrides + ["model.dropout=0.1", "engine=eager"]
    variant = SimpleNamespace(data=setup.data, overrides=overrides,
                              config=load_config("configs/smoke.yaml", overrides))
    out = tmp_path_factory.mktemp("straight_eager") / "run"
    runtime.seed_everything(0)
    assert train(variant.config, variant.data, out).global_step == 6
    return variant, out


def test_an_eager_run_with_dropout_killed_and_resumed_repeats_the_uninterrupted_losses(eager_dropout, straight,
                                                                                        tmp_path):
    """Resuming restores the eager engine's random stream (the checkpoint's rng_state.pth): the
    masks of steps 3-6 are the ones the uninterrupted run drew."""
    variant, reference = eager_dropout
    run = tmp_path / "run"
    _kill_while_saving(variant, run, 4, tmp_path)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    runtime.seed_everything(123)  # resuming restores the RNG state from the checkpoint
    assert train(variant.config, variant.data, run, resume="latest").global_step == 6
    assert_same_losses(run, reference)
    # dropout is really on (the same run at dropout 0 logs other losses)
    assert not np.allclose(list(losses(reference).values()), list(losses(straight).values()), rtol=1e-3)


def test_resume_skips_an_incomplete_checkpoint_with_a_warning(setup, straight, tmp_path, caplog):
    """An older version's crash left checkpoint-6 without trainer_state.json: --resume names it, never
    loads it, continues from checkpoint-4, and ends with the uninterrupted run's losses."""
    run = tmp_path / "run"
    for name in ("checkpoint-4", "checkpoint-6"):
        shutil.copytree(straight / name, run / name)
    (run / "checkpoint-6" / "trainer_state.json").unlink()
    lines = (straight / "loss_log.jsonl").read_text().splitlines()
    (run / "loss_log.jsonl").write_text("".join(f"{line}\n" for line in lines if json.loads(line)["step"] <= 4))

    runtime.seed_everything(123)
    with caplog.at_level(logging.WARNING):
        resumed = train(setup.config, setup.data, run, resume="latest")
    assert f"--resume: skipping {run / 'checkpoint-6'}: incomplete (no trainer_state.json)" in caplog.text
    assert resumed.global_step == 6
    assert_same_losses(run, straight)
    assert (run / "checkpoint-6" / "trainer_state.json").is_file()  # the re-saved checkpoint-6 replaced it

    # naming an incomplete checkpoint explicitly is a clear error, not a traceback
    (run / "checkpoint-6" / "model.safetensors").unlink()
    with pytest.raises(OutputDirError, match=r"checkpoint-6: incomplete checkpoint \(no weights"):
        train(setup.config, setup.data, run, resume=str(run / "checkpoint-6"))


def test_every_checkpoint_carries_the_run_config(setup, straight):
    """summarize/evaluate --model checkpoint-N use the run's settings, not the defaults."""
    for checkpoint in sorted(straight.glob("checkpoint-*")):
        assert run_settings(checkpoint) == setup.config, checkpoint.name
    assert run_settings(straight / "model") == setup.config


def test_rotation_never_deletes_the_only_complete_checkpoint(straight, tmp_path):
    """save_total_limit=1 with a newer-numbered incomplete checkpoint-9 (an older version's crash):
    the incomplete one is rotated away, the complete one kept (HF sorts by step when mtimes are close)."""
    run = tmp_path / "run"
    shutil.copytree(straight / "checkpoint-4", run / "checkpoint-4")
    (run / "checkpoint-9").mkdir()
    (run / "checkpoint-9" / "config.json").write_text("{}")
    trainer = PipelineTrainer.__new__(PipelineTrainer)
    trainer.args = SimpleNamespace(save_total_limit=1)
    trainer.state = SimpleNamespace(best_model_checkpoint=None)
    trainer._rotate_checkpoints(use_mtime=True, output_dir=str(run))
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-4"]


def test_a_loss_log_line_torn_by_a_kill_is_dropped_before_the_run_goes_on(tmp_path):
    """SIGKILL during LossLog's append leaves half a line; the resumed run's first entry must not
    be glued onto it, and the curve must still plot."""
    from ms_gpt2.jobs.fit import LossLog, plot_loss_curve, read_loss_log

    path = tmp_path / "loss_log.jsonl"
    path.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "lo', encoding="utf-8")
    callback = LossLog(path)
    callback.on_train_begin(None, SimpleNamespace(global_step=1), None)  # resumed from checkpoint-1

    class State:
        global_step = 2

    callback.on_log(None, State(), None, logs={"loss": 2.25, "epoch": 1.0})
    assert path.read_text(encoding="utf-8").splitlines()[-1].startswith('{"step": 2, "epoch": 1.0, "loss": 2.25')
    assert read_loss_log(path) == {1: 2.5, 2: 2.25}
    assert plot_loss_curve(path, tmp_path / "curve.png").stat().st_size > 1000


def test_resume_when_the_only_checkpoint_was_cut_off_says_so(setup, tmp_path, capsys):
    """A run killed while writing its first checkpoint leaves only .checkpoint-2.partial: --resume
    says the checkpoint was incomplete (and removed) and how to start over, exit 2."""
    from ms_gpt2 import cli

    run = tmp_path / "run"
    partial = run / ".checkpoint-2.partial" / "checkpoint-2"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half")
    args = ["train", "--config", "configs/smoke.yaml", "--data", str(setup.data), "--output-dir", str(run),
            "--resume", *[a for item in setup.overrides for a in ("--set", item)]]
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1
    assert "holds no complete checkpoint: checkpoint-2 was cut off by a crash" in err[0] and "--overwrite" in err[0]
    assert not (run / ".checkpoint-2.partial").exists()
    # a second --resume: nothing left to say about it, the plain message
    with pytest.raises(SystemExit):
        cli.main(args)
    assert "no checkpoint-N directory" in capsys.readouterr().err



# -- a full disk ------------------------------------------------------------------------------------

#: ``ms-gpt2 ...`` with torch.save (the Trainer's optimizer.pt / scheduler.pt / rng_state writer) failing
#: as a full disk makes it: part of the file written, then OSError(errno), no file name (as zipfile's).
FAILING_SAVE = r"""
import errno, os, sys
from ms_gpt2 import cli
from ms_gpt2.infra import runtime
runtime.setup("cpu", 0)
import torch
real_save, at, code = torch.save, os.environ["FAIL_SAVE_AT"], getattr(errno, os.environ["FAIL_ERRNO"])
def save(obj, f, *args, **kwargs):
    if f".checkpoint-{at}.partial" in str(f):
        with open(f, "wb") as handle:
            handle.write(b"PK" + bytes(4096))
        raise OSError(code, os.strerror(code))
    return real_save(obj, f, *args, **kwargs)
torch.save = save
sys.exit(cli.main(sys.argv[1:]))
"""


def _cli_error(result) -> str:
    """The one error line of a finished CLI run (checked: the only one, the last, no traceback)."""
    lines = result.stderr.rstrip("\n").splitlines()
    errors = [line for line in lines if "ms-gpt2: error: " in line]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("ms-gpt2: error: "), lines[-5:]
    return errors[0][len("ms-gpt2: error: "):]


def _resume_and_check(setup, straight, run):
    """--resume after the failure continues exactly: each step logged once, the uninterrupted losses."""
    runtime.seed_everything(123)  # resuming restores the RNG state from the checkpoint
    assert train(setup.config, setup.data, run, resume="latest").global_step == 6
    steps = [json.loads(line)["step"] for line in (run / "loss_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert steps == list(range(1, 7))  # steps 3-4, logged before the failure, are not there twice
    assert_same_losses(run, straight)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]


def test_disk_full_while_saving_a_checkpoint_is_one_line_and_resume_continues_exactly(setup, straight, tmp_path):
    from ms_gpt2.models.checkpoints import incomplete_reason

    run = tmp_path / "run"
    args = [sys.executable, "-c", FAILING_SAVE, "train", "--config", "configs/smoke.yaml", "--data",
            str(setup.data), "--output-dir", str(run), "--device", "cpu", "--seed", "0",
            *[a for item in setup.overrides for a in ("--set", item)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAIL_SAVE_AT": "4", "FAIL_ERRNO": "ENOSPC"}
    result = subprocess.run(args, cwd=ROOT, env=env, text=True, capture_output=True, timeout=600)
    assert _cli_error(result) == (f"{run / 'checkpoint-4'}: cannot save the checkpoint: No space left on device "
                                  f"(ENOSPC); the earlier checkpoints are intact (newest checkpoint-2): free space, "
                                  f"then run the same command with --resume")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-2", "loss_log.jsonl", "train_config.yaml"]
    assert incomplete_reason(run / "checkpoint-2") is None  # no half-written staging copy holds space
    assert max(losses(run)) == 4  # the steps after checkpoint-2 were logged before the failure
    _resume_and_check(setup, straight, run)


@pytest.mark.parametrize("code,reason,fix", [("EDQUOT", "Disk quota exceeded (EDQUOT)", "free space"),
                                             ("EROFS", "Read-only file system (EROFS)", "make it writable")])
def test_other_write_failures_while_saving_are_one_line_too(setup, tmp_path, code, reason, fix, monkeypatch, capsys):
    import torch

    from ms_gpt2 import cli

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if ".checkpoint-2.partial" in str(f):
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    argv = ["train", "--config", "configs/smoke.yaml", "--data", str(setup.data), "--output-dir", str(run),
            "--device", "cpu", "--seed", "0", *[a for item in setup.overrides for a in ("--set", item)]]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2
    assert err == (f"ms-gpt2: error: {run / 'checkpoint-2'}: cannot save the checkpoint: {reason}; no checkpoint was "
                   f"saved yet: {fix}, then run the command again")
    assert not list(run.glob("*checkpoint-*"))


def test_disk_full_while_saving_the_final_model_is_one_line_and_resume_finishes(setup, straight, tmp_path,
                                                                               monkeypatch):
    """safetensors (Rust) reports the errno in its message only: recognised too; model/'s staging copy goes."""
    import ms_gpt2.models.checkpoints as checkpoints
    from ms_gpt2.infra.errors import UserError

    class SafetensorError(Exception):
        pass

    real_replace = checkpoints.replace_dir

    def replace_dir(staging, target):
        if Path(target).name == "model":
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_replace(staging, target)

    monkeypatch.setattr(checkpoints, "replace_dir", replace_dir)
    run = tmp_path / "run"
    runtime.seed_everything(0)
    with pytest.raises(UserError) as info:  # the CLI's one line, exit 2
        train(setup.config, setup.data, run)
    assert str(info.value) == (f"{run}: No space left on device (ENOSPC); the earlier checkpoints are intact "
                               f"(newest checkpoint-6): free space, then run the same command with --resume")
    assert not (run / "model").exists() and not (run / ".model.partial").exists()
    monkeypatch.setattr(checkpoints, "replace_dir", real_replace)
    _resume_and_check(setup, straight, run)
    assert (run / "model" / "model.safetensors").is_file()


def test_disk_full_while_appending_to_the_loss_log_is_one_line_and_resume_continues(setup, straight, tmp_path,
                                                                                     monkeypatch):
    import builtins

    import ms_gpt2.jobs.fit as fitting  # LossLog appends there
    from ms_gpt2.infra.errors import UserError

    appends = []

    def open_(file, mode="r", *args, **kwargs):  # the disk fills up once step 4 is logged (and checkpointed)
        if str(file).endswith("loss_log.jsonl") and "a" in mode:
            appends.append(file)
            if len(appends) > 4:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(fitting, "open", open_, raising=False)
    run = tmp_path / "run"
    runtime.seed_everything(0)
    with pytest.raises(UserError) as info:
        train(setup.config, setup.data, run)
    assert str(info.value) == (f"{run / 'loss_log.jsonl'}: No space left on device (ENOSPC); the earlier "
                               f"checkpoints are intact (newest checkpoint-4): free space, then run the same "
                               f"command with --resume")
    monkeypatch.undo()
    _resume_and_check(setup, straight, run)


def _mount_tmpfs(path: Path, size: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_a_real_full_filesystem(setup, straight, tmp_path):
    """The issue's experiment on a real tmpfs (root only, else skipped): room for checkpoint-2 and not
    for checkpoint-4; then more room and --resume."""
    checkpoint_bytes = sum(p.stat().st_size for p in (straight / "checkpoint-4").rglob("*") if p.is_file())
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, checkpoint_bytes * 3 // 2):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        run = mount / "run"
        result = cli_train(setup, run, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, stderr = result.communicate(timeout=600)
        error = _cli_error(SimpleNamespace(returncode=result.returncode, stderr=stderr))
        assert error.startswith(f"{run / 'checkpoint-4'}: cannot save the checkpoint: No space left on device "
                                f"(ENOSPC); the earlier checkpoints are intact (newest checkpoint-2)"), error
        assert not list(run.glob(".checkpoint-*"))
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        _resume_and_check(setup, straight, run)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_the_log_is_cut_back_to_the_step_a_run_starts_from(tmp_path):
    """Entries after the checkpoint's step go (crash-safely: a new file replaces the old); lines
    without a step are kept; a fresh start (step 0) starts an empty log."""
    from ms_gpt2.jobs.fit import LossLog

    path = tmp_path / "loss_log.jsonl"
    lines = ['{"step": 1, "loss": 3.0}', '{"note": "no step"}', '{"step": 2, "loss": 2.5}', '{"step": 3, "loss": 2.0}']
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    inode = path.stat().st_ino
    LossLog(path).on_train_begin(None, SimpleNamespace(global_step=2), None)
    assert path.read_text(encoding="utf-8").splitlines() == lines[:3]
    assert path.stat().st_ino != inode  # replaced, never truncated in place
    LossLog(path).on_train_begin(None, SimpleNamespace(global_step=0), None)
    assert path.read_text(encoding="utf-8").splitlines() == ['{"note": "no step"}']


@pytest.mark.parametrize("code", ["ENOSPC", "ENOENT"])
def test_any_command_says_a_write_failure_in_one_line_and_keeps_bugs_tracebacks(code, monkeypatch, capsys):
    """Outside a training run's directory (summarize --out, download-data, ...) the CLI still names
    the file and the reason; an OSError that is no write failure stays a traceback (a bug)."""
    from ms_gpt2 import cli
    from ms_gpt2.jobs import attention_demo as walkthrough

    def run(*args):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), "/data/out.jsonl")

    monkeypatch.setattr(walkthrough, "run", run)
    if code == "ENOENT":
        with pytest.raises(FileNotFoundError):
            cli.main(["attention-demo", "--device", "cpu"])
        return
    with pytest.raises(SystemExit) as info:
        cli.main(["attention-demo", "--device", "cpu"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "ms-gpt2: error: /data/out.jsonl: No space left on device (ENOSPC)\n"
