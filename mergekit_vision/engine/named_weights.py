"""The weights a recipe names by hub name or tag: which they are, which the local cache lacks,
and fetching them ahead of a run (``vmerge fetch``, and ``vmerge run`` before it builds).

Each teacher and the student declare their names (``weight_names``); resolving one goes through
:mod:`mergekit_vision.hub`, that is through the libraries' own download and cache code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mergekit_vision.contracts import STUDENTS, TEACHERS
from mergekit_vision.errors import Issue, RecipeError, WeightsFileError, WeightsNotFoundError
from mergekit_vision.hub import WeightsName, cached, downloads_off, resolve
from mergekit_vision.recipe.schema import Recipe


def recipe_weight_names(recipe: Recipe) -> list[WeightsName]:
    """Every weights name of the recipe's teachers and student, each with its recipe field
    (``where``, e.g. ``teachers.clip.params.pretrained``)."""
    names = []
    for name, spec in recipe.teachers.items():
        for weights in TEACHERS.get(spec.type).weight_names(spec.params).values():
            names.append(replace(weights, where=f"teachers.{name}.params.{weights.field}"))
    student = STUDENTS.get(recipe.student.type)
    for weights in student.weight_names(recipe.student.params).values():
        names.append(replace(weights, where=f"student.params.{weights.field}"))
    return names


def uncached_weights(recipe: Recipe) -> list[Issue]:
    """One issue per weights name the local cache lacks (nothing is downloaded)."""
    issues = []
    for weights in recipe_weight_names(recipe):
        if cached(weights) is None:
            if downloads_off():
                error = weights.uncached_error()
            else:
                error = weights.not_cached(
                    "", "run `vmerge fetch RECIPE` (`vmerge run` fetches it too)"
                )
            issues.append(Issue(weights.where, error.detail))
    return issues


@dataclass(frozen=True)
class Fetched:
    """One weights name, resolved: its recipe field, the name, the local file (or folder), and
    whether this call downloaded it."""

    where: str
    name: str
    path: Path
    downloaded: bool


def fetch_weights(
    recipe: Recipe, *, source: str, report: Callable[[Fetched], None] | None = None
) -> list[Fetched]:
    """Resolve every weights name of ``recipe``, downloading what the cache lacks (with the
    library's progress bar) unless ``HF_HUB_OFFLINE`` turns downloads off.

    Args:
        source: the recipe's file, for the error.
        report: called once per name as it is resolved.

    Raises:
        RecipeError: listing, by recipe field, every name that could not be had (not cached while
            offline, not on the Hub, or a file whose SHA-256 is wrong).
    """
    fetched, issues = [], []
    for weights in recipe_weight_names(recipe):
        was_cached = cached(weights) is not None
        try:
            path = resolve(weights)
        except WeightsNotFoundError as error:
            issues.append(Issue(weights.where, error.detail))
            continue
        except (WeightsFileError, FileNotFoundError) as error:
            issues.append(Issue(weights.where, str(error)))
            continue
        fetched.append(Fetched(weights.where, weights.name, path, downloaded=not was_cached))
        if report is not None:
            report(fetched[-1])
    if issues:
        raise RecipeError(source, issues)
    return fetched
