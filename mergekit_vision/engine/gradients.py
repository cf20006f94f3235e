"""Per-task gradients of the shared parameters, recorded by the engine for the strategies.

The engine runs one backward per task batch, so the gradient a task adds to the shared (backbone)
parameters is the difference of the accumulated gradient before and after its backward: recorded
at no extra backward pass. Conflict strategies (PCGrad, UPGrad, ...) combine these rows into the
update; loss weightings such as GradNorm read their norms. Both are handed the same rows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TaskGradients:
    """This step's per-task gradients of ``shared``, flattened ``[P]`` each.

    Recording costs a copy of the shared gradients per task, so it is on only when a strategy of
    the stage ``needs_task_gradients``; otherwise :meth:`rows` stays empty. Under data
    parallelism each task's last backward has averaged its gradient over the ranks, so the rows
    are the same on every rank.

    Args:
        shared: the shared parameters the stage trains (the backbone's).
        enabled: whether to record at all.
    """

    def __init__(self, *, shared: list[nn.Parameter], enabled: bool):
        self.shared, self.enabled = shared, enabled
        self._rows: dict[str, Tensor] = {}
        self._running: Tensor | None = None

    def begin_step(self) -> None:
        self._rows, self._running = {}, None

    def after_backward(self, *, task: str) -> None:
        """Record what ``task``'s backward (just run) added to the shared gradients."""
        if not self.enabled:
            return
        flat = flat_grad(self.shared)
        previous = self._running if self._running is not None else torch.zeros_like(flat)
        self._rows[task] = self._rows.get(task, torch.zeros_like(flat)) + (flat - previous)
        self._running = flat

    def rows(self) -> dict[str, Tensor]:
        """Task -> its gradient of the shared parameters this step (empty when not recording)."""
        return dict(self._rows)


def flat_grad(params: list[nn.Parameter]) -> Tensor:
    """The parameters' gradients concatenated ``[P]`` (zeros where a gradient is missing)."""
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )
