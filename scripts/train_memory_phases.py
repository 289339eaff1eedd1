#!/usr/bin/env python
"""Where ``ms-gpt2 train``'s memory goes: the real command's run of ``ms-gpt2 bench --memory``
(configs/tutorial.yaml, the bundled data, 3 steps, vocabulary padded to 21128), run in this process
with the resident memory (``VmRSS``) sampled every 20 ms and noted at each phase: imports, model
built, engine built, each step, the checkpoint the Trainer saves when it stops, the final model.

    .venv/bin/python scripts/train_memory_phases.py --batch 1 --length 1024 [--config configs/smoke.yaml]

Prints one line per phase: RSS when it ended, the highest RSS sampled during it, and the peak so far
(``VmHWM``). Run it on an idle machine: it is one GPT-2 small training process (~9 GB at 1 x 1024).
"""
import argparse
import functools
import tempfile
import threading
import time
from pathlib import Path

from ms_gpt2.bench.peak import vm_kib

PHASES = []          # (label, rss MB at its end, max rss MB sampled during it, VmHWM MB at its end)
_state = {"max": 0.0, "stop": False}


def _mb(field):
    return (vm_kib(field) or 0.0) / 1024


def _sample():
    while not _state["stop"]:
        _state["max"] = max(_state["max"], _mb("VmRSS"))
        time.sleep(0.02)


def mark(label):
    rss = _mb("VmRSS")
    PHASES.append((label, rss, max(_state["max"], rss), _mb("VmHWM")))
    _state["max"] = rss
    print(f"[phases] {label:<40} rss {rss:8,.0f} MB  max during {PHASES[-1][2]:8,.0f} MB  "
          f"peak so far {PHASES[-1][3]:8,.0f} MB", flush=True)


def after(owner, name, label):
    original = getattr(owner, name)
    count = {"n": 0}

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        count["n"] += 1
        mark(label.format(n=count["n"]))
        return result

    setattr(owner, name, wrapped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--config", default=None, help="default: the shipped configs/tutorial.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=42, help="as the bench's run (default 42)")
    args = parser.parse_args()
    threading.Thread(target=_sample, daemon=True).start()
    mark("interpreter")
    from ms_gpt2 import cli
    from ms_gpt2.bench import train_command
    from ms_gpt2.engine import compiled, trainer
    from ms_gpt2.infra import resources
    from ms_gpt2.infra.config import load_config
    from ms_gpt2.jobs import fit, train  # noqa: F401  (imports MindSpore, mindnlp, the Trainer)
    from ms_gpt2.models import gpt2

    mark("imports (MindSpore, mindnlp, ms_gpt2)")
    config = Path(args.config) if args.config else resources.config(train_command.CONFIG)
    sets = train_command.overrides(args.batch, args.length)
    after(gpt2.GPT2ForSummarization, "__init__", "model built (mindtorch GPT2ForSummarization)")
    after(trainer.CompiledTrainerMixin, "_build_engine", "engine built (weights copied, graph defined)")
    after(compiled.CompiledEngine, "train_step", "step {n}")
    after(trainer.CompiledTrainerMixin, "_save_checkpoint", "checkpoint saved (Trainer stops at max_steps)")
    after(fit, "save_pretrained", "final model/ saved")
    with tempfile.TemporaryDirectory(prefix="ms_gpt2_phases_") as tmp:
        vocab = train_command.padded_vocabulary(load_config(config, sets), resources.demo_data(), Path(tmp) / "vocab")
        mark(f"vocabulary ({vocab['vocab_size']} words)")
        code = cli.main(["train", *train_command.options(config, resources.demo_data(), vocab["path"],
                                                         Path(tmp) / "run", args.device, args.seed, args.batch,
                                                         args.length)])
        mark("end of the command")
    _state["stop"] = True
    print(f"[phases] exit code {code}; peak (VmHWM) {_mb('VmHWM'):,.0f} MB")


if __name__ == "__main__":
    main()
