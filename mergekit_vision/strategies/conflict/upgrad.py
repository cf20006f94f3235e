"""UPGrad: the mean of the task gradients, each projected onto the dual cone of all of them."""

from __future__ import annotations

from typing import ClassVar

from mergekit_vision.strategies.conflict.base import CONFLICT
from mergekit_vision.strategies.conflict.dual_cone import DualConeStrategy


@CONFLICT.register("upgrad")
class UPGrad(DualConeStrategy):
    """UPGrad: each task gradient projected onto the dual cone of all of them, averaged.

    Unconflicting projection of gradients (Quinton & Rey, "Jacobian Descent for Multi-Objective
    Optimization", arXiv 2406.16232, 2024; torchjd ``UPGrad``).

    Each row is projected onto the dual cone of the rows (so the update has a non-negative inner
    product with every task gradient) and the projections are averaged; the mean is multiplied by
    the number of tasks so agreeing gradients give their sum. Needs the ``quadprog`` extra.
    Params: see :class:`~mergekit_vision.strategies.conflict.dual_cone.DualConeStrategy`.
    """

    torchjd_aggregator: ClassVar[str] = "UPGrad"
