"""Every ``.venv/bin/ms-gpt2 ...`` line in the README's code blocks runs, on tiny stand-ins.

Each README command is looked up in ``COMMANDS`` by its exact text (continuations joined,
comments dropped): run it, skip it with a reason (network, hardware), or expect it to fail
(``xfail(strict=True)``, naming the defect). A README command missing from the table fails, so a
new command in the README gets a test. Commands run in-process through ``cli.main`` with the
README's paths swapped for tiny fixtures (``PATHS``); the exit code must be 0.
"""
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import DEMO_DATA, write_jsonl
from ms_gpt2 import cli

REPO = Path(__file__).resolve().parents[1]
PROGRAM = ".venv/bin/ms-gpt2"


def readme_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each ``.venv/bin/ms-gpt2`` line inside a README code block."""
    found, in_block, pending = [], False, None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        if pending is None:
            if PROGRAM not in line.split("#")[0]:
                continue
            pending = [number, ""]
        pending[1] += " " + line.strip()
        if pending[1].endswith("\\"):
            pending[1] = pending[1][:-1]
            continue
        found.append((pending[0], shlex.join(shlex.split(pending[1], comments=True))))
        pending = None
    assert pending is None, f"README.md:{pending[0]}: command continues past its code block"
    return found


@dataclass(frozen=True)
class Run:
    extra: tuple = ()  # appended to the README's arguments (tiny sizes)
    trained: bool = False  # needs the model the README's train line makes
    pretrained: bool = False  # needs the model the README's pretrain line makes
    bert_pretrained: bool = False  # needs the model the README's BERT (MLM + NSP) pretrain line makes


TUTORIAL_TRAIN = (".venv/bin/ms-gpt2 train --config configs/tutorial.yaml --data data/nlpcc2017/train_with_summ.txt "
                  "--tokenizer path/to/bert-base-chinese --output-dir runs/tutorial")
# The tutorial's config with GPT-2 small swapped for a 1-layer, 32-wide model and one short epoch.
TINY_TUTORIAL = ("--set", "model.n_positions=128", "--set", "model.n_embd=32", "--set", "model.n_layer=1",
                 "--set", "model.n_head=2", "--set", "data.fraction=1.0", "--set", "data.max_seq_len=96",
                 "--set", "data.max_summary_len=24", "--set", "training.per_device_train_batch_size=5",
                 "--set", "training.warmup_steps=0", "--set", "training.logging_steps=1",
                 "--set", "generation.max_new_tokens=8")

PRETRAIN_SMOKE = (".venv/bin/ms-gpt2 pretrain --config configs/pretrain_smoke.yaml --data data/demo/nlpcc_demo.jsonl "
                  "--text-field article --output-dir runs/pt")
# GPT-2 small / BERT geometry swapped for 1 layer, 32 wide, and two short epochs
TINY_MODEL = ("--set", "model.n_positions=64", "--set", "model.n_embd=32", "--set", "model.n_layer=1",
              "--set", "model.n_head=2", "--set", "data.max_seq_len=48", "--set", "training.num_train_epochs=2",
              "--set", "training.per_device_train_batch_size=4", "--set", "training.warmup_steps=0",
              "--set", "training.logging_steps=1", "--set", "tokenizer.vocab_size=800")
# BERT (MLM + NSP) lines: 1 layer, 32 wide, 3 steps of pairs of at most 32 tokens.
TINY_BERT = ("--set", "model.n_embd=32", "--set", "model.n_layer=1", "--set", "model.n_head=2",
             "--set", "data.max_seq_len=32", "--set", "training.max_steps=3", "--set", "training.save_steps=3",
             "--set", "training.logging_steps=1")
BERT_TINY = (".venv/bin/ms-gpt2 pretrain --objective mlm-nsp --config configs/bert_tiny.yaml "
             "--data data/demo/nlpcc_demo.jsonl --text-field article --output-dir runs/bert_tiny")
SHORT = ("--max-new-tokens", "8")  # beams, sampling and penalties run Hugging Face generate: ~2 tokens/s
COMMANDS = {
    ".venv/bin/ms-gpt2 attention-demo --device ascend": "skip: needs an Ascend NPU (test_runtime.py checks the "
                                                        "error on a machine without one)",
    "MS_GPT2_DEVICE=cpu .venv/bin/ms-gpt2 attention-demo": Run(),
    ".venv/bin/ms-gpt2 attention-demo": Run(),
    ".venv/bin/ms-gpt2 download-data --cache-dir data/nlpcc2017": "skip: downloads NLPCC2017 from the network "
                                                                  "(test_download.py serves it from loopback)",
    TUTORIAL_TRAIN: Run(extra=TINY_TUTORIAL),
    ".venv/bin/ms-gpt2 summarize --model runs/tutorial/model --data data/nlpcc2017/train_with_summ.txt --split test "
    "--out summaries.jsonl": Run(trained=True),
    ".venv/bin/ms-gpt2 summarize --model runs/tutorial/model --text "
    "青禾市轨道交通5号线一期工程于本月18日正式开通运营。": Run(trained=True),
    ".venv/bin/ms-gpt2 evaluate --model runs/tutorial/model --data data/nlpcc2017/train_with_summ.txt --split test":
        Run(trained=True),
    ".venv/bin/ms-gpt2 next-word --model gpt2 --text 'What is the fastest car in the'": Run(),
    ".venv/bin/ms-gpt2 generate --model gpt2 --prompt 'Hello, my dog' --max-new-tokens 40": Run(),
    ".venv/bin/ms-gpt2 generate --model gpt2 --prompt 'Hello, my dog' --num-beams 5 --no-repeat-ngram-size 2":
        Run(extra=SHORT),  # beams go through Hugging Face generate too: 40 tokens took 30 s of the suite
    ".venv/bin/ms-gpt2 generate --model gpt2 --prompt 'Hello, my dog' --sample --temperature 0.8 --top-k 50 "
    "--top-p 0.95 --seed 1": Run(extra=SHORT),
    ".venv/bin/ms-gpt2 generate --model runs/demo/model --prompt 青禾市 --repetition-penalty 1.3": Run(SHORT, trained=True),
    ".venv/bin/ms-gpt2 pretrain --config configs/pretrain_gpt2_small.yaml --data corpus.txt "
    "--tokenizer path/to/bert-base-chinese --output-dir runs/pt-small": Run(extra=TINY_MODEL),
    PRETRAIN_SMOKE: Run(extra=TINY_MODEL),
    ".venv/bin/ms-gpt2 train --config configs/smoke.yaml --init-from runs/pt/model --data data/demo/nlpcc_demo.jsonl "
    "--output-dir runs/ft": Run(extra=("--set", "data.max_seq_len=48", "--set", "data.max_summary_len=20",
                                       "--set", "training.num_train_epochs=1"), pretrained=True),
    ".venv/bin/ms-gpt2 train --config configs/tutorial.yaml --init-from gpt2-chinese-cluecorpussmall "
    "--data data/nlpcc2017/train_with_summ.txt --output-dir runs/uer-ft": "skip: needs the downloaded "
    "uer/gpt2-chinese-cluecorpussmall checkpoint (the --init-from path is run by the runs/pt/model line)",
    ".venv/bin/ms-gpt2 pretrain --config configs/pretrain_gpt2_small.yaml --init-from gpt2-chinese-cluecorpussmall "
    "--data my_corpus.txt --output-dir runs/uer-pt": "skip: needs the downloaded uer/gpt2-chinese-cluecorpussmall "
    "checkpoint",
    ".venv/bin/ms-gpt2 train --nproc 8 --config configs/tutorial.yaml --data train.jsonl "
    "--tokenizer path/to/bert-base-chinese --output-dir runs/tutorial-8npu": "skip: needs 8 devices "
    "(tests/test_distributed.py runs train --nproc 2 on the CPU)",
    BERT_TINY: Run(extra=TINY_BERT),
    ".venv/bin/ms-gpt2 pretrain --objective mlm-nsp --config configs/bert_tiny.yaml --nproc 8 --data corpus.txt "
    "--tokenizer path/to/bert-base-chinese --output-dir runs/bert": "skip: needs 8 devices "
    "(tests/test_distributed.py runs BERT pretrain --nproc 2 on the CPU)",
    ".venv/bin/ms-gpt2 pretrain --objective mlm-nsp --config my_bert.yaml --data corpus.txt "
    "--tokenizer path/to/bert-base-chinese --output-dir runs/bert": Run(extra=TINY_BERT),
    # fine-tuning (summary-article matching) from that model, and from scratch on its vocabulary: 3 steps
    ".venv/bin/ms-gpt2 finetune-bert --config configs/bert_pair_tiny.yaml --init-from runs/bert_tiny/model "
    "--data data/demo/nlpcc_demo.jsonl --output-dir runs/bert_match": Run(extra=TINY_BERT, bert_pretrained=True),
    ".venv/bin/ms-gpt2 finetune-bert --config configs/bert_pair_tiny.yaml --tokenizer runs/bert_tiny/model "
    "--data data/demo/nlpcc_demo.jsonl --output-dir runs/bert_match_scratch": Run(extra=TINY_BERT,
                                                                                  bert_pretrained=True),
}
COMMANDS = {shlex.join(shlex.split(command)): how for command, how in COMMANDS.items()}  # quoted as README_LINES


@pytest.fixture(scope="module")
def paths(tmp_path_factory, char_vocab_dir) -> dict[str, str]:
    """The README's paths -> tiny stand-ins; outputs go to a temporary directory."""
    tmp = tmp_path_factory.mktemp("readme")
    rows = sorted((json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")), key=lambda r: len(r["article"]))
    data = write_jsonl(tmp / "train_with_summ.txt", rows[:10])  # 9 train / 1 test at train_ratio 0.9
    corpus = tmp / "corpus.txt"  # plain text, one document per line
    corpus.write_text("".join(row["article"].replace("\n", " ") + "\n" for row in rows[:10]), encoding="utf-8")
    my_bert = tmp / "my_bert.yaml"  # the defaults, which read plain text
    my_bert.write_text("pretrain:\n  text_field: null\n", encoding="utf-8")
    return {
        "data/nlpcc2017/train_with_summ.txt": str(data),
        "path/to/bert-base-chinese": str(char_vocab_dir),
        "runs/tutorial": str(tmp / "runs" / "tutorial"),
        "runs/tutorial/model": str(tmp / "runs" / "tutorial" / "model"),
        "summaries.jsonl": str(tmp / "summaries.jsonl"),
        "corpus.txt": str(corpus),
        "my_bert.yaml": str(my_bert),
        "runs/bert_tiny": str(tmp / "runs" / "bert_tiny"),
        "runs/bert": str(tmp / "runs" / "bert"),
        "runs/bert_tiny/model": str(tmp / "runs" / "bert_tiny" / "model"),
        "runs/bert_match": str(tmp / "runs" / "bert_match"),
        "runs/bert_match_scratch": str(tmp / "runs" / "bert_match_scratch"),
        # a GPT-2 checkpoint directory with the gpt2 family's byte-level BPE tokenizer, 2 layers, 32 wide
        "gpt2": str(REPO / "tests" / "fixtures" / "gpt2-bpe-tiny"),
        # `make demo`'s model: the tiny model the README's train line made, a BERT vocabulary as the demo's
        "runs/demo/model": str(tmp / "runs" / "tutorial" / "model"),
        # pretraining reads the same 10 records as JSON lines (corpus.txt: their articles as plain text)
        "data/demo/nlpcc_demo.jsonl": str(data),
        **{name: str(tmp / "runs" / name.split("/", 1)[1]) for name in ("runs/pt", "runs/pt/model", "runs/ft", "runs/pt-small")},
    }


def run_line(command: str, paths: dict, extra, monkeypatch, capsys) -> tuple[int, str]:
    tokens = shlex.split(command)
    at = tokens.index(PROGRAM)
    env, argv = tokens[:at], tokens[at + 1:]
    monkeypatch.setenv("MS_GPT2_DEVICE", "cpu")  # the process already runs on the CPU (conftest)
    for assignment in env:
        name, value = assignment.split("=", 1)
        monkeypatch.setenv(name, value)
    argv = [paths.get(arg, arg) for arg in argv] + list(extra)
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, f"{' '.join(argv)}\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-3000:]}"


@pytest.fixture(scope="module")
def pretrain_run(paths):
    """The README's pretrain line on the demo articles, on tiny settings: (exit code, output)."""
    mp, cap = pytest.MonkeyPatch(), _Capture()
    try:
        with cap:
            return run_line(PRETRAIN_SMOKE, paths, COMMANDS[shlex.join(shlex.split(PRETRAIN_SMOKE))].extra, mp, cap)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def bert_pretrain_run(paths):
    """The README's BERT (MLM + NSP) pretrain line, on tiny settings: (exit code, output)."""
    mp, cap = pytest.MonkeyPatch(), _Capture()
    try:
        with cap:
            return run_line(BERT_TINY, paths, TINY_BERT, mp, cap)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def tutorial_run(paths):
    """The README's train line, on tiny settings: (exit code, output)."""
    mp, cap = pytest.MonkeyPatch(), _Capture()
    try:
        with cap:
            return run_line(TUTORIAL_TRAIN, paths, TINY_TUTORIAL, mp, cap)
    finally:
        mp.undo()


class _Capture:
    """capsys for a module-scoped fixture: collects what cli.main prints."""

    def __enter__(self):
        import contextlib
        import io

        self.out, self.err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self.out))
        self._stack.enter_context(contextlib.redirect_stderr(self.err))
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def readouterr(self):
        return self.out.getvalue(), self.err.getvalue()


README_LINES = readme_commands((REPO / "README.md").read_text(encoding="utf-8"))


def _case(line: int, command: str):
    entry = COMMANDS.get(command)
    label = f"README.md:{line}:{command.split(PROGRAM)[1].split()[0]}"
    if isinstance(entry, str):
        return pytest.param(command, None, id=label, marks=pytest.mark.skip(reason=entry.removeprefix("skip: ")))
    if entry is None:
        return pytest.param(command, None, id=label)
    if isinstance(entry, Run):
        return pytest.param(command, entry, id=label)
    return pytest.param(command, *entry.values, id=label, marks=entry.marks)


@pytest.mark.parametrize("command,how", [_case(line, command) for line, command in README_LINES])
def test_readme_command_runs(command, how, paths, request, monkeypatch, capsys):
    if how is None:
        pytest.fail(f"README command not covered by {Path(__file__).name}; add it to COMMANDS: {command}")
    if command == TUTORIAL_TRAIN:
        code, output = request.getfixturevalue("tutorial_run")
    elif command == shlex.join(shlex.split(PRETRAIN_SMOKE)):
        code, output = request.getfixturevalue("pretrain_run")
    elif command == shlex.join(shlex.split(BERT_TINY)):
        code, output = request.getfixturevalue("bert_pretrain_run")
    else:
        for needed, fixture in ((how.trained, "tutorial_run"), (how.pretrained, "pretrain_run"),
                                (how.bert_pretrained, "bert_pretrain_run")):
            if needed:
                made, output = request.getfixturevalue(fixture)
                assert made == 0, f"the README line behind {fixture} failed:\n" + output
        code, output = run_line(command, paths, how.extra, monkeypatch, capsys)
    assert code == 0, output


def test_readme_covers_only_commands_it_still_has():
    stale = set(COMMANDS) - {command for _, command in README_LINES}
    assert not stale, f"COMMANDS lists commands the README no longer has: {sorted(stale)}"
    assert TUTORIAL_TRAIN in COMMANDS
