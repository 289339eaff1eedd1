"""Tests for ms_gpt2.data.download against a local HTTP server on 127.0.0.1 (never the real network)."""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ms_gpt2.data import download as dl
from ms_gpt2.data.download import DownloadError, download

PAYLOAD = os.urandom(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
CHUNK = 8192


@dataclass
class ServerState:
    files: dict = field(default_factory=dict)  # url path -> bytes
    ignore_range: bool = False
    # url path -> list of byte counts; each request to that path pops one and drops the
    # connection after that many body bytes (headers still announce the full length).
    drop_after: dict = field(default_factory=dict)
    status_override: dict = field(default_factory=dict)  # url path -> status code
    range_limit: int | None = None  # cap on bytes per 206 answer (a short but well-formed range)
    requests: list = field(default_factory=list)  # (path, Range header or None, status sent)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def _record(self, status):
        st = self.server.state
        with st.lock:
            st.requests.append((self.path, self.headers.get("Range"), status))

    def do_GET(self):
        st: ServerState = self.server.state
        if self.path in st.status_override:
            code = st.status_override[self.path]
            self._record(code)
            self.send_error(code)
            return
        body = st.files.get(self.path)
        if body is None:
            self._record(404)
            self.send_error(404)
            return

        rng = self.headers.get("Range")
        start = 0
        status = 200
        if rng and not st.ignore_range:
            assert rng.startswith("bytes=") and rng.endswith("-"), rng
            start = int(rng[len("bytes="):-1])
            if start >= len(body):
                self._record(416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        end = len(body)
        if status == 206 and st.range_limit is not None:
            end = min(end, start + st.range_limit)
        chunk = body[start:end]
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        self.end_headers()

        drops = st.drop_after.get(self.path)
        if drops:
            k = drops.pop(0)
            self.wfile.write(chunk[:k])
            self.wfile.flush()
            self.close_connection = True  # server then closes the socket short of Content-Length
            return
        self.wfile.write(chunk)


@pytest.fixture
def server(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=2)


def _get(server, tmp_path, path="/data/file.bin", **kw):
    kw.setdefault("progress", False)
    kw.setdefault("chunk_size", CHUNK)
    kw.setdefault("timeout", 5.0)
    return download(server.base + path, tmp_path, **kw)


def test_full_download_with_sha256(server, tmp_path):
    server.state.files["/data/file.bin"] = PAYLOAD
    out = _get(server, tmp_path, sha256=PAYLOAD_SHA.upper(), progress=True)

    assert out == tmp_path / "file.bin"  # filename defaults to the last URL segment
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "file.bin.part").exists()
    assert (tmp_path / "file.bin.sha256").read_text().split() == [PAYLOAD_SHA, "file.bin"]
    assert [r[1] for r in server.state.requests] == [None]  # fresh download: no Range header


def test_sidecar_written_without_expected_sha(server, tmp_path):
    server.state.files["/x/other.txt"] = b"hello\n"
    out = _get(server, tmp_path, path="/x/other.txt", filename="named.txt")
    assert out == tmp_path / "named.txt"
    assert out.read_bytes() == b"hello\n"
    assert (tmp_path / "named.txt.sha256").read_text().split()[0] == hashlib.sha256(b"hello\n").hexdigest()


def test_resume_after_interrupted_download(server, tmp_path):
    st = server.state
    st.files["/data/file.bin"] = PAYLOAD
    k = 100_000
    st.drop_after["/data/file.bin"] = [k]

    with pytest.raises(DownloadError, match="run again to resume"):
        _get(server, tmp_path, sha256=PAYLOAD_SHA)
    part = tmp_path / "file.bin.part"
    # The bytes received before the drop are kept for the retry (the client may lose the
    # final, partially read chunk, so the part is a non-empty prefix of at most k bytes).
    kept = part.read_bytes()
    assert 0 < len(kept) <= k and kept == PAYLOAD[: len(kept)]
    assert not (tmp_path / "file.bin").exists()

    out = _get(server, tmp_path, sha256=PAYLOAD_SHA)
    assert out.read_bytes() == PAYLOAD
    assert not part.exists()
    assert st.requests == [
        ("/data/file.bin", None, 200),
        ("/data/file.bin", f"bytes={len(kept)}-", 206),
    ]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    st = server.state
    st.files["/data/file.bin"] = PAYLOAD
    st.ignore_range = True
    # A part file whose bytes differ from the real prefix: appending the 200 body to it, or
    # keeping any of it, would corrupt the result.
    (tmp_path / "file.bin.part").write_bytes(b"\xff" * 50_000)

    out = _get(server, tmp_path, sha256=PAYLOAD_SHA)
    assert out.read_bytes() == PAYLOAD
    assert st.requests == [("/data/file.bin", "bytes=50000-", 200)]


def test_short_206_is_reported_incomplete_and_resumable(server, tmp_path):
    # A server may answer a Range request with fewer bytes than asked for; Content-Length then
    # matches, so only the Content-Range total reveals that the file is not finished.
    st = server.state
    st.files["/data/file.bin"] = PAYLOAD
    st.range_limit = 1000
    part = tmp_path / "file.bin.part"
    part.write_bytes(PAYLOAD[:5000])

    with pytest.raises(DownloadError, match="incomplete"):
        _get(server, tmp_path, sha256=PAYLOAD_SHA)
    assert part.read_bytes() == PAYLOAD[:6000]
    assert not (tmp_path / "file.bin").exists()

    st.range_limit = None
    assert _get(server, tmp_path, sha256=PAYLOAD_SHA).read_bytes() == PAYLOAD
    assert [r[1] for r in st.requests] == ["bytes=5000-", "bytes=6000-"]


def test_416_with_complete_part_is_verified_and_finalised(server, tmp_path):
    st = server.state
    st.files["/data/file.bin"] = PAYLOAD
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)

    out = _get(server, tmp_path, sha256=PAYLOAD_SHA)
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "file.bin.part").exists()
    assert (tmp_path / "file.bin.sha256").read_text().split()[0] == PAYLOAD_SHA
    assert st.requests == [("/data/file.bin", f"bytes={len(PAYLOAD)}-", 416)]


def test_sha256_mismatch_raises_and_leaves_no_file(server, tmp_path):
    server.state.files["/data/file.bin"] = PAYLOAD
    wrong = "0" * 64
    with pytest.raises(DownloadError) as exc:
        _get(server, tmp_path, sha256=wrong)
    msg = str(exc.value)
    assert wrong in msg and PAYLOAD_SHA in msg
    assert not (tmp_path / "file.bin").exists()
    assert not (tmp_path / "file.bin.part").exists()
    assert not (tmp_path / "file.bin.sha256").exists()


def test_existing_file_with_matching_sha_makes_no_request(server, tmp_path):
    server.state.files["/data/file.bin"] = b"server copy, must not be fetched"
    final = tmp_path / "file.bin"
    final.write_bytes(PAYLOAD)

    out = _get(server, tmp_path, sha256=PAYLOAD_SHA)
    assert out == final and out.read_bytes() == PAYLOAD
    assert server.state.requests == []


def test_existing_file_without_sha_makes_no_request(server, tmp_path):
    server.state.files["/data/file.bin"] = b"server copy, must not be fetched"
    (tmp_path / "file.bin").write_bytes(b"local")
    assert _get(server, tmp_path).read_bytes() == b"local"
    assert server.state.requests == []


def test_existing_file_with_mismatching_sha_raises_and_is_kept(server, tmp_path):
    server.state.files["/data/file.bin"] = PAYLOAD
    final = tmp_path / "file.bin"
    final.write_bytes(b"not the payload")
    with pytest.raises(DownloadError, match="expected " + PAYLOAD_SHA):
        _get(server, tmp_path, sha256=PAYLOAD_SHA)
    assert final.read_bytes() == b"not the payload"
    assert server.state.requests == []


def test_404_raises_with_url_and_status(server, tmp_path):
    url = server.base + "/missing.bin"
    with pytest.raises(DownloadError) as exc:
        download(url, tmp_path, progress=False, timeout=5.0)
    assert url in str(exc.value)
    assert "404" in str(exc.value)
    assert not (tmp_path / "missing.bin").exists()
    assert not (tmp_path / "missing.bin.part").exists()


def test_http_error_keeps_part_for_retry(server, tmp_path):
    st = server.state
    st.files["/data/file.bin"] = PAYLOAD
    st.status_override["/data/file.bin"] = 503
    part = tmp_path / "file.bin.part"
    part.write_bytes(PAYLOAD[:1234])

    with pytest.raises(DownloadError, match="503"):
        _get(server, tmp_path)
    assert part.read_bytes() == PAYLOAD[:1234]

    del st.status_override["/data/file.bin"]
    assert _get(server, tmp_path, sha256=PAYLOAD_SHA).read_bytes() == PAYLOAD
    assert st.requests[-1] == ("/data/file.bin", "bytes=1234-", 206)


def test_connection_refused_raises_download_error(tmp_path):
    import socket

    with socket.socket() as s:  # grab a free port, then close it so nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/f.bin"
    with pytest.raises(DownloadError, match=url):
        download(url, tmp_path, progress=False, timeout=2.0)


def test_nlpcc_constants():
    assert dl.NLPCC2017_URL.endswith("/" + dl.NLPCC2017_FILENAME)
    assert dl._default_filename(dl.NLPCC2017_URL) == dl.NLPCC2017_FILENAME
