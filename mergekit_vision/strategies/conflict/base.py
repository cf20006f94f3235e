"""The gradient-conflict contract: how per-task gradients of the shared parameters combine.

The engine runs one backward per task batch and records the gradient each task adds to the shared
(backbone) parameters (its per-task gradient recorder, ``engine/gradients.py``). Strategies that
need those per-task gradients set ``needs_task_gradients`` and implement :meth:`aggregate`; the
engine then records them and hands them to :meth:`finish_step`. Task-specific parameters (heads)
are never touched: only ``shared`` parameters are passed in.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mergekit_vision.registry import PluginParams, Registry


class ConflictStrategy:
    """How one step's per-task gradients of the shared parameters become its update.

    The default sums them: the shared gradients the backward passes accumulated stay as they are.
    A strategy that combines them otherwise sets ``needs_task_gradients`` and implements
    :meth:`aggregate`.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    needs_task_gradients: ClassVar[bool] = False

    @classmethod
    def build(cls, params: Any) -> ConflictStrategy:
        return cls(**params.model_dump())

    def finish_step(
        self, *, shared: list[nn.Parameter], task_gradients: dict[str, Tensor]
    ) -> dict[str, float]:
        """Replace the shared gradients by the aggregated update; return diagnostics.

        Args:
            shared: the shared parameters, whose ``.grad`` holds the sum of the task gradients.
            task_gradients: task -> its gradient of ``shared`` this step, flattened ``[P]``
                (recorded by the engine when ``needs_task_gradients``).
        """
        if not self.needs_task_gradients or len(task_gradients) < 2:
            return {}
        matrix = torch.stack(list(task_gradients.values()))
        _write_flat_grad(shared, self.aggregate(matrix))
        return {}

    def aggregate(self, matrix: Tensor) -> Tensor:
        """``[T, P]`` per-task gradients -> ``[P]`` update."""
        return matrix.sum(0)


CONFLICT: Registry[ConflictStrategy] = Registry("conflict")


def _write_flat_grad(params: list[nn.Parameter], flat: Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
