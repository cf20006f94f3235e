"""One task per step, in turn."""

from __future__ import annotations

from mergekit_vision.strategies.replay.base import REPLAY, ReplayScheduler, TaskDraw


@REPLAY.register("alternating")
class Alternating(ReplayScheduler):
    """Round robin: step ``s`` runs only task ``s mod T`` at its recipe batch size.

    The classic alternating schedule of multi-task training (e.g. UniT, Hu & Singh 2021; the
    "round-robin" baseline of multi-teacher distillation), each task getting every ``T``-th
    update. Tasks take turns in the recipe's order. With one task per step the per-task gradient
    matrix has a single row, so gradient-conflict strategies leave such steps as they are.
    """

    tasks_per_step = 1

    def draws(self, *, step: int) -> list[TaskDraw]:
        tasks = list(self.batch_sizes)
        task = tasks[step % len(tasks)]
        return [TaskDraw(task, self.batch_sizes[task])]
