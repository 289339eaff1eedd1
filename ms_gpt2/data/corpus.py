"""Documents from raw-text corpora, each with the file:line it came from. No model assumptions.

Two formats:

* **plain text**: one document per line; blank (or whitespace-only) lines are ignored, and each
  document is stripped of surrounding whitespace;
* **JSON lines** with ``text_field`` (e.g. ``"article"`` for NLPCC2017 files): each line is a JSON
  object and only that field is the document, every other key (the summary included) is ignored.

A bad line (not UTF-8; with ``text_field`` also bad JSON, not an object, a missing, non-string or
empty field) is a :class:`~ms_gpt2.data.nlpcc.DataError` naming ``file:line``, or, with
``skip_bad_lines``, it is counted and left out, exactly as ``ms_gpt2.data.nlpcc`` treats NLPCC files
(its checking helpers are reused here; a UTF-8 byte-order mark is read past). The user's file is
never modified: when a pipeline needs a file holding only the good documents, or one without the
byte-order mark, :func:`clean_copy` writes one elsewhere.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ms_gpt2.infra.errors import UserError
from ms_gpt2.data.nlpcc import (DataError, _lines, _text_lines, check_path, decode_line, json_object,
                                starts_with_bom, text_field as _text_field)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    text: str
    path: str
    line: int


@dataclass
class CorpusReport:
    """What one pass over a corpus file found."""

    path: Path
    text_field: str | None
    documents: int = 0
    bad: list[DataError] = field(default_factory=list)
    blank_lines: int = 0


def parse_document(raw: bytes | str, path="<input>", line: int | None = None, text_field: str | None = None) -> str:
    """One line -> the document's text, stripped; ``""`` for a blank plain-text line; or :class:`DataError`."""
    text = decode_line(raw, path, line)
    if text_field is None:
        return text.strip()
    record = json_object(text, path, line, f"a JSON object with {text_field!r}")
    return _text_field(record, text_field, path, line)


def iter_documents(path, text_field: str | None = None, skip_bad_lines: bool = False,
                   report: CorpusReport | None = None) -> Iterator[Document]:
    """Every document of ``path`` in file order; bad lines raise, or are recorded in ``report.bad``."""
    path = check_path(path, "a text or JSON-lines file")
    report = report if report is not None else CorpusReport(path, text_field)
    for number, raw in _lines(path):
        if not raw.strip():
            report.blank_lines += 1
            continue
        try:
            text = parse_document(raw, path, number, text_field)
        except DataError as err:
            if not skip_bad_lines:
                raise
            report.bad.append(err)
            continue
        if not text:  # whitespace-only beyond ASCII (e.g. U+3000): a blank line too
            report.blank_lines += 1
            continue
        report.documents += 1
        yield Document(text, str(path), number)


def scan_corpus(path, text_field: str | None = None, skip_bad_lines: bool = False) -> CorpusReport:
    """Check every line once; raises on the first bad one unless ``skip_bad_lines``, and on no documents."""
    report = CorpusReport(check_path(path, "a text or JSON-lines file"), text_field)
    first = []
    for doc in iter_documents(path, text_field, skip_bad_lines, report):
        if len(first) < JSON_LINES_PROBE:
            first.append(doc)
    if text_field is None:
        refuse_json_lines_as_text(report.path, first)
    if report.bad:
        log.warning("%s: skipped %d bad line(s); first: %s", report.path, len(report.bad), report.bad[0])
    if report.documents == 0:
        raise DataError(report.path, None, "no documents" + (f" ({len(report.bad)} bad lines skipped)" if report.bad else ""))
    return report


JSON_LINES_PROBE = 5  # plain-text documents looked at to tell a JSON-lines file given without text_field


def refuse_json_lines_as_text(path, documents: list[Document]) -> None:
    """A JSON-lines file (NLPCC2017's, say) read as plain text would be trained on braces, keys and
    every field, the summaries too: refuse when the first documents all parse as JSON objects."""
    keys = []
    for doc in documents:
        try:
            record = json.loads(doc.text)
        except ValueError:
            return
        if not isinstance(record, dict):
            return
        keys += [k for k in record if k not in keys]
    if documents:
        fields = ", ".join(map(repr, keys[:6])) or "none"
        raise UserError(f"{path}:{documents[0].line}: these lines are JSON objects (keys {fields}), read as plain "
                        f"text they would be trained on braces, keys and all; pass --text-field KEY "
                        f"(e.g. --text-field article) to train on one field")


def clean_copy(report: CorpusReport, workdir) -> Path:
    """A file with one good document per line, in the original format, for line-oriented readers.

    The original is returned as it is when every non-empty line is a good document and there are
    no blank lines (MindSpore's ``TextFileDataset`` would otherwise hand over whitespace-only lines
    and shift document counts) and no UTF-8 byte-order mark (it would hand that over as the first
    document's first character). With ``text_field``, the copy keeps one JSON object per line (the
    field only), so documents containing newlines survive.
    """
    if not report.bad and not report.blank_lines and not starts_with_bom(report.path):
        return report.path
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / f"clean-{report.path.name}"
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as out:
        for doc in iter_documents(report.path, report.text_field, skip_bad_lines=True):
            line = doc.text if report.text_field is None else json.dumps({report.text_field: doc.text}, ensure_ascii=False)
            out.write(line.encode("utf-8") + b"\n")
    os.replace(tmp, target)
    return target


def split_documents(n_documents: int, eval_fraction: float) -> tuple[int, int]:
    """(n_train, n_eval): the held-out documents are the last ``eval_fraction`` of the file.

    At least one document is held out when a fraction is asked for and there are two or more; at
    least one is always left for training.
    """
    if not 0 <= eval_fraction < 1:
        raise UserError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if eval_fraction == 0 or n_documents < 2:
        return n_documents, 0
    n_eval = min(max(1, round(n_documents * eval_fraction)), n_documents - 1)
    return n_documents - n_eval, n_eval


@dataclass
class CorpusSource:
    """A checked corpus and its held-out split, ready to feed pipelines."""

    path: Path  # what MindSpore reads (the original, or a clean copy)
    report: CorpusReport
    n_train: int
    n_eval: int

    @classmethod
    def open(cls, path, workdir, text_field=None, eval_fraction=0.0, skip_bad_lines=False) -> "CorpusSource":
        report = scan_corpus(path, text_field, skip_bad_lines)
        n_train, n_eval = split_documents(report.documents, eval_fraction)
        source = cls(clean_copy(report, workdir), report, n_train, n_eval)
        log.info("%s: %d documents (%d bad lines skipped) -> %d train / %d held out", report.path,
                 report.documents, len(report.bad), n_train, n_eval)
        return source

    def lines(self, split: str):
        """TextFileDataset over 'train' (the first documents), 'eval' (the held-out last ones) or 'all'."""
        start, count = {"train": (0, self.n_train), "eval": (self.n_train, self.n_eval),
                        "all": (0, self.report.documents)}[split]
        return _text_lines(self.path, start, count)

    def train_texts(self):
        docs = iter_documents(self.path, self.report.text_field, skip_bad_lines=True)
        return (d.text for d in itertools.islice(docs, self.n_train))

    def eval_texts(self):
        """The held-out documents' texts (none when ``eval_fraction`` is 0)."""
        docs = iter_documents(self.path, self.report.text_field, skip_bad_lines=True)
        return (d.text for d in itertools.islice(docs, self.n_train, None))
