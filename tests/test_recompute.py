"""Recomputation on the compiled engine (``training.gradient_checkpointing``): each block is
recomputed in the graph's backward pass, with the same losses, gradients and weights as without;
the Trainer switch reaches the graph; the graph really is built with recomputation."""
import glob
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from ms_gpt2.infra import runtime
from ms_gpt2.infra.config import load_config
from ms_gpt2.jobs.train import train
from test_engine import TINY as ENGINE_TINY, eight  # noqa: F401  (eight: the shared data fixture)

# Tiny Trainer runs: tests/test_engine.py's (8 short records, 4 per batch, 2 steps per epoch,
# clipping and weight decay on), with dropout 0.1 so that the recomputed forward must replay the masks.
TINY = ENGINE_TINY + ["model.dropout=0.1", "training.warmup_steps=2"]  # later overrides win


def _tiny_engine(recompute, accumulation=1, dropout=0.1):
    from mindnlp.transformers import GPT2Config

    from ms_gpt2.engine.compiled import CompiledEngine
    from ms_gpt2.models.gpt2 import GPT2ForSummarization

    runtime.seed_everything(0)
    model = GPT2ForSummarization(GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                                            pad_token_id=0))
    model.train()
    return CompiledEngine(model, {"transformer.wte.weight": 0.1}, max_grad_norm=0.5, seed=7,
                          accumulation=accumulation, recompute=recompute)


def _batch():
    ids = np.random.default_rng(1).integers(1, 40, (4, 12))
    ids[0, 6:] = 0   # [PAD]-ended rows: the padding mask and the ignored labels take part too
    ids[3, 4:] = 0
    return ids


def _train(recompute, steps=4):
    engine = _tiny_engine(recompute)
    ids = _batch()
    out = [engine.train_step({"input_ids": ids}, 1e-2, step) for step in range(steps)]
    return out, engine.weights()


def _accumulate(recompute, steps=2):
    engine = _tiny_engine(recompute, accumulation=2)
    ids, out = _batch(), []
    for step in range(steps):
        engine.accumulate({"input_ids": ids[:2]}, step, 0)
        engine.accumulate({"input_ids": ids[2:]}, step, 1)
        out.append(engine.apply(1e-2))
    return out, engine.weights()


# Recomputation replays the same arithmetic on the same inputs (the dropout keep-masks are graph
# inputs), so on CPU the results are bit-identical (measured); rtol 1e-5 only leaves room for a
# backend that schedules the recomputed float ops differently.
RTOL = 1e-5


@pytest.mark.parametrize("run", [_train, _accumulate], ids=["fused", "accumulate"])
def test_recompute_gives_the_same_losses_grad_norms_and_weights(run):
    (plain, w_plain), (recomputed, w_recomputed) = run(False), run(True)
    np.testing.assert_allclose(recomputed, plain, rtol=RTOL)      # (loss, grad norm) per step
    for key in w_plain:
        np.testing.assert_allclose(w_recomputed[key], w_plain[key], rtol=RTOL, atol=0, err_msg=key)
    assert len({loss for loss, _ in plain}) == len(plain)          # it trained: the losses move


def test_dropout_acts_in_these_runs():
    first = _tiny_engine(False).train_step({"input_ids": _batch()}, 1e-2, 0)
    assert _tiny_engine(False, dropout=0.0).train_step({"input_ids": _batch()}, 1e-2, 0) != first


def _recompute_nodes(engine, ir_dir) -> int:
    """How many nodes of ``engine``'s compiled step MindSpore marked for recomputation: the graph is
    compiled (its first step) with IR dumping on, and the ``recompute: Bool(1)`` attributes of its
    add_recomputation pass are counted."""
    import mindspore

    mindspore.set_context(save_graphs=True, save_graphs_path=str(ir_dir))
    try:
        engine.train_step({"input_ids": _batch()}, 1e-2, 0)
    finally:
        mindspore.set_context(save_graphs=False)
    passes = glob.glob(str(ir_dir / "**" / "*add_recomputation*.ir"), recursive=True)
    assert passes, f"no add_recomputation pass dumped under {ir_dir}"
    return sum(open(path, encoding="utf-8", errors="replace").read().count("recompute: Bool(1)") for path in passes)


def test_the_graph_is_built_with_recomputed_blocks(tmp_path):
    """Fails if recompute is dropped anywhere between the switch and MindSpore's graph: the config,
    each Block cell's recompute marking (the scope and flag Cell.recompute() sets, which the graph
    compiler reads), and the compiled graph's recompute nodes."""
    on, off = _tiny_engine(True), _tiny_engine(False)
    assert on.graph.cfg.recompute and not off.graph.cfg.recompute
    for block in on.step.net.blocks:
        assert block._scope.startswith("recompute_") and block.get_flags().get("output_no_recompute")
    for block in off.step.net.blocks:
        assert not (block._scope or "").startswith("recompute_") and not block.get_flags().get("output_no_recompute")
    assert _recompute_nodes(off, tmp_path / "off") == 0
    assert _recompute_nodes(on, tmp_path / "on") > 0


def _step_losses(monkeypatch, checkpointing):
    """{global step: the loss training_step returned} (the Trainer logs it rounded to 4 decimals);
    ``checkpointing`` gets the model's ``is_gradient_checkpointing`` at each step."""
    from ms_gpt2.engine.trainer import CompiledTrainerMixin
    from ms_gpt2.jobs.fit import PipelineTrainer

    losses = {}
    for cls in (CompiledTrainerMixin, PipelineTrainer):
        original = cls.training_step

        def recording(self, model, inputs, num_items_in_batch=None, _original=original):
            checkpointing.add(model.is_gradient_checkpointing)
            loss = _original(self, model, inputs, num_items_in_batch)
            losses[self.state.global_step + 1] = float(loss.item())
            return loss

        monkeypatch.setattr(cls, "training_step", recording)
    return losses


def _trainer_run(overrides, data, out, engine, monkeypatch):
    from ms_gpt2.engine.trainer import CompiledTrainerMixin

    built, checkpointing = [], set()
    original = CompiledTrainerMixin._build_engine

    def recording(self):
        built.append(original(self))
        return built[-1]

    monkeypatch.setattr(CompiledTrainerMixin, "_build_engine", recording)
    losses = _step_losses(monkeypatch, checkpointing)
    config = load_config("configs/smoke.yaml", overrides)
    config["engine"] = engine
    runtime.seed_everything(0)
    result = train(config, data, out)
    monkeypatch.undo()
    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    return built, checkpointing, dict(losses), log, load_file(str(result.model_dir / "model.safetensors"))


def test_trainer_gradient_checkpointing_recomputes_in_the_compiled_graph(eight, char_vocab_dir, tmp_path, monkeypatch):
    """training.gradient_checkpointing=true builds the engine with recompute on; the steps' losses,
    grad norms and the final weights are those of the run without it (dropout 0.1)."""
    base = TINY + [f"tokenizer.path={char_vocab_dir}", "training.num_train_epochs=2"]
    plain = _trainer_run(base, eight, tmp_path / "plain", "compiled", monkeypatch)
    checkpointed = _trainer_run(base + ["training.gradient_checkpointing=true"], eight, tmp_path / "gc",
                                "compiled", monkeypatch)
    assert [engine.graph.cfg.recompute for engine in plain[0]] == [False]
    assert [engine.graph.cfg.recompute for engine in checkpointed[0]] == [True]
    # the Trainer also enabled it on the Hugging Face model, which the compiled step never runs
    assert plain[1] == {False} and checkpointed[1] == {True}
    (_, _, sums_a, log_a, w_a), (_, _, sums_b, log_b, w_b) = plain, checkpointed
    assert sorted(sums_a) == sorted(sums_b) == [e["step"] for e in log_a] == [1, 2, 3, 4]
    np.testing.assert_allclose([sums_b[k] for k in sorted(sums_b)], [sums_a[k] for k in sorted(sums_a)], rtol=RTOL)
    assert [e["loss"] for e in log_b] == [e["loss"] for e in log_a]
    np.testing.assert_allclose([e["grad_norm"] for e in log_b], [e["grad_norm"] for e in log_a], rtol=RTOL)
    for key in w_a:
        np.testing.assert_allclose(w_b[key], w_a[key], rtol=RTOL, atol=0, err_msg=key)


def test_eager_gradient_checkpointing_runs_and_changes_nothing(eight, char_vocab_dir, tmp_path, monkeypatch, caplog):
    """On the eager engine the Trainer enables Hugging Face's gradient checkpointing, whose
    torch.utils.checkpoint is mindtorch's: it runs each block once (no recomputation, no memory
    saved). Training works and gives the losses of the run without it; a warning says so."""
    import transformers.modeling_utils

    assert transformers.modeling_utils.checkpoint.__module__.startswith("mindtorch")
    base = TINY + [f"tokenizer.path={char_vocab_dir}", "training.num_train_epochs=1"]
    plain = _trainer_run(base, eight, tmp_path / "plain", "eager", monkeypatch)
    with caplog.at_level("WARNING", logger="ms_gpt2.jobs.fit"):
        checkpointed = _trainer_run(base + ["training.gradient_checkpointing=true"], eight, tmp_path / "gc",
                                    "eager", monkeypatch)
    assert plain[0] == checkpointed[0] == []        # no compiled engine
    assert plain[1] == {False} and checkpointed[1] == {True}   # the model did run checkpointed
    assert "saves no memory on the eager engine" in caplog.text
    assert sorted(checkpointed[2]) == sorted(plain[2]) == [1, 2]
    np.testing.assert_allclose([checkpointed[2][k] for k in (1, 2)], [plain[2][k] for k in (1, 2)], rtol=RTOL)
    for key in plain[4]:
        np.testing.assert_allclose(checkpointed[4][key], plain[4][key], rtol=RTOL, atol=0, err_msg=key)
