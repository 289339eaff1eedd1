"""summarize/evaluate as the CLI runs them: data checked before any summary, and --model given a
training output directory. In-process (cli.main) to skip a subprocess' import time."""
import json
import logging
import shutil

import pytest

from conftest import write_jsonl
from ms_gpt2 import cli
from ms_gpt2.jobs import tasks
from ms_gpt2.jobs.summarize import Summarizer

FIXTURE = "tests/fixtures/gpt2-bert-tiny"  # BERT vocab, n_positions 64
TINY = ["--config", "configs/smoke.yaml", "--set", "data.max_seq_len=48", "--set", "data.max_summary_len=16",
        "--set", "generation.max_new_tokens=4", "--set", "generation.num_beams=2"]
GOOD = {"article": "青禾市轨道交通5号线一期工程于本月18日正式开通运营。", "summarization": "青禾市地铁5号线开通。"}


def run(capsys, *argv):
    """(exit code, stdout, stderr) of one ``ms-gpt2`` command."""
    try:
        code = cli.main([*argv, "--device", "cpu"])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_reports_a_too_long_summary_before_generating(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "news.jsonl", [GOOD, GOOD, {"article": "正文。", "summarization": "长" * 60}])

    def no_generation(*args, **kwargs):
        raise AssertionError("summaries were generated before the data was checked")

    monkeypatch.setattr(Summarizer, "summarize_lines", no_generation)
    code, _, err = run(capsys, "evaluate", "--model", FIXTURE, "--data", str(data), *TINY,
                       "--summaries-out", str(tmp_path / "summaries.jsonl"))
    assert code == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"ms-gpt2: error: {data}:3: summary is 60 tokens") and "no room for the article" in last
    assert "Traceback" not in err and not (tmp_path / "summaries.jsonl").exists()


@pytest.fixture
def run_dir(tmp_path):
    """What ``ms-gpt2 train --output-dir run`` leaves: the final model in run/model, beside other files."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run / "model")
    (run / "train_config.yaml").write_text("{}\n", encoding="utf-8")
    return run


def test_summarize_and_evaluate_accept_a_training_output_directory(run_dir, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="ms_gpt2.models.checkpoints")
    code, out, err = run(capsys, "summarize", "--model", str(run_dir), "--text", GOOD["article"], *TINY)
    assert code == 0, err[-2000:]
    assert len(out.splitlines()) == 1  # the summary (of a random tiny model: any text)
    assert f"{run_dir} is a training output directory; using its final model {run_dir / 'model'}" in caplog.text

    data = write_jsonl(tmp_path / "news.jsonl", [GOOD, GOOD])
    code, out, err = run(capsys, "evaluate", "--model", str(run_dir), "--data", str(data), *TINY)
    assert code == 0, err[-2000:]
    assert json.loads(out)["examples"] == 2


def test_demo_pretrains_then_compares_scratch_and_pretrained_fine_tunes_on_one_vocabulary(tmp_path):
    """The demo's recipe on 12 records and a 1-layer model: pretrain on the articles, fine-tune with
    λ from it and from scratch, score both and the Lead baseline on the held-out split."""
    from conftest import DEMO_DATA
    from ms_gpt2.infra.config import load_config

    rows = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")]
    data = write_jsonl(tmp_path / "twelve.jsonl", sorted(rows, key=lambda r: len(r["summarization"]))[:12])
    model = ["model.n_positions=64", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "data.max_seq_len=64"]
    fine = model + ["data.max_summary_len=16", "training.num_train_epochs=2", "training.per_device_train_batch_size=6",
                    "training.warmup_steps=0", "generation.max_new_tokens=4", "generation.num_beams=2"]
    pre = model + ["training.num_train_epochs=1", "training.per_device_train_batch_size=4", "training.warmup_steps=0"]
    printed = []
    scores = tasks.demo(tmp_path / "demo", data, overrides=fine, pretrain_overrides=pre, train_sample=1,
                        print_fn=printed.append)
    out = tmp_path / "demo"
    assert json.loads((out / "scores.json").read_text(encoding="utf-8")) == json.loads(json.dumps(scores))
    assert scores["article_loss_weight"] == 0.5 and scores["pretrain"]["heldout"]["documents"] == 1
    for name in ("scratch", "pretrained"):
        assert scores[name]["test"]["examples"] == 1 and scores[name]["train"]["examples"] == 1
        assert scores[name]["test"]["loss"] > 0 and 0 <= scores[name]["test"]["rouge-1"]["f1"] <= 1
        used = load_config(out / name / "train_config.yaml")
        assert used["data"]["article_loss_weight"] == 0.5 and used["tokenizer"]["path"] == str(out / "tokenizer")
        # one vocabulary for all three runs: the comparison is fair
        assert (out / name / "model" / "vocab.txt").read_bytes() == (out / "tokenizer" / "vocab.txt").read_bytes()
    assert (out / "pretrain" / "model" / "vocab.txt").read_bytes() == (out / "tokenizer" / "vocab.txt").read_bytes()
    assert load_config(out / "pretrained" / "train_config.yaml")["model"]["init_from"] == str(out / "pretrain" / "model")
    assert load_config(out / "scratch" / "train_config.yaml")["model"]["init_from"] is None
    assert 0 < scores["lead"]["test"]["rouge-1"]["f1"] <= 1
    table = "\n".join(printed)
    for label in ("scratch test", "pretrained test", "lead test", "scratch train", "pretrained train"):
        assert f"   {label} " in table
