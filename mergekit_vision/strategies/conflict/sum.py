"""Plain weighted sum of the task gradients."""

from __future__ import annotations

from mergekit_vision.strategies.conflict.base import CONFLICT, ConflictStrategy


@CONFLICT.register("sum")
class WeightedSum(ConflictStrategy):
    """The gradients of the weighted task losses simply accumulate (SAM-CLIP, arXiv 2310.15308).

    ``L = L_CLIP + lambda * L_SAM``: the weights live on the tasks, so the accumulated gradient is
    already the update. A strong baseline when the weights are tuned (Kurin et al. 2022).
    """
