"""One task per step, sampled with fixed probabilities."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from mergekit_vision.registry import PluginParams, TaskName
from mergekit_vision.strategies.replay.base import REPLAY, ReplayScheduler, TaskDraw


@REPLAY.register("proportional")
class Proportional(ReplayScheduler):
    """Each step runs ONE task, drawn with the given probabilities, at its recipe batch size.

    Temperature/proportional task sampling of multi-task training (e.g. Raffel et al., T5, JMLR
    2020, sec. 3.5.2; Arivazhagan et al. 2019). The draw of step ``s`` is a pure function of
    ``(seed, s)`` (numpy's ``default_rng([seed, s])``), so a resumed run draws exactly what an
    uninterrupted one would, with no generator state to checkpoint.

    Args:
        batch_sizes: each task's recipe batch size.
        probabilities: a weight per task (every task of the stage, no others); normalized to sum
            to one.
        seed: seeds the per-step draws.
    """

    tasks_per_step = 1

    class Params(PluginParams):
        probabilities: dict[TaskName, float]
        seed: int = Field(0, ge=0)

    def __init__(
        self, *, batch_sizes: dict[str, int], probabilities: dict[str, float], seed: int = 0
    ) -> None:
        super().__init__(batch_sizes=batch_sizes)
        self.tasks = list(self.batch_sizes)
        self.probabilities = _normalized(probabilities, tasks=self.tasks)
        self.seed = seed

    def draws(self, *, step: int) -> list[TaskDraw]:
        rng = np.random.default_rng([self.seed, step])
        index = int(rng.choice(len(self.tasks), p=[self.probabilities[t] for t in self.tasks]))
        task = self.tasks[index]
        return [TaskDraw(task, self.batch_sizes[task])]


def _normalized(probabilities: dict[str, float], *, tasks: list[str]) -> dict[str, float]:
    if set(probabilities) != set(tasks):
        raise ValueError(
            f"proportional replay needs a probability for every task and no others; "
            f"tasks: {', '.join(tasks)}; given: {', '.join(probabilities) or '(none)'}"
        )
    if any(p < 0 for p in probabilities.values()) or sum(probabilities.values()) <= 0:
        raise ValueError(f"probabilities must be >= 0 with a positive sum, got {probabilities}")
    total = sum(probabilities.values())
    return {task: probabilities[task] / total for task in tasks}
