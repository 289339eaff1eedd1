"""Pretraining on raw text: packing into full blocks, held-out loss, and fine-tuning from the result."""
import json

import numpy as np
import pytest

from conftest import DEMO_DATA, write_jsonl
from ms_gpt2 import cli
from ms_gpt2.cli.common import config_overrides
from ms_gpt2.infra import runtime
from ms_gpt2.jobs.pretrain import document_ids, document_pipeline, pack, separator_id

TINY_PT = ["model.n_positions=64", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "model.dropout=0.0",
           "data.max_seq_len=32", "pretrain.eval_fraction=0.1", "training.per_device_train_batch_size=16",
           "training.num_train_epochs=1", "training.learning_rate=1.0e-3", "training.warmup_steps=0",
           "training.logging_steps=4"]


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def test_pack_cuts_full_blocks_and_loses_or_repeats_no_token():
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, 100, size=n).astype(np.int32) for n in rng.integers(1, 40, size=50)]
    packed = pack(docs, 16)
    stream = np.concatenate(docs)
    assert packed.blocks.shape == (len(stream) // 16, 16)
    assert len(packed.tail) == len(stream) % 16 and packed.tokens == len(stream) and packed.documents == 50
    np.testing.assert_array_equal(np.concatenate([packed.blocks.reshape(-1), packed.tail]), stream)


@pytest.mark.parametrize("vocab", ["bert", "bpe"])
def test_documents_are_tokenized_and_each_followed_by_the_separator(vocab, tmp_path, tokenizer):
    from ms_gpt2.data.tokenization import load_vocabulary
    from ms_gpt2.data.nlpcc import _text_lines

    if vocab == "bert":
        tok, texts = tokenizer, ["青禾市开通地铁。", "第二篇文章", "第三篇"]
        assert separator_id(tok) == tok.sep_token_id
    else:
        tok, texts = load_vocabulary("tests/fixtures/gpt2-bpe-tiny"), ["Hello world.", "A second doc", "third"]
        assert separator_id(tok) == tok.eos_token_id
    path = tmp_path / "c.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    sep = separator_id(tok)
    rows = list(document_ids(document_pipeline(_text_lines(path, 0, 3), tok, sep)))
    assert len(rows) == 3
    for text, ids in zip(texts, rows):
        assert ids[-1] == sep and sep not in ids[:-1]
        assert ids[:-1].tolist() == tok(text, add_special_tokens=False)["input_ids"]
    if vocab == "bert":
        assert tok.cls_token_id not in np.concatenate(rows) and tok.pad_token_id not in np.concatenate(rows)


def _independent_heldout_loss(model_dir, articles, block_size):
    """Mean next-token NLL over the held-out stream, from the saved model's logits, in NumPy."""
    import torch

    from ms_gpt2.models.checkpoints import load_pretrained

    model, tok = load_pretrained(model_dir)
    stream = [i for a in articles for i in tok.convert_tokens_to_ids(tok.tokenize(a)) + [tok.sep_token_id]]
    chunks = [stream[i:i + block_size] for i in range(0, len(stream), block_size)]
    nll, n = 0.0, 0
    with torch.no_grad():
        for chunk in chunks:
            logits = model(torch.tensor([chunk])).logits.numpy()[0, :-1].astype(np.float64)
            logp = logits - logits.max(-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
            nll -= logp[np.arange(len(chunk) - 1), chunk[1:]].sum()
            n += len(chunk) - 1
    return nll / n, n


def test_pretrain_then_fine_tune_starts_from_exactly_the_pretrained_weights(tmp_path, capsys):
    from safetensors.numpy import load_file

    runtime.seed_everything(0)
    pt = tmp_path / "pt"
    assert cli.main(["pretrain", "--data", DEMO_DATA, "--text-field", "article", "--output-dir", str(pt),
                     "--set", "tokenizer.vocab_size=500", *_sets(TINY_PT)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["train_documents"], out["eval_documents"]) == (58, 6)
    assert out["global_step"] == -(-out["train_blocks"] // 16)
    for name in ("config.json", "model.safetensors", "vocab.txt", "ms_gpt2_config.yaml"):
        assert (pt / "model" / name).is_file()
    assert (pt / "loss_log.jsonl").is_file() and (pt / "loss_curve.png").is_file()

    # the held-out loss is over the last 6 articles only (never their summaries), every token counted
    rows = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")]
    want, n_tokens = _independent_heldout_loss(pt / "model", [r["article"] for r in rows[-6:]], 32)
    saved = json.loads((pt / "eval.json").read_text())
    assert saved == out["eval"] and saved["tokens"] == n_tokens
    assert saved["loss"] == pytest.approx(want, rel=1e-5)
    assert saved["perplexity"] == pytest.approx(np.exp(want), rel=1e-5)

    # fine-tune from it, lr 0, naming no tokenizer: the checkpoint's vocabulary and weights, unchanged
    data = write_jsonl(tmp_path / "ft.jsonl", rows[:6])
    assert cli.main(["train", "--data", str(data), "--output-dir", str(tmp_path / "ft"),
                     "--config", "configs/smoke.yaml", *_sets([
                         f"model.init_from={pt / 'model'}", "data.max_seq_len=64", "data.max_summary_len=20",
                         "data.train_ratio=1.0", "training.per_device_train_batch_size=6",
                         "training.num_train_epochs=1", "training.learning_rate=0.0", "training.warmup_steps=0"])]) == 0
    assert (tmp_path / "ft" / "model" / "vocab.txt").read_text() == (pt / "model" / "vocab.txt").read_text()
    a = load_file(str(pt / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "ft" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)


def test_init_from_is_an_alias_of_model_init_from():
    args = cli.build_parser().parse_args(["train", "--data", "d", "--output-dir", "o", "--init-from", "runs/pt/model"])
    assert config_overrides(args) == ["model.init_from=runs/pt/model"]
    args = cli.build_parser().parse_args(["pretrain", "--data", "d", "--output-dir", "o", "--text-field", "article"])
    assert config_overrides(args) == ["pretrain.text_field=article"]


def test_a_bad_corpus_line_stops_pretraining_with_file_and_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "c.jsonl", [{"article": "第一篇"}, b'{"summarization": "x"}', {"article": "第三篇"}])
    with pytest.raises(SystemExit) as info:
        cli.main(["pretrain", "--data", str(path), "--text-field", "article", "--output-dir", str(tmp_path / "o"),
                  *_sets(TINY_PT)])
    assert info.value.code == 2
    assert f"{path}:2: missing key 'article'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "model").exists()


def test_a_corpus_shorter_than_one_block_is_a_clear_error(tmp_path, capsys, char_vocab_dir):
    path = tmp_path / "c.txt"
    path.write_text("青禾市\n地铁\n", encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        cli.main(["pretrain", "--data", str(path), "--tokenizer", str(char_vocab_dir),
                  "--output-dir", str(tmp_path / "o"), *_sets(TINY_PT)])
    assert info.value.code == 2
    assert "fewer than one block of data.max_seq_len=32" in capsys.readouterr().err


def test_resumed_pretraining_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, char_vocab_dir):
    import shutil

    from safetensors.numpy import load_file

    from ms_gpt2.infra.config import load_config
    from ms_gpt2.jobs.pretrain import pretrain

    rows = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")][:10]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(r["article"] for r in rows) + "\n", encoding="utf-8")
    config = load_config(None, TINY_PT + [f"tokenizer.path={char_vocab_dir}", "pretrain.eval_fraction=0.0",
                                          "training.num_train_epochs=2", "training.save_steps=2",
                                          "training.save_total_limit=5"])
    runtime.seed_everything(0)
    straight = pretrain(config, corpus, tmp_path / "a")
    assert straight.global_step == 2 * -(-straight.train_blocks // 16) >= 4 and straight.eval is None
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    runtime.seed_everything(123)  # resuming restores the RNG state from the checkpoint
    resumed = pretrain(config, corpus, tmp_path / "b", resume="latest")
    assert resumed.global_step == straight.global_step
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_pretraining_shuffles_all_blocks_each_epoch_not_a_window_of_the_file():
    """30k blocks in file order (block i holds i): a shuffle buffer of 10k would draw the first batch
    from the first ~10k blocks; a global shuffle draws it from all of them. Each epoch has its own
    order, every block once, and the same (seed, epoch) gives the same order."""
    from ms_gpt2.jobs.pretrain import block_pipeline

    n = 30_000
    blocks = np.repeat(np.arange(n, dtype=np.int32)[:, None], 2, axis=1)

    def first_epoch_batches(epoch, count=None, **kw):
        it = block_pipeline(blocks, 256, **kw, epoch=epoch).create_dict_iterator(num_epochs=1, output_numpy=True)
        return [b["input_ids"][:, 0] for _, b in zip(range(count or 10**9), it)]

    first = first_epoch_batches(0, 1)[0]
    assert (first > 10_256).mean() > 0.5  # ~2/3 expected from a uniform draw; 0 from a 10k window
    epoch0 = np.concatenate(first_epoch_batches(0))
    assert sorted(epoch0.tolist()) == list(range(n))
    np.testing.assert_array_equal(first_epoch_batches(0, 1)[0], first)
    assert not np.array_equal(first_epoch_batches(1, 1)[0], first)
    assert not np.array_equal(first_epoch_batches(0, 1, seed=1)[0], first)
