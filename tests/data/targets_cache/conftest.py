"""The tiny recipe with keyed, augmented views on both tasks, and its targets cache built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergekit_vision.cli.main import main
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.recipe.schema import Recipe

AUGMENT = "{scale: [0.5, 1.0], hflip: true}"
TINY_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny_sam_clip.yaml"


def keyed_args(tiny_recipe_args: list[str], cache: Path | None) -> list[str]:
    """Both tasks with 2 augmented views per sample; read from ``cache/<task>`` when given."""
    args = list(tiny_recipe_args)
    for task in ("clip", "sam"):
        args += ["--set", f"tasks.{task}.views=2", "--set", f"tasks.{task}.augment={AUGMENT}"]
        if cache is not None:
            args += ["--set", f"tasks.{task}.targets_cache={cache / task}"]
    return args


def keyed_recipe(tiny_recipe_args: list[str], cache: Path | None) -> Recipe:
    args = keyed_args(tiny_recipe_args, cache)
    return load_recipe(args[0], [a for a in args[1:] if a != "--set"])


@pytest.fixture(scope="session")
def built_cache(tmp_path_factory, tiny_checkpoints) -> Path:
    """``vmerge cache`` of the keyed tiny recipe (both tasks), shards of 3 samples."""
    base = [
        str(TINY_RECIPE),
        "--set", f"teachers.sam.params.checkpoint={tiny_checkpoints['sam']}",
        "--set", f"teachers.clip.params.checkpoint={tiny_checkpoints['clip']}",
    ]  # fmt: skip
    cache = tmp_path_factory.mktemp("targets") / "cache"
    assert main(["cache", *keyed_args(base, cache), "--shard-size", "3"]) == 0
    return cache
