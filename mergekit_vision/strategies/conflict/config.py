"""ConFIG: the conflict-free direction with equal cosine to every task gradient."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mergekit_vision.strategies.conflict.base import CONFLICT
from mergekit_vision.strategies.conflict.torchjd_adapter import TorchJDStrategy

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator


@CONFLICT.register("config")
class ConFIG(TorchJDStrategy):
    """ConFIG: the direction with equal cosine to every task gradient (conflict-free).

    Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks",
    arXiv 2408.11104, 2024 (torchjd ``ConFIG``).

    The direction has the same cosine with every task's unit gradient (via a pseudo-inverse);
    its length is the sum of the task gradients' projections onto it, so agreeing gradients give
    their sum without rescaling.
    """

    output_scale: ClassVar[str] = "sum"

    def make_aggregator(self, *, num_tasks: int) -> Aggregator:
        from torchjd.aggregation import ConFIG as Aggregator_

        return Aggregator_()
