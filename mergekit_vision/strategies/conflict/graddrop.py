"""GradDrop: per coordinate, keep only the task gradients of one randomly chosen sign."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.conflict.base import CONFLICT
from mergekit_vision.strategies.conflict.torchjd_adapter import TorchJDStrategy

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator


@CONFLICT.register("graddrop")
class GradDrop(TorchJDStrategy):
    """GradDrop: per coordinate, keep only the task gradients of one randomly chosen sign.

    Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
    Dropout", NeurIPS 2020 (torchjd ``GradDrop``).

    For each coordinate, the positive-sign purity ``P = (1 + sum g / sum |g|) / 2`` sets the chance
    of keeping the positive entries (else the negative ones); the kept entries are summed, so
    agreeing gradients give their sum. Draws from torch's global random generator.

    Args:
        leak: share of every task's gradient that always passes (0: none; 1: the plain sum).
    """

    class Params(PluginParams):
        leak: float = Field(0.0, ge=0.0, le=1.0)

    output_scale: ClassVar[str] = "sum"

    def __init__(self, *, leak: float = 0.0) -> None:
        super().__init__()
        self.leak = leak

    def make_aggregator(self, *, num_tasks: int) -> Aggregator:
        import torch
        from torchjd.aggregation import GradDrop as Aggregator_

        leak = torch.full((num_tasks,), self.leak) if self.leak > 0 else None
        return Aggregator_(leak=leak)
