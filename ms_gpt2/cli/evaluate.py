"""``ms-gpt2 evaluate``: ROUGE-1/2/L and loss/perplexity of a model's summaries, as JSON (ms_gpt2.jobs.tasks)."""
from __future__ import annotations

import json

from ms_gpt2.cli.common import config_overrides, model_options


def register(subparsers, common) -> None:
    p = subparsers.add_parser("evaluate", parents=[common], help="ROUGE-1/2/L and loss/perplexity as JSON")
    model_options(p)
    p.add_argument("--data", required=True, help="NLPCC JSON lines file")
    p.add_argument("--summaries-out", help="also write the generated summaries (JSON lines)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ms_gpt2.jobs import tasks
    from ms_gpt2.jobs.summarize import Summarizer

    summarizer = Summarizer.from_pretrained(args.model, args.config, config_overrides(args))
    scores = tasks.evaluate(summarizer, args.data, split=args.split, limit=args.limit,
                            summaries_out=args.summaries_out)
    print(json.dumps(scores, indent=2, ensure_ascii=False))
    return 0
