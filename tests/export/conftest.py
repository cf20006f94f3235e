"""A tiny trained run (two steps of the tiny recipe) shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergekit_vision.cli.main import main
from mergekit_vision.export.loading import LoadedRun, load_run

TINY_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny_sam_clip.yaml"


def train_tiny_run(folder: Path, checkpoints: dict[str, Path]) -> Path:
    """Two training steps of the tiny recipe: a run folder with checkpoints/last."""
    args = [
        "run",
        str(TINY_RECIPE),
        "--set", f"teachers.sam.params.checkpoint={checkpoints['sam']}",
        "--set", f"teachers.clip.params.checkpoint={checkpoints['clip']}",
        "--output", str(folder),
        "--max-steps", "2",
    ]  # fmt: skip
    assert main(args) == 0
    return folder


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, tiny_checkpoints) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("export") / "run", tiny_checkpoints)


@pytest.fixture(scope="session")
def tiny_run(tiny_run_dir) -> LoadedRun:
    return load_run(tiny_run_dir)
