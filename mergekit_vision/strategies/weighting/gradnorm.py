"""GradNorm: task weights that balance the tasks' gradient norms on the shared parameters."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.weighting.base import WEIGHTING, LossWeighting


@WEIGHTING.register("gradnorm")
class GradNorm(LossWeighting):
    """GradNorm: weights that balance the tasks' gradient norms on the shared parameters.

    Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
    Multitask Networks", ICML 2018.

    After every step, with ``G_t = |grad of w_t L_t|`` over the shared parameters (the engine's
    per-task gradient snapshots; the paper uses the last shared layer only), the loss ratio
    ``r_t = (L_t / L_t(0)) / mean_j (L_j / L_j(0))`` and the target ``G*_t = mean(G) r_t^alpha``
    (held constant), the weights take one gradient step on

        ``L_grad = sum_t |G_t - G*_t| / mean(G)``

    where ``dG_t / dw_t = G_t / w_t``. Dividing by ``mean(G)`` (constant) makes the step
    independent of the gradients' scale, so ``lr`` is a plain step size on the weights. Then the
    weights are kept positive and renormalized so the updated tasks' weights keep their sum
    (the sum of the recipe weights when every task ran), as in the paper. Tasks training slower
    than average (large ``r_t``) gain weight. ``L_t(0)`` is the first loss seen for each task.

    Args:
        base_weights: the recipe's task weights; the starting weights.
        alpha: asymmetry strength (the paper uses 0.12-3; 1.5 is common).
        lr: step size of the weight update.
    """

    class Params(PluginParams):
        alpha: float = Field(1.5, ge=0.0)
        lr: float = Field(0.025, gt=0.0)

    needs_task_gradients = True

    def __init__(self, *, base_weights: dict[str, float], alpha: float = 1.5, lr: float = 0.025):
        super().__init__(base_weights=base_weights)
        self.alpha, self.lr = alpha, lr
        self.tasks = list(base_weights)
        self.register_buffer(
            "weights",
            torch.tensor([float(base_weights[t]) for t in self.tasks], dtype=torch.float64),
        )
        self.initial_losses: dict[str, float] = {}

    def weighted(self, *, task: str, loss: Tensor) -> Tensor:
        return float(self.weights[self.tasks.index(task)]) * loss

    def observe(
        self,
        *,
        step: int,
        losses: dict[str, float],
        task_gradients: dict[str, Tensor] | None = None,
    ) -> None:
        for task, loss in losses.items():
            self.initial_losses.setdefault(task, loss)
        present = [t for t in self.tasks if t in losses and task_gradients and t in task_gradients]
        if len(present) < 2:
            return
        assert task_gradients is not None
        index = torch.tensor([self.tasks.index(t) for t in present])
        norms = torch.stack([task_gradients[t].detach().double().norm().cpu() for t in present])
        if float(norms.mean()) <= 0.0:
            return
        ratios = torch.tensor(
            [losses[t] / max(self.initial_losses[t], 1e-12) for t in present], dtype=torch.float64
        )
        target = norms.mean() * (ratios / ratios.mean()) ** self.alpha
        weights = self.weights[index].cpu()
        grad = torch.sign(norms - target) * norms / weights / norms.mean()
        total = weights.sum()
        updated = (weights - self.lr * grad).clamp_min(1e-3 * total)
        self.weights[index] = (updated * total / updated.sum()).to(self.weights.device)

    def current_weights(self) -> dict[str, float]:
        return {t: float(w) for t, w in zip(self.tasks, self.weights.tolist(), strict=True)}

    def state_dict_extra(self) -> dict[str, Any]:
        return {"initial_losses": dict(self.initial_losses)}

    def load_state_dict_extra(self, state: dict[str, Any]) -> None:
        self.initial_losses = dict(state.get("initial_losses", {}))
