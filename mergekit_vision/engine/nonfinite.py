"""Surviving NaN / inf: a step whose loss is not finite is skipped, too many in a row stop the run.

One bad batch (an fp16/bf16 overflow, a degenerate target) should cost one step, not a multi-day
run; a run that keeps producing them has diverged, and stopping it with its last checkpoint
intact beats training on. A checkpoint is never written of weights that are not finite, so the
run folder's ``last`` always holds a model worth resuming from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from mergekit_vision.errors import NonFiniteError

ADVICE = (
    "try a lower lr, optimizer.grad_clip, or performance.autocast: fp32, "
    "then resume from the last checkpoint with --resume"
)


class NonFiniteGuard:
    """Decides whether a step's update is skipped, and stops the run after ``bound`` in a row.

    The losses it reads are already averaged over the ranks, so every rank decides alike.

    Args:
        bound: consecutive non-finite steps that stop the run (``optimizer.max_nonfinite_steps``).
    """

    def __init__(self, *, bound: int):
        self.bound = bound
        self.streak = 0

    def skip(self, losses: dict[str, float], *, step: int, stage: str) -> bool:
        """True when step ``step`` (1-based, global) must not update anything; raises
        :class:`NonFiniteError` when it is the ``bound``-th such step in a row."""
        bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
        if not bad:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak >= self.bound:
            found = ", ".join(f"task {name!r} loss {value}" for name, value in bad.items())
            raise NonFiniteError(
                f"step {step} (stage {stage!r}): {found}; {self.streak} consecutive steps with a "
                f"non-finite loss reached optimizer.max_nonfinite_steps ({self.bound}), so the run "
                f"stops; its last checkpoint is kept. {ADVICE}"
            )
        return True


def check_finite_weights(weights: Iterable[tuple[str, Tensor]], *, step: int) -> None:
    """Refuse to checkpoint step ``step`` when a floating-point weight holds NaN or inf."""
    for name, value in weights:
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise NonFiniteError(
                f"step {step}: the model's weight {name!r} is not finite, so no checkpoint is "
                f"written of it and the run stops; its last checkpoint is kept. {ADVICE}"
            )
