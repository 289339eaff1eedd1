"""What every ``ms-gpt2`` command shares: the parser that reports bad input on one line, the
argparse value types, the option groups several commands take, the config overrides those options
stand for, the result line, and :func:`run`, which hands the parsed command to its handler and
turns a user's mistake into ``ms-gpt2: error: ...`` with exit code 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ms_gpt2.infra import runtime
from ms_gpt2.infra.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """Bad command-line input is one line, exit 2, like every other bad input (no usage dump)."""

    def error(self, message):
        self.exit(2, f"ms-gpt2: error: {message} (see: {self.prog} --help)\n")


def number(kind, low=None, high=None, low_open=False, what=None):
    """An argparse type: ``kind`` (int or float) in [low, high] (``low_open``: above low)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


POSITIVE = number(int, 1, what="at least 1")
NON_NEGATIVE = number(int, 0, what="0 or more")


def text(value: str) -> str:
    """An argparse type: any text but an empty (or blank) one."""
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty")
    return value


def common_options() -> argparse.ArgumentParser:
    """The parent parser of every command: --device, --seed, --log-level."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", choices=runtime.CHOICES, default=None,
                        help=f"backend (default: ${runtime.ENV_VAR} or auto = ascend > gpu > cpu)")
    common.add_argument("--seed", type=int, default=42, help="seed for every RNG (default 42)")
    common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return common


def config_options(p) -> None:
    """--config, --set and --skip-bad-lines: the run config of a job that reads it."""
    p.add_argument("--config", help="YAML run config (configs/tutorial.yaml, configs/smoke.yaml)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override any config key, e.g. --set training.learning_rate=3e-4 (repeatable)")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip and count malformed lines instead of stopping at the first")


def nproc_option(p) -> None:
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel on N devices of this machine, launched through msrun (global batch = "
                        "per-device batch x N); worker logs in OUTPUT_DIR/msrun_logs")


def engine_option(p) -> None:
    p.add_argument("--engine", choices=["compiled", "eager"], default=None,
                   help="compiled: one MindSpore graph per training step (default); eager: the tutorial's "
                        "mindtorch path (same as --set engine=...)")


def run_options(p, init_from_help: str) -> None:
    """The output directory of a training job and how to start it."""
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint in --output-dir, or from CHECKPOINT")
    p.add_argument("--overwrite", action="store_true", help="start over in an --output-dir that has checkpoints")
    p.add_argument("--init-from", metavar="MODEL_DIR",
                   help=f"{init_from_help} (same as --set model.init_from=MODEL_DIR)")


def model_options(p) -> None:
    """What ``summarize`` and ``evaluate`` share: the run config, the model and which examples."""
    config_options(p)
    p.add_argument("--model", required=True,
                   help="model directory: OUTPUT_DIR/model, a checkpoint, or a training OUTPUT_DIR (its model/)")
    p.add_argument("--split", default="all", choices=["all", "train", "test"],
                   help="which part of --data, split as in the config (default all)")
    p.add_argument("--limit", type=POSITIVE, help="only the first N examples of the split")


def config_overrides(args) -> list[str]:
    """``--set`` plus the config keys that dedicated options stand for (``--tokenizer`` ...)."""
    sets = list(args.set or [])
    if getattr(args, "tokenizer", None):
        sets.append(f"tokenizer.path={args.tokenizer}")
    if getattr(args, "skip_bad_lines", False):
        sets.append("data.skip_bad_lines=true")
    if getattr(args, "init_from", None):
        sets.append(f"model.init_from={args.init_from}")
    if getattr(args, "text_field", None):
        sets.append(f"pretrain.text_field={args.text_field}")
    if getattr(args, "objective", None):
        sets.append(f"pretrain.objective={args.objective}")
    if getattr(args, "engine", None):
        sets.append(f"engine={args.engine}")
    return sets


def print_result(fields: dict) -> None:
    """One JSON line of a job's result: paths as strings, a missing one (no loss curve drawn) as null."""
    print(json.dumps({key: str(value) if isinstance(value, Path) else value for key, value in fields.items()},
                     ensure_ascii=False))


def run(parser: argparse.ArgumentParser, args, argv: list[str] | None) -> int:
    """Launch ``--nproc`` workers or fix the runtime and call the command's handler; bad input
    (a UserError, an OSError of a full or read-only disk) becomes one line and exit code 2."""
    try:
        if getattr(args, "nproc", 1) != 1:
            from ms_gpt2.cli import launch
            from ms_gpt2.engine import distributed

            if args.nproc < 1:
                raise UserError(f"--nproc must be at least 1, got {args.nproc}")
            runtime.cpu_launch()  # a misspelt MS_GPT2_CPU_LAUNCH: one line here, not N failed workers
            if not distributed.launched_by_msrun():  # re-run this command on N workers; they skip this
                return launch.launch(args.nproc, list(sys.argv[1:] if argv is None else argv),
                                     Path(args.output_dir) / "msrun_logs")
        runtime.setup(args.device, args.seed)
        return args.handler(args)
    except UserError as err:  # bad input: one clear line, exit 2; anything else is a bug
        close_progress_bars()
        parser.exit(2, f"ms-gpt2: error: {err}\n")
    except OSError as err:  # a full disk, a read-only one...: as one line too (training jobs say more)
        from ms_gpt2.infra.rundir import describe_write_failure, write_failure

        failure = write_failure(err)
        if failure is None:
            raise
        close_progress_bars()
        parser.exit(2, f"ms-gpt2: error: {failure.filename or err.filename}: {describe_write_failure(failure)}\n")


def close_progress_bars() -> None:
    """End a training progress bar the error cut short, so the error is a line of its own (and the last)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()
