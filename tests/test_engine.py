"""The compiled training engine (ms_gpt2.engine): the same training as the eager Trainer path,
step for step; seeded dropout; exact resume; the switch and what it refuses."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import DEMO_DATA, write_jsonl
from ms_gpt2.infra import runtime
from ms_gpt2.infra.config import load_config
from ms_gpt2.infra.errors import UserError
from ms_gpt2.jobs.train import train

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
    from ms_gpt2.models.gpt2 import GPT2ForSummarization

    runtime.seed_everything(0)
    model = GPT2ForSummarization(GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                                            pad_token_id=0))
    model.train()
    engine = CompiledEngine(model, {}, max_grad_norm=1.0, seed=seed)
    ids = np.random.default_rng(1).integers(1, 40, (2, 12))
    losses = [engine.train_step({"input_ids": ids}, 1e-2, step) for step in range(steps)]
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
    from ms_gpt2.infra.config import load_config as load

    assert load()["engine"] == "compiled"
    assert build_parser().parse_args(["train", "--data", "x", "--output-dir", "y", "--engine", "eager"]).engine == "eager"
    config = load("configs/smoke.yaml", TINY + [f"tokenizer.path={char_vocab_dir}"])
    config["engine"] = "jit"
    with pytest.raises(UserError, match="engine='jit': choose one of compiled, eager"):
        train(config, eight, tmp_path / "a")


def _tiny_engine(accumulation=1, dropout=0.0, seed=0, reduce=None):
    from mindnlp.transformers import GPT2Config

    from ms_gpt2.engine.compiled import CompiledEngine
    from ms_gpt2.models.gpt2 import GPT2ForSummarization

    runtime.seed_everything(0)
    model = GPT2ForSummarization(GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                                            pad_token_id=0))
    model.train()
    return CompiledEngine(model, {"transformer.wte.weight": 0.1}, max_grad_norm=0.5, seed=seed, reduce=reduce,
                          accumulation=accumulation)


def _uneven_batch():
    """4 rows of 12 ids, [PAD]-ended at different lengths: the halves score 16 and 14 tokens."""
    ids = np.random.default_rng(1).integers(1, 40, (4, 12))
    ids[0, 6:] = 0
    ids[3, 4:] = 0
    return ids


def test_accumulate_then_apply_is_the_whole_batch_step():
    """2 micro-batches accumulated then applied == one fused step on both: loss (token mean over the
    whole batch, not the mean of the halves' means), grad norm, weights; the accumulators are zero
    after each apply (step 2 would double-count step 1's gradients otherwise)."""
    ids = _uneven_batch()
    whole, accumulated = _tiny_engine(), _tiny_engine(accumulation=2)
    # lr 1e-3: AdamW moves a weight whose gradient is ~0 by up to lr either way, so float-order
    # noise in such a gradient shows as an lr-sized weight difference (at 1e-2: 1.07e-5, 1 of 4096)
    for step in range(2):
        expected = whole.train_step({"input_ids": ids}, 1e-3, step)
        accumulated.accumulate({"input_ids": ids[:2]}, step, 0)
        accumulated.accumulate({"input_ids": ids[2:]}, step, 1)
        got = accumulated.apply(1e-3)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        assert float(accumulated.step.acc_count.asnumpy()) == 0.0
        assert all(not np.any(g.asnumpy()) for g in accumulated.step.acc_grads)
    w1, w2 = whole.weights(), accumulated.weights()
    for key in w1:
        np.testing.assert_allclose(w2[key], w1[key], rtol=0, atol=1e-5, err_msg=key)
    assert whole.optimizer_steps == accumulated.optimizer_steps == 2


def test_accumulation_reduces_once_per_optimizer_step():
    """The reduce hook sees the group's summed (loss, count, grads) once, in the apply graph: a hook
    that adds one token of zero loss to the count gives sum / (N + 1); per micro-batch it would
    give sum / (N + 2)."""
    from mindspore import nn, ops

    class OneMoreToken(nn.Cell):
        def construct(self, loss_sum, count, grads):
            return loss_sum, ops.add(count, 1.0), grads

    ids = _uneven_batch()
    n = int(np.sum(ids[:, 1:] != 0))
    mean, _ = _tiny_engine().train_step({"input_ids": ids}, 1e-2, 0)
    engine = _tiny_engine(accumulation=2, reduce=OneMoreToken())
    engine.accumulate({"input_ids": ids[:2]}, 0, 0)
    engine.accumulate({"input_ids": ids[2:]}, 0, 1)
    loss, _ = engine.apply(1e-2)
    assert loss == pytest.approx(mean * n / (n + 1), rel=1e-5)


def test_accumulated_dropout_is_seeded_per_micro_batch():
    def run(seed, micro_of_second=1):
        engine = _tiny_engine(accumulation=2, dropout=0.2, seed=seed)
        ids = _uneven_batch()
        out = []
        for step in range(2):
            engine.accumulate({"input_ids": ids[:2]}, step, 0)
            engine.accumulate({"input_ids": ids[2:]}, step, micro_of_second)
            out.append(engine.apply(1e-2))
        return out

    first = run(5)
    assert run(5) == first                                 # bit for bit
    assert run(5, micro_of_second=0) != first              # each micro-batch draws its own masks


def _step_losses(monkeypatch):
    """{global step: sum of the losses training_step returned for it}, either engine: the sum the
    Trainer logs (before rounding it to 4 decimals)."""
    from ms_gpt2.engine.trainer import CompiledTrainerMixin
    from ms_gpt2.jobs.fit import PipelineTrainer

    sums = {}
    for cls in (CompiledTrainerMixin, PipelineTrainer):
        original = cls.training_step

        def recording(self, model, inputs, num_items_in_batch=None, _original=original):
            loss = _original(self, model, inputs, num_items_in_batch)
            step = self.state.global_step + 1
            sums[step] = sums.get(step, 0.0) + float(loss.item())
            return loss

        monkeypatch.setattr(cls, "training_step", recording)
    return sums


def _agree(run, reference, weights_atol=1e-5):
    (log_a, sums_a, w_a), (log_b, sums_b, w_b) = reference, run
    assert [e["step"] for e in log_a] == [e["step"] for e in log_b]
    assert sorted(sums_a) == sorted(sums_b) == [e["step"] for e in log_a]
    np.testing.assert_allclose([sums_b[k] for k in sorted(sums_b)], [sums_a[k] for k in sorted(sums_a)], rtol=1e-5)
    # logged: the same sums rounded to 4 decimals (one unit apart at most, where they straddle a rounding edge)
    np.testing.assert_allclose([e["loss"] for e in log_b], [e["loss"] for e in log_a], rtol=0, atol=1.01e-4)
    np.testing.assert_allclose([e["grad_norm"] for e in log_b], [e["grad_norm"] for e in log_a], rtol=1e-4)
    for key in w_a:
        np.testing.assert_allclose(w_b[key], w_a[key], rtol=0, atol=weights_atol, err_msg=key)


def test_accumulation_equals_the_whole_batch_and_the_eager_engine(eight, char_vocab_dir, tmp_path, monkeypatch):
    """Compiled batch 4 == compiled batch 2 x 2 == eager batch 2 x 2 (dropout 0, clipping and decay on),
    and with a short last group (4 batches of 2 per epoch, accumulation 3: groups of 3 + 1) compiled ==
    eager. Only summaries are scored, so the micro-batches' token counts differ and a mean of
    micro-batch means would not match."""
    base = TINY + [f"tokenizer.path={char_vocab_dir}", "training.num_train_epochs=2", "data.summary_only_loss=true"]
    runs = {}
    for name, engine, batch, accumulation in (("whole", "compiled", 4, 1), ("compiled", "compiled", 2, 2),
                                              ("eager", "eager", 2, 2), ("compiled3", "compiled", 2, 3),
                                              ("eager3", "eager", 2, 3)):
        sums = _step_losses(monkeypatch)
        result = _run(base + [f"training.per_device_train_batch_size={batch}",
                              f"training.gradient_accumulation_steps={accumulation}"], eight, tmp_path / name, engine)
        assert result.global_step == 4
        runs[name] = (_losses(tmp_path / name), dict(sums),
                      load_file(str(result.model_dir / "model.safetensors")))
        monkeypatch.undo()
    assert len({e["loss"] for e in runs["whole"][0]}) == 4                 # it trained: the losses move
    _agree(runs["compiled"], runs["whole"])
    _agree(runs["eager"], runs["compiled"])
    _agree(runs["eager3"], runs["compiled3"])


def test_the_model_gives_up_its_weights_while_the_graph_holds_them():
    """During compiled training the Hugging Face model's copies of the weights are dropped (one
    model's size of memory) and to_model brings back the graph's values, tied LM head included."""
    from mindnlp.transformers import GPT2Config

    from ms_gpt2.engine.compiled import CompiledEngine
    from ms_gpt2.models.gpt2 import GPT2ForSummarization

    runtime.seed_everything(0)
    model = GPT2ForSummarization(GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0))
    model.train()
    engine = CompiledEngine(model, {}, max_grad_norm=1.0)
    engine.train_step({"input_ids": np.random.default_rng(1).integers(1, 40, (2, 12))}, 1e-2, 0)
    engine.release_model(model)
    own = dict(model.named_parameters())
    assert engine.released and all(own[n].numel() == 0 for n in engine.names)
    engine.to_model(model)
    assert not engine.released
    for name, value in engine.weights().items():
        np.testing.assert_array_equal(own[name].detach().numpy(), value, err_msg=name)
    assert model.lm_head.weight is model.transformer.wte.weight


def _tiny_model():
    from mindnlp.transformers import GPT2Config

    from ms_gpt2.models.gpt2 import GPT2ForSummarization

    runtime.seed_everything(0)
    model = GPT2ForSummarization(GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0))
    model.train()
    return model


def test_both_engines_floor_a_weighted_count_below_one_alike():
    """One floor (ms_gpt2.models.gpt2.LOSS_COUNT_FLOOR) for both engines: weights summing to 0.5 give the
    exact weighted mean Σ w·ce / Σ w (the compiled step used to divide by max(Σ w, 1)), all-zero
    weights give 0. Reference: NumPy cross-entropy on the Hugging Face model's logits (rtol 1e-5)."""
    import torch  # mindtorch

    from ms_gpt2.engine.compiled import CompiledEngine

    model = _tiny_model()
    ids = np.random.default_rng(1).integers(1, 40, (2, 12))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids)).logits.numpy().astype(np.float64)
    shifted = logits[:, :-1] - logits[:, :-1].max(-1, keepdims=True)
    ce = np.log(np.exp(shifted).sum(-1)) - np.take_along_axis(shifted, ids[:, 1:, None], -1)[..., 0]   # (B, T-1)
    half = np.zeros(ids.shape, np.float32)
    half[0, 3], half[1, 5:10] = 0.25, 0.05                      # by label position: Σ w = 0.5
    engine = CompiledEngine(model, {}, max_grad_norm=0.0)
    for weights in (half, np.zeros(ids.shape, np.float32)):
        w = weights[:, 1:].astype(np.float64)
        expected = (ce * w).sum() / max(w.sum(), 1e-6)
        with torch.no_grad():
            eager = float(model(input_ids=torch.tensor(ids), labels=torch.tensor(ids),
                                loss_weights=torch.tensor(weights))["loss"])
        compiled = engine.train_step({"input_ids": ids, "loss_weights": weights}, 0.0, 0)[0]  # lr 0: weights kept
        assert eager == pytest.approx(expected, rel=1e-5, abs=1e-7)
        assert compiled == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert expected == 0.0


def test_the_gpt2_graph_refuses_token_type_and_position_ids():
    """Hugging Face's GPT-2 adds wte(token_type_ids) and reads position_ids; the graph computes neither,
    so a batch carrying them is refused in one line rather than trained on without them."""
    from ms_gpt2.engine.compiled import CompiledEngine
    from ms_gpt2.engine.options import EngineError

    engine = CompiledEngine(_tiny_model(), {}, max_grad_norm=1.0)
    ids = np.random.default_rng(1).integers(1, 40, (2, 12))
    engine.train_step({"input_ids": ids, "token_type_ids": None, "position_ids": None}, 1e-3, 0)  # None: absent
    for key in ("token_type_ids", "position_ids"):
        with pytest.raises(EngineError, match=f"the batch carries {key}, which the compiled GPT-2 graph does not "
                                              "compute with .*--engine eager"):
            engine.train_step({"input_ids": ids, key: np.zeros_like(ids)}, 1e-3, 1)


def test_a_save_reads_the_graphs_weights_and_moments_without_copies():
    """optimizer.pt and model.safetensors are written from the graph's own buffers (views on CPU): the
    optimizer's state_dict refers to the graph's moments as torch's refers to its live state, and
    to_model(share=True) gives a released model the graph's weights themselves, until released again."""
    import io
    import types
    import zipfile

    import torch  # mindtorch

    from ms_gpt2.engine.compiled import CompiledEngine
    from ms_gpt2.engine.trainer import EngineAdamW
    from ms_gpt2.infra.compat import parameter_view

    model = _tiny_model()
    engine = CompiledEngine(model, {}, max_grad_norm=1.0)
    engine.train_step({"input_ids": np.random.default_rng(1).integers(1, 40, (2, 12))}, 1e-2, 0)
    engine.release_model(model)
    optimizer = EngineAdamW(model.parameters(), lr=1e-2).attach(types.SimpleNamespace(model=model, _engine=engine))
    state = optimizer.state_dict()
    assert not optimizer.state                                    # nothing kept after the call
    by_index = dict(zip(range(len(engine.names)), [n for n, _ in model.named_parameters()]))
    moments = {n: (m, v) for n, m, v in zip(engine.step.names, engine.step.exp_avg, engine.step.exp_avg_sq)}
    for index, entry in state["state"].items():
        m, v = moments[by_index[index]]
        assert np.shares_memory(entry["exp_avg"].numpy(), parameter_view(m))
        assert np.shares_memory(entry["exp_avg_sq"].numpy(), parameter_view(v))
        assert float(entry["step"]) == 1.0
    written = io.BytesIO()
    torch.save(state, written)
    optimizer.take_state(engine)                                  # copies, as before: the same records
    copied = io.BytesIO()
    torch.save(torch.optim.AdamW.state_dict(optimizer), copied)
    optimizer.release_state()
    with zipfile.ZipFile(written) as a, zipfile.ZipFile(copied) as b:
        assert a.namelist() == b.namelist()
        assert all(a.read(name) == b.read(name) for name in a.namelist())

    engine.to_model(model, share=True)
    own = dict(model.named_parameters())
    assert not engine.released and model.lm_head.weight is model.transformer.wte.weight
    for name, param in zip(engine.step.names, engine.step.weights):
        assert np.shares_memory(own[name].detach().numpy(), parameter_view(param)), name
        assert np.shares_memory(model.state_dict()[name].numpy(), parameter_view(param)), name
    before = {n: own[n].detach().numpy().copy() for n in engine.names}
    engine.train_step({"input_ids": np.random.default_rng(2).integers(1, 40, (2, 12))}, 1e-2, 1)
    moved = [n for n in engine.names if not np.array_equal(own[n].detach().numpy(), before[n])]
    assert moved and set(moved) <= set(engine.names)  # shared: the model follows a step, so the Trainer releases first
    engine.release_model(model)
    assert engine.released and all(own[n].numel() == 0 for n in engine.names)


def test_off_the_cpu_the_engine_gives_copies_not_views(monkeypatch):
    """On a device the graph's buffers are not host memory: to_model(share=True) and a save's
    optimizer state copy (the device branch, forced here on the CPU)."""
    from ms_gpt2.engine import compiled
    from ms_gpt2.infra.compat import parameter_view

    model = _tiny_model()
    engine = compiled.CompiledEngine(model, {}, max_grad_norm=1.0)
    engine.train_step({"input_ids": np.random.default_rng(1).integers(1, 40, (2, 12))}, 1e-2, 0)
    engine.release_model(model)
    monkeypatch.setattr(compiled, "_host_is_device", lambda: False)
    engine.to_model(model, share=True)
    own = dict(model.named_parameters())
    for name, param in zip(engine.step.names, engine.step.weights):
        assert not np.shares_memory(own[name].detach().numpy(), parameter_view(param)), name
        np.testing.assert_array_equal(own[name].detach().numpy(), param.asnumpy(), err_msg=name)
    for entry, m in zip(engine.optimizer_state(views=True).values(), engine.step.exp_avg):
        assert not np.shares_memory(entry["exp_avg"], parameter_view(m))


def test_the_trainer_releases_the_model_before_the_first_step_and_saves_from_the_graph(
        eight, char_vocab_dir, tmp_path, monkeypatch):
    """The model's weights go before the first step runs (not after it); the checkpoint is written
    with the model holding the graph's own buffers (no copy), which it keeps at the end of training,
    and what the checkpoint holds is what model/ holds at the same step, byte for byte."""
    from ms_gpt2.engine.compiled import CompiledEngine
    from ms_gpt2.infra.compat import parameter_view

    events, synced = [], {}
    for method in ("release_model", "to_model", "train_step"):
        original = getattr(CompiledEngine, method)

        def record(self, *args, _original=original, _method=method, **kwargs):
            events.append((_method, kwargs.get("share")) if _method == "to_model" else _method)
            if _method == "to_model":
                synced.update(engine=self, model=args[0])
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(CompiledEngine, method, record)
    overrides = TINY + [f"tokenizer.path={char_vocab_dir}", "training.num_train_epochs=1", "training.save_steps=2"]
    _run(overrides, eight, tmp_path / "run", "compiled")
    # checkpoint-2 is the last step: its sync is the one the end of training needs
    assert events == ["release_model", "train_step", "train_step", ("to_model", True)]
    run = tmp_path / "run"
    assert (run / "checkpoint-2" / "model.safetensors").read_bytes() == (run / "model" / "model.safetensors").read_bytes()
    engine, own = synced["engine"], dict(synced["model"].named_parameters())
    for name, param in zip(engine.step.names, engine.step.weights):
        assert np.shares_memory(own[name].detach().numpy(), parameter_view(param)), name
