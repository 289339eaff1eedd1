"""Tokenizers and checkpoints as users bring them, on both engines.

Fixtures as they ship: ``gpt2-bpe-stock`` is a byte-level BPE GPT-2 laid out like OpenAI's ``gpt2``
(tokenizer with no pad token; ``config.json`` with bos = eos = ``<|endoftext|>`` and no
``pad_token_id``); ``gpt2-bert-nopad`` is a BERT-vocabulary GPT-2 like uer's Chinese checkpoints
(a ``[PAD]`` in the vocabulary, but no ``pad_token_id`` in ``config.json``). The suite's other
fixtures all set ``pad_token_id``, which is how a crash at step 1 stayed hidden.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO_DATA, write_jsonl
from ms_gpt2 import cli
from ms_gpt2.cli.common import config_overrides
from ms_gpt2.infra import runtime

FIXTURES = Path(__file__).parent / "fixtures"
BPE_STOCK = FIXTURES / "gpt2-bpe-stock"
BERT_NOPAD = FIXTURES / "gpt2-bert-nopad"
ENGINES = ["compiled", "eager"]
# a tiny GPT-2 on the fixtures' geometry (2 layers, 32 wide, 4 heads, 64 positions), dropout 0
TINY_PT = ["model.n_positions=64", "model.n_embd=32", "model.n_layer=2", "model.n_head=4", "model.dropout=0.0",
           "data.max_seq_len=16", "pretrain.eval_fraction=0.2", "training.per_device_train_batch_size=4",
           "training.num_train_epochs=1", "training.learning_rate=1.0e-3", "training.warmup_steps=0",
           "training.logging_steps=1", "training.save_steps=epoch"]
ENGLISH = ["The car is fast and the road is long.", "A second document about the world of cars.",
           "What is the fastest car in the world?", "Roads, cars and drivers: the third one.",
           "The fifth line is short.", "Held out: a document the model never trains on.",
           "And one more held-out line about cars."]


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "loss_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def english(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "english.txt"
    path.write_text("\n".join(ENGLISH) + "\n", encoding="utf-8")
    return path


def test_the_fixtures_are_as_they_ship():
    from ms_gpt2.data.tokenization import load_vocabulary

    tok = load_vocabulary(BPE_STOCK)
    assert tok.pad_token is None and tok.eos_token == "<|endoftext|>"
    assert "pad_token_id" not in json.loads((BPE_STOCK / "config.json").read_text())
    assert "pad_token_id" not in json.loads((BERT_NOPAD / "config.json").read_text())
    assert load_vocabulary(BERT_NOPAD).pad_token == "[PAD]"


@pytest.mark.parametrize("start", ["fresh", "init_from", "init_from_bert"])
def test_pretraining_with_a_stock_bpe_tokenizer_runs_and_both_engines_agree(start, english, tmp_path, capsys):
    """A GPT-2 BPE tokenizer has no pad token; a fresh model and OpenAI-style config.json (no
    pad_token_id) crashed at step 1 on both engines (``loss_token_count(labels, None)``). Continued
    pretraining of a uer-style checkpoint (BERT vocabulary, no pad_token_id) too."""
    if start == "fresh":
        extra = ["--tokenizer", str(BPE_STOCK)]
    elif start == "init_from_bert":
        english = write_jsonl(tmp_path / "zh.jsonl", _nlpcc_rows(8))
        shutil.copytree(BERT_NOPAD, tmp_path / "gpt2")
        config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
        config.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        (tmp_path / "gpt2" / "config.json").write_text(json.dumps(config))
        extra = ["--init-from", str(tmp_path / "gpt2"), "--text-field", "article"]
    else:  # the checkpoint as shipped, at dropout 0 so that the two engines' losses compare
        shutil.copytree(BPE_STOCK, tmp_path / "gpt2")
        config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
        config.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        (tmp_path / "gpt2" / "config.json").write_text(json.dumps(config))
        extra = ["--init-from", str(tmp_path / "gpt2")]
    for engine in ENGINES:
        runtime.seed_everything(0)
        assert cli.main(["pretrain", "--data", str(english), "--output-dir", str(tmp_path / engine),
                         "--engine", engine, *extra, *_sets(TINY_PT)]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["global_step"] >= 2 and result["eval"]["tokens"] > 0
    # the same objective on both: every target of a packed block, end-of-text included (HF rounds
    # logged losses to 4 decimals, hence abs 1e-4; 1e-4 relative is the engines' agreement elsewhere)
    compiled, eager = _losses(tmp_path / "compiled"), _losses(tmp_path / "eager")
    assert len(compiled) == len(eager) >= 2
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-4)


def test_every_target_of_a_packed_block_is_scored_end_of_text_included():
    """pad = eos made the compiled engine skip the <|endoftext|> targets (a pretrained model never
    learned to stop) and the eager count leave them out while HF's loss added them in: the compiled
    step's loss must be HF's mean over all targets, and the Trainer's count all of them."""
    from mindnlp.transformers import GPT2LMHeadModel

    from ms_gpt2.data.tokenization import load_vocabulary
    from ms_gpt2.engine.compiled import CompiledEngine
    from ms_gpt2.models.gpt2 import IGNORE_INDEX, ignored_label_id, loss_token_count
    from ms_gpt2.jobs.pretrain import _fresh_model_config

    import torch

    tok = load_vocabulary(BPE_STOCK)
    m = {"n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4, "dropout": 0.0}
    runtime.seed_everything(0)
    model = GPT2LMHeadModel(_fresh_model_config(tok, m))
    assert ignored_label_id(model) == IGNORE_INDEX
    eos = tok.eos_token_id
    rng = np.random.default_rng(0)
    ids = rng.integers(1, len(tok), size=(2, 12))
    ids[:, [3, 7, 11]] = eos  # documents end inside the blocks, and at the last position
    assert int(loss_token_count(torch.tensor(ids), ignored_label_id(model))) == 2 * 11
    with torch.no_grad():
        want = float(model(input_ids=torch.tensor(ids), labels=torch.tensor(ids)).loss)  # HF: mean over all
    model.train()
    engine = CompiledEngine(model, {}, max_grad_norm=0.0)
    loss, _ = engine.train_step({"input_ids": ids, "labels": ids}, 0.0, 0)
    assert loss == pytest.approx(want, rel=1e-5)


def _nlpcc_rows(n):
    rows = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")]
    return sorted(rows, key=lambda r: len(r["article"]))[:n]


def _expected_first_loss(model_dir, data, max_seq_len, batch_size):
    """The first batch's loss at the checkpoint's weights, from its logits in NumPy: targets whose
    label is [PAD] (padding, and the article's blanked labels under summary_only_loss) left out."""
    import torch

    from ms_gpt2.data.tokenization import load_vocabulary
    from ms_gpt2.data.nlpcc import _text_lines
    from ms_gpt2.data.examples import train_pipeline
    from ms_gpt2.models.gpt2 import GPT2ForSummarization, load_model

    tok = load_vocabulary(model_dir)
    batch = next(train_pipeline(_text_lines(data, 0, batch_size), tok, max_seq_len, batch_size, shuffle=False,
                                article_loss_weight=0.0).create_dict_iterator(num_epochs=1, output_numpy=True))
    model = load_model(model_dir, GPT2ForSummarization, tokenizer=tok)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(batch["input_ids"].astype(np.int64))).logits.numpy().astype(np.float64)
    logp = logits[:, :-1] - logits[:, :-1].max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    targets = batch["labels"][:, 1:]
    scored = targets != tok.pad_token_id
    assert 0 < scored.sum() < (batch["input_ids"][:, 1:] != tok.pad_token_id).sum()  # article + padding blanked
    nll = -np.take_along_axis(logp, targets[..., None].astype(np.int64), -1)[..., 0]
    return float(nll[scored].mean())


@pytest.mark.parametrize("engine", ENGINES)
def test_fine_tuning_a_bert_vocabulary_checkpoint_without_pad_token_id(engine, tmp_path, capsys):
    """uer's GPT-2 checkpoints name no pad_token_id: [PAD] comes from the vocabulary, and neither
    padding nor the blanked article labels are scored (the first logged loss, at the checkpoint's
    weights, equals an independent NumPy loss over the summary tokens alone)."""
    data = write_jsonl(tmp_path / "d.jsonl", _nlpcc_rows(4))
    model_dir = tmp_path / "uer"
    shutil.copytree(BERT_NOPAD, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # the first loss without dropout's noise
    (model_dir / "config.json").write_text(json.dumps(config))
    runtime.seed_everything(0)
    assert cli.main(["train", "--config", "configs/smoke.yaml", "--data", str(data), "--init-from", str(model_dir),
                     "--output-dir", str(tmp_path / "ft"), "--engine", engine, *_sets([
                         "data.max_seq_len=64", "data.max_summary_len=20", "data.train_ratio=1.0",
                         "data.shuffle=false", "data.summary_only_loss=true", "model.dropout=0.0",
                         "training.per_device_train_batch_size=4", "training.num_train_epochs=1",
                         "training.warmup_steps=0", "training.logging_steps=1"])]) == 0
    capsys.readouterr()
    want = _expected_first_loss(model_dir, data, 64, 4)
    assert _losses(tmp_path / "ft")[0] == pytest.approx(want, abs=1e-4)  # logged to 4 decimals
    saved = json.loads((tmp_path / "ft" / "model" / "config.json").read_text())
    assert saved["pad_token_id"] == 0  # [PAD], and the model saved with it


def test_fine_tuning_for_summarization_refuses_a_bpe_checkpoint_in_one_line(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", _nlpcc_rows(2))
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--config", "configs/smoke.yaml", "--data", str(data), "--init-from", str(BPE_STOCK),
                  "--output-dir", str(tmp_path / "ft")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1
    assert str(BPE_STOCK) in err[0] and "vocab.txt" in err[0]


def test_json_lines_given_to_pretrain_without_text_field_are_refused(tmp_path, capsys):
    """NLPCC JSON lines read as plain text would be trained on braces, keys and summaries."""
    data = write_jsonl(tmp_path / "nlpcc.jsonl", _nlpcc_rows(3))
    with pytest.raises(SystemExit) as info:
        cli.main(["pretrain", "--data", str(data), "--output-dir", str(tmp_path / "o"), *_sets(TINY_PT)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"{data}:1:" in err and "--text-field" in err and "'article'" in err
    assert not (tmp_path / "o" / "checkpoint-1").exists()
    # plain text that merely contains braces is still plain text
    from ms_gpt2.data.corpus import scan_corpus

    text = tmp_path / "t.txt"
    text.write_text('{"a": 1}\nplain prose after a JSON-looking line\n', encoding="utf-8")
    assert scan_corpus(text).documents == 2


def test_pretrain_takes_engine_like_train():
    args = cli.build_parser().parse_args(["pretrain", "--data", "d", "--output-dir", "o", "--engine", "eager"])
    assert "engine=eager" in config_overrides(args)
    from ms_gpt2.infra.config import load_config

    assert load_config(None, config_overrides(args))["engine"] == "eager"
    assert load_config(None, ["engine=eager"])["engine"] == "eager"  # --set engine=eager
    args = cli.build_parser().parse_args(["pretrain", "--objective", "mlm-nsp", "--data", "d", "--output-dir", "o",
                                          "--engine", "compiled"])
    assert load_config(None, config_overrides(args))["engine"] == "compiled"
