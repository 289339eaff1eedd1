"""Same seed, same data, same machine: the same vocabulary and the same losses in any process.

Python's string hashing (``PYTHONHASHSEED``) and the ``tokenizers`` trainer's hash maps are seeded
per process, so these tests start fresh interpreters with different hash seeds and compare bytes.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEMO_DATA, write_jsonl
from ms_gpt2.data.tokenization import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
HASH_SEEDS = ("0", "12345")


def _env(hash_seed):
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


# Every run below happens in each of two fresh interpreters started at once, one per hash seed: one
# driver process per seed runs them one after the other (each start pays the MindSpore import and,
# for training, the compile; ten starts made this file ~70 s). The second process does the runs in the
# reverse order, so a run cannot lean on state an earlier run left in the process (random streams,
# generator offsets, compile caches): each must give the same bytes whether it runs first or last.
DRIVER = """
import json, sys
from ms_gpt2.data.tokenization import build_tokenizer
for name, kind, args in json.loads(open(sys.argv[1], encoding="utf-8").read()):
    print("=== run " + name, file=sys.stderr, flush=True)
    if kind == "build":
        data, out, vocab_size = args
        texts = [t for line in open(data, encoding="utf-8") for t in json.loads(line).values()]
        build_tokenizer(texts, out, vocab_size=vocab_size)
    else:
        from ms_gpt2 import cli
        assert cli.main(args) == 0, name
    print("=== end " + name, file=sys.stderr, flush=True)
"""

BUILD_SIZES = (3000, 1125)  # 1125 stops the merges part way: ties at the cut
COMMON = ["--device", "cpu", "--log-level", "INFO", "--seed", "7"]
# the tiny model and short run every training job below shares; each adds its own keys
TINY = ["model.n_embd=32", "model.n_layer=1", "model.n_head=2", "model.dropout=0.1", "training.max_steps=3",
        "training.logging_steps=1", "training.save_steps=100"]
JOBS = {  # name: (command line before the options, config, keys besides TINY)
    "train": (["train"], "configs/smoke.yaml",
              ["tokenizer.path=null", "data.train_ratio=0.75", "training.per_device_train_batch_size=4",
               "training.num_train_epochs=1", "data.shuffle=true"]),
    "pretrain": (["pretrain"], "configs/pretrain_smoke.yaml",
                 ["data.max_seq_len=32", "pretrain.text_field=article", "pretrain.eval_fraction=0.25",
                  "training.per_device_train_batch_size=4"]),
    "bert": (["pretrain", "--objective", "mlm-nsp"], "configs/bert_tiny.yaml",
             ["data.max_seq_len=32", "pretrain.eval_fraction=0.25", "pretrain.masking=dynamic",
              "training.per_device_train_batch_size=8"]),
}


class _Pair:
    """The two processes' run directories (``dirs[i] / name``) and each run's stderr."""

    def __init__(self, dirs, stderrs):
        self.dirs, self._stderrs = dirs, stderrs

    def runs(self, name):
        return [d / name for d in self.dirs]

    def log(self, i, name):
        text = self._stderrs[i]
        return text[text.index(f"=== run {name}\n"):text.index(f"=== end {name}\n")]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    data = _data(root)
    dirs = [root / f"process{i}" for i in range(2)]
    procs = []
    for i, (directory, seed) in enumerate(zip(dirs, HASH_SEEDS)):
        jobs = [(f"vocab{size}", "build", [str(DEMO_DATA), str(directory / f"vocab{size}"), size])
                for size in BUILD_SIZES]
        for name, (command, config, keys) in JOBS.items():
            sets = [a for kv in TINY + keys for a in ("--set", kv)]
            jobs.append((name, "cli", [*command, "--config", config, "--data", str(data),
                                       "--output-dir", str(directory / name), *COMMON, *sets]))
        jobs = jobs[::-1] if i else jobs
        directory.mkdir()
        (directory / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
        procs.append(subprocess.Popen([sys.executable, "-c", DRIVER, str(directory / "jobs.json")], cwd=ROOT,
                                      env=_env(seed), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return _Pair(dirs, [err for _, err in outputs])


@pytest.mark.parametrize("vocab_size", BUILD_SIZES)
def test_build_tokenizer_writes_the_same_bytes_in_any_process(pair, vocab_size):
    first, second = ((run / "vocab.txt").read_bytes() for run in pair.runs(f"vocab{vocab_size}"))
    assert first == second
    lines = first.decode("utf-8").splitlines()
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(lines) == len(set(lines))
    if vocab_size < 3000:
        assert len(lines) == vocab_size


def test_every_character_of_the_text_gets_a_token(tmp_path, caplog):
    """The library's default limit_alphabet (1000) dropped 2,000 of 3,000 characters here."""
    characters = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    rows = [{"article": "".join(characters[(7 * r + i) % 3000] for i in range(3000)), "summarization": "摘要"}
            for r in range(20)]
    texts = [t for row in rows for t in row.values()]
    with caplog.at_level("INFO", logger="ms_gpt2.data.tokenization"):
        tokenizer = build_tokenizer(texts, tmp_path / "tok", vocab_size=8000)
    vocab = tokenizer.get_vocab()
    assert [c for c in characters if c not in vocab] == []
    assert tokenizer.unk_token_id not in tokenizer(texts[0])["input_ids"]
    assert "[UNK] rate" in caplog.text and "0.0000% (0 of 60040 tokens)" in caplog.text


def test_a_vocab_size_below_the_characters_keeps_them_all_and_says_so(tmp_path, caplog):
    texts = ["青禾市地铁5号线开通运营", "南屿省发布寒潮预警", "model runs 2048 steps"]
    distinct = {c for t in texts for c in t.lower() if not c.isspace()}
    with caplog.at_level("WARNING", logger="ms_gpt2.data.tokenization"):
        tokenizer = build_tokenizer(texts, tmp_path / "tok", vocab_size=10)
    assert distinct <= set(tokenizer.get_vocab())
    for text in texts:
        assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
    assert "more than tokenizer.vocab_size 10" in caplog.text


def test_min_frequency_limits_the_pieces_not_the_characters(tmp_path):
    texts = ["alpha beta"] * 3 + ["gummy zoo"]  # "alpha", "beta": three times; "gummy", "zoo": once
    vocab = set(build_tokenizer(texts, tmp_path / "tok", vocab_size=500, min_frequency=3).get_vocab())
    assert {"alpha", "beta"} <= vocab and not {"gummy", "zoo", "##um", "##oo", "##my"} & vocab
    assert set("alphbetguzo") <= vocab and {"##u", "##m", "##y", "##o"} <= vocab  # every character, however rare


def _loss_log(run):
    return [json.loads(line) for line in (run / "loss_log.jsonl").read_text(encoding="utf-8").splitlines()]


def _assert_same_runs(runs, vocab_dir="tokenizer"):
    vocabs = [(run / vocab_dir / "vocab.txt").read_bytes() for run in runs]
    assert vocabs[0] == vocabs[1]
    logs = [_loss_log(run) for run in runs]
    assert logs[0] and logs[0] == logs[1]  # the logged numbers (grad norms at full precision)
    weights = [(run / "model" / "model.safetensors").read_bytes() for run in runs]
    assert weights[0] == weights[1]  # the trained model, bit for bit


def _data(tmp_path, n=16):
    rows = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")][:n]
    return write_jsonl(tmp_path / "data.jsonl", rows)


def test_train_gives_the_same_vocabulary_and_losses_in_any_process(pair):
    _assert_same_runs(pair.runs("train"))
    assert "[UNK] rate" in pair.log(0, "train") and "on the held-out split" in pair.log(0, "train")


def test_pretrain_gives_the_same_vocabulary_and_losses_in_any_process(pair):
    _assert_same_runs(pair.runs("pretrain"))
    assert "on the held-out split" in pair.log(0, "pretrain")


def test_bert_pretraining_gives_the_same_vocabulary_and_losses_in_any_process(pair):
    _assert_same_runs(pair.runs("bert"))
