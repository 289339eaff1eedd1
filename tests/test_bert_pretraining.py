"""BERT MLM + NSP pretraining end to end through ``ms-gpt2 pretrain --objective mlm-nsp`` on the bundled
corpus: train, check that it learned (accuracy above chance on its training data), reload the checkpoint."""
import json

import numpy as np
import pytest

from conftest import DEMO_DATA
from ms_gpt2 import cli
from ms_gpt2.cli.pretrain import pretrain_objective
from ms_gpt2.infra.config import ConfigError, load_config

# A tiny BERT (1 layer, width 64) on the first 10 articles of the bundled corpus (9 trained on, 1 held
# out; 23 sentence pairs, one batch): 60 full-batch steps. Static masking repeats epoch 0's pairs and
# masks, the examples the training-data scores are taken on, so a model that learns must fit them.
# Measured (2 shared CPU cores, about 85 s): MLM accuracy 1.00 (chance 0.059), NSP 1.00 (chance 0.609); the
# same run with dynamic masking (new pairs and masks each epoch) stays near chance: MLM 0.066.
N_ARTICLES, EPOCHS, BATCH = 10, 60, 24
TINY = ["model.n_positions=48", "model.n_embd=64", "model.n_layer=1", "model.n_head=2", "model.dropout=0.0",
        "data.max_seq_len=48", f"training.per_device_train_batch_size={BATCH}", f"training.num_train_epochs={EPOCHS}",
        "training.learning_rate=3.0e-3", "training.warmup_steps=5", "training.logging_steps=10",
        "training.lr_scheduler_type=constant_with_warmup", "pretrain.masking=static",
        f"training.save_steps={EPOCHS // 2}", "training.save_total_limit=1"]


def pretrain_argv(output_dir, data, sets, *extra):
    argv = ["pretrain", "--objective", "mlm-nsp", "--device", "cpu", "--seed", "0", "--data", str(data),
            "--output-dir", str(output_dir), *extra]
    for item in sets:
        argv += ["--set", item]
    return argv


def test_tiny_bert_learns_mlm_and_nsp_and_its_checkpoint_reproduces_the_scores(char_vocab_dir, tmp_path, capsys,
                                                                                monkeypatch):
    from mindnlp.transformers import BertForPreTraining

    from ms_gpt2.jobs import bert_pretrain as bert_pretraining
    from ms_gpt2.infra import runtime
    from ms_gpt2.jobs.bert_pretrain import NOT_NEXT, SAME_DOCUMENT, ExampleBuilder, evaluate, read_sentences
    from ms_gpt2.data.nlpcc import _text_lines
    from ms_gpt2.data.tokenization import load_wordpiece

    data = tmp_path / "articles.jsonl"
    data.write_text("".join(open(DEMO_DATA, encoding="utf-8").readlines()[:N_ARTICLES]), encoding="utf-8")
    run = tmp_path / "run"
    scored = []  # the example builders the run scores: training sample, then held out
    monkeypatch.setattr(bert_pretraining, "evaluate",
                        lambda model, builder, *a, **k: scored.append(builder) or evaluate(model, builder, *a, **k))
    assert cli.main(pretrain_argv(run, data, TINY, "--text-field", "article", "--tokenizer", str(char_vocab_dir))) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scores = json.loads((run / "eval.json").read_text())
    assert printed["eval"] == scores and printed["objective"] == "mlm-nsp"
    assert (printed["train_documents"], printed["eval_documents"]) == (N_ARTICLES - 1, 1)
    pairs = printed["train_examples"]
    assert printed["global_step"] == EPOCHS * -(-pairs // BATCH)

    train = scores["train"]
    print("training-data scores:", json.dumps(train))
    # Learned, clearly: chance is always answering the commonest masked token (MLM) / the commoner
    # next-sentence label (NSP), counted on these very examples.
    assert train["mlm_accuracy"] >= train["mlm_majority_baseline"] + 0.5
    assert train["nsp_accuracy"] >= train["nsp_majority_baseline"] + 0.25
    assert train["mlm_loss"] < 0.5 * np.log(len(load_wordpiece(run / "model")))  # uniform guess: log V
    assert train["examples"] == pairs and abs(train["loss"] - train["mlm_loss"] - train["nsp_loss"]) < 1e-9
    held_out = scores["eval"]
    assert held_out["examples"] > 0 and 0 <= held_out["mlm_accuracy"] <= 1 and 0 <= held_out["nsp_accuracy"] <= 1
    # one held-out document: its NSP negatives are its own other sentences, never a training document's
    assert held_out["nsp_negatives"] == SAME_DOCUMENT
    pairs_scored = scored[1].pairs(0)
    assert len(scored[1].documents) == 1 and (pairs_scored.label == NOT_NEXT).any()
    assert (pairs_scored.b_doc == 0).all() and (pairs_scored.b_sent != pairs_scored.a_sent + 1)[
        pairs_scored.label == NOT_NEXT].all()
    log = [json.loads(line) for line in (run / "loss_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"] / 2 and (run / "loss_curve.png").is_file()

    # Hugging Face layout: from_pretrained gives the trained weights back; scoring it reproduces eval.json
    model = BertForPreTraining.from_pretrained(str(run / "model"), local_files_only=True)
    tokenizer = load_wordpiece(run / "model")
    documents = read_sentences(_text_lines(data, 0, N_ARTICLES - 1), tokenizer, "article")
    again = evaluate(model, ExampleBuilder(documents, tokenizer, 48, seed=runtime.ensure().seed, masking="static"),
                     batch_size=BATCH)
    for key in ("mlm_accuracy", "nsp_accuracy", "examples", "masked_tokens"):
        assert again[key] == train[key], key
    assert abs(again["loss"] - train["loss"]) < 1e-5


def test_objective_and_options_are_checked_before_any_data_is_read(tmp_path, capsys):
    with pytest.raises(ConfigError, match="pretrain.objective=mlm: must be one of clm, mlm-nsp"):
        pretrain_objective(load_config(None, ["pretrain.objective=mlm"]))
    assert pretrain_objective(load_config(None)) == "clm"  # GPT's stays the default
    with pytest.raises(SystemExit) as exit_:
        cli.main(pretrain_argv(tmp_path / "run", tmp_path / "missing.txt", ["pretrain.masking=sometimes"]))
    assert exit_.value.code == 2
    assert "pretrain.masking=sometimes: must be one of dynamic, static" in capsys.readouterr().err


def test_a_corpus_without_two_sentence_documents_is_named(char_vocab_dir, tmp_path, capsys):
    path = tmp_path / "one_sentence_each.txt"
    path.write_text("第一篇只有一句。\n第二篇也只有一句\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        cli.main(pretrain_argv(tmp_path / "run", path, TINY, "--tokenizer", str(char_vocab_dir)))
    assert exit_.value.code == 2
    assert "one_sentence_each.txt: no training document has two sentences" in capsys.readouterr().err


def test_compiled_and_eager_bert_log_the_same_losses(char_vocab_dir, tmp_path, capsys):
    """The compiled engine's BERT graph trains as the eager BertForPreTraining does: 3 batches an
    epoch at gradient accumulation 2 (so the epoch's last group is one short micro-batch, averaged
    as the Trainer averages it), clipping and warm-up on; losses within rtol 1e-4, weights 1e-4."""
    from safetensors.numpy import load_file

    data = tmp_path / "articles.jsonl"
    data.write_text("".join(open(DEMO_DATA, encoding="utf-8").readlines()[:N_ARTICLES]), encoding="utf-8")
    sets = [s for s in TINY if not s.startswith(("training.per_device", "training.num_train", "training.logging",
                                                 "training.save_steps"))]
    sets += ["training.per_device_train_batch_size=8", "training.num_train_epochs=3", "training.logging_steps=1",
             "training.gradient_accumulation_steps=2", "training.save_steps=1000", "training.max_grad_norm=0.5"]
    logs, weights = {}, {}
    for engine in ("eager", "compiled"):
        run = tmp_path / engine
        assert cli.main(pretrain_argv(run, data, sets, "--text-field", "article", "--tokenizer", str(char_vocab_dir),
                                      "--engine", engine)) == 0
        capsys.readouterr()
        logs[engine] = [json.loads(line) for line in (run / "loss_log.jsonl").read_text().splitlines()]
        weights[engine] = load_file(str(run / "model" / "model.safetensors"))
    eager, compiled = logs["eager"], logs["compiled"]
    assert [e["step"] for e in eager] == [e["step"] for e in compiled] == list(range(1, 7))
    np.testing.assert_allclose([e["loss"] for e in compiled], [e["loss"] for e in eager], rtol=1e-4)
    np.testing.assert_allclose([e["grad_norm"] for e in compiled], [e["grad_norm"] for e in eager], rtol=1e-3)
    assert eager[-1]["loss"] < eager[0]["loss"]
    assert weights["eager"].keys() == weights["compiled"].keys()
    for key in weights["eager"]:
        np.testing.assert_allclose(weights["compiled"][key], weights["eager"][key], rtol=0, atol=1e-4, err_msg=key)
