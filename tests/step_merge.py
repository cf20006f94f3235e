"""Tiny step-by-step merges for tests: a first SAM+CLIP run, and a second recipe that starts from
it (``init_from``) and replays its heads through ``merged_run`` teachers."""

from __future__ import annotations

import tempfile
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from mergekit_vision.cli.main import main
from mergekit_vision.engine.build import build_components
from mergekit_vision.engine.run_folder import CHECKPOINTS_DIR, save_checkpoint
from mergekit_vision.recipe.io import dump_recipe, validate_recipe

TINY_RECIPE = Path(__file__).resolve().parent / "recipes" / "tiny_sam_clip.yaml"
CLIP_NORMALIZE = {"type": "standardize", "params": {"estimate_steps": 1}}


def first_recipe(checkpoints: dict[str, Path]) -> dict[str, Any]:
    """The tiny SAM+CLIP recipe, 1 + 2 steps, its CLIP targets standardized (so a replayed head
    must be mapped back to the teacher's units)."""
    data = yaml.safe_load(TINY_RECIPE.read_text())
    data["teachers"]["sam"]["params"]["checkpoint"] = str(checkpoints["sam"])
    data["teachers"]["clip"]["params"]["checkpoint"] = str(checkpoints["clip"])
    data["tasks"]["clip"]["normalize"] = dict(CLIP_NORMALIZE)
    data["stages"][0]["steps"], data["stages"][1]["steps"] = 1, 2
    return data


def train_first_run(folder: Path, checkpoints: dict[str, Path]) -> Path:
    """Train the first merge for 3 steps into ``folder/first``; returns that run folder."""
    recipe = folder / "first.yaml"
    recipe.write_text(yaml.safe_dump(first_recipe(checkpoints)))
    run = folder / "first"
    assert main(["run", str(recipe), "--output", str(run)]) == 0
    return run


def step_recipe(earlier: Path, **changes: Any) -> dict[str, Any]:
    """The second step: starts from ``earlier`` and replays its CLIP and SAM heads with
    ``merged_run`` teachers; ``changes`` replace top-level sections."""
    data = yaml.safe_load(TINY_RECIPE.read_text())
    data["name"] = "tiny_step"
    data["init_from"] = str(earlier)
    data["teachers"] = {
        "clip": {"type": "merged_run", "params": {"run": str(earlier), "head": "clip_head"}},
        "sam": {"type": "merged_run", "params": {"run": str(earlier), "head": "sam_head"}},
    }
    data["student"]["params"]["init_from"] = None  # its weights come from init_from
    # as in the first run: the carried-over CLIP head keeps predicting in the space it learned
    data["tasks"]["clip"]["normalize"] = dict(CLIP_NORMALIZE)
    # a head the earlier run lacks starts as its recipe says
    data["heads"]["new_head"] = {
        "type": "clip_head",
        "params": {"teacher": "clip", "num_blocks": 1},
    }
    data["tasks"]["new"] = {**data["tasks"]["clip"], "head": "new_head"}
    data["stages"] = [
        {"name": "replay", "steps": 2, "tasks": ["clip", "sam", "new"],
         "train": ["backbone", "clip_head", "sam_head", "new_head"], "lr": 1.0e-3},
    ]  # fmt: skip
    return {**data, **changes}


@cache
def untrained_run() -> Path:
    """A run folder whose one checkpoint holds the tiny recipe's untrained merged model (random
    teachers): what a ``merged_run`` teacher reads, without a training run."""
    recipe = validate_recipe(yaml.safe_load(TINY_RECIPE.read_text()), source="tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random teachers
        model = build_components(recipe, allow_random_init=True).model
    folder = Path(tempfile.mkdtemp(prefix="vmerge-untrained-run-"))
    save_checkpoint(
        folder / CHECKPOINTS_DIR,
        step=0,
        model=model,
        state={},
        recipe_yaml=dump_recipe(recipe),
        keep=1,
    )
    return folder
