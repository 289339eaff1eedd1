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


def _engine_losses(seed, dropout, steps=3):
    from mindnlp.transformers import GPT2Config

    from ms_gpt2.engine.compiled import CompiledEngine
    from ms_gpt2.modeling import GPT2ForSummarization

    runtime.seed_everything(0)
    model = GPT2ForSummarization(GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                                            pad_token_id=0))
    model.train()
    engine = CompiledEngine(model, {}, max_grad_norm=1.0, seed=seed)
    ids = np.random.default_rng(1).integers(1, 40, (2, 12))
    losses = [engine.train_step(ids, None, None, 1e-2, step) for step in range(steps)]
    return losses, engine.weights()


def test_dropout_is_seeded_and_reproducible():
    first, w1 = _engine_losses(seed=5, dropout=0.2)
    again, w2 = _engine_losses(seed=5, dropout=0.2)
    assert first == again                                   # bit for bit: losses, grad norms
    for key in w1:
        np.testing.assert_array_equal(w1[key], w2[key], err_msg=key)
    other, _ = _engine_losses(seed=6, dropout=0.2)
    plain, _ = _engine_losses(seed=5, dropout=0.0)
    assert other[0] != first[0] and plain[0] != first[0]   # the masks are drawn, and from the seed


def test_compiled_resume_repeats_the_uninterrupted_losses(eight, char_vocab_dir, tmp_path):
    """Killed after checkpoint-4 of 8 steps and resumed: steps 5-8 log the same losses, and the
    AdamW moments came back from optimizer.pt (zero moments would change step 5's update)."""
    overrides = TINY + [f"tokenizer.path={char_vocab_dir}", "training.num_train_epochs=4",
                        "training.save_steps=4", "training.save_total_limit=5", "model.dropout=0.1"]
    straight = _run(overrides, eight, tmp_path / "a", "compiled")
    assert straight.global_step == 8
    shutil.copytree(tmp_path / "a" / "checkpoint-4", tmp_path / "b" / "checkpoint-4")
    resumed = _run(overrides, eight, tmp_path / "b", "compiled", resume="latest")
    assert resumed.global_step == 8
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [e["step"] for e in b] == [5, 6, 7, 8]
    assert [(e["loss"], e["grad_norm"]) for e in b] == [(e["loss"], e["grad_norm"]) for e in a[4:]]
    wa = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    for key in wa:
        np.testing.assert_array_equal(wb[key], wa[key], err_msg=key)


def test_checkpoints_hold_the_graphs_adamw_state(eight, char_vocab_dir, tmp_path):
    """optimizer.pt is torch AdamW's layout with the graph's step count and non-zero moments."""
    import torch  # mindtorch

    overrides = TINY + [f"tokenizer.path={char_vocab_dir}", "training.num_train_epochs=1",
                        "training.save_steps=2"]
    _run(overrides, eight, tmp_path / "run", "compiled")
    state = torch.load(str(tmp_path / "run" / "checkpoint-2" / "optimizer.pt"), weights_only=True)
    entries = list(state["state"].values())
    assert len(entries) == sum(len(g["params"]) for g in state["param_groups"]) > 0
    assert {float(e["step"]) for e in entries} == {2.0}
    assert all(np.abs(e["exp_avg_sq"].numpy()).max() > 0 for e in entries)
    assert sorted(g["weight_decay"] for g in state["param_groups"]) == [0.0, 0.1]  # biases/LayerNorm exempt


def test_engine_switch_and_what_the_compiled_engine_refuses(eight, char_vocab_dir, tmp_path):
    from ms_gpt2.cli import build_parser
    from ms_gpt2.config import load_config as load

    assert load()["engine"] == "compiled"
    assert build_parser().parse_args(["train", "--data", "x", "--output-dir", "y", "--engine", "eager"]).engine == "eager"
    config = load("configs/smoke.yaml", TINY + [f"tokenizer.path={char_vocab_dir}"])
    config["engine"] = "jit"
    with pytest.raises(UserError, match="engine='jit': choose one of compiled, eager"):
        train(config, eight, tmp_path / "a")
    config = load("configs/smoke.yaml", TINY + [f"tokenizer.path={char_vocab_dir}",
                                                "training.gradient_accumulation_steps=2"])
    with pytest.raises(UserError, match="gradient_accumulation_steps=2: the compiled engine"):
        train(config, eight, tmp_path / "b")
    assert not list((tmp_path / "b").glob("checkpoint-*"))
