"""Shared test setup: CPU runtime, fixed seeds, and no network.

Every test runs offline by construction: a socket connecting anywhere but loopback fails the test
at once, so a hidden hub download shows up as a failure here rather than a hang in CI.
"""
import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from ms_gpt2.infra import runtime  # noqa: E402

runtime.setup("cpu", seed=0)

_real_connect = socket.socket.connect


def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")) or self.family == socket.AF_UNIX:
        return _real_connect(self, address)
    raise RuntimeError(f"test tried to reach the network ({address!r}); tests must run offline")


socket.socket.connect = _loopback_only


@pytest.fixture(autouse=True, scope="module")
def _runtime_seed_per_module():
    """``cli.main`` runs ``runtime.setup(seed=--seed or 42)``, and jobs seed from the runtime's seed: put
    it back to 0 so no test depends on which tests ran before it (module fixtures included)."""
    runtime.setup("cpu", seed=0)


@pytest.fixture(autouse=True)
def _runtime_seed_per_test():
    runtime.setup("cpu", seed=0)


@pytest.fixture
def seeded():
    runtime.seed_everything(0)


DEMO_DATA = os.path.join(os.path.dirname(__file__), os.pardir, "data", "demo", "nlpcc_demo.jsonl")


def write_jsonl(path, rows):
    """rows: dicts (serialised) or raw str/bytes lines (written as-is, for malformed input)."""
    import json

    with open(path, "wb") as out:
        for row in rows:
            if isinstance(row, dict):
                row = json.dumps(row, ensure_ascii=False)
            out.write((row.encode("utf-8") if isinstance(row, str) else row) + b"\n")
    return path


@pytest.fixture(scope="session")
def char_vocab_dir(tmp_path_factory):
    """A bert-base-chinese-layout vocab over the demo corpus' characters (no training, instant)."""
    import json

    chars = set()
    with open(DEMO_DATA, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            chars.update(record["article"] + record["summarization"])
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    directory = tmp_path_factory.mktemp("vocab")
    tokens = specials + sorted(c for c in chars if not c.isspace()) + [f"##{d}" for d in "0123456789"]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def tokenizer(char_vocab_dir):
    from ms_gpt2.data.tokenization import load_wordpiece

    return load_wordpiece(char_vocab_dir)
