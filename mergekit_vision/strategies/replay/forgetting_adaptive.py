"""Replay shares that grow for the tasks being forgotten."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mergekit_vision.registry import PluginParams, TaskName
from mergekit_vision.strategies.replay.base import REPLAY, ReplayScheduler, TaskDraw


@REPLAY.register("forgetting_adaptive")
class ForgettingAdaptive(ReplayScheduler):
    """Every task runs every step; a task whose held-out loss rises gets a larger share.

    SAM-CLIP (Wang et al., arXiv 2310.15308) replays SAM's data at a fixed ratio and early-stops
    on a forgetting metric; rehearsal methods of continual learning (Rebuffi et al., iCaRL, CVPR
    2017; Rolnick et al., "Experience Replay for Continual Learning", NeurIPS 2019) show that the
    amount of replay sets the forgetting. This scheduler closes that loop instead of stopping:
    when a task's held-out distillation loss exceeds its best so far by more than ``tolerance``
    (relative), its share is multiplied by ``boost`` and all shares are renormalized to sum to
    one (so the others shrink), then capped at ``max_share`` with the excess handed to the others
    in proportion. It is raised again at every check while it stays above. Each step draws every
    task with ``max(1, round(share * total))`` samples, ``total`` being the sum of the recipe
    batch sizes, so the step's cost stays about constant.

    Args:
        batch_sizes: each task's recipe batch size.
        initial_shares: starting shares (every task, normalized); default: the recipe batch sizes'
            proportions, i.e. ``fixed_ratio``'s draws.
        tolerance: relative rise over the best held-out loss that counts as forgetting.
        boost: factor applied to a forgetting task's share (before renormalizing).
        max_share: no task's share exceeds this (at least ``1 / T``).
    """

    class Params(PluginParams):
        initial_shares: dict[TaskName, float] | None = None
        tolerance: float = Field(0.05, ge=0.0)
        boost: float = Field(1.5, gt=1.0)
        max_share: float = Field(0.9, gt=0.0, le=1.0)

    def __init__(
        self,
        *,
        batch_sizes: dict[str, int],
        initial_shares: dict[str, float] | None = None,
        tolerance: float = 0.05,
        boost: float = 1.5,
        max_share: float = 0.9,
    ) -> None:
        super().__init__(batch_sizes=batch_sizes)
        tasks = list(self.batch_sizes)
        if max_share * len(tasks) < 1.0 - 1e-9:
            raise ValueError(f"max_share {max_share} < 1/{len(tasks)}: shares could not sum to 1")
        start = initial_shares if initial_shares is not None else dict(self.batch_sizes)
        if set(start) != set(tasks) or any(v <= 0 for v in start.values()):
            raise ValueError(
                f"initial_shares needs a positive share for every task and no others; "
                f"tasks: {', '.join(tasks)}; given: {start}"
            )
        self.tolerance, self.boost, self.max_share = tolerance, boost, max_share
        self.total = sum(self.batch_sizes.values())
        self.shares = _capped({t: float(start[t]) for t in tasks}, max_share)
        self.best: dict[str, float] = {}

    def draws(self, *, step: int) -> list[TaskDraw]:
        return [
            TaskDraw(task, max(1, round(self.shares[task] * self.total)))
            for task in self.batch_sizes
        ]

    def observe_heldout(self, *, step: int, losses: dict[str, float]) -> None:
        """Held-out distillation loss per task: raise the shares of the tasks being forgotten."""
        forgetting = [
            task
            for task, loss in losses.items()
            if task in self.best and loss > self.best[task] * (1.0 + self.tolerance)
        ]
        for task, loss in losses.items():
            if task in self.shares:
                self.best[task] = min(loss, self.best.get(task, loss))
        if forgetting:
            raised = {
                t: s * (self.boost if t in forgetting else 1.0) for t, s in self.shares.items()
            }
            self.shares = _capped(raised, self.max_share)

    def state_dict(self) -> dict[str, Any]:
        return {"shares": dict(self.shares), "best": dict(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shares = {t: float(state["shares"][t]) for t in self.batch_sizes}
        self.best = {t: float(v) for t, v in state["best"].items()}


def _capped(weights: dict[str, float], cap: float) -> dict[str, float]:
    """Normalize ``weights`` to sum to one with no share above ``cap`` (water-filling)."""
    fixed: dict[str, float] = {}
    while True:
        free = {t: w for t, w in weights.items() if t not in fixed}
        room = 1.0 - sum(fixed.values())
        scale = room / sum(free.values())
        over = [t for t, w in free.items() if w * scale > cap]
        if not over:
            return {t: fixed.get(t, free.get(t, 0.0) * scale) for t in weights}
        fixed.update({t: cap for t in over})
