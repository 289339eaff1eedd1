"""The Lead baseline: the article's first sentence, cut at 。！？ or at the reference's length."""
import json

import pytest

from conftest import DEMO_DATA
from ms_gpt2.jobs.evaluate import lead, lead_baseline, rouge


@pytest.mark.parametrize("article,reference,want", [
    ("青禾市地铁开通。乘客很多。", "地铁今日开通运营了吗好", "青禾市地铁开通。"),   # first sentence, 。 kept
    ("今天下雨了吗？明天晴。", "一二三四五六七八九十", "今天下雨了吗？"),          # ？ ends it too
    ("好消息！大家来看。", "一二三四五六七八九十", "好消息！"),                    # and ！
    ("青禾市地铁开通。乘客很多。", "开通了", "青禾市"),                            # the reference is shorter
    ("  没有句号的一整段文字  ", "一二三四五六七八九十一二三", "没有句号的一整段文字"),  # no end: the whole article
    ("甲，乙；丙。丁", None, "甲，乙；丙。"),                                      # no reference: no length cut
])
def test_lead_is_the_first_sentence_cut_at_the_reference_length(article, reference, want):
    assert lead(article, reference) == want


def test_lead_baseline_scores_the_leads_against_the_references():
    pairs = [("青禾市地铁开通。乘客很多。", "青禾地铁开通"), ("好消息！大家来看。", "坏消息")]
    assert lead_baseline(pairs) == rouge([("青禾地铁开通", "青禾市地铁开"), ("坏消息", "好消息")])


def test_evaluate_reports_the_lead_baseline_on_the_same_split(tmp_path):
    from ms_gpt2.jobs import tasks
    from ms_gpt2.infra.config import load_config
    from ms_gpt2.jobs.summarize import Summarizer

    fixture = "tests/fixtures/gpt2-bert-tiny"
    config = load_config(None, ["data.max_seq_len=64", "data.max_summary_len=8", "generation.num_beams=1",
                                "generation.max_new_tokens=2", "generation.no_repeat_ngram_size=0"])
    scores = tasks.evaluate(Summarizer.from_pretrained(fixture, config), DEMO_DATA, split="test", limit=2,
                            workdir=tmp_path)
    rows = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")][58:60]  # test split: records 58..63
    want = rouge([(r["summarization"], lead(r["article"], r["summarization"])) for r in rows])
    assert scores["lead"] == want and scores["examples"] == 2
    assert scores["lead"]["rouge-1"]["f1"] > 0  # the demo's leads share characters with the references
