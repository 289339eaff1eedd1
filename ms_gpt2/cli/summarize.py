"""``ms-gpt2 summarize``: beam-search summaries of one article or of a data file (ms_gpt2.jobs.tasks)."""
from __future__ import annotations

import json

from ms_gpt2.cli.common import config_overrides, model_options, text


def register(subparsers, common) -> None:
    p = subparsers.add_parser("summarize", parents=[common], help="beam-search summaries from a trained model")
    model_options(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="NLPCC JSON lines file")
    source.add_argument("--text", type=text, help="one article to summarize")
    p.add_argument("--out", help="write JSON lines here instead of stdout")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ms_gpt2.jobs import tasks
    from ms_gpt2.jobs.summarize import Summarizer

    summarizer = Summarizer.from_pretrained(args.model, args.config, config_overrides(args))
    if args.text is not None:
        print(summarizer.summarize_text(args.text))
        return 0
    results = tasks.summarize(summarizer, args.data, split=args.split, limit=args.limit, out=args.out)
    if not args.out:
        for item in results:
            print(json.dumps({"article": item.article, "reference": item.reference, "summary": item.summary},
                             ensure_ascii=False))
    return 0
