"""The layers of docs/architecture.md, kept: import-linter's contracts in pyproject.toml.

The zoo and the CLI are folders of the package (``mergekit_vision/teachers`` ...), so import-linter,
which reads the package's folder, sees every part wherever the tree is copied; the top-level
``teachers/``, ``students/`` and ``cli/`` are links to them, for finding them at a glance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
LINKED = ("teachers", "students", "cli")  # linked at the top level


def test_the_zoo_and_cli_are_folders_of_the_package_linked_at_the_top_level():
    for name in LINKED:
        part = ROOT / "mergekit_vision" / name
        # a real folder: a tool that does not follow links (or a copy that drops them) sees it
        assert part.is_dir() and not part.is_symlink(), part
        link = ROOT / name
        assert link.is_symlink() and link.resolve() == part.resolve(), link


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
        if (p / "__init__.py").exists() or (p.suffix == ".py" and p.name != "__init__.py")
    ]
    missing = sorted(f"mergekit_vision.{p}" for p in parts)
    missing = [m for m in missing if m not in layered]
    assert not missing, f"parts of mergekit_vision in no import-linter layer: {missing}"
