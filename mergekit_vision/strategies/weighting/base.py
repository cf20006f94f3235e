"""The loss-weighting contract: the scalar each task's loss is multiplied by before its backward.

Composable with any conflict strategy: weighting scales each task's loss, the conflict strategy
then combines the resulting per-task gradients of the shared parameters.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from mergekit_vision.registry import PluginParams, Registry


class LossWeighting(nn.Module):
    """Weights per task; learnable weightings expose their parameters as an nn.Module.

    ``base_weights`` are the recipe's task weights (SAM-CLIP's lambda). A weighting that needs the
    per-task gradients of the shared parameters (GradNorm) sets ``needs_task_gradients``; the engine
    then records them (the same rows the conflict strategy combines) and passes them to
    :meth:`observe`.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    needs_task_gradients: ClassVar[bool] = False

    def __init__(self, *, base_weights: dict[str, float]):
        super().__init__()
        self.base_weights = dict(base_weights)

    @classmethod
    def build(cls, params: Any, *, base_weights: dict[str, float]) -> LossWeighting:
        return cls(base_weights=base_weights, **params.model_dump())

    def weighted(self, *, task: str, loss: Tensor) -> Tensor:
        """The scalar to backpropagate for ``task``'s (unweighted) ``loss``."""
        return self.base_weights[task] * loss

    def observe(
        self,
        *,
        step: int,
        losses: dict[str, float],
        task_gradients: dict[str, Tensor] | None = None,
    ) -> None:
        """After each optimiser step: the step's unweighted losses (and per-task gradients)."""

    def current_weights(self) -> dict[str, float]:
        """The effective multiplier of each task now (for logging)."""
        return dict(self.base_weights)

    def state_dict_extra(self) -> dict[str, Any]:
        """Non-tensor state to checkpoint (loss histories); tensors go in ``state_dict``."""
        return {}

    def load_state_dict_extra(self, state: dict[str, Any]) -> None:
        pass


WEIGHTING: Registry[LossWeighting] = Registry("weighting")
