"""``ms-gpt2 pretrain``: causal-LM pretraining of GPT-2 on raw text (ms_gpt2.jobs.pretrain), or with
``--objective mlm-nsp`` BERT's masked LM + next-sentence prediction (ms_gpt2.jobs.bert_pretrain)."""
from __future__ import annotations

from ms_gpt2.cli.common import config_options, config_overrides, engine_option, nproc_option, print_result, run_options

PRETRAIN_OBJECTIVES = ("clm", "mlm-nsp")


def register(subparsers, common) -> None:
    p = subparsers.add_parser("pretrain", parents=[common],
                              help="causal-LM training on raw text, packed into full blocks")
    config_options(p)
    p.add_argument("--data", required=True,
                   help="plain text, one document per line (blank lines ignored), or JSON lines with --text-field")
    p.add_argument("--text-field", metavar="KEY",
                   help="read JSON lines and use only this field, e.g. article (same as --set pretrain.text_field=KEY)")
    p.add_argument("--tokenizer", help="BERT vocab.txt / directory, or a GPT-2 BPE directory (default: build one)")
    run_options(p, "continue pretraining a local checkpoint")
    add_objective_argument(p)
    nproc_option(p)
    engine_option(p)
    p.set_defaults(handler=run)


def add_objective_argument(p) -> None:
    """``--objective`` for the ``pretrain`` command (see :func:`run_mlm_nsp` for the wiring)."""
    p.add_argument("--objective", choices=PRETRAIN_OBJECTIVES, default=None,
                   help="clm: GPT-2 causal LM (default); mlm-nsp: BERT masked LM + next-sentence prediction "
                        "(same as --set pretrain.objective=...)")


def pretrain_objective(config: dict) -> str:
    from ms_gpt2.infra.config import ConfigError

    objective = config["pretrain"]["objective"]
    if objective not in PRETRAIN_OBJECTIVES:
        raise ConfigError(f"pretrain.objective must be one of {', '.join(PRETRAIN_OBJECTIVES)}, got {objective!r}")
    return objective


def run(args) -> int:
    from ms_gpt2.infra.config import load_config
    from ms_gpt2.jobs.pretrain import pretrain

    config = load_config(args.config, config_overrides(args))
    if pretrain_objective(config) == "mlm-nsp":
        return run_mlm_nsp(args, config)
    result = pretrain(config, args.data, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    print_result({"model": result.model_dir, "global_step": result.global_step, "train_loss": result.train_loss,
                  "loss_curve": result.loss_curve, "train_documents": result.train_documents,
                  "eval_documents": result.eval_documents, "train_blocks": result.train_blocks,
                  "dropped_tokens": result.dropped_tokens, "eval": result.eval})
    return 0


def run_mlm_nsp(args, config: dict | None = None) -> int:
    """``pretrain --objective mlm-nsp``: BERT's MLM + NSP (ms_gpt2.jobs.bert_pretrain).

    Called by :func:`run` with the loaded config; called on its own, it builds the config from
    ``args`` with the objective forced to mlm-nsp."""
    from ms_gpt2.jobs.bert_pretrain import pretrain_mlm_nsp
    from ms_gpt2.infra.config import load_config

    if config is None:
        config = load_config(args.config, config_overrides(args) + ["pretrain.objective=mlm-nsp"])
    result = pretrain_mlm_nsp(config, args.data, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    print_result({"objective": "mlm-nsp", "model": result.model_dir, "global_step": result.global_step,
                  "train_loss": result.train_loss, "loss_curve": result.loss_curve,
                  "train_documents": result.train_documents, "eval_documents": result.eval_documents,
                  "train_examples": result.train_examples, "eval": result.eval})
    return 0
