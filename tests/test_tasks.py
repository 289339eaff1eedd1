"""summarize/evaluate as the CLI runs them: data checked before any summary, and --model given a
training output directory. In-process (cli.main) to skip a subprocess' import time."""
import json
import logging
import shutil

import pytest

from conftest import write_jsonl
from ms_gpt2 import cli, tasks

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

    monkeypatch.setattr(tasks, "summarize_lines", no_generation)
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
    caplog.set_level(logging.INFO, logger="ms_gpt2.tasks")
    code, out, err = run(capsys, "summarize", "--model", str(run_dir), "--text", GOOD["article"], *TINY)
    assert code == 0, err[-2000:]
    assert len(out.splitlines()) == 1  # the summary (of a random tiny model: any text)
    assert f"{run_dir} is a training output directory; using its final model {run_dir / 'model'}" in caplog.text

    data = write_jsonl(tmp_path / "news.jsonl", [GOOD, GOOD])
    code, out, err = run(capsys, "evaluate", "--model", str(run_dir), "--data", str(data), *TINY)
    assert code == 0, err[-2000:]
    assert json.loads(out)["examples"] == 2
