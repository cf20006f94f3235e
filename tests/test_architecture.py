"""The layers of docs/architecture.md, kept: import-linter's contracts in pyproject.toml.

``teachers/``, ``students/`` and ``cli/`` live at the repository's top level but are installed as
``mergekit_vision.teachers`` ... (setuptools ``package-dir``), which import-linter cannot see in an
editable install. So the test lays the package out as a wheel would install it and lints that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("teachers", "students", "cli")  # installed under mergekit_vision/


def installed_layout(target: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "mergekit_vision", target / "mergekit_vision", ignore=ignore)
    for name in MAPPED:
        shutil.copytree(ROOT / name, target / "mergekit_vision" / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def test_import_contracts_hold(tmp_path):
    tree = installed_layout(tmp_path)
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_contracts_cover_every_part():
    """A new top-level part must be placed in the layers, or nothing keeps its imports."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c["layers"] for c in config["contracts"] if c["type"] == "layers")
    layered = {m.strip() for row in layers for m in row.replace(":", "|").split("|")}
    parts = [
        p.name if p.is_dir() else p.stem
        for p in (ROOT / "mergekit_vision").iterdir()
        if (p / "__init__.py").exists() or (p.suffix == ".py" and p.name != "__init__.py")
    ]
    missing = sorted(f"mergekit_vision.{p}" for p in [*parts, *MAPPED])
    missing = [m for m in missing if m not in layered]
    assert not missing, f"parts of mergekit_vision in no import-linter layer: {missing}"
