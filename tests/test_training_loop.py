"""The training loop itself: each epoch's order, mid-epoch resume, gradient accumulation.

Tiny models (1 layer, width 32, 64 tokens) on a few demo records: each run takes seconds.
"""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import DEMO_DATA, write_jsonl
from ms_gpt2.infra import runtime
from ms_gpt2.infra.config import load_config
from ms_gpt2.jobs.fit import PipelineBatches
from ms_gpt2.jobs.train import train

TINY = ["model.n_positions=64", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "model.dropout=0.0",
        "data.max_seq_len=64", "data.max_summary_len=20", "data.train_ratio=1.0", "data.summary_only_loss=true",
        "training.learning_rate=1.0e-3", "training.warmup_steps=0", "training.logging_steps=1",
        "training.save_total_limit=20"]


def records(n):
    rows = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")]
    return sorted(rows, key=lambda r: len(r["summarization"]))[:n]


@pytest.fixture
def seen_batches(monkeypatch):
    """Every batch the Trainer draws from the pipeline, as nested tuples of input ids."""
    seen = []
    original = PipelineBatches.__iter__

    def recording(self):
        for batch in original(self):
            seen.append(tuple(map(tuple, batch["input_ids"].numpy().tolist())))
            yield batch

    monkeypatch.setattr(PipelineBatches, "__iter__", recording)
    return seen


def weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def loss_log(run_dir):
    return [json.loads(line) for line in (run_dir / "loss_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("accumulation,save_steps,resume_step,skipped,engine", [
    (1, 4, 4, 4, "compiled"),  # 3 batches/epoch: checkpoint-4 is one batch into epoch 2
    (2, 3, 3, 5, "compiled"),  # 3 batches/epoch = updates of 2 + 1: checkpoint-3 is one update (2 batches)
    (2, 3, 3, 5, "eager"),     # into epoch 2, and what is left of that epoch is the short last group
])
def test_epochs_reshuffle_and_a_mid_epoch_resume_sees_exactly_the_untrained_batches(
        tmp_path, char_vocab_dir, seen_batches, accumulation, save_steps, resume_step, skipped, engine):
    data = write_jsonl(tmp_path / "six.jsonl", records(6))
    config = load_config("configs/smoke.yaml", TINY + [
        f"tokenizer.path={char_vocab_dir}", "training.per_device_train_batch_size=2", "training.num_train_epochs=3",
        f"training.gradient_accumulation_steps={accumulation}", f"training.save_steps={save_steps}"])
    config["engine"] = engine

    runtime.seed_everything(0)
    straight = train(config, data, tmp_path / "a")
    batches = list(seen_batches)
    assert len(batches) == 9
    epochs = [batches[0:3], batches[3:6], batches[6:9]]
    examples = [sorted(row for batch in epoch for row in batch) for epoch in epochs]
    assert examples[0] == examples[1] == examples[2]  # each epoch sees every example once...
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]  # ...in its own order

    # the same seed gives the same orders
    seen_batches.clear()
    runtime.seed_everything(0)
    train(config, data, tmp_path / "again")
    assert seen_batches == batches

    # a crash after checkpoint-<resume_step>, in the middle of epoch 2, then --resume
    shutil.copytree(tmp_path / "a" / f"checkpoint-{resume_step}", tmp_path / "b" / f"checkpoint-{resume_step}")
    seen_batches.clear()
    runtime.seed_everything(123)
    resumed = train(config, data, tmp_path / "b", resume="latest")
    assert seen_batches == batches[skipped:]  # not one trained batch again, not one untrained batch missed
    assert resumed.global_step == straight.global_step

    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)
    after = {e["step"]: e for e in loss_log(tmp_path / "a") if e["step"] > resume_step}
    again = {e["step"]: e for e in loss_log(tmp_path / "b")}
    assert sorted(again) == sorted(after)
    for step, entry in after.items():
        assert again[step]["loss"] == pytest.approx(entry["loss"], rel=1e-5)
        assert again[step]["epoch"] == pytest.approx(entry["epoch"], abs=1e-9)  # epoch progress counts the skip


@pytest.mark.parametrize("engine", ["compiled", "eager"])
def test_gradient_accumulation_equals_the_whole_batch(tmp_path, char_vocab_dir, engine):
    """Batch 4 and batch 2 x accumulation 2 (dropout 0) log the same losses and end with the same weights.

    The records' summaries differ in length (summary_only_loss: only they are scored), so a mean of
    per-micro-batch means differs from the token mean over the whole batch.
    """
    data = write_jsonl(tmp_path / "eight.jsonl", records(8))
    base = TINY + [f"tokenizer.path={char_vocab_dir}", "training.num_train_epochs=2", "training.save_steps=100"]
    runs = {}
    for name, batch, accumulation in (("whole", 4, 1), ("accumulated", 2, 2)):
        config = load_config("configs/smoke.yaml", base + [f"training.per_device_train_batch_size={batch}",
                                                           f"training.gradient_accumulation_steps={accumulation}"])
        config["engine"] = engine
        runtime.seed_everything(0)
        result = train(config, data, tmp_path / name)
        assert result.global_step == 4
        runs[name] = (loss_log(tmp_path / name), weights(tmp_path / name))

    (log_a, w_a), (log_b, w_b) = runs["whole"], runs["accumulated"]
    assert [e["step"] for e in log_a] == [e["step"] for e in log_b] == [1, 2, 3, 4]
    np.testing.assert_allclose([e["loss"] for e in log_b], [e["loss"] for e in log_a], rtol=1e-5)
    np.testing.assert_allclose([e["grad_norm"] for e in log_b], [e["grad_norm"] for e in log_a], rtol=1e-4)
    for key in w_a:
        np.testing.assert_allclose(w_b[key], w_a[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_save_steps_epoch_means_once_per_epoch_under_gradient_accumulation(tmp_path, char_vocab_dir):
    """3 batches an epoch, accumulation 2: an epoch is 2 optimizer steps (2 + a short last group of
    1), so ``save_steps: epoch`` saves checkpoint-2 and checkpoint-4 (micro-batches counted, it
    saved every 3 optimizer steps: once in two epochs)."""
    data = write_jsonl(tmp_path / "d.jsonl", records(3))
    config = load_config("configs/smoke.yaml", TINY + [f"tokenizer.path={char_vocab_dir}",
                                                        "training.per_device_train_batch_size=1",
                                                        "training.gradient_accumulation_steps=2",
                                                        "training.num_train_epochs=2", "training.save_steps=epoch"])
    result = train(config, data, tmp_path / "run")
    assert result.global_step == 4
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_accumulation_with_article_loss_weight_half_equals_the_whole_batch_on_both_engines(tmp_path, char_vocab_dir):
    """λ = 0.5 sends the ``loss_weights`` column through the Trainer's token count
    (``get_batch_samples``), the compiled ``accumulate`` graph and the eager loss: batch 4 and
    batch 2 x accumulation 2 log the same losses and end with the same weights on each engine, and
    the two engines agree (a count that ignored the weights would scale both eager runs alike,
    which the comparison with the compiled graph's own weighted count catches)."""
    data = write_jsonl(tmp_path / "eight.jsonl", records(8))
    base = TINY + [f"tokenizer.path={char_vocab_dir}", "training.num_train_epochs=2", "training.save_steps=100",
                   "data.summary_only_loss=null", "data.article_loss_weight=0.5"]
    runs = {}
    for engine in ("compiled", "eager"):
        for batch, accumulation in ((4, 1), (2, 2)):
            config = load_config("configs/smoke.yaml", base + [f"training.per_device_train_batch_size={batch}",
                                                               f"training.gradient_accumulation_steps={accumulation}",
                                                               f"engine={engine}"])
            out = tmp_path / f"{engine}-{accumulation}"
            runtime.seed_everything(0)
            assert train(config, data, out).global_step == 4
            runs[engine, accumulation] = (loss_log(out), weights(out))

    ref_log, ref_w = runs["compiled", 1]
    for key, (log_, w) in runs.items():
        assert [e["step"] for e in log_] == [1, 2, 3, 4], key
        # logged losses: 4 decimals (abs); grad norms unrounded; 1e-4 is the engines' agreement
        np.testing.assert_allclose([e["loss"] for e in log_], [e["loss"] for e in ref_log], rtol=1e-4, atol=1e-4,
                                   err_msg=str(key))
        np.testing.assert_allclose([e["grad_norm"] for e in log_], [e["grad_norm"] for e in ref_log], rtol=1e-4,
                                   err_msg=str(key))
        for name in ref_w:
            np.testing.assert_allclose(w[name], ref_w[name], rtol=1e-4, atol=1e-5, err_msg=f"{key} {name}")
