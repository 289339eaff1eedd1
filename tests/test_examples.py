"""The tutorial's example layout, its text_pari bug, truncation, padding and the shifted loss."""
import numpy as np
import pytest

from ms_gpt2.infra import runtime

runtime.ensure()

import mindspore.dataset as msds  # noqa: E402
import torch  # noqa: E402

from conftest import write_jsonl  # noqa: E402
from ms_gpt2.data.nlpcc import DataError, NLPCCSource  # noqa: E402
from ms_gpt2.data.examples import encode_example, encode_prompt, summary_fits, prompt_pipeline, train_pipeline  # noqa: E402
from ms_gpt2.models.gpt2 import GPT2ForSummarization, build_config  # noqa: E402
from ms_gpt2.data.tokenization import decode  # noqa: E402

ARTICLE = "青禾市轨道交通5号线一期工程于本月18日正式开通运营。该线路全长约24公里。"
SUMMARY = "青禾市地铁5号线一期开通。"


def segments(tokenizer, ids):
    """Split [CLS] a [SEP] b [SEP] [PAD]* into (a_ids, b_ids, n_pad)."""
    ids = list(ids)
    assert ids[0] == tokenizer.cls_token_id
    first = ids.index(tokenizer.sep_token_id)
    second = ids.index(tokenizer.sep_token_id, first + 1)
    pads = ids[second + 1:]
    assert set(pads) <= {tokenizer.pad_token_id}
    return ids[1:first], ids[first + 1:second], len(pads)


def test_summary_is_in_every_example(tokenizer):
    ex = encode_example(tokenizer, ARTICLE, SUMMARY, max_seq_len=64)
    article_ids, summary_ids, n_pad = segments(tokenizer, ex["input_ids"])
    assert decode(tokenizer, summary_ids) == SUMMARY
    assert decode(tokenizer, article_ids) == ARTICLE
    assert len(ex["input_ids"]) == 64 and n_pad > 0


def test_the_tutorials_text_pari_typo_really_drops_the_summary(tokenizer):
    """What we fix: the tutorial's keyword is swallowed and the summary never reaches the model."""
    buggy = tokenizer(text=ARTICLE, text_pari=SUMMARY, padding="max_length", truncation="only_first",
                      max_length=64)["input_ids"]
    assert tokenizer.sep_token_id in buggy
    assert list(buggy).count(tokenizer.sep_token_id) == 1  # [CLS] article [SEP] and nothing else
    ours = encode_example(tokenizer, ARTICLE, SUMMARY, 64)["input_ids"]
    assert list(ours).count(tokenizer.sep_token_id) == 2


def test_only_the_article_is_truncated(tokenizer):
    ex = encode_example(tokenizer, ARTICLE * 5, SUMMARY, max_seq_len=40)
    article_ids, summary_ids, n_pad = segments(tokenizer, ex["input_ids"])
    assert len(ex["input_ids"]) == 40 and n_pad == 0
    assert decode(tokenizer, summary_ids) == SUMMARY
    assert decode(tokenizer, article_ids) == (ARTICLE * 5)[:len(article_ids)]


def test_padding_is_pad_id_and_masked(tokenizer):
    ex = encode_example(tokenizer, ARTICLE, SUMMARY, 80)
    real = (ex["input_ids"] != tokenizer.pad_token_id)
    assert tokenizer.pad_token_id == 0
    np.testing.assert_array_equal(ex["attention_mask"], real.astype(np.int32))
    assert real[:-1].sum() == real.sum() - 0 and not real[-1]  # right padding
    np.testing.assert_array_equal(ex["labels"], ex["input_ids"])  # the tutorial's whole-sequence loss


def test_summary_only_loss_blanks_the_article_labels(tokenizer):
    ex = encode_example(tokenizer, ARTICLE, SUMMARY, 80, summary_only_loss=True)
    first_sep = list(ex["input_ids"]).index(tokenizer.sep_token_id)
    assert set(ex["labels"][: first_sep + 1]) == {tokenizer.pad_token_id}
    np.testing.assert_array_equal(ex["labels"][first_sep + 1:], ex["input_ids"][first_sep + 1:])


def test_a_summary_that_cannot_fit_is_an_error_not_a_silent_overlong_example(tokenizer):
    check = summary_fits(tokenizer, max_seq_len=12)
    assert check(ARTICLE, SUMMARY) is not None and "no room for the article" in check(ARTICLE, SUMMARY)
    assert summary_fits(tokenizer, 64)(ARTICLE, SUMMARY) is None
    with pytest.raises(DataError, match="no room for the article"):
        encode_example(tokenizer, ARTICLE, SUMMARY, max_seq_len=12)


def test_prompt_is_cls_article_sep_within_budget(tokenizer):
    ids = encode_prompt(tokenizer, ARTICLE * 3, max_prompt_len=30)
    assert len(ids) == 30 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert list(ids).count(tokenizer.sep_token_id) == 1


def test_loss_is_shifted_cross_entropy_ignoring_pad(tokenizer):
    runtime.seed_everything(0)
    model = GPT2ForSummarization(build_config(tokenizer, 64, 32, 1, 2, dropout=0.0)).eval()
    ex = encode_example(tokenizer, ARTICLE, SUMMARY, 48)
    ids = torch.tensor(ex["input_ids"][None].astype(np.int64))
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    logits = out.logits.numpy()[0].astype(np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    targets = ex["input_ids"][1:]
    keep = targets != tokenizer.pad_token_id
    want = -log_probs[:-1][np.arange(len(targets)), targets][keep].mean()
    assert float(out.loss) == pytest.approx(want, rel=1e-5)
    # an unshifted loss would differ: the check above is sensitive to the shift
    unshifted = -log_probs[np.arange(48), ex["input_ids"]][ex["input_ids"] != 0].mean()
    assert abs(unshifted - want) > 1e-3


def test_train_pipeline_batches_and_shuffles_reproducibly(tokenizer, tmp_path):
    rows = [{"article": f"第{i}篇文章。" + ARTICLE, "summarization": f"摘要{i}"} for i in range(10)]
    source = NLPCCSource.open(write_jsonl(tmp_path / "d.jsonl", rows), tmp_path / "w", train_ratio=1.0)

    def first_tokens(seed):
        msds.config.set_seed(seed)
        ds = train_pipeline(source.lines("train"), tokenizer, 48, batch_size=4, shuffle=True)
        batches = list(ds.create_dict_iterator(num_epochs=1, output_numpy=True))
        assert [b["input_ids"].shape for b in batches] == [(4, 48), (4, 48), (2, 48)]
        return [decode(tokenizer, row[1:3]) for b in batches for row in b["input_ids"]]

    order = first_tokens(1)
    assert sorted(order) == sorted(f"第{i}" for i in range(10))
    assert first_tokens(1) == order
    assert first_tokens(2) != order


def test_test_pipeline_keeps_article_and_reference(tokenizer, tmp_path):
    source = NLPCCSource.open(write_jsonl(tmp_path / "d.jsonl", [{"article": ARTICLE, "summarization": SUMMARY}]),
                              tmp_path / "w", train_ratio=1.0)
    row = next(prompt_pipeline(source.lines("all"), tokenizer, 20).create_dict_iterator(num_epochs=1, output_numpy=True))
    assert row["input_ids"].shape == (1, 20)
    assert str(row["article"][0]) == ARTICLE and str(row["summary"][0]) == SUMMARY
