"""What a targets cache was computed from, and the refusal of a cache that no longer fits.

A cache folder holds ``manifest.json`` and ``shard-NNNNN.safetensors`` files. The manifest's
``identity`` is everything the cached values depend on: the teacher (type, parameters, and the
sha256 of each checkpoint file), the target, the resolutions and resize mode, the views and their
augmentation, the prompt settings, the dataset (plugin, parameters, load resolution, seed) and the
run seed. A training run recomputes the identity from its recipe and refuses a cache whose
identity differs, naming the fields that differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mergekit_vision.contracts import TEACHERS
from mergekit_vision.errors import BuildError
from mergekit_vision.recipe.resolution import resolution_sides
from mergekit_vision.recipe.schema import Recipe, task_load_resolution
from mergekit_vision.recipe.task_params import PromptSamplerParams

FORMAT = 1
MANIFEST = "manifest.json"
_HASH_CHUNK = 1 << 22


class StaleCacheError(BuildError):
    """A targets cache that does not match the recipe, or is incomplete; says how to fix it."""

    def __init__(self, task: str, message: str):
        super().__init__(f"tasks.{task}.targets_cache", ValueError(message))


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def task_resolutions(recipe: Recipe, task_name: str) -> list[int]:
    """Every resolution any stage trains ``task_name`` at (targets are cached at each)."""
    sizes = set(recipe.tasks[task_name].resolutions())
    for stage in recipe.stages:
        override = stage.resolution.get(task_name)
        if override is not None:
            sizes.update(resolution_sides(override))
    return sorted(sizes)


def cache_identity(recipe: Recipe, task_name: str) -> dict[str, Any]:
    """The JSON-able description of everything the task's cached targets depend on."""
    spec = recipe.tasks[task_name]
    teacher = recipe.teachers[spec.teacher]
    teacher_params = teacher.params
    files = TEACHERS.get(teacher.type).checkpoint_fields(teacher_params)
    params = teacher_params.model_dump(mode="json")
    for field in files:  # the file's content counts, not where it lies
        params.pop(field, None)
    # Resolved even for targets without prompts: the recipe cannot tell which need them.
    prompts = (spec.prompts or PromptSamplerParams()).model_dump(mode="json")
    return {
        "format": FORMAT,
        "task": task_name,
        "seed": recipe.seed,
        "teacher": {"name": spec.teacher, "type": teacher.type, "params": params},
        "checkpoint_sha256": {
            field: None if path is None else file_sha256(path) for field, path in files.items()
        },
        "target": spec.target,
        "resolutions": task_resolutions(recipe, task_name),
        "resize": spec.resize,
        "views": spec.sample_views() or 1,
        "augment": None if spec.augment is None else spec.augment.model_dump(mode="json"),
        "prompts": prompts,
        "dataset": {
            "type": spec.data.type,
            "params": spec.data.params.model_dump(mode="json"),
            "load_resolution": task_load_resolution(recipe, task_name),
            "max_masks": spec.max_masks,
        },
    }


def identity_differences(cached: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``"field: cached X, recipe Y"`` for every leaf that differs (dotted paths)."""
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        elif a != b:
            out.append(f"{path}: cached {_short(a)}, recipe {_short(b)}")

    walk(cached, wanted, "")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Atomically (a crash leaves the old manifest or the new one, never half of one)."""
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.replace(folder / MANIFEST)
