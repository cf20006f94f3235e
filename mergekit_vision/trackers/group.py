"""A run's trackers as one: what the run folder hands them, and building them from the recipe."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from mergekit_vision.errors import BuildError
from mergekit_vision.recipe.specs import TrackerSpec
from mergekit_vision.trackers.base import TRACKERS, Tracker, TrackerLibraryMissing


class TrackerGroup:
    """The recipe's trackers (none under ``torchrun`` but on rank 0): started by the run folder,
    each metrics line handed to every one, closed by whoever opened them (a ``with`` block).

    Args:
        trackers: the built trackers; none makes every call a no-op.
    """

    def __init__(self, trackers: Sequence[Tracker] = ()):
        self.trackers = list(trackers)
        self.started = False

    def start(self, *, recipe_yaml: str, from_step: int) -> None:
        """Start every tracker with the resolved recipe (once; later calls do nothing)."""
        if self.started:
            return
        self.started = True
        config = yaml.safe_load(recipe_yaml) if recipe_yaml else {}
        for tracker in self.trackers:
            tracker.start(config=config or {}, recipe_yaml=recipe_yaml, from_step=from_step)

    def log(self, record: Mapping[str, Any]) -> None:
        """Hand a metrics line's numbers to every tracker at the line's ``step``."""
        if not self.trackers:
            return
        if not self.started:
            raise RuntimeError("TrackerGroup.log before start: the run folder starts the trackers")
        step, scalars = int(record["step"]), record_scalars(record)
        for tracker in self.trackers:
            tracker.log(scalars, step=step)

    def close(self, *, failed: bool = False) -> None:
        if self.started:
            self.started = False
            for tracker in self.trackers:
                tracker.close(failed=failed)

    def __enter__(self) -> TrackerGroup:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(failed=kind is not None)


def record_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics line, ``step`` aside (a stage name is text; a skipped
    step's loss is written as null)."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "step"
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


def open_trackers(
    specs: Sequence[TrackerSpec], *, run_dir: Path, enabled: bool = True
) -> TrackerGroup:
    """The trackers ``logging.trackers`` names, built for ``run_dir``.

    Every library is checked even when not ``enabled`` (ranks other than 0, a dry run), so a
    missing one is a :class:`~mergekit_vision.errors.BuildError` naming the extra to install
    before any model is built; a disabled group logs nothing.
    """
    built = []
    for index, spec in enumerate(specs):
        try:
            built.append(TRACKERS.get(spec.type).build(spec.params, run_dir=run_dir))
        except TrackerLibraryMissing as err:
            raise BuildError(f"logging.trackers.{index} ({spec.type})", err) from None
    return TrackerGroup(built if enabled else [])
