"""fp16/bf16 in the compiled step (ms_gpt2.models.graphs.precision), on CPU through the emulation: MatMul
inputs and outputs rounded to the low precision, products in float32. The loss scaling (skip and
halve on overflow, grow after the window, every rank skips together, resume restores the scale)
and a tiny model's loss tracking the float32 run."""
import json

import numpy as np
import pytest

from ms_gpt2.infra import runtime

runtime.ensure()

import mindspore  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402

from ms_gpt2.infra.compat import write_parameter  # noqa: E402
from ms_gpt2.models.graphs.precision import EMULATE_ENV, Precision, matmul  # noqa: E402


def _engine(precision=None, reduce=None, accumulation=1):
    from mindnlp.transformers import GPT2Config

    from ms_gpt2.engine.compiled import CompiledEngine
    from ms_gpt2.models.gpt2 import GPT2ForSummarization

    runtime.seed_everything(0)
    model = GPT2ForSummarization(GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0))
    model.train()
    return CompiledEngine(model, {"transformer.wte.weight": 0.1}, max_grad_norm=1.0, seed=0, precision=precision,
                          reduce=reduce, accumulation=accumulation)


def _ids():
    ids = np.random.default_rng(1).integers(1, 40, (4, 12))
    ids[0, 7:] = 0
    return ids


def _train(engine, steps, start=0):
    return [engine.train_step({"input_ids": _ids()}, 1e-2, s) for s in range(start, start + steps)]


def test_the_emulated_matmul_rounds_inputs_and_output():
    a = np.array([[1 + 2**-12, 3.0]], np.float32)       # 1 + 2^-12 is not a float16: it rounds to 1
    b = np.array([[1.0], [2**-11]], np.float32)
    exact = float((a @ b)[0, 0])
    fp16 = float(matmul(Tensor(a), Tensor(b), mindspore.float16, emulate=True).asnumpy()[0, 0])
    assert fp16 == np.float32(np.float16(1.0 + 3 * 2**-11))  # rounded inputs, product rounded to float16
    assert fp16 != exact
    assert float(matmul(Tensor(a), Tensor(b), None, emulate=False).asnumpy()[0, 0]) == exact
    bf16 = float(matmul(Tensor(a), Tensor(b), mindspore.bfloat16, emulate=True).asnumpy()[0, 0])
    assert bf16 == 1.0   # bfloat16 keeps 8 bits: 3 * 2^-11 is lost in the rounded product


def test_fp16_and_bf16_track_the_float32_run_and_cpu_float16_kernels_agree_with_the_emulation():
    fp32 = _train(_engine(), 6)
    for precision, rtol in ((Precision.of(fp16=True, emulate=True), 5e-3), (Precision.of(bf16=True, emulate=True), 3e-2)):
        low = _train(_engine(precision), 6)
        assert all(np.isfinite(norm) for _, norm in low)  # 2^16 fits this model: nothing skipped
        np.testing.assert_allclose([l for l, _ in low], [l for l, _ in fp32], rtol=rtol)
        assert [l for l, _ in low] != [l for l, _ in fp32]   # the MatMuls did round
        assert low[-1][0] < low[0][0] - 0.3                  # and it trains
    # CPU does have float16 MatMul kernels (no bfloat16 ones): the real casts give the emulation's numbers
    real = _train(_engine(Precision.of(fp16=True, emulate=False)), 3)
    emulated = _train(_engine(Precision.of(fp16=True, emulate=True)), 3)
    np.testing.assert_allclose(real, emulated, rtol=1e-6)


def test_overflow_skips_the_step_and_halves_the_scale_then_training_goes_on():
    engine = _engine(Precision.of(fp16=True, emulate=True, init_loss_scale=2.0**40))
    before = engine.weights()
    skipped = _train(engine, 3)
    assert all(not np.isfinite(norm) for _, norm in skipped)     # 2^40 overflows float16 gradients
    assert engine.loss_scale_state() == {"scale": 2.0**37, "good_steps": 0}
    assert engine.optimizer_steps == 0 and engine.optimizer_state() == {}
    assert not any(m.asnumpy().any() or v.asnumpy().any() for m, v in zip(engine.step.exp_avg, engine.step.exp_avg_sq))
    for name, value in engine.weights().items():                 # weights untouched, decay included
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    taken = _train(engine, 30, start=3)
    first = next(i for i, (_, norm) in enumerate(taken) if np.isfinite(norm))
    assert all(np.isfinite(norm) for _, norm in taken[first:])   # once it fits, it stays
    assert engine.optimizer_steps == 30 - first
    assert engine.loss_scale_state()["scale"] == 2.0 ** (37 - first)
    # the first step taken is the float32 engine's first step, at that scale
    fp32 = _train(_engine(), 1)[0]
    assert taken[first][0] == pytest.approx(fp32[0], rel=1e-3)


def test_the_scale_doubles_after_a_window_of_clean_steps():
    engine = _engine(Precision.of(fp16=True, emulate=True, init_loss_scale=2.0**10, scale_window=3))
    _train(engine, 2)
    assert engine.loss_scale_state() == {"scale": 2.0**10, "good_steps": 2}
    _train(engine, 1, start=2)
    assert engine.loss_scale_state() == {"scale": 2.0**11, "good_steps": 0}
    _train(engine, 3, start=3)
    assert engine.loss_scale_state() == {"scale": 2.0**12, "good_steps": 0}


class _OtherRankOverflows(nn.Cell):
    """A data-parallel reduce in which another rank's gradients overflowed at chosen steps: the sum
    of this rank's finite gradients and that rank's inf."""

    def __init__(self):
        super().__init__()
        self.other = mindspore.Parameter(Tensor(0.0, mindspore.float32), name="other_rank", requires_grad=False)

    def construct(self, loss_sum, count, grads):
        return loss_sum, count, (ops.add(grads[0], self.other),) + grads[1:]


def test_every_rank_skips_when_one_overflows_and_accumulation_skips_the_whole_group():
    for accumulation in (1, 2):
        reduce = _OtherRankOverflows()
        engine = _engine(Precision.of(fp16=True, emulate=True), reduce=reduce, accumulation=accumulation)
        ids = _ids()

        def step(index):
            if accumulation == 1:
                return engine.train_step({"input_ids": ids}, 1e-2, index)[1]
            for micro in range(2):
                engine.accumulate({"input_ids": ids[2 * micro:2 * micro + 2]}, index, micro)
            return engine.apply(1e-2)[1]

        assert np.isfinite(step(0))
        weights, state = engine.weights(), engine.optimizer_state()
        assert all(entry["exp_avg"].any() and entry["exp_avg_sq"].any() for entry in state.values())  # not zero
        write_parameter(reduce.other, np.inf)
        assert not np.isfinite(step(1))                       # this rank's own gradients were finite
        assert engine.loss_scale_state()["scale"] == 2.0**15 and engine.optimizer_steps == 1
        for name, value in engine.weights().items():
            np.testing.assert_array_equal(value, weights[name], err_msg=name)
        # after a taken step the moments are not zero: the skip must leave both exactly as they were
        # (AdamW's decay of m and v is what betas := 1 holds back in TrainStep.update)
        for name, entry in engine.optimizer_state().items():
            assert entry["step"] == state[name]["step"] == 1.0
            np.testing.assert_array_equal(entry["exp_avg"], state[name]["exp_avg"], err_msg=name)
            np.testing.assert_array_equal(entry["exp_avg_sq"], state[name]["exp_avg_sq"], err_msg=name)
        write_parameter(reduce.other, 0.0)
        assert np.isfinite(step(2)) and engine.optimizer_steps == 2   # the accumulators were emptied


FP16_TRAINER = ["model.n_positions=64", "model.n_embd=32", "model.n_layer=2", "model.n_head=2", "model.dropout=0.0",
                "data.max_seq_len=64", "data.max_summary_len=30", "data.train_ratio=1.0",
                "training.per_device_train_batch_size=4", "training.learning_rate=5.0e-3", "training.logging_steps=1",
                "training.save_steps=2", "training.max_steps=4", "training.fp16=true"]


def _trainer_run(out, vocab_dir, overrides=(), resume=None):
    """ms_gpt2's train() on the compiled engine, fp16 emulated (the caller sets EMULATE_ENV); -> the
    loss log's entries, parsed strictly (Infinity/NaN are not JSON)."""
    from conftest import DEMO_DATA
    from ms_gpt2.infra.config import load_config
    from ms_gpt2.jobs.train import train

    config = load_config("configs/smoke.yaml", FP16_TRAINER + [f"tokenizer.path={vocab_dir}", *overrides])
    config["engine"] = "compiled"
    runtime.seed_everything(0)
    train(config, DEMO_DATA, out, resume=resume)
    return [json.loads(line, parse_constant=_not_json) for line in (out / "loss_log.jsonl").read_text().splitlines()]


def _not_json(token):
    raise ValueError(f"loss_log.jsonl holds {token}, which is not JSON")


def test_fp16_training_logs_saves_and_resumes_the_loss_scale(tmp_path, monkeypatch, char_vocab_dir):
    """Through the Trainer: the scale and skipped steps are logged, optimizer.pt carries the scale,
    and --resume continues from it with the uninterrupted run's losses."""
    import torch  # mindtorch

    monkeypatch.setenv(EMULATE_ENV, "1")

    def run(out, resume=None, steps=4):
        return _trainer_run(out, char_vocab_dir, [f"training.max_steps={steps}"], resume=resume)

    whole = run(tmp_path / "whole")
    assert [e["loss_scale"] for e in whole] == [2.0**16] * 4 and [e["skipped_steps"] for e in whole] == [0] * 4
    saved = torch.load(str(tmp_path / "whole" / "checkpoint-2" / "optimizer.pt"), weights_only=False)
    assert saved["ms_gpt2_loss_scale"] == {"scale": 2.0**16, "good_steps": 2}

    run(tmp_path / "cut", steps=2)
    ckpt = tmp_path / "cut" / "checkpoint-2" / "optimizer.pt"
    state = torch.load(str(ckpt), weights_only=False)
    state["ms_gpt2_loss_scale"] = {"scale": 2.0**12, "good_steps": 0}   # as if it had overflowed earlier
    torch.save(state, str(ckpt))
    resumed = run(tmp_path / "cut", resume=tmp_path / "cut" / "checkpoint-2")
    after = [e for e in resumed if e["step"] > 2]
    assert [e["loss_scale"] for e in after] == [2.0**12] * 2      # restored, not the initial 2^16
    np.testing.assert_allclose([e["loss"] for e in after], [e["loss"] for e in whole[2:]], rtol=1e-3)


def test_compiled_fp16_ignores_the_grad_scaler_accelerate_builds_on_a_device(tmp_path, monkeypatch, char_vocab_dir):
    """On npu/cuda accelerate gives an fp16 Trainer a GradScaler and native autocast (its device branch,
    accelerator.py; CPU gets neither). Given them here, the compiled engine must train exactly as
    without them: the graph scales its own loss. (Before: scaler.step(EngineAdamW) raised
    "AssertionError: Attempted step but _scale is None".)"""
    from accelerate import Accelerator
    from mindtorch.npu.amp import GradScaler  # what accelerate's get_grad_scaler builds on npu

    monkeypatch.setenv(EMULATE_ENV, "1")
    plain = _trainer_run(tmp_path / "plain", char_vocab_dir, ["training.max_steps=3", "training.save_steps=1000"])
    real_init = Accelerator.__init__

    def as_on_a_device(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        if self.state.mixed_precision == "fp16":
            self.scaler, self.native_amp = GradScaler(), True

    monkeypatch.setattr(Accelerator, "__init__", as_on_a_device)
    device = _trainer_run(tmp_path / "device", char_vocab_dir, ["training.max_steps=3", "training.save_steps=1000"])
    assert [e["step"] for e in device] == [1, 2, 3]
    assert [e["loss"] for e in device] == [e["loss"] for e in plain]           # the very same run
    assert [e["grad_norm"] for e in device] == [e["grad_norm"] for e in plain]
    assert [e["skipped_steps"] for e in device] == [0, 0, 0] and device[-1]["learning_rate"] > 0   # steps taken


def test_a_skipped_step_holds_the_learning_rate_and_logs_a_null_norm(tmp_path, monkeypatch, char_vocab_dir):
    """Hugging Face's Trainer steps its scheduler only if not accelerator.optimizer_step_was_skipped:
    the graph's skip is reported there, so warm-up counts the updates taken. The skipped step's
    grad_norm is null and "skipped" true in loss_log.jsonl (strict JSON: no Infinity)."""
    from ms_gpt2.engine.compiled import CompiledEngine
    from ms_gpt2.engine.trainer import CompiledTrainerMixin

    monkeypatch.setenv(EMULATE_ENV, "1")
    reduce = _OtherRankOverflows()              # the overflow is forced at step index 2 (the third step)
    monkeypatch.setattr(CompiledTrainerMixin, "engine_reduce", reduce)
    real_step = CompiledEngine.train_step

    def train_step(self, batch, lr, step_index):
        write_parameter(reduce.other, np.inf if step_index == 2 else 0.0)
        return real_step(self, batch, lr, step_index)

    monkeypatch.setattr(CompiledEngine, "train_step", train_step)
    log = _trainer_run(tmp_path / "run", char_vocab_dir, ["training.max_steps=5", "training.save_steps=1000",
                                                          "training.warmup_steps=10"])
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5]
    assert [e.get("skipped", False) for e in log] == [False, False, True, False, False]
    assert log[2]["grad_norm"] is None and all(e["grad_norm"] > 0 for e in log[:2] + log[3:])
    assert [e["skipped_steps"] for e in log] == [0, 0, 1, 1, 1]
    # linear warm-up over 10 updates from 5e-3: the lr the step ran at, logged; it waits at the skip
    taken_before = [0, 1, 2, 2, 3]
    np.testing.assert_allclose([e["learning_rate"] for e in log], [5e-3 * k / 10 for k in taken_before], rtol=1e-6)


def test_bert_graph_in_fp16_and_bf16_tracks_float32():
    """The same switch on BERT's graph (every MatMul low, the rest float32; fp16 loss-scaled)."""
    from mindnlp.transformers import BertConfig, BertForPreTraining

    from ms_gpt2.engine.compiled import CompiledEngine

    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(5, 60, (3, 16)), "token_type_ids": np.repeat([[0] * 8 + [1] * 8], 3, 0),
             "attention_mask": np.ones((3, 16), int), "next_sentence_label": np.array([0, 1, 1]),
             "labels": np.where(rng.random((3, 16)) < 0.3, rng.integers(5, 60, (3, 16)), -100)}

    def losses(precision):
        runtime.seed_everything(0)
        model = BertForPreTraining(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=64, max_position_embeddings=32,
                                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
        model.train()
        engine = CompiledEngine(model, {}, max_grad_norm=1.0, precision=precision)
        return [engine.train_step(batch, 1e-3, s)[0] for s in range(5)]

    fp32 = losses(None)
    for precision, rtol in ((Precision.of(fp16=True, emulate=True), 5e-3), (Precision.of(bf16=True, emulate=True), 3e-2)):
        low = losses(precision)
        np.testing.assert_allclose(low, fp32, rtol=rtol)
        assert low != fp32 and low[-1] < low[0]


def test_the_loss_log_writes_strict_json_whatever_the_trainer_logs(tmp_path):
    """A value that is not finite (the eager engine's overflowed norm, a diverged loss) is null."""
    from types import SimpleNamespace

    from ms_gpt2.jobs.fit import LossLog

    LossLog(tmp_path / "log.jsonl").on_log(None, SimpleNamespace(global_step=3), None,
                                           logs={"loss": float("nan"), "grad_norm": float("inf"), "epoch": 0.5})
    entry = json.loads((tmp_path / "log.jsonl").read_text(), parse_constant=_not_json)
    assert entry == {"step": 3, "epoch": 0.5, "loss": None, "learning_rate": None, "grad_norm": None}
