"""PCGrad: project each task gradient off the others it conflicts with."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mergekit_vision.strategies.conflict.base import CONFLICT
from mergekit_vision.strategies.conflict.torchjd_adapter import TorchJDStrategy

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator


@CONFLICT.register("pcgrad")
class PCGrad(TorchJDStrategy):
    """PCGrad: project each task gradient off the task gradients it conflicts with.

    Gradient surgery (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

    Each task gradient ``g_i`` is projected onto the normal plane of every ``g_j`` it conflicts
    with (``g_i . g_j < 0``), in random order; the projected gradients are summed. Without
    conflicts this is the plain sum, so no rescaling is needed (torchjd ``PCGrad``).
    """

    output_scale: ClassVar[str] = "sum"

    def make_aggregator(self, *, num_tasks: int) -> Aggregator:
        from torchjd.aggregation import PCGrad as Aggregator_

        return Aggregator_()
