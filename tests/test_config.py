"""YAML configs and command-line overrides."""
import pytest

from ms_gpt2.infra.config import ConfigError, load_config


def _refusal(path, overrides, match=None):
    """The ConfigError ``load_config(path, overrides)`` raises: its message, checked to be one line."""
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_tutorial_config_carries_the_tutorials_values():
    c = load_config("configs/tutorial.yaml")
    assert (c["model"]["n_layer"], c["model"]["n_embd"], c["data"]["max_seq_len"]) == (12, 768, 1024)
    # warm-up and logging sized to the run (test_the_tutorial_config_fits_its_own_run), the rest as published
    assert c["training"] == {"per_device_train_batch_size": 1, "num_train_epochs": 1, "learning_rate": 1.5e-4,
                             "warmup_steps": 0, "warmup_ratio": 0.1, "max_grad_norm": 1.0, "save_steps": "epoch",
                             "save_total_limit": 3, "logging_steps": 0.05}
    assert (c["data"]["fraction"], c["data"]["train_ratio"]) == (0.001, 0.9)
    assert c["generation"] == {"num_beams": 5, "no_repeat_ngram_size": 2, "max_new_tokens": 50,
                               "no_repeat_ngram_scope": "summary"}


def test_overrides_are_typed_like_yaml_including_exponent_floats():
    c = load_config("configs/smoke.yaml", ["training.learning_rate=2e-3", "tokenizer.path=null",
                                           "training.gradient_accumulation_steps=2", "data.shuffle=false"])
    assert c["training"]["learning_rate"] == 0.002
    assert c["tokenizer"]["path"] is None and c["data"]["shuffle"] is False
    assert c["training"]["gradient_accumulation_steps"] == 2  # any TrainingArguments field


@pytest.mark.parametrize("override,reason", [
    ("model.n_layers=3", "unknown key model.n_layers"),
    ("optimizer.lr=1", "unknown config section 'optimizer'"),
    ("learning_rate=1", "must be section.key"),
    ("training.lr", "must look like section.key=value"),
])
def test_bad_overrides_are_clear(override, reason):
    with pytest.raises(ConfigError, match=reason):
        load_config(None, [override])


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


@pytest.mark.parametrize("key,where", [
    ("seed", "use --seed"), ("output_dir", "use --output-dir"), ("use_cpu", "use --device"),
    ("save_strategy", "training.save_steps"),
])
def test_training_keys_ms_gpt2_sets_itself_say_where_to_set_them(key, where):
    assert where in _refusal("configs/smoke.yaml", [f"training.{key}=1"], match=f"training.{key} is set by ms_gpt2")


def test_managed_training_keys_are_refused_in_config_files_too(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("training:\n  learning_rate: 1.0e-3\n  seed: 7\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="training.seed is set by ms_gpt2: use --seed"):
        load_config(config)


@pytest.mark.parametrize("override,message", [
    ("training.learning_rat=1", "unknown key training.learning_rat; did you mean learning_rate?"),
    ("training.num_train_epoch=2", "did you mean num_train_epochs"),
    ("training.no_such_thing=2", "unknown key training.no_such_thing (not a TrainingArguments field)"),
    ("model.n_layers=3", "unknown key model.n_layers; did you mean n_layer?"),
    ("generation.num_beam=3", "did you mean num_beams?"),
])
def test_misspelled_keys_name_the_closest_valid_ones(override, message):
    assert message in _refusal("configs/smoke.yaml", [override])


def test_every_valid_training_key_is_accepted():
    c = load_config("configs/smoke.yaml", ["training.ignore_data_skip=true", "training.lr_scheduler_type=cosine",
                                           "training.per_device_train_batch_size=2", "training.max_steps=3"])
    assert c["training"]["lr_scheduler_type"] == "cosine" and c["training"]["max_steps"] == 3


def test_the_tutorial_config_fits_its_own_run(tmp_path):
    """configs/tutorial.yaml keeps 0.1% of NLPCC2017 (~50 of its ~50k records, 45 for training at
    batch 1: ~45 steps). The published warmup_steps=100 and logging_steps=100 left the learning
    rate short of its peak and logged nothing; Hugging Face's own reading of the config must warm up
    over a small part of the run and log a curve."""
    import math

    from mindnlp.transformers import TrainingArguments

    from ms_gpt2.infra.config import MANAGED_TRAINING_KEYS

    config = load_config("configs/tutorial.yaml")
    steps = math.ceil(round(50_000 * config["data"]["fraction"]) * config["data"]["train_ratio"]
                      / config["training"]["per_device_train_batch_size"])
    assert 40 <= steps <= 50
    t = {k: v for k, v in config["training"].items() if k != "save_steps" and k not in MANAGED_TRAINING_KEYS}
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **t)
    warmup = args.get_warmup_steps(steps)
    assert 1 <= warmup <= steps // 4
    every = math.ceil(steps * args.logging_steps) if args.logging_steps < 1 else args.logging_steps
    assert steps // every >= 10  # a loss curve, not one point or none
    text = open("configs/tutorial.yaml", encoding="utf-8").read()
    assert "warmup_steps=100" in text and "logging_steps=100" in text  # the published values, beside


# -- every value checked against what its key takes (ms_gpt2.infra.config_checks), before any work --

@pytest.mark.parametrize("override,line", [
    # the two: ZeroDivisionError and TypeError deep in the run before
    ("training.per_device_train_batch_size=0", "training.per_device_train_batch_size=0: must be an integer >= 1"),
    ("training.learning_rate=abc", "training.learning_rate=abc: must be a number >= 0"),
    ("training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps=0: must be an integer >= 1"),
    ("training.per_device_train_batch_size=2.5", "training.per_device_train_batch_size=2.5: must be an integer >= 1"),
    ("training.warmup_ratio=1.5", "training.warmup_ratio=1.5: must be a number in [0, 1]"),
    ("training.adam_beta2=1", "training.adam_beta2=1: must be a number in [0, 1)"),
    ("training.adam_epsilon=0", "training.adam_epsilon=0: must be a number > 0"),
    ("training.weight_decay=-0.1", "training.weight_decay=-0.1: must be a number >= 0"),
    ("training.max_grad_norm=-1", "training.max_grad_norm=-1: must be a number >= 0"),
    ("training.learning_rate=.inf", "training.learning_rate=inf: must be a number >= 0"),
    ("training.max_steps=0", "training.max_steps=0: must be -1 or an integer >= 1"),
    ("training.num_train_epochs=0", "training.num_train_epochs=0: trains nothing"),
    ("training.logging_steps=0", "training.logging_steps=0: must be a number > 0"),
    ("training.logging_steps=2.5", "training.logging_steps=2.5: must be a number > 0 (a whole number of steps"),
    ("training.save_steps=often", "training.save_steps=often: must be epoch or a number > 0"),
    ("training.fp16=1", "training.fp16=1: must be true or false"),
    ("training.lr_scheduler_type=cosin", "training.lr_scheduler_type=cosin: must be one of linear, cosine, "),
    ("training.optim=adam", "training.optim=adam: must be one of adamw_torch, adamw_torch_fused, "),
    ("training.eval_strategy=sometimes", "training.eval_strategy=sometimes: must be one of no, steps, epoch"),
    ("training.run_name=[a]", "training.run_name=['a']: must be a string (or null)"),
    ("training.fsdp=[everything]", "training.fsdp=['everything']: must be a string or a list of full_shard, "),
    ("training.data_seed=-1", "training.data_seed=-1: must be an integer in [0, 2147483648) (or null)"),
    ("model.n_layer=0", "model.n_layer=0: must be an integer >= 1"),
    ("model.n_head=5", "model.n_head=5: must divide model.n_embd=768"),
    ("model.dropout=1", "model.dropout=1: must be a number in [0, 1)"),
    ("data.fraction=0", "data.fraction=0: must be a number in (0, 1]"),
    ("data.train_ratio=1.5", "data.train_ratio=1.5: must be a number in (0, 1]"),
    ("data.max_seq_len=1", "data.max_seq_len=1: must be an integer >= 2"),
    ("data.shuffle=maybe", "data.shuffle=maybe: must be true or false"),
    ("tokenizer.vocab_size=0", "tokenizer.vocab_size=0: must be an integer >= 1"),
    ("tokenizer.min_frequency=0", "tokenizer.min_frequency=0: must be an integer >= 1"),
    ("tokenizer.path=3", "tokenizer.path=3: must be a string (or null)"),
    ("pretrain.mlm_probability=1", "pretrain.mlm_probability=1: must be a number in (0, 1)"),
    ("pretrain.eval_fraction=1", "pretrain.eval_fraction=1: must be a number in [0, 1)"),
    ("pretrain.objective=gpt", "pretrain.objective=gpt: must be one of clm, mlm-nsp"),
    ("finetune.negatives=random", "finetune.negatives=random: must be one of dynamic, static"),
    ("generation.num_beams=0", "generation.num_beams=0: must be an integer >= 1"),
    ("generation.no_repeat_ngram_scope=all", "generation.no_repeat_ngram_scope=all: must be one of summary, sequence"),
    ("engine=graph", "engine=graph: must be one of compiled, eager"),
])
def test_a_bad_value_is_refused_in_one_line_naming_the_key_and_what_it_takes(override, line):
    assert _refusal(None, [override]).startswith(line)


def test_good_values_pass_and_integers_given_as_floats_are_read_as_integers():
    c = load_config(None, ["training.per_device_train_batch_size=2.0", "training.learning_rate=1",
                           "training.save_steps=epoch", "training.save_steps=0.25", "training.max_steps=-1",
                           "training.num_train_epochs=0", "training.max_steps=5", "training.save_total_limit=null",
                           "training.fsdp=[full_shard, offload]", "training.lr_scheduler_kwargs={num_cycles: 2}",
                           "training.warmup_ratio=1", "training.data_seed=7", "model.dropout=0",
                           "data.train_ratio=1", "engine=eager"])
    t = c["training"]
    assert t["per_device_train_batch_size"] == 2 and type(t["per_device_train_batch_size"]) is int
    assert t["learning_rate"] == 1 and t["save_steps"] == 0.25 and t["save_total_limit"] is None


def test_a_bad_value_in_a_config_file_is_refused_too(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("training:\n  learning_rate: fast\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^training.learning_rate=fast: must be a number >= 0$"):
        load_config(config)


def test_training_types_come_from_the_training_arguments_annotations():
    """No hand list of types: every field whose annotation takes no string (bool, int, float, an
    enum...) refuses a word, in a line naming it."""
    from ms_gpt2.infra.config import MANAGED_TRAINING_KEYS
    from ms_gpt2.infra.config_checks import spec_of, training_specs

    specs = training_specs()
    assert specs["fp16"].kinds == {"bool"} and specs["per_device_train_batch_size"].kinds == {"int"}
    assert "cosine" in specs["lr_scheduler_type"].choices and not specs["lr_scheduler_type"].kinds
    assert specs["eval_steps"].nullable and specs["learning_rate"].kinds == {"int", "float"}
    assert spec_of(dict) and spec_of(list[str]).kinds == {"list"}
    wordless = [name for name, s in specs.items() if "str" not in s.kinds and name not in MANAGED_TRAINING_KEYS]
    assert len(wordless) > 60
    for name in wordless:
        with pytest.raises(ConfigError, match=rf"^training.{name}=no-such-value: must be "):
            load_config(None, [f"training.{name}=no-such-value"])


def test_every_key_of_ms_gpt2s_own_sections_has_a_spec():
    from ms_gpt2.infra.config import DEFAULTS, TOP_LEVEL
    from ms_gpt2.infra.config_checks import OWN

    own = {f"{section}.{key}" for section, keys in DEFAULTS.items() if section != "training" for key in keys}
    assert set(OWN) == own | set(TOP_LEVEL)  # training's keys are TrainingArguments fields


def test_the_shipped_configs_pass_the_checks():
    import glob

    shipped = sorted(glob.glob("configs/*.yaml"))
    assert len(shipped) >= 6
    for path in shipped:
        load_config(path)


@pytest.mark.parametrize("setting, line", [
    ("training.per_device_train_batch_size=0", "training.per_device_train_batch_size=0: must be an integer >= 1"),
    ("training.learning_rate=abc", "training.learning_rate=abc: must be a number >= 0"),
])
def test_the_cli_refuses_a_bad_value_with_exit_2_before_any_work(setting, line, tmp_path, capsys):
    """Before: ZeroDivisionError / TypeError tracebacks (exit 1) once the data and vocabulary were made."""
    from conftest import DEMO_DATA
    from ms_gpt2.cli import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["train", "--config", "configs/smoke.yaml", "--data", DEMO_DATA, "--output-dir", str(out),
              "--device", "cpu", "--set", setting])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.strip().splitlines() == [f"ms-gpt2: error: {line}"]
    assert not out.exists()
