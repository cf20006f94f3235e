"""Homoscedastic-uncertainty weighting: a learnable log-variance per task."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.weighting.base import WEIGHTING, LossWeighting


@WEIGHTING.register("uncertainty")
class UncertaintyWeighting(LossWeighting):
    """Uncertainty weighting: a learnable log-variance per task scales its loss.

    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics", CVPR 2018.

    Each task has a learnable log-variance ``s_t = log sigma_t^2`` (an ``nn.Parameter`` in
    ``log_variances``; the engine optimises it with the model). The scalar backpropagated is

        ``base_t * (exp(-s_t) * L_t + s_t)``

    i.e. twice Kendall's regression form ``L / (2 sigma^2) + log sigma``: the same optimum
    (``sigma_t^2 = L_t``, effective weight ``base_t / L_t``), but at ``s_t = 0`` the weight is
    exactly the recipe's ``base_t``, so training starts as ``static`` does. The recipe weight
    ``base_t`` multiplies the regulariser too, so it scales the task without moving the optimum.

    Args:
        base_weights: the recipe's task weights.
        init_log_variance: starting ``s_t`` of every task.
    """

    class Params(PluginParams):
        init_log_variance: float = 0.0

    def __init__(self, *, base_weights: dict[str, float], init_log_variance: float = 0.0):
        super().__init__(base_weights=base_weights)
        self.log_variances = nn.ParameterDict(
            {task: nn.Parameter(torch.tensor(float(init_log_variance))) for task in base_weights}
        )

    def weighted(self, *, task: str, loss: Tensor) -> Tensor:
        s = self.log_variances[task].to(loss.device)
        return self.base_weights[task] * (torch.exp(-s) * loss + s)

    def current_weights(self) -> dict[str, float]:
        return {
            task: base * float(torch.exp(-self.log_variances[task].detach()))
            for task, base in self.base_weights.items()
        }
