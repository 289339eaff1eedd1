"""NLPCC2017 summarization data: checked line by line, then read with MindSpore pipelines.

The tutorial's pipeline shape is kept: ``TextFileDataset`` → ``map`` (parse the JSON line) →
``map`` (tokenize) → ``shuffle``/``batch``. Two things are added in front of it, because
``TextFileDataset`` cannot do them:

* **A checking pass with line numbers.** MindSpore's text reader does not report line numbers and
  crashes the whole pipeline, mid-epoch, on a line that is not UTF-8. So every line is first
  checked in Python (UTF-8, JSON object, both keys, non-empty text, fits ``max_seq_len``). A bad
  line is an error naming ``file:line`` before any training starts, or, with ``skip_bad_lines``,
  it is counted and left out: the pipeline then reads a clean copy holding only the good lines.
  A UTF-8 byte-order mark (Windows editors write one) is read past, and the pipeline reads a copy
  without it, so the first record never starts with U+FEFF.
* **A deterministic split by position**, the tutorial's: the first ``fraction`` of the records,
  then the first ``train_ratio`` of those for training and the rest for testing.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from ms_gpt2.infra.errors import UserError

log = logging.getLogger(__name__)

ARTICLE, SUMMARY = "article", "summarization"
#: A per-record check beyond the format (e.g. "summary too long for max_seq_len"): None if fine.
RecordCheck = Callable[[str, str], Optional[str]]


class DataError(UserError, ValueError):
    """Bad input data; the message always names the file (and line when there is one)."""

    def __init__(self, path, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


def decode_line(raw: bytes | str, path="<input>", line: int | None = None) -> str:
    """One raw line as text, or :class:`DataError` naming the first byte that is not UTF-8."""
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(path, line, f"not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})") from None
    return raw


def json_object(text: str, path="<input>", line: int | None = None, expected: str = "a JSON object") -> dict:
    """A JSON line that must hold an object; ``expected`` says what the error message asks for."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(path, line, f"invalid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(record, dict):
        raise DataError(path, line, f"expected {expected}, got {type(record).__name__}")
    return record


def text_field(record: dict, key: str, path="<input>", line: int | None = None) -> str:
    """``record[key]`` as stripped, non-empty text, or :class:`DataError` saying what is wrong."""
    if key not in record:
        raise DataError(path, line, f"missing key {key!r} (keys: {', '.join(map(repr, record)) or 'none'})")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(path, line, f"{key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, line, f"empty {key!r}")
    return value.strip()


def parse_record(raw: bytes | str, path="<input>", line: int | None = None) -> tuple[str, str]:
    """One NLPCC JSON line -> (article, summary), or :class:`DataError` saying what is wrong."""
    record = json_object(decode_line(raw, path, line), path, line,
                         f"a JSON object with {ARTICLE!r} and {SUMMARY!r}")
    return text_field(record, ARTICLE, path, line), text_field(record, SUMMARY, path, line)


@dataclass
class ScanReport:
    """What the checking pass found in one file."""

    path: Path
    records: int = 0
    bad: list[DataError] = field(default_factory=list)
    blank_lines: int = 0

    @property
    def readable_as_is(self) -> bool:
        # TextFileDataset drops empty lines itself but would hand us whitespace-only ones, and
        # would pass a byte-order mark on as the first record's first character.
        return not self.bad and not self.blank_lines and not starts_with_bom(self.path)


UTF8_BOM = b"\xef\xbb\xbf"


def starts_with_bom(path) -> bool:
    """Whether the file begins with a UTF-8 byte-order mark (as Windows editors save "UTF-8")."""
    with open(path, "rb") as handle:
        return handle.read(len(UTF8_BOM)) == UTF8_BOM


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line without its end), a leading UTF-8 byte-order mark left out (``utf-8-sig``)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            yield number, raw.rstrip(b"\r\n")


def check_path(path, expected: str = "an NLPCC JSON-lines file") -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "no such file")
    if path.is_dir():
        raise DataError(path, None, f"is a directory, expected {expected}")
    return path


def scan(path, skip_bad_lines: bool = False, check: RecordCheck | None = None) -> ScanReport:
    """Check every line; raise on the first bad one unless ``skip_bad_lines``."""
    report = ScanReport(check_path(path))
    for number, raw in _lines(report.path):
        if not raw.strip():
            report.blank_lines += raw != b""
            continue
        try:
            article, summary = parse_record(raw, report.path, number)
            problem = check(article, summary) if check else None
            if problem:
                raise DataError(report.path, number, problem)
        except DataError as err:
            if not skip_bad_lines:
                raise
            report.bad.append(err)
            continue
        report.records += 1
    if report.bad:
        log.warning("%s: skipped %d bad line(s); first: %s", report.path, len(report.bad), report.bad[0])
    if report.records == 0:
        raise DataError(report.path, None, "no usable records" + (f" ({len(report.bad)} bad lines skipped)" if report.bad else ""))
    return report


def clean_copy(report: ScanReport, workdir, check: RecordCheck | None = None) -> Path:
    """The file MindSpore should read: the original if every line is good, else a copy of the good ones."""
    if report.readable_as_is:
        return report.path
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / f"clean-{report.path.name}"
    tmp = target.with_suffix(target.suffix + ".tmp")
    with open(tmp, "wb") as out:
        for number, raw in _lines(report.path):
            if not raw.strip():
                continue
            try:
                article, summary = parse_record(raw, report.path, number)
            except DataError:
                continue
            if check and check(article, summary):
                continue
            out.write(json.dumps({ARTICLE: article, SUMMARY: summary}, ensure_ascii=False).encode("utf-8") + b"\n")
    os.replace(tmp, target)
    return target


def split_sizes(records: int, fraction: float = 1.0, train_ratio: float = 0.9) -> tuple[int, int]:
    """(n_train, n_test) for the first ``fraction`` of ``records``, split ``train_ratio`` : rest."""
    if not 0 < fraction <= 1:
        raise UserError(f"data.fraction must be in (0, 1], got {fraction}")
    if not 0 < train_ratio <= 1:
        raise UserError(f"data.train_ratio must be in (0, 1], got {train_ratio}")
    used = max(1, round(records * fraction))
    n_train = max(1, round(used * train_ratio))
    if train_ratio < 1 and used >= 2:
        n_train = min(n_train, used - 1)  # keep at least one test example when a test set is asked for
    return n_train, used - n_train


# --------------------------------------------------------------------------------------------------
# MindSpore pipelines
# --------------------------------------------------------------------------------------------------

def _text_lines(path: Path, skip: int, take: int):
    import mindspore.dataset as ds

    return ds.TextFileDataset(str(path), shuffle=False).skip(skip).take(take)


def read_map(text):
    """The tutorial's ``read_map``: one JSON line (numpy string) -> article, summary arrays."""
    article, summary = parse_record(str(text.item() if hasattr(text, "item") else text))
    return np.array(article), np.array(summary)


@dataclass
class NLPCCSource:
    """A checked NLPCC file and its train/test split, ready to feed pipelines."""

    path: Path  # what MindSpore reads (the original, or the clean copy)
    report: ScanReport
    n_train: int
    n_test: int

    @classmethod
    def open(cls, path, workdir, fraction: float = 1.0, train_ratio: float = 0.9,
             skip_bad_lines: bool = False, check: RecordCheck | None = None) -> "NLPCCSource":
        report = scan(path, skip_bad_lines, check)
        n_train, n_test = split_sizes(report.records, fraction, train_ratio)
        source = cls(clean_copy(report, workdir, check), report, n_train, n_test)
        log.info("%s: %d records (%d bad skipped) -> %d train / %d test", report.path, report.records,
                 len(report.bad), n_train, n_test)
        return source

    def lines(self, split: str):
        """TextFileDataset over one split: 'train', 'test' or 'all' (every usable record)."""
        if split == "train":
            return _text_lines(self.path, 0, self.n_train)
        if split == "test":
            if self.n_test == 0:
                raise DataError(self.report.path, None, "the test split is empty (train_ratio=1 or too few records)")
            return _text_lines(self.path, self.n_train, self.n_test)
        if split == "all":
            return _text_lines(self.path, 0, self.report.records)
        raise UserError(f"unknown split {split!r}; use train, test or all")

    def size(self, split: str) -> int:
        return {"train": self.n_train, "test": self.n_test, "all": self.report.records}[split]


def records(dataset) -> Iterator[tuple[str, str]]:
    """(article, summary) pairs from a TextFileDataset, in order."""
    for (line,) in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
        yield parse_record(str(line.item()))
