"""The command line: bad input gets one clear line naming file and line, exit 2, and nothing saved is lost."""
import json
import subprocess
import sys

import pytest

from conftest import write_jsonl

GOOD = {"article": "青禾市轨道交通5号线一期工程于本月18日正式开通运营。", "summarization": "青禾市地铁5号线开通。"}


def cli_process(*args):
    """The command in a fresh interpreter, as a user starts it."""
    return subprocess.run([sys.executable, "-m", "ms_gpt2", *args, "--device", "cpu"], capture_output=True,
                          text=True, timeout=600)


def cli(*args):
    """The command through ``cli.main`` in this process (what ``python -m ms_gpt2`` calls, and
    ``sys.exit``s with): the same exit code, stdout and stderr, without 4 s of interpreter start-up.
    A real process still runs here for a user error (the malformed line), ``next-word``, the seeded
    ``generate`` pair and ``--help``, and in ``test_runtime`` and the README commands."""
    import contextlib
    import io

    from ms_gpt2.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([*args, "--device", "cpu"])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def assert_user_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ms-gpt2: error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in last, last


def test_train_on_a_malformed_line_names_file_and_line(tmp_path, char_vocab_dir):
    data = write_jsonl(tmp_path / "news.jsonl", [GOOD, GOOD, b'{"article": "x"}', GOOD])
    result = cli_process("train", "--config", "configs/smoke.yaml", "--data", str(data), "--tokenizer",
                         str(char_vocab_dir), "--output-dir", str(tmp_path / "run"))  # a real process: exit 2, one line
    assert_user_error(result, f"{data}:3:", "missing key 'summarization'")


def test_train_with_a_wrong_vocabulary(tmp_path):
    data = write_jsonl(tmp_path / "news.jsonl", [GOOD])
    vocab = tmp_path / "vocab.json"
    vocab.write_text('{"<|endoftext|>": 0}\n', encoding="utf-8")
    result = cli("train", "--config", "configs/smoke.yaml", "--data", str(data), "--tokenizer", str(vocab),
                 "--output-dir", str(tmp_path / "run"))
    assert_user_error(result, str(vocab), "lacks [PAD]")


def test_too_long_summary_is_reported_before_training(tmp_path, char_vocab_dir):
    data = write_jsonl(tmp_path / "news.jsonl", [GOOD, {"article": "正文。", "summarization": "长" * 200}])
    result = cli("train", "--config", "configs/smoke.yaml", "--data", str(data), "--tokenizer", str(char_vocab_dir),
                 "--output-dir", str(tmp_path / "run"))
    assert_user_error(result, f"{data}:2:", "no room for the article")
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.parametrize("args,fragments", [
    (["summarize", "--model", "nowhere", "--text", "正文"], ["nowhere: no such model directory"]),
    (["evaluate", "--model", "configs", "--data", "x.jsonl"], ["configs: no vocab.txt"]),
    (["train", "--config", "configs/none.yaml", "--data", "x", "--output-dir", "y"], ["configs/none.yaml: no such config file"]),
    (["train", "--config", "configs/smoke.yaml", "--data", "missing.jsonl", "--output-dir", "y"], ["missing.jsonl: no such file"]),
    (["train", "--config", "configs/smoke.yaml", "--set", "model.n_layers=2", "--data", "x", "--output-dir", "y"],
     ["unknown key model.n_layers"]),
])
def test_wrong_paths_and_settings(args, fragments, tmp_path):
    assert_user_error(cli(*args), *fragments)


def test_model_directory_without_weights(tmp_path, char_vocab_dir):
    model = tmp_path / "model"
    model.mkdir()
    (model / "vocab.txt").write_bytes((char_vocab_dir / "vocab.txt").read_bytes())
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2"}), encoding="utf-8")
    assert_user_error(cli("summarize", "--model", str(model), "--text", "正文"), f"{model}: no weights")
    (model / "model.safetensors").write_bytes(b"\x00" * 16)  # corrupt
    assert_user_error(cli("summarize", "--model", str(model), "--text", "正文"), f"{model}: cannot load")


def test_next_word_and_generate_commands_on_a_local_checkpoint():
    result = cli_process("next-word", "--model", "tests/fixtures/gpt2-bpe-tiny", "--text",
                         "What is the fastest car in the", "--top-k", "3")  # a real process: nothing else on stdout
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("What is the fastest car in the") and len(lines) == 4
    probs = [float(line.split()[0]) for line in lines[1:]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1

    args = ["generate", "--model", "tests/fixtures/gpt2-bert-tiny", "--prompt", "青禾市", "--sample", "--top-k", "20",
            "--seed", "3", "--max-new-tokens", "8"]
    first, second = cli_process(*args), cli_process(*args)  # the same seed in two processes: the same text
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout == second.stdout and first.stdout.startswith("青禾市") and len(first.stdout.strip()) > 3

    too_long = cli("generate", "--model", "tests/fixtures/gpt2-bpe-tiny", "--prompt", "The car", "--max-new-tokens", "100")
    assert_user_error(too_long, "exceeds the model's n_positions=64")
    assert too_long.stdout == ""


def test_misspelled_training_option_is_one_line_before_any_data_work(tmp_path):
    # --data does not exist: the config error must come first, so nothing was read or written
    result = cli("train", "--config", "configs/smoke.yaml", "--set", "training.learning_rat=1", "--data",
                 str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "run"))
    assert_user_error(result, "unknown key training.learning_rat", "did you mean learning_rate")
    seeded = cli("train", "--config", "configs/smoke.yaml", "--set", "training.seed=3", "--data",
                 str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "run"))
    assert_user_error(seeded, "training.seed is set by ms_gpt2: use --seed")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,fragment", [
    (["generate", "--model", "m", "--prompt", "x", "--max-new-tokens", "-3"], "argument --max-new-tokens: must be at least 1, got -3"),
    (["generate", "--model", "m", "--prompt", "x", "--max-new-tokens", "many"], "expected a whole number, got 'many'"),
    (["generate", "--model", "m", "--prompt", "  "], "argument --prompt: is empty"),
    (["generate", "--model", "m", "--prompt", "x", "--top-p", "0"], "argument --top-p: must be in (0, 1], got 0"),
    (["generate", "--model", "m", "--prompt", "x", "--temperature", "-1"], "argument --temperature: must be above 0"),
    (["generate", "--model", "m", "--prompt", "x", "--num-beams", "0"], "argument --num-beams: must be at least 1"),
    (["generate", "--model", "m", "--prompt", "x", "--top-k", "-1"], "argument --top-k: must be 0 or more"),
    (["next-word", "--model", "m", "--text", "x", "--top-k", "0"], "argument --top-k: must be at least 1"),
    (["summarize", "--model", "m", "--text", ""], "argument --text: is empty"),
    (["evaluate", "--model", "m", "--data", "d", "--limit", "0"], "argument --limit: must be at least 1, got 0"),
    (["generate", "--model", "m", "--prompt", "x", "--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_values_a_command_cannot_use_are_one_line_and_exit_2(args, fragment, capsys):
    """Checked when the command line is read, before any model is loaded (``m`` does not exist)."""
    from ms_gpt2 import cli as ms_gpt2_cli

    with pytest.raises(SystemExit) as info:
        ms_gpt2_cli.main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("ms-gpt2: error: ") and fragment in err, err


def test_help_says_what_the_program_does_for_its_user():
    from ms_gpt2 import cli as cli_module

    result = subprocess.run([sys.executable, "-m", "ms_gpt2", "--help"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: ms-gpt2")
    # the module docstring is for developers ("Thin: parse, fix the runtime, hand off ..."), not the description
    assert cli_module.__doc__.splitlines()[0] not in result.stdout and "hand off" not in result.stdout
    description = " ".join(result.stdout.split())
    for what in ("GPT-2 on MindSpore", "fine-tune GPT-2 to summarize", "pretrain it on raw text",
                 "masked LM + next-sentence prediction", "ROUGE", "continue a prompt", "ms-gpt2 demo"):
        assert what in description, what


@pytest.mark.parametrize("argv, job", [
    (["train"], "ms_gpt2.jobs.train.train"),
    (["pretrain"], "ms_gpt2.jobs.pretrain.pretrain"),
    (["pretrain", "--objective", "mlm-nsp"], "ms_gpt2.jobs.bert_pretrain.pretrain_mlm_nsp"),
    (["finetune-bert"], "ms_gpt2.jobs.bert_finetune.finetune_bert"),
], ids=["train", "pretrain", "pretrain-mlm-nsp", "finetune-bert"])
def test_a_job_without_a_loss_curve_prints_json_null(argv, job, tmp_path, monkeypatch, capsys):
    """No logged loss, no curve: the result line said "loss_curve": "None" (a string); it is null."""
    import dataclasses
    import importlib
    from pathlib import Path

    from ms_gpt2.cli import main

    module, name = job.rsplit(".", 1)
    module = importlib.import_module(module)
    result_class = {"train": "TrainResult", "pretrain": "PretrainResult", "pretrain_mlm_nsp": "MlmNspResult",
                    "finetune_bert": "FinetuneResult"}[name]
    fields = {f.name: (None if f.name == "loss_curve" else tmp_path / f.name if f.type in ("Path", Path) else 1)
              for f in dataclasses.fields(getattr(module, result_class))}
    monkeypatch.setattr(module, name, lambda *args, **kwargs: getattr(module, result_class)(**fields))
    assert main([*argv, "--data", "x.jsonl", "--output-dir", str(tmp_path), "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["loss_curve"] is None
    assert printed["model"] == str(tmp_path / "model_dir")
