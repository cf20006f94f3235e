"""The learning-rate factor every training here follows: linear warmup, then cosine decay.

A leaf module (no project imports), so both the recipe engine (:mod:`mergekit_vision.engine.optim`)
and the toy teachers' trainers share one formula without the toy code depending on the recipe
schema.
"""

from __future__ import annotations

import math


def warmup_cosine(
    step: int,
    *,
    warmup: int,
    total_steps: int,
    constant: bool = False,
    min_lr_ratio: float = 0.0,
) -> float:
    """LR factor at ``step``: linear warmup, then cosine decay to ``min_lr_ratio`` (or flat)."""
    warmup = min(warmup, max(total_steps - 1, 0))
    if step < warmup:
        return (step + 1) / warmup
    if constant:
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return min_lr_ratio + (1 - min_lr_ratio) * cosine
