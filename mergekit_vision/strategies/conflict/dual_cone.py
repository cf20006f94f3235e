"""What UPGrad and DualProj share: torchjd's quadprog projection onto the dual cone of the task
gradients (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.conflict.torchjd_adapter import TorchJDStrategy

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator


class DualConeStrategy(TorchJDStrategy):
    """A torchjd aggregator built on ``QuadprogProjector``; subclasses name it.

    Args:
        norm_eps: guards the Gramian normalization against division by zero.
        reg_eps: added to the Gramian's diagonal so the quadratic program stays definite.
    """

    class Params(PluginParams):
        norm_eps: float = Field(1e-4, ge=0.0)
        reg_eps: float = Field(1e-4, ge=0.0)

    required_modules: ClassVar[tuple[str, ...]] = ("qpsolvers", "quadprog")
    extra: ClassVar[str | None] = "quadprog"
    torchjd_aggregator: ClassVar[str]
    """The class name in ``torchjd.aggregation``."""

    def __init__(self, *, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> None:
        super().__init__()
        self.norm_eps, self.reg_eps = norm_eps, reg_eps

    def make_aggregator(self, *, num_tasks: int) -> Aggregator:
        from torchjd import aggregation
        from torchjd.linalg import QuadprogProjector

        projector = QuadprogProjector(norm_eps=self.norm_eps, reg_eps=self.reg_eps)
        return getattr(aggregation, self.torchjd_aggregator)(projector=projector)
