"""IMTL-G: the update whose projections onto every task gradient's direction are equal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergekit_vision.strategies.conflict.base import CONFLICT
from mergekit_vision.strategies.conflict.torchjd_adapter import TorchJDStrategy

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator


@CONFLICT.register("imtl_g")
class IMTLG(TorchJDStrategy):
    """IMTL-G: the update with equal projections onto every task gradient's direction.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (torchjd ``IMTLG``,
    generalised to linearly dependent rows in arXiv 2406.16232).

    Weights summing to one make the update's projection onto each task's unit gradient equal;
    the result is multiplied by the number of tasks so agreeing gradients give their sum.
    """

    def make_aggregator(self, *, num_tasks: int) -> Aggregator:
        from torchjd.aggregation import IMTLG as Aggregator_

        return Aggregator_()
