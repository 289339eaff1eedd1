"""Reading NLPCC files: bad lines named by file:line or skipped and counted; deterministic split."""
import json

import pytest

from conftest import DEMO_DATA, write_jsonl
from ms_gpt2.data.nlpcc import DataError, NLPCCSource, parse_record, records, scan, split_sizes

GOOD = [{"article": f"第{i}篇文章的正文。", "summarization": f"摘要{i}"} for i in range(10)]


@pytest.mark.parametrize("raw,reason", [
    (b'{"article": "a", "summarization": ', "invalid JSON"),
    (b'["article", "summarization"]', "expected a JSON object"),
    (b'{"article": "a"}', "missing key 'summarization'"),
    (b'{"summarization": "s"}', "missing key 'article'"),
    (b'{"article": "  ", "summarization": "s"}', "empty 'article'"),
    (b'{"article": "a", "summarization": ""}', "empty 'summarization'"),
    (b'{"article": 3, "summarization": "s"}', "'article' must be a string"),
    (b'{"article": "\xff\xfe", "summarization": "s"}', "not valid UTF-8"),
])
def test_each_kind_of_bad_line_is_named_with_file_and_line(tmp_path, raw, reason):
    path = write_jsonl(tmp_path / "news.jsonl", [GOOD[0], GOOD[1], raw, GOOD[2]])
    with pytest.raises(DataError) as info:
        scan(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert reason in str(info.value)
    assert info.value.line == 3


def test_skip_bad_lines_counts_them_and_the_pipeline_reads_only_good_ones(tmp_path):
    rows = [GOOD[0], b"not json", GOOD[1], b"", b"   ", b'{"article": "\xff"}', GOOD[2],
            b'{"article": "x", "summarization": " "}', GOOD[3]]
    path = write_jsonl(tmp_path / "news.jsonl", rows)
    before = path.read_bytes()
    source = NLPCCSource.open(path, tmp_path / "work", train_ratio=1.0, skip_bad_lines=True)
    assert [e.line for e in source.report.bad] == [2, 6, 8]
    assert source.report.records == 4
    got = list(records(source.lines("all")))
    assert got == [(g["article"], g["summarization"]) for g in GOOD[:4]]
    assert path.read_bytes() == before  # the user's file is never rewritten


def test_a_clean_file_is_read_in_place(tmp_path):
    path = write_jsonl(tmp_path / "news.jsonl", GOOD)
    source = NLPCCSource.open(path, tmp_path / "work")
    assert source.path == path and not (tmp_path / "work").exists()


@pytest.mark.parametrize("make,reason", [
    (lambda p: p, "no such file"),
    (lambda p: (p.mkdir(), p)[1], "is a directory"),
    (lambda p: write_jsonl(p, [b"", b"  "]), "no usable records"),
])
def test_unusable_paths_are_clear_errors(tmp_path, make, reason):
    path = make(tmp_path / "x.jsonl")
    with pytest.raises(DataError, match=reason):
        scan(path)


def test_skipping_everything_is_still_an_error(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [b"{", b"}"])
    with pytest.raises(DataError, match=r"no usable records \(2 bad lines skipped\)"):
        scan(path, skip_bad_lines=True)


def test_record_check_failures_carry_the_line_too(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", GOOD[:3])
    with pytest.raises(DataError, match=r":2: too long"):
        scan(path, check=lambda a, s: "too long" if s == "摘要1" else None)


@pytest.mark.parametrize("n,fraction,ratio,want", [
    (64, 1.0, 0.9, (58, 6)),
    (50_000, 0.001, 0.9, (45, 5)),  # the tutorial's setting on NLPCC2017's 50k articles
    (10, 1.0, 1.0, (10, 0)),
    (2, 1.0, 0.9, (1, 1)),  # keep one test example when a test set is asked for
    (1, 0.5, 0.9, (1, 0)),
])
def test_split_sizes(n, fraction, ratio, want):
    assert split_sizes(n, fraction, ratio) == want


def test_split_is_by_position_train_then_test(tmp_path):
    path = write_jsonl(tmp_path / "news.jsonl", GOOD)
    source = NLPCCSource.open(path, tmp_path / "w", fraction=0.8, train_ratio=0.75)
    assert (source.n_train, source.n_test) == (6, 2)
    assert [a for a, _ in records(source.lines("train"))] == [g["article"] for g in GOOD[:6]]
    assert [a for a, _ in records(source.lines("test"))] == [g["article"] for g in GOOD[6:8]]


def test_parse_record_strips_and_returns_pair():
    assert parse_record(json.dumps({"article": " 正文 ", "summarization": "摘要\n", "x": 1})) == ("正文", "摘要")


def test_bundled_demo_corpus_is_valid_and_large_enough():
    report = scan(DEMO_DATA)
    assert report.records >= 60 and not report.bad
