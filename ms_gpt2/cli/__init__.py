"""The ``ms-gpt2`` command. Thin: parse, fix the runtime, hand off to one library module.

One module per command (``train``, ``pretrain``, ..., ``bench``), each with ``register(subparsers,
common)``, which adds the command's subparser, and ``run(args)``, its handler; what several commands
share (option groups, value types, the one-line errors) is in :mod:`ms_gpt2.cli.common`.

The device must be chosen before any module that imports mindnlp is loaded (see runtime.py), so
every command's implementation is imported inside its handler, after :func:`runtime.setup`.
"""
from __future__ import annotations

import argparse
import logging

from ms_gpt2.cli import (attention_demo, bench, common, demo, download_data, evaluate, finetune_bert, generate,
                         next_word, pretrain, summarize, train)

# in the order ``ms-gpt2 --help`` lists them
COMMANDS = (attention_demo, train, pretrain, finetune_bert, summarize, evaluate, demo, next_word, generate, bench,
            download_data)

DESCRIPTION = """\
GPT-2 on MindSpore (through MindNLP), built for Chinese news summarization: fine-tune GPT-2 to
summarize (NLPCC2017-format data), pretrain it on raw text (or BERT with masked LM + next-sentence
prediction, then fine-tune BERT with a task head), then summarize articles and score the summaries
(ROUGE, the Lead baseline, loss/perplexity); predict the next word or continue a prompt with any
local GPT-2 checkpoint. `ms-gpt2 demo` runs the whole recipe on the bundled corpus. Models and data are read from local
paths: nothing is downloaded except by `download-data`."""


def build_parser() -> argparse.ArgumentParser:
    parser = common.OneLineParser(prog="ms-gpt2", description=DESCRIPTION,
                                  epilog="`ms-gpt2 COMMAND --help` lists a command's options.",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = common.common_options()
    for command in COMMANDS:
        command.register(subparsers, shared)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return common.run(parser, args, argv)
