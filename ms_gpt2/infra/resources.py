"""The files ms_gpt2 ships besides its code: the demo corpus and the run configs.

Users find them at the top of a checkout (``data/demo/``, ``configs/``). A wheel carries the same
files inside the package as ``ms_gpt2/_bundled/demo/`` and ``ms_gpt2/_bundled/configs/`` (mapped in
pyproject.toml, not copied in git), so ``ms-gpt2 demo`` also works after a plain ``pip install .``,
from any directory. The installed copy is looked up with :mod:`importlib.resources` first, then
the checkout's.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
BUNDLED = "_bundled"


def bundled(package_path: str, checkout_path: str) -> Path:
    """``ms_gpt2/_bundled/<package_path>`` when installed from a wheel, else ``<checkout>/<checkout_path>``."""
    packaged = resources.files("ms_gpt2").joinpath(BUNDLED, *package_path.split("/"))
    if packaged.is_file():
        return Path(str(packaged))
    return CHECKOUT / checkout_path  # a checkout (or an editable install of one)


def demo_data() -> Path:
    return bundled("demo/nlpcc_demo.jsonl", "data/demo/nlpcc_demo.jsonl")


def config(name: str) -> Path:
    """A shipped run config by file name, e.g. ``smoke.yaml``."""
    return bundled(f"configs/{name}", f"configs/{name}")
