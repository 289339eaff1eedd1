"""A model directory that does not exist is named as the model directory, in one line, exit 2.

``summarize --model DIR`` said "no such tokenizer directory or vocab file", and ``train``/``pretrain
--init-from DIR`` "no vocab.txt there; give the vocabulary...": the model directory is what is missing.
A missing ``--tokenizer`` is still named as the tokenizer."""
import pytest

from conftest import DEMO_DATA
from ms_gpt2 import cli

TINY = ["model.n_positions=64", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "data.max_seq_len=32"]


def _one_line_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv + ["--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", [
    ["summarize", "--text", "一篇文章。"],
    ["summarize", "--data", DEMO_DATA],
    ["evaluate", "--data", DEMO_DATA],
    ["generate", "--prompt", "你好"],
    ["next-word", "--text", "你好"],
])
def test_model_that_does_not_exist(command, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    err = _one_line_error([command[0], "--model", str(missing), *command[1:]], capsys)
    assert err == f"ms-gpt2: error: {missing}: no such model directory"


def test_model_that_is_a_file(tmp_path, capsys):
    given = tmp_path / "model.safetensors"
    given.write_bytes(b"")
    err = _one_line_error(["summarize", "--model", str(given), "--text", "一篇文章。"], capsys)
    assert err.startswith(f"ms-gpt2: error: {given}: not a directory; expected a model directory")


@pytest.mark.parametrize("command,config", [
    (["train"], "configs/smoke.yaml"),
    (["pretrain", "--text-field", "article"], "configs/pretrain_smoke.yaml"),
    (["pretrain", "--text-field", "article", "--objective", "mlm-nsp"], "configs/pretrain_smoke.yaml"),
    (["finetune-bert"], "configs/smoke.yaml"),
])
@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_init_from_that_does_not_exist(command, config, with_tokenizer, tmp_path, capsys, char_vocab_dir):
    missing = tmp_path / "no-such-model"
    argv = [*command, "--config", config, "--data", DEMO_DATA, "--output-dir", str(tmp_path / "run"),
            "--init-from", str(missing), *[a for s in TINY for a in ("--set", s)]]
    if with_tokenizer:  # the checkpoint is still what is missing, not its vocabulary
        argv += ["--tokenizer", str(char_vocab_dir)]
    err = _one_line_error(argv, capsys)
    assert err == f"ms-gpt2: error: model.init_from {missing}: no such model directory"


def test_a_missing_tokenizer_is_still_named_as_the_tokenizer(tmp_path, capsys):
    missing = tmp_path / "no-such-vocab"
    err = _one_line_error(["train", "--config", "configs/smoke.yaml", "--data", DEMO_DATA, "--output-dir",
                           str(tmp_path / "run"), "--tokenizer", str(missing)], capsys)
    assert err == f"ms-gpt2: error: {missing}: no such tokenizer directory or vocab file"
