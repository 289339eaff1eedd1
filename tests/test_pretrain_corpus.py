"""Reading raw-text corpora: one document per line, or one JSON field; bad lines named or skipped."""
import json

import pytest

from conftest import write_jsonl
from ms_gpt2.data.corpus import clean_copy, iter_documents, scan_corpus, split_documents
from ms_gpt2.data.nlpcc import DataError
from ms_gpt2.infra.errors import UserError


def test_plain_text_is_one_document_per_line_blank_lines_ignored(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes("第一篇。\n\n  第二篇，有空格。  \r\n\u3000\n   \n第三篇！\n".encode("utf-8"))
    docs = list(iter_documents(path))
    assert [d.text for d in docs] == ["第一篇。", "第二篇，有空格。", "第三篇！"]
    assert [d.line for d in docs] == [1, 3, 6] and all(d.path == str(path) for d in docs)


def test_text_field_reads_only_that_field_so_summaries_never_leak(tmp_path):
    rows = [{"article": "正文一\n第二行", "summarization": "摘要一"}, {"summarization": "摘要二", "article": "正文二"}]
    path = write_jsonl(tmp_path / "news.jsonl", rows)
    docs = list(iter_documents(path, text_field="article"))
    assert [d.text for d in docs] == ["正文一\n第二行", "正文二"]
    assert not any("摘要" in d.text for d in docs)


@pytest.mark.parametrize("raw,field,reason", [
    (b"\xff\xfe bad", None, "not valid UTF-8"),
    (b'{"article": "a"', "article", "invalid JSON"),
    (b'["article"]', "article", "expected a JSON object with 'article'"),
    (b'{"summarization": "s"}', "article", "missing key 'article'"),
    (b'{"article": 3}', "article", "'article' must be a string"),
    (b'{"article": "  "}', "article", "empty 'article'"),
])
def test_bad_lines_name_file_and_line_or_are_skipped_and_counted(tmp_path, raw, field, reason):
    good = (lambda i: json.dumps({"article": f"文{i}"}, ensure_ascii=False)) if field else (lambda i: f"文{i}")
    path = write_jsonl(tmp_path / "c.txt", [good(1), raw, good(2)])
    with pytest.raises(DataError) as info:
        list(iter_documents(path, field))
    assert str(info.value).startswith(f"{path}:2: ") and reason in str(info.value)

    report = scan_corpus(path, field, skip_bad_lines=True)
    assert (report.documents, [e.line for e in report.bad]) == (2, [2])
    before = path.read_bytes()
    copy = clean_copy(report, tmp_path / "work")
    assert copy != path and path.read_bytes() == before  # the user's file is never rewritten
    assert [d.text for d in iter_documents(copy, field)] == ["文1", "文2"]


def test_a_clean_file_is_read_in_place_and_empty_corpora_are_errors(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a\nb\n", encoding="utf-8")
    assert clean_copy(scan_corpus(path), tmp_path / "work") == path
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="no documents"):
        scan_corpus(tmp_path / "blank.txt")
    with pytest.raises(DataError, match="no such file"):
        scan_corpus(tmp_path / "missing.txt")


@pytest.mark.parametrize("n,fraction,want", [(100, 0.05, (95, 5)), (10, 0.05, (9, 1)), (1, 0.5, (1, 0)),
                                             (3, 0.9, (1, 2)), (7, 0.0, (7, 0))])
def test_held_out_documents_come_from_the_end(n, fraction, want):
    assert split_documents(n, fraction) == want


def test_eval_fraction_out_of_range_is_a_user_error():
    with pytest.raises(UserError, match=r"eval_fraction must be in \[0, 1\)"):
        split_documents(10, 1.0)
