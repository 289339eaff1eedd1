"""Which vocabulary a training run uses, and that the model is sized for every id it can produce."""
import json
import logging
from pathlib import Path

import pytest

from conftest import DEMO_DATA, write_jsonl
from ms_gpt2.infra.config import load_config
from ms_gpt2.jobs.train import train

FIXTURE = "tests/fixtures/gpt2-bert-tiny"
FIXTURE_VOCAB = Path(FIXTURE) / "vocab.txt"  # a BERT-vocab (541 tokens) GPT-2, n_positions 64
TINY = ["model.n_positions=64", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "model.dropout=0.0",
        "data.max_seq_len=64", "data.max_summary_len=20", "data.train_ratio=1.0", "data.summary_only_loss=true",
        "training.per_device_train_batch_size=4", "training.num_train_epochs=1", "training.learning_rate=1.0e-3",
        "training.warmup_steps=0", "training.logging_steps=1"]


def demo_rows():
    return [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")]


def chars(rows):
    return {c for r in rows for c in r["article"] + r["summarization"] if not c.isspace()}


def vocab_lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_overwrite_builds_the_vocabulary_from_the_new_data(tmp_path):
    rows = sorted(demo_rows(), key=lambda r: len(r["summarization"]))
    first, second = rows[:4], rows[-4:]
    only_second = sorted(chars(second) - chars(first))
    assert only_second
    config = load_config("configs/smoke.yaml", TINY + ["tokenizer.path=null", "tokenizer.vocab_size=3000"])
    run = tmp_path / "run"
    train(config, write_jsonl(tmp_path / "first.jsonl", first), run)
    assert not set(only_second) & set(vocab_lines(run / "tokenizer" / "vocab.txt"))

    train(config, write_jsonl(tmp_path / "second.jsonl", second), run, overwrite=True)
    for vocab in (run / "tokenizer" / "vocab.txt", run / "model" / "vocab.txt"):
        assert set(only_second) <= set(vocab_lines(vocab)), vocab  # built from this data, not the last run's


def test_init_from_uses_the_checkpoints_own_vocabulary(tmp_path):
    data = write_jsonl(tmp_path / "news.jsonl", sorted(demo_rows(), key=lambda r: len(r["summarization"]))[:4])
    config = load_config("configs/smoke.yaml", TINY + [f"model.init_from={FIXTURE}", "tokenizer.path=null",
                                                       "tokenizer.vocab_size=200", "training.learning_rate=0.0"])
    result = train(config, data, tmp_path / "run")
    # not a vocabulary built from the data (small enough to pass a size check, with other ids)
    assert vocab_lines(result.model_dir / "vocab.txt") == vocab_lines(FIXTURE_VOCAB)
    assert not (tmp_path / "run" / "tokenizer").exists()


def test_init_from_refuses_a_tokenizer_whose_ids_mean_other_tokens(tmp_path):
    from ms_gpt2.data.tokenization import TokenizerError

    data = write_jsonl(tmp_path / "news.jsonl", demo_rows()[:4])
    lines = vocab_lines(FIXTURE_VOCAB)
    lines[100], lines[101] = lines[101], lines[100]  # same size, two ids swapped
    other = tmp_path / "vocab.txt"
    other.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = load_config("configs/smoke.yaml", TINY + [f"model.init_from={FIXTURE}", f"tokenizer.path={other}"])
    with pytest.raises(TokenizerError) as info:
        train(config, data, tmp_path / "run")
    message = str(info.value)
    assert str(other) in message and FIXTURE in message and "id 100" in message and "\n" not in message
    assert f"{lines[100]!r}" in message
    assert not (tmp_path / "run" / "model").exists()


def test_init_from_a_bpe_checkpoint_is_refused(tmp_path):
    from ms_gpt2.data.tokenization import TokenizerError

    data = write_jsonl(tmp_path / "news.jsonl", demo_rows()[:4])
    config = load_config("configs/smoke.yaml", TINY + ["model.init_from=tests/fixtures/gpt2-bpe-tiny",
                                                       "tokenizer.path=null", "tokenizer.vocab_size=200"])
    with pytest.raises(TokenizerError, match="gpt2-bpe-tiny: its vocabulary is GPT-2 byte-level BPE"):
        train(config, data, tmp_path / "run")


def test_a_vocab_with_repeated_lines_trains_and_names_the_repeats(tmp_path, char_vocab_dir, caplog):
    rows = sorted(demo_rows(), key=lambda r: len(r["summarization"]))[:4]
    tokens = vocab_lines(char_vocab_dir / "vocab.txt")
    # as in circulating bert-base-chinese copies: repeated ## entries, then ids past the distinct count;
    # "。" (in every article) last, so training uses an id >= the number of distinct tokens
    body = [t for t in tokens[5:] if t != "。"]
    lines = tokens[:5] + ["##0", "##1", "##2"] + body + ["。"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = load_config("configs/smoke.yaml", TINY + [f"tokenizer.path={vocab}"])
    with caplog.at_level(logging.WARNING, logger="ms_gpt2.data.tokenization"):
        result = train(config, write_jsonl(tmp_path / "news.jsonl", rows), tmp_path / "run")
    assert result.global_step == 1
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert saved["vocab_size"] == len(lines)  # max id + 1, not the 3 fewer distinct tokens
    warnings = [r.getMessage() for r in caplog.records if str(vocab) in r.getMessage()]
    assert len(warnings) == 1, warnings
    first, again = lines.index("##0") + 1, lines.index("##0", lines.index("##0") + 1) + 1  # 1-based lines
    assert "3 token(s)" in warnings[0] and f"'##0' at lines {first}, {again}" in warnings[0]
    # the saved vocabulary keeps every id where the model learned it
    assert vocab_lines(result.model_dir / "vocab.txt") == lines


def test_vocab_id_range_counts_ids_not_distinct_tokens(tmp_path):
    from ms_gpt2.data.tokenization import load_wordpiece, vocab_id_range

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "中", "##a", "文", "##a", "国"]) + "\n",
                     encoding="utf-8")
    tok = load_wordpiece(vocab)
    assert (len(tok), vocab_id_range(tok), tok.convert_tokens_to_ids("国")) == (9, 10, 9)
    tok.save_pretrained(str(tmp_path / "saved"))
    assert load_wordpiece(tmp_path / "saved").get_vocab() == tok.get_vocab()  # no id shifted by saving
