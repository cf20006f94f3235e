"""DualProj: the mean task gradient projected onto the dual cone of all task gradients."""

from __future__ import annotations

from typing import ClassVar

from mergekit_vision.strategies.conflict.base import CONFLICT
from mergekit_vision.strategies.conflict.dual_cone import DualConeStrategy


@CONFLICT.register("dualproj")
class DualProj(DualConeStrategy):
    """DualProj: the mean task gradient projected onto the dual cone of the task gradients.

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232, 2024
    (torchjd ``DualProj``); the projection of GEM (Lopez-Paz & Ranzato, NeurIPS 2017).

    The mean of the rows is projected onto the dual cone of the rows, the closest vector that
    conflicts with no task; multiplied by the number of tasks so agreeing gradients give their
    sum. Needs the ``quadprog`` extra.
    Params: see :class:`~mergekit_vision.strategies.conflict.dual_cone.DualConeStrategy`.
    """

    torchjd_aggregator: ClassVar[str] = "DualProj"
