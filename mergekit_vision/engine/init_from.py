"""Starting a run from an earlier merged run: the recipe's ``init_from`` (step-by-step merging).

SAM-CLIP (Wang et al., arXiv 2310.15308) merges foundation models one after another: the merged
model of one step is where the next starts. ``init_from: <run folder>`` loads that run's last
checkpoint into the new run's model before its first step: the student backbone, which must be
the same architecture, and every head of the same name (a head the earlier run lacks, such as
the new teacher's, starts as its recipe says). A task of the same name that normalizes its
targets the same way keeps the earlier statistics (frozen), so a carried-over head goes on
predicting in the space it learned; any other normalizer estimates afresh. The earlier abilities
are then replayed with the ``merged_run`` teacher (``teachers/merged_run.py``); see
``docs/step-by-step.md``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from mergekit_vision.engine.build import MergedModel
from mergekit_vision.engine.run_folder import CHECKPOINTS_DIR, find_last
from mergekit_vision.errors import BuildError, Issue
from mergekit_vision.recipe.schema import Recipe
from mergekit_vision.teachers.merged_run import (
    LORA_ORIGINAL,
    LORA_UPDATE,
    RECIPE_FILE,
    EarlierRun,
    read_run,
)
from mergekit_vision.weights import incompatible_keys

FIELD = "init_from"


def init_from_issues(recipe: Recipe) -> list[Issue]:
    """The recipe's ``init_from`` folder, when it does not exist (checked before any work)."""
    folder = recipe.init_from
    if folder is None or Path(folder).is_dir():
        return []
    return [Issue(FIELD, f"run folder {str(folder)!r} does not exist; train that run first")]


def start_from_earlier_run(
    model: MergedModel, recipe: Recipe, *, output: Path, resume: bool
) -> list[str]:
    """Load the recipe's ``init_from`` run into ``model`` unless a resume will load the run's
    own checkpoint over it. Returns what was loaded (``student`` and head names)."""
    if recipe.init_from is None or (resume and find_last(output / CHECKPOINTS_DIR)):
        return []
    try:
        return load_earlier_run(model, read_run(recipe.init_from))
    except (ValueError, FileNotFoundError) as err:
        raise BuildError(FIELD, err) from err


def load_earlier_run(model: MergedModel, run: EarlierRun) -> list[str]:
    """Load ``run``'s student, same-named heads and fitting same-named target normalizers into
    ``model``; nothing is loaded when the student or a head does not fit (the error says which
    keys or shapes differ and what to do)."""
    recipe_file = run.checkpoint / RECIPE_FILE
    student = _student_weights(model.student, run.part("student"))
    problems = incompatible_keys(model.student, student)
    if problems:
        earlier = run.recipe.student
        raise ValueError(
            f"the student does not fit run {str(run.folder)!r}'s student ({problems}); give "
            f"student the earlier run's type {earlier.type!r} and params (see {recipe_file}), "
            "or drop init_from"
        )
    heads = {name: run.part(f"heads.{name}") for name in model.heads}
    heads = {name: weights for name, weights in heads.items() if weights}
    for name, weights in heads.items():
        problems = incompatible_keys(model.heads[name], weights)
        if problems:
            raise ValueError(
                f"head {name!r} does not fit run {str(run.folder)!r}'s head of that name "
                f"({problems}); give it the earlier head's type and params (see {recipe_file}), "
                "or rename it to start it afresh"
            )
    model.student.load_state_dict(student)
    for name, weights in heads.items():
        model.heads[name].load_state_dict(weights)
    normalizers = {name: run.part(f"normalizers.{name}") for name in model.normalizers}
    normalizers = {
        name: weights
        for name, weights in normalizers.items()
        if weights and not incompatible_keys(model.normalizers[name], weights)
    }
    for name, weights in normalizers.items():
        model.normalizers[name].load_state_dict(weights)
    return ["student", *heads, *(f"normalizers.{name}" for name in normalizers)]


def _student_weights(student: nn.Module, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """The earlier (plain) student weights keyed for ``student``: a LoRA student's adapted
    weights are its base weights, and its fresh low-rank updates (B = 0) are kept, so the run
    starts exactly at the earlier model."""
    expected = student.state_dict()
    out = {}
    for key, value in weights.items():
        base = key.removesuffix(".weight") + LORA_ORIGINAL
        out[base if key not in expected and base in expected else key] = value
    out.update({key: value for key, value in expected.items() if LORA_UPDATE in key})
    return out
