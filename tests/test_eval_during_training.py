"""Evaluation during training (training.eval_strategy): every job scores its held-out split with its own
held-out code, logs eval_* beside the training loss, keeps and loads the best checkpoint, and writes
TensorBoard scalars; settings that would do nothing are refused in one line.

One tiny run per engine (1 layer, width 32, 6 training + 2 held-out records, 6 steps) serves several
tests: evaluated at steps 2, 4, 6 with checkpoints every 2 steps, save_total_limit 2,
load_best_model_at_end with greater_is_better (so the best is the first evaluation, not the last), and
dropout on (an evaluation that left the model in eval mode would change the eager run's losses)."""
import importlib.util
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import DEMO_DATA, write_jsonl
from ms_gpt2 import cli
from ms_gpt2.infra import runtime
from ms_gpt2.infra.config import load_config
from ms_gpt2.jobs.train import train

HAVE_TBX = importlib.util.find_spec("tensorboardX") is not None
LAMBDA = 0.5
TINY = ["model.n_positions=64", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "model.dropout=0.1",
        "data.max_seq_len=64", "data.max_summary_len=20", "data.train_ratio=0.75", "data.summary_only_loss=null",
        f"data.article_loss_weight={LAMBDA}", "training.per_device_train_batch_size=2", "training.num_train_epochs=2",
        "training.learning_rate=1.0e-3", "training.warmup_steps=2", "training.logging_steps=1",
        "training.save_steps=2", "training.save_total_limit=2"]
EVAL = ["training.eval_strategy=steps", "training.eval_steps=2", "training.load_best_model_at_end=true",
        "training.metric_for_best_model=loss", "training.greater_is_better=true"]


def eight_records():
    return [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")][:8]


def entries(run_dir):
    return [json.loads(line) for line in (run_dir / "loss_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", params=["compiled", "eager"])
def runs(request, tmp_path_factory, char_vocab_dir):
    """(engine, the run with evaluation, the same run without) on the same seed."""
    tmp = tmp_path_factory.mktemp(f"eval-{request.param}")
    data = write_jsonl(tmp / "eight.jsonl", eight_records())
    out = {}
    for name, extra in (("eval", EVAL + (["training.report_to=tensorboard"] if HAVE_TBX else [])), ("plain", [])):
        config = load_config("configs/smoke.yaml", TINY + [f"tokenizer.path={char_vocab_dir}", *extra])
        config["engine"] = request.param
        runtime.setup("cpu", seed=0)
        out[name] = train(config, data, tmp / name).output_dir
    return request.param, out["eval"], out["plain"]


def independent_heldout_loss(checkpoint):
    """The λ-weighted held-out loss of a checkpoint's weights: a plain Hugging Face GPT2LMHeadModel in eval
    mode, its logits scored in NumPy (Σ w·nll / Σ w over the non-[PAD] next tokens)."""
    import torch
    from mindnlp.transformers import GPT2LMHeadModel

    from ms_gpt2.data.examples import encode_example
    from ms_gpt2.data.tokenization import load_wordpiece

    tokenizer = load_wordpiece(checkpoint)
    model = GPT2LMHeadModel.from_pretrained(str(checkpoint), local_files_only=True).eval()
    total = weight = 0.0
    for record in eight_records()[6:]:  # train_ratio 0.75 of 8: the last 2 are held out
        ex = encode_example(tokenizer, record["article"], record["summarization"], 64, article_loss_weight=LAMBDA)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(ex["input_ids"][None].astype(np.int64)),
                           attention_mask=torch.tensor(ex["attention_mask"][None].astype(np.int64))).logits
        logits = logits.numpy()[0, :-1].astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        targets = ex["labels"][1:]
        w = ex["loss_weights"][1:].astype(np.float64) * (targets != tokenizer.pad_token_id)
        total -= float((w * logp[np.arange(len(targets)), targets]).sum())
        weight += float(w.sum())
    return total / weight


def test_eval_loss_is_logged_at_each_eval_step_and_is_the_weighted_heldout_loss_of_the_checkpoint(runs):
    engine, run, _ = runs
    evals = [e for e in entries(run) if "eval_loss" in e]
    assert [e["step"] for e in evals] == [2, 4, 6]
    assert all(set(e) == {"step", "epoch", "eval_loss", "eval_perplexity"} for e in evals)  # no timings
    for e in evals:
        assert e["eval_perplexity"] == pytest.approx(np.exp(e["eval_loss"]), rel=1e-9)
    by_step = {e["step"]: e["eval_loss"] for e in evals}
    for step in (2, 6):  # the checkpoints save_total_limit=2 keeps: the best and the last
        want = independent_heldout_loss(run / f"checkpoint-{step}")
        assert by_step[step] == pytest.approx(want, abs=1e-5), (engine, step)
    assert len(set(by_step.values())) == 3  # the weights moved between evaluations


def test_training_goes_on_exactly_as_without_evaluation(runs):
    """After each evaluation the engine goes on with its own weights and AdamW state, the model back in
    train mode (dropout 0.1): every logged training loss, grad norm and learning rate is the plain run's."""
    _, run, plain = runs
    trained = [e for e in entries(run) if "loss" in e]
    assert len(trained) == 6 and trained == entries(plain)


def test_the_best_checkpoint_is_kept_and_is_the_final_model(runs):
    engine, run, plain = runs
    evals = {e["step"]: e["eval_loss"] for e in entries(run) if "eval_loss" in e}
    best = max(evals, key=evals.get)  # greater_is_better: the highest held-out loss
    assert best == 2 != max(evals)  # the case where the best is not the last evaluation
    state = json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(run / "checkpoint-2")  # its final name, not the staging one
    assert state["best_metric"] == pytest.approx(evals[2])
    # save_total_limit=2 rotated checkpoint-4 away, never the best
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-6"]
    final, best_weights = load_file(str(run / "model" / "model.safetensors")), \
        load_file(str(run / "checkpoint-2" / "model.safetensors"))
    assert set(best_weights) <= set(final)
    for name, value in best_weights.items():
        np.testing.assert_array_equal(final[name], value, err_msg=f"{engine}: {name}")
    last = load_file(str(plain / "model" / "model.safetensors"))  # the run's last weights
    assert any(not np.array_equal(last[n], v) for n, v in best_weights.items())
    assert (run / "loss_curve.png").stat().st_size > 1000


@pytest.mark.skipif(not HAVE_TBX, reason="tensorboardX is not installed (pip install tensorboardX)")
def test_report_to_tensorboard_writes_the_logged_scalars(runs):
    engine, run, _ = runs
    scalars = read_event_scalars(run / "runs")
    logged = entries(run)
    for key, tag in (("loss", "train/loss"), ("grad_norm", "train/grad_norm"),
                     ("learning_rate", "train/learning_rate"), ("eval_loss", "eval/loss"),
                     ("eval_perplexity", "eval/perplexity")):
        want = [(e["step"], e[key]) for e in logged if key in e]
        got = scalars[tag]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6, err_msg=tag)  # float32


def test_overwrite_clears_the_earlier_runs_event_files(tmp_path):
    """--overwrite starts a fresh run: TensorBoard must not show the earlier run's curves beside it."""
    from ms_gpt2.jobs.run import start

    stale = tmp_path / "runs" / "Jan01_00-00-00_host" / "events.out.tfevents.1.host"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    start(tmp_path, resume=None, overwrite=True)
    assert not (tmp_path / "runs").exists()


def read_event_scalars(log_root) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the TFRecord event files under ``log_root`` (length, crc, Event, crc)."""
    from tensorboardX.proto import event_pb2

    files = sorted(log_root.glob("*/events.out.tfevents.*"))
    assert files, f"no event file under {log_root}"
    scalars = {}
    for path in files:
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_pretrain_clm_logs_its_heldout_loss_every_epoch(tmp_path, capsys):
    from test_pretrain import TINY_PT, _independent_heldout_loss, _sets

    run = tmp_path / "pt"
    assert cli.main(["pretrain", "--data", DEMO_DATA, "--text-field", "article", "--output-dir", str(run),
                     "--engine", "eager", "--set", "tokenizer.vocab_size=500",
                     *_sets(TINY_PT + ["training.num_train_epochs=2", "training.eval_strategy=epoch",
                                       "training.eval_on_start=true"])]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    per_epoch = out["global_step"] // 2
    evals = [e for e in entries(run) if "eval_loss" in e]
    # eval_on_start: the initial weights (step 0); epoch: once per epoch, as save_steps: epoch
    assert [e["step"] for e in evals] == [0, per_epoch, 2 * per_epoch]
    assert evals[0]["eval_loss"] > evals[1]["eval_loss"] > evals[2]["eval_loss"]
    rows = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")]
    want, _ = _independent_heldout_loss(run / "model", [r["article"] for r in rows[-6:]], 32)
    assert evals[-1]["eval_loss"] == pytest.approx(want, abs=1e-5)  # the last evaluation: the final model
    # = eval.json's (its batches are 16 blocks, the evaluation's 8: float32 batch means, ~1e-6 apart)
    assert evals[-1]["eval_loss"] == pytest.approx(out["eval"]["loss"], abs=1e-5)


def test_pretrain_mlm_nsp_logs_mlm_and_nsp_losses_and_accuracies(tmp_path, char_vocab_dir, capsys):
    from test_bert_pretraining import pretrain_argv

    data = tmp_path / "articles.jsonl"
    data.write_text("".join(open(DEMO_DATA, encoding="utf-8").readlines()[:10]), encoding="utf-8")
    run = tmp_path / "mlm"
    sets = ["model.n_positions=48", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "data.max_seq_len=48",
            "training.per_device_train_batch_size=8", "training.num_train_epochs=1", "training.warmup_steps=0",
            "pretrain.eval_fraction=0.3", "training.eval_strategy=steps", "training.eval_steps=1"]
    assert cli.main(pretrain_argv(run, data, sets, "--text-field", "article", "--tokenizer", str(char_vocab_dir),
                                  "--engine", "eager")) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    evals = [e for e in entries(run) if "eval_loss" in e]
    assert [e["step"] for e in evals] == list(range(1, out["global_step"] + 1)) and len(evals) > 1
    names = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy")
    assert all(set(e) == {"step", "epoch", *(f"eval_{n}" for n in names)} for e in evals)
    for e in evals:
        assert e["eval_loss"] == pytest.approx(e["eval_mlm_loss"] + e["eval_nsp_loss"], abs=1e-9)
    assert len({e["eval_loss"] for e in evals}) == len(evals)  # each evaluation saw the weights of its step
    for n in names:  # the last evaluation scored the final model: eval.json's held-out scores
        assert evals[-1][f"eval_{n}"] == pytest.approx(out["eval"]["eval"][n], abs=1e-6), n


def test_finetune_bert_logs_its_heldout_pair_loss_and_accuracy(tmp_path, char_vocab_dir, capsys):
    data = write_jsonl(tmp_path / "eight.jsonl", eight_records())
    run = tmp_path / "ft"
    argv = ["finetune-bert", "--device", "cpu", "--data", str(data), "--output-dir", str(run),
            "--tokenizer", str(char_vocab_dir)]
    for item in ["model.n_positions=64", "model.n_embd=32", "model.n_layer=1", "model.n_head=2",
                 "data.max_seq_len=64", "data.train_ratio=0.75", "training.per_device_train_batch_size=4",
                 "training.num_train_epochs=2", "training.eval_strategy=epoch"]:
        argv += ["--set", item]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    evals = [e for e in entries(run) if "eval_loss" in e]
    assert [e["step"] for e in evals] == [out["global_step"] // 2, out["global_step"]]
    assert set(evals[-1]) == {"step", "epoch", "eval_loss", "eval_accuracy"}
    assert evals[-1]["eval_loss"] == pytest.approx(out["eval"]["eval"]["loss"], abs=1e-6)
    assert evals[-1]["eval_accuracy"] == out["eval"]["eval"]["accuracy"]


REFUSED = [
    (["training.eval_strategy=steps", "data.train_ratio=1.0"], "training.eval_strategy=steps: data.train_ratio=1.0"),
    (["training.eval_strategy=sometimes"], "training.eval_strategy=sometimes: must be one of no, steps, epoch"),
    (["training.load_best_model_at_end=true"], "training.load_best_model_at_end=true applies to evaluations during "
                                               "training, and there are none: set training.eval_strategy"),
    (["training.eval_steps=2"], "training.eval_steps=2 applies to evaluations during training"),
    (["training.metric_for_best_model=loss"], "training.metric_for_best_model=loss applies to evaluations"),
    (["training.eval_strategy=steps", "training.metric_for_best_model=rouge"],
     "training.metric_for_best_model=rouge: this job's held-out metrics are loss, perplexity"),
    (["training.eval_strategy=steps", "training.eval_steps=2", "training.save_steps=3",
      "training.load_best_model_at_end=true"], "save_steps (3) must be a multiple of the evaluation interval (2"),
    (["training.eval_accumulation_steps=2"], "training.eval_accumulation_steps=2: it moves gathered predictions"),
    (["training.batch_eval_metrics=true"], "training.batch_eval_metrics=true: it calls compute_metrics"),
    (["training.fp16_full_eval=true"], "training.fp16_full_eval=true"),
    (["training.report_to=wandb"], "training.report_to=wandb: ms_gpt2 logs to loss_log.jsonl"),
]


@pytest.mark.parametrize("settings, says", REFUSED, ids=[s[0] for s, _ in REFUSED])
def test_evaluation_settings_that_cannot_work_are_refused_in_one_line(settings, says, tmp_path, char_vocab_dir,
                                                                      capsys):
    data = write_jsonl(tmp_path / "eight.jsonl", eight_records())
    argv = ["train", "--config", "configs/smoke.yaml", "--data", str(data), "--output-dir", str(tmp_path / "out"),
            "--device", "cpu", "--engine", "eager", "--tokenizer", str(char_vocab_dir)]
    for item in TINY + settings:
        argv += ["--set", item]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("ms-gpt2: error:")]
    assert len(lines) == 1 and says in lines[0], err
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_report_to_tensorboard_without_tensorboardx_says_what_to_install(tmp_path, capsys, monkeypatch):
    from ms_gpt2.engine import options

    monkeypatch.setattr(options, "tensorboard_writer", lambda: False)
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--config", "configs/smoke.yaml", "--data", DEMO_DATA, "--output-dir",
                  str(tmp_path / "out"), "--device", "cpu", "--set", "training.report_to=tensorboard"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "training.report_to=tensorboard" in err and "pip install tensorboardX" in err
    assert not (tmp_path / "out").exists()  # before any work


def test_the_loss_log_reader_and_curve_take_eval_entries(tmp_path):
    from ms_gpt2.jobs.fit import plot_loss_curve, read_loss_log

    path = tmp_path / "loss_log.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in [
        {"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 2, "eval_loss": 2.75, "eval_perplexity": 15.6},
        {"step": 3, "loss": 2.0}, {"step": 4, "loss": 1.5}, {"step": 4, "eval_loss": 2.25}]))
    assert read_loss_log(path) == {1: 3.0, 2: 2.5, 3: 2.0, 4: 1.5}
    assert read_loss_log(path, "eval_loss") == {2: 2.75, 4: 2.25}
    assert plot_loss_curve(path, tmp_path / "curve.png").stat().st_size > 1000
