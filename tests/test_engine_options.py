"""What the compiled engine does not do is refused in one line (ms_gpt2.engine.options): every
TrainingArguments field is decided, refused settings fail through the CLI with exit 2 before any
data work, frozen parameters are refused, and fp16/bf16 are refused on CPU on both engines."""
import dataclasses

import numpy as np
import pytest

from conftest import DEMO_DATA
from ms_gpt2.infra import runtime
from ms_gpt2.infra.config import MANAGED_TRAINING_KEYS
from ms_gpt2.engine import options
from ms_gpt2.infra.errors import UserError

TINY = ["model.n_positions=32", "model.n_embd=16", "model.n_layer=1", "model.n_head=2", "data.max_seq_len=32",
        "data.max_summary_len=10", "tokenizer.vocab_size=300", "training.num_train_epochs=1"]


def test_every_training_argument_is_decided():
    """A field in no table (a new transformers release) fails here, so it cannot be silently ignored."""
    from mindnlp.transformers import TrainingArguments

    tables = {"REFUSED": options.REFUSED, "HONOURED": options.HONOURED, "OUTSIDE_THE_STEP": options.OUTSIDE_THE_STEP,
              "MANAGED_TRAINING_KEYS": MANAGED_TRAINING_KEYS}
    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}  # _n_gpu (init=False) cannot be set
    undecided = sorted(name for name in fields if not any(name in table for table in tables.values()))
    assert not undecided, f"TrainingArguments fields in no table of ms_gpt2/engine/options.py: {undecided}"
    for name in fields:
        homes = [table for table, entries in tables.items() if name in entries]
        assert len(homes) == 1, f"{name} is decided twice: {homes}"
    for table, entries in tables.items():
        stale = sorted(set(entries) - fields)
        assert not stale, f"{table} names what is not a TrainingArguments field: {stale}"
        assert all(isinstance(why, (str, tuple)) and why for why in entries.values())


# (setting, what the line says besides the key); all refused on the compiled engine, on CPU
COMPILED_REFUSES = [
    ("label_smoothing_factor=0.1", "label smoother"),
    ("neftune_noise_alpha=5", "NEFTune"),
    ("torch_compile=true", "torch.compile"),
    ("torch_compile_backend=eager", "torch_compile"),
    ("use_liger_kernel=true", "Liger"),
    ("optim=sgd", "AdamW only"),
    ("optim=adafactor", "AdamW only"),
    ("optim_args=foo=1", "no extra optimizer arguments"),
    ("past_index=0", "mems"),
    ("torch_empty_cache_steps=2", "empties the device cache"),
    ("half_precision_backend=apex", "training_step"),
    ("debug=underflow_overflow", "forward"),
]


def _cli(tmp_path, capsys, *extra, engine="compiled"):
    from ms_gpt2.cli import main

    out = tmp_path / "out"
    argv = ["train", "--config", "configs/smoke.yaml", "--data", DEMO_DATA, "--output-dir", str(out),
            "--device", "cpu", "--engine", engine]
    for setting in TINY + list(extra):
        argv += ["--set", setting]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("ms-gpt2: error:")]
    assert len(lines) == 1, err
    assert not out.exists()  # refused before the run directory (or any data work) was touched
    return lines[0]


@pytest.mark.parametrize("setting, says", COMPILED_REFUSES, ids=[s for s, _ in COMPILED_REFUSES])
def test_compiled_engine_refuses_in_one_line_before_training(setting, says, tmp_path, capsys):
    line = _cli(tmp_path, capsys, f"training.{setting}")
    key, value = setting.split("=", 1)
    assert f"training.{key}={value}" in line
    assert "--engine eager" in line and says in line


@pytest.mark.parametrize("key", ["fp16", "bf16"])
@pytest.mark.parametrize("engine", ["compiled", "eager"])
def test_half_precision_is_refused_on_cpu_on_both_engines(key, engine, tmp_path, capsys):
    """Eager on CPU trained fp16 in float32 kernels (results drifting from float32's) and crashed in
    torch.cpu.amp on bf16; the compiled graph's CPU fp16/bf16 is an emulation, for tests only."""
    line = _cli(tmp_path, capsys, f"training.{key}=true", engine=engine)
    assert f"training.{key}=true: on CPU neither engine" in line and "float32" in line


def test_half_precision_runs_off_cpu_and_bf16_is_refused_on_910a(monkeypatch):
    from ms_gpt2.models.graphs.precision import EMULATE_ENV

    for engine in ("compiled", "eager"):
        for soc in (None, "ascend910b", "ascend910_93"):
            for key in ("fp16", "bf16"):
                options.check({key: True}, options.Context(engine, "ascend", soc=soc))
            options.check({"fp16": True}, options.Context(engine, "gpu"))
        options.check({"fp16": True}, options.Context(engine, "ascend", soc="ascend910"))
        with pytest.raises(options.EngineError, match="training.bf16=true: this NPU is an Atlas training-series 910A, "
                                                      "which has no bfloat16 .*use training.fp16"):
            options.check({"bf16": True}, options.Context(engine, "ascend", soc="ascend910"))
    monkeypatch.setenv(EMULATE_ENV, "1")   # the tests' CPU emulation: the compiled graph only
    for key in ("fp16", "bf16"):
        options.check({key: True}, options.Context("compiled", "cpu"))
        with pytest.raises(options.EngineError, match=f"training.{key}=true: on CPU neither engine"):
            options.check({key: True}, options.Context("eager", "cpu"))


def test_only_non_default_values_are_refused_and_eager_accepts_the_graphs_refusals():
    cpu = options.Context("compiled", "cpu")
    defaults = {"fp16": False, "bf16": False, "label_smoothing_factor": 0, "neftune_noise_alpha": None,
                "optim": "adamw_torch", "debug": "", "fsdp": "", "torch_compile": False, "past_index": -1,
                "average_tokens_across_devices": True, "half_precision_backend": "auto", "full_determinism": True}
    options.check(defaults, cpu)  # full_determinism is accepted on CPU: the graph's seeded runs repeat exactly
    options.check({"optim": "adamw_torch_fused", "gradient_checkpointing": True, "learning_rate": 1.0}, cpu)
    eager = options.Context("eager", "cpu")
    for setting, _ in COMPILED_REFUSES:
        key, value = setting.split("=", 1)
        options.check({key: value}, eager)
    with pytest.raises(options.EngineError, match="training.full_determinism=true: .*--engine eager"):
        options.check({"full_determinism": True}, options.Context("compiled", "ascend"))


def test_data_parallel_refuses_average_tokens_across_devices_false():
    for engine in ("compiled", "eager"):
        options.check({"average_tokens_across_devices": False}, options.Context(engine, "cpu", 1))  # one process
        with pytest.raises(options.EngineError, match="training.average_tokens_across_devices=false: ms_gpt2's data "
                                                      "parallel always takes the token mean"):
            options.check({"average_tokens_across_devices": False}, options.Context(engine, "cpu", 2))


def test_bert_pretraining_is_checked_before_any_work(tmp_path):
    """BERT pretraining checks its engine's refusals (CPU's here) before reading data or making its directory."""
    from ms_gpt2.jobs.bert_pretrain import pretrain_mlm_nsp
    from ms_gpt2.infra.config import load_config

    config = load_config("configs/bert_tiny.yaml", ["training.bf16=true"])
    with pytest.raises(UserError, match="training.bf16=true: on CPU neither engine"):
        pretrain_mlm_nsp(config, DEMO_DATA, tmp_path / "bert")
    assert not (tmp_path / "bert").exists()


# -- the data-loading group: data_seed and dataloader_drop_last do what they say; the rest is refused --

DATA_REFUSED = [
    ("group_by_length=true", "does not group them by length", "drop it"),
    ("length_column_name=n_tokens", "read only by group_by_length", "drop it"),
    ("auto_find_batch_size=true", "nothing retries a smaller batch", "set training.per_device_train_batch_size"),
    ("dataloader_prefetch_factor=2", "no DataLoader workers to prefetch", "drop it"),
    ("dataloader_persistent_workers=true", "no DataLoader workers to keep", "drop it"),
    ("per_gpu_train_batch_size=2", "deprecated alias of per_device_train_batch_size",
     "use training.per_device_train_batch_size"),
    ("accelerator_config={split_batches: true}", "accelerate's preparation of the Trainer's DataLoader", "drop it"),
]


@pytest.mark.parametrize("engine", ["compiled", "eager"])
@pytest.mark.parametrize("setting, says, remedy", DATA_REFUSED, ids=[s for s, _, _ in DATA_REFUSED])
def test_data_loading_settings_the_pipeline_does_not_read_are_refused_on_both_engines(setting, says, remedy, engine,
                                                                                       tmp_path, capsys):
    """They were accepted and changed nothing (the batches come from ms_gpt2's MindSpore pipeline)."""
    line = _cli(tmp_path, capsys, f"training.{setting}", engine=engine)
    assert f"training.{setting.split('=')[0]}=" in line and says in line and remedy in line


def _run(tmp_path, char_vocab_dir, name, *settings, engine="compiled", monkeypatch=None, resume=None):
    """A tiny `train` (14 training examples); -> (loss per step, final weights, rows of each batch read)."""
    import json

    from safetensors.numpy import load_file

    from ms_gpt2.infra.config import load_config
    from ms_gpt2.jobs.fit import PipelineBatches
    from ms_gpt2.jobs.train import train

    rows = []
    if monkeypatch is not None:
        iterate = PipelineBatches.__iter__

        def recording(self):
            for batch in iterate(self):
                rows.append(tuple(batch["input_ids"].shape))
                yield batch
        monkeypatch.setattr(PipelineBatches, "__iter__", recording)
    config = load_config("configs/smoke.yaml", TINY + [
        f"tokenizer.path={char_vocab_dir}", "model.dropout=0.0", "model.n_positions=64", "data.max_seq_len=64",
        "data.max_summary_len=40", "data.fraction=0.25", "training.logging_steps=1",
        "training.warmup_steps=0", f"engine={engine}", *settings])
    result = train(config, DEMO_DATA, tmp_path / name, resume=resume)
    log = [json.loads(line) for line in (tmp_path / name / "loss_log.jsonl").read_text().splitlines()]
    return [entry["loss"] for entry in log], load_file(str(result.model_dir / "model.safetensors")), rows, result


def test_data_seed_changes_the_batch_order_and_not_the_initial_weights(char_vocab_dir, tmp_path):
    """With learning rate 0 the model stays at its initial weights, so each step's loss is a
    function of its example alone: data_seed must reorder the same losses, and keep the weights."""
    common = ("training.per_device_train_batch_size=1", "training.learning_rate=0.0", "training.num_train_epochs=1")
    default, w_default, _, _ = _run(tmp_path, char_vocab_dir, "default", *common)
    same, w_same, _, _ = _run(tmp_path, char_vocab_dir, "seed0", *common, "training.data_seed=0")  # --seed is 0
    other, w_other, _, _ = _run(tmp_path, char_vocab_dir, "seed1", *common, "training.data_seed=1")
    assert len(default) == 14
    assert same == default              # no data_seed: the order follows --seed
    assert other != default             # another data seed: another order ...
    assert sorted(other) == sorted(default)  # ... of the same examples under the same model
    for name, value in w_default.items():   # the initial weights follow --seed alone
        np.testing.assert_array_equal(w_other[name], value)
        np.testing.assert_array_equal(w_same[name], value)


def test_data_seed_orders_pretraining_blocks_too(char_vocab_dir, tmp_path):
    """`pretrain` shuffles its packed blocks itself (keyed on a seed, not MindSpore's): the same
    learning-rate-0 check as above, on the blocks of 12 documents."""
    import json

    from safetensors.numpy import load_file

    from ms_gpt2.infra.config import load_config
    from ms_gpt2.jobs.pretrain import pretrain

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(open(DEMO_DATA, encoding="utf-8").readlines()[:12]), encoding="utf-8")

    def run(name, *settings):
        config = load_config("configs/pretrain_smoke.yaml", [
            f"tokenizer.path={char_vocab_dir}", "pretrain.text_field=article", "model.n_positions=64",
            "model.n_embd=16", "model.n_layer=1", "model.n_head=2", "data.max_seq_len=64", "training.num_train_epochs=1",
            "training.per_device_train_batch_size=1", "training.learning_rate=0.0", "training.warmup_steps=0",
            "training.logging_steps=1", *settings])
        result = pretrain(config, corpus, tmp_path / name)
        log = (tmp_path / name / "loss_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in log], load_file(str(result.model_dir / "model.safetensors"))

    default, weights = run("default")
    other, other_weights = run("other", "training.data_seed=5")
    assert len(default) >= 4 and other != default and sorted(other) == sorted(default)
    for name, value in weights.items():
        np.testing.assert_array_equal(other_weights[name], value)


def test_drop_last_trains_floor_n_over_b_full_batches_per_epoch(char_vocab_dir, tmp_path, monkeypatch):
    """14 examples in batches of 4: 3 full batches an epoch (not 3 and a short one of 2, whose shape
    would compile a second graph); the epoch-end checkpoints and the epoch count agree."""
    import json

    losses, _, rows, result = _run(tmp_path, char_vocab_dir, "drop", "training.per_device_train_batch_size=4",
                                   "training.num_train_epochs=2", "training.dataloader_drop_last=true",
                                   "training.save_total_limit=5", monkeypatch=monkeypatch)
    assert result.global_step == 2 * (14 // 4) == len(losses)
    assert len(rows) == 6 and {shape[0] for shape in rows} == {4} and len(set(rows)) == 1  # one input shape
    assert sorted(p.name for p in result.output_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    state = json.loads((result.output_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["epoch"] == 1.0


def test_drop_last_resumes_mid_epoch_where_the_run_was(char_vocab_dir, tmp_path, monkeypatch):
    """The resume position is counted in the batches drop_last leaves: checkpoint-4 is epoch 1 after
    its first batch (3 an epoch, not 4), so the resumed run reads that epoch's last two full batches
    and logs the uninterrupted run's losses."""
    import shutil

    settings = ("training.per_device_train_batch_size=4", "training.num_train_epochs=2", "training.save_steps=2",
                "training.dataloader_drop_last=true", "training.save_total_limit=5")
    straight, _, _, _ = _run(tmp_path, char_vocab_dir, "straight", *settings)
    shutil.copytree(tmp_path / "straight" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    resumed, _, rows, result = _run(tmp_path, char_vocab_dir, "resumed", *settings, monkeypatch=monkeypatch,
                                    resume="latest")
    assert result.global_step == 6 and rows == [rows[0]] * 2 and rows[0][0] == 4
    assert resumed == straight[4:]


def test_drop_last_refuses_a_batch_larger_than_the_data(char_vocab_dir, tmp_path):
    with pytest.raises(UserError, match="training.dataloader_drop_last=true: the 14 training examples are fewer than "
                                        "one batch of 16"):
        _run(tmp_path, char_vocab_dir, "big", "training.per_device_train_batch_size=16",
             "training.dataloader_drop_last=true")


def _tiny_model(char_vocab_dir):
    from ms_gpt2.models.gpt2 import GPT2ForSummarization, build_config
    from ms_gpt2.data.tokenization import load_wordpiece

    runtime.seed_everything(0)
    return GPT2ForSummarization(build_config(load_wordpiece(char_vocab_dir), 32, 16, 1, 2, 0.0))


def _trainer(engine, model, tmp_path, **args):
    from mindnlp.transformers import TrainingArguments

    from ms_gpt2.engine.trainer import trainer_class
    from ms_gpt2.jobs.fit import PipelineTrainer

    arguments = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], **args)
    return trainer_class(PipelineTrainer, engine)(model=model, args=arguments)


def test_frozen_parameters_are_refused_by_the_compiled_engine(char_vocab_dir, tmp_path):
    """The graph updated requires_grad=False weights as if they were trainable."""
    model = _tiny_model(char_vocab_dir)
    model.transformer.wpe.weight.requires_grad = False
    with pytest.raises(options.EngineError, match=r"1 parameter\(s\) have requires_grad=False "
                                                  r"\(transformer.wpe.weight\): .*--engine eager"):
        _trainer("compiled", model, tmp_path)
    _trainer("eager", model, tmp_path)  # the eager Trainer leaves them alone
    trainer = _trainer("compiled", _tiny_model(char_vocab_dir), tmp_path)
    for p in trainer.model.transformer.h[0].mlp.parameters():  # frozen after the Trainer was made
        p.requires_grad = False
    with pytest.raises(options.EngineError, match=r"4 parameter\(s\) have requires_grad=False"):
        trainer.create_optimizer()


def test_a_trainer_made_directly_is_checked_too(char_vocab_dir, tmp_path):
    with pytest.raises(options.EngineError, match="training.neftune_noise_alpha=5.0: NEFTune"):
        _trainer("compiled", _tiny_model(char_vocab_dir), tmp_path, neftune_noise_alpha=5.0)
    _trainer("compiled", _tiny_model(char_vocab_dir), tmp_path)  # every default passes


def _numpy_adamw_step(params, grads, state, lr, betas, eps, decay, max_norm):
    """torch.optim.AdamW's step (after torch.nn.utils.clip_grad_norm_), in NumPy float64, in place."""
    norm = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    clip = min(max_norm / (norm + 1e-6), 1.0)
    (b1, b2), state["t"] = betas, state["t"] + 1
    t = state["t"]
    for name, p in params.items():
        g = grads[name].astype(np.float64) * clip
        m = state.setdefault(("m", name), np.zeros_like(p))
        v = state.setdefault(("v", name), np.zeros_like(p))
        p *= 1 - lr * decay[name]
        m[...] = b1 * m + (1 - b1) * g
        v[...] = b2 * v + (1 - b2) * g * g
        p -= lr / (1 - b1 ** t) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)


def test_the_graphs_adamw_is_torchs_with_the_trainers_betas_eps_and_decay(char_vocab_dir, tmp_path):
    """Non-default adam_beta1/2, adam_epsilon, weight_decay and max_grad_norm through the Trainer into
    the graph: three compiled steps give the weights of torch.optim.AdamW written in NumPy, fed Hugging
    Face's gradients (mindtorch autograd on the eager model) at the reference's own weights. Three steps
    on three batches: at the first m_hat = g and v_hat = g^2 whatever the betas, and on one batch
    repeated the gradients barely change, which hides the betas too. Tolerance: 1e-3 x lr per weight (where
    |g| ~ eps an update moves by lr/eps per unit of gradient: float32 noise)."""
    import torch  # mindtorch
    from mindtorch import autograd

    betas, eps, wd, max_norm, lr = (0.8, 0.99), 1e-6, 0.1, 0.5, 1e-2
    trainer = _trainer("compiled", _tiny_model(char_vocab_dir), tmp_path, adam_beta1=betas[0], adam_beta2=betas[1],
                       adam_epsilon=eps, weight_decay=wd, max_grad_norm=max_norm)
    trainer.create_optimizer()
    engine = trainer._build_engine()
    model = trainer.model
    decaying = set(trainer.get_decay_parameter_names(model))      # the Trainer's rule: not biases, not LayerNorm
    named = [(n, p) for n, p in model.named_parameters() if n in set(engine.names)]
    params = {n: p.detach().numpy().astype(np.float64) for n, p in named}
    decay = {n: wd if n in decaying else 0.0 for n in params}
    assert 0 < sum(d > 0 for d in decay.values()) < len(decay)
    rng, state = np.random.default_rng(0), {"t": 0}
    for step in range(3):
        ids = rng.integers(5, model.config.vocab_size, (2, 10))  # a new batch each step: gradients that differ
        with torch.no_grad():   # the eager model at the reference's weights
            for n, p in named:
                p.copy_(torch.tensor(params[n].astype(np.float32)))
        grads = autograd.value_and_grad(lambda: model(input_ids=torch.tensor(ids), labels=torch.tensor(ids))["loss"],
                                        [p for _, p in named], attach_grads=False)()[1]
        _numpy_adamw_step(params, {n: g.asnumpy() for (n, _), g in zip(named, grads)}, state, lr, betas, eps, decay,
                          max_norm)
        engine.train_step({"input_ids": ids}, lr, step)
    got = engine.weights()
    for name, expected in params.items():
        np.testing.assert_allclose(got[name], expected, rtol=0, atol=1e-3 * lr, err_msg=name)
    assert engine.optimizer_steps == 3
