"""A small, explicit download helper: resumable, checksummed, and never run behind the user's back.

It is only called when the user asks for a download (for example to fetch the NLPCC2017
summarization corpus). Nothing in the test suite or the demos downloads anything: the tests serve
files from a local ``http.server`` on 127.0.0.1, and ``tests/conftest.py`` fails any test that tries
to reach a non-loopback address.

Why resumable: the datasets this project uses are hundreds of megabytes, served from mirrors that
drop long transfers often enough to matter. Bytes are streamed to ``<name>.part`` and a later call
asks the server for the rest with ``Range: bytes=<size>-``. A server that ignores ``Range`` (answers
200) makes us start over from zero, so a resume can never splice two different bodies together.

Why a checksum: a truncated, spliced, or silently replaced file otherwise turns into a confusing
failure much later (a tokenizer crash, a loss curve that makes no sense). If ``sha256`` is given the
download is verified before it is moved into place; a mismatch deletes the ``.part`` and raises.
Either way the computed digest is logged and written to ``<name>.sha256`` (``sha256sum`` format), so
it can be pinned on the next call.

The final file only ever appears through ``os.replace`` of a complete, verified ``.part``, so a file
at the final path is always a finished download.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
from tqdm import tqdm

from ms_gpt2.infra.errors import UserError

log = logging.getLogger(__name__)

# The file the MindSpore/MindNLP GPT-2 summarization tutorial downloads (NLPCC2017 training set
# with reference summaries).
NLPCC2017_URL = (
    "https://download.mindspore.cn/toolkits/mindnlp/dataset/text_generation/nlpcc2017/train_with_summ.txt"
)
NLPCC2017_FILENAME = "train_with_summ.txt"

_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)


class DownloadError(UserError, RuntimeError):
    """A download failed: network or HTTP error, incomplete transfer, or checksum mismatch."""


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def _default_filename(url: str) -> str:
    name = unquote(urlparse(url).path.rstrip("/").rsplit("/", 1)[-1])
    if not name or name in (".", ".."):
        raise ValueError(f"cannot derive a file name from URL {url!r}; pass filename=")
    return name


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """Return (start, total) from a Content-Range header; None where unknown."""
    m = _CONTENT_RANGE.match(value.strip()) if value else None
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _content_length(resp: requests.Response) -> int | None:
    try:
        return int(resp.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _fetch_into_part(
    url: str, part: Path, chunk_size: int, timeout: float, progress: bool, desc: str
) -> None:
    """Fetch ``url`` into ``part``, resuming from its current size. Raises DownloadError.

    On return ``part`` holds the whole body (as far as the server's headers can tell).
    """
    # At most one restart: after a resume was refused (200 / bad 206 / stale 416) we ask for
    # the whole body with no Range header, which cannot trigger another restart.
    for _attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        # identity: Range offsets and Content-Length must refer to the bytes we write to disk.
        headers = {"Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = requests.get(url, headers=headers, stream=True, timeout=timeout)
        except requests.RequestException as e:
            raise DownloadError(f"download of {url} failed: {e}") from e

        with resp:
            status = resp.status_code
            if status == 416 and offset > 0:
                _, total = _parse_content_range(resp.headers.get("Content-Range"))
                if total is None or total == offset:
                    # Nothing left to fetch: the part file is already complete. If it is not
                    # actually the right file, checksum verification catches it.
                    log.info("%s: server reports nothing past byte %d; part file is complete", url, offset)
                    return
                log.warning("%s: stale part file (%d bytes, remote is %d); restarting", url, offset, total)
                part.unlink()
                continue
            if status == 206 and offset > 0:
                start, total = _parse_content_range(resp.headers.get("Content-Range"))
                if start != offset:
                    log.warning("%s: server resumed at byte %s, not %d; restarting", url, start, offset)
                    part.unlink()
                    continue
                mode = "ab"
                length = _content_length(resp)
                expected_total = total if total is not None else (offset + length if length is not None else None)
                log.info("resuming %s at byte %d", url, offset)
            elif status == 200:
                if offset > 0:
                    log.info("%s: server ignored Range; restarting from zero", url)
                offset = 0
                mode = "wb"
                length = _content_length(resp)
                expected_total = length
            else:
                reason = f" {resp.reason}" if resp.reason else ""
                raise DownloadError(f"download of {url} failed: HTTP {status}{reason}")

            written = offset
            bar = tqdm(
                total=expected_total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=not progress,
                leave=False,
            )
            try:
                with open(part, mode) as f, bar:
                    for block in resp.iter_content(chunk_size=chunk_size):
                        if block:
                            f.write(block)
                            written += len(block)
                            bar.update(len(block))
            except requests.RequestException as e:
                # The bytes already written stay in the .part file so the next call resumes.
                raise DownloadError(
                    f"download of {url} interrupted after {written} bytes (HTTP {status}): {e}; "
                    f"run again to resume"
                ) from e
            if expected_total is not None and written != expected_total:
                raise DownloadError(
                    f"download of {url} incomplete (HTTP {status}): got {written} of {expected_total} "
                    f"bytes; run again to resume"
                )
            return
    raise DownloadError(f"download of {url} failed: server would not serve the file from the start")


def download(
    url: str,
    cache_dir: str | Path,
    filename: str | None = None,
    sha256: str | None = None,
    chunk_size: int = 1 << 20,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``<cache_dir>/<filename>`` and return that path.

    - An existing final file is returned without touching the network (after checking it against
      ``sha256`` when given; a mismatch raises :class:`DownloadError` and leaves the file alone).
    - Bytes stream to ``<filename>.part``; an existing ``.part`` is resumed with a Range request.
    - With ``sha256``, the finished ``.part`` is verified; on mismatch it is deleted and
      :class:`DownloadError` names the expected and actual digests.
    - On success the ``.part`` is renamed into place with ``os.replace`` and the digest is logged
      and written to ``<filename>.sha256``.
    - Network and HTTP errors raise :class:`DownloadError` and keep the ``.part`` for a retry.
    """
    cache_dir = Path(cache_dir)
    filename = filename or _default_filename(url)
    expected = sha256.strip().lower() if sha256 else None
    final = cache_dir / filename
    part = cache_dir / f"{filename}.part"
    sidecar = cache_dir / f"{filename}.sha256"

    if final.exists():
        if expected is None:
            log.info("using cached %s (no checksum given)", final)
            return final
        actual = sha256_file(final, chunk_size)
        if actual == expected:
            log.info("using cached %s (sha256 ok)", final)
            return final
        raise DownloadError(
            f"cached file {final} does not match the expected sha256: expected {expected}, got {actual}; "
            f"delete it to download again"
        )

    cache_dir.mkdir(parents=True, exist_ok=True)
    _fetch_into_part(url, part, chunk_size, timeout, progress, desc=filename)

    actual = sha256_file(part, chunk_size)
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(f"sha256 mismatch for {url}: expected {expected}, got {actual}")

    os.replace(part, final)
    sidecar.write_text(f"{actual}  {filename}\n", encoding="utf-8")
    log.info("downloaded %s -> %s (sha256 %s)", url, final, actual)
    return final
