"""Teacher dropping: each step drops tasks at random, never the one furthest behind.

Why a replay scheduler and not a loss weighting: a dropped task is left out of the step's draws,
so it costs no teacher, student or backward pass, and the conflict strategy sees only the rows of
the tasks that ran. A weighting would zero the loss after paying for it, and would hand
MGDA-style strategies zero rows, whose min-norm combination is the zero update. The replay
interface also has what the rule needs: the step number (so the draw is a pure function of
``(seed, step)``) and the losses of every step taken (to know which task to keep).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.replay.base import REPLAY, ReplayScheduler, TaskDraw


@REPLAY.register("teacher_drop")
class TeacherDrop(ReplayScheduler):
    """Teacher dropping: every task but the highest-loss one is dropped with probability ``p``.

    UNIC (Sariyildiz et al., "UNIC: Universal Classification Models via Multi-teacher
    Distillation", ECCV 2024, arXiv 2408.05088): each teacher's loss coefficient is flipped to 0
    with probability ``p``, except the teacher with the highest loss, which is always kept, and
    the loss is the kept losses' sum divided by the number kept. DUNE (Sariyildiz et al., CVPR
    2025, arXiv 2503.14405) uses the same rule; its code names it ``lowest_loss``, for the
    teachers it drops.

    UNIC decides per image, on losses of one shared forward pass. Here each task has its own
    batch and forward, and the draw comes before the step, so the kept task is the one with the
    highest loss when it last ran (raw, unweighted losses, as UNIC compares them: give the tasks
    comparable loss scales, e.g. normalised targets). A task that has not run yet counts as
    highest; ties are broken at random. Every other task is dropped independently with
    probability ``p``, so at least one task runs every step. With ``renormalize`` the kept tasks'
    losses are multiplied by ``T / kept`` (``T`` the stage's tasks): UNIC's division by the
    number kept, scaled to the engine's sum over tasks, so a step's total loss weight does not
    depend on how many were dropped.

    The coin flips of step ``s`` come from ``numpy.random.default_rng([seed, s])``; with the last
    losses (checkpointed) they make a resumed run draw what an uninterrupted one would.

    Args:
        batch_sizes: each task's recipe batch size.
        p: probability of dropping each task other than the kept one (UNIC and DUNE: 0.5).
        renormalize: scale the kept tasks' losses by ``T / kept``.
        seed: seeds the per-step draws.
    """

    class Params(PluginParams):
        p: float = Field(0.5, ge=0.0, lt=1.0)
        renormalize: bool = True
        seed: int = Field(0, ge=0)

    def __init__(
        self,
        *,
        batch_sizes: dict[str, int],
        p: float = 0.5,
        renormalize: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_sizes=batch_sizes)
        self.tasks = list(self.batch_sizes)
        self.p, self.renormalize, self.seed = p, renormalize, seed
        self.last_losses: dict[str, float] = {}

    def draws(self, *, step: int) -> list[TaskDraw]:
        rng = np.random.default_rng([self.seed, step])
        coins = rng.random(len(self.tasks))  # first, so each task's drop is Bernoulli(p)
        kept_index = self._highest_loss(rng)
        kept = [
            task
            for index, task in enumerate(self.tasks)
            if index == kept_index or coins[index] >= self.p
        ]
        scale = len(self.tasks) / len(kept) if self.renormalize else 1.0
        return [TaskDraw(task, self.batch_sizes[task], scale) for task in kept]

    def _highest_loss(self, rng: np.random.Generator) -> int:
        """Index of the task to keep: the highest last loss (a task never run counts as
        infinite); ties drawn uniformly."""
        losses = [self.last_losses.get(task, math.inf) for task in self.tasks]
        top = max(losses)
        tied = [index for index, loss in enumerate(losses) if loss == top]
        return tied[int(rng.integers(len(tied)))] if len(tied) > 1 else tied[0]

    def observe(self, *, step: int, losses: dict[str, float]) -> None:
        self.last_losses.update({t: float(v) for t, v in losses.items() if t in self.batch_sizes})

    def state_dict(self) -> dict[str, Any]:
        return {"last_losses": dict(self.last_losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_losses = {t: float(v) for t, v in state.get("last_losses", {}).items()}
