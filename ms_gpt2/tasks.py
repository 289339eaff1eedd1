"""The jobs a user runs, each composed from the library modules: summarize, evaluate, demo."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ms_gpt2 import resources, runtime

runtime.ensure()

from ms_gpt2.config import article_loss_weight, load_config  # noqa: E402
from ms_gpt2.data import NLPCCSource, records  # noqa: E402
from ms_gpt2.errors import UserError  # noqa: E402
from ms_gpt2.evaluation import language_model_loss, lead_baseline, rouge  # noqa: E402
from ms_gpt2.examples import summary_fits, train_pipeline  # noqa: E402
from ms_gpt2.summarization import load_summarizer, summarize_lines, summarize_text, write_jsonl  # noqa: E402
from ms_gpt2.checkpoints import RUN_CONFIG  # noqa: E402
from ms_gpt2.training import FINAL_MODEL, train  # noqa: E402

log = logging.getLogger(__name__)

DEMO_DATA = resources.demo_data()  # in the checkout, or shipped in the wheel
SMOKE_CONFIG = resources.config("smoke.yaml")


def resolve_model_dir(path) -> Path:
    """``--model`` as the user means it: a training output directory stands for its final ``model/``."""
    path = Path(path)
    final = path / FINAL_MODEL
    if path.is_dir() and not (path / "config.json").is_file() and (final / "config.json").is_file():
        log.info("%s is a training output directory; using its final model %s", path, final)
        return final
    return path


def run_config(model_dir, config_path=None, overrides=()) -> dict:
    """The settings to summarize/evaluate with: --config, else the one saved with the model."""
    saved = resolve_model_dir(model_dir) / RUN_CONFIG
    path = config_path or (saved if saved.is_file() else None)
    return load_config(path, overrides)


def _generation(config: dict) -> dict:
    g = config["generation"]
    return {"num_beams": g["num_beams"], "no_repeat_ngram_size": g["no_repeat_ngram_size"],
            "max_new_tokens": g["max_new_tokens"], "no_repeat_ngram_scope": g["no_repeat_ngram_scope"]}


def _prompt_len(config: dict) -> int:
    d = config["data"]
    if d["max_summary_len"] >= d["max_seq_len"]:
        raise UserError(f"data.max_summary_len={d['max_summary_len']} leaves no room in max_seq_len={d['max_seq_len']}")
    return d["max_seq_len"] - d["max_summary_len"]


def _source(config: dict, data, workdir, check=None) -> NLPCCSource:
    d = config["data"]
    return NLPCCSource.open(data, workdir, d["fraction"], d["train_ratio"], d["skip_bad_lines"], check)


def summarize(model_dir, data=None, text=None, split="all", config=None, limit=None, out=None, workdir=None):
    """Summaries of --text, or of a split of an NLPCC file (written as JSON lines to ``out``).

    The lines are checked for format only: a summary too long to train on is still a fine reference."""
    model_dir = resolve_model_dir(model_dir)
    model, tokenizer = load_summarizer(model_dir)
    config = config or run_config(model_dir)
    if text is not None:
        return [summarize_text(model, tokenizer, text, _prompt_len(config), **_generation(config))]
    source = _source(config, data, workdir or Path(model_dir) / "work")
    lines = source.lines(split)
    if limit:
        lines = lines.take(limit)
    results = summarize_lines(model, tokenizer, lines, _prompt_len(config), **_generation(config))
    return write_jsonl(results, out) if out else list(results)


def evaluate(model_dir, data, split="all", config=None, limit=None, summaries_out=None, workdir=None) -> dict:
    """ROUGE of beam-search summaries against references (and of the Lead baseline), plus LM
    loss/perplexity, on one split.

    Every line is checked before any summary is generated, as training checks them: the loss needs
    each record as a training example, so a summary too long for ``max_seq_len`` is an error
    naming ``file:line`` (or skipped with ``skip_bad_lines``), not a failure after the summaries."""
    model_dir = resolve_model_dir(model_dir)
    model, tokenizer = load_summarizer(model_dir)
    config = config or run_config(model_dir)
    source = _source(config, data, workdir or Path(model_dir) / "work",
                     check=summary_fits(tokenizer, config["data"]["max_seq_len"]))
    lines = lambda: source.lines(split).take(limit) if limit else source.lines(split)  # noqa: E731
    summaries = summarize_lines(model, tokenizer, lines(), _prompt_len(config), **_generation(config))
    if summaries_out:
        summaries = write_jsonl(summaries, summaries_out)
    scores = rouge((s.reference, s.summary) for s in summaries)
    d = config["data"]
    batches = train_pipeline(lines(), tokenizer, d["max_seq_len"], batch_size=8,
                             article_loss_weight=article_loss_weight(d))
    scores.update(language_model_loss(model, batches.create_dict_iterator(num_epochs=1, output_numpy=True)))
    scores["lead"] = lead_baseline(records(lines()))  # same examples: does the model beat copying?
    scores.update({"split": split, "examples": min(limit or source.size(split), source.size(split))})
    return scores


def demo(output_dir="runs/demo", data=DEMO_DATA, config_path=SMOKE_CONFIG, overrides=(), train_sample=4,
         print_fn=print) -> dict:
    """Train the smoke config on the bundled corpus, then summarize and score the held-out split."""
    output_dir = Path(output_dir)
    config = load_config(config_path, overrides)
    print_fn(f"== training {config_path} on {data} -> {output_dir}")
    result = train(config, data, output_dir, overwrite=True)
    print_fn(f"   {result.global_step} steps, final training loss {result.train_loss:.3f}; "
             f"model in {result.model_dir}, loss curve {result.loss_curve}")
    print_fn(f"== summaries of the {result.n_test} held-out test articles (beam search)")
    scores = {}
    for split, limit in (("test", None), ("train", train_sample)):  # train: does it fit what it saw?
        scores[split] = evaluate(result.model_dir, data, split=split, config=config, limit=limit,
                                 summaries_out=output_dir / f"summaries_{split}.jsonl")
        if split == "test":
            for line in (output_dir / "summaries_test.jsonl").read_text(encoding="utf-8").splitlines():
                item = json.loads(line)
                print_fn(f"-- article:   {item['article'][:60]}...\n   reference: {item['reference']}\n"
                         f"   generated: {item['summary']}")
    print_fn("== scores (character-level ROUGE F1; loss/perplexity of the training objective)\n"
             "   A tiny model fitted to a few dozen articles: the train split shows it learned; the test\n"
             "   split shows the pipeline runs, not summary quality (that needs NLPCC2017 and GPT-2 small).")
    for split, s in scores.items():
        print_fn(f"   {split:5s} n={s['examples']:3d}  ROUGE-1 {s['rouge-1']['f1']:.3f}  ROUGE-2 {s['rouge-2']['f1']:.3f}  "
                 f"ROUGE-L {s['rouge-l']['f1']:.3f}  loss {s['loss']:.3f}  ppl {s['perplexity']:.1f}")
    (output_dir / "scores.json").write_text(json.dumps(scores, indent=2, ensure_ascii=False), encoding="utf-8")
    print_fn(f"== wrote {output_dir / 'scores.json'}")
    return scores
