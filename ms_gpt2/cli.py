"""The ``ms-gpt2`` command. Thin: parse, fix the runtime, hand off to one library module.

The device must be chosen before any module that imports mindnlp is loaded (see runtime.py), so
every command's implementation is imported inside its handler, after :func:`runtime.setup`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ms_gpt2.infra import runtime
from ms_gpt2.infra.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """Bad command-line input is one line, exit 2, like every other bad input (no usage dump)."""

    def error(self, message):
        self.exit(2, f"ms-gpt2: error: {message} (see: {self.prog} --help)\n")


def _number(kind, low=None, high=None, low_open=False, what=None):
    """An argparse type: ``kind`` (int or float) in [low, high] (``low_open``: above low)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


POSITIVE = _number(int, 1, what="at least 1")
NON_NEGATIVE = _number(int, 0, what="0 or more")


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty")
    return text


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", choices=runtime.CHOICES, default=None,
                        help=f"backend (default: ${runtime.ENV_VAR} or auto = ascend > gpu > cpu)")
    common.add_argument("--seed", type=int, default=42, help="seed for every RNG (default 42)")
    common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return common


def _overrides(args) -> list[str]:
    sets = list(args.set or [])
    if getattr(args, "tokenizer", None):
        sets.append(f"tokenizer.path={args.tokenizer}")
    if getattr(args, "skip_bad_lines", False):
        sets.append("data.skip_bad_lines=true")
    if getattr(args, "init_from", None):
        sets.append(f"model.init_from={args.init_from}")
    if getattr(args, "text_field", None):
        sets.append(f"pretrain.text_field={args.text_field}")
    if getattr(args, "objective", None):
        sets.append(f"pretrain.objective={args.objective}")
    if getattr(args, "engine", None):
        sets.append(f"engine={args.engine}")
    return sets


def _print_result(fields: dict) -> None:
    """One JSON line of a job's result: paths as strings, a missing one (no loss curve drawn) as null."""
    print(json.dumps({key: str(value) if isinstance(value, Path) else value for key, value in fields.items()},
                     ensure_ascii=False))


def _train(args) -> int:
    from ms_gpt2.infra.config import load_config
    from ms_gpt2.jobs.train import train

    config = load_config(args.config, _overrides(args))
    result = train(config, args.data, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    _print_result({"model": result.model_dir, "global_step": result.global_step, "train_loss": result.train_loss,
                   "loss_curve": result.loss_curve, "train_examples": result.n_train, "test_examples": result.n_test})
    return 0


PRETRAIN_OBJECTIVES = ("clm", "mlm-nsp")


def add_objective_argument(p) -> None:
    """``--objective`` for the ``pretrain`` command (see :func:`_pretrain_mlm_nsp` for the wiring)."""
    p.add_argument("--objective", choices=PRETRAIN_OBJECTIVES, default=None,
                   help="clm: GPT-2 causal LM (default); mlm-nsp: BERT masked LM + next-sentence prediction "
                        "(same as --set pretrain.objective=...)")


def pretrain_objective(config: dict) -> str:
    from ms_gpt2.infra.config import ConfigError

    objective = config["pretrain"]["objective"]
    if objective not in PRETRAIN_OBJECTIVES:
        raise ConfigError(f"pretrain.objective must be one of {', '.join(PRETRAIN_OBJECTIVES)}, got {objective!r}")
    return objective


def _pretrain_mlm_nsp(args, config: dict | None = None) -> int:
    """``pretrain --objective mlm-nsp``: BERT's MLM + NSP (ms_gpt2.jobs.bert_pretrain).

    Called by ``_pretrain`` with the loaded config; called on its own, it builds the config from
    ``args`` with the objective forced to mlm-nsp."""
    from ms_gpt2.jobs.bert_pretrain import pretrain_mlm_nsp
    from ms_gpt2.infra.config import load_config

    if config is None:
        config = load_config(args.config, _overrides(args) + ["pretrain.objective=mlm-nsp"])
    result = pretrain_mlm_nsp(config, args.data, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    _print_result({"objective": "mlm-nsp", "model": result.model_dir, "global_step": result.global_step,
                   "train_loss": result.train_loss, "loss_curve": result.loss_curve,
                   "train_documents": result.train_documents, "eval_documents": result.eval_documents,
                   "train_examples": result.train_examples, "eval": result.eval})
    return 0


def _pretrain(args) -> int:
    from ms_gpt2.infra.config import load_config
    from ms_gpt2.jobs.pretrain import pretrain

    config = load_config(args.config, _overrides(args))
    if pretrain_objective(config) == "mlm-nsp":
        return _pretrain_mlm_nsp(args, config)
    result = pretrain(config, args.data, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    _print_result({"model": result.model_dir, "global_step": result.global_step, "train_loss": result.train_loss,
                   "loss_curve": result.loss_curve, "train_documents": result.train_documents,
                   "eval_documents": result.eval_documents, "train_blocks": result.train_blocks,
                   "dropped_tokens": result.dropped_tokens, "eval": result.eval})
    return 0


def _finetune_bert(args) -> int:
    """``finetune-bert``: BertForSequenceClassification on summary-article matching (ms_gpt2.jobs.bert_finetune)."""
    from ms_gpt2.jobs.bert_finetune import finetune_bert
    from ms_gpt2.infra.config import load_config

    config = load_config(args.config, _overrides(args))
    result = finetune_bert(config, args.data, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    _print_result({"task": "summary-article matching", "model": result.model_dir, "global_step": result.global_step,
                   "train_loss": result.train_loss, "loss_curve": result.loss_curve,
                   "train_records": result.train_records, "eval_records": result.eval_records, "eval": result.eval})
    return 0


def _summarize(args) -> int:
    from ms_gpt2.jobs import tasks
    from ms_gpt2.jobs.summarize import Summarizer

    summarizer = Summarizer.from_pretrained(args.model, args.config, _overrides(args))
    if args.text is not None:
        print(summarizer.summarize_text(args.text))
        return 0
    results = tasks.summarize(summarizer, args.data, split=args.split, limit=args.limit, out=args.out)
    if not args.out:
        for item in results:
            print(json.dumps({"article": item.article, "reference": item.reference, "summary": item.summary},
                             ensure_ascii=False))
    return 0


def _evaluate(args) -> int:
    from ms_gpt2.jobs import tasks
    from ms_gpt2.jobs.summarize import Summarizer

    summarizer = Summarizer.from_pretrained(args.model, args.config, _overrides(args))
    scores = tasks.evaluate(summarizer, args.data, split=args.split, limit=args.limit,
                            summaries_out=args.summaries_out)
    print(json.dumps(scores, indent=2, ensure_ascii=False))
    return 0


def _demo(args) -> int:
    from ms_gpt2.jobs import tasks

    tasks.demo(args.output_dir, args.data or tasks.DEMO_DATA, args.config or tasks.SMOKE_CONFIG, args.set or [])
    return 0


def _download_data(args) -> int:
    from ms_gpt2.data import download

    path = download.download(args.url or download.NLPCC2017_URL, args.cache_dir, sha256=args.sha256)
    print(path)
    return 0


def _next_word(args) -> int:
    from ms_gpt2.models.checkpoints import load_pretrained
    from ms_gpt2.jobs.generate import next_word

    model, tokenizer = load_pretrained(args.model)
    result = next_word(model, tokenizer, args.text, args.top_k)
    print(result.text)
    for token, prob in result.candidates:
        print(f"  {prob:8.4f}  {token!r}")
    return 0


def _generate(args) -> int:
    from ms_gpt2.models.checkpoints import load_pretrained
    from ms_gpt2.jobs.generate import generate

    model, tokenizer = load_pretrained(args.model)
    result = generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, num_beams=args.num_beams,
                      repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                      seed=args.seed, stream=None if args.no_stream else sys.stdout, echo_prompt=True,
                      compiled=not args.library_decode)
    if args.no_stream:
        print(args.prompt + result.text)
    return 0


def _bench(args) -> int:
    from ms_gpt2.bench import gpt2 as bench

    if args.summarize:
        if args.quick or args.reference_python or args.png or args.recompute_memory or args.memory:
            raise UserError("--summarize combines saved reports and runs nothing: drop --quick, --reference-python, "
                            "--png, --recompute-memory and --memory")
        bench.summarize(args.summarize, args.mixed_cpus, args.json)
        return 0
    if args.mixed_cpus:
        raise UserError("--mixed-cpus only applies to --summarize")
    if args.memory:
        if args.recompute_memory or args.png:
            raise UserError("--memory prints a table: drop --recompute-memory and --png")
        bench.memory_report(args.quick, args.reference_python, args.json)
        return 0
    if args.recompute_memory:
        if args.reference_python or args.png:
            raise UserError("--recompute-memory measures ms_gpt2 alone: drop --reference-python and --png")
        bench.recompute_memory_report(args.quick, args.json)
        return 0
    if args.bert:
        from ms_gpt2.bench import bert as bench_bert

        bench.write_json(bench_bert.report(args.quick, args.reference_python, runtime.ensure().device), args.json)
        return 0
    bench.bench(args.quick, args.reference_python, args.json, args.png)
    return 0


def _attention_demo(args) -> int:
    from ms_gpt2.jobs import attention_demo as walkthrough

    if args.n_embd % args.n_head:
        raise UserError(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}")
    diff = walkthrough.run(args.batch, args.seq_len, args.n_embd, args.n_head)
    return 0 if diff < 1e-5 else 1


DESCRIPTION = """\
GPT-2 on MindSpore (through MindNLP), built for Chinese news summarization: fine-tune GPT-2 to
summarize (NLPCC2017-format data), pretrain it on raw text (or BERT with masked LM + next-sentence
prediction, then fine-tune BERT with a task head), then summarize articles and score the summaries
(ROUGE, the Lead baseline, loss/perplexity); predict the next word or continue a prompt with any
local GPT-2 checkpoint. `ms-gpt2 demo` runs the whole recipe on the bundled corpus. Models and data are read from local
paths: nothing is downloaded except by `download-data`."""


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = OneLineParser(prog="ms-gpt2", description=DESCRIPTION,
                           epilog="`ms-gpt2 COMMAND --help` lists a command's options.",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("attention-demo", parents=[common],
                       help="walk through the hand-derived masked attention, shape by shape")
    p.add_argument("--batch", type=POSITIVE, default=1)
    p.add_argument("--seq-len", type=POSITIVE, default=10)
    p.add_argument("--n-embd", type=POSITIVE, default=768)
    p.add_argument("--n-head", type=POSITIVE, default=12)
    p.set_defaults(handler=_attention_demo)

    def config_args(p, data_required=False):
        p.add_argument("--config", help="YAML run config (configs/tutorial.yaml, configs/smoke.yaml)")
        p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                       help="override any config key, e.g. --set training.learning_rate=3e-4 (repeatable)")
        p.add_argument("--skip-bad-lines", action="store_true",
                       help="skip and count malformed lines instead of stopping at the first")

    def nproc_argument(p):
        p.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="data-parallel on N devices of this machine, launched through msrun (global batch = "
                            "per-device batch x N); worker logs in OUTPUT_DIR/msrun_logs")

    def engine_argument(p):
        p.add_argument("--engine", choices=["compiled", "eager"], default=None,
                       help="compiled: one MindSpore graph per training step (default); eager: the tutorial's "
                            "mindtorch path (same as --set engine=...)")

    def run_args(p, init_from_help: str):
        """The output directory of a training job and how to start it."""
        p.add_argument("--output-dir", required=True)
        p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                       help="continue from the latest checkpoint in --output-dir, or from CHECKPOINT")
        p.add_argument("--overwrite", action="store_true", help="start over in an --output-dir that has checkpoints")
        p.add_argument("--init-from", metavar="MODEL_DIR",
                       help=f"{init_from_help} (same as --set model.init_from=MODEL_DIR)")

    p = sub.add_parser("train", parents=[common], help="fine-tune GPT-2 for summarization (MindNLP Trainer)")
    config_args(p)
    p.add_argument("--data", required=True, help="NLPCC2017-format JSON lines file")
    p.add_argument("--tokenizer", help="bert-base-chinese style directory or vocab.txt (default: build one)")
    run_args(p, "start from a local GPT-2 checkpoint (e.g. runs/pt/model); its vocabulary unless --tokenizer")
    nproc_argument(p)
    engine_argument(p)
    p.set_defaults(handler=_train)

    p = sub.add_parser("pretrain", parents=[common], help="causal-LM training on raw text, packed into full blocks")
    config_args(p)
    p.add_argument("--data", required=True,
                   help="plain text, one document per line (blank lines ignored), or JSON lines with --text-field")
    p.add_argument("--text-field", metavar="KEY",
                   help="read JSON lines and use only this field, e.g. article (same as --set pretrain.text_field=KEY)")
    p.add_argument("--tokenizer", help="BERT vocab.txt / directory, or a GPT-2 BPE directory (default: build one)")
    run_args(p, "continue pretraining a local checkpoint")
    add_objective_argument(p)
    nproc_argument(p)
    engine_argument(p)
    p.set_defaults(handler=_pretrain)

    p = sub.add_parser("finetune-bert", parents=[common],
                       help="BERT sentence-pair classification (summary-article matching) from a pretrained encoder")
    config_args(p)
    p.add_argument("--data", required=True, help="NLPCC JSON lines file (article, summarization)")
    p.add_argument("--tokenizer", help="BERT vocab.txt / directory (default: --init-from's; without it, build one)")
    run_args(p, "the encoder to start from: the model/ (or output directory) of `pretrain --objective mlm-nsp`; "
                "without it every weight is random")
    p.set_defaults(handler=_finetune_bert)

    for name, handler, text in [("summarize", _summarize, "beam-search summaries from a trained model"),
                                ("evaluate", _evaluate, "ROUGE-1/2/L and loss/perplexity as JSON")]:
        p = sub.add_parser(name, parents=[common], help=text)
        config_args(p)
        p.add_argument("--model", required=True,
                       help="model directory: OUTPUT_DIR/model, a checkpoint, or a training OUTPUT_DIR (its model/)")
        p.add_argument("--split", default="all", choices=["all", "train", "test"],
                       help="which part of --data, split as in the config (default all)")
        p.add_argument("--limit", type=POSITIVE, help="only the first N examples of the split")
        if name == "summarize":
            source = p.add_mutually_exclusive_group(required=True)
            source.add_argument("--data", help="NLPCC JSON lines file")
            source.add_argument("--text", type=_text, help="one article to summarize")
            p.add_argument("--out", help="write JSON lines here instead of stdout")
        else:
            p.add_argument("--data", required=True, help="NLPCC JSON lines file")
            p.add_argument("--summaries-out", help="also write the generated summaries (JSON lines)")
        p.set_defaults(handler=handler)

    p = sub.add_parser("demo", parents=[common], help="train -> summarize -> evaluate on the bundled corpus")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--data", help="default: the bundled data/demo/nlpcc_demo.jsonl")
    p.add_argument("--config", help="default: configs/smoke.yaml")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("next-word", parents=[common], help="the most likely next token and the top-k candidates")
    p.add_argument("--model", required=True, help="local GPT-2 checkpoint directory (Hugging Face layout)")
    p.add_argument("--text", required=True, type=_text)
    p.add_argument("--top-k", type=POSITIVE, default=10, help="how many candidates to list (default 10)")
    p.set_defaults(handler=_next_word)

    p = sub.add_parser("generate", parents=[common], help="continue a prompt: greedy, beam search or sampling")
    p.add_argument("--model", required=True, help="local GPT-2 checkpoint directory (Hugging Face layout)")
    p.add_argument("--prompt", required=True, type=_text)
    p.add_argument("--max-new-tokens", type=POSITIVE, default=50)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy/beam (uses --seed)")
    p.add_argument("--temperature", type=_number(float, 0, low_open=True, what="above 0"), default=1.0)
    p.add_argument("--top-k", type=NON_NEGATIVE, default=0, help="sample from the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=_number(float, 0, 1, low_open=True, what="in (0, 1]"), default=1.0,
                   help="nucleus sampling threshold")
    p.add_argument("--num-beams", type=POSITIVE, default=1, help="beam search width (1: greedy)")
    p.add_argument("--repetition-penalty", type=_number(float, 0, low_open=True, what="above 0"), default=1.0)
    p.add_argument("--no-repeat-ngram-size", type=NON_NEGATIVE, default=0)
    p.add_argument("--no-stream", action="store_true", help="print once at the end instead of as tokens arrive")
    p.add_argument("--library-decode", action="store_true",
                   help="greedy through Hugging Face generate instead of the compiled decoder (same tokens, slower)")
    p.set_defaults(handler=_generate)

    p = sub.add_parser("bench", parents=[common], help="training/decoding speed vs the PyTorch reference and the machine")
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
                        "the full bench includes it)")
    p.set_defaults(handler=_bench)

    p = sub.add_parser("download-data", parents=[common],
                       help="download the tutorial's NLPCC2017 file (resumable, checksummed)")
    p.add_argument("--url", default=None, help="default: the tutorial's NLPCC2017 URL")
    p.add_argument("--cache-dir", default="data/nlpcc2017")
    p.add_argument("--sha256", help="expected SHA-256 of the file")
    p.set_defaults(handler=_download_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "nproc", 1) != 1:
            from ms_gpt2.engine import distributed

            if args.nproc < 1:
                raise UserError(f"--nproc must be at least 1, got {args.nproc}")
            if not distributed.launched_by_msrun():  # re-run this command on N workers; they skip this
                return distributed.launch(args.nproc, list(sys.argv[1:] if argv is None else argv),
                                          Path(args.output_dir) / "msrun_logs")
        runtime.setup(args.device, args.seed)
        return args.handler(args)
    except UserError as err:  # bad input: one clear line, exit 2; anything else is a bug
        _close_progress_bars()
        parser.exit(2, f"ms-gpt2: error: {err}\n")
    except OSError as err:  # a full disk, a read-only one...: as one line too (training jobs say more)
        from ms_gpt2.infra.rundir import describe_write_failure, write_failure

        failure = write_failure(err)
        if failure is None:
            raise
        _close_progress_bars()
        parser.exit(2, f"ms-gpt2: error: {failure.filename or err.filename}: {describe_write_failure(failure)}\n")


def _close_progress_bars() -> None:
    """End a training progress bar the error cut short, so the error is a line of its own (and the last)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
