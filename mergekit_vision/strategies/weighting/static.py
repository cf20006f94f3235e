"""Fixed task weights: the recipe's per-task ``weight`` (SAM-CLIP's lambda)."""

from __future__ import annotations

from mergekit_vision.strategies.weighting.base import WEIGHTING, LossWeighting


@WEIGHTING.register("static")
class StaticWeighting(LossWeighting):
    """The recipe's task weights, unchanged (SAM-CLIP, arXiv 2310.15308: lambda = 10).

    A plain weighted sum, well tuned, is a strong baseline (Kurin et al., NeurIPS 2022).
    """
