"""UPGrad: the mean of the task gradients, each projected onto the dual cone of all of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from mergekit_vision.conflict.torchjd_adapter import TorchJDStrategy
from mergekit_vision.registry import CONFLICT, PluginParams

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator


@CONFLICT.register("upgrad")
class UPGrad(TorchJDStrategy):
    """UPGrad: each task gradient projected onto the dual cone of all of them, averaged.

    Unconflicting projection of gradients (Quinton & Rey, "Jacobian Descent for Multi-Objective
    Optimization", arXiv 2406.16232, 2024; torchjd ``UPGrad``).

    Each row is projected onto the dual cone of the rows (so the update has a non-negative inner
    product with every task gradient) and the projections are averaged; the mean is multiplied by
    the number of tasks so agreeing gradients give their sum. Needs the ``quadprog`` extra.

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
        from torchjd.aggregation import UPGrad as Aggregator_
        from torchjd.linalg import QuadprogProjector

        projector = QuadprogProjector(norm_eps=self.norm_eps, reg_eps=self.reg_eps)
        return Aggregator_(projector=projector)
