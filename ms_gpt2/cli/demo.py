"""``ms-gpt2 demo``: train -> summarize -> evaluate on the bundled corpus (ms_gpt2.jobs.tasks.demo)."""
from __future__ import annotations


def register(subparsers, common) -> None:
    p = subparsers.add_parser("demo", parents=[common], help="train -> summarize -> evaluate on the bundled corpus")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--data", help="default: the bundled data/demo/nlpcc_demo.jsonl")
    p.add_argument("--config", help="default: configs/smoke.yaml")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ms_gpt2.jobs import tasks

    tasks.demo(args.output_dir, args.data or tasks.DEMO_DATA, args.config or tasks.SMOKE_CONFIG, args.set or [])
    return 0
