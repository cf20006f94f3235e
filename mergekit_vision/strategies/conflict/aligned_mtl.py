"""Aligned-MTL: align the principal components of the task gradients before combining them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.conflict.base import CONFLICT
from mergekit_vision.strategies.conflict.torchjd_adapter import TorchJDStrategy

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator

ScaleMode = Literal["min", "median", "rmse"]


@CONFLICT.register("aligned_mtl")
class AlignedMTL(TorchJDStrategy):
    """Aligned-MTL: align the task gradients' principal components, then average them.

    Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023
    (torchjd ``AlignedMTL``).

    The task gradients are whitened to a well-conditioned system (condition number one), rescaled
    by an eigenvalue of their Gramian (``scale_mode``), and averaged; the mean is multiplied by the
    number of tasks so agreeing gradients give their sum.

    Args:
        scale_mode: the Gramian eigenvalue that sets the scale: ``min`` (paper), ``median`` or
            ``rmse`` (the mean, as in the original code).
    """

    class Params(PluginParams):
        scale_mode: ScaleMode = "min"

    def __init__(self, *, scale_mode: ScaleMode = "min") -> None:
        super().__init__()
        self.scale_mode: ScaleMode = scale_mode

    def make_aggregator(self, *, num_tasks: int) -> Aggregator:
        from torchjd.aggregation import AlignedMTL as Aggregator_

        return Aggregator_(scale_mode=self.scale_mode)
