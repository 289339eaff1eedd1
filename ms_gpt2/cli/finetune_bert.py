"""``ms-gpt2 finetune-bert``: BertForSequenceClassification on summary-article matching (ms_gpt2.jobs.bert_finetune)."""
from __future__ import annotations

from ms_gpt2.cli.common import config_options, config_overrides, print_result, run_options


def register(subparsers, common) -> None:
    p = subparsers.add_parser("finetune-bert", parents=[common],
                              help="BERT sentence-pair classification (summary-article matching) from a pretrained "
                                   "encoder")
    config_options(p)
    p.add_argument("--data", required=True, help="NLPCC JSON lines file (article, summarization)")
    p.add_argument("--tokenizer", help="BERT vocab.txt / directory (default: --init-from's; without it, build one)")
    run_options(p, "the encoder to start from: the model/ (or output directory) of `pretrain --objective mlm-nsp`; "
                   "without it every weight is random")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ms_gpt2.jobs.bert_finetune import finetune_bert
    from ms_gpt2.infra.config import load_config

    config = load_config(args.config, config_overrides(args))
    result = finetune_bert(config, args.data, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    print_result({"task": "summary-article matching", "model": result.model_dir, "global_step": result.global_step,
                  "train_loss": result.train_loss, "loss_curve": result.loss_curve,
                  "train_records": result.train_records, "eval_records": result.eval_records, "eval": result.eval})
    return 0
