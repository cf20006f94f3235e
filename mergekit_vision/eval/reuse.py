"""Reuse the teachers' and the pipeline's evaluation across runs that share them.

Variants of one recipe (``vmerge compare``) differ in how the student is trained, not in the
teachers or the evaluation data, so the CLIP teacher, SAM teacher and SAM-then-CLIP pipeline rows
of ``eval.json`` are the same for all of them and take about half of each evaluation. With
``eval.teacher_results: FILE`` those rows are stored in FILE under a fingerprint of everything they
depend on (the teachers' recipe entries and checkpoint files, the evaluation data and settings, the
app sections that make data and teachers, the seed) and read back, instead of recomputed, while the
fingerprint matches. The toy recipes set it (one file per set of teachers), so a rerun skips
their evaluation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mergekit_vision.recipe.schema import Recipe

# Evaluation settings that change only the merged model's rows.
MERGED_ONLY = {
    "heads",
    "pictures",
    "teacher_results",
    "refined_mask_class",
    "points_per_class",
}


def evaluated_teachers(recipe: Recipe) -> list[str]:
    """The teachers ``vmerge eval`` measures: ``eval.teachers``, or all of the recipe's."""
    assert recipe.eval is not None
    return list(recipe.eval.teachers if recipe.eval.teachers is not None else recipe.teachers)


def fingerprint(recipe: Recipe) -> str:
    """sha256 over what the teacher rows depend on; checkpoint files by path, size and mtime."""
    spec = recipe.eval
    assert spec is not None
    teachers = {n: recipe.teachers[n] for n in evaluated_teachers(recipe)}
    payload = {
        "seed": recipe.seed,
        "apps": _app_sections(recipe),
        "eval": spec.model_dump(mode="json", exclude=MERGED_ONLY),
        "teachers": {n: t.model_dump(mode="json") for n, t in teachers.items()},
        "files": {
            n: _file_stamp(getattr(t.params, "checkpoint", None)) for n, t in teachers.items()
        },
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def teacher_stamp(recipe: Recipe, name: str) -> dict[str, Any]:
    """What one teacher's outputs depend on: its recipe entry, checkpoint file, apps and seed."""
    teacher = recipe.teachers[name]
    return {
        "seed": recipe.seed,
        "apps": _app_sections(recipe),
        "teacher": teacher.model_dump(mode="json"),
        "file": _file_stamp(getattr(teacher.params, "checkpoint", None)),
    }


def _app_sections(recipe: Recipe) -> dict[str, Any]:
    """The app sections that make data and teachers (``toy.eval_seed`` draws other scenes into
    the same folders), as a whole, training settings included: safe rather than tight."""
    return {
        name: section.model_dump(mode="json") for name, section in recipe.app_sections().items()
    }


def _file_stamp(path: Any) -> list[Any] | None:
    """A checkpoint file's path, size and mtime; a folder's (a save_pretrained folder, a run
    folder) for every file in it; None for what is not on disk (a hub name)."""
    if path is None or not Path(path).exists():
        return None
    root = Path(path).resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [[str(f), (st := f.stat()).st_size, st.st_mtime_ns] for f in files]


def load_teacher_rows(path: Path, key: str) -> dict[str, Any] | None:
    """The stored rows if ``path`` holds them for this fingerprint, else None."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a torn write from an interrupted run: recompute
    if stored.get("fingerprint") != key:
        return None
    return stored.get("models")


def save_teacher_rows(path: Path, key: str, models: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"fingerprint": key, "models": models}, indent=2))
    tmp.replace(path)
