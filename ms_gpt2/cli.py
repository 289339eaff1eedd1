"""The ``ms-gpt2`` command. Thin: parse, fix the runtime, hand off to one library module.

The device must be chosen before any module that imports mindnlp is loaded (see runtime.py), so
every command's implementation is imported inside its handler, after :func:`runtime.setup`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ms_gpt2 import runtime


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", choices=runtime.CHOICES, default=None,
                        help=f"backend (default: ${runtime.ENV_VAR} or auto = ascend > gpu > cpu)")
    common.add_argument("--seed", type=int, default=42, help="seed for every RNG (default 42)")
    common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return common


def _attention_demo(args) -> int:
    from ms_gpt2 import walkthrough

    diff = walkthrough.run(args.batch, args.seq_len, args.n_embd, args.n_head)
    return 0 if diff < 1e-5 else 1


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="ms-gpt2", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("attention-demo", parents=[common],
                       help="walk through the hand-derived masked attention, shape by shape")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=10)
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--n-head", type=int, default=12)
    p.set_defaults(handler=_attention_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        runtime.setup(args.device, args.seed)
    except (runtime.DeviceUnavailableError, ValueError) as err:
        parser.exit(2, f"ms-gpt2: error: {err}\n")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
