"""A job's output directory: who owns it, where a run starts from, which seeds it follows.

Every training job (``train``, ``pretrain``, ``pretrain --objective mlm-nsp``, ``finetune-bert``) runs
inside :func:`run_directory` (rank 0 holds ``OUTPUT_DIR/.ms_gpt2.lock``; a write that fails for a
reason the user can fix is one line saying what survives) and calls :func:`start` first: the
checkpoint to resume from (``--resume``), or a fresh start that refuses to overwrite an earlier
run's checkpoints unless ``--overwrite`` (which then clears them, the loss log, the TensorBoard
event files and the job's own outputs). Checkpoints a killed run did not finish
(``.checkpoint-N.partial``) are removed first. The output directory's files are listed in
:mod:`ms_gpt2.jobs.train`.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ms_gpt2.infra import runtime

runtime.ensure()

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint  # noqa: E402

from ms_gpt2.engine import distributed  # noqa: E402
from ms_gpt2.infra.errors import UserError  # noqa: E402
from ms_gpt2.infra.rundir import (NO_ROOM, RunLock, WriteError, describe_write_failure, recover_dir,  # noqa: E402
                                  write_failure)
from ms_gpt2.models.checkpoints import FINAL_MODEL, incomplete_reason  # noqa: E402

log = logging.getLogger(__name__)

LOSS_LOG = "loss_log.jsonl"
TENSORBOARD_DIR = "runs"  # Hugging Face's default logging_dir: OUTPUT_DIR/runs/<date>_<host>


class OutputDirError(UserError, RuntimeError):
    """Starting would overwrite an earlier run's checkpoints."""


@contextmanager
def run_directory(output_dir):
    """``with run_directory(out):`` -- this job owns ``out`` until the block ends.

    Rank 0 (the only process of a single-device run) holds the directory's lock throughout, so a
    second run into it refuses (RunDirInUseError), and puts back a ``model/`` swap a crashed run cut
    off half-way (:func:`start` clears its unfinished checkpoints). The other ranks of a
    data-parallel job only read from it. A write that fails for a reason the user can fix (a full
    disk...) ends the job as a one-line :class:`~ms_gpt2.infra.rundir.WriteError` saying which checkpoints
    are left to resume from."""
    output_dir = Path(output_dir)
    try:
        if distributed.world()[0] != 0:
            yield output_dir
            return
        with RunLock(output_dir):
            recover_dir(output_dir / FINAL_MODEL)
            yield output_dir
    except UserError:  # already one line (a checkpoint that could not be saved among them)
        raise
    except Exception as err:  # a full disk (or a read-only one...) is one line, not a traceback
        failure = write_failure(err)
        if failure is None:
            raise
        raise WriteError(f"{failure.filename or output_dir}: {describe_write_failure(failure)}; "
                         f"{what_survives(output_dir, failure)}") from err


def what_survives(output_dir: Path, failure: OSError) -> str:
    """What a run that could not write is left with, and what to do next (for a one-line error)."""
    fix = "free space" if failure.errno in NO_ROOM else "make it writable"
    intact = [p.name for p in _checkpoints_newest_first(output_dir) if incomplete_reason(p) is None] \
        if output_dir.is_dir() else []
    if not intact:
        return f"no checkpoint was saved yet: {fix}, then run the command again"
    return (f"the earlier checkpoints are intact (newest {intact[0]}): {fix}, then run the same command "
            f"with --resume")


def clear_partial_checkpoints(output_dir: Path) -> list[str]:
    """Remove the ``.checkpoint-N.partial`` staging directories a killed run left (rank 0); -> their
    checkpoint names, oldest first."""
    if distributed.world()[0] != 0 or not output_dir.is_dir():
        return []
    removed = []
    for partial in sorted(output_dir.glob(f".{PREFIX_CHECKPOINT_DIR}-*.partial"),
                          key=lambda p: int(re.sub(r"\D", "", p.name) or 0)):
        log.warning("removing %s, a checkpoint a crashed run did not finish writing", partial)
        shutil.rmtree(partial, ignore_errors=True)
        removed.append(partial.name[1:-len(".partial")])
    return removed


def start(output_dir: Path, resume, overwrite: bool, outputs=()) -> str | None:
    """The checkpoint to resume from (None: a fresh start). A fresh start with ``overwrite`` clears
    the earlier run's checkpoints, loss log, TensorBoard event files and ``outputs`` (rank 0)."""
    cut_off = clear_partial_checkpoints(output_dir)
    resume_from = _resume_checkpoint(output_dir, resume, overwrite, cut_off)
    if overwrite and not resume_from and distributed.world()[0] == 0:
        for stale in [*output_dir.glob("checkpoint-*"), output_dir / LOSS_LOG, output_dir / TENSORBOARD_DIR,
                      *(output_dir / o for o in outputs)]:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    return resume_from


def run_job(job, config: dict, data_path, output_dir, resume, overwrite: bool, outputs=(), engine: str | None = None,
            checks=None):
    """How every training job starts: the settings the engine cannot honour are refused before any
    work (for ``engine``, default the config's), then the job's own ``checks()``; the output directory
    is held for the run (:func:`run_directory`), the checkpoint to resume from is found
    (:func:`start`) and the run's seed read; then ``job(config, data_path, output_dir, resume_from,
    seed)`` does the work."""
    from ms_gpt2.engine import options

    options.check_config(config, engine)
    if checks:
        checks()
    with run_directory(output_dir) as output_dir:
        resume_from = start(output_dir, resume, overwrite, outputs)
        return job(config, data_path, output_dir, resume_from, run_seed())


def workdir_for(output_dir: Path) -> Path:
    """Where clean copies of input files go: ``OUTPUT_DIR/work`` on rank 0, a private one elsewhere."""
    rank = distributed.world()[0]
    return output_dir / "work" if rank == 0 else Path(tempfile.mkdtemp(prefix=f"ms_gpt2_rank{rank}_"))


def rank0_first(make):
    """``make()`` on rank 0, then on the other ranks once rank 0 is done (e.g. a vocabulary it builds
    and they load). Outside data parallel: just ``make()``."""
    rank = distributed.world()[0]
    result = make() if rank == 0 else None
    distributed.barrier()
    return make() if rank != 0 else result


def run_seed() -> int:
    seed = runtime.ensure().seed
    return 42 if seed is None else seed


def data_seed(config: dict) -> int:
    """The seed of the batch order: ``training.data_seed``, else the run's seed (:func:`run_seed`).
    The model's initialisation and dropout follow the run's seed only."""
    seed = (config.get("training") or {}).get("data_seed")
    return run_seed() if seed is None else int(seed)


def _resume_checkpoint(output_dir: Path, resume, overwrite: bool, cut_off=()) -> str | None:
    """``cut_off``: the checkpoints a killed run did not finish (already removed)."""
    existing = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if resume in (None, False):
        if existing and not overwrite:
            raise OutputDirError(
                f"{output_dir} already holds checkpoints (latest {Path(existing).name}); pass --resume to "
                f"continue that run, --overwrite to start over there, or another --output-dir")
        return None
    if resume is True or resume == "latest":
        if not existing and cut_off:
            raise OutputDirError(
                f"--resume: {output_dir} holds no complete checkpoint: {', '.join(cut_off)} was cut off by a crash "
                f"before it was complete (and removed); start over with --overwrite (or without --resume)")
        if not existing:
            raise OutputDirError(f"--resume: no checkpoint-N directory in {output_dir}")
        for path in _checkpoints_newest_first(output_dir):
            problem = incomplete_reason(path)
            if problem is None:
                return str(path)
            log.warning("--resume: skipping %s: incomplete (%s), cut off by a crash; not loading it", path, problem)
        raise OutputDirError(f"--resume: no complete checkpoint-N directory in {output_dir} (all lack files)")
    if not Path(resume).is_dir():
        raise OutputDirError(f"--resume {resume}: no such checkpoint directory")
    problem = incomplete_reason(resume)
    if problem:
        raise OutputDirError(f"--resume {resume}: incomplete checkpoint ({problem}); resume from an earlier one")
    return str(resume)


def _checkpoints_newest_first(output_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in output_dir.iterdir()
             if (m := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]
