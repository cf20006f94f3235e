"""The layers of docs/architecture.md, kept: import-linter's contracts in pyproject.toml.

``teachers/``, ``students/`` and ``cli/`` live at the repository's top level and are installed as
``mergekit_vision.teachers`` ... (setuptools ``package-dir``); ``mergekit_vision/`` holds a link to
each, so import-linter, which reads the package's folder, lints them at the repository root too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("teachers", "students", "cli")  # installed under mergekit_vision/


def test_mapped_parts_are_linked_into_the_package():
    for name in MAPPED:
        link = ROOT / "mergekit_vision" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), link


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True
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
        if p.name not in MAPPED
        and ((p / "__init__.py").exists() or (p.suffix == ".py" and p.name != "__init__.py"))
    ]
    missing = sorted(f"mergekit_vision.{p}" for p in [*parts, *MAPPED])
    missing = [m for m in missing if m not in layered]
    assert not missing, f"parts of mergekit_vision in no import-linter layer: {missing}"
