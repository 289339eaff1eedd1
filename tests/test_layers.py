"""ms_gpt2's layer folders import downward only, and no module imports itself back through others.

Order, lowest first: infra < data < models (models/graphs included) < engine < jobs < bench < cli.
A module's layer is the second part of its dotted name (``ms_gpt2.models.graphs.gpt2`` is in
``models``); ``cli`` is ``ms_gpt2/cli.py`` or a ``ms_gpt2/cli/`` package. Every import counts, the
ones inside functions too: a lazy import still ties the two modules together. Read from the source
with ``ast``, nothing is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ms_gpt2"
LAYERS = ("infra", "data", "models", "engine", "jobs", "bench", "cli")
OUTSIDE_THE_LAYERS = ("ms_gpt2", "ms_gpt2.__main__")  # the package itself and ``python -m ms_gpt2``


def modules(package: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module under ``package`` (a package is its ``__init__``)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = [package.name, *path.relative_to(package).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (``from a.b import c``: ``a.b.c`` when
    that is a module, else ``a.b``)."""
    mods = modules(package)
    root = package.name
    edges: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(name, path.name == "__init__.py", node)
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in mods else source for a in node.names]
            for target in targets:
                if target == root or target.startswith(root + "."):
                    while target not in mods and "." in target:  # import a.b.c.X where X is a name
                        target = target.rsplit(".", 1)[0]
                    if target != name:
                        edges[name].add(target)
    return edges


def upward_imports(package: Path) -> list[str]:
    found = []
    for importer, imported in sorted(imports(package).items()):
        for target in sorted(imported):
            low, high = layer(importer), layer(target)
            if low and high and LAYERS.index(high) > LAYERS.index(low):
                found.append(f"{importer} ({low}) imports {target} ({high})")
    return found


def cycles(package: Path) -> list[list[str]]:
    """Every group of modules that import each other round (Tarjan's strongly connected components
    of more than one module), each as a sorted list."""
    edges = imports(package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(groups)


def test_every_module_is_in_a_layer():
    stray = [name for name in modules(PACKAGE) if layer(name) is None and name not in OUTSIDE_THE_LAYERS]
    assert stray == [], f"modules outside the layer folders {LAYERS}: {stray}"


def test_no_import_goes_upward():
    found = upward_imports(PACKAGE)
    assert not found, f"imports against the layer order {' < '.join(LAYERS)}:\n" + "\n".join(found)


def test_no_import_cycle():
    found = cycles(PACKAGE)
    assert not found, "modules that import each other round:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    """The checks themselves, on a small package: an upward import (absolute, relative, or lazy inside
    a function) is reported, and so is a cycle; downward and same-layer imports are not."""
    package = tmp_path / "ms_gpt2"
    files = {
        "__init__.py": "",
        "__main__.py": "from ms_gpt2.cli import main\n",
        "cli.py": "from ms_gpt2.jobs import train\nmain = 1\n",
        "infra/__init__.py": "",
        "infra/errors.py": "def f():\n    from ms_gpt2.models.gpt2 import Model  # lazy, still upward\n",
        "data/__init__.py": "",
        "data/tokenization.py": "from ..jobs import run\n",
        "models/__init__.py": "",
        "models/gpt2.py": "import ms_gpt2.data.tokenization\nfrom ms_gpt2.models.graphs import ops\nModel = 1\n",
        "models/graphs/__init__.py": "",
        "models/graphs/ops.py": "from ms_gpt2.data.tokenization import x\n",
        "jobs/__init__.py": "",
        "jobs/run.py": "",
        "jobs/train.py": "from ms_gpt2.jobs import evaluate\nfrom ms_gpt2.models.gpt2 import Model\n",
        "jobs/evaluate.py": "from ms_gpt2.jobs.train import y\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    assert upward_imports(package) == ["ms_gpt2.data.tokenization (data) imports ms_gpt2.jobs.run (jobs)",
                                       "ms_gpt2.infra.errors (infra) imports ms_gpt2.models.gpt2 (models)"]
    assert cycles(package) == [["ms_gpt2.jobs.evaluate", "ms_gpt2.jobs.train"]]

    (package / "data/tokenization.py").write_text("")
    (package / "infra/errors.py").write_text("")
    (package / "jobs/evaluate.py").write_text("")
    assert upward_imports(package) == [] and cycles(package) == []
    # a cli/ package is the cli layer as cli.py is
    (package / "cli.py").unlink()
    (package / "cli").mkdir()
    (package / "cli/__init__.py").write_text("from ms_gpt2.cli.commands import main\n")
    (package / "cli/commands.py").write_text("from ms_gpt2.jobs import train\nmain = 1\n")
    (package / "jobs/run.py").write_text("from ms_gpt2.cli import commands\n")
    assert upward_imports(package) == ["ms_gpt2.jobs.run (jobs) imports ms_gpt2.cli.commands (cli)"]


def test_only_the_cli_starts_the_cli():
    """An import is not the only way to reach upward: running ``ms_gpt2/__main__.py`` (or ``-m ms_gpt2``)
    in a subprocess starts the CLI too. Only the cli layer may do that (``--nproc`` re-runs the command
    under msrun from ``ms_gpt2/cli/launch.py``); below it a string naming the entry script is an upward
    dependency no import graph shows."""
    found = []
    for name, path in modules(PACKAGE).items():
        if layer(name) == "cli" or name in OUTSIDE_THE_LAYERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    "__main__.py" in node.value or "-m ms_gpt2 " in node.value + " "
                    or node.value.startswith("ms_gpt2.cli")):
                found.append(f"{name}:{node.lineno}: {node.value[:60]!r}")
            if isinstance(node, (ast.List, ast.Tuple)):  # [python, "-m", "ms_gpt2", ...]
                words = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
                if any(a == "-m" and b in ("ms_gpt2", "ms_gpt2.cli") for a, b in zip(words, words[1:])):
                    found.append(f"{name}:{node.lineno}: runs -m ms_gpt2")
    assert not found, "modules below the cli that start it:\n" + "\n".join(found)
