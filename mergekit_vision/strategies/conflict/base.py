"""The gradient-conflict contract: how per-task gradients of the shared parameters combine.

The engine runs one backward per task batch, so the gradient each task adds to the shared
(backbone) parameters is the difference of the accumulated gradient before and after its backward.
Strategies that need those per-task gradients set ``needs_task_gradients`` and implement
:meth:`aggregate`; the base class snapshots them at no extra backward pass. Task-specific
parameters (heads) are never touched: only ``shared`` parameters are passed in.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mergekit_vision.registry import PluginParams


class ConflictStrategy:
    Params: ClassVar[type[PluginParams]] = PluginParams
    needs_task_gradients: ClassVar[bool] = False

    def __init__(self, **kwargs: Any) -> None:
        self._rows: dict[str, Tensor] = {}
        self._running: Tensor | None = None
        # The engine also asks for the snapshots when a loss weighting needs them (GradNorm).
        self.record_task_gradients = self.needs_task_gradients

    @classmethod
    def build(cls, params: Any) -> ConflictStrategy:
        return cls(**params.model_dump())

    def begin_step(self, *, shared: list[nn.Parameter]) -> None:
        self._rows, self._running = {}, None

    def after_task_backward(self, *, task: str, shared: list[nn.Parameter]) -> None:
        if not self.record_task_gradients:
            return
        flat = _flat_grad(shared)
        previous = self._running if self._running is not None else torch.zeros_like(flat)
        self._rows[task] = self._rows.get(task, torch.zeros_like(flat)) + (flat - previous)
        self._running = flat

    def finish_step(self, *, shared: list[nn.Parameter]) -> dict[str, float]:
        """Replace the shared gradients by the aggregated update; return diagnostics."""
        if not self.needs_task_gradients or len(self._rows) < 2:
            return {}
        matrix = torch.stack(list(self._rows.values()))
        _write_flat_grad(shared, self.aggregate(matrix))
        return {}

    def task_gradients(self) -> dict[str, Tensor]:
        """This step's per-task gradients of the shared parameters, flattened ``[P]`` each."""
        return dict(self._rows)

    def aggregate(self, matrix: Tensor) -> Tensor:
        """``[T, P]`` per-task gradients -> ``[P]`` update."""
        return matrix.sum(0)


def _flat_grad(params: list[nn.Parameter]) -> Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )


def _write_flat_grad(params: list[nn.Parameter], flat: Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
