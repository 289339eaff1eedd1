"""``ms-gpt2 train``: fine-tune GPT-2 for summarization (ms_gpt2.jobs.train)."""
from __future__ import annotations

from ms_gpt2.cli.common import config_options, config_overrides, engine_option, nproc_option, print_result, run_options


def register(subparsers, common) -> None:
    p = subparsers.add_parser("train", parents=[common], help="fine-tune GPT-2 for summarization (MindNLP Trainer)")
    config_options(p)
    p.add_argument("--data", required=True, help="NLPCC2017-format JSON lines file")
    p.add_argument("--tokenizer", help="bert-base-chinese style directory or vocab.txt (default: build one)")
    run_options(p, "start from a local GPT-2 checkpoint (e.g. runs/pt/model); its vocabulary unless --tokenizer")
    nproc_option(p)
    engine_option(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ms_gpt2.infra.config import load_config
    from ms_gpt2.jobs.train import train

    config = load_config(args.config, config_overrides(args))
    result = train(config, args.data, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    print_result({"model": result.model_dir, "global_step": result.global_step, "train_loss": result.train_loss,
                  "loss_curve": result.loss_curve, "train_examples": result.n_train, "test_examples": result.n_test})
    return 0
