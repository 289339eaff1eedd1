"""The jobs a user runs, each composed from the library modules: summarize, evaluate, demo.

``summarize`` and ``evaluate`` take a :class:`~ms_gpt2.jobs.summarize.Summarizer`, built once from a
model directory; the demo builds one per fine-tuned model and evaluates both splits with it."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ms_gpt2.infra import resources, runtime

runtime.ensure()

from ms_gpt2.infra.config import article_loss_weight, load_config  # noqa: E402
from ms_gpt2.data.nlpcc import NLPCCSource, records  # noqa: E402
from ms_gpt2.jobs.evaluate import language_model_loss, lead_baseline, rouge  # noqa: E402
from ms_gpt2.data.examples import summary_fits, train_pipeline  # noqa: E402
from ms_gpt2.jobs.summarize import Summarizer, Summary, write_jsonl  # noqa: E402
from ms_gpt2.jobs.train import train  # noqa: E402

log = logging.getLogger(__name__)

DEMO_DATA = resources.demo_data()  # in the checkout, or shipped in the wheel
SMOKE_CONFIG = resources.config("smoke.yaml")
PRETRAIN_SMOKE_CONFIG = resources.config("pretrain_smoke.yaml")
DEMO_ARTICLE_LOSS_WEIGHT = 0.5  # the demo's fine-tuning objective: summary tokens 1, article tokens 0.5


def _source(config: dict, data, workdir, check=None) -> NLPCCSource:
    d = config["data"]
    return NLPCCSource.open(data, workdir, d["fraction"], d["train_ratio"], d["skip_bad_lines"], check)


def summarize(summarizer: Summarizer, data, split="all", limit=None, out=None, workdir=None) -> list[Summary]:
    """Summaries of a split of an NLPCC file (written as JSON lines to ``out``), split as the
    summarizer's settings say; ``workdir`` (the checked copy of the file) defaults to the model's ``work/``.

    The lines are checked for format only: a summary too long to train on is still a fine reference."""
    source = _source(summarizer.config, data, workdir or summarizer.model_dir / "work")
    lines = source.lines(split)
    if limit:
        lines = lines.take(limit)
    results = summarizer.summarize_lines(lines)
    return write_jsonl(results, out) if out else list(results)


def evaluate(summarizer: Summarizer, data, split="all", limit=None, summaries_out=None, workdir=None) -> dict:
    """ROUGE of beam-search summaries against references (and of the Lead baseline), plus LM
    loss/perplexity, on one split.

    Every line is checked before any summary is generated, as training checks them: the loss needs
    each record as a training example, so a summary too long for ``max_seq_len`` is an error
    naming ``file:line`` (or skipped with ``skip_bad_lines``), not a failure after the summaries."""
    model, tokenizer, d = summarizer.model, summarizer.tokenizer, summarizer.config["data"]
    source = _source(summarizer.config, data, workdir or summarizer.model_dir / "work",
                     check=summary_fits(tokenizer, d["max_seq_len"]))
    lines = lambda: source.lines(split).take(limit) if limit else source.lines(split)  # noqa: E731
    summaries = summarizer.summarize_lines(lines())
    if summaries_out:
        summaries = write_jsonl(summaries, summaries_out)
    scores = rouge((s.reference, s.summary) for s in summaries)
    batches = train_pipeline(lines(), tokenizer, d["max_seq_len"], batch_size=8,
                             article_loss_weight=article_loss_weight(d))
    scores.update(language_model_loss(model, batches.create_dict_iterator(num_epochs=1, output_numpy=True)))
    scores["lead"] = lead_baseline(records(lines()))  # same examples: does the model beat copying?
    scores.update({"split": split, "examples": min(limit or source.size(split), source.size(split))})
    return scores


def demo(output_dir="runs/demo", data=DEMO_DATA, config_path=SMOKE_CONFIG, overrides=(), train_sample=4,
         print_fn=print, pretrain_config_path=PRETRAIN_SMOKE_CONFIG, loss_weight=DEMO_ARTICLE_LOSS_WEIGHT,
         pretrain_overrides=()) -> dict:
    """The recipe end to end on the bundled corpus: pretrain on the articles, fine-tune from that
    with the auxiliary LM objective (``loss_weight``: ``data.article_loss_weight``), fine-tune from scratch with the
    same settings and vocabulary, and score both on the held-out split beside the Lead baseline.

    The vocabulary is built once from the fine-tuning training split (articles and summaries) and
    used by all three runs, so the comparison is fair. The pretraining corpus is the articles only;
    its held-out documents (the last ``pretrain.eval_fraction`` of the file) are the fine-tuning test
    articles, which are thus never trained on. ``overrides`` apply to both fine-tunes (after the
    demo's λ), ``pretrain_overrides`` to pretraining."""
    from ms_gpt2.data import tokenization
    from ms_gpt2.jobs.pretrain import pretrain

    output_dir = Path(output_dir)
    config = load_config(config_path, ["data.summary_only_loss=null", f"data.article_loss_weight={loss_weight}",
                                       *overrides])
    lam = article_loss_weight(config["data"])
    output_dir.mkdir(parents=True, exist_ok=True)
    source = _source(config, data, output_dir / "work")
    vocab = output_dir / "tokenizer"
    if config["tokenizer"]["path"]:
        vocab = Path(config["tokenizer"]["path"])
    else:
        print_fn(f"== vocabulary: WordPiece from the {source.n_train} training articles and summaries -> {vocab}")
        texts = (text for pair in records(source.lines("train")) for text in pair)
        tokenization.build_tokenizer(texts, vocab, config["tokenizer"]["vocab_size"],
                                     config["tokenizer"].get("min_frequency", 1))
        if source.n_test:
            heldout = (text for pair in records(source.lines("test")) for text in pair)
            tokenization.log_unk_rate(vocab / "vocab.txt", heldout, "the held-out split")

    pconfig = load_config(pretrain_config_path, ["pretrain.text_field=article", f"tokenizer.path={vocab}",
                                                 *pretrain_overrides])
    print_fn(f"== 1. pretraining {pretrain_config_path} on the articles of {data} -> {output_dir / 'pretrain'}")
    pre = pretrain(pconfig, data, output_dir / "pretrain", overwrite=True)
    print_fn(f"   {pre.global_step} steps on {pre.train_blocks} blocks of {pconfig['data']['max_seq_len']} tokens "
             f"({pre.train_documents} articles), final training loss {pre.train_loss:.3f}")
    if pre.eval:
        print_fn(f"   held-out articles ({pre.eval_documents}): loss {pre.eval['loss']:.3f}, "
                 f"ppl {pre.eval['perplexity']:.1f}")

    runs = {"scratch": [], "pretrained": [f"model.init_from={pre.model_dir}"]}
    results, scores = {}, {}
    for step, (name, extra) in enumerate(runs.items(), start=2):
        run_config = load_config(config_path, ["data.summary_only_loss=null", f"data.article_loss_weight={lam}",
                                               *overrides, f"tokenizer.path={vocab}", *extra])
        print_fn(f"== {step}. fine-tuning {name} ({config_path}, article_loss_weight {lam:g}) -> {output_dir / name}")
        results[name] = train(run_config, data, output_dir / name, overwrite=True)
        print_fn(f"   {results[name].global_step} steps, final training loss {results[name].train_loss:.3f}")
        summarizer = Summarizer.from_pretrained(results[name].model_dir, run_config)  # one load, both splits
        scores[name] = {split: evaluate(summarizer, data, split=split, limit=limit,
                                        summaries_out=output_dir / name / f"summaries_{split}.jsonl")
                        for split, limit in (("test", None), ("train", train_sample))}  # train: does it fit what it saw?

    n_test = results["scratch"].n_test
    print_fn(f"== summaries of the {n_test} held-out test articles (beam search)")
    generated = {name: [json.loads(line) for line in (output_dir / name / "summaries_test.jsonl")
                        .read_text(encoding="utf-8").splitlines()] for name in runs}
    for scratch, pretrained in zip(generated["scratch"], generated["pretrained"]):
        print_fn(f"-- article:    {scratch['article'][:60]}...\n   reference:  {scratch['reference']}\n"
                 f"   scratch:    {scratch['summary']}\n   pretrained: {pretrained['summary']}")
    print_fn(f"== scores (character-level ROUGE F1; loss/perplexity of the training objective, article tokens "
             f"weighted {lam:g})\n   A tiny model and a few dozen articles: the test split shows the pipeline "
             f"runs and how the\n   two starts compare here, not summary quality (that needs NLPCC2017 and GPT-2 small).")
    lead = dict(scores["scratch"]["test"]["lead"], examples=n_test)
    rows = [("scratch test", scores["scratch"]["test"]), ("pretrained test", scores["pretrained"]["test"]),
            ("lead test", lead), ("scratch train", scores["scratch"]["train"]),
            ("pretrained train", scores["pretrained"]["train"])]
    for label, s in rows:
        line = (f"   {label:16s} n={s['examples']:3d}  ROUGE-1 {s['rouge-1']['f1']:.3f}  ROUGE-2 {s['rouge-2']['f1']:.3f}  "
                f"ROUGE-L {s['rouge-l']['f1']:.3f}")
        print_fn(line + (f"  loss {s['loss']:.3f}  ppl {s['perplexity']:.1f}" if "loss" in s else ""))
    summary = {"article_loss_weight": lam, "pretrain": {"steps": pre.global_step, "train_loss": pre.train_loss,
                                                        "heldout": pre.eval},
               **{name: {"steps": results[name].global_step, "train_loss": results[name].train_loss, **per}
                  for name, per in scores.items()},
               "lead": {"test": scores["scratch"]["test"]["lead"]}}
    (output_dir / "scores.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    print_fn(f"== wrote {output_dir / 'scores.json'}")
    return summary
