"""The tutorial end to end on a handful of examples: data -> tokenizer -> Trainer -> checkpoint ->
reload -> beam search -> ROUGE, plus checkpoint rotation and an exact resume."""
import json
import math
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import DEMO_DATA, write_jsonl
from ms_gpt2.infra import runtime
from ms_gpt2.jobs import tasks
from ms_gpt2.infra.config import load_config
from ms_gpt2.jobs.summarize import Summarizer
from ms_gpt2.jobs.run import OutputDirError
from ms_gpt2.jobs.train import train

# Lengths chosen so each article fits whole both in training (128) and as a prompt (128 - 30).
TINY = ["model.n_positions=160", "model.n_embd=128", "model.n_layer=2", "model.n_head=4", "model.dropout=0.0",
        "data.max_seq_len=128", "data.max_summary_len=30", "data.train_ratio=1.0",
        "data.summary_only_loss=true", "training.per_device_train_batch_size=4",
        "training.learning_rate=5.0e-3", "training.warmup_steps=0", "training.logging_steps=5",
        "generation.max_new_tokens=36"]


@pytest.fixture(scope="module")
def handful(tmp_path_factory):
    """Four short demo records: the first of each of four topics."""
    rows = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")]
    rows = sorted(rows, key=lambda r: len(r["article"]))[:4]
    return write_jsonl(tmp_path_factory.mktemp("data") / "handful.jsonl", rows), rows


def test_trains_until_beam_search_reproduces_a_training_summary(handful, char_vocab_dir, tmp_path):
    path, rows = handful
    runtime.seed_everything(0)
    config = load_config("configs/smoke.yaml", TINY + [f"tokenizer.path={char_vocab_dir}",
                                                       "training.num_train_epochs=30",
                                                       "training.save_total_limit=2"])
    result = train(config, path, tmp_path / "run")

    # checkpoints: one per epoch (save_steps: epoch = 1 step here), only the newest 2 kept
    checkpoints = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-29", "checkpoint-30"]
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        assert (result.model_dir / name).is_file()
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert (saved["eos_token_id"], saved["pad_token_id"]) == (3, 0)  # [SEP], [PAD] survive the Trainer
    log = [json.loads(line) for line in (tmp_path / "run" / "loss_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"] / 4
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000

    # reload from disk and summarize the training articles with beam search
    summarizer = Summarizer.from_pretrained(result.model_dir)  # the run config saved with the model
    assert summarizer.config == config
    summaries = tasks.summarize(summarizer, path, split="all")
    assert [s.reference for s in summaries] == [r["summarization"] for r in rows]
    exact = [s for s in summaries if s.summary == s.reference]
    assert exact, [(s.reference, s.summary) for s in summaries]
    scores = tasks.evaluate(summarizer, path, split="all")
    assert scores["rouge-l"]["f1"] > 0.5 and scores["examples"] == 4
    assert math.isclose(scores["perplexity"], math.exp(scores["loss"]), rel_tol=1e-9)


def test_resume_continues_exactly_where_the_run_stopped(handful, char_vocab_dir, tmp_path):
    """A run interrupted after a checkpoint and resumed ends with the same weights as one that was not."""
    path, _ = handful
    config = load_config("configs/smoke.yaml", TINY + [
        f"tokenizer.path={char_vocab_dir}", "training.per_device_train_batch_size=2",  # 2 shuffled batches/epoch
        "training.num_train_epochs=3", "training.save_steps=2", "training.save_total_limit=5"])

    runtime.seed_everything(0)
    straight = train(config, path, tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]

    # what a crash after step 2 leaves behind: only checkpoint-2
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    with pytest.raises(OutputDirError, match="already holds checkpoints"):
        train(config, path, tmp_path / "b")  # never silently starts over on top of saved work
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint-2"]

    runtime.seed_everything(123)  # resuming restores the RNG state from the checkpoint
    resumed = train(config, path, tmp_path / "b", resume="latest")
    assert resumed.global_step == straight.global_step == 6
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_init_from_a_local_gpt2_checkpoint(handful, tmp_path):
    """model.init_from starts from a checkpoint's weights (lr 0: the saved model must equal them)."""
    import torch  # mindtorch

    from ms_gpt2.models.checkpoints import load_pretrained

    path, _ = handful
    fixture = "tests/fixtures/gpt2-bert-tiny"  # a BERT-vocab GPT-2 saved by PyTorch as pytorch_model.bin
    config = load_config("configs/smoke.yaml", [
        f"model.init_from={fixture}", f"tokenizer.path={fixture}", "data.max_seq_len=64", "data.max_summary_len=20",
        "data.train_ratio=1.0", "training.per_device_train_batch_size=4", "training.num_train_epochs=1",
        "training.learning_rate=0.0", "training.warmup_steps=0"])
    result = train(config, path, tmp_path / "run")
    original, _ = load_pretrained(fixture)
    trained, _ = load_pretrained(result.model_dir)
    want = {k: v.detach().numpy() for k, v in original.state_dict().items()}
    got = {k: v.detach().numpy() for k, v in trained.state_dict().items()}
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert isinstance(trained, torch.nn.Module)
