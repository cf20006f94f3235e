"""MGDA: the minimum-norm point of the convex hull of the task gradients."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.conflict.base import CONFLICT
from mergekit_vision.strategies.conflict.torchjd_adapter import TorchJDStrategy

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator


@CONFLICT.register("mgda")
class MGDA(TorchJDStrategy):
    """MGDA: the minimum-norm convex combination of the task gradients.

    Multiple-gradient descent (Desideri 2012; Sener & Koltun, "Multi-Task Learning as
    Multi-Objective Optimization", NeurIPS 2018; torchjd ``MGDA``, Frank-Wolfe solver).

    The update is the minimum-norm convex combination of the task gradients, a common descent
    direction; it is multiplied by the number of tasks ``T`` so agreeing gradients give their sum
    (for two orthogonal unit gradients: ``2 * (0.5, 0.5) = (1, 1)``).

    Args:
        epsilon: Frank-Wolfe stops once its step size falls below this.
        max_iters: at most this many Frank-Wolfe iterations.
    """

    class Params(PluginParams):
        epsilon: float = Field(1e-3, gt=0.0)
        max_iters: int = Field(100, gt=0)

    def __init__(self, *, epsilon: float = 1e-3, max_iters: int = 100) -> None:
        super().__init__()
        self.epsilon, self.max_iters = epsilon, max_iters

    def make_aggregator(self, *, num_tasks: int) -> Aggregator:
        from torchjd.aggregation import MGDA as Aggregator_

        return Aggregator_(epsilon=self.epsilon, max_iters=self.max_iters)
