"""The auxiliary LM objective: data.article_loss_weight (λ) weights the article tokens' loss against
the summary's. λ = 0 and λ = 1 reproduce the summary-only and whole-sequence losses exactly (losses
and gradients / one step's weights, eager and compiled), 0 < λ < 1 is the weighted token mean
(checked against NumPy on the model's logits), and the compiled engine trains like the eager one."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import DEMO_DATA, write_jsonl
from ms_gpt2.infra import runtime
from ms_gpt2.infra.config import ConfigError, article_loss_weight, load_config
from ms_gpt2.engine import distributed
from ms_gpt2.data.examples import encode_example

runtime.ensure()

import torch  # noqa: E402  (mindtorch)

ARTICLES = [("青禾市轨道交通5号线一期工程于本月18日正式开通运营。该线路全长约24公里。", "青禾市地铁5号线一期开通。"),
            ("今年前三季度，全市居民人均可支配收入同比增长。", "居民收入增长。")]
LAMBDA = 0.25


def _examples(tokenizer, **kw):
    rows = [encode_example(tokenizer, a, s, 48, **kw) for a, s in ARTICLES]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _with_lambda(weights, value):
    """The λ-weights of the 0 < λ < 1 path with the article's weight replaced by ``value``."""
    return np.where(weights == np.float32(LAMBDA), np.float32(value), weights).astype(np.float32)


def test_weights_by_position_and_the_summary_only_alias(tokenizer):
    ex = encode_example(tokenizer, *ARTICLES[0], 48, article_loss_weight=LAMBDA)
    ids, w = ex["input_ids"], ex["loss_weights"]
    first, second = np.flatnonzero(ids == tokenizer.sep_token_id)[:2]
    assert np.array_equal(ex["labels"], ids)
    assert (w[: first + 1] == np.float32(LAMBDA)).all()              # [CLS] article [SEP]
    assert (w[first + 1: second + 1] == 1).all()                     # summary [SEP]
    assert (w[second + 1:] == 0).all() and (ids[second + 1:] == tokenizer.pad_token_id).all()
    for alias, value in ((True, 0), (False, 1)):
        old = encode_example(tokenizer, *ARTICLES[0], 48, summary_only_loss=alias)
        new = encode_example(tokenizer, *ARTICLES[0], 48, article_loss_weight=value)
        assert old.keys() == new.keys() == {"input_ids", "attention_mask", "labels"}
        assert all(np.array_equal(old[k], new[k]) for k in old)


def test_config_lambda_and_its_alias():
    assert article_loss_weight(load_config()["data"]) == 1.0                  # the tutorial's loss
    assert article_loss_weight(load_config("configs/smoke.yaml")["data"]) == 0.0
    assert article_loss_weight(load_config(None, ["data.article_loss_weight=0.5"])["data"]) == 0.5
    assert article_loss_weight(load_config(None, ["data.summary_only_loss=true",
                                                  "data.article_loss_weight=0"])["data"]) == 0.0
    with pytest.raises(ConfigError, match=r"data.article_loss_weight=0.5 contradicts data.summary_only_loss=true"):
        load_config("configs/smoke.yaml", ["data.article_loss_weight=0.5"])
    for bad in ("1.5", "-0.1", "true", "half"):
        with pytest.raises(ConfigError, match=rf"data.article_loss_weight={bad}: must be a number in \[0, 1\]"):
            load_config(None, [f"data.article_loss_weight={bad}"])


def _tiny_model(tokenizer):
    from ms_gpt2.models.gpt2 import GPT2ForSummarization, build_config

    runtime.seed_everything(0)
    return GPT2ForSummarization(build_config(tokenizer, 64, 32, 1, 2, dropout=0.0))


def _loss_and_grads(model, batch):
    from mindtorch import autograd

    inputs = {k: torch.tensor(v.astype(np.float32 if k == "loss_weights" else np.int64)) for k, v in batch.items()}
    params = tuple(model.parameters())
    loss, grads = autograd.value_and_grad(lambda x: model(**x)["loss"], params, attach_grads=False)(inputs)
    return float(loss.asnumpy()), [g.asnumpy() for g in grads]


def test_eager_loss_lambda_0_and_1_reproduce_the_two_losses_and_between_is_the_weighted_mean(tokenizer):
    from ms_gpt2.jobs.evaluate import language_model_loss

    model = _tiny_model(tokenizer)
    weighted = _examples(tokenizer, article_loss_weight=LAMBDA)
    for alias, value in ((True, 0.0), (False, 1.0)):
        old_loss, old_grads = _loss_and_grads(model, _examples(tokenizer, summary_only_loss=alias))
        new_loss, new_grads = _loss_and_grads(model, dict(weighted, loss_weights=_with_lambda(weighted["loss_weights"], value)))
        assert new_loss == pytest.approx(old_loss, rel=1e-6)
        for a, b in zip(new_grads, old_grads):      # so one optimizer step gives the same weights
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)

    # 0 < λ < 1: Σ w·ce / Σ w over the shifted targets, in float64 from the model's own logits
    ids = weighted["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids.astype(np.int64))).logits.numpy().astype(np.float64)
    shifted = logits[:, :-1]
    log_probs = shifted - shifted.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    targets = ids[:, 1:]
    ce = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    w = weighted["loss_weights"][:, 1:].astype(np.float64)
    want = (w * ce).sum() / w.sum()
    loss, _ = _loss_and_grads(model, weighted)
    assert loss == pytest.approx(want, rel=1e-5)
    plain = ce[targets != tokenizer.pad_token_id].mean()
    assert abs(plain - want) > 1e-3                      # the weights do change the loss
    # evaluation's loss is the same weighted mean, however the examples are batched
    one_by_one = [{k: v[i:i + 1] for k, v in weighted.items()} for i in range(len(ids))]
    assert language_model_loss(model.eval(), one_by_one)["loss"] == pytest.approx(want, rel=1e-5)
    assert language_model_loss(model, [weighted])["tokens"] == pytest.approx(w.sum())


def _engine(tokenizer):
    from ms_gpt2.engine.compiled import CompiledEngine

    model = _tiny_model(tokenizer)
    model.train()
    return CompiledEngine(model, {}, max_grad_norm=0.0)


def test_compiled_step_lambda_0_and_1_reproduce_the_two_losses(tokenizer):
    weighted = _examples(tokenizer, article_loss_weight=LAMBDA)
    for alias, value in ((True, 0.0), (False, 1.0)):
        old, new = _engine(tokenizer), _engine(tokenizer)
        b = _examples(tokenizer, summary_only_loss=alias)
        old_loss, _ = old.train_step({k: b[k] for k in ("input_ids", "attention_mask", "labels")}, 1e-2, 0)
        new_loss, _ = new.train_step(dict(weighted, loss_weights=_with_lambda(weighted["loss_weights"], value)), 1e-2, 0)
        assert new_loss == pytest.approx(old_loss, rel=1e-6)
        w_old, w_new = old.weights(), new.weights()
        for key in w_old:
            np.testing.assert_allclose(w_new[key], w_old[key], rtol=1e-6, atol=1e-8, err_msg=key)


def test_data_parallel_shards_weigh_by_summed_loss_weights():
    labels = np.array([[5, 6, 7, 0], [5, 6, 0, 0], [5, 6, 7, 8]])
    weights = np.array([[.5, .5, 1, 0], [.5, 1, 0, 0], [.5, .5, .5, 1]], np.float32)
    shards = [distributed.shard_batch({"labels": labels, "loss_weights": weights}, 2, 0, r, 2) for r in range(2)]
    assert [s.local_tokens for s in shards] == [1.5 + 1.0, 2.0] and {s.global_tokens for s in shards} == {4.5}


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    rows = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")]
    rows = sorted(rows, key=lambda r: len(r["summarization"]))[:8]
    return write_jsonl(tmp_path_factory.mktemp("data") / "eight.jsonl", rows)


def test_compiled_and_eager_agree_with_lambda_half(eight, char_vocab_dir, tmp_path):
    from ms_gpt2.jobs.train import train

    overrides = ["model.n_positions=64", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "model.dropout=0.0",
                 "data.max_seq_len=64", "data.max_summary_len=30", "data.train_ratio=1.0",
                 "data.summary_only_loss=null", "data.article_loss_weight=0.5", f"tokenizer.path={char_vocab_dir}",
                 "training.per_device_train_batch_size=4", "training.learning_rate=5.0e-3", "training.warmup_steps=0",
                 "training.logging_steps=1", "training.save_steps=1000", "training.num_train_epochs=2"]
    logs = {}
    for engine in ("eager", "compiled"):
        config = load_config("configs/smoke.yaml", overrides)
        config["engine"] = engine
        runtime.seed_everything(0)
        result = train(config, eight, tmp_path / engine)
        logs[engine] = [json.loads(line)["loss"] for line in (tmp_path / engine / "loss_log.jsonl").read_text().splitlines()]
        logs[engine + "_w"] = load_file(str(result.model_dir / "model.safetensors"))
    assert len(logs["eager"]) == 4
    np.testing.assert_allclose(logs["compiled"], logs["eager"], rtol=1e-4)
    for key in logs["eager_w"]:
        np.testing.assert_allclose(logs["compiled_w"][key], logs["eager_w"][key], rtol=0, atol=1e-4, err_msg=key)
