"""DualProj: the mean task gradient projected onto the dual cone of all task gradients."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from mergekit_vision.conflict.torchjd_adapter import TorchJDStrategy
from mergekit_vision.registry import CONFLICT, PluginParams

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator


@CONFLICT.register("dualproj")
class DualProj(TorchJDStrategy):
    """DualProj: the mean task gradient projected onto the dual cone of the task gradients.

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232, 2024
    (torchjd ``DualProj``); the projection of GEM (Lopez-Paz & Ranzato, NeurIPS 2017).

    The mean of the rows is projected onto the dual cone of the rows, the closest vector that
    conflicts with no task; multiplied by the number of tasks so agreeing gradients give their
    sum. Needs the ``quadprog`` extra.

    Args:
        norm_eps: guards the Gramian normalisation against division by zero.
        reg_eps: added to the Gramian's diagonal so the quadratic program stays definite.
    """

    class Params(PluginParams):
        norm_eps: float = Field(1e-4, ge=0.0)
        reg_eps: float = Field(1e-4, ge=0.0)

    required_modules: ClassVar[tuple[str, ...]] = ("qpsolvers", "quadprog")
    extra: ClassVar[str | None] = "quadprog"

    def __init__(self, *, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> None:
        super().__init__()
        self.norm_eps, self.reg_eps = norm_eps, reg_eps

    def make_aggregator(self, *, num_tasks: int) -> Aggregator:
        from torchjd.aggregation import DualProj as Aggregator_
        from torchjd.linalg import QuadprogProjector

        projector = QuadprogProjector(norm_eps=self.norm_eps, reg_eps=self.reg_eps)
        return Aggregator_(projector=projector)
