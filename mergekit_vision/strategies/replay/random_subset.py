"""A random subset of the tasks per step: ``k`` of them, drawn uniformly.

A replay scheduler, as teacher dropping is (see :mod:`.teacher_drop`): the tasks left out of a
step cost nothing, and the choice is a pure function of ``(seed, step)`` that needs no losses.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.replay.base import REPLAY, ReplayScheduler, TaskDraw


@REPLAY.register("random_subset")
class RandomSubset(ReplayScheduler):
    """Each step runs ``k`` of the stage's ``T`` tasks, drawn uniformly without replacement.

    Theia (Shang et al., "Theia: Distilling Diverse Vision Foundation Models for Robot
    Learning", CoRL 2024, arXiv 2407.20179): its training script's ``random_target_models``
    option distils each batch into 2 of its teachers, sampled afresh each step. Every ``k``-subset
    is equally likely, so each task runs in a share ``k / T`` of the steps. With ``renormalize``
    the drawn tasks' losses are multiplied by ``T / k``: each task's expected loss weight is then
    its recipe weight, and a step's total is that of a step running every task.

    The subset of step ``s`` comes from ``numpy.random.default_rng([seed, s])``, so a resumed
    run draws what an uninterrupted one would, with no state to checkpoint. The drawn tasks run
    in the recipe's order.

    Args:
        batch_sizes: each task's recipe batch size.
        k: tasks per step (1 to ``T``; ``T`` runs every task, as ``fixed_ratio``).
        renormalize: scale the drawn tasks' losses by ``T / k``.
        seed: seeds the per-step draws.
    """

    class Params(PluginParams):
        k: int = Field(gt=0)
        renormalize: bool = True
        seed: int = Field(0, ge=0)

    def __init__(
        self, *, batch_sizes: dict[str, int], k: int, renormalize: bool = True, seed: int = 0
    ) -> None:
        super().__init__(batch_sizes=batch_sizes)
        self.tasks = list(self.batch_sizes)
        if not 1 <= k <= len(self.tasks):
            raise ValueError(
                f"random_subset: k={k} tasks per step, but the stage has {len(self.tasks)} "
                f"({', '.join(self.tasks)}); give k between 1 and {len(self.tasks)}"
            )
        self.k, self.renormalize, self.seed = k, renormalize, seed

    def draws(self, *, step: int) -> list[TaskDraw]:
        rng = np.random.default_rng([self.seed, step])
        chosen = sorted(rng.choice(len(self.tasks), size=self.k, replace=False).tolist())
        scale = len(self.tasks) / self.k if self.renormalize else 1.0
        return [TaskDraw(self.tasks[i], self.batch_sizes[self.tasks[i]], scale) for i in chosen]
