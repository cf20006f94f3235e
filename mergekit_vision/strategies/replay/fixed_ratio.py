"""Every step draws one batch of every task at its recipe batch size."""

from __future__ import annotations

from mergekit_vision.strategies.replay.base import REPLAY, ReplayScheduler, TaskDraw


@REPLAY.register("fixed_ratio")
class FixedRatio(ReplayScheduler):
    """One batch of each task per step, fixed sizes (SAM-CLIP, arXiv 2310.15308, sec. 4).

    SAM-CLIP's stage II takes one CLIP batch and one SAM batch per optimiser step, so the replay of
    the SAM data is a fixed share of every update.
    """

    def draws(self, *, step: int) -> list[TaskDraw]:
        return [TaskDraw(task, size) for task, size in self.batch_sizes.items()]
