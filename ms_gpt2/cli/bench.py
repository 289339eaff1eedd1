"""``ms-gpt2 bench``: training/decoding speed against the PyTorch reference and the machine
(ms_gpt2.bench), some parts of it alone (``--only``), or instead peak memory (``--memory``,
``--recompute-memory``), BERT pretraining (``--bert``), or the spread of saved reports (``--summarize``).

``--only`` picks parts of the full bench and keeps its report's shape (machine, ceilings, a section
per part run); ``--memory``, ``--bert`` and ``--recompute-memory`` stay what they were, one part with
a report of its own, so they do not combine with ``--only``."""
from __future__ import annotations

import sys

from ms_gpt2.infra import runtime
from ms_gpt2.infra.errors import UserError


def train_command() -> list[str]:
    """How ``ms-gpt2 train`` is started in a fresh process (the memory bench measures the real command)."""
    return [sys.executable, "-m", "ms_gpt2", "train"]


def register(subparsers, common) -> None:
    p = subparsers.add_parser("bench", parents=[common],
                              help="training/decoding speed vs the PyTorch reference and the machine")
    p.add_argument("--quick", action="store_true", help="toy sizes, about a minute: checks the report, not speed")
    p.add_argument("--reference-python", metavar="PYTHON",
                   help="an interpreter with real torch + transformers to run the same workloads")
    p.add_argument("--json", help="write the report here (a PNG chart goes beside it)")
    p.add_argument("--png", help="write the bar chart here")
    p.add_argument("--summarize", nargs="+", metavar="JSON",
                   help="run nothing: print the median and min-max of each figure over these saved reports "
                        "(--json writes the summary)")
    p.add_argument("--mixed-cpus", action="store_true",
                   help="with --summarize: combine runs from different CPU models (refused by default)")
    p.add_argument("--recompute-memory", action="store_true",
                   help="instead: peak memory and step time of compiled training without and with recomputation "
                        "(training.gradient_checkpointing), each in a fresh process")
    p.add_argument("--bert", action="store_true",
                   help="instead: BERT-base pretraining (MLM + NSP) tokens/s and peak memory against Hugging Face on "
                        "PyTorch, each in a fresh process (the full bench includes it)")
    p.add_argument("--memory", action="store_true",
                   help="instead: training's peak memory, each workload in a fresh process (compiled, eager and, with "
                        "--reference-python, the reference; B4x256 and B1x1024; compiled against n_layer 2/4/8/12; "
                        "and the real ms-gpt2 train command beside the reference Trainer's; the full bench includes "
                        "it)")
    p.add_argument("--only", metavar="PARTS",
                   help="run only these parts of the full bench, comma-separated, any order: "
                        "train,decode,summarize,bert,memory,recompute (the report keeps the machine and the "
                        "ceilings, and has a section for each part run)")
    p.set_defaults(handler=run)


def run(args) -> int:
    if args.summarize:
        if args.quick or args.reference_python or args.png or args.recompute_memory or args.memory:
            raise UserError("--summarize combines saved reports and runs nothing: drop --quick, --reference-python, "
                            "--png, --recompute-memory and --memory")
        if args.only is not None:
            raise UserError("--summarize combines saved reports and runs nothing: drop --only")
        from ms_gpt2.bench import summary

        summary.summarize(args.summarize, args.mixed_cpus, args.json)
        return 0
    if args.mixed_cpus:
        raise UserError("--mixed-cpus only applies to --summarize")
    from ms_gpt2.bench import gpt2 as bench

    if args.only is not None:
        for flag, on, part in (("--memory", args.memory, "memory"), ("--bert", args.bert, "bert"),
                               ("--recompute-memory", args.recompute_memory, "recompute")):
            if on:
                raise UserError(f"--only and {flag} do not combine: {flag} runs one part with a report of its "
                                f"own; --only {part} runs it inside the bench's report")
        only = bench.parse_parts(args.only)
        bench.bench(args.quick, args.reference_python, args.json, args.png, only=only, train_command=train_command())
        return 0
    if args.memory:
        if args.recompute_memory or args.png:
            raise UserError("--memory prints a table: drop --recompute-memory and --png")
        bench.memory_report(args.quick, args.reference_python, args.json, train_command=train_command())
        return 0
    if args.recompute_memory:
        if args.reference_python or args.png:
            raise UserError("--recompute-memory measures ms_gpt2 alone: drop --reference-python and --png")
        bench.recompute_memory_report(args.quick, args.json)
        return 0
    if args.bert:
        from ms_gpt2.bench import bert as bench_bert
        from ms_gpt2.bench.report import write_json

        write_json(bench_bert.report(args.quick, args.reference_python, runtime.ensure().device), args.json)
        return 0
    bench.bench(args.quick, args.reference_python, args.json, args.png, train_command=train_command())
    return 0
