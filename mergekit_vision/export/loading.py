"""A trained run folder back as a merged model: its last checkpoint, recipe and heads by kind.

Everything the merged model holds (student, heads, the SAM head's prompt encoder and decoder) is in
``model.safetensors``; teachers are only needed for what the merged model does not hold, such as a
CLIP teacher's text tower. So teachers whose checkpoint is missing are built with random weights
when the caller does not need them, and the training data is never opened.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from mergekit_vision.contracts import STUDENTS, TEACHERS, Teacher
from mergekit_vision.engine.build import MergedModel, build_components
from mergekit_vision.engine.run_folder import (
    CHECKPOINTS_DIR,
    MODEL_FILE,
    RECIPE_FILE,
    find_last,
    load_model_weights,
)
from mergekit_vision.export import ExportError
from mergekit_vision.recipe.io import load_recipe, validate_recipe
from mergekit_vision.recipe.references import declared_references
from mergekit_vision.recipe.schema import Recipe
from mergekit_vision.students.lora import merge_lora


@dataclass
class LoadedRun:
    """A run's merged model (eval mode, CPU unless the recipe says otherwise) and its context."""

    run_dir: Path
    checkpoint: Path
    recipe: Recipe
    model: MergedModel
    teachers: dict[str, Teacher]
    random_teachers: set[str]

    def head_name(self, kind: type) -> str:
        """The name of the run's head of ``kind`` (the eval section's choice when it has one)."""
        if self.recipe.eval is not None and self.recipe.eval.heads is not None:
            chosen = [
                name
                for name in self.recipe.eval.heads
                if name in self.model.heads and isinstance(self.model.heads[name], kind)
            ]
            if len(chosen) == 1:
                return chosen[0]
        found = [name for name, head in self.model.heads.items() if isinstance(head, kind)]
        if len(found) != 1:
            what = "none" if not found else ", ".join(found)
            raise ExportError(
                f"{self.run_dir}: needs exactly one {kind.__name__} head, found {what}; "
                "name the ones to use in the recipe's eval section (eval.heads)"
            )
        return found[0]

    def teacher_of(self, head_name: str) -> str:
        """The teacher a head was distilled from: the first its params name (``teacher``,
        ``init_from``)."""
        params = self.recipe.heads[head_name].params
        named = declared_references(type(params), params, "")
        return str(next((name for _, section, name in named if section == "teachers"), None))

    def require_teacher(self, name: str, *, why: str) -> Teacher:
        """Teacher ``name`` with its real weights; a clear error when its checkpoint is missing."""
        if name in self.random_teachers:
            raise FileNotFoundError(
                f"{why} needs teacher {name!r}'s checkpoint, which is missing (see "
                f"teachers.{name}.params in {self.checkpoint / RECIPE_FILE})"
            )
        return self.teachers[name]


def find_checkpoint(run_dir: Path) -> Path:
    """``run_dir``'s last complete checkpoint (or ``run_dir`` itself when it is a checkpoint)."""
    run_dir = Path(run_dir)
    if (run_dir / MODEL_FILE).is_file() and (run_dir / RECIPE_FILE).is_file():
        return run_dir
    checkpoint = find_last(run_dir / CHECKPOINTS_DIR)
    if checkpoint is None:
        raise FileNotFoundError(
            f"{run_dir} is not a run folder: it has no checkpoints/last/{MODEL_FILE} "
            "(train one with vmerge run)"
        )
    if not (checkpoint / RECIPE_FILE).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} has no {RECIPE_FILE}")
    return checkpoint


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild ``run_dir``'s merged model from its last checkpoint and resolved recipe."""
    checkpoint = find_checkpoint(run_dir)
    recipe = load_recipe(checkpoint / RECIPE_FILE)
    standalone, random_teachers = standalone_recipe(recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random teachers are expected here and announced above
        components = build_components(standalone, allow_random_init=True)
    model = components.model
    load_model_weights(model, checkpoint)
    merge_lora(model.student)  # a LoRA student's updates folded in: plain weights from here on
    return LoadedRun(
        run_dir=Path(run_dir),
        checkpoint=checkpoint,
        recipe=recipe,
        model=model.eval(),
        teachers=components.teachers,
        random_teachers=random_teachers,
    )


def standalone_recipe(recipe: Recipe, *, read_teachers: bool = True) -> tuple[Recipe, set[str]]:
    """The recipe with missing teacher checkpoints (all of them unless ``read_teachers``)
    dropped and no training data to open; and the teachers that will have random weights."""
    data = recipe.model_dump(mode="json")
    random_teachers = set()
    for name, spec in recipe.teachers.items():
        fields = TEACHERS.get(spec.type).checkpoint_fields(spec.params)
        for field, path in fields.items():
            if not read_teachers or path is None or not Path(path).is_file():
                data["teachers"][name]["params"][field] = None
                random_teachers.add(name)
    for task in data["tasks"].values():
        task["data"] = {"type": "synthetic", "params": {"num_samples": 1}}
        task["heldout"] = None
    student = STUDENTS.get(recipe.student.type)
    fields = getattr(student, "checkpoint_fields", lambda params: {})
    for field in fields(recipe.student.params):
        data["student"]["params"][field] = None  # its weights are in the merged model
    return validate_recipe(data, source=f"{recipe.name} (loaded)"), random_teachers
