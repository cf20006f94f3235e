"""Per-task batch-size multipliers that change over the stage, piecewise linearly."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from mergekit_vision.registry import PluginParams, TaskName
from mergekit_vision.strategies.replay.base import REPLAY, ReplayScheduler, TaskDraw


class CurriculumPoint(PluginParams):
    """At ``step``, task ``t`` runs with ``ratios[t]`` times its recipe batch size."""

    step: int = Field(ge=0)
    ratios: dict[TaskName, float]


@REPLAY.register("curriculum")
class Curriculum(ReplayScheduler):
    """Task mixture on a schedule: multipliers interpolated linearly between breakpoints.

    Curriculum learning over tasks (Bengio et al., ICML 2009) applied to replay: e.g. start with
    the new task only and phase the old task's replay in, or anneal the replay share down. At
    step ``s`` each task's ratio is interpolated linearly between the surrounding breakpoints
    (held constant before the first and after the last); every task whose ratio is positive runs,
    with batch size ``max(1, round(ratio * recipe batch size))``.

    Args:
        batch_sizes: each task's recipe batch size.
        schedule: breakpoints with strictly increasing ``step``; each names every task of the
            stage (ratio >= 0) and has at least one positive ratio.
    """

    class Params(PluginParams):
        schedule: list[CurriculumPoint] = Field(min_length=1)

    def __init__(
        self,
        *,
        batch_sizes: dict[str, int],
        schedule: Sequence[CurriculumPoint],
    ) -> None:
        super().__init__(batch_sizes=batch_sizes)
        self.schedule = list(schedule)
        _check(self.schedule, tasks=list(self.batch_sizes))

    @classmethod
    def build(cls, params: Params, *, batch_sizes: dict[str, int]) -> Curriculum:
        return cls(batch_sizes=batch_sizes, schedule=params.schedule)  # the points stay typed

    def ratios(self, *, step: int) -> dict[str, float]:
        """Each task's interpolated batch-size multiplier at ``step``."""
        points = self.schedule
        if step <= points[0].step:
            return dict(points[0].ratios)
        for left, right in zip(points, points[1:], strict=False):
            if step <= right.step:
                t = (step - left.step) / (right.step - left.step)
                return {k: (1 - t) * left.ratios[k] + t * right.ratios[k] for k in left.ratios}
        return dict(points[-1].ratios)

    def draws(self, *, step: int) -> list[TaskDraw]:
        ratios = self.ratios(step=step)
        return [
            TaskDraw(task, max(1, round(ratios[task] * size)))
            for task, size in self.batch_sizes.items()
            if ratios[task] > 0
        ]


def _check(points: list[CurriculumPoint], *, tasks: list[str]) -> None:
    if not points:
        raise ValueError("curriculum replay needs at least one schedule point")
    steps = [p.step for p in points]
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"curriculum schedule steps must increase strictly, got {steps}")
    for point in points:
        if set(point.ratios) != set(tasks):
            raise ValueError(
                f"curriculum point at step {point.step} must give a ratio for every task and no "
                f"others; tasks: {', '.join(tasks)}; given: {', '.join(point.ratios) or '(none)'}"
            )
        if any(r < 0 for r in point.ratios.values()) or not any(point.ratios.values()):
            raise ValueError(
                f"curriculum point at step {point.step} needs ratios >= 0, at least one positive"
            )
