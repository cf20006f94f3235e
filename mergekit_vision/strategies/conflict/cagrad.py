"""CAGrad: the direction that most improves the worst task, within a ball around the mean."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field
from torch import Tensor

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.conflict.base import CONFLICT
from mergekit_vision.strategies.conflict.torchjd_adapter import TorchJDStrategy

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator


@CONFLICT.register("cagrad")
class CAGrad(TorchJDStrategy):
    """CAGrad: best worst-task improvement within a ball around the mean gradient.

    Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021
    (torchjd ``CAGrad``, solved with cvxpy + Clarabel).

    The update maximises the worst task's improvement within a ball of radius ``c * |g0|`` around
    the mean gradient ``g0``. torchjd returns ``g0 + c |g0| g_w / |g_w|``, i.e. ``(1 + c)`` times
    the mean for agreeing gradients; it is multiplied by ``T / (1 + c)`` so agreeing gradients give
    their sum (the official code's ``rescale=2`` division by ``1 + c``, times ``T``). Needs the
    ``cagrad`` extra.

    Args:
        c: radius of the ball, relative to the mean gradient's norm (the paper uses 0.4-0.5).
        norm_eps: below this norm the solution counts as Pareto-stationary.
    """

    class Params(PluginParams):
        c: float = Field(0.5, ge=0.0)
        norm_eps: float = Field(1e-4, ge=0.0)

    required_modules: ClassVar[tuple[str, ...]] = ("cvxpy", "clarabel")
    extra: ClassVar[str | None] = "cagrad"

    def __init__(self, *, c: float = 0.5, norm_eps: float = 1e-4) -> None:
        super().__init__()
        self.c, self.norm_eps = c, norm_eps

    def make_aggregator(self, *, num_tasks: int) -> Aggregator:
        from torchjd.aggregation import CAGrad as Aggregator_

        return Aggregator_(c=self.c, norm_eps=self.norm_eps)

    def sum_scale(self, matrix: Tensor) -> float:
        return matrix.shape[0] / (1.0 + self.c)
