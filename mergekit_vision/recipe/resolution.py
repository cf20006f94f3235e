"""A task's training resolution: one side, a list cycled per step, or a stochastic draw.

Stochastic multi-resolution training follows RADIOv2.5 (Heinrich et al., "RADIOv2.5: Improved
Baselines for Agglomerative Vision Foundation Models", CVPR 2025, arXiv 2412.07679): a student
distilled at one resolution per teacher learns to switch "modes" with the input size (its
features at low resolution serve some teachers, at high resolution others), so RADIOv2.5 trains
against every teacher at a low- and a high-resolution set, each step drawing its size. Here a
task's ``resolution: {low: [...], high: [...], p_high: p}`` draws, every step, the high set with
probability ``p`` and then a side uniformly within the chosen set.

The draw is a pure function of the run seed, the stage, the task and the step (a string-seeded
:class:`random.Random`, which hashes its seed with SHA-512 and is the same on every platform and
Python version), so a resumed run trains at the sizes the uninterrupted one would. Importing this
module loads pydantic and the standard library only.
"""

from __future__ import annotations

import random
from typing import Annotated, Any

from pydantic import (
    Field,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from mergekit_vision.recipe.ranges import Resolution, Side
from mergekit_vision.recipe.specs import Frozen


class StochasticResolution(Frozen):
    """Per step: with probability ``p_high`` a side of ``high``, else one of ``low`` (uniformly
    within the set); RADIOv2.5's low- and high-resolution sets (arXiv 2412.07679)."""

    low: list[Side] = Field(min_length=1, description="the low-resolution sides in px")
    high: list[Side] = Field(default_factory=list, description="the high-resolution sides in px")
    p_high: float = Field(
        0.25,
        ge=0,
        le=1,
        description="the probability that a step draws from 'high' (default 0.25, 0 without "
        "'high')",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_high_draws_low(cls, data: Any) -> Any:
        # ``{low: [...]}`` alone draws uniformly from ``low``; the dump says so (p_high: 0)
        if isinstance(data, dict) and "p_high" not in data and not data.get("high"):
            return {**data, "p_high": 0.0}
        return data

    @model_validator(mode="after")
    def _high_when_drawn(self) -> StochasticResolution:
        if self.p_high > 0 and not self.high:
            raise ValueError("p_high > 0 needs 'high' sides to draw; give them or set p_high: 0")
        return self

    def sides(self) -> list[int]:
        """Every side a step may draw (low first)."""
        return [*self.low, *self.high]

    def sample(self, *, seed: int, key: str, step: int) -> int:
        """The side of step ``step`` for ``key`` (a stage and task) in a run seeded ``seed``."""
        draw = random.Random(f"{seed}/{key}/{step}")
        pool = self.high if draw.random() < self.p_high else self.low
        return draw.choice(pool)


_SIDES: TypeAdapter[int | list[int]] = TypeAdapter(Resolution)


def _by_form(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # The form chooses the branch, so a mistake is reported against that form only and at the
    # field's own path (a plain union would add an error, and a path part, per branch).
    if isinstance(value, StochasticResolution):
        return value
    if isinstance(value, dict):
        return StochasticResolution.model_validate(value)
    return _SIDES.validate_python(value)


TaskResolution = Annotated[Resolution | StochasticResolution, WrapValidator(_by_form)]


def resolution_sides(resolution: int | list[int] | StochasticResolution) -> list[int]:
    """Every side ``resolution`` may train at."""
    if isinstance(resolution, StochasticResolution):
        return resolution.sides()
    return list(resolution) if isinstance(resolution, list) else [resolution]


def side_at(
    resolution: int | list[int] | StochasticResolution, *, step: int, seed: int, key: str
) -> int:
    """The side of step ``step``: a list cycles, a stochastic resolution draws (seeded by
    ``seed`` and ``key``, e.g. ``"<stage>/<task>"``)."""
    if isinstance(resolution, StochasticResolution):
        return resolution.sample(seed=seed, key=key, step=step)
    sides = resolution_sides(resolution)
    return sides[step % len(sides)]


def reference_side(resolution: int | list[int] | StochasticResolution) -> int:
    """The one side held-out losses are measured at: the first given (a stochastic
    resolution's first low side), so that readings compare across steps."""
    return resolution_sides(resolution)[0]
