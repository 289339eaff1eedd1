"""Shared test setup: CPU runtime, fixed seeds, and no network.

Every test runs offline by construction: a socket connecting anywhere but loopback fails the test
at once, so a hidden hub download shows up as a failure here rather than a hang in CI.
"""
import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from ms_gpt2 import runtime  # noqa: E402

runtime.setup("cpu", seed=0)

_real_connect = socket.socket.connect


def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")) or self.family == socket.AF_UNIX:
        return _real_connect(self, address)
    raise RuntimeError(f"test tried to reach the network ({address!r}); tests must run offline")


socket.socket.connect = _loopback_only


@pytest.fixture
def seeded():
    runtime.seed_everything(0)
