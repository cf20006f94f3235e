"""Nash-MTL: the Nash bargaining solution among the tasks over the update direction."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.conflict.base import CONFLICT
from mergekit_vision.strategies.conflict.torchjd_adapter import TorchJDStrategy

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator

# A solve is accepted when every task's bargaining condition alpha_i (G alpha)_i = 1 holds to this.
_SOLVE_TOLERANCE = 0.05


@CONFLICT.register("nash_mtl")
class NashMTL(TorchJDStrategy):
    """Nash-MTL: the Nash bargaining solution among the tasks over the update.

    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022 (torchjd ``NashMTL``,
    solved with cvxpy + ECOS).

    Weights ``alpha`` solve ``alpha_i (G alpha)_i = 1`` with ``G = J J^T``, so the update
    ``alpha^T J`` is scale-free (its norm is about ``sqrt(T)`` whatever the gradients' scale). It
    is multiplied by ``sqrt(|G|_F)``, which restores the gradients' units and gives the sum for
    identical rows (``alpha = 1 / (sqrt(T) |g|)``, ``|G|_F = T |g|^2``). When the solver fails
    (torchjd then silently reuses the previous weights; it happens for (nearly) parallel rows,
    whose Gramian is singular), the step falls back to the plain sum and ``fallbacks`` counts it.
    The aggregator is stateful (warm start); that state is not checkpointed, and it is rebuilt
    when the number of tasks in a step changes. torchjd's norm clipping is left off: the recipe's
    ``grad_clip`` does that job. Needs the ``nash_mtl`` extra.

    Args:
        optim_niter: iterations of the sequential convex approximation per step.
    """

    class Params(PluginParams):
        optim_niter: int = Field(20, gt=0)

    required_modules: ClassVar[tuple[str, ...]] = ("cvxpy", "ecos")
    extra: ClassVar[str | None] = "nash_mtl"

    def __init__(self, *, optim_niter: int = 20) -> None:
        super().__init__()
        self.optim_niter = optim_niter
        self.fallbacks = 0

    def make_aggregator(self, *, num_tasks: int) -> Aggregator:
        from torchjd.aggregation import NashMTL as Aggregator_

        return Aggregator_(n_tasks=num_tasks, max_norm=0.0, optim_niter=self.optim_niter)

    def aggregate(self, matrix: Tensor) -> Tensor:
        """Args: matrix ``[T, P]``, one flattened shared gradient per task -> update ``[P]``."""
        with torch.no_grad(), warnings.catch_warnings():
            # cvxpy warns on every solve that this parametrised problem is not DPP.
            warnings.simplefilter("ignore")
            aggregator = self.aggregator(num_tasks=matrix.shape[0])
            alpha = aggregator.weighting(matrix).to(matrix.dtype)  # type: ignore[operator]
        gramian = (matrix @ matrix.T).double()
        conditions = alpha.double() * (gramian @ alpha.double())
        if not torch.allclose(conditions, torch.ones_like(conditions), atol=_SOLVE_TOLERANCE):
            self.fallbacks += 1
            return matrix.sum(0)
        return (alpha @ matrix) * gramian.norm().sqrt().to(matrix.dtype)
