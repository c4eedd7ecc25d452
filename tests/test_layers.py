"""The layers of pyproject.toml's import-linter contract hold: a lower module never imports a higher one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="the layer check needs import-linter (pip install -e '.[test]')")

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the ``nodulekit`` package under ``root``, with this repository's contract."""
    if LINT_IMPORTS is None:
        pytest.skip("the lint-imports command is not on PATH")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        capture_output=True, text=True, timeout=120, cwd=root, env=env,
    )  # fmt: skip


def test_the_package_keeps_its_layers():
    out = _lint(REPO)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "nodulekit layers KEPT" in out.stdout
    # the contract covers this checkout's package (not another copy on the path)
    analysed = int(out.stdout.split("Analyzed ")[1].split(" files")[0])
    assert analysed == len(list((REPO / "nodulekit").rglob("*.py")))


@pytest.mark.parametrize(
    ("module", "line", "shown"),
    [
        ("errors.py", "from .cli import main\n", "nodulekit.errors -> nodulekit.cli"),
        ("crops.py", "from .readers import read_any\n", "nodulekit.crops -> nodulekit.readers"),
        ("inference/segmenter.py", "from ..plots import save_figure\n", "nodulekit.inference.segmenter -> nodulekit.plots"),
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path, module, line, shown):
    copy = tmp_path / "nodulekit"
    shutil.copytree(REPO / "nodulekit", copy, ignore=shutil.ignore_patterns("__pycache__", "*.keras"))
    with open(copy / module, "a") as handle:
        handle.write(line)
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "BROKEN" in out.stdout and shown in out.stdout
