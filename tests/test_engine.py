"""The compiled training engine (ms_gpt2.engine): the same training as the eager Trainer path,
step for step; seeded dropout; exact resume; the switch and what it refuses."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import DEMO_DATA, write_jsonl
from ms_gpt2 import runtime
from ms_gpt2.config import load_config
from ms_gpt2.errors import UserError
from ms_gpt2.training import train

# 8 short records, 4 per batch: 2 steps per epoch. Warm-up, clipping (max norm 0.5, below the
# measured norms) and weight decay (biases/LayerNorm exempt) all active.
TINY = ["model.n_positions=64", "model.n_embd=32", "model.n_layer=2", "model.n_head=2", "model.dropout=0.0",
        "data.max_seq_len=64", "data.max_summary_len=30", "data.train_ratio=1.0", "data.summary_only_loss=false",
        "training.per_device_train_batch_size=4", "training.learning_rate=5.0e-3", "training.warmup_steps=5",
        "training.max_grad_norm=0.5", "training.weight_decay=0.1", "training.logging_steps=1",
        "training.save_steps=1000"]


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    rows = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")]
    rows = sorted(rows, key=lambda r: len(r["summarization"]))[:8]
    return write_jsonl(tmp_path_factory.mktemp("data") / "eight.jsonl", rows)


def _losses(run_dir):
    return [json.loads(line) for line in (run_dir / "loss_log.jsonl").read_text().splitlines()]


def _run(config_overrides, data, out, engine, resume=None):
    config = load_config("configs/smoke.yaml", config_overrides)
    config["engine"] = engine
    runtime.seed_everything(0)
    return train(config, data, out, resume=resume)


def test_compiled_and_eager_agree_for_20_steps(eight, char_vocab_dir, tmp_path):
    overrides = TINY + [f"tokenizer.path={char_vocab_dir}", "training.num_train_epochs=10"]
    eager = _run(overrides, eight, tmp_path / "eager", "eager")
    compiled = _run(overrides, eight, tmp_path / "compiled", "compiled")
    assert eager.global_step == compiled.global_step == 20
    a, b = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert [e["step"] for e in a] == [e["step"] for e in b] == list(range(1, 21))
    assert [e["learning_rate"] for e in a] == [e["learning_rate"] for e in b]   # the Trainer's schedule, warm-up
    assert a[0]["learning_rate"] < a[4]["learning_rate"]
    assert sum(e["grad_norm"] > 0.5 for e in a) >= 10                          # clipping did act
    np.testing.assert_allclose([e["loss"] for e in b], [e["loss"] for e in a], rtol=1e-4)  # loss_log: 4 decimals
    np.testing.assert_allclose([e["grad_norm"] for e in b], [e["grad_norm"] for e in a], rtol=1e-3)
    assert a[-1]["loss"] < a[0]["loss"] - 1                                     # it did train
    wa = load_file(str(eager.model_dir / "model.safetensors"))
    wb = load_file(str(compiled.model_dir / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_allclose(wb[key], wa[key], rtol=0, atol=1e-4, err_msg=key)
