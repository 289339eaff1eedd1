"""A non-editable install works away from the checkout: the wheel carries the demo corpus and the
configs, and ms_gpt2 finds them there (``ms-gpt2 demo`` used to look for them in the source tree)."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {"ms_gpt2/_bundled/demo/nlpcc_demo.jsonl": "data/demo/nlpcc_demo.jsonl",
           "ms_gpt2/_bundled/configs/smoke.yaml": "configs/smoke.yaml",
           "ms_gpt2/_bundled/configs/tutorial.yaml": "configs/tutorial.yaml"}
JUNK = shutil.ignore_patterns(".git", ".venv*", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                              "kernel_meta", "rank_*")


def test_the_wheel_ships_the_demo_files_and_an_installed_copy_finds_them(tmp_path):
    source = tmp_path / "src"  # build from a copy: an in-tree build leaves build/ and egg-info behind
    shutil.copytree(REPO, source, ignore=JUNK)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("ms_gpt2-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        modules = {p.relative_to(REPO).as_posix() for p in (REPO / "ms_gpt2").rglob("*.py")}
        assert modules <= set(archive.namelist()), sorted(modules - set(archive.namelist()))  # every subpackage
        for inside, original in SHIPPED.items():
            assert archive.read(inside) == (REPO / original).read_bytes(), inside
        archive.extractall(tmp_path / "site")

    elsewhere = tmp_path / "elsewhere"  # no checkout around: cwd and the package both away from it
    elsewhere.mkdir()
    probe = ("import json, ms_gpt2; from ms_gpt2.jobs import tasks; from ms_gpt2.infra.config import load_config; "
             "print(json.dumps({'package': ms_gpt2.__file__, 'demo': str(tasks.DEMO_DATA), "
             "'smoke': str(tasks.SMOKE_CONFIG), 'n_embd': load_config(tasks.SMOKE_CONFIG)['model']['n_embd']}))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "MS_GPT2_DEVICE": "cpu"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=elsewhere, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    site = (tmp_path / "site").resolve()
    assert Path(found["package"]).resolve().is_relative_to(site)
    assert Path(found["demo"]).resolve() == site / "ms_gpt2/_bundled/demo/nlpcc_demo.jsonl"
    assert Path(found["smoke"]).resolve() == site / "ms_gpt2/_bundled/configs/smoke.yaml"
    assert found["n_embd"] == 128
