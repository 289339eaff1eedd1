"""Character-level ROUGE checked against values computed by hand."""
import pytest

from ms_gpt2.jobs.evaluate import rouge


def test_rouge_matches_hand_computed_values():
    # reference 我爱北京天安门 (7 chars), prediction 我爱天安门 (5 chars)
    # ROUGE-1: 5 shared chars -> P 5/5, R 5/7
    # ROUGE-2: ref bigrams 我爱 爱北 北京 京天 天安 安门 (6), pred 我爱 爱天 天安 安门 (4), 3 shared
    # ROUGE-L: LCS 我爱天安门 = 5 -> P 5/5, R 5/7
    s = rouge([("我爱北京天安门", "我爱天安门")])
    f = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    assert s["rouge-1"] == pytest.approx({"precision": 1.0, "recall": 5 / 7, "f1": f(1, 5 / 7)})
    assert s["rouge-2"] == pytest.approx({"precision": 3 / 4, "recall": 3 / 6, "f1": f(3 / 4, 1 / 2)})
    assert s["rouge-l"] == pytest.approx({"precision": 1.0, "recall": 5 / 7, "f1": f(1, 5 / 7)})


def test_rouge_is_a_macro_average_and_ignores_whitespace():
    s = rouge([("天 安 门", "天安门"), ("北京", "上海")])
    assert s["rouge-1"]["f1"] == pytest.approx(0.5)
    assert s["rouge-l"]["recall"] == pytest.approx(0.5)


def test_rouge_needs_pairs():
    with pytest.raises(ValueError):
        rouge([])
